// workers.h - the router's view of the worker pool.
//
// Built from Redis (<prefix>workers, <prefix>worker:<id>, <prefix>drain) every tick, and kept
// as it was while Redis is unreachable. Each worker gets one ZeroMQ DEALER (routing id = this
// router's id, so every router is its own peer at the worker) and a socket monitor on it: a
// worker killed with SIGKILL closes its TCP connection at once, which the monitor reports as
// DISCONNECTED long before its heartbeat key expires.
//
// A worker is usable (may receive a task) when its key is listed and fresh, its connection is up
// (handshake done), it is READY and not drained. The router decides what to do with the tasks of
// a worker that stops being usable; this module only keeps the table.
#ifndef AC_ROUTER_WORKERS_H
#define AC_ROUTER_WORKERS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct rt_worker {
  char id[128];
  char endpoint[256];
  char variant[64];       // "" while none is loaded
  int state;              // Agentcompress__WorkerState
  uint32_t slots, busy, queued, n_ctx;
  bool drain;             // in <prefix>drain, or WorkerInfo.drain
  bool held_back;         // it answered DRAINING: no new tasks until a later heartbeat says READY
  uint64_t held_at_ms;    // unix ms of that answer
  double held_mono;
  uint64_t updated_at_ms; // WorkerInfo.updated_at_ms as last read
  double fresh_mono;      // our monotonic time when updated_at_ms last changed (staleness is
                          // measured on our own clock, so clock skew between hosts does not matter)
  bool listed;            // its key was there at the last successful read
  double unlisted_mono;   // when it was first found missing (0 while listed)
  bool expired;           // its id is in <prefix>workers but its key is gone: the TTL ran out.
                          // (Both gone at once is what a Redis restart looks like.)
  bool stale_reported;    // the router has already failed its tasks for staleness
  // Sockets.
  void *sock;             // DEALER connected to endpoint
  void *mon;              // PAIR receiving sock's monitor events
  bool connected;         // handshake done and no disconnect since
  bool send_blocked;      // a send failed this tick (its queue is full)
  int inflight;           // this router's tasks on it
  bool moved;             // its endpoint changed: its in-flight tasks went to the old one
  bool bad_info_warned;
  bool connect_warned;
  unsigned seen_gen;      // the read that last found its key
} rt_worker_t;

typedef struct {
  rt_worker_t **v;        // stable pointers: tasks point at their worker
  int n, cap;
  void *zctx;
  char router_id[256];
  unsigned mon_seq;
  unsigned gen;           // reads applied
  bool sockets_changed;   // a worker was added or removed: rebuild the poll set
} rt_workers_t;

int rt_workers_init(rt_workers_t *t, void *zctx, const char *router_id);
void rt_workers_destroy(rt_workers_t *t);

// Applies one successful read: `members` is the SMEMBERS <prefix>workers reply, `values` the
// MGET of their keys in the same order (NULL when there were no members), `drain` the SMEMBERS
// <prefix>drain reply (NULL: unknown, keep the flags). Adds workers (and connects to them),
// updates the known ones, marks the missing ones unlisted. A worker whose endpoint changed is
// reconnected and gets `moved` set: the router fails the tasks it had there and clears it.
void rt_workers_apply(rt_workers_t *t, const redisReply *members, const redisReply *values, const redisReply *drain,
                      double now);
// Redis is unreachable: keep every worker as it is and restart the staleness clocks, so that the
// table is trusted again only once fresh heartbeats can be read.
void rt_workers_freeze(rt_workers_t *t, double now);

rt_worker_t *rt_workers_find(const rt_workers_t *t, const char *id);
// Closes the worker's sockets and removes it (the caller has detached its tasks first).
void rt_workers_remove(rt_workers_t *t, rt_worker_t *w);

// Reads the monitor events waiting on w->mon. Returns a bit set: RT_EV_UP (the handshake with
// the worker completed), RT_EV_DOWN (an established connection broke).
enum { RT_EV_UP = 1, RT_EV_DOWN = 2 };
int rt_worker_events(rt_worker_t *w);

// w answered DRAINING (or OVERLOADED): hold new tasks back until a heartbeat written after now
// says READY (or worker.timeout_ms passes on our clock, should the hosts' clocks disagree).
void rt_worker_hold(rt_worker_t *w, double now);

// A live worker that may take tasks: listed and fresh, connected, READY, not drained, a variant
// loaded. timeout_ms: worker.timeout_ms.
bool rt_worker_candidate(const rt_worker_t *w, double now, double timeout_ms);
// Room for one more task from this router: not held back, its socket not blocked this tick, and
// fewer than RT_INFLIGHT_PER_SLOT x slots of our tasks on it (the worker queues that many itself;
// beyond, the router holds them, so they can still go to whichever worker frees up first).
#define RT_INFLIGHT_PER_SLOT 4
bool rt_worker_has_room(const rt_worker_t *w, double now, double timeout_ms);
// Both.
bool rt_worker_usable(const rt_worker_t *w, double now, double timeout_ms);
// Its heartbeat stopped: listed, but updated_at unchanged for longer than timeout_ms.
bool rt_worker_stale(const rt_worker_t *w, double now, double timeout_ms);
// Load relative to slots: (busy + queued + this router's in-flight) / slots.
double rt_worker_load(const rt_worker_t *w);


#endif
