// bench_quant.c - nanoseconds per vec_dot call, per type, row length and kernel set.
//
// Two numbers per case: "hot" repeats one row pair (everything in L1, the kernel's own speed)
// and "matvec" walks a whole weight matrix of `rows` rows against one activation row, as a
// matrix-vector product does (weights streamed from L2/L3 or memory, like decoding).
//
// Build (until CMake knows about bench/):
//   gcc -std=gnu11 -O2 -D_GNU_SOURCE -Ilib bench/bench_quant.c <libac objects> -lm -lpthread
// Run: bench_quant [rows [type]]   (default 1536 rows, every type)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant.h"
#include "quant_impl.h"

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

static void bench_case(ac_type_t type, int64_t n, int64_t rows) {
  const ac_type_traits_t *base = ac_type_traits(type);
  const ac_type_traits_t *vt = ac_type_traits(base->vec_dot_type);
  const size_t row_bytes = ac_row_size(type, n);
  float *x = malloc((size_t)n * sizeof(float));
  uint8_t *w = malloc(row_bytes * (size_t)rows);
  uint8_t *a = malloc(ac_row_size(base->vec_dot_type, n));
  if (!x || !w || !a) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t i = 0; i < n; i++) x[i] = rnd();
    base->from_float_ref(x, w + (size_t)r * row_bytes, n);
  }
  for (int64_t i = 0; i < n; i++) x[i] = rnd();
  vt->from_float_ref(x, a, n);

  static const char *const sets[] = {"ref", "avx2", "avx512"};
  for (int s = 0; s < 3; s++) {
    const ac_type_traits_t *t = ac__quant_traits_for(sets[s], type);
    if (!t) continue;
    float acc = 0, d;
    // The minimum over many short runs: this machine is shared, and the minimum is the run the
    // neighbours disturbed least.
    const int reps = s == 0 ? 200 : 5000;
    double best_hot = 1e30;
    for (int run = 0; run < 40; run++) {
      const double t0 = now_ns();
      for (int k = 0; k < reps; k++) {
        t->vec_dot(n, &d, w, a);
        acc += d;
      }
      const double ns = (now_ns() - t0) / reps;
      if (ns < best_hot) best_hot = ns;
    }
    // Matvec: every row once per pass.
    double best_mv = 1e30;
    for (int run = 0; run < (s == 0 ? 3 : 20); run++) {
      const double t0 = now_ns();
      for (int64_t r = 0; r < rows; r++) {
        t->vec_dot(n, &d, w + (size_t)r * row_bytes, a);
        acc += d;
      }
      const double ns = (now_ns() - t0) / (double)rows;
      if (ns < best_mv) best_mv = ns;
    }
    sink = acc;
    printf(
        "%-5s x %-5s n=%-5lld %-6s  hot %8.1f ns   matvec %8.1f ns/row  (%.2f GB/s of weights)\n",
        base->name, vt->name, (long long)n, sets[s], best_hot, best_mv,
        (double)row_bytes / best_mv);
  }
  free(x);
  free(w);
  free(a);
}

int main(int argc, char **argv) {
  const int64_t rows = argc > 1 ? atoll(argv[1]) : 1536;
  printf("kernel set in use: %s; matvec over %lld rows\n", ac_simd_name(), (long long)rows);
  const struct {
    ac_type_t type;
    int64_t n;
  } cases[] = {
      {AC_TYPE_Q4_1, 576},  {AC_TYPE_Q4_1, 1536}, {AC_TYPE_Q8_0, 576},  {AC_TYPE_Q8_0, 1536},
      {AC_TYPE_F16, 576},   {AC_TYPE_F16, 1536},  {AC_TYPE_Q4_0, 576},  {AC_TYPE_Q5_0, 576},
      {AC_TYPE_Q5_1, 576},  {AC_TYPE_BF16, 576},  {AC_TYPE_F32, 576},   {AC_TYPE_Q2_K, 1536},
      {AC_TYPE_Q3_K, 1536}, {AC_TYPE_Q4_K, 1536}, {AC_TYPE_Q5_K, 1536}, {AC_TYPE_Q6_K, 1536},
  };
  const int only = argc > 2 ? ac_type_from_name(argv[2]) : -1;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (only < 0 || (int)cases[i].type == only) bench_case(cases[i].type, cases[i].n, rows);
  return 0;
}
