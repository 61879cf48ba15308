// zoo.c - the standard variants of a base model, measured, and their manifest.
#include "zoo.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "convert.h"
#include "csv.h"
#include "error.h"
#include "eval.h"
#include "file.h"
#include "gguf.h"
#include "lowrank.h"
#include "model.h"
#include "prune.h"
#include "quant.h"
#include "quantize.h"
#include "tokenizer.h"

// --- accelerators for the modelled cost ---------------------------------------------------------
// Datasheet peak HBM bandwidth and dense BF16 tensor throughput; prices are defaults to be
// configured (--price-per-hour), not quotes.
static const struct {
  const char *name, *label;
  double bytes_per_s, flops_per_s, usd_per_hour;
} accelerators[] = {
    {"a100", "NVIDIA A100 80GB SXM", 2.039e12, 312e12, 2.00},
    {"h100", "NVIDIA H100 80GB SXM", 3.35e12, 989e12, 4.00},
    {"l4", "NVIDIA L4", 0.300e12, 121e12, 0.80},
};

ac_zoo_params_t ac_zoo_default_params(void) {
  return (ac_zoo_params_t){.n_threads = 1, .eval_ctx = 256, .eval_chunks = 8, .bench_tokens = 64,
                           .cost_ctx = 512, .accelerator = "a100"};
}

// --- small helpers -----------------------------------------------------------------------------

static void say(const ac_zoo_params_t *p, const char *fmt, ...) {
  if (!p->progress) return;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  p->progress(p->user, line);
}

int ac_sha256_file(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  if (!f) return ac_error(AC_EIO, "cannot open '%s': %s", path, strerror(errno));
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int rc = 0;
  if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
    rc = ac_error(AC_ENOMEM, "sha256: cannot initialise the digest");
    goto done;
  }
  static unsigned char buf[1 << 20];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0)
    if (EVP_DigestUpdate(md, buf, n) != 1) {
      rc = ac_error(AC_EIO, "sha256: digest update failed");
      goto done;
    }
  if (ferror(f)) {
    rc = ac_error(AC_EIO, "cannot read '%s'", path);
    goto done;
  }
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int dl = 0;
  if (EVP_DigestFinal_ex(md, d, &dl) != 1 || dl != 32) {
    rc = ac_error(AC_EIO, "sha256: digest failed");
    goto done;
  }
  for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
done:
  EVP_MD_CTX_free(md);
  fclose(f);
  return rc;
}

static int write_text(const char *path, const char *text, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f) return ac_error(AC_EIO, "cannot create '%s': %s", path, strerror(errno));
  bool ok = fwrite(text, 1, len, f) == len;
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : ac_error(AC_EIO, "cannot write '%s'", path);
}

// The GSM8K problems file `name` (train.jsonl / test.jsonl) in shared/data/gsm8k, as text.
static int gsm8k_text(const char *name, int n, char **text, size_t *len) {
  char dir[2048], path[2304];
  int rc = ac_eval_shared_dir(dir, sizeof dir);
  if (rc) return rc;
  snprintf(path, sizeof path, "%s/data/gsm8k/%s", dir, name);
  return ac_eval_gsm8k_text(path, n, text, len);
}

// --- measurements -------------------------------------------------------------------------------

typedef struct {
  double bytes, flops;  // per decoded token at the cost context
} token_cost_t;

static void add_weight(const ac_weight_t *w, token_cost_t *c) {
  if (w->lr_a) {
    add_weight(w->lr_a, c);
    add_weight(w->lr_b, c);
    return;
  }
  c->bytes += (double)w->row_bytes * w->ne[1];
  c->flops += 2.0 * w->ne[0] * w->ne[1];
}

// Bytes read and FLOPs of one decode step at context L: every matrix once, one embedding row,
// and the K and V cache (F16) of L positions; attention is 4·hd FLOPs per head and position.
static token_cost_t model_token_cost(const ac_model_t *m, int L) {
  const ac_hparams_t *hp = &m->hp;
  token_cost_t c = {0, 0};
  c.bytes += (double)m->tok_embd.row_bytes;
  add_weight(&m->output, &c);
  for (int l = 0; l < hp->n_layer; l++) {
    const ac_layer_t *ly = &m->layers[l];
    const ac_weight_t *ws[] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->ffn_gate, &ly->ffn_up, &ly->ffn_down};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) add_weight(ws[i], &c);
    c.bytes += 2.0 * hp->n_head_kv[l] * hp->head_dim * L * 2;
    c.flops += 4.0 * hp->n_head[l] * hp->head_dim * L;
  }
  return c;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// Median of 3 runs of `steps` greedy decode steps after a short prefill.
static int measure_decode(const ac_model_t *m, int threads, int steps, const int32_t *prompt, int n_prompt,
                          double *tok_s) {
  ac_ctx_t *c = NULL;
  ac_ctx_params_t cp = {.n_ctx = n_prompt + steps + 1, .n_seq = 1, .n_batch = n_prompt, .n_threads = threads};
  float *logits = malloc((size_t)m->hp.n_vocab * sizeof *logits);
  int rc = logits ? ac_ctx_new(m, cp, &c) : ac_error(AC_ENOMEM, "out of memory");
  double runs[3];
  for (int run = 0; rc == 0 && run < 3; run++) {
    ac_ctx_seq_truncate(c, 0, 0);
    if ((rc = ac_ctx_eval(c, n_prompt, prompt, NULL, NULL, logits))) break;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; rc == 0 && i < steps; i++) {
      int32_t best = 0;
      for (int32_t v = 1; v < m->hp.n_vocab; v++) best = logits[v] > logits[best] ? v : best;
      rc = ac_ctx_eval(c, 1, &best, NULL, NULL, logits);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    runs[run] = steps / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
  }
  if (rc == 0) {
    qsort(runs, 3, sizeof *runs, cmp_double);
    *tok_s = runs[1];
  }
  free(logits);
  ac_ctx_destroy(&c);
  return rc;
}

// --- the variants ---------------------------------------------------------------------------------

typedef enum { V_CONVERT, V_QUANTIZE, V_PRUNE, V_LOWRANK, V_PRUNE_QUANTIZE } vkind_t;

typedef struct {
  const char *name, *method, *desc;
  vkind_t kind;
  uint32_t type;  // quantize target
} vspec_t;

static const vspec_t specs[] = {
    {"f16", "f16", "every tensor dequantized to F16: the full model the others are judged against", V_CONVERT,
     AC_TYPE_F16},
    {"int8", "quantize", "Q8_0 (8-bit, 32-element blocks)", V_QUANTIZE, AC_TYPE_Q8_0},
    {"int4", "quantize", "Q4_K where rows are multiples of 256, else 32-element 4-bit blocks", V_QUANTIZE,
     AC_TYPE_Q4_K},
    {"int2", "quantize", "Q2_K where rows are multiples of 256, else our 2-bit 32-element type", V_QUANTIZE,
     AC_TYPE_Q2_K},
    {"pruned", "prune", "25% of FFN channels removed in every layer, ranked by calibrated importance", V_PRUNE, 0},
    {"lowrank", "lowrank", "query and key projections as truncated-SVD factors keeping 95% of the spectral energy",
     V_LOWRANK, 0},
    {"pruned-int4", "prune+quantize", "the pruned variant, then int4", V_PRUNE_QUANTIZE, AC_TYPE_Q4_K},
};

typedef struct {
  const ac_zoo_params_t *p;
  const char *label;
} progress_ctx_t;

static void on_quant_progress(void *user, int i, int n, const char *tensor, uint32_t type) {
  const progress_ctx_t *pc = user;
  if (i == n || i % 16 == 0) say(pc->p, "%s: quantizing %d/%d (%s -> %s)", pc->label, i, n, tensor, ac_type_name(type));
}

static int build_quantized(const ac_zoo_params_t *p, const char *label, const char *in, const char *out, uint32_t type,
                           json_t *params) {
  progress_ctx_t pc = {p, label};
  ac_quantize_params_t qp = ac_quantize_default_params(type);
  qp.n_threads = p->n_threads;
  qp.progress = on_quant_progress;
  qp.user = &pc;
  ac_quantize_report_t r;
  int rc = ac_quantize_model(in, out, &qp, &r);
  if (rc) return rc;
  json_object_set_new(params, "type", json_string(ac_type_name(type) ? ac_type_name(type) : "?"));
  json_object_set_new(params, "tensors_fallback", json_integer(r.n_fallback));
  json_object_set_new(params, "bits_per_weight_matrices", json_real(r.bpw_matrices));
  return 0;
}

static void on_prune_progress(void *user, int done, int total) {
  const progress_ctx_t *pc = user;
  say(pc->p, "%s: calibrating %d/%d windows", pc->label, done, total);
}

static int build_pruned(const ac_zoo_params_t *p, const char *in, const char *out, const char *calib, json_t *params) {
  progress_ctx_t pc = {p, "pruned"};
  ac_prune_params_t pp = ac_prune_default_params();
  // FFN channels only: on SmolLM2 removing one of its three kv groups per layer costs far more
  // quality (held-out PPL 5.1 -> 14.8) than a quarter of the FFN (-> 6.8).
  pp.ffn_ratio = 0.25f;
  pp.heads_ratio = 0.0f;
  pp.importance = AC_PRUNE_IMP_CALIB;
  pp.calib_path = calib;
  pp.n_ctx = 256;
  pp.calib_tokens = 4096;
  pp.n_threads = p->n_threads;
  pp.progress = on_prune_progress;
  pp.progress_user = &pc;
  ac_prune_report_t r;
  memset(&r, 0, sizeof r);
  int rc = ac_prune(in, out, &pp, &r);
  if (rc) return rc;
  json_object_set_new(params, "ffn_ratio", json_real(pp.ffn_ratio));
  json_object_set_new(params, "heads_ratio", json_real(pp.heads_ratio));
  json_object_set_new(params, "importance", json_string("calibration"));
  json_object_set_new(params, "calibration_tokens", json_integer(r.calib_tokens));
  json_object_set_new(params, "architecture", json_string(r.arch));
  json_object_set_new(params, "ffn_channels", json_pack("[II]", (json_int_t)r.ff_out, (json_int_t)r.ff_in));
  json_object_set_new(params, "heads", json_pack("[II]", (json_int_t)r.heads_out, (json_int_t)r.heads_in));
  ac_prune_report_clear(&r);
  return 0;
}

static int build_lowrank(const ac_zoo_params_t *p, const char *in, const char *out, json_t *params) {
  ac_lowrank_params_t lp = ac_lowrank_params_default();
  // SmolLM2's FFN spectra are flat (rank 64 keeps ~30% of the energy); q and k compress best.
  lp.energy = 0.95;
  lp.tensors = "attn_q,attn_k";
  lp.n_threads = p->n_threads;
  ac_lowrank_stats_t st;
  say(p, "lowrank: factoring %s", lp.tensors);
  int rc = ac_lowrank_file(in, out, &lp, &st);
  if (rc) return rc;
  json_object_set_new(params, "energy", json_real(lp.energy));
  json_object_set_new(params, "tensors", json_string(lp.tensors));
  json_object_set_new(params, "factored", json_integer(st.n_factored));
  json_object_set_new(params, "mean_relative_error", json_real(st.mean_rel_err));
  json_object_set_new(params, "extension", json_string("agentcompress low-rank factors; llama.cpp cannot load it"));
  return 0;
}

// --- measuring one variant ---------------------------------------------------------------------

typedef struct {
  const ac_zoo_params_t *p;
  const ac_model_t *base;  // the f16 variant, loaded
  const int32_t *eval_ids;
  int n_eval;
  double bw, peak, price;
} measure_ctx_t;

static int measure(const measure_ctx_t *mc, const char *name, const char *path, json_t *v) {
  ac_model_t *m = NULL;
  char sha[65];
  int rc;
  if ((rc = ac_sha256_file(path, sha)) || (rc = ac_model_load(path, &m))) return rc;
  json_object_set_new(v, "sha256", json_string(sha));
  json_object_set_new(v, "bytes", json_integer((json_int_t)m->weight_bytes));
  json_object_set_new(v, "file_bytes", json_integer((json_int_t)ac_gguf_file_size(m->gguf)));
  json_object_set_new(v, "n_params", json_integer((json_int_t)m->n_params));
  json_object_set_new(v, "bits_per_weight", json_real(8.0 * m->weight_bytes / (double)m->n_params));
  // The same over the transformer blocks' matrices alone: what "INT4" or "INT2" claims to be,
  // without the embedding and output that the policy keeps at a higher precision.
  token_cost_t layers = {0, 0};
  for (int l = 0; l < m->hp.n_layer; l++) {
    const ac_layer_t *ly = &m->layers[l];
    const ac_weight_t *ws[] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->ffn_gate, &ly->ffn_up, &ly->ffn_down};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) add_weight(ws[i], &layers);
  }
  json_object_set_new(v, "bits_per_weight_layers", json_real(8.0 * layers.bytes / (layers.flops / 2.0)));

  double tok_s = 0;
  say(mc->p, "%s: timing decode", name);
  int np = mc->n_eval < 32 ? mc->n_eval : 32;
  if ((rc = measure_decode(m, mc->p->n_threads, mc->p->bench_tokens, mc->eval_ids, np, &tok_s))) goto done;
  json_object_set_new(v, "decode_tokens_per_s", json_real(tok_s));
  json_object_set_new(v, "threads", json_integer(mc->p->n_threads));

  token_cost_t tc = model_token_cost(m, mc->p->cost_ctx);
  double secs = fmax(tc.bytes / mc->bw, tc.flops / mc->peak);
  json_object_set_new(v, "modelled", json_pack("{s:f, s:f, s:f, s:f}", "bytes_per_token", tc.bytes, "flops_per_token",
                                               tc.flops, "seconds_per_token", secs, "usd_per_million_tokens",
                                               secs * 1e6 * mc->price / 3600.0));
  json_object_set_new(v, "measured", json_pack("{s:f, s:f}", "seconds_per_token", 1.0 / tok_s, "usd_per_million_tokens",
                                               1e6 / tok_s * mc->price / 3600.0));

  if (mc->base) {
    say(mc->p, "%s: evaluating against f16", name);
    ac_eval_params_t ep = {.n_ctx = mc->p->eval_ctx, .n_threads = mc->p->n_threads, .max_chunks = mc->p->eval_chunks,
                           .confident_p = 0.5};
    ac_eval_result_t r;
    if ((rc = ac_eval_compare(mc->base, m, mc->eval_ids, mc->n_eval, ep, &r))) goto done;
    json_object_set_new(v, "quality",
                        json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I}", "kld_mean", r.kld_mean, "kld_p99", r.kld_p99,
                                  "top1_agreement", r.top1, "ppl", r.ppl_variant, "ppl_base", r.ppl_base, "dppl", r.dppl,
                                  "dppl_rel", r.dppl_rel, "positions", (json_int_t)r.n_scored));
  }
done:
  ac_model_destroy(&m);
  return rc;
}

// --- the build -------------------------------------------------------------------------------------

int ac_zoo_build(const ac_zoo_params_t *p) {
  int rc = 0;
  char path[4096], f16_path[4096], pruned_path[4096], calib_path[4096];
  char *eval_text = NULL, *calib_text = NULL;
  size_t eval_len = 0, calib_len = 0;
  int32_t *ids = NULL;
  int n_ids = 0;
  ac_model_t *base = NULL;
  json_t *root = json_object(), *variants = json_array();
  size_t acc = 0;
  for (size_t i = 0; i < sizeof accelerators / sizeof *accelerators; i++)
    if (strcmp(accelerators[i].name, p->accelerator ? p->accelerator : "a100") == 0) acc = i + 1;
  if (!acc) {
    rc = ac_error(AC_EINVAL, "unknown accelerator '%s' (a100, h100, l4)", p->accelerator);
    goto done;
  }
  acc--;
  if (mkdir(p->out_dir, 0755) != 0 && errno != EEXIST) {
    rc = ac_error(AC_EIO, "cannot create '%s': %s", p->out_dir, strerror(errno));
    goto done;
  }
  snprintf(f16_path, sizeof f16_path, "%s/f16.gguf", p->out_dir);
  snprintf(pruned_path, sizeof pruned_path, "%s/pruned.gguf", p->out_dir);
  snprintf(calib_path, sizeof calib_path, "%s/calibration.txt", p->out_dir);

  // Texts: calibration from GSM8K train problems, evaluation from GSM8K test problems, so the
  // pruning never sees what it is judged on.
  if ((rc = p->eval_path ? ac_read_file(p->eval_path, 0, &eval_text, &eval_len) : gsm8k_text("test.jsonl", 40, &eval_text, &eval_len)))
    goto done;
  if (p->calib_path) snprintf(calib_path, sizeof calib_path, "%s", p->calib_path);
  else if ((rc = gsm8k_text("train.jsonl", 120, &calib_text, &calib_len)) ||
           (rc = write_text(calib_path, calib_text, calib_len)))
    goto done;

  // f16 first: every other variant is built from it and judged against it.
  if (ac_csv_has(p->only, "f16") || access(f16_path, R_OK) != 0) {
    say(p, "f16: converting %s", p->base_path);
    if ((rc = ac_convert_gguf(p->base_path, f16_path, AC_TYPE_F16))) goto done;
  }
  if ((rc = ac_model_load(f16_path, &base))) goto done;
  ids = malloc((eval_len + 16) * sizeof *ids);
  if (!ids) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  if ((n_ids = ac_tokenize(base->tok, eval_text, eval_len, ac_tokenizer_add_bos(base->tok), false, ids, (int)eval_len + 16)) < 0) {
    rc = n_ids;
    goto done;
  }
  measure_ctx_t mc = {p, base, ids, n_ids, accelerators[acc].bytes_per_s, accelerators[acc].flops_per_s,
                      p->price_per_hour > 0 ? p->price_per_hour : accelerators[acc].usd_per_hour};

  for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
    const vspec_t *s = &specs[i];
    if (!ac_csv_has(p->only, s->name)) continue;
    snprintf(path, sizeof path, "%s/%s.gguf", p->out_dir, s->name);
    json_t *v = json_object(), *params = json_object();
    json_object_set_new(v, "name", json_string(s->name));
    json_object_set_new(v, "file", json_sprintf("%s.gguf", s->name));
    json_object_set_new(v, "method", json_string(s->method));
    json_object_set_new(v, "description", json_string(s->desc));
    switch (s->kind) {
      case V_CONVERT: json_object_set_new(params, "type", json_string("f16")); break;
      case V_QUANTIZE: rc = build_quantized(p, s->name, f16_path, path, s->type, params); break;
      case V_PRUNE: rc = build_pruned(p, f16_path, path, calib_path, params); break;
      case V_LOWRANK: rc = build_lowrank(p, f16_path, path, params); break;
      case V_PRUNE_QUANTIZE:
        if (access(pruned_path, R_OK) != 0 && (rc = build_pruned(p, f16_path, pruned_path, calib_path, params))) break;
        json_object_set_new(params, "from", json_string("pruned.gguf"));
        rc = build_quantized(p, s->name, pruned_path, path, s->type, params);
        break;
    }
    json_object_set_new(v, "parameters", params);
    if (rc == 0) rc = measure(&mc, s->name, path, v);
    if (rc) {
      json_decref(v);
      char msg[512];
      snprintf(msg, sizeof msg, "%s", ac_errmsg());
      rc = ac_error(rc, "variant %s: %s", s->name, msg);
      goto done;
    }
    json_array_append_new(variants, v);
    say(p, "%s: done", s->name);
  }

  char base_sha[65];
  if ((rc = ac_sha256_file(p->base_path, base_sha))) goto done;
  json_object_set_new(root, "format", json_string("agentcompress-zoo"));
  json_object_set_new(root, "version", json_integer(1));
  json_object_set_new(root, "base", json_pack("{s:s, s:s}", "file", p->base_path, "sha256", base_sha));
  json_object_set_new(root, "reference_variant", json_string("f16"));
  json_object_set_new(root, "evaluation", json_pack("{s:s, s:i, s:i, s:i}", "text", p->eval_path ? p->eval_path : "gsm8k test, first 40 problems",
                                                    "tokens", n_ids, "n_ctx", p->eval_ctx, "max_windows", p->eval_chunks));
  json_object_set_new(root, "cost_model",
                      json_pack("{s:s, s:s, s:f, s:f, s:f, s:i, s:s}", "accelerator", accelerators[acc].name, "label",
                                accelerators[acc].label, "bytes_per_s", mc.bw, "flops_per_s", mc.peak, "usd_per_hour", mc.price,
                                "context_tokens", p->cost_ctx, "rule", "seconds = max(bytes / bandwidth, flops / peak), batch 1"));
  json_object_set_new(root, "variants", variants);
  variants = NULL;
  snprintf(path, sizeof path, "%s/manifest.json", p->out_dir);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    rc = ac_error(AC_EIO, "cannot write '%s'", path);
  }
done:
  json_decref(variants);
  json_decref(root);
  ac_model_destroy(&base);
  free(ids);
  free(eval_text);
  free(calib_text);
  return rc;
}
