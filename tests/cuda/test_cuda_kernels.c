// test_cuda_kernels.c - the CUDA kernels (lib/cuda/kernels.h) against plain C references.
//
// Every weight type: random rows quantized with the CPU's from_float_ref; dequantization must give
// the CPU's to_float_ref bits exactly (to float, and to half after rounding); the matrix-vector
// kernel and the cuBLAS path (16 rows) must match a double-precision product of the dequantized
// weights, relative to sum |w| |x| of the row: 1e-4 for float activations, 2e-3 where cuBLAS
// takes f16 operands. Then RMSNorm, RoPE, SwiGLU, the KV cache and attention against C versions
// of model.c's arithmetic, and a one-rank NCCL group. Exits 77 without a CUDA device.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../check.h"
#include "comm.h"
#include "cuda/cuda_backend.h"
#include "cuda/kernels.h"
#include "error.h"
#include "quant.h"
#include "quant_q2x.h"

#define CK(call)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) {                                                              \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

// Uniform in [-1, 1).
static float frand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((double)(rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static void *dalloc(size_t bytes) {
  void *p = NULL;
  CK(cudaMalloc(&p, bytes ? bytes : 16));
  return p;
}

static void *to_dev(const void *h, size_t bytes) {
  void *d = dalloc(bytes);
  CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
  return d;
}

static void to_host(void *h, const void *d, size_t bytes) {
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}

// --- weight types -------------------------------------------------------------------------------

// max over rows j, r of |y[j][r] - dot(w_r, x_j)| / sum |w_r| |x_j|.
static double worst_product(const float *y, int64_t ldy, const float *w, const float *x, int M, int K, int n) {
  double worst = 0;
  for (int j = 0; j < n; j++)
    for (int r = 0; r < M; r++) {
      double dot = 0, mag = 0;
      for (int k = 0; k < K; k++) {
        dot += (double)w[(size_t)r * K + k] * x[(size_t)j * K + k];
        mag += fabs((double)w[(size_t)r * K + k] * x[(size_t)j * K + k]);
      }
      double e = fabs(y[(size_t)j * ldy + r] - dot) / (mag > 0 ? mag : 1);
      if (e > worst || e != e) worst = e != e ? INFINITY : e;
    }
  return worst;
}

static void test_type(uint32_t type, int K, cublasHandle_t blas) {
  const ac_type_traits_t *tt = ac_type_traits(type);
  const char *name = tt->name;
  const int M = 64, NB = 16, ldy = M + 3;
  const size_t rb = ac_row_size(type, K);
  float *wf = malloc((size_t)M * K * sizeof *wf), *deq = malloc((size_t)M * K * sizeof *deq);
  float *x = malloc((size_t)NB * K * sizeof *x), *y = malloc((size_t)NB * ldy * sizeof *y);
  uint8_t *wq = malloc((size_t)M * rb);
  float *got = malloc((size_t)M * K * sizeof *got);
  uint16_t *h16 = malloc((size_t)M * K * sizeof *h16);
  // Rows at different scales, with an outlier now and then, as real weights have.
  for (int r = 0; r < M; r++) {
    float sc = 0.02f + 0.05f * (float)(r % 7);
    for (int k = 0; k < K; k++) wf[(size_t)r * K + k] = frand() * sc * (k % 61 == 0 ? 8.0f : 1.0f);
  }
  for (size_t i = 0; i < (size_t)NB * K; i++) x[i] = frand();
  for (int r = 0; r < M; r++) {
    tt->from_float_ref(wf + (size_t)r * K, wq + (size_t)r * rb, K);
    tt->to_float_ref(wq + (size_t)r * rb, deq + (size_t)r * K, K);
  }
  void *wd = to_dev(wq, (size_t)M * rb);
  float *xd = to_dev(x, (size_t)NB * K * sizeof *x), *yd = dalloc((size_t)NB * ldy * sizeof *yd);
  float *outd = dalloc((size_t)M * K * sizeof *outd);
  uint16_t *o16d = dalloc((size_t)M * K * sizeof(uint16_t));

  // Dequantization: the CPU's bits.
  CHECK(ac_cuk_get_rows(type, wd, K, NULL, M, outd, 0) == 0, "%s get_rows: %s", name, ac_errmsg());
  to_host(got, outd, (size_t)M * K * sizeof *got);
  size_t bad = 0;
  for (size_t i = 0; i < (size_t)M * K; i++) bad += memcmp(&got[i], &deq[i], sizeof(float)) != 0;
  CHECK(bad == 0, "%s K=%d: %zu of %zu dequantized values differ from to_float_ref", name, K, bad, (size_t)M * K);
  const int32_t rows[3] = {5, 0, 63};
  int32_t *rowsd = to_dev(rows, sizeof rows);
  CHECK(ac_cuk_get_rows(type, wd, K, rowsd, 3, outd, 0) == 0, "%s get_rows list: %s", name, ac_errmsg());
  to_host(got, outd, 3 * (size_t)K * sizeof *got);
  bad = 0;
  for (int i = 0; i < 3; i++) bad += memcmp(got + (size_t)i * K, deq + (size_t)rows[i] * K, K * sizeof(float)) != 0;
  CHECK(bad == 0, "%s: get_rows with a row list", name);
  CHECK(ac_cuk_dequant_f16(type, wd, K, M, o16d, 0) == 0, "%s dequant_f16: %s", name, ac_errmsg());
  to_host(h16, o16d, (size_t)M * K * sizeof *h16);
  bad = 0;
  for (size_t i = 0; i < (size_t)M * K; i++) bad += h16[i] != ac_f32_to_f16(deq[i]);
  CHECK(bad == 0, "%s: %zu f16 values differ", name, bad);

  // Matrix-vector products for 1, 3 and 8 activation rows.
  const int ns[3] = {1, 3, 8};
  for (int t = 0; t < 3; t++) {
    CK(cudaMemset(yd, 0, (size_t)NB * ldy * sizeof *yd));
    int rc = ac_cuk_matvec(type, wd, K, M, xd, ns[t], yd, ldy, 0);
    CHECK(rc == 0, "%s matvec: %s", name, ac_errmsg());
    to_host(y, yd, (size_t)NB * ldy * sizeof *y);
    double e = worst_product(y, ldy, deq, x, M, K, ns[t]);
    CHECK(e < 1e-4, "%s K=%d matvec n=%d: relative error %.3g", name, K, ns[t], e);
  }

  // cuBLAS, with a weight scratch of 20 rows so that the weight goes in several pieces.
  ac_cuk_gemm_t g = {.blas = blas, .wbuf_elems = (size_t)20 * K, .xbuf_elems = (size_t)NB * K};
  g.wbuf = dalloc(g.wbuf_elems * sizeof(uint16_t));
  g.xbuf = dalloc(g.xbuf_elems * sizeof(uint16_t));
  CK(cudaMemset(yd, 0, (size_t)NB * ldy * sizeof *yd));
  int rc = ac_cuk_matmul(&g, type, wd, K, M, xd, NB, yd, ldy, 0);
  CHECK(rc == 0, "%s matmul: %s", name, ac_errmsg());
  to_host(y, yd, (size_t)NB * ldy * sizeof *y);
  double e = worst_product(y, ldy, deq, x, M, K, NB);
  double tol = type == AC_TYPE_F32 ? 1e-4 : 2e-3;
  CHECK(e < tol, "%s K=%d cuBLAS (%d rows): relative error %.3g (tolerance %g)", name, K, NB, e, tol);
  printf("%-5s K=%-4d dequantization exact, matvec ok, cuBLAS relative error %.2e\n", name, K, e);

  cudaFree(g.wbuf);
  cudaFree(g.xbuf);
  cudaFree(wd);
  cudaFree(xd);
  cudaFree(yd);
  cudaFree(outd);
  cudaFree(o16d);
  cudaFree(rowsd);
  free(wf);
  free(deq);
  free(x);
  free(y);
  free(wq);
  free(got);
  free(h16);
}

// --- element-wise kernels ----------------------------------------------------------------------

static void test_rmsnorm(void) {
  const int n = 5, ne = 300, n_out = 3;
  const int32_t rows[3] = {4, 0, 2};
  float *x = malloc((size_t)n * ne * sizeof *x), w[300], out[3 * 300];
  for (int i = 0; i < n * ne; i++) x[i] = frand() * (1 + i % 5);
  for (int i = 0; i < ne; i++) w[i] = 0.5f + frand();
  float *xd = to_dev(x, (size_t)n * ne * sizeof *x), *wd = to_dev(w, sizeof w), *od = dalloc(sizeof out);
  int32_t *rd = to_dev(rows, sizeof rows);
  CHECK(ac_cuk_rmsnorm(xd, rd, n_out, ne, wd, 1e-5f, od, 0) == 0, "rmsnorm: %s", ac_errmsg());
  to_host(out, od, sizeof out);
  double worst = 0;
  for (int r = 0; r < n_out; r++) {
    const float *xr = x + (size_t)rows[r] * ne;
    double ss = 0;
    for (int i = 0; i < ne; i++) ss += (double)(xr[i] * xr[i]);
    const float scale = 1.0f / sqrtf((float)(ss / ne) + 1e-5f);
    for (int i = 0; i < ne; i++) {
      float ref = (xr[i] * scale) * w[i];
      worst = fmax(worst, fabs(out[r * ne + i] - ref) / (fabs(ref) + 1e-6));
    }
  }
  CHECK(worst < 1e-6, "rmsnorm: relative error %.3g", worst);
  cudaFree(xd);
  cudaFree(wd);
  cudaFree(od);
  cudaFree(rd);
  free(x);
}

static void test_rope(void) {
  enum { N = 4, H = 3, HD = 16, NROT = 12 };
  const int32_t pos[N] = {0, 1, 17, 1000};
  float freqs[NROT / 2];
  for (int i = 0; i < NROT / 2; i++) freqs[i] = 1.0f + 0.25f * i;
  float x[N * H * HD], ref[N * H * HD], got[N * H * HD], cs[N * NROT], csg[N * NROT];
  int32_t *posd = to_dev(pos, sizeof pos);
  float *fd = to_dev(freqs, sizeof freqs), *csd = dalloc(sizeof cs), *xd = dalloc(sizeof x);
  for (int variant = 0; variant < 4; variant++) {
    const int neox = variant & 1, with_freqs = variant >> 1;
    const float theta_scale = powf(10000.0f, -2.0f / NROT), freq_scale = 0.5f;
    for (int i = 0; i < N * H * HD; i++) ref[i] = x[i] = frand();
    for (int r = 0; r < N; r++) {  // model.c's rope_tables and rope_head
      float theta = (float)pos[r];
      for (int i = 0; i < NROT / 2; i++) {
        float t = theta;
        if (with_freqs) t /= freqs[i];
        t *= freq_scale;
        cs[r * NROT + 2 * i] = cosf(t);
        cs[r * NROT + 2 * i + 1] = sinf(t);
        theta *= theta_scale;
      }
      for (int h = 0; h < H; h++) {
        float *hp = ref + (r * H + h) * HD;
        for (int i = 0; i < NROT / 2; i++) {
          int a = neox ? i : 2 * i, b = neox ? i + NROT / 2 : 2 * i + 1;
          float c = cs[r * NROT + 2 * i], s = cs[r * NROT + 2 * i + 1], x0 = hp[a], x1 = hp[b];
          hp[a] = x0 * c - x1 * s;
          hp[b] = x0 * s + x1 * c;
        }
      }
    }
    CK(cudaMemcpy(xd, x, sizeof x, cudaMemcpyHostToDevice));
    CHECK(ac_cuk_rope_table(posd, N, NROT, theta_scale, freq_scale, with_freqs ? fd : NULL, csd, 0) == 0, "rope table: %s",
          ac_errmsg());
    CHECK(ac_cuk_rope(xd, N, H, HD, NROT, neox, csd, 0) == 0, "rope: %s", ac_errmsg());
    to_host(csg, csd, sizeof csg);
    to_host(got, xd, sizeof got);
    double wc = 0, wx = 0;
    for (int i = 0; i < N * NROT; i++) wc = fmax(wc, fabs(csg[i] - cs[i]));
    for (int i = 0; i < N * H * HD; i++) wx = fmax(wx, fabs(got[i] - ref[i]));
    CHECK(wc < 1e-6 && wx < 1e-5, "rope (neox %d, freqs %d): cos/sin error %.3g, rotated error %.3g", neox, with_freqs, wc, wx);
  }
  cudaFree(posd);
  cudaFree(fd);
  cudaFree(csd);
  cudaFree(xd);
}

static void test_elementwise(void) {
  enum { N = 1000 };
  float g[N], u[N], got[N];
  for (int i = 0; i < N; i++) g[i] = 8 * frand(), u[i] = 2 * frand();
  float *gd = to_dev(g, sizeof g), *ud = to_dev(u, sizeof u);
  CHECK(ac_cuk_swiglu(gd, ud, N, 0) == 0, "swiglu: %s", ac_errmsg());
  to_host(got, gd, sizeof got);
  double worst = 0;
  for (int i = 0; i < N; i++) {
    float ref = g[i] / (1.0f + expf(-g[i])) * u[i];
    worst = fmax(worst, fabs(got[i] - ref) / (fabs(ref) + 1e-6));
  }
  CHECK(worst < 1e-6, "swiglu: relative error %.3g", worst);

  CK(cudaMemcpy(gd, g, sizeof g, cudaMemcpyHostToDevice));
  CHECK(ac_cuk_add(gd, ud, N, 0) == 0, "add: %s", ac_errmsg());
  to_host(got, gd, sizeof got);
  int bad = 0;
  for (int i = 0; i < N; i++) bad += got[i] != g[i] + u[i];
  CHECK(bad == 0, "add: %d wrong", bad);

  // f32 -> f16: round to nearest even, overflow to inf, subnormals.
  float v[N];
  uint16_t h[N];
  for (int i = 0; i < N; i++) v[i] = frand() * (i % 3 == 0 ? 1e5f : i % 3 == 1 ? 1e-6f : 1.0f);
  float *vd = to_dev(v, sizeof v);
  uint16_t *hd = dalloc(sizeof h);
  CHECK(ac_cuk_f32_to_f16(vd, hd, N, 0) == 0, "f32_to_f16: %s", ac_errmsg());
  to_host(h, hd, sizeof h);
  bad = 0;
  for (int i = 0; i < N; i++) bad += h[i] != ac_f32_to_f16(v[i]);
  CHECK(bad == 0, "f32_to_f16: %d differ from ac_f32_to_f16", bad);

  // Logits of 3 ranks x 5 columns gathered, 13 in all.
  enum { SZ = 3, NO = 2, VP = 5, NV = 13 };
  float src[SZ * NO * VP], dst[NO * NV];
  for (int i = 0; i < SZ * NO * VP; i++) src[i] = (float)i;
  float *sd = to_dev(src, sizeof src), *dd = dalloc(sizeof dst);
  CHECK(ac_cuk_scatter_logits(sd, SZ, NO, VP, NV, dd, 0) == 0, "scatter: %s", ac_errmsg());
  to_host(dst, dd, sizeof dst);
  bad = 0;
  for (int i = 0; i < NO; i++)
    for (int c = 0; c < NV; c++) bad += dst[i * NV + c] != src[((c / VP) * NO + i) * VP + c % VP];
  CHECK(bad == 0, "scatter logits: %d wrong", bad);
  cudaFree(gd);
  cudaFree(ud);
  cudaFree(vd);
  cudaFree(hd);
  cudaFree(sd);
  cudaFree(dd);
}

// --- KV cache and attention ---------------------------------------------------------------------

static void test_attention(int H, int Hkv, int hd, int T) {
  const int n_seq = 2, len[2] = {T - 10, T / 2};
  const int n_fill = len[0] + len[1], KV = Hkv * hd;
  float *k = malloc((size_t)n_fill * KV * sizeof *k), *v = malloc((size_t)n_fill * KV * sizeof *v);
  int32_t *fs = malloc(n_fill * sizeof *fs), *fp = malloc(n_fill * sizeof *fp);
  // Rows of the two sequences interleaved, each sequence in order.
  int c0 = 0, c1 = 0;
  for (int r = 0; r < n_fill; r++) {
    int s = (r % 2 && c1 < len[1]) || c0 == len[0];
    fs[r] = s;
    fp[r] = s ? c1++ : c0++;
  }
  for (size_t i = 0; i < (size_t)n_fill * KV; i++) k[i] = frand(), v[i] = frand();
  const size_t cache = (size_t)n_seq * Hkv * T * hd;
  uint16_t *kc = calloc(cache, 2), *vc = calloc(cache, 2), *kg = malloc(cache * 2), *vg = malloc(cache * 2);
  for (int r = 0; r < n_fill; r++)
    for (int h = 0; h < Hkv; h++)
      for (int d = 0; d < hd; d++) {
        size_t at = (((size_t)fs[r] * Hkv + h) * T + fp[r]) * hd + d;
        kc[at] = ac_f32_to_f16(k[(size_t)r * KV + h * hd + d]);
        vc[at] = ac_f32_to_f16(v[(size_t)r * KV + h * hd + d]);
      }
  float *kd = to_dev(k, (size_t)n_fill * KV * 4), *vd = to_dev(v, (size_t)n_fill * KV * 4);
  int32_t *fsd = to_dev(fs, n_fill * 4), *fpd = to_dev(fp, n_fill * 4);
  uint16_t *kcd = dalloc(cache * 2), *vcd = dalloc(cache * 2);
  CK(cudaMemset(kcd, 0, cache * 2));
  CK(cudaMemset(vcd, 0, cache * 2));
  CHECK(ac_cuk_kv_store(kd, vd, n_fill, Hkv, hd, fsd, fpd, T, kcd, vcd, 0) == 0, "kv store: %s", ac_errmsg());
  to_host(kg, kcd, cache * 2);
  to_host(vg, vcd, cache * 2);
  CHECK(memcmp(kg, kc, cache * 2) == 0 && memcmp(vg, vc, cache * 2) == 0, "kv store: cache layout or rounding");

  // Queries at the ends, the start and the middle of both sequences.
  enum { NQ = 5 };
  const int32_t qs[NQ] = {0, 1, 1, 0, 0}, qp[NQ] = {len[0] - 1, 5, len[1] - 1, 0, len[0] / 2};
  const int Q = H * hd, group = H / Hkv;
  float *q = malloc((size_t)NQ * Q * sizeof *q), *out = malloc((size_t)NQ * Q * sizeof *out);
  for (int i = 0; i < NQ * Q; i++) q[i] = 2 * frand();
  float *qd = to_dev(q, (size_t)NQ * Q * 4), *od = dalloc((size_t)NQ * Q * 4);
  int32_t *qsd = to_dev(qs, sizeof qs), *qpd = to_dev(qp, sizeof qp);
  CHECK(ac_cuk_attention(qd, NQ, H, Hkv, hd, qsd, qpd, T, kcd, vcd, od, 0) == 0, "attention: %s", ac_errmsg());
  to_host(out, od, (size_t)NQ * Q * 4);
  // model.c's attn_worker: q and the probabilities rounded to f16, the cache f16.
  double worst = 0;
  float *sc = malloc(T * sizeof *sc);
  for (int r = 0; r < NQ; r++)
    for (int h = 0; h < H; h++) {
      const size_t base = ((size_t)qs[r] * Hkv + h / group) * T * hd;
      const float *qh = q + (size_t)r * Q + h * hd;
      const int n = qp[r] + 1;
      float mx = -INFINITY;
      for (int t = 0; t < n; t++) {
        double s = 0;
        for (int d = 0; d < hd; d++)
          s += (double)(ac_f16_to_f32(ac_f32_to_f16(qh[d])) * ac_f16_to_f32(kc[base + (size_t)t * hd + d]));
        sc[t] = (float)s * (1.0f / sqrtf((float)hd));
        mx = fmaxf(mx, sc[t]);
      }
      double sum = 0;
      for (int t = 0; t < n; t++) sum += sc[t] = expf(sc[t] - mx);
      const float inv = (float)(1.0 / sum);
      for (int t = 0; t < n; t++) sc[t] = ac_f16_to_f32(ac_f32_to_f16(sc[t] * inv));
      for (int d = 0; d < hd; d++) {
        double o = 0;
        for (int t = 0; t < n; t++) o += (double)sc[t] * ac_f16_to_f32(vc[base + (size_t)t * hd + d]);
        worst = fmax(worst, fabs(out[(size_t)r * Q + h * hd + d] - o));
      }
    }
  // |v| <= 1: an error of 2e-3 is four f16 roundings of a probability.
  CHECK(worst < 2e-3, "attention H=%d Hkv=%d hd=%d T=%d: max error %.3g", H, Hkv, hd, T, worst);
  printf("attention H=%d Hkv=%d hd=%d T=%d: max error %.2e\n", H, Hkv, hd, T, worst);
  free(sc);
  free(k);
  free(v);
  free(fs);
  free(fp);
  free(kc);
  free(vc);
  free(kg);
  free(vg);
  free(q);
  free(out);
  cudaFree(kd);
  cudaFree(vd);
  cudaFree(fsd);
  cudaFree(fpd);
  cudaFree(kcd);
  cudaFree(vcd);
  cudaFree(qd);
  cudaFree(od);
  cudaFree(qsd);
  cudaFree(qpd);
}

// --- NCCL ---------------------------------------------------------------------------------------

// A group of one rank: every collective is the identity, through NCCL all the same.
static void test_nccl_single(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/ac_nccl_id_%ld", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (long)getpid());
  ac_comm_t *c = NULL;
  int rc = ac_comm_nccl_new(0, 1, 0, path, 5000, &c);
  CHECK(rc == 0, "nccl group of 1: %s", ac_errmsg());
  if (rc) return;
  CHECK(access(path, F_OK) != 0, "rank 0 removes the id file once the group is up");
  float h[64], back[128];
  for (int i = 0; i < 64; i++) h[i] = (float)i;
  float *d = to_dev(h, sizeof h), *d2 = dalloc(sizeof back);
  CHECK(ac_comm_all_reduce_sum(c, d, 64) == 0, "all-reduce: %s", ac_errmsg());
  CHECK(ac_comm_all_gather(c, d, d2, 64) == 0, "all-gather: %s", ac_errmsg());
  to_host(back, d, sizeof h);
  to_host(back + 64, d2, sizeof h);
  CHECK(memcmp(back, h, sizeof h) == 0 && memcmp(back + 64, h, sizeof h) == 0, "one-rank collectives are the identity");
  char msg[100] = "leader's batch";
  CHECK(ac_comm_broadcast(c, msg, sizeof msg, 0) == 0 && strcmp(msg, "leader's batch") == 0, "broadcast: %s",
        ac_errmsg());
  CHECK(strcmp(c->ops->name, "nccl") == 0, "name");
  c->ops->destroy(c);
  cudaFree(d);
  cudaFree(d2);
}

int main(void) {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    printf("no CUDA device: skipped\n");
    return 77;
  }
  ac_quant_init();
  CK(cudaSetDevice(0));
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
    fprintf(stderr, "cublasCreate failed\n");
    return 1;
  }
  const uint32_t types[] = {AC_TYPE_F32,  AC_TYPE_F16,  AC_TYPE_BF16, AC_TYPE_Q8_0, AC_TYPE_Q4_0,
                            AC_TYPE_Q4_1, AC_TYPE_Q5_0, AC_TYPE_Q5_1, AC_TYPE_Q2_K, AC_TYPE_Q3_K,
                            AC_TYPE_Q4_K, AC_TYPE_Q5_K, AC_TYPE_Q6_K, AC_TYPE_Q2X};
  for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
    CHECK(ac_cuk_type_supported(types[i]), "type %u supported", types[i]);
    test_type(types[i], 512, blas);
  }
  // Float rows of any length (stories260K's FFN is 172 wide) take the element-wise kernels.
  test_type(AC_TYPE_F32, 172, blas);
  test_type(AC_TYPE_F16, 172, blas);
  test_type(AC_TYPE_BF16, 172, blas);
  CHECK(!ac_cuk_type_supported(AC_TYPE_Q8_K), "activation types have no weight kernels");

  test_rmsnorm();
  test_rope();
  test_elementwise();
  test_attention(8, 2, 64, 300);   // longer than one chunk of 128 positions
  test_attention(4, 4, 160, 40);   // two output dims per thread
  test_attention(8, 4, 8, 20);     // stories260K's shape
  test_nccl_single();
  cublasDestroy(blas);
  return check_report();
}
