// stats.c - see stats.h.
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "error.h"
#include "log.h"
#include "msg.h"

#define OVERHEAD_N 10000  // dispatches kept for the percentiles
#define MAP_CAP 1024      // distinct keys pending per map (variants x buckets: a handful in practice)
#define RATE_SECS 64      // per-second answer counts kept for tasks/s

// A pending write: key (variant), an optional bucket, a value (a count to add, or a time).
typedef struct {
  char key[64];
  uint64_t bucket;
  double val;
} kv_t;

typedef struct {
  kv_t v[MAP_CAP];
  int n;
  bool warned;
} kvmap_t;

struct rt_stats {
  rt_counters_t c, flushed;  // totals now, and what Redis has been told
  kvmap_t demand;            // (bucket, variant) -> count
  kvmap_t lastuse;           // variant -> unix ms
  kvmap_t wanted;            // variant -> unix ms
  kvmap_t served;            // variant -> count
  double overhead[OVERHEAD_N];
  int n_overhead, pos_overhead;
  int64_t rate_sec[RATE_SECS];
  uint64_t rate_n[RATE_SECS];
  double started_mono;
};

int rt_stats_new(rt_stats_t **out) {
  rt_stats_t *s = calloc(1, sizeof *s);
  if (!s) return ac_error(AC_ENOMEM, "out of memory");
  for (int i = 0; i < RATE_SECS; i++) s->rate_sec[i] = -1;
  s->started_mono = ac_mono_ms();
  *out = s;
  return 0;
}

void rt_stats_destroy(rt_stats_t **self_p) {
  free(*self_p);
  *self_p = NULL;
}

const rt_counters_t *rt_stats_counters(const rt_stats_t *s) { return &s->c; }

// The entry for (key, bucket), created with val 0; NULL when the map is full.
static kv_t *slot(kvmap_t *m, const char *key, uint64_t bucket) {
  for (int i = 0; i < m->n; i++)
    if (m->v[i].bucket == bucket && strcmp(m->v[i].key, key) == 0) return &m->v[i];
  if (m->n == MAP_CAP || strlen(key) >= sizeof m->v[0].key) {
    if (!m->warned) AC_WARN("stats: too many distinct pending keys; some Redis counts are dropped");
    m->warned = true;
    return NULL;
  }
  kv_t *e = &m->v[m->n++];
  snprintf(e->key, sizeof e->key, "%s", key);
  e->bucket = bucket;
  e->val = 0;
  return e;
}

void rt_stats_received(rt_stats_t *s) { s->c.received++; }

void rt_stats_bad_message(rt_stats_t *s, int code) {
  s->c.bad_messages++;
  if (code >= 0 && code < 16) s->c.by_code[code]++;
}

void rt_stats_demand(rt_stats_t *s, const char *variant, uint64_t now_ms) {
  if (!variant || !*variant) return;
  kv_t *e = slot(&s->demand, variant, now_ms / 10000);
  if (e) e->val += 1;
  if ((e = slot(&s->lastuse, variant, 0))) e->val = (double)now_ms;
}

void rt_stats_wanted(rt_stats_t *s, const char *variant, uint64_t now_ms) {
  if (!variant || !*variant) return;
  kv_t *e = slot(&s->wanted, variant, 0);
  if (e) e->val = (double)now_ms;
}

void rt_stats_answer(rt_stats_t *s, const rt_answer_t *a, double now_mono_ms) {
  rt_counters_t *c = &s->c;
  c->tasks++;
  if (a->attempts > 1) c->retries += (uint64_t)(a->attempts - 1);
  if (a->was_queued) c->queued_for_reload++;
  if (a->ok) {
    c->ok++;
    c->prompt_tokens += a->prompt_tokens;
    c->completion_tokens += a->completion_tokens;
    c->cost_usd += a->cost_usd;
    if (a->served && *a->served) {
      kv_t *e = slot(&s->served, a->served, 0);
      if (e) e->val += 1;
      if (a->requested && *a->requested) {
        if (strcmp(a->served, a->requested) == 0) c->exact++;
        else c->upgraded++;
      }
    }
  } else {
    c->errors++;
    if (a->code >= 0 && a->code < 16) c->by_code[a->code]++;
  }
  int64_t sec = (int64_t)(now_mono_ms / 1000);
  int i = (int)(sec % RATE_SECS);
  if (s->rate_sec[i] != sec) {
    s->rate_sec[i] = sec;
    s->rate_n[i] = 0;
  }
  s->rate_n[i]++;
}

void rt_stats_overhead(rt_stats_t *s, double us) {
  s->overhead[s->pos_overhead] = us;
  s->pos_overhead = (s->pos_overhead + 1) % OVERHEAD_N;
  if (s->n_overhead < OVERHEAD_N) s->n_overhead++;
}

// --- Redis ---------------------------------------------------------------------------------------

bool rt_stats_pending(const rt_stats_t *s) {
  return s->demand.n || s->lastuse.n || s->wanted.n || s->served.n || s->c.tasks != s->flushed.tasks ||
         s->c.cost_usd != s->flushed.cost_usd;
}

int rt_stats_append(rt_stats_t *s, ac_rds_t *r, int window_s) {
  const char *p = ac_rds_prefix(r);
  int n = 0;
  for (int i = 0; i < s->demand.n; i++) {
    const kv_t *e = &s->demand.v[i];
    n += ac_rds_append(r, "HINCRBY %sdemand:%llu %s %lld", p, (unsigned long long)e->bucket, e->key, (long long)e->val);
    n += ac_rds_append(r, "EXPIRE %sdemand:%llu %d", p, (unsigned long long)e->bucket, window_s + 20);
  }
  for (int i = 0; i < s->lastuse.n; i++)
    n += ac_rds_append(r, "HSET %slastuse %s %llu", p, s->lastuse.v[i].key, (unsigned long long)s->lastuse.v[i].val);
  for (int i = 0; i < s->wanted.n; i++)
    n += ac_rds_append(r, "HSET %swanted %s %llu", p, s->wanted.v[i].key, (unsigned long long)s->wanted.v[i].val);
  for (int i = 0; i < s->served.n; i++)
    n += ac_rds_append(r, "HINCRBY %sserved %s %lld", p, s->served.v[i].key, (long long)s->served.v[i].val);
  const rt_counters_t *c = &s->c, *f = &s->flushed;
  struct {
    const char *name;
    uint64_t now, then;
  } fields[] = {
      {"tasks", c->tasks, f->tasks},
      {"ok", c->ok, f->ok},
      {"errors", c->errors, f->errors},
      {"retries", c->retries, f->retries},
      {"prompt_tokens", c->prompt_tokens, f->prompt_tokens},
      {"completion_tokens", c->completion_tokens, f->completion_tokens},
      {"exact", c->exact, f->exact},
      {"upgraded", c->upgraded, f->upgraded},
      {"queued_for_reload", c->queued_for_reload, f->queued_for_reload},
  };
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].now != fields[i].then)
      n += ac_rds_append(r, "HINCRBY %sstats %s %lld", p, fields[i].name, (long long)(fields[i].now - fields[i].then));
  if (c->cost_usd != f->cost_usd)
    n += ac_rds_append(r, "HINCRBYFLOAT %sstats cost_usd %.12f", p, c->cost_usd - f->cost_usd);
  // What was appended is gone from here, whatever becomes of the pipeline: a count may be lost
  // when Redis dies mid-flush, never written twice.
  s->flushed = s->c;
  s->demand.n = s->lastuse.n = s->wanted.n = s->served.n = 0;
  return n;
}

// --- the admin answer ----------------------------------------------------------------------------

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

char *rt_stats_json(rt_stats_t *s, double now_mono_ms, json_t *extra) {
  const rt_counters_t *c = &s->c;
  json_t *o = json_object();
  if (!o) return NULL;
  json_object_set_new(o, "uptime_s", json_real((now_mono_ms - s->started_mono) / 1e3));
  json_object_set_new(o, "received", json_integer((json_int_t)c->received));
  json_object_set_new(o, "bad_messages", json_integer((json_int_t)c->bad_messages));
  json_object_set_new(o, "tasks", json_integer((json_int_t)c->tasks));
  json_object_set_new(o, "ok", json_integer((json_int_t)c->ok));
  json_object_set_new(o, "errors", json_integer((json_int_t)c->errors));
  json_object_set_new(o, "retries", json_integer((json_int_t)c->retries));
  json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)c->prompt_tokens));
  json_object_set_new(o, "completion_tokens", json_integer((json_int_t)c->completion_tokens));
  json_object_set_new(o, "exact", json_integer((json_int_t)c->exact));
  json_object_set_new(o, "upgraded", json_integer((json_int_t)c->upgraded));
  json_object_set_new(o, "queued_for_reload", json_integer((json_int_t)c->queued_for_reload));
  json_object_set_new(o, "cost_usd", json_real(c->cost_usd));
  json_t *codes = json_object();
  for (int i = 1; i < 16; i++)
    if (c->by_code[i])
      json_object_set_new(codes, ac_msg_code_name((Agentcompress__ErrorCode)i), json_integer((json_int_t)c->by_code[i]));
  json_object_set_new(o, "errors_by_code", codes);

  // Overhead percentiles (nearest rank) over the kept window.
  json_t *oh = json_object();
  double p50 = 0, p99 = 0, mx = 0, mean = 0;
  int n = s->n_overhead;
  if (n > 0) {
    double *tmp = malloc((size_t)n * sizeof *tmp);
    if (tmp) {
      memcpy(tmp, s->overhead, (size_t)n * sizeof *tmp);
      qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
      p50 = tmp[(n - 1) / 2];
      p99 = tmp[(int)((double)(n - 1) * 0.99 + 0.5)];
      mx = tmp[n - 1];
      for (int i = 0; i < n; i++) mean += tmp[i];
      mean /= n;
      free(tmp);
    }
  }
  json_object_set_new(oh, "p50", json_real(p50));
  json_object_set_new(oh, "p99", json_real(p99));
  json_object_set_new(oh, "max", json_real(mx));
  json_object_set_new(oh, "mean", json_real(mean));
  json_object_set_new(oh, "n", json_integer(n));
  json_object_set_new(o, "overhead_us", oh);

  // Answers per second over the last 10 whole seconds, and since start.
  int64_t sec = (int64_t)(now_mono_ms / 1000);
  uint64_t recent = 0;
  for (int k = 1; k <= 10; k++) {
    int i = (int)((sec - k) % RATE_SECS);
    if (sec - k >= 0 && s->rate_sec[i] == sec - k) recent += s->rate_n[i];
  }
  double up = (now_mono_ms - s->started_mono) / 1e3;
  json_object_set_new(o, "tasks_per_s", json_real((double)recent / 10.0));
  json_object_set_new(o, "tasks_per_s_since_start", json_real(up > 0 ? (double)c->tasks / up : 0));
  if (extra) json_object_update(o, extra);
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return text;
}
