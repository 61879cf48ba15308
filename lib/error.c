// error.c - error codes and the per-thread detail message.
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_msg[512];

const char *ac_strerror(int err) {
  switch (err) {
    case AC_OK: return "success";
    case AC_EINVAL: return "invalid argument";
    case AC_ENOMEM: return "out of memory";
    case AC_EIO: return "input/output error";
    case AC_EFORMAT: return "malformed input";
    case AC_EUNSUPPORTED: return "not supported";
    case AC_ENOTFOUND: return "not found";
    case AC_ERANGE: return "value out of range";
    default: return "unknown error";
  }
}

int ac_error(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  // Through a scratch buffer: callers may pass ac_errmsg() itself as an argument.
  char tmp[sizeof last_msg];
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  memcpy(last_msg, tmp, sizeof tmp);
  va_end(ap);
  return code;
}

const char *ac_errmsg(void) { return last_msg; }
