// quant_make.h - weight quantizers that search for the smallest error (used by `acq quantize`).
//
// The from_float kernels in quant.c are fast and simple: they round against one scale derived
// from the block's extremes, as ggml's reference quantizers do. That is right for activations,
// which are quantized on every token, but weights are quantized once, so here each block gets a
// search instead: several candidate scales (and minimums) per block or sub-block, each refined by
// least squares and by alternating "round the levels / refit the scale" steps, and for K-quants
// the second level too (the 4-, 6- or 8-bit sub-block scales against the super-block's half
// scale), chosen by the squared error of the values as they will dequantize. Every candidate is
// judged by plain squared error, the quantity the RMSE comparisons measure.
//
// The blocks are ggml's layouts (quant_blocks.h) byte for byte, so any reader of those types
// (our to_float kernels, llama.cpp, the gguf package) dequantizes them; only the choice of values
// differs from the reference quantizers.
#ifndef AC_QUANT_MAKE_H
#define AC_QUANT_MAKE_H

#include <stdbool.h>
#include <stdint.h>

// Quantizes x[0..n) into the blocks of `type` at y, choosing each block to minimize squared
// error. Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, q2x (AC_TYPE_Q2X),
// and the float types F32, F16, BF16 (converted with round-to-nearest-even). n must be a
// multiple of the type's block size. Thread-safe (no shared state). Returns 0, AC_EINVAL for a
// bad n, or AC_EUNSUPPORTED for a type it cannot write.
int ac_quantize_row_best(uint32_t type, const float *x, void *y, int64_t n);

// Whether ac_quantize_row_best writes `type`.
bool ac_quantize_best_supported(uint32_t type);

// --- building blocks, shared with quant_q2x.c --------------------------------------------------

// Fits x[0..n) ~ d * L + m with integer levels L in [0, nmax] (n 8, 16, 24 or 32), minimizing the
// squared error in float arithmetic (the caller rounds d and m to the precision it stores). With
// `offset_le_zero`, m is kept <= 0 and d >= 0, as the K-quants' "scale * q - min" needs.
// Fills L and returns the squared error of the fit.
float ac__fit_affine(int n, const float *x, int nmax, bool offset_le_zero, float *d, float *m,
                     uint8_t *L);

// A whole 32-element-style block stored as half d and half m (Q4_1, Q5_1, q2x): the search
// above, and ggml's min/max rounding as a second candidate, each with d and m rounded to half and
// the levels requantized against the stored values; the one with the smaller error is kept.
// Returns its squared error; d16 / m16 receive the half bits and L the levels.
float ac__affine_block_best(int n, const float *x, int nmax, uint16_t *d16, uint16_t *m16,
                            uint8_t *L);

#endif
