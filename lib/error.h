// error.h - error codes shared by all of libac.
//
// Library functions return 0 (or a non-negative count) on success and a negative AC_E* code on
// failure. The code says what kind of failure it was; the detail ("tensor 'blk.3.attn_q.weight':
// data ends past the end of the file") is kept per thread and read with ac_errmsg(), so a CLI can
// print one clear line and a daemon can hand it to its client.
#ifndef AC_ERROR_H
#define AC_ERROR_H

enum {
  AC_OK = 0,
  AC_EINVAL = -1,        // a bad argument from the caller
  AC_ENOMEM = -2,        // out of memory
  AC_EIO = -3,           // an operating-system read/write/open failure
  AC_EFORMAT = -4,       // malformed input (file, message, text)
  AC_EUNSUPPORTED = -5,  // well-formed but not supported (tensor type, architecture, template)
  AC_ENOTFOUND = -6,     // a required key, tensor or token is missing
  AC_ERANGE = -7,        // a value outside its allowed range (e.g. prompt longer than context)
};

// Short constant text for a code ("malformed input").
const char *ac_strerror(int err);

// Records a detail message for this thread and returns `code`, so that callers write
//   return ac_error(AC_EFORMAT, "tensor '%s': bad type %u", name, type);
int ac_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// The detail of the last ac_error() on this thread, or "" if none.
const char *ac_errmsg(void);

#endif
