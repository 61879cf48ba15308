// policy.h - how the router picks the variant a task is sent to.
//
// A policy reads the task's prompt (as token ids, the first k of which a learned controller looks
// at) and the catalog, and names a variant, with the complexity it predicted (-1 when it predicts
// none) and its confidence. The router never serves below the chosen variant's quality: a worker
// holding a variant of at least that rank answers, or the task waits for a reload.
//
// Policies shipped here:
//   full    the catalog's reference variant (the full model)
//   fixed   the variant in setting policy.variant (for experiments and cost baselines)
//   forced  not selectable by setting: the router uses it when a task names Task.variant
//   controller  the learned complexity controller (controller/controller.h), registered when the
//           router is started with --controller FILE: the cheapest variant whose predicted
//           success is >= policy.theta; below policy.conf_min confidence, or when the controller
//           names a variant the catalog does not have, the reference, with the choice's policy
//           "controller-fallback"
// The `policy` setting picks one by name and is re-read every tick, so `acctl policy set policy
// fixed` applies within a tick. A learned controller plugs in by filling an ac_policy_t and
// calling ac_policy_register() at start-up; it is then chosen by its name.
#ifndef AC_ROUTER_POLICY_H
#define AC_ROUTER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "chat.h"
#include "gguf.h"
#include "settings.h"
#include "tokenizer.h"

// What a policy decided for one task.
typedef struct {
  char variant[64];    // a catalog variant name ("" only when there is no catalog: any worker)
  float complexity;    // predicted complexity in [0,1]; -1 when the policy predicts none
  float confidence;    // in [0,1]
  const char *policy;  // the policy's name (static storage): "full", "fixed", "forced", ...
} ac_choice_t;

typedef struct ac_policy ac_policy_t;
struct ac_policy {
  const char *name;
  // Chooses for the prompt ids[0..n_ids) (ids may be NULL when the router has no tokenizer).
  // Returns 0, or a negative AC_E* code with ac_error() detail; the router then falls back to
  // the full policy and logs why. Called on the router's event loop: it must be fast
  // (microseconds) and must not block.
  int (*choose)(ac_policy_t *self, const int32_t *ids, int n_ids, const ac_catalog_t *cat,
                const ac_config_t *cfg, ac_choice_t *out);
  // Frees `state` at exit; may be NULL.
  void (*destroy)(ac_policy_t *self);
  void *state;  // the policy's own data (a controller's weights)
  // true: choose() wants the ids of the task *text*: for a raw prompt the prompt's ids as usual,
  // for a chat the message contents joined by "\n" tokenized without the chat template
  // (ac_policy_chat_ids), the rule the controller was trained with. false: the prompt's ids as
  // the worker gets them (chat template included).
  bool text_ids;
};

// The policy registered under `name`, or NULL.
ac_policy_t *ac_policy_find(const char *name);
// Adds a policy (the router does not take ownership of `p` itself, only calls p->destroy at
// exit). AC_ERANGE when the table is full, AC_EINVAL when the name is taken.
int ac_policy_register(ac_policy_t *p);
// Calls destroy on every registered policy.
void ac_policy_shutdown(void);

// The choice for a task that names its variant (Task.variant): {variant, -1, 1, "forced"}.
void ac_policy_forced(const char *variant, ac_choice_t *out);

// The task-text ids of a chat (see text_ids above); *ids is malloc'ed.
int ac_policy_chat_ids(const ac_tokenizer_t *tok, const ac_chat_msg_t *msgs, size_t n_msgs, int32_t **ids, int *n);

// Loads a controller file against the token embeddings of `g` (the router's tokenizer model,
// which must be the model the controller was trained on: same embeddings digest) and registers
// it as the policy "controller". Errors name the file and the problem (AC_EFORMAT for a corrupt
// file, AC_EINVAL for a controller of another model).
int ac_policy_controller_load(const char *path, const ac_gguf_t *g);

#endif
