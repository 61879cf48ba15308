// controller.c - the complexity controller's network: configuration, parameters, forward and
// backward passes, and the allocation-free prediction the router calls.
#include "controller.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrl_impl.h"
#include "error.h"

// --- configuration ---------------------------------------------------------------------------

static ac_ctrl_config_t config_base(int d, int n_layer, int n_head) {
  ac_ctrl_config_t c;
  memset(&c, 0, sizeof c);
  c.k = 32;
  c.d = d;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.ffn = 4 * d;
  c.hidden = d;
  c.theta = 0.95f;
  c.conf_min = 0.7f;
  c.conf_temp = 1.0f;
  c.seed = 1;
  return c;
}

ac_ctrl_config_t ac_ctrl_config_tiny(void) { return config_base(64, 2, 4); }
ac_ctrl_config_t ac_ctrl_config_paper(void) { return config_base(512, 6, 8); }

int ac_ctrl_config_add_axis(ac_ctrl_config_t *cfg, const char *name, const char *const *choices, int n) {
  if (!cfg || !name || !choices) return ac_error(AC_EINVAL, "controller axis: NULL argument");
  if (cfg->n_axis >= AC_CTRL_MAX_AXES) return ac_error(AC_ERANGE, "controller: more than %d axes", AC_CTRL_MAX_AXES);
  if (n < 2 || n > AC_CTRL_MAX_CHOICES)
    return ac_error(AC_ERANGE, "controller axis '%s': %d choices (2..%d)", name, n, AC_CTRL_MAX_CHOICES);
  if (strlen(name) >= AC_CTRL_NAME_MAX) return ac_error(AC_ERANGE, "controller axis name too long: %s", name);
  ac_ctrl_axis_t *a = &cfg->axis[cfg->n_axis];
  memset(a, 0, sizeof *a);
  strcpy(a->name, name);
  a->n_choice = n;
  for (int i = 0; i < n; i++) {
    if (strlen(choices[i]) >= AC_CTRL_NAME_MAX) return ac_error(AC_ERANGE, "controller choice name too long: %s", choices[i]);
    strcpy(a->choice[i], choices[i]);
  }
  return cfg->n_axis++;
}

int ac_ctrl_config_add_variant(ac_ctrl_config_t *cfg, const char *name, float cost, const int *choice) {
  if (!cfg || !name) return ac_error(AC_EINVAL, "controller variant: NULL argument");
  if (cfg->n_variant >= AC_CTRL_MAX_VARIANTS)
    return ac_error(AC_ERANGE, "controller: more than %d variants", AC_CTRL_MAX_VARIANTS);
  if (strlen(name) >= AC_CTRL_NAME_MAX) return ac_error(AC_ERANGE, "controller variant name too long: %s", name);
  ac_ctrl_variant_t *v = &cfg->variant[cfg->n_variant];
  memset(v, 0, sizeof *v);
  strcpy(v->name, name);
  v->cost = cost;
  for (int a = 0; a < cfg->n_axis; a++) v->choice[a] = choice ? choice[a] : 0;
  return cfg->n_variant++;
}

int ac_ctrl_config_check(const ac_ctrl_config_t *c) {
  if (!c) return ac_error(AC_EINVAL, "controller config: NULL");
  if (c->k < 1 || c->k > 4096) return ac_error(AC_EINVAL, "controller config: k = %d (1..4096)", c->k);
  if (c->d < 1 || c->d > 8192) return ac_error(AC_EINVAL, "controller config: d = %d", c->d);
  if (c->n_layer < 0 || c->n_layer > 64) return ac_error(AC_EINVAL, "controller config: n_layer = %d", c->n_layer);
  if (c->n_head < 1 || c->d % c->n_head) return ac_error(AC_EINVAL, "controller config: d %d not divisible by n_head %d", c->d, c->n_head);
  if (c->ffn < 1 || c->ffn > 65536) return ac_error(AC_EINVAL, "controller config: ffn = %d", c->ffn);
  if (c->hidden < 1 || c->hidden > 65536) return ac_error(AC_EINVAL, "controller config: hidden = %d", c->hidden);
  if (c->e < 1 || c->e > 65536) return ac_error(AC_EINVAL, "controller config: embedding width e = %d", c->e);
  if (c->n_vocab < 1) return ac_error(AC_EINVAL, "controller config: n_vocab = %d", c->n_vocab);
  if (c->pad_id < 0 || c->pad_id >= c->n_vocab) return ac_error(AC_EINVAL, "controller config: pad id %d outside the vocabulary", c->pad_id);
  if (c->n_axis < 1 || c->n_axis > AC_CTRL_MAX_AXES) return ac_error(AC_EINVAL, "controller config: %d axes (1..%d)", c->n_axis, AC_CTRL_MAX_AXES);
  for (int a = 0; a < c->n_axis; a++)
    if (c->axis[a].n_choice < 2 || c->axis[a].n_choice > AC_CTRL_MAX_CHOICES)
      return ac_error(AC_EINVAL, "controller config: axis '%s' has %d choices", c->axis[a].name, c->axis[a].n_choice);
  if (c->n_variant < 1 || c->n_variant > AC_CTRL_MAX_VARIANTS)
    return ac_error(AC_EINVAL, "controller config: %d variants (1..%d)", c->n_variant, AC_CTRL_MAX_VARIANTS);
  for (int v = 0; v < c->n_variant; v++) {
    const ac_ctrl_variant_t *x = &c->variant[v];
    if (!(x->cost >= 0) || !isfinite(x->cost)) return ac_error(AC_EINVAL, "controller config: variant '%s' cost %g", x->name, x->cost);
    for (int a = 0; a < c->n_axis; a++)
      if (x->choice[a] < 0 || x->choice[a] >= c->axis[a].n_choice)
        return ac_error(AC_EINVAL, "controller config: variant '%s' choice %d on axis '%s'", x->name, x->choice[a], c->axis[a].name);
    for (int u = 0; u < v; u++) {
      if (!strcmp(c->variant[u].name, x->name)) return ac_error(AC_EINVAL, "controller config: variant '%s' listed twice", x->name);
      if (!memcmp(c->variant[u].choice, x->choice, sizeof x->choice))
        return ac_error(AC_EINVAL, "controller config: variants '%s' and '%s' make the same choices", c->variant[u].name, x->name);
    }
  }
  if (c->reference < 0 || c->reference >= c->n_variant) return ac_error(AC_EINVAL, "controller config: reference variant %d", c->reference);
  if (!(c->theta >= 0 && c->theta <= 1)) return ac_error(AC_EINVAL, "controller config: theta %g", c->theta);
  if (!(c->conf_temp > 0)) return ac_error(AC_EINVAL, "controller config: conf_temp %g", c->conf_temp);
  return 0;
}

// --- parameters ------------------------------------------------------------------------------

static void add_tensor(ac_ctrl_t *c, const char *name, size_t field, int ndim, int s0, int s1, int s2, int decay,
                       float std, float cst) {
  ac__ctrl_tensor_t *t = &c->tensor[c->n_tensor++];
  t->name = name;
  t->field = field;
  t->ndim = ndim;
  t->shape[0] = s0;
  t->shape[1] = s1;
  t->shape[2] = s2;
  t->count = (size_t)s0 * (ndim > 1 ? s1 : 1) * (ndim > 2 ? s2 : 1);
  t->offset = c->n_params;
  t->decay = decay;
  t->init_std = std;
  t->init_const = cst;
  c->n_params += t->count;
}

// The tensor table, in file order. Initialisation: matrices N(0, 1/fan_in), the two residual
// projections scaled down by sqrt(2 L) so the stream starts near its input, norms at 1.
void ac__ctrl_layout(ac_ctrl_t *c) {
  const ac_ctrl_config_t *k = &c->cfg;
  int L = k->n_layer, D = k->d, F = k->ffn, P = k->hidden;
  float res = 1.0f / sqrtf(2.0f * (L > 0 ? L : 1));
  c->n_tensor = 0;
  c->n_params = 0;
#define F_(x) offsetof(ac__ctrl_weights_t, x)
  add_tensor(c, "w_in", F_(w_in), 2, k->e, D, 0, 1, 1.0f / sqrtf(k->e), 0);
  add_tensor(c, "b_in", F_(b_in), 1, D, 0, 0, 0, 0, 0);
  add_tensor(c, "pos", F_(pos), 2, k->k, D, 0, 0, 0.02f, 0);
  add_tensor(c, "blk.ln1_w", F_(ln1_w), 2, L, D, 0, 0, 0, 1);
  add_tensor(c, "blk.ln1_b", F_(ln1_b), 2, L, D, 0, 0, 0, 0);
  add_tensor(c, "blk.qkv_w", F_(qkv_w), 3, L, D, 3 * D, 1, 1.0f / sqrtf(D), 0);
  add_tensor(c, "blk.qkv_b", F_(qkv_b), 2, L, 3 * D, 0, 0, 0, 0);
  add_tensor(c, "blk.proj_w", F_(proj_w), 3, L, D, D, 1, res / sqrtf(D), 0);
  add_tensor(c, "blk.proj_b", F_(proj_b), 2, L, D, 0, 0, 0, 0);
  add_tensor(c, "blk.ln2_w", F_(ln2_w), 2, L, D, 0, 0, 0, 1);
  add_tensor(c, "blk.ln2_b", F_(ln2_b), 2, L, D, 0, 0, 0, 0);
  add_tensor(c, "blk.fc_w", F_(fc_w), 3, L, D, F, 1, 1.0f / sqrtf(D), 0);
  add_tensor(c, "blk.fc_b", F_(fc_b), 2, L, F, 0, 0, 0, 0);
  add_tensor(c, "blk.fc2_w", F_(fc2_w), 3, L, F, D, 1, res / sqrtf(F), 0);
  add_tensor(c, "blk.fc2_b", F_(fc2_b), 2, L, D, 0, 0, 0, 0);
  add_tensor(c, "lnf_w", F_(lnf_w), 1, D, 0, 0, 0, 0, 1);
  add_tensor(c, "lnf_b", F_(lnf_b), 1, D, 0, 0, 0, 0, 0);
  add_tensor(c, "pool_q", F_(pool_q), 1, D, 0, 0, 0, 0, 0);
  add_tensor(c, "head_w", F_(h_w), 2, 2 * D, P, 0, 1, 1.0f / sqrtf(2 * D), 0);
  add_tensor(c, "head_b", F_(h_b), 1, P, 0, 0, 0, 0, 0);
  add_tensor(c, "complexity_w", F_(cx_w), 1, P, 0, 0, 1, 1.0f / sqrtf(P), 0);
  add_tensor(c, "complexity_b", F_(cx_b), 1, 1, 0, 0, 0, 0, 0);
  add_tensor(c, "policy_w", F_(pol_w), 2, P, c->C, 0, 1, 1.0f / sqrtf(P), 0);
  add_tensor(c, "policy_b", F_(pol_b), 1, c->C, 0, 0, 0, 0, 0);
  add_tensor(c, "success_w", F_(suc_w), 2, P, k->n_variant, 0, 1, 1.0f / sqrtf(P), 0);
  add_tensor(c, "success_b", F_(suc_b), 1, k->n_variant, 0, 0, 0, 0, 0);
#undef F_
}

static void point(const ac_ctrl_t *c, float *base, ac__ctrl_weights_t *w) {
  for (int i = 0; i < c->n_tensor; i++)
    *(float **)((char *)w + c->tensor[i].field) = base + c->tensor[i].offset;
}

// Lays out the activations of a batch of B; returns the float count (base may be NULL).
static size_t acts_layout(const ac_ctrl_t *c, int B, float *base, ac__ctrl_acts_t *a) {
  const ac_ctrl_config_t *k = &c->cfg;
  size_t L = k->n_layer, T = k->k, D = k->d, F = k->ffn, H = k->n_head, P = k->hidden;
  size_t BT = (size_t)B * T, big = 3 * D > F ? 3 * D : F;
  size_t n = 0;
#define A_(field, cnt)                       \
  do {                                       \
    if (base) a->field = base + n;           \
    n += ((size_t)(cnt) + 15) & ~(size_t)15; \
  } while (0)
  A_(mask, BT);
  A_(nvalid, B);
  A_(emb, BT * k->e);
  A_(x0, BT * D);
  A_(ln1, L * BT * D);
  A_(ln1_mean, L * BT);
  A_(ln1_rstd, L * BT);
  A_(qkv, L * BT * 3 * D);
  A_(att, L * B * H * T * T);
  A_(atty, L * BT * D);
  A_(res1, L * BT * D);
  A_(ln2, L * BT * D);
  A_(ln2_mean, L * BT);
  A_(ln2_rstd, L * BT);
  A_(fch, L * BT * F);
  A_(fch_g, L * BT * F);
  A_(res2, L * BT * D);
  A_(lnf, BT * D);
  A_(lnf_mean, BT);
  A_(lnf_rstd, BT);
  A_(pw, BT);
  A_(pool, B * 2 * D);
  A_(hpre, B * P);
  A_(h, B * P);
  A_(cx, B);
  A_(pol, B * c->C);
  A_(suc, B * k->n_variant);
  A_(dres, BT * D);
  A_(dbig, BT * big);
  A_(dbig2, BT * big);
  A_(dmid, BT * D);
  A_(datt, B * H * T * T);
  A_(dpool, B * 2 * D);
  A_(dh, B * P);
  A_(dhpre, B * P);
#undef A_
  return n;
}

static float *alloc_floats(size_t n) {
  // 64-byte aligned so rows start on cache lines.
  void *p = NULL;
  if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float))) return NULL;
  return p;
}

int ac__ctrl_scratch(ac_ctrl_t *c, int B) {
  if (B <= c->act_B) return 0;
  size_t n = acts_layout(c, B, NULL, &c->act);
  float *m = alloc_floats(n);
  if (!m) return ac_error(AC_ENOMEM, "controller: activations for a batch of %d", B);
  memset(m, 0, n * sizeof *m);
  free(c->act_mem);
  c->act_mem = m;
  c->act_B = B;
  acts_layout(c, B, m, &c->act);
  return 0;
}

static void init_weights(ac_ctrl_t *c) {
  ac_ctrl_rng_t r;
  ac_ctrl_rng_seed(&r, c->cfg.seed);
  for (int i = 0; i < c->n_tensor; i++) {
    const ac__ctrl_tensor_t *t = &c->tensor[i];
    float *p = c->params + t->offset;
    for (size_t j = 0; j < t->count; j++) p[j] = t->init_std > 0 ? t->init_std * ac_ctrl_rng_normal(&r) : t->init_const;
  }
}

int ac_ctrl_new(const ac_ctrl_config_t *cfg, ac_ctrl_t **out) {
  if (!out) return ac_error(AC_EINVAL, "ac_ctrl_new: NULL out");
  *out = NULL;
  int err = ac_ctrl_config_check(cfg);
  if (err) return err;
  ac_ctrl_t *c = calloc(1, sizeof *c);
  if (!c) return ac_error(AC_ENOMEM, "controller");
  c->cfg = *cfg;
  for (int a = 0; a < cfg->n_axis; a++) {
    c->choice_off[a] = c->C;
    c->C += cfg->axis[a].n_choice;
  }
  ac__ctrl_layout(c);
  c->params = alloc_floats(c->n_params);
  c->grads = alloc_floats(c->n_params);
  size_t ni = acts_layout(c, 1, NULL, &c->inf);
  c->inf_mem = alloc_floats(ni);
  if (!c->params || !c->grads || !c->inf_mem) {
    err = ac_error(AC_ENOMEM, "controller: %zu parameters", c->n_params);
    goto fail;
  }
  memset(c->inf_mem, 0, ni * sizeof(float));
  acts_layout(c, 1, c->inf_mem, &c->inf);
  point(c, c->params, &c->w);
  point(c, c->grads, &c->g);
  memset(c->grads, 0, c->n_params * sizeof(float));
  init_weights(c);
  *out = c;
  return 0;
fail:
  ac_ctrl_destroy(&c);
  return err;
}

void ac_ctrl_destroy(ac_ctrl_t **self_p) {
  if (!self_p || !*self_p) return;
  ac_ctrl_t *c = *self_p;
  free(c->params);
  free(c->grads);
  free(c->act_mem);
  free(c->inf_mem);
  free(c->ptab);
  free(c->dbuf);
  free(c->gumbel);
  free(c);
  *self_p = NULL;
}

const ac_ctrl_config_t *ac_ctrl_config(const ac_ctrl_t *c) { return &c->cfg; }
ac_ctrl_config_t *ac_ctrl_config_mut(ac_ctrl_t *c) { return &c->cfg; }

float *ac_ctrl_params(ac_ctrl_t *c, size_t *n) {
  if (n) *n = c->n_params;
  return c->params;
}
float *ac_ctrl_grads(ac_ctrl_t *c, size_t *n) {
  if (n) *n = c->n_params;
  return c->grads;
}
void ac_ctrl_zero_grad(ac_ctrl_t *c) { memset(c->grads, 0, c->n_params * sizeof(float)); }
int ac_ctrl_n_tensors(const ac_ctrl_t *c) { return c->n_tensor; }

int ac_ctrl_tensor(const ac_ctrl_t *c, int i, const char **name, size_t *offset, size_t *count) {
  if (i < 0 || i >= c->n_tensor) return ac_error(AC_ERANGE, "controller tensor %d of %d", i, c->n_tensor);
  if (name) *name = c->tensor[i].name;
  if (offset) *offset = c->tensor[i].offset;
  if (count) *count = c->tensor[i].count;
  return 0;
}

void ac_ctrl_params_changed(ac_ctrl_t *c) {
  free(c->ptab);
  c->ptab = NULL;
}

int ac_ctrl_set_embeddings(ac_ctrl_t *c, const float *E, int n_vocab, int e, const uint8_t *digest) {
  if (!c || !E) return ac_error(AC_EINVAL, "ac_ctrl_set_embeddings: NULL argument");
  if (n_vocab != c->cfg.n_vocab || e != c->cfg.e)
    return ac_error(AC_EINVAL, "controller was built for embeddings %d x %d, got %d x %d (another base model?)",
                    c->cfg.n_vocab, c->cfg.e, n_vocab, e);
  static const uint8_t zero[32];
  if (digest && memcmp(c->cfg.embd_digest, zero, 32) && memcmp(c->cfg.embd_digest, digest, 32))
    return ac_error(AC_EINVAL, "controller embeddings digest mismatch: it was trained on another base model");
  c->E = E;
  ac_ctrl_params_changed(c);
  return 0;
}

// --- kernels ----------------------------------------------------------------------------------
// The forward matmul is the hot loop of a prediction; on x86-64 GCC builds a clone per ISA and
// picks one at load time (ifunc), so one binary uses AVX-512 or AVX2 where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define AC_CTRL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AC_CTRL_CLONES
#endif

// out (N, OC) = inp (N, IC) · w (IC, OC) + b (may be NULL). Tiles of 4 rows × 32 outputs keep
// the accumulators in registers; the output block is the outer loop so its weight panel
// (IC × 32) stays in cache while every row block uses it.
AC_CTRL_CLONES
static void matmul_fwd(float *restrict out, const float *restrict inp, const float *restrict w,
                       const float *restrict b, int N, int IC, int OC) {
  enum { TN = 4, TO = 32 };
  int nfull = N - N % TN, ofull = OC - OC % TO;
  for (int o0 = 0; o0 < ofull; o0 += TO)
    for (int n0 = 0; n0 < nfull; n0 += TN) {
      float acc[TN][TO];
      for (int r = 0; r < TN; r++)
        for (int j = 0; j < TO; j++) acc[r][j] = b ? b[o0 + j] : 0.0f;
      for (int i = 0; i < IC; i++) {
        const float *wr = w + (size_t)i * OC + o0;
        for (int r = 0; r < TN; r++) {
          float x = inp[(size_t)(n0 + r) * IC + i];
          for (int j = 0; j < TO; j++) acc[r][j] += x * wr[j];
        }
      }
      for (int r = 0; r < TN; r++) memcpy(out + (size_t)(n0 + r) * OC + o0, acc[r], sizeof acc[r]);
    }
  // The rest: output columns past the last full block for the full row blocks, then the last
  // rows whole.
  for (int n = 0; n < N; n++) {
    int j0 = n < nfull ? ofull : 0;
    if (j0 == OC) continue;
    float *o = out + (size_t)n * OC;
    const float *x = inp + (size_t)n * IC;
    for (int j = j0; j < OC; j++) o[j] = b ? b[j] : 0.0f;
    for (int i = 0; i < IC; i++) {
      const float *wr = w + (size_t)i * OC;
      float xi = x[i];
      for (int j = j0; j < OC; j++) o[j] += xi * wr[j];
    }
  }
}

// Gradients of out = inp · w + b: dinp += dout · wᵀ, dw += inpᵀ · dout, db += Σ dout (any of
// dinp, dw, db may be NULL).
static void matmul_bwd(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                       const float *w, int N, int IC, int OC) {
  for (int n = 0; n < N; n++) {
    const float *go = dout + (size_t)n * OC;
    if (dinp) {
      float *gi = dinp + (size_t)n * IC;
      for (int i = 0; i < IC; i++) {
        const float *wr = w + (size_t)i * OC;
        float s = 0;
        for (int j = 0; j < OC; j++) s += go[j] * wr[j];
        gi[i] += s;
      }
    }
    if (dw) {
      const float *x = inp + (size_t)n * IC;
      for (int i = 0; i < IC; i++) {
        float xi = x[i];
        if (xi == 0.0f) continue;
        float *gw = dw + (size_t)i * OC;
        for (int j = 0; j < OC; j++) gw[j] += xi * go[j];
      }
    }
    if (db)
      for (int j = 0; j < OC; j++) db[j] += go[j];
  }
}

#define LN_EPS 1e-5f

// Sums of n floats in 8 independent lanes, so the loop vectorises (a plain float sum does not).
static inline float sum8(const float *x, int n) {
  float l[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) l[j] += x[i + j];
  float s = 0;
  for (; i < n; i++) s += x[i];
  return s + ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline float sqdev8(const float *x, float m, int n) {
  float l[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) l[j] += (x[i + j] - m) * (x[i + j] - m);
  float s = 0;
  for (; i < n; i++) s += (x[i] - m) * (x[i] - m);
  return s + ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

AC_CTRL_CLONES
static void layernorm_fwd(float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int N, int D) {
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * D;
    float m = sum8(x, D) / D;
    float v = sqdev8(x, m, D) / D;
    float s = 1.0f / sqrtf(v + LN_EPS);
    float *o = out + (size_t)n * D;
    for (int i = 0; i < D; i++) o[i] = (x[i] - m) * s * w[i] + b[i];
    mean[n] = m;
    rstd[n] = s;
  }
}

// dinp += LN backward; dw, db accumulate.
static void layernorm_bwd(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const float *mean, const float *rstd, int N, int D) {
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * D, *go = dout + (size_t)n * D;
    float m = mean[n], s = rstd[n];
    float a = 0, bb = 0;  // mean of dnorm, mean of dnorm·norm
    for (int i = 0; i < D; i++) {
      float norm = (x[i] - m) * s, dn = go[i] * w[i];
      a += dn;
      bb += dn * norm;
    }
    a /= D;
    bb /= D;
    float *gi = dinp + (size_t)n * D;
    for (int i = 0; i < D; i++) {
      float norm = (x[i] - m) * s, dn = go[i] * w[i];
      dw[i] += go[i] * norm;
      db[i] += go[i];
      gi[i] += s * (dn - a - norm * bb);
    }
  }
}

// GELU, tanh form: 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))), tanh through ac__ctrl_exp.
#define GELU_C 0.7978845608028654f
static inline float tanh_fast(float u) {
  u = u > 9.0f ? 9.0f : (u < -9.0f ? -9.0f : u);
  return 1.0f - 2.0f / (ac__ctrl_exp(2.0f * u) + 1.0f);
}

AC_CTRL_CLONES
static void gelu_fwd(float *restrict out, const float *restrict inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + tanh_fast(GELU_C * (x + 0.044715f * x * x * x)));
  }
}

// dinp = dout · gelu'(inp) (written).
static void gelu_bwd(float *dinp, const float *dout, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float t = tanh_fast(GELU_C * (x + 0.044715f * x * x * x));
    float dt = (1.0f - t * t) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * x * dt);
  }
}

// Multi-head self-attention over valid positions. qkv (B, T, 3D) → out (B, T, D); att holds the
// probabilities (B, H, T, T), exactly zero at masked keys. Each head's keys are first copied
// transposed (hs, T) and its values contiguous (T, hs) into tmp (2 T hs floats), so the score and
// value loops run over contiguous memory and vectorise.
AC_CTRL_CLONES
static void attention_fwd(float *out, float *att, float *tmp, const float *qkv, const float *mask, int B, int T,
                          int D, int H) {
  int hs = D / H;
  float scale = 1.0f / sqrtf((float)hs);
  float *kt = tmp, *vv = tmp + (size_t)T * hs;
  for (int b = 0; b < B; b++) {
    const float *m = mask + (size_t)b * T;
    for (int h = 0; h < H; h++) {
      for (int s = 0; s < T; s++) {
        const float *kk = qkv + ((size_t)b * T + s) * 3 * D + D + h * hs;
        for (int i = 0; i < hs; i++) {
          kt[(size_t)i * T + s] = kk[i];
          vv[(size_t)s * hs + i] = kk[D + i];
        }
      }
      for (int t = 0; t < T; t++) {
        const float *q = qkv + ((size_t)b * T + t) * 3 * D + h * hs;
        float *p = att + (((size_t)b * H + h) * T + t) * T;
        // Scores in blocks of 16 keys held in registers (accumulating in memory would chain
        // every multiply-add through a store and a load).
        int s0 = 0;
        for (; s0 + 16 <= T; s0 += 16) {
          float acc[16] = {0};
          for (int i = 0; i < hs; i++) {
            float qi = q[i] * scale;
            const float *kr = kt + (size_t)i * T + s0;
            for (int j = 0; j < 16; j++) acc[j] += qi * kr[j];
          }
          memcpy(p + s0, acc, sizeof acc);
        }
        for (; s0 < T; s0++) {
          float dot = 0;
          for (int i = 0; i < hs; i++) dot += q[i] * kt[(size_t)i * T + s0];
          p[s0] = dot * scale;
        }
        float mx = -1e30f;
        for (int s = 0; s < T; s++) mx = m[s] != 0.0f && p[s] > mx ? p[s] : mx;
        // Two loops: the exponentials vectorise, the sum (a float reduction) would stop them.
        for (int s = 0; s < T; s++) p[s] = m[s] * ac__ctrl_exp(p[s] - mx);
        float sum = 0;
        for (int s = 0; s < T; s++) sum += p[s];
        float inv = 1.0f / sum;
        float *o = out + ((size_t)b * T + t) * D + h * hs;
        for (int s = 0; s < T; s++) p[s] *= inv;
        int i0 = 0;
        for (; i0 + 16 <= hs; i0 += 16) {
          float acc[16] = {0};
          for (int s = 0; s < T; s++) {
            const float *vr = vv + (size_t)s * hs + i0;
            for (int j = 0; j < 16; j++) acc[j] += p[s] * vr[j];
          }
          memcpy(o + i0, acc, sizeof acc);
        }
        for (; i0 < hs; i0++) {
          float acc = 0;
          for (int s = 0; s < T; s++) acc += p[s] * vv[(size_t)s * hs + i0];
          o[i0] = acc;
        }
      }
    }
  }
}

// dqkv (written), datt scratch (B, H, T, T).
static void attention_bwd(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                          int B, int T, int D, int H) {
  int hs = D / H;
  float scale = 1.0f / sqrtf((float)hs);
  memset(dqkv, 0, (size_t)B * T * 3 * D * sizeof(float));
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T; t++) {
        const float *p = att + (((size_t)b * H + h) * T + t) * T;
        float *dp = datt + (((size_t)b * H + h) * T + t) * T;
        const float *go = dout + ((size_t)b * T + t) * D + h * hs;
        const float *q = qkv + ((size_t)b * T + t) * 3 * D + h * hs;
        float *dq = dqkv + ((size_t)b * T + t) * 3 * D + h * hs;
        float pdp = 0;
        for (int s = 0; s < T; s++) {
          dp[s] = 0;
          if (p[s] == 0.0f) continue;
          const float *v = qkv + ((size_t)b * T + s) * 3 * D + 2 * D + h * hs;
          float *dv = dqkv + ((size_t)b * T + s) * 3 * D + 2 * D + h * hs;
          float dot = 0;
          for (int i = 0; i < hs; i++) {
            dot += go[i] * v[i];
            dv[i] += p[s] * go[i];
          }
          dp[s] = dot;
          pdp += p[s] * dot;
        }
        for (int s = 0; s < T; s++) {
          if (p[s] == 0.0f) continue;
          float ds = p[s] * (dp[s] - pdp) * scale;
          const float *kk = qkv + ((size_t)b * T + s) * 3 * D + D + h * hs;
          float *dk = dqkv + ((size_t)b * T + s) * 3 * D + D + h * hs;
          for (int i = 0; i < hs; i++) {
            dq[i] += ds * kk[i];
            dk[i] += ds * q[i];
          }
        }
      }
}

// --- forward ----------------------------------------------------------------------------------

// Fills the mask and the input rows; lens[b] clamps into [1, k] (0 reads one pad token).
static void embed(const ac_ctrl_t *c, const ac__ctrl_acts_t *a, const int32_t *ids, size_t id_stride,
                  const int *lens, int B) {
  const ac_ctrl_config_t *k = &c->cfg;
  int T = k->k, D = k->d, e = k->e;
  for (int b = 0; b < B; b++) {
    int n = lens[b] < 1 ? 0 : (lens[b] > T ? T : lens[b]);
    a->nvalid[b] = (float)(n < 1 ? 1 : n);
    for (int t = 0; t < T; t++) {
      int32_t id = t < n ? ids[(size_t)b * id_stride + t] : k->pad_id;
      if (id < 0 || id >= k->n_vocab) id = k->pad_id;
      a->mask[b * T + t] = t < (n < 1 ? 1 : n) ? 1.0f : 0.0f;
      float *x = a->x0 + ((size_t)b * T + t) * D;
      if (c->ptab) {
        const float *r = c->ptab + (size_t)id * D;
        const float *p = c->w.pos + (size_t)t * D;
        for (int i = 0; i < D; i++) x[i] = r[i] + p[i];
      } else {
        memcpy(a->emb + ((size_t)b * T + t) * e, c->E + (size_t)id * e, e * sizeof(float));
      }
    }
  }
  if (!c->ptab) {
    matmul_fwd(a->x0, a->emb, c->w.w_in, c->w.b_in, B * T, e, D);
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        float *x = a->x0 + ((size_t)b * T + t) * D;
        const float *p = c->w.pos + (size_t)t * D;
        for (int i = 0; i < D; i++) x[i] += p[i];
      }
  }
}

AC_CTRL_CLONES
static void forward(const ac_ctrl_t *c, const ac__ctrl_acts_t *a, int B) {
  const ac_ctrl_config_t *k = &c->cfg;
  const ac__ctrl_weights_t *w = &c->w;
  int L = k->n_layer, T = k->k, D = k->d, F = k->ffn, H = k->n_head, P = k->hidden, V = k->n_variant;
  int BT = B * T;
  const float *x = a->x0;
  for (int l = 0; l < L; l++) {
    size_t oD = (size_t)l * BT * D, oT = (size_t)l * BT;
    float *ln1 = a->ln1 + oD, *qkv = a->qkv + oD * 3, *atty = a->atty + oD, *res1 = a->res1 + oD;
    float *ln2 = a->ln2 + oD, *fch = a->fch + (size_t)l * BT * F, *fch_g = a->fch_g + (size_t)l * BT * F;
    float *res2 = a->res2 + oD;
    layernorm_fwd(ln1, a->ln1_mean + oT, a->ln1_rstd + oT, x, w->ln1_w + l * D, w->ln1_b + l * D, BT, D);
    matmul_fwd(qkv, ln1, w->qkv_w + (size_t)l * D * 3 * D, w->qkv_b + (size_t)l * 3 * D, BT, D, 3 * D);
    attention_fwd(atty, a->att + (size_t)l * B * H * T * T, a->dbig, qkv, a->mask, B, T, D, H);
    matmul_fwd(res1, atty, w->proj_w + (size_t)l * D * D, w->proj_b + (size_t)l * D, BT, D, D);
    for (size_t i = 0; i < (size_t)BT * D; i++) res1[i] += x[i];
    layernorm_fwd(ln2, a->ln2_mean + oT, a->ln2_rstd + oT, res1, w->ln2_w + l * D, w->ln2_b + l * D, BT, D);
    matmul_fwd(fch, ln2, w->fc_w + (size_t)l * D * F, w->fc_b + (size_t)l * F, BT, D, F);
    gelu_fwd(fch_g, fch, (size_t)BT * F);
    matmul_fwd(res2, fch_g, w->fc2_w + (size_t)l * F * D, w->fc2_b + (size_t)l * D, BT, F, D);
    for (size_t i = 0; i < (size_t)BT * D; i++) res2[i] += res1[i];
    x = res2;
  }
  layernorm_fwd(a->lnf, a->lnf_mean, a->lnf_rstd, x, w->lnf_w, w->lnf_b, BT, D);

  // Pooling: mean over valid positions, and attention pooling with the learned query.
  float qs = 1.0f / sqrtf((float)D);
  for (int b = 0; b < B; b++) {
    float *pool = a->pool + (size_t)b * 2 * D, *pw = a->pw + (size_t)b * T;
    const float *m = a->mask + (size_t)b * T;
    float inv_n = 1.0f / a->nvalid[b];
    for (int i = 0; i < 2 * D; i++) pool[i] = 0;
    float mx = -1e30f;
    for (int t = 0; t < T; t++) {
      if (m[t] == 0.0f) continue;
      const float *y = a->lnf + ((size_t)b * T + t) * D;
      float s = 0;
      for (int i = 0; i < D; i++) {
        pool[i] += y[i] * inv_n;
        s += w->pool_q[i] * y[i];
      }
      pw[t] = s * qs;
      if (pw[t] > mx) mx = pw[t];
    }
    float sum = 0;
    for (int t = 0; t < T; t++) {
      pw[t] = m[t] != 0.0f ? ac__ctrl_exp(pw[t] - mx) : 0.0f;
      sum += pw[t];
    }
    for (int t = 0; t < T; t++) {
      pw[t] /= sum;
      if (pw[t] == 0.0f) continue;
      const float *y = a->lnf + ((size_t)b * T + t) * D;
      for (int i = 0; i < D; i++) pool[D + i] += pw[t] * y[i];
    }
  }

  matmul_fwd(a->hpre, a->pool, w->h_w, w->h_b, B, 2 * D, P);
  gelu_fwd(a->h, a->hpre, (size_t)B * P);
  matmul_fwd(a->cx, a->h, w->cx_w, w->cx_b, B, P, 1);
  matmul_fwd(a->pol, a->h, w->pol_w, w->pol_b, B, P, c->C);
  matmul_fwd(a->suc, a->h, w->suc_w, w->suc_b, B, P, V);
}

int ac_ctrl_forward(ac_ctrl_t *c, const int32_t *ids, const int *lens, int B, ac_ctrl_outputs_t *out) {
  if (!c || !ids || !lens || B < 1) return ac_error(AC_EINVAL, "ac_ctrl_forward: bad arguments");
  if (!c->E) return ac_error(AC_EINVAL, "controller: no token embeddings set");
  // Training works on the weights directly: the precomputed input table is for inference only.
  ac_ctrl_params_changed(c);
  int err = ac__ctrl_scratch(c, B);
  if (err) return err;
  // The activation layout depends on B: lay it out again for this batch size.
  acts_layout(c, B, c->act_mem, &c->act);
  embed(c, &c->act, ids, (size_t)c->cfg.k, lens, B);
  forward(c, &c->act, B);
  c->cur_B = B;
  if (out) {
    out->B = B;
    out->complexity_logit = c->act.cx;
    out->policy_logit = c->act.pol;
    out->success_logit = c->act.suc;
  }
  return 0;
}

// --- backward ---------------------------------------------------------------------------------

int ac_ctrl_backward(ac_ctrl_t *c, const float *d_cx, const float *d_pol, const float *d_suc) {
  if (!c || !c->cur_B) return ac_error(AC_EINVAL, "ac_ctrl_backward: no forward pass to go back through");
  const ac_ctrl_config_t *k = &c->cfg;
  const ac__ctrl_acts_t *a = &c->act;
  const ac__ctrl_weights_t *w = &c->w, *g = &c->g;
  int B = c->cur_B, L = k->n_layer, T = k->k, D = k->d, F = k->ffn, H = k->n_head, P = k->hidden;
  int BT = B * T;

  // Heads: complexity, policy and success all read h.
  memset(a->dh, 0, (size_t)B * P * sizeof(float));
  if (d_cx) matmul_bwd(a->dh, g->cx_w, g->cx_b, d_cx, a->h, w->cx_w, B, P, 1);
  if (d_pol) matmul_bwd(a->dh, g->pol_w, g->pol_b, d_pol, a->h, w->pol_w, B, P, c->C);
  if (d_suc) matmul_bwd(a->dh, g->suc_w, g->suc_b, d_suc, a->h, w->suc_w, B, P, k->n_variant);
  gelu_bwd(a->dhpre, a->dh, a->hpre, (size_t)B * P);
  memset(a->dpool, 0, (size_t)B * 2 * D * sizeof(float));
  matmul_bwd(a->dpool, g->h_w, g->h_b, a->dhpre, a->pool, w->h_w, B, 2 * D, P);

  // Pooling. Attention pool: o = Σ_t p_t y_t, p = softmax(s), s_t = q·y_t / √D, so with
  // e_t = do·y_t: ds_t = p_t (e_t − Σ_u p_u e_u), dy_t += p_t do + ds_t q / √D, dq += ds_t y_t / √D.
  float qs = 1.0f / sqrtf((float)D);
  float *dy_all = a->dmid, *e = a->datt;
  memset(dy_all, 0, (size_t)BT * D * sizeof(float));
  for (int b = 0; b < B; b++) {
    const float *dmean = a->dpool + (size_t)b * 2 * D, *dap = dmean + D;
    const float *pw = a->pw + (size_t)b * T, *m = a->mask + (size_t)b * T;
    float inv_n = 1.0f / a->nvalid[b], avg = 0;
    for (int t = 0; t < T; t++) {
      e[t] = 0;
      if (m[t] == 0.0f) continue;
      const float *y = a->lnf + ((size_t)b * T + t) * D;
      for (int i = 0; i < D; i++) e[t] += dap[i] * y[i];
      avg += pw[t] * e[t];
    }
    for (int t = 0; t < T; t++) {
      if (m[t] == 0.0f) continue;
      const float *y = a->lnf + ((size_t)b * T + t) * D;
      float *dy = dy_all + ((size_t)b * T + t) * D;
      float ds = pw[t] * (e[t] - avg) * qs;
      for (int i = 0; i < D; i++) {
        dy[i] += dmean[i] * inv_n + pw[t] * dap[i] + ds * w->pool_q[i];
        g->pool_q[i] += ds * y[i];
      }
    }
  }
  const float *x_last = L > 0 ? a->res2 + (size_t)(L - 1) * BT * D : a->x0;
  memset(a->dres, 0, (size_t)BT * D * sizeof(float));
  layernorm_bwd(a->dres, g->lnf_w, g->lnf_b, dy_all, x_last, w->lnf_w, a->lnf_mean, a->lnf_rstd, BT, D);

  // Blocks, last to first; dres is the gradient of the residual stream.
  for (int l = L - 1; l >= 0; l--) {
    size_t oD = (size_t)l * BT * D, oT = (size_t)l * BT, oF = (size_t)l * BT * F;
    const float *x_in = l == 0 ? a->x0 : a->res2 + (size_t)(l - 1) * BT * D;
    // res2 = res1 + fc2(gelu(fc(ln2(res1))))
    memset(a->dbig, 0, (size_t)BT * F * sizeof(float));
    matmul_bwd(a->dbig, g->fc2_w + (size_t)l * F * D, g->fc2_b + (size_t)l * D, a->dres, a->fch_g + oF,
               w->fc2_w + (size_t)l * F * D, BT, F, D);
    gelu_bwd(a->dbig2, a->dbig, a->fch + oF, (size_t)BT * F);
    memset(a->dmid, 0, (size_t)BT * D * sizeof(float));
    matmul_bwd(a->dmid, g->fc_w + (size_t)l * D * F, g->fc_b + (size_t)l * F, a->dbig2, a->ln2 + oD,
               w->fc_w + (size_t)l * D * F, BT, D, F);
    layernorm_bwd(a->dres, g->ln2_w + l * D, g->ln2_b + l * D, a->dmid, a->res1 + oD, w->ln2_w + l * D,
                  a->ln2_mean + oT, a->ln2_rstd + oT, BT, D);
    // res1 = x + proj(attention(qkv(ln1(x))))
    memset(a->dmid, 0, (size_t)BT * D * sizeof(float));
    matmul_bwd(a->dmid, g->proj_w + (size_t)l * D * D, g->proj_b + (size_t)l * D, a->dres, a->atty + oD,
               w->proj_w + (size_t)l * D * D, BT, D, D);
    attention_bwd(a->dbig, a->datt, a->dmid, a->qkv + oD * 3, a->att + (size_t)l * B * H * T * T, B, T, D, H);
    memset(a->dmid, 0, (size_t)BT * D * sizeof(float));
    matmul_bwd(a->dmid, g->qkv_w + (size_t)l * D * 3 * D, g->qkv_b + (size_t)l * 3 * D, a->dbig, a->ln1 + oD,
               w->qkv_w + (size_t)l * D * 3 * D, BT, D, 3 * D);
    layernorm_bwd(a->dres, g->ln1_w + l * D, g->ln1_b + l * D, a->dmid, x_in, w->ln1_w + l * D,
                  a->ln1_mean + oT, a->ln1_rstd + oT, BT, D);
  }

  // x0 = E[ids] · W_in + b_in + pos.
  matmul_bwd(NULL, g->w_in, g->b_in, a->dres, a->emb, w->w_in, BT, k->e, D);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *d = a->dres + ((size_t)b * T + t) * D;
      float *gp = g->pos + (size_t)t * D;
      for (int i = 0; i < D; i++) gp[i] += d[i];
    }
  return 0;
}

// --- inference --------------------------------------------------------------------------------

int ac_ctrl_prepare_inference(ac_ctrl_t *c) {
  if (!c || !c->E) return ac_error(AC_EINVAL, "controller: no token embeddings set");
  size_t n = (size_t)c->cfg.n_vocab * c->cfg.d;
  float *t = alloc_floats(n);
  if (!t) return ac_error(AC_ENOMEM, "controller: input table of %zu floats", n);
  matmul_fwd(t, c->E, c->w.w_in, c->w.b_in, c->cfg.n_vocab, c->cfg.e, c->cfg.d);
  free(c->ptab);
  c->ptab = t;
  return 0;
}

int ac_ctrl_predict(ac_ctrl_t *c, const int32_t *ids, int n, ac_ctrl_pred_t *out) {
  if (!c || !out || (n > 0 && !ids)) return ac_error(AC_EINVAL, "ac_ctrl_predict: NULL argument");
  if (!c->E && !c->ptab) return ac_error(AC_EINVAL, "controller: no token embeddings set");
  const ac_ctrl_config_t *k = &c->cfg;
  const ac__ctrl_acts_t *a = &c->inf;
  embed(c, a, ids, 0, &n, 1);
  forward(c, a, 1);

  out->complexity = ac__ctrl_sigmoid(a->cx[0]);
  int best = -1;
  for (int v = 0; v < k->n_variant; v++) {
    float p = ac__ctrl_sigmoid(a->suc[v]);
    out->p_success[v] = p;
    if (p >= k->theta && (best < 0 || k->variant[v].cost < k->variant[best].cost)) best = v;
  }
  for (int v = k->n_variant; v < AC_CTRL_MAX_VARIANTS; v++) out->p_success[v] = 0;
  out->variant_raw = best >= 0 ? best : k->reference;

  // Confidence: the policy heads' joint distribution over the zoo's variants.
  float score[AC_CTRL_MAX_VARIANTS], mx = -1e30f, sum = 0;
  int arg = 0;
  for (int v = 0; v < k->n_variant; v++) {
    float s = 0;
    for (int ax = 0; ax < k->n_axis; ax++) s += a->pol[c->choice_off[ax] + k->variant[v].choice[ax]];
    score[v] = s / k->conf_temp;
    if (score[v] > mx) {
      mx = score[v];
      arg = v;
    }
  }
  for (int v = 0; v < k->n_variant; v++) sum += ac__ctrl_exp(score[v] - mx);
  out->policy_variant = arg;
  out->confidence = 1.0f / sum;
  out->fallback = out->confidence < k->conf_min;
  out->variant = out->fallback ? k->reference : out->variant_raw;
  return 0;
}
