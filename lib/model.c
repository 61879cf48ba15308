// model.c - LLaMA forward pass on the CPU: RMSNorm, RoPE, grouped-query attention over an F16
// KV cache, SwiGLU, tied or untied output; batched over rows of several sequences.
#include "model.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "error.h"
#include "quant.h"
#include "threadpool.h"
#ifdef AC_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

// --- loading --------------------------------------------------------------------------------

// Reads "<arch>.<suffix>" as u32; `def` < 0 means required.
static int get_hp_u32(const ac_gguf_t *g, const char *arch, const char *suffix, int64_t def, int32_t *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  uint32_t v;
  int rc = ac_gguf_get_u32(g, key, &v);
  if (rc == AC_ENOTFOUND && def >= 0) {
    *out = (int32_t)def;
    return 0;
  }
  if (rc) return rc;
  if (v > INT32_MAX) return ac_error(AC_EFORMAT, "key '%s': %u is out of range", key, v);
  *out = (int32_t)v;
  return 0;
}

static int get_hp_f32(const ac_gguf_t *g, const char *arch, const char *suffix, float def, float *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  int rc = ac_gguf_get_f32(g, key, out);
  if (rc == AC_ENOTFOUND) {
    *out = def;
    return 0;
  }
  return rc;
}

// A per-layer hyper-parameter that may be a scalar or an array of n_layer values (pruned
// models). `def` < 0 means required; def_arr, if given, is the default per layer.
static int get_hp_layers(const ac_gguf_t *g, const char *arch, const char *suffix, int n_layer,
                         const int32_t *def_arr, int32_t *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  const ac_gguf_kv_t *kv = ac_gguf_find_kv(g, key);
  if (!kv) {
    if (!def_arr) return ac_error(AC_ENOTFOUND, "required key '%s' is missing", key);
    memcpy(out, def_arr, n_layer * sizeof *out);
    return 0;
  }
  if (kv->type == AC_GGUF_ARRAY) {
    if (kv->arr_n != (uint64_t)n_layer)
      return ac_error(AC_EFORMAT, "key '%s': %llu values for %d layers", key, (unsigned long long)kv->arr_n, n_layer);
    for (int l = 0; l < n_layer; l++) {
      uint32_t v;
      int rc = ac_gguf_arr_u32(kv, l, &v);
      if (rc) return rc;
      if (v == 0)
        return ac_error(AC_EUNSUPPORTED, "key '%s'[%d] = 0: layers without attention or FFN are not supported", key, l);
      if (v > (1u << 20)) return ac_error(AC_EFORMAT, "key '%s'[%d] = %u is out of range", key, l, v);
      out[l] = (int32_t)v;
    }
    return 0;
  }
  int32_t v;
  int rc = get_hp_u32(g, arch, suffix, -1, &v);
  if (rc) return rc;
  if (v == 0 || v > (1 << 20)) return ac_error(AC_EFORMAT, "key '%s' = %d is out of range", key, v);
  for (int l = 0; l < n_layer; l++) out[l] = v;
  return 0;
}

// Binds `name` (a 1-D vector of ne0 or a matrix ne0 x ne1) and checks its shape. An absent
// optional tensor leaves w->data NULL.
static int bind_factors(ac_model_t *m, ac_weight_t *w, const char *name, int64_t ne0, int64_t ne1);

// `vector`: a 1-D weight (a norm) of ne0 floats; otherwise a matrix with ne1 rows.
static int bind(ac_model_t *m, ac_weight_t *w, const char *name, int64_t ne0, int64_t ne1, bool optional, bool vector) {
  const ac_gguf_tensor_t *t = ac_gguf_find_tensor(m->gguf, name);
  memset(w, 0, sizeof *w);
  if (!t && !vector) {
    int rc = bind_factors(m, w, name, ne0, ne1);
    if (rc <= 0) return rc;  // bound as factors, or a clear error about them
  }
  if (!t) return optional ? 0 : ac_error(AC_ENOTFOUND, "required tensor '%s' is missing", name);
  const ac_type_traits_t *tt = ac_type_traits(t->type);
  if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
    return ac_error(AC_EFORMAT, "tensor '%s' has shape [%lld, %lld], want [%lld, %lld]", name,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)ne0, (long long)ne1);
  if (vector && t->type != AC_TYPE_F32)
    return ac_error(AC_EUNSUPPORTED, "tensor '%s': norm weights must be f32, have %s", name, tt->name);
  if (!vector) {
    const ac_type_traits_t *vt = ac_type_traits(tt->vec_dot_type);
    if (!tt->vec_dot || !vt || !vt->from_float || !tt->to_float)
      return ac_error(AC_EUNSUPPORTED, "tensor '%s': type %s has no CPU kernels", name, tt->name);
    if (ne0 % vt->blck_size)
      return ac_error(AC_EUNSUPPORTED, "tensor '%s': row length %lld does not fit %s blocks", name,
                      (long long)ne0, vt->name);
  }
  w->name = t->name;
  w->type = t->type;
  w->ne[0] = ne0;
  w->ne[1] = ne1;
  w->data = t->data;
  w->row_bytes = ac_row_size(t->type, ne0);
  w->stride = w->row_bytes;
  return 0;
}

// Binds NAME.lr_a [ne0, r] and NAME.lr_b [r, ne1] when the file factors NAME; returns 1 if it
// does not (neither factor present), 0 when bound, or an error.
static int bind_factors(ac_model_t *m, ac_weight_t *w, const char *name, int64_t ne0, int64_t ne1) {
  char an[256], bn[256];
  snprintf(an, sizeof an, "%s.lr_a", name);
  snprintf(bn, sizeof bn, "%s.lr_b", name);
  const ac_gguf_tensor_t *a = ac_gguf_find_tensor(m->gguf, an), *b = ac_gguf_find_tensor(m->gguf, bn);
  if (!a && !b) return 1;
  if (!a || !b) return ac_error(AC_EFORMAT, "low-rank weight '%s' needs both '%s' and '%s'", name, an, bn);
  int64_t r = a->ne[1];
  if (r < 1 || r > (ne0 < ne1 ? ne0 : ne1))
    return ac_error(AC_EFORMAT, "low-rank weight '%s': rank %lld is not in 1..min(%lld, %lld)", name, (long long)r,
                    (long long)ne0, (long long)ne1);
  ac_weight_t *f = &m->factors[2 * m->n_factored];
  int rc;
  if ((rc = bind(m, &f[0], an, ne0, r, false, false)) || (rc = bind(m, &f[1], bn, r, ne1, false, false))) return rc;
  m->n_factored++;
  if (r > m->max_rank) m->max_rank = r;
  w->name = f[0].name;
  w->type = f[0].type;
  w->ne[0] = ne0;
  w->ne[1] = ne1;
  w->lr_a = &f[0];
  w->lr_b = &f[1];
  return 0;
}

static int load_hparams(ac_model_t *m) {
  const ac_gguf_t *g = m->gguf;
  ac_hparams_t *hp = &m->hp;
  ac_str_t arch;
  int rc = ac_gguf_get_str(g, "general.architecture", &arch);
  if (rc) return rc;
  if (arch.len >= sizeof hp->arch) return ac_error(AC_EFORMAT, "general.architecture is too long");
  memcpy(hp->arch, arch.ptr, arch.len);
  hp->arch[arch.len] = 0;
  // The llama graph serves every architecture that is llama under another name. "deci" is
  // llama.cpp's name for llama models whose layers differ in head count and FFN width (what
  // structured pruning produces: llama.cpp checks llama-arch tensors against layer 0's shape).
  static const char *llama_like[] = {"llama", "deci"};
  bool known = false;
  for (size_t i = 0; i < sizeof llama_like / sizeof *llama_like; i++) known |= strcmp(hp->arch, llama_like[i]) == 0;
  if (!known)
    return ac_error(AC_EUNSUPPORTED, "architecture '%s' is not supported (supported: llama, deci)",
                    hp->arch);
  const char *a = hp->arch;

  if ((rc = get_hp_u32(g, a, "block_count", -1, &hp->n_layer)) ||
      (rc = get_hp_u32(g, a, "embedding_length", -1, &hp->n_embd)) ||
      (rc = get_hp_u32(g, a, "context_length", 2048, &hp->n_ctx_train)))
    return rc;
  if (hp->n_layer < 1 || hp->n_layer > 1024) return ac_error(AC_EFORMAT, "%s.block_count = %d is out of range", a, hp->n_layer);
  if (hp->n_embd < 1 || hp->n_embd > (1 << 17)) return ac_error(AC_EFORMAT, "%s.embedding_length = %d is out of range", a, hp->n_embd);
  int L = hp->n_layer;
  hp->n_head = calloc(L, sizeof(int32_t));
  hp->n_head_kv = calloc(L, sizeof(int32_t));
  hp->n_ff = calloc(L, sizeof(int32_t));
  if (!hp->n_head || !hp->n_head_kv || !hp->n_ff) return ac_error(AC_ENOMEM, "out of memory");
  if ((rc = get_hp_layers(g, a, "attention.head_count", L, NULL, hp->n_head)) ||
      (rc = get_hp_layers(g, a, "attention.head_count_kv", L, hp->n_head, hp->n_head_kv)) ||
      (rc = get_hp_layers(g, a, "feed_forward_length", L, NULL, hp->n_ff)))
    return rc;
  for (int l = 0; l < L; l++)
    if (hp->n_head[l] % hp->n_head_kv[l])
      return ac_error(AC_EFORMAT, "layer %d: %d heads is not a multiple of %d kv heads", l, hp->n_head[l], hp->n_head_kv[l]);
  int32_t hd_default = hp->n_embd / hp->n_head[0], vlen;
  if ((rc = get_hp_u32(g, a, "attention.key_length", hd_default, &hp->head_dim)) ||
      (rc = get_hp_u32(g, a, "attention.value_length", hp->head_dim, &vlen)))
    return rc;
  if (vlen != hp->head_dim) return ac_error(AC_EUNSUPPORTED, "key length %d != value length %d", hp->head_dim, vlen);
  if (hp->head_dim < 2 || hp->head_dim % 2 || hp->head_dim > 1024) return ac_error(AC_EFORMAT, "head size %d is invalid", hp->head_dim);
  if ((rc = get_hp_u32(g, a, "rope.dimension_count", hp->head_dim, &hp->n_rot))) return rc;
  if (hp->n_rot > hp->head_dim || hp->n_rot % 2) return ac_error(AC_EFORMAT, "rope.dimension_count %d is invalid", hp->n_rot);
  if ((rc = get_hp_f32(g, a, "rope.freq_base", 10000.0f, &hp->rope_theta)) ||
      (rc = get_hp_f32(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps)))
    return rc;
  float factor = 1.0f;
  char key[128];
  snprintf(key, sizeof key, "%s.rope.scaling.type", a);
  ac_str_t st;
  if (ac_gguf_get_str(g, key, &st) == 0 && st.len == 6 && memcmp(st.ptr, "linear", 6) == 0) {
    if ((rc = get_hp_f32(g, a, "rope.scaling.factor", 1.0f, &factor))) return rc;
  } else if ((rc = get_hp_f32(g, a, "rope.scale_linear", 1.0f, &factor))) {
    return rc;
  }
  if (!(factor > 0)) return ac_error(AC_EFORMAT, "rope scaling factor %g is invalid", factor);
  hp->rope_freq_scale = 1.0f / factor;
  hp->rope_type = AC_ROPE_NORM;  // llama GGUFs store q/k permuted for adjacent-pair rotation
  return 0;
}

int ac_model_load(const char *path, ac_model_t **out) { return ac_model_load_reuse(path, NULL, out); }

int ac_model_load_reuse(const char *path, ac_tokenizer_t *reuse, ac_model_t **out) {
  *out = NULL;
  ac_model_t *m = calloc(1, sizeof *m);
  if (!m) return ac_error(AC_ENOMEM, "out of memory");
  int rc = ac_gguf_open(path, &m->gguf);
  if (rc) goto fail;
  if ((rc = load_hparams(m))) goto fail;
  ac_hparams_t *hp = &m->hp;
  const ac_gguf_tensor_t *te = ac_gguf_find_tensor(m->gguf, "token_embd.weight");
  if (!te) {
    rc = ac_error(AC_ENOTFOUND, "required tensor 'token_embd.weight' is missing");
    goto fail;
  }
  hp->n_vocab = (int32_t)te->ne[1];
  int64_t E = hp->n_embd, V = hp->n_vocab, hd = hp->head_dim;
  if ((rc = bind(m, &m->tok_embd, "token_embd.weight", E, V, false, false)) ||
      (rc = bind(m, &m->output_norm, "output_norm.weight", E, 1, false, true)) ||
      (rc = bind(m, &m->output, "output.weight", E, V, true, false)))
    goto fail;
  if (m->tok_embd.lr_a) {
    rc = ac_error(AC_EFORMAT, "token_embd.weight cannot be stored as low-rank factors (it is looked up by row)");
    goto fail;
  }
  hp->tied_output = m->output.data == NULL && m->output.lr_a == NULL;
  if (hp->tied_output) m->output = m->tok_embd;

  const ac_gguf_tensor_t *rf = ac_gguf_find_tensor(m->gguf, "rope_freqs.weight");
  if (rf) {
    if (rf->type != AC_TYPE_F32 || rf->ne[0] != hp->n_rot / 2 || rf->ne[1] != 1) {
      rc = ac_error(AC_EFORMAT, "tensor 'rope_freqs.weight' must be f32 [%d]", hp->n_rot / 2);
      goto fail;
    }
    m->rope_freqs = rf->data;
  }

  m->layers = calloc(hp->n_layer, sizeof *m->layers);
  // Room for every matrix of every layer plus the output to be factored.
  m->factors = calloc(2 * (7 * (size_t)hp->n_layer + 1), sizeof *m->factors);
  if (!m->layers || !m->factors) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto fail;
  }
  for (int l = 0; l < hp->n_layer; l++) {
    ac_layer_t *ly = &m->layers[l];
    int64_t q = hp->n_head[l] * hd, kv = hp->n_head_kv[l] * hd, ff = hp->n_ff[l];
    char n[9][64];
    static const char *suffix[9] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};
    for (int i = 0; i < 9; i++) snprintf(n[i], sizeof n[i], "blk.%d.%s.weight", l, suffix[i]);
    if ((rc = bind(m, &ly->attn_norm, n[0], E, 1, false, true)) || (rc = bind(m, &ly->wq, n[1], E, q, false, false)) ||
        (rc = bind(m, &ly->wk, n[2], E, kv, false, false)) || (rc = bind(m, &ly->wv, n[3], E, kv, false, false)) ||
        (rc = bind(m, &ly->wo, n[4], q, E, false, false)) || (rc = bind(m, &ly->ffn_norm, n[5], E, 1, false, true)) ||
        (rc = bind(m, &ly->ffn_gate, n[6], E, ff, false, false)) || (rc = bind(m, &ly->ffn_up, n[7], E, ff, false, false)) ||
        (rc = bind(m, &ly->ffn_down, n[8], ff, E, false, false)))
      goto fail;
  }
  for (int64_t i = 0; i < ac_gguf_n_tensors(m->gguf); i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(m->gguf, i);
    m->weight_bytes += t->nbytes;
    m->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
  }
  if (reuse && ac_tokenizer_matches(reuse, m->gguf)) m->tok = ac_tokenizer_ref(reuse);
  else if ((rc = ac_tokenizer_from_gguf(m->gguf, &m->tok))) goto fail;
  if (ac_tokenizer_n_vocab(m->tok) > hp->n_vocab) {
    rc = ac_error(AC_EFORMAT, "tokenizer has %d tokens but the embedding only %d rows",
                  ac_tokenizer_n_vocab(m->tok), hp->n_vocab);
    goto fail;
  }
  *out = m;
  return 0;
fail:
  ac_model_destroy(&m);
  return rc;
}

void ac_model_destroy(ac_model_t **self_p) {
  ac_model_t *m = *self_p;
  if (!m) return;
  ac_tokenizer_destroy(&m->tok);
  free(m->layers);
  free(m->factors);
  free(m->hp.n_head);
  free(m->hp.n_head_kv);
  free(m->hp.n_ff);
  ac_gguf_close(&m->gguf);
  free(m);
  *self_p = NULL;
}

// --- tensor-parallel shards -------------------------------------------------------------------

static int64_t gcd64(int64_t a, int64_t b) { return b ? gcd64(b, a % b) : a; }
static int64_t lcm64(int64_t a, int64_t b) { return a / gcd64(a, b) * b; }

// Columns at which a row-parallel weight's input may be split: multiples of its block and of its
// activation type's block (for a factored weight, of the first factor's, which reads the input).
static int64_t split_unit(const ac_weight_t *w) {
  if (w->lr_a) w = w->lr_a;
  const ac_type_traits_t *tt = ac_type_traits(w->type);
  return lcm64(tt->blck_size, ac_type_traits(tt->vec_dot_type)->blck_size);
}

// Rank r's share [*lo, *hi) of n_chunks chunks split as evenly as they go.
static void share(int64_t n_chunks, int r, int k, int64_t *lo, int64_t *hi) {
  *lo = n_chunks * r / k;
  *hi = n_chunks * (r + 1) / k;
}

// Rows [r0, r0 + n) of w (column-parallel): a factored weight keeps its first factor whole and
// takes the rows of the second.
static ac_weight_t view_rows(ac_shard_t *s, int *nf, const ac_weight_t *w, int64_t r0, int64_t n) {
  ac_weight_t v = *w;
  v.ne[1] = n;
  if (w->lr_a) {
    ac_weight_t *b = &s->factors[(*nf)++];
    *b = view_rows(s, nf, w->lr_b, r0, n);
    v.lr_b = b;
  } else {
    v.data = (const uint8_t *)w->data + r0 * w->stride;
  }
  return v;
}

// Columns [c0, c0 + n) of every row of w (row-parallel; c0 and n on block boundaries): a factored
// weight takes the columns of its first factor and keeps the second whole, so each rank's
// product B·(A_cols x_cols) is a partial sum of B·A x.
static ac_weight_t view_cols(ac_shard_t *s, int *nf, const ac_weight_t *w, int64_t c0, int64_t n) {
  ac_weight_t v = *w;
  v.ne[0] = n;
  if (w->lr_a) {
    ac_weight_t *a = &s->factors[(*nf)++];
    *a = view_cols(s, nf, w->lr_a, c0, n);
    v.lr_a = a;
  } else {
    v.data = (const uint8_t *)w->data + ac_row_size(w->type, c0);
    v.row_bytes = ac_row_size(w->type, n);
  }
  return v;
}

int ac_model_shard(const ac_model_t *m, int rank, int size, ac_shard_t *out) {
  memset(out, 0, sizeof *out);
  const ac_hparams_t *hp = &m->hp;
  if (size < 1 || rank < 0 || rank >= size) return ac_error(AC_EINVAL, "rank %d of a group of %d", rank, size);
  out->rank = rank;
  out->size = size;
  out->layers = calloc(hp->n_layer, sizeof *out->layers);
  out->factors = calloc(8 * (size_t)hp->n_layer + 2, sizeof *out->factors);
  if (!out->layers || !out->factors) {
    ac_shard_free(out);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  int nf = 0;
  const int64_t hd = hp->head_dim;
  for (int l = 0; l < hp->n_layer; l++) {
    const ac_layer_t *ly = &m->layers[l];
    ac_layer_shard_t *sl = &out->layers[l];
    const int64_t Hkv = hp->n_head_kv[l], group = hp->n_head[l] / Hkv, F = hp->n_ff[l];
    // Whole kv heads, in chunks whose first column in wo's input is on a block boundary.
    int64_t head_cols = group * hd, step = lcm64(head_cols, split_unit(&ly->wo)) / head_cols, lo, hi;
    share((Hkv + step - 1) / step, rank, size, &lo, &hi);
    lo *= step;
    hi = hi * step < Hkv ? hi * step : Hkv;
    if (lo > hi) lo = hi;
    sl->kv0 = (int32_t)lo;
    sl->n_kv = (int32_t)(hi - lo);
    sl->wq = view_rows(out, &nf, &ly->wq, lo * head_cols, (hi - lo) * head_cols);
    sl->wk = view_rows(out, &nf, &ly->wk, lo * hd, (hi - lo) * hd);
    sl->wv = view_rows(out, &nf, &ly->wv, lo * hd, (hi - lo) * hd);
    sl->wo = view_cols(out, &nf, &ly->wo, lo * head_cols, (hi - lo) * head_cols);
    int64_t unit = split_unit(&ly->ffn_down);
    share((F + unit - 1) / unit, rank, size, &lo, &hi);
    lo *= unit;
    hi = hi * unit < F ? hi * unit : F;
    if (lo > hi) lo = hi;
    sl->ff0 = (int32_t)lo;
    sl->n_ff = (int32_t)(hi - lo);
    sl->ffn_gate = view_rows(out, &nf, &ly->ffn_gate, lo, hi - lo);
    sl->ffn_up = view_rows(out, &nf, &ly->ffn_up, lo, hi - lo);
    sl->ffn_down = view_cols(out, &nf, &ly->ffn_down, lo, hi - lo);
  }
  const int64_t V = hp->n_vocab;
  out->vocab_pad = (int32_t)((V + size - 1) / size);
  int64_t v0 = (int64_t)rank * out->vocab_pad, nv = V - v0 < out->vocab_pad ? V - v0 : out->vocab_pad;
  if (nv < 0) nv = 0;
  out->vocab0 = (int32_t)(v0 < V ? v0 : V);
  out->n_vocab = (int32_t)nv;
  out->output = view_rows(out, &nf, &m->output, out->vocab0, nv);
  return 0;
}

void ac_shard_free(ac_shard_t *s) {
  free(s->layers);
  free(s->factors);
  memset(s, 0, sizeof *s);
}

// --- contexts -------------------------------------------------------------------------------

struct ac_ctx {
  const ac_model_t *m;
  ac_ctx_params_t p;
  ac_pool_t *pool;
  ac_shard_t shard;  // this rank's views (the whole model without tensor parallelism)
  ac_comm_t *comm;   // NULL without tensor parallelism
  // A group this context built itself (p.tp > 1, no p.comm): the followers' contexts, their
  // threads, and the communicators (the leader's is comms[0]).
  ac_ctx_t **followers;
  pthread_t *threads;
  ac_comm_t **comms;
  int n_followers;
  // The leader's calls as broadcast to the followers (n_batch each).
  int32_t *bc_tokens, *bc_seqs;
  int8_t *bc_want;
  // KV cache of this rank's kv heads, per layer, f16: k[l] is (n_seq, n_kv, n_ctx, head_dim), so
  // one head's keys are contiguous rows; v[l] is (n_seq, n_kv, head_dim, n_ctx), transposed, so
  // each output dimension of attention is one dot product over positions.
  uint16_t **k, **v;
  size_t kv_bytes;
  int32_t *seq_len;  // (n_seq)
  // Scratch for one batch of up to n_batch rows, one allocation (see ctx_new for the shapes).
  float *buf;
  float *x, *xb, *q, *kk, *vv, *att, *hg, *hu;
  float *lgt, *lgt_all;  // tensor parallelism: this rank's logits (n_batch, vocab_pad), all ranks'
  void *actq;        // activation rows converted to a weight's vec_dot_type
  float *scores;     // (n_threads, n_ctx) attention scores
  uint16_t *probs;   // (n_threads, n_ctx) attention probabilities rounded to f16
  float *rope_cs;    // (n_batch, n_rot) cos, sin pairs
  float *lr_tmp;     // (n_batch, max_rank) A·x of a low-rank weight
  int32_t *pos;      // (n_batch) position of each row
  int32_t max_q, max_kv, max_ff;
#ifdef AC_HAVE_CUDA
  ac_cuda_ctx_t *cuda;  // the arithmetic runs there when p.backend is AC_BACKEND_CUDA
#endif
  ac_observer_fn observer;
  void *observer_user;
  bool ready;  // fully built: a leader's destroy then tells its followers to stop
};

static int group_new(const ac_model_t *m, ac_ctx_params_t p, ac_ctx_t *leader);

int ac_ctx_new(const ac_model_t *m, ac_ctx_params_t p, ac_ctx_t **out) {
  *out = NULL;
  const ac_hparams_t *hp = &m->hp;
  if (p.n_ctx <= 0) p.n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
  if (p.n_seq <= 0) p.n_seq = 1;
  if (p.n_batch <= 0) p.n_batch = 512;
  if (p.n_threads <= 0) p.n_threads = 1;
  if (p.tp <= 0) p.tp = 1;
  if (p.n_ctx > (1 << 20) || p.n_seq > 4096 || p.n_batch > 65536 || p.n_threads > 512 || p.tp > 64)
    return ac_error(AC_ERANGE, "context parameters out of range");
  if (p.comm && p.tp > 1 && p.tp != p.comm->size)
    return ac_error(AC_EINVAL, "tp %d does not match the communicator's group of %d", p.tp, p.comm->size);
  if (p.backend != AC_BACKEND_CPU && p.backend != AC_BACKEND_CUDA) return ac_error(AC_EINVAL, "unknown backend %d", p.backend);
#ifndef AC_HAVE_CUDA
  if (p.backend == AC_BACKEND_CUDA)
    return ac_error(AC_EUNSUPPORTED, "this build has no CUDA backend (configure with -DAC_CUDA=ON)");
#endif
  if (p.backend == AC_BACKEND_CUDA && p.tp > 1 && !p.comm)
    return ac_error(AC_EUNSUPPORTED, "tensor parallelism on CUDA runs one process per GPU (give a NCCL communicator)");
  ac_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return ac_error(AC_ENOMEM, "out of memory");
  c->m = m;
  c->p = p;
  c->comm = p.comm;
  int rc = ac_model_shard(m, c->comm ? c->comm->rank : 0, c->comm ? c->comm->size : p.tp, &c->shard);
  if (rc) {
    free(c);
    return rc;
  }
  if (p.tp > 1 && !p.comm) {  // builds the group: this context is rank 0
    if ((rc = group_new(m, p, c))) {
      ac_ctx_destroy(&c);
      return rc;
    }
  }
  const ac_shard_t *sh = &c->shard;
  int L = hp->n_layer, hd = hp->head_dim;
  for (int l = 0; l < L; l++) {
    int32_t kv = sh->layers[l].n_kv * hd, q = kv * (hp->n_head[l] / hp->n_head_kv[l]);
    if (q > c->max_q) c->max_q = q;
    if (kv > c->max_kv) c->max_kv = kv;
    if (sh->layers[l].n_ff > c->max_ff) c->max_ff = sh->layers[l].n_ff;
  }
  size_t B = p.n_batch, E = hp->n_embd;
  c->seq_len = calloc(p.n_seq, sizeof *c->seq_len);
  c->pos = malloc(B * sizeof *c->pos);
  c->bc_tokens = malloc(B * sizeof *c->bc_tokens);
  c->bc_seqs = malloc(B * sizeof *c->bc_seqs);
  c->bc_want = malloc(B);
  if (!c->seq_len || !c->pos || !c->bc_tokens || !c->bc_seqs || !c->bc_want) goto oom;
  if (sh->size > 1 && p.backend == AC_BACKEND_CPU) {
    c->lgt = malloc(B * sh->vocab_pad * sizeof *c->lgt);
    c->lgt_all = malloc(B * sh->vocab_pad * sh->size * sizeof *c->lgt_all);
    if (!c->lgt || !c->lgt_all) goto oom;
  }
#ifdef AC_HAVE_CUDA
  if (p.backend == AC_BACKEND_CUDA) {
    if ((rc = ac_cuda_ctx_new(m, sh, c->comm, &c->p, &c->cuda))) {
      ac_ctx_destroy(&c);
      return rc;
    }
    c->kv_bytes = ac_cuda_ctx_kv_bytes(c->cuda);
    c->ready = true;
    *out = c;
    return 0;
  }
#endif
  c->k = calloc(L, sizeof *c->k);
  c->v = calloc(L, sizeof *c->v);
  if (!c->k || !c->v) goto oom;
  for (int l = 0; l < L; l++) {
    size_t n = (size_t)p.n_seq * sh->layers[l].n_kv * p.n_ctx * hd;
    c->k[l] = malloc(n * sizeof(uint16_t) + 1);
    c->v[l] = malloc(n * sizeof(uint16_t) + 1);
    if (!c->k[l] || !c->v[l]) goto oom;
    c->kv_bytes += 2 * n * sizeof(uint16_t);
  }
  size_t widest = E > (size_t)c->max_q ? E : (size_t)c->max_q;
  if ((size_t)c->max_ff > widest) widest = c->max_ff;
  size_t floats = B * E * 2 + B * c->max_q * 2 + B * c->max_kv * 2 + B * c->max_ff * 2 +
                  (size_t)p.n_threads * p.n_ctx + B * hp->n_rot;
  c->buf = malloc(floats * sizeof(float));
  // The widest activation row in the largest vec_dot_type (f32 = 4 bytes per element).
  c->actq = malloc(B * widest * sizeof(float) + 64);
  c->probs = malloc((size_t)p.n_threads * p.n_ctx * sizeof *c->probs);
  c->lr_tmp = malloc(B * (m->max_rank ? m->max_rank : 1) * sizeof *c->lr_tmp);
  if (!c->buf || !c->actq || !c->probs || !c->lr_tmp) goto oom;
  float *f = c->buf;
  c->x = f, f += B * E;          // (B, n_embd) residual stream
  c->xb = f, f += B * E;         // (B, n_embd) normed input; partial sums of row-parallel products
  c->q = f, f += B * c->max_q;   // (B, this rank's query heads * hd)
  c->att = f, f += B * c->max_q; // (B, this rank's query heads * hd) attention output
  c->kk = f, f += B * c->max_kv; // (B, this rank's kv heads * hd)
  c->vv = f, f += B * c->max_kv;
  c->hg = f, f += B * c->max_ff; // (B, this rank's FFN columns) gate, then silu(gate)*up
  c->hu = f, f += B * c->max_ff; // (B, this rank's FFN columns) up
  c->scores = f, f += (size_t)p.n_threads * p.n_ctx;
  c->rope_cs = f;
  c->pool = ac_pool_new(p.n_threads);
  if (!c->pool) goto oom;
  c->ready = true;
  *out = c;
  return 0;
oom:
  ac_ctx_destroy(&c);
  return ac_error(AC_ENOMEM, "out of memory for a context of %d positions x %d sequences", p.n_ctx, p.n_seq);
}

// --- the tensor-parallel group ------------------------------------------------------------------
// Rank 0 (the leader) broadcasts a header for each call, then the call's rows; the followers run
// the same call on their shards. Collectives inside the forward pass keep the ranks in step.

enum { OP_EVAL = 1, OP_TRUNCATE = 2, OP_STOP = 3 };
typedef struct {
  int32_t op, n, seq, len;
} call_t;

static void *follower_main(void *arg) {
  ac_ctx_t *c = arg;
  int rc = ac_ctx_follow(c);
  if (rc) fprintf(stderr, "tensor-parallel rank %d stopped: %s\n", c->comm->rank, ac_errmsg());
  return NULL;
}

static int group_new(const ac_model_t *m, ac_ctx_params_t p, ac_ctx_t *leader) {
  int K = p.tp, rc;
  leader->comms = calloc(K, sizeof *leader->comms);
  leader->followers = calloc(K - 1, sizeof *leader->followers);
  leader->threads = calloc(K - 1, sizeof *leader->threads);
  if (!leader->comms || !leader->followers || !leader->threads) return ac_error(AC_ENOMEM, "out of memory");
  if ((rc = ac_comm_cpu_group(K, leader->comms))) return rc;
  leader->comm = leader->comms[0];
  for (int r = 1; r < K; r++) {
    ac_ctx_params_t fp = p;
    fp.comm = leader->comms[r];
    fp.tp = K;
    if ((rc = ac_ctx_new(m, fp, &leader->followers[r - 1]))) return rc;
  }
  for (int r = 1; r < K; r++) {
    if (pthread_create(&leader->threads[r - 1], NULL, follower_main, leader->followers[r - 1]))
      return ac_error(AC_ENOMEM, "cannot start the thread of rank %d", r);
    leader->n_followers = r;
  }
  return 0;
}

// Sends a call to the followers (a no-op without a group).
static int lead(ac_ctx_t *c, call_t call) {
  if (!c->comm || c->comm->size == 1) return 0;
  return ac_comm_broadcast(c->comm, &call, sizeof call, 0);
}

void ac_ctx_destroy(ac_ctx_t **self_p) {
  ac_ctx_t *c = *self_p;
  if (!c) return;
  bool leader = c->comm && c->comm->size > 1 && c->comm->rank == 0;
  // Followers wait for a call only once they run ac_ctx_follow: those of a group this context
  // started in full, or those of the caller's group once this context was built (a failed build
  // must not send them a call they are not waiting for).
  if (leader && (c->comms ? c->n_followers == c->comm->size - 1 : c->ready)) lead(c, (call_t){OP_STOP, 0, 0, 0});
  for (int r = 0; r < c->n_followers; r++) pthread_join(c->threads[r], NULL);
  if (c->followers)
    for (int r = 0; r < c->p.tp - 1; r++) ac_ctx_destroy(&c->followers[r]);
  if (c->comms)
    for (int r = 0; r < c->p.tp; r++) ac_comm_destroy(&c->comms[r]);
  free(c->followers);
  free(c->threads);
  free(c->comms);
#ifdef AC_HAVE_CUDA
  ac_cuda_ctx_destroy(&c->cuda);
#endif
  for (int l = 0; c->k && l < c->m->hp.n_layer; l++) free(c->k[l]);
  for (int l = 0; c->v && l < c->m->hp.n_layer; l++) free(c->v[l]);
  free(c->k);
  free(c->v);
  free(c->seq_len);
  free(c->buf);
  free(c->lgt);
  free(c->lgt_all);
  free(c->actq);
  free(c->pos);
  free(c->bc_tokens);
  free(c->bc_seqs);
  free(c->bc_want);
  free(c->probs);
  free(c->lr_tmp);
  ac_pool_destroy(&c->pool);
  ac_shard_free(&c->shard);
  free(c);
  *self_p = NULL;
}

void ac_ctx_set_observer(ac_ctx_t *ctx, ac_observer_fn fn, void *user) {
  ctx->observer = fn;
  ctx->observer_user = user;
}

int32_t ac_ctx_n_ctx(const ac_ctx_t *ctx) { return ctx->p.n_ctx; }
int32_t ac_ctx_n_batch(const ac_ctx_t *ctx) { return ctx->p.n_batch; }
size_t ac_ctx_kv_bytes(const ac_ctx_t *ctx) { return ctx->kv_bytes; }

void ac_ctx_upload_stats(const ac_ctx_t *ctx, ac_upload_stats_t *out) {
  memset(out, 0, sizeof *out);
#ifdef AC_HAVE_CUDA
  if (ctx->cuda) {
    ac_cuda_load_stats_t st;
    ac_cuda_ctx_load_stats(ctx->cuda, &st);
    *out = (ac_upload_stats_t){st.bytes, st.read_s, st.copy_s, st.total_s};
  }
#else
  (void)ctx;
#endif
}
int32_t ac_ctx_seq_len(const ac_ctx_t *ctx, int32_t seq) {
  return seq >= 0 && seq < ctx->p.n_seq ? ctx->seq_len[seq] : -1;
}

static bool is_follower(const ac_ctx_t *c) { return c->comm && c->comm->rank != 0; }

static void truncate_seq(ac_ctx_t *ctx, int32_t seq, int32_t len) {
  if (len < ctx->seq_len[seq]) ctx->seq_len[seq] = len;
}

int ac_ctx_seq_truncate(ac_ctx_t *ctx, int32_t seq, int32_t len) {
  if (is_follower(ctx)) return ac_error(AC_EINVAL, "rank %d follows its leader: only rank 0 takes calls", ctx->comm->rank);
  if (seq < 0 || seq >= ctx->p.n_seq) return ac_error(AC_EINVAL, "no sequence slot %d", seq);
  if (len < 0) return ac_error(AC_EINVAL, "negative length");
  int rc = lead(ctx, (call_t){OP_TRUNCATE, 0, seq, len});
  if (rc) return rc;
  truncate_seq(ctx, seq, len);
  return 0;
}

// --- matrix multiplication ----------------------------------------------------------------
// Up to three weights that read the same input (q/k/v, gate/up) run as one job, their output
// rows split evenly across the threads, so a decode step pays one dispatch per group.

typedef struct {
  int n_w;
  const ac_weight_t *w[3];
  float *out[3];     // (n_rows, w->ne[1])
  int n_rows;
  const void *act;   // n_rows activation rows in vec_dot_type
  size_t act_stride; // bytes per activation row
} matmul_job_t;

static void matmul_worker(void *arg, int ith, int nth) {
  const matmul_job_t *j = arg;
  int64_t total = 0;
  for (int i = 0; i < j->n_w; i++) total += j->w[i]->ne[1];
  // Contiguous ranges over the concatenated output rows.
  int64_t per = (total + nth - 1) / nth, lo = per * ith, hi = lo + per < total ? lo + per : total;
  int64_t base = 0;
  for (int i = 0; i < j->n_w && lo < hi; i++) {
    const ac_weight_t *w = j->w[i];
    int64_t M = w->ne[1], r0 = lo - base, r1 = hi - base;
    base += M;
    if (r1 <= 0 || r0 >= M) continue;
    if (r0 < 0) r0 = 0;
    if (r1 > M) r1 = M;
    const ac_type_traits_t *tt = ac_type_traits(w->type);
    const uint8_t *wd = w->data, *act = j->act;
    const size_t as = j->act_stride;
    float *out = j->out[i];
    // Rows in tiles of 16 activation rows: each weight row is read from memory once per tile.
    // Within a tile, vec_dot_4 takes 2 weight rows by 4 activation rows at a time (the same bits
    // as vec_dot on each pair); the activation rows left over (all of them in decode, where there
    // is one) take 4 weight rows at a time through vec_dot_r4 (again the same bits as vec_dot),
    // and what is left after that goes pair by pair.
    for (int n0 = 0; n0 < j->n_rows; n0 += 16) {
      int n1 = n0 + 16 < j->n_rows ? n0 + 16 : j->n_rows;
      int n4 = tt->vec_dot_4 ? n0 + (n1 - n0) / 4 * 4 : n0;
      int64_t r = r0;
      if (tt->vec_dot_r4 && n4 < n1) {
        for (; r + 4 <= r1; r += 4) {
          const uint8_t *wrow = wd + r * w->stride;
          for (int n = n0; n < n4; n += 4)
            for (int k = 0; k < 4; k += 2)
              tt->vec_dot_4(w->ne[0], 2, &out[(size_t)n * M + r + k], (size_t)M, wrow + k * w->stride, w->stride, act + n * as, as);
          for (int n = n4; n < n1; n++)
            tt->vec_dot_r4(w->ne[0], &out[(size_t)n * M + r], wrow, w->stride, act + n * as);
        }
      }
      for (; r < r1; r += 2) {
        const int nr = r + 2 <= r1 ? 2 : 1;
        const uint8_t *wrow = wd + r * w->stride;
        for (int n = n0; n < n4; n += 4)
          tt->vec_dot_4(w->ne[0], nr, &out[(size_t)n * M + r], (size_t)M, wrow, w->stride, act + n * as, as);
        for (int k = 0; k < nr; k++)
          for (int n = n4; n < n1; n++)
            tt->vec_dot(w->ne[0], &out[(size_t)n * M + r + k], wrow + k * w->stride, act + n * as);
      }
    }
  }
}

typedef struct {
  const float *x;
  int64_t ne0;
  int n_rows;
  ac_from_float_fn from_float;
  void *dst;
  size_t stride;
} quantize_job_t;

static void quantize_worker(void *arg, int ith, int nth) {
  const quantize_job_t *j = arg;
  for (int n = ith; n < j->n_rows; n += nth)
    j->from_float(j->x + (size_t)n * j->ne0, (uint8_t *)j->dst + n * j->stride, j->ne0);
}

// out_i = x @ w_i^T for each weight; all weights must share their input size and type.
static void matmul(ac_ctx_t *c, int n_w, const ac_weight_t *const *w, float *const *out, const float *x, int n_rows) {
  const ac_type_traits_t *tt = ac_type_traits(w[0]->type);
  const ac_type_traits_t *vt = ac_type_traits(tt->vec_dot_type);
  quantize_job_t qj = {x, w[0]->ne[0], n_rows, vt->from_float, c->actq, ac_row_size(tt->vec_dot_type, w[0]->ne[0])};
  if (n_rows == 1) quantize_worker(&qj, 0, 1);
  else ac_pool_run(c->pool, quantize_worker, &qj);
  matmul_job_t j = {.n_w = n_w, .n_rows = n_rows, .act = c->actq, .act_stride = qj.stride};
  for (int i = 0; i < n_w; i++) j.w[i] = w[i], j.out[i] = out[i];
  ac_pool_run(c->pool, matmul_worker, &j);
}

// out = x @ w^T; a low-rank weight runs as (x @ A^T) @ B^T.
static void matmul1(ac_ctx_t *c, const ac_weight_t *w, float *out, const float *x, int n_rows) {
  if (w->lr_a) {
    matmul(c, 1, &w->lr_a, &c->lr_tmp, x, n_rows);
    matmul(c, 1, &w->lr_b, &out, c->lr_tmp, n_rows);
    return;
  }
  matmul(c, 1, &w, &out, x, n_rows);
}

// Groups weights that can share one quantized input (same type, dense); others go alone.
static void matmul_group(ac_ctx_t *c, int n_w, const ac_weight_t *const *w, float *const *out, const float *x, int n_rows) {
  bool same = !w[0]->lr_a;
  for (int i = 1; i < n_w; i++) same &= w[i]->type == w[0]->type && !w[i]->lr_a;
  if (same) {
    matmul(c, n_w, w, out, x, n_rows);
    return;
  }
  for (int i = 0; i < n_w; i++) matmul1(c, w[i], out[i], x, n_rows);
}

// --- element-wise pieces --------------------------------------------------------------------

// The mean square is summed in double and rounded to float before the square root, and the row is
// scaled before it is multiplied by the weight: ggml's order of operations. The quantized matmuls
// that follow amplify tiny differences (a value that lands on the other side of a rounding step),
// so matching the reference engine's arithmetic here keeps logits comparable.
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
  const float mean = (float)(ss / n);
  const float scale = 1.0f / sqrtf(mean + eps);
  for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

// Rotates one head in place with the row's precomputed (cos, sin) pairs.
static void rope_head(float *h, const float *cs, int n_rot, ac_rope_type_t type) {
  int half = n_rot / 2;
  for (int i = 0; i < half; i++) {
    int a = type == AC_ROPE_NEOX ? i : 2 * i, b = type == AC_ROPE_NEOX ? i + half : 2 * i + 1;
    float c = cs[2 * i], s = cs[2 * i + 1], x0 = h[a], x1 = h[b];
    h[a] = x0 * c - x1 * s;
    h[b] = x0 * s + x1 * c;
  }
}

// The angle of pair i is pos * base^(-2i/n_rot), built by repeated multiplication with
// base^(-2/n_rot) in float, as ggml does (a direct powf per pair differs by a few ulps, which the
// angles of late positions magnify).
static void rope_tables(ac_ctx_t *c, int n) {
  const ac_hparams_t *hp = &c->m->hp;
  int half = hp->n_rot / 2;
  const float theta_scale = powf(hp->rope_theta, -2.0f / hp->n_rot);
  for (int r = 0; r < n; r++) {
    float *cs = c->rope_cs + (size_t)r * hp->n_rot;
    float theta = (float)c->pos[r];
    for (int i = 0; i < half; i++) {
      float t = theta;
      if (c->m->rope_freqs) t /= c->m->rope_freqs[i];
      t *= hp->rope_freq_scale;
      cs[2 * i] = cosf(t);
      cs[2 * i + 1] = sinf(t);
      theta *= theta_scale;
    }
  }
}

// --- attention ------------------------------------------------------------------------------

typedef struct {
  ac_ctx_t *c;
  int layer, n_rows;
  const int32_t *seqs;
} attn_job_t;

// One (row, head) pair per unit of work: softmax(q k^T / sqrt(hd)) v over the row's sequence up
// to and including its own position. q and the probabilities are rounded to f16 to meet the f16
// cache in the f16 dot kernel, as ggml's (non-flash) attention does.
static void attn_worker(void *arg, int ith, int nth) {
  const attn_job_t *j = arg;
  ac_ctx_t *c = j->c;
  const ac_hparams_t *hp = &c->m->hp;
  int l = j->layer, group = hp->n_head[l] / hp->n_head_kv[l], hd = hp->head_dim, T = c->p.n_ctx;
  int Hkv = c->shard.layers[l].n_kv, H = Hkv * group;  // this rank's heads
  float scale = 1.0f / sqrtf((float)hd);
  float *sc = c->scores + (size_t)ith * T;
  uint16_t *p16 = c->probs + (size_t)ith * T;
  const ac_type_traits_t *f16 = ac_type_traits(AC_TYPE_F16);
  uint16_t qh[1024];
  for (int u = ith; u < j->n_rows * H; u += nth) {
    int r = u / H, h = u % H, kvh = h / group;
    int seq = j->seqs ? j->seqs[r] : 0, len = c->pos[r] + 1;
    const float *q = c->q + (size_t)r * H * hd + (size_t)h * hd;
    size_t base = ((size_t)seq * Hkv + kvh) * T * hd;
    const uint16_t *K = c->k[l] + base, *Vt = c->v[l] + base;
    f16->from_float(q, qh, hd);
    float mx = -INFINITY;
    for (int t = 0; t < len; t++) {
      float s;
      f16->vec_dot(hd, &s, K + (size_t)t * hd, qh);
      sc[t] = s * scale;
      if (sc[t] > mx) mx = sc[t];
    }
    double sum = 0;
    for (int t = 0; t < len; t++) sum += sc[t] = expf(sc[t] - mx);
    const float inv = (float)(1.0 / sum);
    for (int t = 0; t < len; t++) sc[t] *= inv;
    f16->from_float(sc, p16, len);
    float *o = c->att + (size_t)r * H * hd + (size_t)h * hd;
    for (int i = 0; i < hd; i++) f16->vec_dot(len, &o[i], Vt + (size_t)i * T, p16);
  }
}

// --- the forward pass -----------------------------------------------------------------------

// Checks a batch and gives each row its position; on error nothing has changed.
static int place_rows(ac_ctx_t *c, int32_t n, const int32_t *tokens, const int32_t *seqs) {
  const ac_hparams_t *hp = &c->m->hp;
  if (n <= 0) return ac_error(AC_EINVAL, "empty batch");
  if (n > c->p.n_batch) return ac_error(AC_ERANGE, "batch of %d rows is larger than n_batch %d", n, c->p.n_batch);
  for (int r = 0; r < n; r++) {
    int s = seqs ? seqs[r] : 0;
    if (s < 0 || s >= c->p.n_seq) return ac_error(AC_EINVAL, "row %d: no sequence slot %d", r, s);
    if (tokens[r] < 0 || tokens[r] >= hp->n_vocab)
      return ac_error(AC_EINVAL, "row %d: token id %d is outside the vocabulary (%d)", r, tokens[r], hp->n_vocab);
  }
  for (int r = 0; r < n; r++) {
    int s = seqs ? seqs[r] : 0;
    c->pos[r] = c->seq_len[s]++;
  }
  for (int r = 0; r < n; r++) {
    if (c->pos[r] >= c->p.n_ctx) {
      for (int q = 0; q < n; q++) c->seq_len[seqs ? seqs[q] : 0]--;
      return ac_error(AC_ERANGE, "sequence %d is full: position %d is past the context of %d tokens",
                      seqs ? seqs[r] : 0, c->pos[r], c->p.n_ctx);
    }
  }
  return 0;
}

// Sums this rank's partial products (n rows of the residual width) over the group.
static int reduce(ac_ctx_t *c, float *x, int n) {
  if (c->shard.size == 1) return 0;
  return ac_comm_all_reduce_sum(c->comm, x, (size_t)n * c->m->hp.n_embd);
}

// The layers and the logits for rows whose positions place_rows assigned. `want` is never NULL
// here. Followers pass logits NULL: they compute their slice and take part in the gather only.
static int forward(ac_ctx_t *c, int32_t n, const int32_t *tokens, const int32_t *seqs, const int8_t *want, float *logits) {
  const ac_model_t *m = c->m;
  const ac_hparams_t *hp = &m->hp;
  const ac_shard_t *sh = &c->shard;
  int rc;
#ifdef AC_HAVE_CUDA
  if (c->cuda) return ac_cuda_ctx_eval(c->cuda, n, tokens, c->pos, seqs, want, logits);
#endif
  int E = hp->n_embd, hd = hp->head_dim, T = c->p.n_ctx;
  const ac_type_traits_t *et = ac_type_traits(m->tok_embd.type);
  const ac_type_traits_t *f16 = ac_type_traits(AC_TYPE_F16);
  for (int r = 0; r < n; r++)
    et->to_float((const uint8_t *)m->tok_embd.data + (size_t)tokens[r] * m->tok_embd.stride, c->x + (size_t)r * E, E);
  rope_tables(c, n);

  for (int l = 0; l < hp->n_layer; l++) {
    const ac_layer_t *ly = &m->layers[l];
    const ac_layer_shard_t *sl = &sh->layers[l];
    int Hkv = sl->n_kv, H = Hkv * (hp->n_head[l] / hp->n_head_kv[l]), Q = H * hd, KV = Hkv * hd, F = sl->n_ff;
    for (int r = 0; r < n; r++) rmsnorm(c->xb + (size_t)r * E, c->x + (size_t)r * E, ly->attn_norm.data, E, hp->norm_eps);
    if (H) {
      const ac_weight_t *qkv[3] = {&sl->wq, &sl->wk, &sl->wv};
      float *qkv_out[3] = {c->q, c->kk, c->vv};
      matmul_group(c, 3, qkv, qkv_out, c->xb, n);
      for (int r = 0; r < n; r++) {
        const float *cs = c->rope_cs + (size_t)r * hp->n_rot;
        for (int h = 0; h < H; h++) rope_head(c->q + (size_t)r * Q + h * hd, cs, hp->n_rot, hp->rope_type);
        for (int h = 0; h < Hkv; h++) rope_head(c->kk + (size_t)r * KV + h * hd, cs, hp->n_rot, hp->rope_type);
        int s = seqs ? seqs[r] : 0;
        for (int h = 0; h < Hkv; h++) {
          size_t head = ((size_t)s * Hkv + h) * T * hd;
          f16->from_float(c->kk + (size_t)r * KV + h * hd, c->k[l] + head + (size_t)c->pos[r] * hd, hd);
          const float *v = c->vv + (size_t)r * KV + h * hd;
          uint16_t *vt = c->v[l] + head + c->pos[r];
          for (int i = 0; i < hd; i++) vt[(size_t)i * T] = ac_f32_to_f16(v[i]);
        }
      }
      attn_job_t aj = {c, l, n, seqs};
      ac_pool_run(c->pool, attn_worker, &aj);
      if (c->observer) c->observer(c->observer_user, l, AC_OBS_ATTN_OUT, n, Q, c->att);
      matmul1(c, &sl->wo, c->xb, c->att, n);
    } else {
      memset(c->xb, 0, (size_t)n * E * sizeof *c->xb);  // no heads on this rank: adds nothing
    }
    if ((rc = reduce(c, c->xb, n))) return rc;
    for (size_t i = 0; i < (size_t)n * E; i++) c->x[i] += c->xb[i];

    for (int r = 0; r < n; r++) rmsnorm(c->xb + (size_t)r * E, c->x + (size_t)r * E, ly->ffn_norm.data, E, hp->norm_eps);
    if (F) {
      const ac_weight_t *gu[2] = {&sl->ffn_gate, &sl->ffn_up};
      float *gu_out[2] = {c->hg, c->hu};
      matmul_group(c, 2, gu, gu_out, c->xb, n);
      for (size_t i = 0; i < (size_t)n * F; i++) {
        float g = c->hg[i];
        c->hg[i] = g / (1.0f + expf(-g)) * c->hu[i];
      }
      if (c->observer) c->observer(c->observer_user, l, AC_OBS_FFN_HIDDEN, n, F, c->hg);
      matmul1(c, &sl->ffn_down, c->xb, c->hg, n);
    } else {
      memset(c->xb, 0, (size_t)n * E * sizeof *c->xb);
    }
    if ((rc = reduce(c, c->xb, n))) return rc;
    for (size_t i = 0; i < (size_t)n * E; i++) c->x[i] += c->xb[i];
  }

  // Final norm and output projection for the rows that want logits, gathered contiguously.
  int n_out = 0;
  for (int r = 0; r < n; r++)
    if (want[r]) rmsnorm(c->xb + (size_t)n_out++ * E, c->x + (size_t)r * E, m->output_norm.data, E, hp->norm_eps);
  if (!n_out) return 0;
  if (sh->size == 1) {
    matmul1(c, &sh->output, logits, c->xb, n_out);
    return 0;
  }
  // Vocabulary-parallel: each rank's (n_out, vocab_pad) block, gathered, then laid out by row.
  const size_t P = sh->vocab_pad, V = hp->n_vocab;
  if (sh->n_vocab) matmul1(c, &sh->output, c->lgt, c->xb, n_out);
  // matmul1 wrote n_out rows of n_vocab; spread them to rows of vocab_pad (from the last row back).
  for (int r = n_out - 1; r >= 0; r--) {
    memmove(c->lgt + (size_t)r * P, c->lgt + (size_t)r * sh->n_vocab, sh->n_vocab * sizeof *c->lgt);
    memset(c->lgt + (size_t)r * P + sh->n_vocab, 0, (P - sh->n_vocab) * sizeof *c->lgt);
  }
  if ((rc = ac_comm_all_gather(c->comm, c->lgt, c->lgt_all, (size_t)n_out * P))) return rc;
  if (!logits) return 0;
  for (int k = 0; k < sh->size; k++) {
    size_t v0 = (size_t)k * P, nv = v0 < V ? (V - v0 < P ? V - v0 : P) : 0;
    for (int r = 0; r < n_out; r++)
      memcpy(logits + (size_t)r * V + v0, c->lgt_all + ((size_t)k * n_out + r) * P, nv * sizeof *logits);
  }
  return 0;
}

int ac_ctx_eval(ac_ctx_t *c, int32_t n, const int32_t *tokens, const int32_t *seqs,
                const int8_t *want_logits, float *logits) {
  if (is_follower(c)) return ac_error(AC_EINVAL, "rank %d follows its leader: only rank 0 takes calls", c->comm->rank);
  int rc = place_rows(c, n, tokens, seqs);
  if (rc) return rc;
  // The rows as every rank will run them (the defaults of NULL seqs and want_logits filled in).
  for (int r = 0; r < n; r++) {
    c->bc_tokens[r] = tokens[r];
    c->bc_seqs[r] = seqs ? seqs[r] : 0;
    c->bc_want[r] = want_logits ? want_logits[r] != 0 : r == n - 1;
  }
  if (c->comm && c->comm->size > 1) {
    if ((rc = lead(c, (call_t){OP_EVAL, n, 0, 0})) || (rc = ac_comm_broadcast(c->comm, c->bc_tokens, n * sizeof *c->bc_tokens, 0)) ||
        (rc = ac_comm_broadcast(c->comm, c->bc_seqs, n * sizeof *c->bc_seqs, 0)) ||
        (rc = ac_comm_broadcast(c->comm, c->bc_want, n, 0)))
      return rc;
  }
  return forward(c, n, c->bc_tokens, c->bc_seqs, c->bc_want, logits);
}

int ac_ctx_follow(ac_ctx_t *c) {
  if (!is_follower(c)) return ac_error(AC_EINVAL, "ac_ctx_follow is for ranks > 0 of a tensor-parallel group");
  for (;;) {
    call_t call;
    int rc = ac_comm_broadcast(c->comm, &call, sizeof call, 0);
    if (rc) return rc;
    switch (call.op) {
      case OP_STOP:
        return 0;
      case OP_TRUNCATE:
        truncate_seq(c, call.seq, call.len);
        break;
      case OP_EVAL: {
        int n = call.n;
        if ((rc = ac_comm_broadcast(c->comm, c->bc_tokens, n * sizeof *c->bc_tokens, 0)) ||
            (rc = ac_comm_broadcast(c->comm, c->bc_seqs, n * sizeof *c->bc_seqs, 0)) ||
            (rc = ac_comm_broadcast(c->comm, c->bc_want, n, 0)))
          return rc;
        // The leader checked the rows; placing them here cannot fail while the ranks agree.
        if ((rc = place_rows(c, n, c->bc_tokens, c->bc_seqs)) || (rc = forward(c, n, c->bc_tokens, c->bc_seqs, c->bc_want, NULL)))
          return rc;
        break;
      }
      default:
        return ac_error(AC_EFORMAT, "unknown call %d from the leader", call.op);
    }
  }
}
