// quant_blocks.h - the byte layout of every quantized block, shared by the C and CUDA kernels.
//
// These are ggml's block layouts, field for field, so a tensor's bytes mean the same thing here,
// in llama.cpp and in the `gguf` Python package. Halves (IEEE binary16) are kept as raw uint16_t
// bits; the kernels convert them. Every struct is plain data with a size check, so it can be
// included from C11, C++ and CUDA alike.
//
// Two block sizes exist: the "legacy" types pack 32 values per block with one or two scales, and
// the K-quants pack 256 values (a super-block) split into 16 or 8 sub-blocks whose own small
// scales are quantized against the super-block's half-precision scale.
#ifndef AC_QUANT_BLOCKS_H
#define AC_QUANT_BLOCKS_H

#include <assert.h>  // static_assert (a keyword in C++ and CUDA)
#include <stdint.h>

#define AC_QK4_0 32
#define AC_QK4_1 32
#define AC_QK5_0 32
#define AC_QK5_1 32
#define AC_QK8_0 32
#define AC_QK8_1 32
#define AC_QK_K 256
#define AC_K_SCALE_SIZE 12  // bytes of packed 6-bit scales and mins in Q4_K / Q5_K

// --- 32-value blocks ---------------------------------------------------------------------------

// x[j] = d * (q[j] - 8). qs[j] holds value j in its low nibble and value j+16 in its high nibble.
typedef struct {
  uint16_t d;                // scale, half
  uint8_t qs[AC_QK4_0 / 2];  // nibbles
} ac_block_q4_0;
static_assert(sizeof(ac_block_q4_0) == 2 + AC_QK4_0 / 2, "wrong q4_0 block size");

// x[j] = d * q[j] + m, nibbles as in Q4_0.
typedef struct {
  uint16_t d;  // scale, half
  uint16_t m;  // minimum, half
  uint8_t qs[AC_QK4_1 / 2];
} ac_block_q4_1;
static_assert(sizeof(ac_block_q4_1) == 4 + AC_QK4_1 / 2, "wrong q4_1 block size");

// x[j] = d * (q[j] - 16) with a 5-bit q: the low 4 bits as in Q4_0, bit 4 of value j is bit j of
// qh read as a little-endian uint32.
typedef struct {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[AC_QK5_0 / 2];
} ac_block_q5_0;
static_assert(sizeof(ac_block_q5_0) == 2 + 4 + AC_QK5_0 / 2, "wrong q5_0 block size");

// x[j] = d * q[j] + m with q as in Q5_0.
typedef struct {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[AC_QK5_1 / 2];
} ac_block_q5_1;
static_assert(sizeof(ac_block_q5_1) == 4 + 4 + AC_QK5_1 / 2, "wrong q5_1 block size");

// x[j] = d * qs[j].
typedef struct {
  uint16_t d;
  int8_t qs[AC_QK8_0];
} ac_block_q8_0;
static_assert(sizeof(ac_block_q8_0) == 2 + AC_QK8_0, "wrong q8_0 block size");

// Q8_0 plus s = d * sum(qs), which lets a dot product with Q4_1 / Q5_1 add the weights' minimum
// without a second pass. Used for activations only.
typedef struct {
  uint16_t d;
  uint16_t s;
  int8_t qs[AC_QK8_1];
} ac_block_q8_1;
static_assert(sizeof(ac_block_q8_1) == 4 + AC_QK8_1, "wrong q8_1 block size");

// --- 256-value super-blocks (K-quants) ---------------------------------------------------------

// 2 bits per value, 16 sub-blocks of 16. scales[i] holds sub-block i's scale (low nibble) and
// minimum (high nibble): x = d * (scales & 15) * q - dmin * (scales >> 4). qs packs four 32-value
// runs per 32 bytes at bit shifts 0, 2, 4, 6.
typedef struct {
  uint8_t scales[AC_QK_K / 16];
  uint8_t qs[AC_QK_K / 4];
  uint16_t d;     // super-block scale for the quantized scales, half
  uint16_t dmin;  // super-block scale for the quantized minimums, half
} ac_block_q2_K;
static_assert(sizeof(ac_block_q2_K) == 2 * 2 + AC_QK_K / 16 + AC_QK_K / 4, "wrong q2_K block size");

// 3 bits per value: the low 2 bits laid out as in Q2_K, the high bit in hmask; a clear high bit
// means "subtract 4". 16 sub-blocks of 16 with 6-bit signed scales (stored +32) in 12 bytes.
typedef struct {
  uint8_t hmask[AC_QK_K / 8];
  uint8_t qs[AC_QK_K / 4];
  uint8_t scales[12];
  uint16_t d;
} ac_block_q3_K;
static_assert(sizeof(ac_block_q3_K) == 2 + AC_QK_K / 4 + AC_QK_K / 8 + 12, "wrong q3_K block size");

// 4 bits per value, 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit minimum packed in
// 12 bytes: x = d * sc * q - dmin * m.
typedef struct {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[AC_K_SCALE_SIZE];
  uint8_t qs[AC_QK_K / 2];
} ac_block_q4_K;
static_assert(sizeof(ac_block_q4_K) == 2 * 2 + AC_K_SCALE_SIZE + AC_QK_K / 2,
              "wrong q4_K block size");

// Q4_K with a fifth bit per value in qh.
typedef struct {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[AC_K_SCALE_SIZE];
  uint8_t qh[AC_QK_K / 8];
  uint8_t qs[AC_QK_K / 2];
} ac_block_q5_K;
static_assert(sizeof(ac_block_q5_K) == 2 * 2 + AC_K_SCALE_SIZE + AC_QK_K / 2 + AC_QK_K / 8,
              "wrong q5_K block size");

// 6 bits per value (low 4 in ql, high 2 in qh), 16 sub-blocks of 16 with int8 scales:
// x = d * scales[i] * (q - 32).
typedef struct {
  uint8_t ql[AC_QK_K / 2];
  uint8_t qh[AC_QK_K / 4];
  int8_t scales[AC_QK_K / 16];
  uint16_t d;
} ac_block_q6_K;
static_assert(sizeof(ac_block_q6_K) == 2 + AC_QK_K / 16 + 3 * AC_QK_K / 4, "wrong q6_K block size");

// Activations for the K-quant dot products: a float scale, 256 int8 values and the sums of each
// group of 16 values, which the K-quants need to apply their minimums and offsets.
typedef struct {
  float d;
  int8_t qs[AC_QK_K];
  int16_t bsums[AC_QK_K / 16];
} ac_block_q8_K;
static_assert(sizeof(ac_block_q8_K) == 4 + AC_QK_K + AC_QK_K / 16 * 2, "wrong q8_K block size");

#endif
