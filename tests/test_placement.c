// test_placement.c - the scheduler's placement decision on hand-made cluster states, and an hour
// of simulated alternating demand to check the anti-thrash bound documented in placement.h.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "placement.h"

#define NOW 1700000000000ull  // unix ms
#define S 1000ull             // one second in ms

static const double EPS = 1e-12;

// A worker that is ready, long resident, unlimited, and holds variant v.
static ac_pl_worker_t wk(const char *id, int v) {
  return (ac_pl_worker_t){.id = id, .variant = v, .ready = true, .resident_since_ms = NOW - 3600 * S, .pending = -1};
}

// A variant used `count` times in the window, last `age_s` seconds ago (< 0: never).
static ac_pl_variant_t var(const char *name, uint64_t count, double age_s) {
  return (ac_pl_variant_t){.name = name, .bytes = 1000, .count = count,
                           .last_use_ms = age_s < 0 ? 0 : NOW - (uint64_t)(age_s * 1000)};
}

static int decide(const ac_pl_variant_t *v, int nv, const ac_pl_worker_t *w, int nw, ac_pl_score_t *s, ac_pl_reload_t *r) {
  ac_pl_params_t p = ac_pl_params_default();
  int n = ac_placement_decide(v, nv, w, nw, NOW, &p, s, r);
  CHECK(n >= 0, "decide: %s", ac_errmsg());
  return n;
}

// --- scores -----------------------------------------------------------------------------------------

static void test_scores(void) {
  // Counts 10 / 5 / 0 / 0 / 2; last uses 30 s, 60 s ago, never, 200 s ago (past the 120 s
  // window), and 5 s in the future (a router's clock ahead of ours).
  ac_pl_variant_t v[5] = {var("a", 10, 30), var("b", 5, 60), var("c", 0, -1), var("d", 0, 200), var("e", 2, 0)};
  v[4].last_use_ms = NOW + 5 * S;
  ac_pl_score_t s[5];
  ac_pl_reload_t r[1];
  decide(v, 5, NULL, 0, s, r);
  // a: Freq 10/10 = 1, Recency 1 - 30/120 = 0.75, Priority 0.7*1 + 0.3*0.75 = 0.925
  CHECK(fabs(s[0].freq - 1.0) < EPS && fabs(s[0].recency - 0.75) < EPS && fabs(s[0].priority - 0.925) < EPS,
        "a: %.6f %.6f %.6f", s[0].freq, s[0].recency, s[0].priority);
  // b: Freq 0.5, Recency 0.5, Priority 0.35 + 0.15 = 0.5
  CHECK(fabs(s[1].freq - 0.5) < EPS && fabs(s[1].recency - 0.5) < EPS && fabs(s[1].priority - 0.5) < EPS,
        "b: %.6f %.6f %.6f", s[1].freq, s[1].recency, s[1].priority);
  // c: never used: all zero, no demand
  CHECK(s[2].freq == 0 && s[2].recency == 0 && s[2].priority == 0 && !s[2].demanded, "c: %.6f", s[2].priority);
  // d: used, but before the window: Recency clipped to 0
  CHECK(s[3].recency == 0 && s[3].priority == 0, "d: %.6f", s[3].recency);
  // e: Freq 0.2, Recency clipped to 1: 0.14 + 0.3 = 0.44
  CHECK(fabs(s[4].freq - 0.2) < EPS && s[4].recency == 1.0 && fabs(s[4].priority - 0.44) < EPS, "e: %.6f", s[4].priority);

  // Other weights and window: w_f 0.5, w_r 0.5, window 60 s: a = 0.5 + 0.5*0.5 = 0.75.
  ac_pl_params_t p = ac_pl_params_default();
  p.w_freq = 0.5;
  p.w_recency = 0.5;
  p.window_s = 60;
  CHECK(ac_placement_decide(v, 5, NULL, 0, NOW, &p, s, r) == 0, "no workers, no reloads");
  CHECK(fabs(s[0].priority - 0.75) < EPS && fabs(s[1].recency) < EPS && fabs(s[1].priority - 0.25) < EPS,
        "weights: %.6f %.6f", s[0].priority, s[1].priority);

  // No requests at all: every Freq is 0 (no division by zero).
  ac_pl_variant_t z[2] = {var("x", 0, -1), var("y", 0, -1)};
  decide(z, 2, NULL, 0, s, r);
  CHECK(s[0].freq == 0 && s[1].freq == 0 && !s[0].demanded, "empty window");

  // Bad input is refused.
  ac_pl_worker_t w = wk("w", 7);
  CHECK(ac_placement_decide(z, 2, &w, 1, NOW, &p, s, r) == AC_EINVAL, "variant index out of range");
}

// --- choosing the worker -----------------------------------------------------------------------------

// ref (reference, no demand), a 0.5ish, b 0.3ish, c lowest, d: all the new demand, unheld.
enum { REF, A, B, C, D, NV };
static void five(ac_pl_variant_t *v) {
  v[REF] = var("ref", 0, -1);
  v[REF].reference = true;
  v[A] = var("a", 6, 10);   // 0.7*0.6  + 0.3*(1-10/120)
  v[B] = var("b", 3, 20);   // 0.7*0.3  + 0.3*(1-20/120)
  v[C] = var("c", 1, 60);   // 0.7*0.1  + 0.3*0.5
  v[D] = var("d", 10, 1);   // 0.7      + 0.3*(1-1/120)
}

static void test_lowest_priority_worker(void) {
  ac_pl_variant_t v[NV];
  five(v);
  ac_pl_worker_t w[4] = {wk("w0", REF), wk("w1", A), wk("w2", C), wk("w3", B)};
  ac_pl_score_t s[NV];
  ac_pl_reload_t r[4];
  int n = decide(v, NV, w, 4, s, r);
  CHECK(s[C].priority < s[B].priority && s[B].priority < s[A].priority && s[A].priority < s[D].priority, "fixture order");
  CHECK(n == 1 && r[0].worker == 2 && r[0].variant == D && r[0].from == C && r[0].why == AC_PL_DEMAND,
        "d goes to the lowest-priority worker w2 (c): n=%d w=%d", n, n ? r[0].worker : -1);
  CHECK(n == 1 && strstr(r[0].reason, "d priority") && strstr(r[0].reason, "hysteresis"), "reason: %s", n ? r[0].reason : "");
  CHECK(s[REF].pinned && s[REF].holders == 1 && s[D].holders == 0 && s[D].holders_after == 1 && s[C].holders_after == 0,
        "holders");
  // The reference (priority 0, lowest of all) is never the one chosen: it is implicitly pinned.
  CHECK(s[REF].priority == 0, "ref has no demand");

  // The same with the order of the workers shuffled: still the holder of c.
  ac_pl_worker_t w2[4] = {w[3], w[2], w[1], w[0]};
  n = decide(v, NV, w2, 4, s, r);
  CHECK(n == 1 && r[0].worker == 1 && r[0].variant == D, "shuffled: worker %d", n ? r[0].worker : -1);
}

static void test_pinned_sole_holder(void) {
  ac_pl_variant_t v[NV];
  five(v);
  ac_pl_score_t s[NV];
  ac_pl_reload_t r[4];
  // Only w0 (ref, priority 0) and w1 (a): d must take w1, never the reference's only holder.
  ac_pl_worker_t w[2] = {wk("w0", REF), wk("w1", A)};
  int n = decide(v, NV, w, 2, s, r);
  CHECK(n == 1 && r[0].worker == 1 && r[0].variant == D, "w1 chosen, not the pinned w0");
  // Pin a too: nothing may move, and d is starved.
  v[A].pinned = true;
  n = decide(v, NV, w, 2, s, r);
  CHECK(n == 0 && s[D].starved, "pinned sole holders stay: n=%d", n);
  // With a second holder of the reference, one of them is a replica and may go (keep value 0).
  ac_pl_worker_t w3[3] = {wk("w0", REF), wk("w1", A), wk("w2", REF)};
  n = decide(v, NV, w3, 3, s, r);
  CHECK(n == 1 && (r[0].worker == 0 || r[0].worker == 2) && r[0].variant == D && s[REF].holders_after == 1,
        "a replica of a pinned variant may go");
}

static void test_ineligible_workers(void) {
  ac_pl_variant_t v[NV];
  five(v);
  ac_pl_score_t s[NV];
  ac_pl_reload_t r[4];
  // w2 holds c (lowest) but is in turn: drained, not ready, too young, too small, pending,
  // cooling down. Each time the next lowest (w3, b) is chosen instead.
  for (int k = 0; k < 6; k++) {
    ac_pl_worker_t w[4] = {wk("w0", REF), wk("w1", A), wk("w2", C), wk("w3", B)};
    const char *what = "";
    switch (k) {
      case 0: w[2].drained = true; what = "drained"; break;
      case 1: w[2].ready = false; what = "not ready"; break;
      case 2: w[2].resident_since_ms = NOW - 9 * S; what = "resident 9 s < 10 s"; break;
      case 3: w[2].capacity_bytes = 999; what = "capacity 999 < 1000 bytes"; break;
      case 4: w[2].pending = C; what = "reload pending"; break;
      case 5: w[2].cooldown = true; what = "cooldown"; break;
    }
    int n = decide(v, NV, w, 4, s, r);
    CHECK(n >= 1 && r[0].worker == 3 && r[0].variant == D, "%s: worker %d chosen", what, n ? r[0].worker : -1);
    for (int i = 0; i < n; i++) CHECK(r[i].worker != 2, "%s worker w2 never chosen", what);
  }
  // A drained worker's variant has no holder: c then needs someone (none can: c's priority is
  // the lowest), and d still takes b's worker.
  ac_pl_worker_t w[4] = {wk("w0", REF), wk("w1", A), wk("w2", C), wk("w3", B)};
  w[2].drained = true;
  decide(v, NV, w, 4, s, r);
  CHECK(s[C].holders == 0 && s[C].starved, "drained holder does not count");
  // Exactly at the residency limit is old enough; capacity equal to the size is enough.
  ac_pl_worker_t w2[4] = {wk("w0", REF), wk("w1", A), wk("w2", C), wk("w3", B)};
  w2[2].resident_since_ms = NOW - 10 * S;
  w2[2].capacity_bytes = 1000;
  int n = decide(v, NV, w2, 4, s, r);
  CHECK(n == 1 && r[0].worker == 2, "limits are inclusive");
  // Everyone too young: nothing moves.
  for (int i = 0; i < 4; i++) w2[i].resident_since_ms = NOW - 2 * S;
  n = decide(v, NV, w2, 4, s, r);
  CHECK(n == 0 && s[D].starved, "all too young");
}

static void test_hysteresis(void) {
  ac_pl_score_t s[3];
  ac_pl_reload_t r[2];
  // ref on w0; w1 holds a. b is unheld. Priorities through counts only (no recency):
  // a = 0.7 * 5/8 = 0.4375; b = 0.7 * 8/8 = 0.7 -> 0.4375 + 0.15 < 0.7: swap.
  ac_pl_variant_t v[3] = {var("ref", 0, -1), var("a", 5, -1), var("b", 8, -1)};
  v[0].reference = true;
  ac_pl_worker_t w[2] = {wk("w0", 0), wk("w1", 1)};
  int n = decide(v, 3, w, 2, s, r);
  CHECK(n == 1 && r[0].worker == 1 && r[0].variant == 2, "clear gap: swap");
  // a = 0.7 * 7/8 = 0.6125; 0.6125 + 0.15 = 0.7625 > 0.7: blocked.
  v[1].count = 7;
  n = decide(v, 3, w, 2, s, r);
  CHECK(n == 0 && s[2].starved, "near-equal: no swap (%d)", n);
  // Equal priorities: blocked as well.
  v[1].count = 8;
  n = decide(v, 3, w, 2, s, r);
  CHECK(n == 0, "equal: no swap");
  // Hysteresis 0 lets the strictly better one in; with equal priorities still nothing moves.
  ac_pl_params_t p = ac_pl_params_default();
  p.hysteresis = 0;
  v[1].count = 7;
  CHECK(ac_placement_decide(v, 3, w, 2, NOW, &p, s, r) == 1, "hysteresis 0: swap");
  v[1].count = 8;
  CHECK(ac_placement_decide(v, 3, w, 2, NOW, &p, s, r) == 0, "hysteresis 0, equal: no swap");
}

static void test_pins_wanted_and_free(void) {
  ac_pl_variant_t v[NV];
  five(v);
  ac_pl_score_t s[NV];
  ac_pl_reload_t r[4];
  // The reference has no holder: it takes the lowest worker even though its priority is 0.
  ac_pl_worker_t w[3] = {wk("w0", A), wk("w1", C), wk("w2", D)};
  int n = decide(v, NV, w, 3, s, r);
  CHECK(n >= 1 && r[0].why == AC_PL_PIN && r[0].variant == REF && r[0].worker == 1, "reference restored on w1");
  CHECK(n >= 1 && strstr(r[0].reason, "reference ref has no holder"), "reason: %s", n ? r[0].reason : "");
  // A wanted variant (a router holds tasks for it) comes right after pins, beats any unwanted
  // priority, but not a pin: c has no demand at all, b is wanted.
  v[B] = var("b", 0, -1);
  v[B].wanted_ms = NOW - 2 * S;
  ac_pl_worker_t w2[3] = {wk("w0", REF), wk("w1", D), wk("w2", A)};
  n = decide(v, NV, w2, 3, s, r);
  CHECK(n == 1 && r[0].why == AC_PL_WANTED && r[0].variant == B && r[0].worker == 2, "wanted b takes a's worker (a < d)");
  CHECK(s[B].wanted && s[B].value >= 2, "wanted value");
  // Wanted 6 s ago: stale, b has no demand, nothing moves.
  v[B].wanted_ms = NOW - 6 * S;
  n = decide(v, NV, w2, 3, s, r);
  CHECK(n == 0 && !s[B].wanted, "stale want");
  // Several free workers take several variants in one decision, one reload per variant.
  five(v);
  ac_pl_worker_t w3[4] = {wk("w0", REF), wk("w1", -1), wk("w2", -1), wk("w3", -1)};
  n = decide(v, NV, w3, 4, s, r);
  int got[NV] = {0};
  for (int i = 0; i < n; i++) got[r[i].variant]++;
  CHECK(n == 3 && got[D] == 1 && got[A] == 1 && got[B] == 1 && got[C] == 0, "free workers: d, a, b (n=%d)", n);
  CHECK(n == 3 && r[0].variant == D && r[1].variant == A && r[2].variant == B, "highest priority first");
}

static void test_replication(void) {
  ac_pl_score_t s[4];
  ac_pl_reload_t r[4];
  // ref (pinned), a (busy), b (no demand), c (small demand). Workers: ref, a, b, nothing.
  ac_pl_variant_t v[4] = {var("ref", 0, -1), var("a", 10, 1), var("b", 0, -1), var("c", 1, 100)};
  v[0].reference = true;
  ac_pl_worker_t w[4] = {wk("w0", 0), wk("w1", 1), wk("w2", 2), wk("w3", -1)};
  // c (priority 0.07 + 0.3 * (1 - 100/120) = 0.12) has no holder: the empty w3 covers it
  // (-1 + 0.15 < 0.12). Then 4 live workers serve 3 demanded variants (ref, a, c): w2's b has no
  // demand, so w2 replicates a, the busiest, in the same decision.
  int n = decide(v, 4, w, 4, s, r);
  CHECK(n == 2 && r[0].worker == 3 && r[0].variant == 3 && r[0].why == AC_PL_DEMAND, "empty worker covers c");
  CHECK(n == 2 && r[1].worker == 2 && r[1].variant == 1 && r[1].why == AC_PL_REPLICA, "spare b worker replicates a");
  CHECK(fabs(s[3].priority - 0.12) < EPS, "c: %.6f", s[3].priority);
  // While those reloads are pending nothing more happens.
  w[3].pending = 3;
  w[2].pending = 1;
  n = decide(v, 4, w, 4, s, r);
  CHECK(n == 0 && s[1].holders == 2, "pending reloads count as held (n=%d)", n);
  w[3].variant = 3;
  w[3].pending = w[2].pending = -1;
  // With b in demand too there is no spare worker: nothing moves (c is not dropped either).
  v[2] = var("b", 1, 100);
  n = decide(v, 4, w, 4, s, r);
  CHECK(n == 0, "no spare worker, no replica (n=%d)", n);
  // Replicas are given back to a variant with demand that has no holder: x,x,y + z.
  ac_pl_variant_t u[4] = {var("x", 10, 1), var("y", 5, 1), var("z", 6, 1), var("ref", 0, -1)};
  u[3].reference = true;
  ac_pl_worker_t q[4] = {wk("q0", 0), wk("q1", 0), wk("q2", 1), wk("q3", 3)};
  n = decide(u, 4, q, 4, s, r);
  CHECK(n == 1 && (r[0].worker == 0 || r[0].worker == 1) && r[0].variant == 2, "z takes a replica of x, not y");
}

// --- an hour of alternating demand -----------------------------------------------------------

typedef struct {
  int reloads;
  double min_gap_s;  // shortest time between two reloads of the same worker
  double ref_lost_at_s;  // when the reference had no holder (0: never)
} sim_result_t;

// Workers: w0 holds the reference (pinned); n_flex others start on variant 1. Demand: `rate`
// requests/s for variant 1 or 2, switching every `period_s`. Reloads take 2 s. Demand is counted
// in 10-second buckets as the routers do, and the scheduler decides every 0.5 s.
static sim_result_t simulate(int n_flex, double period_s, double hours) {
  enum { NVAR = 3, MAXW = 8, NB = 4096 };
  const ac_pl_params_t p = ac_pl_params_default();
  ac_pl_variant_t v[NVAR] = {{.name = "ref", .bytes = 100, .reference = true}, {.name = "a", .bytes = 50}, {.name = "b", .bytes = 50}};
  ac_pl_worker_t w[MAXW];
  uint64_t done_at[MAXW], last_reload[MAXW];
  int nw = 1 + n_flex;
  uint64_t t0 = NOW;
  for (int i = 0; i < nw; i++) {
    w[i] = (ac_pl_worker_t){.id = "w", .variant = i == 0 ? 0 : 1, .ready = true, .resident_since_ms = t0, .pending = -1};
    done_at[i] = 0;
    last_reload[i] = 0;
  }
  static uint32_t bucket[NB][NVAR];
  memset(bucket, 0, sizeof bucket);
  sim_result_t res = {0, 1e9, 0};
  const double rate = 4;  // requests per second
  double owed = 0;
  for (uint64_t now = t0; now < t0 + (uint64_t)(hours * 3600e3); now += 500) {
    // Requests in the last 0.5 s.
    int fav = 1 + (int)((double)(now - t0) / 1000.0 / period_s) % 2;
    owed += rate * 0.5;
    uint64_t b = (now / 10000) % NB;
    if (now % 10000 == 0) memset(bucket[b], 0, sizeof bucket[b]);
    while (owed >= 1) {
      bucket[b][fav]++;
      v[fav].last_use_ms = now;
      owed -= 1;
    }
    // Window counts: buckets (now - window)/10 .. now/10, as the scheduler reads them.
    uint64_t lo = (now - (uint64_t)(p.window_s * 1000)) / 10000, hi = now / 10000;
    for (int j = 0; j < NVAR; j++) {
      v[j].count = 0;
      for (uint64_t t = lo; t <= hi; t++) v[j].count += bucket[t % NB][j];
    }
    // Reloads finish.
    for (int i = 0; i < nw; i++)
      if (w[i].pending >= 0 && now >= done_at[i]) {
        w[i].variant = w[i].pending;
        w[i].pending = -1;
        w[i].ready = true;
        w[i].resident_since_ms = now;
      }
    ac_pl_score_t s[NVAR];
    ac_pl_reload_t r[MAXW];
    int n = ac_placement_decide(v, NVAR, w, nw, now, &p, s, r);
    if (n < 0) {
      res.reloads = 1 << 30;
      break;
    }
    for (int k = 0; k < n; k++) {
      int i = r[k].worker;
      w[i].pending = r[k].variant;
      w[i].ready = false;
      done_at[i] = now + 2000;
      if (last_reload[i]) {
        double gap = (double)(now - last_reload[i]) / 1000.0;
        if (gap < res.min_gap_s) res.min_gap_s = gap;
      }
      last_reload[i] = now;
      res.reloads++;
    }
    // The reference keeps its holder throughout.
    int ref_holders = 0;
    for (int i = 0; i < nw; i++) ref_holders += (w[i].pending >= 0 ? w[i].pending : w[i].variant) == 0;
    if (ref_holders < 1 && !res.ref_lost_at_s) res.ref_lost_at_s = (double)(now - t0) / 1000.0;
  }
  return res;
}

static void test_thrash_bound(void) {
  // 60 s alternation, one flexible worker: one reload per flip at most (60 flips in the hour,
  // plus the first), and never two reloads of a worker within min residency.
  sim_result_t r = simulate(1, 60, 1.0);
  printf("alternating every 60 s, 2 workers: %d reloads in an hour, shortest gap %.1f s\n", r.reloads, r.min_gap_s);
  CHECK(r.reloads <= 61, "60 s alternation: %d reloads > 61", r.reloads);
  CHECK(r.reloads >= 30, "60 s alternation: demand should still be followed (%d reloads)", r.reloads);
  CHECK(r.ref_lost_at_s == 0, "the reference lost its holder at %.1f s", r.ref_lost_at_s);
  CHECK(r.reloads < 2 || r.min_gap_s >= 10, "min residency: gap %.1f s", r.min_gap_s);
  // Alternating every second: an even mix, near-equal priorities; hysteresis holds.
  r = simulate(1, 1, 1.0);
  printf("alternating every 1 s, 2 workers: %d reloads in an hour\n", r.reloads);
  CHECK(r.reloads <= 2, "1 s alternation: %d reloads > 2", r.reloads);
  // Every 10 s: hysteresis and the 120 s window smooth it out.
  r = simulate(1, 10, 1.0);
  printf("alternating every 10 s, 2 workers: %d reloads in an hour\n", r.reloads);
  CHECK(r.reloads <= 2, "10 s alternation: %d reloads > 2", r.reloads);
  // Three flexible workers: a and b both stay held, plus a replica that may follow the flips.
  r = simulate(3, 60, 1.0);
  printf("alternating every 60 s, 4 workers: %d reloads in an hour, shortest gap %.1f s\n", r.reloads, r.min_gap_s);
  CHECK(r.reloads <= 61, "4 workers: %d reloads > 61", r.reloads);
  CHECK(r.reloads < 2 || r.min_gap_s >= 10, "min residency (4 workers): gap %.1f s", r.min_gap_s);
  // The absolute bound: at most 3600 / min residency per worker, whatever the period.
  for (double period = 5; period <= 300; period *= 2) {
    r = simulate(2, period, 1.0);
    CHECK(r.reloads <= 2 * 360 && (r.reloads < 2 || r.min_gap_s >= 10) && r.ref_lost_at_s == 0,
          "period %.0f: %d reloads, gap %.1f", period, r.reloads, r.min_gap_s);
  }
}

int main(void) {
  test_scores();
  test_lowest_priority_worker();
  test_pinned_sole_holder();
  test_ineligible_workers();
  test_hysteresis();
  test_pins_wanted_and_free();
  test_replication();
  test_thrash_bound();
  return check_report();
}
