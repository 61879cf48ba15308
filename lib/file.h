// file.h - reading whole files.
#ifndef AC_FILE_H
#define AC_FILE_H

#include <stddef.h>

// Reads `path` (at most `max` bytes when max > 0: callers that use only a text's beginning need
// not read a large corpus whole) into a malloc'ed buffer with a NUL after the data, so text can
// be used as a C string. *len excludes the NUL. Errors: AC_EIO (naming the path), AC_ENOMEM.
int ac_read_file(const char *path, size_t max, char **out, size_t *len);

#endif
