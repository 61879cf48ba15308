// ctrl_loss.c - the controller's losses: BCE, MSE, cross-entropy, the Gumbel-softmax relaxation
// and the expected-cost objective, plus the deterministic generator they draw noise from.
#include <stdlib.h>
#include <string.h>

#include "controller.h"
#include "ctrl_impl.h"
#include "error.h"

// --- generator ----------------------------------------------------------------------------------

void ac_ctrl_rng_seed(ac_ctrl_rng_t *r, uint64_t seed) {
  // splitmix64 of the seed, so nearby seeds give unrelated streams and the state is never 0.
  uint64_t z = seed + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  r->s = z ? z : 0x2545f4914f6cdd1dull;
}

uint32_t ac_ctrl_rng_u32(ac_ctrl_rng_t *r) {
  uint64_t x = r->s;  // xorshift64*
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return (uint32_t)((x * 0x2545f4914f6cdd1dull) >> 32);
}

float ac_ctrl_rng_uniform(ac_ctrl_rng_t *r) { return ((ac_ctrl_rng_u32(r) >> 8) + 0.5f) / 16777216.0f; }

float ac_ctrl_rng_normal(ac_ctrl_rng_t *r) {
  float u1 = ac_ctrl_rng_uniform(r), u2 = ac_ctrl_rng_uniform(r);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958648f * u2);
}

void ac_ctrl_rng_gumbel(ac_ctrl_rng_t *r, float *g, int n) {
  for (int i = 0; i < n; i++) g[i] = -logf(-logf(ac_ctrl_rng_uniform(r)));
}

// --- loss building blocks -----------------------------------------------------------------------

// BCE with logits: softplus(x) − t·x, gradient σ(x) − t.
float ac_ctrl_bce_logits(const float *logit, const float *target, int n, float scale, float *dlogit) {
  double sum = 0;
  for (int i = 0; i < n; i++) {
    float x = logit[i], t = target[i];
    sum += ac__ctrl_softplus(x) - t * x;
    if (dlogit) dlogit[i] = scale * (ac__ctrl_sigmoid(x) - t);
  }
  return (float)(scale * sum);
}

// (σ(x) − t)², gradient 2 (σ − t) σ (1 − σ).
float ac_ctrl_mse_sigmoid(const float *logit, const float *target, int n, float scale, float *dlogit) {
  double sum = 0;
  for (int i = 0; i < n; i++) {
    float s = ac__ctrl_sigmoid(logit[i]), r = s - target[i];
    sum += r * r;
    if (dlogit) dlogit[i] = scale * 2.0f * r * s * (1.0f - s);
  }
  return (float)(scale * sum);
}

// −log softmax(x)[target], gradient softmax − onehot.
float ac_ctrl_ce_logits(const float *logit, int n, int target, float scale, float *dlogit) {
  float mx = logit[0];
  for (int i = 1; i < n; i++) mx = logit[i] > mx ? logit[i] : mx;
  double z = 0;
  for (int i = 0; i < n; i++) z += exp((double)logit[i] - mx);
  float lse = mx + (float)log(z);
  if (dlogit)
    for (int i = 0; i < n; i++) dlogit[i] = scale * ((float)(exp((double)logit[i] - mx) / z) - (i == target));
  return scale * (lse - logit[target]);
}

void ac_ctrl_gumbel_softmax(const float *logit, const float *g, int n, float tau, float *y) {
  float mx = -1e30f;
  for (int i = 0; i < n; i++) {
    y[i] = (logit[i] + (g ? g[i] : 0.0f)) / tau;
    mx = y[i] > mx ? y[i] : mx;
  }
  float sum = 0;
  for (int i = 0; i < n; i++) {
    y[i] = expf(y[i] - mx);
    sum += y[i];
  }
  for (int i = 0; i < n; i++) y[i] /= sum;
}

void ac_ctrl_gumbel_softmax_backward(const float *y, const float *dy, int n, float tau, float *dlogit) {
  float dot = 0;
  for (int i = 0; i < n; i++) dot += y[i] * dy[i];
  for (int i = 0; i < n; i++) dlogit[i] = y[i] * (dy[i] - dot) / tau;
}

ac_ctrl_cost_params_t ac_ctrl_cost_default_params(void) {
  return (ac_ctrl_cost_params_t){.lambda_cost = 0.3f, .lambda_quality = 0.7f, .theta = 0.95f, .tau = 1.0f};
}

// The product of the axes' Gumbel-softmax distributions, renormalised over the variants that
// exist, is a softmax over variants of the summed perturbed logits: log y_a[j] = z_a[j] − lse_a,
// and the lse terms are the same for every variant so they cancel in the normalisation. That is
// how it is computed here (no division by small probabilities); the gradient of each axis logit
// is (1/τ) times the sum of the variant-score gradients of the variants that make that choice.
float ac_ctrl_cost_objective(const ac_ctrl_config_t *cfg, const float *policy_logit,
                             const float *success_logit, const uint8_t *labels, const float *gumbel,
                             const float *cost_v, int B, const ac_ctrl_cost_params_t *p, float scale,
                             float *d_policy) {
  int V = cfg->n_variant, C = 0, off[AC_CTRL_MAX_AXES];
  for (int a = 0; a < cfg->n_axis; a++) {
    off[a] = C;
    C += cfg->axis[a].n_choice;
  }
  double total = 0;
  for (int b = 0; b < B; b++) {
    const float *l = policy_logit + (size_t)b * C, *g = gumbel ? gumbel + (size_t)b * C : NULL;
    float score[AC_CTRL_MAX_VARIANTS], pi[AC_CTRL_MAX_VARIANTS], q[AC_CTRL_MAX_VARIANTS], mx = -1e30f;
    for (int v = 0; v < V; v++) {
      float s = 0;
      for (int a = 0; a < cfg->n_axis; a++) {
        int j = off[a] + cfg->variant[v].choice[a];
        s += (l[j] + (g ? g[j] : 0.0f)) / p->tau;
      }
      score[v] = s;
      mx = s > mx ? s : mx;
    }
    float z = 0;
    for (int v = 0; v < V; v++) z += pi[v] = expf(score[v] - mx);
    float cost = 0, quality = 0;
    for (int v = 0; v < V; v++) {
      pi[v] /= z;
      q[v] = p->quality_from_labels ? (float)(labels[(size_t)b * V + v] != 0)
                                    : ac__ctrl_sigmoid(success_logit[(size_t)b * V + v]);
      cost += pi[v] * (cost_v ? cost_v[v] : cfg->variant[v].cost);
      quality += pi[v] * q[v];
    }
    float short_ = p->theta - quality;
    total += p->lambda_cost * cost + p->lambda_quality * (short_ > 0 ? short_ : 0);
    if (!d_policy) continue;
    // dL/dπ_v, then through the softmax to the variant scores, then to the axis logits.
    float dpi[AC_CTRL_MAX_VARIANTS], dot = 0;
    for (int v = 0; v < V; v++) {
      dpi[v] = p->lambda_cost * (cost_v ? cost_v[v] : cfg->variant[v].cost) - (short_ > 0 ? p->lambda_quality * q[v] : 0);
      dot += pi[v] * dpi[v];
    }
    float *dl = d_policy + (size_t)b * C;
    memset(dl, 0, (size_t)C * sizeof *dl);
    for (int v = 0; v < V; v++) {
      float ds = pi[v] * (dpi[v] - dot) * scale / p->tau;
      for (int a = 0; a < cfg->n_axis; a++) dl[off[a] + cfg->variant[v].choice[a]] += ds;
    }
  }
  return (float)(scale * total);
}

ac_ctrl_loss_params_t ac_ctrl_loss_default_params(void) {
  return (ac_ctrl_loss_params_t){.w_success = 1.0f, .w_complexity = 1.0f, .complexity_bce = 1,
                                 .w_policy = 0.5f, .w_cost = 1.0f, .gumbel_noise = 1,
                                 .cost = ac_ctrl_cost_default_params()};
}

// --- the batch loss -----------------------------------------------------------------------------

// The cheapest variant that succeeded on task b, or -1.
static int cheapest_success(const ac_ctrl_config_t *k, const uint8_t *lab) {
  int best = -1;
  for (int v = 0; v < k->n_variant; v++)
    if (lab[v] && (best < 0 || k->variant[v].cost < k->variant[best].cost)) best = v;
  return best;
}

static int batch_loss(ac_ctrl_t *c, const ac_ctrl_batch_t *b, const ac_ctrl_loss_params_t *p,
                      ac_ctrl_rng_t *rng, int grad, ac_ctrl_losses_t *out) {
  if (!c || !b || !p || !b->success || b->B < 1) return ac_error(AC_EINVAL, "controller loss: bad arguments");
  const ac_ctrl_config_t *k = &c->cfg;
  int B = b->B, C = c->C, V = k->n_variant;
  ac_ctrl_outputs_t o;
  int err = ac_ctrl_forward(c, b->ids, b->lens, B, &o);
  if (err) return err;
  if (B > c->dbuf_B) {
    // d_cx, t_cx (B); d_pol, d_cost (B x C); d_suc, t_suc (B x V); d_ce (one row of C).
    float *d = malloc(((size_t)B * (2 + 2 * C + 2 * V) + (size_t)C) * sizeof(float));
    float *gb = malloc((size_t)B * C * sizeof(float));
    if (!d || !gb) {
      free(d);
      free(gb);
      return ac_error(AC_ENOMEM, "controller loss buffers");
    }
    free(c->dbuf);
    free(c->gumbel);
    c->dbuf = d;
    c->gumbel = gb;
    c->dbuf_B = B;
  }
  float *d_cx = c->dbuf, *d_pol = d_cx + B, *d_suc = d_pol + (size_t)B * C, *t_suc = d_suc + (size_t)B * V;
  float *t_cx = t_suc + (size_t)B * V, *d_cost = t_cx + B, *d_ce = d_cost + (size_t)B * C;

  float cmin = k->variant[0].cost, cmax = cmin;
  for (int v = 1; v < V; v++) {
    cmin = k->variant[v].cost < cmin ? k->variant[v].cost : cmin;
    cmax = k->variant[v].cost > cmax ? k->variant[v].cost : cmax;
  }
  ac_ctrl_losses_t L = {0};
  for (size_t i = 0; i < (size_t)B * V; i++) t_suc[i] = b->success[i] ? 1.0f : 0.0f;
  L.success = ac_ctrl_bce_logits(o.success_logit, t_suc, B * V, p->w_success / (B * V), d_suc);

  int target[AC_CTRL_MAX_AXES];
  memset(d_pol, 0, (size_t)B * C * sizeof(float));
  for (int i = 0; i < B; i++) {
    int v = cheapest_success(k, b->success + (size_t)i * V);
    if (b->complexity) t_cx[i] = b->complexity[i];
    else t_cx[i] = v < 0 ? 1.0f : (cmax > cmin ? (k->variant[v].cost - cmin) / (cmax - cmin) : 0.0f);
    for (int a = 0; a < k->n_axis; a++) target[a] = k->variant[v < 0 ? k->reference : v].choice[a];
    for (int a = 0; a < k->n_axis; a++) {
      int n = k->axis[a].n_choice, o0 = c->choice_off[a];
      L.policy += ac_ctrl_ce_logits(o.policy_logit + (size_t)i * C + o0, n, target[a],
                                    p->w_policy / (B * k->n_axis), d_ce + o0);
    }
    for (int j = 0; j < C; j++) d_pol[(size_t)i * C + j] += d_ce[j];
  }
  L.complexity = p->complexity_bce ? ac_ctrl_bce_logits(o.complexity_logit, t_cx, B, p->w_complexity / B, d_cx)
                                   : ac_ctrl_mse_sigmoid(o.complexity_logit, t_cx, B, p->w_complexity / B, d_cx);

  const float *g = NULL;
  if (grad && p->gumbel_noise && rng) {
    ac_ctrl_rng_gumbel(rng, c->gumbel, B * C);
    g = c->gumbel;
  }
  L.cost = ac_ctrl_cost_objective(k, o.policy_logit, o.success_logit, b->success, g, NULL, B, &p->cost,
                                  p->w_cost / B, d_cost);
  for (size_t i = 0; i < (size_t)B * C; i++) d_pol[i] += d_cost[i];
  L.total = L.success + L.complexity + L.policy + L.cost;
  if (out) *out = L;
  if (!grad) return 0;
  return ac_ctrl_backward(c, d_cx, d_pol, d_suc);
}

int ac_ctrl_loss_and_grad(ac_ctrl_t *c, const ac_ctrl_batch_t *b, const ac_ctrl_loss_params_t *p,
                          ac_ctrl_rng_t *rng, ac_ctrl_losses_t *out) {
  return batch_loss(c, b, p, rng, 1, out);
}

int ac_ctrl_eval_loss(ac_ctrl_t *c, const ac_ctrl_batch_t *b, const ac_ctrl_loss_params_t *p,
                      ac_ctrl_losses_t *out) {
  return batch_loss(c, b, p, NULL, 0, out);
}
