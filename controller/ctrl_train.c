// ctrl_train.c - AdamW and first-order MAML across domains for the controller.
#include <stdlib.h>
#include <string.h>

#include "controller.h"
#include "ctrl_impl.h"
#include "error.h"

ac_ctrl_adamw_params_t ac_ctrl_adamw_default_params(void) {
  return (ac_ctrl_adamw_params_t){.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
}

ac_ctrl_meta_params_t ac_ctrl_meta_default_params(void) {
  return (ac_ctrl_meta_params_t){.maml = 1, .inner_steps = 1, .inner_lr = 0.05f};
}

struct ac_ctrl_trainer {
  ac_ctrl_t *c;  // borrowed
  ac_ctrl_adamw_params_t opt;
  ac_ctrl_meta_params_t meta;
  ac_ctrl_loss_params_t loss;
  ac_ctrl_rng_t rng;
  int t;             // AdamW steps taken
  float *mem;        // one allocation: m, v, the saved weights, the summed meta-gradient (4 × n)
  float *m, *v, *saved, *acc;
  uint8_t *decay;    // per parameter: weight decay applies
};

int ac_ctrl_trainer_new(ac_ctrl_t *c, ac_ctrl_adamw_params_t opt, ac_ctrl_meta_params_t meta,
                        ac_ctrl_loss_params_t loss, uint64_t seed, ac_ctrl_trainer_t **out) {
  if (!c || !out) return ac_error(AC_EINVAL, "ac_ctrl_trainer_new: NULL argument");
  *out = NULL;
  if (meta.maml && (meta.inner_steps < 1 || !(meta.inner_lr > 0)))
    return ac_error(AC_EINVAL, "controller trainer: inner_steps %d, inner_lr %g", meta.inner_steps, meta.inner_lr);
  ac_ctrl_trainer_t *t = calloc(1, sizeof *t);
  size_t n = c->n_params;
  if (!t) return ac_error(AC_ENOMEM, "controller trainer");
  t->mem = calloc(4 * n, sizeof(float));
  t->decay = calloc(n, 1);
  if (!t->mem || !t->decay) {
    ac_ctrl_trainer_destroy(&t);
    return ac_error(AC_ENOMEM, "controller trainer state for %zu parameters", n);
  }
  t->m = t->mem;
  t->v = t->m + n;
  t->saved = t->v + n;
  t->acc = t->saved + n;
  for (int i = 0; i < c->n_tensor; i++)
    if (c->tensor[i].decay) memset(t->decay + c->tensor[i].offset, 1, c->tensor[i].count);
  t->c = c;
  t->opt = opt;
  t->meta = meta;
  t->loss = loss;
  ac_ctrl_rng_seed(&t->rng, seed);
  *out = t;
  return 0;
}

void ac_ctrl_trainer_destroy(ac_ctrl_trainer_t **self_p) {
  if (!self_p || !*self_p) return;
  free((*self_p)->mem);
  free((*self_p)->decay);
  free(*self_p);
  *self_p = NULL;
}

int ac_ctrl_trainer_steps(const ac_ctrl_trainer_t *t) { return t->t; }

// AdamW (Loshchilov & Hutter): moments with bias correction, decay decoupled from the gradient.
void ac_ctrl_trainer_adamw_step(ac_ctrl_trainer_t *t) {
  ac_ctrl_t *c = t->c;
  const ac_ctrl_adamw_params_t *o = &t->opt;
  t->t++;
  float bc1 = 1.0f - powf(o->beta1, (float)t->t), bc2 = 1.0f - powf(o->beta2, (float)t->t);
  float *p = c->params, *g = c->grads;
  for (size_t i = 0; i < c->n_params; i++) {
    float m = t->m[i] = o->beta1 * t->m[i] + (1.0f - o->beta1) * g[i];
    float v = t->v[i] = o->beta2 * t->v[i] + (1.0f - o->beta2) * g[i] * g[i];
    float mh = m / bc1, vh = v / bc2;
    p[i] -= o->lr * (mh / (sqrtf(vh) + o->eps) + (t->decay[i] ? o->weight_decay * p[i] : 0.0f));
  }
  ac_ctrl_params_changed(c);
}

static void add_losses(ac_ctrl_losses_t *acc, const ac_ctrl_losses_t *l, float w) {
  acc->total += w * l->total;
  acc->success += w * l->success;
  acc->complexity += w * l->complexity;
  acc->policy += w * l->policy;
  acc->cost += w * l->cost;
}

int ac_ctrl_trainer_step(ac_ctrl_trainer_t *t, const ac_ctrl_batch_t *support, const ac_ctrl_batch_t *query,
                         int n_domain, ac_ctrl_losses_t *out) {
  if (!t || !support || !query || n_domain < 1) return ac_error(AC_EINVAL, "ac_ctrl_trainer_step: bad arguments");
  ac_ctrl_t *c = t->c;
  size_t n = c->n_params;
  ac_ctrl_losses_t mean = {0}, l;
  int err = 0;
  if (!t->meta.maml) {
    // Plain multi-task: one gradient of the mean loss over every batch, at θ.
    ac_ctrl_zero_grad(c);
    for (int d = 0; d < n_domain; d++) {
      if ((err = ac_ctrl_loss_and_grad(c, &support[d], &t->loss, &t->rng, &l))) return err;
      add_losses(&mean, &l, 0.5f / n_domain);
      if ((err = ac_ctrl_loss_and_grad(c, &query[d], &t->loss, &t->rng, &l))) return err;
      add_losses(&mean, &l, 0.5f / n_domain);
    }
    for (size_t i = 0; i < n; i++) c->grads[i] *= 0.5f / n_domain;
  } else {
    // FOMAML with the support loss at θ kept in the outer objective: the router deploys θ itself,
    // unadapted, so θ must be good on its own (a pure MAML θ is only good one step later). Per
    // domain: the support gradient at θ (it is also the first inner step's), SGD on a copy, the
    // query gradient at the adapted weights; the outer gradient is the mean over domains of
    // ½ support-at-θ + ½ query-at-adapted. It differs from the multi-task step above only in
    // where the query gradient is taken, which is what the ablation measures.
    memcpy(t->saved, c->params, n * sizeof(float));
    memset(t->acc, 0, n * sizeof(float));
    for (int d = 0; d < n_domain; d++) {
      for (int s = 0; s < t->meta.inner_steps; s++) {
        ac_ctrl_zero_grad(c);
        if ((err = ac_ctrl_loss_and_grad(c, &support[d], &t->loss, &t->rng, &l))) goto restore;
        if (s == 0) {
          add_losses(&mean, &l, 0.5f / n_domain);
          for (size_t i = 0; i < n; i++) t->acc[i] += c->grads[i] * (0.5f / n_domain);
        }
        for (size_t i = 0; i < n; i++) c->params[i] -= t->meta.inner_lr * c->grads[i];
      }
      ac_ctrl_zero_grad(c);
      if ((err = ac_ctrl_loss_and_grad(c, &query[d], &t->loss, &t->rng, &l))) goto restore;
      add_losses(&mean, &l, 0.5f / n_domain);
      for (size_t i = 0; i < n; i++) t->acc[i] += c->grads[i] * (0.5f / n_domain);
      memcpy(c->params, t->saved, n * sizeof(float));
    }
    ac_ctrl_params_changed(c);
    memcpy(c->grads, t->acc, n * sizeof(float));
  }
  ac_ctrl_trainer_adamw_step(t);
  if (out) *out = mean;
  return 0;
restore:
  memcpy(c->params, t->saved, n * sizeof(float));
  return err;
}
