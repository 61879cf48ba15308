// rds.h - a Redis connection that survives Redis going away.
//
// Every daemon keeps serving while Redis is down: a command on a lost connection returns NULL at
// once, and the connection is retried on later calls with exponential backoff (100 ms doubling to
// 5 s). Connect and command timeouts are short, so a dead Redis never stalls an event loop for
// long. All keys start with a prefix ("ac:" by default) so that several clusters can share one
// Redis; callers pass ac_rds_prefix() as the first %s of their key.
#ifndef AC_RDS_H
#define AC_RDS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>

typedef struct ac_rds ac_rds_t;

// addr is "host:port" (or "port"); prefix NULL means "ac:". Does not connect yet.
int ac_rds_new(const char *addr, const char *prefix, ac_rds_t **out);
void ac_rds_destroy(ac_rds_t **self_p);

// Runs one command (hiredis format). Returns the reply, which the caller frees with
// freeReplyObject, or NULL when there is no connection or it broke during the call (then it is
// dropped and retried later). An error reply (REDIS_REPLY_ERROR) is returned as a reply.
redisReply *ac_rds_cmd(ac_rds_t *r, const char *fmt, ...);
redisReply *ac_rds_cmdv(ac_rds_t *r, int argc, const char **argv, const size_t *lens);

// Pipelines: ac_rds_begin (false: no connection), then n ac_rds_append, then n ac_rds_reply.
// After any failure the rest of the pipeline's calls return false / NULL; a reply that is NULL
// means the whole pipeline is lost (the connection was dropped).
bool ac_rds_begin(ac_rds_t *r);
bool ac_rds_append(ac_rds_t *r, const char *fmt, ...);
redisReply *ac_rds_reply(ac_rds_t *r);

bool ac_rds_connected(const ac_rds_t *r);
// Tries to connect now if disconnected (ignoring the backoff). Returns 0 or AC_EIO.
int ac_rds_connect(ac_rds_t *r);
const char *ac_rds_prefix(const ac_rds_t *r);
const char *ac_rds_addr(const ac_rds_t *r);

#endif
