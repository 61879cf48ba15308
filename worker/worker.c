// worker.c - ac-worker: one model variant, many tasks at once, behind a ZeroMQ ROUTER socket.
//
// One thread runs everything (the model's thread pool aside): it receives Tasks and Cancels,
// admits tasks into the slots of a continuous-batching engine (lib/serve) or queues them, runs
// one batched evaluation per loop turn, streams TokenChunks and sends each Result. Every
// worker.heartbeat_ms it writes its state to Redis (README: "Redis keys"), reads the operator's drain
// set, and takes reload commands. Redis being away never stops it serving.
//
//   loop: poll the socket (0 ms while sequences run, else up to 20 ms)
//         -> read every message -> admit queued tasks -> one ac_serve_step -> heartbeat when due
//         -> a pending reload or shutdown proceeds once in-flight tasks are done (or too slow)
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "catalog.h"
#include "chat.h"
#include "clock.h"
#include "comm.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "msg.h"
#include "prompt.h"
#include "quant.h"
#include "rds.h"
#include "registry.h"
#include "serve.h"
#include "settings.h"
#ifdef AC_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define MAX_STOPS 16
#define MAX_STOP_LEN 256
#define HARD_MAX_MSG (64u << 20) // ZMQ_MAXMSGSIZE: above router.max_msg_bytes' largest value

typedef Agentcompress__ErrorCode err_code_t;
#define E(x) AGENTCOMPRESS__ERROR_CODE__ERR_##x

// --- tasks ---------------------------------------------------------------------------------------

typedef struct task {
  struct task *next;         // queue link
  char *id;                  // the sender's task id, echoed in every reply
  int nparts;                // routing frames of the sender, for replies
  size_t lens[AC_MSG_MAX_PARTS];
  uint8_t parts[AC_MSG_MAX_PARTS][256];
  int32_t *ids;              // the prompt as token ids
  int n_ids;
  int32_t max_tokens;
  ac_sampler_params_t sp;
  char *stop[MAX_STOPS];
  int n_stop;
  bool ignore_eos, stream;
  int32_t skip;
  int32_t priority;
  char *requested;           // Task.variant
  double t_recv, t_start;    // monotonic ms: receipt, admission into a slot
  uint64_t tag;
  int slot;                  // -1 while queued
} task_t;

static void task_free(task_t **tp) {
  task_t *t = *tp;
  if (!t) return;
  free(t->id);
  free(t->ids);
  for (int i = 0; i < t->n_stop; i++) free(t->stop[i]);
  free(t->requested);
  free(t);
  *tp = NULL;
}

// --- the worker ----------------------------------------------------------------------------------

typedef struct {
  char id[128];
  char reason[512];
  char variant[64];
  double t_cmd;             // monotonic ms when it was taken
  double deadline;          // in-flight tasks are cut off after this
} reload_t;

typedef struct {
  // Options.
  char id[256], listen[512], advertise[512], zoo[2048], host[256];
  int slots, threads, n_ctx, prefill_chunk;
  uint64_t capacity;
  // Where the forward pass runs: the backend, the GPU, and the tensor-parallel group (tp ranks;
  // with CUDA one process per GPU: this one is rank tp_rank, and `comm` its NCCL communicator).
  ac_backend_t backend;
  int gpu, tp, tp_rank;
  const char *tp_id;
  ac_comm_t *comm;
  bool tp_broken;            // a collective failed: the group cannot go on
  double drain_wait_ms;
  wreg_t *reg;               // Redis, on its own thread
  wreg_cfg_t cfg;            // runtime settings, as the registry thread last read them
  ac_catalog_t cat;
  void *zctx, *sock;

  // The variant held.
  char variant[64];
  uint64_t variant_bytes;
  ac_model_t *model;
  ac_serve_t *srv;
  ac_tokenizer_t *tok_keep;  // a share of the last tokenizer: variants of one base reuse it

  // Tasks.
  task_t **running;         // (slots) the task in each serve slot
  task_t *queue;            // waiting for a slot: priority high first, then arrival
  int n_queued, max_queue;
  uint64_t next_tag;

  // State.
  bool drain_op;            // in <prefix>drain
  bool stopping;            // SIGTERM/SIGINT
  double stop_deadline;
  bool have_reload;
  reload_t reload;

  // Numbers for the heartbeat.
  uint64_t started_at_ms, tasks_done, tokens_done, last_reload_at_ms;
  double busy_s, last_reload_ms;
  double next_hb, hb_ms, last_rate_t;  // next_hb = 0: the state changed, tell Redis now
  uint64_t rows_since;      // rows evaluated since last_rate_t
  double tokens_per_s;
} worker_t;

static volatile sig_atomic_t g_signals;

static void on_signal(int sig) {
  (void)sig;
  g_signals++;
}

static Agentcompress__WorkerState worker_state(const worker_t *w) {
  if (!w->srv) return AGENTCOMPRESS__WORKER_STATE__WORKER_LOADING;
  if (w->have_reload) return AGENTCOMPRESS__WORKER_STATE__WORKER_RELOADING;
  if (w->stopping || w->drain_op) return AGENTCOMPRESS__WORKER_STATE__WORKER_DRAINING;
  return AGENTCOMPRESS__WORKER_STATE__WORKER_READY;
}

// --- UTF-8 for the wire --------------------------------------------------------------------------
// Protobuf strings must be UTF-8 (Python's parser rejects a message otherwise). Model output is
// bytes: a valid text passes unchanged; an invalid byte, or a NUL, becomes U+FFFD.

// Looks at the character starting s[0]: returns true with *adv its length when it is valid;
// else false with *adv the bytes one U+FFFD replaces (the longest start of a valid character,
// at least 1: Unicode's "maximal subpart" practice, which Python's errors="replace" follows too).
static bool utf8_next(const unsigned char *s, size_t n, size_t *adv) {
  unsigned char c = s[0];
  *adv = 1;
  if (c >= 0x01 && c < 0x80) return true;
  size_t need;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return false;  // NUL, a stray continuation byte, or a byte UTF-8 never uses
  }
  size_t k = 1;
  while (k < need && k < n && s[k] >= (k == 1 ? lo : 0x80) && s[k] <= (k == 1 ? hi : 0xBF)) k++;
  *adv = k;
  return k == need;
}

// A NUL-terminated valid UTF-8 copy of s[0..n), malloc'ed (NULL when out of memory).
static char *utf8_clean(const char *s, size_t n) {
  char *out = malloc(n * 3 + 1);
  if (!out) return NULL;
  size_t o = 0, k;
  for (size_t i = 0; i < n; i += k) {
    if (utf8_next((const unsigned char *)s + i, n - i, &k)) {
      memcpy(out + o, s + i, k);
      o += k;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
    }
  }
  out[o] = 0;
  return out;
}

// --- replies -------------------------------------------------------------------------------------

static void route_of(const task_t *t, const void **parts) {
  for (int i = 0; i < t->nparts; i++) parts[i] = t->parts[i];
}

static int send_env(worker_t *w, const task_t *t, ac_env_t *env) {
  const void *parts[AC_MSG_MAX_PARTS];
  route_of(t, parts);
  int rc = ac_msg_send(w->sock, t->nparts, parts, t->lens, env);
  if (rc) AC_DEBUG("task %s: reply not sent: %s", t->id, ac_errmsg());
  return rc;
}

static void send_task_error(worker_t *w, const task_t *t, err_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void send_task_error(worker_t *w, const task_t *t, err_code_t code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char *clean = utf8_clean(msg, strlen(msg));
  const void *parts[AC_MSG_MAX_PARTS];
  route_of(t, parts);
  if (ac_msg_send_error(w->sock, t->nparts, parts, t->lens, t->id, code, clean ? clean : "error"))
    AC_DEBUG("task %s: error reply not sent: %s", t->id, ac_errmsg());
  AC_DEBUG("task %s: %s: %s", t->id, ac_msg_code_name(code), msg);
  free(clean);
}

// An Error to the sender of a message that did not get as far as being a task.
static void send_frames_error(worker_t *w, const ac_frames_t *f, const char *task_id, err_code_t code,
                              const char *msg) {
  if (f->nparts == 0 || f->truncated) return;  // no way back to the sender
  const void *parts[AC_MSG_MAX_PARTS];
  ac_frames_route(f, parts);
  char *clean = utf8_clean(msg, strlen(msg));
  // The task id is echoed as it came, so that the sender finds its task.
  if (ac_msg_send_error(w->sock, f->nparts, parts, f->lens, task_id ? task_id : "", code, clean ? clean : "error"))
    AC_DEBUG("error reply not sent: %s", ac_errmsg());
  free(clean);
}

// --- the model -----------------------------------------------------------------------------------

static ac_serve_params_t serve_params(const worker_t *w) {
  return (ac_serve_params_t){.slots = w->slots, .n_ctx = w->n_ctx, .n_threads = w->threads,
                             .prefill_chunk = w->prefill_chunk, .backend = w->backend, .gpu = w->gpu,
                             .tp = w->tp, .comm = w->comm};
}

// A tensor-parallel group of processes (CUDA: one per GPU) loads each variant together. Rank 0,
// the worker that serves tasks, names the variant (an empty name: the group stops); every rank
// loads it and says whether it could (rc 0 or an error code); all keep it only if all could.
// Each rank's context then takes its leader's calls (ac_ctx_follow) until the leader unloads.
enum { TP_NAME = 64 };

static int tp_announce(worker_t *w, const char *name) {
  char buf[TP_NAME] = {0};
  snprintf(buf, sizeof buf, "%s", name);
  return ac_comm_broadcast(w->comm, buf, sizeof buf, 0);
}

// Every rank's result of loading, from every rank: returns `rc` when this rank failed, an error
// naming the first rank that failed, or 0 when all succeeded. A failed collective sets tp_broken.
static int tp_agree(worker_t *w, int rc) {
  if (!w->comm) return rc;
  char mine[1024];
  snprintf(mine, sizeof mine, "%s", rc ? ac_errmsg() : "");
  int bad = -1, bad_rc = 0;
  for (int r = 0; r < w->comm->size; r++) {
    int32_t v = rc;
    int crc = ac_comm_broadcast(w->comm, &v, sizeof v, r);
    if (crc) {
      w->tp_broken = true;
      return crc;
    }
    if (v && bad < 0) bad = r, bad_rc = v;
  }
  if (rc) return ac_error(rc, "%s", mine);
  if (bad >= 0) return ac_error(bad_rc, "tensor-parallel rank %d of %d could not load the variant", bad, w->comm->size);
  return 0;
}

// The life of a follower process: load what rank 0 names, take its calls, until it says stop.
static int tp_follow(worker_t *w) {
  for (;;) {
    char name[TP_NAME];
    int rc = ac_comm_broadcast(w->comm, name, sizeof name, 0);
    if (rc) return rc;
    name[TP_NAME - 1] = 0;
    if (!name[0]) return 0;
    const ac_variant_t *v = ac_catalog_find(&w->cat, name);
    char path[4096];
    ac_model_t *m = NULL;
    ac_ctx_t *ctx = NULL;
    double t0 = ac_mono_ms();
    if (!v) rc = ac_error(AC_ENOTFOUND, "unknown variant '%s' (not in zoo %s)", name, w->zoo);
    else snprintf(path, sizeof path, "%s/%s", w->zoo, v->file);
    if (!rc) rc = ac_model_load(path, &m);
    if (!rc) rc = ac_ctx_new(m, ac_serve_ctx_params(serve_params(w)), &ctx);
    if (rc) AC_ERROR("rank %d: variant '%s': %s", w->tp_rank, name, ac_errmsg());
    if (!(rc = tp_agree(w, rc))) {
      AC_INFO("rank %d of %d: %s loaded in %.1f ms", w->tp_rank, w->tp, name, ac_mono_ms() - t0);
      if ((rc = ac_ctx_follow(ctx))) w->tp_broken = true;
    }
    ac_ctx_destroy(&ctx);
    ac_model_destroy(&m);
    // A variant that failed to load is the leader's to report; a failed collective ends the group.
    if (w->tp_broken) return rc;
  }
}

// Joins the process group of --tp-id as rank tp_rank: NCCL between GPUs, ZeroMQ between CPU
// processes.
static int join_process_group(worker_t *w) {
  const int timeout_ms = 300000;
  if (w->backend == AC_BACKEND_CPU) return ac_comm_zmq_new(w->tp_rank, w->tp, w->tp_id, timeout_ms, &w->comm);
#ifdef AC_HAVE_CUDA
  return ac_comm_nccl_new(w->tp_rank, w->tp, w->gpu, w->tp_id, timeout_ms, &w->comm);
#else
  return ac_error(AC_EUNSUPPORTED, "--backend cuda needs a CUDA build: configure with -DAC_CUDA=ON");
#endif
}

// A process that is rank tp_rank > 0 of a group: no socket, no Redis; it lives as long as its
// leader's group.
static int follower_process(worker_t *w) {
  int rc = ac_catalog_load_dir(w->zoo, &w->cat);
  if (!rc) rc = join_process_group(w);
  if (!rc) {
    AC_INFO("rank %d of %d (%s): following rank 0 at %s", w->tp_rank, w->tp, w->comm->ops->name, w->tp_id);
    rc = tp_follow(w);
  }
  if (rc) fprintf(stderr, "ac-worker: rank %d: %s\n", w->tp_rank, ac_errmsg());
  else AC_INFO("rank %d: the group stopped", w->tp_rank);
  ac_comm_destroy(&w->comm);
  ac_catalog_free(&w->cat);
  return rc ? 1 : 0;
}

// Rank 0 of a group of processes (--tp-id) joins it; a CPU group without --tp-id needs nothing
// here (its ranks are threads the engine starts).
static int join_group(worker_t *w) {
  if (w->tp == 1 || !w->tp_id) return 0;
  return join_process_group(w);
}

// Rank 0 tells its followers the group is done (after unloading).
static void leave_group(worker_t *w) {
  if (w->comm && !w->tp_broken) tp_announce(w, "");
  ac_comm_destroy(&w->comm);
}

// Loads `name` from the catalog into w->model / w->srv (both NULL before). *load_ms receives the
// time of ac_model_load, making the weights resident, and the context.
static int load_variant(worker_t *w, const char *name, double *load_ms) {
  *load_ms = 0;
  const ac_variant_t *v = ac_catalog_find(&w->cat, name);
  if (!v) return ac_error(AC_ENOTFOUND, "unknown variant '%s' (not in zoo %s)", name, w->zoo);
  if (w->capacity && v->bytes > w->capacity)
    return ac_error(AC_ERANGE, "variant '%s' needs %llu bytes, more than this worker's capacity of %llu", name,
                    (unsigned long long)v->bytes, (unsigned long long)w->capacity);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", w->zoo, v->file);
  double t0 = ac_mono_ms();
  ac_model_t *m = NULL;
  ac_serve_t *srv = NULL;
  int rc;
  char why[1024];  // ac_error writes the buffer ac_errmsg reads: copy first
  if (w->comm && (rc = tp_announce(w, name))) return rc;
  if ((rc = ac_model_load_reuse(path, w->tok_keep, &m))) {
    snprintf(why, sizeof why, "%s", ac_errmsg());
    return tp_agree(w, ac_error(rc, "variant '%s': %s", name, why));
  }
  if (m->tok != w->tok_keep) {
    ac_tokenizer_destroy(&w->tok_keep);
    w->tok_keep = ac_tokenizer_ref(m->tok);
  }
  ac_gguf_make_resident(m->gguf);  // a reload ends when the weights are in memory, not at mmap
  rc = ac_serve_new(m, serve_params(w), &srv);
  if (rc) {
    snprintf(why, sizeof why, "%s", ac_errmsg());
    rc = ac_error(rc, "variant '%s': %s", name, why);
  }
  if ((rc = tp_agree(w, rc))) {
    ac_serve_destroy(&srv);
    ac_model_destroy(&m);
    return rc;
  }
  *load_ms = ac_mono_ms() - t0;
  w->model = m;
  w->srv = srv;
  snprintf(w->variant, sizeof w->variant, "%s", name);
  w->variant_bytes = v->bytes;
  return 0;
}

static void unload(worker_t *w) {
  ac_serve_destroy(&w->srv);
  ac_model_destroy(&w->model);
  w->variant[0] = 0;
  w->variant_bytes = 0;
}

// --- the engine's events -------------------------------------------------------------------------

static void on_event(void *user, const ac_serve_event_t *ev) {
  worker_t *w = user;
  task_t *t = ev->slot >= 0 && ev->slot < w->slots ? w->running[ev->slot] : NULL;
  if (!t || t->tag != ev->tag) return;
  bool lost = false;
  if (t->stream && (ev->len > 0 || ev->n_tokens > 0)) {
    char *text = utf8_clean(ev->text, ev->len);
    Agentcompress__TokenChunk c = AGENTCOMPRESS__TOKEN_CHUNK__INIT;
    c.task_id = t->id;
    c.text = text ? text : "";
    c.n_tokens = (size_t)ev->n_tokens;
    c.tokens = (int32_t *)ev->tokens;
    ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
    env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_CHUNK;
    env.chunk = &c;
    lost = send_env(w, t, &env) != 0;
    free(text);
  }
  if (ev->finish == AC_SERVE_RUNNING) {
    if (lost) {
      // The sender is gone (or not reading): nobody will read the rest.
      AC_INFO("task %s: the sender is unreachable; cancelled", t->id);
      ac_serve_cancel(w->srv, t->tag);
      w->running[ev->slot] = NULL;
      task_free(&t);
    }
    return;
  }
  w->running[ev->slot] = NULL;
  w->tasks_done++;
  w->tokens_done += (uint64_t)ev->n_completion;
  if (ev->finish == AC_SERVE_FAILED) {
    send_task_error(w, t, E(INTERNAL), "%s", ev->error ? ev->error : "evaluation failed");
    task_free(&t);
    return;
  }
  char *text = utf8_clean(ev->all_text, ev->all_len);
  Agentcompress__Result r = AGENTCOMPRESS__RESULT__INIT;
  r.task_id = t->id;
  r.text = text ? text : "";
  r.prompt_tokens = (uint32_t)ev->n_prompt;
  r.completion_tokens = (uint32_t)ev->n_completion;
  r.finish = ev->finish == AC_SERVE_LENGTH    ? AGENTCOMPRESS__FINISH_REASON__FINISH_LENGTH
             : ev->finish == AC_SERVE_CONTEXT ? AGENTCOMPRESS__FINISH_REASON__FINISH_CONTEXT
                                              : AGENTCOMPRESS__FINISH_REASON__FINISH_STOP;
  r.variant = w->variant;
  r.requested_variant = t->requested ? t->requested : "";
  r.complexity = -1;
  r.queue_ms = t->t_start - t->t_recv;
  r.prefill_ms = ev->prefill_ms;
  r.decode_ms = ev->decode_ms;
  r.worker = w->id;
  r.cost = ev->busy_s * w->cfg.usd_per_hour / 3600.0;
  r.attempts = 1;
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_RESULT;
  env.result = &r;
  send_env(w, t, &env);
  AC_DEBUG("task %s: %s, %d+%d tokens, queue %.1f ms, prefill %.1f ms, decode %.1f ms, busy %.4f s", t->id,
           ac_serve_finish_name(ev->finish), ev->n_prompt, ev->n_completion, r.queue_ms, ev->prefill_ms,
           ev->decode_ms, ev->busy_s);
  free(text);
  task_free(&t);
}

// --- admitting tasks -----------------------------------------------------------------------------

static void queue_push(worker_t *w, task_t *t) {
  task_t **pp = &w->queue;
  while (*pp && (*pp)->priority >= t->priority) pp = &(*pp)->next;
  t->next = *pp;
  *pp = t;
  w->n_queued++;
}

// Moves queued tasks into free slots.
static void admit(worker_t *w) {
  while (w->queue && w->srv && ac_serve_free_slots(w->srv) > 0) {
    task_t *t = w->queue;
    w->queue = t->next;
    t->next = NULL;
    w->n_queued--;
    ac_serve_req_t req = {.tokens = t->ids,
                          .n_tokens = t->n_ids,
                          .max_tokens = t->max_tokens,
                          .sampling = t->sp,
                          .stop = (const char *const *)t->stop,
                          .n_stop = t->n_stop,
                          .ignore_eos = t->ignore_eos,
                          .skip_tokens = t->skip};
    t->tag = ++w->next_tag;
    int slot = ac_serve_add(w->srv, &req, t->tag);
    if (slot < 0) {
      send_task_error(w, t, slot == AC_ERANGE ? E(TOO_LONG) : slot == AC_EINVAL ? E(INVALID) : E(INTERNAL), "%s",
                      ac_errmsg());
      task_free(&t);
      continue;
    }
    t->slot = slot;
    t->t_start = ac_mono_ms();
    w->running[slot] = t;
  }
}

// Answers every queued task with `code` (they have not started, so another worker may take them).
static void reject_queue(worker_t *w, err_code_t code, const char *why) {
  while (w->queue) {
    task_t *t = w->queue;
    w->queue = t->next;
    w->n_queued--;
    send_task_error(w, t, code, "%s", why);
    task_free(&t);
  }
}

// Ends every running task with an Error.
static void cut_running(worker_t *w, err_code_t code, const char *why) {
  for (int i = 0; i < w->slots; i++) {
    task_t *t = w->running[i];
    if (!t) continue;
    if (w->srv) ac_serve_cancel(w->srv, t->tag);
    send_task_error(w, t, code, "%s", why);
    w->running[i] = NULL;
    task_free(&t);
  }
}

static int n_running(const worker_t *w) {
  int n = 0;
  for (int i = 0; i < w->slots; i++) n += w->running[i] != NULL;
  return n;
}

// --- receiving -----------------------------------------------------------------------------------

// Checks a Task and turns it into a task_t (prompt tokenized). On a problem, answers the sender
// and returns NULL.
static task_t *task_from(worker_t *w, const ac_frames_t *f, const Agentcompress__Task *m) {
  task_t *t = calloc(1, sizeof *t);
  if (!t || !(t->id = strdup(m->id ? m->id : ""))) {
    free(t);
    send_frames_error(w, f, m->id, E(INTERNAL), "out of memory");
    return NULL;
  }
  t->nparts = f->nparts;
  memcpy(t->lens, f->lens, sizeof t->lens);
  memcpy(t->parts, f->parts, sizeof t->parts);
  t->slot = -1;
  t->t_recv = ac_mono_ms();
  t->priority = m->priority;
  t->stream = m->stream;
  t->ignore_eos = m->ignore_eos;
  t->skip = m->skip_tokens > INT32_MAX ? INT32_MAX : (int32_t)m->skip_tokens;
  uint32_t mt = m->max_tokens ? m->max_tokens : (uint32_t)w->cfg.default_max_tokens;
  t->max_tokens = mt > INT32_MAX ? INT32_MAX : (int32_t)mt;
  if (m->variant && *m->variant && !(t->requested = strdup(m->variant))) goto oom;

  if (!*t->id) {
    send_task_error(w, t, E(INVALID), "the task has no id");
    goto fail;
  }
  // Sampling: the proto's "off" values map to the sampler's.
  t->sp = ac_sampler_default_params();
  if (m->sampling) {
    const Agentcompress__Sampling *s = m->sampling;
    if (!isfinite(s->temperature) || s->temperature < 0 || s->temperature > 100 || s->top_k < 0 ||
        !isfinite(s->top_p) || s->top_p < 0 || s->top_p > 1 || !isfinite(s->min_p) || s->min_p < 0 || s->min_p >= 1) {
      send_task_error(w, t, E(INVALID),
                      "sampling out of range: temperature %g (0..100), top_k %d (>= 0), top_p %g (0..1), min_p %g (0..1)",
                      (double)s->temperature, s->top_k, (double)s->top_p, (double)s->min_p);
      goto fail;
    }
    t->sp.temp = s->temperature;
    t->sp.top_k = s->top_k;
    t->sp.top_p = s->top_p > 0 ? s->top_p : 1.0f;
    t->sp.min_p = s->min_p;
    t->sp.seed = s->seed;
  }
  if (m->n_stop > MAX_STOPS) {
    send_task_error(w, t, E(INVALID), "%zu stop strings; at most %d", m->n_stop, MAX_STOPS);
    goto fail;
  }
  for (size_t i = 0; i < m->n_stop; i++) {
    const char *s = m->stop[i] ? m->stop[i] : "";
    if (strlen(s) > MAX_STOP_LEN) {
      send_task_error(w, t, E(INVALID), "stop string %zu is longer than %d bytes", i, MAX_STOP_LEN);
      goto fail;
    }
    if (!(t->stop[t->n_stop] = strdup(s))) goto oom;
    t->n_stop++;
  }

  // The prompt: ids from the router, else a chat, else raw text (empty: BOS alone, as acq run).
  const ac_model_t *mod = w->model;
  int V = mod->hp.n_vocab, n_ctx = ac_serve_n_ctx(w->srv);
  if (m->n_prompt_tokens > 0) {
    if (m->n_prompt_tokens >= (size_t)n_ctx) {
      send_task_error(w, t, E(TOO_LONG), "prompt of %zu tokens is longer than the context of %d (at most %d)",
                      m->n_prompt_tokens, n_ctx, n_ctx - 1);
      goto fail;
    }
    for (size_t i = 0; i < m->n_prompt_tokens; i++)
      if (m->prompt_tokens[i] < 0 || m->prompt_tokens[i] >= V) {
        send_task_error(w, t, E(INVALID), "prompt token %zu: id %d is outside the vocabulary of %s (%d)", i,
                        m->prompt_tokens[i], w->variant, V);
        goto fail;
      }
    if (!(t->ids = malloc(m->n_prompt_tokens * sizeof *t->ids))) goto oom;
    memcpy(t->ids, m->prompt_tokens, m->n_prompt_tokens * sizeof *t->ids);
    t->n_ids = (int)m->n_prompt_tokens;
  } else {
    bool chat = m->n_messages > 0;
    ac_chat_msg_t *msgs = NULL;
    if (chat) {
      if (m->n_messages > 4096) {
        send_task_error(w, t, E(INVALID), "%zu chat messages; at most 4096", m->n_messages);
        goto fail;
      }
      if (!(msgs = calloc(m->n_messages, sizeof *msgs))) goto oom;
      for (size_t i = 0; i < m->n_messages; i++) {
        const Agentcompress__ChatMessage *cm = m->messages[i];
        const char *role = cm && cm->role ? cm->role : "";
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
          free(msgs);
          send_task_error(w, t, E(INVALID), "chat message %zu: role '%.32s' is not system, user or assistant", i,
                          role);
          goto fail;
        }
        msgs[i].role = role;
        msgs[i].content = cm->content ? cm->content : "";
      }
    }
    const char *p = m->prompt ? m->prompt : "";
    int rc = ac_prompt_tokens(mod->gguf, mod->tok, p, strlen(p), chat, msgs, chat ? m->n_messages : 0, &t->ids,
                              &t->n_ids);
    free(msgs);
    if (rc) {
      send_task_error(w, t, rc == AC_ENOMEM ? E(INTERNAL) : E(INVALID), "%s", ac_errmsg());
      goto fail;
    }
    if (t->n_ids >= n_ctx) {
      send_task_error(w, t, E(TOO_LONG), "prompt of %d tokens is longer than the context of %d (at most %d)",
                      t->n_ids, n_ctx, n_ctx - 1);
      goto fail;
    }
  }
  return t;
oom:
  send_task_error(w, t, E(INTERNAL), "out of memory");
fail:
  task_free(&t);
  return NULL;
}

static bool same_sender(const task_t *t, const ac_frames_t *f) {
  if (t->nparts != f->nparts) return false;
  for (int i = 0; i < f->nparts; i++)
    if (t->lens[i] != f->lens[i] || memcmp(t->parts[i], f->parts[i], f->lens[i])) return false;
  return true;
}

static void on_cancel(worker_t *w, const ac_frames_t *f, const char *id) {
  for (int i = 0; i < w->slots; i++) {
    task_t *t = w->running[i];
    if (t && strcmp(t->id, id) == 0 && same_sender(t, f)) {
      ac_serve_cancel(w->srv, t->tag);
      w->running[i] = NULL;
      send_task_error(w, t, E(CANCELLED), "cancelled");
      task_free(&t);
      return;
    }
  }
  for (task_t **pp = &w->queue; *pp; pp = &(*pp)->next) {
    task_t *t = *pp;
    if (strcmp(t->id, id) == 0 && same_sender(t, f)) {
      *pp = t->next;
      w->n_queued--;
      send_task_error(w, t, E(CANCELLED), "cancelled");
      task_free(&t);
      return;
    }
  }
  AC_DEBUG("cancel %s: no such task", id);
}

static void on_message(worker_t *w, ac_frames_t *f) {
  if (f->truncated || f->nparts == 0) {
    AC_WARN("dropped a message with %d routing frames%s", f->nparts, f->truncated ? " (truncated)" : "");
    return;
  }
  ac_env_t *env = NULL;
  size_t max = (size_t)w->cfg.max_msg_bytes;
  int rc = ac_msg_unpack(f->payload, f->payload_len, max, &env);
  if (rc) {
    err_code_t code = rc == AC_ERANGE ? E(TOO_BIG) : rc == AC_EUNSUPPORTED ? E(VERSION) : E(BAD_MESSAGE);
    AC_DEBUG("bad message: %s", ac_errmsg());
    send_frames_error(w, f, "", code, ac_errmsg());
    return;
  }
  switch (env->body_case) {
    case AGENTCOMPRESS__ENVELOPE__BODY_TASK: {
      const Agentcompress__Task *m = env->task;
      Agentcompress__WorkerState st = worker_state(w);
      if (st != AGENTCOMPRESS__WORKER_STATE__WORKER_READY) {
        send_frames_error(w, f, m->id, E(DRAINING),
                          st == AGENTCOMPRESS__WORKER_STATE__WORKER_RELOADING ? "the worker is reloading"
                          : st == AGENTCOMPRESS__WORKER_STATE__WORKER_LOADING ? "the worker has no model loaded"
                                                                               : "the worker is draining");
        break;
      }
      if (ac_serve_free_slots(w->srv) == 0 && w->n_queued >= w->max_queue) {
        send_frames_error(w, f, m->id, E(OVERLOADED), "the worker's slots and queue are full");
        break;
      }
      task_t *t = task_from(w, f, m);
      if (t) {
        queue_push(w, t);
        admit(w);
      }
      break;
    }
    case AGENTCOMPRESS__ENVELOPE__BODY_CANCEL:
      on_cancel(w, f, env->cancel->task_id ? env->cancel->task_id : "");
      break;
    default:
      send_frames_error(w, f, "", E(BAD_MESSAGE), "a worker accepts only Task and Cancel");
      break;
  }
  ac_msg_free(&env);
}

// --- Redis: heartbeat, drain, reload commands ------------------------------------------------------

static int pack_info(worker_t *w, uint8_t **buf, size_t *len) {
  Agentcompress__WorkerInfo wi = AGENTCOMPRESS__WORKER_INFO__INIT;
  wi.id = w->id;
  wi.endpoint = w->advertise;
  wi.variant = w->variant;
  wi.state = worker_state(w);
  wi.slots = (uint32_t)w->slots;
  wi.busy = (uint32_t)n_running(w);
  wi.queued = (uint32_t)w->n_queued;
  wi.tokens_per_s = w->tokens_per_s;
  wi.last_reload_ms = w->last_reload_ms;
  wi.last_reload_at_ms = w->last_reload_at_ms;
  wi.capacity_bytes = w->capacity;
  wi.variant_bytes = w->variant_bytes;
  wi.pid = (uint32_t)getpid();
  wi.host = w->host;
  wi.started_at_ms = w->started_at_ms;
  wi.updated_at_ms = ac_unix_ms();
  wi.tasks_done = w->tasks_done;
  wi.tokens_done = w->tokens_done;
  wi.busy_s = w->busy_s;
  wi.n_ctx = (uint32_t)(w->srv ? ac_serve_n_ctx(w->srv) : w->n_ctx);
  wi.drain = w->drain_op;
  char device[32];
  if (w->backend == AC_BACKEND_CUDA) snprintf(device, sizeof device, "cuda:%d", w->gpu);
  else snprintf(device, sizeof device, "cpu");
  wi.device = device;
  wi.tp = (uint32_t)w->tp;
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_WORKER_INFO;
  env.worker_info = &wi;
  return ac_msg_pack(&env, buf, len);
}

static void push_ack(worker_t *w, const reload_t *r, bool ok, const char *msg, double reload_ms, double load_ms) {
  Agentcompress__ReloadAck a = AGENTCOMPRESS__RELOAD_ACK__INIT;
  char *clean = utf8_clean(msg, strlen(msg));
  a.worker = w->id;
  a.variant = (char *)r->variant;
  a.id = (char *)r->id;
  a.ok = ok;
  a.message = clean ? clean : "";
  a.reload_ms = reload_ms;
  a.load_ms = load_ms;
  a.done_at_ms = ac_unix_ms();
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_RELOAD_ACK;
  env.reload_ack = &a;
  uint8_t *buf;
  size_t len;
  if (ac_msg_pack(&env, &buf, &len) == 0) wreg_ack(w->reg, buf, len);
  free(clean);
}

static void take_command(worker_t *w, const char *data, size_t len);

// Every heartbeat_ms (and at once after a change of state): what the registry thread learned
// comes in, the state goes out.
static void heartbeat(worker_t *w) {
  double now = ac_mono_ms();
  if (now - w->last_rate_t >= 250) {
    w->tokens_per_s = w->rows_since / ((now - w->last_rate_t) * 1e-3);
    w->rows_since = 0;
    w->last_rate_t = now;
  }
  int drain;
  uint8_t *cmd;
  size_t cmd_len;
  wreg_poll(w->reg, &drain, &cmd, &cmd_len, &w->cfg);
  if (drain >= 0 && (drain != 0) != w->drain_op) {
    w->drain_op = drain != 0;
    AC_INFO("operator drain %s", w->drain_op ? "on: taking no new tasks" : "off: taking tasks again");
  }
  if (cmd) {
    take_command(w, (const char *)cmd, cmd_len);
    free(cmd);
  }
  uint8_t *info;
  size_t len;
  if (pack_info(w, &info, &len) == 0) wreg_publish(w->reg, info, len, !w->have_reload && !w->stopping);
  w->next_hb = ac_mono_ms() + w->hb_ms;
}

// A reload command from <prefix>cmd:<id>.
static void take_command(worker_t *w, const char *data, size_t len) {
  ac_env_t *env = NULL;
  if (ac_msg_unpack(data, len, HARD_MAX_MSG, &env)) {
    AC_WARN("ignoring a reload command: %s", ac_errmsg());
    return;
  }
  if (env->body_case != AGENTCOMPRESS__ENVELOPE__BODY_RELOAD) {
    AC_WARN("ignoring a command that is not a reload");
    ac_msg_free(&env);
    return;
  }
  const Agentcompress__ReloadCommand *c = env->reload;
  reload_t r = {0};
  snprintf(r.id, sizeof r.id, "%s", c->id ? c->id : "");
  snprintf(r.variant, sizeof r.variant, "%s", c->variant ? c->variant : "");
  snprintf(r.reason, sizeof r.reason, "%s", c->reason ? c->reason : "");
  r.t_cmd = ac_mono_ms();
  bool too_long = c->variant && strlen(c->variant) >= sizeof r.variant;
  bool elsewhere = c->worker && *c->worker && strcmp(c->worker, w->id) != 0;
  if (elsewhere) AC_WARN("reload %s: addressed to worker '%.200s', not this one", r.id, c->worker);
  ac_msg_free(&env);
  if (elsewhere) {
    push_ack(w, &r, false, "the command is addressed to another worker", 0, 0);
    return;
  }
  // The zoo may have changed on disk since the start.
  ac_catalog_t cat;
  if (ac_catalog_load_dir(w->zoo, &cat) == 0) {
    ac_catalog_free(&w->cat);
    w->cat = cat;
  } else {
    AC_WARN("zoo %s: %s (keeping the catalog read before)", w->zoo, ac_errmsg());
  }
  if (too_long || !ac_catalog_find(&w->cat, r.variant)) {
    char msg[256];
    snprintf(msg, sizeof msg, "unknown variant '%s'", r.variant);
    AC_INFO("reload %s to %s refused: %s", r.id, r.variant, msg);
    push_ack(w, &r, false, msg, ac_mono_ms() - r.t_cmd, 0);
    return;
  }
  const ac_variant_t *v = ac_catalog_find(&w->cat, r.variant);
  if (w->capacity && v->bytes > w->capacity) {
    char msg[256];
    snprintf(msg, sizeof msg, "variant '%s' needs %llu bytes, more than this worker's capacity of %llu", r.variant,
             (unsigned long long)v->bytes, (unsigned long long)w->capacity);
    AC_INFO("reload %s to %s refused: %s", r.id, r.variant, msg);
    push_ack(w, &r, false, msg, ac_mono_ms() - r.t_cmd, 0);
    return;
  }
  if (w->srv && strcmp(r.variant, w->variant) == 0) {
    AC_INFO("reload %s: %s is already loaded", r.id, r.variant);
    push_ack(w, &r, true, "already loaded", ac_mono_ms() - r.t_cmd, 0);
    return;
  }
  AC_INFO("reload %s: %s -> %s (%s); finishing %d in-flight tasks", r.id, w->variant[0] ? w->variant : "(none)",
          r.variant, r.reason, n_running(w));
  r.deadline = r.t_cmd + w->drain_wait_ms;
  w->reload = r;
  w->have_reload = true;
  // Queued tasks have not started: another worker can take them now.
  reject_queue(w, E(DRAINING), "the worker is reloading");
}

// Swaps the variant once in-flight tasks are done (or past the deadline).
static void do_reload(worker_t *w) {
  reload_t *r = &w->reload;
  if (n_running(w) > 0) cut_running(w, E(WORKER_LOST), "the worker reloaded before the task finished");
  char prev[64];
  snprintf(prev, sizeof prev, "%s", w->variant);
  unload(w);
  double load_ms = 0;
  int rc = load_variant(w, r->variant, &load_ms);
  double reload_ms = ac_mono_ms() - r->t_cmd;
  if (rc == 0) {
    w->last_reload_ms = reload_ms;
    w->last_reload_at_ms = ac_unix_ms();
    AC_INFO("reload %s: %s ready in %.1f ms (load %.1f ms)", r->id, r->variant, reload_ms, load_ms);
    push_ack(w, r, true, "", reload_ms, load_ms);
  } else {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ac_errmsg());
    AC_WARN("reload %s: %s failed: %s; going back to %s", r->id, r->variant, msg, prev[0] ? prev : "(none)");
    double back_ms;
    if (prev[0] && load_variant(w, prev, &back_ms) != 0)
      AC_ERROR("reload %s: cannot load %s again either: %s; no variant loaded", r->id, prev, ac_errmsg());
    push_ack(w, r, false, msg, ac_mono_ms() - r->t_cmd, load_ms);
  }
  w->have_reload = false;
  w->next_hb = 0;  // tell the cluster now
}

// --- command line --------------------------------------------------------------------------------

static void usage(FILE *f) {
  fprintf(f,
          "usage: ac-worker --listen tcp://HOST:PORT --zoo DIR [options]\n"
          "  --id ID               worker id (default HOST-PID)\n"
          "  --listen ENDPOINT     ZeroMQ ROUTER endpoint to bind (required)\n"
          "  --advertise ENDPOINT  endpoint routers connect to (default: --listen)\n"
          "  --zoo DIR             variants: DIR/manifest.json, or DIR/*.gguf\n"
          "  --variant NAME        variant to load first (default: the zoo's reference)\n"
          "  --redis HOST:PORT     (default $AC_REDIS or 127.0.0.1:6379)\n"
          "  --prefix P            Redis key prefix (default $AC_PREFIX or ac:)\n"
          "  --slots N             concurrent sequences (default 4)\n"
          "  -t, --threads N       threads for the forward pass (default 1; per rank with --tp)\n"
          "  --backend B           cpu or cuda (default cpu; cuda needs an AC_CUDA build)\n"
          "  --gpu N               CUDA device of this process (default 0)\n"
          "  --tp K                tensor-parallel ranks (default 1). Without --tp-id (cpu only): K ranks\n"
          "                        as threads of this process. With --tp-id: K processes (cuda: one per\n"
          "                        GPU, NCCL; cpu: ZeroMQ ipc), of which this one is rank 0 (--tp-rank)\n"
          "  --tp-rank R           R > 0: run as rank R of rank 0's group (no socket, no Redis)\n"
          "  --tp-id PATH          where the group's processes meet (cpu: an ipc socket rank 0 binds;\n"
          "                        cuda: a file rank 0 writes the NCCL id to)\n"
          "  -c, --ctx N           context per sequence (default 1024)\n"
          "  --capacity-bytes N    most bytes of weights this worker may hold (0 = unlimited)\n"
          "  --prefill-chunk N     most prompt tokens per batched step, so decoding goes on (default 128)\n"
          "  --drain-wait-ms N     longest wait for in-flight tasks on reload or shutdown (default 30000)\n"
          "  --set NAME=VALUE      a setting (see lib/settings.c)\n"
          "  --log-level LEVEL     debug, info, warn, error (default info)\n"
          "  --log-format FORMAT   text or json\n");
}

static bool parse_num(const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"id", required_argument, 0, 'i'},
      {"listen", required_argument, 0, 'l'},
      {"advertise", required_argument, 0, 'a'},
      {"zoo", required_argument, 0, 'z'},
      {"variant", required_argument, 0, 'v'},
      {"redis", required_argument, 0, 'r'},
      {"prefix", required_argument, 0, 'p'},
      {"slots", required_argument, 0, 's'},
      {"threads", required_argument, 0, 't'},
      {"ctx", required_argument, 0, 'c'},
      {"capacity-bytes", required_argument, 0, 'B'},
      {"drain-wait-ms", required_argument, 0, 'W'},
      {"prefill-chunk", required_argument, 0, 'P'},
      {"set", required_argument, 0, 'S'},
      {"log-level", required_argument, 0, 'L'},
      {"log-format", required_argument, 0, 'F'},
      {"backend", required_argument, 0, 'b'},
      {"gpu", required_argument, 0, 'g'},
      {"tp", required_argument, 0, 'T'},
      {"tp-rank", required_argument, 0, 'R'},
      {"tp-id", required_argument, 0, 'I'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  static worker_t W;
  worker_t *w = &W;
  const char *id = NULL, *listen = NULL, *advertise = NULL, *zoo = NULL, *variant = NULL;
  const char *redis = getenv("AC_REDIS"), *prefix = getenv("AC_PREFIX");
  const char *sets[64];
  int n_sets = 0, c;
  long long v;
  w->slots = 4;
  w->threads = 1;
  w->tp = 1;
  w->n_ctx = 1024;
  w->prefill_chunk = 128;
  w->drain_wait_ms = 30000;
  ac_log_set_level(AC_LOG_INFO);
  int li;
  while ((li = -1, c = getopt_long(argc, argv, "t:c:h", opts, &li)) != -1) {
    switch (c) {
      case 'i': id = optarg; break;
      case 'l': listen = optarg; break;
      case 'a': advertise = optarg; break;
      case 'z': zoo = optarg; break;
      case 'v': variant = optarg; break;
      case 'r': redis = optarg; break;
      case 'p': prefix = optarg; break;
      case 's': if (!parse_num(optarg, 1, 256, &v)) goto bad_value; w->slots = (int)v; break;
      case 't': if (!parse_num(optarg, 1, 256, &v)) goto bad_value; w->threads = (int)v; break;
      case 'c': if (!parse_num(optarg, 8, 1 << 20, &v)) goto bad_value; w->n_ctx = (int)v; break;
      case 'B': if (!parse_num(optarg, 0, LLONG_MAX, &v)) goto bad_value; w->capacity = (uint64_t)v; break;
      case 'W': if (!parse_num(optarg, 0, 86400000, &v)) goto bad_value; w->drain_wait_ms = (double)v; break;
      case 'P': if (!parse_num(optarg, 1, 65536, &v)) goto bad_value; w->prefill_chunk = (int)v; break;
      case 'S': if (n_sets == 64) goto bad; sets[n_sets++] = optarg; break;
      case 'b':
        if (strcmp(optarg, "cpu") == 0) w->backend = AC_BACKEND_CPU;
        else if (strcmp(optarg, "cuda") == 0) w->backend = AC_BACKEND_CUDA;
        else goto bad_value;
        break;
      case 'g': if (!parse_num(optarg, 0, 1023, &v)) goto bad_value; w->gpu = (int)v; break;
      case 'T': if (!parse_num(optarg, 1, 64, &v)) goto bad_value; w->tp = (int)v; break;
      case 'R': if (!parse_num(optarg, 0, 63, &v)) goto bad_value; w->tp_rank = (int)v; break;
      case 'I': w->tp_id = optarg; break;
      case 'L': {
        int lv = ac_log_parse_level(optarg);
        if (lv < 0) goto bad_value;
        ac_log_set_level((ac_log_level_t)lv);
        break;
      }
      case 'F':
        if (strcmp(optarg, "json") == 0) ac_log_set_json(true);
        else if (strcmp(optarg, "text") == 0) ac_log_set_json(false);
        else goto bad_value;
        break;
      case 'h': usage(stdout); return 0;
      default: goto bad;
    }
  }
  if (w->tp_rank >= w->tp || (w->tp_rank > 0 && (!w->tp_id || !*w->tp_id))) {
    fprintf(stderr, "ac-worker: --tp-rank %d: a rank above 0 joins a group of --tp > rank at --tp-id PATH\n", w->tp_rank);
    goto bad;
  }
  if (w->tp_id && !*w->tp_id) w->tp_id = NULL;
  if (w->backend == AC_BACKEND_CUDA && w->tp > 1 && (!w->tp_id || !*w->tp_id)) {
    fprintf(stderr, "ac-worker: --backend cuda --tp %d needs --tp-id PATH (where the ranks meet)\n", w->tp);
    goto bad;
  }
  if (optind == argc && w->tp_rank > 0 && zoo && *zoo) {
    if (strlen(zoo) >= sizeof w->zoo) goto bad;
    snprintf(w->zoo, sizeof w->zoo, "%s", zoo);
    ac_quant_init();
    return follower_process(w);
  }
  if (optind != argc || !listen || !*listen || !zoo || !*zoo) {
    fprintf(stderr, "ac-worker: %s\n", optind != argc ? "unexpected arguments" : "--listen and --zoo are required");
    goto bad;
  }
  if ((id && (!*id || strlen(id) >= 200)) || strlen(listen) >= sizeof w->listen ||
      (advertise && strlen(advertise) >= sizeof w->advertise) || strlen(zoo) >= sizeof w->zoo ||
      (prefix && strlen(prefix) >= 60))
    goto bad;

  int status = 1, rc;
  if (gethostname(w->host, sizeof w->host - 1) != 0) snprintf(w->host, sizeof w->host, "localhost");
  if (id) snprintf(w->id, sizeof w->id, "%s", id);
  else snprintf(w->id, sizeof w->id, "%.200s-%d", w->host, (int)getpid());
  snprintf(w->listen, sizeof w->listen, "%s", listen);
  snprintf(w->advertise, sizeof w->advertise, "%s", advertise && *advertise ? advertise : listen);
  snprintf(w->zoo, sizeof w->zoo, "%s", zoo);
  w->max_queue = 4 * w->slots;
  w->started_at_ms = ac_unix_ms();

  // Settings and Redis go to the registry thread; the loop keeps a copy of the numbers it needs.
  ac_config_t *cfg = NULL;
  ac_rds_t *rds = NULL;
  if ((rc = ac_config_new(&cfg))) {
    fprintf(stderr, "ac-worker: %s\n", ac_errmsg());
    return 1;
  }
  for (int i = 0; i < n_sets; i++)
    if (ac_config_set_arg(cfg, sets[i])) {
      fprintf(stderr, "ac-worker: --set %s: %s\n", sets[i], ac_errmsg());
      ac_config_destroy(&cfg);
      usage(stderr);
      return 2;
    }
  if ((rc = ac_rds_new(redis, prefix && *prefix ? prefix : "ac:", &rds))) {
    fprintf(stderr, "ac-worker: %s\n", ac_errmsg());
    ac_config_destroy(&cfg);
    return 2;
  }
  char redis_desc[400];
  snprintf(redis_desc, sizeof redis_desc, "%s prefix %s", ac_rds_addr(rds), ac_rds_prefix(rds));
  w->hb_ms = ac_config_num(cfg, "worker.heartbeat_ms");
  w->cfg.default_max_tokens = ac_config_num(cfg, "router.default_max_tokens");
  w->cfg.max_msg_bytes = ac_config_num(cfg, "router.max_msg_bytes");
  w->cfg.usd_per_hour = ac_config_num(cfg, "price.usd_per_hour");

  ac_quant_init();
  if (!(w->running = calloc((size_t)w->slots, sizeof *w->running))) goto done;
  if ((rc = ac_catalog_load_dir(w->zoo, &w->cat))) {
    fprintf(stderr, "ac-worker: %s\n", ac_errmsg());
    goto done;
  }
  if (!variant || !*variant) variant = w->cat.reference;
  if ((rc = join_group(w))) {
    fprintf(stderr, "ac-worker: %s\n", ac_errmsg());
    goto done;
  }
  double load_ms;
  if ((rc = load_variant(w, variant, &load_ms))) {
    fprintf(stderr, "ac-worker: %s\n", ac_errmsg());
    goto done;
  }
  w->last_reload_ms = load_ms;
  w->last_reload_at_ms = ac_unix_ms();

  // The socket.
  if (!(w->zctx = zmq_ctx_new()) || !(w->sock = zmq_socket(w->zctx, ZMQ_ROUTER))) {
    fprintf(stderr, "ac-worker: zmq: %s\n", zmq_strerror(errno));
    goto done;
  }
  int one = 1, hwm = 100000, linger = 2000;
  int64_t maxmsg = HARD_MAX_MSG;
  // Mandatory: a reply to a peer that is gone fails, so its task can be cancelled. Handover: a
  // router that restarts under the same routing id takes its identity over from the dead pipe.
  if (zmq_setsockopt(w->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
      zmq_setsockopt(w->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one) ||
      zmq_setsockopt(w->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) || zmq_setsockopt(w->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
      zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger) ||
      zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) {
    fprintf(stderr, "ac-worker: zmq_setsockopt: %s\n", zmq_strerror(errno));
    goto done;
  }
  if (zmq_bind(w->sock, w->listen) != 0) {
    fprintf(stderr, "ac-worker: cannot listen on %s: %s\n", w->listen, zmq_strerror(errno));
    goto done;
  }

  ac_msg_install_signals(on_signal);

  if ((rc = wreg_start(&rds, &cfg, w->id, &w->reg))) {
    fprintf(stderr, "ac-worker: %s\n", ac_errmsg());
    goto done;
  }
  char where[64];
  if (w->backend == AC_BACKEND_CUDA) snprintf(where, sizeof where, "cuda gpu %d", w->gpu);
  else snprintf(where, sizeof where, "cpu");
  AC_INFO("worker %s: %s on %s (advertised %s), %d slots x %d context, %s, tp %d, %d threads, loaded in %.1f ms; "
          "redis %s",
          w->id, w->variant, w->listen, w->advertise, w->slots, ac_serve_n_ctx(w->srv), where, w->tp, w->threads,
          load_ms, redis_desc);
  w->last_rate_t = ac_mono_ms();
  heartbeat(w);

  int seen_signals = 0;
  for (;;) {
    double now = ac_mono_ms();
    if (g_signals != seen_signals) {
      seen_signals = g_signals;
      if (!w->stopping) {
        AC_INFO("shutting down: finishing %d in-flight and %d queued tasks", n_running(w), w->n_queued);
        w->stopping = true;
        w->stop_deadline = now + w->drain_wait_ms;
        w->next_hb = 0;  // say DRAINING at once
      } else {
        AC_INFO("second signal: stopping now");
        w->stop_deadline = now;
      }
    }
    bool active = w->srv && ac_serve_busy(w->srv) > 0;
    long timeout = 0;
    if (!active) {
      double wait = w->next_hb - now;
      timeout = wait > 20 ? 20 : wait < 0 ? 0 : (long)wait;
      if (w->stopping || w->have_reload) timeout = timeout > 5 ? 5 : timeout;
    }
    zmq_pollitem_t item = {w->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout) < 0 && errno != EINTR) {
      AC_ERROR("zmq_poll: %s", zmq_strerror(errno));
      break;
    }
    // Every message waiting, but not forever: evaluation must go on under a flood.
    for (int k = 0; k < 4096; k++) {
      ac_frames_t f;
      int r = ac_frames_recv(w->sock, &f);
      if (r == AC_ENOTFOUND) break;
      if (r) {
        AC_WARN("receive: %s", ac_errmsg());
        break;
      }
      on_message(w, &f);
      ac_frames_free(&f);
    }
    admit(w);
    if (w->srv && ac_serve_busy(w->srv) > 0) {
      ac_serve_step_t st;
      rc = ac_serve_step(w->srv, on_event, w, &st);
      if (rc > 0) {
        w->busy_s += st.ms * 1e-3;
        w->rows_since += (uint64_t)rc;
      } else if (rc < 0) {
        AC_ERROR("evaluation failed: %s", ac_errmsg());
      }
      admit(w);
    }
    now = ac_mono_ms();
    // Heartbeat first: it may bring a reload command, which then starts in this same turn.
    if (now >= w->next_hb) heartbeat(w), now = ac_mono_ms();
    if (w->have_reload && (n_running(w) == 0 || now >= w->reload.deadline)) do_reload(w);
    if (w->stopping && ((n_running(w) == 0 && w->n_queued == 0) || now >= w->stop_deadline)) {
      reject_queue(w, E(WORKER_LOST), "the worker shut down before the task started");
      cut_running(w, E(WORKER_LOST), "the worker shut down before the task finished");
      status = 0;
      break;
    }
  }
  wreg_stop(&w->reg, true);
  AC_INFO("worker %s: stopped after %llu tasks", w->id, (unsigned long long)w->tasks_done);

done:
  if (w->running) {
    reject_queue(w, E(WORKER_LOST), "the worker stopped");
    for (int i = 0; i < w->slots; i++) task_free(&w->running[i]);
  }
  free(w->running);
  wreg_stop(&w->reg, false);
  if (w->sock) zmq_close(w->sock);
  if (w->zctx) zmq_ctx_term(w->zctx);
  unload(w);
  leave_group(w);
  ac_tokenizer_destroy(&w->tok_keep);
  ac_catalog_free(&w->cat);
  ac_rds_destroy(&rds);
  ac_config_destroy(&cfg);
  return status;
bad_value:
  if (li >= 0) fprintf(stderr, "ac-worker: bad value '%s' for --%s\n", optarg, opts[li].name);
  else fprintf(stderr, "ac-worker: bad value '%s' for -%c\n", optarg, c);
bad:
  usage(stderr);
  return 2;
}
