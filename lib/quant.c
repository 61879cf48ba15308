// quant.c - tensor element types: the traits table, run-time kernel selection, half-precision
// conversions, and the plain C reference kernels every SIMD kernel is checked against.
//
// Dequantization here computes each value with exactly the float operations ggml (and the gguf
// Python package) use, in the same order, so a tensor dequantizes to the same bits everywhere.
// The activation quantizers (Q8_0, Q8_1, Q8_K, F16, BF16) follow ggml's reference rounding
// exactly; the SIMD versions in quant_avx2.c / quant_avx512.c produce the same bytes.

// Contracting a*b+c into an FMA would change the rounding of dequantized values and break
// bit-compatibility with ggml, so this file asks for separate multiplies and adds. It has to come
// before any header so that inline functions get the same setting.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "quant_impl.h"
#include "quant_q2x.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

// --- half and bfloat16 -------------------------------------------------------------------------

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

float ac_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FF;
  if (exp == 0x1F) {
    // Inf stays inf; a NaN keeps its payload and comes out quiet, as F16C's vcvtph2ps does, so
    // the scalar and SIMD paths agree bit for bit.
    return bits_f32(sign | 0x7F800000 | (man << 13) | (man ? 0x400000 : 0));
  }
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24 is exact in float.
    float v = (float)man * 0x1p-24f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t ac_f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) {
    // NaN: keep the top of the payload and set the quiet bit (what F16C's vcvtps2ph does).
    return (uint16_t)(sign | 0x7E00 | ((ax >> 13) & 0x3FF));
  }
  // 65520 is halfway between the largest half (65504) and 65536; ties go to the even neighbour,
  // which is 65536 = overflow, so everything from 65520 up becomes inf.
  if (ax >= 0x477FF000) return (uint16_t)(sign | 0x7C00);
  // Below 2^-25 (and 2^-25 itself, a tie with 0) rounds to zero.
  if (ax <= 0x33000000) return sign;
  uint32_t r, rem, half;
  if (ax < 0x38800000) {
    // Result is a subnormal half: count units of 2^-24 from the full 24-bit significand.
    uint32_t e = ax >> 23;  // 102..112
    uint32_t m = (ax & 0x7FFFFF) | 0x800000;
    uint32_t shift = 126 - e;  // 14..24
    r = m >> shift;
    rem = m & ((1u << shift) - 1);
    half = 1u << (shift - 1);
  } else {
    // Normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits. A carry out of the
    // mantissa correctly bumps the exponent.
    r = (ax >> 13) - ((127 - 15) << 10);
    rem = ax & 0x1FFF;
    half = 0x1000;
  }
  if (rem > half || (rem == half && (r & 1))) r++;
  return (uint16_t)(sign | r);
}

float ac_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ac_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  // A NaN must stay a NaN after truncation, so force the quiet bit (ggml does the same).
  if ((x & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((x >> 16) | 64);
  // Round to nearest even; a carry into the exponent is the correct result, including overflow
  // to inf.
  return (uint16_t)((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

#define F16(h) ac_f16_to_f32(h)

// --- float types -------------------------------------------------------------------------------

static void f32_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  memcpy(y, vx, (size_t)n * sizeof(float));
}

static void f32_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  memcpy(vy, x, (size_t)n * sizeof(float));
}

static void f32_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                            const void *restrict vy) {
  const float *x = vx, *y = vy;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (double)x[i] * (double)y[i];
  *s = (float)sum;
}

static void f16_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const uint16_t *x = vx;
  for (int64_t i = 0; i < n; i++) y[i] = ac_f16_to_f32(x[i]);
}

static void f16_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  uint16_t *y = vy;
  for (int64_t i = 0; i < n; i++) y[i] = ac_f32_to_f16(x[i]);
}

static void f16_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                            const void *restrict vy) {
  const uint16_t *x = vx, *y = vy;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (double)(ac_f16_to_f32(x[i]) * ac_f16_to_f32(y[i]));
  *s = (float)sum;
}

static void bf16_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const uint16_t *x = vx;
  for (int64_t i = 0; i < n; i++) y[i] = ac_bf16_to_f32(x[i]);
}

static void bf16_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  uint16_t *y = vy;
  for (int64_t i = 0; i < n; i++) y[i] = ac_f32_to_bf16(x[i]);
}

static void bf16_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const uint16_t *x = vx, *y = vy;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (double)(ac_bf16_to_f32(x[i]) * ac_bf16_to_f32(y[i]));
  *s = (float)sum;
}

// --- Q4_0 / Q4_1 / Q5_0 / Q5_1: 32-value weight blocks -----------------------------------------

// ggml quantizes these with (int8_t)(v + offset) and a clamp. For finite inputs v lies within the
// representable range; the explicit clamp keeps NaN and inf inputs from being undefined behaviour
// while giving the same result as ggml for every finite input.
static inline int trunc_clamp(float v, int hi) {
  if (!(v > 0)) return 0;
  if (v >= (float)hi) return hi;
  return (int)v;
}

// The value with the largest magnitude, keeping its sign (the first one on ties).
static inline float signed_absmax(const float *x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; j++) {
    if (amax < fabsf(x[j])) {
      amax = fabsf(x[j]);
      max = x[j];
    }
  }
  return max;
}

static void q4_0_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q4_0 *y = vy;
  for (int64_t i = 0; i < n / AC_QK4_0; i++, x += AC_QK4_0) {
    // The extreme value maps to -8, the end of the range with one more level.
    const float d = signed_absmax(x, AC_QK4_0) / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = ac_f32_to_f16(d);
    for (int j = 0; j < AC_QK4_0 / 2; j++) {
      int q0 = trunc_clamp(x[j] * id + 8.5f, 15);
      int q1 = trunc_clamp(x[j + AC_QK4_0 / 2] * id + 8.5f, 15);
      y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

static void q4_0_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q4_0 *x = vx;
  for (int64_t i = 0; i < n / AC_QK4_0; i++, y += AC_QK4_0) {
    const float d = F16(x[i].d);
    for (int j = 0; j < AC_QK4_0 / 2; j++) {
      y[j] = (float)((x[i].qs[j] & 0xF) - 8) * d;
      y[j + AC_QK4_0 / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

static void q4_1_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q4_1 *y = vy;
  for (int64_t i = 0; i < n / AC_QK4_1; i++, x += AC_QK4_1) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < AC_QK4_1; j++) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = ac_f32_to_f16(d);
    y[i].m = ac_f32_to_f16(min);
    for (int j = 0; j < AC_QK4_1 / 2; j++) {
      int q0 = trunc_clamp((x[j] - min) * id + 0.5f, 15);
      int q1 = trunc_clamp((x[j + AC_QK4_1 / 2] - min) * id + 0.5f, 15);
      y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

static void q4_1_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q4_1 *x = vx;
  for (int64_t i = 0; i < n / AC_QK4_1; i++, y += AC_QK4_1) {
    const float d = F16(x[i].d), m = F16(x[i].m);
    for (int j = 0; j < AC_QK4_1 / 2; j++) {
      y[j] = (float)(x[i].qs[j] & 0xF) * d + m;
      y[j + AC_QK4_1 / 2] = (float)(x[i].qs[j] >> 4) * d + m;
    }
  }
}

static void q5_0_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q5_0 *y = vy;
  for (int64_t i = 0; i < n / AC_QK5_0; i++, x += AC_QK5_0) {
    const float d = signed_absmax(x, AC_QK5_0) / -16;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = ac_f32_to_f16(d);
    uint32_t qh = 0;
    for (int j = 0; j < AC_QK5_0 / 2; j++) {
      int q0 = trunc_clamp(x[j] * id + 16.5f, 31);
      int q1 = trunc_clamp(x[j + AC_QK5_0 / 2] * id + 16.5f, 31);
      y[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= (uint32_t)(q0 >> 4) << j;
      qh |= (uint32_t)(q1 >> 4) << (j + AC_QK5_0 / 2);
    }
    memcpy(y[i].qh, &qh, sizeof qh);
  }
}

static void q5_0_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q5_0 *x = vx;
  for (int64_t i = 0; i < n / AC_QK5_0; i++, y += AC_QK5_0) {
    const float d = F16(x[i].d);
    const uint32_t qh = ac__load_u32(x[i].qh);
    for (int j = 0; j < AC_QK5_0 / 2; j++) {
      int q0 = (int)((x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
      int q1 = (int)((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
      y[j] = (float)q0 * d;
      y[j + AC_QK5_0 / 2] = (float)q1 * d;
    }
  }
}

static void q5_1_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q5_1 *y = vy;
  for (int64_t i = 0; i < n / AC_QK5_1; i++, x += AC_QK5_1) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < AC_QK5_1; j++) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = ac_f32_to_f16(d);
    y[i].m = ac_f32_to_f16(min);
    uint32_t qh = 0;
    for (int j = 0; j < AC_QK5_1 / 2; j++) {
      int q0 = trunc_clamp((x[j] - min) * id + 0.5f, 31);
      int q1 = trunc_clamp((x[j + AC_QK5_1 / 2] - min) * id + 0.5f, 31);
      y[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= (uint32_t)(q0 >> 4) << j;
      qh |= (uint32_t)(q1 >> 4) << (j + AC_QK5_1 / 2);
    }
    memcpy(y[i].qh, &qh, sizeof qh);
  }
}

static void q5_1_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q5_1 *x = vx;
  for (int64_t i = 0; i < n / AC_QK5_1; i++, y += AC_QK5_1) {
    const float d = F16(x[i].d), m = F16(x[i].m);
    const uint32_t qh = ac__load_u32(x[i].qh);
    for (int j = 0; j < AC_QK5_1 / 2; j++) {
      uint32_t q0 = (x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
      uint32_t q1 = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      y[j] = (float)q0 * d + m;
      y[j + AC_QK5_1 / 2] = (float)q1 * d + m;
    }
  }
}

// --- Q8_0 / Q8_1: 32-value activation blocks ---------------------------------------------------

// Both use the arithmetic llama.cpp runs on x86 (its SIMD quantizer, not its scalar reference):
// id = 127 / amax and round half to even. Activation rounding is where two engines' last-bit
// differences get amplified, so we follow the one we are compared with. For finite inputs
// |x * id| <= 127 (plus an ulp), so the result always fits and is never -128. Degenerate blocks
// are where ggml's reference is undefined: a block whose largest value is a float subnormal
// makes id = 1/d overflow to inf, giving +-inf (and NaN for zeros). Those are clamped to
// [-127, 127], NaN to 0, here and in the SIMD versions alike.
static inline float clamp_q8(float v) {
  if (v != v) return 0;
  return v < -127 ? -127 : (v > 127 ? 127 : v);
}

static inline int8_t round_q8(float v) { return (int8_t)nearbyintf(clamp_q8(v)); }

static void q8_0_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_0 *y = vy;
  for (int64_t i = 0; i < n / AC_QK8_0; i++, x += AC_QK8_0) {
    float amax = 0;
    for (int j = 0; j < AC_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    y[i].d = ac_f32_to_f16(d);
    for (int j = 0; j < AC_QK8_0; j++) y[i].qs[j] = round_q8(x[j] * id);
  }
}

static void q8_0_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q8_0 *x = vx;
  for (int64_t i = 0; i < n / AC_QK8_0; i++, y += AC_QK8_0) {
    const float d = F16(x[i].d);
    for (int j = 0; j < AC_QK8_0; j++) y[j] = (float)x[i].qs[j] * d;
  }
}

static void q8_1_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_1 *y = vy;
  for (int64_t i = 0; i < n / AC_QK8_1; i++, x += AC_QK8_1) {
    float amax = 0;
    for (int j = 0; j < AC_QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    y[i].d = ac_f32_to_f16(d);
    int sum = 0;
    for (int j = 0; j < AC_QK8_1; j++) {
      y[i].qs[j] = round_q8(x[j] * id);
      sum += y[i].qs[j];
    }
    y[i].s = ac_f32_to_f16((float)sum * d);
  }
}

static void q8_1_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q8_1 *x = vx;
  for (int64_t i = 0; i < n / AC_QK8_1; i++, y += AC_QK8_1) {
    const float d = F16(x[i].d);
    for (int j = 0; j < AC_QK8_1; j++) y[j] = (float)x[i].qs[j] * d;
  }
}

// --- dot products of the 32-value blocks -------------------------------------------------------
// Each block's integer dot product is exact; it is scaled by the product of the two scales, as in
// ggml. Q4_1 / Q5_1 add m_x * s_y, where s_y = d_y * sum(q_y), for the weights' minimum.

static void q4_0_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q4_0 *x = vx;
  const ac_block_q8_0 *y = vy;
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK8_0; i++) {
    int isum = 0;
    for (int j = 0; j < AC_QK8_0 / 2; j++) {
      isum += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j];
      isum += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + AC_QK8_0 / 2];
    }
    sum += (float)isum * (F16(x[i].d) * F16(y[i].d));
  }
  *s = sum;
}

static void q4_1_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q4_1 *x = vx;
  const ac_block_q8_1 *y = vy;
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK8_1; i++) {
    int isum = 0;
    for (int j = 0; j < AC_QK8_1 / 2; j++) {
      isum += (x[i].qs[j] & 0xF) * y[i].qs[j];
      isum += (x[i].qs[j] >> 4) * y[i].qs[j + AC_QK8_1 / 2];
    }
    sum += (float)isum * (F16(x[i].d) * F16(y[i].d)) + F16(x[i].m) * F16(y[i].s);
  }
  *s = sum;
}

static void q5_0_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q5_0 *x = vx;
  const ac_block_q8_0 *y = vy;
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK8_0; i++) {
    const uint32_t qh = ac__load_u32(x[i].qh);
    int isum = 0;
    for (int j = 0; j < AC_QK8_0 / 2; j++) {
      int q0 = (int)((x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
      int q1 = (int)((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
      isum += q0 * y[i].qs[j] + q1 * y[i].qs[j + AC_QK8_0 / 2];
    }
    sum += (float)isum * (F16(x[i].d) * F16(y[i].d));
  }
  *s = sum;
}

static void q5_1_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q5_1 *x = vx;
  const ac_block_q8_1 *y = vy;
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK8_1; i++) {
    const uint32_t qh = ac__load_u32(x[i].qh);
    int isum = 0;
    for (int j = 0; j < AC_QK8_1 / 2; j++) {
      int q0 = (int)((x[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4));
      int q1 = (int)((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
      isum += q0 * y[i].qs[j] + q1 * y[i].qs[j + AC_QK8_1 / 2];
    }
    sum += (float)isum * (F16(x[i].d) * F16(y[i].d)) + F16(x[i].m) * F16(y[i].s);
  }
  *s = sum;
}

static void q8_0_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q8_0 *x = vx;
  const ac_block_q8_0 *y = vy;
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK8_0; i++) {
    int isum = 0;
    for (int j = 0; j < AC_QK8_0; j++) isum += x[i].qs[j] * y[i].qs[j];
    sum += (float)isum * (F16(x[i].d) * F16(y[i].d));
  }
  *s = sum;
}

// --- K-quant helpers ---------------------------------------------------------------------------

// Round to nearest, ties to even (ggml's nearest_int for K-quants); |v| must be well below 2^22.
static inline int nearest_int(float v) { return (int)lrintf(v); }

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Fits x[0..n) ~ scale * L - m with integer L in [0, nmax], scale >= 0 and m >= 0 (so the grid
// always reaches down to zero or below). Several candidate grids are tried, each refined by a
// least-squares fit of scale and m to its levels; the one with the smallest squared error wins.
// Returns the scale, sets *m, and fills L with the levels of the winning grid.
static float fit_affine(int n, const float *x, int nmax, uint8_t *L, float *m) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
  }
  if (lo > 0) lo = 0;
  if (!(hi > lo)) {
    for (int i = 0; i < n; i++) L[i] = 0;
    *m = -lo;
    return 0;
  }
  float best_scale = (hi - lo) / nmax, best_min = -lo, best_err = INFINITY;
  uint8_t Lc[32];
  for (int step = 0; step <= 16; step++) {
    // Candidate grids stretch the range by up to one level either way.
    const float iscale = ((float)nmax - 1.0f + 0.125f * (float)step) / (hi - lo);
    double sl = 0, sl2 = 0, sx = 0, slx = 0;
    for (int i = 0; i < n; i++) {
      int l = clampi(nearest_int(iscale * (x[i] - lo)), 0, nmax);
      Lc[i] = (uint8_t)l;
      sl += l;
      sl2 += (double)l * l;
      sx += x[i];
      slx += (double)l * x[i];
    }
    // Least squares for x ~ a*L + b; b must stay <= 0 (it is stored as the minimum m = -b).
    double det = n * sl2 - sl * sl;
    double a, b;
    if (det > 0) {
      a = (n * slx - sl * sx) / det;
      b = (sx - a * sl) / n;
    } else {
      a = 0;
      b = sx / n;
    }
    if (b > 0) {
      b = 0;
      a = sl2 > 0 ? slx / sl2 : 0;
    }
    if (a < 0) continue;
    double err = 0;
    for (int i = 0; i < n; i++) {
      double e = a * Lc[i] + b - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = (float)err;
      best_scale = (float)a;
      best_min = (float)-b;
      memcpy(L, Lc, (size_t)n);
    }
  }
  if (best_err == INFINITY) {
    for (int i = 0; i < n; i++)
      L[i] = (uint8_t)clampi(nearest_int((x[i] - lo) / best_scale), 0, nmax);
  }
  *m = best_min;
  return best_scale;
}

// Fits x[0..n) ~ scale * L with integer L in [-nmax, nmax-1]. The value with the largest magnitude
// anchors the grid at -nmax (the end with one more level); a few shrunk grids are tried as well,
// each refined by least squares. Returns the (possibly negative) scale.
static float fit_symmetric(int n, const float *x, int nmax, int8_t *L) {
  const float max = signed_absmax(x, n);
  if (max == 0) {
    for (int i = 0; i < n; i++) L[i] = 0;
    return 0;
  }
  float best_scale = 0, best_err = INFINITY;
  int8_t Lc[32];
  for (int step = 0; step <= 10; step++) {
    const float iscale = -((float)nmax + 0.5f - 0.1f * (float)step) / max;
    double sl2 = 0, slx = 0;
    for (int i = 0; i < n; i++) {
      int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      Lc[i] = (int8_t)l;
      sl2 += (double)l * l;
      slx += (double)l * x[i];
    }
    if (sl2 == 0) continue;
    double a = slx / sl2;
    double err = 0;
    for (int i = 0; i < n; i++) {
      double e = a * Lc[i] - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = (float)err;
      best_scale = (float)a;
      memcpy(L, Lc, (size_t)n);
    }
  }
  return best_scale;
}

// Quantizes the positive sub-block values v[0..n) to integers in [0, qmax] against one shared
// scale; returns that scale (what the stored half will hold) or 0 if all are zero.
static float quantize_scales_unsigned(int n, const float *v, int qmax, uint8_t *q) {
  float vmax = 0;
  for (int i = 0; i < n; i++)
    if (v[i] > vmax) vmax = v[i];
  if (!(vmax > 0)) {
    memset(q, 0, (size_t)n);
    return 0;
  }
  const float d = vmax / (float)qmax;
  const float id = 1.0f / d;
  for (int i = 0; i < n; i++) q[i] = (uint8_t)clampi(nearest_int(v[i] * id), 0, qmax);
  return d;
}

// --- Q2_K --------------------------------------------------------------------------------------

// Levels of super-block b in natural order, plus its per-16 scale and minimum nibbles.
static void q2_k_unpack(const ac_block_q2_K *b, uint8_t q[AC_QK_K]) {
  for (int h = 0; h < 2; h++)
    for (int sh = 0; sh < 4; sh++)
      for (int l = 0; l < 32; l++) q[128 * h + 32 * sh + l] = (b->qs[32 * h + l] >> (2 * sh)) & 3;
}

static void q2_k_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q2_K *x = vx;
  uint8_t q[AC_QK_K];
  for (int64_t i = 0; i < n / AC_QK_K; i++, y += AC_QK_K) {
    const float d = F16(x[i].d), dmin = F16(x[i].dmin);
    q2_k_unpack(&x[i], q);
    for (int g = 0; g < 16; g++) {
      const float dl = d * (float)(x[i].scales[g] & 0xF);
      const float ml = dmin * (float)(x[i].scales[g] >> 4);
      for (int l = 0; l < 16; l++) y[16 * g + l] = dl * (float)q[16 * g + l] - ml;
    }
  }
}

static void q2_k_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q2_K *y = vy;
  uint8_t L[AC_QK_K];
  float scales[16], mins[16];
  uint8_t sq[16], mq[16];
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    for (int g = 0; g < 16; g++) scales[g] = fit_affine(16, x + 16 * g, 3, L + 16 * g, &mins[g]);
    y[i].d = ac_f32_to_f16(quantize_scales_unsigned(16, scales, 15, sq));
    y[i].dmin = ac_f32_to_f16(quantize_scales_unsigned(16, mins, 15, mq));
    const float d = F16(y[i].d), dmin = F16(y[i].dmin);
    for (int g = 0; g < 16; g++) {
      y[i].scales[g] = (uint8_t)(sq[g] | (mq[g] << 4));
      // Requantize against the scale and minimum as they will be stored.
      const float dl = d * sq[g], ml = dmin * mq[g];
      for (int l = 0; l < 16; l++) {
        int v = dl > 0 ? nearest_int((x[16 * g + l] + ml) / dl) : 0;
        L[16 * g + l] = (uint8_t)clampi(v, 0, 3);
      }
    }
    for (int h = 0; h < 2; h++)
      for (int l = 0; l < 32; l++) {
        const uint8_t *p = L + 128 * h + l;
        y[i].qs[32 * h + l] = (uint8_t)(p[0] | (p[32] << 2) | (p[64] << 4) | (p[96] << 6));
      }
  }
}

static void q2_k_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q2_K *x = vx;
  const ac_block_q8_K *y = vy;
  uint8_t q[AC_QK_K];
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    q2_k_unpack(&x[i], q);
    int isum = 0, msum = 0;
    for (int g = 0; g < 16; g++) {
      int gs = 0;
      for (int l = 0; l < 16; l++) gs += q[16 * g + l] * y[i].qs[16 * g + l];
      isum += (x[i].scales[g] & 0xF) * gs;
      msum += (x[i].scales[g] >> 4) * y[i].bsums[g];
    }
    sum += y[i].d * F16(x[i].d) * (float)isum - y[i].d * F16(x[i].dmin) * (float)msum;
  }
  *s = sum;
}

// --- Q3_K --------------------------------------------------------------------------------------

// Signed levels (-4..3) in natural order.
static void q3_k_unpack(const ac_block_q3_K *b, int8_t q[AC_QK_K]) {
  for (int h = 0; h < 2; h++)
    for (int sh = 0; sh < 4; sh++)
      for (int l = 0; l < 32; l++) {
        int lo = (b->qs[32 * h + l] >> (2 * sh)) & 3;
        int hbit = (b->hmask[l] >> (4 * h + sh)) & 1;
        q[128 * h + 32 * sh + l] = (int8_t)(lo - (hbit ? 0 : 4));
      }
}

static void q3_k_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q3_K *x = vx;
  int8_t q[AC_QK_K], sc[16];
  for (int64_t i = 0; i < n / AC_QK_K; i++, y += AC_QK_K) {
    const float d = F16(x[i].d);
    q3_k_unpack(&x[i], q);
    ac__q3_k_scales(x[i].scales, sc);
    for (int g = 0; g < 16; g++) {
      const float dl = d * (float)sc[g];
      for (int l = 0; l < 16; l++) y[16 * g + l] = dl * (float)q[16 * g + l];
    }
  }
}

static void q3_k_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q3_K *y = vy;
  int8_t L[AC_QK_K];
  float scales[16];
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    for (int g = 0; g < 16; g++) scales[g] = fit_symmetric(16, x + 16 * g, 4, L + 16 * g);
    // The sub-block scales are themselves signed 6-bit values against one half scale.
    const float smax = signed_absmax(scales, 16);
    int8_t sq[16];
    float d = 0;
    if (smax != 0) {
      const float iscale = -32.0f / smax;
      for (int g = 0; g < 16; g++) sq[g] = (int8_t)clampi(nearest_int(iscale * scales[g]), -32, 31);
      d = 1.0f / iscale;
    } else {
      memset(sq, 0, sizeof sq);
    }
    y[i].d = ac_f32_to_f16(d);
    const float dd = F16(y[i].d);
    memset(y[i].scales, 0, sizeof y[i].scales);
    for (int g = 0; g < 16; g++) {
      const int v = sq[g] + 32;
      if (g < 8)
        y[i].scales[g] |= (uint8_t)(v & 0xF);
      else
        y[i].scales[g - 8] |= (uint8_t)((v & 0xF) << 4);
      y[i].scales[8 + (g & 3)] |= (uint8_t)((v >> 4) << (2 * (g >> 2)));
      const float dl = dd * sq[g];
      for (int l = 0; l < 16; l++) {
        int q = dl != 0 ? nearest_int(x[16 * g + l] / dl) : 0;
        L[16 * g + l] = (int8_t)clampi(q, -4, 3);
      }
    }
    memset(y[i].hmask, 0, sizeof y[i].hmask);
    for (int h = 0; h < 2; h++)
      for (int l = 0; l < 32; l++) {
        uint8_t lo = 0;
        for (int sh = 0; sh < 4; sh++) {
          const int u = L[128 * h + 32 * sh + l] + 4;  // 0..7
          lo |= (uint8_t)((u & 3) << (2 * sh));
          if (u & 4) y[i].hmask[l] |= (uint8_t)(1u << (4 * h + sh));
        }
        y[i].qs[32 * h + l] = lo;
      }
  }
}

static void q3_k_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q3_K *x = vx;
  const ac_block_q8_K *y = vy;
  int8_t q[AC_QK_K], sc[16];
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    q3_k_unpack(&x[i], q);
    ac__q3_k_scales(x[i].scales, sc);
    int isum = 0;
    for (int g = 0; g < 16; g++) {
      int gs = 0;
      for (int l = 0; l < 16; l++) gs += q[16 * g + l] * y[i].qs[16 * g + l];
      isum += sc[g] * gs;
    }
    sum += F16(x[i].d) * y[i].d * (float)isum;
  }
  *s = sum;
}

// --- Q4_K / Q5_K -------------------------------------------------------------------------------

// Levels (0..15 or 0..31) in natural order.
static void q4_k_unpack(const uint8_t *qs, const uint8_t *qh, uint8_t q[AC_QK_K]) {
  for (int j = 0; j < 4; j++)
    for (int l = 0; l < 32; l++) {
      uint8_t b = qs[32 * j + l];
      uint8_t h0 = qh ? (uint8_t)(((qh[l] >> (2 * j)) & 1) << 4) : 0;
      uint8_t h1 = qh ? (uint8_t)(((qh[l] >> (2 * j + 1)) & 1) << 4) : 0;
      q[64 * j + l] = (uint8_t)((b & 0xF) | h0);
      q[64 * j + 32 + l] = (uint8_t)((b >> 4) | h1);
    }
}

static void qk_affine_to_float(const uint8_t q[AC_QK_K], uint16_t hd, uint16_t hdmin,
                               const uint8_t *scales, float *y) {
  const float d = F16(hd), dmin = F16(hdmin);
  for (int j = 0; j < 8; j++) {
    uint8_t sc, m;
    ac__get_scale_min_k4(j, scales, &sc, &m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    for (int l = 0; l < 32; l++) y[32 * j + l] = d1 * (float)q[32 * j + l] - m1;
  }
}

static void q4_k_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q4_K *x = vx;
  uint8_t q[AC_QK_K];
  for (int64_t i = 0; i < n / AC_QK_K; i++, y += AC_QK_K) {
    q4_k_unpack(x[i].qs, NULL, q);
    qk_affine_to_float(q, x[i].d, x[i].dmin, x[i].scales, y);
  }
}

static void q5_k_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q5_K *x = vx;
  uint8_t q[AC_QK_K];
  for (int64_t i = 0; i < n / AC_QK_K; i++, y += AC_QK_K) {
    q4_k_unpack(x[i].qs, x[i].qh, q);
    qk_affine_to_float(q, x[i].d, x[i].dmin, x[i].scales, y);
  }
}

// Quantizes one Q4_K / Q5_K super-block (nmax 15 or 31): fills the halves, the packed 6-bit
// scales and mins, and the levels L in natural order.
static void qk_affine_quantize(const float *x, int nmax, uint16_t *hd, uint16_t *hdmin,
                               uint8_t *packed, uint8_t L[AC_QK_K]) {
  float scales[8], mins[8];
  uint8_t sq[8], mq[8];
  for (int j = 0; j < 8; j++) scales[j] = fit_affine(32, x + 32 * j, nmax, L + 32 * j, &mins[j]);
  *hd = ac_f32_to_f16(quantize_scales_unsigned(8, scales, 63, sq));
  *hdmin = ac_f32_to_f16(quantize_scales_unsigned(8, mins, 63, mq));
  ac__pack_scale_min_k4(sq, mq, packed);
  const float d = F16(*hd), dmin = F16(*hdmin);
  for (int j = 0; j < 8; j++) {
    const float dl = d * sq[j], ml = dmin * mq[j];
    for (int l = 0; l < 32; l++) {
      int v = dl > 0 ? nearest_int((x[32 * j + l] + ml) / dl) : 0;
      L[32 * j + l] = (uint8_t)clampi(v, 0, nmax);
    }
  }
}

static void q4_k_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q4_K *y = vy;
  uint8_t L[AC_QK_K];
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    qk_affine_quantize(x, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++)
        y[i].qs[32 * j + l] = (uint8_t)(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
  }
}

static void q5_k_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q5_K *y = vy;
  uint8_t L[AC_QK_K];
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    qk_affine_quantize(x, 31, &y[i].d, &y[i].dmin, y[i].scales, L);
    memset(y[i].qh, 0, sizeof y[i].qh);
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++) {
        const uint8_t a = L[64 * j + l], b = L[64 * j + 32 + l];
        y[i].qs[32 * j + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        y[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1)));
      }
  }
}

// Shared by Q4_K and Q5_K: sum over the 8 sub-blocks of sc * dot(q, y) and m * (sum of y).
static float qk_affine_dot(const uint8_t q[AC_QK_K], uint16_t hd, uint16_t hdmin,
                           const uint8_t *scales, const ac_block_q8_K *y) {
  int isum = 0, msum = 0;
  for (int j = 0; j < 8; j++) {
    uint8_t sc, m;
    ac__get_scale_min_k4(j, scales, &sc, &m);
    int gs = 0;
    for (int l = 0; l < 32; l++) gs += q[32 * j + l] * y->qs[32 * j + l];
    isum += sc * gs;
    msum += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
  }
  return y->d * F16(hd) * (float)isum - y->d * F16(hdmin) * (float)msum;
}

static void q4_k_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q4_K *x = vx;
  const ac_block_q8_K *y = vy;
  uint8_t q[AC_QK_K];
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    q4_k_unpack(x[i].qs, NULL, q);
    sum += qk_affine_dot(q, x[i].d, x[i].dmin, x[i].scales, &y[i]);
  }
  *s = sum;
}

static void q5_k_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q5_K *x = vx;
  const ac_block_q8_K *y = vy;
  uint8_t q[AC_QK_K];
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    q4_k_unpack(x[i].qs, x[i].qh, q);
    sum += qk_affine_dot(q, x[i].d, x[i].dmin, x[i].scales, &y[i]);
  }
  *s = sum;
}

// --- Q6_K --------------------------------------------------------------------------------------

// Signed levels (-32..31) in natural order.
static void q6_k_unpack(const ac_block_q6_K *b, int8_t q[AC_QK_K]) {
  for (int h = 0; h < 2; h++) {
    const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
    int8_t *o = q + 128 * h;
    for (int l = 0; l < 32; l++) {
      o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
      o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
      o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
      o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
    }
  }
}

static void q6_k_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q6_K *x = vx;
  int8_t q[AC_QK_K];
  for (int64_t i = 0; i < n / AC_QK_K; i++, y += AC_QK_K) {
    const float d = F16(x[i].d);
    q6_k_unpack(&x[i], q);
    for (int g = 0; g < 16; g++) {
      const float dl = d * (float)x[i].scales[g];
      for (int l = 0; l < 16; l++) y[16 * g + l] = dl * (float)q[16 * g + l];
    }
  }
}

static void q6_k_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q6_K *y = vy;
  int8_t L[AC_QK_K];
  float scales[16];
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    for (int g = 0; g < 16; g++) scales[g] = fit_symmetric(16, x + 16 * g, 32, L + 16 * g);
    const float smax = signed_absmax(scales, 16);
    float d = 0;
    if (smax != 0) {
      const float iscale = -128.0f / smax;
      for (int g = 0; g < 16; g++)
        y[i].scales[g] = (int8_t)clampi(nearest_int(iscale * scales[g]), -128, 127);
      d = 1.0f / iscale;
    } else {
      memset(y[i].scales, 0, sizeof y[i].scales);
    }
    y[i].d = ac_f32_to_f16(d);
    const float dd = F16(y[i].d);
    for (int g = 0; g < 16; g++) {
      const float dl = dd * y[i].scales[g];
      for (int l = 0; l < 16; l++) {
        int q = dl != 0 ? nearest_int(x[16 * g + l] / dl) : 0;
        L[16 * g + l] = (int8_t)clampi(q, -32, 31);
      }
    }
    for (int h = 0; h < 2; h++) {
      uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
      const int8_t *p = L + 128 * h;
      for (int l = 0; l < 32; l++) {
        const int a = p[l] + 32, b = p[l + 32] + 32, c = p[l + 64] + 32, e = p[l + 96] + 32;
        ql[l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
        ql[l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
        qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
      }
    }
  }
}

static void q6_k_vec_dot_ref(int64_t n, float *restrict s, const void *restrict vx,
                             const void *restrict vy) {
  const ac_block_q6_K *x = vx;
  const ac_block_q8_K *y = vy;
  int8_t q[AC_QK_K];
  float sum = 0;
  for (int64_t i = 0; i < n / AC_QK_K; i++) {
    q6_k_unpack(&x[i], q);
    int isum = 0;
    for (int g = 0; g < 16; g++) {
      int gs = 0;
      for (int l = 0; l < 16; l++) gs += q[16 * g + l] * y[i].qs[16 * g + l];
      isum += x[i].scales[g] * gs;
    }
    sum += F16(x[i].d) * y[i].d * (float)isum;
  }
  *s = sum;
}

// --- Q8_K --------------------------------------------------------------------------------------

// ggml's reference: the value with the largest magnitude maps to -127 (iscale = -127/max), values
// round to nearest with ties to even, and d = 1/iscale is kept as a float.
static void q8_k_from_float_ref(const float *restrict x, void *restrict vy, int64_t n) {
  ac_block_q8_K *y = vy;
  for (int64_t i = 0; i < n / AC_QK_K; i++, x += AC_QK_K) {
    const float max = signed_absmax(x, AC_QK_K);
    if (max == 0) {
      memset(&y[i], 0, sizeof y[i]);
      continue;
    }
    const float iscale = -127.0f / max;
    // clamp_q8 changes nothing for finite blocks (see round_q8); it keeps a subnormal block,
    // where iscale overflows, well defined.
    for (int j = 0; j < AC_QK_K; j++) y[i].qs[j] = (int8_t)nearest_int(clamp_q8(iscale * x[j]));
    for (int g = 0; g < AC_QK_K / 16; g++) {
      int sum = 0;
      for (int l = 0; l < 16; l++) sum += y[i].qs[16 * g + l];
      y[i].bsums[g] = (int16_t)sum;
    }
    y[i].d = 1 / iscale;
  }
}

static void q8_k_to_float_ref(const void *restrict vx, float *restrict y, int64_t n) {
  const ac_block_q8_K *x = vx;
  for (int64_t i = 0; i < n / AC_QK_K; i++, y += AC_QK_K)
    for (int j = 0; j < AC_QK_K; j++) y[j] = x[i].d * (float)x[i].qs[j];
}

// --- tiles of dot products --------------------------------------------------------------------
// The reference tile is vec_dot_ref on each pair, which makes it bit-identical to vec_dot_ref by
// construction. The SIMD tiles (quant_x86.h) interleave their set's own vec_dot instead.

#define TILE_REF(prefix)                                                                        \
  static void prefix##_vec_dot_4_ref(int64_t n, int nr, float *restrict s, size_t bs,           \
                                     const void *restrict x, size_t bx, const void *restrict y, \
                                     size_t by) {                                               \
    for (int j = 0; j < 4; j++)                                                                 \
      for (int i = 0; i < nr; i++)                                                              \
        prefix##_vec_dot_ref(n, &s[(size_t)j * bs + i], (const uint8_t *)x + (size_t)i * bx,    \
                             (const uint8_t *)y + (size_t)j * by);                              \
  }

// The same for the decode kernel: vec_dot_ref on each of the 4 weight rows.
#define R4_REF(prefix)                                                                         \
  static void prefix##_vec_dot_r4_ref(int64_t n, float *restrict s, const void *restrict x,    \
                                      size_t bx, const void *restrict y) {                     \
    for (int i = 0; i < 4; i++)                                                                \
      prefix##_vec_dot_ref(n, &s[i], (const uint8_t *)x + (size_t)i * bx, y);                  \
  }

#define KERNELS_REF(prefix) TILE_REF(prefix) R4_REF(prefix)

KERNELS_REF(f32)
KERNELS_REF(f16)
KERNELS_REF(bf16)
KERNELS_REF(q4_0)
KERNELS_REF(q4_1)
KERNELS_REF(q5_0)
KERNELS_REF(q5_1)
KERNELS_REF(q8_0)
KERNELS_REF(q2_k)
KERNELS_REF(q3_k)
KERNELS_REF(q4_k)
KERNELS_REF(q5_k)
KERNELS_REF(q6_k)

// --- the traits tables -------------------------------------------------------------------------

#define ROW(id, nm, bs, sz, q, vdt, prefix)          \
  [id] = {.name = nm,                                \
          .blck_size = bs,                           \
          .type_size = sz,                           \
          .is_quantized = q,                         \
          .vec_dot_type = vdt,                       \
          .to_float = prefix##_to_float_ref,         \
          .from_float = prefix##_from_float_ref,     \
          .vec_dot = prefix##_vec_dot_ref,           \
          .vec_dot_4 = prefix##_vec_dot_4_ref,       \
          .to_float_ref = prefix##_to_float_ref,     \
          .from_float_ref = prefix##_from_float_ref, \
          .vec_dot_ref = prefix##_vec_dot_ref,       \
          .vec_dot_4_ref = prefix##_vec_dot_4_ref,   \
          .vec_dot_r4 = prefix##_vec_dot_r4_ref,     \
          .vec_dot_r4_ref = prefix##_vec_dot_r4_ref}

// Activation-only types have no dot product of their own: nothing multiplies with them as
// weights (ggml's CPU backend has none either).
#define ROW_ACT(id, nm, bs, sz, prefix)          \
  [id] = {.name = nm,                            \
          .blck_size = bs,                       \
          .type_size = sz,                       \
          .is_quantized = true,                  \
          .vec_dot_type = id,                    \
          .to_float = prefix##_to_float_ref,     \
          .from_float = prefix##_from_float_ref, \
          .to_float_ref = prefix##_to_float_ref, \
          .from_float_ref = prefix##_from_float_ref}

static const ac_type_traits_t ref_traits[AC_TYPE_COUNT] = {
    ROW(AC_TYPE_F32, "f32", 1, sizeof(float), false, AC_TYPE_F32, f32),
    ROW(AC_TYPE_F16, "f16", 1, sizeof(uint16_t), false, AC_TYPE_F16, f16),
    ROW(AC_TYPE_BF16, "bf16", 1, sizeof(uint16_t), false, AC_TYPE_BF16, bf16),
    ROW(AC_TYPE_Q4_0, "q4_0", AC_QK4_0, sizeof(ac_block_q4_0), true, AC_TYPE_Q8_0, q4_0),
    ROW(AC_TYPE_Q4_1, "q4_1", AC_QK4_1, sizeof(ac_block_q4_1), true, AC_TYPE_Q8_1, q4_1),
    ROW(AC_TYPE_Q5_0, "q5_0", AC_QK5_0, sizeof(ac_block_q5_0), true, AC_TYPE_Q8_0, q5_0),
    ROW(AC_TYPE_Q5_1, "q5_1", AC_QK5_1, sizeof(ac_block_q5_1), true, AC_TYPE_Q8_1, q5_1),
    ROW(AC_TYPE_Q8_0, "q8_0", AC_QK8_0, sizeof(ac_block_q8_0), true, AC_TYPE_Q8_0, q8_0),
    ROW_ACT(AC_TYPE_Q8_1, "q8_1", AC_QK8_1, sizeof(ac_block_q8_1), q8_1),
    ROW(AC_TYPE_Q2_K, "q2_K", AC_QK_K, sizeof(ac_block_q2_K), true, AC_TYPE_Q8_K, q2_k),
    ROW(AC_TYPE_Q3_K, "q3_K", AC_QK_K, sizeof(ac_block_q3_K), true, AC_TYPE_Q8_K, q3_k),
    ROW(AC_TYPE_Q4_K, "q4_K", AC_QK_K, sizeof(ac_block_q4_K), true, AC_TYPE_Q8_K, q4_k),
    ROW(AC_TYPE_Q5_K, "q5_K", AC_QK_K, sizeof(ac_block_q5_K), true, AC_TYPE_Q8_K, q5_k),
    ROW(AC_TYPE_Q6_K, "q6_K", AC_QK_K, sizeof(ac_block_q6_K), true, AC_TYPE_Q8_K, q6_k),
    ROW_ACT(AC_TYPE_Q8_K, "q8_K", AC_QK_K, sizeof(ac_block_q8_K), q8_k),
};

// One table per kernel set; `active` points at the one in use. All are written once, inside
// pthread_once, and only read afterwards.
static ac_type_traits_t simd_traits[AC__SIMD_COUNT][AC_TYPE_COUNT];
static ac__simd_t cpu_best = AC__SIMD_REF;  // the widest set this CPU runs
static ac__simd_t active = AC__SIMD_REF;    // cpu_best, capped by AC_SIMD
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static const char *const simd_names[AC__SIMD_COUNT] = {"ref", "avx2", "avx512"};

static int simd_from_name(const char *name) {
  for (int i = 0; i < AC__SIMD_COUNT; i++)
    if (strcmp(name, simd_names[i]) == 0) return i;
  return -1;
}

// What the CPU (and the OS, which must save the wider registers) supports. The compiler's
// __builtin_cpu_supports checks both; F16C is read from CPUID directly because not every
// compiler knows the name (clang 14 does not).
static ac__simd_t detect_cpu(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  unsigned eax, ebx, ecx, edx;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
  if (avx512) return AC__SIMD_AVX512;
  if (avx2) return AC__SIMD_AVX2;
#endif
  return AC__SIMD_REF;
}

static void quant_init_once(void) {
  for (int s = 0; s < AC__SIMD_COUNT; s++) memcpy(simd_traits[s], ref_traits, sizeof ref_traits);
  ac__quant_avx2_install(simd_traits[AC__SIMD_AVX2]);
  ac__quant_avx512_install(simd_traits[AC__SIMD_AVX512]);
  // A set that replaced vec_dot but has no tile (or decode kernel) of its own must not keep the
  // reference one, which would give other bits than its vec_dot: such rows go through vec_dot.
  for (int s = 0; s < AC__SIMD_COUNT; s++) {
    for (int t = 0; t < AC_TYPE_COUNT; t++) {
      ac_type_traits_t *tt = &simd_traits[s][t];
      if (tt->vec_dot_4 == tt->vec_dot_4_ref && tt->vec_dot != tt->vec_dot_ref)
        tt->vec_dot_4 = NULL;
      if (tt->vec_dot_r4 == tt->vec_dot_r4_ref && tt->vec_dot != tt->vec_dot_ref)
        tt->vec_dot_r4 = NULL;
    }
  }
  // Every table is complete whether or not this CPU can run it; only ac__quant_traits_for and
  // the choice of `active` below look at what the CPU supports.
  cpu_best = detect_cpu();
  active = cpu_best;
  const char *env = getenv("AC_SIMD");
  if (env && *env) {
    int cap = simd_from_name(env);
    if (cap < 0)
      AC_WARN("AC_SIMD=%s is not one of ref, avx2, avx512; ignored", env);
    else if ((ac__simd_t)cap < active)
      active = (ac__simd_t)cap;
  }
  AC_DEBUG("quant kernels: %s (cpu supports %s)", simd_names[active], simd_names[cpu_best]);
}

void ac_quant_init(void) { pthread_once(&init_once, quant_init_once); }

const char *ac_simd_name(void) {
  ac_quant_init();
  return simd_names[active];
}

// Our extension types live outside ggml's id range (see quant_q2x.h); they have their own rows.
static const ac_type_traits_t *ext_traits(uint32_t type) {
  return type == AC_TYPE_Q2X ? ac__q2x_traits() : NULL;
}

const ac_type_traits_t *ac_type_traits(uint32_t type) {
  ac_quant_init();
  if (type == AC_TYPE_Q2X) return ext_traits(type);
  if (type >= AC_TYPE_COUNT || !simd_traits[active][type].name) return NULL;
  return &simd_traits[active][type];
}

const ac_type_traits_t *ac__quant_traits_for(const char *simd, uint32_t type) {
  ac_quant_init();
  const int s = simd ? simd_from_name(simd) : -1;
  if (s < 0 || (ac__simd_t)s > cpu_best) return NULL;
  if (type == AC_TYPE_Q2X) return ac__q2x_traits_for(simd);
  if (type >= AC_TYPE_COUNT || !simd_traits[s][type].name) return NULL;
  return &simd_traits[s][type];
}

// --- names and sizes ---------------------------------------------------------------------------
// These read only the constant part of the table, so they need no initialization.

const char *ac_type_name(uint32_t type) {
  if (type == AC_TYPE_Q2X) return ext_traits(type)->name;
  return type < AC_TYPE_COUNT ? ref_traits[type].name : NULL;
}

int ac_type_from_name(const char *name) {
  if (!name) return -1;
  if (strcasecmp(name, ext_traits(AC_TYPE_Q2X)->name) == 0) return (int)AC_TYPE_Q2X;
  for (int t = 0; t < AC_TYPE_COUNT; t++) {
    const char *tn = ref_traits[t].name;
    if (!tn) continue;
    size_t k = 0;
    while (tn[k] && name[k] && tolower((unsigned char)tn[k]) == tolower((unsigned char)name[k]))
      k++;
    if (!tn[k] && !name[k]) return t;
  }
  return -1;
}

size_t ac_row_size(uint32_t type, int64_t ne0) {
  const ac_type_traits_t *t = ext_traits(type);
  if (!t && (type >= AC_TYPE_COUNT || !ref_traits[type].name)) return 0;
  if (!t) t = &ref_traits[type];
  if (ne0 < 0) return 0;
  if (ne0 % t->blck_size != 0) return 0;
  return (size_t)(ne0 / t->blck_size) * t->type_size;
}

double ac_type_bpw(uint32_t type) {
  const ac_type_traits_t *t = ext_traits(type);
  if (!t && (type >= AC_TYPE_COUNT || !ref_traits[type].name)) return 0;
  if (!t) t = &ref_traits[type];
  return 8.0 * (double)t->type_size / (double)t->blck_size;
}
