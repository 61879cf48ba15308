// csv.h - membership in a comma-separated list, as the command lines take them ("cs,physics").
#ifndef AC_CSV_H
#define AC_CSV_H

#include <stdbool.h>
#include <string.h>

// Whether `item` is one of the comma-separated entries of `list`; a NULL list contains everything.
static inline bool ac_csv_has(const char *list, const char *item) {
  if (!list) return true;
  size_t n = strlen(item);
  for (const char *p = list; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && strncmp(p, item, n) == 0) return true;
    if (!e) break;
    p = e + 1;
  }
  return false;
}

#endif
