// test_quantize.c - unit tests for the weight quantizers (lib/quant_make.c), the q2x extension
// type (lib/quant_q2x.c) and `acq quantize`'s model rewriter (lib/quantize.c).
//
// What is checked:
//   - every type's error-minimizing quantizer against quant.c's reference quantizer on random rows
//     of several distributions (Gaussian, heavy-tailed, uniform, offset, with outliers): never a
//     larger total error, and for the 32-element types never a larger error in any block (ggml's
//     rounding is one of the candidates there);
//   - adversarial rows (zeros, constants, one spike, huge and tiny values): finite output, error
//     no larger than the reference's;
//   - q2x: traits, a hand-made block, exact round trips of representable values, the AVX2
//     to_float against the reference bit for bit, every vec_dot against the reference (relative
//     1e-5 of sum |x y|) and against a double dot product of the dequantized rows (1e-3: Q8_1's
//     half-rounded sums), vec_dot_4 bit-identical to its set's vec_dot, and the error of its
//     quantizer on Gaussian data;
//   - ac_quantize_model on small generated files: the per-tensor policy (F32 norms, the embedding
//     rule, fallbacks), the report, metadata, dequantized input, byte copies, thread-count
//     independence, progress, and errors (unknown type, missing input, unwritable output, NaN
//     weights) leaving no file behind.
// Exits non-zero if any check fails; prints "N passed, N failed" at the end.
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "error.h"
#include "gguf.h"
#include "quant.h"
#include "quant_blocks.h"
#include "quant_make.h"
#include "quant_q2x.h"
#include "quantize.h"

// --- random numbers and helpers ----------------------------------------------------------------

// xorshift64*: deterministic, so a failure reproduces.
static uint64_t rng = 0x9E3779B97F4A7C15ull;

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

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  return p;
}

static const uint32_t std_types[] = {AC_TYPE_Q4_0, AC_TYPE_Q4_1, AC_TYPE_Q5_0, AC_TYPE_Q5_1,
                                     AC_TYPE_Q8_0, AC_TYPE_Q2_K, AC_TYPE_Q3_K, AC_TYPE_Q4_K,
                                     AC_TYPE_Q5_K, AC_TYPE_Q6_K};
#define N_STD (int)(sizeof std_types / sizeof std_types[0])

static double sse(const float *a, const float *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  return s;
}

static bool all_finite(const float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(y[i])) return false;
  return true;
}

// --- distributions -----------------------------------------------------------------------------

typedef enum { D_GAUSS, D_HEAVY, D_UNIFORM, D_OFFSET, D_OUTLIER, D_COUNT } dist_t;
static const char *const dist_names[D_COUNT] = {"gauss", "heavy", "uniform", "offset", "outlier"};

static void fill(dist_t d, float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    switch (d) {
      case D_GAUSS: x[i] = 0.02f * rnd_normal(); break;
      case D_HEAVY: {
        // Laplace-like: a Gaussian times an exponential spread.
        x[i] = 0.01f * rnd_normal() * expf(1.5f * rnd_normal());
        break;
      }
      case D_UNIFORM: x[i] = rnd_unit() * 2 - 1; break;
      case D_OFFSET: x[i] = 3.0f + 0.01f * rnd_normal(); break;
      case D_OUTLIER: x[i] = 0.02f * rnd_normal() * (rnd_u64() % 97 == 0 ? 40.0f : 1.0f); break;
      default: x[i] = 0;
    }
  }
}

// --- the best quantizers against the reference ones --------------------------------------------

static void test_best_vs_ref(void) {
  const int64_t ne0 = 1536, rows = 16, n = ne0 * rows;
  float *x = xmalloc(n * sizeof(float)), *yb = xmalloc(n * sizeof(float)), *yr = xmalloc(n * sizeof(float));
  uint8_t *q = xmalloc(n * 4);
  printf("relative RMSE, ours vs quant.c's reference quantizer (rows of %lld):\n", (long long)ne0);
  for (int ti = 0; ti < N_STD; ti++) {
    const uint32_t t = std_types[ti];
    const ac_type_traits_t *tt = ac_type_traits(t);
    printf("  %-5s", tt->name);
    for (int d = 0; d < D_COUNT; d++) {
      fill((dist_t)d, x, n);
      CHECK(ac_quantize_row_best(t, x, q, n) == 0, "%s", tt->name);
      tt->to_float_ref(q, yb, n);
      tt->from_float_ref(x, q, n);
      tt->to_float_ref(q, yr, n);
      CHECK(all_finite(yb, n), "%s %s: non-finite output", tt->name, dist_names[d]);
      const double eb = sse(x, yb, n), er = sse(x, yr, n);
      double sx = 0;
      for (int64_t i = 0; i < n; i++) sx += (double)x[i] * x[i];
      printf("  %s %.4f/%.4f", dist_names[d], sqrt(eb / sx), sqrt(er / sx));
      CHECK(eb <= er * (1 + 1e-6), "%s %s: ours %.6g > ref %.6g", tt->name, dist_names[d], eb, er);
      // The 32-element types: no single block worse than ggml's rounding.
      if (tt->blck_size == 32) {
        int worse = 0;
        for (int64_t b = 0; b < n / 32; b++) {
          const double e1 = sse(x + 32 * b, yb + 32 * b, 32), e2 = sse(x + 32 * b, yr + 32 * b, 32);
          worse += e1 > e2 * (1 + 1e-5) + 1e-30;
        }
        CHECK(worse == 0, "%s %s: %d blocks worse than the reference", tt->name, dist_names[d], worse);
      }
    }
    printf("\n");
  }
  free(x);
  free(yb);
  free(yr);
  free(q);
}

// Rows that break naive code: all zeros, constants, one spike, values near the half range's top,
// tiny and subnormal values.
static void test_adversarial(void) {
  enum { N = 512 };
  float x[N], yb[N], yr[N];
  uint8_t q[N * 4];
  for (int c = 0; c < 8; c++) {
    for (int i = 0; i < N; i++) {
      switch (c) {
        case 0: x[i] = 0; break;
        case 1: x[i] = 0.75f; break;
        case 2: x[i] = -2.5f; break;
        case 3: x[i] = i == 77 ? 5.0f : 0.0f; break;
        case 4: x[i] = (i % 2 ? 1 : -1) * 30000.0f * rnd_unit(); break;
        case 5: x[i] = 1e-6f * rnd_normal(); break;
        case 6: x[i] = 1e-41f * (float)(i % 7); break;  // float subnormals
        case 7: x[i] = i % 32 == 0 ? -1.0f : 1e-3f * rnd_normal(); break;
      }
    }
    for (int ti = 0; ti < N_STD + 1; ti++) {
      const uint32_t t = ti < N_STD ? std_types[ti] : AC_TYPE_Q2X;
      const ac_type_traits_t *tt = ti < N_STD ? ac_type_traits(t) : ac__q2x_traits();
      CHECK(ac_quantize_row_best(t, x, q, N) == 0, "%s case %d", tt->name, c);
      tt->to_float_ref(q, yb, N);
      CHECK(all_finite(yb, N), "%s case %d: non-finite output", tt->name, c);
      if (ti == N_STD) continue;
      tt->from_float_ref(x, q, N);
      tt->to_float_ref(q, yr, N);
      // No worse than the reference, up to the half-precision rounding of the scales (relative
      // 2^-11, so ~2^-22 of the row's energy): on a row that is one exact spike the reference
      // can land on exactly representable scales by chance.
      double sx = 0;
      for (int i = 0; i < N; i++) sx += (double)x[i] * x[i];
      const double eb = sse(x, yb, N), er = sse(x, yr, N);
      CHECK(eb <= er * (1 + 1e-5) + 1e-6 * sx + 1e-30, "%s case %d: ours %.6g > ref %.6g", tt->name, c, eb, er);
      if (c <= 2) CHECK(eb <= 1e-6 * N * x[0] * x[0] + 1e-30, "%s case %d: constant row error %.3g", tt->name, c, eb);
    }
  }
}

static void test_errors(void) {
  float x[64] = {0};
  uint8_t q[256];
  CHECK(ac_quantize_row_best(AC_TYPE_Q4_0, x, q, 48) == AC_EINVAL, "48 values in q4_0");
  CHECK(ac_quantize_row_best(AC_TYPE_Q4_K, x, q, 64) == AC_EINVAL, "64 values in q4_K");
  CHECK(ac_quantize_row_best(AC_TYPE_Q8_K, x, q, 256) == AC_EUNSUPPORTED, "q8_K is not a weight type");
  CHECK(ac_quantize_row_best(77, x, q, 32) == AC_EUNSUPPORTED, "type 77");
  CHECK(!ac_quantize_best_supported(AC_TYPE_Q8_1) && ac_quantize_best_supported(AC_TYPE_Q2X), "supported");
  // Float types convert with the library's rounding.
  float v[4] = {1.0f, -2.5f, 65519.0f, 1e-8f};
  uint16_t h[4];
  CHECK(ac_quantize_row_best(AC_TYPE_F16, v, h, 4) == 0, "f16");
  for (int i = 0; i < 4; i++) CHECK(h[i] == ac_f32_to_f16(v[i]), "f16 %d", i);
  CHECK(ac_quantize_row_best(AC_TYPE_BF16, v, h, 4) == 0, "bf16");
  for (int i = 0; i < 4; i++) CHECK(h[i] == ac_f32_to_bf16(v[i]), "bf16 %d", i);
}

// --- q2x ---------------------------------------------------------------------------------------

static void test_q2x_traits(void) {
  const ac_type_traits_t *t = ac__q2x_traits();
  CHECK(t && strcmp(t->name, "q2x") == 0, "name");
  CHECK(t->blck_size == 32 && t->type_size == 12 && t->is_quantized, "sizes %lld %zu", (long long)t->blck_size,
        t->type_size);
  CHECK(t->vec_dot_type == AC_TYPE_Q8_1, "vec_dot_type %d", t->vec_dot_type);
  CHECK(t->to_float && t->from_float && t->vec_dot && t->to_float_ref && t->from_float_ref && t->vec_dot_ref &&
            t->vec_dot_4_ref,
        "kernels");
  CHECK(ac__q2x_traits_for("ref") && !ac__q2x_traits_for("nope"), "sets");
  CHECK(AC_TYPE_Q2X == 1000 && sizeof(ac_block_q2x) == 12, "id and block");
  // Registered in quant.c or not, the id must not collide with a ggml type we know.
  const ac_type_traits_t *reg = ac_type_traits(AC_TYPE_Q2X);
  CHECK(!reg || strcmp(reg->name, "q2x") == 0, "quant.c's q2x row");
  printf("q2x registered in quant.c's table: %s\n", reg ? "yes" : "not yet");
}

// A block built by hand: d = 0.5, m = -1, codes 0,1,2,3 repeating by byte.
static void test_q2x_hand_block(void) {
  ac_block_q2x b;
  b.d = ac_f32_to_f16(0.5f);
  b.m = ac_f32_to_f16(-1.0f);
  // Byte k holds values k, k+8, k+16, k+24 at shifts 0, 2, 4, 6.
  for (int k = 0; k < 8; k++) b.qs[k] = (uint8_t)((k & 3) | (((k + 1) & 3) << 2) | (((k + 2) & 3) << 4) | (3u << 6));
  float y[32];
  ac__q2x_traits_for("ref")->to_float_ref(&b, y, 32);
  bool ok = true;
  for (int j = 0; j < 32; j++) {
    const int k = j & 7, g = j >> 3;
    const int q = g == 3 ? 3 : ((k + g) & 3);
    ok = ok && y[j] == (float)q * 0.5f - 1.0f;
  }
  CHECK(ok, "hand block dequantizes wrong");
  // Values on the grid come back exactly, with the same codes.
  uint8_t back[12];
  ac__q2x_traits()->from_float(y, back, 32);
  float z[32];
  ac__q2x_traits()->to_float(back, z, 32);
  CHECK(memcmp(y, z, sizeof y) == 0, "grid values do not round-trip");
  CHECK(memcmp(back + 4, b.qs, 8) == 0, "codes differ after round trip");
}

// Random valid q2x blocks: finite halves of varied magnitude, random codes.
static void random_q2x(ac_block_q2x *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++) {
    b[i].d = ac_f32_to_f16(ldexpf(rnd_unit(), (int)(rnd_u64() % 20) - 14) * (rnd_u64() & 1 ? 1 : -1));
    b[i].m = ac_f32_to_f16(ldexpf(rnd_unit(), (int)(rnd_u64() % 20) - 14) * (rnd_u64() & 1 ? 1 : -1));
    for (int k = 0; k < 8; k++) b[i].qs[k] = (uint8_t)rnd_u64();
  }
}

static void test_q2x_kernels(void) {
  const ac_type_traits_t *ref = ac__q2x_traits_for("ref");
  const ac_type_traits_t *q81 = ac_type_traits(AC_TYPE_Q8_1);
  const int64_t lens[] = {32, 64, 576, 1536, 32 * 37};
  const char *sets[] = {"ref", "avx2"};
  for (int si = 0; si < 2; si++) {
    const ac_type_traits_t *t = ac__q2x_traits_for(sets[si]);
    if (!t) {
      printf("q2x: kernel set %s not run on this CPU\n", sets[si]);
      continue;
    }
    for (int li = 0; li < 5; li++) {
      const int64_t n = lens[li], nb = n / 32;
      for (int rep = 0; rep < 20; rep++) {
        ac_block_q2x *x = xmalloc((size_t)(2 * nb) * sizeof *x);
        random_q2x(x, 2 * nb);
        if (rep == 1) memset(x[0].qs, 0xFF, 8);           // every level 3
        if (rep == 2) x[0].d = x[0].m = 0;                // an empty block
        float *xf = xmalloc(n * sizeof(float)), *xr = xmalloc(n * sizeof(float)), *act = xmalloc(4 * n * sizeof(float));
        t->to_float(x, xf, n);
        ref->to_float_ref(x, xr, n);
        CHECK(memcmp(xf, xr, n * sizeof(float)) == 0, "%s to_float n=%lld differs from ref", sets[si], (long long)n);
        // Four activation rows, extreme ones included (a row of +-127-scaled values).
        for (int64_t i = 0; i < 4 * n; i++) act[i] = rep == 3 ? (i % 2 ? 1e4f : -1e4f) : rnd_normal();
        ac_block_q8_1 *y = xmalloc((size_t)(4 * nb) * sizeof *y);
        for (int j = 0; j < 4; j++) q81->from_float(act + j * n, y + j * nb, n);
        float s[8], s4[8];
        for (int j = 0; j < 4; j++) {
          float sr;
          t->vec_dot(n, &s[j], x, y + j * nb);
          ref->vec_dot_ref(n, &sr, x, y + j * nb);
          // Against a double dot product of the dequantized rows.
          float *yf = xmalloc(n * sizeof(float));
          q81->to_float(y + j * nb, yf, n);
          double want = 0, mag = 0;
          for (int64_t i = 0; i < n; i++) {
            want += (double)xr[i] * yf[i];
            mag += fabs((double)xr[i] * yf[i]);
          }
          free(yf);
          // Against the exact sum, the kernels differ by Q8_1's half-rounded block sums s_y (which
          // carry the minimum's term, relative 2^-11): 1e-3 of sum |x y|. Against each other they
          // differ only in the order of the float additions: 1e-5.
          CHECK(fabs(s[j] - want) <= 1e-3 * mag + 1e-30, "%s vec_dot %g vs double %g (mag %g)", sets[si], s[j], want, mag);
          CHECK(fabs(s[j] - sr) <= 1e-5 * mag + 1e-30, "%s vec_dot %g vs ref %g (mag %g)", sets[si], s[j], sr, mag);
        }
        // Tiles: 2 weight rows by 4 activation rows, each equal to vec_dot of the pair.
        if (t->vec_dot_4) {
          t->vec_dot_4(n, 2, s4, 2, x, nb * sizeof *x, y, nb * sizeof *y);
          for (int j = 0; j < 4; j++)
            for (int i = 0; i < 2; i++) {
              float want;
              t->vec_dot(n, &want, x + i * nb, y + j * nb);
              CHECK(memcmp(&s4[j * 2 + i], &want, sizeof want) == 0, "%s vec_dot_4 [%d,%d]", sets[si], i, j);
            }
        }
        free(x);
        free(y);
        free(xf);
        free(xr);
        free(act);
      }
    }
  }
}

static void test_q2x_quantizer(void) {
  const int64_t n = 32 * 4096;
  float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
  ac_block_q2x *q = xmalloc((size_t)(n / 32) * sizeof *q);
  fill(D_GAUSS, x, n);
  ac__q2x_traits()->from_float(x, q, n);
  ac__q2x_traits()->to_float(q, y, n);
  double sx = 0;
  for (int64_t i = 0; i < n; i++) sx += (double)x[i] * x[i];
  const double e = sse(x, y, n);
  // min/max rounding on the same blocks, for comparison.
  double e_rtn = 0;
  for (int64_t b = 0; b < n / 32; b++) {
    float mn = x[32 * b], mx = x[32 * b];
    for (int j = 1; j < 32; j++) {
      mn = fminf(mn, x[32 * b + j]);
      mx = fmaxf(mx, x[32 * b + j]);
    }
    const float d = (mx - mn) / 3;
    for (int j = 0; j < 32; j++) {
      const float v = mn + d * roundf((x[32 * b + j] - mn) / d);
      e_rtn += (v - x[32 * b + j]) * (v - x[32 * b + j]);
    }
  }
  printf("q2x on Gaussian blocks: relative RMSE %.4f (min/max rounding %.4f)\n", sqrt(e / sx), sqrt(e_rtn / sx));
  CHECK(sqrt(e / sx) < 0.33, "q2x relative RMSE %.4f", sqrt(e / sx));
  CHECK(e < 0.8 * e_rtn, "q2x no better than rounding: %g vs %g", e, e_rtn);
  // ac_quantize_row_best writes the same blocks as the traits' quantizer.
  ac_block_q2x *q2 = xmalloc((size_t)(n / 32) * sizeof *q2);
  CHECK(ac_quantize_row_best(AC_TYPE_Q2X, x, q2, n) == 0, "row_best q2x");
  CHECK(memcmp(q, q2, (size_t)(n / 32) * sizeof *q) == 0, "row_best q2x differs from from_float");
  free(x);
  free(y);
  free(q);
  free(q2);
}

// --- ac_quantize_model -------------------------------------------------------------------------

static char tmpdir[256];

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", tmpdir, name); }

static bool exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

// Files in tmpdir whose name contains `s` (temporary files left behind would show up here).
static int count_files(const char *s) {
  DIR *d = opendir(tmpdir);
  int c = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, s)) c++;
  if (d) closedir(d);
  return c;
}

// Whether two files hold the same bytes.
static bool same_file(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  bool same = fa && fb;
  while (same) {
    const int ca = fgetc(fa), cb = fgetc(fb);
    same = ca == cb;
    if (ca == EOF) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

typedef struct {
  const char *name;
  int64_t ne0, ne1;  // ne1 = 0: a 1-D tensor
} spec_t;

// A small "model": an embedding with 64-wide rows (fits 32, not 256), a 256-wide matrix, a
// 64-wide matrix, a 48-wide matrix (fits no block) and a norm. Values Gaussian; `type` is the
// type the matrices are stored in (F32 or a quantized one); `nan` puts a NaN in one matrix.
static const spec_t specs[] = {{"token_embd.weight", 64, 40},   {"blk.0.ffn_down.weight", 256, 6},
                               {"blk.0.attn_q.weight", 64, 64}, {"blk.0.odd.weight", 48, 8},
                               {"blk.0.attn_norm.weight", 64, 0}};
#define N_SPECS 5

static int write_model(const char *path, uint32_t type, bool nan) {
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  void *bufs[N_SPECS] = {0};
  int rc = ac_gguf_set_str(w, "general.architecture", "llama");
  rc = rc ? rc : ac_gguf_set_u32(w, "general.file_type", 0);
  rc = rc ? rc : ac_gguf_set_str(w, "agentcompress.quantize.type", "stale");
  for (int i = 0; !rc && i < N_SPECS; i++) {
    const spec_t *s = &specs[i];
    const int64_t n = s->ne0 * (s->ne1 ? s->ne1 : 1);
    float *x = xmalloc(n * sizeof(float));
    for (int64_t k = 0; k < n; k++) x[k] = 0.05f * rnd_normal();
    if (nan && i == 2) x[100] = NAN;
    uint32_t t = s->ne1 && s->ne0 % 32 == 0 ? type : AC_TYPE_F32;
    size_t nb = (size_t)n * sizeof(float);
    bufs[i] = x;
    if (t != AC_TYPE_F32) {
      nb = ac_row_size(t, s->ne0) * (size_t)(s->ne1 ? s->ne1 : 1);
      bufs[i] = xmalloc(nb);
      ac_quantize_row_best(t, x, bufs[i], n);
      free(x);
    }
    const int64_t ne[2] = {s->ne0, s->ne1};
    rc = ac_gguf_add_tensor(w, s->name, t, s->ne1 ? 2 : 1, ne, bufs[i], nb);
  }
  rc = rc ? rc : ac_gguf_write(w, path);
  for (int i = 0; i < N_SPECS; i++) free(bufs[i]);
  ac_gguf_writer_destroy(&w);
  return rc;
}

static uint32_t type_in(const ac_gguf_t *g, const char *name) {
  const ac_gguf_tensor_t *t = ac_gguf_find_tensor(g, name);
  return t ? t->type : 9999;
}

static int calls, last_i;
static void count_progress(void *user, int i, int n, const char *tensor, uint32_t type) {
  (void)user, (void)tensor, (void)type;
  if (i == last_i + 1 && n == N_SPECS) calls++;
  last_i = i;
}

static void test_model_policy(void) {
  char in[512], out[512], out2[512];
  path_in(in, sizeof in, "in_f32.gguf");
  path_in(out, sizeof out, "out_q4k.gguf");
  path_in(out2, sizeof out2, "out_q4k_t3.gguf");
  CHECK(write_model(in, AC_TYPE_F32, false) == 0, "write input: %s", ac_errmsg());

  ac_quantize_params_t p = ac_quantize_default_params(AC_TYPE_Q4_K);
  CHECK(p.keep_embd_output && p.n_threads == 1 && p.type == AC_TYPE_Q4_K, "defaults");
  p.progress = count_progress;
  calls = last_i = 0;
  ac_quantize_report_t r;
  CHECK(ac_quantize_model(in, out, &p, &r) == 0, "q4_K: %s", ac_errmsg());
  CHECK(calls == N_SPECS, "progress calls %d", calls);
  ac_gguf_t *g = NULL;
  CHECK(ac_gguf_open(out, &g) == 0, "open output: %s", ac_errmsg());
  if (g) {
    CHECK(type_in(g, "token_embd.weight") == AC_TYPE_Q8_0, "embedding kept at q8_0 (rows of 64)");
    CHECK(type_in(g, "blk.0.ffn_down.weight") == AC_TYPE_Q4_K, "256-wide rows in q4_K");
    CHECK(type_in(g, "blk.0.attn_q.weight") == AC_TYPE_Q4_1, "64-wide rows fall back to q4_1");
    CHECK(type_in(g, "blk.0.odd.weight") == AC_TYPE_F16, "48-wide rows fall back to f16");
    CHECK(type_in(g, "blk.0.attn_norm.weight") == AC_TYPE_F32, "norm stays f32");
    uint32_t ft = 0;
    ac_str_t s = {0}, src = {0};
    bool deq = true;
    CHECK(ac_gguf_get_u32(g, "general.file_type", &ft) == 0 && ft == 14, "file_type %u", ft);
    CHECK(ac_gguf_get_str(g, "agentcompress.quantize.type", &s) == 0 && s.len == 4 && !memcmp(s.ptr, "q4_K", 4),
          "quantize.type");
    CHECK(ac_gguf_get_str(g, "agentcompress.quantize.source_type", &src) == 0 && src.len == 3 &&
              !memcmp(src.ptr, "f32", 3),
          "source_type");
    CHECK(ac_gguf_get_bool(g, "agentcompress.quantize.dequantized_input", &deq) == 0 && !deq, "dequantized_input");
    CHECK(ac_gguf_find_kv(g, "general.architecture") != NULL, "metadata copied");
    ac_gguf_close(&g);
  }
  CHECK(r.n_tensors == 5 && r.n_quantized == 1 && r.n_fallback == 2, "report %d %d %d", r.n_tensors, r.n_quantized,
        r.n_fallback);
  CHECK(!r.dequantized_input, "report dequantized_input");
  const int64_t n_params = 64 * 40 + 256 * 6 + 64 * 64 + 48 * 8 + 64;
  const size_t bytes = 40 * ac_row_size(AC_TYPE_Q8_0, 64) + 6 * ac_row_size(AC_TYPE_Q4_K, 256) +
                       64 * ac_row_size(AC_TYPE_Q4_1, 64) + 8 * 48 * 2 + 64 * 4;
  CHECK(r.n_params == n_params && r.bytes == bytes, "params %lld bytes %zu (want %zu)", (long long)r.n_params,
        r.bytes, bytes);
  CHECK(fabs(r.bpw - 8.0 * bytes / n_params) < 1e-9, "bpw %f", r.bpw);
  CHECK(fabs(r.bpw_matrices - 8.0 * (bytes - 256) / (n_params - 64)) < 1e-9, "bpw_matrices %f", r.bpw_matrices);

  // More threads, the same bytes.
  p.n_threads = 3;
  p.progress = NULL;
  CHECK(ac_quantize_model(in, out2, &p, NULL) == 0, "3 threads: %s", ac_errmsg());
  CHECK(same_file(out, out2), "1 and 3 threads write different files");

  // Without the embedding rule the embedding is a matrix like any other.
  p = ac_quantize_default_params(AC_TYPE_Q4_K);
  p.keep_embd_output = false;
  CHECK(ac_quantize_model(in, out, &p, &r) == 0, "no keep: %s", ac_errmsg());
  if (ac_gguf_open(out, &g) == 0) {
    CHECK(type_in(g, "token_embd.weight") == AC_TYPE_Q4_1, "embedding falls back like the rest");
    ac_gguf_close(&g);
  }
  CHECK(r.n_fallback == 3, "fallbacks %d", r.n_fallback);

  // q8_0 and f16 targets keep the embedding in the target type.
  p = ac_quantize_default_params(AC_TYPE_Q8_0);
  CHECK(ac_quantize_model(in, out, &p, &r) == 0 && r.n_quantized == 3, "q8_0: %d", r.n_quantized);
  p = ac_quantize_default_params(AC_TYPE_F16);
  CHECK(ac_quantize_model(in, out, &p, &r) == 0 && r.n_quantized == 4 && r.n_fallback == 0, "f16: %d %d",
        r.n_quantized, r.n_fallback);
  // A 256-wide embedding would get Q6_K: covered by the fallback table's own use of fits().

  // Q2_K: 64-wide rows go to q2x, which files can hold only once quant.c registers it.
  p = ac_quantize_default_params(AC_TYPE_Q2_K);
  unlink(out);
  const int rc = ac_quantize_model(in, out, &p, &r);
  if (ac_type_traits(AC_TYPE_Q2X)) {
    CHECK(rc == 0, "q2_K: %s", ac_errmsg());
    if (ac_gguf_open(out, &g) == 0) {
      CHECK(type_in(g, "blk.0.attn_q.weight") == AC_TYPE_Q2X, "64-wide rows fall back to q2x");
      CHECK(type_in(g, "blk.0.ffn_down.weight") == AC_TYPE_Q2_K, "256-wide rows in q2_K");
      ac_gguf_close(&g);
    }
  } else {
    CHECK(rc == AC_EUNSUPPORTED && !exists(out), "q2_K before q2x is registered: rc %d", rc);
  }
  CHECK(count_files(".tmp.") == 0, "temporary files left behind");
}

static void test_model_quantized_input(void) {
  char in[512], out[512];
  path_in(in, sizeof in, "in_q4_0.gguf");
  path_in(out, sizeof out, "out_from_q4_0.gguf");
  CHECK(write_model(in, AC_TYPE_Q4_0, false) == 0, "write q4_0 input: %s", ac_errmsg());
  ac_quantize_params_t p = ac_quantize_default_params(AC_TYPE_Q8_0);
  ac_quantize_report_t r;
  CHECK(ac_quantize_model(in, out, &p, &r) == 0, "q4_0 -> q8_0: %s", ac_errmsg());
  CHECK(r.dequantized_input, "dequantized_input");
  ac_gguf_t *gi = NULL, *go = NULL;
  if (ac_gguf_open(in, &gi) == 0 && ac_gguf_open(out, &go) == 0) {
    ac_str_t s = {0};
    bool deq = false;
    CHECK(ac_gguf_get_str(go, "agentcompress.quantize.source_type", &s) == 0 && s.len == 4 && !memcmp(s.ptr, "q4_0", 4),
          "source_type q4_0");
    CHECK(ac_gguf_get_bool(go, "agentcompress.quantize.dequantized_input", &deq) == 0 && deq, "metadata");
    // The requantized values stay within Q8_0's error of the dequantized input.
    const ac_gguf_tensor_t *a = ac_gguf_find_tensor(gi, "blk.0.attn_q.weight");
    const ac_gguf_tensor_t *b = ac_gguf_find_tensor(go, "blk.0.attn_q.weight");
    const int64_t n = 64 * 64;
    float *xa = xmalloc(n * sizeof(float)), *xb = xmalloc(n * sizeof(float));
    ac_type_traits(a->type)->to_float(a->data, xa, n);
    ac_type_traits(b->type)->to_float(b->data, xb, n);
    double sx = 0;
    for (int64_t i = 0; i < n; i++) sx += (double)xa[i] * xa[i];
    CHECK(b->type == AC_TYPE_Q8_0 && sqrt(sse(xa, xb, n) / sx) < 0.01, "requantized error %g", sqrt(sse(xa, xb, n) / sx));
    free(xa);
    free(xb);
  }
  ac_gguf_close(&gi);
  ac_gguf_close(&go);
  // Same type in and out: bytes copied.
  p = ac_quantize_default_params(AC_TYPE_Q4_0);
  p.keep_embd_output = false;
  CHECK(ac_quantize_model(in, out, &p, &r) == 0, "q4_0 -> q4_0: %s", ac_errmsg());
  if (ac_gguf_open(in, &gi) == 0 && ac_gguf_open(out, &go) == 0) {
    const ac_gguf_tensor_t *a = ac_gguf_find_tensor(gi, "blk.0.attn_q.weight");
    const ac_gguf_tensor_t *b = ac_gguf_find_tensor(go, "blk.0.attn_q.weight");
    CHECK(a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0, "same type not copied");
  }
  ac_gguf_close(&gi);
  ac_gguf_close(&go);
}

static void test_model_errors(void) {
  char in[512], out[512], nan_in[512], bad_out[512];
  path_in(in, sizeof in, "in_f32.gguf");
  path_in(out, sizeof out, "err_out.gguf");
  path_in(nan_in, sizeof nan_in, "in_nan.gguf");
  path_in(bad_out, sizeof bad_out, "no_such_dir/out.gguf");
  ac_quantize_params_t p = ac_quantize_default_params(77);
  CHECK(ac_quantize_model(in, out, &p, NULL) == AC_EINVAL && !exists(out), "unknown type");
  p = ac_quantize_default_params(AC_TYPE_Q8_K);
  CHECK(ac_quantize_model(in, out, &p, NULL) == AC_EINVAL && !exists(out), "q8_K target: %s", ac_errmsg());
  p = ac_quantize_default_params(AC_TYPE_Q4_0);
  CHECK(ac_quantize_model("/nonexistent/model.gguf", out, &p, NULL) < 0 && !exists(out), "missing input");
  CHECK(ac_quantize_model(in, bad_out, &p, NULL) == AC_EIO, "unwritable output: %s", ac_errmsg());
  CHECK(write_model(nan_in, AC_TYPE_F32, true) == 0, "write nan input");
  const int rc = ac_quantize_model(nan_in, out, &p, NULL);
  CHECK(rc == AC_EFORMAT && strstr(ac_errmsg(), "blk.0.attn_q.weight") && !exists(out), "NaN weights: %d %s", rc,
        ac_errmsg());
  CHECK(ac_quantize_model(in, out, NULL, NULL) == AC_EINVAL, "NULL params");
  CHECK(count_files(".tmp.") == 0, "temporary files left behind");
}

int main(void) {
  ac_quant_init();
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmpdir, sizeof tmpdir, "%s/test_quantize.XXXXXX", base);
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 2;
  }
  test_errors();
  test_best_vs_ref();
  test_adversarial();
  test_q2x_traits();
  test_q2x_hand_block();
  test_q2x_kernels();
  test_q2x_quantizer();
  test_model_policy();
  test_model_quantized_input();
  test_model_errors();
  // Clean up the scratch directory.
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  char p[1024];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(tmpdir);
  return check_report();
}
