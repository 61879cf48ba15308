// registry.h - the worker's side of Redis, on a thread of its own.
//
// Every worker.heartbeat_ms the thread writes <prefix>worker:<id> (the last WorkerInfo the
// serving loop published, with PX worker.timeout_ms) and SADDs <prefix>workers, reads whether
// <prefix>drain holds the id, pops one reload command from <prefix>cmd:<id> when the loop can
// take one, pushes reload acks onto <prefix>acks, and re-reads <prefix>config. A slow or hung
// Redis (each command may take up to its 1 s timeout) therefore never stalls token generation,
// and a long model load does not stop the heartbeat.
//
// The serving loop and the thread exchange only copies, under one mutex.
#ifndef AC_WORKER_REGISTRY_H
#define AC_WORKER_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rds.h"
#include "settings.h"

typedef struct wreg wreg_t;

// The runtime settings the serving loop reads, as last seen by the thread.
typedef struct {
  double default_max_tokens;  // router.default_max_tokens
  double max_msg_bytes;       // router.max_msg_bytes
  double usd_per_hour;        // price.usd_per_hour
} wreg_cfg_t;

// Takes ownership of rds and cfg (the thread refreshes cfg from Redis) and starts the thread.
int wreg_start(ac_rds_t **rds, ac_config_t **cfg, const char *id, wreg_t **out);

// Hands over the latest serialized Envelope{worker_info} (the buffer is taken over), and whether
// a reload command may be popped now. The thread writes it at once; without new publications it
// rewrites the last one every heartbeat_ms (for at most a minute: then the loop must be stuck).
void wreg_publish(wreg_t *r, uint8_t *info, size_t len, bool want_cmd);

// What the thread learned since the last call: *drain is -1 (not known yet), 0 or 1; *cmd a
// popped command (malloc'ed; NULL if none); *cfg the current settings.
void wreg_poll(wreg_t *r, int *drain, uint8_t **cmd, size_t *cmd_len, wreg_cfg_t *cfg);

// Queues a serialized Envelope{reload_ack} for <prefix>acks (the buffer is taken over). Acks wait
// while Redis is away (the oldest are dropped past a few dozen).
void wreg_ack(wreg_t *r, uint8_t *buf, size_t len);

// Stops the thread. With `unregister`, writes the acks still queued and removes the worker
// (DEL <prefix>worker:<id>, SREM <prefix>workers id).
void wreg_stop(wreg_t **self_p, bool unregister);

#endif
