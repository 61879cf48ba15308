// router.h - the router's shared state: the tasks it holds and the process around them.
//
// One thread, one event loop (router.c): the front ROUTER socket, one DEALER per worker, their
// monitors, and a tick every 100 ms that reads the worker table and settings from Redis and
// writes the counters. A task is accepted once it is validated, tokenized and a variant chosen;
// from then on it is in `active` until exactly one Result or Error has been sent for it.
#ifndef AC_ROUTER_ROUTER_H
#define AC_ROUTER_ROUTER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "amap.h"
#include "catalog.h"
#include "gguf.h"
#include "msg.h"
#include "policy.h"
#include "rds.h"
#include "settings.h"
#include "stats.h"
#include "tokenizer.h"
#include "workers.h"

typedef struct rt_task {
  uint64_t seq;                 // receipt order (FIFO among equal priorities)
  // The client: routing frames to answer with, and its envelope (which owns the Task).
  int nroute;
  size_t route_len[AC_MSG_MAX_PARTS];
  uint8_t *route;               // the frames back to back
  ac_env_t *env;
  const char *client_id;        // env->task->id, never NULL
  // What the router made of it.
  int32_t *ids;                 // prompt tokens (NULL without a tokenizer: the worker tokenizes)
  int n_ids;
  uint32_t max_tokens;          // resolved (the default for 0)
  ac_choice_t choice;
  char must[64];                // after a lost streamed attempt: only this variant may resume
  // Times (monotonic ms).
  double received, dispatched, deadline;  // deadline 0: none
  double queued_since;          // 0 while not queued
  bool waited;                  // it has been in the queue (its overhead is not measured)
  bool needs_reload;            // the last dispatch found no live worker able to serve it
  bool queued_for_reload;       // it waited for a reload at some point (stats)
  // The current attempt.
  uint64_t key;                 // attempt number in "<router id>/<key>" (0: none)
  rt_worker_t *w;
  char served_variant[64];      // the variant of the worker it went to
  int attempts;
  uint32_t streamed;            // tokens relayed to the client so far
  int active_i, queue_i;        // positions in the router's arrays (queue_i -1: not queued)
} rt_task_t;

typedef struct {
  // Options.
  char id[200];
  char listen[512];
  int ctx_default;
  double drain_ms;
  // Shared services.
  ac_config_t *cfg;
  ac_rds_t *rds;
  void *zctx, *front;
  rt_workers_t wt;
  rt_stats_t *stats;
  ac_catalog_t cat;
  char *cat_json;               // the text the catalog was parsed from (Redis), to skip re-parsing
  ac_gguf_t *gguf;              // the tokenizer's file (for the chat template)
  ac_tokenizer_t *tok;
  // Tasks.
  rt_task_t **active;
  int n_active, cap_active;
  rt_task_t **queue;
  int n_queue, cap_queue;
  rt_amap_t amap;               // attempt number -> task
  uint64_t counter, seq;
  double next_timer;            // earliest deadline or queue timeout (monotonic ms)
  // Settings, read each tick.
  double max_queue, queue_timeout_ms, default_max_tokens, max_attempts, max_msg_bytes, timeout_ms;
  double window_s, price_per_hour;
  ac_policy_t *policy;
  char policy_warned[320];      // the last fallback warning, so it is logged once
  // Loop.
  unsigned ticks;
  double wanted_at;             // last refresh of <prefix>wanted for queued tasks
  bool stopping;
  double stop_deadline;
  bool kick;                    // something changed that may let queued tasks go
} rt_router_t;

// Re-reads the settings (each tick, and once before the loop): limits, timeouts, the policy.
void rt_router_read_settings(rt_router_t *R);
// Serves until *stop is set (SIGTERM, SIGINT), then drains: queued tasks are answered DRAINING at
// once, in-flight ones get drain_ms to finish. Returns 0, or 1 on a fatal error.
int rt_router_run(rt_router_t *R, volatile sig_atomic_t *stop);
// Frees whatever tasks are left (none after rt_router_run) and the task tables.
void rt_router_free_tasks(rt_router_t *R);

#endif
