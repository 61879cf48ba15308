// quant_impl.h - internals of the quant module, shared by quant.c, the SIMD kernel files
// (quant_avx2.c, quant_avx512.c) and tests/test_quant.c. Not part of the public interface.
//
// How the kernel sets fit together: quant.c owns one traits table per kernel set (ref, avx2,
// avx512), each indexed by type id. It fills every table with the _ref kernels, then hands the
// avx2 and avx512 tables to the install functions below, which overwrite the kernels they have
// faster versions of. ac_quant_init() then points the public table at the best set this CPU runs
// (capped by AC_SIMD). Tests reach every set through ac__quant_traits_for(), so each SIMD kernel
// is checked against _ref even on a machine where a wider set is the one in use.
#ifndef AC_QUANT_IMPL_H
#define AC_QUANT_IMPL_H

#include <string.h>

#include "quant.h"
#include "quant_blocks.h"

// Kernel sets, in increasing order of preference.
typedef enum {
  AC__SIMD_REF = 0,
  AC__SIMD_AVX2 = 1,
  AC__SIMD_AVX512 = 2,
  AC__SIMD_COUNT = 3,
} ac__simd_t;

// Fill in the kernels each SIMD file has. `tab` has AC_TYPE_COUNT rows, prefilled with the ref
// kernels; only to_float / from_float / vec_dot / vec_dot_4 / vec_dot_r4 of known types are
// touched. A set that installs a vec_dot_4 or vec_dot_r4 installs it with its vec_dot (and a set
// that replaces a vec_dot another set installed replaces that set's vec_dot_4 / vec_dot_r4 too);
// quant.c drops the reference tile and decode kernel of a type whose vec_dot was replaced without
// them.
void ac__quant_avx2_install(ac_type_traits_t *tab);
void ac__quant_avx512_install(ac_type_traits_t *tab);

// The traits of `type` as kernel set `simd` ("ref", "avx2", "avx512") has them, or NULL if the
// type is unknown, the name is unknown, or this CPU cannot run that set.
const ac_type_traits_t *ac__quant_traits_for(const char *simd, uint32_t type);

// Some SIMD kernels assume what our activation quantizers guarantee: Q8_0, Q8_1 and Q8_K values
// lie in [-127, 127] (never -128). Weights may use the full int8 range.
#define AC__Q8_ACT_MIN (-127)

// --- small helpers shared by the scalar and SIMD kernels ---------------------------------------

// Reads a little-endian uint32 from possibly unaligned bytes.
static inline uint32_t ac__load_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

// Q4_K / Q5_K: sub-block j's 6-bit scale and minimum from the 12 packed bytes. Bytes 0..3 hold the
// low 6 bits of scales 0..3, bytes 4..7 those of mins 0..3, bytes 8..11 the low nibbles of scales
// 4..7 and mins 4..7 (in their low and high halves); the top 2 bits of each byte 0..7 are the high
// bits of scales and mins 4..7.
static inline void ac__get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// The inverse: packs 8 six-bit scales and mins into Q4_K / Q5_K's 12 bytes.
static inline void ac__pack_scale_min_k4(const uint8_t sc[8], const uint8_t m[8], uint8_t *q) {
  memset(q, 0, 12);
  for (int j = 0; j < 8; j++) {
    if (j < 4) {
      q[j] |= sc[j];
      q[j + 4] |= m[j];
    } else {
      q[j + 4] = (uint8_t)((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      q[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
      q[j] |= (uint8_t)((m[j] >> 4) << 6);
    }
  }
}

// The same for all 8 sub-blocks at once, with 32-bit operations: w[0] = scales 0-3, w[1] =
// scales 4-7, w[2] = mins 0-3, w[3] = mins 4-7, one byte each (little-endian order).
static inline void ac__k4_scales_mins(const uint8_t *q, uint32_t w[4]) {
  const uint32_t a = ac__load_u32(q), b = ac__load_u32(q + 4), c = ac__load_u32(q + 8);
  w[0] = a & 0x3F3F3F3Fu;
  w[1] = (c & 0x0F0F0F0Fu) | (((a >> 6) & 0x03030303u) << 4);
  w[2] = b & 0x3F3F3F3Fu;
  w[3] = ((c >> 4) & 0x0F0F0F0Fu) | (((b >> 6) & 0x03030303u) << 4);
}

// Q3_K: the 16 6-bit scales, still offset by 32 (0..63), with 32-bit operations: byte k of w[j]
// is scale 4j + k. Scale i's low 4 bits are the low nibble of byte i (i < 8) or the high nibble
// of byte i-8; its high 2 bits sit in byte 8 + i%4 at bit 2*(i/4).
static inline void ac__q3_k_scales_biased(const uint8_t *p, uint32_t w[4]) {
  const uint32_t a = ac__load_u32(p), b = ac__load_u32(p + 4), c = ac__load_u32(p + 8);
  const uint32_t m4 = 0x0F0F0F0Fu, m2 = 0x03030303u;
  w[0] = (a & m4) | ((c & m2) << 4);
  w[1] = (b & m4) | (((c >> 2) & m2) << 4);
  w[2] = ((a >> 4) & m4) | (((c >> 4) & m2) << 4);
  w[3] = ((b >> 4) & m4) | (((c >> 6) & m2) << 4);
}

// The same as signed scales (-32..31).
static inline void ac__q3_k_scales(const uint8_t *p, int8_t out[16]) {
  uint32_t w[4];
  ac__q3_k_scales_biased(p, w);
  for (int i = 0; i < 16; i++) out[i] = (int8_t)((int)((w[i / 4] >> (8 * (i % 4))) & 0xFF) - 32);
}

#endif
