// policy.c - see policy.h.
#include "policy.h"

#include <stdio.h>
#include <string.h>

#include "error.h"

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
