// membw.c - measured memory read bandwidth, the bound for decode speed (a decode step reads
// every weight once). Reads a buffer much larger than the caches with N threads, best of
// several passes. Usage: ac-membw [THREADS] [MIB]
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  const uint64_t *p;
  size_t n;
  uint64_t sum;
} part_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Eight independent accumulators let the compiler vectorise and keep many loads in flight.
static void *reader(void *arg) {
  part_t *pt = arg;
  uint64_t s[8] = {0};
  for (size_t i = 0; i + 8 <= pt->n; i += 8)
    for (int k = 0; k < 8; k++) s[k] ^= pt->p[i + k];
  pt->sum = s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
  if (threads < 1 || threads > 256 || mib < 64) {
    fprintf(stderr, "usage: ac-membw [THREADS] [MIB>=64]\n");
    return 2;
  }
  size_t n = mib * (1 << 20) / 8;
  uint64_t *buf = malloc(n * 8);
  if (!buf) {
    fprintf(stderr, "ac-membw: out of memory\n");
    return 1;
  }
  memset(buf, 1, n * 8);
  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < 5; pass++) {
    pthread_t tid[256];
    part_t parts[256];
    double t0 = now_s();
    for (int t = 0; t < threads; t++) {
      parts[t] = (part_t){buf + n / threads * t, n / threads, 0};
      pthread_create(&tid[t], NULL, reader, &parts[t]);
    }
    for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL), sink ^= parts[t].sum;
    double gbs = n * 8.0 / (now_s() - t0) / 1e9;
    if (gbs > best) best = gbs;
  }
  printf("%.2f\n", best);
  fprintf(stderr, "ac-membw: %d thread(s), %zu MiB, best of 5: %.2f GB/s (checksum %llx)\n", threads, mib, best,
          (unsigned long long)sink);
  free(buf);
  return 0;
}
