// judge.c - see judge.h. Each function mirrors its namesake in bench/workloads/checkers.py.
#include "judge.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static inline bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline bool is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static inline bool is_alnum(unsigned char c) { return is_digit(c) || is_alpha(c); }
static inline bool is_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D); }
// The 32 printable ASCII bytes that are neither alnum nor space.
static inline bool is_punct(unsigned char c) { return c >= 0x21 && c <= 0x7E && !is_alnum(c); }
static inline unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c; }

int ac_check_kind_parse(const char *name) {
  static const char *names[] = {"number", "exact", "contains", "similarity"};
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, names[i]) == 0) return i;
  return -1;
}

const char *ac_check_kind_name(ac_check_kind_t kind) {
  switch (kind) {
    case AC_CHECK_NUMBER: return "number";
    case AC_CHECK_EXACT: return "exact";
    case AC_CHECK_CONTAINS: return "contains";
    case AC_CHECK_SIMILARITY: return "similarity";
  }
  return "?";
}

// --- number ---------------------------------------------------------------------------------

// _strip_thousands: drops every ',' with a digit just before it and three digits just after it
// (judged on the original text). out needs len bytes; returns the new length.
static size_t strip_thousands(const unsigned char *s, size_t n, unsigned char *out) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == ',' && i > 0 && i + 3 < n && is_digit(s[i - 1]) && is_digit(s[i + 1]) && is_digit(s[i + 2]) &&
        is_digit(s[i + 3]))
      continue;
    out[k++] = s[i];
  }
  return k;
}

// The last number of numbers(s) in canonical form into out (NUL-terminated); its length, or 0.
static int last_number(const unsigned char *text, size_t len, char *out) {
  unsigned char *s = malloc(len ? len : 1);
  if (!s) return ac_error(AC_ENOMEM, "out of memory");
  size_t n = strip_thousands(text, len, s);
  bool found = false, neg = false;
  size_t ia = 0, ib = 0, fa = 0, fb = 0;  // integer digits [ia, ib), fraction digits [fa, fb)
  size_t i = 0;
  while (i < n) {
    if (!is_digit(s[i])) {
      i++;
      continue;
    }
    size_t start = i;
    neg = start > 0 && s[start - 1] == '-' && (start < 2 || !is_alnum(s[start - 2]));
    while (i < n && is_digit(s[i])) i++;
    ia = start, ib = i;
    fa = fb = i;
    if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
      size_t j = i + 1;
      while (j < n && is_digit(s[j])) j++;
      fa = i + 1, fb = j;
      i = j;
    }
    found = true;
  }
  int k = 0;
  if (found) {
    while (ia < ib && s[ia] == '0') ia++;
    while (fb > fa && s[fb - 1] == '0') fb--;
    bool zero = ia == ib && fa == fb;
    if (neg && !zero) out[k++] = '-';
    if (ia == ib) out[k++] = '0';
    memcpy(out + k, s + ia, ib - ia);
    k += (int)(ib - ia);
    if (fb > fa) {
      out[k++] = '.';
      memcpy(out + k, s + fa, fb - fa);
      k += (int)(fb - fa);
    }
  }
  out[k] = 0;
  free(s);
  return k;
}

// rfind of "####".
static const unsigned char *last_hashes(const unsigned char *s, size_t n) {
  if (n < 4) return NULL;
  for (size_t i = n - 4 + 1; i-- > 0;)
    if (s[i] == '#' && s[i + 1] == '#' && s[i + 2] == '#' && s[i + 3] == '#') return s + i;
  return NULL;
}

int ac_judge_final_number(const char *text, size_t len, char *out) {
  const unsigned char *s = (const unsigned char *)text;
  const unsigned char *h = last_hashes(s, len);
  if (h) {
    int k = last_number(h + 4, len - (size_t)(h + 4 - s), out);
    if (k != 0) return k;  // a number after the last "####" (or an error)
  }
  return last_number(s, len, out);
}

// --- exact / contains -------------------------------------------------------------------------

size_t ac_judge_normalize(const char *text, size_t len, char *out) {
  const unsigned char *s = (const unsigned char *)text;
  size_t k = 0;
  bool prev_space = false;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = lower(s[i]);
    if (is_space(c)) {
      if (!prev_space) out[k++] = ' ';
      prev_space = true;
    } else {
      out[k++] = (char)c;
      prev_space = false;
    }
  }
  size_t a = 0, b = k;
  while (a < b && (is_punct((unsigned char)out[a]) || out[a] == ' ')) a++;
  while (b > a && (is_punct((unsigned char)out[b - 1]) || out[b - 1] == ' ')) b--;
  if (a) memmove(out, out + a, b - a);
  return b - a;
}

// normalize() into a fresh buffer.
static char *normalized(const char *text, size_t len, size_t *out_len) {
  char *buf = malloc(len ? len : 1);
  if (buf) *out_len = ac_judge_normalize(text, len, buf);
  return buf;
}

static bool normal_equal(const char *a, size_t alen, const char *b, size_t blen, int *err) {
  size_t na = 0, nb = 0;
  char *x = normalized(a, alen, &na), *y = normalized(b, blen, &nb);
  bool eq = x && y && na == nb && memcmp(x, y, na) == 0;
  if (!x || !y) *err = ac_error(AC_ENOMEM, "out of memory");
  free(x);
  free(y);
  return eq;
}

int ac_judge_contains(const char *text, size_t len, const char *phrase, size_t phrase_len) {
  size_t nh = 0, nn = 0;
  char *hay = normalized(text, len, &nh), *needle = normalized(phrase, phrase_len, &nn);
  int found = 0;
  if (!hay || !needle) {
    found = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  if (nn == 0) goto done;
  for (size_t start = 0; start + nn <= nh;) {
    const char *p = memmem(hay + start, nh - start, needle, nn);
    if (!p) break;
    size_t k = (size_t)(p - hay), end = k + nn;
    if ((k == 0 || !is_alnum((unsigned char)hay[k - 1])) && (end == nh || !is_alnum((unsigned char)hay[end]))) {
      found = 1;
      break;
    }
    start = k + 1;
  }
done:
  free(hay);
  free(needle);
  return found;
}

// --- similarity -------------------------------------------------------------------------------

typedef struct {
  const unsigned char *p;  // into the lower-cased copy
  uint32_t len;
  uint32_t hash;
} word_t;

static inline bool is_word(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || c >= 0x80; }

// tokens(): the lower-cased copy in *buf (caller frees), the words in *words (caller frees).
static int tokens(const char *text, size_t len, unsigned char **buf, word_t **words, size_t *n) {
  *buf = malloc(len ? len : 1);
  *words = malloc((len / 2 + 1) * sizeof **words);  // a word takes one byte plus a separator
  *n = 0;
  if (!*buf || !*words) return ac_error(AC_ENOMEM, "out of memory");
  unsigned char *b = *buf;
  for (size_t i = 0; i < len; i++) b[i] = lower((unsigned char)text[i]);
  size_t i = 0;
  while (i < len) {
    if (!is_word(b[i])) {
      i++;
      continue;
    }
    size_t start = i;
    uint32_t h = 2166136261u;
    while (i < len && is_word(b[i])) h = (h ^ b[i++]) * 16777619u;
    (*words)[(*n)++] = (word_t){b + start, (uint32_t)(i - start), h};
  }
  return 0;
}

static inline bool word_eq(const word_t *x, const word_t *y) {
  return x->hash == y->hash && x->len == y->len && memcmp(x->p, y->p, x->len) == 0;
}

static size_t lcs_length(const word_t *a, size_t m, const word_t *b, size_t n, size_t *row) {
  // row: n + 1 entries; prev[j] is row[j] before it is overwritten in this pass.
  memset(row, 0, (n + 1) * sizeof *row);
  for (size_t i = 0; i < m; i++) {
    size_t diag = 0;  // prev[j - 1]
    for (size_t j = 1; j <= n; j++) {
      size_t up = row[j];  // prev[j]
      row[j] = word_eq(&a[i], &b[j - 1]) ? diag + 1 : (up >= row[j - 1] ? up : row[j - 1]);
      diag = up;
    }
  }
  return row[n];
}

int ac_judge_rouge_l(const char *ref, size_t ref_len, const char *cand, size_t cand_len, double *out) {
  unsigned char *b1 = NULL, *b2 = NULL;
  word_t *w1 = NULL, *w2 = NULL;
  size_t m = 0, n = 0, *row = NULL;
  int rc = tokens(ref, ref_len, &b1, &w1, &m);
  if (!rc) rc = tokens(cand, cand_len, &b2, &w2, &n);
  if (rc) goto done;
  if (m == 0 && n == 0) {
    *out = 1.0;
  } else if (m == 0 || n == 0) {
    *out = 0.0;
  } else {
    const word_t *a = w1, *b = w2;
    size_t la = m, lb = n;
    if (lb > la) a = w2, b = w1, la = n, lb = m;
    if (!(row = malloc((lb + 1) * sizeof *row))) {
      rc = ac_error(AC_ENOMEM, "out of memory");
      goto done;
    }
    size_t lcs = lcs_length(a, la, b, lb, row);
    *out = 2.0 * (double)lcs / (double)(m + n);
  }
done:
  free(row);
  free(b1);
  free(b2);
  free(w1);
  free(w2);
  return rc;
}

// --- judge ------------------------------------------------------------------------------------

static int contains_any(const ac_checker_t *c, const char *text, size_t len) {
  if (c->has_answer) {
    int r = ac_judge_contains(text, len, c->answer.s, c->answer.len);
    if (r) return r;
  }
  for (size_t i = 0; i < c->n_aliases; i++) {
    int r = ac_judge_contains(text, len, c->aliases[i].s, c->aliases[i].len);
    if (r) return r;
  }
  return 0;
}

int ac_judge(const ac_checker_t *c, const char *full, size_t full_len, const char *variant, size_t variant_len,
             ac_judgement_t *out) {
  int err = 0;
  out->success = false;
  out->score = 0.0;
  out->correct = AC_CORRECT_UNKNOWN;
  switch (c->kind) {
    case AC_CHECK_NUMBER: {
      char *fv = malloc(full_len + 2), *vv = malloc(variant_len + 2), *av = NULL;
      if (!fv || !vv) {
        err = ac_error(AC_ENOMEM, "out of memory");
        goto num_done;
      }
      int nf = ac_judge_final_number(full, full_len, fv), nv = ac_judge_final_number(variant, variant_len, vv);
      if (nf < 0 || nv < 0) {
        err = nf < 0 ? nf : nv;
        goto num_done;
      }
      if (nf == 0 && nv == 0)
        out->success = normal_equal(full, full_len, variant, variant_len, &err);
      else
        out->success = nf == nv && memcmp(fv, vv, (size_t)nf) == 0;
      if (c->has_answer) {
        if (!(av = malloc(c->answer.len + 2))) {
          err = ac_error(AC_ENOMEM, "out of memory");
          goto num_done;
        }
        int na = ac_judge_final_number(c->answer.s, c->answer.len, av);
        if (na < 0) {
          err = na;
          goto num_done;
        }
        out->correct = nv > 0 && na == nv && memcmp(av, vv, (size_t)nv) == 0 ? AC_CORRECT_TRUE : AC_CORRECT_FALSE;
      }
    num_done:
      free(fv);
      free(vv);
      free(av);
      out->score = out->success ? 1.0 : 0.0;
      return err;
    }
    case AC_CHECK_EXACT:
      out->success = normal_equal(full, full_len, variant, variant_len, &err);
      if (c->has_answer && !err)
        out->correct = normal_equal(variant, variant_len, c->answer.s, c->answer.len, &err) ? AC_CORRECT_TRUE
                                                                                           : AC_CORRECT_FALSE;
      out->score = out->success ? 1.0 : 0.0;
      return err;
    case AC_CHECK_CONTAINS: {
      if (!c->has_answer && c->n_aliases == 0)
        return ac_error(AC_EINVAL, "a 'contains' checker needs an answer or aliases");
      int fc = contains_any(c, full, full_len);
      if (fc < 0) return fc;
      int vc = contains_any(c, variant, variant_len);
      if (vc < 0) return vc;
      out->success = (fc && vc) || normal_equal(full, full_len, variant, variant_len, &err);
      out->correct = vc ? AC_CORRECT_TRUE : AC_CORRECT_FALSE;
      out->score = out->success ? 1.0 : 0.0;
      return err;
    }
    case AC_CHECK_SIMILARITY: {
      double score = 0;
      if ((err = ac_judge_rouge_l(full, full_len, variant, variant_len, &score))) return err;
      out->score = score;
      out->success = score >= c->theta;
      return 0;
    }
  }
  return ac_error(AC_EINVAL, "unknown checker kind %d", (int)c->kind);
}
