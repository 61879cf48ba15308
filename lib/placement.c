// placement.c - see placement.h.
#include "placement.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

// Added to a wanted variant's priority: more than any priority can be (each weight is <= 1).
#define WANTED_BONUS 2.0

ac_pl_params_t ac_pl_params_default(void) {
  return (ac_pl_params_t){.w_freq = 0.7, .w_recency = 0.3, .window_s = 120, .min_residency_s = 10,
                          .hysteresis = 0.15, .wanted_s = 5};
}

const char *ac_pl_why_name(ac_pl_why_t why) {
  switch (why) {
    case AC_PL_PIN: return "pin";
    case AC_PL_WANTED: return "wanted";
    case AC_PL_DEMAND: return "demand";
    case AC_PL_REPLICA: return "replica";
  }
  return "?";
}

// --- state of one decision ----------------------------------------------------------------------

typedef struct {
  const ac_pl_variant_t *v;
  const ac_pl_worker_t *w;
  int nv, nw;
  uint64_t now_ms;
  const ac_pl_params_t *p;
  ac_pl_score_t *s;
  int *eff;        // (nw) each worker's effective variant, updated as reloads are decided
  int *holders;    // (nv) effective holders, updated likewise
  char *used;      // (nw) the worker got a reload in this decision
  char *targeted;  // (nv) the variant got a reload in this decision
} decision_t;

static bool counts(const ac_pl_worker_t *w) { return !w->drained; }

// Whether worker i may be reloaded to variant t at all (before any priority comparison).
static bool eligible(const decision_t *d, int i, int t) {
  const ac_pl_worker_t *w = &d->w[i];
  if (d->used[i] || !w->ready || w->drained || w->cooldown || w->pending >= 0) return false;
  if (w->capacity_bytes && w->capacity_bytes < d->v[t].bytes) return false;
  int cur = d->eff[i];
  if (cur == t) return false;
  if (cur >= 0) {
    // Residency is measured on the worker's clock of record (unix ms); a time in the future
    // means a clock step, and counts as "just loaded".
    if (w->resident_since_ms > d->now_ms) return false;
    if ((double)(d->now_ms - w->resident_since_ms) < d->p->min_residency_s * 1000.0) return false;
    if (d->s[cur].pinned && d->holders[cur] <= 1) return false;
  }
  return true;
}

// What reloading worker i would cost (see the header).
static double keep_value(const decision_t *d, int i) {
  int cur = d->eff[i];
  if (cur < 0) return -1;
  if (d->holders[cur] >= 2) return 0;
  return d->s[cur].value;
}

// Orders candidates: lower keep, then lower priority of the variant held, then resident longer,
// then input order. Returns true when a is better than b.
static bool better(const decision_t *d, int a, int b) {
  double ka = keep_value(d, a), kb = keep_value(d, b);
  if (ka != kb) return ka < kb;
  double pa = d->eff[a] >= 0 ? d->s[d->eff[a]].priority : -1, pb = d->eff[b] >= 0 ? d->s[d->eff[b]].priority : -1;
  if (pa != pb) return pa < pb;
  if (d->w[a].resident_since_ms != d->w[b].resident_since_ms) return d->w[a].resident_since_ms < d->w[b].resident_since_ms;
  return a < b;
}

static void record(decision_t *d, ac_pl_reload_t *r, int i, int t, ac_pl_why_t why) {
  int from = d->eff[i];
  const ac_pl_score_t *st = &d->s[t];
  const char *fname = from >= 0 ? d->v[from].name : "(none)";
  double fprio = from >= 0 ? d->s[from].priority : 0;
  const char *replica = from >= 0 && d->holders[from] >= 2 ? ", a replica" : "";
  memset(r, 0, sizeof *r);
  r->worker = i;
  r->variant = t;
  r->from = from;
  r->why = why;
  switch (why) {
    case AC_PL_PIN:
      snprintf(r->reason, sizeof r->reason, "scheduler: %s %s has no holder; %s held %s (priority %.2f%s)",
               d->v[t].reference && !d->v[t].pinned ? "reference" : "pinned", d->v[t].name, d->w[i].id, fname, fprio,
               replica);
      break;
    case AC_PL_WANTED:
      snprintf(r->reason, sizeof r->reason, "scheduler: a router waits for %s (priority %.2f); %s held %s (priority %.2f%s)",
               d->v[t].name, st->priority, d->w[i].id, fname, fprio, replica);
      break;
    case AC_PL_DEMAND:
      snprintf(r->reason, sizeof r->reason,
               "scheduler: %s priority %.2f (freq %.2f, recency %.2f) has no holder; > %s %.2f%s + hysteresis %.2f",
               d->v[t].name, st->priority, st->freq, st->recency, fname, from >= 0 && d->holders[from] >= 2 ? 0.0 : fprio,
               replica, d->p->hysteresis);
      break;
    case AC_PL_REPLICA:
      snprintf(r->reason, sizeof r->reason, "scheduler: replicate %s (priority %.2f > %s %.2f + hysteresis %.2f)",
               d->v[t].name, st->priority, fname, fprio, d->p->hysteresis);
      break;
  }
  if (from >= 0) d->holders[from]--;
  d->holders[t]++;
  d->eff[i] = t;
  d->used[i] = 1;
  d->targeted[t] = 1;
}

// Orders the variants to cover: pinned first, then higher value, then catalog order.
static bool cover_before(const decision_t *d, int a, int b) {
  if (d->s[a].pinned != d->s[b].pinned) return d->s[a].pinned;
  if (d->s[a].value != d->s[b].value) return d->s[a].value > d->s[b].value;
  return a < b;
}

// --- the decision ---------------------------------------------------------------------------------

static void score(decision_t *d) {
  const ac_pl_params_t *p = d->p;
  uint64_t maxc = 0;
  for (int j = 0; j < d->nv; j++)
    if (d->v[j].count > maxc) maxc = d->v[j].count;
  double window_ms = p->window_s * 1000.0;
  for (int j = 0; j < d->nv; j++) {
    const ac_pl_variant_t *v = &d->v[j];
    ac_pl_score_t *s = &d->s[j];
    memset(s, 0, sizeof *s);
    s->freq = maxc ? (double)v->count / (double)maxc : 0;
    if (v->last_use_ms) {
      // A last use "in the future" (clocks of routers and scheduler disagree) counts as now.
      double age = v->last_use_ms >= d->now_ms ? 0 : (double)(d->now_ms - v->last_use_ms);
      double r = window_ms > 0 ? 1.0 - age / window_ms : 0;
      s->recency = r < 0 ? 0 : r > 1 ? 1 : r;
    }
    s->priority = p->w_freq * s->freq + p->w_recency * s->recency;
    s->wanted = v->wanted_ms && (v->wanted_ms >= d->now_ms || (double)(d->now_ms - v->wanted_ms) <= p->wanted_s * 1000.0);
    s->value = s->priority + (s->wanted ? WANTED_BONUS : 0);
    s->pinned = v->pinned || v->reference;
    s->demanded = s->pinned || s->wanted || s->priority > 0;
  }
}

int ac_placement_decide(const ac_pl_variant_t *variants, int nv, const ac_pl_worker_t *workers, int nw,
                        uint64_t now_ms, const ac_pl_params_t *p, ac_pl_score_t *scores, ac_pl_reload_t *reloads) {
  if (nv < 0 || nw < 0 || (nv && (!variants || !scores)) || (nw && (!workers || !reloads)) || !p)
    return ac_error(AC_EINVAL, "placement: bad arguments");
  for (int i = 0; i < nw; i++)
    if (workers[i].variant < -1 || workers[i].variant >= nv || workers[i].pending < -1 || workers[i].pending >= nv)
      return ac_error(AC_EINVAL, "placement: worker %d names variant %d of %d", i, workers[i].variant, nv);

  decision_t d = {.v = variants, .w = workers, .nv = nv, .nw = nw, .now_ms = now_ms, .p = p, .s = scores};
  d.eff = calloc((size_t)nw + 1, sizeof *d.eff);
  d.holders = calloc((size_t)nv + 1, sizeof *d.holders);
  d.used = calloc((size_t)nw + 1, 1);
  d.targeted = calloc((size_t)nv + 1, 1);
  int n = 0;
  if (!d.eff || !d.holders || !d.used || !d.targeted) {
    n = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }

  score(&d);
  int live = 0, demanded = 0;
  for (int i = 0; i < nw; i++) {
    d.eff[i] = workers[i].pending >= 0 ? workers[i].pending : workers[i].variant;
    if (counts(&workers[i]) && d.eff[i] >= 0) d.holders[d.eff[i]]++;
    if (workers[i].ready && !workers[i].drained) live++;
  }
  for (int j = 0; j < nv; j++) {
    scores[j].holders = d.holders[j];
    if (scores[j].demanded) demanded++;
  }

  // 1. Cover every demanded variant that has no holder, most important first. Selection by
  // repeated scans: nv and nw are small (a catalog has a handful of variants).
  for (;;) {
    int t = -1;
    for (int j = 0; j < nv; j++)
      if (scores[j].demanded && d.holders[j] == 0 && !d.targeted[j] && !scores[j].starved && (t < 0 || cover_before(&d, j, t)))
        t = j;
    if (t < 0) break;
    int best = -1;
    for (int i = 0; i < nw; i++) {
      if (!eligible(&d, i, t)) continue;
      if (!scores[t].pinned && !(keep_value(&d, i) + p->hysteresis < scores[t].value)) continue;
      if (best < 0 || better(&d, i, best)) best = i;
    }
    if (best < 0) {
      scores[t].starved = true;
      continue;
    }
    ac_pl_why_t why = scores[t].pinned ? AC_PL_PIN : scores[t].wanted ? AC_PL_WANTED : AC_PL_DEMAND;
    record(&d, &reloads[n++], best, t, why);
  }

  // 2. Spare workers replicate the variant of highest priority.
  if (live > demanded) {
    int h = -1;
    for (int j = 0; j < nv; j++)
      if (scores[j].priority > 0 && (h < 0 || scores[j].priority > scores[h].priority)) h = j;
    if (h >= 0 && !d.targeted[h]) {
      int best = -1;
      for (int i = 0; i < nw; i++) {
        if (!eligible(&d, i, h)) continue;
        int cur = d.eff[i];
        if (cur >= 0) {
          if (d.holders[cur] < 2 && scores[cur].demanded) continue;  // would drop a variant with demand
          if (!(scores[cur].value + p->hysteresis < scores[h].value)) continue;
        }
        if (best < 0 || better(&d, i, best)) best = i;
      }
      if (best >= 0) record(&d, &reloads[n++], best, h, AC_PL_REPLICA);
    }
  }

  for (int j = 0; j < nv; j++) scores[j].holders_after = d.holders[j];
done:
  free(d.eff);
  free(d.holders);
  free(d.used);
  free(d.targeted);
  return n;
}
