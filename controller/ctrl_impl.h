// ctrl_impl.h - what the controller's files share inside controller/ (not a public header).
#ifndef AC_CTRL_IMPL_H
#define AC_CTRL_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "controller.h"

// Pointers into the one parameter (or gradient) array. Per-layer tensors are stacked: the
// shapes below are the whole tensors, (n_layer, ...) first. Matrices are (in, out).
typedef struct {
  float *w_in;    // (e, d)
  float *b_in;    // (d)
  float *pos;     // (k, d)
  float *ln1_w, *ln1_b;   // (L, d)
  float *qkv_w;   // (L, d, 3d)   q, k, v one after another in the output
  float *qkv_b;   // (L, 3d)
  float *proj_w;  // (L, d, d)
  float *proj_b;  // (L, d)
  float *ln2_w, *ln2_b;   // (L, d)
  float *fc_w;    // (L, d, ffn)
  float *fc_b;    // (L, ffn)
  float *fc2_w;   // (L, ffn, d)
  float *fc2_b;   // (L, d)
  float *lnf_w, *lnf_b;   // (d)
  float *pool_q;  // (d)      attention-pooling query
  float *h_w;     // (2d, hidden)
  float *h_b;     // (hidden)
  float *cx_w;    // (hidden) complexity head
  float *cx_b;    // (1)
  float *pol_w;   // (hidden, C) policy heads, C = total choices over the axes
  float *pol_b;   // (C)
  float *suc_w;   // (hidden, V) success head
  float *suc_b;   // (V)
} ac__ctrl_weights_t;

#define AC__CTRL_MAX_TENSORS 32

typedef struct {
  const char *name;
  size_t field;          // offsetof(ac__ctrl_weights_t, ...)
  size_t offset, count;
  int shape[3], ndim;
  int decay;             // weight decay applies (matrices only)
  float init_std;        // 0: constant init_const
  float init_const;
} ac__ctrl_tensor_t;

// Activations of one batch (B tasks, T = k positions), one allocation.
typedef struct {
  float *mask;       // (B, T) 1 for valid positions
  float *nvalid;     // (B)
  float *emb;        // (B, T, e) input rows of E (not used with the inference table)
  float *x0;         // (B, T, d)
  float *ln1, *ln1_mean, *ln1_rstd;  // (L, B, T, d), (L, B, T) x2
  float *qkv;        // (L, B, T, 3d)
  float *att;        // (L, B, H, T, T) attention probabilities
  float *atty;       // (L, B, T, d)
  float *res1;       // (L, B, T, d)
  float *ln2, *ln2_mean, *ln2_rstd;
  float *fch, *fch_g;// (L, B, T, ffn) before / after GELU
  float *res2;       // (L, B, T, d)  block outputs
  float *lnf, *lnf_mean, *lnf_rstd;  // (B, T, d), (B, T) x2
  float *pw;         // (B, T) attention-pooling weights
  float *pool;       // (B, 2d) [mean ; attention pool]
  float *hpre, *h;   // (B, hidden)
  float *cx;         // (B) complexity logit
  float *pol;        // (B, C)
  float *suc;        // (B, V)
  // backward scratch
  float *dres;       // (B, T, d)
  float *dbig;       // (B, T, max(3d, ffn))
  float *dbig2;      // (B, T, max(3d, ffn))
  float *dmid;       // (B, T, d)
  float *datt;       // (B, H, T, T)
  float *dpool;      // (B, 2d)
  float *dh, *dhpre; // (B, hidden)
} ac__ctrl_acts_t;

struct ac_ctrl {
  ac_ctrl_config_t cfg;
  int C;                                // total policy logits
  int choice_off[AC_CTRL_MAX_AXES];     // first logit of each axis
  int n_tensor;
  ac__ctrl_tensor_t tensor[AC__CTRL_MAX_TENSORS];
  size_t n_params;
  float *params, *grads;
  ac__ctrl_weights_t w, g;
  const float *E;                       // borrowed (n_vocab, e)
  float *ptab;                          // (n_vocab, d) E·W_in + b_in, or NULL
  float *act_mem; int act_B; ac__ctrl_acts_t act;   // training scratch (capacity act_B)
  int cur_B;                            // batch of the last forward (0: none)
  float *inf_mem; ac__ctrl_acts_t inf;                // B = 1, for predict
  float *dbuf;                          // (B, C + V + 1) head gradients in loss_and_grad
  int dbuf_B;
  float *gumbel;                        // (B, C)
};

// --- small math shared by the files --------------------------------------------------------

// exp(x) without libm: 2^(x·log2 e) split into an integer power (exponent bits) and a degree-6
// polynomial for 2^f, f in [-0.5, 0.5] (relative error ~2e-7). Branch-free so loops vectorise.
static inline float ac__ctrl_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float t = x * 1.44269504088896341f;
  float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5·2^23 trick)
  float f = (t - n) * 0.693147180559945309f;  // 2^(t-n) = e^f, |f| <= 0.347
  float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
  int32_t bits = ((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &bits, sizeof s);
  return p * s;
}

static inline float ac__ctrl_sigmoid(float x) { return 1.0f / (1.0f + ac__ctrl_exp(-x)); }

// log(1 + e^x) without overflow.
static inline float ac__ctrl_softplus(float x) {
  return x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x));
}

int ac__ctrl_scratch(ac_ctrl_t *c, int B);
void ac__ctrl_layout(ac_ctrl_t *c);

#endif
