// prune.h - structured pruning of LLaMA-family models: FFN channels, attention head groups and
// whole layers are removed, and the smaller model is written as a new GGUF file.
//
// What is removed is chosen by importance, one score per item:
//  - FFN channel j of a layer (row j of ffn_gate and ffn_up, column j of ffn_down). Measured on
//    calibration text: mean |h_j| over tokens, h = silu(gate) * up, times the L2 norm of
//    ffn_down's column j: the expected size of what the channel adds to the residual stream.
//    Without text: max_i |down_ij|, the largest weight that reads the channel (weight norms are
//    nearly uniform across channels and rank mostly noise; see weights_importance in prune.c).
//  - Attention is pruned by whole KV groups (one kv head and the n_head/n_head_kv query heads
//    that read it), so grouped-query attention stays valid. Measured: the sum over the group's
//    query heads of (mean over tokens of the head's output L2 norm) * (L2 norm of attn_output's
//    columns for that head). Without text: ||Wv_g|| * the sum over its query heads of ||Wo_h||.
//  - A whole layer (only with calibration text or random importance): the mean over tokens of
//    1 - cos(x_in, x_out), where x is the residual stream before and after the layer. A layer
//    that barely turns the residual stream is the cheapest to lose.
// A "random" mode gives every item a seeded random score: the baseline that shows what the
// measured importance is worth.
//
// Per layer (the default), every layer loses the same fraction, so the file keeps scalar
// llama.feed_forward_length / attention.head_count(_kv) and stays an ordinary "llama" model.
// Ranked globally (each layer's scores first divided by their mean, since raw contributions grow
// with depth), layers end up with different widths: then the counts are written as
// per-layer arrays under llama.cpp's architecture name "deci" (llama.cpp checks "llama"
// tensors against layer 0's shape and reads per-layer shapes only for "deci"); every
// "llama.*" key is renamed "deci.*".
//
// Tensor types: selecting whole rows (ffn_gate/up rows, attn_q/k/v rows) keeps any type, since
// rows are independent. Selecting elements inside rows (ffn_down, attn_output) keeps float types
// as they are, and keeps a block-quantized type when every removed range covers whole blocks
// (whole heads of 64 in 32-element blocks); otherwise the tensor is dequantized and written F16.
#ifndef AC_PRUNE_H
#define AC_PRUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// The largest fraction that may be removed; also the most any one layer loses when ranking
// globally.
#define AC_PRUNE_MAX_RATIO 0.9f

typedef enum {
  AC_PRUNE_IMP_WEIGHTS = 0,  // weight norms only (no text)
  AC_PRUNE_IMP_CALIB,        // activations on calibration text (calib_path)
  AC_PRUNE_IMP_RANDOM,       // seeded random scores (a baseline)
} ac_prune_importance_t;

// Called between calibration windows: `done` of `total` windows evaluated.
typedef void (*ac_prune_progress_fn)(void *user, int done, int total);

typedef struct {
  float ffn_ratio;       // fraction of FFN channels removed, in [0, 0.9]
  float heads_ratio;     // fraction of attention heads removed (whole kv groups), in [0, 0.9]
  bool global;           // rank channels and groups across layers instead of within each layer
  int32_t drop_layers;   // whole layers removed (the least important), 0..n_layer-1
  int32_t ffn_align;     // kept FFN widths are rounded to a multiple of this when the original
                         // width is one (so a pruned model can still take 32-block quant types);
                         // 0 or 1 = no rounding
  ac_prune_importance_t importance;
  const char *calib_path;  // calibration text file (AC_PRUNE_IMP_CALIB)
  int32_t calib_tokens;    // tokens of it to use, rounded down to whole windows (at least one)
  int32_t n_ctx;           // calibration window in tokens
  uint64_t seed;           // AC_PRUNE_IMP_RANDOM
  int32_t n_threads;
  ac_prune_progress_fn progress;
  void *progress_user;
} ac_prune_params_t;

// Defaults: nothing removed, weights-only importance, 4096 calibration tokens in windows of 512,
// FFN widths aligned to 32, one thread.
ac_prune_params_t ac_prune_default_params(void);

typedef struct {
  char name[96];
  uint32_t from, to;  // ggml type ids
} ac_prune_retype_t;

// What a prune did, for the caller to show.
typedef struct {
  char arch[32];                // architecture written: "llama" or "deci"
  bool per_layer_arrays;        // counts written as per-layer arrays
  int32_t n_layer_in, n_layer_out;
  int32_t *src_layer;           // (n_layer_out) the input layer each output layer comes from
  int32_t *n_ff, *n_head, *n_head_kv;  // (n_layer_out) widths kept
  int64_t ff_in, ff_out;        // FFN channels, summed over layers (dropped layers count as in)
  int64_t heads_in, heads_out;  // query heads, summed likewise
  int32_t *dropped;             // (n_dropped) input indices of the dropped layers, ascending
  int32_t n_dropped;
  int32_t calib_tokens;         // tokens the importance was measured on (0: not measured)
  int32_t calib_windows;
  ac_prune_retype_t *retyped;   // (n_retyped) tensors whose type changed
  int32_t n_retyped;
  int64_t params_in, params_out;
  size_t bytes_in, bytes_out;
} ac_prune_report_t;

// Prunes `in_path` into `out_path`. Errors (nothing is written): AC_ERANGE for a ratio outside
// [0, 0.9], a ratio that would leave a layer without FFN channels or kv groups, a layer count
// out of range, or calibration text shorter than one window; AC_EUNSUPPORTED for an
// architecture the engine does not run; AC_EINVAL for --drop-layers without text or random
// scores; AC_EIO when the output cannot be written. `report` (may be NULL) is filled on success;
// free it with ac_prune_report_clear().
int ac_prune(const char *in_path, const char *out_path, const ac_prune_params_t *p, ac_prune_report_t *report);
void ac_prune_report_clear(ac_prune_report_t *r);

#endif
