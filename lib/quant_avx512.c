// quant_avx512.c - AVX-512 (F, BW, VL, DQ) + VNNI kernels. Built with those -m flags and only
// called after quant.c has checked the CPU (see ac__quant_avx512_install).
//
// This set starts from the AVX2 set (every AVX-512 CPU has AVX2) and replaces the kernels that
// are faster here. Measured on the AMD Zen 4 machines we build and test on, which execute
// 512-bit instructions as two 256-bit halves:
//   - the legacy dot products (Q4_0 ... Q8_0) use VNNI's vpdpbusd on 256-bit vectors, two blocks
//     per step; the 512-bit form (four blocks per register) was slower because of the extra
//     shuffles to assemble it;
//   - F16 keeps the 256-bit kernel: vcvtph2ps on 512 bits converts half as many values per
//     cycle as on 256 bits, so the 512-bit dot product was 1.5x slower (and 512-bit F16 tiles
//     were about 25% slower than 256-bit ones);
//   - the K-quants use vpmaddubsw + vpdpwssd, on 512 bits (64 levels at a time) for the types
//     with 16-value sub-blocks and on 256 bits for Q4_K / Q5_K (see kdot32).
// vpdpbusd multiplies unsigned bytes by signed bytes, summing four products into each int32
// lane without saturation. Weights with an offset (Q4_0: q - 8) stay unsigned and the offset
// is taken off through the activations' sums, exactly, for every input.
//
// The 256-bit kernels (F16, the legacy dot products, the Q8_0 / Q8_1 quantizers, Q4_K and Q5_K,
// and their vec_dot_4 tiles and vec_dot_r4 decode kernels) have the same shape as AVX2's and are
// written once in quant_x86.h; this file gives them their AVX-512 primitives and holds the 512-bit
// kernels, their tiles and Q2_K's decode kernel.

// Explicit FMAs only: an implicit contraction of a*b+c would change rounding and make the
// dequantizers differ from quant.c's reference (and from ggml). Must precede the headers.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#include "quant_impl.h"
#include "quant_x86.h"

// --- helpers -----------------------------------------------------------------------------------

static inline __m512i loadu512(const void *p) { return _mm512_loadu_si512(p); }

// Two 32-byte halves into one register.
static inline __m512i join256(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The same 32 bytes in both halves.
static inline __m512i dup256(__m256i v) { return _mm512_broadcast_i64x4(v); }

// clamp_q8 of quant.c: NaN -> 0, then clamp to [-127, 127] (a no-op for finite blocks).
static inline __m512 clamp_q8(__m512 v) {
  v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
  return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
}

// Round half to even on 16 lanes (the default MXCSR mode of cvtps), as the reference's
// nearbyintf does.
static inline __m512i round_even_epi32(__m512 v) { return _mm512_cvtps_epi32(clamp_q8(v)); }

// --- primitives of the shared kernels (declared in quant_x86.h) --------------------------------
// vpdpbusd sums four u8 x s8 products into each int32 lane, without saturation; the offsets of
// Q4_0 / Q5_0 are taken off with a second one on the activations.

static inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

static inline __m256i dot_pairs(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi) {
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, ylo), hi, yhi);
}

static inline __m256i dot_pairs_offset(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi,
                                       __m256i off) {
  return _mm256_sub_epi32(dot_pairs(lo, ylo, hi, yhi), dot_pairs(off, ylo, off, yhi));
}

// Here the offset term is kept negated, as the starting value of vpdpbusd's sums: the sums then
// end at dot_pairs minus the term, the same int32 lanes as dot_pairs_offset (no overflow: the
// lanes stay far inside int32).
static inline __m256i pairs_offset_term(__m256i ylo, __m256i yhi, __m256i off) {
  return _mm256_sub_epi32(_mm256_setzero_si256(), dot_pairs(off, ylo, off, yhi));
}

static inline __m256i dot_pairs_less(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi,
                                     __m256i o) {
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(o, lo, ylo), hi, yhi);
}

static inline int dot_block(__m256i u, const int8_t *y, int off) {
  const __m256i v = loadu256(y);
  __m256i d = dot_u8s8(u, v);
  if (off) d = _mm256_sub_epi32(d, dot_u8s8(_mm256_set1_epi8((char)off), v));
  return hsum_epi32(d);
}

static inline __m256i with_bit4(__m256i u, uint32_t bits) {
  return _mm256_mask_add_epi8(u, (__mmask32)bits, u, _mm256_set1_epi8(16));
}

static inline __m256i with_bit4_where(__m256i u, __m256i hb, __m256i bit) {
  return _mm256_mask_add_epi8(u, _mm256_test_epi8_mask(hb, bit), u, _mm256_set1_epi8(16));
}

// Q4_K / Q5_K go 32 values at a time on 256-bit vectors: their sub-blocks are 32 values, so a
// chunk needs a single broadcast scale, and vpdpwssd folds in the scale multiply and the add.
// (The 512-bit form, which needs a permute per chunk for the scales, was 10-15% slower.)
static inline __m256i kdot32(__m256i acc, __m256i u, const int8_t *y, int16_t sc) {
  return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, loadu256(y)), _mm256_set1_epi16(sc));
}

static inline __m256i kdot32v(__m256i acc, __m256i u, __m256i y, __m256i sc) {
  return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, y), sc);
}

// Sixteen lanes at a time, with the saturating narrowing vpmovsdb.
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

// BF16 tile (see quant_x86.h) with bf16_vec_dot's two accumulators per pair.
static inline __attribute__((always_inline)) void bf16_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const uint16_t *x[2], *y[4];
  __m512 a[2][4][2];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) a[r][j][0] =
      a[r][j][1] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    X86_UNROLL for (int h = 0; h < 2; h++) {
      __m512 xv[2];
      X86_UNROLL for (int r = 0; r < R; r++) xv[r] = load_bf16x16(loadu256(x[r] + i + 16 * h));
      X86_UNROLL for (int j = 0; j < 4; j++) {
        const __m512 yv = load_bf16x16(loadu256(y[j] + i + 16 * h));
        X86_UNROLL for (int r = 0; r < R; r++) a[r][j][h] = _mm512_fmadd_ps(xv[r], yv, a[r][j][h]);
      }
    }
  }
  for (; i + 16 <= n; i += 16)
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) a[r][j][0] =
        _mm512_fmadd_ps(load_bf16x16(loadu256(x[r] + i)), load_bf16x16(loadu256(y[j] + i)),
                        a[r][j][0]);
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) a[r][j][1] =
        _mm512_fmadd_ps(load_bf16x16(_mm256_maskz_loadu_epi16(m, x[r] + i)),
                        load_bf16x16(_mm256_maskz_loadu_epi16(m, y[j] + i)), a[r][j][1]);
  }
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) s[j * bs + r] =
      _mm512_reduce_add_ps(_mm512_add_ps(a[r][j][0], a[r][j][1]));
}
X86_TILE_KERNEL(bf16)

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
  *s = _mm512_reduce_add_ps(acc) - hsum_ps(accm);
}

// Q2_K decode kernel (see quant_x86.h): 4 weight rows against one activation row, each with
// q2_k_vec_dot's integer lanes and float accumulators, but on 256-bit vectors, which measured
// faster here. q2_k_vec_dot's isum, 16 lanes, is two halves of 32-value chunks: its low half sums
// the chunks of the fields at bits 0 and 4 (chunks 4h and 4h + 2 of y's eight), its high half
// those at bits 2 and 6 (chunks 4h + 1 and 4h + 3), each lane over the same 4 bytes with the same
// 16-value scale. So each half is a sum of AVX2-style chunk dot products (a chunk's scale vector a
// vpshufb of the row's scales), and acc is kept as its two halves, updated lane by lane as acc
// is, and joined for _mm512_reduce_add_ps.
static inline __m256i q2_k_chunk_scales(__m256i sc, int c) {
  return _mm256_shuffle_epi8(sc, _mm256_set_m128i(_mm_set1_epi16((short)(0x8000 | (2 * c + 1))),
                                                  _mm_set1_epi16((short)(0x8000 | (2 * c)))));
}

static void q2_k_vec_dot_r4(int64_t n, float *restrict s, const void *restrict vx, size_t bx,
                            const void *restrict vy) {
  const ac_block_q2_K *x[4];
  const ac_block_q8_K *y = vy;
  __m256 acc[4][2], accm[4];
  X86_UNROLL for (int r = 0; r < 4; r++) {
    x[r] = row_at(vx, bx, r);
    acc[r][0] = acc[r][1] = accm[r] = _mm256_setzero_ps();
  }
  const __m256i m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    prefetch_ahead(vx, (size_t)i * 4 * sizeof(ac_block_q2_K), 4 * sizeof(ac_block_q2_K));
    __m256i sc[4], isum[4][2];
    X86_UNROLL for (int r = 0; r < 4; r++) {
      sc[r] = _mm256_and_si256(_mm256_broadcastsi128_si256(loadu128(x[r][i].scales)), m4);
      isum[r][0] = isum[r][1] = _mm256_setzero_si256();
    }
    X86_UNROLL for (int h = 0; h < 2; h++) {
      X86_UNROLL for (int sh = 0; sh < 4; sh++) {
        const int c = 4 * h + sh;  // 32-value chunk
        const __m256i yc = loadu256(y[i].qs + 32 * c);
        X86_UNROLL for (int r = 0; r < 4; r++) {
          const __m256i u =
              _mm256_and_si256(_mm256_srli_epi16(loadu256(x[r][i].qs + 32 * h), 2 * sh), m3);
          isum[r][sh & 1] = _mm256_dpwssd_epi32(isum[r][sh & 1], _mm256_maddubs_epi16(u, yc),
                                                q2_k_chunk_scales(sc[r], c));
        }
      }
    }
    // Lane 2r of f is y_d * d of row r, lane 2r + 1 y_d * dmin, as q2_k_vec_dot multiplies them.
    const __m256 f = _mm256_mul_ps(_mm256_set1_ps(y[i].d),
                                   halves4_dm(&x[0][i].d, &x[1][i].d, &x[2][i].d, &x[3][i].d));
    const __m256i bsums = loadu256(y[i].bsums);
    X86_UNROLL for (int r = 0; r < 4; r++) {
      const __m256i mins16 = _mm256_cvtepu8_epi16(
          _mm_and_si128(_mm_srli_epi16(loadu128(x[r][i].scales), 4), _mm256_castsi256_si128(m4)));
      const __m256 d = lane_ps(f, 2 * r);
      X86_UNROLL for (int k = 0; k < 2; k++) acc[r][k] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][k]), d, acc[r][k]);
      accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins16)),
                                lane_ps(f, 2 * r + 1), accm[r]);
    }
  }
  X86_UNROLL for (int r = 0; r < 4; r++) {
    const __m512 a = _mm512_insertf32x8(_mm512_castps256_ps512(acc[r][0]), acc[r][1], 1);
    s[r] = _mm512_reduce_add_ps(a) - hsum_ps(accm[r]);
  }
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

// Q6_K tile (see quant_x86.h): the levels and chunk scales of a super-block are unpacked once per
// weight row for the 4 activation rows, which repeat q6_k_vec_dot's sums; each pair is reduced
// by _mm512_reduce_add_ps as there.
static inline __attribute__((always_inline)) void q6_k_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const ac_block_q6_K *x[2];
  const ac_block_q8_K *y[4];
  __m512 acc[2][4];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) acc[r][j] =
      _mm512_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    __m256i sc16[2];
    __m512i sc2[2], isum[2][4];
    X86_UNROLL for (int r = 0; r < R; r++) {
      sc16[r] = _mm256_cvtepi8_epi16(loadu128(x[r][i].scales));
      sc2[r] = g16_scales(sc16[r]);
    }
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) isum[r][j] =
        _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      __m512i u0[2], u1[2], s0[2], s1[2];
      X86_UNROLL for (int r = 0; r < R; r++) {
        const __m256i l0 = loadu256(x[r][i].ql + 64 * h), l1 = loadu256(x[r][i].ql + 64 * h + 32);
        const __m256i qh = loadu256(x[r][i].qh + 32 * h);
        u0[r] = join256(_mm256_or_si256(_mm256_and_si256(l0, m4),
                                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                        _mm256_or_si256(_mm256_and_si256(l1, m4),
                                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)));
        u1[r] = join256(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                        _mm256_and_si256(qh, m30)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)));
        s0[r] = g16_chunk_scales(sc2[r], 2 * h);
        s1[r] = g16_chunk_scales(sc2[r], 2 * h + 1);
      }
      X86_UNROLL for (int j = 0; j < 4; j++) X86_UNROLL for (int r = 0; r < R; r++) {
        isum[r][j] = kdot64(isum[r][j], u0[r], y[j][i].qs + 128 * h, s0[r]);
        isum[r][j] = kdot64(isum[r][j], u1[r], y[j][i].qs + 128 * h + 64, s1[r]);
      }
    }
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
      const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(loadu256(y[j][i].bsums), sc16[r]), 5);
      const __m512i fixed = _mm512_sub_epi32(isum[r][j], _mm512_zextsi256_si512(off));
      acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fixed),
                                  _mm512_set1_ps(y[j][i].d * h2f(x[r][i].d)), acc[r][j]);
    }
  }
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) s[j * bs + r] =
      _mm512_reduce_add_ps(acc[r][j]);
}
X86_TILE_KERNEL_ROWS(q6_k)

// --- install -----------------------------------------------------------------------------------

void ac__quant_avx512_install(ac_type_traits_t *tab) {
  // Start from the AVX2 kernels; the shared ones are then replaced by this file's copies.
  ac__quant_avx2_install(tab);
  x86_install_shared(tab);
  tab[AC_TYPE_F32].vec_dot = f32_vec_dot;
  tab[AC_TYPE_F16].to_float = f16_to_float;
  tab[AC_TYPE_F16].from_float = f16_from_float;
  tab[AC_TYPE_BF16].vec_dot = bf16_vec_dot;
  tab[AC_TYPE_BF16].vec_dot_4 = bf16_vec_dot_4;
  tab[AC_TYPE_Q4_1].to_float = q4_1_to_float;
  tab[AC_TYPE_Q8_0].to_float = q8_0_to_float;
  tab[AC_TYPE_Q8_K].from_float = q8_k_from_float;
  tab[AC_TYPE_Q2_K].vec_dot = q2_k_vec_dot;
  tab[AC_TYPE_Q2_K].vec_dot_r4 = q2_k_vec_dot_r4;
  tab[AC_TYPE_Q3_K].vec_dot = q3_k_vec_dot;
  tab[AC_TYPE_Q6_K].vec_dot = q6_k_vec_dot;
  tab[AC_TYPE_Q6_K].vec_dot_4 = q6_k_vec_dot_4;
}
