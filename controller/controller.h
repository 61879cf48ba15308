// controller.h - the complexity controller: a tiny transformer that reads the first k tokens of
// a task and predicts how hard it is and which compressed variant of the zoo will still do it.
//
// The network (all sizes in ac_ctrl_config_t):
//   ids (k) ─▶ E[id] (frozen base-model token embeddings, e wide, supplied by the caller)
//          ─▶ W_in (e → d) + b_in + positional embedding (k × d)
//          ─▶ n_layer × pre-norm encoder block: x += MHA(LN(x)) (padding masked, not causal);
//                                                x += MLP_gelu(LN(x)) (d → ffn → d)
//          ─▶ final LN ─▶ [mean pool over valid positions ; attention pool (learned query)] (2d)
//          ─▶ shared head layer h = gelu(W_h·pool + b_h) (hidden wide), then three heads:
//               complexity  c = sigmoid(w_c·h + b_c)                     (1)
//               policy      one logits vector per zoo axis              (Σ axis choices)
//               success     one logit per variant, sigmoid = P(v succeeds on this task)  (V)
//
// Parameters live in one allocation and so do their gradients (tensors are pointers into it);
// the activations of a batch live in one scratch allocation. Forward and backward are plain C.
//
// Decision (ac_ctrl_predict): the cheapest variant whose predicted success is >= theta, else the
// reference (full) variant. Confidence is the largest probability of the policy heads' joint
// distribution over the zoo's variants, softmax(sum of the variant's axis logits / conf_temp):
// how sure the learned policy is of one variant. conf_temp is a temperature that a calibration
// pass may fit later (1 until then). Below conf_min the decision falls back to the reference.
#ifndef AC_CONTROLLER_H
#define AC_CONTROLLER_H

#include <stddef.h>
#include <stdint.h>

#define AC_CTRL_MAX_AXES 8
#define AC_CTRL_MAX_CHOICES 8
#define AC_CTRL_MAX_VARIANTS 32
#define AC_CTRL_NAME_MAX 32
#define AC_CTRL_FORMAT_VERSION 1

// --- configuration ----------------------------------------------------------------------------

typedef struct {
  char name[AC_CTRL_NAME_MAX];                          // "quant"
  int n_choice;                                         // 2..AC_CTRL_MAX_CHOICES
  char choice[AC_CTRL_MAX_CHOICES][AC_CTRL_NAME_MAX];   // "f16", "int8", ...
} ac_ctrl_axis_t;

typedef struct {
  char name[AC_CTRL_NAME_MAX];  // "int4", as in the zoo manifest
  float cost;                   // relative cost (any positive unit; the reference's is typical 1)
  int choice[AC_CTRL_MAX_AXES]; // its choice on each axis
} ac_ctrl_variant_t;

// What the last training run was, stored in the file for people and tools.
typedef struct {
  uint64_t seed;
  int steps;
  int maml;          // 1: first-order MAML across domains, 0: plain multi-task
  float final_loss;
  char note[128];
} ac_ctrl_train_info_t;

typedef struct {
  int k;           // tokens read (default 32)
  int d;           // model width
  int n_layer;
  int n_head;      // d % n_head == 0
  int ffn;         // MLP width
  int hidden;      // width of the shared head layer
  int e;           // embedding width of the base model
  int n_vocab;     // rows of E
  int pad_id;      // token used for positions past the end (masked out anyway)
  int n_axis;
  ac_ctrl_axis_t axis[AC_CTRL_MAX_AXES];
  int n_variant;
  ac_ctrl_variant_t variant[AC_CTRL_MAX_VARIANTS];
  int reference;   // index of the full-quality variant (fallback)
  float theta;     // success threshold (0.95)
  float conf_min;  // confidence below this falls back to the reference (0.7)
  float conf_temp; // temperature of the confidence softmax (1)
  uint64_t seed;   // initialisation seed
  uint8_t embd_digest[32];  // caller's digest of E (e.g. sha256 of the base model's token_embd)
  ac_ctrl_train_info_t train;
} ac_ctrl_config_t;

// Tiny default: d 64, 2 layers, 4 heads, ffn 256, hidden 64, k 32; one axis-less zoo must still
// be filled in by the caller (axes, variants, e, n_vocab). "Paper" size: d 512, 6 layers, 8 heads.
ac_ctrl_config_t ac_ctrl_config_tiny(void);
ac_ctrl_config_t ac_ctrl_config_paper(void);
// Checks sizes, axes and variants; AC_EINVAL naming the first problem.
int ac_ctrl_config_check(const ac_ctrl_config_t *cfg);
// Adds an axis / a variant to cfg (returns its index or a negative error).
int ac_ctrl_config_add_axis(ac_ctrl_config_t *cfg, const char *name, const char *const *choices, int n);
int ac_ctrl_config_add_variant(ac_ctrl_config_t *cfg, const char *name, float cost, const int *choice);

// --- the object -------------------------------------------------------------------------------

typedef struct ac_ctrl ac_ctrl_t;

// Builds a controller with weights drawn from cfg->seed (same seed, same weights).
int ac_ctrl_new(const ac_ctrl_config_t *cfg, ac_ctrl_t **out);
void ac_ctrl_destroy(ac_ctrl_t **self_p);
const ac_ctrl_config_t *ac_ctrl_config(const ac_ctrl_t *c);
ac_ctrl_config_t *ac_ctrl_config_mut(ac_ctrl_t *c);  // theta, conf_min, conf_temp, train info

// Frozen token embeddings E (n_vocab × e, row-major), borrowed: they must outlive the
// controller. n_vocab and e must match the config; digest (32 bytes, may be NULL to skip the
// check) must match cfg.embd_digest unless that is all zero. AC_EINVAL on a mismatch.
int ac_ctrl_set_embeddings(ac_ctrl_t *c, const float *E, int n_vocab, int e, const uint8_t *digest);
// Precomputes E·W_in + b_in for every token (n_vocab × d floats) so a prediction skips the input
// projection. Done by ac_ctrl_load; dropped automatically when the weights change in training.
int ac_ctrl_prepare_inference(ac_ctrl_t *c);

// The parameters (one array) and their gradients, and the tensor table over them.
float *ac_ctrl_params(ac_ctrl_t *c, size_t *n);
float *ac_ctrl_grads(ac_ctrl_t *c, size_t *n);
void ac_ctrl_zero_grad(ac_ctrl_t *c);
int ac_ctrl_n_tensors(const ac_ctrl_t *c);
// Name ("blk.qkv_w"), offset into the parameter array and element count of tensor i.
int ac_ctrl_tensor(const ac_ctrl_t *c, int i, const char **name, size_t *offset, size_t *count);
// Call after changing the parameters directly (drops the inference table).
void ac_ctrl_params_changed(ac_ctrl_t *c);

// --- inference --------------------------------------------------------------------------------

typedef struct {
  float complexity;                       // c in [0,1]
  float p_success[AC_CTRL_MAX_VARIANTS];  // per variant
  int variant;       // the decision: cheapest with p >= theta (else reference), then the
                     // confidence fallback to the reference
  int variant_raw;   // the decision before the confidence fallback
  int policy_variant;// argmax of the policy heads' distribution over variants
  float confidence;  // max policy probability (see the top of this file)
  int fallback;      // 1 when confidence < conf_min sent it to the reference
} ac_ctrl_pred_t;

// One task's first tokens (n may exceed k: only the first k are read; n == 0 reads one pad
// token). Ids outside [0, n_vocab) read as the pad token. Single-threaded per controller,
// allocation-free. AC_EINVAL when no embeddings were set.
int ac_ctrl_predict(ac_ctrl_t *c, const int32_t *ids, int n, ac_ctrl_pred_t *out);

// --- training: forward, backward, losses -------------------------------------------------------

// A batch: ids (B × k, row-major; entries past lens[b] ignored), per-task lengths, and labels:
// success (B × V, 1 = variant succeeded on the task) and an optional complexity target (B; NULL:
// derived from the labels as the normalised cost of the cheapest variant that succeeded,
// (cost − min cost) / (max cost − min cost), 1 when none did).
typedef struct {
  int B;
  const int32_t *ids;
  const int *lens;
  const uint8_t *success;
  const float *complexity;
} ac_ctrl_batch_t;

// Outputs of the last ac_ctrl_forward (valid until the next forward).
typedef struct {
  int B;
  const float *complexity_logit;  // (B)
  const float *policy_logit;      // (B, n_choice_total), axes one after another
  const float *success_logit;     // (B, V)
} ac_ctrl_outputs_t;

// Runs the network on B tasks, caching activations (grows the scratch when B grows).
int ac_ctrl_forward(ac_ctrl_t *c, const int32_t *ids, const int *lens, int B, ac_ctrl_outputs_t *out);
// Back-propagates gradients of the loss w.r.t. the head logits of the last forward (any may be
// NULL = zero) into the parameter gradients, which it adds to (call ac_ctrl_zero_grad first).
int ac_ctrl_backward(ac_ctrl_t *c, const float *d_complexity, const float *d_policy, const float *d_success);

// Loss building blocks. Each returns scale · Σ loss and writes scale · dloss/dlogit into dlogit
// (when not NULL); pass scale = weight / B for a batch mean.
float ac_ctrl_bce_logits(const float *logit, const float *target, int n, float scale, float *dlogit);
float ac_ctrl_mse_sigmoid(const float *logit, const float *target, int n, float scale, float *dlogit);
float ac_ctrl_ce_logits(const float *logit, int n, int target, float scale, float *dlogit);

// Gumbel-softmax over n choices: y = softmax((logit + g) / tau), g fixed noise (NULL: none).
void ac_ctrl_gumbel_softmax(const float *logit, const float *g, int n, float tau, float *y);
// dlogit = (1/tau) · y ⊙ (dy − <dy, y>)  (written, not added).
void ac_ctrl_gumbel_softmax_backward(const float *y, const float *dy, int n, float tau, float *dlogit);

// Deterministic generator (xorshift64*; same seed, same stream).
typedef struct { uint64_t s; } ac_ctrl_rng_t;
void ac_ctrl_rng_seed(ac_ctrl_rng_t *r, uint64_t seed);
uint32_t ac_ctrl_rng_u32(ac_ctrl_rng_t *r);
float ac_ctrl_rng_uniform(ac_ctrl_rng_t *r);  // (0, 1)
float ac_ctrl_rng_normal(ac_ctrl_rng_t *r);
void ac_ctrl_rng_gumbel(ac_ctrl_rng_t *r, float *g, int n);

typedef struct {
  float lambda_cost;    // λ1 (0.3)
  float lambda_quality; // λ2 (0.7)
  float theta;          // θ (0.95)
  float tau;            // Gumbel-softmax temperature (1)
  int quality_from_labels;  // 0: quality = predicted success σ(s_v), gradient stopped (the
                            // success head learns from its BCE only); 1: the task's labels
} ac_ctrl_cost_params_t;
ac_ctrl_cost_params_t ac_ctrl_cost_default_params(void);

// The expected-cost objective over a batch, mean over tasks:
//   per axis a: y_a = gumbel_softmax(policy logits of a, noise g_a, tau)
//   over the zoo: π_v ∝ Π_a y_a[choice_a(v)] (renormalised over the variants that exist; equal to
//   the product itself when the zoo is the full grid of choices)
//   cost = Σ_v π_v cost_v;  quality = Σ_v π_v q_v
//   loss = λ1·cost + λ2·max(0, θ − quality)
// cost_v: per-variant costs (NULL: the config's); gumbel: (B × n_choice_total) noise or NULL;
// success_logit (B × V) and labels (B × V, may be NULL unless quality_from_labels). Writes
// scale-weighted gradients into d_policy (B × n_choice_total) (overwritten). Returns the loss · scale · B
// (i.e. scale·Σ over tasks).
float ac_ctrl_cost_objective(const ac_ctrl_config_t *cfg, const float *policy_logit,
                             const float *success_logit, const uint8_t *labels, const float *gumbel,
                             const float *cost_v, int B, const ac_ctrl_cost_params_t *p, float scale,
                             float *d_policy);

// The whole training loss of a batch, with weights per term.
typedef struct {
  float w_success;     // BCE of the success head against the labels (1)
  float w_complexity;  // complexity head against its target (1)
  int complexity_bce;  // 1: BCE (default), 0: MSE of the sigmoid
  float w_policy;      // cross-entropy of each axis against the cheapest succeeding variant (0.5)
  float w_cost;        // the expected-cost objective above (1)
  int gumbel_noise;    // 1: draw Gumbel noise for the cost objective (0: plain softmax)
  ac_ctrl_cost_params_t cost;
} ac_ctrl_loss_params_t;
ac_ctrl_loss_params_t ac_ctrl_loss_default_params(void);

typedef struct { float total, success, complexity, policy, cost; } ac_ctrl_losses_t;

// Forward, all losses (batch means) and backward: adds the gradients into the controller's
// gradient buffer (zero it first). rng is used for Gumbel noise (may be NULL when none).
int ac_ctrl_loss_and_grad(ac_ctrl_t *c, const ac_ctrl_batch_t *b, const ac_ctrl_loss_params_t *p,
                          ac_ctrl_rng_t *rng, ac_ctrl_losses_t *out);
// Forward and losses only (no gradients, no noise): evaluation.
int ac_ctrl_eval_loss(ac_ctrl_t *c, const ac_ctrl_batch_t *b, const ac_ctrl_loss_params_t *p,
                      ac_ctrl_losses_t *out);

// --- optimisation: AdamW and first-order MAML ---------------------------------------------------

typedef struct {
  float lr;            // 1e-3
  float beta1, beta2;  // 0.9, 0.999
  float eps;           // 1e-8
  float weight_decay;  // 0.01, decoupled; not applied to biases, norms or the pooling query
} ac_ctrl_adamw_params_t;
ac_ctrl_adamw_params_t ac_ctrl_adamw_default_params(void);

typedef struct {
  int maml;          // 1: FOMAML across domains; 0: plain multi-task training
  int inner_steps;   // SGD steps on the support set (1)
  float inner_lr;    // (0.05)
} ac_ctrl_meta_params_t;
ac_ctrl_meta_params_t ac_ctrl_meta_default_params(void);

typedef struct ac_ctrl_trainer ac_ctrl_trainer_t;
int ac_ctrl_trainer_new(ac_ctrl_t *c, ac_ctrl_adamw_params_t opt, ac_ctrl_meta_params_t meta,
                        ac_ctrl_loss_params_t loss, uint64_t seed, ac_ctrl_trainer_t **out);
void ac_ctrl_trainer_destroy(ac_ctrl_trainer_t **self_p);
// One AdamW step with the gradients currently in the controller (bias-corrected, step t += 1).
void ac_ctrl_trainer_adamw_step(ac_ctrl_trainer_t *t);
// One outer step over n_domain domains, each with a support and a query batch.
//   maml on:  for each domain, the support gradient at θ; inner_steps SGD steps on a copy with
//             the support batch; the query gradient at the adapted weights. AdamW applies the
//             mean over domains of ½ support-at-θ + ½ query-at-adapted to θ (first-order MAML
//             with the loss at θ kept in the objective, as in MLDG: the router uses θ as is).
//   maml off: the mean over domains of ½ support + ½ query gradient, both at θ (plain
//             multi-task training: same data, same weights, no adaptation).
// out (may be NULL): the mean of the losses those gradients came from, before the step.
int ac_ctrl_trainer_step(ac_ctrl_trainer_t *t, const ac_ctrl_batch_t *support,
                         const ac_ctrl_batch_t *query, int n_domain, ac_ctrl_losses_t *out);
int ac_ctrl_trainer_steps(const ac_ctrl_trainer_t *t);

// --- file ---------------------------------------------------------------------------------------
// Layout: "ACCTRL\0\0", u32 version, u32 header bytes, the JSON header (config, zoo, training info,
// tensor table), zero padding to 32 bytes, float32 parameters, then u64 FNV-1a of everything
// before it. E is not stored: n_vocab, e and the caller's 32-byte digest are.

int ac_ctrl_save(const ac_ctrl_t *c, const char *path);
// Loads a controller. E (may be NULL, then set later with ac_ctrl_set_embeddings) must match
// the file's n_vocab, e and digest. AC_EFORMAT on a bad, truncated or corrupted file,
// AC_EUNSUPPORTED on another version, AC_EIO when it cannot be read.
int ac_ctrl_load(const char *path, const float *E, int n_vocab, int e, const uint8_t *digest,
                 ac_ctrl_t **out);

#endif
