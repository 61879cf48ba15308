// chat.h - chat templates: turning a list of messages into the prompt a chat model expects.
//
// The template is recognised from the Jinja text in `tokenizer.chat_template`; we do not run
// Jinja. Known families: ChatML (<|im_start|>role\n...<|im_end|>\n), Llama-2 ([INST] ... [/INST],
// <<SYS>> for the system message) and Llama-3 (<|start_header_id|>role<|end_header_id|>\n\n...
// <|eot_id|>). Anything else is AC_EUNSUPPORTED with a message suggesting raw completion.
#ifndef AC_CHAT_H
#define AC_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "gguf.h"

typedef enum { AC_CHAT_NONE = 0, AC_CHAT_CHATML, AC_CHAT_LLAMA2, AC_CHAT_LLAMA3 } ac_chat_kind_t;

typedef struct {
  const char *role;     // "system", "user" or "assistant"
  const char *content;
} ac_chat_msg_t;

// Recognises the template in the file; AC_ENOTFOUND if the file has none, AC_EUNSUPPORTED if it
// is of no family we know.
int ac_chat_detect(const ac_gguf_t *g, ac_chat_kind_t *out);
// Detects from template text (exposed for tests).
ac_chat_kind_t ac_chat_detect_text(const char *tmpl, size_t len);
const char *ac_chat_kind_name(ac_chat_kind_t kind);

// The default system message a ChatML template writes when the conversation has none (SmolLM2:
// "You are a helpful AI assistant named SmolLM, trained by Hugging Face"), found as the literal
// text between '<|im_start|>system\n' and '<|im_end|>' in the template. *out is malloc'ed (caller
// frees), or NULL when the template has no such message. Pass it to ac_chat_format.
int ac_chat_default_system(const char *tmpl, size_t len, char **out);

// Formats the messages; with add_assistant, ends with the header of an assistant turn so the
// model writes the answer. The default system message of a template (e.g. SmolLM2's) is added
// when `default_system` is non-NULL and the first message is not a system one (what the
// templates check). The output equals the Jinja rendering minus a leading bos_token, which the
// tokenizer adds. *out is malloc'ed, caller frees.
int ac_chat_format(ac_chat_kind_t kind, const ac_chat_msg_t *msgs, size_t n, bool add_assistant,
                   const char *default_system, char **out);

#endif
