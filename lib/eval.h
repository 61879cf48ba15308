// eval.h - how much a variant's next-token distributions drift from its base model's.
//
// Both models read the same token ids in windows of n_ctx tokens, the way `acq perplexity`
// does (and llama.cpp's perplexity tool): window k is ids[k*n_ctx .. (k+1)*n_ctx), its first
// token is replaced by BOS when the tokenizer adds BOS, and only the second half of the window
// is scored, so every scored token sees at least n_ctx/2 tokens of context. The two models run
// window by window in lockstep, so memory holds two windows of logits, never the whole text.
//
// Per scored position i (predicting ids[i+1]) with base distribution P and variant Q:
//   NLL       -log P(ids[i+1]) and -log Q(ids[i+1])      -> perplexity of each model
//   KL        KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), in double, log-softmax with the
//             max subtracted                                -> mean, 99th percentile, max
//   top-1     argmax P == argmax Q (first index on ties)    -> agreement, overall and where the
//             base is confident (max P > confident_p)
#ifndef AC_EVAL_H
#define AC_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct ac_eval_result ac_eval_result_t;

typedef struct {
  int32_t n_ctx;       // window length in tokens (default 512)
  int32_t n_threads;   // threads of each model's context (default 1)
  int32_t max_chunks;  // score at most this many windows from the start; 0 = all (default)
  double confident_p;  // base top-1 probability above which the base counts as confident (0.5)
  // Called after every window with the running totals (percentiles are filled only at the end);
  // NULL for none.
  void (*progress)(void *user, int32_t done, int32_t total, const ac_eval_result_t *so_far);
  void *user;
} ac_eval_params_t;

struct ac_eval_result {
  int32_t n_ctx, n_chunks;   // windows scored
  int64_t n_scored;          // positions scored (n_chunks * (n_ctx - n_ctx/2))
  int64_t n_tokens;          // tokens in the text
  double ppl_base, ppl_variant;
  double dppl, dppl_rel;     // ppl_variant - ppl_base, and that over ppl_base (a fraction)
  double kld_mean, kld_p99, kld_max;  // KL(base || variant) per position, nats
  double top1;               // fraction of positions with equal argmax
  int64_t n_confident;       // positions where the base's top-1 probability > confident_p
  double top1_confident;     // top-1 agreement over those positions (0 when there are none)
};

ac_eval_params_t ac_eval_default_params(void);

// Checks that two models can be compared token for token: the same vocabulary (size, and the
// same text for every token), the same BOS and whether it is added. AC_EINVAL with a message
// naming the first difference otherwise.
int ac_eval_check_tokenizers(const ac_model_t *base, const ac_model_t *variant);

// Evaluates ids[0..n) (tokenized without BOS and without parsing special tokens, as
// `acq perplexity` does) with both models and fills *out. The ids are not modified. Errors:
// AC_EINVAL for models with different tokenizers or a bad parameter, AC_ERANGE when the text
// is shorter than one window, and whatever the forward pass reports.
int ac_eval_compare(const ac_model_t *base, const ac_model_t *variant, const int32_t *ids, int n,
                    ac_eval_params_t p, ac_eval_result_t *out);

// --- the default evaluation text -----------------------------------------------------------

// Where the project's shared data lives: $AC_SHARED if set (and then it must hold the data),
// else the first of <dir of the running binary>/../../../shared (a build tree inside the
// checkout, main/build/bin) and the ../shared beside the checkout this file was compiled from
// (a build tree elsewhere) that holds data/gsm8k/test.jsonl. Writes the directory to buf;
// AC_ENOTFOUND naming the places looked at when none has it.
int ac_eval_shared_dir(char *buf, size_t cap);

// Builds the default evaluation text from the first n_problems GSM8K problems of `jsonl`
// (one {"question", "answer"} object a line), each as "Question: Q\nAnswer: A\n\n". The same
// file and count always give the same bytes. *text is malloc'ed and NUL-terminated.
int ac_eval_gsm8k_text(const char *jsonl, int n_problems, char **text, size_t *len);

#endif
