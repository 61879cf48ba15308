// placement.h - which worker should hold which variant: the scheduler's decision, as a pure
// function (no I/O, no clock, no Redis), so that it can be tested on hand-made states and
// replayed over simulated hours.
//
// --- Scores ----------------------------------------------------------------------------------
// For every variant v, over the sliding window of `window_s` seconds ending at `now`:
//   Freq(v)     = count(v) / max_u count(u)             in [0,1]; 0 when nothing was asked for
//   Recency(v)  = 1 - (now - last_use(v)) / window       clipped to [0,1]; 0 if never used
//   Priority(v) = w_freq * Freq(v) + w_recency * Recency(v)
// A variant is *wanted* when a router marked it within the last `wanted_s` seconds (it holds
// tasks that no loaded variant may serve). A variant is *pinned* when an operator pinned it or
// it is the catalog's reference variant (always implicitly pinned). A variant is *demanded*
// when it is pinned, wanted, or has Priority > 0.
//
// Each variant's *value* orders the work: Priority, plus 2 when it is wanted (so a wanted
// variant outranks every unwanted one; weights are at most 1 each, so Priority <= 2).
//
// --- Holders -----------------------------------------------------------------------------------
// A worker's *effective* variant is the one a pending reload will give it, else the one it
// holds. Holders(v) counts the workers, drained ones excepted, whose effective variant is v: a
// drained worker is on its way out and serves nothing new, so its variant needs another holder.
//
// --- Eligible workers -----------------------------------------------------------------------
// A worker may be told to reload only when it is: ready; not drained; not in cooldown (a recent
// reload of it failed); without a pending reload; able to hold the variant (capacity_bytes 0 =
// unlimited, else >= the variant's bytes); resident for at least `min_residency_s` (a worker
// holding nothing is always resident enough); and not the only holder of a pinned variant.
// Its *keep value* is what reloading it would cost: -1 when it holds nothing (or a variant not
// in the catalog), 0 when another worker also holds its variant (a replica: no variant loses
// its last holder), else the value of its variant.
//
// --- Rules, in order ----------------------------------------------------------------------------
// 1. Cover: every demanded variant with no holder gets one worker, taken in this order: pinned
//    variants first, then by value, highest first (so wanted ones come right after the pins).
//    The worker is the eligible one with the LOWEST keep value (ties: lower Priority of its
//    variant, then resident longest, then input order), and it must satisfy
//        keep + hysteresis < value(new)
//    except for a pinned variant, which takes the lowest eligible worker whatever its keep. A
//    demanded variant that finds no worker is reported `starved`.
// 2. Replicate: when the live workers (ready, not drained) outnumber the demanded variants, one
//    more eligible worker may move to the variant of highest Priority h, provided that drops no
//    variant with demand (its variant has another holder, or no demand at all) and
//        value(its variant) + hysteresis < value(h).
// At most one reload per variant per decision, and a worker gets at most one reload per
// decision; several free workers may take several variants in one decision.
//
// --- Anti-thrash: the bound ---------------------------------------------------------------------
// A worker is reloaded at most once per `min_residency_s` (its residency restarts with every
// reload, and a pending reload makes it ineligible): with the defaults (10 s) that is at most
// 3600 / 10 = 360 reloads per worker per hour whatever the demand does. Hysteresis makes the
// real number far smaller: a swap between two variants with demand needs a Priority gap over
// `hysteresis`. tests/test_placement.c simulates an hour (decisions every 0.5 s, 4 requests/s,
// 10-second demand buckets, 2 s reloads) and asserts:
//   - demand alternating between two variants every 60 s (60 flips), one flexible worker beside
//     the reference's: <= 61 reloads, one per flip plus the first (measured 57), >= 10 s apart;
//   - the same with three flexible workers: <= 61 (measured 58);
//   - demand alternating every 1 s or every 10 s (an even mix over the window): <= 2 (measured 0);
//   - any period from 5 s to 5 min: <= 360 per worker, never two reloads of a worker < 10 s apart,
//     and the reference never without a holder.
#ifndef AC_PLACEMENT_H
#define AC_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
  const char *name;      // borrowed; used in reasons only
  uint64_t bytes;        // what a worker needs to hold it
  bool pinned;           // an operator pinned it (acctl pin)
  bool reference;        // the catalog's reference variant: implicitly pinned
  uint64_t count;        // requests in the window
  uint64_t last_use_ms;  // unix ms of the last request; 0 = never
  uint64_t wanted_ms;    // unix ms a router last asked for it; 0 = never
} ac_pl_variant_t;

typedef struct {
  const char *id;              // borrowed; used in reasons only
  int variant;                 // index into the variants; -1 = none, or not in the catalog
  bool ready;                  // reports WORKER_READY
  bool drained;                // an operator drained it (or it is draining)
  bool cooldown;               // a recent reload of it failed: leave it alone for now
  uint64_t capacity_bytes;     // 0 = unlimited
  uint64_t resident_since_ms;  // when it finished loading its variant (unix ms)
  int pending;                 // -1: none; else the variant a reload in flight will give it
} ac_pl_worker_t;

typedef struct {
  double w_freq, w_recency;  // sched.w_freq, sched.w_recency
  double window_s;           // sched.window_s
  double min_residency_s;    // sched.min_residency_s
  double hysteresis;         // sched.hysteresis
  double wanted_s;           // how long a router's "wanted" mark counts (5 s)
} ac_pl_params_t;

// The settings table's defaults.
ac_pl_params_t ac_pl_params_default(void);

typedef struct {
  double freq, recency, priority;  // as above
  double value;                    // priority, + 2 when wanted
  int holders;                     // effective holders before this decision
  int holders_after;               // ... and once its reloads are done
  bool pinned;                     // pinned or the reference
  bool wanted;
  bool demanded;
  bool starved;                    // demanded, no holder, and no worker could be given to it
} ac_pl_score_t;

typedef enum {
  AC_PL_PIN = 0,   // a pinned variant had no holder
  AC_PL_WANTED,    // a router waits for it
  AC_PL_DEMAND,    // it has demand and no holder
  AC_PL_REPLICA,   // a spare worker takes the busiest variant
} ac_pl_why_t;

typedef struct {
  int worker;       // index into the workers
  int variant;      // index of the variant it is to load
  int from;         // the variant it holds now (-1 none)
  ac_pl_why_t why;
  char reason[256]; // "scheduler: int4 priority 0.82 > f16 0.10 + hysteresis 0.15 (no holder)"
} ac_pl_reload_t;

// Scores every variant into scores[nv] and writes the reloads into reloads[nw] (room for one per
// worker). Returns how many reloads (>= 0), AC_EINVAL for bad arguments (a variant index out of
// range) or AC_ENOMEM.
int ac_placement_decide(const ac_pl_variant_t *variants, int nv, const ac_pl_worker_t *workers, int nw,
                        uint64_t now_ms, const ac_pl_params_t *p, ac_pl_score_t *scores, ac_pl_reload_t *reloads);

const char *ac_pl_why_name(ac_pl_why_t why);

#endif
