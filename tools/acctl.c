// acctl.c - the operator's CLI for an AgentCompress cluster.
//
// Reads and writes the cluster's Redis keys (README: "Redis keys") for status, pins, drains, reloads,
// settings and stats, and talks to a router over ZeroMQ to submit a task or ping it. Human
// tables by default, JSON with --json. Exit status: 0 ok, 1 failure, 2 usage error, 3 the
// router answered with a retriable error (submit).
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "catalog.h"
#include "clock.h"
#include "error.h"
#include "log.h"
#include "msg.h"
#include "rds.h"
#include "settings.h"

#define MAX_STOPS 16

typedef struct {
  const char *redis, *router, *prefix;
  bool json;
  long timeout_ms;  // -1: the command's default
  bool wait;        // reload --wait
  // submit
  const char *prompt, *prompt_file, *system, *variant, *session;
  bool chat, ignore_eos;
  long n, deadline_ms, top_k, priority;
  double temp, top_p, min_p;
  unsigned long long seed;
  const char *stops[MAX_STOPS];
  int n_stops;
  bool submit_opts;  // any submit-only option was given
} opts_t;

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

// --- output helpers ------------------------------------------------------------------------------------

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("acctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

static void print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
  if (s) {
    puts(s);
    free(s);
  }
  json_decref(j);
}

static void human_bytes(uint64_t b, char *out, size_t n) {
  if (b >= (1ull << 30)) snprintf(out, n, "%.1f GiB", (double)b / (1ull << 30));
  else if (b >= (1ull << 20)) snprintf(out, n, "%.1f MiB", (double)b / (1ull << 20));
  else if (b >= 1024) snprintf(out, n, "%.1f KiB", (double)b / 1024);
  else snprintf(out, n, "%llu B", (unsigned long long)b);
}

// A table: header, rows of cells, column widths computed when printed. align: 'l' or 'r' per
// column.
typedef struct {
  int ncol, nrow;
  const char *const *head;
  const char *align;
  char **cell;  // (nrow, ncol)
} tbl_t;

static void tbl_row(tbl_t *t, ...) {
  char **c = realloc(t->cell, (size_t)(t->nrow + 1) * (size_t)t->ncol * sizeof *c);
  if (!c) return;
  t->cell = c;
  va_list ap;
  va_start(ap, t);
  for (int k = 0; k < t->ncol; k++) {
    const char *s = va_arg(ap, const char *);
    c[t->nrow * t->ncol + k] = strdup(s ? s : "");
  }
  va_end(ap);
  t->nrow++;
}

static void tbl_free(tbl_t *t) {
  for (int i = 0; i < t->nrow * t->ncol; i++) free(t->cell[i]);
  free(t->cell);
  t->cell = NULL;
  t->nrow = 0;
}

// Prints the table and empties it.
static void tbl_print(tbl_t *t, FILE *f) {
  int w[32] = {0};
  for (int k = 0; k < t->ncol && k < 32; k++) {
    w[k] = (int)strlen(t->head[k]);
    for (int r = 0; r < t->nrow; r++) {
      const char *s = t->cell[r * t->ncol + k];
      int l = s ? (int)strlen(s) : 0;
      if (l > w[k]) w[k] = l;
    }
  }
  for (int r = -1; r < t->nrow; r++) {
    // Built in a buffer so that trailing blanks (an empty last column) can be cut.
    char *line = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&line, &len);
    if (!m) return;
    for (int k = 0; k < t->ncol; k++) {
      const char *s = r < 0 ? t->head[k] : t->cell[r * t->ncol + k];
      if (!s) s = "";
      if (t->align[k] == 'r') fprintf(m, "%*s", w[k], s);
      else if (k == t->ncol - 1) fputs(s, m);
      else fprintf(m, "%-*s", w[k], s);
      if (k < t->ncol - 1) fputs("  ", m);
    }
    fclose(m);
    while (len && line[len - 1] == ' ') line[--len] = 0;
    fprintf(f, "%s\n", line);
    free(line);
  }
  tbl_free(t);
}

// --- Redis helpers -----------------------------------------------------------------------------------------

static ac_rds_t *redis_open(const opts_t *o) {
  ac_rds_t *r = NULL;
  if (ac_rds_new(o->redis, o->prefix, &r)) {
    fail("%s", ac_errmsg());
    return NULL;
  }
  // A Redis that is (re)starting gets a moment: tries for up to 2 s (or --timeout-ms if shorter).
  double give_up = ac_mono_ms() + (o->timeout_ms >= 0 && o->timeout_ms < 2000 ? (double)o->timeout_ms : 2000.0);
  while (ac_rds_connect(r) != 0) {
    if (ac_mono_ms() >= give_up || interrupted) {
      fail("cannot reach redis at %s (--redis HOST:PORT or AC_REDIS)", ac_rds_addr(r));
      ac_rds_destroy(&r);
      return NULL;
    }
    struct timespec ts = {0, 100 * 1000000};
    nanosleep(&ts, NULL);
  }
  return r;
}

// Checks a reply: NULL (after saying why) when Redis is gone or answered with an error.
static redisReply *checked(ac_rds_t *r, redisReply *rep) {
  if (!rep) {
    fail("redis %s: connection lost", ac_rds_addr(r));
    return NULL;
  }
  if (rep->type == REDIS_REPLY_ERROR) {
    fail("redis: %s", rep->str);
    freeReplyObject(rep);
    return NULL;
  }
  return rep;
}
#define cmd(r, ...) checked((r), ac_rds_cmd((r), __VA_ARGS__))

// The catalog the scheduler published; false (after printing why) when there is none.
static bool load_catalog(ac_rds_t *r, ac_catalog_t *cat, bool quiet) {
  memset(cat, 0, sizeof *cat);
  redisReply *rep = cmd(r, "GET %scatalog", ac_rds_prefix(r));
  if (!rep) return false;
  bool ok = false;
  if (rep->type != REDIS_REPLY_STRING) {
    if (!quiet) fail("no catalog in %scatalog: is ac-scheduler running (it publishes the variants)?", ac_rds_prefix(r));
  } else if (ac_catalog_from_json(rep->str, cat) != 0) {
    if (!quiet) fail("%scatalog: %s", ac_rds_prefix(r), ac_errmsg());
  } else {
    ok = true;
  }
  freeReplyObject(rep);
  return ok;
}

static void list_names(char *out, size_t n, const ac_catalog_t *cat) {
  out[0] = 0;
  size_t used = 0;
  for (int j = 0; j < cat->n && used + 1 < n; j++)
    used += (size_t)snprintf(out + used, n - used, "%s%s", j ? ", " : "", cat->v[j].name);
}

static bool set_member(const redisReply *r, const char *name) {
  if (!r || r->type != REDIS_REPLY_ARRAY) return false;
  for (size_t k = 0; k < r->elements; k++)
    if (r->element[k]->str && strcmp(r->element[k]->str, name) == 0) return true;
  return false;
}

// --- status ----------------------------------------------------------------------------------------------

typedef struct {
  char *id;
  ac_env_t *env;  // NULL: its key is gone (dead) or unreadable
} live_worker_t;

// Every registered worker with its heartbeat, sorted by id.
static int read_workers(ac_rds_t *r, live_worker_t **out, int *n_out) {
  *out = NULL;
  *n_out = 0;
  redisReply *m = cmd(r, "SMEMBERS %sworkers", ac_rds_prefix(r));
  if (!m) return 1;
  int n = 0;
  live_worker_t *w = calloc(m->elements + 1, sizeof *w);
  for (size_t k = 0; w && k < m->elements; k++) {
    if (!m->element[k]->str) continue;
    w[n].id = strdup(m->element[k]->str);
    redisReply *g = cmd(r, "GET %sworker:%s", ac_rds_prefix(r), w[n].id);
    if (g && g->type == REDIS_REPLY_STRING) {
      ac_env_t *env = NULL;
      if (ac_msg_unpack(g->str, g->len, AC_MSG_MAX_BYTES, &env) == 0 &&
          env->body_case == AGENTCOMPRESS__ENVELOPE__BODY_WORKER_INFO)
        w[n].env = env;
      else
        ac_msg_free(&env);
    }
    if (g) freeReplyObject(g);
    n++;
  }
  freeReplyObject(m);
  if (!w) return fail("out of memory");
  for (int i = 1; i < n; i++)  // insertion sort: a handful of workers
    for (int k = i; k > 0 && strcmp(w[k - 1].id, w[k].id) > 0; k--) {
      live_worker_t t = w[k];
      w[k] = w[k - 1];
      w[k - 1] = t;
    }
  *out = w;
  *n_out = n;
  return 0;
}

static void free_workers(live_worker_t *w, int n) {
  for (int i = 0; i < n; i++) {
    free(w[i].id);
    ac_msg_free(&w[i].env);
  }
  free(w);
}

static json_t *sched_variant(json_t *sched, const char *name) {
  size_t k;
  json_t *v;
  json_array_foreach(json_object_get(sched, "variants"), k, v) {
    const char *n = json_string_value(json_object_get(v, "name"));
    if (n && strcmp(n, name) == 0) return v;
  }
  return NULL;
}

static json_t *sched_worker(json_t *sched, const char *id) {
  size_t k;
  json_t *v;
  json_array_foreach(json_object_get(sched, "workers"), k, v) {
    const char *n = json_string_value(json_object_get(v, "id"));
    if (n && strcmp(n, id) == 0) return v;
  }
  return NULL;
}

// what: 0 both tables, 1 workers only, 2 variants only.
static int cmd_status(const opts_t *o, ac_rds_t *r, int what) {
  const char *px = ac_rds_prefix(r);
  uint64_t now = ac_unix_ms();
  ac_catalog_t cat;
  bool have_cat = load_catalog(r, &cat, true);
  json_t *sched = NULL;
  redisReply *rep = cmd(r, "GET %ssched", px);
  if (!rep) goto fail_cat;
  if (rep->type == REDIS_REPLY_STRING) sched = json_loads(rep->str, 0, NULL);
  freeReplyObject(rep);
  live_worker_t *w = NULL;
  int nw = 0;
  if (read_workers(r, &w, &nw)) goto fail_sched;
  redisReply *drain = cmd(r, "SMEMBERS %sdrain", px), *pins = cmd(r, "SMEMBERS %spins", px);

  // Demand over the scheduler's window (its settings, else the cluster's config, else default).
  double window_s = json_number_value(json_object_get(json_object_get(sched, "settings"), "sched.window_s"));
  if (!(window_s > 0)) {
    redisReply *c = cmd(r, "HGET %sconfig sched.window_s", px);
    window_s = c && c->type == REDIS_REPLY_STRING ? atof(c->str) : 0;
    if (c) freeReplyObject(c);
    if (!(window_s > 0)) window_s = atof(ac_setting_find("sched.window_s")->def);
  }
  int nv = have_cat ? cat.n : 0;
  uint64_t *demand = calloc((size_t)nv + 1, sizeof *demand);
  long long hi = (long long)(now / 1000) / 10, lo = ((long long)(now / 1000) - (long long)window_s) / 10;
  for (long long t = lo < 0 ? 0 : lo; demand && t <= hi; t++) {
    redisReply *h = cmd(r, "HGETALL %sdemand:%lld", px, t);
    for (size_t k = 0; h && h->type == REDIS_REPLY_ARRAY && k + 1 < h->elements; k += 2) {
      const ac_variant_t *v = h->element[k]->str ? ac_catalog_find(&cat, h->element[k]->str) : NULL;
      if (v && h->element[k + 1]->str) demand[v - cat.v] += strtoull(h->element[k + 1]->str, NULL, 10);
    }
    if (h) freeReplyObject(h);
  }

  json_t *jw = json_array(), *jv = json_array();
  tbl_t tw = {.ncol = 11,
              .head = (const char *const[]){"WORKER", "VARIANT", "STATE", "DEVICE", "SLOTS", "QUEUED", "TOK/S",
                                            "LAST_RELOAD", "HEARTBEAT", "TARGET", "NOTE"},
              .align = "llllrrrrrll"};
  for (int i = 0; i < nw; i++) {
    const Agentcompress__WorkerInfo *wi = w[i].env ? w[i].env->worker_info : NULL;
    bool drained = set_member(drain, w[i].id) || (wi && wi->drain);
    json_t *sw = sched_worker(sched, w[i].id);
    const char *target = json_string_value(json_object_get(sw, "target"));
    bool cooldown = json_is_true(json_object_get(sw, "cooldown"));
    if (!wi) {
      tbl_row(&tw, w[i].id, "-", "gone", "-", "-", "-", "-", "-", "-", "-", "no heartbeat (expired)");
      json_array_append_new(jw, json_pack("{s:s, s:s, s:s, s:b}", "id", w[i].id, "variant", "", "state", "gone", "drained",
                                          drained));
      continue;
    }
    double age_s = wi->updated_at_ms && wi->updated_at_ms <= now ? (double)(now - wi->updated_at_ms) / 1000.0 : 0;
    char slots[32], queued[16], tps[32], rl[32], hb[32], note[64], dev[64];
    // Workers from before the field say nothing: they ran on the CPU, one rank.
    const char *device = wi->device && *wi->device ? wi->device : "cpu";
    unsigned tp = wi->tp ? wi->tp : 1;
    if (tp > 1) snprintf(dev, sizeof dev, "%s tp%u", device, tp);
    else snprintf(dev, sizeof dev, "%s", device);
    snprintf(slots, sizeof slots, "%u/%u", wi->busy, wi->slots);
    snprintf(queued, sizeof queued, "%u", wi->queued);
    snprintf(tps, sizeof tps, "%.1f", wi->tokens_per_s);
    snprintf(rl, sizeof rl, wi->last_reload_ms > 0 ? "%.0f ms" : "-", wi->last_reload_ms);
    snprintf(hb, sizeof hb, "%.1fs ago", age_s);
    snprintf(note, sizeof note, "%s%s%s", drained ? "drained" : "", drained && cooldown ? ", " : "",
             cooldown ? "reload failed (cooldown)" : "");
    bool moving = target && wi->variant && strcmp(target, wi->variant) != 0;
    tbl_row(&tw, w[i].id, *wi->variant ? wi->variant : "(none)", ac_msg_state_name(wi->state), dev, slots, queued, tps,
            rl, hb, moving ? target : "-", note);
    json_t *jo = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:f, s:f, s:I, s:I, s:b, s:I, s:I, s:I, s:s?}", "id",
                          w[i].id, "endpoint", wi->endpoint ? wi->endpoint : "", "variant", wi->variant ? wi->variant : "",
                          "state", ac_msg_state_name(wi->state), "slots", (int)wi->slots, "busy", (int)wi->busy, "queued",
                          (int)wi->queued, "tokens_per_s", wi->tokens_per_s, "last_reload_ms", wi->last_reload_ms,
                          "last_reload_at_ms", (json_int_t)wi->last_reload_at_ms, "heartbeat_age_ms",
                          (json_int_t)(age_s * 1000), "drained", drained, "capacity_bytes",
                          (json_int_t)wi->capacity_bytes, "tasks_done", (json_int_t)wi->tasks_done, "tokens_done",
                          (json_int_t)wi->tokens_done, "target", target);
    if (jo) json_object_set_new(jo, "cooldown", json_boolean(cooldown));
    if (jo) json_object_set_new(jo, "device", json_string(device));
    if (jo) json_object_set_new(jo, "tp", json_integer(tp));
    json_array_append_new(jw, jo);
  }

  tbl_t tv = {.ncol = 9,
              .head = (const char *const[]){"VARIANT", "BYTES", "DEMAND", "FREQ", "RECENCY", "PRIORITY", "HOLDERS",
                                            "PINNED", "NOTE"},
              .align = "lrrrrrlll"};
  for (int j = 0; j < nv; j++) {
    const ac_variant_t *v = &cat.v[j];
    json_t *sv = sched_variant(sched, v->name);
    bool is_ref = strcmp(v->name, cat.reference) == 0, pinned = set_member(pins, v->name);
    char holders[256] = "", bytes[32], dem[32], f[16] = "-", rc[16] = "-", pr[16] = "-";
    int nh = 0;
    size_t used = 0;
    json_t *hl = json_array();
    for (int i = 0; i < nw; i++) {
      const Agentcompress__WorkerInfo *wi = w[i].env ? w[i].env->worker_info : NULL;
      if (!wi || strcmp(wi->variant, v->name) != 0 || set_member(drain, w[i].id) || wi->drain) continue;
      nh++;
      json_array_append_new(hl, json_string(w[i].id));
      if (used + 1 < sizeof holders) used += (size_t)snprintf(holders + used, sizeof holders - used, "%s%s", used ? "," : "", w[i].id);
    }
    char hcol[300];
    snprintf(hcol, sizeof hcol, nh ? "%d (%s)" : "0", nh, holders);
    human_bytes(v->bytes, bytes, sizeof bytes);
    snprintf(dem, sizeof dem, "%llu", (unsigned long long)(demand ? demand[j] : 0));
    if (sv) {
      snprintf(f, sizeof f, "%.3f", json_number_value(json_object_get(sv, "freq")));
      snprintf(rc, sizeof rc, "%.3f", json_number_value(json_object_get(sv, "recency")));
      snprintf(pr, sizeof pr, "%.3f", json_number_value(json_object_get(sv, "priority")));
    }
    bool wanted = json_is_true(json_object_get(sv, "wanted")), starved = json_is_true(json_object_get(sv, "starved"));
    char note[64];
    snprintf(note, sizeof note, "%s%s%s", wanted ? "wanted by a router" : "", wanted && starved ? ", " : "",
             starved ? "no worker can take it now" : "");
    tbl_row(&tv, v->name, bytes, dem, f, rc, pr, hcol, pinned && is_ref ? "yes (ref)" : pinned ? "yes" : is_ref ? "ref" : "-",
            note);
    json_t *jo = json_pack("{s:s, s:I, s:I, s:o, s:b, s:b, s:b, s:b, s:i}", "name", v->name, "bytes", (json_int_t)v->bytes,
                          "demand", (json_int_t)(demand ? demand[j] : 0), "holders", hl, "pinned", pinned || is_ref,
                          "reference", is_ref, "wanted", wanted, "starved", starved, "rank", v->rank);
    if (jo && sv) {
      json_object_set(jo, "freq", json_object_get(sv, "freq"));
      json_object_set(jo, "recency", json_object_get(sv, "recency"));
      json_object_set(jo, "priority", json_object_get(sv, "priority"));
    }
    json_array_append_new(jv, jo);
  }

  double sched_age_s = -1;
  json_t *jt = json_object_get(sched, "time_ms");
  if (json_is_integer(jt)) sched_age_s = ((double)now - (double)json_integer_value(jt)) / 1000.0;
  if (o->json) {
    json_t *root = json_object();
    if (what != 2) json_object_set(root, "workers", jw);
    if (what != 1) json_object_set(root, "variants", jv);
    json_object_set_new(root, "scheduler",
                        sched ? json_pack("{s:f, s:O?, s:O?}", "age_s", sched_age_s, "reloads_issued",
                                          json_object_get(sched, "reloads_issued"), "recent", json_object_get(sched, "recent"))
                              : json_null());
    json_object_set_new(root, "window_s", json_real(window_s));
    print_json(root);
  } else {
    if (what != 2) {
      if (nw) tbl_print(&tw, stdout);
      else printf("no workers registered in %sworkers\n", px);
    }
    if (what == 0) putchar('\n');
    if (what != 1) {
      if (nv) tbl_print(&tv, stdout);
      else printf("no catalog in %scatalog (ac-scheduler publishes it)\n", px);
      printf("(demand: requests in the last %.0f s)\n", window_s);
    }
    if (what == 0) {
      if (sched)
        printf("scheduler: last decision %.1f s ago; reloads issued since it started: %lld\n", sched_age_s,
               (long long)json_integer_value(json_object_get(sched, "reloads_issued")));
      else
        printf("scheduler: nothing in %ssched (is ac-scheduler running?)\n", px);
    }
  }
  tbl_free(&tw);
  tbl_free(&tv);
  json_decref(jw);
  json_decref(jv);
  free(demand);
  if (drain) freeReplyObject(drain);
  if (pins) freeReplyObject(pins);
  free_workers(w, nw);
  json_decref(sched);
  if (have_cat) ac_catalog_free(&cat);
  return 0;
fail_sched:
  json_decref(sched);
fail_cat:
  if (have_cat) ac_catalog_free(&cat);
  return 1;
}

// --- pin, unpin, drain, undrain --------------------------------------------------------------------------

static int say_done(const opts_t *o, const char *what, const char *name, bool changed, const char *human) {
  if (o->json) print_json(json_pack("{s:b, s:s, s:s, s:b}", "ok", 1, "action", what, "name", name, "changed", changed));
  else puts(human);
  return 0;
}

static int cmd_pin(const opts_t *o, ac_rds_t *r, const char *variant, bool pin) {
  const char *px = ac_rds_prefix(r);
  ac_catalog_t cat;
  bool have = load_catalog(r, &cat, false);
  bool known = have && ac_catalog_find(&cat, variant);
  char msg[512];
  if (pin && !known) {
    if (have) {
      char names[400];
      list_names(names, sizeof names, &cat);
      fail("unknown variant '%s'; known: %s", variant, names);
      ac_catalog_free(&cat);
    }
    return 1;
  }
  redisReply *rep = cmd(r, pin ? "SADD %spins %s" : "SREM %spins %s", px, variant);
  if (!rep) {
    if (have) ac_catalog_free(&cat);
    return 1;
  }
  bool changed = rep->integer > 0;
  freeReplyObject(rep);
  if (!pin && !changed && !known) {
    char names[400] = "";
    if (have) list_names(names, sizeof names, &cat);
    if (have) ac_catalog_free(&cat);
    return fail("unknown variant '%s'%s%s", variant, have ? "; known: " : "", names);
  }
  bool is_ref = have && strcmp(cat.reference, variant) == 0;
  if (pin) snprintf(msg, sizeof msg, changed ? "pinned %s" : "%s was already pinned", variant);
  else snprintf(msg, sizeof msg, changed ? "unpinned %s%s" : "%s was not pinned%s", variant,
                is_ref ? " (it is the reference variant: the scheduler keeps it loaded anyway)" : "");
  if (have) ac_catalog_free(&cat);
  return say_done(o, pin ? "pin" : "unpin", variant, changed, msg);
}

static int cmd_drain(const opts_t *o, ac_rds_t *r, const char *worker, bool drain) {
  const char *px = ac_rds_prefix(r);
  redisReply *m = cmd(r, "SMEMBERS %sworkers", px);
  if (!m) return 1;
  bool known = set_member(m, worker);
  if (!known) {
    redisReply *e = cmd(r, "EXISTS %sworker:%s", px, worker);
    known = e && e->integer > 0;
    if (e) freeReplyObject(e);
  }
  char names[512] = "";
  size_t used = 0;
  for (size_t k = 0; k < m->elements && used + 1 < sizeof names; k++)
    if (m->element[k]->str) used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", k ? ", " : "", m->element[k]->str);
  freeReplyObject(m);
  if (drain && !known) return fail("unknown worker '%s'; known: %s", worker, used ? names : "(none registered)");
  redisReply *rep = cmd(r, drain ? "SADD %sdrain %s" : "SREM %sdrain %s", px, worker);
  if (!rep) return 1;
  bool changed = rep->integer > 0;
  freeReplyObject(rep);
  if (!drain && !changed && !known) return fail("unknown worker '%s'; known: %s", worker, used ? names : "(none registered)");
  char msg[512];
  if (drain) snprintf(msg, sizeof msg, changed ? "draining %s: it finishes its tasks and takes no new ones" : "%s was already drained", worker);
  else snprintf(msg, sizeof msg, changed ? "undrained %s" : "%s was not drained", worker);
  return say_done(o, drain ? "drain" : "undrain", worker, changed, msg);
}

// --- reload --------------------------------------------------------------------------------------------

static int cmd_reload(const opts_t *o, ac_rds_t *r, const char *worker, const char *variant) {
  const char *px = ac_rds_prefix(r);
  ac_catalog_t cat;
  if (!load_catalog(r, &cat, false)) return 1;
  bool known = ac_catalog_find(&cat, variant) != NULL;
  char names[400];
  list_names(names, sizeof names, &cat);
  ac_catalog_free(&cat);
  if (!known) return fail("unknown variant '%s'; known: %s", variant, names);
  redisReply *e = cmd(r, "EXISTS %sworker:%s", px, worker);
  if (!e) return 1;
  bool alive = e->integer > 0;
  freeReplyObject(e);
  if (!alive) return fail("unknown worker '%s' (no live %sworker:%s; see 'acctl status')", worker, px, worker);

  uint64_t now = ac_unix_ms();
  char id[96];
  snprintf(id, sizeof id, "acctl-%d-%llu", (int)getpid(), (unsigned long long)now);
  uint8_t *buf = NULL;
  size_t len = 0;
  if (ac_msg_pack_reload(id, worker, variant, "acctl", now, &buf, &len)) return fail("%s", ac_errmsg());
  redisReply *rep = cmd(r, "RPUSH %scmd:%s %b", px, worker, buf, len);
  free(buf);
  if (!rep) return 1;
  freeReplyObject(rep);
  rep = cmd(r, "HINCRBY %sstats reloads 1", px);
  if (rep) freeReplyObject(rep);
  if (!o->wait) {
    if (o->json) print_json(json_pack("{s:b, s:s, s:s, s:s}", "ok", 1, "id", id, "worker", worker, "variant", variant));
    else printf("queued reload %s: %s -> %s\n", id, worker, variant);
    return 0;
  }

  // Wait for the worker's ack in <prefix>acks (newest first).
  long timeout = o->timeout_ms >= 0 ? o->timeout_ms : 120000;
  double t0 = ac_mono_ms();
  for (;;) {
    redisReply *acks = cmd(r, "LRANGE %sacks 0 199", px);
    if (!acks) return 1;
    for (size_t k = 0; acks->type == REDIS_REPLY_ARRAY && k < acks->elements; k++) {
      ac_env_t *a = NULL;
      const redisReply *x = acks->element[k];
      if (x->type != REDIS_REPLY_STRING || ac_msg_unpack(x->str, x->len, AC_MSG_MAX_BYTES, &a) != 0) continue;
      const Agentcompress__ReloadAck *ack = a->body_case == AGENTCOMPRESS__ENVELOPE__BODY_RELOAD_ACK ? a->reload_ack : NULL;
      if (!ack || !ack->id || strcmp(ack->id, id) != 0) {
        ac_msg_free(&a);
        continue;
      }
      double waited = ac_mono_ms() - t0;
      int status = ack->ok ? 0 : 1;
      if (o->json)
        print_json(json_pack("{s:b, s:s, s:s, s:s, s:s, s:f, s:f, s:f}", "ok", ack->ok, "id", id, "worker", worker,
                             "variant", variant, "message", ack->message ? ack->message : "", "reload_ms", ack->reload_ms,
                             "load_ms", ack->load_ms, "waited_ms", waited));
      else if (ack->ok)
        printf("%s now holds %s: reload %.1f ms (load %.1f ms; %.0f ms from command to ack)\n", worker, variant,
               ack->reload_ms, ack->load_ms, waited);
      if (!ack->ok) fail("reload of %s to %s failed: %s", worker, variant, ack->message ? ack->message : "(no message)");
      ac_msg_free(&a);
      freeReplyObject(acks);
      return status;
    }
    freeReplyObject(acks);
    if (ac_mono_ms() - t0 > (double)timeout)
      return fail("no ack from %s within %ld ms (the command %s may still be queued in %scmd:%s)", worker, timeout, id, px,
                  worker);
    if (interrupted) return fail("interrupted (the command %s stays queued in %scmd:%s)", id, px, worker);
    struct timespec ts = {0, 50 * 1000000};
    nanosleep(&ts, NULL);
  }
}

// --- policy ----------------------------------------------------------------------------------------------

static int cmd_policy(const opts_t *o, const char *verb, int argc, char **argv) {
  if (strcmp(verb, "get") == 0) {
    if (argc > 1) return -1;
    const char *key = argc ? argv[0] : NULL;
    if (key && !ac_setting_find(key)) return fail("unknown setting '%s' (see 'acctl policy get')", key);
    // Values in Redis (if reachable): they override the defaults for runtime settings.
    redisReply *cfg = NULL;
    ac_rds_t *r = NULL;
    if (ac_rds_new(o->redis, o->prefix, &r) == 0 && ac_rds_connect(r) == 0) cfg = cmd(r, "HGETALL %sconfig", ac_rds_prefix(r));
    else fprintf(stderr, "acctl: redis %s unreachable: showing the defaults\n", r ? ac_rds_addr(r) : "?");
    size_t n;
    const ac_setting_t *tab = ac_settings(&n);
    json_t *arr = json_array();
    tbl_t t = {.ncol = 6, .head = (const char *const[]){"SETTING", "VALUE", "DEFAULT", "RUNTIME", "SOURCE", "HELP"},
               .align = "llllll"};
    for (size_t i = 0; i < n; i++) {
      const ac_setting_t *s = &tab[i];
      if (key && strcmp(key, s->name) != 0) continue;
      const char *val = s->def, *src = "default";
      for (size_t k = 0; cfg && cfg->type == REDIS_REPLY_ARRAY && k + 1 < cfg->elements; k += 2)
        if (cfg->element[k]->str && strcmp(cfg->element[k]->str, s->name) == 0 && cfg->element[k + 1]->str) {
          if (s->runtime && ac_setting_check(s->name, cfg->element[k + 1]->str) == 0) {
            val = cfg->element[k + 1]->str;
            src = "redis";
          } else {
            src = "default (redis value ignored)";
          }
        }
      tbl_row(&t, s->name, *val ? val : "\"\"", *s->def ? s->def : "\"\"", s->runtime ? "yes" : "no", src, s->help);
      json_t *jv = s->is_string ? json_string(val) : json_real(strtod(val, NULL));
      json_t *jd = s->is_string ? json_string(s->def) : json_real(strtod(s->def, NULL));
      json_t *o1 = json_pack("{s:s, s:o, s:o, s:b, s:s, s:s}", "name", s->name, "value", jv, "default", jd, "runtime",
                             s->runtime, "source", src, "help", s->help);
      if (o1 && !s->is_string) {
        json_object_set_new(o1, "min", json_real(s->min));
        json_object_set_new(o1, "max", json_real(s->max));
      }
      json_array_append_new(arr, o1);
    }
    if (o->json) {
      print_json(arr);
      tbl_free(&t);
    } else {
      tbl_print(&t, stdout);
      json_decref(arr);
      if (!key) printf("(non-runtime settings are read at start: --set NAME=VALUE on the daemon, or AC_NAME in its environment)\n");
    }
    if (cfg) freeReplyObject(cfg);
    ac_rds_destroy(&r);
    return 0;
  }
  if (strcmp(verb, "set") == 0 || strcmp(verb, "reset") == 0) {
    bool set = strcmp(verb, "set") == 0;
    if (argc != (set ? 2 : 1)) return -1;
    const char *key = argv[0], *val = set ? argv[1] : NULL;
    const ac_setting_t *s = ac_setting_find(key);
    if (!s) return fail("unknown setting '%s' (see 'acctl policy get')", key);
    if (!s->runtime)
      return fail("%s cannot change at run time; start the daemons with --set %s=VALUE (or AC_ in their environment)", key, key);
    if (set && ac_setting_check(key, val) != 0) return fail("%s", ac_errmsg());
    ac_rds_t *r = redis_open(o);
    if (!r) return 1;
    const char *px = ac_rds_prefix(r);
    redisReply *old = cmd(r, "HGET %sconfig %s", px, key);
    char was[300];
    snprintf(was, sizeof was, "%s", old && old->type == REDIS_REPLY_STRING ? old->str : s->def);
    if (old) freeReplyObject(old);
    // reset writes the default rather than deleting the entry: daemons apply what they find in
    // <prefix>config and keep their last value for an entry that disappears.
    redisReply *rep = cmd(r, "HSET %sconfig %s %s", px, key, set ? val : s->def);
    ac_rds_destroy(&r);
    if (!rep) return 1;
    freeReplyObject(rep);
    const char *now = set ? val : s->def;
    if (o->json) print_json(json_pack("{s:b, s:s, s:s, s:s}", "ok", 1, "name", key, "value", now, "was", was));
    else printf("%s = %s (was %s)%s\n", key, now, was, set ? "" : ", the default");
    return 0;
  }
  return -1;
}

// --- stats ------------------------------------------------------------------------------------------------

static double hnum(const redisReply *h, const char *field, bool *found) {
  for (size_t k = 0; h && h->type == REDIS_REPLY_ARRAY && k + 1 < h->elements; k += 2)
    if (h->element[k]->str && strcmp(h->element[k]->str, field) == 0 && h->element[k + 1]->str) {
      if (found) *found = true;
      return strtod(h->element[k + 1]->str, NULL);
    }
  if (found) *found = false;
  return 0;
}

static int cmd_stats(const opts_t *o, ac_rds_t *r) {
  const char *px = ac_rds_prefix(r);
  redisReply *st = cmd(r, "HGETALL %sstats", px);
  if (!st) return 1;
  redisReply *sv = cmd(r, "HGETALL %sserved", px);
  if (!sv) {
    freeReplyObject(st);
    return 1;
  }
  static const char *const known[] = {"tasks",  "ok",      "errors",   "retries",          "prompt_tokens", "completion_tokens",
                                      "cost_usd", "exact", "upgraded", "queued_for_reload", "reloads"};
  enum { NK = sizeof known / sizeof *known };
  double exact = hnum(st, "exact", NULL), up = hnum(st, "upgraded", NULL), q = hnum(st, "queued_for_reload", NULL);
  double tasks = hnum(st, "tasks", NULL), ok = hnum(st, "ok", NULL);
  double denom = exact + up + q;
  if (o->json) {
    json_t *js = json_object(), *jserved = json_object();
    for (size_t k = 0; st->type == REDIS_REPLY_ARRAY && k + 1 < st->elements; k += 2)
      if (st->element[k]->str && st->element[k + 1]->str)
        json_object_set_new(js, st->element[k]->str, json_real(strtod(st->element[k + 1]->str, NULL)));
    for (int k = 0; k < NK; k++)
      if (!json_object_get(js, known[k])) json_object_set_new(js, known[k], json_real(0));
    for (size_t k = 0; sv->type == REDIS_REPLY_ARRAY && k + 1 < sv->elements; k += 2)
      if (sv->element[k]->str && sv->element[k + 1]->str)
        json_object_set_new(jserved, sv->element[k]->str, json_integer(strtoll(sv->element[k + 1]->str, NULL, 10)));
    json_t *root = json_object();
    json_object_set_new(root, "stats", js);
    json_object_set_new(root, "served", jserved);
    json_object_set_new(root, "cache_hit_rate", denom > 0 ? json_real(exact / denom) : json_null());
    json_object_set_new(root, "success_rate", tasks > 0 ? json_real(ok / tasks) : json_null());
    print_json(root);
  } else {
    tbl_t t = {.ncol = 2, .head = (const char *const[]){"STAT", "VALUE"}, .align = "lr"};
    char buf[64];
    for (int k = 0; k < NK; k++) {
      double v = hnum(st, known[k], NULL);
      if (strcmp(known[k], "cost_usd") == 0) snprintf(buf, sizeof buf, "%.6f", v);
      else snprintf(buf, sizeof buf, "%.0f", v);
      tbl_row(&t, known[k], buf);
    }
    snprintf(buf, sizeof buf, tasks > 0 ? "%.1f%%" : "-", 100.0 * ok / (tasks > 0 ? tasks : 1));
    tbl_row(&t, "success rate (ok/tasks)", buf);
    snprintf(buf, sizeof buf, denom > 0 ? "%.1f%%" : "-", 100.0 * exact / (denom > 0 ? denom : 1));
    tbl_row(&t, "cache hit rate", buf);
    // Anything else the routers count.
    for (size_t k = 0; st->type == REDIS_REPLY_ARRAY && k + 1 < st->elements; k += 2) {
      const char *f = st->element[k]->str;
      bool listed = false;
      for (int i = 0; f && i < NK; i++) listed |= strcmp(f, known[i]) == 0;
      if (f && !listed && st->element[k + 1]->str) tbl_row(&t, f, st->element[k + 1]->str);
    }
    tbl_print(&t, stdout);
    printf("(cache hit rate = exact / (exact + upgraded + queued_for_reload))\n");
    if (sv->type == REDIS_REPLY_ARRAY && sv->elements) {
      putchar('\n');
      tbl_t s2 = {.ncol = 2, .head = (const char *const[]){"SERVED BY", "TASKS"}, .align = "lr"};
      for (size_t k = 0; k + 1 < sv->elements; k += 2) tbl_row(&s2, sv->element[k]->str, sv->element[k + 1]->str);
      tbl_print(&s2, stdout);
    }
  }
  freeReplyObject(st);
  freeReplyObject(sv);
  return 0;
}

// --- router: submit, ping -----------------------------------------------------------------------------------

static void *router_socket(void *zctx, const opts_t *o) {
  void *s = zmq_socket(zctx, ZMQ_DEALER);
  if (!s) {
    fail("zmq_socket: %s", zmq_strerror(errno));
    return NULL;
  }
  int linger = 0;
  int64_t maxmsg = 64 << 20;
  zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
  zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
  if (zmq_connect(s, o->router) != 0) {
    fail("cannot connect to router '%s': %s (--router tcp://HOST:PORT or AC_ROUTER)", o->router, zmq_strerror(errno));
    zmq_close(s);
    return NULL;
  }
  return s;
}

// Waits up to `ms` for one message; its Envelope in *env. 0 ok, 1 timeout, -1 error/interrupt.
static int router_recv(void *s, double ms, ac_env_t **env) {
  int rc = ac_msg_recv_env(s, ms, &interrupted, env);
  if (rc == 1 && interrupted) return -1;
  if (rc < 0) {
    fail("%s", ac_errmsg());
    return -1;
  }
  return rc;
}

static int send_env(void *s, ac_env_t *env) {
  int rc = ac_msg_send(s, 0, NULL, NULL, env);
  if (rc) {
    // ac_msg_send is non-blocking; before the connection is up, a DEALER queues the message, so
    // a failure here means the socket cannot take it at all.
    return fail("cannot send to the router: %s", ac_errmsg());
  }
  return 0;
}

static const char *finish_name(Agentcompress__FinishReason f) {
  switch (f) {
    case AGENTCOMPRESS__FINISH_REASON__FINISH_STOP: return "stop";
    case AGENTCOMPRESS__FINISH_REASON__FINISH_LENGTH: return "length";
    case AGENTCOMPRESS__FINISH_REASON__FINISH_CONTEXT: return "context";
    default: return "unspecified";
  }
}

static char *read_text_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *b = malloc(cap);
  size_t got;
  while (b && (got = fread(b + n, 1, cap - n - 1, f)) > 0) {
    n += got;
    if (cap - n - 1 == 0) {
      char *nb = realloc(b, cap * 2);
      if (!nb) {
        free(b);
        b = NULL;
        break;
      }
      b = nb;
      cap *= 2;
    }
  }
  fclose(f);
  if (b) b[n] = 0;
  return b;
}

static int cmd_submit(const opts_t *o) {
  char *file_text = NULL;
  const char *prompt = o->prompt;
  if (o->prompt_file) {
    if (!(file_text = read_text_file(o->prompt_file))) return fail("cannot read %s: %s", o->prompt_file, strerror(errno));
    prompt = file_text;
  }
  char id[64];
  snprintf(id, sizeof id, "acctl-%d-%llu", (int)getpid(), (unsigned long long)ac_unix_ms());

  Agentcompress__Sampling sp = AGENTCOMPRESS__SAMPLING__INIT;
  sp.temperature = (float)o->temp;
  sp.top_k = (int32_t)o->top_k;
  sp.top_p = (float)o->top_p;
  sp.min_p = (float)o->min_p;
  sp.seed = o->seed;
  Agentcompress__ChatMessage sys = AGENTCOMPRESS__CHAT_MESSAGE__INIT, user = AGENTCOMPRESS__CHAT_MESSAGE__INIT;
  Agentcompress__ChatMessage *msgs[2];
  Agentcompress__Task task = AGENTCOMPRESS__TASK__INIT;
  task.id = id;
  task.session_id = (char *)(o->session ? o->session : "");
  if (o->chat) {
    size_t nm = 0;
    if (o->system) {
      sys.role = "system";
      sys.content = (char *)o->system;
      msgs[nm++] = &sys;
    }
    user.role = "user";
    user.content = (char *)prompt;
    msgs[nm++] = &user;
    task.n_messages = nm;
    task.messages = msgs;
  } else {
    task.prompt = (char *)prompt;
  }
  task.max_tokens = (uint32_t)o->n;
  task.sampling = &sp;
  task.n_stop = (size_t)o->n_stops;
  task.stop = (char **)o->stops;
  task.priority = (int32_t)o->priority;
  task.deadline_ms = (uint32_t)o->deadline_ms;
  task.variant = (char *)(o->variant ? o->variant : "");
  task.stream = true;
  task.ignore_eos = o->ignore_eos;
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_TASK;
  env.task = &task;

  int status = 1;
  void *zctx = zmq_ctx_new(), *s = NULL;
  if (!zctx || !(s = router_socket(zctx, o))) goto done;
  double t0 = ac_mono_ms(), first = -1;
  if (send_env(s, &env)) goto done;

  // Stream the text as it comes; keep what was printed to compare with the Result.
  char *shown = NULL;
  size_t n_shown = 0;
  long idle_ms = o->timeout_ms >= 0 ? o->timeout_ms : 120000;
  for (;;) {
    ac_env_t *in = NULL;
    int rc = router_recv(s, (double)idle_ms, &in);
    if (rc != 0) {
      // Tell the router to stop working for nobody.
      Agentcompress__Cancel c = AGENTCOMPRESS__CANCEL__INIT;
      c.task_id = id;
      ac_env_t ce = AGENTCOMPRESS__ENVELOPE__INIT;
      ce.body_case = AGENTCOMPRESS__ENVELOPE__BODY_CANCEL;
      ce.cancel = &c;
      ac_msg_send(s, 0, NULL, NULL, &ce);
      if (n_shown && !o->json) fflush(stdout);
      if (rc == 1)
        fail("submit: no word from the router at %s for %ld ms; gave up (--timeout-ms)", o->router, idle_ms);
      else if (interrupted)
        fail("submit: interrupted; task %s cancelled", id);
      status = interrupted ? 130 : 1;
      break;
    }
    switch (in->body_case) {
      case AGENTCOMPRESS__ENVELOPE__BODY_CHUNK: {
        const Agentcompress__TokenChunk *ch = in->chunk;
        if (!ch->task_id || strcmp(ch->task_id, id) != 0) break;
        if (first < 0) first = ac_mono_ms() - t0;
        size_t l = ch->text ? strlen(ch->text) : 0;
        if (!l) break;
        char *ns = realloc(shown, n_shown + l + 1);
        if (ns) {
          shown = ns;
          memcpy(shown + n_shown, ch->text, l);
          n_shown += l;
          shown[n_shown] = 0;
        }
        if (!o->json) {
          fwrite(ch->text, 1, l, stdout);
          fflush(stdout);
        }
        break;
      }
      case AGENTCOMPRESS__ENVELOPE__BODY_RESULT: {
        const Agentcompress__Result *res = in->result;
        if (!res->task_id || strcmp(res->task_id, id) != 0) break;
        double wall = ac_mono_ms() - t0;
        const char *text = res->text ? res->text : "";
        size_t tl = strlen(text);
        if (o->json) {
          json_t *j = json_pack(
              "{s:s, s:s, s:i, s:i, s:s, s:s, s:s, s:f, s:f, s:s, s:f, s:f, s:f, s:s, s:f, s:i, s:f, s:f}", "task_id",
              res->task_id, "text", text, "prompt_tokens", (int)res->prompt_tokens, "completion_tokens",
              (int)res->completion_tokens, "finish", finish_name(res->finish), "variant", res->variant ? res->variant : "",
              "requested_variant", res->requested_variant ? res->requested_variant : "", "complexity",
              (double)res->complexity, "confidence", (double)res->confidence, "policy", res->policy ? res->policy : "",
              "queue_ms", res->queue_ms, "prefill_ms", res->prefill_ms, "decode_ms", res->decode_ms, "worker",
              res->worker ? res->worker : "", "cost", res->cost, "attempts", (int)res->attempts, "wall_ms", wall,
              "first_chunk_ms", first);
          print_json(j);
        } else {
          // The Result's text is the whole answer: print what the chunks did not.
          if (n_shown <= tl && memcmp(text, shown ? shown : "", n_shown) == 0) fwrite(text + n_shown, 1, tl - n_shown, stdout);
          else fprintf(stderr, "acctl: warning: the streamed text differs from the final answer\n");
          // Like `acq run`: a newline only for a person at a terminal.
          if (isatty(STDOUT_FILENO)) putchar('\n');
          fflush(stdout);
        }
        fprintf(stderr,
                "acctl: %s (requested %s, policy %s) on %s: prompt %u tokens, completion %u tokens (%s); queue %.1f ms, "
                "prefill %.1f ms, decode %.1f ms, total %.1f ms; attempts %u\n",
                res->variant ? res->variant : "?", res->requested_variant && *res->requested_variant ? res->requested_variant : "-",
                res->policy && *res->policy ? res->policy : "-", res->worker && *res->worker ? res->worker : "?",
                res->prompt_tokens, res->completion_tokens, finish_name(res->finish), res->queue_ms, res->prefill_ms,
                res->decode_ms, wall, res->attempts);
        status = 0;
        ac_msg_free(&in);
        goto out;
      }
      case AGENTCOMPRESS__ENVELOPE__BODY_ERROR: {
        const Agentcompress__Error *e = in->error;
        if (e->task_id && *e->task_id && strcmp(e->task_id, id) != 0) break;
        bool retry = e->retriable || ac_msg_retriable(e->code);
        if (n_shown && !o->json && isatty(STDOUT_FILENO)) putchar('\n');
        fflush(stdout);
        if (o->json)
          print_json(json_pack("{s:{s:s, s:s, s:s, s:b}}", "error", "task_id", id, "code", ac_msg_code_name(e->code),
                               "message", e->message ? e->message : "", "retriable", retry));
        fail("submit: %s: %s%s", ac_msg_code_name(e->code), e->message ? e->message : "", retry ? " (retriable)" : "");
        status = retry ? 3 : 1;
        ac_msg_free(&in);
        goto out;
      }
      default: break;  // nothing else is meant for a client
    }
    ac_msg_free(&in);
  }
out:
  free(shown);
done:
  if (s) zmq_close(s);
  if (zctx) zmq_ctx_term(zctx);
  free(file_text);
  return status;
}

static int cmd_ping(const opts_t *o) {
  int status = 1;
  void *zctx = zmq_ctx_new(), *s = NULL;
  if (!zctx || !(s = router_socket(zctx, o))) goto done;
  Agentcompress__AdminRequest req = AGENTCOMPRESS__ADMIN_REQUEST__INIT;
  req.command = "ping";
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_ADMIN_REQUEST;
  env.admin_request = &req;
  double t0 = ac_mono_ms();
  if (send_env(s, &env)) goto done;
  long timeout = o->timeout_ms >= 0 ? o->timeout_ms : 3000;
  for (;;) {
    ac_env_t *in = NULL;
    int rc = router_recv(s, (double)timeout - (ac_mono_ms() - t0), &in);
    if (rc == 1) {
      fail("no answer from the router at %s within %ld ms", o->router, timeout);
      break;
    }
    if (rc < 0) break;
    if (in->body_case == AGENTCOMPRESS__ENVELOPE__BODY_ADMIN_REPLY) {
      const char *js = in->admin_reply->json ? in->admin_reply->json : "";
      double ms = ac_mono_ms() - t0;
      if (o->json) printf("%s\n", *js ? js : "{}");
      else printf("router %s answered in %.2f ms: %s\n", o->router, ms, js);
      status = in->admin_reply->ok ? 0 : 1;
      ac_msg_free(&in);
      break;
    }
    if (in->body_case == AGENTCOMPRESS__ENVELOPE__BODY_ERROR) {
      fail("router: %s: %s", ac_msg_code_name(in->error->code), in->error->message ? in->error->message : "");
      ac_msg_free(&in);
      break;
    }
    ac_msg_free(&in);
  }
done:
  if (s) zmq_close(s);
  if (zctx) zmq_ctx_term(zctx);
  return status;
}

// --- main -------------------------------------------------------------------------------------------------

static int usage(FILE *f, int status) {
  fprintf(f,
          "usage: acctl [global options] COMMAND [ARGS]\n"
          "\n"
          "commands:\n"
          "  status                       workers and variants (priorities from the scheduler's last decision)\n"
          "  workers | variants           one of the two tables\n"
          "  pin VARIANT | unpin VARIANT  keep a variant loaded on at least one worker (or stop)\n"
          "  drain WORKER | undrain WORKER  a worker finishes its tasks and takes no new ones (or resumes)\n"
          "  reload WORKER VARIANT [--wait]  tell a worker to load a variant; --wait prints the measured time\n"
          "  policy get [KEY]             settings: value, default, runtime flag, help\n"
          "  policy set KEY VALUE         change a runtime setting for the whole cluster\n"
          "  policy reset KEY             back to the default (written to Redis, so daemons apply it)\n"
          "  stats                        tasks, errors, tokens, cost, cache hit rate, reloads\n"
          "  submit -p PROMPT [options]   send a task to the router; the answer streams to stdout\n"
          "  ping                         ask the router for a sign of life\n"
          "\n"
          "global options:\n"
          "  --redis HOST:PORT     (env AC_REDIS, default 127.0.0.1:6379)\n"
          "  --router tcp://H:P    (env AC_ROUTER, default tcp://127.0.0.1:5555)\n"
          "  --prefix P            Redis key prefix (env AC_PREFIX, default \"ac:\")\n"
          "  --json                machine-readable output\n"
          "  --timeout-ms MS       reload --wait: total wait (120000); submit: longest silence from the router\n"
          "                        (120000); ping: 3000\n"
          "\n"
          "submit options:\n"
          "  -p, --prompt TEXT     the prompt (or -f FILE)      --chat        use the model's chat template\n"
          "  --system TEXT         system message with --chat   -n N          max tokens (0: the router's default)\n"
          "  --temp T  --top-k K  --top-p P  --min-p P  --seed S              sampling (default greedy)\n"
          "  --variant V           force a variant              --stop TEXT   stop string (repeatable)\n"
          "  --deadline-ms MS      --priority N  --session ID   --ignore-eos\n"
          "Only the answer goes to stdout (as `acq run` prints it); a summary goes to stderr. With --json the\n"
          "Result goes to stdout as JSON instead. Exit: 0 ok, 1 error, 2 usage, 3 retriable error.\n");
  return status;
}

static bool parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static bool parse_double(const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !isfinite(v)) return false;
  *out = v;
  return true;
}

int main(int argc, char **argv) {
  enum {
    O_REDIS = 256, O_ROUTER, O_PREFIX, O_JSON, O_TIMEOUT, O_WAIT, O_CHAT, O_SYSTEM, O_TEMP, O_TOPK, O_TOPP, O_MINP,
    O_SEED, O_VARIANT, O_STOP, O_DEADLINE, O_PRIORITY, O_SESSION, O_IGNORE_EOS,
  };
  static const struct option opts[] = {
      {"redis", required_argument, 0, O_REDIS},       {"router", required_argument, 0, O_ROUTER},
      {"prefix", required_argument, 0, O_PREFIX},     {"json", no_argument, 0, O_JSON},
      {"timeout-ms", required_argument, 0, O_TIMEOUT}, {"wait", no_argument, 0, O_WAIT},
      {"prompt", required_argument, 0, 'p'},          {"file", required_argument, 0, 'f'},
      {"chat", no_argument, 0, O_CHAT},               {"system", required_argument, 0, O_SYSTEM},
      {"temp", required_argument, 0, O_TEMP},         {"top-k", required_argument, 0, O_TOPK},
      {"top-p", required_argument, 0, O_TOPP},        {"min-p", required_argument, 0, O_MINP},
      {"seed", required_argument, 0, O_SEED},         {"variant", required_argument, 0, O_VARIANT},
      {"stop", required_argument, 0, O_STOP},         {"deadline-ms", required_argument, 0, O_DEADLINE},
      {"priority", required_argument, 0, O_PRIORITY}, {"session", required_argument, 0, O_SESSION},
      {"ignore-eos", no_argument, 0, O_IGNORE_EOS},   {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  opts_t o = {.redis = getenv("AC_REDIS"), .router = getenv("AC_ROUTER"), .prefix = getenv("AC_PREFIX"),
              .timeout_ms = -1, .top_p = 1.0};
  if (!o.router || !*o.router) o.router = "tcp://127.0.0.1:5555";
  if (o.prefix && !*o.prefix) o.prefix = NULL;
  const char *lvl = getenv("AC_LOG");
  ac_log_set_level(lvl && ac_log_parse_level(lvl) >= 0 ? (ac_log_level_t)ac_log_parse_level(lvl) : AC_LOG_ERROR);
  int c;
  long l;
  int li = -1;
  while ((c = getopt_long(argc, argv, "p:f:n:h", opts, &li)) != -1) {
    bool bad = false;
    switch (c) {
      case O_REDIS: o.redis = optarg; break;
      case O_ROUTER: o.router = optarg; break;
      case O_PREFIX: o.prefix = optarg; break;
      case O_JSON: o.json = true; break;
      case O_TIMEOUT: bad = !parse_long(optarg, 0, 86400000L, &o.timeout_ms); break;
      case O_WAIT: o.wait = true; break;
      case 'p': o.prompt = optarg; o.submit_opts = true; break;
      case 'f': o.prompt_file = optarg; o.submit_opts = true; break;
      case 'n': bad = !parse_long(optarg, 0, 1000000, &o.n); o.submit_opts = true; break;
      case O_CHAT: o.chat = true; o.submit_opts = true; break;
      case O_SYSTEM: o.system = optarg; o.submit_opts = true; break;
      case O_TEMP: bad = !parse_double(optarg, &o.temp) || o.temp < 0; o.submit_opts = true; break;
      case O_TOPK: bad = !parse_long(optarg, 0, 1 << 30, &o.top_k); o.submit_opts = true; break;
      case O_TOPP: bad = !parse_double(optarg, &o.top_p) || o.top_p < 0 || o.top_p > 1; o.submit_opts = true; break;
      case O_MINP: bad = !parse_double(optarg, &o.min_p) || o.min_p < 0 || o.min_p >= 1; o.submit_opts = true; break;
      case O_SEED: {
        char *end;
        errno = 0;
        o.seed = strtoull(optarg, &end, 10);
        bad = end == optarg || *end || errno || optarg[0] == '-';
        o.submit_opts = true;
        break;
      }
      case O_VARIANT: o.variant = optarg; o.submit_opts = true; break;
      case O_STOP:
        bad = o.n_stops == MAX_STOPS;
        if (!bad) o.stops[o.n_stops++] = optarg;
        o.submit_opts = true;
        break;
      case O_DEADLINE: bad = !parse_long(optarg, 0, 0x7fffffffL, &o.deadline_ms); o.submit_opts = true; break;
      case O_PRIORITY: bad = !parse_long(optarg, -1000000, 1000000, &l); o.priority = l; o.submit_opts = true; break;
      case O_SESSION: o.session = optarg; o.submit_opts = true; break;
      case O_IGNORE_EOS: o.ignore_eos = true; o.submit_opts = true; break;
      case 'h': return usage(stdout, 0);
      default: return usage(stderr, 2);
    }
    if (bad) {
      if (li >= 0) fprintf(stderr, "acctl: bad value '%s' for --%s\n", optarg, opts[li].name);
      else fprintf(stderr, "acctl: bad value '%s' for -%c\n", optarg, c);
      return 2;
    }
    li = -1;
  }
  if (optind >= argc) {
    fprintf(stderr, "acctl: a command is needed (see 'acctl --help')\n");
    return 2;
  }
  const char *command = argv[optind];
  char **args = argv + optind + 1;
  int nargs = argc - optind - 1;
  if (strcmp(command, "help") == 0) return usage(stdout, 0);
  if (o.submit_opts && strcmp(command, "submit") != 0) {
    fprintf(stderr, "acctl: submit options given to '%s'\n", command);
    return 2;
  }
  if (o.wait && strcmp(command, "reload") != 0) {
    fprintf(stderr, "acctl: --wait is for 'reload'\n");
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  // Commands without Redis.
  if (strcmp(command, "submit") == 0) {
    if (nargs || (!o.prompt && !o.prompt_file) || (o.prompt && o.prompt_file)) {
      fprintf(stderr, "acctl: submit wants -p PROMPT or -f FILE (and no other arguments)\n");
      return 2;
    }
    if (o.system && !o.chat) {
      fprintf(stderr, "acctl: --system goes with --chat\n");
      return 2;
    }
    return cmd_submit(&o);
  }
  if (strcmp(command, "ping") == 0) {
    if (nargs) return usage(stderr, 2);
    return cmd_ping(&o);
  }
  if (strcmp(command, "policy") == 0) {
    int rc = nargs < 1 ? -1 : cmd_policy(&o, args[0], nargs - 1, args + 1);
    if (rc < 0) {
      fprintf(stderr, "acctl: usage: policy get [KEY] | policy set KEY VALUE | policy reset KEY\n");
      return 2;
    }
    return rc;
  }

  // Commands on Redis.
  int want = -1;
  static const struct {
    const char *name;
    int nargs;
  } table[] = {{"status", 0}, {"workers", 0}, {"variants", 0}, {"pin", 1},    {"unpin", 1},
               {"drain", 1},  {"undrain", 1}, {"reload", 2},   {"stats", 0}};
  for (size_t k = 0; k < sizeof table / sizeof *table; k++)
    if (strcmp(command, table[k].name) == 0) want = table[k].nargs;
  if (want < 0) {
    fprintf(stderr, "acctl: unknown command '%s' (see 'acctl --help')\n", command);
    return 2;
  }
  if (nargs != want) {
    fprintf(stderr, "acctl: %s takes %d argument%s\n", command, want, want == 1 ? "" : "s");
    return 2;
  }
  ac_rds_t *r = redis_open(&o);
  if (!r) return 1;
  int rc;
  if (strcmp(command, "status") == 0) rc = cmd_status(&o, r, 0);
  else if (strcmp(command, "workers") == 0) rc = cmd_status(&o, r, 1);
  else if (strcmp(command, "variants") == 0) rc = cmd_status(&o, r, 2);
  else if (strcmp(command, "pin") == 0 || strcmp(command, "unpin") == 0) rc = cmd_pin(&o, r, args[0], command[0] == 'p');
  else if (strcmp(command, "drain") == 0 || strcmp(command, "undrain") == 0) rc = cmd_drain(&o, r, args[0], command[0] == 'd');
  else if (strcmp(command, "reload") == 0) rc = cmd_reload(&o, r, args[0], args[1]);
  else rc = cmd_stats(&o, r);
  ac_rds_destroy(&r);
  return rc;
}
