// log.c - plain-text or JSON-lines logging to stderr.
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

ac_log_level_t ac_log_min_level = AC_LOG_WARN;
static bool log_json;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void ac_log_set_level(ac_log_level_t level) { ac_log_min_level = level; }
void ac_log_set_json(bool json) { log_json = json; }

int ac_log_parse_level(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, level_names[i]) == 0) return i;
  if (strcmp(s, "off") == 0) return AC_LOG_OFF;
  return -1;
}

// Writes `s` as the inside of a JSON string.
static void json_escape(FILE *f, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
}

void ac_log_write(ac_log_level_t level, const char *file, int line, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;

  // One fprintf per line keeps lines from different threads whole.
  flockfile(stderr);
  if (log_json) {
    fprintf(stderr, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"src\":\"%s:%d\",\"msg\":\"", when,
            ts.tv_nsec / 1000000, level_names[level], base, line);
    json_escape(stderr, msg);
    fputs("\"}\n", stderr);
  } else {
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", when, ts.tv_nsec / 1000000, level_names[level], msg);
  }
  funlockfile(stderr);
}
