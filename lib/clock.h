// clock.h - the two clocks the daemons use: wall time for what is stored or shown (unix ms), and
// a monotonic clock for durations and timeouts (ms as a double).
#ifndef AC_CLOCK_H
#define AC_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ac_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline double ac_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

#endif
