// eval.c - perplexity, KL divergence and top-1 agreement of a variant against its base.
#include "eval.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"

ac_eval_params_t ac_eval_default_params(void) {
  return (ac_eval_params_t){.n_ctx = 512, .n_threads = 1, .max_chunks = 0, .confident_p = 0.5};
}

// --- tokenizer check ---------------------------------------------------------------------------

int ac_eval_check_tokenizers(const ac_model_t *base, const ac_model_t *variant) {
  if (!base || !variant) return ac_error(AC_EINVAL, "eval: no model");
  const ac_tokenizer_t *tb = base->tok, *tv = variant->tok;
  int32_t nb = ac_tokenizer_n_vocab(tb), nv = ac_tokenizer_n_vocab(tv);
  if (nb != nv || base->hp.n_vocab != variant->hp.n_vocab)
    return ac_error(AC_EINVAL,
                    "the models have different tokenizers: vocabulary of %d tokens in the base, %d in the variant",
                    base->hp.n_vocab, variant->hp.n_vocab);
  if (ac_tokenizer_kind(tb) != ac_tokenizer_kind(tv))
    return ac_error(AC_EINVAL, "the models have different tokenizers: %s in the base, %s in the variant",
                    ac_tokenizer_kind(tb) == AC_TOK_SPM ? "SentencePiece" : "byte-level BPE",
                    ac_tokenizer_kind(tv) == AC_TOK_SPM ? "SentencePiece" : "byte-level BPE");
  if (ac_tokenizer_bos(tb) != ac_tokenizer_bos(tv) || ac_tokenizer_add_bos(tb) != ac_tokenizer_add_bos(tv))
    return ac_error(AC_EINVAL, "the models have different tokenizers: BOS %d%s in the base, %d%s in the variant",
                    ac_tokenizer_bos(tb), ac_tokenizer_add_bos(tb) ? " (added)" : "", ac_tokenizer_bos(tv),
                    ac_tokenizer_add_bos(tv) ? " (added)" : "");
  // Same size is not the same vocabulary: compare every token's text, so that two unrelated
  // models of equal vocabulary size are not compared position by position.
  for (int32_t i = 0; i < nb; i++) {
    const char *a = ac_tokenizer_token_text(tb, i), *b = ac_tokenizer_token_text(tv, i);
    if (!a || !b || strcmp(a, b) != 0)
      return ac_error(AC_EINVAL, "the models have different tokenizers: token %d is '%.40s' in the base, '%.40s' in the variant",
                      i, a ? a : "?", b ? b : "?");
  }
  return 0;
}

// --- per-position statistics ---------------------------------------------------------------------

// The pieces of one row's log-softmax, in double with the max subtracted so nothing overflows.
typedef struct {
  int32_t argmax;  // first index of the largest logit
  double sum;      // sum_v exp(lg[v] - lg[argmax])
  double lse;      // log(sum_v exp(lg[v]))
} row_stats_t;

// When e is not NULL it receives exp(lg[v] - max), which the KL pass reuses instead of calling
// exp() again (a third of the cost over a 49k vocabulary).
static row_stats_t row_stats(const float *lg, int32_t V, double *e) {
  row_stats_t r = {0, 0, 0};
  for (int32_t v = 1; v < V; v++)
    if (lg[v] > lg[r.argmax]) r.argmax = v;
  double mx = lg[r.argmax];
  if (e) {
    for (int32_t v = 0; v < V; v++) r.sum += e[v] = exp((double)lg[v] - mx);
  } else {
    for (int32_t v = 0; v < V; v++) r.sum += exp((double)lg[v] - mx);
  }
  r.lse = mx + log(r.sum);
  return r;
}

// KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)) for logits a (P) and b (Q), with
// ea[v] = exp(a[v] - max a) from row_stats. Terms where P underflows to 0 contribute 0 (the
// limit of p log p); identical rows give exactly 0.
static double kl_div(const float *a, row_stats_t sa, const double *ea, const float *b, row_stats_t sb, int32_t V) {
  double kl = 0;
  for (int32_t v = 0; v < V; v++) {
    double pa = ea[v] / sa.sum;
    if (pa > 0) kl += pa * (((double)a[v] - sa.lse) - ((double)b[v] - sb.lse));
  }
  return kl;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

// The q-quantile of x[0..n) with linear interpolation between closest ranks (numpy's default),
// so an independent check can reproduce it. Sorts x.
static double quantile(double *x, int64_t n, double q) {
  if (n == 0) return 0;
  qsort(x, (size_t)n, sizeof *x, cmp_double);
  double h = (double)(n - 1) * q;
  int64_t lo = (int64_t)floor(h);
  if (lo >= n - 1) return x[n - 1];
  return x[lo] + (h - (double)lo) * (x[lo + 1] - x[lo]);
}

// Turns the running sums into the reported numbers.
static void finish(ac_eval_result_t *r, double nll_b, double nll_v, double kl_sum, int64_t same, int64_t same_conf) {
  int64_t n = r->n_scored;
  r->ppl_base = n ? exp(nll_b / (double)n) : 0;
  r->ppl_variant = n ? exp(nll_v / (double)n) : 0;
  r->dppl = r->ppl_variant - r->ppl_base;
  r->dppl_rel = r->ppl_base > 0 ? r->dppl / r->ppl_base : 0;
  r->kld_mean = n ? kl_sum / (double)n : 0;
  r->top1 = n ? (double)same / (double)n : 0;
  r->top1_confident = r->n_confident ? (double)same_conf / (double)r->n_confident : 0;
}

// --- comparison ----------------------------------------------------------------------------------

int ac_eval_compare(const ac_model_t *base, const ac_model_t *variant, const int32_t *ids, int n,
                    ac_eval_params_t p, ac_eval_result_t *out) {
  if (!base || !variant || !out || (!ids && n > 0) || n < 0)
    return ac_error(AC_EINVAL, "eval: missing model, ids or result");
  if (p.n_ctx < 8 || p.n_threads < 1 || p.max_chunks < 0 || !(p.confident_p >= 0 && p.confident_p <= 1))
    return ac_error(AC_EINVAL, "eval: bad parameters (n_ctx %d must be >= 8, threads %d >= 1, chunks %d >= 0, "
                               "confidence %g in [0, 1])",
                    p.n_ctx, p.n_threads, p.max_chunks, p.confident_p);
  int rc = ac_eval_check_tokenizers(base, variant);
  if (rc) return rc;

  const int32_t V = base->hp.n_vocab, T = p.n_ctx, first = T / 2, per = T - first;
  int32_t n_chunks = n / T;
  if (p.max_chunks > 0 && p.max_chunks < n_chunks) n_chunks = p.max_chunks;
  if (n_chunks == 0)
    return ac_error(AC_ERANGE, "the text has %d tokens; it needs at least %d (one window of n_ctx)", n, T);

  memset(out, 0, sizeof *out);
  out->n_ctx = T;
  out->n_tokens = n;
  ac_ctx_t *cb = NULL, *cv = NULL;
  int32_t *win = malloc((size_t)T * sizeof *win);
  int8_t *want = calloc((size_t)T, 1);
  // Two windows of logits: the scored rows of the base and of the variant.
  float *lb = malloc((size_t)per * V * sizeof *lb), *lv = malloc((size_t)per * V * sizeof *lv);
  double *kls = malloc((size_t)n_chunks * per * sizeof *kls), *ea = malloc((size_t)V * sizeof *ea);
  if (!win || !want || !lb || !lv || !kls || !ea) {
    rc = ac_error(AC_ENOMEM, "eval: out of memory for %d x %d logits", per, V);
    goto fail;
  }
  ac_ctx_params_t cp = {.n_ctx = T, .n_seq = 1, .n_batch = T, .n_threads = p.n_threads};
  if ((rc = ac_ctx_new(base, cp, &cb)) || (rc = ac_ctx_new(variant, cp, &cv))) goto fail;

  // Row i's logits predict token i+1; rows first-1 .. T-2 predict the second half.
  for (int32_t i = first - 1; i < T - 1; i++) want[i] = 1;
  const int32_t bos = ac_tokenizer_bos(base->tok);
  const bool put_bos = bos >= 0 && ac_tokenizer_add_bos(base->tok);
  double nll_b = 0, nll_v = 0, kl_sum = 0;
  int64_t same = 0, same_conf = 0;
  for (int32_t k = 0; k < n_chunks; k++) {
    memcpy(win, ids + (size_t)k * T, (size_t)T * sizeof *win);
    if (put_bos) win[0] = bos;
    ac_ctx_seq_truncate(cb, 0, 0);
    ac_ctx_seq_truncate(cv, 0, 0);
    if ((rc = ac_ctx_eval(cb, T, win, NULL, want, lb)) || (rc = ac_ctx_eval(cv, T, win, NULL, want, lv))) goto fail;
    for (int32_t r = 0; r < per; r++) {
      const float *a = lb + (size_t)r * V, *b = lv + (size_t)r * V;
      int32_t tgt = win[first + r];
      row_stats_t sa = row_stats(a, V, ea), sb = row_stats(b, V, NULL);
      nll_b -= (double)a[tgt] - sa.lse;
      nll_v -= (double)b[tgt] - sb.lse;
      double kl = kl_div(a, sa, ea, b, sb, V);
      kls[out->n_scored++] = kl;
      kl_sum += kl;
      bool agree = sa.argmax == sb.argmax;
      same += agree;
      // The base's top-1 probability is exp(max - max) / sum.
      if (1 / sa.sum > p.confident_p) {
        out->n_confident++;
        same_conf += agree;
      }
    }
    out->n_chunks = k + 1;
    if (p.progress) {
      finish(out, nll_b, nll_v, kl_sum, same, same_conf);
      p.progress(p.user, k + 1, n_chunks, out);
    }
  }
  finish(out, nll_b, nll_v, kl_sum, same, same_conf);
  for (int64_t i = 0; i < out->n_scored; i++) out->kld_max = kls[i] > out->kld_max ? kls[i] : out->kld_max;
  out->kld_p99 = quantile(kls, out->n_scored, 0.99);
  rc = 0;

fail:
  ac_ctx_destroy(&cb);
  ac_ctx_destroy(&cv);
  free(ea);
  free(kls);
  free(lv);
  free(lb);
  free(want);
  free(win);
  return rc;
}

// --- the default evaluation text -----------------------------------------------------------------

static bool has_gsm8k(const char *dir) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/data/gsm8k/test.jsonl", dir) >= (int)sizeof path) return false;
  return access(path, R_OK) == 0;
}

// Copies the directory part of `path` (everything before the last '/') into buf.
static bool dir_of(const char *path, char *buf, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash || (size_t)(slash - path) >= cap) return false;
  memcpy(buf, path, slash - path);
  buf[slash - path] = 0;
  return true;
}

int ac_eval_shared_dir(char *buf, size_t cap) {
  if (!buf || cap == 0) return ac_error(AC_EINVAL, "eval: no buffer for the shared directory");
  const char *env = getenv("AC_SHARED");
  if (env && *env) {
    // An explicit setting is obeyed, not second-guessed: a wrong one is an error, not a fallback.
    if (!has_gsm8k(env))
      return ac_error(AC_ENOTFOUND, "AC_SHARED=%s has no data/gsm8k/test.jsonl", env);
    if (snprintf(buf, cap, "%s", env) >= (int)cap) return ac_error(AC_ERANGE, "AC_SHARED is too long");
    return 0;
  }
  char exe[PATH_MAX], dir[PATH_MAX], cand[2][PATH_MAX];
  int nc = 0;
  // A build tree inside the checkout (main/build/bin/acq): the shared folder sits beside main.
  ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (l > 0) {
    exe[l] = 0;
    if (dir_of(exe, dir, sizeof dir) && snprintf(cand[nc], PATH_MAX, "%s/../../../shared", dir) < PATH_MAX) nc++;
  }
  // A build tree elsewhere: this source file's checkout (main/lib/eval.c) still knows its place.
  if (__FILE__[0] == '/' && dir_of(__FILE__, dir, sizeof dir) &&
      snprintf(cand[nc], PATH_MAX, "%s/../../shared", dir) < PATH_MAX)
    nc++;
  for (int i = 0; i < nc; i++) {
    if (!has_gsm8k(cand[i])) continue;
    char real[PATH_MAX];
    const char *d = realpath(cand[i], real) ? real : cand[i];
    if (snprintf(buf, cap, "%s", d) >= (int)cap) return ac_error(AC_ERANGE, "the shared directory path is too long");
    return 0;
  }
  return ac_error(AC_ENOTFOUND, "cannot find the shared data (data/gsm8k/test.jsonl): set AC_SHARED (looked in %s%s%s)",
                  nc > 0 ? cand[0] : "nowhere", nc > 1 ? " and " : "", nc > 1 ? cand[1] : "");
}

// Appends n bytes to a growing buffer.
static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 4096;
    while (*len + n + 1 > c) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return ac_error(AC_ENOMEM, "out of memory building the evaluation text");
    *buf = b;
    *cap = c;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = 0;
  return 0;
}

int ac_eval_gsm8k_text(const char *jsonl, int n_problems, char **text, size_t *len) {
  if (!jsonl || !text || !len || n_problems < 1)
    return ac_error(AC_EINVAL, "eval: the GSM8K text needs a file and at least one problem");
  FILE *f = fopen(jsonl, "rb");
  if (!f) return ac_error(AC_EIO, "cannot open '%s': %s", jsonl, strerror(errno));
  char *line = NULL, *buf = NULL;
  size_t lcap = 0, blen = 0, bcap = 0;
  int got = 0, lineno = 0, rc = 0;
  json_t *o = NULL;
  while (got < n_problems) {
    ssize_t ll = getline(&line, &lcap, f);
    if (ll < 0) break;
    lineno++;
    if (strspn(line, " \t\r\n") == (size_t)ll) continue;
    json_error_t jerr;
    o = json_loadb(line, (size_t)ll, 0, &jerr);
    const char *q = o ? json_string_value(json_object_get(o, "question")) : NULL;
    const char *a = o ? json_string_value(json_object_get(o, "answer")) : NULL;
    if (!q || !a) {
      rc = ac_error(AC_EFORMAT, "%s:%d: expected a JSON object with string \"question\" and \"answer\"%s%s", jsonl,
                    lineno, o ? "" : ": ", o ? "" : jerr.text);
      goto fail;
    }
    if ((rc = append(&buf, &blen, &bcap, "Question: ", 10)) || (rc = append(&buf, &blen, &bcap, q, strlen(q))) ||
        (rc = append(&buf, &blen, &bcap, "\nAnswer: ", 9)) || (rc = append(&buf, &blen, &bcap, a, strlen(a))) ||
        (rc = append(&buf, &blen, &bcap, "\n\n", 2)))
      goto fail;
    json_decref(o);
    o = NULL;
    got++;
  }
  if (ferror(f)) {
    rc = ac_error(AC_EIO, "cannot read '%s'", jsonl);
    goto fail;
  }
  if (got < n_problems) {
    rc = ac_error(AC_ERANGE, "%s has %d problems; %d were asked for", jsonl, got, n_problems);
    goto fail;
  }
  fclose(f);
  free(line);
  *text = buf;
  *len = blen;
  return 0;

fail:
  json_decref(o);
  fclose(f);
  free(line);
  free(buf);
  return rc;
}
