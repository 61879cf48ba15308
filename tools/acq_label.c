// acq_label.c - `acq label ZOO WORKLOAD -o LABELS`: every task on every variant of a zoo.
//
// For every task of the workload (bench/workloads/README.md) the reference variant (the zoo's
// full model, lib/catalog.h) and every other variant generate greedily, in-process, with
// continuous batching (lib/serve.h): one variant is loaded, all of its pending tasks run through
// it with --slots sequences at once, then the next variant; the reference goes first because the
// others are judged against its answers. Prompts go through ac_prompt_tokens exactly as `acq run`
// does (a task's "prompt" raw, its "messages" with the model's chat template, like `acq run
// --chat`), so an answer equals `acq run`'s for the same file and prompt. Each task x variant
// pair is judged (lib/judge.h, the workload's checkers) and written as one line as soon as it is
// done (flushed). Resumable: pairs already in LABELS are skipped; a partial last line (a crash
// mid-write) is cut away.
//
// LABELS format (agentcompress-labels, version 1): UTF-8 JSONL, one JSON object per line.
//
// Line 1, the header:
//   {"format": "agentcompress-labels", "version": 1,
//    "zoo": DIR, "workload": FILE, "workload_sha256": HEX, "workload_tasks": N,
//    "reference": NAME,                      the full model; success is agreement with it
//    "price_per_hour": P,                    USD per hour of the machine (both costs use it)
//    "cost_model": {...} | null,             the manifest's cost_model, when the zoo has one
//    "generation": {"temperature": 0, "slots": S, "threads": T},
//    "variants": [{"name", "file", "rank" (0 = best quality), "bytes", "kld" (null unknown),
//                  "modelled_seconds_per_token", "modelled_source": "manifest" | "file_bytes",
//                  "modelled_usd_per_million_tokens",
//                  "measured_seconds_per_token" (the manifest's decode measurement, or null)}]}
//   every variant of the zoo, in quality order, whether labelled or not.
//
// Every other line, one task x variant:
//   {"id", "workflow", "step", "domain", "type", ["difficulty"], "variant",
//    "answer": TEXT,                 the generated text (no prompt, no end-of-generation token)
//    ["answer_hex": HEX],            only when the bytes are not valid UTF-8: the exact bytes
//                                    ("answer" then has U+FFFD for each invalid byte)
//    "finish": "eos" | "length" | "context" | "error",
//    "prompt_tokens", "completion_tokens",
//    "success": bool,                judge(task, reference's answer, this answer).success
//    "score": number,                its score in [0, 1]
//    "correct": bool | null,         against the task's ground truth; null when it has none
//    "busy_s": seconds,              the engine's busy time attributed to this sequence (each
//                                    batched step's wall time shared among its rows)
//    "measured_cost_usd":  busy_s * price_per_hour / 3600,
//    "modelled_cost_usd":  (prompt_tokens + completion_tokens) * modelled_seconds_per_token
//                          * price_per_hour / 3600,
//    "prefill_ms", "decode_ms",
//    ["error": TEXT]}                a pair that could not run (prompt longer than the context):
//                                    empty answer, zero tokens and costs, judged as such
//   The reference's own lines are judged against themselves (success true, score 1).
//   Pairs appear in completion order; (id, variant) is unique.
//
// Modelled seconds per token: the manifest's variants[i].modelled.seconds_per_token; for a zoo
// without a manifest, file bytes / 2.039e12 (reading the weights once per token at an A100's
// bandwidth, the memory term of the manifest's rule). Price: --price-per-hour, else the
// manifest's cost_model.usd_per_hour, else 2.0; a resumed file keeps its header's price.
//
// `acq label --judge-stdin` is a test hook: each input line {"task": {a workload task},
// "full": TEXT | "full_hex": HEX, "variant": TEXT | "variant_hex": HEX} gives one output line
// {"success", "score", "correct"} (or {"error"}).
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "acq.h"
#include "catalog.h"
#include "error.h"
#include "file.h"
#include "judge.h"
#include "model.h"
#include "prompt.h"
#include "sampler.h"
#include "serve.h"
#include "workload.h"
#include "zoo.h"

#define LABELS_FORMAT "agentcompress-labels"
#define LABELS_VERSION 1
#define DEFAULT_PRICE 2.0
#define FALLBACK_BYTES_PER_S 2.039e12

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// --- small helpers -----------------------------------------------------------------------------

static char *hex_encode(const char *s, size_t n) {
  static const char d[] = "0123456789abcdef";
  char *h = malloc(2 * n + 1);
  if (!h) return NULL;
  for (size_t i = 0; i < n; i++) {
    h[2 * i] = d[(unsigned char)s[i] >> 4];
    h[2 * i + 1] = d[(unsigned char)s[i] & 15];
  }
  h[2 * n] = 0;
  return h;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes hex into a malloc'ed buffer; NULL when it is not hex.
static char *hex_decode(const char *h, size_t hn, size_t *n) {
  if (hn % 2) return NULL;
  char *s = malloc(hn / 2 + 1);
  if (!s) return NULL;
  for (size_t i = 0; i < hn / 2; i++) {
    int a = hexval(h[2 * i]), b = hexval(h[2 * i + 1]);
    if (a < 0 || b < 0) {
      free(s);
      return NULL;
    }
    s[i] = (char)(a << 4 | b);
  }
  s[hn / 2] = 0;
  *n = hn / 2;
  return s;
}

// A JSON string for arbitrary bytes: as is when valid UTF-8, else with U+FFFD for each byte that
// starts no valid sequence (and *needs_hex set).
static json_t *text_json(const char *s, size_t n, bool *needs_hex) {
  *needs_hex = !ac_utf8_valid(s, n);
  if (!*needs_hex) return json_stringn(s, n);
  char *buf = malloc(3 * n + 1);
  if (!buf) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    int l = ac_utf8_seq_len((const unsigned char *)s + i, n - i);
    if (l > 0) {
      memcpy(buf + k, s + i, (size_t)l);
      k += (size_t)l, i += (size_t)l;
    } else {
      memcpy(buf + k, "\xEF\xBF\xBD", 3);
      k += 3, i++;
    }
  }
  json_t *j = json_stringn(buf, k);
  free(buf);
  return j;
}

// Text from {"<key>": string} or {"<key>_hex": hex}; malloc'ed. NULL if neither is there.
static char *text_field(json_t *o, const char *key, size_t *n) {
  char hk[64];
  snprintf(hk, sizeof hk, "%s_hex", key);
  json_t *h = json_object_get(o, hk);
  if (json_is_string(h)) return hex_decode(json_string_value(h), json_string_length(h), n);
  json_t *t = json_object_get(o, key);
  if (!json_is_string(t)) return NULL;
  *n = json_string_length(t);
  char *s = malloc(*n + 1);
  if (s) {
    memcpy(s, json_string_value(t), *n);
    s[*n] = 0;
  }
  return s;
}

static json_t *correct_json(ac_correct_t c) {
  return c == AC_CORRECT_UNKNOWN ? json_null() : json_boolean(c == AC_CORRECT_TRUE);
}

// --- acq label --judge-stdin -------------------------------------------------------------------

static int judge_stdin(void) {
  static const char header[] = "{\"format\": \"agentcompress-workload\", \"version\": 1}\n";
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  long lineno = 0;
  int status = 0;
  while ((n = getline(&line, &cap, stdin)) > 0) {
    lineno++;
    json_error_t jerr;
    json_t *in = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &jerr), *out = json_object();
    char *task_json = NULL, *wl_text = NULL, *full = NULL, *var = NULL;
    ac_workload_t wl = {0};
    size_t fl = 0, vl = 0;
    if (!in) {
      json_object_set_new(out, "error", json_sprintf("line %ld: bad JSON: %s", lineno, jerr.text));
      goto emit;
    }
    task_json = json_dumps(json_object_get(in, "task"), JSON_COMPACT | JSON_ENCODE_ANY);
    full = text_field(in, "full", &fl);
    var = text_field(in, "variant", &vl);
    if (!task_json || !full || !var) {
      json_object_set_new(out, "error", json_string("need task, full (or full_hex) and variant (or variant_hex)"));
      goto emit;
    }
    size_t tl = strlen(task_json);
    wl_text = malloc(sizeof header + tl + 2);
    memcpy(wl_text, header, sizeof header - 1);
    memcpy(wl_text + sizeof header - 1, task_json, tl);
    memcpy(wl_text + sizeof header - 1 + tl, "\n", 2);
    int rc = ac_workload_parse(wl_text, strlen(wl_text), "task", &wl);
    ac_judgement_t j;
    if (!rc) rc = ac_judge(&wl.tasks[0].checker, full, fl, var, vl, &j);
    if (rc) {
      json_object_set_new(out, "error", json_string(ac_errmsg()));
      goto emit;
    }
    json_object_set_new(out, "success", json_boolean(j.success));
    json_object_set_new(out, "score", json_real(j.score));
    json_object_set_new(out, "correct", correct_json(j.correct));
  emit: {
    char *s = json_dumps(out, JSON_COMPACT);
    if (!s) status = 1;
    else printf("%s\n", s);
    free(s);
  }
    ac_workload_free(&wl);
    free(task_json);
    free(wl_text);
    free(full);
    free(var);
    json_decref(in);
    json_decref(out);
  }
  free(line);
  fflush(stdout);
  return status;
}

// --- the labelling run -------------------------------------------------------------------------

typedef struct {
  const ac_variant_t *cv;       // in the catalog
  double modelled_spt;          // seconds per token (model)
  bool modelled_from_manifest;
  double measured_spt;          // the manifest's measurement; < 0 unknown
  bool selected;                // labelled in this run
  bool *done;                   // [n_tasks]
} variant_t;

typedef struct {
  const char *zoo, *workload_path, *out_path;
  ac_workload_t wl;
  size_t n_tasks;               // after --limit
  ac_catalog_t cat;
  variant_t *vars;              // [cat.n], catalog order
  int ref;                      // index of the reference in vars
  double price;
  int threads, slots;
  FILE *out;
  // Reference answers per task (NULL until known).
  char **full;
  size_t *full_len;
  // The variant being run.
  int cur;
  const ac_model_t *model;
  size_t done_now, total_now;   // pairs of the current variant
  size_t pairs_done, pairs_total, pairs_done_at_start, printed_done;
  double t_start, t_var, t_print;
  int status;                   // first failure while writing
} label_t;

// Task id -> index (open addressing).
typedef struct {
  int64_t *slot;  // task index + 1, 0 empty
  size_t cap;
} idmap_t;

static uint64_t str_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static int idmap_build(idmap_t *m, ac_task_t *t, size_t n) {
  m->cap = 16;
  while (m->cap < 2 * n + 16) m->cap *= 2;
  if (!(m->slot = calloc(m->cap, sizeof *m->slot))) return ac_error(AC_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    size_t j = str_hash(t[i].id) & (m->cap - 1);
    while (m->slot[j]) {
      if (strcmp(t[m->slot[j] - 1].id, t[i].id) == 0)
        return ac_error(AC_EFORMAT, "line %d: task id '%s' is also on line %d (labels need unique ids)", t[i].line,
                        t[i].id, t[m->slot[j] - 1].line);
      j = (j + 1) & (m->cap - 1);
    }
    m->slot[j] = (int64_t)i + 1;
  }
  return 0;
}

static long idmap_find(const idmap_t *m, ac_task_t *t, const char *id) {
  size_t j = str_hash(id) & (m->cap - 1);
  while (m->slot[j]) {
    if (strcmp(t[m->slot[j] - 1].id, id) == 0) return (long)(m->slot[j] - 1);
    j = (j + 1) & (m->cap - 1);
  }
  return -1;
}

static json_t *header_json(label_t *L, json_t *manifest, const char *sha) {
  json_t *h = json_object(), *vars = json_array();
  json_object_set_new(h, "format", json_string(LABELS_FORMAT));
  json_object_set_new(h, "version", json_integer(LABELS_VERSION));
  json_object_set_new(h, "zoo", json_string(L->zoo));
  json_object_set_new(h, "workload", json_string(L->workload_path));
  json_object_set_new(h, "workload_sha256", json_string(sha));
  json_object_set_new(h, "workload_tasks", json_integer((json_int_t)L->wl.n));
  json_object_set_new(h, "reference", json_string(L->cat.reference));
  json_object_set_new(h, "price_per_hour", json_real(L->price));
  json_t *cm = manifest ? json_object_get(manifest, "cost_model") : NULL;
  json_object_set(h, "cost_model", cm ? cm : json_null());
  json_object_set_new(h, "generation", json_pack("{s:i, s:i, s:i}", "temperature", 0, "slots", L->slots, "threads",
                                                 L->threads));
  for (int i = 0; i < L->cat.n; i++) {
    variant_t *v = &L->vars[i];
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(v->cv->name));
    json_object_set_new(o, "file", json_string(v->cv->file));
    json_object_set_new(o, "rank", json_integer(v->cv->rank));
    json_object_set_new(o, "bytes", json_integer((json_int_t)v->cv->bytes));
    json_object_set_new(o, "kld", v->cv->kld >= 0 ? json_real(v->cv->kld) : json_null());
    json_object_set_new(o, "modelled_seconds_per_token", json_real(v->modelled_spt));
    json_object_set_new(o, "modelled_source", json_string(v->modelled_from_manifest ? "manifest" : "file_bytes"));
    json_object_set_new(o, "modelled_usd_per_million_tokens", json_real(v->modelled_spt * L->price / 3600 * 1e6));
    json_object_set_new(o, "measured_seconds_per_token", v->measured_spt >= 0 ? json_real(v->measured_spt) : json_null());
    json_array_append_new(vars, o);
  }
  json_object_set_new(h, "variants", vars);
  return h;
}

static int write_json_line(label_t *L, json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT);
  if (!s) return ac_error(AC_ENOMEM, "out of memory");
  size_t n = strlen(s);
  int ok = fwrite(s, 1, n, L->out) == n && fputc('\n', L->out) != EOF && fflush(L->out) == 0;
  free(s);
  if (!ok) return ac_error(AC_EIO, "cannot write %s: %s", L->out_path, strerror(errno));
  return 0;
}

// Reads an existing LABELS file: checks its header against this run, marks the pairs done, keeps
// the reference's answers, and cuts a partial last line away. *exists = false when there is no
// file (or an empty one).
static int resume(label_t *L, const idmap_t *ids, const char *sha, bool price_given, bool *exists) {
  *exists = false;
  char *text = NULL;
  size_t len = 0;
  struct stat st;
  if (stat(L->out_path, &st) != 0) return 0;
  int rc = ac_read_file(L->out_path, 0, &text, &len);
  if (rc) return rc;
  size_t complete = len;
  while (complete > 0 && text[complete - 1] != '\n') complete--;
  if (complete < len) {
    fprintf(stderr, "acq: label: %s: dropping a partial last line (%zu bytes)\n", L->out_path, len - complete);
    if (truncate(L->out_path, (off_t)complete) != 0) {
      free(text);
      return ac_error(AC_EIO, "cannot truncate %s: %s", L->out_path, strerror(errno));
    }
  }
  if (complete == 0) {
    free(text);
    return 0;
  }
  *exists = true;
  size_t skipped = 0, lineno = 0;
  json_t *o = NULL;
  for (size_t pos = 0; pos < complete;) {
    const char *line = text + pos, *nl = memchr(line, '\n', complete - pos);
    size_t n = (size_t)(nl - line);
    pos += n + 1;
    lineno++;
    json_error_t jerr;
    if (!(o = json_loadb(line, n, JSON_ALLOW_NUL, &jerr))) {
      rc = ac_error(AC_EFORMAT, "%s:%zu: bad JSON: %s", L->out_path, lineno, jerr.text);
      goto done;
    }
    if (lineno == 1) {
      const char *f = json_string_value(json_object_get(o, "format"));
      if (!f || strcmp(f, LABELS_FORMAT) != 0 || json_integer_value(json_object_get(o, "version")) != LABELS_VERSION) {
        rc = ac_error(AC_EFORMAT, "%s:1: not an %s v%d file", L->out_path, LABELS_FORMAT, LABELS_VERSION);
        goto done;
      }
      const char *ws = json_string_value(json_object_get(o, "workload_sha256"));
      if (!ws || strcmp(ws, sha) != 0) {
        rc = ac_error(AC_EFORMAT, "%s: labels of another workload (its sha256 differs from %s's); use another -o",
                      L->out_path, L->workload_path);
        goto done;
      }
      const char *ref = json_string_value(json_object_get(o, "reference"));
      if (!ref || strcmp(ref, L->cat.reference) != 0) {
        rc = ac_error(AC_EFORMAT, "%s: labelled against reference '%s', the zoo's is '%s'; use another -o",
                      L->out_path, ref ? ref : "?", L->cat.reference);
        goto done;
      }
      double p = json_number_value(json_object_get(o, "price_per_hour"));
      if (price_given && p != L->price) {
        rc = ac_error(AC_EINVAL, "%s: priced at %g USD/h; --price-per-hour %g would mix prices", L->out_path, p,
                      L->price);
        goto done;
      }
      L->price = p;
    } else {
      const char *id = json_string_value(json_object_get(o, "id"));
      const char *vn = json_string_value(json_object_get(o, "variant"));
      long ti = id ? idmap_find(ids, L->wl.tasks, id) : -1;
      int vi = -1;
      for (int i = 0; vn && i < L->cat.n; i++)
        if (strcmp(L->vars[i].cv->name, vn) == 0) vi = i;
      if (!id || !vn) {
        rc = ac_error(AC_EFORMAT, "%s:%zu: a label line needs \"id\" and \"variant\"", L->out_path, lineno);
        goto done;
      }
      if (ti < 0 || (size_t)ti >= L->n_tasks || vi < 0 || L->vars[vi].done[ti]) {
        skipped++;  // another task set (--limit), or a variant not in the zoo: kept, not used
      } else {
        L->vars[vi].done[ti] = true;
        if (vi == L->ref) {
          size_t al = 0;
          char *a = text_field(o, "answer", &al);
          if (!a) {
            rc = ac_error(AC_EFORMAT, "%s:%zu: no \"answer\"", L->out_path, lineno);
            goto done;
          }
          L->full[ti] = a;
          L->full_len[ti] = al;
        }
      }
    }
    json_decref(o);
    o = NULL;
  }
  if (skipped) fprintf(stderr, "acq: label: %s: %zu lines are outside this run's tasks and variants\n", L->out_path, skipped);
done:
  json_decref(o);
  free(text);
  return rc;
}

static void fmt_duration(double s, char *buf, size_t n) {
  if (!(s >= 0) || s > 1e8) {
    snprintf(buf, n, "?");
    return;
  }
  long t = lround(s);
  if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
  else snprintf(buf, n, "%lds", t);
}

static void progress(label_t *L, bool force) {
  double t = now_s();
  if (!force && t - L->t_print < 5) return;
  if (force && L->printed_done == L->pairs_done) return;  // said already
  L->t_print = t;
  L->printed_done = L->pairs_done;
  double el = t - L->t_var, rate = el > 0 ? L->done_now / el : 0;
  double all_rate = (L->pairs_done - L->pairs_done_at_start) / (t - L->t_start);
  char eta[32], eta_all[32];
  fmt_duration(rate > 0 ? (L->total_now - L->done_now) / rate : -1, eta, sizeof eta);
  fmt_duration(all_rate > 0 ? (L->pairs_total - L->pairs_done) / all_rate : -1, eta_all, sizeof eta_all);
  fprintf(stderr, "acq: label: %s: %zu/%zu tasks, %.2f tasks/s, ETA %s; all variants %zu/%zu pairs, ETA %s\n",
          L->vars[L->cur].cv->name, L->done_now, L->total_now, rate, eta, L->pairs_done, L->pairs_total, eta_all);
}

// Writes one pair's line (and keeps the reference's answer).
static int record(label_t *L, size_t ti, const char *ans, size_t alen, const char *finish, int n_prompt,
                  int n_completion, double busy_s, double prefill_ms, double decode_ms, const char *error) {
  const ac_task_t *t = &L->wl.tasks[ti];
  variant_t *v = &L->vars[L->cur];
  if (L->cur == L->ref) {
    char *copy = malloc(alen + 1);
    if (!copy) return ac_error(AC_ENOMEM, "out of memory");
    memcpy(copy, ans, alen);
    copy[alen] = 0;
    free(L->full[ti]);
    L->full[ti] = copy;
    L->full_len[ti] = alen;
  }
  const char *full = L->full[ti] ? L->full[ti] : "";
  size_t flen = L->full[ti] ? L->full_len[ti] : 0;
  ac_judgement_t j;
  int rc = ac_judge(&t->checker, full, flen, ans, alen, &j);
  if (rc) return ac_error(rc, "task '%s': %s", t->id, ac_errmsg());
  bool needs_hex = false;
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(t->id));
  json_object_set_new(o, "workflow", json_string(t->workflow));
  json_object_set_new(o, "step", json_integer(t->step));
  json_object_set_new(o, "domain", json_string(t->domain));
  json_object_set_new(o, "type", json_string(t->type));
  if (t->difficulty) json_object_set_new(o, "difficulty", json_string(t->difficulty));
  json_object_set_new(o, "variant", json_string(v->cv->name));
  json_object_set_new(o, "answer", text_json(ans, alen, &needs_hex));
  if (needs_hex) {
    char *h = hex_encode(ans, alen);
    json_object_set_new(o, "answer_hex", json_string(h ? h : ""));
    free(h);
  }
  json_object_set_new(o, "finish", json_string(finish));
  json_object_set_new(o, "prompt_tokens", json_integer(n_prompt));
  json_object_set_new(o, "completion_tokens", json_integer(n_completion));
  json_object_set_new(o, "success", json_boolean(j.success));
  json_object_set_new(o, "score", json_real(j.score));
  json_object_set_new(o, "correct", correct_json(j.correct));
  json_object_set_new(o, "busy_s", json_real(busy_s));
  json_object_set_new(o, "measured_cost_usd", json_real(busy_s * L->price / 3600));
  json_object_set_new(o, "modelled_cost_usd",
                      json_real((double)(n_prompt + n_completion) * v->modelled_spt * L->price / 3600));
  json_object_set_new(o, "prefill_ms", json_real(prefill_ms));
  json_object_set_new(o, "decode_ms", json_real(decode_ms));
  if (error) json_object_set_new(o, "error", json_string(error));
  rc = write_json_line(L, o);
  json_decref(o);
  if (rc) return rc;
  v->done[ti] = true;
  L->done_now++;
  L->pairs_done++;
  progress(L, false);
  return 0;
}

static void on_event(void *user, const ac_serve_event_t *ev) {
  label_t *L = user;
  if (ev->finish == AC_SERVE_RUNNING || L->status) return;
  const char *err = ev->finish == AC_SERVE_FAILED ? (ev->error ? ev->error : "evaluation failed") : NULL;
  if (err) {
    L->status = ac_error(AC_EINVAL, "task '%s' on %s: %s", L->wl.tasks[ev->tag].id, L->vars[L->cur].cv->name, err);
    return;
  }
  int rc = record(L, (size_t)ev->tag, ev->all_text, ev->all_len, ac_serve_finish_name(ev->finish), ev->n_prompt,
                  ev->n_completion, ev->busy_s, ev->prefill_ms, ev->decode_ms, NULL);
  if (rc) L->status = rc;
}

// Runs every pending task of variant L->cur.
static int run_variant(label_t *L) {
  variant_t *v = &L->vars[L->cur];
  size_t pending = 0;
  for (size_t i = 0; i < L->n_tasks; i++) pending += !v->done[i];
  if (!pending) return 0;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", L->zoo, v->cv->file);
  ac_model_t *m = NULL;
  ac_serve_t *srv = NULL;
  int32_t **ids = calloc(L->n_tasks, sizeof *ids);
  int *n_ids = calloc(L->n_tasks, sizeof *n_ids);
  size_t *order = malloc(pending * sizeof *order);
  int rc = 0;
  if (!ids || !n_ids || !order) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  double t0 = now_s();
  if ((rc = ac_model_load(path, &m))) {
    rc = ac_error(rc, "variant '%s': %s", v->cv->name, ac_errmsg());
    goto done;
  }
  L->model = m;
  // Tokenize every pending task first: the context must hold the longest prompt + max_tokens.
  int32_t model_ctx = m->hp.n_ctx_train > 0 && m->hp.n_ctx_train < 4096 ? m->hp.n_ctx_train : 4096;
  int64_t need = 0;
  size_t np = 0;
  for (size_t i = 0; i < L->n_tasks; i++) {
    if (v->done[i]) continue;
    const ac_task_t *t = &L->wl.tasks[i];
    bool chat = t->prompt == NULL;
    rc = ac_prompt_tokens(m->gguf, m->tok, chat ? "" : t->prompt, chat ? 0 : t->prompt_len, chat, t->messages,
                          t->n_messages, &ids[i], &n_ids[i]);
    if (rc) {
      rc = ac_error(rc, "task '%s' (line %d) on %s: %s", t->id, t->line, v->cv->name, ac_errmsg());
      goto done;
    }
    int64_t k = n_ids[i] + (t->max_tokens < model_ctx ? t->max_tokens : model_ctx) + 1;
    if (k > need) need = k;
    order[np++] = i;
  }
  int32_t n_ctx = need < model_ctx ? (int32_t)((need + 63) / 64 * 64) : model_ctx;
  if (n_ctx > model_ctx) n_ctx = model_ctx;
  ac_serve_params_t sp = {.slots = L->slots, .n_ctx = n_ctx, .n_threads = L->threads, .prefill_chunk = 0};
  if ((rc = ac_serve_new(m, sp, &srv))) {
    rc = ac_error(rc, "variant '%s': %s", v->cv->name, ac_errmsg());
    goto done;
  }
  fprintf(stderr, "acq: label: %s: %zu tasks to run (loaded in %.1f s; %d slots, context %d)\n", v->cv->name, pending,
          now_s() - t0, L->slots, ac_serve_n_ctx(srv));
  L->done_now = 0;
  L->total_now = pending;
  L->t_var = now_s();
  size_t next = 0;
  while (!L->status && (next < np || ac_serve_busy(srv) > 0)) {
    while (next < np && ac_serve_free_slots(srv) > 0) {
      size_t i = order[next++];
      const ac_task_t *t = &L->wl.tasks[i];
      ac_serve_req_t req = {.tokens = ids[i], .n_tokens = n_ids[i],
                            .max_tokens = t->max_tokens > INT32_MAX ? INT32_MAX : (int32_t)t->max_tokens,
                            .sampling = ac_sampler_default_params()};
      int r = ac_serve_add(srv, &req, (uint64_t)i);
      if (r == AC_ERANGE) {  // the prompt does not fit the model's context: a label all the same
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ac_errmsg());
        if ((rc = record(L, i, "", 0, "error", 0, 0, 0, 0, 0, msg))) goto done;
      } else if (r < 0) {
        rc = ac_error(r, "task '%s' on %s: %s", t->id, v->cv->name, ac_errmsg());
        goto done;
      }
    }
    int r = ac_serve_step(srv, on_event, L, NULL);
    if (r < 0 && !L->status) L->status = ac_error(r, "variant '%s': %s", v->cv->name, ac_errmsg());
  }
  rc = L->status;
  if (!rc) progress(L, true);
done:
  if (ids)
    for (size_t i = 0; i < L->n_tasks; i++) free(ids[i]);
  free(ids);
  free(n_ids);
  free(order);
  ac_serve_destroy(&srv);
  ac_model_destroy(&m);
  L->model = NULL;
  return rc;
}

static int label_usage(void) {
  fprintf(stderr,
          "usage: acq label ZOO WORKLOAD -o LABELS.jsonl [options]\n"
          "  -t N                threads (default 1)\n"
          "  --slots N           concurrent sequences per variant (default 8)\n"
          "  --limit N           only the first N tasks of the workload\n"
          "  --variants a,b      only these variants (the reference always runs: it defines success)\n"
          "  --price-per-hour P  USD per hour (default: the zoo manifest's cost model, else 2.0)\n"
          "Runs every task on every variant greedily and writes one JSON line per task x variant\n"
          "(format: tools/acq_label.c, bench/workloads/README.md). Resumes an existing LABELS file.\n"
          "       acq label --judge-stdin   (test hook: {task, full, variant} lines -> {success, score, correct})\n");
  return 2;
}

int acq_label_main(int argc, char **argv) {
  static const struct option opts[] = {{"slots", required_argument, 0, 'S'},
                                       {"limit", required_argument, 0, 'L'},
                                       {"variants", required_argument, 0, 'V'},
                                       {"price-per-hour", required_argument, 0, 'P'},
                                       {"judge-stdin", no_argument, 0, 'J'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  label_t L = {0};
  L.threads = 1, L.slots = 8;
  long limit = -1;
  const char *variants_arg = NULL;
  bool price_given = false, judge_mode = false;
  char *end;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:t:h", opts, NULL)) != -1) {
    switch (c) {
      case 'o': L.out_path = optarg; break;
      case 't': L.threads = (int)strtol(optarg, &end, 10); if (*end || L.threads < 1 || L.threads > 256) return label_usage(); break;
      case 'S': L.slots = (int)strtol(optarg, &end, 10); if (*end || L.slots < 1 || L.slots > 4096) return label_usage(); break;
      case 'L': limit = strtol(optarg, &end, 10); if (*end || limit < 0) return label_usage(); break;
      case 'V': variants_arg = optarg; break;
      case 'P': L.price = strtod(optarg, &end); if (*end || !(L.price >= 0) || isinf(L.price)) return label_usage(); price_given = true; break;
      case 'J': judge_mode = true; break;
      default: return label_usage();
    }
  }
  if (judge_mode) return optind == argc ? judge_stdin() : label_usage();
  if (optind != argc - 2 || !L.out_path) return label_usage();
  L.zoo = argv[optind];
  L.workload_path = argv[optind + 1];

  int status = 1, rc;
  json_t *manifest = NULL;
  idmap_t ids = {0};
  char sha[65];
  if ((rc = ac_catalog_load_dir(L.zoo, &L.cat))) {
    status = acq_fail(L.zoo, rc);
    goto done;
  }
  {
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", L.zoo);
    struct stat st;
    if (stat(mpath, &st) == 0) {
      json_error_t jerr;
      if (!(manifest = json_load_file(mpath, 0, &jerr))) {
        fprintf(stderr, "acq: label: %s: %s (line %d)\n", mpath, jerr.text, jerr.line);
        goto done;
      }
    }
  }
  if ((rc = ac_workload_load(L.workload_path, &L.wl))) {
    status = acq_fail("label", rc);
    goto done;
  }
  if ((rc = ac_sha256_file(L.workload_path, sha))) {
    status = acq_fail("label", rc);
    goto done;
  }
  if ((rc = idmap_build(&ids, L.wl.tasks, L.wl.n))) {
    fprintf(stderr, "acq: label: %s: %s\n", L.workload_path, ac_errmsg());
    goto done;
  }
  L.n_tasks = limit >= 0 && (size_t)limit < L.wl.n ? (size_t)limit : L.wl.n;
  if (!price_given) {
    json_t *p = manifest ? json_object_get(json_object_get(manifest, "cost_model"), "usd_per_hour") : NULL;
    L.price = json_is_number(p) && json_number_value(p) >= 0 ? json_number_value(p) : DEFAULT_PRICE;
  }

  // Variants: costs from the manifest, the selection from --variants.
  if (!(L.vars = calloc((size_t)L.cat.n, sizeof *L.vars))) goto done;
  json_t *mvars = manifest ? json_object_get(manifest, "variants") : NULL;
  for (int i = 0; i < L.cat.n; i++) {
    variant_t *v = &L.vars[i];
    v->cv = &L.cat.v[i];
    v->measured_spt = -1;
    v->selected = variants_arg == NULL;
    if (strcmp(v->cv->name, L.cat.reference) == 0) L.ref = i, v->selected = true;
    if (!(v->done = calloc(L.n_tasks ? L.n_tasks : 1, sizeof *v->done))) goto done;
    size_t k;
    json_t *mv;
    json_array_foreach(mvars, k, mv) {
      const char *name = json_string_value(json_object_get(mv, "name"));
      if (!name || strcmp(name, v->cv->name) != 0) continue;
      json_t *mo = json_object_get(json_object_get(mv, "modelled"), "seconds_per_token");
      json_t *me = json_object_get(json_object_get(mv, "measured"), "seconds_per_token");
      if (json_is_number(mo) && json_number_value(mo) > 0)
        v->modelled_spt = json_number_value(mo), v->modelled_from_manifest = true;
      if (json_is_number(me) && json_number_value(me) > 0) v->measured_spt = json_number_value(me);
    }
    if (!v->modelled_from_manifest) v->modelled_spt = (double)v->cv->bytes / FALLBACK_BYTES_PER_S;
  }
  if (variants_arg) {
    char *list = strdup(variants_arg);
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      int found = -1;
      for (int i = 0; i < L.cat.n; i++)
        if (strcmp(L.cat.v[i].name, tok) == 0) found = i;
      if (found < 0) {
        fprintf(stderr, "acq: label: --variants: the zoo %s has no variant '%s'\n", L.zoo, tok);
        free(list);
        goto done;
      }
      L.vars[found].selected = true;
    }
    free(list);
  }
  L.full = calloc(L.n_tasks ? L.n_tasks : 1, sizeof *L.full);
  L.full_len = calloc(L.n_tasks ? L.n_tasks : 1, sizeof *L.full_len);
  if (!L.full || !L.full_len) goto done;

  bool exists = false;
  if ((rc = resume(&L, &ids, sha, price_given, &exists))) {
    fprintf(stderr, "acq: label: %s\n", ac_errmsg());
    goto done;
  }
  if (!(L.out = fopen(L.out_path, "ab"))) {
    fprintf(stderr, "acq: label: cannot open %s: %s\n", L.out_path, strerror(errno));
    goto done;
  }
  if (!exists) {
    json_t *h = header_json(&L, manifest, sha);
    rc = write_json_line(&L, h);
    json_decref(h);
    if (rc) {
      status = acq_fail("label", rc);
      goto done;
    }
  }
  for (int i = 0; i < L.cat.n; i++) {
    if (!L.vars[i].selected) continue;
    for (size_t t = 0; t < L.n_tasks; t++) {
      L.pairs_total++;
      L.pairs_done += L.vars[i].done[t];
    }
  }
  L.pairs_done_at_start = L.pairs_done;
  fprintf(stderr, "acq: label: %zu tasks x %d variants: %zu pairs, %zu already in %s\n", L.n_tasks,
          (int)(L.pairs_total / (L.n_tasks ? L.n_tasks : 1)), L.pairs_total, L.pairs_done, L.out_path);
  L.t_start = now_s();
  // The reference first (the others are judged against it), then the rest in quality order.
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < L.cat.n; i++) {
      if (!L.vars[i].selected || (pass == 0) != (i == L.ref)) continue;
      L.cur = i;
      if ((rc = run_variant(&L))) {
        fprintf(stderr, "acq: label: %s\n", ac_errmsg());
        goto done;
      }
    }
  }
  double el = now_s() - L.t_start;
  size_t ran = L.pairs_done - L.pairs_done_at_start;
  fprintf(stderr, "acq: label: done: %zu pairs labelled in %.1f s (%.2f pairs/s), %zu/%zu in %s\n", ran, el,
          el > 0 ? ran / el : 0.0, L.pairs_done, L.pairs_total, L.out_path);
  status = 0;
done:
  if (L.out && fclose(L.out) != 0 && status == 0) {
    fprintf(stderr, "acq: label: cannot write %s: %s\n", L.out_path, strerror(errno));
    status = 1;
  }
  if (L.full)
    for (size_t i = 0; i < L.n_tasks; i++) free(L.full[i]);
  free(L.full);
  free(L.full_len);
  if (L.vars)
    for (int i = 0; i < L.cat.n; i++) free(L.vars[i].done);
  free(L.vars);
  free(ids.slot);
  json_decref(manifest);
  ac_workload_free(&L.wl);
  ac_catalog_free(&L.cat);
  return status;
}
