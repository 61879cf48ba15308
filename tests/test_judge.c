// test_judge.c - the C checkers (lib/judge) and workload reader (lib/workload) on the hand cases
// of tests/py/test_workloads.py, which pin bench/workloads/checkers.py and workload.py. The
// random comparison against Python itself is tests/py/test_label.py.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "judge.h"
#include "workload.h"

#define S(x) x, strlen(x)

static void final_number_case(const char *text, const char *want) {
  char out[256];
  int n = ac_judge_final_number(S(text), out);
  if (!want)
    CHECK(n == 0, "final_number(\"%s\") = \"%s\", want none", text, out);
  else
    CHECK(n > 0 && strcmp(out, want) == 0 && (size_t)n == strlen(want), "final_number(\"%s\") = \"%s\", want \"%s\"",
          text, n > 0 ? out : "(none)", want);
}

static void normalize_case(const char *text, const char *want) {
  char out[256];
  size_t n = ac_judge_normalize(S(text), out);
  out[n] = 0;
  CHECK(strcmp(out, want) == 0, "normalize(\"%s\") = \"%s\", want \"%s\"", text, out, want);
}

static void rouge_case(const char *a, const char *b, double want) {
  double x = -1, y = -1;
  CHECK(ac_judge_rouge_l(S(a), S(b), &x) == 0 && ac_judge_rouge_l(S(b), S(a), &y) == 0, "rouge_l failed");
  CHECK(fabs(x - want) <= 1e-12 && fabs(y - want) <= 1e-12, "rouge_l(\"%s\", \"%s\") = %.17g / %.17g, want %.17g", a,
        b, x, y, want);
}

static ac_checker_t checker(ac_check_kind_t kind, const char *answer) {
  ac_checker_t c = {.kind = kind, .theta = AC_JUDGE_DEFAULT_THETA};
  if (answer) c.has_answer = true, c.answer = (ac_text_t){answer, strlen(answer)};
  return c;
}

static void judge_case(const ac_checker_t *c, const char *full, const char *var, bool success, double score,
                       ac_correct_t correct, int line) {
  ac_judgement_t j;
  int rc = ac_judge(c, S(full), S(var), &j);
  CHECK(rc == 0 && j.success == success && j.score == score && j.correct == correct,
        "line %d: judge(%s, \"%s\", \"%s\") = (%d, %g, %d), want (%d, %g, %d)", line, ac_check_kind_name(c->kind),
        full, var, j.success, j.score, j.correct, success, score, correct);
}
#define JUDGE(c, f, v, s, sc, co) judge_case(c, f, v, s, sc, co, __LINE__)
#define T AC_CORRECT_TRUE
#define F AC_CORRECT_FALSE
#define U AC_CORRECT_UNKNOWN

static void test_numbers(void) {
  static const char *cases[][2] = {
      {"#### 42", "42"},
      {"Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"},
      {"The answer is 1,250.", "1250"},
      {"$1,000.50", "1000.5"},
      {"12,345,678 people", "12345678"},
      {"-3.50 degrees", "-3.5"},
      {"x = -5", "-5"},
      {"(-5)", "-5"},
      {"5-3", "3"},
      {"COVID-19", "19"},
      {"2 + 3 = 5", "5"},
      {"42.", "42"},
      {"007", "7"},
      {"-0.0", "0"},
      {"0.250", "0.25"},
      {"1,2", "2"},
      {"3, 4", "4"},
      {"1,23", "23"},
      {".5", "5"},
      {"3.14.15", "15"},
      {"#### 18, bonus 4", "4"},
      {"total 18 ####", "18"},
      {"costs 5 dollars #### 18 dollars", "18"},
      {"no digits here", NULL},
      {"", NULL},
      {"Caf\xc3\xa9 costs 3 \xe2\x82\xac", "3"},
      // More edges of the same rules.
      {"-5", "-5"},
      {"a-5", "5"},
      {"--5", "-5"},
      {"####-7", "-7"},
      {"1,000,00", "0"},        // the first comma goes (3 digits after it), the second stays: 1000 and 00
      {",123", "123"},
      {"5 #### none", "5"},
      {"x 000.000", "0"},
      {"-000", "0"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) final_number_case(cases[i][0], cases[i][1]);
}

static void test_normalize_contains_tokens(void) {
  normalize_case("  The Answer:\n\n Paris. ", "the answer: paris");
  normalize_case("Smith, J. (2019). Title.", "smith, j. (2019). title");
  normalize_case("\"Quoted!\"", "quoted");
  normalize_case("A\tB  \r\n C", "a b c");
  normalize_case("...", "");
  normalize_case("\xc3\x89" "COLE M\xc3\xbcller", "\xc3\x89" "cole m\xc3\xbcller");
  normalize_case("", "");
  normalize_case("\v\f x \v", "x");

  CHECK(ac_judge_contains(S("It is Paris."), S("paris")) == 1, "paris");
  CHECK(ac_judge_contains(S("Parisian food"), S("Paris")) == 0, "Parisian");
  CHECK(ac_judge_contains(S("a CO2-rich gas"), S("co2")) == 1, "co2");
  CHECK(ac_judge_contains(S("Random-Access  Memory"), S("random-access memory")) == 1, "ram");
  CHECK(ac_judge_contains(S("random access memory"), S("random-access memory")) == 0, "ram -");
  CHECK(ac_judge_contains(S("cells, cells"), S("cells")) == 1, "cells");
  CHECK(ac_judge_contains(S("anything"), S("...")) == 0, "empty needle");
  CHECK(ac_judge_contains(S("xcells cells"), S("cells")) == 1, "second occurrence");

  rouge_case("the cat sat on the mat", "the cat lay on a mat", 8.0 / 12);
  rouge_case("a b c d", "a c d e", 6.0 / 8);
  rouge_case("a b c", "c b a", 2.0 / 6);
  rouge_case("one two three four", "one two", 4.0 / 6);
  rouge_case("Hello, World!", "hello world", 1.0);
  rouge_case("same text here", "same text here", 1.0);
  rouge_case("alpha beta", "gamma delta", 0.0);
  rouge_case("", "", 1.0);
  rouge_case("words", "", 0.0);
  rouge_case("", "words", 0.0);
  rouge_case(" .,;", "", 1.0);
  // tokens("Hello, World! It's 2.5x") = hello world it s 2 5x; "caf\xc3\xa9" is one token.
  rouge_case("Hello, World! It's 2.5x", "hello world it s 2 5X", 1.0);
  rouge_case("caf\xc3\xa9 au lait", "caf\xc3\xa9 au lait", 1.0);
  rouge_case("caf\xc3\xa9 au lait", "caf au lait", 4.0 / 6);
}

static void test_judge(void) {
  ac_checker_t t = checker(AC_CHECK_NUMBER, "1250");
  JUDGE(&t, "It is 1,250.", "#### 1250", true, 1.0, T);
  JUDGE(&t, "It is 1,250.", "It is 1,251.", false, 0.0, F);
  JUDGE(&t, "I think 7", "7.0", true, 1.0, F);
  JUDGE(&t, "I think 7", "no idea", false, 0.0, F);
  JUDGE(&t, "no idea", "No idea!", true, 1.0, F);
  JUDGE(&t, "no idea", "unsure", false, 0.0, F);
  ac_checker_t t0 = checker(AC_CHECK_NUMBER, NULL);
  JUDGE(&t0, "5", "5", true, 1.0, U);

  ac_checker_t e = checker(AC_CHECK_EXACT, "Garcia, M. (2019). Title. J, 1(2), 3-4.");
  JUDGE(&e, "garcia, m. (2019). title. j, 1(2), 3-4", " Garcia, M. (2019).  Title. J, 1(2), 3-4.\n", true, 1.0, T);
  JUDGE(&e, "Garcia, M. 2019. Title.", "Garcia, M. (2019). Title.", false, 0.0, F);
  ac_checker_t e0 = checker(AC_CHECK_EXACT, NULL);
  JUDGE(&e0, "a", "A.", true, 1.0, U);

  ac_text_t al[1] = {{"CO2", 3}};
  ac_checker_t c = checker(AC_CHECK_CONTAINS, "carbon dioxide");
  c.aliases = al, c.n_aliases = 1;
  JUDGE(&c, "Carbon dioxide.", "They take in CO2 from the air.", true, 1.0, T);
  JUDGE(&c, "Oxygen", "oxygen!", true, 1.0, F);
  JUDGE(&c, "Oxygen", "Nitrogen", false, 0.0, F);
  JUDGE(&c, "Oxygen", "carbon dioxide", false, 0.0, T);
  JUDGE(&c, "carbon dioxide", "carbon", false, 0.0, F);
  ac_checker_t c0 = checker(AC_CHECK_CONTAINS, NULL);
  ac_judgement_t j;
  CHECK(ac_judge(&c0, S("a"), S("a"), &j) == AC_EINVAL, "contains without answer or aliases");

  ac_checker_t s = checker(AC_CHECK_SIMILARITY, NULL);
  JUDGE(&s, "the cat sat on the mat", "the cat lay on a mat", true, 2.0 * 4 / 12, U);
  s.theta = 0.7;
  JUDGE(&s, "the cat sat on the mat", "the cat lay on a mat", false, 2.0 * 4 / 12, U);
  s.theta = 0.75;
  JUDGE(&s, "a b c d", "a c d e", true, 0.75, U);
  s.theta = 0.5;
  JUDGE(&s, "x y", "x y", true, 1.0, U);
  JUDGE(&s, "x y", "z w", false, 0.0, U);
  ac_checker_t bad = {.kind = (ac_check_kind_t)7};
  CHECK(ac_judge(&bad, S("a"), S("a"), &j) == AC_EINVAL, "unknown kind");
  // NUL bytes are ordinary bytes.
  ac_checker_t ex = checker(AC_CHECK_EXACT, NULL);
  ac_judgement_t jn;
  CHECK(ac_judge(&ex, "a\0b", 3, "a\0c", 3, &jn) == 0 && !jn.success, "NUL inside");
}

#define HDR "{\"format\": \"agentcompress-workload\", \"version\": 1}\n"
#define OK "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"exact\"}}\n"

static void bad_workload(const char *text, const char *want) {
  ac_workload_t w;
  int rc = ac_workload_parse(text, strlen(text), "f.jsonl", &w);
  CHECK(rc == AC_EFORMAT && strstr(ac_errmsg(), want), "workload error \"%s\", want \"%s\"", ac_errmsg(), want);
  CHECK(w.n == 0 && !w.tasks && !w.header, "freed on error");
}

static void test_workload(void) {
  const char *good =
      HDR "\n"
          "{\"workflow\": \"a\", \"step\": 0, \"domain\": \"law\", \"type\": \"qa\", \"prompt\": \"Q?\", \"max_tokens\": 4, "
          "\"checker\": {\"kind\": \"exact\"}, \"answer\": \"yes\", \"extra\": [1, 2]}\n"
          "   \n"
          "{\"id\": \"mine\", \"workflow\": \"a\", \"step\": 1, \"domain\": \"law\", \"type\": \"qa\", \"difficulty\": \"hard\", "
          "\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Why?\"}], "
          "\"max_tokens\": 4, \"checker\": {\"kind\": \"similarity\", \"theta\": 0.25}}\r\n"
          "{\"workflow\": \"b\", \"step\": 0, \"domain\": \"x\", \"type\": \"y\", \"prompt\": \"\", \"max_tokens\": 9, "
          "\"checker\": {\"kind\": \"contains\", \"aliases\": [\"CO2\", \"carbon\"]}}";
  ac_workload_t w;
  int rc = ac_workload_parse(good, strlen(good), "good.jsonl", &w);
  CHECK(rc == 0, "good workload: %s", ac_errmsg());
  if (rc == 0) {
    CHECK(w.n == 3, "%zu tasks", w.n);
    CHECK(strcmp(w.tasks[0].id, "a/0") == 0 && w.tasks[0].line == 3, "id %s line %d", w.tasks[0].id, w.tasks[0].line);
    CHECK(w.tasks[0].prompt && strcmp(w.tasks[0].prompt, "Q?") == 0 && w.tasks[0].has_answer &&
              strcmp(w.tasks[0].answer, "yes") == 0 && w.tasks[0].checker.kind == AC_CHECK_EXACT,
          "task 0");
    const ac_task_t *t1 = &w.tasks[1];
    CHECK(strcmp(t1->id, "mine") == 0 && t1->n_messages == 2 && !t1->prompt && t1->max_tokens == 4 &&
              strcmp(t1->difficulty, "hard") == 0 && t1->checker.kind == AC_CHECK_SIMILARITY &&
              t1->checker.theta == 0.25 && t1->line == 5,
          "task 1");
    size_t n;
    char *text = ac_task_text(t1, &n);
    CHECK(text && strcmp(text, "Be brief.\nWhy?") == 0 && n == 14, "task text");
    free(text);
    const ac_task_t *t2 = &w.tasks[2];
    CHECK(t2->checker.kind == AC_CHECK_CONTAINS && t2->checker.n_aliases == 2 && !t2->has_answer &&
              t2->checker.aliases[0].len == 3 && t2->prompt_len == 0 && t2->checker.theta == 0.5,
          "task 2");
    ac_workload_free(&w);
  }
  // tests/py/test_workloads.py: test_invalid_tasks_are_rejected (each on line 2).
  bad_workload(HDR "{\"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"exact\"}}\n",
               "f.jsonl:2: field 'workflow'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": -1, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"exact\"}}\n",
               ":2: field 'step'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"max_tokens\": 1, \"checker\": {\"kind\": \"exact\"}}\n",
               ":2: a task needs exactly one");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"messages\": [], \"max_tokens\": 1, \"checker\": {\"kind\": \"exact\"}}\n",
               ":2: a task needs exactly one");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"messages\": [{\"role\": \"bot\", \"content\": \"x\"}], \"max_tokens\": 1, \"checker\": {\"kind\": \"exact\"}}\n",
               ":2: each message");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 0, \"checker\": {\"kind\": \"exact\"}}\n",
               ":2: field 'max_tokens'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": true, \"checker\": {\"kind\": \"exact\"}}\n",
               ":2: field 'max_tokens'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"regex\"}}\n",
               ":2: field 'checker'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"similarity\", \"theta\": 2}}\n",
               ":2: checker 'theta'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"contains\"}}\n",
               ":2: a 'contains' checker");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"number\"}, \"answer\": 5}\n",
               ":2: field 'answer'");
  bad_workload(HDR "{\"workflow\": \"w\", \"step\": 0, \"domain\": \"d\", \"type\": \"t\", \"prompt\": \"p\", \"max_tokens\": 1, \"checker\": {\"kind\": \"contains\", \"aliases\": [1]}, \"answer\": \"a\"}\n",
               ":2: checker 'aliases'");
  bad_workload(HDR "[1]\n", ":2: a task must be a JSON object");
  // test_invalid_files_are_rejected.
  bad_workload("{\"format\": \"other\", \"version\": 1}\n" OK, "f.jsonl:1: the first line must be a header");
  bad_workload("{\"format\": \"agentcompress-workload\", \"version\": 2}\n" OK, ":1: unsupported workload version 2");
  bad_workload(HDR OK OK, "f.jsonl:3: workflow 'w' has step 0 twice");
  bad_workload("", "f.jsonl: empty file (no header)");
  bad_workload("\n  \n", "empty file");
  bad_workload(HDR "{not json\n", "f.jsonl:2: bad JSON");
  bad_workload(HDR "\"\xff\"\n", "f.jsonl:2: not UTF-8");
  ac_workload_t w2;
  CHECK(ac_workload_load("/nonexistent/w.jsonl", &w2) == AC_EIO, "missing file");
}

static void test_utf8(void) {
  CHECK(ac_utf8_valid(S("plain")), "ascii");
  CHECK(ac_utf8_valid(S("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80")), "valid");
  CHECK(!ac_utf8_valid(S("\xc3")), "truncated");
  CHECK(!ac_utf8_valid(S("\xc0\xaf")), "overlong");
  CHECK(!ac_utf8_valid(S("\xed\xa0\x80")), "surrogate");
  CHECK(!ac_utf8_valid(S("\xf4\x90\x80\x80")), "past U+10FFFF");
}

int main(void) {
  test_numbers();
  test_normalize_contains_tokens();
  test_judge();
  test_workload();
  test_utf8();
  return check_report();
}
