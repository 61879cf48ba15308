// acq_eval.c - `acq eval BASE VARIANT [TEXTFILE]`: how close a variant stays to its base.
//
// The numbers come from ac_eval_compare (lib/eval.h), which the zoo builder calls in-process
// too; this file chooses the text, tokenizes it with both models and prints the result as a
// table or as one JSON object.
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "acq.h"
#include "error.h"
#include "file.h"
#include "eval.h"
#include "model.h"
#include "tokenizer.h"

// How many GSM8K problems make the default text: about 7,400 SmolLM2 tokens, 14 windows of 512,
// a minute or two per pair of small models on a laptop.
#define DEFAULT_GSM8K 40

static void usage(FILE *f) {
  char shared[PATH_MAX];
  int rc = ac_eval_shared_dir(shared, sizeof shared);
  fprintf(f,
          "usage: acq eval BASE VARIANT [TEXTFILE] [options]\n"
          "Perplexity of both models over a text, and between them: mean KL(base || variant) of the\n"
          "next-token distributions (and its 99th percentile and max), top-1 agreement (overall and\n"
          "where the base's top token has p > 0.5), and dPPL = PPL(variant) - PPL(base).\n"
          "Scored as 'acq perplexity' scores: windows of N_CTX tokens (BOS first where the tokenizer\n"
          "adds one), second half of each window.\n"
          "  -c N_CTX      window length in tokens (default 512)\n"
          "  -t THREADS    threads per model (default 1)\n"
          "  --chunks N    score only the first N windows (default: all)\n"
          "  --gsm8k N     the text is the first N GSM8K test problems (the default, N = %d)\n"
          "  --save-text F write the evaluation text to F (e.g. for 'acq perplexity' on the same text)\n"
          "  --json        print one JSON object instead of the table\n"
          "Without TEXTFILE the text is built from data/gsm8k/test.jsonl in the project's shared\n"
          "folder ($AC_SHARED, else ../shared beside the checkout), each problem written as\n"
          "'Question: Q\\nAnswer: A\\n\\n'; the same N always gives the same text.\n"
          "  shared folder: %s\n",
          DEFAULT_GSM8K, rc ? ac_errmsg() : shared);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Tokenizes as `acq perplexity` does (no BOS, special-token text read as plain text); *ids is
// malloc'ed.
static int tokenize_text(const ac_tokenizer_t *tok, const char *text, size_t len, int32_t **ids, int *n) {
  int cap = (int)(len + 16 < (1u << 30) ? len + 16 : 1u << 30);
  int32_t *buf = malloc((size_t)cap * sizeof *buf);
  if (!buf) return ac_error(AC_ENOMEM, "out of memory for %d token ids", cap);
  int rc = ac_tokenize(tok, text, len, false, false, buf, cap);
  if (rc > cap) {
    int32_t *b = realloc(buf, (size_t)rc * sizeof *b);
    if (!b) {
      free(buf);
      return ac_error(AC_ENOMEM, "out of memory for %d token ids", rc);
    }
    buf = b;
    rc = ac_tokenize(tok, text, len, false, false, buf, rc);
  }
  if (rc < 0) {
    free(buf);
    return rc;
  }
  *ids = buf;
  *n = rc;
  return 0;
}

static void progress(void *user, int32_t done, int32_t total, const ac_eval_result_t *r) {
  fprintf(stderr, "\r[%d/%d] ppl %.4f / %.4f, KLD %.6f, top-1 %.2f%%", done, total, r->ppl_base, r->ppl_variant,
          r->kld_mean, 100 * r->top1);
  if (done == total) fputc('\n', stderr);
}

// One "label  value" row; the label is padded by characters, not bytes, so that "Δ" aligns.
static void row(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void row(const char *label, const char *fmt, ...) {
  int chars = 0;
  for (const unsigned char *s = (const unsigned char *)label; *s; s++) chars += (*s & 0xC0) != 0x80;
  printf("%s%*s", label, 24 - chars, "");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
}

int acq_eval_main(int argc, char **argv) {
  static const struct option opts[] = {{"chunks", required_argument, 0, 'k'},  {"gsm8k", required_argument, 0, 'g'},
                                       {"save-text", required_argument, 0, 's'}, {"json", no_argument, 0, 'j'},
                                       {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  ac_eval_params_t p = ac_eval_default_params();
  int n_gsm8k = 0, c;
  bool json = false;
  const char *save_text = NULL;
  char *end;
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:t:h", opts, NULL)) != -1) {
    switch (c) {
      case 'c': p.n_ctx = (int)strtol(optarg, &end, 10); if (*end || p.n_ctx < 8) goto usage; break;
      case 't': p.n_threads = (int)strtol(optarg, &end, 10); if (*end || p.n_threads < 1 || p.n_threads > 256) goto usage; break;
      case 'k': p.max_chunks = (int)strtol(optarg, &end, 10); if (*end || p.max_chunks < 1) goto usage; break;
      case 'g': n_gsm8k = (int)strtol(optarg, &end, 10); if (*end || n_gsm8k < 1) goto usage; break;
      case 's': save_text = optarg; break;
      case 'j': json = true; break;
      case 'h': usage(stdout); return 0;
      default: goto usage;
    }
  }
  int nargs = argc - optind;
  if (nargs < 2 || nargs > 3 || (nargs == 3 && n_gsm8k)) goto usage;
  const char *base_path = argv[optind], *var_path = argv[optind + 1], *text_path = nargs == 3 ? argv[optind + 2] : NULL;
  if (!text_path && !n_gsm8k) n_gsm8k = DEFAULT_GSM8K;

  ac_model_t *mb = NULL, *mv = NULL;
  char *text = NULL, shared[PATH_MAX], jsonl[PATH_MAX + 32];
  size_t len = 0;
  int32_t *ids = NULL, *ids_v = NULL;
  int n = 0, n_v = 0, status = 1, rc;
  json_t *o = NULL;
  // The text first: a missing text file or data folder fails before minutes of model loading.
  if (text_path) {
    if ((rc = ac_read_file(text_path, 0, &text, &len))) {
      status = acq_fail("eval", rc);
      goto done;
    }
  } else {
    if ((rc = ac_eval_shared_dir(shared, sizeof shared))) {
      status = acq_fail("eval", rc);
      goto done;
    }
    snprintf(jsonl, sizeof jsonl, "%s/data/gsm8k/test.jsonl", shared);
    if ((rc = ac_eval_gsm8k_text(jsonl, n_gsm8k, &text, &len))) {
      status = acq_fail("eval", rc);
      goto done;
    }
  }
  if (save_text) {
    FILE *f = fopen(save_text, "wb");
    bool ok = f && fwrite(text, 1, len, f) == len;
    if (f && fclose(f) != 0) ok = false;
    if (!ok) {
      fprintf(stderr, "acq: eval: cannot write %s: %s\n", save_text, strerror(errno));
      goto done;
    }
  }
  if ((rc = ac_model_load(base_path, &mb))) {
    status = acq_fail(base_path, rc);
    goto done;
  }
  if ((rc = ac_model_load(var_path, &mv))) {
    status = acq_fail(var_path, rc);
    goto done;
  }
  if ((rc = ac_eval_check_tokenizers(mb, mv))) {
    status = acq_fail("eval", rc);
    goto done;
  }
  // Equal vocabularies should tokenize alike; check the ids anyway, since a different
  // pre-tokenizer setting would silently compare different positions.
  if ((rc = tokenize_text(mb->tok, text, len, &ids, &n)) || (rc = tokenize_text(mv->tok, text, len, &ids_v, &n_v))) {
    status = acq_fail("eval: tokenize", rc);
    goto done;
  }
  int same = 0;
  while (same < n && same < n_v && ids[same] == ids_v[same]) same++;
  if (same < n || same < n_v) {
    fprintf(stderr, "acq: eval: the models tokenize the text differently (from token %d on: %d in the base, %d in the variant)\n",
            same, same < n ? ids[same] : -1, same < n_v ? ids_v[same] : -1);
    goto done;
  }
  if (isatty(STDERR_FILENO)) p.progress = progress;
  ac_eval_result_t r;
  double t0 = now_s();
  if ((rc = ac_eval_compare(mb, mv, ids, n, p, &r))) {
    if (p.progress) fputc('\n', stderr);
    status = acq_fail("eval", rc);
    goto done;
  }
  double secs = now_s() - t0;

  if (json) {
    o = json_pack("{s:s, s:s, s:{s:s, s:s?, s:i, s:I, s:I}, s:i, s:i, s:i, s:I}", "base", base_path, "variant",
                  var_path, "text", "source", text_path ? "file" : "gsm8k", "path", text_path ? text_path : jsonl,
                  "gsm8k_problems", text_path ? 0 : n_gsm8k, "bytes", (json_int_t)len, "tokens", (json_int_t)n,
                  "n_ctx", r.n_ctx, "n_chunks", r.n_chunks, "n_threads", p.n_threads, "n_scored",
                  (json_int_t)r.n_scored);
    json_t *m = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:f}", "ppl_base", r.ppl_base,
                          "ppl_variant", r.ppl_variant, "dppl", r.dppl, "dppl_rel", r.dppl_rel, "kld_mean", r.kld_mean,
                          "kld_p99", r.kld_p99, "kld_max", r.kld_max, "top1", r.top1, "top1_confident",
                          r.top1_confident, "confident_p", p.confident_p, "n_confident", (json_int_t)r.n_confident,
                          "seconds", secs);
    if (!o || !m || json_object_update(o, m)) {
      json_decref(m);
      fprintf(stderr, "acq: eval: out of memory\n");
      goto done;
    }
    json_decref(m);
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s) goto done;
    printf("%s\n", s);
    free(s);
  } else {
    row("base", "%s", base_path);
    row("variant", "%s", var_path);
    if (text_path) row("text", "%s: %d tokens", text_path, n);
    else row("text", "first %d GSM8K test problems (%s): %d tokens", n_gsm8k, jsonl, n);
    row("scored", "%lld tokens, second halves of %d windows of %d", (long long)r.n_scored, r.n_chunks, r.n_ctx);
    putchar('\n');
    row("PPL base", "%.4f", r.ppl_base);
    row("PPL variant", "%.4f", r.ppl_variant);
    row("ΔPPL", "%+.4f (%+.2f%%)", r.dppl, 100 * r.dppl_rel);
    row("KLD mean", "%.6f", r.kld_mean);
    row("KLD p99", "%.6f", r.kld_p99);
    row("KLD max", "%.6f", r.kld_max);
    row("top-1 agreement", "%.2f%%", 100 * r.top1);
    row("top-1 where base p>0.5", "%.2f%% (of %lld positions)", 100 * r.top1_confident, (long long)r.n_confident);
    row("time", "%.1f s (%d thread%s per model)", secs, p.n_threads, p.n_threads > 1 ? "s" : "");
  }
  status = 0;
done:
  json_decref(o);
  free(ids_v);
  free(ids);
  free(text);
  ac_model_destroy(&mv);
  ac_model_destroy(&mb);
  return status;
usage:
  usage(stderr);
  return 2;
}
