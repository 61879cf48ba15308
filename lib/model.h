// model.h - LLaMA-family models from GGUF: loading, and the forward pass over a KV cache.
//
// A model is the GGUF mapping plus pointers into it (weights are never copied). A context holds
// what one or more sequences need to run: a KV cache per sequence slot, scratch buffers for a
// batch of rows, and a thread pool. One evaluation call takes a batch of tokens that may belong
// to different sequences (prefill chunks and single decode tokens mixed), runs them through the
// layers together (matrix-matrix), and returns the logits of the rows asked for.
#ifndef AC_MODEL_H
#define AC_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tokenizer.h"

typedef enum { AC_ROPE_NORM = 0, AC_ROPE_NEOX = 2 } ac_rope_type_t;  // ggml's ids

typedef struct {
  char arch[32];
  int32_t n_vocab, n_ctx_train, n_embd, n_layer;
  int32_t *n_head, *n_head_kv, *n_ff;  // (n_layer): pruned models vary these per layer
  int32_t head_dim;                    // key/value length per head
  int32_t n_rot;                       // dims rotated by RoPE (<= head_dim)
  float rope_theta, rope_freq_scale;   // base frequency; 1/linear scaling factor
  float norm_eps;
  ac_rope_type_t rope_type;
  bool tied_output;                    // output projection shares the token embedding
} ac_hparams_t;

// A weight matrix view into the mapping: ne[1] rows of ne[0] elements of `type`.
//
// Low-rank factors (our GGUF extension, written by `acq lowrank`): a matrix X.weight of shape
// [in, out] may be stored instead as X.weight.lr_a [in, rank] and X.weight.lr_b [rank, out], so
// that W = B·A. Such a weight has data NULL, lr_a/lr_b set, and runs as two matmuls.
// llama.cpp cannot load files that use it.
//
// A weight may also be a view of part of a tensor (a tensor-parallel shard): ne[1] rows starting
// at `data`, each `stride` bytes after the last, of which the first row_bytes are this view's
// ne[0] elements. A whole tensor has stride == row_bytes.
typedef struct ac_weight {
  const char *name;
  uint32_t type;
  int64_t ne[2];
  const void *data;
  size_t row_bytes;
  size_t stride;
  const struct ac_weight *lr_a, *lr_b;
} ac_weight_t;

typedef struct {
  ac_weight_t attn_norm, wq, wk, wv, wo;      // wq (n_embd -> n_head*hd), wo (n_head*hd -> n_embd)
  ac_weight_t ffn_norm, ffn_gate, ffn_up, ffn_down;  // gate/up (n_embd -> n_ff), down (n_ff -> n_embd)
} ac_layer_t;

typedef struct ac_model {
  ac_gguf_t *gguf;  // owns the mapping
  ac_hparams_t hp;
  ac_weight_t tok_embd, output_norm, output;
  const float *rope_freqs;  // (n_rot/2) per-dimension divisors, or NULL
  ac_layer_t *layers;       // (n_layer)
  ac_weight_t *factors;     // views of low-rank factors, two per factored weight
  int n_factored;           // weights stored as low-rank factors
  int64_t max_rank;
  ac_tokenizer_t *tok;
  size_t weight_bytes;      // bytes of all tensors
  int64_t n_params;
} ac_model_t;

// Loads `path`. Every required key and tensor is checked (presence, shape, supported type); a
// problem is an error whose ac_errmsg() names the key or tensor.
int ac_model_load(const char *path, ac_model_t **out);
// The same, taking a share of `reuse` (may be NULL) instead of building a tokenizer when the
// file's tokenizer metadata is identical to the one `reuse` was built from.
int ac_model_load_reuse(const char *path, ac_tokenizer_t *reuse, ac_model_t **out);
void ac_model_destroy(ac_model_t **self_p);

// --- tensor parallelism -------------------------------------------------------------------------
//
// A group of `size` ranks splits every layer Megatron-style: the query/key/value and gate/up
// projections by output rows (column-parallel: each rank computes its own heads and FFN columns,
// no communication), the attention output and down projections by input columns (row-parallel:
// each rank's product is a partial sum, all-reduced), and the output projection by vocabulary
// rows (each rank computes its slice of the logits, all-gathered). Embeddings and norms are
// replicated. Attention is split by whole key/value heads with the query heads that read them,
// so each rank keeps the KV cache of its own heads only.
//
// A row-parallel split must fall on block boundaries of the weight's type and of the
// activation's type (a Q4_K matrix splits its input only at multiples of 256); ac_model_shard
// says which tensor prevents a split. Ranks may get unequal shares (3 kv heads over 2 ranks: 2
// and 1) or none (3 kv heads over 4 ranks): the sums are the same.

typedef struct {
  int32_t kv0, n_kv;  // key/value heads [kv0, kv0 + n_kv); query heads follow (times the group)
  int32_t ff0, n_ff;  // FFN columns [ff0, ff0 + n_ff)
  ac_weight_t wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down;  // views into the model's tensors
} ac_layer_shard_t;

typedef struct {
  int rank, size;
  ac_layer_shard_t *layers;      // (n_layer)
  int32_t vocab0, n_vocab;       // output rows [vocab0, vocab0 + n_vocab)
  int32_t vocab_pad;             // ceil(n_vocab of the model / size): every rank's logits width
  ac_weight_t output;
  ac_weight_t *factors;          // storage for the views of low-rank factors
} ac_shard_t;

// Computes rank `rank`'s views of a group of `size`. size 1 gives the whole model.
int ac_model_shard(const ac_model_t *m, int rank, int size, ac_shard_t *out);
void ac_shard_free(ac_shard_t *s);

// --- contexts ------------------------------------------------------------------------------

typedef struct ac_ctx ac_ctx_t;
struct ac_comm;

typedef enum { AC_BACKEND_CPU = 0, AC_BACKEND_CUDA = 1 } ac_backend_t;

typedef struct {
  int32_t n_ctx;     // positions per sequence; 0 = the model's training context (capped at 4096)
  int32_t n_seq;     // sequence slots (KV caches); default 1
  int32_t n_batch;   // most rows per ac_ctx_eval call; default 512
  int32_t n_threads; // default 1 (per rank)
  ac_backend_t backend;  // AC_BACKEND_CUDA needs an AC_CUDA build (else AC_EUNSUPPORTED)
  int32_t gpu;           // CUDA device index
  // Tensor parallelism. `comm` set: this context is rank comm->rank of a group whose other ranks
  // are other contexts (other processes, for NCCL). Rank 0 is the leader: the only rank the
  // caller drives with ac_ctx_eval / ac_ctx_seq_truncate; it broadcasts each call to the others,
  // which run ac_ctx_follow. The caller keeps `comm` alive until the context is destroyed.
  // `tp` > 1 without `comm`: the context builds a CPU group of tp ranks itself and runs ranks
  // 1..tp-1 on threads of its own; the caller sees one context.
  struct ac_comm *comm;
  int32_t tp;
} ac_ctx_params_t;

int ac_ctx_new(const ac_model_t *model, ac_ctx_params_t params, ac_ctx_t **out);
void ac_ctx_destroy(ac_ctx_t **self_p);

int32_t ac_ctx_n_ctx(const ac_ctx_t *ctx);
int32_t ac_ctx_n_batch(const ac_ctx_t *ctx);
// Tokens held in sequence `seq`'s cache (its next position).
int32_t ac_ctx_seq_len(const ac_ctx_t *ctx, int32_t seq);
// Forgets positions >= len of sequence `seq` (0 clears it).
int ac_ctx_seq_truncate(ac_ctx_t *ctx, int32_t seq, int32_t len);

// Evaluates n rows: row i is token tokens[i] of sequence seqs[i] (NULL: all sequence 0), placed
// at that sequence's next position; rows of one sequence must be in order. Logits (n_vocab
// floats per row) are written to `logits` for the rows whose want_logits[i] is non-zero, packed
// in row order (want_logits NULL: only the last row). Errors: AC_ERANGE when a sequence would
// pass n_ctx or n > n_batch, AC_EINVAL for a bad token id or slot. On error no cache changes.
int ac_ctx_eval(ac_ctx_t *ctx, int32_t n, const int32_t *tokens, const int32_t *seqs,
                const int8_t *want_logits, float *logits);

// A follower rank (comm->rank > 0): runs the leader's calls as they are broadcast, until the
// leader's context is destroyed (returns 0) or a collective fails (returns its error).
int ac_ctx_follow(ac_ctx_t *ctx);
// Bytes this context holds for its KV cache (this rank's heads only, with tensor parallelism).
size_t ac_ctx_kv_bytes(const ac_ctx_t *ctx);
// What putting the weights on the device cost (AC_BACKEND_CUDA: this rank's; all zero on the CPU,
// whose weights stay in the file's mapping): bytes, seconds reading them from the file, seconds of
// host -> device copies that did not overlap the reads, and the whole upload.
typedef struct {
  size_t bytes;
  double read_s, copy_s, total_s;
} ac_upload_stats_t;
void ac_ctx_upload_stats(const ac_ctx_t *ctx, ac_upload_stats_t *out);

// --- observing activations (calibration for pruning, debugging) -----------------------------

typedef enum {
  AC_OBS_ATTN_OUT = 0,  // attention output before the output projection: (n, n_head*head_dim)
  AC_OBS_FFN_HIDDEN,    // silu(gate) * up before the down projection: (n, n_ff)
} ac_obs_point_t;

// Called during ac_ctx_eval, on the calling thread, with the n rows of one layer's activations
// at `point` (row-major, `width` floats per row). The data are only valid during the call.
typedef void (*ac_observer_fn)(void *user, int layer, ac_obs_point_t point, int n, int width, const float *data);
// Installs (or with fn NULL removes) the observer. Observers run on the CPU backend only; with
// tensor parallelism each rank's observer sees its own heads and FFN columns.
void ac_ctx_set_observer(ac_ctx_t *ctx, ac_observer_fn fn, void *user);

#endif
