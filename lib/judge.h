// judge.h - the workload checkers: is a variant's answer as good as the full model's?
//
// A C port of bench/workloads/checkers.py (the reference; bench/workloads/README.md, "Checkers",
// states every rule). Same bytes in, same decisions and the same scores (doubles computed by the
// same formula, so equal to Python's). Every rule walks the UTF-8 bytes with ASCII classes only:
// bytes >= 0x80 are never digits, letters, spaces or punctuation. Texts are (pointer, length):
// NUL bytes are ordinary bytes. Invalid UTF-8 is judged byte by byte, which is what Python does
// with the text decoded with errors="surrogateescape".
//
//   judge(checker, full, variant) -> success (agrees with the full model), score in [0, 1],
//                                    correct (against the ground truth: true, false or unknown)
#ifndef AC_JUDGE_H
#define AC_JUDGE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { AC_CHECK_NUMBER = 0, AC_CHECK_EXACT, AC_CHECK_CONTAINS, AC_CHECK_SIMILARITY } ac_check_kind_t;

#define AC_JUDGE_DEFAULT_THETA 0.5

typedef struct {
  const char *s;
  size_t len;
} ac_text_t;

// One task's checker. Pointers are borrowed (the workload owns them).
typedef struct {
  ac_check_kind_t kind;
  double theta;              // similarity threshold (AC_JUDGE_DEFAULT_THETA unless the task says)
  bool has_answer;           // the task has a ground truth
  ac_text_t answer;
  const ac_text_t *aliases;  // contains: more accepted phrases
  size_t n_aliases;
} ac_checker_t;

typedef enum { AC_CORRECT_FALSE = 0, AC_CORRECT_TRUE = 1, AC_CORRECT_UNKNOWN = -1 } ac_correct_t;

typedef struct {
  bool success;          // the variant's answer is judged equal to the full model's
  double score;          // 1.0 / 0.0, or the ROUGE-L F1 for similarity
  ac_correct_t correct;  // against the ground truth; unknown when there is none (always for similarity)
} ac_judgement_t;

// "number", "exact", "contains", "similarity" -> kind; -1 for anything else.
int ac_check_kind_parse(const char *name);
const char *ac_check_kind_name(ac_check_kind_t kind);

// Judges. Errors: AC_EINVAL for a contains checker with no answer and no alias (Python raises
// ValueError) or an unknown kind; AC_ENOMEM.
int ac_judge(const ac_checker_t *c, const char *full, size_t full_len, const char *variant, size_t variant_len,
             ac_judgement_t *out);

// --- the rules, exposed for tests and tools -----------------------------------------------------

// The final number of a text in canonical form (README "number" rules 1-5), written to `out`
// (needs text_len + 2 bytes; NUL-terminated). Returns its length, 0 when the text has no number
// (canonical forms are never empty), or AC_ENOMEM.
int ac_judge_final_number(const char *text, size_t len, char *out);

// normalize(): ASCII lower case, runs of spaces -> one space, spaces and punctuation stripped at
// both ends. Writes at most `len` bytes to out (caller's buffer of len bytes, may be len 0);
// returns the length written.
size_t ac_judge_normalize(const char *text, size_t len, char *out);

// contains_phrase(text, phrase). Returns 1 / 0, or AC_ENOMEM.
int ac_judge_contains(const char *text, size_t len, const char *phrase, size_t phrase_len);

// ROUGE-L F1 over word tokens: 2*LCS/(m+n); 1.0 when neither has a token, 0.0 when one has none.
// Returns 0 and the score in *out, or AC_ENOMEM.
int ac_judge_rouge_l(const char *ref, size_t ref_len, const char *cand, size_t cand_len, double *out);

#endif
