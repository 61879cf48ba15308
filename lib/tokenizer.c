// tokenizer.c - SentencePiece-style and byte-level BPE tokenizers read from GGUF metadata.
//
// Both kinds follow llama.cpp's tokenizer step for step, because the ids we produce must equal
// the ids llama.cpp produces for the same file and text (the models were run through it, and our
// reference tests compare against it):
//  1. Special tokens (control, user-defined, unknown) are cut out of the text first, longest
//     token first; control and unknown ones only when parse_special is true.
//  2. Each remaining text fragment is tokenized on its own:
//     SPM: optional leading space, ' ' -> U+2581, split into UTF-8 characters, then repeatedly
//          merge the adjacent pair whose concatenation is the vocabulary token with the highest
//          score (ties: leftmost); pieces that are not tokens become <0xXX> byte tokens.
//     BPE: split into words by the pre-tokenizer regexes, map each word's bytes to printable
//          code points (GPT-2's byte-to-unicode table), split into characters, then repeatedly
//          merge the adjacent pair with the lowest merge rank (ties: leftmost).
// Vocabulary and merge lookups are open-addressing hash tables over (pointer, length) strings.
#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "error.h"
#include "log.h"

#define MAX_REGEX 4

// --- data ------------------------------------------------------------------

typedef struct {
  uint32_t off;   // text at t->text + off, NUL-terminated
  uint32_t len;
  float score;
  uint8_t type;   // AC_TOKEN_*; 0 for a type we do not know (llama.cpp's "undefined")
} tok_t;

typedef struct {
  uint32_t a_off, a_len;  // "a b" split at the first space after the first byte
  uint32_t b_off, b_len;  // both into t->merge_text
} merge_t;

struct ac_tokenizer {
  int refs;           // owners (ac_tokenizer_ref); freed when the last one lets go
  uint8_t digest[32]; // SHA-256 of the tokenizer.* metadata it was built from (from_gguf only)
  ac_tok_kind_t kind;
  int32_t n_vocab;
  tok_t *toks;        // (n_vocab)
  char *text;         // all token texts, NUL-separated
  int32_t *tok_slots; // hash slots holding token ids, -1 empty; (tok_mask + 1)
  uint32_t tok_mask;

  int32_t n_merges;
  merge_t *merges;      // (n_merges); rank = index
  char *merge_text;
  int32_t *merge_slots; // hash slots holding merge ranks, -1 empty; (merge_mask + 1)
  uint32_t merge_mask;

  int32_t *special;   // control, user-defined and unknown ids, longest text first
  int32_t n_special;
  uint8_t *eog;       // (n_vocab) 1 for end-of-generation tokens

  int32_t bos, eos, eot, unk, pad;  // -1: none
  bool add_bos;
  bool add_space_prefix;  // SPM: prefix the text (and each fragment after a special) with ' '
  bool ignore_merges;     // BPE (llama3): a word that is a whole token is taken as is

  int32_t byte_tok[256];  // SPM byte fallback: id of "<0xXX>" or of the raw byte; -1 if none

  // BPE: GPT-2's reversible byte <-> printable code point table.
  uint8_t byte_utf8[256][2];
  uint8_t byte_utf8_len[256];
  int16_t cp_byte[324];   // code point -> byte, -1 when the code point stands for no byte

  char pre[64];           // pre-tokenizer name
  pcre2_code *re[MAX_REGEX];
  int n_re;
};

// --- small helpers ---------------------------------------------------------

// Bytes in the UTF-8 sequence that starts with `c`, judged from its high nibble only, as
// llama.cpp does: stray continuation bytes count as one-byte characters.
static size_t utf8_len(unsigned char c) {
  static const uint8_t lut[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lut[c >> 4];
}

static uint64_t hash_bytes(const char *s, size_t n, uint64_t h) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ull;  // FNV-1a, 64-bit
  }
  return h;
}

#define HASH_SEED 14695981039346656037ull

static uint64_t hash_pair(const char *a, size_t an, const char *b, size_t bn) {
  uint64_t h = hash_bytes(a, an, HASH_SEED);
  h = (h ^ 0x1ff) * 1099511628211ull;  // separator, so ("ab","c") and ("a","bc") differ
  return hash_bytes(b, bn, h);
}

// Grows *p (of *cap elements of `elem` bytes) to hold at least `need` elements.
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need) c *= 2;
  if (c > SIZE_MAX / elem) return ac_error(AC_ENOMEM, "tokenizer: buffer of %zu elements", c);
  void *q = realloc(*p, c * elem);
  if (!q) return ac_error(AC_ENOMEM, "tokenizer: out of memory (%zu bytes)", c * elem);
  *p = q;
  *cap = c;
  return 0;
}

static uint32_t table_size(size_t n) {
  uint32_t c = 16;
  while (c < 2 * n) c *= 2;
  return c;
}

// --- vocabulary lookup -----------------------------------------------------

static int32_t find_token(const ac_tokenizer_t *t, const char *s, size_t n) {
  uint32_t i = (uint32_t)hash_bytes(s, n, HASH_SEED) & t->tok_mask;
  for (;;) {
    int32_t id = t->tok_slots[i];
    if (id < 0) return -1;
    const tok_t *k = &t->toks[id];
    if (k->len == n && memcmp(t->text + k->off, s, n) == 0) return id;
    i = (i + 1) & t->tok_mask;
  }
}

static int32_t find_merge(const ac_tokenizer_t *t, const char *a, size_t an, const char *b,
                          size_t bn) {
  if (!t->merge_slots) return -1;
  uint32_t i = (uint32_t)hash_pair(a, an, b, bn) & t->merge_mask;
  for (;;) {
    int32_t r = t->merge_slots[i];
    if (r < 0) return -1;
    const merge_t *m = &t->merges[r];
    if (m->a_len == an && m->b_len == bn && memcmp(t->merge_text + m->a_off, a, an) == 0 &&
        memcmp(t->merge_text + m->b_off, b, bn) == 0)
      return r;
    i = (i + 1) & t->merge_mask;
  }
}

// --- pre-tokenizers --------------------------------------------------------
// The regex lists llama.cpp uses for each `tokenizer.ggml.pre` name. Each regex splits every
// current piece into its matches and the text between them; the next regex then works on
// those pieces. We run them with PCRE2 in UTF + UCP mode, where \p{L}, \p{N}, \p{P} and \s
// have their Unicode meaning, as in llama.cpp's own implementations of these patterns.

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_LLAMA3                                                                         \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                          \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
  "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct {
  const char *names;  // '|'-separated names
  bool ignore_merges;
  bool add_bos;       // default for tokenizer.ggml.add_bos_token
  const char *re[MAX_REGEX];
} pre_def_t;

static const pre_def_t pre_defs[] = {
    // What llama.cpp uses when the file names no pre-tokenizer.
    {"default", false, false,
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
    {"gpt-2|phi-2", false, false, {RE_GPT2}},
    {"smollm|starcoder|refact|command-r|codeshell|exaone|minerva-7b", false, false,
     {"\\p{N}", RE_GPT2}},
    {"llama3|llama-v3|llama-bpe|falcon3", true, true, {RE_LLAMA3}},
    {"qwen2|deepseek-r1-qwen", false, false, {RE_QWEN2}},
};

static bool name_in(const char *names, const char *name) {
  size_t n = strlen(name);
  for (const char *p = names; *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && memcmp(p, name, n) == 0) return true;
    if (!bar) break;
    p = bar + 1;
  }
  return false;
}

// The code points llama.cpp counts as whitespace (Unicode's White_Space property). PCRE2's \s
// also matches U+180E (MONGOLIAN VOWEL SEPARATOR, whitespace only before Unicode 6.3), so the
// patterns get this explicit set in place of \s and \S.
#define WS_SET \
  "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

// Rewrites \s and \S in `re` as WS_SET classes, into out (cap bytes). Returns false if too long.
static bool rewrite_ws(const char *re, char *out, size_t cap) {
  size_t n = 0;
  bool in_class = false;
  for (const char *p = re; *p; p++) {
    const char *add = NULL;
    char pair[3] = {p[0], 0, 0};
    if (p[0] == '\\' && p[1]) {
      if (p[1] == 's') add = in_class ? WS_SET : "[" WS_SET "]";
      else if (p[1] == 'S' && !in_class) add = "[^" WS_SET "]";
      else {
        pair[1] = p[1];
        add = pair;
      }
      p++;
    } else {
      if (p[0] == '[') in_class = true;
      else if (p[0] == ']') in_class = false;
      add = pair;
    }
    size_t l = strlen(add);
    if (n + l + 1 > cap) return false;
    memcpy(out + n, add, l);
    n += l;
  }
  out[n] = '\0';
  return true;
}

static int compile_pre(ac_tokenizer_t *t, const char *pre) {
  const pre_def_t *def = NULL;
  for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++)
    if (name_in(pre_defs[i].names, pre)) def = &pre_defs[i];
  if (!def)
    return ac_error(AC_EUNSUPPORTED,
                    "tokenizer: unknown pre-tokenizer '%s' (tokenizer.ggml.pre); known: default, "
                    "gpt-2, smollm, llama3/llama-bpe, qwen2 and their aliases",
                    pre);
  snprintf(t->pre, sizeof t->pre, "%s", pre);
  t->ignore_merges = def->ignore_merges;
  t->add_bos = def->add_bos;
  for (int i = 0; i < MAX_REGEX && def->re[i]; i++) {
    int err;
    PCRE2_SIZE at;
    char pat[1024];
    if (!rewrite_ws(def->re[i], pat, sizeof pat))
      return ac_error(AC_EUNSUPPORTED, "tokenizer: pre-tokenizer '%s': regex %d too long", pre, i);
    // MATCH_INVALID_UTF: invalid UTF-8 in the input is never matched (it ends up in a piece
    // of its own) instead of making every match fail.
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at,
                                   NULL);
    if (!re) {
      PCRE2_UCHAR msg[160];
      pcre2_get_error_message(err, msg, sizeof msg);
      return ac_error(AC_EUNSUPPORTED, "tokenizer: pre-tokenizer '%s': regex %d: %s at %zu", pre,
                      i, (const char *)msg, (size_t)at);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // optional: the interpreter is the fallback
    t->re[t->n_re++] = re;
  }
  return 0;
}

// --- construction ----------------------------------------------------------

// GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68 bytes are mapped in
// order to code points 256, 257, ... so that every byte is a visible character.
static void init_byte_map(ac_tokenizer_t *t) {
  int next = 256;
  for (int i = 0; i < 324; i++) t->cp_byte[i] = -1;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = printable ? b : next++;
    t->cp_byte[cp] = (int16_t)b;
    if (cp < 0x80) {
      t->byte_utf8[b][0] = (uint8_t)cp;
      t->byte_utf8_len[b] = 1;
    } else {
      t->byte_utf8[b][0] = (uint8_t)(0xC0 | (cp >> 6));
      t->byte_utf8[b][1] = (uint8_t)(0x80 | (cp & 0x3F));
      t->byte_utf8_len[b] = 2;
    }
  }
}

typedef struct {
  uint32_t len;
  int32_t id;
} len_id_t;

static int cmp_len_id(const void *a, const void *b) {
  const len_id_t *x = a, *y = b;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

// End-of-turn markers of the common chat formats. A chat model ends its answer with one of
// these, which is not always the file's eos (SmolLM2: eos is <|im_end|>, but a base-model habit
// of writing <|endoftext|> must stop generation too). llama.cpp keeps a similar list.
static bool is_eog_text(const char *s) {
  static const char *names[] = {"<|im_end|>", "<|eot_id|>",    "<|end|>",
                                "<|endoftext|>", "</s>",       "<|eom_id|>",
                                "<end_of_turn>", "<|end_of_text|>"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i]) == 0) return true;
  return false;
}

static void update_eog(ac_tokenizer_t *t) {
  for (int32_t i = 0; i < t->n_vocab; i++)
    t->eog[i] = t->toks[i].type == AC_TOKEN_CONTROL && is_eog_text(t->text + t->toks[i].off);
  if (t->eos >= 0) t->eog[t->eos] = 1;
  if (t->eot >= 0) t->eog[t->eot] = 1;
}

// Builds a tokenizer from in-memory arrays: `n` tokens with optional scores (NULL: all 0) and
// types (NULL: all normal); for BPE the merges ("a b") and the pre-tokenizer name (NULL:
// "default"). Special ids get llama.cpp's defaults (SPM: bos 1, eos 2, unk 0; BPE: none); set
// them with ac__tokenizer_set_special. ac_tokenizer_from_gguf is a thin layer over these two;
// the unit tests use them directly.
int ac__tokenizer_new(ac_tok_kind_t kind, const ac_str_t *tokens, const float *scores,
                      const int32_t *types, int32_t n, const ac_str_t *merges, int32_t n_merges,
                      const char *pre, ac_tokenizer_t **out) {
  int rc;
  if (!out) return ac_error(AC_EINVAL, "tokenizer: NULL output");
  *out = NULL;
  if (kind != AC_TOK_SPM && kind != AC_TOK_BPE)
    return ac_error(AC_EINVAL, "tokenizer: bad kind %d", (int)kind);
  if (n <= 0 || !tokens) return ac_error(AC_EFORMAT, "tokenizer: empty vocabulary");
  if (n_merges < 0 || (n_merges > 0 && !merges))
    return ac_error(AC_EINVAL, "tokenizer: bad merges (%d)", (int)n_merges);
  // Far beyond any real vocabulary; keeps the hash tables' sizes within 32 bits.
  if (n > (1 << 28) || n_merges > (1 << 28))
    return ac_error(AC_ERANGE, "tokenizer: %d tokens / %d merges is too many", (int)n,
                    (int)n_merges);

  ac_tokenizer_t *t = calloc(1, sizeof *t);
  if (!t) return ac_error(AC_ENOMEM, "tokenizer: out of memory");
  t->refs = 1;
  t->kind = kind;
  t->n_vocab = n;
  t->add_space_prefix = true;
  t->bos = t->eos = t->eot = t->unk = t->pad = -1;
  if (kind == AC_TOK_SPM) {
    t->add_bos = true;
    t->bos = n > 1 ? 1 : -1;
    t->eos = n > 2 ? 2 : -1;
    t->unk = 0;
  }
  init_byte_map(t);

  // Token texts, copied into one block. An empty text gets llama.cpp's placeholder
  // "[EMPTY_<id>]", so that lookups behave as there.
  size_t total = 0;
  for (int32_t i = 0; i < n; i++) {
    if (tokens[i].len > UINT32_MAX / 2 || (tokens[i].len && !tokens[i].ptr)) {
      rc = ac_error(AC_EFORMAT, "tokenizer: token %d has a bad length", (int)i);
      goto fail;
    }
    total += (tokens[i].len ? tokens[i].len : 24) + 1;
  }
  if (total > UINT32_MAX) {
    rc = ac_error(AC_EFORMAT, "tokenizer: token texts too large (%zu bytes)", total);
    goto fail;
  }
  t->toks = calloc((size_t)n, sizeof *t->toks);
  t->text = malloc(total);
  t->eog = calloc((size_t)n, 1);
  t->tok_mask = table_size((size_t)n) - 1;
  t->tok_slots = malloc(((size_t)t->tok_mask + 1) * sizeof *t->tok_slots);
  if (!t->toks || !t->text || !t->eog || !t->tok_slots) {
    rc = ac_error(AC_ENOMEM, "tokenizer: out of memory for %d tokens", (int)n);
    goto fail;
  }
  memset(t->tok_slots, 0xff, ((size_t)t->tok_mask + 1) * sizeof *t->tok_slots);
  size_t off = 0;
  for (int32_t i = 0; i < n; i++) {
    tok_t *k = &t->toks[i];
    k->off = (uint32_t)off;
    if (tokens[i].len) {
      memcpy(t->text + off, tokens[i].ptr, tokens[i].len);
      k->len = (uint32_t)tokens[i].len;
    } else {
      k->len = (uint32_t)snprintf(t->text + off, 24, "[EMPTY_%d]", (int)i);
    }
    t->text[off + k->len] = '\0';
    off += k->len + 1;
    k->score = scores ? scores[i] : 0.0f;
    int32_t ty = types ? types[i] : AC_TOKEN_NORMAL;
    k->type = ty >= AC_TOKEN_NORMAL && ty <= AC_TOKEN_BYTE ? (uint8_t)ty : 0;

    // Insert; a duplicate text maps to the later id, as in llama.cpp's token_to_id map.
    const char *s = t->text + k->off;
    uint32_t h = (uint32_t)hash_bytes(s, k->len, HASH_SEED) & t->tok_mask;
    for (;;) {
      int32_t id = t->tok_slots[h];
      if (id < 0 ||
          (t->toks[id].len == k->len && memcmp(t->text + t->toks[id].off, s, k->len) == 0)) {
        t->tok_slots[h] = i;
        break;
      }
      h = (h + 1) & t->tok_mask;
    }
  }

  // Special tokens, longest first: the partitioning step cuts them out in this order.
  int32_t n_special = 0;
  for (int32_t i = 0; i < n; i++) {
    uint8_t ty = t->toks[i].type;
    if (ty == AC_TOKEN_CONTROL || ty == AC_TOKEN_USER_DEFINED || ty == AC_TOKEN_UNKNOWN)
      n_special++;
  }
  if (n_special > 0) {
    len_id_t *order = malloc((size_t)n_special * sizeof *order);
    t->special = malloc((size_t)n_special * sizeof *t->special);
    if (!order || !t->special) {
      free(order);
      rc = ac_error(AC_ENOMEM, "tokenizer: out of memory");
      goto fail;
    }
    int32_t j = 0;
    for (int32_t i = 0; i < n; i++) {
      uint8_t ty = t->toks[i].type;
      if (ty == AC_TOKEN_CONTROL || ty == AC_TOKEN_USER_DEFINED || ty == AC_TOKEN_UNKNOWN)
        order[j++] = (len_id_t){t->toks[i].len, i};
    }
    qsort(order, (size_t)n_special, sizeof *order, cmp_len_id);
    for (int32_t i = 0; i < n_special; i++) t->special[i] = order[i].id;
    free(order);
    t->n_special = n_special;
  }

  // SPM byte fallback table.
  for (int b = 0; b < 256; b++) {
    char hex[8];
    snprintf(hex, sizeof hex, "<0x%02X>", b);
    int32_t id = find_token(t, hex, 6);
    if (id < 0) {
      char c = (char)b;
      id = find_token(t, &c, 1);
    }
    t->byte_tok[b] = id;
  }

  if (kind == AC_TOK_BPE) {
    rc = compile_pre(t, pre && *pre ? pre : "default");
    if (rc < 0) goto fail;

    // Merges: "a b" split at the first space after the first byte; the rank is the index. A
    // repeated pair keeps its first (best) rank; a string without a space merges nothing.
    size_t mtotal = 0;
    for (int32_t i = 0; i < n_merges; i++) {
      if (merges[i].len > UINT32_MAX / 2 || (merges[i].len && !merges[i].ptr)) {
        rc = ac_error(AC_EFORMAT, "tokenizer: merge %d has a bad length", (int)i);
        goto fail;
      }
      mtotal += merges[i].len + 1;
    }
    if (mtotal > UINT32_MAX) {
      rc = ac_error(AC_EFORMAT, "tokenizer: merges too large (%zu bytes)", mtotal);
      goto fail;
    }
    t->n_merges = n_merges;
    t->merges = calloc((size_t)n_merges + 1, sizeof *t->merges);
    t->merge_text = malloc(mtotal + 1);
    t->merge_mask = table_size((size_t)n_merges) - 1;
    t->merge_slots = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merge_slots);
    if (!t->merges || !t->merge_text || !t->merge_slots) {
      rc = ac_error(AC_ENOMEM, "tokenizer: out of memory for %d merges", (int)n_merges);
      goto fail;
    }
    memset(t->merge_slots, 0xff, ((size_t)t->merge_mask + 1) * sizeof *t->merge_slots);
    size_t moff = 0;
    for (int32_t i = 0; i < n_merges; i++) {
      const char *s = merges[i].ptr;
      size_t len = merges[i].len;
      const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
      if (!sp) continue;
      memcpy(t->merge_text + moff, s, len);
      merge_t *m = &t->merges[i];
      m->a_off = (uint32_t)moff;
      m->a_len = (uint32_t)(sp - s);
      m->b_off = (uint32_t)(moff + m->a_len + 1);
      m->b_len = (uint32_t)(len - m->a_len - 1);
      moff += len;
      const char *a = t->merge_text + m->a_off, *b = t->merge_text + m->b_off;
      uint32_t h = (uint32_t)hash_pair(a, m->a_len, b, m->b_len) & t->merge_mask;
      for (;;) {
        int32_t r = t->merge_slots[h];
        if (r < 0) {
          t->merge_slots[h] = i;
          break;
        }
        const merge_t *o = &t->merges[r];
        if (o->a_len == m->a_len && o->b_len == m->b_len &&
            memcmp(t->merge_text + o->a_off, a, m->a_len) == 0 &&
            memcmp(t->merge_text + o->b_off, b, m->b_len) == 0)
          break;
        h = (h + 1) & t->merge_mask;
      }
    }
  }

  update_eog(t);
  *out = t;
  return 0;

fail:
  ac_tokenizer_destroy(&t);
  return rc;
}

// Sets the special ids (-1: none) and flags (add_bos, add_space_prefix: -1 keeps the current
// value). An id outside the vocabulary is an error.
int ac__tokenizer_set_special(ac_tokenizer_t *t, int32_t bos, int32_t eos, int32_t eot,
                              int32_t unk, int32_t pad, int add_bos, int add_space_prefix) {
  if (!t) return ac_error(AC_EINVAL, "tokenizer: NULL");
  int32_t ids[5] = {bos, eos, eot, unk, pad};
  static const char *names[5] = {"bos", "eos", "eot", "unk", "pad"};
  for (int i = 0; i < 5; i++)
    if (ids[i] < -1 || ids[i] >= t->n_vocab)
      return ac_error(AC_ERANGE, "tokenizer: %s id %d outside the vocabulary of %d", names[i],
                      (int)ids[i], (int)t->n_vocab);
  t->bos = bos;
  t->eos = eos;
  t->eot = eot;
  t->unk = unk;
  t->pad = pad;
  if (add_bos >= 0) t->add_bos = add_bos != 0;
  if (add_space_prefix >= 0) t->add_space_prefix = add_space_prefix != 0;
  update_eog(t);
  return 0;
}

// --- reading GGUF metadata -------------------------------------------------

// An array kv, or NULL when absent (*rc = 0, or AC_ENOTFOUND if required) or not an array.
static const ac_gguf_kv_t *find_arr(const ac_gguf_t *g, const char *key, bool required,
                                    int *rc) {
  const ac_gguf_kv_t *kv = ac_gguf_find_kv(g, key);
  *rc = 0;
  if (!kv) {
    if (required) *rc = ac_error(AC_ENOTFOUND, "tokenizer: the file has no '%s'", key);
    return NULL;
  }
  if (kv->type != AC_GGUF_ARRAY) {
    *rc = ac_error(AC_EFORMAT, "tokenizer: '%s' is a %s, expected an array", key,
                   ac_gguf_vtype_name(kv->type));
    return NULL;
  }
  return kv;
}

// Reads an optional token id. Absent keeps *id; a negative signed value means "none"; a value
// past the vocabulary is ignored with a warning, as llama.cpp does (the default stays).
static int read_id(const ac_gguf_t *g, const char *key, int32_t n_vocab, int32_t *id) {
  const ac_gguf_kv_t *kv = ac_gguf_find_kv(g, key);
  if (!kv) return 0;
  if ((kv->type == AC_GGUF_INT8 || kv->type == AC_GGUF_INT16 || kv->type == AC_GGUF_INT32 ||
       kv->type == AC_GGUF_INT64) &&
      kv->v.i64 < 0) {
    *id = -1;
    return 0;
  }
  uint32_t v;
  int rc = ac_gguf_get_u32(g, key, &v);
  if (rc < 0) return ac_error(rc, "tokenizer: '%s' is not a token id", key);
  if (v >= (uint32_t)n_vocab) {
    AC_WARN("tokenizer: %s = %u is outside the vocabulary of %d tokens; ignored", key, v,
            (int)n_vocab);
    return 0;
  }
  *id = (int32_t)v;
  return 0;
}

static int read_flag(const ac_gguf_t *g, const char *key, int *flag) {
  bool b;
  int rc = ac_gguf_get_bool(g, key, &b);
  if (rc == AC_ENOTFOUND) return 0;
  if (rc < 0) return ac_error(rc, "tokenizer: '%s' is not a bool", key);
  *flag = b;
  return 0;
}

int ac_tokenizer_from_gguf(const ac_gguf_t *g, ac_tokenizer_t **out) {
  int rc;
  ac_tokenizer_t *t = NULL;
  ac_str_t *toks = NULL, *merges = NULL;
  float *scores = NULL;
  int32_t *types = NULL;
  char pre[64] = "";
  if (!out) return ac_error(AC_EINVAL, "tokenizer: NULL output");
  *out = NULL;
  if (!g) return ac_error(AC_EINVAL, "tokenizer: NULL file");

  ac_str_t model;
  rc = ac_gguf_get_str(g, "tokenizer.ggml.model", &model);
  if (rc == AC_ENOTFOUND)
    return ac_error(rc, "tokenizer: the file has no 'tokenizer.ggml.model' (no vocabulary)");
  if (rc < 0) return ac_error(rc, "tokenizer: 'tokenizer.ggml.model' is not a string");
  ac_tok_kind_t kind;
  if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) kind = AC_TOK_SPM;
  else if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0) kind = AC_TOK_BPE;
  else
    return ac_error(AC_EUNSUPPORTED,
                    "tokenizer: model '%.*s' is not supported (only 'llama' and 'gpt2')",
                    (int)(model.len > 64 ? 64 : model.len), model.ptr);

  const ac_gguf_kv_t *kv_tok = find_arr(g, "tokenizer.ggml.tokens", true, &rc);
  if (!kv_tok) return rc;
  if (kv_tok->arr_type != AC_GGUF_STRING || kv_tok->arr_n == 0 || kv_tok->arr_n > INT32_MAX / 2)
    return ac_error(AC_EFORMAT, "tokenizer: 'tokenizer.ggml.tokens' must be a non-empty array "
                    "of strings (got %llu of %s)",
                    (unsigned long long)kv_tok->arr_n, ac_gguf_vtype_name(kv_tok->arr_type));
  int32_t n = (int32_t)kv_tok->arr_n;

  const ac_gguf_kv_t *kv_sc = find_arr(g, "tokenizer.ggml.scores", false, &rc);
  if (rc < 0) return rc;
  const ac_gguf_kv_t *kv_ty = find_arr(g, "tokenizer.ggml.token_type", false, &rc);
  if (rc < 0) return rc;
  const ac_gguf_kv_t *kv_mg = find_arr(g, "tokenizer.ggml.merges", kind == AC_TOK_BPE, &rc);
  if (rc < 0) return rc;
  if (kv_sc && kv_sc->arr_n != (uint64_t)n)
    return ac_error(AC_EFORMAT, "tokenizer: %llu scores for %d tokens",
                    (unsigned long long)kv_sc->arr_n, (int)n);
  if (kv_ty && kv_ty->arr_n != (uint64_t)n)
    return ac_error(AC_EFORMAT, "tokenizer: %llu token types for %d tokens",
                    (unsigned long long)kv_ty->arr_n, (int)n);
  if (kv_mg && (kv_mg->arr_type != AC_GGUF_STRING || kv_mg->arr_n > INT32_MAX / 2))
    return ac_error(AC_EFORMAT, "tokenizer: 'tokenizer.ggml.merges' must be an array of strings");

  toks = malloc((size_t)n * sizeof *toks);
  if (!toks) {
    rc = ac_error(AC_ENOMEM, "tokenizer: out of memory");
    goto fail;
  }
  for (int32_t i = 0; i < n; i++)
    if ((rc = ac_gguf_arr_str(kv_tok, (uint64_t)i, &toks[i])) < 0) {
      rc = ac_error(rc, "tokenizer: token %d: not a string", (int)i);
      goto fail;
    }
  if (kv_sc) {
    scores = malloc((size_t)n * sizeof *scores);
    if (!scores) {
      rc = ac_error(AC_ENOMEM, "tokenizer: out of memory");
      goto fail;
    }
    for (int32_t i = 0; i < n; i++)
      if ((rc = ac_gguf_arr_f32(kv_sc, (uint64_t)i, &scores[i])) < 0) {
        rc = ac_error(rc, "tokenizer: score %d is not a number", (int)i);
        goto fail;
      }
  }
  if (kv_ty) {
    types = malloc((size_t)n * sizeof *types);
    if (!types) {
      rc = ac_error(AC_ENOMEM, "tokenizer: out of memory");
      goto fail;
    }
    for (int32_t i = 0; i < n; i++) {
      uint32_t v;
      if ((rc = ac_gguf_arr_u32(kv_ty, (uint64_t)i, &v)) < 0) {
        rc = ac_error(rc, "tokenizer: token type %d is not a small integer", (int)i);
        goto fail;
      }
      types[i] = v > 127 ? 0 : (int32_t)v;
    }
  }
  int32_t n_merges = 0;
  if (kv_mg) {
    n_merges = (int32_t)kv_mg->arr_n;
    merges = malloc(((size_t)n_merges + 1) * sizeof *merges);
    if (!merges) {
      rc = ac_error(AC_ENOMEM, "tokenizer: out of memory");
      goto fail;
    }
    for (int32_t i = 0; i < n_merges; i++)
      if ((rc = ac_gguf_arr_str(kv_mg, (uint64_t)i, &merges[i])) < 0) {
        rc = ac_error(rc, "tokenizer: merge %d: not a string", (int)i);
        goto fail;
      }
  }
  if (kind == AC_TOK_BPE) {
    ac_str_t p;
    rc = ac_gguf_get_str(g, "tokenizer.ggml.pre", &p);
    if (rc == 0) {
      if (p.len >= sizeof pre) {
        rc = ac_error(AC_EUNSUPPORTED, "tokenizer: unknown pre-tokenizer '%.40s...'", p.ptr);
        goto fail;
      }
      memcpy(pre, p.ptr, p.len);
      pre[p.len] = '\0';
    } else if (rc != AC_ENOTFOUND) {
      rc = ac_error(rc, "tokenizer: 'tokenizer.ggml.pre' is not a string");
      goto fail;
    }
    if (!pre[0]) AC_INFO("tokenizer: no tokenizer.ggml.pre; using the 'default' pre-tokenizer");
  }

  rc = ac__tokenizer_new(kind, toks, scores, types, n, merges, n_merges, pre, &t);
  if (rc < 0) goto fail;

  int32_t bos = t->bos, eos = t->eos, eot = t->eot, unk = t->unk, pad = t->pad;
  int add_bos = t->add_bos, add_space_prefix = t->add_space_prefix;
  if ((rc = read_id(g, "tokenizer.ggml.bos_token_id", n, &bos)) < 0 ||
      (rc = read_id(g, "tokenizer.ggml.eos_token_id", n, &eos)) < 0 ||
      (rc = read_id(g, "tokenizer.ggml.eot_token_id", n, &eot)) < 0 ||
      (rc = read_id(g, "tokenizer.ggml.unknown_token_id", n, &unk)) < 0 ||
      (rc = read_id(g, "tokenizer.ggml.padding_token_id", n, &pad)) < 0 ||
      (rc = read_flag(g, "tokenizer.ggml.add_bos_token", &add_bos)) < 0 ||
      (rc = read_flag(g, "tokenizer.ggml.add_space_prefix", &add_space_prefix)) < 0)
    goto fail;
  rc = ac__tokenizer_set_special(t, bos, eos, eot, unk, pad, add_bos, add_space_prefix);
  if (rc < 0) goto fail;

  free(toks);
  free(scores);
  free(types);
  free(merges);
  ac_tokenizer_digest(g, t->digest);
  *out = t;
  return 0;

fail:
  free(toks);
  free(scores);
  free(types);
  free(merges);
  ac_tokenizer_destroy(&t);
  return rc;
}

ac_tokenizer_t *ac_tokenizer_ref(ac_tokenizer_t *t) {
  t->refs++;
  return t;
}

// Key, type and value bytes of every tokenizer.* entry, in file order.
void ac_tokenizer_digest(const ac_gguf_t *g, uint8_t out[32]) {
  EVP_MD_CTX *h = EVP_MD_CTX_new();
  EVP_DigestInit_ex(h, EVP_sha256(), NULL);
  for (int64_t i = 0; i < ac_gguf_n_kv(g); i++) {
    const ac_gguf_kv_t *kv = ac_gguf_kv(g, i);
    if (strncmp(kv->key, "tokenizer.", 10) != 0) continue;
    EVP_DigestUpdate(h, kv->key, strlen(kv->key) + 1);
    EVP_DigestUpdate(h, &kv->type, sizeof kv->type);
    if (kv->type == AC_GGUF_STRING) {
      EVP_DigestUpdate(h, &kv->v.str.len, sizeof kv->v.str.len);
      EVP_DigestUpdate(h, kv->v.str.ptr, kv->v.str.len);
    } else if (kv->type == AC_GGUF_ARRAY) {
      EVP_DigestUpdate(h, &kv->arr_type, sizeof kv->arr_type);
      EVP_DigestUpdate(h, &kv->arr_n, sizeof kv->arr_n);
      if (kv->arr_type == AC_GGUF_STRING && kv->arr_n > 0) {
        // The strings lie in the mapping as the file stores them, one after another, each after
        // its 8-byte length: one range from the first length to the last byte covers them all.
        const ac_str_t *strs = kv->arr_data;
        const char *first = strs[0].ptr - sizeof(uint64_t), *end = strs[kv->arr_n - 1].ptr + strs[kv->arr_n - 1].len;
        EVP_DigestUpdate(h, first, (size_t)(end - first));
      } else if (kv->arr_type != AC_GGUF_STRING) {
        EVP_DigestUpdate(h, kv->arr_data, kv->arr_n * ac_gguf_vtype_size(kv->arr_type));
      }
    } else {
      EVP_DigestUpdate(h, &kv->v, sizeof kv->v);
    }
  }
  unsigned len = 32;
  EVP_DigestFinal_ex(h, out, &len);
  EVP_MD_CTX_free(h);
}

bool ac_tokenizer_matches(const ac_tokenizer_t *t, const ac_gguf_t *g) {
  uint8_t d[32];
  ac_tokenizer_digest(g, d);
  return memcmp(d, t->digest, sizeof d) == 0;
}

void ac_tokenizer_destroy(ac_tokenizer_t **self_p) {
  if (!self_p || !*self_p) return;
  ac_tokenizer_t *t = *self_p;
  *self_p = NULL;
  if (--t->refs > 0) return;
  for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
  free(t->toks);
  free(t->text);
  free(t->tok_slots);
  free(t->merges);
  free(t->merge_text);
  free(t->merge_slots);
  free(t->special);
  free(t->eog);
  free(t);
  *self_p = NULL;
}

// --- accessors -------------------------------------------------------------

ac_tok_kind_t ac_tokenizer_kind(const ac_tokenizer_t *t) { return t ? t->kind : AC_TOK_SPM; }
int32_t ac_tokenizer_n_vocab(const ac_tokenizer_t *t) { return t ? t->n_vocab : 0; }
int32_t ac_tokenizer_bos(const ac_tokenizer_t *t) { return t ? t->bos : -1; }
int32_t ac_tokenizer_eos(const ac_tokenizer_t *t) { return t ? t->eos : -1; }
// False when the vocabulary asks for BOS but has none, so callers that follow the model's wish
// do not fail on such a file.
bool ac_tokenizer_add_bos(const ac_tokenizer_t *t) { return t && t->add_bos && t->bos >= 0; }

bool ac_tokenizer_is_eog(const ac_tokenizer_t *t, int32_t id) {
  return t && id >= 0 && id < t->n_vocab && t->eog[id];
}

const char *ac_tokenizer_token_text(const ac_tokenizer_t *t, int32_t id) {
  if (!t || id < 0 || id >= t->n_vocab) return NULL;
  return t->text + t->toks[id].off;
}

int32_t ac_tokenizer_find(const ac_tokenizer_t *t, const char *text) {
  if (!t || !text) return -1;
  return find_token(t, text, strlen(text));
}

// --- the tokenizing session ------------------------------------------------
// Scratch state for one ac_tokenize call, so that a tokenizer can be shared by threads.

typedef struct {
  int32_t prev, next;  // neighbours in the chain, -1 at the ends
  uint32_t off, n;     // bytes [off, off + n) of the session buffer; n == 0 once merged away
} sym_t;

typedef struct {
  int32_t left, right;
  uint32_t size;  // left.n + right.n when pushed: the pair is stale once that changes
  double prio;    // higher merges first: SPM score, BPE -rank
} bigram_t;

typedef struct {
  size_t off, len;
} span_t;

typedef struct {
  int32_t tok;    // a special token id, or -1 for text
  size_t off, len;
} frag_t;

typedef struct {
  const ac_tokenizer_t *t;
  int32_t *ids;
  size_t n_ids, cap_ids;
  char *buf;  // the normalised (SPM) or byte-encoded (BPE) text being merged
  size_t cap_buf;
  sym_t *syms;
  size_t cap_syms;
  bigram_t *heap;
  size_t n_heap, cap_heap;
  span_t *spans[2];
  size_t cap_spans[2];
  pcre2_match_data *md;
} session_t;

static int push_id(session_t *s, int32_t id) {
  int rc = grow((void **)&s->ids, &s->cap_ids, s->n_ids + 1, sizeof *s->ids);
  if (rc < 0) return rc;
  s->ids[s->n_ids++] = id;
  return 0;
}

static bool bigram_before(const bigram_t *a, const bigram_t *b) {
  return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static int heap_push(session_t *s, bigram_t b) {
  int rc = grow((void **)&s->heap, &s->cap_heap, s->n_heap + 1, sizeof *s->heap);
  if (rc < 0) return rc;
  size_t i = s->n_heap++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!bigram_before(&b, &s->heap[p])) break;
    s->heap[i] = s->heap[p];
    i = p;
  }
  s->heap[i] = b;
  return 0;
}

static bigram_t heap_pop(session_t *s) {
  bigram_t top = s->heap[0], last = s->heap[--s->n_heap];
  size_t i = 0, n = s->n_heap;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && bigram_before(&s->heap[c + 1], &s->heap[c])) c++;
    if (!bigram_before(&s->heap[c], &last)) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n > 0) s->heap[i] = last;
  return top;
}

// Queues the pair (left, right) if it can merge: SPM when the concatenation is a token, BPE
// when the pair is a merge rule.
static int add_bigram(session_t *s, int32_t left, int32_t right) {
  if (left < 0 || right < 0) return 0;
  const ac_tokenizer_t *t = s->t;
  const sym_t *l = &s->syms[left], *r = &s->syms[right];
  bigram_t b = {left, right, l->n + r->n, 0};
  if (t->kind == AC_TOK_SPM) {
    int32_t id = find_token(t, s->buf + l->off, b.size);
    if (id < 0) return 0;
    b.prio = t->toks[id].score;
  } else {
    int32_t rank = find_merge(t, s->buf + l->off, l->n, s->buf + r->off, r->n);
    if (rank < 0) return 0;
    b.prio = -(double)rank;
  }
  return heap_push(s, b);
}

// Splits buf[0, len) into characters and merges them until no pair can merge.
static int merge_chars(session_t *s, size_t len) {
  int rc = grow((void **)&s->syms, &s->cap_syms, len, sizeof *s->syms);
  if (rc < 0) return rc;
  int32_t n = 0;
  for (size_t off = 0; off < len; n++) {
    size_t cl = utf8_len((unsigned char)s->buf[off]);
    if (cl > len - off) cl = len - off;
    s->syms[n] = (sym_t){n - 1, off + cl == len ? -1 : n + 1, (uint32_t)off, (uint32_t)cl};
    off += cl;
  }
  s->n_heap = 0;
  for (int32_t i = 1; i < n; i++)
    if ((rc = add_bigram(s, i - 1, i)) < 0) return rc;
  while (s->n_heap > 0) {
    bigram_t b = heap_pop(s);
    sym_t *l = &s->syms[b.left], *r = &s->syms[b.right];
    if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;  // stale
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) s->syms[r->next].prev = b.left;
    if ((rc = add_bigram(s, l->prev, b.left)) < 0 || (rc = add_bigram(s, b.left, l->next)) < 0)
      return rc;
  }
  return 0;
}

// --- SPM -------------------------------------------------------------------

static int spm_fragment(session_t *s, const char *text, size_t len, bool prefix_space) {
  const ac_tokenizer_t *t = s->t;
  // Each ' ' becomes the 3-byte U+2581, so the buffer needs at most 3 bytes per input byte.
  if (len > (SIZE_MAX - 3) / 3) return ac_error(AC_ERANGE, "tokenizer: text too long");
  int rc = grow((void **)&s->buf, &s->cap_buf, 3 * len + 3, 1);
  if (rc < 0) return rc;
  size_t n = 0;
  if (prefix_space) {
    memcpy(s->buf, "\xe2\x96\x81", 3);
    n = 3;
  }
  for (size_t i = 0; i < len; i++) {
    if (text[i] == ' ') {
      memcpy(s->buf + n, "\xe2\x96\x81", 3);
      n += 3;
    } else {
      s->buf[n++] = text[i];
    }
  }
  if (n == 0) return 0;
  if (n > UINT32_MAX / 2) return ac_error(AC_ERANGE, "tokenizer: text fragment too long");
  if ((rc = merge_chars(s, n)) < 0) return rc;
  for (int32_t i = 0; i != -1; i = s->syms[i].next) {
    const sym_t *y = &s->syms[i];
    int32_t id = find_token(t, s->buf + y->off, y->n);
    if (id >= 0) {
      if ((rc = push_id(s, id)) < 0) return rc;
      continue;
    }
    // Not a token: one byte token per byte (the unknown token where the vocabulary has none).
    for (uint32_t j = 0; j < y->n; j++) {
      unsigned char c = (unsigned char)s->buf[y->off + j];
      int32_t b = t->byte_tok[c] >= 0 ? t->byte_tok[c] : t->unk;
      if (b < 0)
        return ac_error(AC_ENOTFOUND,
                        "tokenizer: no token for byte 0x%02X and no unknown token", c);
      if ((rc = push_id(s, b)) < 0) return rc;
    }
  }
  return 0;
}

// --- BPE -------------------------------------------------------------------

// Runs the pre-tokenizer regexes over text[0, len); returns the number of pieces, which are
// left in s->spans[result index] (*which).
static int pre_split(session_t *s, const char *text, size_t len, int *which, size_t *n_out) {
  const ac_tokenizer_t *t = s->t;
  int rc, cur = 0;
  if ((rc = grow((void **)&s->spans[0], &s->cap_spans[0], 1, sizeof(span_t))) < 0) return rc;
  s->spans[0][0] = (span_t){0, len};
  size_t n = 1;
  for (int r = 0; r < t->n_re; r++) {
    int nxt = 1 - cur;
    size_t m = 0;
    for (size_t p = 0; p < n; p++) {
      const char *subj = text + s->spans[cur][p].off;
      size_t slen = s->spans[cur][p].len, pos = 0, last = 0;
      // Each piece is matched as a subject of its own, so lookarounds stop at its edges.
      while (pos < slen) {
        int mrc = pcre2_match(t->re[r], (PCRE2_SPTR)subj, slen, pos, 0, s->md, NULL);
        if (mrc == PCRE2_ERROR_NOMATCH) break;
        if (mrc < 0) {
          PCRE2_UCHAR msg[160];
          pcre2_get_error_message(mrc, msg, sizeof msg);
          return ac_error(AC_EFORMAT, "tokenizer: pre-tokenizer '%s': %s", t->pre,
                          (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) {  // an empty match (none of our patterns has one): step over a byte
          pos = ms + 1;
          continue;
        }
        if ((rc = grow((void **)&s->spans[nxt], &s->cap_spans[nxt], m + 2, sizeof(span_t))) < 0)
          return rc;
        size_t base = s->spans[cur][p].off;
        if (ms > last) s->spans[nxt][m++] = (span_t){base + last, ms - last};
        s->spans[nxt][m++] = (span_t){base + ms, me - ms};
        last = pos = me;
      }
      if (last < slen) {
        if ((rc = grow((void **)&s->spans[nxt], &s->cap_spans[nxt], m + 1, sizeof(span_t))) < 0)
          return rc;
        s->spans[nxt][m++] = (span_t){s->spans[cur][p].off + last, slen - last};
      }
    }
    cur = nxt;
    n = m;
  }
  *which = cur;
  *n_out = n;
  return 0;
}

static int bpe_word(session_t *s, const char *w, size_t len) {
  const ac_tokenizer_t *t = s->t;
  int rc = grow((void **)&s->buf, &s->cap_buf, 2 * len + 1, 1);
  if (rc < 0) return rc;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)w[i];
    memcpy(s->buf + n, t->byte_utf8[c], t->byte_utf8_len[c]);
    n += t->byte_utf8_len[c];
  }
  if (n > UINT32_MAX / 2) return ac_error(AC_ERANGE, "tokenizer: word too long");
  if (t->ignore_merges) {
    int32_t id = find_token(t, s->buf, n);
    if (id >= 0) return push_id(s, id);
  }
  if ((rc = merge_chars(s, n)) < 0) return rc;
  for (int32_t i = 0; i != -1; i = s->syms[i].next) {
    const sym_t *y = &s->syms[i];
    int32_t id = find_token(t, s->buf + y->off, y->n);
    if (id >= 0) {
      if ((rc = push_id(s, id)) < 0) return rc;
      continue;
    }
    // No token for the piece: llama.cpp then emits whichever of its single bytes are tokens.
    for (uint32_t j = 0; j < y->n; j++) {
      id = find_token(t, s->buf + y->off + j, 1);
      if (id >= 0 && (rc = push_id(s, id)) < 0) return rc;
    }
  }
  return 0;
}

static int bpe_fragment(session_t *s, const char *text, size_t len) {
  int which = 0, rc;
  size_t n = 0;
  if ((rc = pre_split(s, text, len, &which, &n)) < 0) return rc;
  // bpe_word reuses buf and syms but not the spans, so the pieces stay valid.
  for (size_t i = 0; i < n; i++) {
    span_t sp = s->spans[which][i];
    if ((rc = bpe_word(s, text + sp.off, sp.len)) < 0) return rc;
  }
  return 0;
}

// --- special-token partitioning ---------------------------------------------

// Cuts every occurrence of each special token out of the text fragments, longest token first,
// leaving a list of text fragments and token ids in order.
static int partition(const ac_tokenizer_t *t, const char *text, size_t len, bool parse_special,
                     frag_t **frags_p, size_t *n_p) {
  frag_t *a = NULL, *b = NULL;
  size_t na = 0, cap_a = 0, cap_b = 0;
  int rc;
  if (len > 0) {
    if ((rc = grow((void **)&a, &cap_a, 1, sizeof *a)) < 0) return rc;
    a[na++] = (frag_t){-1, 0, len};
  }
  for (int32_t k = 0; k < t->n_special && na > 0; k++) {
    int32_t id = t->special[k];
    const tok_t *tok = &t->toks[id];
    // User-defined tokens are always cut out; control and unknown ones only on request.
    if (!parse_special && tok->type != AC_TOKEN_USER_DEFINED) continue;
    const char *st = t->text + tok->off;
    size_t sl = tok->len, nb = 0;
    for (size_t f = 0; f < na; f++) {
      frag_t fr = a[f];
      if (fr.tok >= 0 || fr.len < sl) {
        if ((rc = grow((void **)&b, &cap_b, nb + 1, sizeof *b)) < 0) goto fail;
        b[nb++] = fr;
        continue;
      }
      size_t pos = fr.off, end = fr.off + fr.len;
      for (;;) {
        const char *hit = end - pos >= sl ? memmem(text + pos, end - pos, st, sl) : NULL;
        if ((rc = grow((void **)&b, &cap_b, nb + 3, sizeof *b)) < 0) goto fail;
        if (!hit) {
          if (end > pos) b[nb++] = (frag_t){-1, pos, end - pos};
          break;
        }
        size_t at = (size_t)(hit - text);
        if (at > pos) b[nb++] = (frag_t){-1, pos, at - pos};
        b[nb++] = (frag_t){id, at, sl};
        pos = at + sl;
      }
    }
    frag_t *tmp = a;
    a = b;
    b = tmp;
    size_t tc = cap_a;
    cap_a = cap_b;
    cap_b = tc;
    na = nb;
  }
  free(b);
  *frags_p = a;
  *n_p = na;
  return 0;

fail:
  free(a);
  free(b);
  return rc;
}

// --- encoding --------------------------------------------------------------

int ac_tokenize(const ac_tokenizer_t *t, const char *text, size_t len, bool add_bos,
                bool parse_special, int32_t *ids, int cap) {
  if (!t) return ac_error(AC_EINVAL, "tokenize: NULL tokenizer");
  if (!text && len > 0) return ac_error(AC_EINVAL, "tokenize: NULL text");
  if (cap < 0 || (cap > 0 && !ids)) return ac_error(AC_EINVAL, "tokenize: bad output buffer");
  if (add_bos && t->bos < 0)
    return ac_error(AC_ENOTFOUND, "tokenize: the vocabulary has no BOS token");

  session_t s = {.t = t};
  frag_t *frags = NULL;
  size_t n_frags = 0;
  int rc = partition(t, text, len, parse_special, &frags, &n_frags);
  if (rc < 0) return rc;
  if (t->kind == AC_TOK_BPE && t->n_re > 0) {
    s.md = pcre2_match_data_create_from_pattern(t->re[0], NULL);
    // Any pattern's match data will do: we read only the whole-match pair.
    if (!s.md) {
      rc = ac_error(AC_ENOMEM, "tokenize: out of memory");
      goto done;
    }
  }
  if (add_bos && (rc = push_id(&s, t->bos)) < 0) goto done;

  // SPM puts a space before the text and before every fragment that follows a special token.
  bool prev_special = true;
  for (size_t f = 0; f < n_frags; f++) {
    const frag_t *fr = &frags[f];
    if (fr->tok >= 0) {
      rc = push_id(&s, fr->tok);
      prev_special = true;
    } else if (t->kind == AC_TOK_SPM) {
      rc = spm_fragment(&s, text + fr->off, fr->len, t->add_space_prefix && prev_special);
      prev_special = false;
    } else {
      rc = bpe_fragment(&s, text + fr->off, fr->len);
    }
    if (rc < 0) goto done;
  }

  if (s.n_ids > INT_MAX) {
    rc = ac_error(AC_ERANGE, "tokenize: %zu tokens do not fit an int", s.n_ids);
    goto done;
  }
  size_t n_copy = s.n_ids < (size_t)cap ? s.n_ids : (size_t)cap;
  if (n_copy > 0) memcpy(ids, s.ids, n_copy * sizeof *ids);
  rc = (int)s.n_ids;

done:
  free(frags);
  free(s.ids);
  free(s.buf);
  free(s.syms);
  free(s.heap);
  free(s.spans[0]);
  free(s.spans[1]);
  pcre2_match_data_free(s.md);
  return rc;
}

// --- decoding --------------------------------------------------------------

static size_t put(char *buf, size_t cap, size_t n, const char *s, size_t len) {
  if (n < cap) memcpy(buf + n, s, len < cap - n ? len : cap - n);
  return n + len;
}

int ac_token_to_piece(const ac_tokenizer_t *t, int32_t id, bool special, char *buf, size_t cap) {
  if (!t) return ac_error(AC_EINVAL, "token_to_piece: NULL tokenizer");
  if (id < 0 || id >= t->n_vocab)
    return ac_error(AC_ERANGE, "token_to_piece: id %d outside the vocabulary of %d", (int)id,
                    (int)t->n_vocab);
  if (cap > 0 && !buf) return ac_error(AC_EINVAL, "token_to_piece: NULL buffer");
  const tok_t *k = &t->toks[id];
  const char *s = t->text + k->off;
  size_t n = 0;
  switch (k->type) {
    case AC_TOKEN_CONTROL:
    case AC_TOKEN_UNKNOWN:
      if (special) n = put(buf, cap, 0, s, k->len);
      break;
    case AC_TOKEN_USER_DEFINED:
      n = put(buf, cap, 0, s, k->len);
      break;
    case AC_TOKEN_NORMAL:
      if (t->kind == AC_TOK_SPM) {
        for (size_t i = 0; i < k->len;) {
          if (k->len - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
            n = put(buf, cap, n, " ", 1);
            i += 3;
          } else {
            n = put(buf, cap, n, s + i, 1);
            i++;
          }
        }
      } else {
        // Each code point stands for one byte; anything else (not produced by the byte map)
        // is passed through as it is.
        for (size_t i = 0; i < k->len;) {
          unsigned char c = (unsigned char)s[i];
          size_t cl = utf8_len(c);
          uint32_t cp = 0x110000;
          if (cl == 1 && c < 0x80) cp = c;
          else if (cl == 2 && i + 1 < k->len && ((unsigned char)s[i + 1] & 0xC0) == 0x80)
            cp = ((uint32_t)(c & 0x1F) << 6) | ((unsigned char)s[i + 1] & 0x3F);
          if (cl > k->len - i) cl = k->len - i;
          if (cp < 324 && t->cp_byte[cp] >= 0) {
            char b = (char)t->cp_byte[cp];
            n = put(buf, cap, n, &b, 1);
          } else {
            n = put(buf, cap, n, s + i, cl);
          }
          i += cl;
        }
      }
      break;
    case AC_TOKEN_BYTE:
      if (t->kind == AC_TOK_SPM) {
        unsigned v;
        char b;
        if (k->len == 6 && sscanf(s, "<0x%2x>", &v) == 1) {
          b = (char)v;
          n = put(buf, cap, 0, &b, 1);
        } else {
          n = put(buf, cap, 0, s, k->len);
        }
      }
      break;
    default:  // unused and undefined tokens render as nothing, as in llama.cpp
      break;
  }
  if (n > INT_MAX) return ac_error(AC_ERANGE, "token_to_piece: piece too long");
  return (int)(n < cap ? n : cap);
}
