// workers.c - see workers.h.
#include "workers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "clock.h"
#include "log.h"
#include "msg.h"

#define RT_MAX_WORKERS 4096
#define RT_WORKER_MAX_MSG (64 << 20)

int rt_workers_init(rt_workers_t *t, void *zctx, const char *router_id) {
  memset(t, 0, sizeof *t);
  t->zctx = zctx;
  snprintf(t->router_id, sizeof t->router_id, "%s", router_id);
  return 0;
}

// --- sockets -------------------------------------------------------------------------------------

static void close_sockets(rt_worker_t *w) {
  if (w->sock) {
    zmq_socket_monitor(w->sock, NULL, 0);
    zmq_close(w->sock);
  }
  if (w->mon) zmq_close(w->mon);
  w->sock = w->mon = NULL;
  w->connected = false;
}

// A DEALER to the worker with a monitor for handshakes and disconnects. On failure the worker
// stays in the table without sockets (never usable) and we try again at the next heartbeat.
static int open_sockets(rt_workers_t *t, rt_worker_t *w) {
  char addr[64];
  snprintf(addr, sizeof addr, "inproc://ac-router-mon-%u", ++t->mon_seq);
  int zero = 0, one = 1, hwm = 10000;
  int64_t maxmsg = RT_WORKER_MAX_MSG;
  w->sock = zmq_socket(t->zctx, ZMQ_DEALER);
  if (!w->sock) goto fail;
  if (zmq_setsockopt(w->sock, ZMQ_ROUTING_ID, t->router_id, strlen(t->router_id)) ||
      zmq_setsockopt(w->sock, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_setsockopt(w->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
      zmq_setsockopt(w->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
      zmq_setsockopt(w->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
      zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
    goto fail;
  // The monitor must exist before connect, or the first handshake goes unseen.
  if (zmq_socket_monitor(w->sock, addr, ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED)) goto fail;
  w->mon = zmq_socket(t->zctx, ZMQ_PAIR);
  if (!w->mon) goto fail;
  if (zmq_setsockopt(w->mon, ZMQ_LINGER, &zero, sizeof zero) || zmq_connect(w->mon, addr)) goto fail;
  if (zmq_connect(w->sock, w->endpoint)) goto fail;
  t->sockets_changed = true;
  w->connect_warned = false;
  return 0;
fail:
  if (!w->connect_warned) AC_WARN("worker %s: cannot connect to '%s': %s", w->id, w->endpoint, zmq_strerror(errno));
  w->connect_warned = true;  // retried at every heartbeat read, logged once per endpoint
  close_sockets(w);
  t->sockets_changed = true;
  return -1;
}

int rt_worker_events(rt_worker_t *w) {
  int ev = 0;
  if (!w->mon) return 0;
  for (;;) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, w->mon, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&m);
      break;
    }
    // Frame 1: uint16 event, uint32 value (host order). Frame 2: the endpoint.
    uint16_t event = 0;
    if (zmq_msg_size(&m) >= 2) memcpy(&event, zmq_msg_data(&m), 2);
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) {
      zmq_msg_init(&m);
      if (zmq_msg_recv(&m, w->mon, 0) < 0) {
        zmq_msg_close(&m);
        break;
      }
      more = zmq_msg_more(&m);
      zmq_msg_close(&m);
    }
    if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      if (!w->connected) AC_INFO("worker %s: connected (%s)", w->id, w->endpoint);
      w->connected = true;
      ev |= RT_EV_UP;
    } else if (event == ZMQ_EVENT_DISCONNECTED) {
      if (w->connected) AC_WARN("worker %s: connection lost (%s)", w->id, w->endpoint);
      w->connected = false;
      ev |= RT_EV_DOWN;
    }
  }
  return ev;
}

// --- the table -----------------------------------------------------------------------------------

rt_worker_t *rt_workers_find(const rt_workers_t *t, const char *id) {
  for (int i = 0; i < t->n; i++)
    if (strcmp(t->v[i]->id, id) == 0) return t->v[i];
  return NULL;
}

static rt_worker_t *add(rt_workers_t *t, const char *id) {
  if (t->n == RT_MAX_WORKERS) return NULL;
  if (t->n == t->cap) {
    int cap = t->cap ? t->cap * 2 : 16;
    rt_worker_t **v = realloc(t->v, (size_t)cap * sizeof *v);
    if (!v) return NULL;
    t->v = v;
    t->cap = cap;
  }
  rt_worker_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  snprintf(w->id, sizeof w->id, "%s", id);
  t->v[t->n++] = w;
  return w;
}

void rt_workers_remove(rt_workers_t *t, rt_worker_t *w) {
  for (int i = 0; i < t->n; i++) {
    if (t->v[i] != w) continue;
    AC_INFO("worker %s: removed from the table", w->id);
    close_sockets(w);
    free(w);
    t->v[i] = t->v[--t->n];
    t->sockets_changed = true;
    return;
  }
}

void rt_workers_destroy(rt_workers_t *t) {
  for (int i = 0; i < t->n; i++) {
    close_sockets(t->v[i]);
    free(t->v[i]);
  }
  free(t->v);
  memset(t, 0, sizeof *t);
}

static bool in_set(const redisReply *set, const char *id) {
  if (!set || set->type != REDIS_REPLY_ARRAY) return false;
  for (size_t i = 0; i < set->elements; i++) {
    const redisReply *e = set->element[i];
    if (e->type == REDIS_REPLY_STRING && strlen(id) == e->len && memcmp(e->str, id, e->len) == 0) return true;
  }
  return false;
}

// One worker's key: a serialized Envelope{worker_info}.
static void apply_one(rt_workers_t *t, const char *id, const redisReply *val, const redisReply *drain, double now) {
  ac_env_t *env = NULL;
  rt_worker_t *w = rt_workers_find(t, id);
  if (ac_msg_unpack(val->str, val->len, 0, &env) != 0 ||
      env->body_case != AGENTCOMPRESS__ENVELOPE__BODY_WORKER_INFO) {
    if (!w || !w->bad_info_warned) AC_WARN("worker %s: its key does not hold a WorkerInfo envelope; ignored", id);
    if (w) w->bad_info_warned = true;
    ac_msg_free(&env);
    return;
  }
  const Agentcompress__WorkerInfo *in = env->worker_info;
  const char *endpoint = in->endpoint ? in->endpoint : "";
  if (!*endpoint || strlen(endpoint) >= sizeof w->endpoint) {
    if (!w || !w->bad_info_warned) AC_WARN("worker %s: bad endpoint '%s'; ignored", id, endpoint);
    if (w) w->bad_info_warned = true;
    ac_msg_free(&env);
    return;
  }
  if (!w) {
    if (!(w = add(t, id))) {
      AC_ERROR("worker %s: cannot add it to the table (out of memory or too many workers)", id);
      ac_msg_free(&env);
      return;
    }
    snprintf(w->endpoint, sizeof w->endpoint, "%s", endpoint);
    w->fresh_mono = now;
    AC_INFO("worker %s: found at %s (variant '%s')", id, endpoint, in->variant ? in->variant : "");
    open_sockets(t, w);
  } else if (strcmp(w->endpoint, endpoint) != 0 || !w->sock) {
    if (w->sock) {
      AC_INFO("worker %s: moved from %s to %s", id, w->endpoint, endpoint);
      w->moved = true;
    }
    if (strcmp(w->endpoint, endpoint) != 0) w->connect_warned = false;
    close_sockets(w);
    snprintf(w->endpoint, sizeof w->endpoint, "%s", endpoint);
    open_sockets(t, w);
  }
  w->bad_info_warned = false;
  if (in->updated_at_ms != w->updated_at_ms) {
    w->updated_at_ms = in->updated_at_ms;
    w->fresh_mono = now;
    w->stale_reported = false;
    // A heartbeat written after a DRAINING answer and saying READY lifts the hold.
    if (in->state == AGENTCOMPRESS__WORKER_STATE__WORKER_READY && in->updated_at_ms > w->held_at_ms)
      w->held_back = false;
  }
  if (!w->listed) w->fresh_mono = now;  // back after a gap: its clock starts again
  snprintf(w->variant, sizeof w->variant, "%s", in->variant ? in->variant : "");
  if (strlen(in->variant ? in->variant : "") >= sizeof w->variant) w->variant[0] = 0;  // no such variant
  w->state = (int)in->state;
  w->slots = in->slots;
  w->busy = in->busy;
  w->queued = in->queued;
  w->n_ctx = in->n_ctx;
  if (drain) w->drain = in->drain || in_set(drain, id);
  else w->drain = w->drain || in->drain;
  w->listed = true;
  w->expired = false;
  w->unlisted_mono = 0;
  w->seen_gen = t->gen;
  ac_msg_free(&env);
}

void rt_workers_apply(rt_workers_t *t, const redisReply *members, const redisReply *values, const redisReply *drain,
                      double now) {
  t->gen++;
  if (members && members->type == REDIS_REPLY_ARRAY && values && values->type == REDIS_REPLY_ARRAY &&
      values->elements == members->elements) {
    for (size_t i = 0; i < members->elements; i++) {
      const redisReply *m = members->element[i], *v = values->element[i];
      if (m->type != REDIS_REPLY_STRING || m->len == 0 || m->len >= sizeof t->v[0]->id) continue;
      if (memchr(m->str, 0, m->len)) continue;
      char id[128];
      memcpy(id, m->str, m->len);
      id[m->len] = 0;
      if (v->type != REDIS_REPLY_STRING) {
        // Registered, but the key's TTL ran out: it missed heartbeats for worker.timeout_ms.
        rt_worker_t *w = rt_workers_find(t, id);
        if (w) w->expired = true;
        continue;
      }
      apply_one(t, id, v, drain, now);
    }
  }
  for (int k = 0; k < t->n; k++) {
    rt_worker_t *w = t->v[k];
    if (w->seen_gen == t->gen) continue;
    if (w->listed) AC_INFO("worker %s: its key is gone", w->id);
    if (w->listed || w->unlisted_mono == 0) w->unlisted_mono = now;
    w->listed = false;
  }
}

void rt_workers_freeze(rt_workers_t *t, double now) {
  for (int i = 0; i < t->n; i++) {
    t->v[i]->fresh_mono = now;
    if (!t->v[i]->listed) t->v[i]->unlisted_mono = now;
  }
}

// --- questions -----------------------------------------------------------------------------------

bool rt_worker_stale(const rt_worker_t *w, double now, double timeout_ms) {
  return w->listed && now - w->fresh_mono > timeout_ms;
}

void rt_worker_hold(rt_worker_t *w, double now) {
  w->held_back = true;
  w->held_at_ms = ac_unix_ms();
  w->held_mono = now;
}

bool rt_worker_candidate(const rt_worker_t *w, double now, double timeout_ms) {
  return w->listed && w->sock && w->connected && !w->drain && w->state == AGENTCOMPRESS__WORKER_STATE__WORKER_READY &&
         w->variant[0] && !rt_worker_stale(w, now, timeout_ms);
}

bool rt_worker_has_room(const rt_worker_t *w, double now, double timeout_ms) {
  bool held = w->held_back && now - w->held_mono < timeout_ms;
  int cap = RT_INFLIGHT_PER_SLOT * (int)(w->slots ? w->slots : 1);
  return !held && !w->send_blocked && w->inflight < cap;
}

bool rt_worker_usable(const rt_worker_t *w, double now, double timeout_ms) {
  return rt_worker_candidate(w, now, timeout_ms) && rt_worker_has_room(w, now, timeout_ms);
}

double rt_worker_load(const rt_worker_t *w) {
  double slots = w->slots ? (double)w->slots : 1.0;
  return ((double)w->busy + (double)w->queued + (double)w->inflight) / slots;
}

