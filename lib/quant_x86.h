// quant_x86.h - the x86 kernels that quant_avx2.c and quant_avx512.c share, written once.
//
// Not a header in the usual sense: it is part of each of those two files. Each includes it once,
// at file scope, after its FP-contraction pragma, and then defines the primitives declared below
// with its own instructions. Everything here is static, so each file compiles its own copy with
// its own -m flags and installs that copy into its own table; no symbol is shared.
//
// The kernels here have the same shape in both sets, on 256-bit vectors: the 32-value block dot
// products, the Q8_0 / Q8_1 activation quantizers and the Q4_K / Q5_K dot products. The sets
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

// --- install -----------------------------------------------------------------------------------

// Puts this file's kernels into `tab`; each including file calls it from its install function.
static void x86_install_shared(ac_type_traits_t *tab) {
  tab[AC_TYPE_Q4_0].vec_dot = q4_0_vec_dot;
  tab[AC_TYPE_Q4_1].vec_dot = q4_1_vec_dot;
  tab[AC_TYPE_Q5_0].vec_dot = q5_0_vec_dot;
  tab[AC_TYPE_Q5_1].vec_dot = q5_1_vec_dot;
  tab[AC_TYPE_Q8_0].vec_dot = q8_0_vec_dot;
  tab[AC_TYPE_Q8_0].from_float = q8_0_from_float;
  tab[AC_TYPE_Q8_1].from_float = q8_1_from_float;
  tab[AC_TYPE_Q4_K].vec_dot = q4_k_vec_dot;
  tab[AC_TYPE_Q5_K].vec_dot = q5_k_vec_dot;
}

#endif
