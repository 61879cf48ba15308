// acq_tokenize.c - `acq tokenize MODEL (-p TEXT | -f FILE)`: the token ids of a text.
//
// Prints the ids space-separated on one line, or with --pieces one "id<TAB>piece" line per
// token, where the piece is the decoded bytes with \\, \n, \t, \r, other control bytes and
// bytes that are not part of valid UTF-8 written as C escapes (\xNN), so that every piece
// stays on its line and the bytes can be recovered exactly.
//
// With --chat the input is a JSON array of {"role", "content"} messages, formatted with the
// model's chat template (plus its default system message and the assistant header) before it
// is tokenized; --print-prompt prints that formatted prompt instead of tokenizing it.
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acq.h"
#include "chat.h"
#include "error.h"
#include "file.h"
#include "gguf.h"
#include "tokenizer.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: acq tokenize MODEL [--no-bos] [--no-special] [--pieces] [--chat "
          "[--print-prompt]]\n"
          "                          (-p TEXT | -f FILE)\n"
          "  --no-bos        do not add BOS (by default it is added when the model asks for it)\n"
          "  --no-special    treat control-token text such as <|im_start|> as plain text\n"
          "  --pieces        print one 'id<TAB>piece' line per token instead of the ids\n"
          "  --chat          the input is a JSON array of {\"role\", \"content\"} messages:\n"
          "                  format it with the model's chat template, ending with the\n"
          "                  assistant header\n"
          "  --print-prompt  with --chat: print the formatted prompt instead of its tokens\n");
}

// Length of the valid UTF-8 sequence at s (n bytes left), or 0 if it is not one.
static size_t utf8_valid(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len = 0;
  uint32_t min;
  if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
  else return 0;
  if (len > n) return 0;
  uint32_t cp = c & (0x3F >> (len - 1));
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

static void print_escaped(const char *p, size_t n) {
  const unsigned char *s = (const unsigned char *)p;
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c == '\\') fputs("\\\\", stdout);
    else if (c == '\n') fputs("\\n", stdout);
    else if (c == '\t') fputs("\\t", stdout);
    else if (c == '\r') fputs("\\r", stdout);
    else if (c < 0x20 || c == 0x7F) printf("\\x%02X", c);
    else if (c < 0x80) putchar(c);
    else {
      size_t l = utf8_valid(s + i, n - i);
      if (l == 0) {
        printf("\\x%02X", c);
      } else {
        fwrite(s + i, 1, l, stdout);
        i += l;
        continue;
      }
    }
    i++;
  }
}

// Formats a JSON array of messages with the model's chat template; *out is malloc'ed.
static int chat_prompt(const ac_gguf_t *g, const char *json, size_t len, char **out) {
  ac_chat_kind_t kind;
  int rc = ac_chat_detect(g, &kind);
  if (rc < 0) return rc;
  json_error_t jerr;
  json_t *root = json_loadb(json, len, 0, &jerr);
  if (!root)
    return ac_error(AC_EFORMAT, "chat messages: line %d column %d: %s", jerr.line, jerr.column,
                    jerr.text);
  char *sys = NULL;
  size_t n = json_is_array(root) ? json_array_size(root) : 0;
  ac_chat_msg_t *msgs = calloc(n + 1, sizeof *msgs);
  if (!msgs) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  if (!json_is_array(root)) {
    rc = ac_error(AC_EFORMAT, "chat messages: expected a JSON array of {\"role\", \"content\"}");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *m = json_array_get(root, i);
    msgs[i].role = json_string_value(json_object_get(m, "role"));
    msgs[i].content = json_string_value(json_object_get(m, "content"));
    if (!msgs[i].role || !msgs[i].content) {
      rc = ac_error(AC_EFORMAT, "chat messages: message %zu needs string 'role' and 'content'", i);
      goto done;
    }
  }
  ac_str_t tmpl;
  if ((rc = ac_gguf_get_str(g, "tokenizer.chat_template", &tmpl)) < 0 ||
      (rc = ac_chat_default_system(tmpl.ptr, tmpl.len, &sys)) < 0)
    goto done;
  rc = ac_chat_format(kind, msgs, n, true, sys, out);

done:
  free(sys);
  free(msgs);
  json_decref(root);
  return rc;
}

int acq_tokenize_main(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *file = NULL;
  bool no_bos = false, no_special = false, pieces = false, chat = false, print_prompt = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--no-bos") == 0) no_bos = true;
    else if (strcmp(a, "--no-special") == 0) no_special = true;
    else if (strcmp(a, "--pieces") == 0) pieces = true;
    else if (strcmp(a, "--chat") == 0) chat = true;
    else if (strcmp(a, "--print-prompt") == 0) print_prompt = true;
    else if ((strcmp(a, "-p") == 0 || strcmp(a, "--prompt") == 0) && i + 1 < argc)
      prompt = argv[++i];
    else if ((strcmp(a, "-f") == 0 || strcmp(a, "--file") == 0) && i + 1 < argc) file = argv[++i];
    else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (a[0] != '-' && !model) model = a;
    else {
      fprintf(stderr, "acq tokenize: unexpected argument '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!model || (!prompt && !file) || (prompt && file) || (print_prompt && !chat)) {
    fprintf(stderr, "acq tokenize: need a MODEL and exactly one of -p TEXT or -f FILE "
                    "(--print-prompt only with --chat)\n");
    usage(stderr);
    return 2;
  }

  int status = 1, rc;
  ac_gguf_t *g = NULL;
  ac_tokenizer_t *t = NULL;
  char *text = NULL, *formatted = NULL;
  int32_t *ids = NULL;
  size_t len = 0;
  if (file) {
    if ((rc = ac_read_file(file, 0, &text, &len)) < 0) {
      acq_fail("tokenize", rc);
      goto done;
    }
  } else {
    len = strlen(prompt);
  }
  if ((rc = ac_gguf_open(model, &g)) < 0) {
    acq_fail(model, rc);
    goto done;
  }
  const char *src = file ? text : prompt;
  if (chat) {
    if ((rc = chat_prompt(g, src, len, &formatted)) < 0) {
      acq_fail("tokenize --chat", rc);
      goto done;
    }
    src = formatted;
    len = strlen(formatted);
    if (print_prompt) {
      fwrite(src, 1, len, stdout);
      status = fflush(stdout) == 0 ? 0 : 1;
      goto done;
    }
  }
  if ((rc = ac_tokenizer_from_gguf(g, &t)) < 0) {
    acq_fail(model, rc);
    goto done;
  }
  bool add_bos = !no_bos && ac_tokenizer_add_bos(t);
  int cap = len < (1u << 28) ? (int)len + 16 : (1 << 28);
  for (;;) {
    ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) {
      acq_fail("tokenize", ac_error(AC_ENOMEM, "out of memory"));
      goto done;
    }
    rc = ac_tokenize(t, src, len, add_bos, !no_special, ids, cap);
    if (rc < 0) {
      acq_fail(model, rc);
      goto done;
    }
    if (rc <= cap) break;
    cap = rc;
    free(ids);
    ids = NULL;
  }
  int n = rc;
  if (pieces) {
    static char buf[65536];
    for (int i = 0; i < n; i++) {
      int pl = ac_token_to_piece(t, ids[i], true, buf, sizeof buf);
      if (pl < 0) {
        acq_fail("tokenize", pl);
        goto done;
      }
      printf("%d\t", (int)ids[i]);
      print_escaped(buf, (size_t)pl);
      putchar('\n');
    }
  } else {
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)ids[i]);
    putchar('\n');
  }
  if (fflush(stdout) != 0) {
    fprintf(stderr, "acq tokenize: cannot write the output: %s\n", strerror(errno));
    goto done;
  }
  status = 0;

done:
  free(ids);
  free(text);
  free(formatted);
  ac_tokenizer_destroy(&t);
  ac_gguf_close(&g);
  return status;
}
