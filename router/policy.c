// policy.c - see policy.h.
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller.h"
#include "ctrl_zoo.h"
#include "error.h"
#include "log.h"

// --- full: the reference variant ---------------------------------------------------------------

static int full_choose(ac_policy_t *self, const int32_t *ids, int n_ids, const ac_catalog_t *cat,
                       const ac_config_t *cfg, ac_choice_t *out) {
  (void)self, (void)ids, (void)n_ids, (void)cfg;
  snprintf(out->variant, sizeof out->variant, "%s", cat && cat->n ? cat->reference : "");
  out->complexity = -1;
  out->confidence = 1;
  out->policy = "full";
  return 0;
}

// --- fixed: the variant named by setting policy.variant ---------------------------------------

static int fixed_choose(ac_policy_t *self, const int32_t *ids, int n_ids, const ac_catalog_t *cat,
                        const ac_config_t *cfg, ac_choice_t *out) {
  (void)self, (void)ids, (void)n_ids;
  const char *v = ac_config_str(cfg, "policy.variant");
  if (!v || !*v) return ac_error(AC_EINVAL, "policy fixed: setting policy.variant is empty");
  if (cat && cat->n && !ac_catalog_find(cat, v))
    return ac_error(AC_ENOTFOUND, "policy fixed: policy.variant '%s' is not in the catalog", v);
  snprintf(out->variant, sizeof out->variant, "%s", v);
  out->complexity = -1;
  out->confidence = 1;
  out->policy = "fixed";
  return 0;
}

void ac_policy_forced(const char *variant, ac_choice_t *out) {
  snprintf(out->variant, sizeof out->variant, "%s", variant);
  out->complexity = -1;
  out->confidence = 1;
  out->policy = "forced";
}

// --- controller: the learned complexity controller ------------------------------------------------

typedef struct {
  ac_ctrl_t *c;
  float *E;                 // the frozen embeddings (the controller borrows them)
  uint32_t warned_missing;  // variants already reported missing from the catalog (bit per index)
} ctrl_state_t;

int ac_policy_chat_ids(const ac_tokenizer_t *tok, const ac_chat_msg_t *msgs, size_t n_msgs, int32_t **ids, int *n) {
  size_t len;
  char *text = ac_ctrl_chat_text(msgs, n_msgs, &len);
  if (!text) return ac_error(AC_ENOMEM, "out of memory");
  int rc = ac_ctrl_text_ids(tok, text, len, ids, n);
  free(text);
  return rc;
}

static int ctrl_choose(ac_policy_t *self, const int32_t *ids, int n_ids, const ac_catalog_t *cat,
                       const ac_config_t *cfg, ac_choice_t *out) {
  ctrl_state_t *st = self->state;
  if (!ids) return ac_error(AC_EINVAL, "policy controller: the router has no tokenizer");
  ac_ctrl_config_t *k = ac_ctrl_config_mut(st->c);
  k->theta = (float)ac_config_num(cfg, "policy.theta");
  k->conf_min = (float)ac_config_num(cfg, "policy.conf_min");
  ac_ctrl_pred_t p;
  int rc = ac_ctrl_predict(st->c, ids, n_ids, &p);
  if (rc) return rc;
  const char *name = k->variant[p.variant].name;
  const char *ref = cat && cat->n ? cat->reference : k->variant[k->reference].name;
  out->complexity = p.complexity;
  out->confidence = p.confidence;
  out->policy = "controller";
  if (p.fallback) {
    name = ref;
    out->policy = "controller-fallback";
  } else if (cat && cat->n && !ac_catalog_find(cat, name)) {
    if (!(st->warned_missing & (1u << p.variant))) {
      st->warned_missing |= 1u << p.variant;
      AC_WARN("policy controller: variant '%s' is not in the catalog; its tasks go to the reference '%s'", name, ref);
    }
    name = ref;
    out->policy = "controller-fallback";
  }
  snprintf(out->variant, sizeof out->variant, "%s", name);
  return 0;
}

static void ctrl_destroy(ac_policy_t *self) {
  ctrl_state_t *st = self->state;
  if (!st) return;
  ac_ctrl_destroy(&st->c);
  free(st->E);
  free(st);
  self->state = NULL;
}

static ac_policy_t ctrl_policy = {.name = "controller", .choose = ctrl_choose, .destroy = ctrl_destroy, .text_ids = true};

int ac_policy_controller_load(const char *path, const ac_gguf_t *g) {
  if (ctrl_policy.state) return ac_error(AC_EINVAL, "a controller is loaded already");
  ctrl_state_t *st = calloc(1, sizeof *st);
  if (!st) return ac_error(AC_ENOMEM, "out of memory");
  int n_vocab = 0, e = 0, rc;
  uint8_t digest[32];
  if ((rc = ac_ctrl_embeddings_from_gguf(g, &st->E, &n_vocab, &e, digest))) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ac_errmsg());
    free(st);
    return ac_error(rc, "controller %s: %s", path, msg);
  }
  if ((rc = ac_ctrl_load(path, st->E, n_vocab, e, digest, &st->c))) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ac_errmsg()[0] ? ac_errmsg() : ac_strerror(rc));
    free(st->E);
    free(st);
    // ac_ctrl_load names the file in its format messages; the embedding checks do not.
    if (strstr(msg, path)) return ac_error(rc, "%s", msg);
    return ac_error(rc, "%s: %s", path, msg);
  }
  ctrl_policy.state = st;
  if ((rc = ac_policy_register(&ctrl_policy))) {
    ctrl_destroy(&ctrl_policy);
    return rc;
  }
  const ac_ctrl_config_t *k = ac_ctrl_config(st->c);
  char names[512] = "";
  for (int v = 0, off = 0; v < k->n_variant && off < (int)sizeof names; v++)
    off += snprintf(names + off, sizeof names - (size_t)off, "%s%s", v ? ", " : "", k->variant[v].name);
  AC_INFO("controller %s: k %d, d %d, %d layers, variants %s (reference %s), trained %d steps%s, loss %.4f", path, k->k,
          k->d, k->n_layer, names, k->variant[k->reference].name, k->train.steps, k->train.maml ? " (MAML)" : "",
          (double)k->train.final_loss);
  return 0;
}

// --- the registry ------------------------------------------------------------------------------

static ac_policy_t full_policy = {.name = "full", .choose = full_choose};
static ac_policy_t fixed_policy = {.name = "fixed", .choose = fixed_choose};

enum { MAX_POLICIES = 16 };
static ac_policy_t *registry[MAX_POLICIES] = {&full_policy, &fixed_policy};
static int n_registry = 2;

ac_policy_t *ac_policy_find(const char *name) {
  for (int i = 0; i < n_registry; i++)
    if (strcmp(registry[i]->name, name) == 0) return registry[i];
  return NULL;
}

int ac_policy_register(ac_policy_t *p) {
  if (!p || !p->name || !p->choose) return ac_error(AC_EINVAL, "policy without a name or choose()");
  if (ac_policy_find(p->name)) return ac_error(AC_EINVAL, "policy '%s' is registered already", p->name);
  if (n_registry == MAX_POLICIES) return ac_error(AC_ERANGE, "too many policies");
  registry[n_registry++] = p;
  return 0;
}

void ac_policy_shutdown(void) {
  for (int i = 0; i < n_registry; i++)
    if (registry[i]->destroy) registry[i]->destroy(registry[i]);
}
