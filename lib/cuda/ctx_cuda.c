// ctx_cuda.c - the CUDA engine behind ac_ctx_* (cuda_backend.h): one rank's shard on one GPU.
//
// Loading: the shard's weights, the norms and the token embedding are laid out in one device
// allocation (the "image", each matrix compact and 256-byte aligned). A shard's views may skip
// the other ranks' columns (stride > row_bytes), so the image is built row by row: rows are read
// from the file's mapping into one of two pinned staging buffers (the memcpy faults the pages in
// from disk) while the previous buffer is copied to the device on the context's stream.
//
// Evaluation follows model.c's ac_ctx_eval step for step on the rank's heads and FFN columns,
// with two all-reduces per layer (attention output, FFN output) when the group has more than one
// rank, and an all-gather of the vocabulary slices at the end. The KV cache is f16,
// (n_seq, n_kv, n_ctx, head_dim) per layer for K and V alike. Every CUDA, cuBLAS and kernel call
// is checked; a failure is an AC_E* code with a message, never an abort.
#include "cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "comm.h"
#include "error.h"
#include "kernels.h"
#include "log.h"
#include "quant.h"

#define ALIGN ((size_t)256)
#define N_STAGE 2
#define STAGE_BYTES ((size_t)64 << 20)
#define WBUF_MAX_ELEMS ((size_t)32 << 20)   // f16 scratch for a dequantized weight: 64 MiB
#define RESERVE_BYTES ((size_t)256 << 20)   // left free for cuBLAS's workspace and the runtime
#define MIB(b) ((double)(b) / (1024.0 * 1024.0))

// A dense matrix in the image: ne1 rows of ne0 elements.
typedef struct {
  uint32_t type;
  int64_t ne0, ne1;
  size_t off;  // byte offset in the image
} cmat_t;

// A weight: dense, or low-rank factors run as x @ A^T, then @ B^T.
typedef struct {
  bool lowrank;
  cmat_t m, a, b;
} cweight_t;

typedef struct {
  int32_t n_kv, n_head, n_ff;  // this rank's kv heads, query heads, FFN columns
  size_t attn_norm, ffn_norm;  // image offsets of the f32 norms
  cweight_t wq, wk, wv, wo, gate, up, down;
  uint16_t *kc, *vc;           // (n_seq, n_kv, n_ctx, head_dim)
} clayer_t;

// A piece of the image: `rows` rows of `row_bytes`, `stride` apart in the mapping.
typedef struct {
  const uint8_t *src;
  size_t stride, row_bytes;
  int64_t rows;
  size_t off;
} piece_t;

struct ac_cuda_ctx {
  const ac_model_t *m;
  int gpu, rank, size;
  int32_t n_ctx, n_seq, n_batch;
  struct ac_comm *comm;
  cudaStream_t stream;
  cublasHandle_t blas;
  bool have_stream, have_blas;
  float theta_scale;
  int32_t V, vocab_pad, n_vocab;  // model vocabulary; width of every rank's slice; this rank's
  // The image.
  uint8_t *wmem;
  size_t wbytes;
  piece_t *pieces;
  int n_pieces, cap_pieces;
  cmat_t tok_embd;
  cweight_t output;
  size_t out_norm, freqs;
  bool have_freqs;
  clayer_t *layers;
  // KV cache, one allocation for every layer.
  uint16_t *kv;
  size_t kv_bytes;
  // Scratch for n_batch rows, one allocation.
  uint8_t *scratch;
  size_t scratch_bytes;
  float *x, *xb, *q, *att, *kk, *vv, *hg, *hu, *lr, *cs, *logits, *gathered, *full;
  int32_t *d_i32, *h_i32;  // tokens, positions, sequences, output rows (h_i32 pinned)
  ac_cuk_gemm_t gemm;
  ac_cuda_load_stats_t stats;
};

static int cu_fail(cudaError_t e, int gpu, const char *what) {
  // A failed runtime call also leaves its error as the thread's "last error", which the kernel
  // launches read (cudaGetLastError): clear it here, where it is reported, or the next launch
  // (even of a later context) would fail with it.
  (void)cudaGetLastError();
  return ac_error(e == cudaErrorMemoryAllocation ? AC_ENOMEM : AC_EIO, "GPU %d: %s: %s", gpu, what,
                  cudaGetErrorString(e));
}

#define CU(c, call, what)                                     \
  do {                                                        \
    cudaError_t e_ = (call);                                  \
    if (e_ != cudaSuccess) return cu_fail(e_, (c)->gpu, what); \
  } while (0)

#define TRY(call)        \
  do {                   \
    int rc_ = (call);    \
    if (rc_) return rc_; \
  } while (0)

static size_t align_up(size_t v) { return (v + ALIGN - 1) / ALIGN * ALIGN; }

static const void *dptr(const ac_cuda_ctx_t *c, const cmat_t *m) { return c->wmem + m->off; }
static const float *dvec(const ac_cuda_ctx_t *c, size_t off) { return (const float *)(c->wmem + off); }

// --- planning the image -----------------------------------------------------------------------

static int add_piece(ac_cuda_ctx_t *c, const void *src, size_t stride, size_t row_bytes, int64_t rows,
                     size_t *off) {
  if (c->n_pieces == c->cap_pieces) {
    int cap = c->cap_pieces ? 2 * c->cap_pieces : 64;
    piece_t *p = realloc(c->pieces, (size_t)cap * sizeof *p);
    if (!p) return ac_error(AC_ENOMEM, "out of memory");
    c->pieces = p;
    c->cap_pieces = cap;
  }
  c->pieces[c->n_pieces++] = (piece_t){src, stride, row_bytes, rows, c->wbytes};
  *off = c->wbytes;
  c->wbytes = align_up(c->wbytes + (size_t)rows * row_bytes);
  return 0;
}

static const char *wname(const ac_weight_t *w) { return w->name ? w->name : "(unnamed)"; }

static int plan_mat(ac_cuda_ctx_t *c, cmat_t *cm, const ac_weight_t *w) {
  cm->type = w->type;
  cm->ne0 = w->ne[0];
  cm->ne1 = w->ne[1];
  if (cm->ne0 <= 0 || cm->ne1 <= 0) return 0;  // an empty share: nothing to upload
  if (!ac_cuk_type_supported(w->type))
    return ac_error(AC_EUNSUPPORTED, "tensor '%s': type %s has no GPU kernels", wname(w),
                    ac_type_name(w->type) ? ac_type_name(w->type) : "unknown");
  size_t rb = ac_row_size(w->type, cm->ne0);
  if (!rb) return ac_error(AC_EUNSUPPORTED, "tensor '%s': rows of %lld do not fit %s blocks", wname(w),
                           (long long)cm->ne0, ac_type_name(w->type));
  size_t stride = w->stride ? w->stride : rb;
  if (!w->data || (w->row_bytes && w->row_bytes != rb) || stride < rb)
    return ac_error(AC_EINVAL, "tensor '%s': not a valid view (%zu-byte rows, stride %zu)", wname(w), rb, stride);
  return add_piece(c, w->data, stride, rb, cm->ne1, &cm->off);
}

static int plan_weight(ac_cuda_ctx_t *c, cweight_t *cw, const ac_weight_t *w, int64_t ne0, int64_t ne1) {
  if (w->ne[0] != ne0 || w->ne[1] != ne1)
    return ac_error(AC_EINVAL, "tensor '%s': shard view is [%lld, %lld], want [%lld, %lld]", wname(w),
                    (long long)w->ne[0], (long long)w->ne[1], (long long)ne0, (long long)ne1);
  if (w->lr_a || w->lr_b) {
    if (!w->lr_a || !w->lr_b || w->lr_a->ne[0] != ne0 || w->lr_b->ne[1] != ne1 || w->lr_a->ne[1] != w->lr_b->ne[0])
      return ac_error(AC_EINVAL, "tensor '%s': low-rank factors do not fit", wname(w));
    cw->lowrank = true;
    TRY(plan_mat(c, &cw->a, w->lr_a));
    return plan_mat(c, &cw->b, w->lr_b);
  }
  return plan_mat(c, &cw->m, w);
}

static int plan_vector(ac_cuda_ctx_t *c, const ac_weight_t *w, int64_t n, size_t *off) {
  if (!w->data || w->type != AC_TYPE_F32 || w->ne[0] != n)
    return ac_error(AC_EINVAL, "tensor '%s': want an f32 vector of %lld", wname(w), (long long)n);
  return add_piece(c, w->data, n * sizeof(float), n * sizeof(float), 1, off);
}

// The output projection, sharing the embedding's rows when it is a view of them (tied output).
static int plan_output(ac_cuda_ctx_t *c, const ac_weight_t *out, const ac_weight_t *te) {
  int64_t E = c->m->hp.n_embd;
  const uint8_t *d = out->data, *t0 = te->data;
  size_t rb = ac_row_size(te->type, E);
  if (d && !out->lr_a && out->type == te->type && out->ne[0] == E && (out->stride == 0 || out->stride == rb) &&
      d >= t0 && d < t0 + (size_t)te->ne[1] * rb && (size_t)(d - t0) % rb == 0 &&
      (size_t)(d - t0) / rb + (size_t)out->ne[1] <= (size_t)te->ne[1] && out->ne[1] > 0) {
    c->output.m = (cmat_t){out->type, E, out->ne[1], c->tok_embd.off + (size_t)(d - t0)};
    return 0;
  }
  return plan_weight(c, &c->output, out, E, c->n_vocab);
}

static int plan(ac_cuda_ctx_t *c, const ac_shard_t *sh) {
  const ac_model_t *m = c->m;
  const ac_hparams_t *hp = &m->hp;
  const int64_t E = hp->n_embd, hd = hp->head_dim;
  if (m->tok_embd.lr_a) return ac_error(AC_EUNSUPPORTED, "token_embd.weight as low-rank factors");
  TRY(plan_mat(c, &c->tok_embd, &m->tok_embd));
  if (c->tok_embd.ne0 != E || c->tok_embd.ne1 != c->V)
    return ac_error(AC_EINVAL, "token_embd.weight is not [%lld, %d]", (long long)E, c->V);
  TRY(plan_vector(c, &m->output_norm, E, &c->out_norm));
  if (m->rope_freqs) {
    ac_weight_t f = {.name = "rope_freqs.weight", .type = AC_TYPE_F32, .ne = {hp->n_rot / 2, 1}, .data = m->rope_freqs};
    TRY(plan_vector(c, &f, hp->n_rot / 2, &c->freqs));
    c->have_freqs = true;
  }
  TRY(plan_output(c, &sh->output, &m->tok_embd));
  for (int l = 0; l < hp->n_layer; l++) {
    const ac_layer_shard_t *ls = &sh->layers[l];
    clayer_t *L = &c->layers[l];
    const int group = hp->n_head[l] / hp->n_head_kv[l];
    if (ls->n_kv < 0 || ls->n_ff < 0 || ls->kv0 < 0 || ls->kv0 + ls->n_kv > hp->n_head_kv[l] || ls->ff0 < 0 ||
        ls->ff0 + ls->n_ff > hp->n_ff[l])
      return ac_error(AC_EINVAL, "layer %d: shard heads [%d, +%d) or FFN columns [%d, +%d) out of range", l,
                      ls->kv0, ls->n_kv, ls->ff0, ls->n_ff);
    L->n_kv = ls->n_kv;
    L->n_head = ls->n_kv * group;
    L->n_ff = ls->n_ff;
    const int64_t Q = (int64_t)L->n_head * hd, KV = (int64_t)L->n_kv * hd, F = L->n_ff;
    TRY(plan_vector(c, &m->layers[l].attn_norm, E, &L->attn_norm));
    TRY(plan_vector(c, &m->layers[l].ffn_norm, E, &L->ffn_norm));
    if (L->n_kv > 0) {
      TRY(plan_weight(c, &L->wq, &ls->wq, E, Q));
      TRY(plan_weight(c, &L->wk, &ls->wk, E, KV));
      TRY(plan_weight(c, &L->wv, &ls->wv, E, KV));
      TRY(plan_weight(c, &L->wo, &ls->wo, Q, E));
    }
    if (L->n_ff > 0) {
      TRY(plan_weight(c, &L->gate, &ls->ffn_gate, E, F));
      TRY(plan_weight(c, &L->up, &ls->ffn_up, E, F));
      TRY(plan_weight(c, &L->down, &ls->ffn_down, F, E));
    }
  }
  return 0;
}

// --- uploading the image ----------------------------------------------------------------------

typedef struct {
  ac_cuda_ctx_t *c;
  uint8_t *buf[N_STAGE];
  cudaEvent_t ev[N_STAGE];
  bool pending[N_STAGE];
  int cur;
  size_t cap, fill, dst;  // buffer size, bytes in buf[cur], image offset of buf[cur]
} stager_t;

static int stage_flush(stager_t *st) {
  ac_cuda_ctx_t *c = st->c;
  if (st->fill == 0) return 0;
  CU(c, cudaMemcpyAsync(c->wmem + st->dst, st->buf[st->cur], st->fill, cudaMemcpyHostToDevice, c->stream),
     "copying weights to the device");
  CU(c, cudaEventRecord(st->ev[st->cur], c->stream), "cudaEventRecord");
  st->pending[st->cur] = true;
  st->dst += st->fill;
  st->fill = 0;
  st->cur = (st->cur + 1) % N_STAGE;
  if (st->pending[st->cur]) {  // the next buffer's copy must be done before it is refilled
    double t0 = ac_mono_ms();
    CU(c, cudaEventSynchronize(st->ev[st->cur]), "copying weights to the device");
    c->stats.copy_s += (ac_mono_ms() - t0) / 1e3;
    st->pending[st->cur] = false;
  }
  return 0;
}

// Appends n bytes of src (zeros when src is NULL) to the image.
static int stage_put(stager_t *st, const uint8_t *src, size_t n) {
  while (n) {
    size_t k = st->cap - st->fill < n ? st->cap - st->fill : n;
    double t0 = ac_mono_ms();
    if (src) memcpy(st->buf[st->cur] + st->fill, src, k);
    else memset(st->buf[st->cur] + st->fill, 0, k);
    st->c->stats.read_s += (ac_mono_ms() - t0) / 1e3;
    st->fill += k;
    n -= k;
    if (src) src += k;
    if (st->fill == st->cap) TRY(stage_flush(st));
  }
  return 0;
}

static int upload(ac_cuda_ctx_t *c) {
  stager_t st = {.c = c, .cap = c->wbytes < STAGE_BYTES ? c->wbytes : STAGE_BYTES};
  int rc = 0;
  for (int i = 0; i < N_STAGE && !rc; i++) {
    cudaError_t e = cudaHostAlloc((void **)&st.buf[i], st.cap, cudaHostAllocDefault);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&st.ev[i], cudaEventDisableTiming);
    if (e != cudaSuccess) rc = cu_fail(e, c->gpu, "allocating pinned staging buffers");
  }
  size_t pos = 0;  // image bytes staged so far
  for (int i = 0; i < c->n_pieces && !rc; i++) {
    const piece_t *p = &c->pieces[i];
    rc = stage_put(&st, NULL, p->off - pos);
    if (p->stride == p->row_bytes) {  // a whole tensor, or whole rows of one: one read
      if (!rc) rc = stage_put(&st, p->src, (size_t)p->rows * p->row_bytes);
    } else {
      for (int64_t r = 0; r < p->rows && !rc; r++) rc = stage_put(&st, p->src + (size_t)r * p->stride, p->row_bytes);
    }
    pos = p->off + (size_t)p->rows * p->row_bytes;
  }
  if (!rc) rc = stage_flush(&st);
  double t0 = ac_mono_ms();
  cudaError_t e = cudaStreamSynchronize(c->stream);  // also on failure: the buffers go next
  c->stats.copy_s += (ac_mono_ms() - t0) / 1e3;
  if (!rc && e != cudaSuccess) rc = cu_fail(e, c->gpu, "copying weights to the device");
  for (int i = 0; i < N_STAGE; i++) {
    if (st.buf[i]) cudaFreeHost(st.buf[i]);
    if (st.ev[i]) cudaEventDestroy(st.ev[i]);
  }
  c->stats.bytes = pos;
  return rc;
}

// --- scratch ----------------------------------------------------------------------------------

static size_t carve(size_t *off, size_t bytes) {
  size_t at = *off;
  *off = align_up(*off + bytes);
  return at;
}

static void max64(int64_t *m, int64_t v) {
  if (v > *m) *m = v;
}

// Widest matrix shapes, for the scratch sizes.
static void weight_extents(const cweight_t *w, int64_t *max_rank, int64_t *max_cols, int64_t *max_deq) {
  const cmat_t *ms[3] = {&w->m, &w->a, &w->b};
  if (w->lowrank) max64(max_rank, w->a.ne1);
  for (int i = 0; i < 3; i++) {
    const cmat_t *m = ms[i];
    if (m->ne0 <= 0 || m->ne1 <= 0) continue;
    max64(max_cols, m->ne0);
    if (m->type != AC_TYPE_F32 && m->type != AC_TYPE_F16) max64(max_deq, m->ne0 * m->ne1);
  }
}

// Lays out the scratch buffers; with `base` NULL only computes the size.
static size_t layout_scratch(ac_cuda_ctx_t *c, uint8_t *base) {
  const ac_hparams_t *hp = &c->m->hp;
  const size_t B = (size_t)c->n_batch, E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
  int64_t max_q = 0, max_kv = 0, max_ff = 0, max_rank = 0, max_cols = 0, max_deq = 0;
  for (int l = 0; l < hp->n_layer; l++) {
    const clayer_t *L = &c->layers[l];
    max64(&max_q, (int64_t)L->n_head * (int64_t)hd);
    max64(&max_kv, (int64_t)L->n_kv * (int64_t)hd);
    max64(&max_ff, L->n_ff);
    const cweight_t *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
    for (int i = 0; i < 7; i++) weight_extents(ws[i], &max_rank, &max_cols, &max_deq);
  }
  weight_extents(&c->output, &max_rank, &max_cols, &max_deq);
  const size_t F = sizeof(float), vp = (size_t)c->vocab_pad, V = (size_t)c->V;
  size_t off = 0;
  size_t o_x = carve(&off, B * E * F), o_xb = carve(&off, B * E * F);
  size_t o_q = carve(&off, B * max_q * F), o_att = carve(&off, B * max_q * F);
  size_t o_kk = carve(&off, B * max_kv * F), o_vv = carve(&off, B * max_kv * F);
  size_t o_hg = carve(&off, B * max_ff * F), o_hu = carve(&off, B * max_ff * F);
  size_t o_lr = carve(&off, B * max_rank * F), o_cs = carve(&off, B * hp->n_rot * F);
  size_t o_logits = carve(&off, B * vp * F);
  size_t o_gathered = carve(&off, c->size > 1 ? (size_t)c->size * B * vp * F : 0);
  size_t o_full = carve(&off, c->size > 1 || vp != V ? B * V * F : 0);
  size_t o_i32 = carve(&off, 4 * B * sizeof(int32_t));
  // cuBLAS's f16 operands, for batches the matrix-vector kernel does not take.
  size_t x16 = 0, w16 = 0;
  if (B > AC_CUK_MATVEC_MAX) {
    int64_t widest = (int64_t)E;
    max64(&widest, max_q);
    max64(&widest, max_ff);
    max64(&widest, max_rank);
    max64(&widest, max_cols);
    x16 = B * (size_t)widest;
    if (max_deq > 0) {
      w16 = (size_t)max_deq < WBUF_MAX_ELEMS ? (size_t)max_deq : WBUF_MAX_ELEMS;
      if (w16 < (size_t)max_cols) w16 = (size_t)max_cols;
    }
  }
  size_t o_x16 = carve(&off, x16 * sizeof(uint16_t)), o_w16 = carve(&off, w16 * sizeof(uint16_t));
  if (base) {
    c->x = (float *)(base + o_x), c->xb = (float *)(base + o_xb);
    c->q = (float *)(base + o_q), c->att = (float *)(base + o_att);
    c->kk = (float *)(base + o_kk), c->vv = (float *)(base + o_vv);
    c->hg = (float *)(base + o_hg), c->hu = (float *)(base + o_hu);
    c->lr = (float *)(base + o_lr), c->cs = (float *)(base + o_cs);
    c->logits = (float *)(base + o_logits);
    c->gathered = (float *)(base + o_gathered), c->full = (float *)(base + o_full);
    c->d_i32 = (int32_t *)(base + o_i32);
    c->gemm.xbuf = (uint16_t *)(base + o_x16), c->gemm.xbuf_elems = x16;
    c->gemm.wbuf = (uint16_t *)(base + o_w16), c->gemm.wbuf_elems = w16;
  }
  return off;
}

// --- the context --------------------------------------------------------------------------------

void ac_cuda_ctx_destroy(ac_cuda_ctx_t **self_p) {
  ac_cuda_ctx_t *c = *self_p;
  if (!c) return;
  cudaSetDevice(c->gpu);
  if (c->have_stream) cudaStreamSynchronize(c->stream);
  if (c->wmem) cudaFree(c->wmem);
  if (c->kv) cudaFree(c->kv);
  if (c->scratch) cudaFree(c->scratch);
  if (c->h_i32) cudaFreeHost(c->h_i32);
  if (c->have_blas) cublasDestroy(c->blas);
  if (c->have_stream) cudaStreamDestroy(c->stream);
  // Nothing here reports errors (cudaSetDevice fails for the bad GPU number that made
  // ac_cuda_ctx_new give up): leave none behind for the next kernel launch to pick up.
  (void)cudaGetLastError();
  free(c->layers);
  free(c->pieces);
  free(c);
  *self_p = NULL;
}

static int check_shard(const ac_cuda_ctx_t *c, const ac_shard_t *sh, const struct ac_comm *comm) {
  if (sh->size < 1 || sh->rank < 0 || sh->rank >= sh->size) return ac_error(AC_EINVAL, "shard rank %d of %d", sh->rank, sh->size);
  if (sh->size > 1 && (!comm || comm->size != sh->size || comm->rank != sh->rank))
    return ac_error(AC_EINVAL, "rank %d of %d needs a communicator of that rank and size", sh->rank, sh->size);
  // Rank k holds vocabulary rows [k * vocab_pad, k * vocab_pad + vocab_pad), clipped at n_vocab.
  int64_t pad = ((int64_t)c->V + sh->size - 1) / sh->size, v0 = (int64_t)sh->rank * pad;
  int64_t nv = c->V - v0 < pad ? c->V - v0 : pad;
  if (nv < 0) nv = 0;
  if (sh->vocab_pad != pad || (sh->n_vocab > 0 && sh->vocab0 != v0) || sh->n_vocab != nv || sh->output.ne[1] != nv)
    return ac_error(AC_EINVAL, "rank %d of %d: vocabulary rows [%d, +%d) of width %d, want [%lld, +%lld) of %lld",
                    sh->rank, sh->size, sh->vocab0, sh->n_vocab, sh->vocab_pad, (long long)v0, (long long)nv,
                    (long long)pad);
  return 0;
}

int ac_cuda_ctx_new(const ac_model_t *m, const ac_shard_t *shard, struct ac_comm *comm,
                    const ac_ctx_params_t *p, ac_cuda_ctx_t **out) {
  *out = NULL;
  if (!m || !shard || !p) return ac_error(AC_EINVAL, "ac_cuda_ctx_new: missing model, shard or parameters");
  const ac_hparams_t *hp = &m->hp;
  double t_start = ac_mono_ms();
  ac_cuda_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return ac_error(AC_ENOMEM, "out of memory");
  c->m = m;
  c->gpu = p->gpu;
  c->rank = shard->rank;
  c->size = shard->size;
  c->comm = shard->size > 1 ? comm : NULL;
  c->n_ctx = p->n_ctx > 0 ? p->n_ctx : (hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
  c->n_seq = p->n_seq > 0 ? p->n_seq : 1;
  c->n_batch = p->n_batch > 0 ? p->n_batch : 512;
  c->V = hp->n_vocab;
  c->vocab_pad = shard->vocab_pad;
  c->n_vocab = shard->n_vocab;
  c->theta_scale = powf(hp->rope_theta, -2.0f / hp->n_rot);
  int rc = 0;
  size_t free_b = 0, total_b = 0, need = 0;
  cudaError_t e;
  int n_dev = 0;
  if ((e = cudaGetDeviceCount(&n_dev)) != cudaSuccess) {
    rc = cu_fail(e, c->gpu, "no CUDA device");
    goto fail;
  }
  if (c->gpu < 0 || c->gpu >= n_dev) {
    rc = ac_error(AC_EINVAL, "GPU %d does not exist (%d CUDA devices)", c->gpu, n_dev);
    goto fail;
  }
  if ((rc = check_shard(c, shard, comm))) goto fail;
  if (!(c->layers = calloc((size_t)hp->n_layer, sizeof *c->layers))) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = plan(c, shard))) goto fail;

  for (int l = 0; l < hp->n_layer; l++)
    c->kv_bytes += 2 * (size_t)c->n_seq * c->layers[l].n_kv * c->n_ctx * hp->head_dim * sizeof(uint16_t);
  c->scratch_bytes = layout_scratch(c, NULL);
#define FAIL_CU(call, what)                   \
  if ((e = (call)) != cudaSuccess) {          \
    rc = cu_fail(e, c->gpu, what);            \
    goto fail;                                \
  }
  FAIL_CU(cudaSetDevice(c->gpu), "cudaSetDevice");
  FAIL_CU(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  need = c->wbytes + c->kv_bytes + c->scratch_bytes;
  if (need + RESERVE_BYTES > free_b) {
    rc = ac_error(AC_ENOMEM,
                  "needs %.0f MiB on GPU %d (weights %.0f, KV cache %.0f, scratch %.0f, runtime %.0f), %.0f MiB free",
                  MIB(need + RESERVE_BYTES), c->gpu, MIB(c->wbytes), MIB(c->kv_bytes), MIB(c->scratch_bytes),
                  MIB(RESERVE_BYTES), MIB(free_b));
    goto fail;
  }
  FAIL_CU(cudaStreamCreate(&c->stream), "cudaStreamCreate");
  c->have_stream = true;
  cublasStatus_t bs = cublasCreate(&c->blas);
  if (bs != CUBLAS_STATUS_SUCCESS) {
    rc = ac_error(bs == CUBLAS_STATUS_ALLOC_FAILED ? AC_ENOMEM : AC_EIO, "GPU %d: cublasCreate: %s", c->gpu,
                  cublasGetStatusString(bs));
    goto fail;
  }
  c->have_blas = true;
  c->gemm.blas = c->blas;
  if ((bs = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS) {
    rc = ac_error(AC_EIO, "GPU %d: cublasSetStream: %s", c->gpu, cublasGetStatusString(bs));
    goto fail;
  }
  if (c->wbytes) FAIL_CU(cudaMalloc((void **)&c->wmem, c->wbytes), "allocating the weights");
  if (c->kv_bytes) FAIL_CU(cudaMalloc((void **)&c->kv, c->kv_bytes), "allocating the KV cache");
  FAIL_CU(cudaMalloc((void **)&c->scratch, c->scratch_bytes), "allocating scratch");
  FAIL_CU(cudaHostAlloc((void **)&c->h_i32, 4 * (size_t)c->n_batch * sizeof(int32_t), cudaHostAllocDefault),
          "allocating pinned memory");
#undef FAIL_CU
  layout_scratch(c, c->scratch);
  uint16_t *kv = c->kv;
  for (int l = 0; l < hp->n_layer; l++) {
    size_t n = (size_t)c->n_seq * c->layers[l].n_kv * c->n_ctx * hp->head_dim;
    c->layers[l].kc = kv, kv += n;
    c->layers[l].vc = kv, kv += n;
  }
  if ((rc = upload(c))) goto fail;
  free(c->pieces);  // the image is built; the views are not needed any more
  c->pieces = NULL;
  c->n_pieces = c->cap_pieces = 0;
  c->stats.total_s = (ac_mono_ms() - t_start) / 1e3;
  AC_DEBUG("GPU %d: rank %d/%d: %.1f MiB of weights in %.2f s (read %.2f s, copy wait %.2f s), KV cache %.1f MiB",
           c->gpu, c->rank, c->size, MIB(c->stats.bytes), c->stats.total_s, c->stats.read_s, c->stats.copy_s,
           MIB(c->kv_bytes));
  *out = c;
  return 0;
fail:
  ac_cuda_ctx_destroy(&c);
  return rc;
}

void ac_cuda_ctx_load_stats(const ac_cuda_ctx_t *c, ac_cuda_load_stats_t *out) { *out = c->stats; }

size_t ac_cuda_ctx_kv_bytes(const ac_cuda_ctx_t *c) { return c->kv_bytes; }

// --- evaluation -------------------------------------------------------------------------------

// y (n, ldy) = x (n, w's input) @ w^T.
static int mm(ac_cuda_ctx_t *c, const cweight_t *w, const float *x, int n, float *y, int64_t ldy) {
  if (w->lowrank) {
    const cmat_t *a = &w->a, *b = &w->b;
    TRY(ac_cuk_matmul(&c->gemm, a->type, dptr(c, a), a->ne0, a->ne1, x, n, c->lr, a->ne1, c->stream));
    return ac_cuk_matmul(&c->gemm, b->type, dptr(c, b), b->ne0, b->ne1, c->lr, n, y, ldy, c->stream);
  }
  return ac_cuk_matmul(&c->gemm, w->m.type, dptr(c, &w->m), w->m.ne0, w->m.ne1, x, n, y, ldy, c->stream);
}

// Sums a row-parallel product's partial results over the group.
static int reduce(ac_cuda_ctx_t *c, float *buf, size_t n) {
  if (c->size <= 1) return 0;
  CU(c, cudaStreamSynchronize(c->stream), "running a layer");
  return ac_comm_all_reduce_sum(c->comm, buf, n);
}

static int zero(ac_cuda_ctx_t *c, float *buf, size_t n) {
  CU(c, cudaMemsetAsync(buf, 0, n * sizeof(float), c->stream), "cudaMemsetAsync");
  return 0;
}

static int eval_rows(ac_cuda_ctx_t *c, int n, int n_out, float *logits) {
  const ac_hparams_t *hp = &c->m->hp;
  const int E = hp->n_embd, hd = hp->head_dim, neox = hp->rope_type == AC_ROPE_NEOX;
  const float eps = hp->norm_eps;
  cudaStream_t s = c->stream;
  const int32_t *d_tok = c->d_i32, *d_pos = c->d_i32 + n, *d_seq = c->d_i32 + 2 * n, *d_rows = c->d_i32 + 3 * n;
  const size_t nE = (size_t)n * E;
  TRY(ac_cuk_get_rows(c->tok_embd.type, dptr(c, &c->tok_embd), E, d_tok, n, c->x, s));
  TRY(ac_cuk_rope_table(d_pos, n, hp->n_rot, c->theta_scale, hp->rope_freq_scale,
                        c->have_freqs ? dvec(c, c->freqs) : NULL, c->cs, s));
  for (int l = 0; l < hp->n_layer; l++) {
    const clayer_t *L = &c->layers[l];
    TRY(ac_cuk_rmsnorm(c->x, NULL, n, E, dvec(c, L->attn_norm), eps, c->xb, s));
    if (L->n_kv > 0) {
      const int64_t Q = (int64_t)L->n_head * hd, KV = (int64_t)L->n_kv * hd;
      TRY(mm(c, &L->wq, c->xb, n, c->q, Q));
      TRY(mm(c, &L->wk, c->xb, n, c->kk, KV));
      TRY(mm(c, &L->wv, c->xb, n, c->vv, KV));
      TRY(ac_cuk_rope(c->q, n, L->n_head, hd, hp->n_rot, neox, c->cs, s));
      TRY(ac_cuk_rope(c->kk, n, L->n_kv, hd, hp->n_rot, neox, c->cs, s));
      TRY(ac_cuk_kv_store(c->kk, c->vv, n, L->n_kv, hd, d_seq, d_pos, c->n_ctx, L->kc, L->vc, s));
      TRY(ac_cuk_attention(c->q, n, L->n_head, L->n_kv, hd, d_seq, d_pos, c->n_ctx, L->kc, L->vc, c->att, s));
      TRY(mm(c, &L->wo, c->att, n, c->xb, E));
    } else {
      TRY(zero(c, c->xb, nE));  // no heads on this rank: its share of the sum is zero
    }
    TRY(reduce(c, c->xb, nE));
    TRY(ac_cuk_add(c->x, c->xb, nE, s));

    TRY(ac_cuk_rmsnorm(c->x, NULL, n, E, dvec(c, L->ffn_norm), eps, c->xb, s));
    if (L->n_ff > 0) {
      TRY(mm(c, &L->gate, c->xb, n, c->hg, L->n_ff));
      TRY(mm(c, &L->up, c->xb, n, c->hu, L->n_ff));
      TRY(ac_cuk_swiglu(c->hg, c->hu, (size_t)n * L->n_ff, s));
      TRY(mm(c, &L->down, c->hg, n, c->xb, E));
    } else {
      TRY(zero(c, c->xb, nE));
    }
    TRY(reduce(c, c->xb, nE));
    TRY(ac_cuk_add(c->x, c->xb, nE, s));
  }
  if (n_out == 0) return 0;

  // The final norm of the rows that want logits, gathered; this rank's vocabulary slice of each.
  const size_t vp = (size_t)c->vocab_pad, V = (size_t)c->V;
  TRY(ac_cuk_rmsnorm(c->x, d_rows, n_out, E, dvec(c, c->out_norm), eps, c->xb, s));
  if (c->n_vocab < c->vocab_pad) TRY(zero(c, c->logits, (size_t)n_out * vp));
  if (c->n_vocab > 0) TRY(mm(c, &c->output, c->xb, n_out, c->logits, (int64_t)vp));
  const float *res = c->logits;
  if (c->size > 1) {
    CU(c, cudaStreamSynchronize(s), "computing logits");
    TRY(ac_comm_all_gather(c->comm, c->logits, c->gathered, (size_t)n_out * vp));
    TRY(ac_cuk_scatter_logits(c->gathered, c->size, n_out, c->vocab_pad, c->V, c->full, s));
    res = c->full;
  } else if (vp != V) {
    TRY(ac_cuk_scatter_logits(c->logits, 1, n_out, c->vocab_pad, c->V, c->full, s));
    res = c->full;
  }
  if (logits)
    CU(c, cudaMemcpyAsync(logits, res, (size_t)n_out * V * sizeof(float), cudaMemcpyDeviceToHost, s),
       "copying logits to the host");
  return 0;
}

int ac_cuda_ctx_eval(ac_cuda_ctx_t *c, int32_t n, const int32_t *tokens, const int32_t *pos,
                     const int32_t *seqs, const int8_t *want, float *logits) {
  if (n < 1 || n > c->n_batch)
    return ac_error(AC_ERANGE, "batch of %d rows (1..n_batch %d)", n, c->n_batch);
  if (!tokens || !pos) return ac_error(AC_EINVAL, "ac_cuda_ctx_eval: no tokens or positions");
  // The engine checked the batch; a bad index here would be a device fault, so check again.
  int32_t *h = c->h_i32, n_out = 0;
  for (int r = 0; r < n; r++) {
    int32_t sq = seqs ? seqs[r] : 0;
    if (tokens[r] < 0 || tokens[r] >= c->V || sq < 0 || sq >= c->n_seq || pos[r] < 0 || pos[r] >= c->n_ctx)
      return ac_error(AC_EINVAL, "row %d: token %d, sequence %d, position %d out of range", r, tokens[r], sq, pos[r]);
    h[r] = tokens[r];
    h[n + r] = pos[r];
    h[2 * n + r] = sq;
    if (want ? want[r] != 0 : r == n - 1) h[3 * n + n_out++] = r;
  }
  CU(c, cudaSetDevice(c->gpu), "cudaSetDevice");
  CU(c, cudaMemcpyAsync(c->d_i32, h, (size_t)(3 * n + n_out) * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream),
     "copying the batch to the device");
  int rc = eval_rows(c, n, n_out, logits);
  // Always wait: the pinned batch buffer and the caller's logits must be free when we return.
  cudaError_t e = cudaStreamSynchronize(c->stream);
  if (!rc && e != cudaSuccess) rc = cu_fail(e, c->gpu, "evaluating a batch");
  return rc;
}
