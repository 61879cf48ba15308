// acbench.h - what acbench.c (the replay from labels) and acbench_replay.c (the replay against a
// running cluster) share: the labels, the evaluated tasks and the policies' choices.
#ifndef AC_ACBENCH_H
#define AC_ACBENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "controller.h"
#include "workload.h"

#define MAX_V AC_CTRL_MAX_VARIANTS
#define MAX_CTRL 16

typedef struct {
  bool have;
  bool success;
  int8_t correct;  // 1, 0, -1 null
  double measured, modelled;
  char *answer;    // the reference variant's answer (other variants: NULL)
  size_t answer_len;
} label_t;

// A policy replayed against the cluster: latency, reloads, cache hits, from the Results.
typedef struct {
  bool done;
  long tasks, errors, successes, correct, correct_n, hits, upgraded, waited, switches, pairs;
  double measured;        // sum of Result.cost (worker busy seconds x price)
  double p50, p90, p99;   // latency, ms: Task sent -> Result received
  double wall_s;          // the whole replay
  long reloads;           // the scheduler's reload counter, after - before (-1: no Redis)
} replay_t;

typedef struct {
  char name[128];
  char kind[16];      // reference, uniform, random, oracle, controller, cluster
  int *choice;        // per evaluated task: variant index (-1: the cluster's own policy chooses)
  float *complexity;  // controllers only
  long fallbacks;
  // results
  double measured, modelled;
  long successes, correct, correct_n, switches, pairs;
  double pearson;     // NAN when not defined
  bool pareto;
  long count[MAX_V];
  replay_t replay;
} policy_t;

typedef struct {
  ac_workload_t w;
  int V, ref;
  char vname[MAX_V][64];
  int n;            // evaluated tasks
  int *task;        // their indices in the workload
  label_t *lab;     // n_workload × MAX_V
  double *meas_cx;  // per evaluated task
  int n_pol;
  policy_t pol[9 + 2 * MAX_V + MAX_CTRL];
  // Against the cluster: the policies replayed, in replay order, and "cluster" (the router's
  // own policy, every task sent with no variant forced; not scored from the labels).
  int n_rep;
  policy_t *rep[10 + 2 * MAX_V + MAX_CTRL];
  policy_t cluster;
} bench_t;

typedef struct {
  const char *router;   // tcp://HOST:PORT of a router
  const char *redis;    // HOST:PORT, NULL: no reload counts
  const char *prefix;   // Redis key prefix ("ac:")
  int concurrency;      // workflows in flight at once
  int limit;            // replay the first `limit` evaluated tasks (0: all)
  double timeout_ms;    // give up on a task after this long without an answer
} replay_opts_t;

// Replays policy p against the cluster: the evaluated tasks (the first o->limit), workflows in
// file order, up to o->concurrency workflows at once and the steps of each one after another
// (an agent waits for a step's answer before the next). Each task is forced to p->choice[i]'s
// variant, or left to the cluster's policy when it is -1. Fills p->replay. Success: the answer
// judged against the reference's answer in the labels by the task's checker.
int acb_replay(const bench_t *b, policy_t *p, const replay_opts_t *o);

#endif
