// stats.h - what a router counts, and what it tells Redis.
//
// Everything a task adds to Redis (demand, last use, wanted, the stats and served hashes) is
// summed here in memory and written once per tick in the tick's pipeline, after the task was
// dispatched: serving never waits on Redis, and while Redis is away the sums keep growing and go
// out when it is back. The router overhead (receipt -> dispatch of a task that did not wait) is
// kept for the last 10000 tasks for the "stats" admin command.
#ifndef AC_ROUTER_STATS_H
#define AC_ROUTER_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "rds.h"

// Totals since start; the ones named as in <prefix>stats are also added there.
typedef struct {
  uint64_t received;           // frames on the front socket
  uint64_t bad_messages;       // answered BAD_MESSAGE, VERSION or TOO_BIG before being a task
  uint64_t tasks, ok, errors, retries, prompt_tokens, completion_tokens;
  uint64_t exact, upgraded, queued_for_reload;
  double cost_usd;
  uint64_t by_code[16];        // errors answered, by ErrorCode
} rt_counters_t;

// One answered task, for the counters.
typedef struct {
  bool ok;
  int code;                    // ErrorCode when !ok
  int attempts;
  uint32_t prompt_tokens, completion_tokens;
  double cost_usd;
  const char *requested;       // the chosen variant ("" or NULL: unknown)
  const char *served;          // the variant that answered (ok only)
  bool was_queued;             // it waited for a worker that could serve it
} rt_answer_t;

typedef struct rt_stats rt_stats_t;

int rt_stats_new(rt_stats_t **out);
void rt_stats_destroy(rt_stats_t **self_p);

const rt_counters_t *rt_stats_counters(const rt_stats_t *s);
void rt_stats_received(rt_stats_t *s);
void rt_stats_bad_message(rt_stats_t *s, int code);
// A task was accepted and `variant` chosen for it at unix time now_ms: demand and last use.
void rt_stats_demand(rt_stats_t *s, const char *variant, uint64_t now_ms);
// Tasks for `variant` wait for a reload.
void rt_stats_wanted(rt_stats_t *s, const char *variant, uint64_t now_ms);
void rt_stats_answer(rt_stats_t *s, const rt_answer_t *a, double now_mono_ms);
// Receipt -> dispatch of one task, in microseconds.
void rt_stats_overhead(rt_stats_t *s, double us);

// Appends the pending writes to a pipeline the caller has begun (ac_rds_begin) and forgets them;
// returns how many commands were appended (the caller reads that many replies). window_s is
// sched.window_s (demand buckets expire window + 20 s after their last write).
int rt_stats_append(rt_stats_t *s, ac_rds_t *r, int window_s);
bool rt_stats_pending(const rt_stats_t *s);

// The "stats" admin answer: counters, overhead p50/p99/max over the last 10000 dispatches,
// tasks/s. `extra` (may be NULL) is a jansson object merged in (the caller's live state).
// Returns malloc'ed JSON text or NULL.
char *rt_stats_json(rt_stats_t *s, double now_mono_ms, json_t *extra);

#endif
