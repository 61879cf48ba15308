// test_tokenizer.c - tokenizers on small in-memory vocabularies, GGUF metadata handling, chat
// templates, and (when the SmolLM2 file is in the cache) speed on a real vocabulary.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "check.h"
#include "error.h"
#include "gguf.h"
#include "tokenizer.h"

// The internal constructors (lib/tokenizer.c).
int ac__tokenizer_new(ac_tok_kind_t kind, const ac_str_t *tokens, const float *scores,
                      const int32_t *types, int32_t n, const ac_str_t *merges, int32_t n_merges,
                      const char *pre, ac_tokenizer_t **out);
int ac__tokenizer_set_special(ac_tokenizer_t *t, int32_t bos, int32_t eos, int32_t eot,
                              int32_t unk, int32_t pad, int add_bos, int add_space_prefix);

#define SP "\xe2\x96\x81"  // U+2581, SentencePiece's space
#define G "\xc4\xa0"       // U+0120, GPT-2's stand-in for the byte ' '
#define C "\xc4\x8a"       // U+010A, GPT-2's stand-in for the byte '\n'

// --- helpers ---------------------------------------------------------------

static ac_str_t *strs(const char **s, int n) {
  ac_str_t *v = calloc((size_t)n, sizeof *v);
  for (int i = 0; i < n; i++) v[i] = (ac_str_t){s[i], strlen(s[i])};
  return v;
}

// Tokenizes `text` and compares with the expected ids (terminated by -100).
static bool tok_eq(const ac_tokenizer_t *t, const char *text, bool bos, bool special,
                   const int32_t *want) {
  int32_t ids[256];
  int n = ac_tokenize(t, text, strlen(text), bos, special, ids, 256);
  int nw = 0;
  while (want[nw] != -100) nw++;
  bool ok = n == nw;
  for (int i = 0; ok && i < n; i++) ok = ids[i] == want[i];
  if (!ok) {
    fprintf(stderr, "  '%s' -> [", text);
    for (int i = 0; i < n; i++) fprintf(stderr, "%s%d", i ? " " : "", ids[i]);
    fprintf(stderr, "] (rc %d: %s), want [", n, n < 0 ? ac_errmsg() : "");
    for (int i = 0; i < nw; i++) fprintf(stderr, "%s%d", i ? " " : "", want[i]);
    fprintf(stderr, "]\n");
  }
  return ok;
}
#define IDS(...) ((const int32_t[]){__VA_ARGS__, -100})
#define NOIDS ((const int32_t[]){-100})

static bool piece_eq(const ac_tokenizer_t *t, int32_t id, bool special, const char *want) {
  char buf[64];
  int n = ac_token_to_piece(t, id, special, buf, sizeof buf);
  return n == (int)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

// --- SPM -------------------------------------------------------------------

enum { S_UNK, S_BOS, S_EOS, S_SP, S_A, S_B, S_C, S_AB, S_BC, S_SPA, S_XC3, S_XA9, S_USER, S_N };

static ac_tokenizer_t *spm_vocab(float ab, float bc) {
  const char *text[S_N] = {"<unk>", "<s>",   "</s>",  SP,       "a",      "b",     "c",
                           "ab",    "bc",    SP "a",  "<0xC3>", "<0xA9>", "<us>"};
  float scores[S_N] = {0, 0, 0, -3, -4, -4, -4, ab, bc, -2, 0, 0, 0};
  int32_t types[S_N] = {AC_TOKEN_UNKNOWN, AC_TOKEN_CONTROL, AC_TOKEN_CONTROL, 1, 1, 1, 1, 1, 1, 1,
                        AC_TOKEN_BYTE,    AC_TOKEN_BYTE,    AC_TOKEN_USER_DEFINED};
  ac_str_t *v = strs(text, S_N);
  ac_tokenizer_t *t = NULL;
  int rc = ac__tokenizer_new(AC_TOK_SPM, v, scores, types, S_N, NULL, 0, NULL, &t);
  free(v);
  CHECK(rc == 0, "spm vocab: %s", ac_errmsg());
  return t;
}

static void test_spm(void) {
  ac_tokenizer_t *t = spm_vocab(-1.0f, -0.5f);
  if (!t) return;
  CHECK(ac_tokenizer_kind(t) == AC_TOK_SPM, "kind");
  CHECK(ac_tokenizer_bos(t) == 1 && ac_tokenizer_eos(t) == 2 && ac_tokenizer_add_bos(t),
        "llama.cpp's SPM defaults: bos 1, eos 2, add_bos");
  // "▁abc": bc (-0.5) beats ab (-1) and ▁a (-2); then ▁a merges: [▁a, bc]. Merging leftmost
  // first would give [▁, ab, c].
  CHECK(tok_eq(t, "abc", false, true, IDS(S_SPA, S_BC)), "merge by highest score");
  CHECK(tok_eq(t, "abc", true, true, IDS(S_BOS, S_SPA, S_BC)), "with BOS");
  CHECK(tok_eq(t, "", true, true, IDS(S_BOS)), "empty text: BOS only");
  CHECK(tok_eq(t, "", false, true, NOIDS), "empty text: nothing");
  // Spaces become ▁ and a leading one is added: "a b" -> "▁a▁b".
  CHECK(tok_eq(t, "a b", false, true, IDS(S_SPA, S_SP, S_B)), "spaces");
  // é (C3 A9) is no token: byte fallback. '!' has no byte token either: unknown.
  CHECK(tok_eq(t, "\xc3\xa9!", false, true, IDS(S_SP, S_XC3, S_XA9, S_UNK)), "byte fallback");
  // Invalid UTF-8 never crashes: a lone continuation byte is a character of its own.
  CHECK(tok_eq(t, "\xa9", false, true, IDS(S_SP, S_XA9)), "invalid UTF-8");
  CHECK(tok_eq(t, "\xc3", false, true, IDS(S_SP, S_XC3)), "truncated UTF-8");
  // Special tokens are cut out first; the text after one gets the leading space again.
  CHECK(tok_eq(t, "a<s>b", false, true, IDS(S_SPA, S_BOS, S_SP, S_B)), "special split");
  CHECK(tok_eq(t, "a<s>b", false, false, IDS(S_SPA, S_UNK, S_UNK, S_UNK, S_B)),
        "no special split without parse_special");
  CHECK(tok_eq(t, "a<us>b", false, false, IDS(S_SPA, S_USER, S_SP, S_B)),
        "user-defined tokens are always split");
  // Ties go to the leftmost pair: ab and bc at the same score -> [▁, ab, c].
  ac_tokenizer_t *t2 = spm_vocab(-1.0f, -1.0f);
  CHECK(t2 && tok_eq(t2, "abc", false, true, IDS(S_SP, S_AB, S_C)), "tie: leftmost");
  ac_tokenizer_destroy(&t2);
  CHECK(t2 == NULL, "destroy clears the pointer");

  // add_space_prefix = false.
  CHECK(ac__tokenizer_set_special(t, 1, 2, -1, 0, -1, 1, 0) == 0, "set_special");
  CHECK(tok_eq(t, "abc", false, true, IDS(S_A, S_BC)), "no space prefix");
  CHECK(ac__tokenizer_set_special(t, 1, 2, -1, 0, -1, 1, 1) == 0, "set_special");
  CHECK(ac__tokenizer_set_special(t, 99, 2, -1, 0, -1, 1, 1) == AC_ERANGE, "bos out of range");

  // Pieces.
  CHECK(piece_eq(t, S_SPA, false, " a"), "▁ decodes to a space");
  CHECK(piece_eq(t, S_XC3, false, "\xc3"), "byte token decodes to its byte");
  CHECK(piece_eq(t, S_BOS, false, ""), "control hidden");
  CHECK(piece_eq(t, S_BOS, true, "<s>"), "control shown with special");
  CHECK(piece_eq(t, S_USER, false, "<us>"), "user-defined shown");
  char small[2];
  CHECK(ac_token_to_piece(t, S_USER, false, small, 2) == 2 && memcmp(small, "<u", 2) == 0,
        "piece truncated to cap");
  CHECK(ac_token_to_piece(t, S_N, false, small, 2) < 0, "bad id");
  CHECK(ac_token_to_piece(t, -1, false, small, 2) < 0, "negative id");

  // Output buffer smaller than needed: the count is still the full one.
  int32_t one[1];
  CHECK(ac_tokenize(t, "abc", 3, true, true, one, 1) == 3 && one[0] == S_BOS, "short buffer");
  CHECK(ac_tokenize(t, "abc", 3, true, true, NULL, 0) == 3, "count only");
  CHECK(ac_tokenize(NULL, "abc", 3, true, true, NULL, 0) == AC_EINVAL, "NULL tokenizer");
  CHECK(ac_tokenize(t, NULL, 3, true, true, NULL, 0) == AC_EINVAL, "NULL text");
  CHECK(ac_tokenize(t, "abc", 3, true, true, NULL, 5) == AC_EINVAL, "NULL ids with cap");

  CHECK(ac_tokenizer_find(t, SP "a") == S_SPA && ac_tokenizer_find(t, "zz") == -1, "find");
  CHECK(strcmp(ac_tokenizer_token_text(t, S_BC), "bc") == 0, "token text");
  CHECK(ac_tokenizer_token_text(t, 1000) == NULL, "token text: bad id");
  CHECK(ac_tokenizer_is_eog(t, S_EOS) && !ac_tokenizer_is_eog(t, S_BOS), "eog = eos");
  ac_tokenizer_destroy(&t);
}

// --- BPE -------------------------------------------------------------------

enum {
  B_A, B_B, B_C, B_G, B_NL, B_1, B_2, B_3, B_AB, B_BC, B_GA, B_NLNL, B_12, B_Q, B_S, B_QS,
  B_IT, B_I, B_T, B_IMS, B_IME, B_X, B_XY, B_EOT, B_N
};

static ac_tokenizer_t *bpe_vocab(const char **merges, int n_merges, const char *pre) {
  const char *text[B_N] = {"a",    "b",     "c",  G,   C,    "1",  "2",  "3",
                           "ab",   "bc",    G "a", C C, "12", "'",  "s",  "'s",
                           "it",   "i",     "t",  "<|im_start|>", "<|im_end|>", "<x>",
                           "<x><y>", "<|endoftext|>"};
  int32_t types[B_N];
  for (int i = 0; i < B_N; i++) types[i] = AC_TOKEN_NORMAL;
  types[B_IMS] = types[B_IME] = types[B_X] = types[B_XY] = types[B_EOT] = AC_TOKEN_CONTROL;
  ac_str_t *v = strs(text, B_N), *m = strs(merges, n_merges);
  ac_tokenizer_t *t = NULL;
  int rc = ac__tokenizer_new(AC_TOK_BPE, v, NULL, types, B_N, m, n_merges, pre, &t);
  free(v);
  free(m);
  CHECK(rc == 0, "bpe vocab: %s", ac_errmsg());
  return t;
}

static void test_bpe(void) {
  const char *merges1[] = {"b c", "a b", G " a", C " " C, "1 2", "' s", "i t"};
  ac_tokenizer_t *t = bpe_vocab(merges1, 7, "smollm");
  if (!t) return;
  CHECK(ac_tokenizer_kind(t) == AC_TOK_BPE && !ac_tokenizer_add_bos(t) && ac_tokenizer_bos(t) == -1,
        "BPE defaults");
  // Rank 0 (b c) first: [a, bc]; with the ranks swapped: [ab, c].
  CHECK(tok_eq(t, "abc", false, true, IDS(B_A, B_BC)), "merge by rank");
  const char *merges2[] = {"a b", "b c"};
  ac_tokenizer_t *t2 = bpe_vocab(merges2, 2, "smollm");
  CHECK(t2 && tok_eq(t2, "abc", false, true, IDS(B_AB, B_C)), "merge by rank, swapped");
  ac_tokenizer_destroy(&t2);
  // Bytes map to printable code points: ' ' -> Ġ, '\n' -> Ċ.
  CHECK(tok_eq(t, " a", false, true, IDS(B_GA)), "space as Ġ");
  // smollm splits every digit: no "12" although the merge exists.
  CHECK(tok_eq(t, "123", false, true, IDS(B_1, B_2, B_3)), "digits split");
  // Newlines: "\n\n" before a letter is cut so the last whitespace stays with what follows;
  // at the end the whole run is one word and merges.
  CHECK(tok_eq(t, "a\n\nb", false, true, IDS(B_A, B_NL, B_NL, B_B)), "newlines before text");
  CHECK(tok_eq(t, "a\n\n", false, true, IDS(B_A, B_NLNL)), "newlines at the end");
  CHECK(tok_eq(t, "it's", false, true, IDS(B_IT, B_QS)), "contraction");
  // Special tokens, longest first.
  CHECK(tok_eq(t, "<|im_start|>ab<|im_end|>", false, true, IDS(B_IMS, B_AB, B_IME)),
        "special split");
  CHECK(tok_eq(t, "<x><y>a<x>", false, true, IDS(B_XY, B_A, B_X)), "longest special first");
  // Without parse_special the marker is text; its characters have no tokens here.
  int32_t ids[64];
  int n = ac_tokenize(t, "<|im_start|>", 12, false, false, ids, 64);
  bool has = false;
  for (int i = 0; i < n; i++) has |= ids[i] == B_IMS;
  CHECK(n >= 0 && !has, "no special split without parse_special (n %d)", n);
  // Invalid UTF-8: still bytes, never a crash.
  n = ac_tokenize(t, "a\xff\xc3", 3, false, true, ids, 64);
  CHECK(n >= 1 && ids[0] == B_A, "invalid UTF-8 (n %d)", n);
  // A long run of spaces: no regex stack trouble.
  size_t big = 100000;
  char *sp = malloc(big + 2);
  memset(sp, ' ', big);
  sp[big] = 'a';
  sp[big + 1] = '\0';
  n = ac_tokenize(t, sp, big + 1, false, true, NULL, 0);
  CHECK(n == (int)big, "100000 spaces then a letter -> %d tokens", n);
  memset(sp, '\n', big);
  n = ac_tokenize(t, sp, big, false, true, NULL, 0);
  CHECK(n == (int)big / 2, "100000 newlines -> %d tokens", n);
  free(sp);

  // Pieces map code points back to bytes.
  CHECK(piece_eq(t, B_GA, false, " a"), "Ġa -> ' a'");
  CHECK(piece_eq(t, B_NLNL, false, "\n\n"), "ĊĊ -> newlines");
  CHECK(piece_eq(t, B_IME, false, "") && piece_eq(t, B_IME, true, "<|im_end|>"), "control piece");
  // End of generation: control tokens with end-of-turn names, plus eos/eot.
  CHECK(ac_tokenizer_is_eog(t, B_IME) && ac_tokenizer_is_eog(t, B_EOT), "eog by name");
  CHECK(!ac_tokenizer_is_eog(t, B_IMS) && !ac_tokenizer_is_eog(t, B_A), "not eog");
  CHECK(ac__tokenizer_set_special(t, B_IMS, B_IME, B_X, -1, -1, 1, -1) == 0, "set_special");
  CHECK(ac_tokenizer_is_eog(t, B_X), "eot is eog");
  CHECK(tok_eq(t, "a", true, true, IDS(B_IMS, B_A)), "BOS");
  ac_tokenizer_destroy(&t);

  // The gpt-2 pre-tokenizer keeps digits together.
  t = bpe_vocab(merges1, 7, "gpt-2");
  CHECK(t && tok_eq(t, "123", false, true, IDS(B_12, B_3)), "gpt-2: digits merge");
  ac_tokenizer_destroy(&t);
  // llama3: numbers in groups of three, and a word that is a token skips the merges.
  t = bpe_vocab(merges1, 7, "llama-bpe");
  CHECK(t && tok_eq(t, "abc", false, true, IDS(B_A, B_BC)), "llama3");
  CHECK(t && !ac_tokenizer_add_bos(t), "no BOS token, so none is added");
  CHECK(t && ac__tokenizer_set_special(t, B_IMS, -1, -1, -1, -1, -1, -1) == 0 &&
            ac_tokenizer_add_bos(t),
        "llama3 adds BOS by default");
  ac_tokenizer_destroy(&t);
  t = bpe_vocab(merges1, 7, "default");
  CHECK(t && tok_eq(t, "123", false, true, IDS(B_12, B_3)), "default pre-tokenizer");
  ac_tokenizer_destroy(&t);

  const char *text[1] = {"a"};
  ac_str_t *v = strs(text, 1);
  CHECK(ac__tokenizer_new(AC_TOK_BPE, v, NULL, NULL, 1, NULL, 0, "no-such-pre", &t) ==
                AC_EUNSUPPORTED && t == NULL,
        "unknown pre-tokenizer");
  CHECK(strstr(ac_errmsg(), "no-such-pre") != NULL, "message names it: %s", ac_errmsg());
  CHECK(ac__tokenizer_new(AC_TOK_BPE, v, NULL, NULL, 0, NULL, 0, "gpt-2", &t) == AC_EFORMAT,
        "empty vocabulary");
  free(v);
}

// --- GGUF metadata ---------------------------------------------------------

static char tmp_path[64];

static int write_vocab(const char *model, int n_scores, const char *pre, const char *tmpl,
                       bool add_bos_false) {
  const char *text[6] = {"<unk>", "<s>", "</s>", SP, "a", SP "a"};
  ac_str_t *v = strs(text, 6);
  float scores[6] = {0, 0, 0, -1, -2, -0.5f};
  int32_t types[6] = {2, 3, 3, 1, 1, 1};
  ac_str_t merge = {SP " a", strlen(SP " a")};
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  int rc = ac_gguf_set_str(w, "general.architecture", "llama");
  if (model) rc |= ac_gguf_set_str(w, "tokenizer.ggml.model", model);
  rc |= ac_gguf_set_arr_str(w, "tokenizer.ggml.tokens", v, 6);
  rc |= ac_gguf_set_arr(w, "tokenizer.ggml.scores", AC_GGUF_FLOAT32, scores, (uint64_t)n_scores);
  rc |= ac_gguf_set_arr(w, "tokenizer.ggml.token_type", AC_GGUF_INT32, types, 6);
  rc |= ac_gguf_set_arr_str(w, "tokenizer.ggml.merges", &merge, 1);
  rc |= ac_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
  rc |= ac_gguf_set_u32(w, "tokenizer.ggml.eot_token_id", 1000);  // out of range: ignored
  if (add_bos_false) rc |= ac_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", false);
  if (pre) rc |= ac_gguf_set_str(w, "tokenizer.ggml.pre", pre);
  if (tmpl) rc |= ac_gguf_set_str(w, "tokenizer.chat_template", tmpl);
  if (rc == 0) rc = ac_gguf_write(w, tmp_path);
  ac_gguf_writer_destroy(&w);
  free(v);
  return rc;
}

static int open_tok(ac_tokenizer_t **t) {
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(tmp_path, &g);
  if (rc < 0) return rc;
  rc = ac_tokenizer_from_gguf(g, t);
  ac_gguf_close(&g);
  return rc;
}

static void test_gguf(void) {
  const char *dir = getenv("TMPDIR");
  snprintf(tmp_path, sizeof tmp_path, "%s/ac_tok_XXXXXX", dir && strlen(dir) < 40 ? dir : "/tmp");
  int fd = mkstemp(tmp_path);
  if (fd < 0) {
    CHECK(0, "mkstemp");
    return;
  }
  close(fd);
  ac_tokenizer_t *t = NULL;

  CHECK(write_vocab("llama", 6, NULL, NULL, false) == 0, "write: %s", ac_errmsg());
  CHECK(open_tok(&t) == 0, "open: %s", ac_errmsg());
  if (t) {
    CHECK(ac_tokenizer_n_vocab(t) == 6 && ac_tokenizer_kind(t) == AC_TOK_SPM, "spm from gguf");
    CHECK(ac_tokenizer_bos(t) == 1 && ac_tokenizer_eos(t) == 2 && ac_tokenizer_add_bos(t),
          "ids and defaults");
    CHECK(tok_eq(t, "a a", true, true, IDS(1, 5, 5)), "tokenize from gguf");
    ac_tokenizer_destroy(&t);
  }
  CHECK(write_vocab("gpt2", 6, "smollm", NULL, true) == 0, "write");
  CHECK(open_tok(&t) == 0 && t && ac_tokenizer_kind(t) == AC_TOK_BPE && !ac_tokenizer_add_bos(t),
        "bpe from gguf: %s", ac_errmsg());
  ac_tokenizer_destroy(&t);

  CHECK(write_vocab("llama", 5, NULL, NULL, false) == 0 && open_tok(&t) == AC_EFORMAT,
        "scores vs tokens length");
  CHECK(write_vocab("bert", 6, NULL, NULL, false) == 0 && open_tok(&t) == AC_EUNSUPPORTED,
        "unknown model");
  CHECK(write_vocab(NULL, 6, NULL, NULL, false) == 0 && open_tok(&t) == AC_ENOTFOUND,
        "no tokenizer.ggml.model");
  CHECK(write_vocab("gpt2", 6, "mystery", NULL, false) == 0 && open_tok(&t) == AC_EUNSUPPORTED,
        "unknown pre");
  CHECK(t == NULL, "nothing returned on failure");

  // Chat templates from the file.
  ac_gguf_t *g = NULL;
  ac_chat_kind_t kind;
  CHECK(write_vocab("llama", 6, NULL, "{{ messages }} whatever", false) == 0, "write");
  CHECK(ac_gguf_open(tmp_path, &g) == 0 && ac_chat_detect(g, &kind) == AC_EUNSUPPORTED,
        "unknown template");
  ac_gguf_close(&g);
  CHECK(write_vocab("llama", 6, NULL, NULL, false) == 0, "write");
  CHECK(ac_gguf_open(tmp_path, &g) == 0 && ac_chat_detect(g, &kind) == AC_ENOTFOUND,
        "no template");
  ac_gguf_close(&g);
  CHECK(write_vocab("llama", 6, NULL, "{{ '<|im_start|>' }}", false) == 0, "write");
  CHECK(ac_gguf_open(tmp_path, &g) == 0 && ac_chat_detect(g, &kind) == 0 &&
            kind == AC_CHAT_CHATML,
        "chatml from file");
  ac_gguf_close(&g);
  unlink(tmp_path);
}

// --- chat ------------------------------------------------------------------

static const char smol_tmpl[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

static bool fmt_eq(ac_chat_kind_t k, const ac_chat_msg_t *m, size_t n, bool add,
                   const char *sys, const char *want) {
  char *out = NULL;
  int rc = ac_chat_format(k, m, n, add, sys, &out);
  bool ok = rc == 0 && out && strcmp(out, want) == 0;
  if (!ok) fprintf(stderr, "  got (rc %d) [%s]\n  want [%s]\n", rc, out ? out : "", want);
  free(out);
  return ok;
}

static void test_chat(void) {
  CHECK(ac_chat_detect_text(smol_tmpl, strlen(smol_tmpl)) == AC_CHAT_CHATML, "chatml");
  CHECK(ac_chat_detect_text("<|start_header_id|>", 19) == AC_CHAT_LLAMA3, "llama3");
  CHECK(ac_chat_detect_text("{{ '[INST] ' }}", 15) == AC_CHAT_LLAMA2, "llama2");
  CHECK(ac_chat_detect_text("{{ x }}", 7) == AC_CHAT_NONE, "unknown");
  CHECK(strcmp(ac_chat_kind_name(AC_CHAT_LLAMA3), "llama3") == 0, "name");

  char *sys = NULL;
  CHECK(ac_chat_default_system(smol_tmpl, strlen(smol_tmpl), &sys) == 0 && sys &&
            strcmp(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging "
                        "Face") == 0,
        "SmolLM2 default system: %s", sys ? sys : "(none)");
  // Qwen-style: the first literal splices in a message and is skipped; escaped newline.
  const char *qwen = "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
                     "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant."
                     "<|im_end|>\\n' }}";
  char *qs = NULL;
  CHECK(ac_chat_default_system(qwen, strlen(qwen), &qs) == 0 && qs &&
            strcmp(qs, "You are Qwen, a helpful assistant.") == 0,
        "qwen default system: %s", qs ? qs : "(none)");
  free(qs);
  qs = (char *)1;
  CHECK(ac_chat_default_system("{{ '<|im_start|>' }}", 19, &qs) == 0 && qs == NULL, "none");

  ac_chat_msg_t user_only[] = {{"user", "Hi there"}};
  CHECK(fmt_eq(AC_CHAT_CHATML, user_only, 1, true, sys,
               "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
               "<|im_start|>assistant\n"),
        "chatml with default system");
  ac_chat_msg_t conv[] = {{"system", "Be brief."}, {"user", " Q1 "}, {"assistant", "A1\n"},
                          {"user", "Q2"}};
  CHECK(fmt_eq(AC_CHAT_CHATML, conv, 4, false, sys,
               "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Q1 <|im_end|>\n"
               "<|im_start|>assistant\nA1\n<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"),
        "chatml conversation");
  CHECK(fmt_eq(AC_CHAT_CHATML, NULL, 0, false, sys, ""), "chatml empty");
  CHECK(fmt_eq(AC_CHAT_LLAMA3, conv, 4, true, NULL,
               "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "llama3 (content trimmed, no leading BOS)");
  CHECK(fmt_eq(AC_CHAT_LLAMA2, conv, 4, true, NULL,
               "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Q1 [/INST] A1 </s><s>[INST] Q2 [/INST]"),
        "llama2 with system");
  CHECK(fmt_eq(AC_CHAT_LLAMA2, user_only, 1, true, NULL, "[INST] Hi there [/INST]"), "llama2");
  ac_chat_msg_t bad[] = {{"user", "a"}, {"user", "b"}};
  char *out = NULL;
  CHECK(ac_chat_format(AC_CHAT_LLAMA2, bad, 2, true, NULL, &out) == AC_EINVAL && !out,
        "llama2 roles must alternate");
  CHECK(ac_chat_format(AC_CHAT_NONE, user_only, 1, true, NULL, &out) == AC_EUNSUPPORTED,
        "unknown template kind");
  ac_chat_msg_t null_msg[] = {{"user", NULL}};
  CHECK(ac_chat_format(AC_CHAT_CHATML, null_msg, 1, true, NULL, &out) == AC_EINVAL, "NULL content");
  free(sys);
}

// --- a real vocabulary (optional) ------------------------------------------

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void test_smollm(void) {
  const char *cache = getenv("AC_CACHE");
  char path[512];
  if (cache) snprintf(path, sizeof path, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
  else snprintf(path, sizeof path, "%s/.cache/agentcompress/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                getenv("HOME") ? getenv("HOME") : "/root");
  if (access(path, R_OK) != 0) {
    printf("skip: %s not found\n", path);
    return;
  }
  ac_gguf_t *g = NULL;
  ac_tokenizer_t *t = NULL;
  double t0 = now_ms();
  int rc = ac_gguf_open(path, &g);
  if (rc == 0) rc = ac_tokenizer_from_gguf(g, &t);
  double t_load = now_ms() - t0;
  CHECK(rc == 0, "SmolLM2 tokenizer: %s", ac_errmsg());
  if (rc == 0) {
    CHECK(ac_tokenizer_n_vocab(t) == 49152 && ac_tokenizer_eos(t) == 2, "SmolLM2 vocabulary");
    CHECK(ac_tokenizer_is_eog(t, 2) && ac_tokenizer_is_eog(t, 0) && !ac_tokenizer_is_eog(t, 1),
          "SmolLM2 eog: <|im_end|> and <|endoftext|>");
    // Ids checked against llama.cpp (tests/py/test_tokenizer.py does many more).
    CHECK(tok_eq(t, "Hello world! It's 12345", false, true,
                 IDS(19556, 905, 17, 657, 506, 216, 33, 34, 35, 36, 37)),
          "SmolLM2 ids");
    // Speed: ~10 KB of mixed text.
    static const char chunk[] = "The quick brown fox, aged 12, jumps over 3 lazy dogs!\n"
                                "  def f(x): return x * 2  # café 日本語 🎉\n";
    size_t cl = strlen(chunk), reps = 10240 / cl + 1, len = cl * reps;
    char *text = malloc(len + 1);
    for (size_t i = 0; i < reps; i++) memcpy(text + i * cl, chunk, cl);
    text[len] = '\0';
    int32_t *ids = malloc(len * sizeof *ids);
    double best = 1e9;
    int n = 0;
    for (int r = 0; r < 5; r++) {
      double s = now_ms();
      n = ac_tokenize(t, text, len, false, true, ids, (int)len);
      double e = now_ms() - s;
      if (e < best) best = e;
    }
    printf("SmolLM2: load %.1f ms; %zu bytes -> %d tokens in %.2f ms\n", t_load, len, n, best);
    CHECK(n > 0 && best < 50.0, "10 KB in %.2f ms", best);
    free(ids);
    free(text);

    ac_chat_kind_t kind;
    CHECK(ac_chat_detect(g, &kind) == 0 && kind == AC_CHAT_CHATML, "SmolLM2 template is ChatML");
    ac_str_t tmpl;
    char *sys = NULL;
    CHECK(ac_gguf_get_str(g, "tokenizer.chat_template", &tmpl) == 0 &&
              ac_chat_default_system(tmpl.ptr, tmpl.len, &sys) == 0 && sys &&
              strstr(sys, "SmolLM") != NULL,
          "SmolLM2 default system");
    free(sys);
  }
  ac_tokenizer_destroy(&t);
  ac_gguf_close(&g);
}

int main(void) {
  test_spm();
  test_bpe();
  test_gguf();
  test_chat();
  test_smollm();
  return check_report();
}
