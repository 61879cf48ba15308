// registry.c - see registry.h.
#include "registry.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "error.h"
#include "log.h"

#define MAX_ACKS 32
#define STALE_MS 60000.0  // a serving loop silent this long is stuck: stop saying the worker lives

struct wreg {
  pthread_t th;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  // Owned by the thread while it runs.
  ac_rds_t *rds;
  ac_config_t *cfg;
  char id[256];
  char key_worker[512], key_workers[128], key_drain[128], key_cmd[512], key_acks[128];
  double hb_ms;
  // Shared, under mu.
  bool quit, kick;
  uint8_t *info;          // latest WorkerInfo envelope from the loop
  size_t info_len;
  double info_at;         // monotonic ms when it was published
  bool want_cmd;
  uint8_t *cmd;           // a popped command the loop has not taken yet
  size_t cmd_len;
  int drain;              // -1 unknown
  wreg_cfg_t scfg;
  uint8_t *acks[MAX_ACKS];
  size_t ack_lens[MAX_ACKS];
  int n_acks;
};

static void read_cfg(wreg_t *r, wreg_cfg_t *c) {
  c->default_max_tokens = ac_config_num(r->cfg, "router.default_max_tokens");
  c->max_msg_bytes = ac_config_num(r->cfg, "router.max_msg_bytes");
  c->usd_per_hour = ac_config_num(r->cfg, "price.usd_per_hour");
}

// Drops ack i (caller holds mu).
static void drop_ack(wreg_t *r, int i) {
  free(r->acks[i]);
  memmove(r->acks + i, r->acks + i + 1, (size_t)(r->n_acks - i - 1) * sizeof *r->acks);
  memmove(r->ack_lens + i, r->ack_lens + i + 1, (size_t)(r->n_acks - i - 1) * sizeof *r->ack_lens);
  r->n_acks--;
}

// Writes queued acks, oldest first, so that the list stays newest first. Takes mu for the queue
// but not across Redis calls.
static void flush_acks(wreg_t *r) {
  for (;;) {
    pthread_mutex_lock(&r->mu);
    if (r->n_acks == 0) {
      pthread_mutex_unlock(&r->mu);
      return;
    }
    size_t len = r->ack_lens[0];
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) memcpy(buf, r->acks[0], len);
    pthread_mutex_unlock(&r->mu);
    if (!buf) return;
    redisReply *rep = ac_rds_cmd(r->rds, "LPUSH %s %b", r->key_acks, buf, len);
    free(buf);
    if (!rep) return;  // Redis away: try again next tick
    if (rep->type == REDIS_REPLY_ERROR) AC_WARN("redis LPUSH %s: %s", r->key_acks, rep->str);
    freeReplyObject(rep);
    if ((rep = ac_rds_cmd(r->rds, "LTRIM %s 0 999", r->key_acks))) freeReplyObject(rep);
    pthread_mutex_lock(&r->mu);
    if (r->n_acks > 0) drop_ack(r, 0);
    pthread_mutex_unlock(&r->mu);
  }
}

// One heartbeat: state out, drain flag and at most one command in.
static void tick(wreg_t *r) {
  ac_config_refresh(r->cfg, r->rds);
  pthread_mutex_lock(&r->mu);
  uint8_t *info = NULL;
  size_t len = r->info_len;
  if (r->info && ac_mono_ms() - r->info_at < STALE_MS && (info = malloc(len ? len : 1))) memcpy(info, r->info, len);
  bool want_cmd = r->want_cmd && !r->cmd;
  read_cfg(r, &r->scfg);
  pthread_mutex_unlock(&r->mu);

  long long ttl = (long long)ac_config_num(r->cfg, "worker.timeout_ms");
  int drain = -1;
  uint8_t *cmd = NULL;
  size_t cmd_len = 0;
  if (ac_rds_begin(r->rds)) {
    int n = 0;
    if (info) {
      ac_rds_append(r->rds, "SET %s %b PX %lld", r->key_worker, info, len, ttl);
      ac_rds_append(r->rds, "SADD %s %s", r->key_workers, r->id);
      n += 2;
    }
    ac_rds_append(r->rds, "SISMEMBER %s %s", r->key_drain, r->id);
    n++;
    if (want_cmd) {
      ac_rds_append(r->rds, "LPOP %s", r->key_cmd);
      n++;
    }
    redisReply *rep[4] = {0};
    for (int i = 0; i < n; i++) rep[i] = ac_rds_reply(r->rds);
    int k = 0;
    if (info) {
      if (rep[0] && rep[0]->type == REDIS_REPLY_ERROR) AC_WARN("redis SET %s: %s", r->key_worker, rep[0]->str);
      k = 2;
    }
    if (rep[k] && rep[k]->type == REDIS_REPLY_INTEGER) drain = rep[k]->integer != 0;
    k++;
    if (want_cmd && rep[k] && rep[k]->type == REDIS_REPLY_STRING && (cmd = malloc(rep[k]->len ? rep[k]->len : 1))) {
      memcpy(cmd, rep[k]->str, rep[k]->len);
      cmd_len = rep[k]->len;
    }
    for (int i = 0; i < n; i++)
      if (rep[i]) freeReplyObject(rep[i]);
  }
  free(info);
  pthread_mutex_lock(&r->mu);
  if (drain >= 0) r->drain = drain;
  if (cmd) {
    r->cmd = cmd;
    r->cmd_len = cmd_len;
  }
  pthread_mutex_unlock(&r->mu);
  flush_acks(r);
}

static void *thread_main(void *arg) {
  wreg_t *r = arg;
  pthread_mutex_lock(&r->mu);
  while (!r->quit) {
    if (!r->kick) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      long long ns = ts.tv_nsec + (long long)(r->hb_ms * 1e6);
      ts.tv_sec += ns / 1000000000;
      ts.tv_nsec = ns % 1000000000;
      pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    if (r->quit) break;
    r->kick = false;
    pthread_mutex_unlock(&r->mu);
    tick(r);
    pthread_mutex_lock(&r->mu);
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

int wreg_start(ac_rds_t **rds, ac_config_t **cfg, const char *id, wreg_t **out) {
  *out = NULL;
  wreg_t *r = calloc(1, sizeof *r);
  if (!r) return ac_error(AC_ENOMEM, "out of memory");
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  r->rds = *rds;
  r->cfg = *cfg;
  *rds = NULL;
  *cfg = NULL;
  r->drain = -1;
  snprintf(r->id, sizeof r->id, "%s", id);
  const char *P = ac_rds_prefix(r->rds);
  snprintf(r->key_worker, sizeof r->key_worker, "%.63sworker:%.255s", P, r->id);
  snprintf(r->key_workers, sizeof r->key_workers, "%.63sworkers", P);
  snprintf(r->key_drain, sizeof r->key_drain, "%.63sdrain", P);
  snprintf(r->key_cmd, sizeof r->key_cmd, "%.63scmd:%.255s", P, r->id);
  snprintf(r->key_acks, sizeof r->key_acks, "%.63sacks", P);
  r->hb_ms = ac_config_num(r->cfg, "worker.heartbeat_ms");
  read_cfg(r, &r->scfg);
  int e = pthread_create(&r->th, NULL, thread_main, r);
  if (e) {
    wreg_stop(&r, false);
    return ac_error(AC_EIO, "cannot start the heartbeat thread: %s", strerror(e));
  }
  r->started = true;
  *out = r;
  return 0;
}

void wreg_publish(wreg_t *r, uint8_t *info, size_t len, bool want_cmd) {
  pthread_mutex_lock(&r->mu);
  free(r->info);
  r->info = info;
  r->info_len = len;
  r->info_at = ac_mono_ms();
  r->want_cmd = want_cmd;
  // Written at once; the thread's own timer keeps the worker registered while the loop is busy
  // for long (a model load).
  r->kick = true;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

void wreg_poll(wreg_t *r, int *drain, uint8_t **cmd, size_t *cmd_len, wreg_cfg_t *cfg) {
  pthread_mutex_lock(&r->mu);
  *drain = r->drain;
  *cmd = r->cmd;
  *cmd_len = r->cmd_len;
  r->cmd = NULL;
  r->cmd_len = 0;
  *cfg = r->scfg;
  pthread_mutex_unlock(&r->mu);
}

void wreg_ack(wreg_t *r, uint8_t *buf, size_t len) {
  pthread_mutex_lock(&r->mu);
  if (r->n_acks == MAX_ACKS) drop_ack(r, 0);  // Redis has been away for long: the oldest goes
  r->acks[r->n_acks] = buf;
  r->ack_lens[r->n_acks++] = len;
  r->kick = true;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

void wreg_stop(wreg_t **self_p, bool unregister) {
  wreg_t *r = *self_p;
  if (!r) return;
  if (r->started) {
    pthread_mutex_lock(&r->mu);
    r->quit = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
  }
  if (unregister && r->rds) {
    flush_acks(r);
    redisReply *rep = ac_rds_cmd(r->rds, "DEL %s", r->key_worker);
    if (rep) freeReplyObject(rep);
    if ((rep = ac_rds_cmd(r->rds, "SREM %s %s", r->key_workers, r->id))) freeReplyObject(rep);
  }
  for (int i = 0; i < r->n_acks; i++) free(r->acks[i]);
  free(r->info);
  free(r->cmd);
  ac_rds_destroy(&r->rds);
  ac_config_destroy(&r->cfg);
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->mu);
  free(r);
  *self_p = NULL;
}
