// acq_run.c - `acq run` (generate text) and `acq perplexity`.
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "acq.h"
#include "chat.h"
#include "error.h"
#include "file.h"
#include "model.h"
#include "prompt.h"
#include "sampler.h"
#include "tokenizer.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Evaluates tokens[0..n) of sequence 0 in chunks of n_batch; logits of the last token land in
// `logits`.
static int prefill(ac_ctx_t *ctx, const int32_t *tokens, int n, float *logits) {
  int B = ac_ctx_n_batch(ctx);
  for (int i = 0; i < n; i += B) {
    int k = n - i < B ? n - i : B;
    int rc = ac_ctx_eval(ctx, k, tokens + i, NULL, NULL, logits);
    if (rc) return rc;
  }
  return 0;
}

// --- acq run ---------------------------------------------------------------------------------

static int run_usage(void) {
  fprintf(stderr,
          "usage: acq run MODEL (-p PROMPT | -f FILE) [options]\n"
          "  --chat           format the prompt as a user message with the model's chat template\n"
          "  --system TEXT    system message for --chat\n"
          "  -n N             generate at most N tokens (default 256)\n"
          "  -t N             threads (default 1; per rank with --tp)\n"
          "  --tp K           tensor-parallel ranks (CPU: threads of this process; default 1)\n"
          "  --backend B      cpu or cuda (default cpu; cuda needs an AC_CUDA build)  --gpu N\n"
          "  -c N             context length (default: the model's, at most 4096)\n"
          "  --temp T         temperature (default 0 = greedy)\n"
          "  --top-k K  --top-p P  --min-p P  --seed S\n"
          "  --stop TEXT      stop before TEXT (repeatable)\n"
          "  --ignore-eos     keep generating past end-of-generation tokens (benchmarks)\n"
          "  --print-ids      also print the generated token ids on stderr\n"
          "An empty prompt starts from BOS. Only the generated text goes to stdout; speed goes to stderr.\n");
  return 2;
}

int acq_run_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"prompt", required_argument, 0, 'p'}, {"file", required_argument, 0, 'f'},
      {"chat", no_argument, 0, 'C'},         {"system", required_argument, 0, 'S'},
      {"temp", required_argument, 0, 'T'},   {"top-k", required_argument, 0, 'K'},
      {"top-p", required_argument, 0, 'P'},  {"min-p", required_argument, 0, 'M'},
      {"seed", required_argument, 0, 's'},   {"stop", required_argument, 0, 'x'},
      {"ignore-eos", no_argument, 0, 'E'},   {"print-ids", no_argument, 0, 'I'},
      {"tp", required_argument, 0, 'R'},     {"backend", required_argument, 0, 'B'},
      {"gpu", required_argument, 0, 'G'},    {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *prompt = NULL, *prompt_file = NULL, *system = NULL;
  int tp = 1, gpu = 0;
  ac_backend_t backend = AC_BACKEND_CPU;
  bool chat = false, ignore_eos = false, print_ids = false;
  int n_predict = 256, n_threads = 1, n_ctx = 0;
  ac_sampler_params_t sp = ac_sampler_default_params();
  const char *stops[16];
  int n_stops = 0;
  char *end;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "p:f:n:t:c:h", opts, NULL)) != -1) {
    switch (c) {
      case 'p': prompt = optarg; break;
      case 'f': prompt_file = optarg; break;
      case 'C': chat = true; break;
      case 'S': system = optarg; break;
      case 'n': n_predict = (int)strtol(optarg, &end, 10); if (*end || n_predict < 0) return run_usage(); break;
      case 't': n_threads = (int)strtol(optarg, &end, 10); if (*end || n_threads < 1 || n_threads > 256) return run_usage(); break;
      case 'c': n_ctx = (int)strtol(optarg, &end, 10); if (*end || n_ctx < 1) return run_usage(); break;
      case 'T': sp.temp = strtof(optarg, &end); if (*end) return run_usage(); break;
      case 'K': sp.top_k = (int)strtol(optarg, &end, 10); if (*end) return run_usage(); break;
      case 'P': sp.top_p = strtof(optarg, &end); if (*end) return run_usage(); break;
      case 'M': sp.min_p = strtof(optarg, &end); if (*end) return run_usage(); break;
      case 's': sp.seed = strtoull(optarg, &end, 10); if (*end) return run_usage(); break;
      case 'E': ignore_eos = true; break;
      case 'I': print_ids = true; break;
      case 'x': if (n_stops == 16) return run_usage(); stops[n_stops++] = optarg; break;
      case 'R': tp = (int)strtol(optarg, &end, 10); if (*end || tp < 1 || tp > 64) return run_usage(); break;
      case 'G': gpu = (int)strtol(optarg, &end, 10); if (*end || gpu < 0) return run_usage(); break;
      case 'B':
        if (strcmp(optarg, "cpu") == 0) backend = AC_BACKEND_CPU;
        else if (strcmp(optarg, "cuda") == 0) backend = AC_BACKEND_CUDA;
        else return run_usage();
        break;
      default: return run_usage();
    }
  }
  if (optind != argc - 1 || (prompt && prompt_file)) return run_usage();
  const char *model_path = argv[optind];

  ac_model_t *m = NULL;
  ac_ctx_t *ctx = NULL;
  ac_sampler_t *smp = NULL;
  ac_stopper_t *stop = NULL;
  char *file_text = NULL;
  int32_t *ids = NULL, *gen = NULL;
  float *logits = NULL;
  int status = 1, rc;
  if ((rc = ac_model_load(model_path, &m))) {
    status = acq_fail(model_path, rc);
    goto done;
  }
  size_t plen = prompt ? strlen(prompt) : 0;
  if (prompt_file) {
    if ((rc = ac_read_file(prompt_file, 0, &file_text, &plen))) {
      status = acq_fail("run", rc);
      goto done;
    }
    prompt = file_text;
  }
  if (!prompt) prompt = "";
  const ac_tokenizer_t *tok = m->tok;
  ac_chat_msg_t msgs[2];
  size_t nm = 0;
  if (system) msgs[nm++] = (ac_chat_msg_t){"system", system};
  msgs[nm++] = (ac_chat_msg_t){"user", prompt};
  int n_prompt = 0;
  if ((rc = ac_prompt_tokens(m->gguf, tok, prompt, plen, chat, msgs, nm, &ids, &n_prompt))) {
    status = acq_fail(chat ? "run --chat" : "run", rc);
    goto done;
  }

  ac_ctx_params_t cp = {.n_ctx = n_ctx, .n_seq = 1, .n_batch = 512, .n_threads = n_threads, .backend = backend,
                        .gpu = gpu, .tp = tp};
  if ((rc = ac_ctx_new(m, cp, &ctx))) {
    status = acq_fail("run", rc);
    goto done;
  }
  ac_upload_stats_t up;
  ac_ctx_upload_stats(ctx, &up);
  if (up.bytes)
    fprintf(stderr, "acq: upload %.1f MiB to GPU %d in %.1f ms (read %.1f ms, copy not overlapped %.1f ms)\n",
            up.bytes / 1048576.0, gpu, up.total_s * 1e3, up.read_s * 1e3, up.copy_s * 1e3);
  if (n_prompt >= ac_ctx_n_ctx(ctx)) {
    fprintf(stderr, "acq: run: the prompt is %d tokens, longer than the context of %d (raise -c or shorten it)\n",
            n_prompt, ac_ctx_n_ctx(ctx));
    goto done;
  }
  if ((rc = ac_sampler_new(sp, m->hp.n_vocab, &smp)) ||
      (rc = ac_stopper_new(tok, n_predict, stops, n_stops, &stop))) {
    status = acq_fail("run", rc);
    goto done;
  }
  if (ignore_eos) ac_stopper_ignore_eos(stop);
  if (n_prompt == 1 && ids[0] == ac_tokenizer_bos(tok) && ac_tokenizer_kind(tok) == AC_TOK_SPM)
    ac_stopper_strip_leading_space(stop);
  if (!(logits = malloc((size_t)m->hp.n_vocab * sizeof *logits))) goto done;
  if (!(gen = malloc(((size_t)(n_predict > 0 ? n_predict : 1) + ac_ctx_n_ctx(ctx)) * sizeof *gen))) goto done;

  double t0 = now_s();
  if ((rc = prefill(ctx, ids, n_prompt, logits))) {
    status = acq_fail("run: prefill", rc);
    goto done;
  }
  double t1 = now_s();
  int n_gen = 0;
  ac_finish_t fin = n_predict == 0 ? AC_FINISH_LENGTH : AC_FINISH_NONE;
  const char *text;
  size_t tlen;
  while (fin == AC_FINISH_NONE) {
    int32_t t = ac_sampler_sample(smp, logits);
    gen[n_gen++] = t;
    fin = ac_stopper_push(stop, t, &text, &tlen);
    fwrite(text, 1, tlen, stdout);
    fflush(stdout);
    if (fin != AC_FINISH_NONE) break;
    if (ac_ctx_seq_len(ctx, 0) >= ac_ctx_n_ctx(ctx)) {
      ac_stopper_flush(stop, &text, &tlen);
      fwrite(text, 1, tlen, stdout);
      fin = AC_FINISH_LENGTH;
      break;
    }
    if ((rc = ac_ctx_eval(ctx, 1, &t, NULL, NULL, logits))) {
      status = acq_fail("run: decode", rc);
      goto done;
    }
  }
  double t2 = now_s();
  if (isatty(STDOUT_FILENO)) putchar('\n');
  fflush(stdout);
  // The last sampled token is not evaluated, so decode speed counts n_gen - 1 steps.
  fprintf(stderr, "acq: prefill %d tokens in %.1f ms (%.1f tok/s); decode %d tokens in %.1f ms (%.1f tok/s); finish: %s\n",
          n_prompt, (t1 - t0) * 1e3, n_prompt / (t1 - t0), n_gen, (t2 - t1) * 1e3,
          n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0.0, ac_finish_name(fin));
  if (print_ids) {
    fprintf(stderr, "acq: ids:");
    for (int i = 0; i < n_gen; i++) fprintf(stderr, " %d", gen[i]);
    fputc('\n', stderr);
  }
  status = 0;
done:
  free(logits);
  free(gen);
  free(ids);
  free(file_text);
  ac_stopper_destroy(&stop);
  ac_sampler_destroy(&smp);
  ac_ctx_destroy(&ctx);
  ac_model_destroy(&m);
  return status;
}

// --- acq perplexity ----------------------------------------------------------------------------
// As llama.cpp's perplexity tool: the text is cut into windows of n_ctx tokens, each starting
// with BOS, and only the second half of each window is scored, so every scored token sees at
// least n_ctx/2 tokens of context.

int acq_perplexity_main(int argc, char **argv) {
  int n_ctx = 512, n_threads = 1, c;
  char *end;
  optind = 1;
  while ((c = getopt(argc, argv, "c:t:")) != -1) {
    switch (c) {
      case 'c': n_ctx = (int)strtol(optarg, &end, 10); if (*end || n_ctx < 8) goto usage; break;
      case 't': n_threads = (int)strtol(optarg, &end, 10); if (*end || n_threads < 1) goto usage; break;
      default: goto usage;
    }
  }
  if (optind != argc - 2) goto usage;
  ac_model_t *m = NULL;
  ac_ctx_t *ctx = NULL;
  char *text = NULL;
  size_t len;
  int32_t *ids = NULL;
  float *logits = NULL;
  int8_t *want = NULL;
  int n = 0, status = 1, rc;
  if ((rc = ac_model_load(argv[optind], &m))) {
    status = acq_fail(argv[optind], rc);
    goto done;
  }
  if ((rc = ac_read_file(argv[optind + 1], 0, &text, &len)) ||
      (rc = ac_tokenize_all(m->tok, text, len, false, false, &ids, &n))) {
    status = acq_fail("perplexity", rc);
    goto done;
  }
  ac_ctx_params_t cp = {.n_ctx = n_ctx, .n_seq = 1, .n_batch = n_ctx, .n_threads = n_threads};
  if ((rc = ac_ctx_new(m, cp, &ctx))) {
    status = acq_fail("perplexity", rc);
    goto done;
  }
  int n_chunks = n / n_ctx, first = n_ctx / 2, V = m->hp.n_vocab;
  if (n_chunks == 0) {
    fprintf(stderr, "acq: perplexity: the text has %d tokens; it needs at least %d (one window of -c)\n", n, n_ctx);
    goto done;
  }
  logits = malloc((size_t)(n_ctx - first) * V * sizeof *logits);
  want = calloc(n_ctx, 1);
  if (!logits || !want) goto done;
  for (int i = first - 1; i < n_ctx - 1; i++) want[i] = 1;
  int32_t bos = ac_tokenizer_bos(m->tok);
  double nll = 0;
  long scored = 0;
  double t0 = now_s();
  for (int k = 0; k < n_chunks; k++) {
    int32_t *w = ids + (size_t)k * n_ctx;
    int32_t saved = w[0];
    if (bos >= 0 && ac_tokenizer_add_bos(m->tok)) w[0] = bos;
    ac_ctx_seq_truncate(ctx, 0, 0);
    rc = ac_ctx_eval(ctx, n_ctx, w, NULL, want, logits);
    w[0] = saved;
    if (rc) {
      status = acq_fail("perplexity", rc);
      goto done;
    }
    for (int i = first - 1; i < n_ctx - 1; i++) {
      const float *lg = logits + (size_t)(i - (first - 1)) * V;
      float mx = lg[0];
      for (int v = 1; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
      double sum = 0;
      for (int v = 0; v < V; v++) sum += exp(lg[v] - mx);
      nll += -(lg[w[i + 1]] - mx - log(sum));
      scored++;
    }
    fprintf(stderr, "\r[%d/%d] ppl %.4f", k + 1, n_chunks, exp(nll / scored));
  }
  fprintf(stderr, "\n");
  printf("perplexity: %.4f over %ld tokens (%d windows of %d, %.1f s)\n", exp(nll / scored), scored, n_chunks,
         n_ctx, now_s() - t0);
  status = 0;
done:
  free(want);
  free(logits);
  free(ids);
  free(text);
  ac_ctx_destroy(&ctx);
  ac_model_destroy(&m);
  return status;
usage:
  fprintf(stderr, "usage: acq perplexity MODEL TEXTFILE [-c N_CTX (512)] [-t THREADS]\n");
  return 2;
}

// --- acq logits ----------------------------------------------------------------------------------
// For reference checks: the logits at every position of a prompt, as raw float32
// (n_tokens x n_vocab) in OUT, and the token ids on stdout.

int acq_logits_main(int argc, char **argv) {
  static const struct option opts[] = {{"prompt", required_argument, 0, 'p'}, {"ids", required_argument, 0, 'i'},
                                       {0, 0, 0, 0}};
  const char *prompt = NULL, *ids_arg = NULL, *out = NULL;
  int n_threads = 1, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "p:o:t:", opts, NULL)) != -1) {
    switch (c) {
      case 'p': prompt = optarg; break;
      case 'i': ids_arg = optarg; break;
      case 'o': out = optarg; break;
      case 't': n_threads = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
      default: goto usage;
    }
  }
  if (optind != argc - 1 || !out || !!prompt == !!ids_arg) goto usage;
  ac_model_t *m = NULL;
  ac_ctx_t *ctx = NULL;
  int32_t *ids = NULL;
  float *logits = NULL;
  int8_t *want = NULL;
  FILE *f = NULL;
  int n = 0, status = 1, rc;
  if ((rc = ac_model_load(argv[optind], &m))) {
    status = acq_fail(argv[optind], rc);
    goto done;
  }
  if (prompt) {
    if ((rc = ac_tokenize_all(m->tok, prompt, strlen(prompt), ac_tokenizer_add_bos(m->tok), true, &ids, &n))) {
      status = acq_fail("logits", rc);
      goto done;
    }
  } else {
    // --ids "1 2 3": ids given directly.
    size_t cap = strlen(ids_arg) / 2 + 1;
    if (!(ids = malloc(cap * sizeof *ids))) goto done;
    for (char *p = (char *)ids_arg, *e; *p; p = e) {
      long v = strtol(p, &e, 10);
      if (e == p) break;
      ids[n++] = (int32_t)v;
    }
  }
  if (n == 0) {
    fprintf(stderr, "acq: logits: no tokens\n");
    goto done;
  }
  ac_ctx_params_t cp = {.n_ctx = n + 1, .n_seq = 1, .n_batch = n, .n_threads = n_threads};
  if ((rc = ac_ctx_new(m, cp, &ctx))) {
    status = acq_fail("logits", rc);
    goto done;
  }
  logits = malloc((size_t)n * m->hp.n_vocab * sizeof *logits);
  want = malloc(n);
  if (!logits || !want) goto done;
  memset(want, 1, n);
  if ((rc = ac_ctx_eval(ctx, n, ids, NULL, want, logits))) {
    status = acq_fail("logits", rc);
    goto done;
  }
  if (!(f = fopen(out, "wb")) || fwrite(logits, sizeof *logits, (size_t)n * m->hp.n_vocab, f) != (size_t)n * m->hp.n_vocab) {
    fprintf(stderr, "acq: logits: cannot write %s: %s\n", out, strerror(errno));
    goto done;
  }
  for (int i = 0; i < n; i++) printf("%d%c", ids[i], i + 1 < n ? ' ' : '\n');
  status = 0;
done:
  if (f) fclose(f);
  free(want);
  free(logits);
  free(ids);
  ac_ctx_destroy(&ctx);
  ac_model_destroy(&m);
  return status;
usage:
  fprintf(stderr, "usage: acq logits MODEL (-p PROMPT | --ids \"ID ...\") -o OUT.f32 [-t THREADS]\n");
  return 2;
}
