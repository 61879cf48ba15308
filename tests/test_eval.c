// test_eval.c - ac_eval_compare on the real stories260K weights: a model against itself gives
// exactly zero divergence; against a perturbed copy (a larger RMSNorm epsilon) it matches a
// direct computation from the logits; parameter, text and tokenizer errors; the GSM8K text.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "stories.h"
#include "error.h"
#include "eval.h"
#include "model.h"
#include "quant.h"

// Straightforward statistics of one window, computed from ac_ctx_eval's logits with the
// textbook formulas (probabilities first, then logs), for comparison.
static void direct(const ac_model_t *a, const ac_model_t *b, const int32_t *w, int T, double *kl, double *top1,
                   double *nll_a, double *nll_b) {
  int V = a->hp.n_vocab, first = T / 2, per = T - first;
  float *la = malloc((size_t)per * V * sizeof *la), *lb = malloc((size_t)per * V * sizeof *lb);
  int8_t *want = calloc(T, 1);
  for (int i = first - 1; i < T - 1; i++) want[i] = 1;
  ac_ctx_params_t cp = {.n_ctx = T, .n_seq = 1, .n_batch = T, .n_threads = 1};
  ac_ctx_t *ca = NULL, *cb = NULL;
  ac_ctx_new(a, cp, &ca);
  ac_ctx_new(b, cp, &cb);
  ac_ctx_eval(ca, T, w, NULL, want, la);
  ac_ctx_eval(cb, T, w, NULL, want, lb);
  *kl = *top1 = *nll_a = *nll_b = 0;
  double *pa = malloc(V * sizeof *pa), *pb = malloc(V * sizeof *pb);
  for (int r = 0; r < per; r++) {
    const float *x = la + (size_t)r * V, *y = lb + (size_t)r * V;
    double sa = 0, sb = 0;
    int ma = 0, mb = 0;
    for (int v = 0; v < V; v++) {
      sa += pa[v] = exp(x[v]);  // stories260K's logits are small: no max subtraction needed
      sb += pb[v] = exp(y[v]);
      if (x[v] > x[ma]) ma = v;
      if (y[v] > y[mb]) mb = v;
    }
    for (int v = 0; v < V; v++) *kl += pa[v] / sa * log((pa[v] / sa) / (pb[v] / sb));
    *top1 += ma == mb;
    *nll_a -= log(pa[w[first + r]] / sa);
    *nll_b -= log(pb[w[first + r]] / sb);
  }
  *kl /= per;
  *top1 /= per;
  free(pa);
  free(pb);
  free(want);
  free(la);
  free(lb);
  ac_ctx_destroy(&ca);
  ac_ctx_destroy(&cb);
}

static void test_gsm8k_text(void) {
  char path[] = "/tmp/ac_test_eval_jsonl_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fdopen(fd, "w");
  fputs("{\"question\": \"Two plus two?\", \"answer\": \"2+2=<<2+2=4>>4\\n#### 4\"}\n\n"
        "{\"question\": \"Caf\\u00e9?\", \"answer\": \"#### 1\"}\n"
        "not json\n",
        f);
  fclose(f);
  char *text = NULL;
  size_t len = 0;
  int rc = ac_eval_gsm8k_text(path, 2, &text, &len);
  const char *want = "Question: Two plus two?\nAnswer: 2+2=<<2+2=4>>4\n#### 4\n\n"
                     "Question: Caf\xc3\xa9?\nAnswer: #### 1\n\n";
  CHECK(rc == 0 && text && len == strlen(want) && memcmp(text, want, len) == 0, "text: rc %d '%s'", rc,
        text ? text : ac_errmsg());
  free(text);
  text = NULL;
  rc = ac_eval_gsm8k_text(path, 3, &text, &len);
  CHECK(rc == AC_EFORMAT && strstr(ac_errmsg(), ":4:") && !text, "malformed line 4: rc %d '%s'", rc, ac_errmsg());
  f = fopen(path, "w");
  fputs("{\"question\": \"q\", \"answer\": \"a\"}\n", f);
  fclose(f);
  rc = ac_eval_gsm8k_text(path, 2, &text, &len);
  CHECK(rc == AC_ERANGE && strstr(ac_errmsg(), "has 1 problems"), "too few problems: rc %d '%s'", rc, ac_errmsg());
  CHECK(ac_eval_gsm8k_text(path, 0, &text, &len) == AC_EINVAL, "zero problems");
  unlink(path);
  CHECK(ac_eval_gsm8k_text(path, 1, &text, &len) == AC_EIO && strstr(ac_errmsg(), path), "missing file: '%s'",
        ac_errmsg());

  // AC_SHARED is obeyed, and a wrong setting is an error rather than a silent fallback.
  char dir[4096];
  const char *shared = getenv("AC_SHARED");
  if (shared) {
    CHECK(ac_eval_shared_dir(dir, sizeof dir) == 0 && strcmp(dir, shared) == 0, "AC_SHARED: '%s'", ac_errmsg());
    char *saved = strdup(shared);
    setenv("AC_SHARED", "/nonexistent", 1);
    rc = ac_eval_shared_dir(dir, sizeof dir);
    CHECK(rc == AC_ENOTFOUND && strstr(ac_errmsg(), "/nonexistent"), "bad AC_SHARED: rc %d '%s'", rc, ac_errmsg());
    setenv("AC_SHARED", saved, 1);
    free(saved);
  }
}

int main(void) {
  ac_quant_init();
  test_gsm8k_text();

  char path[] = "/tmp/ac_test_eval_XXXXXX";
  int rc = stories_gguf(path);
  CHECK(rc == 0, "convert: %s", ac_errmsg());
  ac_model_t *m = NULL, *m2 = NULL;
  if (rc || ac_model_load(path, &m) || ac_model_load(path, &m2)) {
    CHECK(0, "load: %s", ac_errmsg());
    goto done;
  }

  // A deterministic token stream over the whole vocabulary but BOS/EOS.
  enum { N = 200, T = 32 };
  int32_t ids[N];
  uint32_t s = 12345;
  for (int i = 0; i < N; i++) {
    s = s * 1664525u + 1013904223u;
    ids[i] = 3 + (int32_t)((s >> 8) % (uint32_t)(m->hp.n_vocab - 3));
  }
  ac_eval_params_t p = ac_eval_default_params();
  p.n_ctx = T;
  ac_eval_result_t r;

  // --- a model against itself
  rc = ac_eval_compare(m, m2, ids, N, p, &r);
  CHECK(rc == 0, "self: %s", ac_errmsg());
  CHECK(r.n_chunks == N / T && r.n_scored == (int64_t)(N / T) * (T / 2) && r.n_tokens == N, "windows %d scored %lld",
        r.n_chunks, (long long)r.n_scored);
  CHECK(r.kld_mean == 0 && r.kld_p99 == 0 && r.kld_max == 0, "self KL %g %g %g", r.kld_mean, r.kld_p99, r.kld_max);
  CHECK(r.top1 == 1 && r.dppl == 0 && r.ppl_base == r.ppl_variant && isfinite(r.ppl_base), "self top-1 %g dppl %g",
        r.top1, r.dppl);
  p.max_chunks = 2;
  CHECK(ac_eval_compare(m, m2, ids, N, p, &r) == 0 && r.n_chunks == 2, "max_chunks: %d", r.n_chunks);

  // --- against a perturbed copy: one window, checked against the textbook formulas. BOS goes
  // first, as the window scoring puts it there for this SentencePiece tokenizer.
  m2->hp.norm_eps = 0.05f;
  p.max_chunks = 1;
  rc = ac_eval_compare(m, m2, ids, N, p, &r);
  CHECK(rc == 0, "perturbed: %s", ac_errmsg());
  int32_t w[T];
  memcpy(w, ids, sizeof w);
  w[0] = ac_tokenizer_bos(m->tok);
  double kl, top1, nll_a, nll_b;
  direct(m, m2, w, T, &kl, &top1, &nll_a, &nll_b);
  CHECK(r.kld_mean > 1e-4 && fabs(r.kld_mean - kl) <= 1e-9 * kl, "KL %.12g vs direct %.12g", r.kld_mean, kl);
  CHECK(r.top1 == top1 && r.top1 < 1, "top-1 %g vs direct %g", r.top1, top1);
  CHECK(fabs(r.ppl_base - exp(nll_a / (T / 2))) < 1e-9 * r.ppl_base, "ppl base %.12g vs %.12g", r.ppl_base,
        exp(nll_a / (T / 2)));
  CHECK(fabs(r.ppl_variant - exp(nll_b / (T / 2))) < 1e-9 * r.ppl_variant, "ppl variant %.12g vs %.12g",
        r.ppl_variant, exp(nll_b / (T / 2)));
  CHECK(r.kld_max >= r.kld_p99 && r.kld_p99 >= 0 && r.kld_p99 <= r.kld_max, "p99 %g max %g", r.kld_p99, r.kld_max);
  CHECK(fabs(r.dppl - (r.ppl_variant - r.ppl_base)) < 1e-12 && fabs(r.dppl_rel - r.dppl / r.ppl_base) < 1e-12,
        "dppl %g rel %g", r.dppl, r.dppl_rel);
  m2->hp.norm_eps = m->hp.norm_eps;

  // --- errors
  p = ac_eval_default_params();
  p.n_ctx = T;
  rc = ac_eval_compare(m, m2, ids, T - 1, p, &r);
  CHECK(rc == AC_ERANGE && strstr(ac_errmsg(), "needs at least 32"), "short text: rc %d '%s'", rc, ac_errmsg());
  p.n_ctx = 4;
  CHECK(ac_eval_compare(m, m2, ids, N, p, &r) == AC_EINVAL, "n_ctx 4");
  p.n_ctx = T;
  p.confident_p = 2;
  CHECK(ac_eval_compare(m, m2, ids, N, p, &r) == AC_EINVAL, "confidence 2");
  p.confident_p = 0.5;
  m2->hp.n_vocab--;
  rc = ac_eval_compare(m, m2, ids, N, p, &r);
  CHECK(rc == AC_EINVAL && strstr(ac_errmsg(), "different tokenizers"), "vocab size: rc %d '%s'", rc, ac_errmsg());
  m2->hp.n_vocab++;
  int32_t bad[T];
  memcpy(bad, ids, sizeof bad);
  bad[5] = m->hp.n_vocab;
  CHECK(ac_eval_compare(m, m2, bad, T, p, &r) == AC_EINVAL, "token id out of range: '%s'", ac_errmsg());

done:
  ac_model_destroy(&m);
  ac_model_destroy(&m2);
  unlink(path);
  return check_report();
}
