// acbench_replay.c - replays a policy's choices against a running cluster (README: "The
// cluster") through a router's client socket, as agents would send them: real inference, real
// queues, real reloads. See acb_replay in acbench.h.
#include <errno.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "acbench.h"
#include "clock.h"
#include "error.h"
#include "judge.h"
#include "msg.h"
#include "rds.h"

// One workflow of the replay: its evaluated tasks in file order.
typedef struct {
  int first, n;  // into the replay's task order
  int next;      // the next step to send
} flow_t;

typedef struct {
  int flow;        // owning workflow, -1 when the slot is free
  int i;           // evaluated-task index
  double sent_ms;  // monotonic
} inflight_t;

static int by_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// The q-quantile of sorted x (nearest rank).
static double quantile(const double *x, long n, double q) {
  if (n <= 0) return NAN;
  long k = (long)ceil(q * n) - 1;
  return x[k < 0 ? 0 : (k >= n ? n - 1 : k)];
}

// The scheduler's reload counter (HGET <prefix>stats reloads), -1 when it cannot be read.
static long reload_count(const replay_opts_t *o) {
  if (!o->redis) return -1;
  ac_rds_t *r = NULL;
  if (ac_rds_new(o->redis, o->prefix ? o->prefix : "ac:", &r)) return -1;
  long n = -1;
  ac_rds_connect(r);
  redisReply *rep = ac_rds_cmd(r, "HGET %sstats reloads", ac_rds_prefix(r));
  if (rep && rep->type == REDIS_REPLY_STRING) n = strtol(rep->str, NULL, 10);
  else if (rep && rep->type == REDIS_REPLY_NIL) n = 0;
  if (rep) freeReplyObject(rep);
  ac_rds_destroy(&r);
  return n;
}

// Sends evaluated task i as Task id "<tag>/<i>".
static int send_task(void *s, const bench_t *b, const policy_t *p, int i, const char *tag) {
  const ac_task_t *t = &b->w.tasks[b->task[i]];
  char id[192];
  snprintf(id, sizeof id, "%s/%d", tag, i);
  Agentcompress__Sampling sp = AGENTCOMPRESS__SAMPLING__INIT;  // temperature 0: greedy, as labelled
  Agentcompress__Task task = AGENTCOMPRESS__TASK__INIT;
  Agentcompress__ChatMessage msg[16], *pm[16];
  task.id = id;
  task.session_id = t->workflow;
  if (t->n_messages) {
    if (t->n_messages > 16) return ac_error(AC_EUNSUPPORTED, "task %s: more than 16 messages", t->id);
    for (size_t m = 0; m < t->n_messages; m++) {
      agentcompress__chat_message__init(&msg[m]);
      msg[m].role = (char *)t->messages[m].role;
      msg[m].content = (char *)t->messages[m].content;
      pm[m] = &msg[m];
    }
    task.n_messages = t->n_messages;
    task.messages = pm;
  } else {
    if (memchr(t->prompt, 0, t->prompt_len))
      return ac_error(AC_EUNSUPPORTED, "task %s: a prompt with a NUL byte cannot be sent", t->id);
    task.prompt = t->prompt;
  }
  task.max_tokens = (uint32_t)t->max_tokens;
  task.sampling = &sp;
  task.variant = (char *)(p->choice[i] >= 0 ? b->vname[p->choice[i]] : "");
  ac_env_t env = AGENTCOMPRESS__ENVELOPE__INIT;
  env.body_case = AGENTCOMPRESS__ENVELOPE__BODY_TASK;
  env.task = &task;
  return ac_msg_send(s, 0, NULL, NULL, &env);
}

int acb_replay(const bench_t *b, policy_t *p, const replay_opts_t *o) {
  int n = o->limit > 0 && o->limit < b->n ? o->limit : b->n;
  int C = o->concurrency > 0 ? o->concurrency : 1;
  replay_t *r = &p->replay;
  memset(r, 0, sizeof *r);
  // Workflows in order of first appearance; each one's tasks in file order.
  int *order = malloc((size_t)(n ? n : 1) * sizeof *order), *served = malloc((size_t)(n ? n : 1) * sizeof *served);
  flow_t *flow = calloc((size_t)(n ? n : 1), sizeof *flow);
  double *lat = malloc((size_t)(n ? n : 1) * sizeof *lat);
  inflight_t *fl = malloc((size_t)C * sizeof *fl);
  void *zctx = zmq_ctx_new(), *s = zctx ? zmq_socket(zctx, ZMQ_DEALER) : NULL;
  int rc = 0, n_flow = 0;
  if (!order || !served || !flow || !lat || !fl || !s) {
    rc = ac_error(AC_ENOMEM, "replay: out of memory or no ZeroMQ socket");
    goto done;
  }
  {
    bool *taken = calloc((size_t)(n ? n : 1), 1);
    if (!taken) {
      rc = ac_error(AC_ENOMEM, "out of memory");
      goto done;
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
      if (taken[i]) continue;
      const char *wf = b->w.tasks[b->task[i]].workflow;
      flow[n_flow] = (flow_t){.first = k};
      for (int j = i; j < n; j++)
        if (!taken[j] && strcmp(b->w.tasks[b->task[j]].workflow, wf) == 0) {
          taken[j] = true;
          order[k++] = j;
          flow[n_flow].n++;
        }
      n_flow++;
    }
    free(taken);
  }
  for (int i = 0; i < n; i++) {
    served[i] = -2;  // -2 not answered, -1 error, else variant index
    if (!b->lab[(size_t)b->task[i] * MAX_V + b->ref].answer) {
      rc = ac_error(AC_EFORMAT, "task %s: its reference label has no \"answer\" to judge the cluster's answer against",
                    b->w.tasks[b->task[i]].id);
      goto done;
    }
  }
  int linger = 0;
  int64_t maxmsg = AC_MSG_MAX_BYTES;
  zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
  zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
  if (zmq_connect(s, o->router) != 0) {
    rc = ac_error(AC_EIO, "cannot connect to the router '%s': %s", o->router, zmq_strerror(errno));
    goto done;
  }
  char tag[160];
  snprintf(tag, sizeof tag, "acbench-%s-%llu", p->name, (unsigned long long)ac_unix_ms());
  long before = reload_count(o);
  double t0 = ac_mono_ms();
  int next_flow = 0, busy = 0;
  for (int c = 0; c < C; c++) fl[c] = (inflight_t){.flow = -1};
  long n_lat = 0;
  for (;;) {
    // Fill free slots: each runs one workflow, one step at a time.
    for (int c = 0; c < C && !rc; c++) {
      if (fl[c].flow >= 0) continue;
      while (next_flow < n_flow && flow[next_flow].next == flow[next_flow].n) next_flow++;
      if (next_flow == n_flow) break;
      fl[c].flow = next_flow++;
    }
    for (int c = 0; c < C && !rc; c++) {
      if (fl[c].flow < 0 || fl[c].sent_ms > 0) continue;
      flow_t *f = &flow[fl[c].flow];
      fl[c].i = order[f->first + f->next++];
      if ((rc = send_task(s, b, p, fl[c].i, tag))) break;
      fl[c].sent_ms = ac_mono_ms();
      busy++;
    }
    if (rc || busy == 0) break;
    ac_env_t *env = NULL;
    int got = ac_msg_recv_env(s, o->timeout_ms, NULL, &env);
    if (got == 1) {
      rc = ac_error(AC_EIO, "replay of %s: no answer from the router at %s for %.0f ms", p->name, o->router,
                    o->timeout_ms);
      break;
    }
    if (got) {
      rc = got;
      break;
    }
    const char *tid = env->body_case == AGENTCOMPRESS__ENVELOPE__BODY_RESULT  ? env->result->task_id
                      : env->body_case == AGENTCOMPRESS__ENVELOPE__BODY_ERROR ? env->error->task_id
                                                                              : NULL;
    size_t tl = strlen(tag);
    int i = -1;
    if (tid && strncmp(tid, tag, tl) == 0 && tid[tl] == '/') i = atoi(tid + tl + 1);
    int c = 0;
    while (c < C && !(fl[c].flow >= 0 && fl[c].sent_ms > 0 && fl[c].i == i)) c++;
    if (i < 0 || c == C) {  // a chunk, or an answer to something else
      ac_msg_free(&env);
      continue;
    }
    double ms = ac_mono_ms() - fl[c].sent_ms;
    const ac_task_t *t = &b->w.tasks[b->task[i]];
    r->tasks++;
    if (env->body_case == AGENTCOMPRESS__ENVELOPE__BODY_RESULT) {
      const Agentcompress__Result *res = env->result;
      const label_t *ref = &b->lab[(size_t)b->task[i] * MAX_V + b->ref];
      const char *text = res->text ? res->text : "";
      ac_judgement_t j;
      if ((rc = ac_judge(&t->checker, ref->answer ? ref->answer : "", ref->answer_len, text, strlen(text), &j))) {
        ac_msg_free(&env);
        break;
      }
      r->successes += j.success;
      if (j.correct != AC_CORRECT_UNKNOWN) {
        r->correct_n++;
        r->correct += j.correct == AC_CORRECT_TRUE;
      }
      r->measured += res->cost;
      lat[n_lat++] = ms;
      int v = -1;
      for (int k = 0; k < b->V; k++)
        if (res->variant && strcmp(res->variant, b->vname[k]) == 0) v = k;
      served[i] = v;
      bool exact = res->variant && res->requested_variant && strcmp(res->variant, res->requested_variant) == 0;
      r->upgraded += !exact;
      r->waited += res->waited_for_reload;
      r->hits += exact && !res->waited_for_reload;
    } else {
      r->errors++;
      served[i] = -1;
      fprintf(stderr, "acbench: replay %s: task %s: %s: %s\n", p->name, t->id, ac_msg_code_name(env->error->code),
              env->error->message ? env->error->message : "");
    }
    ac_msg_free(&env);
    busy--;
    fl[c].sent_ms = 0;
    flow_t *f = &flow[fl[c].flow];
    if (f->next == f->n) fl[c].flow = -1;
  }
  if (rc) goto done;
  r->wall_s = (ac_mono_ms() - t0) / 1e3;
  long after = reload_count(o);
  r->reloads = before >= 0 && after >= 0 ? after - before : -1;
  qsort(lat, (size_t)n_lat, sizeof *lat, by_double);
  r->p50 = quantile(lat, n_lat, 0.50);
  r->p90 = quantile(lat, n_lat, 0.90);
  r->p99 = quantile(lat, n_lat, 0.99);
  // Switches: consecutive steps of a workflow served by different variants.
  for (int w = 0; w < n_flow; w++)
    for (int k = 1; k < flow[w].n; k++) {
      int a = served[order[flow[w].first + k - 1]], c = served[order[flow[w].first + k]];
      if (a < 0 || c < 0) continue;
      r->pairs++;
      r->switches += a != c;
    }
  r->done = true;
done:
  if (s) zmq_close(s);
  if (zctx) zmq_ctx_term(zctx);
  free(order);
  free(served);
  free(flow);
  free(lat);
  free(fl);
  return rc;
}
