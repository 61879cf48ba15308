// log.h - one logging macro for all processes.
//
// AC_LOG skips disabled levels without evaluating its arguments. Output goes to stderr, as plain
// text for people or as JSON lines (ac_log_set_json) for log collectors.
#ifndef AC_LOG_H
#define AC_LOG_H

#include <stdbool.h>

typedef enum { AC_LOG_DEBUG = 0, AC_LOG_INFO, AC_LOG_WARN, AC_LOG_ERROR, AC_LOG_OFF } ac_log_level_t;

extern ac_log_level_t ac_log_min_level;

void ac_log_set_level(ac_log_level_t level);
void ac_log_set_json(bool json);
// Parses "debug", "info", "warn", "error" or "off"; returns -1 for anything else.
int ac_log_parse_level(const char *s);
void ac_log_write(ac_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define AC_LOG(level, ...)                                             \
  do {                                                                 \
    if ((level) >= ac_log_min_level)                                   \
      ac_log_write((level), __FILE__, __LINE__, __VA_ARGS__);          \
  } while (0)

#define AC_DEBUG(...) AC_LOG(AC_LOG_DEBUG, __VA_ARGS__)
#define AC_INFO(...) AC_LOG(AC_LOG_INFO, __VA_ARGS__)
#define AC_WARN(...) AC_LOG(AC_LOG_WARN, __VA_ARGS__)
#define AC_ERROR(...) AC_LOG(AC_LOG_ERROR, __VA_ARGS__)

#endif
