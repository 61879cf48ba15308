// quant_q2x.h - "q2x": agentcompress's 2-bit weight type for rows that K-quants cannot take.
//
// Why it exists: ggml's only 2-bit type, Q2_K, packs 256 values per super-block, so it cannot
// quantize a row of 576 elements (SmolLM2's hidden size). llama.cpp then silently writes a 4-bit
// type instead, and an "INT2" model ends up at ~4.5 bits per weight. q2x is a 2-bit type with
// 32-element blocks, which fits every row length that the 32-element ggml types fit.
//
// Block layout (12 bytes per 32 weights = 3.0 bits per weight), little-endian:
//
//   offset 0   uint16 d      scale, IEEE half
//   offset 2   uint16 m      minimum, IEEE half
//   offset 4   uint8  qs[8]  2-bit codes: byte k holds values k, k+8, k+16, k+24 at bit shifts
//                            0, 2, 4, 6 (so one 64-bit load and four shifts unpack a block)
//
//   x[j] = (float)q[j] * d + m,  q[j] in 0..3   (the float operations of ggml's Q4_1)
//
// Why affine (d and m) rather than a symmetric 10-byte block (d only, 2.5 bpw): with four levels
// a symmetric grid spends one on the sign asymmetry and cannot follow a block whose values are
// off-centre. On SmolLM2-135M's weights (blocks of 32 from attention and FFN matrices) the
// error-minimizing fits give relative RMSE 0.305 for this layout against 0.341 for {-2,-1,0,1}*d
// and 0.364 for {-1.5,-0.5,0.5,1.5}*d; on ffn_down, where Q2_K fits, llama.cpp's Q2_K (2.625 bpw)
// measures 0.302. So q2x stands in for Q2_K at Q2_K's quality, and the zoo reports its true 3.0
// bits per weight rather than claiming Q2_K's.
//
// Dot products take activations as Q8_1 (as Q4_1 does): per block
//   dot = d_x * d_y * sum(q_x * q_y) + m_x * s_y,  s_y = d_y * sum(q_y).
//
// GGUF: tensors of this type carry ggml type id 1000 (AC_TYPE_Q2X), far from ggml's own ids so it
// will not collide with a future ggml type. It is our extension: llama.cpp and the gguf Python
// package refuse files that contain it, and `acq info` says so.
#ifndef AC_QUANT_Q2X_H
#define AC_QUANT_Q2X_H

#include <assert.h>
#include <stdint.h>

#include "quant.h"

#define AC_TYPE_Q2X 1000u
#define AC_QK2X 32

typedef struct {
  uint16_t d;                // scale, half
  uint16_t m;                // minimum, half
  uint8_t qs[AC_QK2X / 4];   // 2-bit codes, layout above
} ac_block_q2x;
static_assert(sizeof(ac_block_q2x) == 4 + AC_QK2X / 4, "wrong q2x block size");

// The traits row of q2x: name "q2x", 32-element blocks of 12 bytes, vec_dot_type Q8_1, and the
// kernels. to_float / vec_dot / vec_dot_4 are the fastest this CPU runs within the kernel set
// ac_simd_name() reports (so AC_SIMD=ref gives the _ref kernels); the *_ref fields are the plain
// C versions. to_float is bit-identical in every set; the AVX2 vec_dot sums in vector lanes and
// rounds differently from the reference (vec_dot_4 is bit-identical to its set's vec_dot, as
// quant.h requires). from_float is the error-minimizing quantizer of
// quant_make.c in both fields: q2x is a weight type, quantized once. The pointer is to a static
// table, valid for the life of the program.
const ac_type_traits_t *ac__q2x_traits(void);

// The same row with the kernels of one set ("ref", "avx2", or "avx512", which has no kernels of
// its own and gives the AVX2 ones), or NULL if this CPU cannot run AVX2 for the SIMD names. For
// tests that compare the SIMD kernels with the _ref ones.
const ac_type_traits_t *ac__q2x_traits_for(const char *simd);

#endif
