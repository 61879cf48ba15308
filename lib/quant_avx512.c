// quant_avx512.c - AVX-512 (F, BW, VL, DQ) + VNNI kernels. Built with those -m flags and only
// called after quant.c has checked the CPU (see ac__quant_avx512_install).
//
// This set starts from the AVX2 set (every AVX-512 CPU has AVX2) and replaces the kernels that
// are faster here. Measured on the AMD Zen 4 machines we build and test on, which execute
// 512-bit instructions as two 256-bit halves:
//   - the legacy dot products (Q4_0 ... Q8_0) use VNNI's vpdpbusd on 256-bit vectors, two blocks
//     per step; the 512-bit form (four blocks per register) was slower because of the extra
//     shuffles to assemble it;
//   - F16 keeps the AVX2 kernel: vcvtph2ps on 512 bits converts half as many values per cycle
//     as on 256 bits, so the 512-bit dot product was 1.5x slower;
//   - the K-quants use vpmaddubsw + vpdpwssd, on 512 bits (64 levels at a time) for the types
//     with 16-value sub-blocks and on 256 bits for Q4_K / Q5_K (see there).
// vpdpbusd multiplies unsigned bytes by signed bytes, summing four products into each int32
// lane without saturation. Weights with an offset (Q4_0: q - 8) stay unsigned and the offset
// is taken off through the activations' sums, exactly, for every input.

// Explicit FMAs only: an implicit contraction of a*b+c would change rounding and make the
// dequantizers differ from quant.c's reference (and from ggml). Must precede the headers.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#include "quant_impl.h"

// --- helpers -----------------------------------------------------------------------------------

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t f2h(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

static inline __m512i loadu512(const void *p) { return _mm512_loadu_si512(p); }
static inline __m256i loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m128i loadu128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

// Two 32-byte halves into one register.
static inline __m512i join256(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The same 32 bytes in both halves.
static inline __m512i dup256(__m256i v) { return _mm512_broadcast_i64x4(v); }

// One block's nibbles -> 32 levels in natural order.
static inline __m256i nibbles32(const uint8_t *p) {
  const __m128i b = loadu128(p);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

static inline __m256i dot_u8s8_256(__m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

static inline int hsum256_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

static inline float hsum256_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// clamp_q8 of quant.c: NaN -> 0, then clamp to [-127, 127] (a no-op for finite blocks).
static inline __m512 clamp_q8(__m512 v) {
  v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
  return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
}

// Round half to even on 16 lanes (the default MXCSR mode of cvtps), as the reference's
// nearbyintf does.
static inline __m512i round_even_epi32(__m512 v) { return _mm512_cvtps_epi32(clamp_q8(v)); }

// --- float types -------------------------------------------------------------------------------

static void f32_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                        const void *restrict vy) {
  const float *x = vx, *y = vy;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16)
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a1);
  }
  *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static inline __m512 load_f16x16(const uint16_t *p) { return _mm512_cvtph_ps(loadu256(p)); }

static void f16_to_float(const void *restrict vx, float *restrict y, int64_t n) {
  const uint16_t *x = vx;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, load_f16x16(x + i));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)));
  }
}

static void f16_from_float(const float *restrict x, void *restrict vy, int64_t n) {
  uint16_t *y = vy;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i *)(y + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_mask_storeu_epi16(y + i, m, h);
  }
}

// bfloat16 -> float is a 16-bit shift, so products are exact as in the reference.
static inline __m512 load_bf16x16(const __m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

static void bf16_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const uint16_t *x = vx, *y = vy;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_fmadd_ps(load_bf16x16(loadu256(x + i)), load_bf16x16(loadu256(y + i)), a0);
    a1 =
        _mm512_fmadd_ps(load_bf16x16(loadu256(x + i + 16)), load_bf16x16(loadu256(y + i + 16)), a1);
  }
  for (; i + 16 <= n; i += 16)
    a0 = _mm512_fmadd_ps(load_bf16x16(loadu256(x + i)), load_bf16x16(loadu256(y + i)), a0);
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    a1 = _mm512_fmadd_ps(load_bf16x16(_mm256_maskz_loadu_epi16(m, x + i)),
                         load_bf16x16(_mm256_maskz_loadu_epi16(m, y + i)), a1);
  }
  *s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

// --- 32-value blocks: dot products ---------------------------------------------------------------
// Two blocks per step, arranged as in quant_avx2.c: lo = [low nibbles of block a | of block b],
// hi = [high nibbles of a | of b], the activations to match, so that after two vpdpbusd the
// int32 lanes 0-3 hold block a and lanes 4-7 block b, and one conversion and one FMA serve both.
// The four scale halves of a step are converted with one vcvtph2ps.

// {d_xa * d_ya, 0, d_xb * d_yb, 0}.
static inline __m128 pair_scales_d(uint16_t xa, uint16_t xb, uint16_t ya, uint16_t yb) {
  const __m256 f = _mm256_cvtph_ps(_mm_setr_epi32(xa, xb, ya, yb));
  return _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
}

// The first two halves of each block, multiplied pairwise: for Q4_1 x Q8_1 that is
// {d_xa * d_ya, m_xa * s_ya, d_xb * d_yb, m_xb * s_yb}.
static inline __m128 pair_scales_dm(const void *xa, const void *xb, const void *ya,
                                    const void *yb) {
  uint32_t u0, u1, u2, u3;
  memcpy(&u0, xa, 4);
  memcpy(&u1, xb, 4);
  memcpy(&u2, ya, 4);
  memcpy(&u3, yb, 4);
  const __m256 f = _mm256_cvtph_ps(_mm_setr_epi32((int)u0, (int)u1, (int)u2, (int)u3));
  return _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
}

// Lanes 0-3 <- p[0] (block a), lanes 4-7 <- p[2] (block b).
static inline __m256 pair_spread(__m128 p) {
  return _mm256_permutexvar_ps(_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2),
                               _mm256_castps128_ps256(p));
}

// Lanes 1 and 3 of the summed pair_scales_dm products: the minimum terms.
static inline float odd_lanes_sum(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1));
}

static inline void nibbles_pair(const uint8_t *a, const uint8_t *b, __m256i *lo, __m256i *hi) {
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(loadu128(a)), loadu128(b), 1);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  *lo = _mm256_and_si256(v, m4);
  *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
}

static inline void q8_pair(const int8_t *a, const int8_t *b, __m256i *lo, __m256i *hi) {
  *lo = _mm256_inserti128_si256(_mm256_castsi128_si256(loadu128(a)), loadu128(b), 1);
  *hi = _mm256_inserti128_si256(_mm256_castsi128_si256(loadu128(a + 16)), loadu128(b + 16), 1);
}

// The 5th bits of two Q5 blocks as byte masks for the lo / hi arrangement: bits 0-15 of each qh
// belong to the low nibbles, bits 16-31 to the high ones.
static inline void high_bits_pair(const uint8_t *qa, const uint8_t *qb, __mmask32 *lo,
                                  __mmask32 *hi) {
  const uint32_t a = ac__load_u32(qa), b = ac__load_u32(qb);
  *lo = (__mmask32)((a & 0xFFFF) | (b << 16));
  *hi = (__mmask32)((a >> 16) | (b & 0xFFFF0000u));
}

static inline __m256i dot_pairs(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi) {
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, ylo), hi, yhi);
}

// The same minus off * (sum of y), for levels stored with an offset (Q4_0: 8, Q5_0: 16).
static inline __m256i dot_pairs_offset(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi,
                                       __m256i off) {
  return _mm256_sub_epi32(dot_pairs(lo, ylo, hi, yhi), dot_pairs(off, ylo, off, yhi));
}

// One block: 32 unsigned levels times y, minus off * sum(y).
static inline int dot_block(__m256i u, const int8_t *y, int off) {
  const __m256i v = loadu256(y);
  __m256i d = dot_u8s8_256(u, v);
  if (off) d = _mm256_sub_epi32(d, dot_u8s8_256(_mm256_set1_epi8((char)off), v));
  return hsum256_epi32(d);
}

static void q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q4_0 *x = vx;
  const ac_block_q8_0 *y = vy;
  const int64_t nb = n / AC_QK8_0;
  const __m256i eight = _mm256_set1_epi8(8);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo, hi, ylo, yhi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    q8_pair(y[i].qs, y[i + 1].qs, &ylo, &yhi);
    const __m256i d = dot_pairs_offset(lo, ylo, hi, yhi, eight);
    const __m128 p = pair_scales_d(x[i].d, x[i + 1].d, y[i].d, y[i + 1].d);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), pair_spread(p), acc);
  }
  float sum = hsum256_ps(acc);
  if (i < nb) sum += (float)dot_block(nibbles32(x[i].qs), y[i].qs, 8) * (h2f(x[i].d) * h2f(y[i].d));
  *s = sum;
}

// The hot kernel of Q4_1 models.
static void q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q4_1 *x = vx;
  const ac_block_q8_1 *y = vy;
  const int64_t nb = n / AC_QK8_1;
  __m256 acc = _mm256_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo, hi, ylo, yhi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    q8_pair(y[i].qs, y[i + 1].qs, &ylo, &yhi);
    const __m128 p = pair_scales_dm(&x[i], &x[i + 1], &y[i], &y[i + 1]);
    accm = _mm_add_ps(accm, p);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_pairs(lo, ylo, hi, yhi)), pair_spread(p), acc);
  }
  float sum = hsum256_ps(acc) + odd_lanes_sum(accm);
  if (i < nb)
    sum += (float)dot_block(nibbles32(x[i].qs), y[i].qs, 0) * (h2f(x[i].d) * h2f(y[i].d)) +
           h2f(x[i].m) * h2f(y[i].s);
  *s = sum;
}

static void q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q5_0 *x = vx;
  const ac_block_q8_0 *y = vy;
  const int64_t nb = n / AC_QK8_0;
  const __m256i sixteen = _mm256_set1_epi8(16);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo, hi, ylo, yhi;
    __mmask32 blo, bhi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    high_bits_pair(x[i].qh, x[i + 1].qh, &blo, &bhi);
    lo = _mm256_mask_add_epi8(lo, blo, lo, sixteen);
    hi = _mm256_mask_add_epi8(hi, bhi, hi, sixteen);
    q8_pair(y[i].qs, y[i + 1].qs, &ylo, &yhi);
    const __m256i d = dot_pairs_offset(lo, ylo, hi, yhi, sixteen);
    const __m128 p = pair_scales_d(x[i].d, x[i + 1].d, y[i].d, y[i + 1].d);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), pair_spread(p), acc);
  }
  float sum = hsum256_ps(acc);
  if (i < nb) {
    const __m256i q = nibbles32(x[i].qs);
    const __m256i u = _mm256_mask_add_epi8(q, (__mmask32)ac__load_u32(x[i].qh), q, sixteen);
    sum += (float)dot_block(u, y[i].qs, 16) * (h2f(x[i].d) * h2f(y[i].d));
  }
  *s = sum;
}

static void q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q5_1 *x = vx;
  const ac_block_q8_1 *y = vy;
  const int64_t nb = n / AC_QK8_1;
  const __m256i sixteen = _mm256_set1_epi8(16);
  __m256 acc = _mm256_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo, hi, ylo, yhi;
    __mmask32 blo, bhi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    high_bits_pair(x[i].qh, x[i + 1].qh, &blo, &bhi);
    lo = _mm256_mask_add_epi8(lo, blo, lo, sixteen);
    hi = _mm256_mask_add_epi8(hi, bhi, hi, sixteen);
    q8_pair(y[i].qs, y[i + 1].qs, &ylo, &yhi);
    const __m128 p = pair_scales_dm(&x[i], &x[i + 1], &y[i], &y[i + 1]);
    accm = _mm_add_ps(accm, p);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_pairs(lo, ylo, hi, yhi)), pair_spread(p), acc);
  }
  float sum = hsum256_ps(acc) + odd_lanes_sum(accm);
  if (i < nb) {
    const __m256i q = nibbles32(x[i].qs);
    const __m256i u = _mm256_mask_add_epi8(q, (__mmask32)ac__load_u32(x[i].qh), q, sixteen);
    sum +=
        (float)dot_block(u, y[i].qs, 0) * (h2f(x[i].d) * h2f(y[i].d)) + h2f(x[i].m) * h2f(y[i].s);
  }
  *s = sum;
}

// Q8_0 x Q8_0: |x| times y with x's sign, exact since activations never hold -128
// (AC__Q8_ACT_MIN; |-128| = 128 is right as an unsigned byte, so weights may). Two blocks' int32
// sums are interleaved by vphaddd: lanes {0,1,4,5} are block a, {2,3,6,7} block b.
static inline __m256i q8_0_block_dot(const int8_t *x, const int8_t *y) {
  const __m256i qx = loadu256(x);
  return dot_u8s8_256(_mm256_abs_epi8(qx), _mm256_sign_epi8(loadu256(y), qx));
}

static void q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q8_0 *x = vx;
  const ac_block_q8_0 *y = vy;
  const int64_t nb = n / AC_QK8_0;
  const __m256i spread = _mm256_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    const __m256i d = _mm256_hadd_epi32(q8_0_block_dot(x[i].qs, y[i].qs),
                                        q8_0_block_dot(x[i + 1].qs, y[i + 1].qs));
    const __m128 p = pair_scales_d(x[i].d, x[i + 1].d, y[i].d, y[i + 1].d);
    const __m256 sc = _mm256_permutexvar_ps(spread, _mm256_castps128_ps256(p));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, acc);
  }
  float sum = hsum256_ps(acc);
  if (i < nb)
    sum += (float)hsum256_epi32(q8_0_block_dot(x[i].qs, y[i].qs)) * (h2f(x[i].d) * h2f(y[i].d));
  *s = sum;
}

// --- 32-value blocks: conversions --------------------------------------------------------------

static void q4_1_to_float(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q4_1 *x = vx;
  for (int64_t i = 0; i < n / AC_QK4_1; i++, y += AC_QK4_1) {
    const __m512 d = _mm512_set1_ps(h2f(x[i].d)), m = _mm512_set1_ps(h2f(x[i].m));
    const __m256i q = nibbles32(x[i].qs);
    const __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(q)));
    const __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(q, 1)));
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(f0, d), m));
    _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_mul_ps(f1, d), m));
  }
}

static void q8_0_to_float(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q8_0 *x = vx;
  for (int64_t i = 0; i < n / AC_QK8_0; i++, y += AC_QK8_0) {
    const __m512 d = _mm512_set1_ps(h2f(x[i].d));
    const __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(loadu128(x[i].qs)));
    const __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(loadu128(x[i].qs + 16)));
    _mm512_storeu_ps(y, _mm512_mul_ps(f0, d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(f1, d));
  }
}

// Quantizes one block of 32 floats exactly as q8_0_from_float_ref does; returns sum(q).
static inline int quantize_block_q8(const float *x, int8_t *qs, float *d_out) {
  const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float d = amax / 127;
  const float id = amax != 0 ? 127.0f / amax : 0.0f;
  const __m512 vid = _mm512_set1_ps(id);
  const __m512i q0 = round_even_epi32(_mm512_mul_ps(v0, vid));
  const __m512i q1 = round_even_epi32(_mm512_mul_ps(v1, vid));
  _mm_storeu_si128((__m128i *)qs, _mm512_cvtsepi32_epi8(q0));
  _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtsepi32_epi8(q1));
  *d_out = d;
  return _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
}

static void q8_0_from_float(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_0 *y = vy;
  for (int64_t i = 0; i < n / AC_QK8_0; i++, x += AC_QK8_0) {
    float d;
    (void)quantize_block_q8(x, y[i].qs, &d);
    y[i].d = f2h(d);
  }
}

static void q8_1_from_float(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_1 *y = vy;
  for (int64_t i = 0; i < n / AC_QK8_1; i++, x += AC_QK8_1) {
    float d;
    const int sum = quantize_block_q8(x, y[i].qs, &d);
    y[i].d = f2h(d);
    y[i].s = f2h((float)sum * d);
  }
}

// --- Q8_K --------------------------------------------------------------------------------------

static void q8_k_from_float(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_K *y = vy;
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    __m512 m = _mm512_setzero_ps();
    for (int k = 0; k < AC_QK_K; k += 16)
      m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    const float amax = _mm512_reduce_max_ps(m);
    if (amax == 0) {
      memset(&y[i], 0, sizeof y[i]);
      continue;
    }
    // The reference keeps the sign of the first value of largest magnitude.
    float max = 0;
    const __m512 vamax = _mm512_set1_ps(amax);
    for (int k = 0; k < AC_QK_K; k += 16) {
      const __mmask16 eq =
          _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + k)), vamax, _CMP_EQ_OQ);
      if (eq) {
        max = x[k + __builtin_ctz((unsigned)eq)];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m512 vis = _mm512_set1_ps(iscale);
    for (int g = 0; g < AC_QK_K / 16; g++) {
      // cvtps rounds to nearest even under the default MXCSR, like lrintf in the reference.
      const __m512i q =
          _mm512_cvtps_epi32(clamp_q8(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * g), vis)));
      _mm_storeu_si128((__m128i *)(y[i].qs + 16 * g), _mm512_cvtsepi32_epi8(q));
      y[i].bsums[g] = (int16_t)_mm512_reduce_add_epi32(q);
    }
    y[i].d = 1 / iscale;
  }
}

// --- K-quants: dot products --------------------------------------------------------------------
// Each super-block is unpacked 64 values at a time into unsigned levels in natural order.
// vpmaddubsw multiplies them with the activations into int16 pairs (levels <= 63, so no
// saturation), and vpdpwssd multiplies the pairs by the sub-block scales and accumulates int32.
// Its int32 lane k takes int16 pairs 2k and 2k+1, which always belong to one sub-block, so the
// scales are kept as int32 lanes holding the scale in both halves, and a 64-value chunk's scale
// vector is one vpermd away. (vpermw and variable 16-bit shifts, the obvious alternatives, made
// these kernels twice as slow on Zen 4.) Offsets and minimums are applied through the
// activations' per-16 sums (bsums).

// 16 int16 scales (one per 16 values) -> int32 lanes with the scale in both halves.
static inline __m512i g16_scales(__m256i sc16) {
  const __m512i s32 = _mm512_cvtepi16_epi32(sc16);
  return _mm512_or_si512(_mm512_and_si512(s32, _mm512_set1_epi32(0xFFFF)),
                         _mm512_slli_epi32(s32, 16));
}

// Scale lanes for the 64 values of groups 4c .. 4c+3 (four int32 lanes per group).
static inline __m512i g16_chunk_scales(__m512i sc2, int c) {
  const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return _mm512_permutexvar_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(4 * c)), sc2);
}

static inline __m512i kdot64(__m512i acc, __m512i u, const int8_t *y, __m512i sc) {
  return _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(u, loadu512(y)), sc);
}

// 64 2-bit levels from 32 bytes: the field at bit `a` of every byte, then the one at bit `b`.
static inline __m512i crumbs64(__m256i q, int a, int b) {
  const __m256i m3 = _mm256_set1_epi8(3);
  return join256(_mm256_and_si256(_mm256_srli_epi16(q, a), m3),
                 _mm256_and_si256(_mm256_srli_epi16(q, b), m3));
}

// One bit per half: a byte mask test of bit a in the first 32 bytes, bit b in the second.
static inline __m512i bits8(int a, int b) {
  return join256(_mm256_set1_epi8((char)(1 << a)), _mm256_set1_epi8((char)(1 << b)));
}

static void q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q2_K *x = vx;
  const ac_block_q8_K *y = vy;
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    const __m128i sb = loadu128(x[i].scales);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m512i sc2 = g16_scales(_mm256_cvtepu8_epi16(_mm_and_si128(sb, m4)));
    const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), m4));
    __m512i isum = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      // 128 values: the fields at bits 0, 2 give the first 64, bits 4, 6 the next 64.
      const __m256i q = loadu256(x[i].qs + 32 * h);
      isum = kdot64(isum, crumbs64(q, 0, 2), y[i].qs + 128 * h, g16_chunk_scales(sc2, 2 * h));
      isum =
          kdot64(isum, crumbs64(q, 4, 6), y[i].qs + 128 * h + 64, g16_chunk_scales(sc2, 2 * h + 1));
    }
    const float yd = y[i].d;
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(yd * h2f(x[i].d)), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(loadu256(y[i].bsums), mins16)),
                           _mm256_set1_ps(yd * h2f(x[i].dmin)), accm);
  }
  *s = _mm512_reduce_add_ps(acc) - hsum256_ps(accm);
}

static void q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q3_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m512i four = _mm512_set1_epi8(4);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    uint32_t w[4];
    ac__q3_k_scales_biased(x[i].scales, w);
    const __m128i sb =
        _mm_sub_epi8(_mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]), _mm_set1_epi8(32));
    const __m256i sc16 = _mm256_cvtepi8_epi16(sb);
    const __m512i sc2 = g16_scales(sc16);
    const __m512i hm = dup256(loadu256(x[i].hmask));
    __m512i isum = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      const __m256i q = loadu256(x[i].qs + 32 * h);
      __m512i u0 = crumbs64(q, 0, 2), u1 = crumbs64(q, 4, 6);
      // Level + 4: add 4 where the high bit (bit 4h + run of hmask) is set.
      u0 = _mm512_mask_add_epi8(u0, _mm512_test_epi8_mask(hm, bits8(4 * h, 4 * h + 1)), u0, four);
      u1 = _mm512_mask_add_epi8(u1, _mm512_test_epi8_mask(hm, bits8(4 * h + 2, 4 * h + 3)), u1,
                                four);
      isum = kdot64(isum, u0, y[i].qs + 128 * h, g16_chunk_scales(sc2, 2 * h));
      isum = kdot64(isum, u1, y[i].qs + 128 * h + 64, g16_chunk_scales(sc2, 2 * h + 1));
    }
    // sum sc * (u - 4) * y = isum - 4 * sum sc * bsums, exact in int32.
    const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(loadu256(y[i].bsums), sc16), 2);
    const __m512i fixed = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(off));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fixed), _mm512_set1_ps(y[i].d * h2f(x[i].d)), acc);
  }
  *s = _mm512_reduce_add_ps(acc);
}

// Q4_K / Q5_K go 32 values at a time on 256-bit vectors: their sub-blocks are 32 values, so a
// chunk needs a single broadcast scale, and vpdpwssd folds in the scale multiply and the add.
// (The 512-bit form, which needs a permute per chunk for the scales, was 10-15% slower.)

// The 8 scales as int16, and the 8 mins repeated per 16 values to line up with bsums.
static inline void k4_scales(const uint8_t *packed, int16_t sc[8], __m256i *mins16) {
  uint32_t w[4];
  ac__k4_scales_mins(packed, w);
  const __m128i v = _mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]);
  _mm_storeu_si128((__m128i *)sc, _mm_cvtepu8_epi16(v));
  *mins16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v, v));
}

static inline __m256i kdot32(__m256i acc, __m256i u, const int8_t *y, int16_t sc) {
  return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, loadu256(y)), _mm256_set1_epi16(sc));
}

static void q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q4_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    int16_t sc[8];
    __m256i mins16;
    k4_scales(x[i].scales, sc, &mins16);
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      // 32 bytes: the low nibbles are sub-block 2j, the high nibbles sub-block 2j+1.
      const __m256i q = loadu256(x[i].qs + 32 * j);
      isum = kdot32(isum, _mm256_and_si256(q, m4), y[i].qs + 64 * j, sc[2 * j]);
      isum = kdot32(isum, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), y[i].qs + 64 * j + 32,
                    sc[2 * j + 1]);
    }
    const float yd = y[i].d;
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(yd * h2f(x[i].d)), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(loadu256(y[i].bsums), mins16)),
                           _mm256_set1_ps(yd * h2f(x[i].dmin)), accm);
  }
  *s = hsum256_ps(acc) - hsum256_ps(accm);
}

static void q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q5_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m4 = _mm256_set1_epi8(0x0F), sixteen = _mm256_set1_epi8(16);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    int16_t sc[8];
    __m256i mins16;
    k4_scales(x[i].scales, sc, &mins16);
    const __m256i hb = loadu256(x[i].qh);
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      const __m256i q = loadu256(x[i].qs + 32 * j);
      __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      // The 5th bit of sub-block 2j is bit 2j of qh, that of 2j+1 bit 2j+1.
      lo = _mm256_mask_add_epi8(
          lo, _mm256_test_epi8_mask(hb, _mm256_set1_epi8((char)(1 << (2 * j)))), lo, sixteen);
      hi = _mm256_mask_add_epi8(
          hi, _mm256_test_epi8_mask(hb, _mm256_set1_epi8((char)(1 << (2 * j + 1)))), hi, sixteen);
      isum = kdot32(isum, lo, y[i].qs + 64 * j, sc[2 * j]);
      isum = kdot32(isum, hi, y[i].qs + 64 * j + 32, sc[2 * j + 1]);
    }
    const float yd = y[i].d;
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(yd * h2f(x[i].d)), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(loadu256(y[i].bsums), mins16)),
                           _mm256_set1_ps(yd * h2f(x[i].dmin)), accm);
  }
  *s = hsum256_ps(acc) - hsum256_ps(accm);
}

static void q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q6_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    const __m256i sc16 = _mm256_cvtepi8_epi16(loadu128(x[i].scales));
    const __m512i sc2 = g16_scales(sc16);
    __m512i isum = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      const __m256i l0 = loadu256(x[i].ql + 64 * h), l1 = loadu256(x[i].ql + 64 * h + 32);
      const __m256i qh = loadu256(x[i].qh + 32 * h);
      // Levels + 32 (0..63): a nibble of ql, and a 2-bit field of qh moved to bits 4-5 of its own
      // byte by a 16-bit shift (the mask drops what crossed from the neighbouring byte).
      const __m512i u0 = join256(_mm256_or_si256(_mm256_and_si256(l0, m4),
                                                 _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                                 _mm256_or_si256(_mm256_and_si256(l1, m4),
                                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)));
      const __m512i u1 = join256(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                                 _mm256_and_si256(qh, m30)),
                                 _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)));
      isum = kdot64(isum, u0, y[i].qs + 128 * h, g16_chunk_scales(sc2, 2 * h));
      isum = kdot64(isum, u1, y[i].qs + 128 * h + 64, g16_chunk_scales(sc2, 2 * h + 1));
    }
    // sum sc * (u - 32) * y = isum - 32 * sum sc * bsums, exact in int32.
    const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(loadu256(y[i].bsums), sc16), 5);
    const __m512i fixed = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(off));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fixed), _mm512_set1_ps(y[i].d * h2f(x[i].d)), acc);
  }
  *s = _mm512_reduce_add_ps(acc);
}

// --- install -----------------------------------------------------------------------------------

void ac__quant_avx512_install(ac_type_traits_t *tab) {
  // Start from the AVX2 kernels (F16's dot product among them, see the top of this file).
  ac__quant_avx2_install(tab);
  tab[AC_TYPE_F32].vec_dot = f32_vec_dot;
  tab[AC_TYPE_F16].to_float = f16_to_float;
  tab[AC_TYPE_F16].from_float = f16_from_float;
  tab[AC_TYPE_BF16].vec_dot = bf16_vec_dot;
  tab[AC_TYPE_Q4_0].vec_dot = q4_0_vec_dot;
  tab[AC_TYPE_Q4_1].vec_dot = q4_1_vec_dot;
  tab[AC_TYPE_Q4_1].to_float = q4_1_to_float;
  tab[AC_TYPE_Q5_0].vec_dot = q5_0_vec_dot;
  tab[AC_TYPE_Q5_1].vec_dot = q5_1_vec_dot;
  tab[AC_TYPE_Q8_0].vec_dot = q8_0_vec_dot;
  tab[AC_TYPE_Q8_0].to_float = q8_0_to_float;
  tab[AC_TYPE_Q8_0].from_float = q8_0_from_float;
  tab[AC_TYPE_Q8_1].from_float = q8_1_from_float;
  tab[AC_TYPE_Q8_K].from_float = q8_k_from_float;
  tab[AC_TYPE_Q2_K].vec_dot = q2_k_vec_dot;
  tab[AC_TYPE_Q3_K].vec_dot = q3_k_vec_dot;
  tab[AC_TYPE_Q4_K].vec_dot = q4_k_vec_dot;
  tab[AC_TYPE_Q5_K].vec_dot = q5_k_vec_dot;
  tab[AC_TYPE_Q6_K].vec_dot = q6_k_vec_dot;
}
