// file.c - reading whole files.
#include "file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int ac_read_file(const char *path, size_t max, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return ac_error(AC_EIO, "cannot open '%s': %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t want = cap - n - 1;
    if (max && want > max - n) want = max - n;
    size_t got = fread(buf + n, 1, want, f);
    n += got;
    if (got < want || (max && n >= max)) break;
    if (n == cap - 1) {
      char *b = realloc(buf, cap *= 2);
      if (!b) free(buf);
      buf = b;
    }
  }
  int err = ferror(f);
  fclose(f);
  if (!buf) return ac_error(AC_ENOMEM, "out of memory reading '%s'", path);
  if (err) {
    free(buf);
    return ac_error(AC_EIO, "cannot read '%s'", path);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}
