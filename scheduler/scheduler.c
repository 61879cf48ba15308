// scheduler.c - ac-scheduler: decides which worker holds which variant.
//
// Every sched.interval_ms it reads the cluster's state from Redis (workers, demand, pins,
// drains, acks; the README lists the keys), runs the pure placement decision
// (lib/placement.h), pushes a ReloadCommand for each reload it decides, and writes what it saw
// and decided to <prefix>sched for acctl. It also publishes the catalog (<prefix>catalog) every
// tick, so a Redis that restarted empty has it again within one interval.
//
// A reload stays "pending" (its worker is left alone and counts as holding the new variant)
// until the worker acks it in <prefix>acks, its heartbeat shows the new variant ready, the worker
// disappears, or 120 s pass. A failed reload puts the worker in a 60 s cooldown, so a variant
// that cannot load is not retried on the same worker every tick.
//
// Redis down: the tick is skipped (logged once), lib/rds retries with backoff, and work resumes
// when it answers again. SIGTERM and SIGINT end the process with status 0.
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "clock.h"
#include "error.h"
#include "log.h"
#include "msg.h"
#include "placement.h"
#include "rds.h"
#include "settings.h"

#define PENDING_TIMEOUT_MS 120000.0  // a reload not acked by then is forgotten
#define COOLDOWN_MS 60000.0          // a worker whose reload failed is left alone this long
#define WANTED_S 5.0                 // a router's "wanted" mark counts this long
#define ACKS_SCANNED 200             // newest acks read each tick
#define RECENT_MAX 20                // reloads remembered for <prefix>sched

// --- state kept between ticks ---------------------------------------------------------------------

typedef struct {
  char id[96];        // the command's id, echoed in the ack
  char worker[256];
  char variant[64];
  char from[64];
  uint64_t issued_ms; // unix
  double issued_mono;
  uint8_t *cmd;       // the serialized envelope as pushed (to LREM it when it goes stale)
  size_t cmd_len;
} pending_t;

typedef struct {
  char worker[256];
  double until_mono;
} cooldown_t;

// When the scheduler first saw a worker holding its current variant: the residency clock for a
// worker that reports no load time.
typedef struct {
  char worker[256];
  char variant[64];
  uint64_t since_ms;
  bool seen;  // in the current tick
} seen_t;

typedef struct {
  uint64_t at_ms;
  char id[96], worker[256], from[64], to[64], why[16], reason[256];
  char outcome[160];  // "pending", "ok 812 ms", "failed: ...", "timed out", "worker gone"
} recent_t;

typedef struct {
  ac_rds_t *rds;
  ac_config_t *cfg;
  ac_catalog_t cat;
  char *catalog_json;
  bool dry_run;
  bool redis_down;  // the last tick could not reach Redis (logged once per outage)
  pending_t *pend;
  int n_pend;
  cooldown_t *cool;
  int n_cool;
  seen_t *seen;
  int n_seen;
  recent_t recent[RECENT_MAX];
  int n_recent;       // ring: recent[(n_recent - 1) % RECENT_MAX] is the newest
  uint64_t seq;       // command ids
  uint64_t issued;    // reloads issued since start
} sched_t;

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) {
  (void)sig;
  stop_flag = 1;
}

// --- small helpers ------------------------------------------------------------------------------------

static bool reply_ok(const redisReply *r) { return r && r->type != REDIS_REPLY_ERROR; }

static void recent_outcome(sched_t *s, const char *id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void recent_outcome(sched_t *s, const char *id, const char *fmt, ...) {
  int n = s->n_recent < RECENT_MAX ? s->n_recent : RECENT_MAX;
  for (int k = 0; k < n; k++) {
    recent_t *r = &s->recent[k];
    if (strcmp(r->id, id) != 0) continue;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->outcome, sizeof r->outcome, fmt, ap);
    va_end(ap);
  }
}

static void drop_pending(sched_t *s, int k) {
  free(s->pend[k].cmd);
  s->pend[k] = s->pend[--s->n_pend];
}

static void add_cooldown(sched_t *s, const char *worker) {
  for (int k = 0; k < s->n_cool; k++)
    if (strcmp(s->cool[k].worker, worker) == 0) {
      s->cool[k].until_mono = ac_mono_ms() + COOLDOWN_MS;
      return;
    }
  cooldown_t *c = realloc(s->cool, (size_t)(s->n_cool + 1) * sizeof *c);
  if (!c) return;  // no cooldown then: the next decision may retry sooner, nothing worse
  s->cool = c;
  snprintf(c[s->n_cool].worker, sizeof c[0].worker, "%s", worker);
  c[s->n_cool++].until_mono = ac_mono_ms() + COOLDOWN_MS;
}

static double cooldown_left_ms(sched_t *s, const char *worker) {
  double now = ac_mono_ms();
  for (int k = 0; k < s->n_cool; k++) {
    if (s->cool[k].until_mono <= now) {
      s->cool[k] = s->cool[--s->n_cool];
      k--;
      continue;
    }
    if (strcmp(s->cool[k].worker, worker) == 0) return s->cool[k].until_mono - now;
  }
  return 0;
}

// Residency start for a worker that does not report when it loaded: when we first saw it hold
// this variant.
static uint64_t seen_since(sched_t *s, const char *worker, const char *variant, uint64_t now_ms) {
  for (int k = 0; k < s->n_seen; k++) {
    seen_t *e = &s->seen[k];
    if (strcmp(e->worker, worker) != 0) continue;
    if (strcmp(e->variant, variant) != 0) {
      snprintf(e->variant, sizeof e->variant, "%s", variant);
      e->since_ms = now_ms;
    }
    e->seen = true;
    return e->since_ms;
  }
  seen_t *n = realloc(s->seen, (size_t)(s->n_seen + 1) * sizeof *n);
  if (!n) return now_ms;
  s->seen = n;
  seen_t *e = &n[s->n_seen++];
  memset(e, 0, sizeof *e);
  snprintf(e->worker, sizeof e->worker, "%s", worker);
  snprintf(e->variant, sizeof e->variant, "%s", variant);
  e->since_ms = now_ms;
  e->seen = true;
  return now_ms;
}

// --- one tick ------------------------------------------------------------------------------------------

typedef struct {
  char *id;
  ac_env_t *env;                        // NULL: gone or unreadable
  const Agentcompress__WorkerInfo *wi;  // env->worker_info
  bool gone;                            // its heartbeat key expired
  char queued[64];                      // variant of the last reload still queued for it ("" none)
  bool drained;
} wrow_t;

typedef struct {
  wrow_t *w;
  int nw;
  uint64_t *count;      // (cat.n) requests in the window
  uint64_t *last_use;   // (cat.n)
  uint64_t *wanted;     // (cat.n)
  bool *pinned;         // (cat.n)
  redisReply *acks;     // LRANGE acks
  long long lo, hi;     // demand buckets read
} view_t;

static void view_free(view_t *v) {
  for (int i = 0; i < v->nw; i++) {
    free(v->w[i].id);
    ac_msg_free(&v->w[i].env);
  }
  free(v->w);
  free(v->count);
  free(v->last_use);
  free(v->wanted);
  free(v->pinned);
  if (v->acks) freeReplyObject(v->acks);
  memset(v, 0, sizeof *v);
}

static int variant_index(const ac_catalog_t *cat, const char *name) {
  const ac_variant_t *v = name && *name ? ac_catalog_find(cat, name) : NULL;
  return v ? (int)(v - cat->v) : -1;
}

// Fills `values` (indexed by variant) from a HGETALL reply of variant -> integer; adds when
// `add`, else keeps the maximum.
static void hash_into(const ac_catalog_t *cat, const redisReply *r, uint64_t *values, bool add) {
  if (!r || r->type != REDIS_REPLY_ARRAY) return;
  for (size_t k = 0; k + 1 < r->elements; k += 2) {
    const redisReply *f = r->element[k], *val = r->element[k + 1];
    if (!f->str || !val->str) continue;
    int j = variant_index(cat, f->str);
    if (j < 0) continue;
    char *end;
    double x = strtod(val->str, &end);
    if (end == val->str || !(x >= 0)) continue;
    uint64_t u = (uint64_t)x;
    if (add) values[j] += u;
    else if (u > values[j]) values[j] = u;
  }
}

static bool set_has(const redisReply *r, const char *name) {
  if (!r || r->type != REDIS_REPLY_ARRAY) return false;
  for (size_t k = 0; k < r->elements; k++)
    if (r->element[k]->str && strcmp(r->element[k]->str, name) == 0) return true;
  return false;
}

// Reads everything the decision needs. Returns false when Redis could not be read.
static bool read_view(sched_t *s, uint64_t now_ms, view_t *v) {
  ac_rds_t *r = s->rds;
  const char *px = ac_rds_prefix(r);
  const ac_catalog_t *cat = &s->cat;
  memset(v, 0, sizeof *v);
  int nv = cat->n;
  v->count = calloc((size_t)nv, sizeof *v->count);
  v->last_use = calloc((size_t)nv, sizeof *v->last_use);
  v->wanted = calloc((size_t)nv, sizeof *v->wanted);
  v->pinned = calloc((size_t)nv, sizeof *v->pinned);
  if (!v->count || !v->last_use || !v->wanted || !v->pinned) return false;

  redisReply *members = ac_rds_cmd(r, "SMEMBERS %sworkers", px);
  if (!reply_ok(members) || members->type != REDIS_REPLY_ARRAY) {
    if (members) {
      AC_WARN("SMEMBERS %sworkers: %s", px, members->str ? members->str : "unexpected reply");
      freeReplyObject(members);
    }
    return false;
  }
  v->w = calloc(members->elements + 1, sizeof *v->w);
  if (!v->w) {
    freeReplyObject(members);
    return false;
  }
  for (size_t k = 0; k < members->elements; k++)
    if (members->element[k]->str && (v->w[v->nw].id = strdup(members->element[k]->str))) v->nw++;
  freeReplyObject(members);

  double window_s = ac_config_num(s->cfg, "sched.window_s");
  long long now_s = (long long)(now_ms / 1000);
  v->hi = now_s / 10;
  v->lo = (now_s - (long long)window_s) / 10;
  if (v->lo < 0) v->lo = 0;

  // One pipeline: each worker, each demand bucket, then lastuse, wanted, pins, drain, acks.
  int n_cmds = 0;
  bool ok = ac_rds_begin(r);
  for (int i = 0; ok && i < v->nw; i++, n_cmds++) ok = ac_rds_append(r, "GET %sworker:%s", px, v->w[i].id);
  // The last command still queued for each worker: a reload someone else asked for (acctl, or this
  // scheduler before a restart) that the worker has not taken yet.
  for (int i = 0; ok && i < v->nw; i++, n_cmds++) ok = ac_rds_append(r, "LRANGE %scmd:%s -1 -1", px, v->w[i].id);
  for (long long t = v->lo; ok && t <= v->hi; t++, n_cmds++) ok = ac_rds_append(r, "HGETALL %sdemand:%lld", px, t);
  static const char *const tail[] = {"HGETALL %slastuse", "HGETALL %swanted", "SMEMBERS %spins", "SMEMBERS %sdrain"};
  for (size_t k = 0; ok && k < sizeof tail / sizeof *tail; k++, n_cmds++) ok = ac_rds_append(r, tail[k], px);
  if (ok) ok = ac_rds_append(r, "LRANGE %sacks 0 %d", px, ACKS_SCANNED - 1);
  if (!ok) return false;  // the connection was dropped: nothing is left half-read
  n_cmds++;
  redisReply **rep = calloc((size_t)n_cmds, sizeof *rep);
  for (int k = 0; k < n_cmds; k++) {
    redisReply *x = ac_rds_reply(r);
    if (!x) ok = false;
    if (rep) rep[k] = x;
    else if (x) freeReplyObject(x);  // out of memory: still read every reply, to stay in step
  }
  if (!rep) return false;
  if (ok) {
    int k = 0;
    for (int i = 0; i < v->nw; i++, k++) {
      wrow_t *w = &v->w[i];
      if (rep[k]->type == REDIS_REPLY_NIL) {
        w->gone = true;
        continue;
      }
      // Unreadable (another protocol version, a foreign value): left out of the decision but
      // not removed, since it is alive. Said at most once a minute.
      static double warned_at = -1e9;
      ac_env_t *env = NULL;
      const char *bad = NULL;
      if (rep[k]->type != REDIS_REPLY_STRING) bad = "not a string";
      else if (ac_msg_unpack(rep[k]->str, rep[k]->len, AC_MSG_MAX_BYTES, &env) != 0) bad = ac_errmsg();
      else if (env->body_case != AGENTCOMPRESS__ENVELOPE__BODY_WORKER_INFO || !env->worker_info) bad = "not a WorkerInfo";
      if (bad) {
        if (ac_mono_ms() - warned_at > 60000) {
          AC_WARN("worker %s: unreadable heartbeat in %sworker:%s (%s); leaving it out", w->id, px, w->id, bad);
          warned_at = ac_mono_ms();
        }
        ac_msg_free(&env);
        continue;
      }
      w->env = env;
      w->wi = env->worker_info;
    }
    for (int i = 0; i < v->nw; i++, k++) {
      const redisReply *q = rep[k];
      if (q->type != REDIS_REPLY_ARRAY || q->elements != 1 || q->element[0]->type != REDIS_REPLY_STRING) continue;
      ac_env_t *env = NULL;
      if (ac_msg_unpack(q->element[0]->str, q->element[0]->len, AC_MSG_MAX_BYTES, &env) == 0 &&
          env->body_case == AGENTCOMPRESS__ENVELOPE__BODY_RELOAD && env->reload->variant)
        snprintf(v->w[i].queued, sizeof v->w[i].queued, "%s", env->reload->variant);
      ac_msg_free(&env);
    }
    for (long long t = v->lo; t <= v->hi; t++, k++) hash_into(cat, rep[k], v->count, true);
    hash_into(cat, rep[k++], v->last_use, false);
    hash_into(cat, rep[k++], v->wanted, false);
    const redisReply *pins = rep[k++], *drain = rep[k++];
    for (int j = 0; j < nv; j++) v->pinned[j] = set_has(pins, cat->v[j].name);
    for (int i = 0; i < v->nw; i++)
      v->w[i].drained = set_has(drain, v->w[i].id) ||
                        (v->w[i].wi && (v->w[i].wi->drain || v->w[i].wi->state == AGENTCOMPRESS__WORKER_STATE__WORKER_DRAINING));
    v->acks = rep[k];
    rep[k++] = NULL;
  }
  for (int k = 0; k < n_cmds; k++)
    if (rep[k]) freeReplyObject(rep[k]);
  free(rep);
  return ok;
}

// Forgets workers whose heartbeat key expired (and their queued commands).
static void reap_dead(sched_t *s, view_t *v) {
  const char *px = ac_rds_prefix(s->rds);
  for (int i = 0; i < v->nw; i++) {
    if (!v->w[i].gone) continue;
    AC_INFO("worker %s: heartbeat gone; removing it from %sworkers", v->w[i].id, px);
    redisReply *rep = ac_rds_cmd(s->rds, "SREM %sworkers %s", px, v->w[i].id);
    if (rep) freeReplyObject(rep);
    rep = ac_rds_cmd(s->rds, "DEL %scmd:%s", px, v->w[i].id);
    if (rep) freeReplyObject(rep);
  }
}

static const wrow_t *find_worker(const view_t *v, const char *id) {
  for (int i = 0; i < v->nw; i++)
    if (v->w[i].wi && strcmp(v->w[i].id, id) == 0) return &v->w[i];
  return NULL;
}

// Settles pending reloads: acked, visibly done, worker gone, or timed out.
static void settle_pending(sched_t *s, const view_t *v) {
  const char *px = ac_rds_prefix(s->rds);
  for (int k = 0; k < s->n_pend; k++) {
    pending_t *p = &s->pend[k];
    // An ack for it?
    const Agentcompress__ReloadAck *ack = NULL;
    ac_env_t *env = NULL;
    if (v->acks && v->acks->type == REDIS_REPLY_ARRAY) {
      for (size_t a = 0; a < v->acks->elements && !ack; a++) {
        const redisReply *e = v->acks->element[a];
        if (e->type != REDIS_REPLY_STRING) continue;
        if (ac_msg_unpack(e->str, e->len, AC_MSG_MAX_BYTES, &env) != 0) continue;
        if (env->body_case == AGENTCOMPRESS__ENVELOPE__BODY_RELOAD_ACK && env->reload_ack && env->reload_ack->id &&
            strcmp(env->reload_ack->id, p->id) == 0)
          ack = env->reload_ack;
        else
          ac_msg_free(&env);
      }
    }
    if (ack) {
      if (ack->ok) {
        AC_INFO("reload %s: worker %s now holds %s (reload %.0f ms, load %.0f ms)", p->id, p->worker, p->variant,
                ack->reload_ms, ack->load_ms);
        recent_outcome(s, p->id, "ok %.0f ms", ack->reload_ms);
      } else {
        AC_WARN("reload %s: worker %s could not load %s: %s; leaving it alone for %.0f s", p->id, p->worker, p->variant,
                ack->message ? ack->message : "", COOLDOWN_MS / 1000);
        recent_outcome(s, p->id, "failed: %.140s", ack->message ? ack->message : "");
        add_cooldown(s, p->worker);
      }
      ac_msg_free(&env);
      drop_pending(s, k--);
      continue;
    }
    const wrow_t *w = find_worker(v, p->worker);
    if (!w) {
      AC_WARN("reload %s: worker %s is gone", p->id, p->worker);
      recent_outcome(s, p->id, "worker gone");
      drop_pending(s, k--);
      continue;
    }
    if (w->wi->variant && strcmp(w->wi->variant, p->variant) == 0 &&
        w->wi->state == AGENTCOMPRESS__WORKER_STATE__WORKER_READY) {
      AC_INFO("reload %s: worker %s reports %s ready", p->id, p->worker, p->variant);
      recent_outcome(s, p->id, "ok %.0f ms", w->wi->last_reload_ms);
      drop_pending(s, k--);
      continue;
    }
    if (ac_mono_ms() - p->issued_mono > PENDING_TIMEOUT_MS) {
      AC_WARN("reload %s: worker %s did not load %s within %.0f s; giving up on it", p->id, p->worker, p->variant,
              PENDING_TIMEOUT_MS / 1000);
      recent_outcome(s, p->id, "timed out");
      // Take the command back if the worker never picked it up, so it does not act on it late.
      redisReply *rep = ac_rds_cmd(s->rds, "LREM %scmd:%s 0 %b", px, p->worker, p->cmd, p->cmd_len);
      if (rep) freeReplyObject(rep);
      add_cooldown(s, p->worker);
      drop_pending(s, k--);
    }
  }
}

static const pending_t *pending_for(const sched_t *s, const char *worker) {
  for (int k = 0; k < s->n_pend; k++)
    if (strcmp(s->pend[k].worker, worker) == 0) return &s->pend[k];
  return NULL;
}

// Pushes one reload command. Returns 0, or a negative code when Redis did not take it.
static int issue(sched_t *s, const char *worker, const char *variant, const char *from, const ac_pl_reload_t *d,
                 uint64_t now_ms) {
  const char *px = ac_rds_prefix(s->rds);
  char id[96];
  snprintf(id, sizeof id, "sched-%d-%llu-%llu", (int)getpid(), (unsigned long long)now_ms, (unsigned long long)++s->seq);
  uint8_t *buf = NULL;
  size_t len = 0;
  int err = ac_msg_pack_reload(id, worker, variant, d->reason, now_ms, &buf, &len);
  if (err) return err;
  if (s->dry_run) {
    // The same decision comes back every tick (nothing is pushed): say it when it changes.
    static char last[512];
    char now[512];
    snprintf(now, sizeof now, "%s %s %s", worker, from, variant);
    if (strcmp(now, last) != 0) AC_INFO("dry run: would reload worker %s %s -> %s (%s)", worker, from, variant, d->reason);
    snprintf(last, sizeof last, "%s", now);
    free(buf);
    return 0;
  }
  AC_INFO("reload %s: worker %s %s -> %s (%s)", id, worker, from, variant, d->reason);
  redisReply *rep = ac_rds_cmd(s->rds, "RPUSH %scmd:%s %b", px, worker, buf, len);
  if (!reply_ok(rep)) {
    AC_WARN("reload %s: RPUSH %scmd:%s failed: %s", id, px, worker, rep && rep->str ? rep->str : "no connection");
    if (rep) freeReplyObject(rep);
    free(buf);
    return AC_EIO;
  }
  freeReplyObject(rep);
  rep = ac_rds_cmd(s->rds, "HINCRBY %sstats reloads 1", px);
  if (rep) freeReplyObject(rep);

  pending_t *p = realloc(s->pend, (size_t)(s->n_pend + 1) * sizeof *p);
  if (!p) {
    free(buf);
    return 0;  // issued; we just cannot track it (the worker's heartbeat will show the result)
  }
  s->pend = p;
  p = &s->pend[s->n_pend++];
  memset(p, 0, sizeof *p);
  snprintf(p->id, sizeof p->id, "%s", id);
  snprintf(p->worker, sizeof p->worker, "%s", worker);
  snprintf(p->variant, sizeof p->variant, "%s", variant);
  snprintf(p->from, sizeof p->from, "%s", from);
  p->issued_ms = now_ms;
  p->issued_mono = ac_mono_ms();
  p->cmd = buf;
  p->cmd_len = len;

  recent_t *r = &s->recent[s->n_recent++ % RECENT_MAX];
  memset(r, 0, sizeof *r);
  r->at_ms = now_ms;
  snprintf(r->id, sizeof r->id, "%s", id);
  snprintf(r->worker, sizeof r->worker, "%s", worker);
  snprintf(r->from, sizeof r->from, "%s", from);
  snprintf(r->to, sizeof r->to, "%s", variant);
  snprintf(r->why, sizeof r->why, "%s", ac_pl_why_name(d->why));
  snprintf(r->reason, sizeof r->reason, "%s", d->reason);
  snprintf(r->outcome, sizeof r->outcome, "pending");
  s->issued++;
  return 0;
}

// Writes <prefix>sched: what this tick saw and decided (acctl status reads it).
static void publish(sched_t *s, const view_t *v, const ac_pl_params_t *pp, const ac_pl_worker_t *pw, const int *row,
                    int npw, const ac_pl_score_t *sc, const ac_pl_reload_t *dec, int ndec, uint64_t now_ms) {
  const ac_catalog_t *cat = &s->cat;
  json_t *root = json_object();
  if (!root) return;
  json_object_set_new(root, "time_ms", json_integer((json_int_t)now_ms));
  json_object_set_new(root, "pid", json_integer(getpid()));
  json_object_set_new(root, "dry_run", json_boolean(s->dry_run));
  json_object_set_new(root, "reference", json_string(cat->reference));
  json_object_set_new(root, "reloads_issued", json_integer((json_int_t)s->issued));
  json_object_set_new(root, "demand_buckets", json_pack("[I,I]", (json_int_t)v->lo, (json_int_t)v->hi));

  json_t *set = json_object();
  size_t ns;
  const ac_setting_t *tab = ac_settings(&ns);
  for (size_t k = 0; k < ns; k++)
    if (strncmp(tab[k].name, "sched.", 6) == 0 || strcmp(tab[k].name, "worker.timeout_ms") == 0)
      json_object_set_new(set, tab[k].name, json_real(ac_config_num(s->cfg, tab[k].name)));
  json_object_set_new(set, "wanted_s", json_real(pp->wanted_s));
  json_object_set_new(root, "settings", set);

  json_t *vars = json_array();
  for (int j = 0; j < cat->n; j++) {
    json_t *holders = json_array();
    for (int k = 0; k < npw; k++)
      if (pw[k].variant == j && !pw[k].drained) json_array_append_new(holders, json_string(pw[k].id));
    json_array_append_new(
        vars, json_pack("{s:s, s:I, s:i, s:I, s:f, s:f, s:f, s:o, s:i, s:i, s:b, s:b, s:b, s:b, s:I, s:I}", "name",
                        cat->v[j].name, "bytes", (json_int_t)cat->v[j].bytes, "rank", cat->v[j].rank, "demand",
                        (json_int_t)v->count[j], "freq", sc[j].freq, "recency", sc[j].recency, "priority",
                        sc[j].priority, "holders", holders, "n_holders", sc[j].holders, "holders_after",
                        sc[j].holders_after, "pinned", sc[j].pinned, "reference",
                        strcmp(cat->v[j].name, cat->reference) == 0, "wanted", sc[j].wanted, "starved",
                        sc[j].starved, "last_use_ms", (json_int_t)v->last_use[j], "wanted_ms",
                        (json_int_t)v->wanted[j]));
  }
  json_object_set_new(root, "variants", vars);

  json_t *workers = json_array();
  for (int k = 0; k < npw; k++) {
    const Agentcompress__WorkerInfo *wi = v->w[row[k]].wi;
    const pending_t *p = pending_for(s, pw[k].id);
    const char *queued = v->w[row[k]].queued;
    const char *target = p ? p->variant : queued[0] ? queued : wi->variant ? wi->variant : "";
    for (int d = 0; d < ndec; d++)
      if (dec[d].worker == k) target = cat->v[dec[d].variant].name;
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b, s:b, s:I, s:f}", "id", pw[k].id, "variant",
                          wi->variant ? wi->variant : "", "state", ac_msg_state_name(wi->state), "target", target, "drained",
                          pw[k].drained, "cooldown", pw[k].cooldown, "capacity_bytes", (json_int_t)pw[k].capacity_bytes,
                          "resident_s",
                          pw[k].resident_since_ms && pw[k].resident_since_ms <= now_ms
                              ? (double)(now_ms - pw[k].resident_since_ms) / 1000.0
                              : 0.0);
    if (p)
      json_object_set_new(o, "pending", json_pack("{s:s, s:s, s:I}", "id", p->id, "variant", p->variant, "age_ms",
                                                  (json_int_t)(now_ms >= p->issued_ms ? now_ms - p->issued_ms : 0)));
    json_array_append(workers, o);
    json_decref(o);
  }
  json_object_set_new(root, "workers", workers);

  json_t *decs = json_array();
  for (int d = 0; d < ndec; d++)
    json_array_append_new(decs, json_pack("{s:s, s:s, s:s, s:s, s:s}", "worker", pw[dec[d].worker].id, "from",
                                          dec[d].from >= 0 ? cat->v[dec[d].from].name : "", "to",
                                          cat->v[dec[d].variant].name, "why", ac_pl_why_name(dec[d].why), "reason",
                                          dec[d].reason));
  json_object_set_new(root, "decisions", decs);

  json_t *rec = json_array();
  int n = s->n_recent < RECENT_MAX ? s->n_recent : RECENT_MAX;
  for (int k = 0; k < n; k++) {
    const recent_t *r = &s->recent[(s->n_recent - 1 - k) % RECENT_MAX];  // newest first
    json_array_append_new(rec, json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "at_ms", (json_int_t)r->at_ms, "id",
                                         r->id, "worker", r->worker, "from", r->from, "to", r->to, "why", r->why,
                                         "reason", r->reason, "outcome", r->outcome));
  }
  json_object_set_new(root, "recent", rec);

  char *text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  if (!text) return;
  redisReply *rep = ac_rds_cmd(s->rds, "SET %ssched %s", ac_rds_prefix(s->rds), text);
  if (rep) freeReplyObject(rep);
  free(text);
}

// One decision. Returns false when Redis could not be reached.
static bool tick(sched_t *s) {
  ac_rds_t *r = s->rds;
  const char *px = ac_rds_prefix(r);
  if (ac_config_refresh(s->cfg, r) != 0) return false;
  redisReply *rep = ac_rds_cmd(r, "SET %scatalog %s", px, s->catalog_json);
  if (!rep) return false;
  if (rep->type == REDIS_REPLY_ERROR) AC_WARN("SET %scatalog: %s", px, rep->str);
  freeReplyObject(rep);

  uint64_t now_ms = ac_unix_ms();
  view_t v;
  if (!read_view(s, now_ms, &v)) {
    view_free(&v);
    return false;
  }
  reap_dead(s, &v);
  settle_pending(s, &v);

  const ac_catalog_t *cat = &s->cat;
  int nv = cat->n;
  ac_pl_params_t pp = {
      .w_freq = ac_config_num(s->cfg, "sched.w_freq"),
      .w_recency = ac_config_num(s->cfg, "sched.w_recency"),
      .window_s = ac_config_num(s->cfg, "sched.window_s"),
      .min_residency_s = ac_config_num(s->cfg, "sched.min_residency_s"),
      .hysteresis = ac_config_num(s->cfg, "sched.hysteresis"),
      .wanted_s = WANTED_S,
  };
  ac_pl_variant_t *pv = calloc((size_t)nv, sizeof *pv);
  ac_pl_score_t *sc = calloc((size_t)nv, sizeof *sc);
  ac_pl_worker_t *pw = calloc((size_t)v.nw + 1, sizeof *pw);
  ac_pl_reload_t *dec = calloc((size_t)v.nw + 1, sizeof *dec);
  int *row = calloc((size_t)v.nw + 1, sizeof *row);
  bool ok = true;
  if (!pv || !sc || !pw || !dec || !row) {
    AC_ERROR("out of memory");
    goto done;
  }
  for (int j = 0; j < nv; j++)
    pv[j] = (ac_pl_variant_t){.name = cat->v[j].name, .bytes = cat->v[j].bytes, .pinned = v.pinned[j],
                              .reference = strcmp(cat->v[j].name, cat->reference) == 0, .count = v.count[j],
                              .last_use_ms = v.last_use[j], .wanted_ms = v.wanted[j]};
  for (int k = 0; k < s->n_seen; k++) s->seen[k].seen = false;
  int npw = 0;
  for (int i = 0; i < v.nw; i++) {
    const Agentcompress__WorkerInfo *wi = v.w[i].wi;
    if (!wi) continue;
    const char *var = wi->variant ? wi->variant : "";
    int j = variant_index(cat, var);
    uint64_t since = wi->last_reload_at_ms ? wi->last_reload_at_ms : wi->started_at_ms;
    uint64_t seen = seen_since(s, v.w[i].id, var, now_ms);
    if (!since) since = seen;
    const pending_t *p = pending_for(s, v.w[i].id);
    const char *target = p ? p->variant : v.w[i].queued[0] ? v.w[i].queued : NULL;
    int pend = target ? variant_index(cat, target) : -1;
    pw[npw] = (ac_pl_worker_t){.id = v.w[i].id, .variant = j,
                               .ready = wi->state == AGENTCOMPRESS__WORKER_STATE__WORKER_READY,
                               .drained = v.w[i].drained, .cooldown = cooldown_left_ms(s, v.w[i].id) > 0,
                               .capacity_bytes = wi->capacity_bytes, .resident_since_ms = since, .pending = pend};
    // A pending reload to a variant that left the catalog still keeps the worker busy.
    if (target && pend < 0) pw[npw].cooldown = true;
    row[npw++] = i;
  }
  for (int k = 0; k < s->n_seen; k++)
    if (!s->seen[k].seen) s->seen[k--] = s->seen[--s->n_seen];

  int n = ac_placement_decide(pv, nv, pw, npw, now_ms, &pp, sc, dec);
  if (n < 0) {
    AC_ERROR("placement: %s", ac_errmsg());
    n = 0;
  }
  for (int d = 0; d < n; d++) {
    const Agentcompress__WorkerInfo *wi = v.w[row[dec[d].worker]].wi;
    const char *from = dec[d].from >= 0 ? cat->v[dec[d].from].name : wi->variant && *wi->variant ? wi->variant : "(none)";
    if (issue(s, pw[dec[d].worker].id, cat->v[dec[d].variant].name, from, &dec[d], now_ms) == AC_EIO && !ac_rds_connected(r))
      ok = false;
  }
  for (int j = 0; j < nv; j++)
    if (sc[j].starved) AC_DEBUG("variant %s: demanded (priority %.2f%s) but no worker may take it now", cat->v[j].name,
                                sc[j].priority, sc[j].pinned ? ", pinned" : "");
  publish(s, &v, &pp, pw, row, npw, sc, dec, n, now_ms);
  if (!ac_rds_connected(r)) ok = false;
done:
  free(pv);
  free(sc);
  free(pw);
  free(dec);
  free(row);
  view_free(&v);
  return ok;
}

// --- main -----------------------------------------------------------------------------------------------

static int usage(FILE *f, int status) {
  fprintf(f,
          "usage: ac-scheduler --zoo DIR [options]\n"
          "  --zoo DIR             the variants (DIR/manifest.json, else DIR/*.gguf); published as <prefix>catalog\n"
          "  --redis HOST:PORT     Redis (env AC_REDIS, default 127.0.0.1:6379)\n"
          "  --prefix P            key prefix (env AC_PREFIX, default \"ac:\")\n"
          "  --set NAME=VALUE      a setting (repeatable; see 'acctl policy get')\n"
          "  --log-level L         debug, info (default), warn, error\n"
          "  --log-format F        text (default) or json\n"
          "  --once                decide once and exit (status 1 if Redis could not be reached)\n"
          "  --dry-run             decide and publish <prefix>sched, but push no reload commands\n"
          "Every sched.interval_ms it reads workers and demand from Redis, computes each variant's priority\n"
          "(sched.w_freq * Freq + sched.w_recency * Recency) and tells workers to reload (lib/placement.h).\n");
  return status;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"zoo", required_argument, 0, 'z'},       {"redis", required_argument, 0, 'r'},
      {"prefix", required_argument, 0, 'P'},    {"set", required_argument, 0, 's'},
      {"log-level", required_argument, 0, 'l'}, {"log-format", required_argument, 0, 'f'},
      {"once", no_argument, 0, 'o'},            {"dry-run", no_argument, 0, 'd'},
      {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
  const char *zoo = NULL, *redis = getenv("AC_REDIS"), *prefix = getenv("AC_PREFIX");
  const char *sets[64];
  int n_sets = 0, c;
  bool once = false, dry = false;
  ac_log_set_level(AC_LOG_INFO);
  const char *lvl = getenv("AC_LOG");
  if (lvl && ac_log_parse_level(lvl) >= 0) ac_log_set_level((ac_log_level_t)ac_log_parse_level(lvl));
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 'z': zoo = optarg; break;
      case 'r': redis = optarg; break;
      case 'P': prefix = optarg; break;
      case 's':
        if (n_sets == 64) return usage(stderr, 2);
        sets[n_sets++] = optarg;
        break;
      case 'l': {
        int l = ac_log_parse_level(optarg);
        if (l < 0) {
          fprintf(stderr, "ac-scheduler: bad --log-level '%s'\n", optarg);
          return 2;
        }
        ac_log_set_level((ac_log_level_t)l);
        break;
      }
      case 'f':
        if (strcmp(optarg, "json") && strcmp(optarg, "text")) {
          fprintf(stderr, "ac-scheduler: --log-format is text or json, not '%s'\n", optarg);
          return 2;
        }
        ac_log_set_json(strcmp(optarg, "json") == 0);
        break;
      case 'o': once = true; break;
      case 'd': dry = true; break;
      case 'h': return usage(stdout, 0);
      default: return usage(stderr, 2);
    }
  }
  if (optind != argc || !zoo) return usage(stderr, 2);

  sched_t s = {.dry_run = dry};
  int status = 1, rc;
  if ((rc = ac_config_new(&s.cfg))) {
    fprintf(stderr, "ac-scheduler: %s\n", ac_errmsg());
    return 1;
  }
  for (int k = 0; k < n_sets; k++)
    if ((rc = ac_config_set_arg(s.cfg, sets[k]))) {
      fprintf(stderr, "ac-scheduler: --set %s: %s\n", sets[k], ac_errmsg());
      status = 2;
      goto done;
    }
  if ((rc = ac_catalog_load_dir(zoo, &s.cat)) || (rc = ac_catalog_to_json(&s.cat, &s.catalog_json))) {
    fprintf(stderr, "ac-scheduler: %s\n", *ac_errmsg() ? ac_errmsg() : ac_strerror(rc));
    goto done;
  }
  if ((rc = ac_rds_new(redis, prefix && *prefix ? prefix : NULL, &s.rds))) {
    fprintf(stderr, "ac-scheduler: %s\n", ac_errmsg());
    status = 2;
    goto done;
  }
  AC_INFO("ac-scheduler: %d variants from %s (reference %s), redis %s, prefix %s", s.cat.n, zoo, s.cat.reference,
          ac_rds_addr(s.rds), ac_rds_prefix(s.rds));

  ac_msg_install_signals(on_signal);

  double next = ac_mono_ms();
  while (!stop_flag) {
    bool ok = tick(&s);
    if (!ok && !s.redis_down) {
      AC_WARN("redis %s unreachable; skipping decisions and retrying with backoff", ac_rds_addr(s.rds));
      s.redis_down = true;
    } else if (ok && s.redis_down) {
      AC_INFO("redis %s answers again; deciding again", ac_rds_addr(s.rds));
      s.redis_down = false;
    }
    if (once) {
      status = ok ? 0 : 1;
      goto done;
    }
    double interval = ac_config_num(s.cfg, "sched.interval_ms");
    next += interval;
    double now = ac_mono_ms();
    if (next < now) next = now;  // a slow tick (or a stall) does not cause a burst of catch-up ticks
    while (!stop_flag && (now = ac_mono_ms()) < next) {
      double wait = next - now;
      struct timespec ts = {(time_t)(wait / 1000), (long)((wait - (double)(time_t)(wait / 1000) * 1000) * 1e6)};
      nanosleep(&ts, NULL);  // a signal interrupts it
    }
  }
  AC_INFO("ac-scheduler: stopping");
  status = 0;
done:
  for (int k = 0; k < s.n_pend; k++) free(s.pend[k].cmd);
  free(s.pend);
  free(s.cool);
  free(s.seen);
  free(s.catalog_json);
  ac_catalog_free(&s.cat);
  ac_rds_destroy(&s.rds);
  ac_config_destroy(&s.cfg);
  return status;
}
