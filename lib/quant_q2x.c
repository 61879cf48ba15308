// quant_q2x.c - kernels of the q2x extension type (layout and rationale in quant_q2x.h).
//
// Plain C reference kernels, and AVX2 versions of to_float, vec_dot and vec_dot_4 compiled for
// their ISA with a target attribute and chosen at run time, so one binary runs everywhere. The
// AVX2 to_float is bit-identical to the reference; the AVX2 vec_dot accumulates in vector lanes
// as ggml's kernels do (so it rounds differently from the reference, within the tolerance the
// tests state) and its vec_dot_4 is bit-identical to it.

// As in quant.c: contracting a*b+c into an FMA (which the AVX2 functions may use) would change
// the rounding of to_float against the reference, so this file asks for separate multiplies and
// adds wherever it does not use an FMA on purpose. It has to come before any header so that
// inline functions get the same setting.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant_q2x.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "quant_blocks.h"
#include "quant_make.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define Q2X_X86 1
#endif

// --- reference kernels -------------------------------------------------------------------------

// Level j of a block: byte j % 8, bits 2 * (j / 8).
static inline int q2x_level(const ac_block_q2x *b, int j) { return (b->qs[j & 7] >> (2 * (j >> 3))) & 3; }

static void q2x_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q2x *x = vx;
  for (int64_t i = 0; i < n / AC_QK2X; i++, y += AC_QK2X) {
    const float d = ac_f16_to_f32(x[i].d), m = ac_f16_to_f32(x[i].m);
    for (int j = 0; j < AC_QK2X; j++) y[j] = (float)q2x_level(&x[i], j) * d + m;
  }
}

// Weights only (activations are Q8_1), so every block gets the error-minimizing search of
// quant_make.c rather than a single rounding: it runs once per model.
static void q2x_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q2x *y = vy;
  uint8_t L[AC_QK2X];
  for (int64_t i = 0; i < n / AC_QK2X; i++, x += AC_QK2X) {
    ac__affine_block_best(AC_QK2X, x, 3, &y[i].d, &y[i].m, L);
    for (int k = 0; k < AC_QK2X / 4; k++)
      y[i].qs[k] = (uint8_t)(L[k] | (L[k + 8] << 2) | (L[k + 16] << 4) | (L[k + 24] << 6));
  }
}

// One block's contribution, the float part shared by every version: d_x d_y isum + m_x s_y.
static inline float q2x_block_dot(const ac_block_q2x *x, const ac_block_q8_1 *y, int isum) {
  return (float)isum * (ac_f16_to_f32(x->d) * ac_f16_to_f32(y->d)) +
         ac_f16_to_f32(x->m) * ac_f16_to_f32(y->s);
}

static void q2x_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                            const void *restrict vy) {
  const ac_block_q2x *x = vx;
  const ac_block_q8_1 *y = vy;
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK2X; i++) {
    int isum = 0;
    for (int j = 0; j < AC_QK2X; j++) isum += q2x_level(&x[i], j) * y[i].qs[j];
    sum += q2x_block_dot(&x[i], &y[i], isum);
  }
  *s = sum;
}

static void q2x_vec_dot_4_ref(int64_t n, int nr, float *restrict s, size_t bs,
                              const void *restrict x, size_t bx, const void *restrict y, size_t by) {
  for (int j = 0; j < 4; j++)
    for (int i = 0; i < nr; i++)
      q2x_vec_dot_ref(n, &s[(size_t)j * bs + i], (const uint8_t *)x + (size_t)i * bx,
                      (const uint8_t *)y + (size_t)j * by);
}

// --- AVX2 --------------------------------------------------------------------------------------

#ifdef Q2X_X86
#define Q2X_AVX2 __attribute__((target("avx2,fma,f16c")))

// The 32 levels of a block as bytes in natural order: the 8 code bytes repeated in each 64-bit
// lane, lane k shifted right by 2k bits, masked to 2 bits.
Q2X_AVX2 static inline __m256i q2x_unpack_avx2(const ac_block_q2x *b) {
  uint64_t v;
  memcpy(&v, b->qs, sizeof v);
  const __m256i w = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)v), _mm256_set_epi64x(6, 4, 2, 0));
  return _mm256_and_si256(w, _mm256_set1_epi8(3));
}

Q2X_AVX2 static inline float q2x_half(uint16_t h) { return _cvtsh_ss(h); }

Q2X_AVX2 static void q2x_to_float_avx2(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q2x *x = vx;
  for (int64_t i = 0; i < n / AC_QK2X; i++, y += AC_QK2X) {
    const __m256 d = _mm256_set1_ps(q2x_half(x[i].d)), m = _mm256_set1_ps(q2x_half(x[i].m));
    const __m256i q = q2x_unpack_avx2(&x[i]);
    for (int k = 0; k < 4; k++) {
      const __m128i q8 = k < 2 ? _mm256_castsi256_si128(q) : _mm256_extracti128_si256(q, 1);
      const __m256i q32 = _mm256_cvtepu8_epi32(k & 1 ? _mm_srli_si128(q8, 8) : q8);
      // (float)q * d + m with a separate multiply and add, as the reference rounds.
      _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q32), d), m));
    }
  }
}

// Sum of the 8 float lanes, in one fixed order.
Q2X_AVX2 static inline float hsum_ps_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One block of a dot product, as ggml's SIMD kernels do it: the 32 products of unsigned 2-bit
// levels and signed int8 activations summed in pairs (maddubs: at most 2 * 3 * 128, no
// saturation) and fours into 8 int32 lanes, scaled by d_x d_y into the float accumulator `acc`;
// the minimum's term m_x s_y goes to lane 1 of `summ`. The four halves (d_x, m_x | d_y, s_y, each
// pair adjacent in its block) are converted with one vcvtph2ps. vec_dot and vec_dot_4 both go
// through here, block by block in the same order, so their results are bit-identical.
Q2X_AVX2 static inline __m256 q2x_block_avx2(const ac_block_q2x *x, const ac_block_q8_1 *y, __m256i qx,
                                             __m256 acc, __m128 *summ) {
  const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);
  const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), _mm256_set1_epi16(1));
  int32_t hx, hy;
  memcpy(&hx, &x->d, sizeof hx);  // d_x | m_x << 16
  memcpy(&hy, &y->d, sizeof hy);  // d_y | s_y << 16
  const __m128 f = _mm_cvtph_ps(_mm_set_epi32(0, 0, hy, hx));  // d_x, m_x, d_y, s_y
  const __m128 prod = _mm_mul_ps(f, _mm_movehl_ps(f, f));      // d_x d_y, m_x s_y, ...
  *summ = _mm_add_ps(*summ, prod);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(prod), acc);
}

static inline float q2x_summ(__m128 summ) { return _mm_cvtss_f32(_mm_shuffle_ps(summ, summ, 1)); }

Q2X_AVX2 static void q2x_vec_dot_avx2(int64_t n, float *restrict s, const void *restrict vx,
                                      const void *restrict vy) {
  const ac_block_q2x *x = vx;
  const ac_block_q8_1 *y = vy;
  __m256 acc = _mm256_setzero_ps();
  __m128 summ = _mm_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK2X; i++) acc = q2x_block_avx2(&x[i], &y[i], q2x_unpack_avx2(&x[i]), acc, &summ);
  *s = hsum_ps_avx2(acc) + q2x_summ(summ);
}

// A tile of nr (1 or 2) weight rows by 4 activation rows: each weight block is unpacked once for
// the 4 rows that use it; every (row, row) pair runs exactly the operations of q2x_vec_dot_avx2.
Q2X_AVX2 static void q2x_vec_dot_4_avx2(int64_t n, int nr, float *restrict s, size_t bs,
                                        const void *restrict vx, size_t bx, const void *restrict vy,
                                        size_t by) {
  const int64_t nb = n / AC_QK2X;
  const ac_block_q8_1 *y[4];
  for (int j = 0; j < 4; j++) y[j] = (const ac_block_q8_1 *)((const uint8_t *)vy + (size_t)j * by);
  for (int i = 0; i < nr; i++) {
    const ac_block_q2x *x = (const ac_block_q2x *)((const uint8_t *)vx + (size_t)i * bx);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m128 summ[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
      const __m256i qx = q2x_unpack_avx2(&x[b]);
      for (int j = 0; j < 4; j++) acc[j] = q2x_block_avx2(&x[b], &y[j][b], qx, acc[j], &summ[j]);
    }
    for (int j = 0; j < 4; j++) s[(size_t)j * bs + i] = hsum_ps_avx2(acc[j]) + q2x_summ(summ[j]);
  }
}

// AVX2, FMA and F16C (and the OS saving the YMM registers, which __builtin_cpu_supports checks).
// F16C is read from CPUID directly because not every compiler knows its name.
static bool cpu_has_avx2(void) {
  __builtin_cpu_init();
  unsigned eax, ebx, ecx, edx;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

// --- traits ------------------------------------------------------------------------------------

static ac_type_traits_t traits_ref, traits_avx2;
static const ac_type_traits_t *traits_active;
static bool have_avx2;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void q2x_init(void) {
  traits_ref = (ac_type_traits_t){
      .name = "q2x",
      .blck_size = AC_QK2X,
      .type_size = sizeof(ac_block_q2x),
      .is_quantized = true,
      .vec_dot_type = AC_TYPE_Q8_1,
      .to_float = q2x_to_float_ref,
      .from_float = q2x_from_float_ref,
      .vec_dot = q2x_vec_dot_ref,
      .vec_dot_4 = q2x_vec_dot_4_ref,
      .to_float_ref = q2x_to_float_ref,
      .from_float_ref = q2x_from_float_ref,
      .vec_dot_ref = q2x_vec_dot_ref,
      .vec_dot_4_ref = q2x_vec_dot_4_ref,
  };
  traits_avx2 = traits_ref;
  traits_active = &traits_ref;
#ifdef Q2X_X86
  have_avx2 = cpu_has_avx2();
  traits_avx2.to_float = q2x_to_float_avx2;
  traits_avx2.vec_dot = q2x_vec_dot_avx2;
  traits_avx2.vec_dot_4 = q2x_vec_dot_4_avx2;
  // Follow the kernel set quant.c chose (which AC_SIMD may have capped): any SIMD set runs AVX2.
  if (have_avx2 && strcmp(ac_simd_name(), "ref") != 0) traits_active = &traits_avx2;
#endif
}

const ac_type_traits_t *ac__q2x_traits(void) {
  pthread_once(&once, q2x_init);
  return traits_active;
}

const ac_type_traits_t *ac__q2x_traits_for(const char *simd) {
  pthread_once(&once, q2x_init);
  if (!simd) return NULL;
  if (strcmp(simd, "ref") == 0) return &traits_ref;
  // The AVX-512 set has no q2x kernels of its own: a CPU that runs it runs the AVX2 ones.
  if ((strcmp(simd, "avx2") == 0 || strcmp(simd, "avx512") == 0) && have_avx2) return &traits_avx2;
  return NULL;
}
