// quant_avx2.c - AVX2 + FMA + F16C kernels. Built with -mavx2 -mfma -mf16c and only called after
// quant.c has checked that the CPU has those features (see ac__quant_avx2_install).
//
// Integer dot products use vpmaddubsw (unsigned bytes x signed bytes -> int16 pairs), so every
// kernel arranges for one side to be unsigned: the weights' levels before their offset (Q4_0's
// q in 0..15 rather than q-8), with the offset applied through the activations' sums. Only
// Q8_0 x Q8_0 has signed bytes on both sides; it takes |x| and moves x's sign onto y, which is
// exact because activations never hold -128 (AC__Q8_ACT_MIN). Integer sums are converted to
// float once per block and scaled with an FMA into float accumulators, reduced at the end.
//
// The kernels whose shape AVX-512 shares (F16, 32-value blocks, the Q8_0 / Q8_1 quantizers, Q4_K
// and Q5_K, and their vec_dot_4 tiles and vec_dot_r4 decode kernels) are in quant_x86.h; this file
// gives them their AVX2 primitives and holds the rest.

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

static inline float hmax_ps(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// Byte j = 0xFF where bit j of `bits` is set, else 0.
static inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i shuf =
      _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
  const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201ull);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// clamp_q8 of quant.c: NaN -> 0, then clamp to [-127, 127] (a no-op for finite blocks).
static inline __m256 clamp_q8(__m256 v) {
  v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
}

// Round half to even on 8 lanes (the default MXCSR mode of cvtps), as the reference's
// nearbyintf does.
static inline __m256i round_even_epi32(__m256 v) { return _mm256_cvtps_epi32(clamp_q8(v)); }

// Four vectors of 8 int32 (each within int8 range) -> 32 int8 in order.
static inline __m256i pack_i32_to_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  __m256i r = _mm256_packs_epi16(ab, cd);
  // The packs work per 128-bit lane; put the dwords back in order.
  return _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// --- primitives of the shared kernels (declared in quant_x86.h) --------------------------------
// vpmaddubsw sums pairs of u8 x s8 products into int16 (saturating, which the levels here never
// reach), and vpmaddwd by ones sums pairs of those into int32. Where two such dot products are
// added or subtracted, that is done on the int16 pairs, which saves a vpmaddwd.

static inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// The int16 stage holds for u <= 63.
static inline __m256i dot_pairs(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi) {
  const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// The offset term stays in int16 pairs, taken off before the pairs are summed into int32.
static inline __m256i pairs_offset_term(__m256i ylo, __m256i yhi, __m256i off) {
  return _mm256_add_epi16(_mm256_maddubs_epi16(off, ylo), _mm256_maddubs_epi16(off, yhi));
}

static inline __m256i dot_pairs_less(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi,
                                     __m256i o) {
  const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
  return _mm256_madd_epi16(_mm256_sub_epi16(p, o), _mm256_set1_epi16(1));
}

static inline __m256i dot_pairs_offset(__m256i lo, __m256i ylo, __m256i hi, __m256i yhi,
                                       __m256i off) {
  return dot_pairs_less(lo, ylo, hi, yhi, pairs_offset_term(ylo, yhi, off));
}

static inline int dot_block(__m256i u, const int8_t *y, int off) {
  const __m256i v = loadu256(y);
  __m256i p = _mm256_maddubs_epi16(u, v);
  if (off) p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(_mm256_set1_epi8((char)off), v));
  return hsum_epi32(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

static inline __m256i with_bit4(__m256i u, uint32_t bits) {
  return _mm256_or_si256(u, _mm256_and_si256(bits_to_bytes(bits), _mm256_set1_epi8(16)));
}

static inline __m256i with_bit4_where(__m256i u, __m256i hb, __m256i bit) {
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit);
  return _mm256_or_si256(u, _mm256_and_si256(set, _mm256_set1_epi8(16)));
}

static inline __m256i kdot32(__m256i acc, __m256i u, const int8_t *y, int16_t sc) {
  const __m256i p = _mm256_maddubs_epi16(u, loadu256(y));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(sc)));
}

static inline __m256i kdot32v(__m256i acc, __m256i u, __m256i y, __m256i sc) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), sc));
}

// Eight lanes at a time; the amax is reduced with hmax_ps.
static inline int quantize_block_q8(const float *x, int8_t *qs, float *d_out) {
  const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
  const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
  const __m256 m =
      _mm256_max_ps(_mm256_max_ps(abs_ps(v0), abs_ps(v1)), _mm256_max_ps(abs_ps(v2), abs_ps(v3)));
  const float amax = hmax_ps(m), d = amax / 127;
  const float id = amax != 0 ? 127.0f / amax : 0.0f;
  const __m256 vid = _mm256_set1_ps(id);
  const __m256i q0 = round_even_epi32(_mm256_mul_ps(v0, vid));
  const __m256i q1 = round_even_epi32(_mm256_mul_ps(v1, vid));
  const __m256i q2 = round_even_epi32(_mm256_mul_ps(v2, vid));
  const __m256i q3 = round_even_epi32(_mm256_mul_ps(v3, vid));
  _mm256_storeu_si256((__m256i *)qs, pack_i32_to_i8(q0, q1, q2, q3));
  *d_out = d;
  return hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
}

// --- float types -------------------------------------------------------------------------------

static void f32_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                        const void *restrict vy) {
  const float *x = vx, *y = vy;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
  float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; i++) sum += x[i] * y[i];
  *s = sum;
}

static void f16_to_float(const void *restrict vx, float *restrict y, int64_t n) {
  const uint16_t *x = vx;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16x8(x + i));
  for (; i < n; i++) y[i] = h2f(x[i]);
}

static void f16_from_float(const float *restrict x, void *restrict vy, int64_t n) {
  uint16_t *y = vy;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) y[i] = f2h(x[i]);
}

// bfloat16 -> float is a 16-bit shift, so products are exact as in the reference.
static inline __m256 load_bf16x8(const uint16_t *p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static void bf16_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const uint16_t *x = vx, *y = vy;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), a0);
    a1 = _mm256_fmadd_ps(load_bf16x8(x + i + 8), load_bf16x8(y + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), a0);
  float sum = hsum_ps(_mm256_add_ps(a0, a1));
  for (; i < n; i++) sum += ac_bf16_to_f32(x[i]) * ac_bf16_to_f32(y[i]);
  *s = sum;
}

// BF16 tile (see quant_x86.h) with bf16_vec_dot's two accumulators per pair. Two weight rows
// would need 16 accumulators, all of AVX2's registers, so they are two passes.
static inline __attribute__((always_inline)) void bf16_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const uint16_t *x[2], *y[4];
  __m256 a[2][4][2], acc[2][4], pairs[8];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) a[r][j][0] =
      a[r][j][1] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    X86_UNROLL for (int h = 0; h < 2; h++) {
      __m256 xv[2];
      X86_UNROLL for (int r = 0; r < R; r++) xv[r] = load_bf16x8(x[r] + i + 8 * h);
      X86_UNROLL for (int j = 0; j < 4; j++) {
        const __m256 yv = load_bf16x8(y[j] + i + 8 * h);
        X86_UNROLL for (int r = 0; r < R; r++) a[r][j][h] = _mm256_fmadd_ps(xv[r], yv, a[r][j][h]);
      }
    }
  }
  for (; i + 8 <= n; i += 8)
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) a[r][j][0] =
        _mm256_fmadd_ps(load_bf16x8(x[r] + i), load_bf16x8(y[j] + i), a[r][j][0]);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) acc[r][j] =
      _mm256_add_ps(a[r][j][0], a[r][j][1]);
  tile_pairs(R, acc, pairs);
  float t[8];
  _mm256_storeu_ps(t, hsum8_ps(pairs));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
    float sum = t[4 * r + j];
    for (int64_t k = i; k < n; k++) sum += ac_bf16_to_f32(x[r][k]) * ac_bf16_to_f32(y[j][k]);
    s[j * bs + r] = sum;
  }
}
X86_TILE_KERNEL_ROWS(bf16)

// --- 32-value blocks: conversions --------------------------------------------------------------

static void q4_1_to_float(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q4_1 *x = vx;
  for (int64_t i = 0; i < n / AC_QK4_1; i++, y += AC_QK4_1) {
    const __m256 d = _mm256_set1_ps(h2f(x[i].d)), m = _mm256_set1_ps(h2f(x[i].m));
    const __m256i q = nibbles32(x[i].qs);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
      __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k]));
      _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(f, d), m));
    }
  }
}

static void q8_0_to_float(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q8_0 *x = vx;
  for (int64_t i = 0; i < n / AC_QK8_0; i++, y += AC_QK8_0) {
    const __m256 d = _mm256_set1_ps(h2f(x[i].d));
    for (int k = 0; k < 4; k++) {
      __m128i b = _mm_loadl_epi64((const __m128i *)(x[i].qs + 8 * k));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d));
    }
  }
}

// --- Q8_K --------------------------------------------------------------------------------------

static void q8_k_from_float(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_K *y = vy;
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < AC_QK_K; k += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + k)));
    const float amax = hmax_ps(m);
    if (amax == 0) {
      memset(&y[i], 0, sizeof y[i]);
      continue;
    }
    // The reference keeps the sign of the first value of largest magnitude.
    float max = 0;
    const __m256 vamax = _mm256_set1_ps(amax);
    for (int k = 0; k < AC_QK_K; k += 8) {
      int mask =
          _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + k)), vamax, _CMP_EQ_OQ));
      if (mask) {
        max = x[k + __builtin_ctz((unsigned)mask)];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m256 vis = _mm256_set1_ps(iscale);
    for (int k = 0; k < AC_QK_K; k += 32) {
      // cvtps rounds to nearest even under the default MXCSR, like lrintf in the reference.
      __m256i q[4];
      for (int j = 0; j < 4; j++)
        q[j] = _mm256_cvtps_epi32(clamp_q8(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), vis)));
      _mm256_storeu_si256((__m256i *)(y[i].qs + k), pack_i32_to_i8(q[0], q[1], q[2], q[3]));
      y[i].bsums[k / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1]));
      y[i].bsums[k / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3]));
    }
    y[i].d = 1 / iscale;
  }
}

// --- K-quants: dot products --------------------------------------------------------------------
// Each super-block is unpacked 32 values at a time into unsigned levels in natural order, which
// vpmaddubsw multiplies with the activations into int16 pairs; vpmaddwd then multiplies those by
// the sub-block scales (as int16) and adds pairs, giving int32 partial sums of scale * q * y.
// Offsets and minimums are applied through the activations' per-16 sums (bsums). Q4_K and Q5_K,
// whose sub-blocks are 32 values, are in quant_x86.h.

// Scale vector for a 32-value chunk covering two 16-value groups with scales a and b.
static inline __m256i scales_2x16(int16_t a, int16_t b) {
  return _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a));
}

static inline __m256i dot_chunk(__m256i u, const int8_t *y, __m256i sc) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, loadu256(y)), sc);
}

static void q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q2_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    const __m128i sb = _mm_loadu_si128((const __m128i *)x[i].scales);
    // Minimums (high nibbles) times the group sums, for the -dmin term.
    const __m256i mins =
        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), _mm_set1_epi8(0x0F)));
    const __m256i sc8 = _mm256_cvtepu8_epi16(_mm_and_si128(sb, _mm256_castsi256_si128(m4)));
    int16_t sc[16];
    _mm256_storeu_si256((__m256i *)sc, sc8);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      const __m256i q = loadu256(x[i].qs + 32 * h);
      for (int sh = 0; sh < 4; sh++) {
        const int c = 4 * h + sh;  // 32-value chunk
        const __m256i u = _mm256_and_si256(_mm256_srli_epi16(q, 2 * sh), m3);
        isum = _mm256_add_epi32(
            isum, dot_chunk(u, y[i].qs + 32 * c, scales_2x16(sc[2 * c], sc[2 * c + 1])));
      }
    }
    k_accumulate_dmin(&acc, &accm, isum, mins, &y[i], x[i].d, x[i].dmin);
  }
  *s = hsum_ps(acc) - hsum_ps(accm);
}

// Q2_K decode kernel (see quant_x86.h): 4 weight rows against one activation row, each with
// q2_k_vec_dot's integer lanes and float accumulators. A chunk's scale vector (scales_2x16) is one
// vpshufb of the row's 16 scales, held once in each 128-bit half.
static inline __m256i q2_k_chunk_scales(__m256i sc, int c) {
  return _mm256_shuffle_epi8(sc, _mm256_set_m128i(_mm_set1_epi16((short)(0x8000 | (2 * c + 1))),
                                                  _mm_set1_epi16((short)(0x8000 | (2 * c)))));
}

static void q2_k_vec_dot_r4(int64_t n, float *restrict s, const void *restrict vx, size_t bx,
                            const void *restrict vy) {
  const ac_block_q2_K *x[4];
  const ac_block_q8_K *y = vy;
  __m256 acc[4], accm[4];
  X86_UNROLL for (int r = 0; r < 4; r++) {
    x[r] = row_at(vx, bx, r);
    acc[r] = accm[r] = _mm256_setzero_ps();
  }
  const __m256i m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    prefetch_ahead(vx, (size_t)i * 4 * sizeof(ac_block_q2_K), 4 * sizeof(ac_block_q2_K));
    __m256i sc[4], isum[4];
    X86_UNROLL for (int r = 0; r < 4; r++) {
      sc[r] = _mm256_and_si256(_mm256_broadcastsi128_si256(loadu128(x[r][i].scales)), m4);
      isum[r] = _mm256_setzero_si256();
    }
    X86_UNROLL for (int h = 0; h < 2; h++) {
      X86_UNROLL for (int sh = 0; sh < 4; sh++) {
        const int c = 4 * h + sh;  // 32-value chunk
        const __m256i yc = loadu256(y[i].qs + 32 * c);
        X86_UNROLL for (int r = 0; r < 4; r++) {
          const __m256i u = _mm256_and_si256(_mm256_srli_epi16(loadu256(x[r][i].qs + 32 * h), 2 * sh), m3);
          isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, yc),
                                                                q2_k_chunk_scales(sc[r], c)));
        }
      }
    }
    // k_accumulate_dmin of each row: lane 2r of f is y_d * d of row r, lane 2r + 1 y_d * dmin.
    const __m256 f = _mm256_mul_ps(_mm256_set1_ps(y[i].d),
                                   halves4_dm(&x[0][i].d, &x[1][i].d, &x[2][i].d, &x[3][i].d));
    const __m256i bsums = loadu256(y[i].bsums);
    X86_UNROLL for (int r = 0; r < 4; r++) {
      const __m256i mins = _mm256_cvtepu8_epi16(
          _mm_and_si128(_mm_srli_epi16(loadu128(x[r][i].scales), 4), _mm_set1_epi8(0x0F)));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), lane_ps(f, 2 * r), acc[r]);
      accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins)),
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

static void q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q3_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    uint32_t w[4];
    ac__q3_k_scales_biased(x[i].scales, w);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(
        _mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]), _mm_set1_epi8(32)));
    int16_t sc[16];
    _mm256_storeu_si256((__m256i *)sc, sc16);
    const __m256i hm = loadu256(x[i].hmask);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      const __m256i q = loadu256(x[i].qs + 32 * h);
      for (int sh = 0; sh < 4; sh++) {
        const int c = 4 * h + sh;
        // Level + 4 = low 2 bits, plus 4 where the high bit is set.
        const __m256i bit = _mm256_set1_epi8((char)(1 << c));
        const __m256i hi =
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), four);
        const __m256i u = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * sh), m3), hi);
        isum = _mm256_add_epi32(
            isum, dot_chunk(u, y[i].qs + 32 * c, scales_2x16(sc[2 * c], sc[2 * c + 1])));
      }
    }
    // sum sc * (u - 4) * y = isum - 4 * sum sc * bsums, all exact in int32.
    const __m256i off = _mm256_madd_epi16(loadu256(y[i].bsums), sc16);
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(off, 2));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(y[i].d * h2f(x[i].d)), acc);
  }
  *s = hsum_ps(acc);
}

static void q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict vx,
                         const void *restrict vy) {
  const ac_block_q6_K *x = vx;
  const ac_block_q8_K *y = vy;
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
    int16_t s16[16];
    _mm256_storeu_si256((__m256i *)s16, sc);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      const __m256i l0 = loadu256(x[i].ql + 64 * h), l1 = loadu256(x[i].ql + 64 * h + 32);
      const __m256i qh = loadu256(x[i].qh + 32 * h);
      // Levels + 32 (0..63): low nibble from ql, bits 4-5 from the 2-bit field of qh; the 16-bit
      // shifts move each field to bits 4-5 of its own byte, and the mask drops what crossed over.
      const __m256i u[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, m4),
                          _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(l1, m4),
                          _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                          _mm256_and_si256(qh, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)),
      };
      for (int k = 0; k < 4; k++) {
        const int c = 4 * h + k;
        isum = _mm256_add_epi32(
            isum, dot_chunk(u[k], y[i].qs + 32 * c, scales_2x16(s16[2 * c], s16[2 * c + 1])));
      }
    }
    const __m256i off = _mm256_madd_epi16(loadu256(y[i].bsums), sc);
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(off, 5));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(y[i].d * h2f(x[i].d)), acc);
  }
  *s = hsum_ps(acc);
}

// Q6_K tile (see quant_x86.h): the levels and scale vectors of a super-block are unpacked once
// per weight row for the 4 activation rows, which repeat q6_k_vec_dot's sums.
static inline __attribute__((always_inline)) void q6_k_tile(int64_t n, const int R, float *s,
                                                            size_t bs, const void *vx, size_t bx,
                                                            const void *vy, size_t by) {
  const ac_block_q6_K *x[2];
  const ac_block_q8_K *y[4];
  __m256 acc[2][4], pairs[8];
  X86_UNROLL for (int r = 0; r < R; r++) x[r] = row_at(vx, bx, r);
  X86_UNROLL for (int j = 0; j < 4; j++) y[j] = row_at(vy, by, j);
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) acc[r][j] =
      _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    __m256i sc[2], isum[2][4];
    int16_t s16[2][16];
    X86_UNROLL for (int r = 0; r < R; r++) {
      sc[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[r][i].scales));
      _mm256_storeu_si256((__m256i *)s16[r], sc[r]);
    }
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) isum[r][j] =
        _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      __m256i u[2][4];
      X86_UNROLL for (int r = 0; r < R; r++) {
        const __m256i l0 = loadu256(x[r][i].ql + 64 * h), l1 = loadu256(x[r][i].ql + 64 * h + 32);
        const __m256i qh = loadu256(x[r][i].qh + 32 * h);
        u[r][0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                  _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        u[r][1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                  _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        u[r][2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                  _mm256_and_si256(qh, m30));
        u[r][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                  _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
      }
      X86_UNROLL for (int k = 0; k < 4; k++) {
        const int c = 4 * h + k;
        __m256i scv[2];
        X86_UNROLL for (int r = 0; r < R; r++) scv[r] =
            scales_2x16(s16[r][2 * c], s16[r][2 * c + 1]);
        X86_UNROLL for (int j = 0; j < 4; j++) X86_UNROLL for (int r = 0; r < R; r++) isum[r][j] =
            _mm256_add_epi32(isum[r][j], dot_chunk(u[r][k], y[j][i].qs + 32 * c, scv[r]));
      }
    }
    X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) {
      const __m256i off = _mm256_madd_epi16(loadu256(y[j][i].bsums), sc[r]);
      const __m256i fixed = _mm256_sub_epi32(isum[r][j], _mm256_slli_epi32(off, 5));
      acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fixed),
                                  _mm256_set1_ps(y[j][i].d * h2f(x[r][i].d)), acc[r][j]);
    }
  }
  tile_pairs(R, acc, pairs);
  float t[8];
  _mm256_storeu_ps(t, hsum8_ps(pairs));
  X86_UNROLL for (int r = 0; r < R; r++) X86_UNROLL for (int j = 0; j < 4; j++) s[j * bs + r] =
      t[4 * r + j];
}
X86_TILE_KERNEL_ROWS(q6_k)

// --- install -----------------------------------------------------------------------------------

void ac__quant_avx2_install(ac_type_traits_t *tab) {
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
