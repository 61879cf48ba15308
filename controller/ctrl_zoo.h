// ctrl_zoo.h - glue between the complexity controller and a zoo: what the controller needs to know
// about the variants (axes, choices, relative costs, the reference) and about the base model
// (its frozen token embeddings, their digest, its tokenizer), from a zoo directory.
//
// Axes, from DIR/manifest.json (written by `acq zoo`), per variant's "method" and "parameters":
//   quant    f16 | int8 | int4 | int2   from parameters.type (f16/bf16/f32 -> f16; q8_0, q5_*,
//                                       q6_k -> int8; q4_*, q3_k -> int4; q2_k, q2x -> int2;
//                                       no type: f16)
//   prune    none | pruned              method contains "prune"
//   lowrank  no | yes                   method contains "lowrank"
// An axis on which every variant makes the same choice says nothing and is left out (a zoo of
// quantized variants only has the quant axis). A zoo without a manifest has one axis, "variant",
// with one choice per variant (at most AC_CTRL_MAX_CHOICES).
// Costs are relative to the reference (its cost is 1): the manifest's modelled
// usd_per_million_tokens (else seconds_per_token); without a manifest, file bytes.
//
// Embeddings: the reference variant's token_embd.weight, dequantized row by row to float
// (n_vocab × e); the digest is the SHA-256 of the tensor's bytes as stored in the file, so a
// controller only loads against the very embeddings it was trained on.
//
// Task text -> ids (the one rule for training and routing): the task's text (a raw prompt, or
// the chat messages' contents joined by "\n", never the chat template) tokenized with the
// reference's tokenizer, BOS as the tokenizer says, special tokens parsed; an empty text reads
// BOS alone. For a raw prompt these are exactly the ids ac_prompt_tokens gives the router.
#ifndef AC_CTRL_ZOO_H
#define AC_CTRL_ZOO_H

#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "controller.h"
#include "gguf.h"
#include "tokenizer.h"

typedef struct {
  // The zoo, as the controller describes it (names as in the catalog / manifest).
  int n_axis;
  ac_ctrl_axis_t axis[AC_CTRL_MAX_AXES];
  int n_variant;
  ac_ctrl_variant_t variant[AC_CTRL_MAX_VARIANTS];
  int reference;
  char ref_file[4096];   // path of the reference variant's GGUF
  int has_manifest;
  // The base model's frozen token embeddings and their digest.
  float *E;              // n_vocab × e, malloc'ed
  int n_vocab, e;
  uint8_t digest[32];
  // The reference's tokenizer (and the GGUF mapping it was read from).
  ac_gguf_t *gguf;
  ac_tokenizer_t *tok;
} ac_ctrl_zoo_t;

// Reads DIR (catalog, manifest), then the reference's embeddings and tokenizer. Errors name the
// problem (AC_ENOTFOUND: no token_embd; AC_EUNSUPPORTED: too many variants for the controller).
int ac_ctrl_zoo_load(const char *dir, ac_ctrl_zoo_t *out);
// Only the zoo description (axes, variants, costs, reference): no model file is opened.
int ac_ctrl_zoo_describe(const char *dir, ac_ctrl_zoo_t *out);
void ac_ctrl_zoo_free(ac_ctrl_zoo_t *z);

// Keeps only the variants whose keep[v] is non-zero (the reference must stay), renumbering, and
// drops axes that no longer distinguish anything. AC_EINVAL when the reference is dropped or
// fewer than two variants remain.
int ac_ctrl_zoo_select(ac_ctrl_zoo_t *z, const int *keep);
// Index of variant `name`, or -1.
int ac_ctrl_zoo_find(const ac_ctrl_zoo_t *z, const char *name);

// Fills cfg's zoo part (axes, variants, reference) and its embedding part (e, n_vocab, digest,
// pad id) from z; the network sizes in cfg stay as they are.
void ac_ctrl_zoo_apply(const ac_ctrl_zoo_t *z, ac_ctrl_config_t *cfg);

// token_embd.weight of a GGUF file as floats (malloc'ed, n_vocab × e) and the SHA-256 of its
// bytes. AC_ENOTFOUND when the file has no token_embd.weight.
int ac_ctrl_embeddings_from_gguf(const ac_gguf_t *g, float **E, int *n_vocab, int *e, uint8_t digest[32]);

// The task text of a chat: the contents joined by "\n" (malloc'ed, NUL-terminated).
char *ac_ctrl_chat_text(const ac_chat_msg_t *msgs, size_t n, size_t *len);
// The controller's ids for a task text (the rule at the top). *ids is malloc'ed.
int ac_ctrl_text_ids(const ac_tokenizer_t *tok, const char *text, size_t len, int32_t **ids, int *n);

#endif
