// test_controller.c - the complexity controller: gradients of every layer against central finite
// differences, the Gumbel-softmax and expected-cost gradients, training on a synthetic task
// (AdamW, FOMAML on and off, determinism), the file round trip and its errors, the decision
// rule, and the prediction latency (AC_CTRL_BENCH=1 for more iterations).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "controller.h"
#include "error.h"

static const char *QUANT[] = {"f16", "int8", "int4", "int2"};
static const char *PRUNE[] = {"0", "0.25"};

// A zoo that is not the full grid (5 of 8 combinations), so renormalisation is exercised.
static void add_zoo(ac_ctrl_config_t *k) {
  ac_ctrl_config_add_axis(k, "quant", QUANT, 4);
  ac_ctrl_config_add_axis(k, "prune", PRUNE, 2);
  ac_ctrl_config_add_variant(k, "f16", 1.0f, (int[]){0, 0});
  ac_ctrl_config_add_variant(k, "int8", 0.5f, (int[]){1, 0});
  ac_ctrl_config_add_variant(k, "int8-p25", 0.4f, (int[]){1, 1});
  ac_ctrl_config_add_variant(k, "int4", 0.28f, (int[]){2, 0});
  ac_ctrl_config_add_variant(k, "int2", 0.15f, (int[]){3, 0});
  k->reference = 0;
}

static float *random_embeddings(int n_vocab, int e, uint64_t seed) {
  float *E = malloc((size_t)n_vocab * e * sizeof *E);
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, seed);
  for (size_t i = 0; i < (size_t)n_vocab * e; i++) E[i] = 0.5f * ac_ctrl_rng_normal(&r);
  return E;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// --- gradient checks --------------------------------------------------------------------------

#define GB 3  // batch of the gradient checks
static int32_t g_ids[GB * 8];
static int g_lens[GB] = {8, 5, 0};  // full, padded, empty (one pad token)
static float *g_r;                  // random weights of the head outputs

// A scalar function of every head output: Σ r · logits.
static double head_loss(ac_ctrl_t *c) {
  ac_ctrl_outputs_t o;
  if (ac_ctrl_forward(c, g_ids, g_lens, GB, &o)) return NAN;
  int C = 0;
  for (int a = 0; a < ac_ctrl_config(c)->n_axis; a++) C += ac_ctrl_config(c)->axis[a].n_choice;
  int V = ac_ctrl_config(c)->n_variant;
  double s = 0;
  const float *r = g_r;
  for (int i = 0; i < GB; i++) s += *r++ * o.complexity_logit[i];
  for (int i = 0; i < GB * C; i++) s += *r++ * o.policy_logit[i];
  for (int i = 0; i < GB * V; i++) s += *r++ * o.success_logit[i];
  return s;
}

// Compares the analytic gradient (already in the controller's gradient buffer) with central
// differences (float, h = 1e-3) on up to `per` sampled entries of every tensor. Per tensor the
// relative error ‖a − n‖ / max(‖a‖, ‖n‖) must be below tol: 1e-2 for the network (a wrong sign
// gives 2, a dropped term 0.03 to 1: checked by breaking backward formulas on purpose), 3e-2 for
// the batch-mean losses, whose smaller gradients leave float differences noisier.
static int check_tensors(ac_ctrl_t *c, double (*f)(ac_ctrl_t *), const float *grad, int per, double tol,
                         const char *what) {
  size_t np;
  float *p = ac_ctrl_params(c, &np);
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, 99);
  int bad = 0;
  for (int t = 0; t < ac_ctrl_n_tensors(c); t++) {
    const char *name;
    size_t off, cnt;
    ac_ctrl_tensor(c, t, &name, &off, &cnt);
    double num2 = 0, ana2 = 0, diff2 = 0;
    int m = (int)(cnt < (size_t)per ? cnt : (size_t)per);
    for (int j = 0; j < m; j++) {
      size_t i = off + (cnt <= (size_t)per ? (size_t)j : ac_ctrl_rng_u32(&r) % cnt);
      float keep = p[i], h = 1e-3f * (fabsf(keep) > 1 ? fabsf(keep) : 1);
      p[i] = keep + h;
      double lp = f(c);
      p[i] = keep - h;
      double lm = f(c);
      p[i] = keep;
      double num = (lp - lm) / (2.0 * h), ana = grad[i];
      num2 += num * num;
      ana2 += ana * ana;
      diff2 += (num - ana) * (num - ana);
    }
    double scale = sqrt(num2 > ana2 ? num2 : ana2), rel = scale > 0 ? sqrt(diff2) / scale : 0;
    int ok = rel < tol && (scale > 1e-6 || !strcmp(name, "__never"));
    if (!ok) bad++;
    CHECK(ok, "%s: tensor %-14s rel err %.2e (|grad| %.2e)", what, name, rel, scale);
    if (getenv("AC_CTRL_VERBOSE")) printf("  %s %-14s rel %.2e |g| %.2e\n", what, name, rel, scale);
  }
  return bad;
}

static ac_ctrl_config_t small_config(void) {
  ac_ctrl_config_t k = ac_ctrl_config_tiny();
  k.k = 8;
  k.d = 16;
  k.n_layer = 2;
  k.n_head = 2;
  k.ffn = 32;
  k.hidden = 12;
  k.e = 10;
  k.n_vocab = 50;
  k.pad_id = 0;
  k.seed = 7;
  add_zoo(&k);
  return k;
}

static ac_ctrl_batch_t g_batch;
static ac_ctrl_loss_params_t g_lp;
static double full_loss(ac_ctrl_t *c) {
  ac_ctrl_losses_t l;
  if (ac_ctrl_eval_loss(c, &g_batch, &g_lp, &l)) return NAN;
  return l.total;
}

static void test_gradients(void) {
  ac_ctrl_config_t k = small_config();
  float *E = random_embeddings(k.n_vocab, k.e, 3);
  ac_ctrl_t *c = NULL;
  CHECK(ac_ctrl_new(&k, &c) == 0, "new: %s", ac_errmsg());
  CHECK(ac_ctrl_set_embeddings(c, E, k.n_vocab, k.e, NULL) == 0, "embeddings: %s", ac_errmsg());
  // Move the weights off their initial values (zero query, unit norms) so every path is live.
  size_t np;
  float *p = ac_ctrl_params(c, &np);
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, 5);
  for (size_t i = 0; i < np; i++) p[i] += 0.1f * ac_ctrl_rng_normal(&r);
  for (int i = 0; i < GB * 8; i++) g_ids[i] = (int32_t)(ac_ctrl_rng_u32(&r) % k.n_vocab);
  g_ids[3] = -5;  // out of range reads as pad
  int C = 6, V = k.n_variant;
  g_r = malloc((size_t)GB * (1 + C + V) * sizeof *g_r);
  for (int i = 0; i < GB * (1 + C + V); i++) g_r[i] = ac_ctrl_rng_normal(&r);

  // 1. Every layer: the gradient of Σ r · (all head logits).
  ac_ctrl_zero_grad(c);
  head_loss(c);
  CHECK(ac_ctrl_backward(c, g_r, g_r + GB, g_r + GB + GB * C) == 0, "backward: %s", ac_errmsg());
  size_t ng;
  float *g = malloc(np * sizeof *g);
  memcpy(g, ac_ctrl_grads(c, &ng), np * sizeof *g);
  int bad = check_tensors(c, head_loss, g, 24, 1e-2, "network");
  printf("gradient check, every layer (%d tensors, Σ r·logits): %s\n", ac_ctrl_n_tensors(c), bad ? "FAILED" : "ok");

  // 2. The whole training loss (BCE + complexity BCE + policy CE + expected cost, quality from
  // the labels so that the loss is one differentiable function of the weights).
  static uint8_t lab[GB * 5] = {1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
  g_batch = (ac_ctrl_batch_t){.B = GB, .ids = g_ids, .lens = g_lens, .success = lab};
  g_lp = ac_ctrl_loss_default_params();
  g_lp.gumbel_noise = 0;
  g_lp.cost.quality_from_labels = 1;
  g_lp.cost.theta = 0.99f;  // keeps the hinge active, away from its kink
  ac_ctrl_zero_grad(c);
  ac_ctrl_losses_t L;
  CHECK(ac_ctrl_loss_and_grad(c, &g_batch, &g_lp, NULL, &L) == 0, "loss: %s", ac_errmsg());
  memcpy(g, ac_ctrl_grads(c, &ng), np * sizeof *g);
  bad = check_tensors(c, full_loss, g, 16, 3e-2, "loss");
  printf("gradient check, whole training loss %.4f (success %.3f complexity %.3f policy %.3f cost %.3f): %s\n",
         L.total, L.success, L.complexity, L.policy, L.cost, bad ? "FAILED" : "ok");
  // Same with the MSE complexity loss.
  g_lp.complexity_bce = 0;
  ac_ctrl_zero_grad(c);
  ac_ctrl_loss_and_grad(c, &g_batch, &g_lp, NULL, &L);
  memcpy(g, ac_ctrl_grads(c, &ng), np * sizeof *g);
  bad = check_tensors(c, full_loss, g, 6, 3e-2, "loss-mse");
  printf("gradient check, loss with MSE complexity: %s\n", bad ? "FAILED" : "ok");

  free(g);
  free(g_r);
  ac_ctrl_destroy(&c);
  CHECK(c == NULL, "destroy clears the pointer");
  free(E);
}

// --- Gumbel-softmax and the expected-cost objective -------------------------------------------

static void test_gumbel(void) {
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, 11);
  enum { N = 5 };
  float l[N], gn[N], y[N], dy[N], dl[N], yp[N], ym[N];
  for (int i = 0; i < N; i++) l[i] = ac_ctrl_rng_normal(&r);
  ac_ctrl_rng_gumbel(&r, gn, N);
  for (int i = 0; i < N; i++) dy[i] = ac_ctrl_rng_normal(&r);
  for (int ti = 0; ti < 3; ti++) {
    float tau = (float[]){0.5f, 1.0f, 2.0f}[ti];
    ac_ctrl_gumbel_softmax(l, gn, N, tau, y);
    float s = 0;
    for (int i = 0; i < N; i++) s += y[i];
    CHECK(fabsf(s - 1) < 1e-5f, "gumbel-softmax sums to 1");
    ac_ctrl_gumbel_softmax_backward(y, dy, N, tau, dl);
    double err = 0, mag = 0;
    for (int i = 0; i < N; i++) {
      float keep = l[i];
      l[i] = keep + 1e-3f;
      ac_ctrl_gumbel_softmax(l, gn, N, tau, yp);
      l[i] = keep - 1e-3f;
      ac_ctrl_gumbel_softmax(l, gn, N, tau, ym);
      l[i] = keep;
      double num = 0;
      for (int j = 0; j < N; j++) num += dy[j] * (yp[j] - ym[j]) / 2e-3;
      err = fmax(err, fabs(num - dl[i]));
      mag = fmax(mag, fabs(num));
    }
    CHECK(err < 1e-2 * mag + 1e-4, "gumbel-softmax backward tau %.1f: max err %.2e of %.2e", tau, err, mag);
    printf("gumbel-softmax backward, tau %.1f: max abs err %.1e (max |grad| %.2f)\n", tau, err, mag);
  }

  // The objective's gradient w.r.t. the policy logits, with fixed noise, against differences.
  ac_ctrl_config_t k = small_config();
  enum { B = 4, C = 6 };
  int V = k.n_variant;
  float pol[B * C], suc[B * 5], gum[B * C], dpol[B * C], tmp[B * C];
  uint8_t lab[B * 5];
  for (int i = 0; i < B * C; i++) pol[i] = ac_ctrl_rng_normal(&r);
  for (int i = 0; i < B * V; i++) suc[i] = 2 * ac_ctrl_rng_normal(&r), lab[i] = ac_ctrl_rng_u32(&r) & 1;
  ac_ctrl_rng_gumbel(&r, gum, B * C);
  for (int qi = 0; qi < 2; qi++) {
    ac_ctrl_cost_params_t p = ac_ctrl_cost_default_params();
    p.tau = 0.7f;
    p.quality_from_labels = qi;
    ac_ctrl_cost_objective(&k, pol, suc, lab, gum, NULL, B, &p, 1.0f / B, dpol);
    double err = 0, mag = 0;
    for (int i = 0; i < B * C; i++) {
      float keep = pol[i];
      pol[i] = keep + 1e-3f;
      double lp = ac_ctrl_cost_objective(&k, pol, suc, lab, gum, NULL, B, &p, 1.0f / B, tmp);
      pol[i] = keep - 1e-3f;
      double lm = ac_ctrl_cost_objective(&k, pol, suc, lab, gum, NULL, B, &p, 1.0f / B, tmp);
      pol[i] = keep;
      double num = (lp - lm) / 2e-3;
      err = fmax(err, fabs(num - dpol[i]));
      mag = fmax(mag, fabs(num));
    }
    CHECK(err < 2e-2 * mag + 2e-4 && mag > 1e-3, "cost objective backward: max err %.2e of %.2e", err, mag);
    printf("expected-cost objective backward (quality from %s): max abs err %.1e (max |grad| %.3f)\n",
           qi ? "labels" : "success head", err, mag);
  }

  // On a zoo that is the full grid, the variant distribution is the product of the axes'
  // Gumbel-softmax distributions; check it through the cost (costs = one-hot of variant v).
  ac_ctrl_config_t grid = small_config();
  grid.n_variant = 0;
  for (int q = 0; q < 4; q++)
    for (int pr = 0; pr < 2; pr++) {
      char name[16];
      snprintf(name, sizeof name, "q%dp%d", q, pr);
      ac_ctrl_config_add_variant(&grid, name, 1, (int[]){q, pr});
    }
  float y0[4], y1[2], cv[8], maxd = 0;
  ac_ctrl_cost_params_t p = ac_ctrl_cost_default_params();
  p.lambda_cost = 1;
  p.lambda_quality = 0;
  p.tau = 0.5f;
  ac_ctrl_gumbel_softmax(pol, gum, 4, p.tau, y0);
  ac_ctrl_gumbel_softmax(pol + 4, gum + 4, 2, p.tau, y1);
  for (int v = 0; v < 8; v++) {
    for (int u = 0; u < 8; u++) cv[u] = u == v;
    float pi = ac_ctrl_cost_objective(&grid, pol, suc, NULL, gum, cv, 1, &p, 1.0f, NULL);
    maxd = fmaxf(maxd, fabsf(pi - y0[v / 2] * y1[v % 2]));
  }
  CHECK(maxd < 1e-5f, "full grid: π = Π_a y_a (max diff %.2e)", maxd);
}

// --- training on a synthetic task -------------------------------------------------------------

// Tasks: random "easy" tokens; a task containing a medium token (10..13) needs int4 or better,
// one containing a hard token (5..7) needs int8 or better. Capability per variant:
// f16 3, int8 2, int8-p25 1, int4 1, int2 0; success when capability >= level.
enum { SK = 16, SV = 5 };
typedef struct {
  int n;
  int32_t *ids;
  int *lens;
  uint8_t *lab;
  int *domain;
} synth_t;

static void synth_make(synth_t *s, int n, uint64_t seed) {
  static const int cap[SV] = {3, 2, 1, 1, 0};
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, seed);
  s->n = n;
  s->ids = calloc((size_t)n * SK, sizeof *s->ids);
  s->lens = calloc(n, sizeof *s->lens);
  s->lab = calloc((size_t)n * SV, 1);
  s->domain = calloc(n, sizeof *s->domain);
  for (int i = 0; i < n; i++) {
    int len = 4 + (int)(ac_ctrl_rng_u32(&r) % (SK - 3)), level = (int)(ac_ctrl_rng_u32(&r) % 3);
    s->lens[i] = len;
    s->domain[i] = (int)(ac_ctrl_rng_u32(&r) % 2);
    for (int t = 0; t < len; t++) s->ids[i * SK + t] = 20 + (int32_t)(ac_ctrl_rng_u32(&r) % 44);
    // The domain shows in the tokens too: domain 1 uses the upper half of the easy range.
    if (s->domain[i]) for (int t = 0; t < len; t++) s->ids[i * SK + t] |= 32;
    if (level == 1) s->ids[i * SK + ac_ctrl_rng_u32(&r) % len] = 10 + (int32_t)(ac_ctrl_rng_u32(&r) % 4);
    if (level == 2) s->ids[i * SK + ac_ctrl_rng_u32(&r) % len] = 5 + (int32_t)(ac_ctrl_rng_u32(&r) % 3);
    for (int v = 0; v < SV; v++) s->lab[i * SV + v] = cap[v] >= level;
  }
}

static void synth_free(synth_t *s) {
  free(s->ids);
  free(s->lens);
  free(s->lab);
  free(s->domain);
}

static ac_ctrl_batch_t synth_batch(const synth_t *s, int from, int B) {
  return (ac_ctrl_batch_t){.B = B, .ids = s->ids + (size_t)from * SK, .lens = s->lens + from,
                           .success = s->lab + (size_t)from * SV};
}

static ac_ctrl_config_t synth_config(void) {
  ac_ctrl_config_t k = ac_ctrl_config_tiny();
  k.k = SK;
  k.d = 32;
  k.n_layer = 2;
  k.n_head = 4;
  k.ffn = 64;
  k.hidden = 32;
  k.e = 16;
  k.n_vocab = 64;
  k.pad_id = 0;
  k.seed = 21;
  add_zoo(&k);
  return k;
}

// Accuracy of the success head (σ > 0.5) on the set, and of the best constant per variant.
static void success_accuracy(ac_ctrl_t *c, const synth_t *s, double *acc, double *base) {
  int right = 0, ones[SV] = {0};
  for (int i = 0; i < s->n; i++) {
    ac_ctrl_pred_t p;
    ac_ctrl_predict(c, s->ids + (size_t)i * SK, s->lens[i], &p);
    for (int v = 0; v < SV; v++) {
      right += (p.p_success[v] > 0.5f) == s->lab[i * SV + v];
      ones[v] += s->lab[i * SV + v];
    }
  }
  int b = 0;
  for (int v = 0; v < SV; v++) b += ones[v] > s->n - ones[v] ? ones[v] : s->n - ones[v];
  *acc = (double)right / (s->n * SV);
  *base = (double)b / (s->n * SV);
}

// Trains with the trainer: n_domain = 2, the batches of each domain drawn in order.
static int train(ac_ctrl_t *c, const synth_t *tr, int maml, int steps, uint64_t seed, float *last) {
  ac_ctrl_adamw_params_t o = ac_ctrl_adamw_default_params();
  o.lr = 3e-3f;
  ac_ctrl_meta_params_t m = ac_ctrl_meta_default_params();
  m.maml = maml;
  ac_ctrl_trainer_t *t = NULL;
  int err = ac_ctrl_trainer_new(c, o, m, ac_ctrl_loss_default_params(), seed, &t);
  if (err) return err;
  // Per domain, the task indices in order; batches of 16 cycle through them.
  int *idx[2], nd[2] = {0, 0};
  for (int d = 0; d < 2; d++) idx[d] = malloc(tr->n * sizeof(int));
  for (int i = 0; i < tr->n; i++) idx[tr->domain[i]][nd[tr->domain[i]]++] = i;
  enum { MB = 16 };
  int32_t *ids = malloc(4 * MB * SK * sizeof *ids);
  int *lens = malloc(4 * MB * sizeof *lens);
  uint8_t *lab = malloc(4 * MB * SV);
  int pos[2] = {0, 0};
  ac_ctrl_losses_t l = {0};
  for (int s = 0; s < steps && !err; s++) {
    ac_ctrl_batch_t sup[2], qry[2];
    for (int d = 0; d < 2; d++)
      for (int half = 0; half < 2; half++) {
        int slot = (d * 2 + half) * MB;
        for (int j = 0; j < MB; j++) {
          int i = idx[d][pos[d]++ % nd[d]];
          memcpy(ids + (size_t)(slot + j) * SK, tr->ids + (size_t)i * SK, SK * sizeof *ids);
          lens[slot + j] = tr->lens[i];
          memcpy(lab + (size_t)(slot + j) * SV, tr->lab + (size_t)i * SV, SV);
        }
        ac_ctrl_batch_t b = {.B = MB, .ids = ids + (size_t)slot * SK, .lens = lens + slot, .success = lab + (size_t)slot * SV};
        if (half == 0) sup[d] = b;
        else qry[d] = b;
      }
    err = ac_ctrl_trainer_step(t, sup, qry, 2, &l);
  }
  if (last) *last = l.total;
  free(ids);
  free(lens);
  free(lab);
  free(idx[0]);
  free(idx[1]);
  ac_ctrl_trainer_destroy(&t);
  return err;
}

// Held-out routing: the cost and success of the controller's decisions (before the confidence
// fallback) and of every uniform policy; the controller must be cheaper than the cheapest
// uniform policy whose success is at least its own.
static void check_routing(ac_ctrl_t *c, const ac_ctrl_config_t *k, const synth_t *te, const char *mode) {
  double cost = 0, ok = 0, u_cost[SV] = {0}, u_ok[SV] = {0};
  for (int i = 0; i < te->n; i++) {
    ac_ctrl_pred_t p;
    ac_ctrl_predict(c, te->ids + (size_t)i * SK, te->lens[i], &p);
    cost += k->variant[p.variant_raw].cost;
    ok += te->lab[i * SV + p.variant_raw];
    for (int v = 0; v < SV; v++) {
      u_cost[v] += k->variant[v].cost;
      u_ok[v] += te->lab[i * SV + v];
    }
  }
  int best = -1;
  for (int v = 0; v < SV; v++)
    if (u_ok[v] >= ok && (best < 0 || u_cost[v] < u_cost[best])) best = v;
  printf("%s, held-out routing (cheapest with p >= %.2f): cost %.3f of all-f16 at success %.3f; cheapest "
         "uniform at >= that success: %s, cost %.3f at %.3f\n",
         mode, k->theta, cost / te->n, ok / te->n, k->variant[best].name, u_cost[best] / te->n, u_ok[best] / te->n);
  CHECK(best >= 0 && cost < 0.9 * u_cost[best], "%s: controller cost %.3f vs uniform %s %.3f", mode, cost / te->n,
        k->variant[best].name, u_cost[best] / te->n);
  CHECK(ok / te->n >= 0.9, "%s: held-out success %.3f", mode, ok / te->n);
}

static void test_training(void) {
  ac_ctrl_config_t k = synth_config();
  float *E = random_embeddings(k.n_vocab, k.e, 4);
  synth_t tr, te;
  synth_make(&tr, 512, 100);
  synth_make(&te, 256, 200);
  ac_ctrl_t *c = NULL;
  ac_ctrl_loss_params_t lp = ac_ctrl_loss_default_params();
  ac_ctrl_batch_t all = synth_batch(&te, 0, te.n);
  for (int maml = 1; maml >= 0; maml--) {
    const char *mode = maml ? "FOMAML" : "multi-task";
    CHECK(ac_ctrl_new(&k, &c) == 0, "new: %s", ac_errmsg());
    ac_ctrl_set_embeddings(c, E, k.n_vocab, k.e, NULL);
    ac_ctrl_losses_t l0, l1;
    ac_ctrl_eval_loss(c, &all, &lp, &l0);
    double acc0, acc1, base;
    success_accuracy(c, &te, &acc0, &base);
    double t0 = now_s();
    float last;
    int steps = 150;
    CHECK(train(c, &tr, maml, steps, 1, &last) == 0, "train: %s", ac_errmsg());
    double dt = now_s() - t0;
    ac_ctrl_eval_loss(c, &all, &lp, &l1);
    success_accuracy(c, &te, &acc1, &base);
    printf("training (AdamW, %s, %d steps of 2 domains x 2 x 16 tasks, %.2f s): held-out loss %.3f -> %.3f "
           "(success BCE %.3f -> %.3f); success-head accuracy %.3f -> %.3f (best constant %.3f)\n",
           mode, steps, dt, l0.total, l1.total, l0.success, l1.success, acc0, acc1, base);
    CHECK(l1.success < 0.5f * l0.success, "%s lowers the success loss: %.3f -> %.3f", mode, l0.success, l1.success);
    CHECK(l1.total < 0.75f * l0.total, "%s lowers the total loss: %.3f -> %.3f", mode, l0.total, l1.total);
    CHECK(acc1 > base + 0.1 && acc1 > 0.85, "%s: held-out accuracy %.3f vs best constant %.3f", mode, acc1, base);
    check_routing(c, &k, &te, mode);
    ac_ctrl_destroy(&c);
  }

  // FOMAML on and off: both run, each deterministic for its seed.
  size_t np;
  float *snap[4];
  int modes[4] = {1, 1, 0, 0};
  float fl[4];
  for (int i = 0; i < 4; i++) {
    ac_ctrl_new(&k, &c);
    ac_ctrl_set_embeddings(c, E, k.n_vocab, k.e, NULL);
    CHECK(train(c, &tr, modes[i], 25, 5, &fl[i]) == 0, "train maml=%d: %s", modes[i], ac_errmsg());
    float *p = ac_ctrl_params(c, &np);
    snap[i] = malloc(np * sizeof(float));
    memcpy(snap[i], p, np * sizeof(float));
    ac_ctrl_destroy(&c);
  }
  CHECK(!memcmp(snap[0], snap[1], np * sizeof(float)), "FOMAML: same seed, bit-identical weights");
  CHECK(!memcmp(snap[2], snap[3], np * sizeof(float)), "multi-task: same seed, bit-identical weights");
  CHECK(memcmp(snap[0], snap[2], np * sizeof(float)), "FOMAML and multi-task differ");
  CHECK(isfinite(fl[0]) && isfinite(fl[2]), "finite losses");
  printf("FOMAML on / off, 25 steps: last loss %.3f / %.3f; same seed twice bit-identical: %s / %s\n", fl[0], fl[2],
         memcmp(snap[0], snap[1], np * sizeof(float)) ? "no" : "yes",
         memcmp(snap[2], snap[3], np * sizeof(float)) ? "no" : "yes");
  for (int i = 0; i < 4; i++) free(snap[i]);
  synth_free(&tr);
  synth_free(&te);
  free(E);
}

// --- file ---------------------------------------------------------------------------------------

static long file_size(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fclose(f);
  return n;
}

static char *slurp(const char *path, long *n) {
  *n = file_size(path);
  FILE *f = fopen(path, "rb");
  char *b = malloc(*n);
  if (fread(b, 1, *n, f) != (size_t)*n) *n = -1;
  fclose(f);
  return b;
}

static void spit(const char *path, const char *b, long n) {
  FILE *f = fopen(path, "wb");
  fwrite(b, 1, n, f);
  fclose(f);
}

static void test_file(void) {
  ac_ctrl_config_t k = small_config();
  uint8_t digest[32], other[32];
  for (int i = 0; i < 32; i++) digest[i] = (uint8_t)(i * 7 + 1), other[i] = digest[i] ^ (i == 5);
  memcpy(k.embd_digest, digest, 32);
  k.train = (ac_ctrl_train_info_t){.seed = 12345678901234ull, .steps = 77, .maml = 1, .final_loss = 0.25f};
  strcpy(k.train.note, "test \"quoted\" note");
  float *E = random_embeddings(k.n_vocab, k.e, 8);
  ac_ctrl_t *c = NULL, *d = NULL;
  ac_ctrl_new(&k, &c);
  ac_ctrl_set_embeddings(c, E, k.n_vocab, k.e, digest);
  size_t np;
  float *p = ac_ctrl_params(c, &np);
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, 1);
  for (size_t i = 0; i < np; i++) p[i] += 0.05f * ac_ctrl_rng_normal(&r);
  ac_ctrl_params_changed(c);

  char path[256], bad[256];
  snprintf(path, sizeof path, "/tmp/test_controller_%d.acctrl", (int)getpid());
  snprintf(bad, sizeof bad, "/tmp/test_controller_%d.bad", (int)getpid());
  CHECK(ac_ctrl_save(c, path) == 0, "save: %s", ac_errmsg());
  CHECK(ac_ctrl_load(path, E, k.n_vocab, k.e, digest, &d) == 0, "load: %s", ac_errmsg());
  if (d) {
    size_t nd;
    float *q = ac_ctrl_params(d, &nd);
    CHECK(nd == np && !memcmp(p, q, np * sizeof *p), "parameters round-trip exactly");
    const ac_ctrl_config_t *x = ac_ctrl_config(d);
    CHECK(x->k == k.k && x->d == k.d && x->n_layer == k.n_layer && x->n_head == k.n_head && x->ffn == k.ffn &&
              x->hidden == k.hidden && x->e == k.e && x->n_vocab == k.n_vocab && x->theta == k.theta &&
              x->conf_min == k.conf_min && x->n_variant == k.n_variant && x->n_axis == k.n_axis,
          "config round-trips");
    CHECK(!memcmp(x->axis, k.axis, sizeof k.axis) && !memcmp(x->variant, k.variant, sizeof k.variant) &&
              !memcmp(x->embd_digest, digest, 32),
          "zoo and digest round-trip");
    CHECK(x->train.seed == k.train.seed && x->train.steps == 77 && x->train.maml == 1 &&
              x->train.final_loss == 0.25f && !strcmp(x->train.note, k.train.note),
          "training info round-trips");
    int32_t ids[6] = {3, 9, 27, 1, 44, 12};
    ac_ctrl_pred_t a, b;
    ac_ctrl_predict(c, ids, 6, &a);   // through E · W_in
    ac_ctrl_predict(d, ids, 6, &b);   // through the precomputed table
    CHECK(fabsf(a.complexity - b.complexity) < 1e-5f && fabsf(a.p_success[2] - b.p_success[2]) < 1e-5f &&
              a.variant == b.variant,
          "loaded controller predicts the same");
    ac_ctrl_destroy(&d);
  }
  // Mismatched base model.
  CHECK(ac_ctrl_load(path, E, k.n_vocab, k.e, other, &d) == AC_EINVAL && !d, "digest mismatch: %s", ac_errmsg());
  CHECK(ac_ctrl_load(path, E, k.n_vocab - 1, k.e, digest, &d) == AC_EINVAL, "vocabulary mismatch: %s", ac_errmsg());
  CHECK(ac_ctrl_load(path, NULL, 0, 0, NULL, &d) == 0 && d, "load without embeddings");
  int32_t one = 1;
  ac_ctrl_pred_t pr;
  CHECK(d && ac_ctrl_predict(d, &one, 1, &pr) == AC_EINVAL, "predict without embeddings is an error");
  ac_ctrl_destroy(&d);

  long n;
  char *buf = slurp(path, &n);
  // Truncations: inside the magic, the header, the parameters, the checksum.
  long cuts[] = {0, 5, 15, 40, n / 2, n - 9, n - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    spit(bad, buf, cuts[i]);
    int e = ac_ctrl_load(bad, E, k.n_vocab, k.e, digest, &d);
    CHECK(e == AC_EFORMAT && !d, "truncated at %ld: %d %s", cuts[i], e, ac_errmsg());
    if (i == 4) printf("truncated file: %s\n", ac_errmsg());
  }
  // A flipped bit in the parameters, and one in the header.
  buf[n - 20] ^= 0x10;
  spit(bad, buf, n);
  CHECK(ac_ctrl_load(bad, E, k.n_vocab, k.e, digest, &d) == AC_EFORMAT, "corrupted parameters");
  printf("corrupted file: %s\n", ac_errmsg());
  buf[n - 20] ^= 0x10;
  char *h = strstr(buf + 16, "\"d\":16");
  CHECK(h != NULL, "header names d");
  if (h) {
    h[5] = '8';  // d = 18: still JSON, no longer this tensor table
    spit(bad, buf, n);
    CHECK(ac_ctrl_load(bad, E, k.n_vocab, k.e, digest, &d) == AC_EFORMAT, "edited header: %s", ac_errmsg());
    h[5] = '6';
  }
  buf[8] = 9;  // version
  spit(bad, buf, n);
  CHECK(ac_ctrl_load(bad, E, k.n_vocab, k.e, digest, &d) == AC_EUNSUPPORTED, "version: %s", ac_errmsg());
  printf("other version: %s\n", ac_errmsg());
  buf[8] = 1;
  buf[0] = 'X';
  spit(bad, buf, n);
  CHECK(ac_ctrl_load(bad, E, k.n_vocab, k.e, digest, &d) == AC_EFORMAT, "magic");
  CHECK(ac_ctrl_load("/nonexistent/x.acctrl", E, k.n_vocab, k.e, digest, &d) == AC_EIO, "missing file");
  free(buf);
  remove(path);
  remove(bad);
  ac_ctrl_destroy(&c);
  free(E);
}

// --- the decision rule ------------------------------------------------------------------------

static void set_tensor(ac_ctrl_t *c, const char *want, const float *vals, float fill) {
  size_t np;
  float *p = ac_ctrl_params(c, &np);
  for (int t = 0; t < ac_ctrl_n_tensors(c); t++) {
    const char *name;
    size_t off, cnt;
    ac_ctrl_tensor(c, t, &name, &off, &cnt);
    if (!strcmp(name, want))
      for (size_t i = 0; i < cnt; i++) p[off + i] = vals ? vals[i] : fill;
  }
  ac_ctrl_params_changed(c);
}

static void test_decision(void) {
  ac_ctrl_config_t k = small_config();
  float *E = random_embeddings(k.n_vocab, k.e, 9);
  ac_ctrl_t *c = NULL;
  ac_ctrl_new(&k, &c);
  ac_ctrl_set_embeddings(c, E, k.n_vocab, k.e, NULL);
  // Heads that ignore the input: the logits are the biases.
  set_tensor(c, "success_w", NULL, 0);
  set_tensor(c, "policy_w", NULL, 0);
  int32_t ids[3] = {1, 2, 3};
  ac_ctrl_pred_t p;
  // f16, int8, int8-p25, int4, int2 (costs 1, .5, .4, .28, .15): int4 and int8 pass θ = 0.95.
  set_tensor(c, "success_b", (float[]){5, 4, 2, 3.5f, 1}, 0);
  set_tensor(c, "policy_b", (float[]){0, 0, 8, 0, 0, 0}, 0);  // int4, unpruned: confident
  CHECK(ac_ctrl_predict(c, ids, 3, &p) == 0, "predict");
  CHECK(p.variant == 3 && p.variant_raw == 3 && !p.fallback, "cheapest with p >= θ: got %d", p.variant);
  CHECK(p.policy_variant == 3 && p.confidence > 0.99f, "policy argmax int4, confidence %.3f", p.confidence);
  CHECK(fabsf(p.p_success[1] - 1 / (1 + expf(-4))) < 1e-5f, "p = σ(logit)");
  set_tensor(c, "success_b", (float[]){5, 1, 1, 1, 1}, 0);
  ac_ctrl_predict(c, ids, 3, &p);
  CHECK(p.variant == 0, "none but f16 passes: reference");
  set_tensor(c, "success_b", (float[]){0, 0, 0, 0, 0}, 0);
  ac_ctrl_predict(c, ids, 3, &p);
  CHECK(p.variant == 0 && p.variant_raw == 0, "none passes: reference");
  // Unsure policy: falls back to the reference even when a cheap variant passes.
  set_tensor(c, "success_b", (float[]){5, 5, 5, 5, 5}, 0);
  set_tensor(c, "policy_b", NULL, 0);
  ac_ctrl_predict(c, ids, 3, &p);
  CHECK(p.variant_raw == 4 && p.fallback && p.variant == 0 && fabsf(p.confidence - 0.2f) < 1e-5f,
        "low confidence %.3f falls back to the reference", p.confidence);
  // Lengths: 0 and longer than k work.
  int32_t many[40];
  for (int i = 0; i < 40; i++) many[i] = i;
  CHECK(ac_ctrl_predict(c, NULL, 0, &p) == 0 && ac_ctrl_predict(c, many, 40, &p) == 0, "n = 0 and n > k");
  ac_ctrl_destroy(&c);
  free(E);

  ac_ctrl_config_t x = small_config();
  x.d = 15;
  CHECK(ac_ctrl_new(&x, &c) == AC_EINVAL && !c, "d not divisible by heads: %s", ac_errmsg());
  x = small_config();
  x.variant[2].choice[1] = 5;
  CHECK(ac_ctrl_new(&x, &c) == AC_EINVAL, "bad choice: %s", ac_errmsg());
}

// --- latency ------------------------------------------------------------------------------------

static void bench(const char *label, ac_ctrl_config_t k, int iters) {
  k.n_vocab = 4096;  // the table's size does not change the time of one prediction
  k.e = 576;         // SmolLM2-135M's embedding width
  k.n_axis = k.n_variant = 0;
  add_zoo(&k);
  float *E = random_embeddings(k.n_vocab, k.e, 10);
  ac_ctrl_t *c = NULL;
  if (ac_ctrl_new(&k, &c) || ac_ctrl_set_embeddings(c, E, k.n_vocab, k.e, NULL) || ac_ctrl_prepare_inference(c)) {
    CHECK(0, "bench setup: %s", ac_errmsg());
    free(E);
    return;
  }
  int32_t ids[32];
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, 3);
  ac_ctrl_pred_t p;
  for (int i = 0; i < 3; i++) ac_ctrl_predict(c, ids, 32, &p);  // warm
  double *t = malloc(iters * sizeof *t);
  for (int i = 0; i < iters; i++) {
    for (int j = 0; j < 32; j++) ids[j] = (int32_t)(ac_ctrl_rng_u32(&r) % k.n_vocab);
    double t0 = now_s();
    ac_ctrl_predict(c, ids, 32, &p);
    t[i] = now_s() - t0;
  }
  // Sort for percentiles.
  for (int i = 1; i < iters; i++)
    for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
      double x = t[j];
      t[j] = t[j - 1];
      t[j - 1] = x;
    }
  size_t np;
  ac_ctrl_params(c, &np);
  printf("predict latency, %s (d %d, %d layers, %d heads, ffn %d, k %d, %zu params): p50 %.1f us, p99 %.1f us (%d runs)\n",
         label, k.d, k.n_layer, k.n_head, k.ffn, k.k, np, 1e6 * t[iters / 2], 1e6 * t[iters * 99 / 100], iters);
  free(t);
  ac_ctrl_destroy(&c);
  free(E);
}

int main(void) {
  test_gradients();
  test_gumbel();
  test_decision();
  test_file();
  test_training();
  int more = getenv("AC_CTRL_BENCH") != NULL;
  bench("tiny", ac_ctrl_config_tiny(), more ? 20000 : 2000);
  bench("paper", ac_ctrl_config_paper(), more ? 200 : 5);
  return check_report();
}
