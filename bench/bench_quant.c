// bench_quant.c - per-type kernel speed: how fast each vec_dot kernel streams weights.
//
// Two numbers per type and kernel set:
//   hot     ns for one row pair repeated (the row stays in L1): the kernel's own speed.
//   stream  GB/s of weights when one activation row is dotted with every row of a weight matrix
//           much larger than the caches, as a decode step's matrix-vector product does. Decode
//           speed is bounded by memory bandwidth, so compare this column with `ac-membw 1`.
// Where a set has a decode kernel (vec_dot_r4, 4 weight rows per call), the same two numbers
// follow for it after "| r4": that is the kernel decode uses for these types.
//
// Usage: ac-bench-quant [MIB [TYPE]]   (default 256 MiB of weights per type, every type)
// Single-threaded on purpose: compare with `ac-membw 1 MIB` measured in the same run.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant.h"
#include "quant_impl.h"
#include "quant_q2x.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static float rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)(rng >> 40) / (float)(1 << 24) - 0.5f;
}

// A sink the compiler cannot see through, so the dot products are not optimized away.
static volatile float sink;

enum { POOL = 64 };  // distinct quantized rows; the big matrix repeats them (speed ignores values)

static int bench_case(uint32_t type, int64_t n, size_t mib) {
  const ac_type_traits_t *base = ac_type_traits(type);
  const ac_type_traits_t *vt = ac_type_traits(base->vec_dot_type);
  const size_t row_bytes = ac_row_size(type, n);
  const int64_t rows = (int64_t)(mib << 20) / (int64_t)row_bytes;
  float *x = malloc((size_t)n * sizeof(float));
  uint8_t *w = malloc(row_bytes * (size_t)rows);
  uint8_t *a = malloc(ac_row_size(base->vec_dot_type, n));
  if (!x || !w || !a) {
    fprintf(stderr, "ac-bench-quant: out of memory\n");
    free(x), free(w), free(a);
    return 1;
  }
  for (int64_t r = 0; r < POOL; r++) {
    for (int64_t i = 0; i < n; i++) x[i] = rnd();
    base->from_float_ref(x, w + (size_t)r * row_bytes, n);
  }
  for (int64_t r = POOL; r < rows; r++)
    memcpy(w + (size_t)r * row_bytes, w + (size_t)(r % POOL) * row_bytes, row_bytes);
  for (int64_t i = 0; i < n; i++) x[i] = rnd();
  vt->from_float_ref(x, a, n);

  static const char *const sets[] = {"ref", "avx2", "avx512"};
  for (int s = 0; s < 3; s++) {
    const ac_type_traits_t *t = ac__quant_traits_for(sets[s], type);
    if (!t) continue;
    float acc = 0, d;
    // Minimum time over several runs: the machine is shared, and the least disturbed run is
    // the one that measures the kernel.
    const int reps = s == 0 ? 200 : 5000;
    double best_hot = 1e30;
    for (int run = 0; run < 20; run++) {
      const double t0 = now_ns();
      for (int k = 0; k < reps; k++) {
        t->vec_dot(n, &d, w, a);
        acc += d;
      }
      const double ns = (now_ns() - t0) / reps;
      if (ns < best_hot) best_hot = ns;
    }
    double best_stream = 1e30;
    for (int run = 0; run < (s == 0 ? 1 : 5); run++) {
      const double t0 = now_ns();
      for (int64_t r = 0; r < rows; r++) {
        t->vec_dot(n, &d, w + (size_t)r * row_bytes, a);
        acc += d;
      }
      const double ns = now_ns() - t0;
      if (ns < best_stream) best_stream = ns;
    }
    // The decode kernel, where the set has one: 4 rows per call, as matmul_worker runs decode.
    double best_hot4 = 0, best_stream4 = 0;
    if (t->vec_dot_r4) {
      float d4[4];
      best_hot4 = best_stream4 = 1e30;
      for (int run = 0; run < 20; run++) {
        const double t0 = now_ns();
        for (int k = 0; k < reps / 4; k++) {
          t->vec_dot_r4(n, d4, w, row_bytes, a);
          acc += d4[0] + d4[3];
        }
        const double ns = (now_ns() - t0) / (reps / 4 * 4);
        if (ns < best_hot4) best_hot4 = ns;
      }
      for (int run = 0; run < (s == 0 ? 1 : 5); run++) {
        const double t0 = now_ns();
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) {
          t->vec_dot_r4(n, d4, w + (size_t)r * row_bytes, row_bytes, a);
          acc += d4[0] + d4[3];
        }
        for (; r < rows; r++) {
          t->vec_dot(n, &d, w + (size_t)r * row_bytes, a);
          acc += d;
        }
        const double ns = now_ns() - t0;
        if (ns < best_stream4) best_stream4 = ns;
      }
    }
    sink = acc;
    printf("%-5s n=%-5lld %-6s hot %8.1f ns/row (%6.2f GB/s)  stream %6.2f GB/s", base->name,
           (long long)n, sets[s], best_hot, (double)row_bytes / best_hot,
           (double)row_bytes * (double)rows / best_stream);
    if (t->vec_dot_r4)
      printf("  | r4 hot %8.1f ns/row (%6.2f GB/s)  stream %6.2f GB/s", best_hot4,
             (double)row_bytes / best_hot4, (double)row_bytes * (double)rows / best_stream4);
    printf("\n");
    fflush(stdout);
  }
  free(x);
  free(w);
  free(a);
  return 0;
}

int main(int argc, char **argv) {
  const long mib = argc > 1 ? atol(argv[1]) : 256;
  if (mib < 16 || mib > 65536) {
    fprintf(stderr, "usage: ac-bench-quant [MIB>=16 [TYPE]]\n");
    return 2;
  }
  const int only = argc > 2 ? ac_type_from_name(argv[2]) : -1;
  if (argc > 2 && only < 0) {
    fprintf(stderr, "ac-bench-quant: unknown type '%s'\n", argv[2]);
    return 2;
  }
  printf("kernel set in use: %s; %ld MiB of weights per type\n", ac_simd_name(), mib);
  // Row lengths of the demo model (576, 1536); K-quants need multiples of 256.
  const struct {
    uint32_t type;
    int64_t n;
  } cases[] = {
      {AC_TYPE_F32, 576},   {AC_TYPE_F16, 576},   {AC_TYPE_BF16, 576},  {AC_TYPE_Q8_0, 576},
      {AC_TYPE_Q5_0, 576},  {AC_TYPE_Q5_1, 576},  {AC_TYPE_Q4_0, 576},  {AC_TYPE_Q4_1, 576},
      {AC_TYPE_Q6_K, 1536}, {AC_TYPE_Q5_K, 1536}, {AC_TYPE_Q4_K, 1536}, {AC_TYPE_Q3_K, 1536},
      {AC_TYPE_Q2_K, 1536}, {AC_TYPE_Q2X, 576},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (only < 0 || cases[i].type == (uint32_t)only)
      if (bench_case(cases[i].type, cases[i].n, (size_t)mib)) return 1;
  return 0;
}
