// quant_x86.h - the x86 kernels that quant_avx2.c and quant_avx512.c share, written once.
//
// Not a header in the usual sense: it is part of each of those two files. Each includes it once,
// at file scope, after its FP-contraction pragma, and then defines the primitives declared below
// with its own instructions. Everything here is static, so each file compiles its own copy with
// its own -m flags and installs that copy into its own table; no symbol is shared.
//
// The kernels here have the same shape in both sets, on 256-bit vectors: the F16 and 32-value
// block dot products, the Q8_0 / Q8_1 activation quantizers, the Q4_K / Q5_K dot products, the
// vec_dot_4 tiles of several of these and the vec_dot_r4 decode kernels of Q4_0, Q4_1, Q8_0 and
// Q4_K (plus the helpers the ISA files' own tiles and decode kernels use). The sets
// differ only in how u8 x s8 products are summed (vpmaddubsw + vpmaddwd on AVX2, VNNI's vpdpbusd
// and vpdpwssd on AVX-512), how bits become +16 on bytes (a compare on AVX2, a mask register on
// AVX-512) and how a block of floats is quantized (8 or 16 lanes). Those are the primitives.
//
// Contraction must stay off here as in the including files: the kernels use explicit FMAs only,
// so that results are the same bits in both sets and match the reference's rounding.
#ifndef AC_QUANT_X86_H
#define AC_QUANT_X86_H

#include <immintrin.h>

#include "quant_impl.h"

// --- primitives: each including file defines these ---------------------------------------------

// Sums of u8 x s8 products, four bytes to each int32 lane. Exact while each pair of products fits
// in int16 (vpmaddubsw saturates there; the callers' levels keep well inside).
static inline __m256i dot_u8s8(__m256i u, __m256i s);

// Two blocks in the lo / hi arrangement below: int32 lanes 0-3 sum block a's products u x y,
// lanes 4-7 block b's.
static inline __m256i dot_pairs(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi);

// The same minus off * (sum of y), for levels stored with an offset (Q4_0: 8, Q5_0: 16).
static inline __m256i dot_pairs_offset(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi,
                                       __m256i off);

// dot_pairs_offset in two steps, for several weight rows against the same activation blocks:
// the activation side off * (sum of y), in whatever form dot_pairs_less takes it, once ...
static inline __m256i pairs_offset_term(__m256i ylo, __m256i yhi, __m256i off);
// ... then per weight row: the same int32 lanes as dot_pairs_offset(lo, ylo, hi, yhi, off).
static inline __m256i dot_pairs_less(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi, __m256i o);

// One block: sum over 32 values of (u - off) * y, with u unsigned levels.
static inline int dot_block(__m256i u, const int8_t *y, int off);

// u plus 16 in byte j where bit j of `bits` is set: the 5th bit of Q5 levels (u's bytes are
// below 16, so adding 16 and setting bit 4 are the same).
static inline __m256i with_bit4(__m256i u, uint32_t bits);

// u plus 16 in each byte whose byte of `hb` has the bit set that `bit` holds (one bit, the same in
// every byte; u's bytes below 16).
static inline __m256i with_bit4_where(__m256i u, __m256i hb, __m256i bit);

// acc + sc * (u x y[0..32) summed in int32 lanes): one 32-value sub-block of a K-quant with
// unsigned levels u <= 63 and its scale sc.
static inline __m256i kdot32(__m256i acc, __m256i u, const int8_t *y, int16_t sc);

// The same with y already in a register and the scale given as a vector of int16 lanes all equal
// to sc: the same int32 lanes as kdot32.
static inline __m256i kdot32v(__m256i acc, __m256i u, __m256i y, __m256i sc);

// Quantizes one block of 32 floats as q8_0_from_float_ref does; returns sum(q) and sets *d_out.
static inline int quantize_block_q8(const float *x, int8_t *qs, float *d_out);

// --- helpers -----------------------------------------------------------------------------------

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t f2h(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

static inline __m256i loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m128i loadu128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

static inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// 16 bytes of packed nibbles -> 32 bytes in natural element order: the low nibbles (values 0..15)
// then the high nibbles (values 16..31).
static inline __m256i nibbles32(const uint8_t *p) {
  const __m128i b = loadu128(p);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

// --- F16 ---------------------------------------------------------------------------------------
// Both sets use 256-bit vectors: on Zen 4 vcvtph2ps on 512 bits converts half as many values per
// cycle, and the 512-bit dot product was 1.5x slower.

static inline __m256 load_f16x8(const uint16_t *p) { return _mm256_cvtph_ps(loadu128(p)); }

// The end of an F16 dot product, given the four partial sums a[k] (values 32m + 8k ...) over the
// first n32 values: the rest of whole 8s into a[0] and the four sums added into one vector, to be
// reduced by hsum_ps; then the last n % 8 values one by one onto the reduced sum.
static inline __m256 f16_dot_vec(__m256 a0, __m256 a1, __m256 a2, __m256 a3, const uint16_t *x,
                                 const uint16_t *y, int64_t n32, int64_t n) {
  for (int64_t i = n32; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
  return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
}

static inline float f16_dot_tail(float sum, const uint16_t *x, const uint16_t *y, int64_t n) {
  for (int64_t i = n / 8 * 8; i < n; i++) sum += h2f(x[i]) * h2f(y[i]);
  return sum;
}

static void f16_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                        const void *restrict vy) {
  const uint16_t *x = vx, *y = vy;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
    a1 = _mm256_fmadd_ps(load_f16x8(x + i + 8), load_f16x8(y + i + 8), a1);
    a2 = _mm256_fmadd_ps(load_f16x8(x + i + 16), load_f16x8(y + i + 16), a2);
    a3 = _mm256_fmadd_ps(load_f16x8(x + i + 24), load_f16x8(y + i + 24), a3);
  }
  *s = f16_dot_tail(hsum_ps(f16_dot_vec(a0, a1, a2, a3, x, y, i, n)), x, y, n);
}

// --- 32-value blocks: dot products ---------------------------------------------------------------
// Two blocks per step. Their nibbles are arranged as lo = [low nibbles of block a | of block b]
// and hi = [high nibbles of a | of b], the activations to match (ylo = [ya 0..15 | yb 0..15],
// yhi = [ya 16..31 | yb 16..31]), so that after the integer products int32 lanes 0-3 hold block
// a and lanes 4-7 block b: one conversion and one FMA serve both blocks. The four scale halves
// of the two blocks and their activation blocks are converted with one vcvtph2ps. An odd last
// block is done on its own. Weights with an offset (Q4_0: q - 8) stay unsigned, and the offset
// is taken off through the activations' sums, exactly.

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
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(p),
                                  _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
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

// Adds the 5th bits of two Q5 blocks to their levels in the lo / hi arrangement: bits 0-15 of
// each qh belong to the low nibbles, bits 16-31 to the high ones.
static inline void bit4_pair(const uint8_t *qa, const uint8_t *qb, __m256i *lo, __m256i *hi) {
  const uint32_t a = ac__load_u32(qa), b = ac__load_u32(qb);
  *lo = with_bit4(*lo, (a & 0xFFFF) | (b << 16));
  *hi = with_bit4(*hi, (a >> 16) | (b & 0xFFFF0000u));
}

static inline void q8_pair(const int8_t *a, const int8_t *b, __m256i *lo, __m256i *hi) {
  *lo = _mm256_inserti128_si256(_mm256_castsi128_si256(loadu128(a)), loadu128(b), 1);
  *hi = _mm256_inserti128_si256(_mm256_castsi128_si256(loadu128(a + 16)), loadu128(b + 16), 1);
}

// One step of Q4_0 / Q5_0 x Q8_0: acc plus d_x * d_y * sum((u - off) * y) of both blocks, the
// levels in lo / hi and the activation blocks at y[0], y[1].
static inline __m256 pair_step_d(__m256 acc, __m256i lo, __m256i hi, __m256i off, uint16_t dxa,
                                 uint16_t dxb, const ac_block_q8_0 *y) {
  __m256i ylo, yhi;
  q8_pair(y[0].qs, y[1].qs, &ylo, &yhi);
  const __m256i d = dot_pairs_offset(lo, ylo, hi, yhi, off);
  const __m128 p = pair_scales_d(dxa, dxb, y[0].d, y[1].d);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), pair_spread(p), acc);
}

// One step of Q4_1 / Q5_1 x Q8_1: acc plus d_x * d_y * sum(u * y) of both blocks (xa, xb start
// with their d and m); the minimum terms m_x * s_y go to lanes 1 and 3 of *accm.
static inline __m256 pair_step_dm(__m256 acc, __m128 *accm, __m256i lo, __m256i hi, const void *xa,
                                  const void *xb, const ac_block_q8_1 *y) {
  __m256i ylo, yhi;
  q8_pair(y[0].qs, y[1].qs, &ylo, &yhi);
  const __m128 p = pair_scales_dm(xa, xb, &y[0], &y[1]);
  *accm = _mm_add_ps(*accm, p);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_pairs(lo, ylo, hi, yhi)), pair_spread(p), acc);
}

// An odd last block of Q4_0 / Q5_0: d_x * d_y * sum((u - off) * y).
static inline float block_d(__m256i u, int off, uint16_t dx, const ac_block_q8_0 *y) {
  return (float)dot_block(u, y->qs, off) * (h2f(dx) * h2f(y->d));
}

// Of Q4_1 / Q5_1: d_x * d_y * sum(u * y) + m_x * s_y.
static inline float block_dm(__m256i u, uint16_t dx, uint16_t mx, const ac_block_q8_1 *y) {
  return (float)dot_block(u, y->qs, 0) * (h2f(dx) * h2f(y->d)) + h2f(mx) * h2f(y->s);
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
    __m256i lo, hi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    acc = pair_step_d(acc, lo, hi, eight, x[i].d, x[i + 1].d, &y[i]);
  }
  float sum = hsum_ps(acc);
  if (i < nb) sum += block_d(nibbles32(x[i].qs), 8, x[i].d, &y[i]);
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
    __m256i lo, hi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    acc = pair_step_dm(acc, &accm, lo, hi, &x[i], &x[i + 1], &y[i]);
  }
  float sum = hsum_ps(acc) + odd_lanes_sum(accm);
  if (i < nb) sum += block_dm(nibbles32(x[i].qs), x[i].d, x[i].m, &y[i]);
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
    __m256i lo, hi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    bit4_pair(x[i].qh, x[i + 1].qh, &lo, &hi);
    acc = pair_step_d(acc, lo, hi, sixteen, x[i].d, x[i + 1].d, &y[i]);
  }
  float sum = hsum_ps(acc);
  if (i < nb)
    sum += block_d(with_bit4(nibbles32(x[i].qs), ac__load_u32(x[i].qh)), 16, x[i].d, &y[i]);
  *s = sum;
}

static void q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q5_1 *x = vx;
  const ac_block_q8_1 *y = vy;
  const int64_t nb = n / AC_QK8_1;
  __m256 acc = _mm256_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo, hi;
    nibbles_pair(x[i].qs, x[i + 1].qs, &lo, &hi);
    bit4_pair(x[i].qh, x[i + 1].qh, &lo, &hi);
    acc = pair_step_dm(acc, &accm, lo, hi, &x[i], &x[i + 1], &y[i]);
  }
  float sum = hsum_ps(acc) + odd_lanes_sum(accm);
  if (i < nb)
    sum += block_dm(with_bit4(nibbles32(x[i].qs), ac__load_u32(x[i].qh)), x[i].d, x[i].m, &y[i]);
  *s = sum;
}

// Q8_0 x Q8_0: |x| times y with x's sign, exact since activations never hold -128
// (AC__Q8_ACT_MIN; |-128| = 128 is right as an unsigned byte, so weights may). Two blocks' int32
// sums are interleaved by vphaddd: lanes {0,1,4,5} are block a, {2,3,6,7} block b.
static inline __m256i q8_0_block_dot(const int8_t *x, const int8_t *y) {
  const __m256i qx = loadu256(x);
  return dot_u8s8(_mm256_abs_epi8(qx), _mm256_sign_epi8(loadu256(y), qx));
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
    const __m256 sc = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(p), spread);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, acc);
  }
  float sum = hsum_ps(acc);
  if (i < nb)
    sum += (float)hsum_epi32(q8_0_block_dot(x[i].qs, y[i].qs)) * (h2f(x[i].d) * h2f(y[i].d));
  *s = sum;
}

// --- 32-value blocks: activation quantizers ----------------------------------------------------

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

// --- K-quants with 32-value sub-blocks: Q4_K, Q5_K ---------------------------------------------
// 32 values at a time: the low or high nibbles of 32 bytes are one sub-block, so a chunk needs a
// single broadcast scale. The minimums are applied through the activations' per-16 sums (bsums).

// The 8 scales as int16, and the 8 mins repeated per 16 values to line up with bsums.
static inline void k4_scales(const uint8_t *packed, int16_t sc[8], __m256i *mins16) {
  uint32_t w[4];
  ac__k4_scales_mins(packed, w);
  const __m128i v = _mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]);
  _mm_storeu_si128((__m128i *)sc, _mm_cvtepu8_epi16(v));
  *mins16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v, v));
}

// The end of a super-block with minimums: *acc += isum * (d_y * d_x) and
// *accm += (bsums . mins16) * (d_y * dmin_x), the latter subtracted at the end.
static inline void k_accumulate_dmin(__m256 *acc, __m256 *accm, __m256i isum, __m256i mins16,
                                     const ac_block_q8_K *y, uint16_t d, uint16_t dmin) {
  const float yd = y->d;
  *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(yd * h2f(d)), *acc);
  *accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(loadu256(y->bsums), mins16)),
                          _mm256_set1_ps(yd * h2f(dmin)), *accm);
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
    k_accumulate_dmin(&acc, &accm, isum, mins16, &y[i], x[i].d, x[i].dmin);
  }
  *s = hsum_ps(acc) - hsum_ps(accm);
}

static void q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q5_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    int16_t sc[8];
    __m256i mins16;
    k4_scales(x[i].scales, sc, &mins16);
    const __m256i hb = loadu256(x[i].qh);
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      // The 5th bit of sub-block 2j is bit 2j of qh, that of 2j+1 bit 2j+1.
      const __m256i q = loadu256(x[i].qs + 32 * j);
      const __m256i lo =
          with_bit4_where(_mm256_and_si256(q, m4), hb, _mm256_set1_epi8((char)(1 << (2 * j))));
      const __m256i hi = with_bit4_where(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hb,
                                         _mm256_set1_epi8((char)(1 << (2 * j + 1))));
      isum = kdot32(isum, lo, y[i].qs + 64 * j, sc[2 * j]);
      isum = kdot32(isum, hi, y[i].qs + 64 * j + 32, sc[2 * j + 1]);
    }
    k_accumulate_dmin(&acc, &accm, isum, mins16, &y[i], x[i].d, x[i].dmin);
  }
  *s = hsum_ps(acc) - hsum_ps(accm);
}

// --- tiles: vec_dot_4 ---------------------------------------------------------------------------
// R weight rows (1 or 2) by 4 activation rows in one pass: each weight block is unpacked (and its
// scales converted) once for the 4 activation rows, each activation block loaded once for the R
// weight rows. Every pair keeps the accumulators its vec_dot above has, updated by the same
// operations in the same order and reduced by the same additions, so it gets the same bits; only
// the pairs are interleaved, and where two pairs' operations are lane-wise the same they may
// share a vector. The row loops have constant bounds and are unrolled, which keeps the
// accumulators in registers. Pair (r, j) is number 2j + r where the 8 pairs are handled together.

#define X86_UNROLL _Pragma("GCC unroll 8")

// The kernel of a type from its tile body, specialised for one and for two weight rows.
#define X86_TILE_KERNEL(prefix)                                                             \
  static void prefix##_vec_dot_4(int64_t n, int nr, float *restrict s, size_t bs,           \
                                 const void *restrict x, size_t bx, const void *restrict y, \
                                 size_t by) {                                               \
    if (nr == 2)                                                                            \
      prefix##_tile(n, 2, s, bs, x, bx, y, by);                                             \
    else                                                                                    \
      prefix##_tile(n, 1, s, bs, x, bx, y, by);                                             \
  }

// The same for tile bodies that measured no faster on two weight rows than on one (their
// accumulators and unpacked levels outgrow the registers): two weight rows are two passes.
#define X86_TILE_KERNEL_ROWS(prefix)                                                        \
  static void prefix##_vec_dot_4(int64_t n, int nr, float *restrict s, size_t bs,           \
                                 const void *restrict x, size_t bx, const void *restrict y, \
                                 size_t by) {                                               \
    for (int r = 0; r < nr; r++)                                                            \
      prefix##_tile(n, 1, s + r, bs, (const uint8_t *)x + (size_t)r * bx, bx, y, by);       \
  }

static inline const void *row_at(const void *base, size_t stride, int k) {
  return (const uint8_t *)base + (size_t)k * stride;
}

// hsum_ps of v[0..8) at once, by the same additions with the same operands first: lanes
// [v0 v2 v4 v6 | v1 v3 v5 v7] of the result, that is lane 4r + j for pair (r, j) = v[2j + r].
// hsum_ps adds the halves (lane k + lane k+4), then lanes 0+2 and 1+3, then those two.
static inline __m256 hsum8_ps(const __m256 v[8]) {
  __m256 h[4];
  X86_UNROLL for (int p = 0; p < 4; p++) {
    const __m256 lo = _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20);
    const __m256 hi = _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31);
    h[p] = _mm256_add_ps(lo, hi);  // [halves of v(2p) | of v(2p+1)]
  }
  __m256 q[2];
  X86_UNROLL for (int p = 0; p < 2; p++) {
    const __m256 a = _mm256_shuffle_ps(h[2 * p], h[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 b = _mm256_shuffle_ps(h[2 * p], h[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
    q[p] = _mm256_add_ps(a, b);  // lanes 0+2, 1+3 of v(4p), v(4p+2) | v(4p+1), v(4p+3)
  }
  return _mm256_add_ps(_mm256_shuffle_ps(q[0], q[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(q[0], q[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// odd_lanes_sum of 8 four-lane vectors held in pairs m[j] = [pair (0, j) | pair (1, j)], in the
// layout of hsum8_ps: lane 1 + lane 3 of each.
static inline __m256 odd_lanes_sum8(const __m256 m[4]) {
  const __m256 t0 = _mm256_shuffle_ps(m[0], m[1], _MM_SHUFFLE(3, 1, 3, 1));
  const __m256 t1 = _mm256_shuffle_ps(m[2], m[3], _MM_SHUFFLE(3, 1, 3, 1));
  return _mm256_add_ps(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// The 8 pair vectors of a tile for hsum8_ps; with one weight row, row 0 stands in for row 1.
static inline void tile_pairs(const int R, __m256 acc[2][4], __m256 v[8]) {
  X86_UNROLL for (int j = 0; j < 4; j++) {
    v[2 * j] = acc[0][j];
    v[2 * j + 1] = acc[R - 1][j];
  }
}

// The leading halves of a block: d (Q4_0, Q8_0; a zero half above it) or d and m / d and s
// (Q4_1, Q8_1), as pair_scales_d / pair_scales_dm take them.
static inline uint32_t halves_d(const void *blk) {
  uint16_t d;
  memcpy(&d, blk, 2);
  return d;
}

static inline uint32_t halves_dm(const void *blk) {
  uint32_t u;
  memcpy(&u, blk, 4);
  return u;
}

// The halves of blocks a, b of each weight row as floats [row 0's | row 1's]: the x side of
// pair_scales_d / pair_scales_dm. With one weight row, its halves twice.
static inline __m256 tile_x_halves(const int R, const uint32_t a[2], const uint32_t b[2]) {
  return _mm256_cvtph_ps(_mm_setr_epi32((int)a[0], (int)b[0], (int)a[R - 1], (int)b[R - 1]));
}

// The halves of two activation blocks, twice: the y side for both weight rows.
static inline __m256 tile_y_halves(uint32_t a, uint32_t b) {
  return _mm256_cvtph_ps(_mm_set1_epi64x((int64_t)((uint64_t)b << 32 | a)));
}

// pair_spread of weight row r's scale products in p = [row 0's | row 1's].
static inline __m256 tile_spread(__m256 p, int r) {
  return _mm256_permutevar8x32_ps(
      p, _mm256_add_epi32(_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), _mm256_set1_epi32(4 * r)));
}

// F16 tiles keep 4 accumulators per pair, as f16_vec_dot does: 32 registers for 2 x 4 pairs, more
// than either set has. So the tile goes over its rows in passes, each pass keeping only some of
// the 4 accumulator columns (values 32m + 8k .. for k in the pass): F16_TILE_ACC accumulators,
// 8 of AVX2's 16 registers or 16 of AVX-512's 32. A pass reads the rows again from L1, which
// costs less than spilling accumulators; each accumulator still sees its values in the same order.
// The passes are not inlined into the tile: inlined, the compiler kept the finished columns of
// earlier passes in registers and spilled the next pass's accumulators instead.
#if defined(__AVX512F__)
#define F16_TILE_ACC 16
#else
#define F16_TILE_ACC 8
#endif

// Columns k0 .. k0 + KS - 1 of R x 4 pairs over the first n32 values (a multiple of 32), into
// a[r][j][k0 + k].
static inline __attribute__((always_inline)) void f16_tile_pass(int64_t n32, const int R,
                                                                const uint16_t *const *x,
                                                                const uint16_t *const *y, int k0,
                                                                __m256 a[2][4][4]) {
  const int KS = F16_TILE_ACC / (4 * R);
  __m256 c[2][4][4];
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++)
      X86_UNROLL for (int k = 0; k < KS; k++) c[r][j][k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n32; i += 32) {
    X86_UNROLL for (int k = 0; k < KS; k++) {
      const int64_t at = i + 8 * (k0 + k);
      __m256 xv[2];
      X86_UNROLL for (int r = 0; r < R; r++) xv[r] = load_f16x8(x[r] + at);
      X86_UNROLL for (int j = 0; j < 4; j++) {
        const __m256 yv = load_f16x8(y[j] + at);
        X86_UNROLL for (int r = 0; r < R; r++) c[r][j][k] = _mm256_fmadd_ps(xv[r], yv, c[r][j][k]);
      }
    }
  }
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++)
      X86_UNROLL for (int k = 0; k < KS; k++) a[r][j][k0 + k] = c[r][j][k];
}

static __attribute__((noinline)) void f16_tile_pass1(int64_t n32, const uint16_t *const *x,
                                                     const uint16_t *const *y, int k0,
                                                     __m256 a[2][4][4]) {
  f16_tile_pass(n32, 1, x, y, k0, a);
}

static __attribute__((noinline)) void f16_tile_pass2(int64_t n32, const uint16_t *const *x,
                                                     const uint16_t *const *y, int k0,
                                                     __m256 a[2][4][4]) {
  f16_tile_pass(n32, 2, x, y, k0, a);
}

static inline __attribute__((always_inline)) void f16_tile(int64_t n, const int R, float *s,
                                                           size_t bs, const void *vx, size_t bx,
                                                           const void *vy, size_t by) {
  const uint16_t *x[2], *y[4];
  __m256 a[2][4][4], v[2][4], pairs[8];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  const int64_t n32 = n / 32 * 32;
  for (int k0 = 0; k0 < 4; k0 += F16_TILE_ACC / (4 * R)) {
    if (R == 2)
      f16_tile_pass2(n32, x, y, k0, a);
    else
      f16_tile_pass1(n32, x, y, k0, a);
  }
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) v[r][j] =
      f16_dot_vec(a[r][j][0], a[r][j][1], a[r][j][2], a[r][j][3], x[r], y[j], n32, n);
  tile_pairs(R, v, pairs);
  float t[8];
  _mm256_storeu_ps(t, hsum8_ps(pairs));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) s[j * bs + r] =
      f16_dot_tail(t[4 * r + j], x[r], y[j], n);
}
X86_TILE_KERNEL(f16)

static inline __attribute__((always_inline)) void q4_0_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const ac_block_q4_0 *x[2];
  const ac_block_q8_0 *y[4];
  __m256 acc[2][4], pairs[8];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) acc[r][j] =
      _mm256_setzero_ps();
  const int64_t nb = n / AC_QK8_0;
  const __m256i eight = _mm256_set1_epi8(8);
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo[2], hi[2];
    uint32_t xa[2], xb[2];
    X86_UNROLL for (int r = 0; r < R; r++) {
      nibbles_pair(x[r][i].qs, x[r][i + 1].qs, &lo[r], &hi[r]);
      xa[r] = halves_d(&x[r][i]);
      xb[r] = halves_d(&x[r][i + 1]);
    }
    const __m256 xd = tile_x_halves(R, xa, xb);
    X86_UNROLL for (int j = 0; j < 4; j++) {
      __m256i ylo, yhi;
      q8_pair(y[j][i].qs, y[j][i + 1].qs, &ylo, &yhi);
      const __m256 p = _mm256_mul_ps(xd, tile_y_halves(halves_d(&y[j][i]), halves_d(&y[j][i + 1])));
      X86_UNROLL for (int r = 0; r < R; r++) {
        const __m256i d = dot_pairs_offset(lo[r], ylo, hi[r], yhi, eight);
        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), tile_spread(p, r), acc[r][j]);
      }
    }
  }
  tile_pairs(R, acc, pairs);
  float t[8];
  _mm256_storeu_ps(t, hsum8_ps(pairs));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
    float sum = t[4 * r + j];
    if (i < nb) sum += block_d(nibbles32(x[r][i].qs), 8, x[r][i].d, &y[j][i]);
    s[j * bs + r] = sum;
  }
}
X86_TILE_KERNEL(q4_0)

static inline __attribute__((always_inline)) void q4_1_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const ac_block_q4_1 *x[2];
  const ac_block_q8_1 *y[4];
  __m256 acc[2][4], accm[4], pairs[8];  // accm[j]: pair_step_dm's minimum terms, [row 0 | row 1]
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int j = 0; j < 4; j++) {
    X86_UNROLL for (int r = 0; r < R; r++) acc[r][j] = _mm256_setzero_ps();
    accm[j] = _mm256_setzero_ps();
  }
  const int64_t nb = n / AC_QK8_1;
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256i lo[2], hi[2];
    uint32_t xa[2], xb[2];
    X86_UNROLL for (int r = 0; r < R; r++) {
      nibbles_pair(x[r][i].qs, x[r][i + 1].qs, &lo[r], &hi[r]);
      xa[r] = halves_dm(&x[r][i]);
      xb[r] = halves_dm(&x[r][i + 1]);
    }
    const __m256 xdm = tile_x_halves(R, xa, xb);
    X86_UNROLL for (int j = 0; j < 4; j++) {
      __m256i ylo, yhi;
      q8_pair(y[j][i].qs, y[j][i + 1].qs, &ylo, &yhi);
      const __m256 p =
          _mm256_mul_ps(xdm, tile_y_halves(halves_dm(&y[j][i]), halves_dm(&y[j][i + 1])));
      accm[j] = _mm256_add_ps(accm[j], p);
      X86_UNROLL for (int r = 0; r < R; r++) {
        const __m256i d = dot_pairs(lo[r], ylo, hi[r], yhi);
        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), tile_spread(p, r), acc[r][j]);
      }
    }
  }
  tile_pairs(R, acc, pairs);
  float t[8];
  _mm256_storeu_ps(t, _mm256_add_ps(hsum8_ps(pairs), odd_lanes_sum8(accm)));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
    float sum = t[4 * r + j];
    if (i < nb) sum += block_dm(nibbles32(x[r][i].qs), x[r][i].d, x[r][i].m, &y[j][i]);
    s[j * bs + r] = sum;
  }
}
X86_TILE_KERNEL(q4_1)

static inline __attribute__((always_inline)) void q8_0_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const ac_block_q8_0 *x[2], *y[4];
  __m256 acc[2][4], pairs[8];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) acc[r][j] =
      _mm256_setzero_ps();
  const int64_t nb = n / AC_QK8_0;
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    // |x| once per weight block; the sign moves onto each activation block (q8_0_block_dot).
    __m256i qa[2], qb[2], ua[2], ub[2];
    uint32_t xa[2], xb[2];
    X86_UNROLL for (int r = 0; r < R; r++) {
      qa[r] = loadu256(x[r][i].qs);
      qb[r] = loadu256(x[r][i + 1].qs);
      ua[r] = _mm256_abs_epi8(qa[r]);
      ub[r] = _mm256_abs_epi8(qb[r]);
      xa[r] = halves_d(&x[r][i]);
      xb[r] = halves_d(&x[r][i + 1]);
    }
    const __m256 xd = tile_x_halves(R, xa, xb);
    X86_UNROLL for (int j = 0; j < 4; j++) {
      const __m256i ya = loadu256(y[j][i].qs), yb = loadu256(y[j][i + 1].qs);
      const __m256 p = _mm256_mul_ps(xd, tile_y_halves(halves_d(&y[j][i]), halves_d(&y[j][i + 1])));
      X86_UNROLL for (int r = 0; r < R; r++) {
        // q8_0_vec_dot's lanes {0,1,4,5} are block a, {2,3,6,7} block b.
        const __m256i d = _mm256_hadd_epi32(dot_u8s8(ua[r], _mm256_sign_epi8(ya, qa[r])),
                                            dot_u8s8(ub[r], _mm256_sign_epi8(yb, qb[r])));
        const __m256 sc = _mm256_permutevar8x32_ps(
            p,
            _mm256_add_epi32(_mm256_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2), _mm256_set1_epi32(4 * r)));
        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, acc[r][j]);
      }
    }
  }
  tile_pairs(R, acc, pairs);
  float t[8];
  _mm256_storeu_ps(t, hsum8_ps(pairs));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
    float sum = t[4 * r + j];
    if (i < nb)
      sum += (float)hsum_epi32(q8_0_block_dot(x[r][i].qs, y[j][i].qs)) *
             (h2f(x[r][i].d) * h2f(y[j][i].d));
    s[j * bs + r] = sum;
  }
}
X86_TILE_KERNEL(q8_0)

// Q4_K: the levels of a 32-byte chunk (two sub-blocks) are unpacked once per weight row and
// used for the 4 activation rows; each pair's integer sums and float accumulators are those of
// q4_k_vec_dot.
static inline __attribute__((always_inline)) void q4_k_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const ac_block_q4_K *x[2];
  const ac_block_q8_K *y[4];
  __m256 acc[2][4], accm[2][4], pairs[8], pairs_m[8];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
    acc[r][j] = _mm256_setzero_ps();
    accm[r][j] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    int16_t sc[2][8];
    __m256i mins16[2], isum[2][4];
    X86_UNROLL for (int r = 0; r < R; r++) k4_scales(x[r][i].scales, sc[r], &mins16[r]);
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) isum[r][j] =
        _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
      __m256i lo[2], hi[2];
      X86_UNROLL for (int r = 0; r < R; r++) {
        const __m256i q = loadu256(x[r][i].qs + 32 * c);
        lo[r] = _mm256_and_si256(q, m4);
        hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      }
      X86_UNROLL for (int j = 0; j < 4; j++) X86_UNROLL for (int r = 0; r < R; r++) {
        isum[r][j] = kdot32(isum[r][j], lo[r], y[j][i].qs + 64 * c, sc[r][2 * c]);
        isum[r][j] = kdot32(isum[r][j], hi[r], y[j][i].qs + 64 * c + 32, sc[r][2 * c + 1]);
      }
    }
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) k_accumulate_dmin(
        &acc[r][j], &accm[r][j], isum[r][j], mins16[r], &y[j][i], x[r][i].d, x[r][i].dmin);
  }
  tile_pairs(R, acc, pairs);
  tile_pairs(R, accm, pairs_m);
  float t[8];
  _mm256_storeu_ps(t, _mm256_sub_ps(hsum8_ps(pairs), hsum8_ps(pairs_m)));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) s[j * bs + r] =
      t[4 * r + j];
}
X86_TILE_KERNEL(q4_k)

// --- decode: vec_dot_r4 -------------------------------------------------------------------------
// 4 weight rows against one activation row, as a decode step's matrix-vector product has them:
// each activation block is loaded once for the 4 rows, the activation side of offsets (Q4_0's
// off * sum(y)) is computed once, and the scales of the 4 rows are converted and multiplied by
// the activation's scales in one vector. Each row keeps the float accumulators of its vec_dot,
// updated by the same operations (same operands, same order) and reduced by the same additions,
// so each output has the bits of vec_dot on that row; integer sums may be formed differently
// since they are exact. (One caveat, shared with the tiles: where two NaNs meet, x86 keeps the one
// in a given operand slot, and for commutative operations the compiler, not the source, picks the
// slots; so a NaN output may be another NaN. Every other output is the same bits.) The row loops
// have constant bounds and are unrolled. Each kernel prefetches ahead (prefetch_ahead, below).

// hsum_ps of v[0..4) at once, by the same additions of the same operands: [hsum_ps(v0),
// hsum_ps(v1), hsum_ps(v2), hsum_ps(v3)].
static inline __m128 hsum4_ps(const __m256 v[4]) {
  const __m256 h01 = _mm256_add_ps(_mm256_permute2f128_ps(v[0], v[1], 0x20),
                                   _mm256_permute2f128_ps(v[0], v[1], 0x31));
  const __m256 h23 = _mm256_add_ps(_mm256_permute2f128_ps(v[2], v[3], 0x20),
                                   _mm256_permute2f128_ps(v[2], v[3], 0x31));
  // Lanes 0+2 and 1+3 of each halves' sum: [v0's, v2's | v1's, v3's].
  const __m256 q = _mm256_add_ps(_mm256_shuffle_ps(h01, h23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(h01, h23, _MM_SHUFFLE(3, 2, 3, 2)));
  // Those two added: [v0 v2 v0 v2 | v1 v3 v1 v3].
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(q, q, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(q, q, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
}

// Lane k of v in every lane.
static inline __m256 lane_ps(__m256 v, int k) {
  return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(k));
}

// Software prefetch for the decode kernels. A call reads 4 rows side by side, a block of each in
// turn: 4 interleaved streams, each a row long, which train none of the hardware prefetchers. On
// the Zen 4 machines we measure, reading 4 interleaved rows runs at about a third of the speed of
// reading the same bytes in order (8-11 vs 22-28 GB/s), and without help the kernels ran slower
// from DRAM than vec_dot row by row. So each step of a call prefetches, in address order, as many
// bytes as the step reads (4 rows' worth), R4_PREFETCH_AHEAD bytes further on: the calls over a
// matrix's consecutive groups of rows then prefetch the whole matrix in order, that far ahead of
// the reads. 6 KiB measured best of 3-8 KiB for rows of 336 to 1584 bytes. (Prefetches are
// written out, not looped over at run time: GCC deletes a loop that only prefetches.)
#define R4_PREFETCH_AHEAD 6144

static inline __attribute__((always_inline)) void prefetch_lines(const char *p, const int lines) {
  _Pragma("GCC unroll 16") for (int k = 0; k < lines; k++) _mm_prefetch(p + 64 * k, _MM_HINT_T0);
}

// `bytes` (a constant) from `at` bytes into the 4 rows at x, R4_PREFETCH_AHEAD bytes on.
static inline __attribute__((always_inline)) void prefetch_ahead(const void *x, size_t at,
                                                                 const int bytes) {
  // Through uintptr_t: the address may lie past the end of the matrix (a prefetch never faults),
  // where pointer arithmetic would be undefined.
  prefetch_lines((const char *)((uintptr_t)x + R4_PREFETCH_AHEAD + at), (bytes + 63) / 64);
}

// 8 halves as floats: the leading halves of blocks a and b of rows 0..3, [a0 b0 a1 b1 .. a3 b3].
// The halves are combined in general registers (which the vector pipes do not need) and moved
// over as two 64-bit words.
static inline __m256 halves4x2_d(const void *a0, const void *b0, const void *a1, const void *b1,
                                 const void *a2, const void *b2, const void *a3, const void *b3) {
  const uint64_t lo = (uint64_t)halves_d(a0) | (uint64_t)halves_d(b0) << 16 |
                      (uint64_t)halves_d(a1) << 32 | (uint64_t)halves_d(b1) << 48;
  const uint64_t hi = (uint64_t)halves_d(a2) | (uint64_t)halves_d(b2) << 16 |
                      (uint64_t)halves_d(a3) << 32 | (uint64_t)halves_d(b3) << 48;
  return _mm256_cvtph_ps(_mm_set_epi64x((int64_t)hi, (int64_t)lo));
}

// The first two halves (d and m, or d and dmin) of one block of each of rows 0..3:
// [d0 m0 d1 m1 .. d3 m3].
static inline __m256 halves4_dm(const void *b0, const void *b1, const void *b2, const void *b3) {
  const uint64_t lo = (uint64_t)halves_dm(b0) | (uint64_t)halves_dm(b1) << 32;
  const uint64_t hi = (uint64_t)halves_dm(b2) | (uint64_t)halves_dm(b3) << 32;
  return _mm256_cvtph_ps(_mm_set_epi64x((int64_t)hi, (int64_t)lo));
}

static void q4_0_vec_dot_r4(int64_t n, float *restrict s, const void *restrict vx, size_t bx,
                            const void *restrict vy) {
  const ac_block_q4_0 *x[4];
  const ac_block_q8_0 *y = vy;
  __m256 acc[4];
  X86_UNROLL for (int r = 0; r < 4; r++) {
    x[r] = row_at(vx, bx, r);
    acc[r] = _mm256_setzero_ps();
  }
  const int64_t nb = n / AC_QK8_0;
  const __m256i eight = _mm256_set1_epi8(8);
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    prefetch_ahead(vx, (size_t)i * 4 * sizeof(ac_block_q4_0), 8 * sizeof(ac_block_q4_0));
    __m256i ylo, yhi;
    q8_pair(y[i].qs, y[i + 1].qs, &ylo, &yhi);
    const __m256i o = pairs_offset_term(ylo, yhi, eight);
    // pair_scales_d of each row: lane 2r is row r's d_xa * d_ya, lane 2r + 1 its d_xb * d_yb.
    const __m256 xd = halves4x2_d(&x[0][i], &x[0][i + 1], &x[1][i], &x[1][i + 1], &x[2][i],
                                  &x[2][i + 1], &x[3][i], &x[3][i + 1]);
    const __m256 yd = _mm256_cvtph_ps(
        _mm_set1_epi32((int)(halves_d(&y[i]) | halves_d(&y[i + 1]) << 16)));
    const __m256 p = _mm256_mul_ps(xd, yd);
    X86_UNROLL for (int r = 0; r < 4; r++) {
      __m256i lo, hi;
      nibbles_pair(x[r][i].qs, x[r][i + 1].qs, &lo, &hi);
      const __m256i d = dot_pairs_less(lo, ylo, hi, yhi, o);
      const __m256 sc = _mm256_permutevar8x32_ps(
          p, _mm256_setr_epi32(2 * r, 2 * r, 2 * r, 2 * r, 2 * r + 1, 2 * r + 1, 2 * r + 1,
                               2 * r + 1));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, acc[r]);
    }
  }
  float t[4];
  _mm_storeu_ps(t, hsum4_ps(acc));
  X86_UNROLL for (int r = 0; r < 4; r++) {
    float sum = t[r];
    if (i < nb) sum += block_d(nibbles32(x[r][i].qs), 8, x[r][i].d, &y[i]);
    s[r] = sum;
  }
}

// The first two halves of blocks a and b of rows 0..3 (Q4_1's d and m): [rows 0, 1] and [rows
// 2, 3], each row's four as [d_a m_a d_b m_b], as pair_scales_dm has them on its x side.
static inline void halves4x2_dm(const ac_block_q4_1 *const x[4], int64_t i, __m256 *r01,
                                __m256 *r23) {
  const __m256i h = _mm256_setr_epi32(
      (int)halves_dm(&x[0][i]), (int)halves_dm(&x[0][i + 1]), (int)halves_dm(&x[1][i]),
      (int)halves_dm(&x[1][i + 1]), (int)halves_dm(&x[2][i]), (int)halves_dm(&x[2][i + 1]),
      (int)halves_dm(&x[3][i]), (int)halves_dm(&x[3][i + 1]));
  *r01 = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  *r23 = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

static void q4_1_vec_dot_r4(int64_t n, float *restrict s, const void *restrict vx, size_t bx,
                            const void *restrict vy) {
  const ac_block_q4_1 *x[4];
  const ac_block_q8_1 *y = vy;
  // acc[r]: row r's acc of q4_1_vec_dot; accm[k]: the accm (four lanes) of rows 2k, 2k + 1.
  __m256 acc[4], accm[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  X86_UNROLL for (int r = 0; r < 4; r++) {
    x[r] = row_at(vx, bx, r);
    acc[r] = _mm256_setzero_ps();
  }
  const int64_t nb = n / AC_QK8_1;
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    prefetch_ahead(vx, (size_t)i * 4 * sizeof(ac_block_q4_1), 8 * sizeof(ac_block_q4_1));
    __m256i ylo, yhi;
    q8_pair(y[i].qs, y[i + 1].qs, &ylo, &yhi);
    // pair_scales_dm of each row, two rows to a vector.
    __m256 p[2];
    halves4x2_dm(x, i, &p[0], &p[1]);
    const __m256 yh = tile_y_halves(halves_dm(&y[i]), halves_dm(&y[i + 1]));
    X86_UNROLL for (int k = 0; k < 2; k++) {
      p[k] = _mm256_mul_ps(p[k], yh);
      accm[k] = _mm256_add_ps(accm[k], p[k]);
    }
    X86_UNROLL for (int r = 0; r < 4; r++) {
      __m256i lo, hi;
      nibbles_pair(x[r][i].qs, x[r][i + 1].qs, &lo, &hi);
      const __m256i d = dot_pairs(lo, ylo, hi, yhi);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), tile_spread(p[r / 2], r % 2), acc[r]);
    }
  }
  // odd_lanes_sum of each row's accm: lane 1 + lane 3, [rows 0 2 .. | rows 1 3 ..], then in order.
  const __m256 t = _mm256_shuffle_ps(accm[0], accm[1], _MM_SHUFFLE(3, 1, 3, 1));
  const __m256 m = _mm256_add_ps(_mm256_shuffle_ps(t, t, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(t, t, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m128 mins = _mm_unpacklo_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  float sums[4];
  _mm_storeu_ps(sums, _mm_add_ps(hsum4_ps(acc), mins));
  X86_UNROLL for (int r = 0; r < 4; r++) {
    float sum = sums[r];
    if (i < nb) sum += block_dm(nibbles32(x[r][i].qs), x[r][i].d, x[r][i].m, &y[i]);
    s[r] = sum;
  }
}

static void q8_0_vec_dot_r4(int64_t n, float *restrict s, const void *restrict vx, size_t bx,
                            const void *restrict vy) {
  const ac_block_q8_0 *x[4];
  const ac_block_q8_0 *y = vy;
  __m256 acc[4];
  X86_UNROLL for (int r = 0; r < 4; r++) {
    x[r] = row_at(vx, bx, r);
    acc[r] = _mm256_setzero_ps();
  }
  const int64_t nb = n / AC_QK8_0;
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    prefetch_ahead(vx, (size_t)i * 4 * sizeof(ac_block_q8_0), 8 * sizeof(ac_block_q8_0));
    const __m256i ya = loadu256(y[i].qs), yb = loadu256(y[i + 1].qs);
    // pair_scales_d of each row: lane 2r is row r's d_xa * d_ya, lane 2r + 1 its d_xb * d_yb.
    const __m256 xd = halves4x2_d(&x[0][i], &x[0][i + 1], &x[1][i], &x[1][i + 1], &x[2][i],
                                  &x[2][i + 1], &x[3][i], &x[3][i + 1]);
    const __m256 yd = _mm256_cvtph_ps(
        _mm_set1_epi32((int)(halves_d(&y[i]) | halves_d(&y[i + 1]) << 16)));
    const __m256 p = _mm256_mul_ps(xd, yd);
    X86_UNROLL for (int r = 0; r < 4; r++) {
      // q8_0_vec_dot's lanes {0,1,4,5} are block a, {2,3,6,7} block b.
      const __m256i qa = loadu256(x[r][i].qs), qb = loadu256(x[r][i + 1].qs);
      const __m256i d = _mm256_hadd_epi32(dot_u8s8(_mm256_abs_epi8(qa), _mm256_sign_epi8(ya, qa)),
                                          dot_u8s8(_mm256_abs_epi8(qb), _mm256_sign_epi8(yb, qb)));
      const __m256 sc = _mm256_permutevar8x32_ps(
          p, _mm256_setr_epi32(2 * r, 2 * r, 2 * r + 1, 2 * r + 1, 2 * r, 2 * r, 2 * r + 1,
                               2 * r + 1));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, acc[r]);
    }
  }
  float t[4];
  _mm_storeu_ps(t, hsum4_ps(acc));
  X86_UNROLL for (int r = 0; r < 4; r++) {
    float sum = t[r];
    if (i < nb)
      sum += (float)hsum_epi32(q8_0_block_dot(x[r][i].qs, y[i].qs)) *
             (h2f(x[r][i].d) * h2f(y[i].d));
    s[r] = sum;
  }
}

// Q4_K: the 8 scales of a super-block as int32 lanes holding the int16 scale twice (sub-block j's
// kdot32v scale vector is lane j everywhere: one vpermd), from the words of ac__k4_scales_mins.
// Kept in a register: that measured faster than broadcasts from a copy stored on the stack.
static inline __m256i k4_scale_lanes(const uint32_t w[4]) {
  const __m256i s32 = _mm256_cvtepu8_epi32(_mm_set_epi64x(0, (int64_t)((uint64_t)w[1] << 32 | w[0])));
  return _mm256_or_si256(s32, _mm256_slli_epi32(s32, 16));
}

static inline __m256i lane_epi32(__m256i v, int k) {
  return _mm256_permutevar8x32_epi32(v, _mm256_set1_epi32(k));
}

// k4_scales' mins16 from the words of ac__k4_scales_mins.
static inline __m256i k4_mins16(const uint32_t w[4]) {
  const __m128i m = _mm_set_epi64x(0, (int64_t)((uint64_t)w[3] << 32 | w[2]));
  return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
}

static void q4_k_vec_dot_r4(int64_t n, float *restrict s, const void *restrict vx, size_t bx,
                            const void *restrict vy) {
  const ac_block_q4_K *x[4];
  const ac_block_q8_K *y = vy;
  __m256 acc[4], accm[4];
  X86_UNROLL for (int r = 0; r < 4; r++) {
    x[r] = row_at(vx, bx, r);
    acc[r] = accm[r] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    uint32_t w[4][4];
    __m256i sc[4];
    prefetch_ahead(vx, (size_t)i * 4 * sizeof(ac_block_q4_K), 4 * sizeof(ac_block_q4_K));
    X86_UNROLL for (int r = 0; r < 4; r++) {
      ac__k4_scales_mins(x[r][i].scales, w[r]);
      sc[r] = k4_scale_lanes(w[r]);
    }
    __m256i isum[4];
    X86_UNROLL for (int r = 0; r < 4; r++) isum[r] = _mm256_setzero_si256();
    X86_UNROLL for (int c = 0; c < 4; c++) {
      const __m256i ylo = loadu256(y[i].qs + 64 * c), yhi = loadu256(y[i].qs + 64 * c + 32);
      X86_UNROLL for (int r = 0; r < 4; r++) {
        const __m256i q = loadu256(x[r][i].qs + 32 * c);
        isum[r] = kdot32v(isum[r], _mm256_and_si256(q, m4), ylo, lane_epi32(sc[r], 2 * c));
        isum[r] = kdot32v(isum[r], _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), yhi,
                          lane_epi32(sc[r], 2 * c + 1));
      }
    }
    // k_accumulate_dmin of each row: lane 2r of f is y_d * d of row r, lane 2r + 1 y_d * dmin.
    const __m256 f = _mm256_mul_ps(_mm256_set1_ps(y[i].d),
                                   halves4_dm(&x[0][i], &x[1][i], &x[2][i], &x[3][i]));
    const __m256i bsums = loadu256(y[i].bsums);
    X86_UNROLL for (int r = 0; r < 4; r++) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), lane_ps(f, 2 * r), acc[r]);
      accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, k4_mins16(w[r]))),
                                lane_ps(f, 2 * r + 1), accm[r]);
    }
  }
  // hsum8_ps puts row r's acc in lane r and its accm in lane 4 + r.
  __m256 v[8];
  X86_UNROLL for (int r = 0; r < 4; r++) {
    v[2 * r] = acc[r];
    v[2 * r + 1] = accm[r];
  }
  const __m256 h = hsum8_ps(v);
  _mm_storeu_ps(s, _mm_sub_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

// --- install -----------------------------------------------------------------------------------

// Puts this file's kernels into `tab`; each including file calls it from its install function.
static void x86_install_shared(ac_type_traits_t *tab) {
  tab[AC_TYPE_F16].vec_dot = f16_vec_dot;
  tab[AC_TYPE_F16].vec_dot_4 = f16_vec_dot_4;
  tab[AC_TYPE_Q4_0].vec_dot = q4_0_vec_dot;
  tab[AC_TYPE_Q4_0].vec_dot_4 = q4_0_vec_dot_4;
  tab[AC_TYPE_Q4_0].vec_dot_r4 = q4_0_vec_dot_r4;
  tab[AC_TYPE_Q4_1].vec_dot = q4_1_vec_dot;
  tab[AC_TYPE_Q4_1].vec_dot_4 = q4_1_vec_dot_4;
  tab[AC_TYPE_Q4_1].vec_dot_r4 = q4_1_vec_dot_r4;
  tab[AC_TYPE_Q5_0].vec_dot = q5_0_vec_dot;
  tab[AC_TYPE_Q5_1].vec_dot = q5_1_vec_dot;
  tab[AC_TYPE_Q8_0].vec_dot = q8_0_vec_dot;
  tab[AC_TYPE_Q8_0].vec_dot_4 = q8_0_vec_dot_4;
  tab[AC_TYPE_Q8_0].vec_dot_r4 = q8_0_vec_dot_r4;
  tab[AC_TYPE_Q8_0].from_float = q8_0_from_float;
  tab[AC_TYPE_Q8_1].from_float = q8_1_from_float;
  tab[AC_TYPE_Q4_K].vec_dot = q4_k_vec_dot;
  tab[AC_TYPE_Q4_K].vec_dot_4 = q4_k_vec_dot_4;
  tab[AC_TYPE_Q4_K].vec_dot_r4 = q4_k_vec_dot_r4;
  tab[AC_TYPE_Q5_K].vec_dot = q5_k_vec_dot;
}

#endif
