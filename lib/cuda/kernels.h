// kernels.h - the GPU kernels of the CUDA engine (lib/cuda/kernels.cu), callable from C.
//
// Every function enqueues its work on `s` and returns at once: 0, or a negative AC_E* code with
// an ac_errmsg() detail when the arguments are wrong or the launch failed. Pointers are device
// memory unless a comment says otherwise. Matrices are row-major: a weight of `nrows` rows of
// `ncols` elements of `type` is stored compactly, row r at w + r * ac_row_size(type, ncols), in
// the block layouts of quant_blocks.h. Dequantization computes each value with exactly the float
// operations of the CPU's to_float_ref (lib/quant.c), so a weight means the same bits here.
//
// Alignment: activation buffers (x of the products, the outputs of the dequantizers) must start
// on 16 bytes; cudaMalloc'ed memory and the scratch offsets of ctx_cuda.c (256 bytes) satisfy it.
#ifndef AC_CUDA_KERNELS_H
#define AC_CUDA_KERNELS_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Most activation rows the matrix-vector kernel takes in one pass over the weight; larger
// batches go through cuBLAS (ac_cuk_matmul).
#define AC_CUK_MATVEC_MAX 8
// Longest attention head the attention kernel takes.
#define AC_CUK_MAX_HEAD_DIM 1024

// Whether weights of `type` have GPU kernels: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and q2x.
int ac_cuk_type_supported(uint32_t type);

// y[j * ldy + r] = dot(weight row r, x[j * ncols ..]) for j < n (1..AC_CUK_MATVEC_MAX) and
// r < nrows: each weight row is read once for the n activation rows, dequantized in registers.
int ac_cuk_matvec(uint32_t type, const void *w, int64_t ncols, int64_t nrows, const float *x,
                  int n, float *y, int64_t ldy, cudaStream_t s);

// out (nrows, ncols), IEEE half = the dequantized weight rounded to nearest even.
int ac_cuk_dequant_f16(uint32_t type, const void *w, int64_t ncols, int64_t nrows,
                       uint16_t *out, cudaStream_t s);

// out (n, ncols), float = weight rows rows[0..n) dequantized (rows NULL: rows 0..n-1). The
// embedding lookup.
int ac_cuk_get_rows(uint32_t type, const void *w, int64_t ncols, const int32_t *rows, int n,
                    float *out, cudaStream_t s);

// y[0..n) = x rounded to half.
int ac_cuk_f32_to_f16(const float *x, uint16_t *y, size_t n, cudaStream_t s);

// What a matrix-matrix product through cuBLAS needs: the handle, and f16 scratch for the
// weight (dequantized wbuf_elems at a time, in whole rows) and for the activations.
typedef struct {
  cublasHandle_t blas;
  uint16_t *wbuf;
  size_t wbuf_elems;
  uint16_t *xbuf;
  size_t xbuf_elems;
} ac_cuk_gemm_t;

// y[j * ldy + r] = dot(weight row r, x row j) for j < n: ac_cuk_matvec when n <= 8; else
// cuBLAS: cublasSgemm for F32 weights, and for every other type cublasGemmEx with f16 inputs
// (the weight dequantized into wbuf unless it is F16, x converted into xbuf) and f32 compute
// and output.
int ac_cuk_matmul(const ac_cuk_gemm_t *g, uint32_t type, const void *w, int64_t ncols,
                  int64_t nrows, const float *x, int n, float *y, int64_t ldy, cudaStream_t s);

// out row i = rmsnorm(x row rows[i]) * w (rows NULL: row i), n rows of ne floats; as model.c's
// rmsnorm: the mean square summed in double, scale = 1/sqrt(mean + eps), out = (x * scale) * w.
int ac_cuk_rmsnorm(const float *x, const int32_t *rows, int n, int ne, const float *w, float eps,
                   float *out, cudaStream_t s);

// cs (n, n_rot): for each row and pair i < n_rot/2 the (cos, sin) of its angle, computed as
// model.c's rope_tables: theta = pos[r] * theta_scale^i by repeated multiplication, divided by
// freqs[i] (NULL: none), times freq_scale.
int ac_cuk_rope_table(const int32_t *pos, int n, int n_rot, float theta_scale, float freq_scale,
                      const float *freqs, float *cs, cudaStream_t s);

// Rotates x (n, n_head * head_dim) in place: the first n_rot dims of each head, pairs (2i, 2i+1)
// (neox 0) or (i, i + n_rot/2) (neox 1), with row r's cs.
int ac_cuk_rope(float *x, int n, int n_head, int head_dim, int n_rot, int neox, const float *cs,
                cudaStream_t s);

// g[i] = g[i] / (1 + exp(-g[i])) * u[i].
int ac_cuk_swiglu(float *g, const float *u, size_t n, cudaStream_t s);

// x[i] += y[i].
int ac_cuk_add(float *x, const float *y, size_t n, cudaStream_t s);

// Writes rows of k and v (n, n_kv * head_dim) into the f16 caches kc and vc, laid out
// (n_seq, n_kv, n_ctx, head_dim): row r goes to sequence seqs[r] at position pos[r].
int ac_cuk_kv_store(const float *k, const float *v, int n, int n_kv, int head_dim,
                    const int32_t *seqs, const int32_t *pos, int n_ctx, uint16_t *kc,
                    uint16_t *vc, cudaStream_t s);

// out (n, n_head * head_dim): causal grouped-query attention of q (n, n_head * head_dim) over
// the caches, positions 0..pos[r] of sequence seqs[r]; query head h reads kv head
// h / (n_head / n_kv). As model.c: q rounded to half, scores scaled by 1/sqrt(head_dim), softmax
// in float with the maximum subtracted, probabilities rounded to half.
int ac_cuk_attention(const float *q, int n, int n_head, int n_kv, int head_dim,
                     const int32_t *seqs, const int32_t *pos, int n_ctx, const uint16_t *kc,
                     const uint16_t *vc, float *out, cudaStream_t s);

// dst (n_out, n_vocab) from the gathered logits src (size, n_out, vocab_pad): rank k's columns
// are vocabulary entries [k * vocab_pad, k * vocab_pad + vocab_pad) (the last rank's clipped at
// n_vocab).
int ac_cuk_scatter_logits(const float *src, int size, int n_out, int vocab_pad, int n_vocab,
                          float *dst, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
