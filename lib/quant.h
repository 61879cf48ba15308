// quant.h - tensor element types (ggml-compatible ids and block layouts) and their kernels.
//
// Every type is described by one row of a traits table: block size, bytes per block, and the
// kernels that convert and multiply it. A matrix-vector product with weights of type T first
// converts the activation row to traits(T)->vec_dot_type (for example Q8_1 for Q4_1 weights,
// F16 for F16 weights, as ggml does), then calls traits(T)->vec_dot on each weight row. A
// matrix-matrix product (prefill) goes through traits(T)->vec_dot_4 where a type has it: tiles of
// 1-2 weight rows by 4 activation rows, with the same results as vec_dot. A matrix-vector product
// (decode) goes through traits(T)->vec_dot_r4 where a type has it: 4 weight rows by the one
// activation row, again with the same results as vec_dot.
//
// Each kernel has a plain C `_ref` version (in the table as *_ref) and, where it pays, SIMD
// versions (AVX2, AVX-512/VNNI) chosen once at run time by ac_quant_init() from the CPU's features.
// The block structs live in quant_blocks.h, shared with the CUDA code.
#ifndef AC_QUANT_H
#define AC_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Ids are ggml's (and GGUF's), so files are interchangeable with llama.cpp.
typedef enum {
  AC_TYPE_F32 = 0,
  AC_TYPE_F16 = 1,
  AC_TYPE_Q4_0 = 2,
  AC_TYPE_Q4_1 = 3,
  AC_TYPE_Q5_0 = 6,
  AC_TYPE_Q5_1 = 7,
  AC_TYPE_Q8_0 = 8,
  AC_TYPE_Q8_1 = 9,
  AC_TYPE_Q2_K = 10,
  AC_TYPE_Q3_K = 11,
  AC_TYPE_Q4_K = 12,
  AC_TYPE_Q5_K = 13,
  AC_TYPE_Q6_K = 14,
  AC_TYPE_Q8_K = 15,
  AC_TYPE_BF16 = 30,
  AC_TYPE_COUNT = 40,  // ids below this are looked up in the table; higher ids are unknown
} ac_type_t;

// y[0..n) = dequantized x; n is a multiple of the block size.
typedef void (*ac_to_float_fn)(const void *restrict x, float *restrict y, int64_t n);
// Quantizes x[0..n) into blocks at y; n is a multiple of the block size.
typedef void (*ac_from_float_fn)(const float *restrict x, void *restrict y, int64_t n);
// *s = dot(x, y) over n elements; x is a row of this type, y a row of vec_dot_type.
typedef void (*ac_vec_dot_fn)(int64_t n, float *restrict s, const void *restrict x,
                              const void *restrict y);
// A tile of a matrix product: nr (1 or 2) rows of this type against 4 rows of vec_dot_type, in
// one pass over the rows, so each block is unpacked once for all the rows that use it:
//   s[j * bs + i] = dot(x_i, y_j),  x_i = (const char *)x + i * bx,  y_j = (const char *)y + j * by
// for i < nr, j < 4. Every s[j * bs + i] is bit-identical to vec_dot(n, ..., x_i, y_j) of the
// same kernel set: the same float operations in the same order, only interleaved.
typedef void (*ac_vec_dot_4_fn)(int64_t n, int nr, float *restrict s, size_t bs,
                                const void *restrict x, size_t bx, const void *restrict y,
                                size_t by);
// Decode (one activation row): 4 consecutive rows of this type against ONE row y of
// vec_dot_type, in one pass over y, so y's blocks are loaded (and their scales converted) once
// for the 4 rows:  s[i] = dot(x_i, y),  x_i = (const char *)x + i * bx,  i < 4.
// Every s[i] is bit-identical to vec_dot(n, &s[i], x_i, y) of the same kernel set: each row keeps
// its vec_dot's float operations in the same order, only the 4 rows are interleaved. (A NaN result
// may be another NaN: x86 propagates NaNs by operand slot, which the compiler picks.)
typedef void (*ac_vec_dot_r4_fn)(int64_t n, float *restrict s, const void *restrict x, size_t bx,
                                 const void *restrict y);

typedef struct {
  const char *name;    // "q4_1", as ggml names it
  int64_t blck_size;   // elements per block (1 for float types)
  size_t type_size;    // bytes per block
  bool is_quantized;
  ac_type_t vec_dot_type;
  // Chosen at run time (SIMD where the CPU has it, else the _ref one); NULL if not available.
  ac_to_float_fn to_float;
  ac_from_float_fn from_float;
  ac_vec_dot_fn vec_dot;
  // Optional (NULL where a type has no faster way than vec_dot per pair): always consistent with
  // vec_dot above, bit for bit.
  ac_vec_dot_4_fn vec_dot_4;
  // Plain C reference versions, for tests.
  ac_to_float_fn to_float_ref;
  ac_from_float_fn from_float_ref;
  ac_vec_dot_fn vec_dot_ref;
  ac_vec_dot_4_fn vec_dot_4_ref;  // vec_dot_ref for each pair of the tile
  // Optional, like vec_dot_4 (NULL where a type gains nothing over vec_dot row by row): 4 weight
  // rows by one activation row, always consistent with vec_dot above, bit for bit.
  ac_vec_dot_r4_fn vec_dot_r4;
  ac_vec_dot_r4_fn vec_dot_r4_ref;  // vec_dot_ref on each of the 4 rows
} ac_type_traits_t;

// Selects the SIMD kernels for this CPU. Idempotent and thread-safe; every other function here
// calls it on first use. The environment variable AC_SIMD=ref|avx2|avx512 caps the choice.
void ac_quant_init(void);
// "avx512", "avx2" or "ref": the kernel set in use.
const char *ac_simd_name(void);

// NULL if `type` is not a type we know.
const ac_type_traits_t *ac_type_traits(uint32_t type);
// Name of a type id, or NULL.
const char *ac_type_name(uint32_t type);
// Parses "q4_k"/"Q4_K"/"f16"...; returns the id or -1.
int ac_type_from_name(const char *name);
// Bytes of a row of ne0 elements (ne0 a multiple of the block size), 0 if not.
size_t ac_row_size(uint32_t type, int64_t ne0);
// Bits per weight of a type (e.g. 4.5 for Q4_0).
double ac_type_bpw(uint32_t type);

// Scalar conversions (IEEE half and bfloat16), round-to-nearest-even.
float ac_f16_to_f32(uint16_t h);
uint16_t ac_f32_to_f16(float f);
float ac_bf16_to_f32(uint16_t h);
uint16_t ac_f32_to_bf16(float f);

#endif
