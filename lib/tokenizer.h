// tokenizer.h - text <-> token ids, read from GGUF metadata.
//
// Two kinds, as `tokenizer.ggml.model` names them:
//  - "llama": SentencePiece-style. tokens + scores + token types; spaces become U+2581, the text
//    gets a leading space when tokenizer.ggml.add_space_prefix is true (the default), pieces are
//    merged by highest score, unknown bytes fall back to <0xXX> byte tokens.
//  - "gpt2": byte-level BPE. tokens + merges; the text is split by the pre-tokenizer regexes that
//    tokenizer.ggml.pre names (PCRE2), each piece's bytes are mapped to printable code points and
//    merged by merge rank.
// Special (control and user-defined) tokens are matched in the text first when parse_special is
// true, as llama.cpp does.
#ifndef AC_TOKENIZER_H
#define AC_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef enum { AC_TOK_SPM = 0, AC_TOK_BPE = 1 } ac_tok_kind_t;

// Token types as GGUF stores them (tokenizer.ggml.token_type).
enum {
  AC_TOKEN_NORMAL = 1,
  AC_TOKEN_UNKNOWN = 2,
  AC_TOKEN_CONTROL = 3,
  AC_TOKEN_USER_DEFINED = 4,
  AC_TOKEN_UNUSED = 5,
  AC_TOKEN_BYTE = 6,
};

typedef struct ac_tokenizer ac_tokenizer_t;

// Builds the tokenizer from the file's metadata. Missing or inconsistent keys, or an unknown
// model / pre-tokenizer name, are clear errors (AC_ENOTFOUND / AC_EFORMAT / AC_EUNSUPPORTED).
int ac_tokenizer_from_gguf(const ac_gguf_t *g, ac_tokenizer_t **out);
// Drops one owner; the last one frees it.
void ac_tokenizer_destroy(ac_tokenizer_t **self_p);
// Adds an owner (not thread-safe: share between threads only what one thread created and frees).
ac_tokenizer_t *ac_tokenizer_ref(ac_tokenizer_t *t);
// SHA-256 over every tokenizer.* entry of the file: equal digests, equal tokenizers.
void ac_tokenizer_digest(const ac_gguf_t *g, uint8_t out[32]);
// Whether `t` was built from metadata identical to g's, so it can serve a model from g (the
// variants of one base share their tokenizer; a reload then skips rebuilding it).
bool ac_tokenizer_matches(const ac_tokenizer_t *t, const ac_gguf_t *g);

ac_tok_kind_t ac_tokenizer_kind(const ac_tokenizer_t *t);
int32_t ac_tokenizer_n_vocab(const ac_tokenizer_t *t);
int32_t ac_tokenizer_bos(const ac_tokenizer_t *t);  // -1 if none
int32_t ac_tokenizer_eos(const ac_tokenizer_t *t);  // -1 if none
bool ac_tokenizer_add_bos(const ac_tokenizer_t *t); // tokenizer.ggml.add_bos_token (default: SPM yes, BPE no)
// True for tokens that end generation: eos, eot, and end-of-turn markers such as <|im_end|>.
bool ac_tokenizer_is_eog(const ac_tokenizer_t *t, int32_t id);
// The token's text as stored in the vocabulary (not decoded), or NULL for a bad id.
const char *ac_tokenizer_token_text(const ac_tokenizer_t *t, int32_t id);
// Looks up a token by its exact vocabulary text; -1 if absent.
int32_t ac_tokenizer_find(const ac_tokenizer_t *t, const char *text);

// Encodes `text` (len bytes of UTF-8). Adds BOS first if add_bos. Writes at most `cap` ids and
// returns the total number of ids the text needs (call again with a larger buffer if > cap), or
// a negative AC_E* code.
int ac_tokenize(const ac_tokenizer_t *t, const char *text, size_t len, bool add_bos,
                bool parse_special, int32_t *ids, int cap);

// The bytes token `id` stands for in decoded text (SPM: U+2581 -> ' ', <0xXX> -> that byte;
// BPE: code points mapped back to bytes; control tokens render as their text only when
// `special` is true, else as nothing). Returns the length written (at most cap; the output may
// end in the middle of a UTF-8 sequence) or a negative code.
int ac_token_to_piece(const ac_tokenizer_t *t, int32_t id, bool special, char *buf, size_t cap);

#endif
