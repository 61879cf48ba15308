// test_quant.c - unit tests for lib/quant.c and its SIMD kernels.
//
// What is checked:
//   - block struct sizes and the traits table (names, sizes, vec_dot types, bits per weight);
//   - half and bfloat16 conversions: every half exhaustively, rounding edge cases, and random
//     floats against an independent nearest-even check and against the CPU's F16C;
//   - hand-computed blocks of several types, dequantized against values worked out by hand;
//   - every kernel set this CPU runs (ref, avx2, avx512), each checked against the _ref kernels:
//     to_float bit-exact, from_float byte-exact, vec_dot within a stated tolerance, on random and
//     adversarial inputs and on rows of 576, 1536 and other lengths (odd block counts included);
//   - vec_dot_4 (tiles of 1-2 weight rows by 4 activation rows) of every set bit-identical to that
//     set's vec_dot on each pair;
//   - vec_dot_r4 (decode: 4 weight rows by one activation row) of every set bit-identical to that
//     set's vec_dot on each row, adversarial scales included, and the decode matrix-vector product
//     built from it as matmul_worker does for odd row counts and thread splits;
//   - quantization error of dequant(quant(x)) per type, and vec_dot_ref against a double-precision
//     dot product of the dequantized rows.
// Exits non-zero if any check fails; prints "N passed, N failed" at the end.
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quant.h"
#include "quant_blocks.h"
#include "quant_impl.h"

// --- random numbers and small helpers ----------------------------------------------------------

// xorshift64*: deterministic, so a failure reproduces.
static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint64_t rnd_u64(void) {
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545F4914F6CDD1Dull;
}

static float rnd_unit(void) { return (float)(rnd_u64() >> 40) / (float)(1 << 24); }  // [0, 1)

static float rnd_normal(void) {
  float u = rnd_unit(), v = rnd_unit();
  if (u < 1e-7f) u = 1e-7f;
  return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  return p;
}

// Every type the module knows, and the kernel sets.
static const ac_type_t all_types[] = {
    AC_TYPE_F32,  AC_TYPE_F16,  AC_TYPE_BF16, AC_TYPE_Q4_0, AC_TYPE_Q4_1,
    AC_TYPE_Q5_0, AC_TYPE_Q5_1, AC_TYPE_Q8_0, AC_TYPE_Q8_1, AC_TYPE_Q2_K,
    AC_TYPE_Q3_K, AC_TYPE_Q4_K, AC_TYPE_Q5_K, AC_TYPE_Q6_K, AC_TYPE_Q8_K,
};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

static const char *const simd_sets[] = {"ref", "avx2", "avx512"};

// --- init from many threads --------------------------------------------------------------------

static void *init_thread(void *arg) {
  const char **out = arg;
  *out = ac_simd_name();
  return NULL;
}

// The very first calls into the module race on purpose: pthread_once must make them agree.
static void test_concurrent_init(void) {
  pthread_t th[8];
  const char *names[8] = {0};
  for (int i = 0; i < 8; i++) pthread_create(&th[i], NULL, init_thread, &names[i]);
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  bool same = true;
  for (int i = 0; i < 8; i++) same = same && names[i] && names[i] == names[0];
  CHECK(same, "ac_simd_name differs between threads");
  const char *s = ac_simd_name();
  CHECK(!strcmp(s, "ref") || !strcmp(s, "avx2") || !strcmp(s, "avx512"), "simd name %s", s);
  printf("kernel set in use: %s\n", s);
}

// --- structs and the traits table --------------------------------------------------------------

static void test_struct_sizes(void) {
  CHECK(sizeof(ac_block_q4_0) == 18, "q4_0 %zu", sizeof(ac_block_q4_0));
  CHECK(sizeof(ac_block_q4_1) == 20, "q4_1 %zu", sizeof(ac_block_q4_1));
  CHECK(sizeof(ac_block_q5_0) == 22, "q5_0 %zu", sizeof(ac_block_q5_0));
  CHECK(sizeof(ac_block_q5_1) == 24, "q5_1 %zu", sizeof(ac_block_q5_1));
  CHECK(sizeof(ac_block_q8_0) == 34, "q8_0 %zu", sizeof(ac_block_q8_0));
  CHECK(sizeof(ac_block_q8_1) == 36, "q8_1 %zu", sizeof(ac_block_q8_1));
  CHECK(sizeof(ac_block_q2_K) == 84, "q2_K %zu", sizeof(ac_block_q2_K));
  CHECK(sizeof(ac_block_q3_K) == 110, "q3_K %zu", sizeof(ac_block_q3_K));
  CHECK(sizeof(ac_block_q4_K) == 144, "q4_K %zu", sizeof(ac_block_q4_K));
  CHECK(sizeof(ac_block_q5_K) == 176, "q5_K %zu", sizeof(ac_block_q5_K));
  CHECK(sizeof(ac_block_q6_K) == 210, "q6_K %zu", sizeof(ac_block_q6_K));
  CHECK(sizeof(ac_block_q8_K) == 292, "q8_K %zu", sizeof(ac_block_q8_K));
}

static void test_traits_table(void) {
  static const struct {
    ac_type_t type;
    const char *name;
    int64_t blck;
    size_t size;
    bool quantized;
    ac_type_t vdt;
  } want[] = {
      {AC_TYPE_F32, "f32", 1, 4, false, AC_TYPE_F32},
      {AC_TYPE_F16, "f16", 1, 2, false, AC_TYPE_F16},
      {AC_TYPE_BF16, "bf16", 1, 2, false, AC_TYPE_BF16},
      {AC_TYPE_Q4_0, "q4_0", 32, 18, true, AC_TYPE_Q8_0},
      {AC_TYPE_Q4_1, "q4_1", 32, 20, true, AC_TYPE_Q8_1},
      {AC_TYPE_Q5_0, "q5_0", 32, 22, true, AC_TYPE_Q8_0},
      {AC_TYPE_Q5_1, "q5_1", 32, 24, true, AC_TYPE_Q8_1},
      {AC_TYPE_Q8_0, "q8_0", 32, 34, true, AC_TYPE_Q8_0},
      {AC_TYPE_Q8_1, "q8_1", 32, 36, true, AC_TYPE_Q8_1},
      {AC_TYPE_Q2_K, "q2_K", 256, 84, true, AC_TYPE_Q8_K},
      {AC_TYPE_Q3_K, "q3_K", 256, 110, true, AC_TYPE_Q8_K},
      {AC_TYPE_Q4_K, "q4_K", 256, 144, true, AC_TYPE_Q8_K},
      {AC_TYPE_Q5_K, "q5_K", 256, 176, true, AC_TYPE_Q8_K},
      {AC_TYPE_Q6_K, "q6_K", 256, 210, true, AC_TYPE_Q8_K},
      {AC_TYPE_Q8_K, "q8_K", 256, 292, true, AC_TYPE_Q8_K},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const ac_type_traits_t *t = ac_type_traits(want[i].type);
    CHECK(t != NULL, "no traits for %s", want[i].name);
    if (!t) continue;
    CHECK(!strcmp(t->name, want[i].name) && t->blck_size == want[i].blck &&
              t->type_size == want[i].size && t->is_quantized == want[i].quantized &&
              t->vec_dot_type == want[i].vdt,
          "traits row of %s", want[i].name);
    CHECK(t->to_float && t->from_float && t->to_float_ref && t->from_float_ref,
          "%s lacks conversions", want[i].name);
    // Activation-only types have no dot product; every weight type has one.
    const bool act_only = want[i].type == AC_TYPE_Q8_1 || want[i].type == AC_TYPE_Q8_K;
    CHECK(act_only ? (!t->vec_dot && !t->vec_dot_ref) : (t->vec_dot && t->vec_dot_ref),
          "%s vec_dot presence", want[i].name);
    CHECK(act_only ? (!t->vec_dot_4 && !t->vec_dot_4_ref) : t->vec_dot_4_ref != NULL,
          "%s vec_dot_4 presence", want[i].name);
    CHECK(!strcmp(ac_type_name(want[i].type), want[i].name), "ac_type_name(%s)", want[i].name);
    CHECK(ac_type_from_name(want[i].name) == (int)want[i].type, "from_name(%s)", want[i].name);
    // The public table is the kernel set in use.
    const ac_type_traits_t *cur = ac__quant_traits_for(ac_simd_name(), want[i].type);
    CHECK(cur == t, "ac_type_traits(%s) is not the %s set", want[i].name, ac_simd_name());
  }
  CHECK(ac_type_from_name("Q4_K") == AC_TYPE_Q4_K && ac_type_from_name("q4_k") == AC_TYPE_Q4_K,
        "case-insensitive names");
  CHECK(ac_type_from_name("F16") == AC_TYPE_F16 && ac_type_from_name("BF16") == AC_TYPE_BF16,
        "upper-case float names");
  CHECK(ac_type_from_name("q4") == -1 && ac_type_from_name("q4_0x") == -1 &&
            ac_type_from_name("") == -1 && ac_type_from_name(NULL) == -1,
        "unknown names");
  CHECK(ac_type_traits(4) == NULL && ac_type_traits(5) == NULL && ac_type_traits(16) == NULL &&
            ac_type_traits(AC_TYPE_COUNT) == NULL && ac_type_traits(1001) == NULL,
        "unknown ids have no traits");
  CHECK(ac_type_traits(1000) && strcmp(ac_type_name(1000), "q2x") == 0 && ac_type_from_name("Q2X") == 1000 &&
            ac_row_size(1000, 64) == 24,
        "our q2x extension type is registered");
  CHECK(ac_type_name(4) == NULL && ac_type_name(99) == NULL, "unknown ids have no name");
  CHECK(ac_row_size(AC_TYPE_Q4_1, 576) == 18 * 20 && ac_row_size(AC_TYPE_Q8_0, 1536) == 48 * 34 &&
            ac_row_size(AC_TYPE_F16, 576) == 1152 && ac_row_size(AC_TYPE_Q4_K, 512) == 288,
        "ac_row_size");
  CHECK(ac_row_size(AC_TYPE_Q4_K, 576) == 0 && ac_row_size(AC_TYPE_Q4_0, 33) == 0 &&
            ac_row_size(4, 32) == 0 && ac_row_size(AC_TYPE_F32, -1) == 0,
        "ac_row_size rejects bad rows");
  CHECK(ac_type_bpw(AC_TYPE_Q4_0) == 4.5 && ac_type_bpw(AC_TYPE_Q4_1) == 5.0 &&
            ac_type_bpw(AC_TYPE_Q8_0) == 8.5 && ac_type_bpw(AC_TYPE_Q4_K) == 4.5 &&
            ac_type_bpw(AC_TYPE_Q6_K) == 6.5625 && ac_type_bpw(AC_TYPE_Q2_K) == 2.625 &&
            ac_type_bpw(AC_TYPE_F16) == 16 && ac_type_bpw(AC_TYPE_F32) == 32 && ac_type_bpw(4) == 0,
        "ac_type_bpw");
  // Kernel sets: "ref" always exists; unknown names never do.
  CHECK(ac__quant_traits_for("ref", AC_TYPE_Q4_1) != NULL, "ref set");
  CHECK(ac__quant_traits_for("sse9", AC_TYPE_Q4_1) == NULL && ac__quant_traits_for(NULL, 3) == NULL,
        "unknown set");
  const ac_type_traits_t *r = ac__quant_traits_for("ref", AC_TYPE_Q4_1);
  CHECK(r && r->vec_dot == r->vec_dot_ref && r->to_float == r->to_float_ref &&
            r->vec_dot_4 == r->vec_dot_4_ref,
        "the ref set uses the _ref kernels");
  // The hot types of prefill have tiles in every set; a set's tile is never the reference one
  // unless its vec_dot is the reference one too.
  const ac_type_t tiled[] = {AC_TYPE_F16,  AC_TYPE_BF16, AC_TYPE_Q4_0, AC_TYPE_Q4_1,
                             AC_TYPE_Q8_0, AC_TYPE_Q4_K, AC_TYPE_Q6_K};
  for (int s = 0; s < 3; s++) {
    for (size_t k = 0; k < sizeof tiled / sizeof tiled[0]; k++) {
      const ac_type_traits_t *tt = ac__quant_traits_for(simd_sets[s], tiled[k]);
      if (tt)
        CHECK(tt->vec_dot_4 != NULL, "%s set has no vec_dot_4 for %s", simd_sets[s], tt->name);
    }
    for (int k = 0; k < N_TYPES; k++) {
      const ac_type_traits_t *tt = ac__quant_traits_for(simd_sets[s], all_types[k]);
      if (tt && tt->vec_dot_4 && tt->vec_dot_4 == tt->vec_dot_4_ref)
        CHECK(tt->vec_dot == tt->vec_dot_ref, "%s %s: reference tile with a SIMD vec_dot",
              simd_sets[s], tt->name);
    }
  }
}

// --- half and bfloat16 -------------------------------------------------------------------------

static bool is_nan_f(float f) { return f != f; }

// The half nearest to finite f, ties to even, found by checking the neighbours of h: an
// independent check of ac_f32_to_f16 that uses only ac_f16_to_f32 (itself checked exhaustively).
static bool f16_is_nearest_even(float f, uint16_t h) {
  const double x = f;
  const double v = ac_f16_to_f32(h);
  if ((h & 0x7FFF) == 0x7C00) return fabs(x) >= 65520.0;  // inf only from the rounding boundary
  if (fabs(x) >= 65520.0) return false;
  const uint16_t mag = h & 0x7FFF, sign = h & 0x8000;
  const double err = fabs(v - x);
  // Both neighbours in magnitude (same sign; below zero means the other sign's smallest).
  for (int dlt = -1; dlt <= 1; dlt += 2) {
    int m = (int)mag + dlt;
    if (m < 0 || m > 0x7BFF) continue;
    const double nv = ac_f16_to_f32((uint16_t)(sign | m));
    const double nerr = fabs(nv - x);
    if (nerr < err) return false;
    if (nerr == err && (mag & 1)) return false;  // a tie must go to the even mantissa
  }
  if (mag == 0 && x != 0) {
    // Against the other sign's smallest subnormal.
    if (fabs(x) > 0x1p-25) return false;
  }
  return true;
}

static void test_f16_conversions(void) {
  // Exhaustive: every half converts to float and back to itself (NaNs stay NaN, made quiet).
  bool roundtrip = true, nan_ok = true;
  for (uint32_t h = 0; h < 65536; h++) {
    const float f = ac_f16_to_f32((uint16_t)h);
    const uint16_t back = ac_f32_to_f16(f);
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) {
      nan_ok = nan_ok && is_nan_f(f) && (back & 0x7C00) == 0x7C00 && (back & 0x3FF) &&
               back == (h | 0x200);
    } else {
      roundtrip = roundtrip && back == h;
    }
  }
  CHECK(roundtrip, "f16 -> f32 -> f16 is not the identity");
  CHECK(nan_ok, "f16 NaN handling");

  // Hand-picked values.
  struct {
    float f;
    uint16_t h;
  } cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {65504.0f, 0x7BFF},   // largest half
      {65519.99f, 0x7BFF},  // just below the rounding boundary
      {65520.0f, 0x7C00},   // tie between 65504 and 65536: to even = inf
      {1e30f, 0x7C00},      // overflow
      {-1e30f, 0xFC00},
      {INFINITY, 0x7C00},
      {-INFINITY, 0xFC00},
      {0x1p-14f, 0x0400},         // smallest normal
      {0x1p-24f, 0x0001},         // smallest subnormal
      {0x1p-25f, 0x0000},         // tie between 0 and 2^-24: to even = 0
      {0x1.000002p-25f, 0x0001},  // just above the tie
      {0x3p-25f, 0x0002},         // 1.5 units: tie to even = 2
      {0x5p-25f, 0x0002},         // 2.5 units: tie to even = 2
      {0x7p-25f, 0x0004},         // 3.5 units: tie to even = 4
      {0x1.ff8p-15f, 0x03FF},     // the largest subnormal
      {0x1.ffcp-15f, 0x0400},     // tie above it: to even = the smallest normal
      {1.0f + 0x1p-11f, 0x3C00},  // tie: to even
      {1.0f + 0x3p-11f, 0x3C02},  // tie: to even (up)
      {1e-40f, 0x0000},           // float subnormal: far below half's range
      {-1e-40f, 0x8000},
      {0.1f, 0x2E66},
      {3.14159265f, 0x4248},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const uint16_t h = ac_f32_to_f16(cases[i].f);
    CHECK(h == cases[i].h, "f32_to_f16(%a) = %04x, want %04x", cases[i].f, h, cases[i].h);
  }
  CHECK(is_nan_f(ac_f16_to_f32(ac_f32_to_f16(NAN))), "NaN survives f32 -> f16");
  CHECK(ac_f16_to_f32(0x0001) == 0x1p-24f && ac_f16_to_f32(0x8001) == -0x1p-24f &&
            ac_f16_to_f32(0x03FF) == 0x3FFp-24f && ac_f16_to_f32(0x7BFF) == 65504.0f &&
            ac_f16_to_f32(0x7C00) == INFINITY && ac_f16_to_f32(0xFC00) == -INFINITY,
        "f16 -> f32 special values");

  // Random finite floats across the half range and beyond: nearest-even, checked independently.
  bool nearest = true;
  for (int i = 0; i < 200000 && nearest; i++) {
    float f = bits_f32((uint32_t)rnd_u64());
    if (is_nan_f(f) || isinf(f)) continue;
    if (fabsf(f) > 70000.0f) f = fmodf(f, 70000.0f);
    if (i & 1) f = ldexpf(rnd_normal(), (int)(rnd_u64() % 48) - 30);  // many exponents
    const uint16_t h = ac_f32_to_f16(f);
    nearest = f16_is_nearest_even(f, h);
    if (!nearest) fprintf(stderr, "  f32_to_f16(%a) = %04x is not nearest-even\n", f, h);
  }
  CHECK(nearest, "f32_to_f16 nearest-even on random values");

  // Against the CPU's F16C (through the SIMD F16 kernels), on random bit patterns including
  // NaNs, infinities and subnormals: the scalar and hardware paths must agree bit for bit.
  for (int s = 1; s < 3; s++) {
    const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], AC_TYPE_F16);
    if (!t) continue;
    enum { N = 1 << 16 };
    float *x = xmalloc(N * sizeof(float)), *back = xmalloc(N * sizeof(float));
    uint16_t *h = xmalloc(N * 2), *h_ref = xmalloc(N * 2);
    for (int i = 0; i < N; i++) x[i] = bits_f32((uint32_t)rnd_u64());
    t->from_float(x, h, N);
    t->from_float_ref(x, h_ref, N);
    CHECK(!memcmp(h, h_ref, N * 2), "%s f16 from_float differs from the scalar conversion",
          simd_sets[s]);
    // And every half back to float.
    for (int i = 0; i < N; i++) h[i] = (uint16_t)i;
    t->to_float(h, x, N);
    t->to_float_ref(h, back, N);
    CHECK(!memcmp(x, back, N * sizeof(float)), "%s f16 to_float differs from the scalar one",
          simd_sets[s]);
    free(x);
    free(back);
    free(h);
    free(h_ref);
  }
}

static void test_bf16_conversions(void) {
  struct {
    float f;
    uint16_t h;
  } cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3F80},
      {1.0f + 0x1p-8f, 0x3F80},    // tie: to even (down)
      {1.0f + 0x3p-8f, 0x3F82},    // tie: to even (up)
      {1.0f + 0x1.2p-8f, 0x3F81},  // above the tie
      {3.4028235e38f, 0x7F80},     // FLT_MAX rounds to inf
      {INFINITY, 0x7F80},
      {-INFINITY, 0xFF80},
      {0x1p-133f, 0x0001},  // float subnormals are kept, not flushed
      {-0x1p-133f, 0x8001},
      {65000.0f, 0x477E},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const uint16_t h = ac_f32_to_bf16(cases[i].f);
    CHECK(h == cases[i].h, "f32_to_bf16(%a) = %04x, want %04x", cases[i].f, h, cases[i].h);
  }
  // A NaN whose payload sits only in the low 16 bits must stay a NaN.
  CHECK(ac_f32_to_bf16(bits_f32(0x7F800001)) == 0x7FC0, "bf16 NaN kept");
  CHECK(is_nan_f(ac_bf16_to_f32(ac_f32_to_bf16(NAN))), "bf16 NaN round trip");
  bool exact = true;
  for (uint32_t h = 0; h < 65536; h++) {
    const float f = ac_bf16_to_f32((uint16_t)h);
    exact = exact && f32_bits(f) == h << 16;
    if (!is_nan_f(f)) exact = exact && ac_f32_to_bf16(f) == h;
  }
  CHECK(exact, "bf16 -> f32 -> bf16 is not the identity");
}

// --- hand-computed blocks ----------------------------------------------------------------------

static bool floats_equal(const float *a, const float *b, int n, const char *what) {
  for (int i = 0; i < n; i++) {
    if (a[i] != b[i]) {
      fprintf(stderr, "  %s[%d] = %g, want %g\n", what, i, a[i], b[i]);
      return false;
    }
  }
  return true;
}

static void test_known_blocks(void) {
  float y[256], want[256];

  // Q4_0 with d = 1: value j (j < 16) has nibble j, value 16 + j has nibble 15 - j.
  ac_block_q4_0 b40 = {.d = 0x3C00};
  for (int j = 0; j < 16; j++) b40.qs[j] = (uint8_t)(j | ((15 - j) << 4));
  for (int j = 0; j < 16; j++) {
    want[j] = (float)(j - 8);       // -8 .. 7
    want[16 + j] = (float)(7 - j);  // 7 .. -8
  }
  ac_type_traits(AC_TYPE_Q4_0)->to_float_ref(&b40, y, 32);
  CHECK(floats_equal(y, want, 32, "q4_0"), "q4_0 hand block");

  // Q4_1 with d = 0.5, m = -1: x = 0.5 q - 1.
  ac_block_q4_1 b41 = {.d = 0x3800, .m = 0xBC00};
  for (int j = 0; j < 16; j++) b41.qs[j] = (uint8_t)(j | ((15 - j) << 4));
  for (int j = 0; j < 16; j++) {
    want[j] = 0.5f * (float)j - 1;
    want[16 + j] = 0.5f * (float)(15 - j) - 1;
  }
  for (int s = 0; s < 3; s++) {
    const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], AC_TYPE_Q4_1);
    if (!t) continue;
    t->to_float(&b41, y, 32);
    CHECK(floats_equal(y, want, 32, "q4_1"), "q4_1 hand block (%s)", simd_sets[s]);
  }

  // Q5_0 with d = 2: low nibbles all 3, qh has bits 0..7 and 24..31 set:
  // q = 3 + 16 = 19 -> 2 * 3 = 6 where the bit is set, 2 * (3 - 16) = -26 elsewhere.
  ac_block_q5_0 b50 = {.d = 0x4000, .qh = {0xFF, 0x00, 0x00, 0xFF}};
  memset(b50.qs, 0x33, sizeof b50.qs);
  for (int j = 0; j < 32; j++) want[j] = (j < 8 || j >= 24) ? 6.0f : -26.0f;
  ac_type_traits(AC_TYPE_Q5_0)->to_float_ref(&b50, y, 32);
  CHECK(floats_equal(y, want, 32, "q5_0"), "q5_0 hand block");

  // Q8_0 with d = 0.25: qs = j - 16.
  ac_block_q8_0 b80 = {.d = 0x3400};
  for (int j = 0; j < 32; j++) {
    b80.qs[j] = (int8_t)(j - 16);
    want[j] = 0.25f * (float)(j - 16);
  }
  for (int s = 0; s < 3; s++) {
    const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], AC_TYPE_Q8_0);
    if (!t) continue;
    t->to_float(&b80, y, 32);
    CHECK(floats_equal(y, want, 32, "q8_0"), "q8_0 hand block (%s)", simd_sets[s]);
  }

  // Q2_K: every qs byte 0b11100100 puts level r in the r-th 32-value run of each 128; every
  // scale byte 0x12 is scale 2, min 1; d = 1, dmin = 0.5: x = 2 r - 0.5.
  ac_block_q2_K b2k = {.d = 0x3C00, .dmin = 0x3800};
  memset(b2k.qs, 0xE4, sizeof b2k.qs);
  memset(b2k.scales, 0x12, sizeof b2k.scales);
  for (int e = 0; e < 256; e++) want[e] = 2.0f * (float)((e % 128) / 32) - 0.5f;
  ac_type_traits(AC_TYPE_Q2_K)->to_float_ref(&b2k, y, 256);
  CHECK(floats_equal(y, want, 256, "q2_K"), "q2_K hand block");

  // Q3_K: low bits all 01 (level 1), hmask bit 0 set only for values 0..31 (run 0); a clear
  // high bit subtracts 4. All 16 scales are 1 (stored 33 = 0b10'0001: low nibble 1, high 2
  // bits 2), d = 1: x = 1 for values 0..31 and 1 - 4 = -3 elsewhere.
  ac_block_q3_K b3k = {.d = 0x3C00};
  memset(b3k.qs, 0x55, sizeof b3k.qs);
  memset(b3k.hmask, 0x01, sizeof b3k.hmask);
  memset(b3k.scales, 0x11, 8);
  memset(b3k.scales + 8, 0xAA, 4);
  for (int e = 0; e < 256; e++) want[e] = e < 32 ? 1.0f : -3.0f;
  ac_type_traits(AC_TYPE_Q3_K)->to_float_ref(&b3k, y, 256);
  CHECK(floats_equal(y, want, 256, "q3_K"), "q3_K hand block");

  // Q4_K: sub-block j has scale j + 1 and min j (all below 16, so the packing is simple:
  // bytes 0-3 scales 0-3, 4-7 mins 0-3, 8-11 scale | min << 4 of sub-blocks 4-7). Every qs byte
  // 0x53: the low nibble 3 for the first 32 of each 64, the high nibble 5 for the next 32.
  // d = 1, dmin = 0.25: x = (j + 1) * q - 0.25 j.
  ac_block_q4_K b4k = {
      .d = 0x3C00,
      .dmin = 0x3400,
      .scales = {1, 2, 3, 4, 0, 1, 2, 3, 5 | 4 << 4, 6 | 5 << 4, 7 | 6 << 4, 8 | 7 << 4}};
  memset(b4k.qs, 0x53, sizeof b4k.qs);
  for (int e = 0; e < 256; e++) {
    const int j = e / 32;
    want[e] = (float)(j + 1) * (float)(j % 2 ? 5 : 3) - 0.25f * (float)j;
  }
  ac_type_traits(AC_TYPE_Q4_K)->to_float_ref(&b4k, y, 256);
  CHECK(floats_equal(y, want, 256, "q4_K"), "q4_K hand block");

  // Q5_K: the same with every qh bit set (+16 on every level).
  ac_block_q5_K b5k = {.d = 0x3C00, .dmin = 0x3400};
  memcpy(b5k.scales, b4k.scales, sizeof b5k.scales);
  memset(b5k.qs, 0x53, sizeof b5k.qs);
  memset(b5k.qh, 0xFF, sizeof b5k.qh);
  for (int e = 0; e < 256; e++) {
    const int j = e / 32;
    want[e] = (float)(j + 1) * (float)(j % 2 ? 21 : 19) - 0.25f * (float)j;
  }
  ac_type_traits(AC_TYPE_Q5_K)->to_float_ref(&b5k, y, 256);
  CHECK(floats_equal(y, want, 256, "q5_K"), "q5_K hand block");

  // Q6_K: ql bytes 0x21 (low nibble 1, high 2), qh bytes 0b11100100 (2-bit fields 0,1,2,3), all
  // scales 1, d = 1. Within each 128 values, quarter r takes its nibble from the low (r even) or
  // high (r odd... see the layout) half: quarter 0 = 1 | 0<<4, 1 = 1 | 1<<4, 2 = 2 | 2<<4,
  // 3 = 2 | 3<<4, each minus 32.
  ac_block_q6_K b6k = {.d = 0x3C00};
  memset(b6k.ql, 0x21, sizeof b6k.ql);
  memset(b6k.qh, 0xE4, sizeof b6k.qh);
  memset(b6k.scales, 1, sizeof b6k.scales);
  const float q6want[4] = {1 - 32, 17 - 32, 34 - 32, 50 - 32};
  for (int e = 0; e < 256; e++) want[e] = q6want[(e % 128) / 32];
  ac_type_traits(AC_TYPE_Q6_K)->to_float_ref(&b6k, y, 256);
  CHECK(floats_equal(y, want, 256, "q6_K"), "q6_K hand block");

  // Q8_0 quantization by hand: amax 127 gives d = 1 and q = round half to even (llama.cpp's
  // x86 quantizer).
  float x[32];
  for (int j = 0; j < 32; j++) x[j] = (float)j - 15.5f;  // ties everywhere: -15.5 .. 15.5
  x[31] = 127;
  ac_block_q8_0 q80;
  ac_type_traits(AC_TYPE_Q8_0)->from_float_ref(x, &q80, 32);
  bool ok = q80.d == 0x3C00 && q80.qs[31] == 127;
  for (int j = 0; j < 31; j++) ok = ok && q80.qs[j] == (int8_t)nearbyintf(x[j]);
  ok = ok && q80.qs[0] == -16 && q80.qs[1] == -14 && q80.qs[15] == 0 && q80.qs[16] == 0 && q80.qs[17] == 2;
  CHECK(ok, "q8_0 quantization rounds half to even");
}

// --- random and adversarial data ---------------------------------------------------------------

// Kinds of float input for the quantizers.
enum {
  IN_NORMAL,       // N(0, 1)
  IN_ZEROS,        // all zeros
  IN_HUGE,         // +-65000 (the edge of half's range)
  IN_HUGER,        // +-1e30 (float paths and the quantizers' byte-exactness only)
  IN_TINY,         // 1e-6 .. 1e-40, float subnormals included
  IN_ALTERNATING,  // +a, -a, +a, ...
  IN_OUTLIER,      // N(0, 1) with one value of 1000 per 32
  IN_TIES,         // values k/2 scaled so a block's max maps onto 127: rounding ties
  IN_COUNT,
};
static const char *const input_names[IN_COUNT] = {"normal", "zeros",       "huge",    "huger",
                                                  "tiny",   "alternating", "outlier", "ties"};

static void fill_input(float *x, int64_t n, int kind) {
  for (int64_t i = 0; i < n; i++) {
    switch (kind) {
      case IN_NORMAL: x[i] = rnd_normal(); break;
      case IN_ZEROS: x[i] = 0; break;
      case IN_HUGE: x[i] = (rnd_u64() & 1) ? 65000.0f : -65000.0f; break;
      case IN_HUGER: x[i] = (rnd_u64() & 1) ? 1e30f * rnd_unit() : -1e30f; break;
      case IN_TINY: x[i] = ldexpf(rnd_normal(), -20 - (int)(i % 130)); break;
      case IN_ALTERNATING: x[i] = (i & 1) ? -1.5f : 1.5f; break;
      case IN_OUTLIER: x[i] = (i % 32 == 7) ? 1000.0f : rnd_normal(); break;
      case IN_TIES:
        // Block max 127 (so id = 1 for Q8_0) and halves in between.
        x[i] = (i % 32 == 0) ? 127.0f : (float)((int)(rnd_u64() % 253) - 126) * 0.5f;
        break;
    }
  }
}

// Random bytes that form valid blocks of `type`: every scale field is set to a finite half (or
// float) of moderate size, the rest is random.
static void fill_random_blocks(ac_type_t type, void *dst, int64_t n) {
  const ac_type_traits_t *t = ac_type_traits(type);
  const size_t bytes = ac_row_size(type, n);
  uint8_t *p = dst;
  for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)rnd_u64();
  const int64_t nb = n / t->blck_size;
  for (int64_t b = 0; b < nb; b++) {
    uint8_t *blk = p + (size_t)b * t->type_size;
    uint16_t h[2];
    h[0] = ac_f32_to_f16((rnd_unit() - 0.5f) * 0.05f);
    h[1] = ac_f32_to_f16((rnd_unit() - 0.5f) * 0.5f);
    switch (type) {
      case AC_TYPE_F32: memcpy(blk, &(float){rnd_normal()}, 4); break;
      case AC_TYPE_F16: memcpy(blk, &(uint16_t){ac_f32_to_f16(rnd_normal())}, 2); break;
      case AC_TYPE_BF16: memcpy(blk, &(uint16_t){ac_f32_to_bf16(rnd_normal())}, 2); break;
      case AC_TYPE_Q4_0:
      case AC_TYPE_Q5_0:
      case AC_TYPE_Q8_0:
      case AC_TYPE_Q3_K:
      case AC_TYPE_Q6_K: {
        const size_t off = type == AC_TYPE_Q3_K   ? offsetof(ac_block_q3_K, d)
                           : type == AC_TYPE_Q6_K ? offsetof(ac_block_q6_K, d)
                                                  : 0;
        memcpy(blk + off, h, 2);
        break;
      }
      case AC_TYPE_Q4_1:
      case AC_TYPE_Q5_1:
      case AC_TYPE_Q8_1:
      case AC_TYPE_Q4_K:
      case AC_TYPE_Q5_K: memcpy(blk, h, 4); break;
      case AC_TYPE_Q2_K: memcpy(blk + offsetof(ac_block_q2_K, d), h, 4); break;
      case AC_TYPE_Q8_K: memcpy(blk, &(float){(rnd_unit() - 0.5f) * 0.05f}, 4); break;
      default: break;
    }
  }
}

// Where the quantized levels of a block live (everything but the scales): zeroing them leaves
// only the block's offset term, which bounds how much a dot product may cancel.
static void level_bytes(ac_type_t type, size_t *off, size_t *len) {
  switch (type) {
    case AC_TYPE_Q4_0:
      *off = 2;
      *len = 16;
      return;
    case AC_TYPE_Q4_1:
      *off = 4;
      *len = 16;
      return;
    case AC_TYPE_Q5_0:
      *off = 2;
      *len = 20;
      return;
    case AC_TYPE_Q5_1:
      *off = 4;
      *len = 20;
      return;
    case AC_TYPE_Q8_0:
      *off = 2;
      *len = 32;
      return;
    case AC_TYPE_Q2_K:
      *off = 16;
      *len = 64;
      return;
    case AC_TYPE_Q3_K:
      *off = 0;
      *len = 96;
      return;
    case AC_TYPE_Q4_K:
      *off = 16;
      *len = 128;
      return;
    case AC_TYPE_Q5_K:
      *off = 16;
      *len = 160;
      return;
    case AC_TYPE_Q6_K:
      *off = 0;
      *len = 192;
      return;
    default:
      *off = 0;
      *len = 0;
      return;
  }
}

// The scale of a dot product's rounding error: sum over i of (|w_i - o_i| + |o_i|) * |a_i|,
// where o_i is the weight's offset (its value with all levels zero). The kernels compute the
// level and offset parts separately, so this, not |sum w_i a_i|, bounds their rounding.
static double dot_magnitude(ac_type_t type, const void *w, const float *a, int64_t n) {
  const ac_type_traits_t *t = ac_type_traits(type);
  const size_t bytes = ac_row_size(type, n);
  float *wf = xmalloc((size_t)n * sizeof(float)), *of = xmalloc((size_t)n * sizeof(float));
  uint8_t *z = xmalloc(bytes);
  memcpy(z, w, bytes);
  size_t off, len;
  level_bytes(type, &off, &len);
  for (int64_t b = 0; b < n / t->blck_size; b++) memset(z + (size_t)b * t->type_size + off, 0, len);
  t->to_float_ref(w, wf, n);
  t->to_float_ref(z, of, n);
  if (len == 0) memset(of, 0, (size_t)n * sizeof(float));
  double m = 0;
  for (int64_t i = 0; i < n; i++)
    m += (fabs((double)wf[i] - of[i]) + fabs((double)of[i])) * fabs((double)a[i]);
  free(wf);
  free(of);
  free(z);
  return m;
}

// --- kernel sets against the reference ---------------------------------------------------------

static const ac_type_t weight_types[] = {
    AC_TYPE_F32,  AC_TYPE_F16,  AC_TYPE_BF16, AC_TYPE_Q4_0, AC_TYPE_Q4_1,
    AC_TYPE_Q5_0, AC_TYPE_Q5_1, AC_TYPE_Q8_0, AC_TYPE_Q2_K, AC_TYPE_Q3_K,
    AC_TYPE_Q4_K, AC_TYPE_Q5_K, AC_TYPE_Q6_K,
};
#define N_WEIGHT_TYPES (int)(sizeof weight_types / sizeof weight_types[0])

// Row lengths to try for a block size: the model's 576 and 1536, odd block counts (tails), and
// multiples of 256. Float types also get lengths that are not multiples of 16.
static int row_lengths(int64_t blck, int64_t *out) {
  int k = 0;
  if (blck == 1) {
    const int64_t v[] = {576, 1536, 1, 7, 15, 17, 33, 63, 65, 577, 1000, 4096};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) out[k++] = v[i];
  } else if (blck == 32) {
    const int64_t v[] = {576, 1536, 32, 96, 608, 256, 2048};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) out[k++] = v[i];
  } else {
    const int64_t v[] = {256, 512, 768, 1536, 2048, 4096};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) out[k++] = v[i];
  }
  return k;
}

// to_float of every set is bit-identical to to_float_ref on random valid blocks.
static void test_to_float_sets(void) {
  for (int s = 1; s < 3; s++) {
    for (int ti = 0; ti < N_TYPES; ti++) {
      const ac_type_t type = all_types[ti];
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], type);
      if (!t) continue;
      int64_t lens[16];
      const int nl = row_lengths(t->blck_size, lens);
      bool ok = true;
      for (int li = 0; li < nl && ok; li++) {
        const int64_t n = lens[li];
        void *w = xmalloc(ac_row_size(type, n));
        float *a = xmalloc((size_t)n * 4), *b = xmalloc((size_t)n * 4);
        fill_random_blocks(type, w, n);
        t->to_float(w, a, n);
        t->to_float_ref(w, b, n);
        ok = !memcmp(a, b, (size_t)n * 4);
        if (!ok)
          fprintf(stderr, "  %s %s to_float n=%lld differs\n", simd_sets[s], t->name, (long long)n);
        free(w);
        free(a);
        free(b);
      }
      CHECK(ok, "%s to_float of %s is not bit-identical to the reference", simd_sets[s], t->name);
    }
  }
}

// from_float of every set produces the same bytes as from_float_ref, for every input kind.
static void test_from_float_sets(void) {
  for (int s = 1; s < 3; s++) {
    for (int ti = 0; ti < N_TYPES; ti++) {
      const ac_type_t type = all_types[ti];
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], type);
      if (!t) continue;
      int64_t lens[16];
      const int nl = row_lengths(t->blck_size, lens);
      for (int kind = 0; kind < IN_COUNT; kind++) {
        bool ok = true;
        for (int li = 0; li < nl && ok; li++) {
          const int64_t n = lens[li];
          const size_t bytes = ac_row_size(type, n);
          float *x = xmalloc((size_t)n * 4);
          uint8_t *a = xmalloc(bytes), *b = xmalloc(bytes);
          fill_input(x, n, kind);
          memset(a, 0xAA, bytes);
          memset(b, 0x55, bytes);
          t->from_float(x, a, n);
          t->from_float_ref(x, b, n);
          ok = !memcmp(a, b, bytes);
          if (!ok) {
            size_t at = 0;
            while (a[at] == b[at]) at++;
            fprintf(stderr, "  %s %s from_float n=%lld (%s): first difference at byte %zu\n",
                    simd_sets[s], t->name, (long long)n, input_names[kind], at);
          }
          free(x);
          free(a);
          free(b);
        }
        CHECK(ok, "%s from_float of %s on %s input is not byte-identical to the reference",
              simd_sets[s], t->name, input_names[kind]);
      }
    }
  }
}

// The activation quantizers never produce -128 (AC__Q8_ACT_MIN), which the SIMD Q8_0 dot
// products rely on; checked on every input kind, for every kernel set.
static void test_activation_range(void) {
  const int64_t n = 1536;
  float *x = xmalloc(n * 4);
  uint8_t *q = xmalloc(ac_row_size(AC_TYPE_F32, n));
  const ac_type_t types[] = {AC_TYPE_Q8_0, AC_TYPE_Q8_1, AC_TYPE_Q8_K};
  for (int s = 0; s < 3; s++) {
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], types[ti]);
      if (!t) continue;
      // Where the int8 values sit in a block, and how many.
      const size_t off = types[ti] == AC_TYPE_Q8_0 ? 2 : 4;
      const int64_t per = t->blck_size;
      bool ok = true;
      for (int kind = 0; kind < IN_COUNT; kind++) {
        fill_input(x, n, kind);
        t->from_float(x, q, n);
        for (int64_t b = 0; b < n / per; b++) {
          const int8_t *qs = (const int8_t *)(q + (size_t)b * t->type_size + off);
          for (int64_t j = 0; j < per; j++) ok = ok && qs[j] >= AC__Q8_ACT_MIN;
        }
      }
      CHECK(ok, "%s %s from_float produced -128", simd_sets[s], t->name);
    }
  }
  free(x);
  free(q);
}

// Builds one weight row and one activation row of type `type` / its vec_dot_type.
// Weights: random valid blocks (weights_kind < 0) or quantized from an input kind.
static void make_operands(ac_type_t type, int64_t n, int weights_kind, int act_kind, void *w,
                          void *act, float *act_f) {
  const ac_type_traits_t *t = ac_type_traits(type);
  const ac_type_traits_t *vt = ac_type_traits(t->vec_dot_type);
  float *x = xmalloc((size_t)n * 4);
  if (weights_kind < 0) {
    fill_random_blocks(type, w, n);
  } else {
    fill_input(x, n, weights_kind);
    t->from_float_ref(x, w, n);
  }
  fill_input(x, n, act_kind);
  vt->from_float_ref(x, act, n);
  vt->to_float_ref(act, act_f, n);
  free(x);
}

// vec_dot of every set against vec_dot_ref. The two differ only in the order of float
// operations, so the tolerance is relative to the dot product's magnitude (dot_magnitude):
// |simd - ref| <= 1e-5 * magnitude (+ 1e-30 for all-zero rows).
static void test_vec_dot_sets(void) {
  // Input kinds for the dot products: 1e30 is left out since quantized blocks would hold
  // infinite scales (the byte-exactness test above covers it); float types keep it below.
  const int act_kinds[] = {IN_NORMAL,      IN_ZEROS,   IN_HUGE, IN_TINY,
                           IN_ALTERNATING, IN_OUTLIER, IN_TIES};
  const int n_act = (int)(sizeof act_kinds / sizeof act_kinds[0]);
  for (int s = 1; s < 3; s++) {
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
      const ac_type_t type = weight_types[ti];
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], type);
      if (!t) continue;
      int64_t lens[16];
      const int nl = row_lengths(t->blck_size, lens);
      double worst = 0;
      bool ok = true;
      for (int li = 0; li < nl; li++) {
        const int64_t n = lens[li];
        void *w = xmalloc(ac_row_size(type, n));
        void *act = xmalloc(ac_row_size(t->vec_dot_type, n));
        float *act_f = xmalloc((size_t)n * 4);
        // Random weights with every activation kind, then each weight kind with normal
        // activations; float types also get 1e30 weights.
        for (int c = 0; c < n_act + IN_COUNT; c++) {
          int wk = -1, ak = IN_NORMAL;
          if (c < n_act)
            ak = act_kinds[c];
          else
            wk = c - n_act;
          if (wk == IN_HUGER && t->is_quantized) continue;
          make_operands(type, n, wk, ak, w, act, act_f);
          float got = NAN, want = NAN;
          t->vec_dot(n, &got, w, act);
          t->vec_dot_ref(n, &want, w, act);
          const double mag = dot_magnitude(type, w, act_f, n);
          const double err = fabs((double)got - want);
          // Overflow must agree too: both the same infinity, or both NaN (e.g. Q8_1's s
          // overflowing half for +-65000 activations, then times a zero minimum).
          const bool both_inf = (isinf(got) && isinf(want) && (got > 0) == (want > 0)) ||
                                (is_nan_f(got) && is_nan_f(want));
          const bool good = both_inf || err <= 1e-5 * mag + 1e-30;
          if (!good) {
            ok = false;
            fprintf(stderr, "  %s %s vec_dot n=%lld w=%s a=%s: %.9g vs ref %.9g (mag %.3g)\n",
                    simd_sets[s], t->name, (long long)n, wk < 0 ? "random" : input_names[wk],
                    input_names[ak], got, want, mag);
          } else if (mag > 0 && !both_inf && err / mag > worst) {
            worst = err / mag;
          }
        }
        free(w);
        free(act);
        free(act_f);
      }
      CHECK(ok, "%s vec_dot of %s differs from the reference beyond 1e-5 (worst ok %.2g)",
            simd_sets[s], t->name, worst);
    }
  }
}

// vec_dot_4 of every set that has one gives, for every pair of its tile, the same bits as that
// set's vec_dot on the pair: for one and two weight rows, on rows with odd block counts and float
// rows with tails, with random and adversarial rows mixed within a tile (each activation row of a
// tile another kind, inf and NaN scales included), and with row and output strides that are not
// the rows' sizes. Output slots outside the tile must be left alone.
static void test_vec_dot_4_sets(void) {
  for (int s = 0; s < 3; s++) {
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
      const ac_type_t type = weight_types[ti];
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], type);
      if (!t || !t->vec_dot_4) continue;
      const ac_type_traits_t *vt = ac_type_traits(t->vec_dot_type);
      int64_t lens[16];
      int nl = 0;
      if (t->blck_size == 1) {
        const int64_t v[] = {32, 33, 40, 63, 96, 100, 576, 577, 1000, 1536, 4096};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) lens[nl++] = v[i];
      } else {
        // 1, 3, 5, ... blocks, then the model's rows and 4096.
        const int64_t nbs[] = {1, 2, 3, 5, 9, 18, 19, 48, 65};
        for (size_t i = 0; i < sizeof nbs / sizeof nbs[0]; i++)
          if (nbs[i] * t->blck_size <= 4096) lens[nl++] = nbs[i] * t->blck_size;
        if (lens[nl - 1] != 4096) lens[nl++] = 4096;
      }
      bool ok = true;
      for (int li = 0; li < nl && ok; li++) {
        const int64_t n = lens[li];
        // Strides with a gap between rows; the last row ends where its allocation does, so
        // that ASan sees a read past it.
        const size_t wrow = ac_row_size(type, n), arow = ac_row_size(t->vec_dot_type, n);
        const size_t bx = wrow + 24, by = arow + 40;
        uint8_t *w = xmalloc(bx + wrow), *act = xmalloc(3 * by + arow);
        float *x = xmalloc((size_t)n * 4);
        for (int c = 0; c < IN_COUNT + 2 && ok; c++) {
          // Weight row 0: random blocks (c >= IN_COUNT) or quantized from input kind c; row 1
          // random. Activation row j: input kind c + j.
          if (c >= IN_COUNT) {
            fill_random_blocks(type, w, n);
          } else {
            fill_input(x, n, c);
            t->from_float_ref(x, w, n);
          }
          fill_random_blocks(type, w + bx, n);
          for (int j = 0; j < 4; j++) {
            fill_input(x, n, (c + j) % IN_COUNT);
            vt->from_float_ref(x, act + j * by, n);
          }
          for (int nr = 1; nr <= 2 && ok; nr++) {
            // bs = 3: the tile's outputs are s[j * 3 + i]; slot 2 of each row stays untouched.
            float got[12], want[12];
            for (int k = 0; k < 12; k++) got[k] = want[k] = -0.0f;
            t->vec_dot_4(n, nr, got, 3, w, bx, act, by);
            for (int j = 0; j < 4; j++)
              for (int i = 0; i < nr; i++)
                t->vec_dot(n, &want[j * 3 + i], w + i * bx, act + j * by);
            if (memcmp(got, want, sizeof got)) {
              ok = false;
              for (int k = 0; k < 12; k++)
                if (f32_bits(got[k]) != f32_bits(want[k]))
                  fprintf(stderr,
                          "  %s %s vec_dot_4 n=%lld nr=%d case %d: s[%d] %.9g vs vec_dot %.9g\n",
                          simd_sets[s], t->name, (long long)n, nr, c, k, got[k], want[k]);
            }
          }
        }
        free(w);
        free(act);
        free(x);
      }
      CHECK(ok, "%s vec_dot_4 of %s is not bit-identical to its vec_dot", simd_sets[s], t->name);
    }
  }
}

// Where a block keeps its half scales (the first, and the second if it has one: Q4_1's m, a
// K-quant's dmin); -1 where there is no such half.
static void block_half_offsets(ac_type_t type, int *a, int *b) {
  *a = *b = -1;
  switch (type) {
    case AC_TYPE_Q4_0:
    case AC_TYPE_Q5_0:
    case AC_TYPE_Q8_0: *a = 0; break;
    case AC_TYPE_Q4_1:
    case AC_TYPE_Q5_1:
    case AC_TYPE_Q8_1:
    case AC_TYPE_Q4_K:
    case AC_TYPE_Q5_K:
      *a = 0;
      *b = 2;
      break;
    case AC_TYPE_Q2_K:
      *a = (int)offsetof(ac_block_q2_K, d);
      *b = *a + 2;
      break;
    case AC_TYPE_Q3_K: *a = (int)offsetof(ac_block_q3_K, d); break;
    case AC_TYPE_Q6_K: *a = (int)offsetof(ac_block_q6_K, d); break;
    default: break;
  }
}

// Adversarial scales: every block's halves set from `set`, one entry per block in turn (zero,
// negative zero, the smallest and largest subnormals, the largest finite, a power of two,
// infinities, NaN); Q8_K activations get float scales of the same kinds.
static void poke_scales(ac_type_t type, uint8_t *row, int64_t n, int set) {
  static const uint16_t halves[][2] = {
      {0x0000, 0x0001}, {0x8000, 0x03FF}, {0x0001, 0x8001}, {0x03FF, 0x0000},
      {0x7BFF, 0x0200}, {0x3C00, 0x7BFF}, {0x7C00, 0x0001}, {0xFC00, 0x3C00},
      {0x7E00, 0x0000}, {0x0200, 0x7C00},
  };
  static const float floats[] = {0.0f, 1e-40f, -1e-45f, 1.17e-38f, 3e38f, INFINITY, NAN, 0.5f};
  const int nh = (int)(sizeof halves / sizeof halves[0]), nf = (int)(sizeof floats / sizeof floats[0]);
  const ac_type_traits_t *t = ac_type_traits(type);
  const int64_t nb = n / t->blck_size;
  for (int64_t b = 0; b < nb; b++) {
    uint8_t *blk = row + (size_t)b * t->type_size;
    const int k = (int)((b + set) % nh);
    if (type == AC_TYPE_Q8_K) {
      memcpy(blk, &floats[(b + set) % nf], 4);
      continue;
    }
    int oa, ob;
    block_half_offsets(type, &oa, &ob);
    if (oa >= 0) memcpy(blk + oa, &halves[k][0], 2);
    if (ob >= 0) memcpy(blk + ob, &halves[k][1], 2);
  }
}

// vec_dot_r4 (the decode kernel: 4 weight rows against one activation row) of every set that has
// one gives, for each of its rows, the same bits as that set's vec_dot on the row: on random
// rows and rows quantized from every input kind, the 4 rows of a call each of another kind, with
// adversarial scales (zeros, subnormals, huge, inf, NaN) in weights and activations, on row
// lengths with odd and even block counts and the model's 576 and 1536, and with a row stride
// that is not the row size. Outputs past the 4 must be left alone.
static void test_vec_dot_r4_sets(void) {
  // The types with decode kernels have them in every SIMD set.
  const ac_type_t decode_types[] = {AC_TYPE_Q4_0, AC_TYPE_Q4_1, AC_TYPE_Q8_0, AC_TYPE_Q4_K,
                                    AC_TYPE_Q2_K};
  for (int s = 1; s < 3; s++)
    for (size_t k = 0; k < sizeof decode_types / sizeof decode_types[0]; k++) {
      const ac_type_traits_t *tt = ac__quant_traits_for(simd_sets[s], decode_types[k]);
      if (tt)
        CHECK(tt->vec_dot_r4 && tt->vec_dot_r4 != tt->vec_dot_r4_ref,
              "%s set has no vec_dot_r4 of its own for %s", simd_sets[s], tt->name);
    }
  for (int s = 0; s < 3; s++) {
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
      const ac_type_t type = weight_types[ti];
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], type);
      if (!t) continue;
      CHECK(t->vec_dot_r4_ref != NULL, "%s %s: no vec_dot_r4_ref", simd_sets[s], t->name);
      // A set's decode kernel is never the reference one unless its vec_dot is the reference one.
      if (t->vec_dot_r4 && t->vec_dot_r4 == t->vec_dot_r4_ref)
        CHECK(t->vec_dot == t->vec_dot_ref, "%s %s: reference vec_dot_r4 with a SIMD vec_dot",
              simd_sets[s], t->name);
      if (!t->vec_dot_r4) continue;
      const ac_type_traits_t *vt = ac_type_traits(t->vec_dot_type);
      int64_t lens[16];
      int nl = 0;
      if (t->blck_size == 1) {
        const int64_t v[] = {1, 7, 32, 33, 576, 577, 1536};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) lens[nl++] = v[i];
      } else if (t->blck_size == 32) {
        const int64_t v[] = {32, 64, 96, 256, 512, 576, 608, 1536};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) lens[nl++] = v[i];
      } else {
        const int64_t v[] = {256, 512, 768, 1536, 4096};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) lens[nl++] = v[i];
      }
      bool ok = true;
      int cases = 0;
      for (int li = 0; li < nl && ok; li++) {
        const int64_t n = lens[li];
        const size_t wrow = ac_row_size(type, n), arow = ac_row_size(t->vec_dot_type, n);
        const size_t bx = wrow + 40;
        // The last row ends where its allocation does, so that ASan sees a read past it.
        uint8_t *w = xmalloc(3 * bx + wrow), *act = xmalloc(arow);
        float *x = xmalloc((size_t)n * 4);
        const int n_cases = IN_COUNT + 12;
        for (int c = 0; c < n_cases && ok; c++, cases++) {
          // Row r: quantized from input kind c + r, or random blocks (every 3rd row from
          // c >= IN_COUNT on); the activation from kind c.
          for (int r = 0; r < 4; r++) {
            uint8_t *row = w + r * bx;
            if (c >= IN_COUNT && (c + r) % 3 == 0) {
              fill_random_blocks(type, row, n);
            } else {
              fill_input(x, n, (c + r) % IN_COUNT);
              t->from_float_ref(x, row, n);
            }
          }
          fill_input(x, n, c % IN_COUNT);
          vt->from_float_ref(x, act, n);
          // The last cases: adversarial scales in some weight rows and in the activation.
          if (c >= IN_COUNT + 4) {
            const int k = c - (IN_COUNT + 4);
            for (int r = 0; r < 4; r++)
              if (t->is_quantized && (k + r) % 2 == 0) poke_scales(type, w + r * bx, n, k + r);
            if (vt->is_quantized && k % 3 != 2) poke_scales(t->vec_dot_type, act, n, k);
          }
          float got[6], want[6];
          for (int k = 0; k < 6; k++) got[k] = want[k] = -0.0f;
          t->vec_dot_r4(n, got, w, bx, act);
          for (int r = 0; r < 4; r++) t->vec_dot(n, &want[r], w + r * bx, act);
          // Bit for bit, except that a NaN may come out as another NaN: where two NaNs meet in
          // an addition (say a NaN scale's and inf * 0's, which have other signs), x86 returns
          // the one in a given operand slot, and for commutative operations the compiler picks
          // the slots, not the C source. Every number, infinities included, must be identical.
          bool same = true;
          for (int k = 0; k < 6; k++)
            same = same && (f32_bits(got[k]) == f32_bits(want[k]) ||
                            (k < 4 && is_nan_f(got[k]) && is_nan_f(want[k])));
          if (!same) {
            ok = false;
            for (int k = 0; k < 6; k++)
              if (f32_bits(got[k]) != f32_bits(want[k]))
                fprintf(stderr, "  %s %s vec_dot_r4 n=%lld case %d: s[%d] %.9g vs vec_dot %.9g\n",
                        simd_sets[s], t->name, (long long)n, c, k, got[k], want[k]);
          }
        }
        free(w);
        free(act);
        free(x);
      }
      CHECK(ok, "%s vec_dot_r4 of %s is not bit-identical to its vec_dot (%d cases)", simd_sets[s],
            t->name, cases);
    }
  }
}

// The decode path of a matrix-vector product as matmul_worker runs it (lib/model.c): each
// thread's contiguous range of output rows in groups of 4 through vec_dot_r4, the rest through
// vec_dot. For odd and small row counts and 1 to 3 threads the outputs must equal vec_dot on
// every row, bit for bit, and every output must be written exactly once.
static void test_decode_matvec(void) {
  const int64_t counts[] = {1, 2, 3, 4, 5, 7, 9, 13, 31};
  for (int s = 0; s < 3; s++) {
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
      const ac_type_t type = weight_types[ti];
      const ac_type_traits_t *t = ac__quant_traits_for(simd_sets[s], type);
      if (!t || !t->vec_dot_r4) continue;
      const ac_type_traits_t *vt = ac_type_traits(t->vec_dot_type);
      const int64_t n = t->blck_size == 256 ? 512 : t->blck_size == 32 ? 576 : 96;
      const size_t wrow = ac_row_size(type, n), arow = ac_row_size(t->vec_dot_type, n);
      const int64_t max_m = counts[sizeof counts / sizeof counts[0] - 1];
      uint8_t *w = xmalloc((size_t)max_m * wrow), *act = xmalloc(arow);
      float *x = xmalloc((size_t)n * 4), *got = xmalloc((size_t)max_m * 4),
            *want = xmalloc((size_t)max_m * 4);
      for (int64_t r = 0; r < max_m; r++) fill_random_blocks(type, w + (size_t)r * wrow, n);
      fill_input(x, n, IN_NORMAL);
      vt->from_float_ref(x, act, n);
      bool ok = true;
      for (size_t mi = 0; mi < sizeof counts / sizeof counts[0]; mi++) {
        const int64_t M = counts[mi];
        for (int64_t r = 0; r < M; r++) t->vec_dot(n, &want[r], w + (size_t)r * wrow, act);
        for (int nth = 1; nth <= 3; nth++) {
          for (int64_t r = 0; r < M; r++) got[r] = NAN;
          const int64_t per = (M + nth - 1) / nth;
          for (int ith = 0; ith < nth; ith++) {
            const int64_t r0 = per * ith, r1 = r0 + per < M ? r0 + per : M;
            int64_t r = r0;
            for (; r + 4 <= r1; r += 4) t->vec_dot_r4(n, &got[r], w + (size_t)r * wrow, wrow, act);
            for (; r < r1; r++) t->vec_dot(n, &got[r], w + (size_t)r * wrow, act);
          }
          if (memcmp(got, want, (size_t)M * 4)) {
            ok = false;
            fprintf(stderr, "  %s %s decode of %lld rows on %d threads differs from vec_dot\n",
                    simd_sets[s], t->name, (long long)M, nth);
          }
        }
      }
      CHECK(ok, "%s %s: decode matrix-vector product is not vec_dot row by row", simd_sets[s],
            t->name);
      free(w);
      free(act);
      free(x);
      free(got);
      free(want);
    }
  }
}

// vec_dot_ref computes the dot product of the dequantized rows: checked against a double sum
// over to_float_ref of both rows. Only Q4_1 / Q5_1 differ by design: their minimum term uses
// the activation block's s, a half, so the tolerance there allows half-precision rounding of s.
static void test_vec_dot_ref_semantics(void) {
  for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
    const ac_type_t type = weight_types[ti];
    const ac_type_traits_t *t = ac_type_traits(type);
    const int64_t n = t->blck_size == 256 ? 1536 : 576;
    void *w = xmalloc(ac_row_size(type, n));
    void *act = xmalloc(ac_row_size(t->vec_dot_type, n));
    float *wf = xmalloc((size_t)n * 4), *af = xmalloc((size_t)n * 4);
    bool ok = true;
    for (int rep = 0; rep < 20; rep++) {
      make_operands(type, n, rep % 2 ? IN_NORMAL : -1, rep % 4 == 3 ? IN_OUTLIER : IN_NORMAL, w,
                    act, af);
      t->to_float_ref(w, wf, n);
      double exact = 0;
      for (int64_t i = 0; i < n; i++) exact += (double)wf[i] * af[i];
      float got;
      t->vec_dot_ref(n, &got, w, act);
      const double mag = dot_magnitude(type, w, af, n);
      const bool uses_s = t->vec_dot_type == AC_TYPE_Q8_1;
      const double tol = (uses_s ? 2e-3 : 1e-5) * mag + 1e-30;
      if (fabs(got - exact) > tol) {
        ok = false;
        fprintf(stderr, "  %s vec_dot_ref %.9g vs dequantized dot %.9g (mag %.3g)\n", t->name, got,
                exact, mag);
      }
    }
    CHECK(ok, "vec_dot_ref of %s is not the dot product of the dequantized rows", t->name);
    free(w);
    free(act);
    free(wf);
    free(af);
  }
}

// --- quantization error ------------------------------------------------------------------------

// Relative RMS error sqrt(sum (y - x)^2 / sum x^2) of to_float_ref(from_float_ref(x)) on N(0, 1)
// rows; the bounds are about 1.3x what the quantizers reach. Rows with one outlier of 1000 per
// 32 values must reproduce the outlier within 1% (the rest of such a block is at the mercy of
// the inflated scale, which test_legacy_max_error bounds for the simple types).
static void test_quantization_error(void) {
  static const struct {
    ac_type_t type;
    double bound;
  } bounds[] = {
      {AC_TYPE_F32, 0},      {AC_TYPE_F16, 4e-4},   {AC_TYPE_BF16, 3e-3},  {AC_TYPE_Q4_0, 0.13},
      {AC_TYPE_Q4_1, 0.11},  {AC_TYPE_Q5_0, 0.065}, {AC_TYPE_Q5_1, 0.055}, {AC_TYPE_Q8_0, 0.007},
      {AC_TYPE_Q8_1, 0.007}, {AC_TYPE_Q2_K, 0.40},  {AC_TYPE_Q3_K, 0.23},  {AC_TYPE_Q4_K, 0.11},
      {AC_TYPE_Q5_K, 0.055}, {AC_TYPE_Q6_K, 0.028}, {AC_TYPE_Q8_K, 0.009},
  };
  const int64_t n = 8192;
  float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
  void *q = xmalloc(ac_row_size(AC_TYPE_F32, n));
  for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
    const ac_type_traits_t *t = ac_type_traits(bounds[i].type);
    fill_input(x, n, IN_NORMAL);
    t->from_float_ref(x, q, n);
    t->to_float_ref(q, y, n);
    double se = 0, sx = 0;
    for (int64_t k = 0; k < n; k++) {
      const double e = (double)y[k] - x[k];
      se += e * e;
      sx += (double)x[k] * x[k];
    }
    const double rel = sqrt(se / sx);
    printf("  %-5s rel rms error %.4f (bound %.4f)\n", t->name, rel, bounds[i].bound);
    CHECK(rel <= bounds[i].bound, "%s quantization error %.4f > %.4f", t->name, rel,
          bounds[i].bound);

    fill_input(x, n, IN_OUTLIER);
    t->from_float_ref(x, q, n);
    t->to_float_ref(q, y, n);
    bool outlier_ok = true;
    for (int64_t k = 7; k < n; k += 32) outlier_ok = outlier_ok && fabsf(y[k] - 1000) < 10;
    CHECK(outlier_ok, "%s loses the outliers", t->name);
  }
  free(x);
  free(y);
  free(q);
}

// Legacy types round each value to the nearest level of their stored scale: the error of every
// value is at most half a step plus the stored half's rounding (Q8: 0.5 d + 127 d 2^-11).
static void test_legacy_max_error(void) {
  const int64_t n = 4096;
  float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
  void *q = xmalloc(ac_row_size(AC_TYPE_F32, n));
  const ac_type_t types[] = {AC_TYPE_Q8_0, AC_TYPE_Q8_1, AC_TYPE_Q4_1, AC_TYPE_Q5_1};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    const ac_type_traits_t *t = ac_type_traits(types[i]);
    fill_input(x, n, IN_NORMAL);
    t->from_float_ref(x, q, n);
    t->to_float_ref(q, y, n);
    bool ok = true;
    const int levels = types[i] == AC_TYPE_Q4_1 ? 15 : types[i] == AC_TYPE_Q5_1 ? 31 : 127;
    for (int64_t b = 0; b < n / 32 && ok; b++) {
      float lo = x[32 * b], hi = x[32 * b], amax = 0;
      for (int j = 0; j < 32; j++) {
        lo = fminf(lo, x[32 * b + j]);
        hi = fmaxf(hi, x[32 * b + j]);
        amax = fmaxf(amax, fabsf(x[32 * b + j]));
      }
      const bool affine = levels != 127;
      const double step = affine ? (hi - lo) / levels : amax / 127.0;
      const double bound =
          0.5 * step + levels * step / 2048 + (affine ? fabs(lo) / 2048 : 0) + 1e-7;
      for (int j = 0; j < 32; j++) ok = ok && fabs((double)y[32 * b + j] - x[32 * b + j]) <= bound;
    }
    CHECK(ok, "%s: an error above half a step", t->name);
  }
  free(x);
  free(y);
  free(q);
}

// The quantizers accept the adversarial inputs without producing NaN from finite data (except
// where a scale legitimately overflows half: 1e30 into a half-scaled type).
static void test_quantizers_finite(void) {
  const int64_t n = 1536;
  float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
  void *q = xmalloc(ac_row_size(AC_TYPE_F32, n));
  for (int ti = 0; ti < N_TYPES; ti++) {
    const ac_type_traits_t *t = ac_type_traits(all_types[ti]);
    const int64_t len = t->blck_size == 256 ? 1536 : n;
    bool ok = true;
    for (int kind = 0; kind < IN_COUNT; kind++) {
      if (kind == IN_HUGER && all_types[ti] != AC_TYPE_F32 && all_types[ti] != AC_TYPE_BF16 &&
          all_types[ti] != AC_TYPE_Q8_K)
        continue;
      fill_input(x, len, kind);
      t->from_float_ref(x, q, len);
      t->to_float_ref(q, y, len);
      for (int64_t k = 0; k < len; k++) ok = ok && !is_nan_f(y[k]) && !isinf(y[k]);
      if (kind == IN_ZEROS)
        for (int64_t k = 0; k < len; k++) ok = ok && y[k] == 0;
      if (!ok) {
        fprintf(stderr, "  %s on %s input\n", t->name, input_names[kind]);
        break;
      }
    }
    CHECK(ok, "%s: non-finite output from finite input", t->name);
  }
  free(x);
  free(y);
  free(q);
}

// --- main --------------------------------------------------------------------------------------

int main(void) {
  test_concurrent_init();
  for (int s = 0; s < 3; s++)
    printf("kernel set %-6s %s\n", simd_sets[s],
           ac__quant_traits_for(simd_sets[s], AC_TYPE_F32) ? "tested" : "not on this CPU");
  test_struct_sizes();
  test_traits_table();
  test_f16_conversions();
  test_bf16_conversions();
  test_known_blocks();
  test_to_float_sets();
  test_from_float_sets();
  test_activation_range();
  test_vec_dot_sets();
  test_vec_dot_4_sets();
  test_vec_dot_r4_sets();
  test_decode_matvec();
  test_vec_dot_ref_semantics();
  test_quantization_error();
  test_legacy_max_error();
  test_quantizers_finite();
  return check_report();
}
