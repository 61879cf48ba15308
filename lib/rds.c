// rds.c - see rds.h.
#include "rds.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "error.h"
#include "log.h"

struct ac_rds {
  redisContext *c;
  char host[256];
  int port;
  char prefix[64];
  char addr[300];
  double next_try_ms;  // monotonic; no connection attempt before this
  double backoff_ms;
  bool pipeline_broken;
  bool was_connected;  // for logging transitions once, not every retry
};

int ac_rds_new(const char *addr, const char *prefix, ac_rds_t **out) {
  *out = NULL;
  if (!addr || !*addr) addr = "127.0.0.1:6379";
  const char *whole = addr;
  ac_rds_t *r = calloc(1, sizeof *r);
  if (!r) return ac_error(AC_ENOMEM, "out of memory");
  const char *colon = strrchr(addr, ':');
  if (colon) {
    size_t hl = (size_t)(colon - addr);
    if (hl == 0 || hl >= sizeof r->host) goto bad;
    memcpy(r->host, addr, hl);
    addr = colon + 1;
  } else {
    strcpy(r->host, "127.0.0.1");
  }
  char *end;
  long port = strtol(addr, &end, 10);
  if (*end || port <= 0 || port > 65535) goto bad;
  r->port = (int)port;
  snprintf(r->prefix, sizeof r->prefix, "%s", prefix ? prefix : "ac:");
  snprintf(r->addr, sizeof r->addr, "%s:%d", r->host, r->port);
  r->backoff_ms = 100;
  *out = r;
  return 0;
bad:
  free(r);
  return ac_error(AC_EINVAL, "bad Redis address '%s' (want host:port)", whole);
}

void ac_rds_destroy(ac_rds_t **self_p) {
  ac_rds_t *r = *self_p;
  if (!r) return;
  if (r->c) redisFree(r->c);
  free(r);
  *self_p = NULL;
}

static void drop(ac_rds_t *r, const char *why) {
  if (r->was_connected) AC_WARN("redis %s: connection lost (%s); serving on, retrying", r->addr, why);
  r->was_connected = false;
  if (r->c) redisFree(r->c);
  r->c = NULL;
  r->next_try_ms = ac_mono_ms() + r->backoff_ms;
  r->backoff_ms = r->backoff_ms * 2 > 5000 ? 5000 : r->backoff_ms * 2;
}

int ac_rds_connect(ac_rds_t *r) {
  if (r->c) return 0;
  struct timeval tv = {0, 300 * 1000};
  redisContext *c = redisConnectWithTimeout(r->host, r->port, tv);
  if (!c || c->err) {
    if (c) redisFree(c);
    r->next_try_ms = ac_mono_ms() + r->backoff_ms;
    r->backoff_ms = r->backoff_ms * 2 > 5000 ? 5000 : r->backoff_ms * 2;
    return ac_error(AC_EIO, "cannot connect to redis at %s", r->addr);
  }
  struct timeval cmd = {1, 0};
  redisSetTimeout(c, cmd);
  redisEnableKeepAlive(c);
  r->c = c;  // the backoff resets only when a command succeeds: a hung Redis accepts connections
  r->pipeline_broken = false;
  if (!r->was_connected) AC_INFO("redis %s: connected", r->addr);
  r->was_connected = true;
  return 0;
}

static bool ready(ac_rds_t *r) {
  if (r->c) return true;
  if (ac_mono_ms() < r->next_try_ms) return false;
  return ac_rds_connect(r) == 0;
}

redisReply *ac_rds_cmd(ac_rds_t *r, const char *fmt, ...) {
  if (!ready(r)) return NULL;
  va_list ap;
  va_start(ap, fmt);
  redisReply *rep = redisvCommand(r->c, fmt, ap);
  va_end(ap);
  if (!rep) drop(r, r->c->errstr);
  else r->backoff_ms = 100;
  return rep;
}

redisReply *ac_rds_cmdv(ac_rds_t *r, int argc, const char **argv, const size_t *lens) {
  if (!ready(r)) return NULL;
  redisReply *rep = redisCommandArgv(r->c, argc, argv, lens);
  if (!rep) drop(r, r->c->errstr);
  else r->backoff_ms = 100;
  return rep;
}

bool ac_rds_begin(ac_rds_t *r) {
  r->pipeline_broken = !ready(r);
  return !r->pipeline_broken;
}

bool ac_rds_append(ac_rds_t *r, const char *fmt, ...) {
  if (r->pipeline_broken || !r->c) {
    r->pipeline_broken = true;
    return false;
  }
  va_list ap;
  va_start(ap, fmt);
  int rc = redisvAppendCommand(r->c, fmt, ap);
  va_end(ap);
  if (rc != REDIS_OK) {
    r->pipeline_broken = true;
    drop(r, "append failed");
    return false;
  }
  return true;
}

redisReply *ac_rds_reply(ac_rds_t *r) {
  if (!r->c || r->pipeline_broken) return NULL;
  void *rep = NULL;
  if (redisGetReply(r->c, &rep) != REDIS_OK || !rep) {
    r->pipeline_broken = true;
    drop(r, r->c->errstr);
    return NULL;
  }
  return rep;
}

bool ac_rds_connected(const ac_rds_t *r) { return r->c != NULL; }
const char *ac_rds_prefix(const ac_rds_t *r) { return r->prefix; }
const char *ac_rds_addr(const ac_rds_t *r) { return r->addr; }
