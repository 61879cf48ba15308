// acbench.c - replays a workload from its labels (`acq label`) under routing policies and reports
// what each one costs and how much of the full model's success it keeps. No inference: every
// number comes from the labels, so a replay of thousands of tasks takes well under a second.
//
//   acbench --labels LABELS --workload W [--zoo DIR] [--controller CTRL]... [--out DIR]
//           [--seed S] [--theta X] [--test-domains a,b]
//
// Tasks: the workload's tasks (of --test-domains when given) in file order that have a label for
// every variant named in the labels; others are left out and counted. Variants: those that appear
// in the label lines, in the header's quality order (best first); the header's "reference" is the
// full model and must be labelled.
//
// Policies, each choosing one variant per task:
//   all-full           the reference (the baseline: 100% success by definition, 0% savings)
//   uniform-V          V for every task, one per non-reference variant
//   random             uniform over the variants: index = splitmix64_next(state) mod n_variants,
//                      state starting at --seed (default 1), one draw per task in file order
//   oracle             the variant with the lowest modelled cost on the task among those that
//                      succeeded (ties: the better quality); the reference if none other did
//   CTRL (file stem)   ac_ctrl_predict on the task text's ids (ac_ctrl_text_ids with the zoo's
//                      tokenizer; the controller reads the first k), embeddings from the zoo
//
// Per policy: measured and modelled cost (sums of the chosen labels' measured_cost_usd and
// modelled_cost_usd), savings % = 100·(1 − cost / cost(all-full)), success preserved % (tasks whose
// chosen variant succeeded / tasks), correct % (chosen answer right against the ground truth, over
// the tasks whose reference label has a non-null "correct"), switch % (consecutive tasks of a
// workflow, in file order, served by different variants / such pairs), and for controllers the
// Pearson r of predicted complexity vs measured complexity (modelled cost of the oracle's variant
// / modelled cost of the reference, per task; 1 when only the reference succeeded) and the
// confidence-fallback rate.
//
// Output: a table on stdout; with --out DIR also DIR/report.md, DIR/report.json and
// DIR/cost_vs_success.svg (x: modelled cost relative to all-full, y: success preserved %, one
// point per policy, the Pareto front as a line). Deterministic: same inputs, same bytes.
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "controller.h"
#include "ctrl_zoo.h"
#include "csv.h"
#include "error.h"
#include "labels.h"
#include "workload.h"
#include "acbench.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: acbench --labels LABELS --workload W [--zoo DIR] [--controller CTRL]... [options]\n"
          "  --out DIR              write DIR/report.md, DIR/report.json, DIR/cost_vs_success.svg\n"
          "  --seed S               seed of the random policy (default 1)\n"
          "  --theta X              success threshold for the controllers (default: each file's)\n"
          "  --test-domains a,b     evaluate only the tasks of these domains\n"
          "  --zoo DIR              the zoo the labels were made on (needed with --controller)\n"
          "against a running cluster (as well):\n"
          "  --cluster ROUTER       replay through this router (tcp://HOST:PORT; AC_ROUTER)\n"
          "  --redis HOST:PORT      the cluster's Redis, for reload counts (AC_REDIS; AC_PREFIX)\n"
          "  --replay a,b           policies to replay (default: all-full, uniform-int4 if any, oracle,\n"
          "                         the controllers); \"cluster\" = the router's own policy\n"
          "  --concurrency N        workflows in flight at once (default 4)\n"
          "  --replay-tasks N       replay only the first N tasks (default: all)\n"
          "  --timeout-ms N         give up when no answer comes for this long (default 300000)\n");
}

// Prints the last error and gives the exit status 1.
static int fail(const char *ctx, int rc) {
  fprintf(stderr, "acbench: %s: %s (error %d)\n", ctx, ac_errmsg()[0] ? ac_errmsg() : "error", rc);
  return 1;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// --- labels ------------------------------------------------------------------------------------

typedef struct {
  const char *id;
  int task;
} id_ref_t;

static int by_id(const void *a, const void *b) { return strcmp(((const id_ref_t *)a)->id, ((const id_ref_t *)b)->id); }

static int find_variant(const bench_t *b, const char *name) {
  for (int v = 0; v < b->V; v++)
    if (strcmp(b->vname[v], name) == 0) return v;
  return -1;
}

static int add_variant(bench_t *b, const char *name, const char *path) {
  int v = find_variant(b, name);
  if (v >= 0) return v;
  if (b->V == MAX_V) return ac_error(AC_EUNSUPPORTED, "%s: more than %d variants", path, MAX_V);
  if (strlen(name) >= sizeof b->vname[0]) return ac_error(AC_EFORMAT, "%s: variant name too long", path);
  strcpy(b->vname[b->V], name);
  return b->V++;
}

static bool num(json_t *o, const char *key, double *out) {
  json_t *x = json_object_get(o, key);
  if (!json_is_number(x)) return false;
  *out = json_number_value(x);
  return isfinite(*out);
}

// Reads LABELS: the header's variants (quality order) and reference, then every label line.
// Variants of the header without a single label line are dropped afterwards.
// The exact bytes of a label's answer: "answer_hex" when present, else "answer" (else none).
static int label_answer(json_t *o, label_t *l) {
  const char *hex = json_string_value(json_object_get(o, "answer_hex"));
  json_t *a = json_object_get(o, "answer");
  if (!hex && !json_is_string(a)) return 0;  // only a cluster replay needs it (it says so)
  size_t n = hex ? strlen(hex) / 2 : json_string_length(a);
  if (hex && strlen(hex) % 2) return ac_error(AC_EFORMAT, "odd \"answer_hex\"");
  if (!(l->answer = malloc(n + 1))) return ac_error(AC_ENOMEM, "out of memory");
  if (hex) {
    for (size_t i = 0; i < n; i++) {
      unsigned x;
      if (sscanf(hex + 2 * i, "%2x", &x) != 1) {
        free(l->answer);
        l->answer = NULL;
        return ac_error(AC_EFORMAT, "bad \"answer_hex\"");
      }
      l->answer[i] = (char)x;
    }
  } else {
    memcpy(l->answer, json_string_value(a), n);
  }
  l->answer[n] = 0;
  l->answer_len = n;
  return 0;
}

static void free_labels(label_t *lab, size_t n) {
  for (size_t i = 0; lab && i < n; i++) free(lab[i].answer);
  free(lab);
}

static int read_labels(const char *path, bench_t *b) {
  ac_labels_t lf;
  int rc = ac_labels_open(&lf, path, "acbench");
  if (rc) {
    ac_labels_close(&lf);
    return rc;
  }
  char ref[64];
  snprintf(ref, sizeof ref, "%s", json_string_value(json_object_get(lf.header, "reference")));
  size_t i_v;
  json_t *hv;
  json_array_foreach(json_object_get(lf.header, "variants"), i_v, hv) {
    const char *nm = json_string_value(json_object_get(hv, "name"));
    if (nm && (rc = add_variant(b, nm, path)) < 0) {
      ac_labels_close(&lf);
      return rc;
    }
  }
  rc = 0;
  size_t nw = b->w.n;
  id_ref_t *ix = malloc((nw ? nw : 1) * sizeof *ix);
  label_t *lab = calloc((nw ? nw : 1) * MAX_V, sizeof *lab);
  if (!ix || !lab) {
    free(ix);
    free(lab);
    ac_labels_close(&lf);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < nw; i++) ix[i] = (id_ref_t){b->w.tasks[i].id, (int)i};
  qsort(ix, nw, sizeof *ix, by_id);
  long unknown = 0;
  json_t *o;
  while ((rc = ac_labels_next(&lf, &o)) == 0) {
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *var = json_string_value(json_object_get(o, "variant"));
    json_t *succ = json_object_get(o, "success"), *corr = json_object_get(o, "correct");
    label_t l = {.have = true};
    if (!id || !var || !json_is_boolean(succ) || !num(o, "measured_cost_usd", &l.measured) ||
        !num(o, "modelled_cost_usd", &l.modelled)) {
      json_decref(o);
      rc = ac_error(AC_EFORMAT,
                    "%s:%d: a label needs \"id\", \"variant\", \"success\", \"measured_cost_usd\" and "
                    "\"modelled_cost_usd\"",
                    path, lf.lineno);
      break;
    }
    l.success = json_is_true(succ);
    l.correct = json_is_boolean(corr) ? (json_is_true(corr) ? 1 : 0) : -1;
    int v = add_variant(b, var, path);
    if (v < 0) {
      json_decref(o);
      rc = v;
      break;
    }
    id_ref_t key = {id, 0}, *hit = bsearch(&key, ix, nw, sizeof *ix, by_id);
    // The reference's answer: what a cluster replay judges its answers against.
    if (hit && strcmp(var, ref) == 0 && (rc = label_answer(o, &l))) {
      char why[256];
      snprintf(why, sizeof why, "%s", ac_errmsg());
      json_decref(o);
      rc = ac_error(rc, "%s:%d: %s", path, lf.lineno, why);
      break;
    }
    if (hit) {
      label_t *slot = &lab[(size_t)hit->task * MAX_V + v];
      free(slot->answer);
      *slot = l;
    } else {
      unknown++;
    }
    json_decref(o);
  }
  if (rc == 1) rc = 0;
  free(ix);
  ac_labels_close(&lf);
  if (rc) {
    free_labels(lab, nw * MAX_V);
    return rc;
  }
  if (unknown) fprintf(stderr, "acbench: %ld labels name tasks that are not in the workload (ignored)\n", unknown);
  // Keep the variants that have labels, in order.
  bool used[MAX_V] = {0};
  for (size_t i = 0; i < nw; i++)
    for (int v = 0; v < b->V; v++) used[v] |= lab[i * MAX_V + v].have;
  int map[MAX_V], nv = 0;
  for (int v = 0; v < b->V; v++) {
    map[v] = used[v] ? nv : -1;
    if (used[v]) memmove(b->vname[nv++], b->vname[v], sizeof b->vname[0]);
  }
  for (size_t i = 0; i < nw; i++) {
    label_t row[MAX_V];
    memcpy(row, lab + i * MAX_V, sizeof row);
    memset(lab + i * MAX_V, 0, sizeof row);
    for (int v = 0; v < b->V; v++)
      if (map[v] >= 0) lab[i * MAX_V + map[v]] = row[v];
  }
  b->V = nv;
  b->lab = lab;
  b->ref = find_variant(b, ref);
  if (b->ref < 0) return ac_error(AC_EINVAL, "%s: no label for the reference variant '%s'", path, ref);
  return 0;
}

// --- policies ------------------------------------------------------------------------------------

static policy_t *new_policy(bench_t *b, const char *name, const char *kind) {
  policy_t *p = &b->pol[b->n_pol++];
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "%s", name);
  snprintf(p->kind, sizeof p->kind, "%s", kind);
  p->choice = calloc(b->n ? b->n : 1, sizeof *p->choice);
  p->pearson = NAN;
  return p;
}

static const label_t *L(const bench_t *b, int i, int v) { return &b->lab[(size_t)b->task[i] * MAX_V + v]; }

// The oracle's choice for evaluated task i.
static int oracle_choice(const bench_t *b, int i) {
  int best = b->ref;
  for (int v = 0; v < b->V; v++) {
    const label_t *l = L(b, i, v);
    if (l->success && l->modelled < L(b, i, best)->modelled) best = v;
  }
  return best;
}

static double pearson(const float *x, const double *y, int n) {
  if (n < 2) return NAN;
  double mx = 0, my = 0;
  for (int i = 0; i < n; i++) mx += x[i], my += y[i];
  mx /= n;
  my /= n;
  double sxy = 0, sxx = 0, syy = 0;
  for (int i = 0; i < n; i++) {
    double a = x[i] - mx, c = y[i] - my;
    sxy += a * c;
    sxx += a * a;
    syy += c * c;
  }
  if (sxx <= 0 || syy <= 0) return NAN;
  return sxy / sqrt(sxx * syy);
}

typedef struct {
  const char *wf;
  int i;
} wf_pos_t;

// By workflow id, then by position (so file order holds within a workflow).
static int cmp_wf(const void *x, const void *y) {
  const wf_pos_t *a = x, *b = y;
  int c = strcmp(a->wf, b->wf);
  return c ? c : (a->i > b->i) - (a->i < b->i);
}

static void score(bench_t *b, policy_t *p, const int *wf_next) {
  for (int i = 0; i < b->n; i++) {
    int v = p->choice[i];
    const label_t *l = L(b, i, v);
    p->measured += l->measured;
    p->modelled += l->modelled;
    p->successes += l->success;
    p->count[v]++;
    if (L(b, i, b->ref)->correct >= 0) {
      p->correct_n++;
      p->correct += l->correct == 1;
    }
    if (wf_next[i] >= 0) {
      p->pairs++;
      p->switches += p->choice[wf_next[i]] != v;
    }
  }
  if (p->complexity) p->pearson = pearson(p->complexity, b->meas_cx, b->n);
}

// --- controllers -----------------------------------------------------------------------------------

static void stem(const char *path, char *out, size_t cap) {
  const char *s = strrchr(path, '/');
  s = s ? s + 1 : path;
  snprintf(out, cap, "%s", s);
  char *dot = strrchr(out, '.');
  if (dot && dot != out) *dot = 0;
}

static int run_controller(bench_t *b, const ac_ctrl_zoo_t *z, const char *path, double theta, char *note, size_t ncap) {
  ac_ctrl_t *c = NULL;
  int rc = ac_ctrl_load(path, z->E, z->n_vocab, z->e, z->digest, &c);
  if (rc) return rc;
  ac_ctrl_config_t *cfg = ac_ctrl_config_mut(c);
  if (theta >= 0) cfg->theta = (float)theta;
  int map[MAX_V];
  for (int v = 0; v < cfg->n_variant; v++) map[v] = find_variant(b, cfg->variant[v].name);
  if (map[cfg->reference] != b->ref) {
    rc = ac_error(AC_EINVAL, "%s: the controller's reference '%s' is not the labels' reference '%s'", path,
                  cfg->variant[cfg->reference].name, b->vname[b->ref]);
    ac_ctrl_destroy(&c);
    return rc;
  }
  char name[128];
  stem(path, name, sizeof name);
  for (int j = 0; j < b->n_pol; j++)
    if (strcmp(b->pol[j].name, name) == 0) {
      size_t l = strlen(name);
      snprintf(name + l, sizeof name - l, "#%d", b->n_pol);
      break;
    }
  policy_t *p = new_policy(b, name, "controller");
  p->complexity = calloc(b->n ? b->n : 1, sizeof *p->complexity);
  if (!p->choice || !p->complexity) {
    ac_ctrl_destroy(&c);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  for (int i = 0; i < b->n && !rc; i++) {
    const ac_task_t *t = &b->w.tasks[b->task[i]];
    size_t tl;
    char *text = ac_task_text(t, &tl);
    int32_t *ids = NULL;
    int n = 0;
    ac_ctrl_pred_t pr;
    if (!text) rc = ac_error(AC_ENOMEM, "out of memory");
    else if (!(rc = ac_ctrl_text_ids(z->tok, text, tl, &ids, &n)) && !(rc = ac_ctrl_predict(c, ids, n, &pr))) {
      int v = map[pr.variant];
      if (v < 0)
        rc = ac_error(AC_EINVAL, "%s chose variant '%s' for task %s, which the labels do not have", path,
                      cfg->variant[pr.variant].name, t->id);
      p->choice[i] = v;
      p->complexity[i] = pr.complexity;
      p->fallbacks += pr.fallback;
    }
    free(text);
    free(ids);
  }
  snprintf(note, ncap, "%s: %s controller, k %d, %d layers x %d, %s, %d steps, theta %.3g, conf_min %.3g", name,
           cfg->d >= 512 ? "paper" : "tiny", cfg->k, cfg->n_layer, cfg->d, cfg->train.maml ? "MAML" : "no MAML",
           cfg->train.steps, cfg->theta, cfg->conf_min);
  ac_ctrl_destroy(&c);
  return rc;
}

// --- output ----------------------------------------------------------------------------------------

static double pct(double a, double b) { return b > 0 ? 100.0 * a / b : NAN; }
static double savings(double c, double full) { return full > 0 ? 100.0 * (1.0 - c / full) : NAN; }

static void fmt_num(char *buf, size_t cap, double x, const char *f) {
  if (isnan(x)) snprintf(buf, cap, "n/a");
  else snprintf(buf, cap, f, x);
}

// The table (markdown, also printed on stdout).
static void write_table(FILE *f, const bench_t *b) {
  const policy_t *full = &b->pol[0];
  fprintf(f,
          "| policy | measured $ | modelled $ | savings measured %% | savings modelled %% | success %% | correct %% | "
          "switch %% | pearson r | fallback %% |\n");
  fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int j = 0; j < b->n_pol; j++) {
    const policy_t *p = &b->pol[j];
    char c[6][32];
    fmt_num(c[0], sizeof c[0], savings(p->measured, full->measured), "%.1f");
    fmt_num(c[1], sizeof c[1], savings(p->modelled, full->modelled), "%.1f");
    fmt_num(c[2], sizeof c[2], pct(p->correct, p->correct_n), "%.1f");
    fmt_num(c[3], sizeof c[3], pct(p->switches, p->pairs), "%.1f");
    fmt_num(c[4], sizeof c[4], p->pearson, "%.3f");
    fmt_num(c[5], sizeof c[5], p->complexity ? pct(p->fallbacks, b->n) : NAN, "%.1f");
    fprintf(f, "| %s%s | %.6g | %.6g | %s | %s | %.1f | %s | %s | %s | %s |\n", p->name, p->pareto ? " *" : "",
            p->measured, p->modelled, c[0], c[1], pct(p->successes, b->n), c[2], c[3], c[4], c[5]);
  }
}

static json_t *jnum(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static int write_json(const char *path, const bench_t *b, json_t *settings) {
  const policy_t *full = &b->pol[0];
  json_t *root = json_object(), *pols = json_array();
  json_object_set_new(root, "format", json_string("agentcompress-bench"));
  json_object_set_new(root, "version", json_integer(1));
  json_object_set(root, "settings", settings);
  for (int j = 0; j < b->n_pol; j++) {
    const policy_t *p = &b->pol[j];
    json_t *o = json_object(), *cnt = json_object();
    json_object_set_new(o, "name", json_string(p->name));
    json_object_set_new(o, "kind", json_string(p->kind));
    json_object_set_new(o, "tasks", json_integer(b->n));
    json_object_set_new(o, "measured_cost_usd", json_real(p->measured));
    json_object_set_new(o, "modelled_cost_usd", json_real(p->modelled));
    json_object_set_new(o, "relative_modelled_cost", jnum(full->modelled > 0 ? p->modelled / full->modelled : NAN));
    json_object_set_new(o, "savings_measured_pct", jnum(savings(p->measured, full->measured)));
    json_object_set_new(o, "savings_modelled_pct", jnum(savings(p->modelled, full->modelled)));
    json_object_set_new(o, "successes", json_integer(p->successes));
    json_object_set_new(o, "success_pct", jnum(pct(p->successes, b->n)));
    json_object_set_new(o, "correct", json_integer(p->correct));
    json_object_set_new(o, "correct_tasks", json_integer(p->correct_n));
    json_object_set_new(o, "correct_pct", jnum(pct(p->correct, p->correct_n)));
    json_object_set_new(o, "switches", json_integer(p->switches));
    json_object_set_new(o, "switch_pairs", json_integer(p->pairs));
    json_object_set_new(o, "switch_pct", jnum(pct(p->switches, p->pairs)));
    json_object_set_new(o, "pearson_r", jnum(p->pearson));
    json_object_set_new(o, "fallback_pct", jnum(p->complexity ? pct(p->fallbacks, b->n) : NAN));
    for (int v = 0; v < b->V; v++) json_object_set_new(cnt, b->vname[v], json_integer(p->count[v]));
    json_object_set_new(o, "choices", cnt);
    json_object_set_new(o, "pareto", json_boolean(p->pareto));
    json_array_append_new(pols, o);
  }
  json_object_set_new(root, "policies", pols);
  if (b->n_rep) {
    json_t *rep = json_array();
    for (int j = 0; j < b->n_rep; j++) {
      const replay_t *r = &b->rep[j]->replay;
      long answered = r->tasks - r->errors;
      json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:o, s:i, s:o, s:f, s:o, s:o, s:o, s:f}", "name", b->rep[j]->name,
                            "kind", b->rep[j]->kind, "tasks", (json_int_t)r->tasks, "errors", (json_int_t)r->errors,
                            "successes", (json_int_t)r->successes, "success_pct", jnum(pct(r->successes, r->tasks)),
                            "correct_tasks", (json_int_t)r->correct_n, "correct_pct", jnum(pct(r->correct, r->correct_n)),
                            "measured_cost_usd", r->measured, "latency_p50_ms", jnum(r->p50), "latency_p90_ms",
                            jnum(r->p90), "latency_p99_ms", jnum(r->p99), "wall_s", r->wall_s);
      json_object_set_new(o, "reloads", r->reloads >= 0 ? json_integer(r->reloads) : json_null());
      json_object_set_new(o, "cache_hits", json_integer(r->hits));
      json_object_set_new(o, "cache_hit_pct", jnum(pct(r->hits, answered)));
      json_object_set_new(o, "upgraded_pct", jnum(pct(r->upgraded, answered)));
      json_object_set_new(o, "waited_for_reload_pct", jnum(pct(r->waited, answered)));
      json_object_set_new(o, "switch_pct", jnum(pct(r->switches, r->pairs)));
      json_array_append_new(rep, o);
    }
    json_object_set_new(root, "replay", rep);
  }
  int rc = json_dump_file(root, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
  json_decref(root);
  return rc ? ac_error(AC_EIO, "%s: cannot write", path) : 0;
}

static void xml_escape(FILE *f, const char *s) {
  for (; *s; s++) switch (*s) {
      case '<': fputs("&lt;", f); break;
      case '>': fputs("&gt;", f); break;
      case '&': fputs("&amp;", f); break;
      case '"': fputs("&quot;", f); break;
      default: fputc(*s, f);
    }
}

typedef struct {
  double x, y;
  int j;
} pt_t;

static int by_x(const void *a, const void *b) {
  const pt_t *p = a, *q = b;
  if (p->x != q->x) return p->x < q->x ? -1 : 1;
  if (p->y != q->y) return p->y > q->y ? -1 : 1;
  return p->j - q->j;
}

static int write_svg(const char *path, const bench_t *b) {
  FILE *f = fopen(path, "w");
  if (!f) return ac_error(AC_EIO, "%s: cannot write (%s)", path, strerror(errno));
  const double W = 720, H = 480, ml = 70, mr = 150, mt = 40, mb = 60;
  double xmax = 1.0, ymin = 100.0;
  pt_t pts[sizeof b->pol / sizeof b->pol[0]];
  for (int j = 0; j < b->n_pol; j++) {
    const policy_t *p = &b->pol[j];
    pts[j] = (pt_t){b->pol[0].modelled > 0 ? p->modelled / b->pol[0].modelled : 0, pct(p->successes, b->n), j};
    if (pts[j].x > xmax) xmax = pts[j].x;
    if (pts[j].y < ymin) ymin = pts[j].y;
  }
  xmax = ceil(xmax * 10.0 - 1e-9) / 10.0;
  ymin = floor(ymin / 10.0) * 10.0;
  if (ymin > 90) ymin = 90;
  if (ymin < 0) ymin = 0;
  double pw = W - ml - mr, ph = H - mt - mb;
#define SX(x) (ml + (x) / xmax * pw)
#define SY(y) (mt + (100.0 - (y)) / (100.0 - ymin) * ph)
  fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
             "font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H);
  fprintf(f, "<title>Cost vs success preserved (%d tasks)</title>\n", b->n);
  fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, H);
  fprintf(f, "<text x=\"%.1f\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">Cost vs success preserved</text>\n",
          ml + pw / 2);
  // grid and axes
  for (int i = 0; i <= 10; i++) {
    double x = xmax * i / 10.0, y = ymin + (100.0 - ymin) * i / 10.0;
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n", SX(x), mt, SX(x), mt + ph);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n", ml, SY(y), ml + pw, SY(y));
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.2f</text>\n", SX(x), mt + ph + 16, x);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", ml - 6, SY(y) + 4, y);
  }
  fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", ml, mt, pw, ph);
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">modelled cost relative to all-full</text>\n", ml + pw / 2,
          H - 18);
  fprintf(f, "<text x=\"18\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 18 %.1f)\">success preserved "
             "(%%)</text>\n", mt + ph / 2, mt + ph / 2);
  // Pareto front: the non-dominated points (flagged in main), by cost.
  qsort(pts, (size_t)b->n_pol, sizeof pts[0], by_x);
  pt_t front[sizeof b->pol / sizeof b->pol[0]];
  int nf = 0;
  for (int i = 0; i < b->n_pol; i++)
    if (b->pol[pts[i].j].pareto) front[nf++] = pts[i];
  fprintf(f, "<polyline class=\"pareto\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"");
  for (int i = 0; i < nf; i++) fprintf(f, "%s%.1f,%.1f", i ? " " : "", SX(front[i].x), SY(front[i].y));
  fprintf(f, "\"/>\n");
  for (int i = 0; i < b->n_pol; i++) {
    const policy_t *p = &b->pol[pts[i].j];
    const char *color = p->pareto ? "#d62728" : "#1f77b4";
    fprintf(f, "<g class=\"policy\"><circle class=\"point\" data-policy=\"");
    xml_escape(f, p->name);
    fprintf(f, "\" cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"><title>", SX(pts[i].x), SY(pts[i].y), color);
    xml_escape(f, p->name);
    fprintf(f, ": cost %.3f, success %.1f%%</title></circle>", pts[i].x, pts[i].y);
    // labels of points at the same place are stacked
    int same = 0;
    for (int k = 0; k < i; k++)
      if (fabs(SX(pts[k].x) - SX(pts[i].x)) < 30 && fabs(SY(pts[k].y) - SY(pts[i].y)) < 12) same++;
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", SX(pts[i].x) + 8, SY(pts[i].y) + 4 + 13.0 * same);
    xml_escape(f, p->name);
    fprintf(f, "</text></g>\n");
  }
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#d62728\">— Pareto front</text>\n", ml + pw + 10, mt + 10);
  fprintf(f, "</svg>\n");
#undef SX
#undef SY
  if (fclose(f)) return ac_error(AC_EIO, "%s: cannot write", path);
  return 0;
}

static int mkdir_p(const char *dir) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0777) && errno != EEXIST) return ac_error(AC_EIO, "%s: cannot create (%s)", buf, strerror(errno));
      *p = '/';
    }
  if (mkdir(buf, 0777) && errno != EEXIST) return ac_error(AC_EIO, "%s: cannot create (%s)", buf, strerror(errno));
  return 0;
}

static policy_t *find_policy(bench_t *b, const char *name) {
  for (int j = 0; j < b->n_pol; j++)
    if (strcmp(b->pol[j].name, name) == 0) return &b->pol[j];
  return NULL;
}

// The cluster replay's table (markdown, also printed on stdout).
static void write_replay_table(FILE *f, const bench_t *b) {
  const policy_t *full = NULL;
  for (int j = 0; j < b->n_rep; j++)
    if (strcmp(b->rep[j]->kind, "reference") == 0) full = b->rep[j];
  fprintf(f,
          "| policy | tasks | errors | success %% | correct %% | measured $ | savings measured %% | p50 ms | p90 ms | "
          "p99 ms | reloads | cache hit %% | upgraded %% | waited %% | switch %% |\n");
  fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int j = 0; j < b->n_rep; j++) {
    const replay_t *r = &b->rep[j]->replay;
    char c[4][32];
    fmt_num(c[0], sizeof c[0], pct(r->correct, r->correct_n), "%.1f");
    fmt_num(c[1], sizeof c[1], full ? savings(r->measured, full->replay.measured) : NAN, "%.1f");
    fmt_num(c[2], sizeof c[2], pct(r->switches, r->pairs), "%.1f");
    if (r->reloads >= 0) snprintf(c[3], sizeof c[3], "%ld", r->reloads);
    else snprintf(c[3], sizeof c[3], "n/a");
    fprintf(f, "| %s | %ld | %ld | %.1f | %s | %.6g | %s | %.0f | %.0f | %.0f | %s | %.1f | %.1f | %.1f | %s |\n",
            b->rep[j]->name, r->tasks, r->errors, pct(r->successes, r->tasks), c[0], r->measured, c[1], r->p50, r->p90,
            r->p99, c[3], pct(r->hits, r->tasks - r->errors), pct(r->upgraded, r->tasks - r->errors),
            pct(r->waited, r->tasks - r->errors), c[2]);
  }
}

// --- main ------------------------------------------------------------------------------------------

int main(int argc, char **argv) {
  static const struct option opts[] = {{"labels", required_argument, 0, 'l'},     {"workload", required_argument, 0, 'w'},
                                       {"zoo", required_argument, 0, 'z'},        {"controller", required_argument, 0, 'c'},
                                       {"out", required_argument, 0, 'o'},        {"seed", required_argument, 0, 's'},
                                       {"theta", required_argument, 0, 'T'},      {"test-domains", required_argument, 0, 'D'},
                                       {"cluster", required_argument, 0, 'C'},    {"redis", required_argument, 0, 'R'},
                                       {"replay", required_argument, 0, 'P'},     {"concurrency", required_argument, 0, 'N'},
                                       {"replay-tasks", required_argument, 0, 'L'}, {"timeout-ms", required_argument, 0, 'W'},
                                       {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
  replay_opts_t ro = {.router = NULL, .redis = getenv("AC_REDIS"), .prefix = getenv("AC_PREFIX"), .concurrency = 4,
                      .limit = 0, .timeout_ms = 300000};
  const char *replay = NULL;
  const char *labels = NULL, *wl = NULL, *zoo = NULL, *out = NULL, *domains = NULL, *ctrl[MAX_CTRL];
  int n_ctrl = 0, c;
  uint64_t seed = 1;
  double theta = -1;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    char *end = NULL;
    switch (c) {
      case 'l': labels = optarg; break;
      case 'w': wl = optarg; break;
      case 'z': zoo = optarg; break;
      case 'o': out = optarg; break;
      case 'D': domains = optarg; break;
      case 'c':
        if (n_ctrl == MAX_CTRL) {
          fprintf(stderr, "acbench: at most %d controllers\n", MAX_CTRL);
          return 2;
        }
        ctrl[n_ctrl++] = optarg;
        break;
      case 's':
        errno = 0;
        seed = strtoull(optarg, &end, 10);
        if (errno || !*optarg || *end || *optarg == '-') {
          fprintf(stderr, "acbench: bad value '%s' for --seed\n", optarg);
          return 2;
        }
        break;
      case 'T':
        theta = strtod(optarg, &end);
        if (!*optarg || *end || !(theta >= 0 && theta <= 1)) {
          fprintf(stderr, "acbench: bad value '%s' for --theta (0..1)\n", optarg);
          return 2;
        }
        break;
      case 'C': ro.router = optarg; break;
      case 'R': ro.redis = optarg; break;
      case 'P': replay = optarg; break;
      case 'N':
      case 'L':
      case 'W': {
        long x = strtol(optarg, &end, 10);
        if (!*optarg || *end || x < (c == 'L' ? 0 : 1) || x > 100000000) {
          fprintf(stderr, "acbench: bad value '%s' for --%s\n", optarg,
                  c == 'N' ? "concurrency" : c == 'L' ? "replay-tasks" : "timeout-ms");
          return 2;
        }
        if (c == 'N') ro.concurrency = (int)x;
        else if (c == 'L') ro.limit = (int)x;
        else ro.timeout_ms = (double)x;
        break;
      }
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (!ro.router && replay) ro.router = getenv("AC_ROUTER");
  if (replay && !ro.router) {
    fprintf(stderr, "acbench: --replay needs --cluster ROUTER (or AC_ROUTER)\n");
    return 2;
  }
  if (optind != argc || !labels || !wl || (n_ctrl && !zoo)) {
    if (n_ctrl && !zoo) fprintf(stderr, "acbench: --controller needs --zoo\n");
    usage(stderr);
    return 2;
  }

  static bench_t B;
  bench_t *b = &B;
  int rc, status = 1;
  ac_ctrl_zoo_t z;
  bool have_zoo = false;
  int *wf_next = NULL;
  json_t *settings = NULL;
  char notes[MAX_CTRL][256] = {{0}};
  if ((rc = ac_workload_load(wl, &b->w))) return fail(wl, rc);
  if ((rc = read_labels(labels, b))) {
    status = fail(labels, rc);
    goto done;
  }
  // Evaluated tasks.
  b->task = malloc((b->w.n ? b->w.n : 1) * sizeof *b->task);
  b->meas_cx = malloc((b->w.n ? b->w.n : 1) * sizeof *b->meas_cx);
  wf_next = malloc((b->w.n ? b->w.n : 1) * sizeof *wf_next);
  if (!b->task || !b->meas_cx || !wf_next) {
    status = fail("acbench", ac_error(AC_ENOMEM, "out of memory"));
    goto done;
  }
  long incomplete = 0, other = 0;
  for (size_t i = 0; i < b->w.n; i++) {
    if (!ac_csv_has(domains, b->w.tasks[i].domain)) {
      other++;
      continue;
    }
    bool all = true;
    for (int v = 0; v < b->V; v++) all &= b->lab[i * MAX_V + v].have;
    if (!all) {
      incomplete++;
      continue;
    }
    b->task[b->n++] = (int)i;
  }
  if (incomplete) fprintf(stderr, "acbench: %ld tasks lack a label for some variant; left out\n", incomplete);
  if (b->n == 0) {
    status = fail(labels, ac_error(AC_EINVAL, "no task of %s%s%s is labelled on every variant", wl,
                                   domains ? " in domains " : "", domains ? domains : ""));
    goto done;
  }
  // The next task of the same workflow, in file order (-1: none).
  {
    wf_pos_t *wp = malloc((size_t)b->n * sizeof *wp);
    if (!wp) {
      status = fail("acbench", ac_error(AC_ENOMEM, "out of memory"));
      goto done;
    }
    for (int i = 0; i < b->n; i++) wp[i] = (wf_pos_t){b->w.tasks[b->task[i]].workflow, i};
    qsort(wp, (size_t)b->n, sizeof *wp, cmp_wf);
    for (int i = 0; i < b->n; i++)
      wf_next[wp[i].i] = (i + 1 < b->n && strcmp(wp[i].wf, wp[i + 1].wf) == 0) ? wp[i + 1].i : -1;
    free(wp);
  }
  for (int i = 0; i < b->n; i++) {
    double r = L(b, i, b->ref)->modelled;
    int o = oracle_choice(b, i);
    b->meas_cx[i] = r > 0 ? L(b, i, o)->modelled / r : 1.0;
  }

  // Policies.
  policy_t *p = new_policy(b, "all-full", "reference");
  for (int i = 0; i < b->n; i++) p->choice[i] = b->ref;
  for (int v = 0; v < b->V; v++) {
    if (v == b->ref) continue;
    char nm[128];
    snprintf(nm, sizeof nm, "uniform-%s", b->vname[v]);
    p = new_policy(b, nm, "uniform");
    for (int i = 0; i < b->n; i++) p->choice[i] = v;
  }
  p = new_policy(b, "random", "random");
  uint64_t st = seed;
  for (int i = 0; i < b->n; i++) p->choice[i] = (int)(splitmix64(&st) % (uint64_t)b->V);
  p = new_policy(b, "oracle", "oracle");
  for (int i = 0; i < b->n; i++) p->choice[i] = oracle_choice(b, i);
  if (n_ctrl) {
    if ((rc = ac_ctrl_zoo_load(zoo, &z))) {
      status = fail(zoo, rc);
      goto done;
    }
    have_zoo = true;
    for (int k = 0; k < n_ctrl; k++)
      if ((rc = run_controller(b, &z, ctrl[k], theta, notes[k], sizeof notes[k]))) {
        status = fail(ctrl[k], rc);
        goto done;
      }
  }
  for (int j = 0; j < b->n_pol; j++)
    if (!b->pol[j].choice) {
      status = fail("acbench", ac_error(AC_ENOMEM, "out of memory"));
      goto done;
    }
  for (int j = 0; j < b->n_pol; j++) score(b, &b->pol[j], wf_next);
  // Pareto flags: not dominated in (modelled cost lower, successes higher); of equal points the first.
  {
    for (int j = 0; j < b->n_pol; j++) {
      policy_t *q = &b->pol[j];
      double qx = q->modelled, qy = (double)q->successes;
      bool dom = false;
      for (int k = 0; k < b->n_pol && !dom; k++) {
        const policy_t *r = &b->pol[k];
        double rx = r->modelled, ry = (double)r->successes;
        if (k != j && rx <= qx && ry >= qy && (rx < qx || ry > qy || k < j)) dom = true;
      }
      q->pareto = !dom;
    }
  }

  // Against the cluster.
  if (ro.router) {
    char def[1024] = "all-full";
    if (!replay) {
      if (find_policy(b, "uniform-int4")) strcat(def, ",uniform-int4");
      strcat(def, ",oracle");
      for (int j = 0; j < b->n_pol; j++)
        if (strcmp(b->pol[j].kind, "controller") == 0 && strlen(def) + strlen(b->pol[j].name) + 2 < sizeof def) {
          strcat(def, ",");
          strcat(def, b->pol[j].name);
        }
      replay = def;
    }
    const char *q = replay;
    while (*q) {
      size_t l = strcspn(q, ",");
      char nm[128];
      snprintf(nm, sizeof nm, "%.*s", (int)(l < 127 ? l : 127), q);
      q += l + (q[l] == ',');
      if (!nm[0]) continue;
      policy_t *rp = find_policy(b, nm);
      if (!rp && strcmp(nm, "cluster") == 0) {
        rp = &b->cluster;
        memset(rp, 0, sizeof *rp);
        snprintf(rp->name, sizeof rp->name, "cluster");
        snprintf(rp->kind, sizeof rp->kind, "cluster");
        rp->pearson = NAN;
        if (!(rp->choice = malloc((size_t)b->n * sizeof *rp->choice))) {
          status = fail("acbench", ac_error(AC_ENOMEM, "out of memory"));
          goto done;
        }
        for (int i = 0; i < b->n; i++) rp->choice[i] = -1;
      }
      if (!rp) {
        status = fail(nm, ac_error(AC_EINVAL, "--replay: no such policy (see the table; \"cluster\" = the router's own)"));
        goto done;
      }
      if (b->n_rep == (int)(sizeof b->rep / sizeof b->rep[0])) {
        status = fail(nm, ac_error(AC_EINVAL, "--replay: too many policies"));
        goto done;
      }
      b->rep[b->n_rep++] = rp;
    }
    // Every name is checked before the first replay (they take minutes).
    for (int j = 0; j < b->n_rep; j++) {
      policy_t *rp = b->rep[j];
      fprintf(stderr, "acbench: replaying %s against the cluster at %s ...\n", rp->name, ro.router);
      if ((rc = acb_replay(b, rp, &ro))) {
        status = fail(rp->name, rc);
        goto done;
      }
      const replay_t *r = &rp->replay;
      fprintf(stderr, "acbench: %s: %ld tasks in %.1f s, p50 %.0f ms, cache hits %ld, reloads %ld\n", rp->name, r->tasks,
              r->wall_s, r->p50, r->hits, r->reloads);
    }
  }

  // Settings.
  settings = json_object();
  json_object_set_new(settings, "labels", json_string(labels));
  json_object_set_new(settings, "workload", json_string(wl));
  json_object_set_new(settings, "zoo", zoo ? json_string(zoo) : json_null());
  json_object_set_new(settings, "seed", json_integer((json_int_t)seed));
  json_object_set_new(settings, "theta", theta >= 0 ? json_real(theta) : json_null());
  json_object_set_new(settings, "test_domains", domains ? json_string(domains) : json_null());
  json_object_set_new(settings, "tasks", json_integer(b->n));
  json_object_set_new(settings, "tasks_incomplete", json_integer(incomplete));
  json_object_set_new(settings, "tasks_other_domains", json_integer(other));
  json_object_set_new(settings, "reference", json_string(b->vname[b->ref]));
  {
    json_t *vs = json_array(), *cs = json_array(), *cmd = json_array();
    for (int v = 0; v < b->V; v++) json_array_append_new(vs, json_string(b->vname[v]));
    for (int k = 0; k < n_ctrl; k++) json_array_append_new(cs, json_string(notes[k]));
    for (int i = 0; i < argc; i++) json_array_append_new(cmd, json_string(argv[i]));
    json_object_set_new(settings, "variants", vs);
    json_object_set_new(settings, "controllers", cs);
    json_object_set_new(settings, "command", cmd);
  }

  printf("acbench: %d tasks, variants", b->n);
  for (int v = 0; v < b->V; v++) printf(" %s%s", b->vname[v], v == b->ref ? " (reference)" : "");
  printf("%s%s\n\n", domains ? "; test domains " : "", domains ? domains : "");
  if (out) {
    char path[4096];
    if ((rc = mkdir_p(out))) {
      status = fail(out, rc);
      goto done;
    }
    snprintf(path, sizeof path, "%s/cost_vs_success.svg", out);
    if ((rc = write_svg(path, b))) {
      status = fail(path, rc);
      goto done;
    }
    snprintf(path, sizeof path, "%s/report.json", out);
    if ((rc = write_json(path, b, settings))) {
      status = fail(path, rc);
      goto done;
    }
    snprintf(path, sizeof path, "%s/report.md", out);
    FILE *f = fopen(path, "w");
    if (!f) {
      status = fail(path, ac_error(AC_EIO, "cannot write (%s)", strerror(errno)));
      goto done;
    }
    fprintf(f, "# acbench report\n\nReplay of `%s` from the labels `%s` (no inference).\n\n", wl, labels);
    write_table(f, b);
    fprintf(f, "\n`*`: on the Pareto front of modelled cost vs success (see `cost_vs_success.svg`).\n\n");
    fprintf(f, "![cost vs success](cost_vs_success.svg)\n\n## Settings\n\n");
    fprintf(f, "- tasks evaluated: %d (%ld left out: not labelled on every variant; %ld of other domains)\n", b->n,
            incomplete, other);
    fprintf(f, "- variants:");
    for (int v = 0; v < b->V; v++) fprintf(f, " %s%s", b->vname[v], v == b->ref ? " (reference)" : "");
    char th[64];
    if (theta >= 0) snprintf(th, sizeof th, "%g (--theta, for every controller)", theta);
    else snprintf(th, sizeof th, "each controller's own");
    fprintf(f, "\n- test domains: %s\n- random seed: %llu\n- theta: %s\n", domains ? domains : "all",
            (unsigned long long)seed, th);
    for (int k = 0; k < n_ctrl; k++) fprintf(f, "- controller %s\n", notes[k]);
    fprintf(f,
            "- success preserved: tasks whose chosen variant agreed with the full model; savings: 1 - cost / "
            "cost(all-full); correct: against the ground truth over the %ld tasks that have one; switch: consecutive "
            "tasks of a workflow on different variants; pearson r: predicted complexity vs modelled cost of the "
            "cheapest succeeding variant / cost of the reference\n",
            b->pol[0].correct_n);
    if (b->n_rep) {
      fprintf(f, "\n## Against the cluster at %s\n\n", ro.router);
      write_replay_table(f, b);
      fprintf(f,
              "\nEach policy's choices sent through the router, %d workflows at once, each workflow's steps one after "
              "another%s. Success: the answer judged against the full model's answer in the labels. Latency: task "
              "sent to Result received. Cache hit: served by a worker already holding the chosen variant, with no "
              "wait for a reload; upgraded: served by a better variant; reloads: the scheduler's count over the "
              "replay. Measured cost: the Results' worker busy seconds x price.\n",
              ro.concurrency, ro.limit ? " (the first --replay-tasks tasks)" : "");
    }
    fprintf(f, "\n## Command\n\n```\n");
    for (int i = 0; i < argc; i++) fprintf(f, "%s%s", i ? " " : "", argv[i]);
    fprintf(f, "\n```\n");
    if (fclose(f)) {
      status = fail(path, ac_error(AC_EIO, "cannot write"));
      goto done;
    }
  }
  write_table(stdout, b);
  if (b->n_rep) {
    printf("\nagainst the cluster at %s:\n\n", ro.router);
    write_replay_table(stdout, b);
  }
  if (out) printf("\nacbench: wrote %s/report.md, %s/report.json, %s/cost_vs_success.svg\n", out, out, out);
  status = 0;
done:
  json_decref(settings);
  if (have_zoo) ac_ctrl_zoo_free(&z);
  for (int j = 0; j < b->n_pol; j++) {
    free(b->pol[j].choice);
    free(b->pol[j].complexity);
  }
  free(b->cluster.choice);
  free(wf_next);
  free(b->task);
  free(b->meas_cx);
  free_labels(b->lab, b->w.n * MAX_V);
  ac_workload_free(&b->w);
  return status;
}
