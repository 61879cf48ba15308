// sampler.h - choosing the next token, and deciding when generation stops.
//
// ac_sampler_t turns logits into a token: greedy when temp <= 0, else temperature, then the
// top-k / top-p / min-p filters, then a draw from a seeded generator (same seed, same text).
// ac_stopper_t follows the generated text of one sequence: it holds back text that may be the
// start of a stop string, cuts the output at a stop string, and ends on end-of-generation
// tokens or the token limit. Both are per sequence, so a batching worker keeps one of each.
#ifndef AC_SAMPLER_H
#define AC_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct {
  float temp;      // <= 0: greedy
  int32_t top_k;   // <= 0: off
  float top_p;     // >= 1: off
  float min_p;     // <= 0: off
  uint64_t seed;
} ac_sampler_params_t;

// Greedy, all filters off.
ac_sampler_params_t ac_sampler_default_params(void);

typedef struct ac_sampler ac_sampler_t;
int ac_sampler_new(ac_sampler_params_t p, int32_t n_vocab, ac_sampler_t **out);
void ac_sampler_destroy(ac_sampler_t **self_p);
// Picks a token from n_vocab logits (not modified).
int32_t ac_sampler_sample(ac_sampler_t *s, const float *logits);

// --- stopping ---------------------------------------------------------------------------------

typedef enum { AC_FINISH_NONE = 0, AC_FINISH_EOS, AC_FINISH_STOP, AC_FINISH_LENGTH } ac_finish_t;
const char *ac_finish_name(ac_finish_t f);  // "eos", "stop", "length"

typedef struct ac_stopper ac_stopper_t;
// max_tokens <= 0 means no limit; stop strings are copied.
int ac_stopper_new(const ac_tokenizer_t *tok, int32_t max_tokens, const char *const *stop, int n_stop,
                   ac_stopper_t **out);
void ac_stopper_destroy(ac_stopper_t **self_p);
// Feeds one generated token. *text/*len receive the text that is now safe to emit (valid until
// the next call); the return value is the finish reason, AC_FINISH_NONE to go on. `first`
// marks the first token after the prompt: its leading space is dropped when the prompt was
// only BOS (SentencePiece models start words with a space).
ac_finish_t ac_stopper_push(ac_stopper_t *s, int32_t token, const char **text, size_t *len);
// Text still held back (a partial stop string) when generation ends for another reason.
void ac_stopper_flush(ac_stopper_t *s, const char **text, size_t *len);
int32_t ac_stopper_n_tokens(const ac_stopper_t *s);
// Treat end-of-generation tokens as ordinary text (benchmarks that need exactly N tokens).
void ac_stopper_ignore_eos(ac_stopper_t *s);
// Drop the leading space of the next piece (after a BOS-only prompt, as llama2.c does).
void ac_stopper_strip_leading_space(ac_stopper_t *s);

#endif
