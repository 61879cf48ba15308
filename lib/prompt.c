// prompt.c - see prompt.h.
#include "prompt.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

int ac_tokenize_all(const ac_tokenizer_t *tok, const char *text, size_t len, bool add_bos, bool special,
                    int32_t **ids, int *n) {
  int cap = (int)(len + 16 < 1 << 20 ? len + 16 : 1 << 20);
  *ids = malloc((size_t)cap * sizeof **ids);
  if (!*ids) return ac_error(AC_ENOMEM, "out of memory");
  int rc = ac_tokenize(tok, text, len, add_bos, special, *ids, cap);
  if (rc > cap) {
    int32_t *b = realloc(*ids, (size_t)rc * sizeof **ids);
    if (!b) {
      free(*ids);
      *ids = NULL;
      return ac_error(AC_ENOMEM, "out of memory");
    }
    *ids = b;
    rc = ac_tokenize(tok, text, len, add_bos, special, *ids, rc);
  }
  if (rc < 0) {
    free(*ids);
    *ids = NULL;
    return rc;
  }
  *n = rc;
  return 0;
}

int ac_prompt_tokens(const ac_gguf_t *g, const ac_tokenizer_t *tok, const char *prompt, size_t len, bool chat,
                     const ac_chat_msg_t *msgs, size_t n_msgs, int32_t **ids, int *n) {
  *ids = NULL;
  *n = 0;
  bool add_bos = ac_tokenizer_add_bos(tok);
  char *chat_text = NULL;
  int rc;
  if (chat) {
    ac_chat_kind_t kind;
    if ((rc = ac_chat_detect(g, &kind))) return rc;
    char *def_sys = NULL;
    ac_str_t tmpl;
    if (ac_gguf_get_str(g, "tokenizer.chat_template", &tmpl) == 0) ac_chat_default_system(tmpl.ptr, tmpl.len, &def_sys);
    rc = ac_chat_format(kind, msgs, n_msgs, true, def_sys, &chat_text);
    free(def_sys);
    if (rc) return rc;
    prompt = chat_text;
    len = strlen(chat_text);
    // Templates that spell out BOS themselves must not get a second one.
    int32_t bos = ac_tokenizer_bos(tok);
    const char *bos_text = bos >= 0 ? ac_tokenizer_token_text(tok, bos) : NULL;
    if (bos_text && *bos_text && strncmp(prompt, bos_text, strlen(bos_text)) == 0) add_bos = false;
  }
  if (len == 0) {
    // An empty prompt starts from BOS alone.
    int32_t bos = ac_tokenizer_bos(tok);
    free(chat_text);
    if (bos < 0) return ac_error(AC_EINVAL, "the prompt is empty and the model has no BOS token to start from");
    if (!(*ids = malloc(sizeof **ids))) return ac_error(AC_ENOMEM, "out of memory");
    (*ids)[0] = bos;
    *n = 1;
    return 0;
  }
  rc = ac_tokenize_all(tok, prompt, len, add_bos, true, ids, n);
  free(chat_text);
  if (rc) return rc;
  if (*n == 0) {
    free(*ids);
    *ids = NULL;
    return ac_error(AC_EINVAL, "the prompt has no tokens");
  }
  return 0;
}
