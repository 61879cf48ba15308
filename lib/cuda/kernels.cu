// kernels.cu - the GPU kernels of the CUDA engine: dequantizing matrix-vector products, the
// dequantize-to-f16 + cuBLAS path for batches, RMSNorm, RoPE, SwiGLU, the KV cache and attention.
//
// Dequantization goes 8 consecutive values at a time: every block size is a multiple of 8, and 8
// values of one block always share their scales. Each type's `load` computes a value with the
// float operations of its to_float_ref in lib/quant.c, in the same order, through the _rn
// intrinsics so that nvcc cannot contract a multiply and an add into an FMA: a weight
// dequantizes to the same bits on the CPU and here. Where model.c's arithmetic matters for
// agreement (RMSNorm, RoPE, SwiGLU) the same care is taken; the dot products accumulate in float
// with FMAs.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

// quant.h is C11 (`restrict` in its prototypes); nothing of it is defined here.
#define restrict __restrict__
extern "C" {
#include "error.h"
#include "quant.h"
#include "quant_q2x.h"
}
#undef restrict

#include "kernels.h"
#include "quant_blocks.h"

namespace {

// --- small helpers ---------------------------------------------------------------------------

__device__ __forceinline__ float f16f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float round_f16(float v) { return __half2float(__float2half_rn(v)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

int launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return ac_error(AC_EIO, "CUDA kernel %s: %s", what, cudaGetErrorString(e));
  return 0;
}

// Blocks for a grid-stride loop over `total` items.
unsigned grid_for(int64_t total, int threads) {
  int64_t b = (total + threads - 1) / threads;
  return (unsigned)(b < (1 << 20) ? (b > 0 ? b : 1) : (1 << 20));
}

const char *tname(uint32_t type) {
  const char *n = ac_type_name(type);
  return n ? n : "unknown";
}

// --- dequantization: load(block, c, v) sets v[0..8) to values [8c, 8c + 8) of one block --------
// QK: values per block; BYTES: bytes per block; ELEM: false (the element-wise kernels take the
// float types whose rows are not a multiple of 8 long).

struct DeqF32 {
  static constexpr int QK = 8, BYTES = 32;
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int, float v[8]) {
    const float4 p = ((const float4 *)b)[0], q = ((const float4 *)b)[1];
    v[0] = p.x, v[1] = p.y, v[2] = p.z, v[3] = p.w, v[4] = q.x, v[5] = q.y, v[6] = q.z, v[7] = q.w;
  }
};

struct DeqF16 {
  static constexpr int QK = 8, BYTES = 16;
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int, float v[8]) {
    const uint4 u = *(const uint4 *)b;
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[2 * k] = f16f((uint16_t)(w[k] & 0xFFFFu));
      v[2 * k + 1] = f16f((uint16_t)(w[k] >> 16));
    }
  }
};

struct DeqBF16 {
  static constexpr int QK = 8, BYTES = 16;
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int, float v[8]) {
    const uint4 u = *(const uint4 *)b;
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[2 * k] = __uint_as_float(w[k] << 16);
      v[2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
    }
  }
};

// x = (q - 8) * d; byte j holds value j (low nibble) and j + 16 (high nibble).
struct DeqQ4_0 {
  static constexpr int QK = AC_QK4_0, BYTES = sizeof(ac_block_q4_0);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q4_0 *x = (const ac_block_q4_0 *)b;
    const float d = f16f(x->d);
    const int j0 = (c & 1) * 8, sh = (c >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = mul((float)(((x->qs[j0 + i] >> sh) & 0xF) - 8), d);
  }
};

// x = q * d + m.
struct DeqQ4_1 {
  static constexpr int QK = AC_QK4_1, BYTES = sizeof(ac_block_q4_1);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q4_1 *x = (const ac_block_q4_1 *)b;
    const float d = f16f(x->d), m = f16f(x->m);
    const int j0 = (c & 1) * 8, sh = (c >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = add(mul((float)((x->qs[j0 + i] >> sh) & 0xF), d), m);
  }
};

__device__ __forceinline__ uint32_t load_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Q4_0's nibbles plus bit j of qh as bit 4 of value j; x = (q - 16) * d.
struct DeqQ5_0 {
  static constexpr int QK = AC_QK5_0, BYTES = sizeof(ac_block_q5_0);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q5_0 *x = (const ac_block_q5_0 *)b;
    const float d = f16f(x->d);
    const uint32_t qh = load_u32(x->qh);
    const int j0 = (c & 1) * 8, sh = (c >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int q = (int)(((x->qs[j0 + i] >> sh) & 0xF) | (((qh >> (8 * c + i)) & 1) << 4)) - 16;
      v[i] = mul((float)q, d);
    }
  }
};

// x = q * d + m with Q5_0's 5-bit q.
struct DeqQ5_1 {
  static constexpr int QK = AC_QK5_1, BYTES = sizeof(ac_block_q5_1);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q5_1 *x = (const ac_block_q5_1 *)b;
    const float d = f16f(x->d), m = f16f(x->m);
    const uint32_t qh = load_u32(x->qh);
    const int j0 = (c & 1) * 8, sh = (c >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const uint32_t q = ((x->qs[j0 + i] >> sh) & 0xF) | (((qh >> (8 * c + i)) & 1) << 4);
      v[i] = add(mul((float)q, d), m);
    }
  }
};

struct DeqQ8_0 {
  static constexpr int QK = AC_QK8_0, BYTES = sizeof(ac_block_q8_0);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q8_0 *x = (const ac_block_q8_0 *)b;
    const float d = f16f(x->d);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = mul((float)x->qs[8 * c + i], d);
  }
};

// q2x (quant_q2x.h): byte k holds values k, k+8, k+16, k+24 at shifts 0, 2, 4, 6; x = q * d + m.
struct DeqQ2X {
  static constexpr int QK = AC_QK2X, BYTES = sizeof(ac_block_q2x);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q2x *x = (const ac_block_q2x *)b;
    const float d = f16f(x->d), m = f16f(x->m);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = add(mul((float)((x->qs[i] >> (2 * c)) & 3), d), m);
  }
};

// Value j of a K-quant super-block: half h = j / 128 of the 2-bit codes, shift sh = (j / 32) % 4,
// byte l = j % 32 of that half; sub-block g = j / 16.
struct DeqQ2_K {
  static constexpr int QK = AC_QK_K, BYTES = sizeof(ac_block_q2_K);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q2_K *x = (const ac_block_q2_K *)b;
    const int j0 = 8 * c, h = j0 >> 7, sh = (j0 >> 5) & 3, l0 = j0 & 31, g = j0 >> 4;
    const uint8_t sc = x->scales[g];
    const float dl = mul(f16f(x->d), (float)(sc & 0xF)), ml = mul(f16f(x->dmin), (float)(sc >> 4));
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int q = (x->qs[32 * h + l0 + i] >> (2 * sh)) & 3;
      v[i] = sub(mul(dl, (float)q), ml);
    }
  }
};

// Q2_K's low bits, a clear hmask bit subtracts 4; signed 6-bit scales (stored + 32): the low 4
// bits in byte g (g < 8) or the high nibble of byte g - 8, the high 2 bits in byte 8 + g % 4 at
// bit 2 * (g / 4).
struct DeqQ3_K {
  static constexpr int QK = AC_QK_K, BYTES = sizeof(ac_block_q3_K);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q3_K *x = (const ac_block_q3_K *)b;
    const int j0 = 8 * c, h = j0 >> 7, sh = (j0 >> 5) & 3, l0 = j0 & 31, g = j0 >> 4;
    const int lo4 = g < 8 ? (x->scales[g] & 0xF) : (x->scales[g - 8] >> 4);
    const int hi2 = (x->scales[8 + (g & 3)] >> (2 * (g >> 2))) & 3;
    const float dl = mul(f16f(x->d), (float)((lo4 | (hi2 << 4)) - 32));
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int l = l0 + i;
      const int lo = (x->qs[32 * h + l] >> (2 * sh)) & 3;
      const int hb = (x->hmask[l] >> (4 * h + sh)) & 1;
      v[i] = mul(dl, (float)(lo - (hb ? 0 : 4)));
    }
  }
};

// Q4_K / Q5_K sub-block s's 6-bit scale and minimum (ac__get_scale_min_k4 of quant_impl.h).
__device__ __forceinline__ void scale_min_k4(int s, const uint8_t *q, int *sc, int *m) {
  if (s < 4) {
    *sc = q[s] & 63;
    *m = q[s + 4] & 63;
  } else {
    *sc = (q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4);
    *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}

// Value j: sub-block s = j / 32, byte 32 * (s / 2) + j % 32, low nibble for even s, high for
// odd; Q5_K's fifth bit is bit s of qh[j % 32]. x = d * sc * q - dmin * m.
template <bool FIVE>
struct DeqQK_affine {
  static constexpr int QK = AC_QK_K, BYTES = FIVE ? sizeof(ac_block_q5_K) : sizeof(ac_block_q4_K);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    uint16_t hd, hdmin;
    const uint8_t *scales, *qs, *qh = nullptr;
    if (FIVE) {
      const ac_block_q5_K *x = (const ac_block_q5_K *)b;
      hd = x->d, hdmin = x->dmin, scales = x->scales, qs = x->qs, qh = x->qh;
    } else {
      const ac_block_q4_K *x = (const ac_block_q4_K *)b;
      hd = x->d, hdmin = x->dmin, scales = x->scales, qs = x->qs;
    }
    const int j0 = 8 * c, s = j0 >> 5, l0 = j0 & 31;
    int sc, m;
    scale_min_k4(s, scales, &sc, &m);
    const float d1 = mul(f16f(hd), (float)sc), m1 = mul(f16f(hdmin), (float)m);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int l = l0 + i;
      int q = (qs[32 * (s >> 1) + l] >> (4 * (s & 1))) & 0xF;
      if (FIVE) q |= ((qh[l] >> s) & 1) << 4;
      v[i] = sub(mul(d1, (float)q), m1);
    }
  }
};

// Value j: half h = j / 128, quarter k = (j / 32) % 4, l = j % 32: low 4 bits from
// ql[64h + l + 32 (k odd)] (high nibble for k >= 2), high 2 bits from qh[32h + l] at bit 2k;
// x = d * scales[j / 16] * (q - 32).
struct DeqQ6_K {
  static constexpr int QK = AC_QK_K, BYTES = sizeof(ac_block_q6_K);
  static constexpr bool ELEM = false;
  static __device__ __forceinline__ void load(const uint8_t *b, int c, float v[8]) {
    const ac_block_q6_K *x = (const ac_block_q6_K *)b;
    const int j0 = 8 * c, h = j0 >> 7, k = (j0 >> 5) & 3, l0 = j0 & 31, g = j0 >> 4;
    const uint8_t *ql = x->ql + 64 * h + 32 * (k & 1), *qh = x->qh + 32 * h;
    const int shl = 4 * (k >> 1);
    const float dl = mul(f16f(x->d), (float)x->scales[g]);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int l = l0 + i;
      const int q = (int)(((ql[l] >> shl) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
      v[i] = mul(dl, (float)q);
    }
  }
};

// Float types one element at a time, for rows of any length.
struct ElemF32 {
  static constexpr int QK = 1;
  static constexpr bool ELEM = true;
  static __device__ __forceinline__ float get(const uint8_t *row, int64_t i) { return ((const float *)row)[i]; }
};
struct ElemF16 {
  static constexpr int QK = 1;
  static constexpr bool ELEM = true;
  static __device__ __forceinline__ float get(const uint8_t *row, int64_t i) { return f16f(((const uint16_t *)row)[i]); }
};
struct ElemBF16 {
  static constexpr int QK = 1;
  static constexpr bool ELEM = true;
  static __device__ __forceinline__ float get(const uint8_t *row, int64_t i) {
    return __uint_as_float((uint32_t)((const uint16_t *)row)[i] << 16);
  }
};

// Calls f(D{}) with the loader of `type` (an Elem one for float rows not a multiple of 8 long).
template <class F>
int dispatch(uint32_t type, int64_t ncols, F &&f) {
  const bool by8 = ncols % 8 == 0;
  switch (type) {
    case AC_TYPE_F32: return by8 ? f(DeqF32{}) : f(ElemF32{});
    case AC_TYPE_F16: return by8 ? f(DeqF16{}) : f(ElemF16{});
    case AC_TYPE_BF16: return by8 ? f(DeqBF16{}) : f(ElemBF16{});
    case AC_TYPE_Q4_0: return f(DeqQ4_0{});
    case AC_TYPE_Q4_1: return f(DeqQ4_1{});
    case AC_TYPE_Q5_0: return f(DeqQ5_0{});
    case AC_TYPE_Q5_1: return f(DeqQ5_1{});
    case AC_TYPE_Q8_0: return f(DeqQ8_0{});
    case AC_TYPE_Q2_K: return f(DeqQ2_K{});
    case AC_TYPE_Q3_K: return f(DeqQ3_K{});
    case AC_TYPE_Q4_K: return f(DeqQK_affine<false>{});
    case AC_TYPE_Q5_K: return f(DeqQK_affine<true>{});
    case AC_TYPE_Q6_K: return f(DeqQ6_K{});
    case AC_TYPE_Q2X: return f(DeqQ2X{});
    default: return ac_error(AC_EUNSUPPORTED, "type %s (%u) has no GPU kernels", tname(type), type);
  }
}

template <class D>
int check_cols(uint32_t type, int64_t ncols) {
  if (ncols <= 0 || ncols % D::QK)
    return ac_error(AC_EINVAL, "a %s row of %lld elements is not whole blocks of %d", tname(type),
                    (long long)ncols, D::QK);
  return 0;
}

// --- matrix-vector products -------------------------------------------------------------------
// One warp per weight row (MV_WARPS rows per block); the lanes take consecutive groups of 8
// values, dequantize them once and multiply them with each of the n activation rows.

constexpr int MV_WARPS = 8;

template <class D>
__global__ void __launch_bounds__(MV_WARPS * 32)
k_matvec(const uint8_t *__restrict__ w, size_t rb, int64_t nrows, int64_t nchunks,
         const float *__restrict__ x, int64_t ldx, int n, float *__restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
  if (r >= nrows) return;  // the whole warp
  const uint8_t *row = w + r * rb;
  constexpr int CPB = D::QK / 8;
  float acc[AC_CUK_MATVEC_MAX];
#pragma unroll
  for (int j = 0; j < AC_CUK_MATVEC_MAX; j++) acc[j] = 0.0f;
  for (int64_t c = lane; c < nchunks; c += 32) {
    float v[8];
    D::load(row + (c / CPB) * D::BYTES, (int)(c % CPB), v);
#pragma unroll
    for (int j = 0; j < AC_CUK_MATVEC_MAX; j++) {
      if (j < n) {
        const float4 *xp = (const float4 *)(x + j * ldx + c * 8);
        const float4 a = xp[0], b = xp[1];
        float s = acc[j];
        s = fmaf(v[0], a.x, s);
        s = fmaf(v[1], a.y, s);
        s = fmaf(v[2], a.z, s);
        s = fmaf(v[3], a.w, s);
        s = fmaf(v[4], b.x, s);
        s = fmaf(v[5], b.y, s);
        s = fmaf(v[6], b.z, s);
        s = fmaf(v[7], b.w, s);
        acc[j] = s;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < AC_CUK_MATVEC_MAX; j++) {
    if (j < n) {
      const float s = warp_sum(acc[j]);
      if (lane == 0) y[j * ldy + r] = s;
    }
  }
}

template <class D>
__global__ void __launch_bounds__(MV_WARPS * 32)
k_matvec_elem(const uint8_t *__restrict__ w, size_t rb, int64_t nrows, int64_t ncols,
              const float *__restrict__ x, int64_t ldx, int n, float *__restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
  if (r >= nrows) return;
  const uint8_t *row = w + r * rb;
  float acc[AC_CUK_MATVEC_MAX];
#pragma unroll
  for (int j = 0; j < AC_CUK_MATVEC_MAX; j++) acc[j] = 0.0f;
  for (int64_t i = lane; i < ncols; i += 32) {
    const float v = D::get(row, i);
#pragma unroll
    for (int j = 0; j < AC_CUK_MATVEC_MAX; j++)
      if (j < n) acc[j] = fmaf(v, x[j * ldx + i], acc[j]);
  }
#pragma unroll
  for (int j = 0; j < AC_CUK_MATVEC_MAX; j++) {
    if (j < n) {
      const float s = warp_sum(acc[j]);
      if (lane == 0) y[j * ldy + r] = s;
    }
  }
}

// --- dequantizing whole rows --------------------------------------------------------------------
// One thread per 8 values (or per value for the element-wise loaders), in a grid-stride loop.

template <class D, bool HALF>
__global__ void k_dequant(const uint8_t *__restrict__ w, size_t rb, int64_t nchunks,
                          const int32_t *__restrict__ rows, int64_t total, int64_t ncols, void *out) {
  constexpr int CPB = D::QK / 8;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = idx / nchunks, c = idx % nchunks;
    const int64_t src = rows ? rows[r] : r;
    float v[8];
    D::load(w + src * rb + (c / CPB) * D::BYTES, (int)(c % CPB), v);
    if (HALF) {
      __half2 *o = (__half2 *)((__half *)out + r * ncols + c * 8);
#pragma unroll
      for (int k = 0; k < 4; k++) o[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
    } else {
      float4 *o = (float4 *)((float *)out + r * ncols + c * 8);
      o[0] = make_float4(v[0], v[1], v[2], v[3]);
      o[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  }
}

template <class D, bool HALF>
__global__ void k_dequant_elem(const uint8_t *__restrict__ w, size_t rb,
                               const int32_t *__restrict__ rows, int64_t total, int64_t ncols,
                               void *out) {
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = idx / ncols, i = idx % ncols;
    const int64_t src = rows ? rows[r] : r;
    const float v = D::get(w + src * rb, i);
    if (HALF) ((__half *)out)[idx] = __float2half_rn(v);
    else ((float *)out)[idx] = v;
  }
}

template <bool HALF>
int dequant(uint32_t type, const void *w, int64_t ncols, const int32_t *rows, int64_t n, void *out,
            cudaStream_t s) {
  if (n <= 0) return 0;
  if (((uintptr_t)out & 15) != 0) return ac_error(AC_EINVAL, "dequantize: output not 16-byte aligned");
  const size_t rb = ac_row_size(type, ncols);
  return dispatch(type, ncols, [&](auto d) {
    using D = decltype(d);
    int rc = check_cols<D>(type, ncols);
    if (rc) return rc;
    const int threads = 256;
    if constexpr (D::ELEM) {
      const int64_t total = n * ncols;
      k_dequant_elem<D, HALF><<<grid_for(total, threads), threads, 0, s>>>((const uint8_t *)w, rb, rows, total, ncols, out);
    } else {
      const int64_t nchunks = ncols / 8, total = n * nchunks;
      k_dequant<D, HALF><<<grid_for(total, threads), threads, 0, s>>>((const uint8_t *)w, rb, nchunks, rows, total, ncols, out);
    }
    return launched(HALF ? "dequantize to f16" : "get rows");
  });
}

// --- element-wise kernels ---------------------------------------------------------------------

constexpr int NORM_THREADS = 256;

__global__ void __launch_bounds__(NORM_THREADS)
k_rmsnorm(const float *__restrict__ x, const int32_t *__restrict__ rows, int ne,
          const float *__restrict__ w, float eps, float *__restrict__ out) {
  __shared__ double part[NORM_THREADS / 32];
  __shared__ float s_scale;
  const int r = blockIdx.x, src = rows ? rows[r] : r;
  const float *xr = x + (size_t)src * ne;
  float *o = out + (size_t)r * ne;
  double ss = 0;
  for (int i = threadIdx.x; i < ne; i += NORM_THREADS) ss += (double)mul(xr[i], xr[i]);
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int k = 0; k < NORM_THREADS / 32; k++) t += part[k];
    const float mean = (float)(t / ne);
    s_scale = __fdiv_rn(1.0f, __fsqrt_rn(add(mean, eps)));
  }
  __syncthreads();
  const float scale = s_scale;
  for (int i = threadIdx.x; i < ne; i += NORM_THREADS) o[i] = mul(mul(xr[i], scale), w[i]);
}

__global__ void k_rope_table(const int32_t *__restrict__ pos, int n, int n_rot, float theta_scale,
                             float freq_scale, const float *__restrict__ freqs, float *__restrict__ cs) {
  const int half = n_rot / 2;
  const int64_t total = (int64_t)n * half;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int r = (int)(idx / half), i = (int)(idx % half);
    float theta = (float)pos[r];
    for (int k = 0; k < i; k++) theta = mul(theta, theta_scale);
    float t = theta;
    if (freqs) t = __fdiv_rn(t, freqs[i]);
    t = mul(t, freq_scale);
    cs[(size_t)r * n_rot + 2 * i] = cosf(t);
    cs[(size_t)r * n_rot + 2 * i + 1] = sinf(t);
  }
}

__global__ void k_rope(float *__restrict__ x, int n, int n_head, int head_dim, int n_rot, int neox,
                       const float *__restrict__ cs) {
  const int half = n_rot / 2;
  const int64_t total = (int64_t)n * n_head * half;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t rh = idx / half;
    const int i = (int)(idx % half), r = (int)(rh / n_head);
    float *h = x + rh * head_dim;
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float c = cs[(size_t)r * n_rot + 2 * i], s = cs[(size_t)r * n_rot + 2 * i + 1];
    const float x0 = h[a], x1 = h[b];
    h[a] = sub(mul(x0, c), mul(x1, s));
    h[b] = add(mul(x0, s), mul(x1, c));
  }
}

__global__ void k_swiglu(float *__restrict__ g, const float *__restrict__ u, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = g[i];
    g[i] = mul(__fdiv_rn(v, add(1.0f, expf(-v))), u[i]);
  }
}

__global__ void k_add(float *__restrict__ x, const float *__restrict__ y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = add(x[i], y[i]);
}

__global__ void k_f32_to_f16(const float *__restrict__ x, __half *__restrict__ y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

__global__ void k_kv_store(const float *__restrict__ k, const float *__restrict__ v, int n, int n_kv,
                           int hd, const int32_t *__restrict__ seqs, const int32_t *__restrict__ pos,
                           int n_ctx, __half *__restrict__ kc, __half *__restrict__ vc) {
  const int64_t width = (int64_t)n_kv * hd, total = n * width;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int r = (int)(idx / width);
    const int64_t e = idx % width;
    const int h = (int)(e / hd), d = (int)(e % hd);
    const size_t dst = (((size_t)seqs[r] * n_kv + h) * n_ctx + pos[r]) * hd + d;
    kc[dst] = __float2half_rn(k[idx]);
    vc[dst] = __float2half_rn(v[idx]);
  }
}

__global__ void k_scatter_logits(const float *__restrict__ src, int n_out, int vocab_pad, int n_vocab,
                                 float *__restrict__ dst) {
  const int64_t total = (int64_t)n_out * n_vocab;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = idx / n_vocab, v = idx % n_vocab, k = v / vocab_pad;
    dst[idx] = src[(k * n_out + i) * vocab_pad + (v - k * vocab_pad)];
  }
}

// --- attention --------------------------------------------------------------------------------
// One block per (row, query head). Pass 1: each thread takes positions t = tid, tid + blockDim,
// ... and keeps a running maximum and sum of exponentials; the block combines them. Pass 2, in
// chunks of blockDim positions: each thread computes one probability (its score again, the same
// bits), rounds it to half as model.c does, and then every thread adds the chunk's V rows into
// the output dimensions it owns.

constexpr int ATT_THREADS = 128;
constexpr int ATT_DIMS = AC_CUK_MAX_HEAD_DIM / ATT_THREADS;  // output dims per thread

__device__ __forceinline__ float att_score(const float *qs, const __half *k, int hd) {
  const __half2 *k2 = (const __half2 *)k;
  float s = 0;
  for (int i = 0; i < hd / 2; i++) {
    const float2 f = __half22float2(k2[i]);
    s = fmaf(qs[2 * i], f.x, s);
    s = fmaf(qs[2 * i + 1], f.y, s);
  }
  return s;
}

// (m, l) += (m2, l2): two partial softmax denominators, each relative to its own maximum.
__device__ __forceinline__ void softmax_combine(float &m, float &l, float m2, float l2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) return;
  l = l * expf(m - M) + l2 * expf(m2 - M);
  m = M;
}

__global__ void __launch_bounds__(ATT_THREADS)
k_attention(const float *__restrict__ q, int H, int Hkv, int hd, const int32_t *__restrict__ seqs,
            const int32_t *__restrict__ pos, int n_ctx, const __half *__restrict__ kc,
            const __half *__restrict__ vc, float *__restrict__ out, float scale) {
  __shared__ float qs[AC_CUK_MAX_HEAD_DIM];
  __shared__ float ps[ATT_THREADS];
  __shared__ float red_m[ATT_THREADS / 32], red_l[ATT_THREADS / 32];
  const int tid = threadIdx.x;
  const int r = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / Hkv);
  const int len = pos[r] + 1;
  const size_t head = ((size_t)seqs[r] * Hkv + kvh) * n_ctx * hd;
  const __half *K = kc + head, *V = vc + head;
  const float *qr = q + ((size_t)r * H + h) * hd;
  for (int d = tid; d < hd; d += ATT_THREADS) qs[d] = round_f16(qr[d]);
  __syncthreads();

  float m = -INFINITY, l = 0;
  for (int t = tid; t < len; t += ATT_THREADS) {
    const float sc = mul(att_score(qs, K + (size_t)t * hd, hd), scale);
    softmax_combine(m, l, sc, 1.0f);
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), l2 = __shfl_xor_sync(0xffffffffu, l, off);
    softmax_combine(m, l, m2, l2);
  }
  if ((tid & 31) == 0) red_m[tid >> 5] = m, red_l[tid >> 5] = l;
  __syncthreads();
  m = red_m[0], l = red_l[0];
  for (int k = 1; k < ATT_THREADS / 32; k++) softmax_combine(m, l, red_m[k], red_l[k]);
  const float inv = 1.0f / l;

  float o[ATT_DIMS];
#pragma unroll
  for (int j = 0; j < ATT_DIMS; j++) o[j] = 0.0f;
  for (int t0 = 0; t0 < len; t0 += ATT_THREADS) {
    const int t = t0 + tid;
    float p = 0;
    if (t < len) p = round_f16(mul(expf(sub(mul(att_score(qs, K + (size_t)t * hd, hd), scale), m)), inv));
    ps[tid] = p;
    __syncthreads();
    const int nt = min(ATT_THREADS, len - t0);
    for (int k = 0; k < nt; k++) {
      const __half *vr = V + (size_t)(t0 + k) * hd;
      const float pk = ps[k];
#pragma unroll
      for (int j = 0; j < ATT_DIMS; j++) {
        const int d = tid + j * ATT_THREADS;
        if (d < hd) o[j] = fmaf(pk, __half2float(vr[d]), o[j]);
      }
    }
    __syncthreads();
  }
  float *orow = out + ((size_t)r * H + h) * hd;
#pragma unroll
  for (int j = 0; j < ATT_DIMS; j++) {
    const int d = tid + j * ATT_THREADS;
    if (d < hd) orow[d] = o[j];
  }
}

// --- cuBLAS ----------------------------------------------------------------------------------

int blas_failed(cublasStatus_t st, const char *what) {
  (void)cudaGetLastError();  // a CUDA error under it is reported here, not by the next launch
  return ac_error(AC_EIO, "cuBLAS %s: %s", what, cublasGetStatusString(st));
}

// y (n, ldy) = x16 (n, ncols) @ w16 (rows, ncols)^T, all row-major: in cuBLAS's column-major
// terms C (rows x n, ldc ldy) = op(A)^T B with A the weight seen as ncols x rows.
int gemm_f16(const ac_cuk_gemm_t *g, const uint16_t *w16, int64_t ncols, int64_t rows, int n,
             float *y, int64_t ldy) {
  const float one = 1.0f, zero = 0.0f;
  cublasStatus_t st = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n, (int)ncols, &one,
                                   w16, CUDA_R_16F, (int)ncols, g->xbuf, CUDA_R_16F, (int)ncols, &zero,
                                   y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return st == CUBLAS_STATUS_SUCCESS ? 0 : blas_failed(st, "cublasGemmEx");
}

}  // namespace

// --- the C interface ---------------------------------------------------------------------------

extern "C" int ac_cuk_type_supported(uint32_t type) {
  switch (type) {
    case AC_TYPE_F32: case AC_TYPE_F16: case AC_TYPE_BF16: case AC_TYPE_Q4_0: case AC_TYPE_Q4_1:
    case AC_TYPE_Q5_0: case AC_TYPE_Q5_1: case AC_TYPE_Q8_0: case AC_TYPE_Q2_K: case AC_TYPE_Q3_K:
    case AC_TYPE_Q4_K: case AC_TYPE_Q5_K: case AC_TYPE_Q6_K: case AC_TYPE_Q2X:
      return 1;
    default:
      return 0;
  }
}

extern "C" int ac_cuk_matvec(uint32_t type, const void *w, int64_t ncols, int64_t nrows,
                             const float *x, int n, float *y, int64_t ldy, cudaStream_t s) {
  if (n < 1 || n > AC_CUK_MATVEC_MAX)
    return ac_error(AC_EINVAL, "matvec of %d rows (1..%d)", n, AC_CUK_MATVEC_MAX);
  if (nrows <= 0) return 0;
  const size_t rb = ac_row_size(type, ncols);
  return dispatch(type, ncols, [&](auto d) {
    using D = decltype(d);
    int rc = check_cols<D>(type, ncols);
    if (rc) return rc;
    const unsigned blocks = (unsigned)((nrows + MV_WARPS - 1) / MV_WARPS);
    if constexpr (D::ELEM) {
      k_matvec_elem<D><<<blocks, MV_WARPS * 32, 0, s>>>((const uint8_t *)w, rb, nrows, ncols, x, ncols, n, y, ldy);
    } else {
      if (((uintptr_t)x & 15) != 0) return ac_error(AC_EINVAL, "matvec: activations not 16-byte aligned");
      k_matvec<D><<<blocks, MV_WARPS * 32, 0, s>>>((const uint8_t *)w, rb, nrows, ncols / 8, x, ncols, n, y, ldy);
    }
    return launched("matvec");
  });
}

extern "C" int ac_cuk_dequant_f16(uint32_t type, const void *w, int64_t ncols, int64_t nrows,
                                  uint16_t *out, cudaStream_t s) {
  return dequant<true>(type, w, ncols, NULL, nrows, out, s);
}

extern "C" int ac_cuk_get_rows(uint32_t type, const void *w, int64_t ncols, const int32_t *rows,
                               int n, float *out, cudaStream_t s) {
  return dequant<false>(type, w, ncols, rows, n, out, s);
}

extern "C" int ac_cuk_f32_to_f16(const float *x, uint16_t *y, size_t n, cudaStream_t s) {
  if (n == 0) return 0;
  k_f32_to_f16<<<grid_for((int64_t)n, 256), 256, 0, s>>>(x, (__half *)y, (int64_t)n);
  return launched("f32 to f16");
}

extern "C" int ac_cuk_matmul(const ac_cuk_gemm_t *g, uint32_t type, const void *w, int64_t ncols,
                             int64_t nrows, const float *x, int n, float *y, int64_t ldy,
                             cudaStream_t s) {
  if (n <= AC_CUK_MATVEC_MAX) return ac_cuk_matvec(type, w, ncols, nrows, x, n, y, ldy, s);
  if (nrows <= 0) return 0;
  if (ncols > INT_MAX || nrows > INT_MAX || ldy > INT_MAX)
    return ac_error(AC_ERANGE, "a %lld x %lld product is too large for cuBLAS", (long long)nrows, (long long)ncols);
  if (!ac_cuk_type_supported(type)) return ac_error(AC_EUNSUPPORTED, "type %s has no GPU kernels", tname(type));
  cublasStatus_t st = cublasSetStream(g->blas, s);
  if (st != CUBLAS_STATUS_SUCCESS) return blas_failed(st, "cublasSetStream");
  if (type == AC_TYPE_F32) {
    const float one = 1.0f, zero = 0.0f;
    st = cublasSgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nrows, n, (int)ncols, &one, (const float *)w,
                     (int)ncols, x, (int)ncols, &zero, y, (int)ldy);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : blas_failed(st, "cublasSgemm");
  }
  if ((size_t)n * (size_t)ncols > g->xbuf_elems)
    return ac_error(AC_EINVAL, "matmul: %d x %lld activations exceed the f16 scratch", n, (long long)ncols);
  int rc = ac_cuk_f32_to_f16(x, g->xbuf, (size_t)n * (size_t)ncols, s);
  if (rc) return rc;
  if (type == AC_TYPE_F16) return gemm_f16(g, (const uint16_t *)w, ncols, nrows, n, y, ldy);
  const int64_t chunk = (int64_t)(g->wbuf_elems / (size_t)ncols);
  if (chunk < 1) return ac_error(AC_EINVAL, "matmul: a row of %lld exceeds the f16 weight scratch", (long long)ncols);
  const size_t rb = ac_row_size(type, ncols);
  for (int64_t r0 = 0; r0 < nrows; r0 += chunk) {
    const int64_t rows = nrows - r0 < chunk ? nrows - r0 : chunk;
    if ((rc = ac_cuk_dequant_f16(type, (const uint8_t *)w + r0 * rb, ncols, rows, g->wbuf, s)) ||
        (rc = gemm_f16(g, g->wbuf, ncols, rows, n, y + r0, ldy)))
      return rc;
  }
  return 0;
}

extern "C" int ac_cuk_rmsnorm(const float *x, const int32_t *rows, int n, int ne, const float *w,
                              float eps, float *out, cudaStream_t s) {
  if (n <= 0) return 0;
  k_rmsnorm<<<n, NORM_THREADS, 0, s>>>(x, rows, ne, w, eps, out);
  return launched("rmsnorm");
}

extern "C" int ac_cuk_rope_table(const int32_t *pos, int n, int n_rot, float theta_scale,
                                 float freq_scale, const float *freqs, float *cs, cudaStream_t s) {
  if (n <= 0 || n_rot < 2) return 0;
  k_rope_table<<<grid_for((int64_t)n * (n_rot / 2), 256), 256, 0, s>>>(pos, n, n_rot, theta_scale, freq_scale, freqs, cs);
  return launched("rope table");
}

extern "C" int ac_cuk_rope(float *x, int n, int n_head, int head_dim, int n_rot, int neox,
                           const float *cs, cudaStream_t s) {
  if (n <= 0 || n_head <= 0 || n_rot < 2) return 0;
  if (n_rot > head_dim) return ac_error(AC_EINVAL, "rope: %d rotated dims of a %d-dim head", n_rot, head_dim);
  k_rope<<<grid_for((int64_t)n * n_head * (n_rot / 2), 256), 256, 0, s>>>(x, n, n_head, head_dim, n_rot, neox, cs);
  return launched("rope");
}

extern "C" int ac_cuk_swiglu(float *g, const float *u, size_t n, cudaStream_t s) {
  if (n == 0) return 0;
  k_swiglu<<<grid_for((int64_t)n, 256), 256, 0, s>>>(g, u, (int64_t)n);
  return launched("swiglu");
}

extern "C" int ac_cuk_add(float *x, const float *y, size_t n, cudaStream_t s) {
  if (n == 0) return 0;
  k_add<<<grid_for((int64_t)n, 256), 256, 0, s>>>(x, y, (int64_t)n);
  return launched("add");
}

extern "C" int ac_cuk_kv_store(const float *k, const float *v, int n, int n_kv, int head_dim,
                               const int32_t *seqs, const int32_t *pos, int n_ctx, uint16_t *kc,
                               uint16_t *vc, cudaStream_t s) {
  if (n <= 0 || n_kv <= 0) return 0;
  k_kv_store<<<grid_for((int64_t)n * n_kv * head_dim, 256), 256, 0, s>>>(k, v, n, n_kv, head_dim, seqs, pos, n_ctx,
                                                                          (__half *)kc, (__half *)vc);
  return launched("kv store");
}

extern "C" int ac_cuk_attention(const float *q, int n, int n_head, int n_kv, int head_dim,
                                const int32_t *seqs, const int32_t *pos, int n_ctx,
                                const uint16_t *kc, const uint16_t *vc, float *out, cudaStream_t s) {
  if (n <= 0 || n_head <= 0) return 0;
  if (n_kv <= 0 || n_head % n_kv)
    return ac_error(AC_EINVAL, "attention: %d heads over %d kv heads", n_head, n_kv);
  if (head_dim < 2 || head_dim % 2 || head_dim > AC_CUK_MAX_HEAD_DIM)
    return ac_error(AC_EUNSUPPORTED, "attention: head size %d (even, 2..%d)", head_dim, AC_CUK_MAX_HEAD_DIM);
  if ((int64_t)n * n_head > INT_MAX) return ac_error(AC_ERANGE, "attention: %d rows x %d heads", n, n_head);
  const float scale = 1.0f / sqrtf((float)head_dim);
  k_attention<<<n * n_head, ATT_THREADS, 0, s>>>(q, n_head, n_kv, head_dim, seqs, pos, n_ctx, (const __half *)kc,
                                                 (const __half *)vc, out, scale);
  return launched("attention");
}

extern "C" int ac_cuk_scatter_logits(const float *src, int size, int n_out, int vocab_pad,
                                     int n_vocab, float *dst, cudaStream_t s) {
  if (n_out <= 0 || n_vocab <= 0) return 0;
  if ((int64_t)size * vocab_pad < n_vocab)
    return ac_error(AC_EINVAL, "scatter logits: %d ranks x %d columns < %d", size, vocab_pad, n_vocab);
  k_scatter_logits<<<grid_for((int64_t)n_out * n_vocab, 256), 256, 0, s>>>(src, n_out, vocab_pad, n_vocab, dst);
  return launched("scatter logits");
}
