// chat.c - chat templates: ChatML, Llama-2 and Llama-3 prompts, recognised from the Jinja text.
//
// We do not run Jinja. Each family's formatter writes exactly what that family's reference
// template renders, with two conventions:
//  - The leading bos_token that the Llama-2 and Llama-3 templates print is left out, because
//    the tokenizer adds BOS itself (ac_tokenize with add_bos); later ones (Llama-2 puts one
//    before every user turn) are written as text ("<s>") and become the BOS id when tokenized
//    with parse_special.
//  - Jinja's `trim` / Python's str.strip() is reproduced with Python's notion of whitespace.
#include "chat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

// --- detection -------------------------------------------------------------

ac_chat_kind_t ac_chat_detect_text(const char *tmpl, size_t len) {
  if (!tmpl) return AC_CHAT_NONE;
  if (memmem(tmpl, len, "<|im_start|>", 12)) return AC_CHAT_CHATML;
  if (memmem(tmpl, len, "<|start_header_id|>", 19)) return AC_CHAT_LLAMA3;
  if (memmem(tmpl, len, "[INST]", 6)) return AC_CHAT_LLAMA2;
  return AC_CHAT_NONE;
}

int ac_chat_detect(const ac_gguf_t *g, ac_chat_kind_t *out) {
  if (!g || !out) return ac_error(AC_EINVAL, "chat: NULL argument");
  *out = AC_CHAT_NONE;
  ac_str_t s;
  int rc = ac_gguf_get_str(g, "tokenizer.chat_template", &s);
  if (rc == AC_ENOTFOUND)
    return ac_error(rc, "chat: the model has no chat template (tokenizer.chat_template); use raw "
                        "completion");
  if (rc < 0) return ac_error(rc, "chat: 'tokenizer.chat_template' is not a string");
  ac_chat_kind_t k = ac_chat_detect_text(s.ptr, s.len);
  if (k == AC_CHAT_NONE)
    return ac_error(AC_EUNSUPPORTED, "chat: the model's chat template is of no known family "
                                     "(ChatML, Llama-2, Llama-3); use raw completion");
  *out = k;
  return 0;
}

const char *ac_chat_kind_name(ac_chat_kind_t kind) {
  switch (kind) {
    case AC_CHAT_CHATML: return "chatml";
    case AC_CHAT_LLAMA2: return "llama2";
    case AC_CHAT_LLAMA3: return "llama3";
    default: return "none";
  }
}

// Finds a default system message written into a ChatML template as a string literal:
// '<|im_start|>system\n...<|im_end|>' where "..." is plain text, not an expression. Literals
// that splice in a message ('<|im_start|>system\n' + messages[0]['content'] ...) are skipped.
int ac_chat_default_system(const char *tmpl, size_t len, char **out) {
  if (!out) return ac_error(AC_EINVAL, "chat: NULL output");
  *out = NULL;
  if (!tmpl) return 0;
  static const char head[] = "<|im_start|>system";
  static const char tail[] = "<|im_end|>";
  const size_t hl = sizeof head - 1, tl = sizeof tail - 1;
  size_t pos = 0;
  while (pos < len) {
    const char *hit = memmem(tmpl + pos, len - pos, head, hl);
    if (!hit) break;
    size_t at = (size_t)(hit - tmpl);
    pos = at + hl;
    char q = at > 0 ? tmpl[at - 1] : 0;
    if (q != '\'' && q != '"') continue;
    // The newline after the role: a real one, or the escape \n inside the Jinja literal.
    size_t i = pos;
    if (i < len && tmpl[i] == '\n') i += 1;
    else if (i + 1 < len && tmpl[i] == '\\' && tmpl[i + 1] == 'n') i += 2;
    else continue;
    char *buf = malloc(len - i + 1);
    if (!buf) return ac_error(AC_ENOMEM, "chat: out of memory");
    size_t n = 0;
    bool ok = false;
    while (i < len) {
      if (len - i >= tl && memcmp(tmpl + i, tail, tl) == 0) {
        ok = n > 0;
        break;
      }
      char c = tmpl[i];
      if (c == q) break;  // the literal ends before <|im_end|>: an expression follows
      if (c == '\\' && i + 1 < len) {
        char e = tmpl[i + 1];
        buf[n++] = e == 'n' ? '\n' : e == 't' ? '\t' : e;
        i += 2;
        continue;
      }
      buf[n++] = c;
      i++;
    }
    if (ok) {
      buf[n] = '\0';
      *out = buf;
      return 0;
    }
    free(buf);
  }
  return 0;
}

// --- text helpers ----------------------------------------------------------

typedef struct {
  char *p;
  size_t n, cap;
  int err;
} sb_t;

static void sb_add(sb_t *b, const char *s, size_t n) {
  if (b->err) return;
  if (b->n + n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->n + n + 1) c *= 2;
    char *q = realloc(b->p, c);
    if (!q) {
      b->err = AC_ENOMEM;
      return;
    }
    b->p = q;
    b->cap = c;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void sb_puts(sb_t *b, const char *s) { sb_add(b, s, strlen(s)); }

// Python's str.isspace() for one code point.
static bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Decodes one UTF-8 character; malformed input counts as one non-space byte.
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned char c = s[0];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || len > n) {
    *cp = 0xFFFD;
    return 1;
  }
  uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) {
      *cp = 0xFFFD;
      return 1;
    }
    v = (v << 6) | (s[i] & 0x3Fu);
  }
  *cp = v;
  return len;
}

// Appends `s` with leading and trailing whitespace removed, as str.strip() does.
static void sb_add_stripped(sb_t *b, const char *s) {
  size_t n = strlen(s), i = 0, first = n, last = 0;
  while (i < n) {
    uint32_t cp;
    size_t l = utf8_next((const unsigned char *)s + i, n - i, &cp);
    if (!py_space(cp)) {
      if (first == n) first = i;
      last = i + l;
    }
    i += l;
  }
  if (first < last) sb_add(b, s + first, last - first);
}

// --- formatters ------------------------------------------------------------

static void format_chatml(sb_t *b, const ac_chat_msg_t *m, size_t n, bool add_assistant,
                          const char *default_system) {
  // SmolLM2's template: a default system turn when the first message is not a system one.
  if (n > 0 && default_system && strcmp(m[0].role, "system") != 0) {
    sb_puts(b, "<|im_start|>system\n");
    sb_puts(b, default_system);
    sb_puts(b, "<|im_end|>\n");
  }
  for (size_t i = 0; i < n; i++) {
    sb_puts(b, "<|im_start|>");
    sb_puts(b, m[i].role);
    sb_puts(b, "\n");
    sb_puts(b, m[i].content);
    sb_puts(b, "<|im_end|>\n");
  }
  if (add_assistant) sb_puts(b, "<|im_start|>assistant\n");
}

static void llama3_turn(sb_t *b, const char *role, const char *content) {
  sb_puts(b, "<|start_header_id|>");
  sb_puts(b, role);
  sb_puts(b, "<|end_header_id|>\n\n");
  sb_add_stripped(b, content);
  sb_puts(b, "<|eot_id|>");
}

static void format_llama3(sb_t *b, const ac_chat_msg_t *m, size_t n, bool add_assistant,
                          const char *default_system) {
  if (n > 0 && default_system && strcmp(m[0].role, "system") != 0)
    llama3_turn(b, "system", default_system);
  for (size_t i = 0; i < n; i++) llama3_turn(b, m[i].role, m[i].content);
  if (add_assistant) sb_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Meta's Llama-2 template: the system message is folded into the first user turn inside
// <<SYS>> markers; user and assistant turns must alternate, starting with the user. The prompt
// ends with [/INST] already, so add_assistant adds nothing.
static int format_llama2(sb_t *b, const ac_chat_msg_t *m, size_t n, const char *default_system) {
  const char *sys = default_system;
  if (n > 0 && strcmp(m[0].role, "system") == 0) {
    sys = m[0].content;
    m++;
    n--;
  }
  for (size_t i = 0; i < n; i++) {
    bool user = strcmp(m[i].role, "user") == 0;
    if (user != (i % 2 == 0))
      return ac_error(AC_EINVAL, "chat: Llama-2 turns must alternate user/assistant/user/..., "
                                 "starting with the user (message %zu is '%s')",
                      i, m[i].role);
    sb_t content = {0};
    if (i == 0 && sys) {
      sb_puts(&content, "<<SYS>>\n");
      sb_puts(&content, sys);
      sb_puts(&content, "\n<</SYS>>\n\n");
    }
    sb_puts(&content, m[i].content);
    if (content.err) {
      free(content.p);
      return ac_error(AC_ENOMEM, "chat: out of memory");
    }
    if (user) {
      if (i > 0) sb_puts(b, "<s>");
      sb_puts(b, "[INST] ");
      sb_add_stripped(b, content.p);
      sb_puts(b, " [/INST]");
    } else if (strcmp(m[i].role, "assistant") == 0) {
      sb_puts(b, " ");
      sb_add_stripped(b, content.p);
      sb_puts(b, " </s>");
    }
    free(content.p);
  }
  return 0;
}

int ac_chat_format(ac_chat_kind_t kind, const ac_chat_msg_t *msgs, size_t n, bool add_assistant,
                   const char *default_system, char **out) {
  if (!out) return ac_error(AC_EINVAL, "chat: NULL output");
  *out = NULL;
  if (n > 0 && !msgs) return ac_error(AC_EINVAL, "chat: NULL messages");
  for (size_t i = 0; i < n; i++)
    if (!msgs[i].role || !msgs[i].content)
      return ac_error(AC_EINVAL, "chat: message %zu has no role or no content", i);
  sb_t b = {0};
  sb_add(&b, "", 0);  // an empty conversation still yields an (empty) string
  int rc = 0;
  switch (kind) {
    case AC_CHAT_CHATML: format_chatml(&b, msgs, n, add_assistant, default_system); break;
    case AC_CHAT_LLAMA3: format_llama3(&b, msgs, n, add_assistant, default_system); break;
    case AC_CHAT_LLAMA2: rc = format_llama2(&b, msgs, n, default_system); break;
    default:
      rc = ac_error(AC_EUNSUPPORTED, "chat: no template of kind %d; use raw completion", (int)kind);
  }
  if (rc == 0 && b.err) rc = ac_error(AC_ENOMEM, "chat: out of memory");
  if (rc < 0) {
    free(b.p);
    return rc;
  }
  *out = b.p;
  return 0;
}
