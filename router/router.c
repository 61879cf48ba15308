// router.c - ac-router: the stateless front door of an AgentCompress cluster.
//
// Clients send Task envelopes to a ZeroMQ ROUTER socket. For each task the router validates it,
// turns the prompt (or chat) into token ids with the model's tokenizer (the same path `acq run`
// takes), lets the policy choose a variant, and forwards it to the least loaded worker that holds
// that variant or a better one; tokens and the final Result or Error are relayed back under the
// client's task id. When no worker can serve, the task waits (bounded) while the scheduler is
// asked for a reload. A worker that dies mid-task is detected by its socket (at once) or its
// heartbeat (worker.timeout_ms) and the task is retried elsewhere. Every accepted task ends with
// exactly one Result or Error.
//
// Everything shared lives in Redis, so any number of routers can serve one pool (README: "Redis keys").
// main.c parses the command line and sets up; policy.c chooses variants, workers.c keeps the
// worker table, stats.c counts and writes to Redis, amap.c maps attempts to tasks.
#include "router.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "clock.h"
#include "error.h"
#include "log.h"
#include "prompt.h"

#define TICK_MS 100.0
#define CATALOG_EVERY 10          // ticks between reads of <prefix>catalog


typedef Agentcompress__ErrorCode code_t;
#define E(x) AGENTCOMPRESS__ERROR_CODE__ERR_##x

static void finish_error(rt_router_t *R, rt_task_t *t, code_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// --- UTF-8 ---------------------------------------------------------------------------------------
// Protobuf strings are UTF-8, and strict peers (Python's protobuf) refuse a message that holds
// anything else, so the router checks what clients send and trims what it writes.

// Bytes of s that form whole, valid UTF-8 characters (no overlongs, surrogates or > U+10FFFF).
static size_t utf8_valid_prefix(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (s[i]) {
    unsigned c = s[i];
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0) break;
    unsigned cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
    int k = 1;
    for (; k <= n && (s[i + k] & 0xC0) == 0x80; k++) cp = cp << 6 | (s[i + k] & 0x3F);
    if (k <= n) break;
    static const unsigned min_cp[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) break;
    i += (size_t)n + 1;
  }
  return i;
}

static bool utf8_ok(const char *s) { return !s || s[utf8_valid_prefix(s)] == 0; }
// Cuts s before its first invalid byte (a message truncated by snprintf, a peer's text).
static void utf8_trim(char *s) { s[utf8_valid_prefix(s)] = 0; }


// --- growable pointer arrays -----------------------------------------------------------------------

static int push(rt_task_t ***arr, int *n, int *cap, rt_task_t *t) {
  if (*n == *cap) {
    int c = *cap ? *cap * 2 : 64;
    rt_task_t **a = realloc(*arr, (size_t)c * sizeof *a);
    if (!a) return AC_ENOMEM;
    *arr = a;
    *cap = c;
  }
  (*arr)[(*n)++] = t;
  return *n - 1;
}

static void queue_remove(rt_router_t *R, rt_task_t *t) {
  if (t->queue_i < 0) return;
  int i = t->queue_i;
  R->queue[i] = R->queue[--R->n_queue];
  R->queue[i]->queue_i = i;
  t->queue_i = -1;
  t->queued_since = 0;
}

// --- answering the client ------------------------------------------------------------------------

static int send_client(rt_router_t *R, const rt_task_t *t, ac_env_t *env) {
  const void *parts[AC_MSG_MAX_PARTS];
  size_t off = 0;
  for (int i = 0; i < t->nroute; i++) {
    parts[i] = t->route + off;
    off += t->route_len[i];
  }
  int rc = ac_msg_send(R->front, t->nroute, parts, t->route_len, env);
  if (rc) AC_DEBUG("task %s: the client is gone (%s)", t->client_id, ac_errmsg());
  return rc;
}

// Sends Cancel for the task's current attempt to its worker, if it can still hear it.
static void cancel_attempt(rt_router_t *R, rt_task_t *t) {
  if (!t->w || !t->key || !t->w->sock || !t->w->connected) return;
  char id[256];
  snprintf(id, sizeof id, "%s/%llu", R->id, (unsigned long long)t->key);
  Agentcompress__Cancel c = AGENTCOMPRESS__CANCEL__INIT;
  c.task_id = id;
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_CANCEL;
  env.cancel = &c;
  if (ac_msg_send(t->w->sock, 0, NULL, NULL, &env)) AC_DEBUG("cancel %s: %s", id, ac_errmsg());
}

// Forgets the current attempt (its late replies will be dropped).
static void detach(rt_router_t *R, rt_task_t *t) {
  if (t->key) rt_amap_del(&R->amap, t->key);
  if (t->w) t->w->inflight--;
  t->key = 0;
  t->w = NULL;
}

static void task_free(rt_task_t *t) {
  if (!t) return;
  ac_msg_free(&t->env);
  free(t->ids);
  free(t->route);
  free(t);
}

// Removes an answered task from every index and frees it.
static void task_done(rt_router_t *R, rt_task_t *t) {
  detach(R, t);
  queue_remove(R, t);
  int i = t->active_i;
  R->active[i] = R->active[--R->n_active];
  R->active[i]->active_i = i;
  task_free(t);
}

static void finish_error(rt_router_t *R, rt_task_t *t, code_t code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  utf8_trim(msg);
  const void *parts[AC_MSG_MAX_PARTS];
  size_t off = 0;
  for (int i = 0; i < t->nroute; i++) {
    parts[i] = t->route + off;
    off += t->route_len[i];
  }
  ac_msg_send_error(R->front, t->nroute, parts, t->route_len, t->client_id, code, msg);
  AC_DEBUG("task %s: %s: %s", t->client_id, ac_msg_code_name(code), msg);
  rt_answer_t a = {.ok = false, .code = (int)code, .attempts = t->attempts, .requested = t->choice.variant,
                   .was_queued = t->queued_for_reload};
  rt_stats_answer(R->stats, &a, ac_mono_ms());
  task_done(R, t);
}

// An Error for a frame that never became a task.
static void reply_error(rt_router_t *R, const ac_frames_t *f, const char *task_id, code_t code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void reply_error(rt_router_t *R, const ac_frames_t *f, const char *task_id, code_t code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  utf8_trim(msg);
  const void *parts[AC_MSG_MAX_PARTS];
  ac_frames_route(f, parts);
  if (ac_msg_send_error(R->front, f->nparts, parts, f->lens, task_id, code, msg))
    AC_DEBUG("error reply not sent: %s", ac_errmsg());
}

// --- choosing a worker ---------------------------------------------------------------------------

static bool can_serve(const rt_router_t *R, const char *have, const char *want) {
  if (!want[0]) return true;  // no catalog yet: any variant
  if (R->cat.n && ac_catalog_find(&R->cat, want)) return ac_catalog_can_serve(&R->cat, have, want);
  return strcmp(have, want) == 0;
}

typedef enum {
  SENT,          // dispatched
  WAIT_ROOM,     // workers that can serve it are up, but none has room now: wait for one
  WAIT_RELOAD,   // no live worker holds a variant that can serve it: wait for a reload
} dispatch_rc_t;

// The worker for t: among the live workers that can serve it, the exact variant first, then the
// least loaded. When a worker with the exact variant is up but has no room, the task waits for
// it rather than going to a better (dearer) variant: being busy is a matter of moments, and the
// answer is then the one the chosen variant gives. A better variant serves when no worker holds
// the exact one.
static dispatch_rc_t pick(const rt_router_t *R, const rt_task_t *t, double now, rt_worker_t **out) {
  const char *want = t->must[0] ? t->must : t->choice.variant;
  rt_worker_t *best = NULL;
  bool best_exact = false, any = false, any_exact = false;
  double best_load = 0;
  *out = NULL;
  for (int i = 0; i < R->wt.n; i++) {
    rt_worker_t *w = R->wt.v[i];
    if (!rt_worker_candidate(w, now, R->timeout_ms)) continue;
    bool exact = strcmp(w->variant, want) == 0;
    if (!exact && (t->must[0] || !can_serve(R, w->variant, want))) continue;
    any = true;
    any_exact |= exact;
    if (!rt_worker_has_room(w, now, R->timeout_ms)) continue;
    double load = rt_worker_load(w);
    if (!best || (exact && !best_exact) || (exact == best_exact && load < best_load)) {
      best = w;
      best_exact = exact;
      best_load = load;
    }
  }
  if (!any) return WAIT_RELOAD;
  if (!best || (any_exact && !best_exact)) return WAIT_ROOM;
  *out = best;
  return SENT;
}

// The Task a worker gets: the client's, with the router's id for this attempt, the prompt as
// ids, max_tokens resolved, the tokens to skip after a lost streamed attempt, what is left of the
// deadline. Shallow: it points into t.
static void forward_task(const rt_task_t *t, char *id, char *variant, double now, Agentcompress__Task *ft) {
  *ft = *t->env->task;
  ft->id = id;
  ft->max_tokens = t->max_tokens;
  ft->skip_tokens = t->streamed;
  ft->variant = variant;  // what the router believes the worker holds: one that has since
                          // reloaded answers DRAINING and the task goes elsewhere
  if (t->ids) {
    ft->prompt_tokens = t->ids;
    ft->n_prompt_tokens = (size_t)t->n_ids;
    ft->prompt = (char *)"";  // the ids say it all; no need to ship the text twice
    ft->n_messages = 0;
    ft->messages = NULL;
  }
  if (t->deadline > 0) {
    double left = t->deadline - now;
    ft->deadline_ms = left < 1 ? 1 : (uint32_t)ceil(left);
  }
}

// Sends the task to a worker, or says why it must wait.
static dispatch_rc_t dispatch(rt_router_t *R, rt_task_t *t, double now) {
  for (;;) {
    rt_worker_t *w;
    dispatch_rc_t rc = pick(R, t, now, &w);
    t->needs_reload = rc == WAIT_RELOAD;
    if (rc != SENT) return rc;
    uint64_t key = ++R->counter;
    char id[256];
    snprintf(id, sizeof id, "%s/%llu", R->id, (unsigned long long)key);
    Agentcompress__Task ft;
    forward_task(t, id, w->variant, now, &ft);
    if (rt_amap_put(&R->amap, key, t)) return WAIT_ROOM;  // out of memory: it waits, and times out
    ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
    env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_TASK;
    env.task = &ft;
    if (ac_msg_send(w->sock, 0, NULL, NULL, &env)) {
      // Its queue is full or the connection just went: not this one, this tick.
      AC_DEBUG("worker %s: send failed (%s)", w->id, ac_errmsg());
      rt_amap_del(&R->amap, key);
      w->send_blocked = true;
      continue;
    }
    queue_remove(R, t);
    t->key = key;
    t->w = w;
    w->inflight++;
    t->attempts++;
    t->dispatched = now;
    snprintf(t->served_variant, sizeof t->served_variant, "%s", w->variant);
    if (t->attempts == 1 && !t->waited) rt_stats_overhead(R->stats, (ac_mono_ms() - t->received) * 1e3);
    AC_DEBUG("task %s -> worker %s as %s (variant %s, attempt %d)", t->client_id, w->id, id, w->variant, t->attempts);
    return SENT;
  }
}

static void set_timer(rt_router_t *R, double at) {
  if (at > 0 && (R->next_timer == 0 || at < R->next_timer)) R->next_timer = at;
}

// Puts t in the waiting queue. bounded: refuse when router.max_queue tasks wait already (a new
// task); a task that was already accepted and lost its worker is never refused.
static bool enqueue(rt_router_t *R, rt_task_t *t, bool bounded, double now) {
  if (t->queue_i >= 0) return true;
  if (bounded && R->n_queue >= (int)R->max_queue) return false;
  if (push(&R->queue, &R->n_queue, &R->cap_queue, t) < 0) return false;
  t->queue_i = R->n_queue - 1;
  t->queued_since = now;
  t->waited = true;
  if (t->needs_reload) {
    t->queued_for_reload = true;
    rt_stats_wanted(R->stats, t->choice.variant, ac_unix_ms());
  }
  set_timer(R, now + R->queue_timeout_ms);
  return true;
}

// Dispatches t now or queues it (unbounded: it was accepted already). False only when it could
// not even be queued (out of memory).
static bool retry(rt_router_t *R, rt_task_t *t, double now) {
  return dispatch(R, t, now) == SENT || enqueue(R, t, false, now);
}

// The task's worker is gone (dead, disconnected, or answered DRAINING): retry it or answer.
static void lost(rt_router_t *R, rt_task_t *t, const char *why, bool send_cancel, double now) {
  char wid[128];
  snprintf(wid, sizeof wid, "%s", t->w ? t->w->id : "?");
  if (send_cancel) cancel_attempt(R, t);
  detach(R, t);
  if (R->stopping) {
    finish_error(R, t, E(DRAINING), "worker %s lost (%s) while the router is shutting down", wid, why);
    return;
  }
  if (t->attempts >= (int)R->max_attempts) {
    finish_error(R, t, E(WORKER_LOST), "worker %s lost (%s); tried %d worker%s", wid, why, t->attempts,
                 t->attempts == 1 ? "" : "s");
    return;
  }
  if (t->streamed > 0) {
    // The client has tokens already: only the same variant regenerates the same ones
    // (generation is deterministic), and the new worker skips what was sent.
    snprintf(t->must, sizeof t->must, "%s", t->served_variant);
    dispatch_rc_t rc = dispatch(R, t, now);
    if (rc == WAIT_RELOAD) {
      finish_error(R, t, E(WORKER_LOST),
                   "worker %s lost (%s) after %u streamed tokens; no other worker holds '%s' to resume", wid, why,
                   t->streamed, t->must);
      return;
    }
    if (rc == WAIT_ROOM && !enqueue(R, t, false, now)) {
      finish_error(R, t, E(WORKER_LOST), "worker %s lost (%s); out of memory to hold the task", wid, why);
      return;
    }
  } else if (!retry(R, t, now)) {
    finish_error(R, t, E(WORKER_LOST), "worker %s lost (%s); out of memory to hold the task", wid, why);
    return;
  }
  AC_INFO("task %s: worker %s lost (%s); %s", t->client_id, wid, why, t->w ? "retried" : "waiting for a worker");
}

// Fails every task this router has on w.
static void fail_worker_tasks(rt_router_t *R, rt_worker_t *w, const char *why, bool send_cancel, double now) {
  if (!w->inflight) return;
  int n = 0;
  rt_task_t **mine = malloc((size_t)w->inflight * sizeof *mine);
  if (!mine) return;
  for (int i = 0; i < R->n_active && n < w->inflight; i++)
    if (R->active[i]->w == w) mine[n++] = R->active[i];
  for (int i = 0; i < n; i++) lost(R, mine[i], why, send_cancel, now);
  free(mine);
}

static int by_priority(const void *a, const void *b) {
  const rt_task_t *x = *(rt_task_t *const *)a, *y = *(rt_task_t *const *)b;
  int32_t px = x->env->task->priority, py = y->env->task->priority;
  if (px != py) return px > py ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

// Tries every waiting task, highest priority first, then oldest.
static void dispatch_queue(rt_router_t *R, double now) {
  if (!R->n_queue) return;
  rt_task_t **order = malloc((size_t)R->n_queue * sizeof *order);
  if (!order) return;
  int n = R->n_queue;
  memcpy(order, R->queue, (size_t)n * sizeof *order);
  qsort(order, (size_t)n, sizeof *order, by_priority);
  for (int i = 0; i < n; i++) {
    rt_task_t *t = order[i];
    dispatch_rc_t rc = dispatch(R, t, now);
    if (rc == WAIT_RELOAD && t->must[0]) {
      // It waited for room on the variant that streamed its first tokens, and that is gone.
      finish_error(R, t, E(WORKER_LOST), "no worker holds '%s' any more to resume the %u streamed tokens", t->must,
                   t->streamed);
    } else if (rc == WAIT_RELOAD && !t->queued_for_reload) {
      t->queued_for_reload = true;
      rt_stats_wanted(R->stats, t->choice.variant, ac_unix_ms());
    }
  }
  free(order);
}

// --- tasks from clients --------------------------------------------------------------------------

static bool valid_role(const char *r) {
  return r && (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant"));
}

// Checks the fields a worker would choke on. Writes the problem into msg and returns false.
static bool validate(const Agentcompress__Task *t, char *msg, size_t cap) {
  const char *bad = !utf8_ok(t->session_id) ? "session_id"
                    : !utf8_ok(t->prompt)   ? "prompt"
                    : !utf8_ok(t->variant)  ? "variant"
                                            : NULL;
  for (size_t i = 0; !bad && i < t->n_messages; i++)
    if (!utf8_ok(t->messages[i]->role) || !utf8_ok(t->messages[i]->content)) bad = "a chat message";
  for (size_t i = 0; !bad && i < t->n_stop; i++)
    if (!utf8_ok(t->stop[i])) bad = "a stop string";
  if (bad) {
    snprintf(msg, cap, "%s is not valid UTF-8", bad);
    return false;
  }
  if (t->n_messages && t->prompt && t->prompt[0]) {
    snprintf(msg, cap, "give a prompt or chat messages, not both");
    return false;
  }
  for (size_t i = 0; i < t->n_messages; i++) {
    if (!valid_role(t->messages[i]->role)) {
      snprintf(msg, cap, "message %zu: role '%s' is not system, user or assistant", i,
               t->messages[i]->role ? t->messages[i]->role : "");
      return false;
    }
  }
  const Agentcompress__Sampling *s = t->sampling;
  if (s) {
    if (!isfinite(s->temperature) || s->temperature < 0 || s->temperature > 100) {
      snprintf(msg, cap, "sampling.temperature %g is outside [0, 100]", (double)s->temperature);
      return false;
    }
    if (s->top_k < 0) {
      snprintf(msg, cap, "sampling.top_k %d is negative", s->top_k);
      return false;
    }
    if (!isfinite(s->top_p) || s->top_p < 0 || s->top_p > 1) {
      snprintf(msg, cap, "sampling.top_p %g is outside [0, 1]", (double)s->top_p);
      return false;
    }
    if (!isfinite(s->min_p) || s->min_p < 0 || s->min_p > 1) {
      snprintf(msg, cap, "sampling.min_p %g is outside [0, 1]", (double)s->min_p);
      return false;
    }
  }
  if (t->n_stop > 64) {
    snprintf(msg, cap, "%zu stop strings; at most 64", t->n_stop);
    return false;
  }
  for (size_t i = 0; i < t->n_stop; i++) {
    if (!t->stop[i] || !t->stop[i][0] || strlen(t->stop[i]) > 1024) {
      snprintf(msg, cap, "stop string %zu is empty or longer than 1024 bytes", i);
      return false;
    }
  }
  return true;
}

// "full, int8, int4" into buf.
static void known_variants(const rt_router_t *R, char *buf, size_t cap) {
  size_t off = 0;
  buf[0] = 0;
  for (int i = 0; i < R->cat.n && off + 1 < cap; i++) {
    int k = snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", R->cat.v[i].name);
    if (k < 0) break;
    off += (size_t)k;
  }
  if (!R->cat.n) snprintf(buf, cap, "none: no catalog yet");
}

// The context every worker can hold: the smallest n_ctx among the known workers, else --ctx.
static int context_limit(const rt_router_t *R) {
  int n = 0;
  for (int i = 0; i < R->wt.n; i++) {
    const rt_worker_t *w = R->wt.v[i];
    if (w->listed && w->n_ctx > 0 && (n == 0 || (int)w->n_ctx < n)) n = (int)w->n_ctx;
  }
  return n ? n : R->ctx_default;
}

static void choose(rt_router_t *R, const rt_task_t *t, ac_choice_t *out) {
  ac_policy_t *p = R->policy;
  const Agentcompress__Task *in = t->env->task;
  const int32_t *ids = t->ids;
  int n_ids = t->n_ids, rc = 0;
  int32_t *text_ids = NULL;
  if (p && p->text_ids && in->n_messages && R->tok) {
    // A chat: the policy reads the messages' text without the chat template (policy.h).
    ac_chat_msg_t *msgs = malloc(in->n_messages * sizeof *msgs);
    if (!msgs) rc = ac_error(AC_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < in->n_messages; i++)
      msgs[i] = (ac_chat_msg_t){in->messages[i]->role, in->messages[i]->content ? in->messages[i]->content : ""};
    if (!rc) rc = ac_policy_chat_ids(R->tok, msgs, in->n_messages, &text_ids, &n_ids);
    free(msgs);
    ids = text_ids;
  }
  if (!rc) rc = p ? p->choose(p, ids, n_ids, &R->cat, R->cfg, out) : AC_ENOTFOUND;
  free(text_ids);
  if (rc == 0) return;
  char why[320];
  snprintf(why, sizeof why, "%s", p ? ac_errmsg() : "unknown policy");
  if (strcmp(why, R->policy_warned) != 0) {
    AC_WARN("policy %s failed (%s); using the full model", p ? p->name : ac_config_str(R->cfg, "policy"), why);
    snprintf(R->policy_warned, sizeof R->policy_warned, "%s", why);
  }
  ac_policy_find("full")->choose(NULL, t->ids, t->n_ids, &R->cat, R->cfg, out);
}

// Answers a task that was not accepted (it never enters the tables) and frees its envelope.
static void reject(rt_router_t *R, const ac_frames_t *f, ac_env_t **env, code_t code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void reject(rt_router_t *R, const ac_frames_t *f, ac_env_t **env, code_t code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *cid = (*env)->task->id ? (*env)->task->id : "";
  reply_error(R, f, cid, code, "%s", msg);
  AC_DEBUG("task %s: %s: %s", cid, ac_msg_code_name(code), msg);
  rt_answer_t a = {.ok = false, .code = (int)code};
  rt_stats_answer(R->stats, &a, ac_mono_ms());
  ac_msg_free(env);
}

// Whether a forced variant names something this router can route to.
static bool known_variant(const rt_router_t *R, const char *v) {
  if (R->cat.n) return ac_catalog_find(&R->cat, v) != NULL;
  for (int i = 0; i < R->wt.n; i++)  // no catalog yet: what the workers hold
    if (strcmp(R->wt.v[i]->variant, v) == 0) return true;
  return false;
}

// The prompt (or chat) of t as ids, the same path acq run takes, so greedy text matches it.
// Returns 0, or an error code with the problem in msg.
static code_t tokenize(const rt_router_t *R, rt_task_t *t, const Agentcompress__Task *in, char *msg, size_t cap) {
  bool chat = in->n_messages > 0;
  ac_chat_msg_t *msgs = chat ? malloc(in->n_messages * sizeof *msgs) : NULL;
  if (chat && !msgs) {
    snprintf(msg, cap, "out of memory");
    return E(INTERNAL);
  }
  for (size_t i = 0; i < in->n_messages; i++)
    msgs[i] = (ac_chat_msg_t){in->messages[i]->role, in->messages[i]->content ? in->messages[i]->content : ""};
  const char *prompt = in->prompt ? in->prompt : "";
  int rc = ac_prompt_tokens(R->gguf, R->tok, prompt, strlen(prompt), chat, msgs, in->n_messages, &t->ids, &t->n_ids);
  free(msgs);
  if (rc) {
    snprintf(msg, cap, "%s", rc == AC_ENOMEM ? "out of memory" : ac_errmsg()[0] ? ac_errmsg() : ac_strerror(rc));
    return rc == AC_ENOMEM ? E(INTERNAL) : E(INVALID);
  }
  int n_ctx = context_limit(R);
  if (t->n_ids + 1 > n_ctx) {
    snprintf(msg, cap, "the prompt is %d tokens; with one token to generate it needs %d, more than the context of %d",
             t->n_ids, t->n_ids + 1, n_ctx);
    return E(TOO_LONG);
  }
  return 0;
}

// Bytes of the Task a worker will get (with the longest attempt id and variant name). It must
// fit the workers' limit, the same setting: a worker can only answer an oversize frame without
// knowing whose it was, and the task would hang.
static size_t forwarded_size(const rt_task_t *t, double now) {
  char id[256], var[64];
  memset(id, '9', sizeof id - 1);
  id[sizeof id - 1] = 0;
  memset(var, 'v', sizeof var - 1);
  var[sizeof var - 1] = 0;
  Agentcompress__Task ft;
  forward_task(t, id, var, now, &ft);
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_TASK;
  env.task = &ft;
  return agentcompress__envelope__get_packed_size(&env);
}

// A Task from a client. Takes ownership of env.
static void on_task(rt_router_t *R, const ac_frames_t *f, ac_env_t *env, double received) {
  const Agentcompress__Task *in = env->task;
  const char *cid = in->id ? in->id : "";
  const char *forced = in->variant ? in->variant : "";
  char msg[1024];
  code_t code = 0;
  if (!utf8_ok(cid)) {
    rt_stats_bad_message(R->stats, E(INVALID));
    reply_error(R, f, "", E(INVALID), "the task id is not valid UTF-8");
    ac_msg_free(&env);
    return;
  }
  if (R->stopping) {
    reject(R, f, &env, E(DRAINING), "the router is shutting down");
    return;
  }
  if (!validate(in, msg, sizeof msg)) {
    reject(R, f, &env, E(INVALID), "%s", msg);
    return;
  }
  if (forced[0] && !known_variant(R, forced)) {
    char names[768];
    known_variants(R, names, sizeof names);
    reject(R, f, &env, E(UNKNOWN_VARIANT), "unknown variant '%.64s' (known: %s)", forced, names);
    return;
  }

  rt_task_t *t = calloc(1, sizeof *t);
  size_t total = 0;
  for (int i = 0; i < f->nparts; i++) total += f->lens[i];
  if (!t || !(t->route = malloc(total ? total : 1))) {
    free(t);
    reject(R, f, &env, E(INTERNAL), "out of memory");
    return;
  }
  t->queue_i = -1;
  t->client_id = cid;
  t->received = received;
  // Routing frames, to answer in the shape the client used.
  t->nroute = f->nparts;
  for (int i = 0, off = 0; i < f->nparts; i++) {
    memcpy(t->route + off, f->parts[i], f->lens[i]);
    t->route_len[i] = f->lens[i];
    off += (int)f->lens[i];
  }
  t->max_tokens = in->max_tokens ? in->max_tokens : (uint32_t)R->default_max_tokens;
  if (R->tok) code = tokenize(R, t, in, msg, sizeof msg);
  if (!code) {
    t->env = env;  // lent for the measurement; owned from acceptance on
    size_t bytes = forwarded_size(t, received);
    t->env = NULL;
    if (bytes > (size_t)R->max_msg_bytes) {
      code = E(TOO_BIG);
      snprintf(msg, sizeof msg,
               "the task as sent to a worker is %zu bytes, over the limit of %.0f (router.max_msg_bytes)", bytes,
               R->max_msg_bytes);
    }
  }
  if (!code && (t->active_i = push(&R->active, &R->n_active, &R->cap_active, t)) < 0) {
    code = E(INTERNAL);
    snprintf(msg, sizeof msg, "out of memory");
  }
  if (code) {
    task_free(t);
    reject(R, f, &env, code, "%s", msg);
    return;
  }

  // Accepted: from here on it is answered exactly once, through finish_error or on_result.
  t->env = env;
  t->seq = ++R->seq;
  if (forced[0]) ac_policy_forced(forced, &t->choice);
  else choose(R, t, &t->choice);
  AC_DEBUG("task %s: policy %s chose '%s' (complexity %.3f, confidence %.3f)", cid, t->choice.policy,
           t->choice.variant, (double)t->choice.complexity, (double)t->choice.confidence);
  if (in->deadline_ms) {
    t->deadline = received + in->deadline_ms;
    set_timer(R, t->deadline);
  }
  // Demand counts every accepted task; it reaches Redis with the tick, after the dispatch.
  rt_stats_demand(R->stats, t->choice.variant, ac_unix_ms());
  double now = ac_mono_ms();
  if (dispatch(R, t, now) == SENT) return;
  if (!enqueue(R, t, true, now)) {
    finish_error(R, t, E(OVERLOADED), "%d tasks are waiting for a worker already (router.max_queue)", R->n_queue);
    return;
  }
  if (t->needs_reload)
    AC_INFO("task %s: no worker can serve '%s' now; waiting for a reload (%d queued)", cid, t->choice.variant,
            R->n_queue);
}

static bool same_client(const rt_task_t *t, const ac_frames_t *f) {
  // The first routing frame is the client's identity on the front socket.
  return f->nparts > 0 && t->nroute > 0 && t->route_len[0] == f->lens[0] &&
         memcmp(t->route, f->parts[0], f->lens[0]) == 0;
}

static void on_cancel(rt_router_t *R, const ac_frames_t *f, const Agentcompress__Cancel *c) {
  const char *id = c->task_id ? c->task_id : "";
  for (int i = 0; i < R->n_active; i++) {
    rt_task_t *t = R->active[i];
    if (strcmp(t->client_id, id) != 0 || !same_client(t, f)) continue;
    cancel_attempt(R, t);
    finish_error(R, t, E(CANCELLED), "cancelled by the client");
    return;
  }
  AC_DEBUG("cancel for unknown task '%s' ignored (already answered?)", id);
}

static void on_admin(rt_router_t *R, const ac_frames_t *f, const Agentcompress__AdminRequest *a) {
  const char *cmd = a->command ? a->command : "";
  Agentcompress__AdminReply rep = AGENTCOMPRESS__ADMIN_REPLY__INIT;
  char *text = NULL;
  json_t *extra = json_object();
  double now = ac_mono_ms();
  json_object_set_new(extra, "router", json_string(R->id));
  if (!strcmp(cmd, "ping")) {
    rep.ok = true;
    json_object_set_new(extra, "pong", json_true());
    text = json_dumps(extra, JSON_COMPACT);
  } else if (!strcmp(cmd, "stats")) {
    rep.ok = true;
    int usable = 0;
    json_t *ws = json_array();
    for (int i = 0; i < R->wt.n; i++) {
      const rt_worker_t *w = R->wt.v[i];
      bool u = rt_worker_usable(w, now, R->timeout_ms);
      usable += u;
      json_array_append_new(ws, json_pack("{s:s, s:s, s:s, s:b, s:b, s:i, s:b}", "id", w->id, "variant", w->variant,
                                          "state", ac_msg_state_name(w->state), "connected", w->connected, "usable",
                                          u, "inflight", w->inflight, "drain", w->drain));
    }
    json_object_set_new(extra, "workers", ws);
    json_object_set_new(extra, "workers_usable", json_integer(usable));
    json_object_set_new(extra, "queued_now", json_integer(R->n_queue));
    json_object_set_new(extra, "inflight_now", json_integer(R->n_active - R->n_queue));
    json_object_set_new(extra, "policy", json_string(R->policy ? R->policy->name : ac_config_str(R->cfg, "policy")));
    json_object_set_new(extra, "redis", json_boolean(ac_rds_connected(R->rds)));
    json_object_set_new(extra, "context", json_integer(context_limit(R)));
    text = rt_stats_json(R->stats, now, extra);
  } else {
    rep.ok = false;
    char m[160];
    snprintf(m, sizeof m, "unknown admin command '%.64s' (ping, stats)", cmd);
    utf8_trim(m);
    json_object_set_new(extra, "error", json_string(m));
    text = json_dumps(extra, JSON_COMPACT);
  }
  json_decref(extra);
  rep.json = text ? text : (char *)"{}";
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_ADMIN_REPLY;
  env.admin_reply = &rep;
  const void *parts[AC_MSG_MAX_PARTS];
  ac_frames_route(f, parts);
  if (ac_msg_send(R->front, f->nparts, parts, f->lens, &env)) AC_DEBUG("admin reply not sent: %s", ac_errmsg());
  free(text);
}

static void on_front_msg(rt_router_t *R, ac_frames_t *f, double received) {
  rt_stats_received(R->stats);
  if (f->nparts == 0) return;  // a ROUTER always gives the identity; nothing to answer to
  if (f->truncated && !f->payload) {
    rt_stats_bad_message(R->stats, E(INTERNAL));
    reply_error(R, f, "", E(INTERNAL), "out of memory");
    return;
  }
  if (f->payload_len > (size_t)R->max_msg_bytes) {
    rt_stats_bad_message(R->stats, E(TOO_BIG));
    reply_error(R, f, "", E(TOO_BIG), "message of %zu bytes is over the limit of %.0f (router.max_msg_bytes)",
                f->payload_len, R->max_msg_bytes);
    return;
  }
  if (f->payload_len == 0) {
    // Would parse as an Envelope of version 0; it is no message at all.
    rt_stats_bad_message(R->stats, E(BAD_MESSAGE));
    reply_error(R, f, "", E(BAD_MESSAGE), "empty message (want a serialized Envelope)");
    return;
  }
  ac_env_t *env = NULL;
  int rc = ac_msg_unpack(f->payload, f->payload_len, 0, &env);
  if (rc) {
    code_t code = rc == AC_EUNSUPPORTED ? E(VERSION) : rc == AC_ERANGE ? E(TOO_BIG) : E(BAD_MESSAGE);
    rt_stats_bad_message(R->stats, code);
    reply_error(R, f, "", code, "%s", ac_errmsg());
    return;
  }
  switch (env->body_case) {
    case AGENTCOMPRESS__ENVELOPE__BODY_TASK: on_task(R, f, env, received); return;
    case AGENTCOMPRESS__ENVELOPE__BODY_CANCEL: on_cancel(R, f, env->cancel); break;
    case AGENTCOMPRESS__ENVELOPE__BODY_ADMIN_REQUEST: on_admin(R, f, env->admin_request); break;
    default:
      rt_stats_bad_message(R->stats, E(BAD_MESSAGE));
      reply_error(R, f, "", E(BAD_MESSAGE), "a router takes Task, Cancel or AdminRequest envelopes, not field %d",
                  (int)env->body_case);
  }
  ac_msg_free(&env);
}

static void on_front(rt_router_t *R) {
  // A bounded batch, so that workers' replies are not starved by a flood of requests.
  for (int k = 0; k < 512; k++) {
    ac_frames_t f;
    int rc = ac_frames_recv(R->front, &f);
    if (rc == AC_ENOTFOUND) return;
    if (rc) {
      AC_WARN("front: %s", ac_errmsg());
      return;
    }
    on_front_msg(R, &f, ac_mono_ms());
    ac_frames_free(&f);
  }
}

// --- replies from workers ------------------------------------------------------------------------

// The task of an attempt id "<router id>/<n>" that is still current on worker w.
static rt_task_t *attempt_task(rt_router_t *R, const char *id, const rt_worker_t *w) {
  size_t n = strlen(R->id);
  if (!id || strncmp(id, R->id, n) != 0 || id[n] != '/') return NULL;
  char *end;
  errno = 0;
  unsigned long long key = strtoull(id + n + 1, &end, 10);
  if (errno || *end || end == id + n + 1) return NULL;
  rt_task_t *t = rt_amap_get(&R->amap, key);
  return t && t->w == w ? t : NULL;
}

static void on_result(rt_router_t *R, rt_task_t *t, Agentcompress__Result *r, double now) {
  char *saved_id = r->task_id, *saved_req = r->requested_variant, *saved_pol = r->policy, *saved_var = r->variant;
  r->task_id = (char *)t->client_id;
  r->requested_variant = t->choice.variant;
  r->policy = (char *)t->choice.policy;
  if (!r->variant || !r->variant[0]) r->variant = t->served_variant;
  r->complexity = t->choice.complexity;
  r->confidence = t->choice.confidence;
  r->attempts = (uint32_t)t->attempts;
  r->waited_for_reload = t->queued_for_reload;
  r->queue_ms += t->dispatched - t->received;
  if (r->cost <= 0 && R->price_per_hour > 0) r->cost = (r->prefill_ms + r->decode_ms) / 3.6e6 * R->price_per_hour;
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_RESULT;
  env.result = r;
  send_client(R, t, &env);
  rt_answer_t a = {.ok = true, .attempts = t->attempts, .prompt_tokens = r->prompt_tokens,
                   .completion_tokens = r->completion_tokens, .cost_usd = r->cost, .requested = t->choice.variant,
                   .served = r->variant, .was_queued = t->queued_for_reload};
  rt_stats_answer(R->stats, &a, now);
  r->task_id = saved_id;
  r->requested_variant = saved_req;
  r->policy = saved_pol;
  r->variant = saved_var;
  task_done(R, t);
}

static void on_worker_msg(rt_router_t *R, rt_worker_t *w, const ac_frames_t *f, double now) {
  ac_env_t *env = NULL;
  if (ac_msg_unpack(f->payload, f->payload_len, 0, &env)) {
    AC_WARN("worker %s: unreadable reply dropped (%s)", w->id, ac_errmsg());
    return;
  }
  rt_task_t *t = NULL;
  switch (env->body_case) {
    case AGENTCOMPRESS__ENVELOPE__BODY_CHUNK: {
      Agentcompress__TokenChunk *c = env->chunk;
      if (!(t = attempt_task(R, c->task_id, w))) break;
      if (!t->env->task->stream) break;  // the client did not ask for tokens
      t->streamed += (uint32_t)c->n_tokens;
      char *saved = c->task_id;
      c->task_id = (char *)t->client_id;
      send_client(R, t, env);
      c->task_id = saved;
      break;
    }
    case AGENTCOMPRESS__ENVELOPE__BODY_RESULT:
      if ((t = attempt_task(R, env->result->task_id, w))) on_result(R, t, env->result, now);
      break;
    case AGENTCOMPRESS__ENVELOPE__BODY_ERROR: {
      Agentcompress__Error *e = env->error;
      if (!(t = attempt_task(R, e->task_id, w))) break;
      if (e->code == E(OVERLOADED)) {
        // Its slots and queue are full (other routers use it too). The task never started: it
        // waits here, without using up an attempt, until the worker has room again.
        rt_worker_hold(w, now);
        detach(R, t);
        t->attempts--;
        t->waited = true;
        if (!retry(R, t, now)) finish_error(R, t, E(OVERLOADED), "%s", e->message ? e->message : "");
      } else if (e->code == E(DRAINING)) {
        // Reloading or draining: no new tasks to it until a later heartbeat says READY.
        rt_worker_hold(w, now);
        char why[300];
        snprintf(why, sizeof why, "it answered DRAINING: %.200s", e->message ? e->message : "");
        lost(R, t, why, false, now);
      } else {
        finish_error(R, t, e->code, "%s", e->message ? e->message : "");
      }
      break;
    }
    default: AC_WARN("worker %s: unexpected envelope (field %d) dropped", w->id, (int)env->body_case); break;
  }
  if (!t) AC_DEBUG("worker %s: reply for an attempt no longer current dropped", w->id);
  else if (env->body_case != AGENTCOMPRESS__ENVELOPE__BODY_CHUNK && R->n_queue) R->kick = true;  // room freed
  ac_msg_free(&env);
}

static void on_worker(rt_router_t *R, rt_worker_t *w) {
  for (int k = 0; k < 1024 && w->sock; k++) {
    ac_frames_t f;
    int rc = ac_frames_recv(w->sock, &f);
    if (rc == AC_ENOTFOUND) return;
    if (rc) {
      AC_WARN("worker %s: %s", w->id, ac_errmsg());
      return;
    }
    if (f.payload) on_worker_msg(R, w, &f, ac_mono_ms());
    ac_frames_free(&f);
  }
}

// --- the tick: Redis in both directions ----------------------------------------------------------

void rt_router_read_settings(rt_router_t *R) {
  ac_config_t *c = R->cfg;
  R->max_queue = ac_config_num(c, "router.max_queue");
  R->queue_timeout_ms = ac_config_num(c, "router.queue_timeout_ms");
  R->default_max_tokens = ac_config_num(c, "router.default_max_tokens");
  R->max_attempts = ac_config_num(c, "router.max_attempts");
  R->max_msg_bytes = ac_config_num(c, "router.max_msg_bytes");
  R->timeout_ms = ac_config_num(c, "worker.timeout_ms");
  R->window_s = ac_config_num(c, "sched.window_s");
  R->price_per_hour = ac_config_num(c, "price.usd_per_hour");
  const char *name = ac_config_str(c, "policy");
  ac_policy_t *p = ac_policy_find(name);
  if (!p) {
    char why[320];
    snprintf(why, sizeof why, "policy '%s' is not available in this router", name);
    if (strcmp(why, R->policy_warned) != 0) {
      AC_WARN("%s; using full", why);
      snprintf(R->policy_warned, sizeof R->policy_warned, "%s", why);
    }
    p = ac_policy_find("full");
  }
  if (p != R->policy) AC_INFO("policy: %s", p->name);
  R->policy = p;
}

static void apply_catalog(rt_router_t *R, const redisReply *rep) {
  if (!rep || rep->type != REDIS_REPLY_STRING) return;  // none published: keep what we have
  if (R->cat_json && strlen(R->cat_json) == rep->len && memcmp(R->cat_json, rep->str, rep->len) == 0) return;
  char *text = strndup(rep->str, rep->len);
  if (!text) return;
  ac_catalog_t cat;
  if (ac_catalog_from_json(text, &cat)) {
    if (!R->cat_json || strcmp(R->cat_json, text) != 0) AC_WARN("catalog in redis ignored: %s", ac_errmsg());
    free(R->cat_json);
    R->cat_json = text;  // do not warn again for the same text
    return;
  }
  ac_catalog_free(&R->cat);
  R->cat = cat;
  free(R->cat_json);
  R->cat_json = text;
  AC_INFO("catalog: %d variants, reference '%s'", cat.n, cat.reference);
}

static void refresh(rt_router_t *R, double now) {
  ac_rds_t *r = R->rds;
  const char *p = ac_rds_prefix(r);
  bool want_cat = R->ticks % CATALOG_EVERY == 1;  // the first tick, then every second
  redisReply *members = NULL, *drain = NULL, *cat = NULL, *values = NULL;
  if (!ac_rds_begin(r)) goto down;
  int n_writes = rt_stats_append(R->stats, r, (int)R->window_s);
  ac_rds_append(r, "SMEMBERS %sworkers", p);
  ac_rds_append(r, "SMEMBERS %sdrain", p);
  if (want_cat) ac_rds_append(r, "GET %scatalog", p);
  for (int i = 0; i < n_writes; i++) {
    redisReply *x = ac_rds_reply(r);
    if (x && x->type == REDIS_REPLY_ERROR) AC_WARN("redis: %s", x->str);
    if (x) freeReplyObject(x);
  }
  members = ac_rds_reply(r);
  drain = ac_rds_reply(r);
  if (want_cat) cat = ac_rds_reply(r);
  if (!members || !drain || (want_cat && !cat) || members->type != REDIS_REPLY_ARRAY) goto down;
  if (members->elements) {
    size_t n = members->elements + 1;
    const char **argv = malloc(n * sizeof *argv);
    size_t *lens = malloc(n * sizeof *lens);
    char **keys = calloc(n, sizeof *keys);
    bool ok = argv && lens && keys;
    if (ok) {
      argv[0] = "MGET";
      lens[0] = 4;
      for (size_t i = 0; i < members->elements && ok; i++) {
        const redisReply *m = members->element[i];
        if (m->type != REDIS_REPLY_STRING) m = NULL;
        size_t kl = strlen(p) + 7 + (m ? m->len : 0);
        if (!(keys[i] = malloc(kl + 1))) {
          ok = false;
          break;
        }
        int k = snprintf(keys[i], kl + 1, "%sworker:", p);
        if (m) memcpy(keys[i] + k, m->str, m->len);
        argv[i + 1] = keys[i];
        lens[i + 1] = (size_t)k + (m ? m->len : 0);
      }
    }
    if (ok) values = ac_rds_cmdv(r, (int)n, argv, lens);
    for (size_t i = 0; keys && i < n; i++) free(keys[i]);
    free(keys);
    free(argv);
    free(lens);
    if (!values || values->type != REDIS_REPLY_ARRAY) goto down;
  }
  rt_workers_apply(&R->wt, members, values, drain, now);
  if (cat) apply_catalog(R, cat);
  goto done;
down:
  // Redis is away (or answered nonsense): serve on with the table we have.
  rt_workers_freeze(&R->wt, now);
done:
  if (members) freeReplyObject(members);
  if (drain) freeReplyObject(drain);
  if (cat) freeReplyObject(cat);
  if (values) freeReplyObject(values);
}

static void timers(rt_router_t *R, double now);

static void tick(rt_router_t *R, double now) {
  R->ticks++;
  ac_config_refresh(R->cfg, R->rds);
  rt_router_read_settings(R);
  refresh(R, now);
  // Workers that stopped being there: fail their tasks (retried elsewhere).
  for (int i = 0; i < R->wt.n; i++) {
    rt_worker_t *w = R->wt.v[i];
    w->send_blocked = false;
    if (w->moved) {
      w->moved = false;
      fail_worker_tasks(R, w, "it moved to another endpoint", false, now);
    }
    if (rt_worker_stale(w, now, R->timeout_ms) && !w->stale_reported) {
      w->stale_reported = true;
      AC_WARN("worker %s: no heartbeat for %.0f ms", w->id, now - w->fresh_mono);
      fail_worker_tasks(R, w, "its heartbeat stopped", true, now);
    }
  }
  for (int i = R->wt.n - 1; i >= 0; i--) {
    rt_worker_t *w = R->wt.v[i];
    // A key that expired means dead. A key gone together with its id in <prefix>workers is
    // what a Redis restart looks like: a worker still connected gets worker.timeout_ms to
    // re-register at its next heartbeat before its tasks are given up.
    if (!w->listed && (w->expired || !w->connected || now - w->unlisted_mono > R->timeout_ms)) {
      fail_worker_tasks(R, w, w->expired ? "its heartbeat key expired" : "its registration is gone", true, now);
      rt_workers_remove(&R->wt, w);
    }
  }
  dispatch_queue(R, now);
  // Keep <prefix>wanted fresh while tasks wait, so the scheduler sees current demand.
  if (R->n_queue && now - R->wanted_at >= 1000) {
    R->wanted_at = now;
    uint64_t ms = ac_unix_ms();
    for (int i = 0; i < R->n_queue; i++)
      if (R->queue[i]->needs_reload) rt_stats_wanted(R->stats, R->queue[i]->choice.variant, ms);
  }
  // Settings may have changed (a shorter queue timeout applies to the tasks waiting already).
  timers(R, now);
}

// Deadlines and queue timeouts.
static void timers(rt_router_t *R, double now) {
  R->next_timer = 0;
  for (int i = R->n_active - 1; i >= 0; i--) {
    if (i >= R->n_active) continue;
    rt_task_t *t = R->active[i];
    if (t->deadline > 0 && now >= t->deadline) {
      cancel_attempt(R, t);
      finish_error(R, t, E(DEADLINE), "the deadline of %u ms passed%s", t->env->task->deadline_ms,
                   t->w ? "" : " before a worker could take the task");
      continue;
    }
    if (t->queue_i >= 0 && now - t->queued_since >= R->queue_timeout_ms) {
      if (t->needs_reload)
        finish_error(R, t, E(NO_WORKER), "no worker holds a variant that can serve '%s' (waited %.0f ms)",
                     t->choice.variant, now - t->queued_since);
      else
        finish_error(R, t, E(NO_WORKER), "the workers that can serve '%s' stayed full (waited %.0f ms)",
                     t->choice.variant, now - t->queued_since);
      continue;
    }
    set_timer(R, t->deadline);
    if (t->queue_i >= 0) set_timer(R, t->queued_since + R->queue_timeout_ms);
  }
}

// --- the loop ------------------------------------------------------------------------------------

typedef struct {
  zmq_pollitem_t *items;
  rt_worker_t **who;  // per item: the worker (NULL for the front socket)
  int n, cap;
} pollset_t;

static int pollset_build(pollset_t *ps, rt_router_t *R) {
  int need = 1 + 2 * R->wt.n;
  if (need > ps->cap) {
    zmq_pollitem_t *it = realloc(ps->items, (size_t)need * sizeof *it);
    if (!it) return AC_ENOMEM;
    ps->items = it;
    rt_worker_t **who = realloc(ps->who, (size_t)need * sizeof *who);
    if (!who) return AC_ENOMEM;
    ps->who = who;
    ps->cap = need;
  }
  int n = 0;
  ps->items[n] = (zmq_pollitem_t){.socket = R->front, .events = ZMQ_POLLIN};
  ps->who[n++] = NULL;
  for (int i = 0; i < R->wt.n; i++) {
    rt_worker_t *w = R->wt.v[i];
    if (!w->sock) continue;
    ps->items[n] = (zmq_pollitem_t){.socket = w->sock, .events = ZMQ_POLLIN};
    ps->who[n++] = w;
    ps->items[n] = (zmq_pollitem_t){.socket = w->mon, .events = ZMQ_POLLIN};
    ps->who[n++] = w;
  }
  ps->n = n;
  R->wt.sockets_changed = false;
  return 0;
}

static void begin_stop(rt_router_t *R, double now) {
  R->stopping = true;
  R->stop_deadline = now + R->drain_ms;
  AC_INFO("shutting down: %d queued tasks answered DRAINING, waiting up to %.0f ms for %d in flight", R->n_queue,
          R->drain_ms, R->n_active - R->n_queue);
  while (R->n_queue) finish_error(R, R->queue[0], E(DRAINING), "the router is shutting down");
}

int rt_router_run(rt_router_t *R, volatile sig_atomic_t *stop) {
  pollset_t ps = {0};
  double now = ac_mono_ms(), next_tick = now;
  int status = 0;
  for (;;) {
    now = ac_mono_ms();
    if (*stop && !R->stopping) begin_stop(R, now);
    if (R->stopping && (R->n_active == 0 || now >= R->stop_deadline)) break;
    if (now >= next_tick) {
      tick(R, now);
      next_tick = now + TICK_MS;
    }
    if ((R->wt.sockets_changed || !ps.items) && pollset_build(&ps, R)) {
      AC_ERROR("out of memory");
      status = 1;
      break;
    }
    double wake = next_tick;
    if (R->next_timer > 0 && R->next_timer < wake) wake = R->next_timer;
    long timeout = (long)ceil(wake - ac_mono_ms());
    if (timeout < 0) timeout = 0;
    int rc = zmq_poll(ps.items, ps.n, timeout);
    if (rc < 0) {
      if (errno == EINTR) continue;
      AC_ERROR("zmq_poll: %s", zmq_strerror(errno));
      status = 1;
      break;
    }
    // Connection events first: a worker that died must not get the tasks read below.
    for (int i = 1; i < ps.n; i++) {
      rt_worker_t *w = ps.who[i];
      if (!(ps.items[i].revents & ZMQ_POLLIN) || ps.items[i].socket != w->mon) continue;
      int ev = rt_worker_events(w);
      if (ev & RT_EV_DOWN) {
        // Read what it sent before the connection broke, then retry the rest elsewhere.
        on_worker(R, w);
        fail_worker_tasks(R, w, "its connection closed", false, ac_mono_ms());
      }
      if (ev & RT_EV_UP) R->kick = true;
    }
    for (int i = 1; i < ps.n; i++) {
      rt_worker_t *w = ps.who[i];
      if ((ps.items[i].revents & ZMQ_POLLIN) && ps.items[i].socket == w->sock) on_worker(R, w);
    }
    if (ps.items[0].revents & ZMQ_POLLIN) on_front(R);
    now = ac_mono_ms();
    if (R->kick) {
      R->kick = false;
      dispatch_queue(R, now);
    }
    if (R->next_timer > 0 && now >= R->next_timer) timers(R, now);
  }
  // Whatever is still in flight after the grace period is answered now.
  while (R->n_active) {
    rt_task_t *t = R->active[R->n_active - 1];
    cancel_attempt(R, t);
    finish_error(R, t, E(DRAINING), "the router shut down before the worker answered");
  }
  // The last counters, if Redis is there.
  if (ac_rds_begin(R->rds)) {
    int n = rt_stats_append(R->stats, R->rds, (int)R->window_s);
    for (int i = 0; i < n; i++) {
      redisReply *x = ac_rds_reply(R->rds);
      if (x) freeReplyObject(x);
    }
  }
  free(ps.items);
  free(ps.who);
  return status;
}

void rt_router_free_tasks(rt_router_t *R) {
  while (R->n_active) task_done(R, R->active[R->n_active - 1]);
  free(R->active);
  free(R->queue);
  R->active = R->queue = NULL;
  R->cap_active = R->cap_queue = 0;
  rt_amap_free(&R->amap);
}
