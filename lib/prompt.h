// prompt.h - from what a user typed to the token ids a model starts from.
//
// One path for every caller (acq run, the router, the worker), so the same prompt gives the same
// ids everywhere: optional chat templating (the model's own template, with its default system
// prompt when the caller gives none), BOS as the tokenizer says (never twice when the template
// spells it out), and an empty prompt starting from BOS alone.
#ifndef AC_PROMPT_H
#define AC_PROMPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "gguf.h"
#include "tokenizer.h"

// Tokenizes text as is, with a buffer that grows to fit. *ids is malloc'ed.
int ac_tokenize_all(const ac_tokenizer_t *tok, const char *text, size_t len, bool add_bos, bool special,
                    int32_t **ids, int *n);

// The ids for a raw prompt (chat false: msgs ignored) or for a chat: msgs[0..n_msgs), rendered
// with the template in `g` (tokenizer.chat_template) and an assistant turn opened. Errors:
// AC_EUNSUPPORTED (no usable template), AC_EINVAL (empty prompt and no BOS; no tokens).
int ac_prompt_tokens(const ac_gguf_t *g, const ac_tokenizer_t *tok, const char *prompt, size_t len, bool chat,
                     const ac_chat_msg_t *msgs, size_t n_msgs, int32_t **ids, int *n);

#endif
