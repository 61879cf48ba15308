// comm_zmq.c - a tensor-parallel group of CPU processes on one machine, over ZeroMQ ipc://.
//
// A star: rank 0 binds a ROUTER socket at ipc://PATH, every other rank connects a DEALER whose
// routing id is its rank. Each collective is one message from each follower that has something
// to send and one answer from rank 0: the all-reduce adds the ranks' buffers in rank order (the
// same bits as the thread group of comm_cpu.c), the all-gather concatenates them, a broadcast from
// a follower goes through rank 0. Ranks call the collectives in the same order, so each pipe's
// messages line up with them without tags; the size of every message is checked.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "clock.h"
#include "comm.h"
#include "error.h"

typedef struct {
  ac_comm_t base;  // first: the rank hands out &base
  void *zctx, *sock;
  char endpoint[512];
  float *tmp;      // rank 0: one follower's buffer at a time
  size_t tmp_cap;
} zmq_comm_t;

static int zfail(const zmq_comm_t *c, const char *what) {
  return ac_error(AC_EIO, "tensor-parallel rank %d of %d (%s): %s: %s", c->base.rank, c->base.size, c->endpoint,
                  what, zmq_strerror(errno));
}

// Rank 0 to rank `to`, or a follower to rank 0.
static int send_to(zmq_comm_t *c, int to, const void *buf, size_t bytes) {
  if (c->base.rank == 0) {
    char id[16];
    int n = snprintf(id, sizeof id, "r%d", to);
    if (zmq_send(c->sock, id, (size_t)n, ZMQ_SNDMORE) < 0) return zfail(c, "send");
  }
  if (zmq_send(c->sock, buf, bytes, 0) < 0) return zfail(c, "send");
  return 0;
}

// Receives one message of exactly `bytes` into buf; on rank 0 *from is the sender's rank.
static int recv_from(zmq_comm_t *c, int *from, void *buf, size_t bytes) {
  if (c->base.rank == 0) {
    char id[16];
    int n = zmq_recv(c->sock, id, sizeof id - 1, 0);
    if (n < 0) return zfail(c, "receive");
    id[n < (int)sizeof id - 1 ? n : (int)sizeof id - 1] = 0;
    int r = id[0] == 'r' ? atoi(id + 1) : -1;
    if (r < 1 || r >= c->base.size) return ac_error(AC_EFORMAT, "tensor-parallel rank 0: a message from '%s'", id);
    *from = r;
  }
  zmq_msg_t m;
  zmq_msg_init(&m);
  if (zmq_msg_recv(&m, c->sock, 0) < 0) {
    zmq_msg_close(&m);
    return zfail(c, "receive");
  }
  size_t got = zmq_msg_size(&m);
  if (got == bytes) memcpy(buf, zmq_msg_data(&m), bytes);
  zmq_msg_close(&m);
  if (got != bytes)
    return ac_error(AC_EFORMAT, "tensor-parallel rank %d: a message of %zu bytes where %zu were due: the ranks are out "
                    "of step", c->base.rank, got, bytes);
  return 0;
}

static float *tmp(zmq_comm_t *c, size_t n) {
  if (n > c->tmp_cap) {
    float *t = realloc(c->tmp, n * sizeof *t);
    if (!t) return NULL;
    c->tmp = t;
    c->tmp_cap = n;
  }
  return c->tmp;
}

// Rank 0 takes one message of n floats from every follower, in arrival order, and hands each to
// `use` with its rank.
static int gather(zmq_comm_t *c, size_t n, void (*use)(void *, int, const float *, size_t), void *user) {
  float *t = tmp(c, n ? n : 1);
  if (!t) return ac_error(AC_ENOMEM, "out of memory");
  for (int k = 1; k < c->base.size; k++) {
    int from;
    int rc = recv_from(c, &from, t, n * sizeof *t);
    if (rc) return rc;
    use(user, from, t, n);
  }
  return 0;
}

// Rank order matters for the sums: each follower's buffer is kept until all are in.
typedef struct {
  float *all;  // (size, n)
} stash_t;

static void stash(void *user, int from, const float *x, size_t n) {
  memcpy(((stash_t *)user)->all + (size_t)from * n, x, n * sizeof *x);
}

static int zmq_all_reduce_sum(ac_comm_t *base, float *buf, size_t n) {
  zmq_comm_t *c = (zmq_comm_t *)base;
  const int K = base->size;
  if (base->rank != 0) {
    int rc = send_to(c, 0, buf, n * sizeof *buf);
    return rc ? rc : recv_from(c, NULL, buf, n * sizeof *buf);
  }
  stash_t st = {malloc((size_t)K * n * sizeof(float) + 1)};
  if (!st.all) return ac_error(AC_ENOMEM, "out of memory");
  int rc = gather(c, n, stash, &st);
  if (!rc) {
    for (size_t i = 0; i < n; i++) {
      float s = buf[i];
      for (int k = 1; k < K; k++) s += st.all[(size_t)k * n + i];
      buf[i] = s;
    }
    for (int k = 1; k < K && !rc; k++) rc = send_to(c, k, buf, n * sizeof *buf);
  }
  free(st.all);
  return rc;
}

static int zmq_all_gather(ac_comm_t *base, const float *send, float *recv, size_t n) {
  zmq_comm_t *c = (zmq_comm_t *)base;
  const int K = base->size;
  if (base->rank != 0) {
    int rc = send_to(c, 0, send, n * sizeof *send);
    return rc ? rc : recv_from(c, NULL, recv, (size_t)K * n * sizeof *recv);
  }
  memmove(recv, send, n * sizeof *recv);
  stash_t st = {recv};
  int rc = gather(c, n, stash, &st);
  for (int k = 1; k < K && !rc; k++) rc = send_to(c, k, recv, (size_t)K * n * sizeof *recv);
  return rc;
}

static int zmq_broadcast(ac_comm_t *base, void *buf, size_t bytes, int root) {
  zmq_comm_t *c = (zmq_comm_t *)base;
  const int K = base->size, r = base->rank;
  if (root < 0 || root >= K) return ac_error(AC_EINVAL, "broadcast from rank %d of %d", root, K);
  int rc = 0;
  if (r == 0) {
    int from;
    if (root != 0 && (rc = recv_from(c, &from, buf, bytes))) return rc;
    if (root != 0 && from != root)
      return ac_error(AC_EFORMAT, "tensor-parallel rank 0: rank %d sent where rank %d broadcasts", from, root);
    for (int k = 1; k < K && !rc; k++)
      if (k != root) rc = send_to(c, k, buf, bytes);
    return rc;
  }
  if (r == root) return send_to(c, 0, buf, bytes);
  return recv_from(c, NULL, buf, bytes);
}

static void zmq_destroy(ac_comm_t *base) {
  zmq_comm_t *c = (zmq_comm_t *)base;
  if (c->sock) zmq_close(c->sock);
  if (c->zctx) zmq_ctx_term(c->zctx);
  free(c->tmp);
  free(c);
}

static const ac_comm_ops_t zmq_ops = {"zmq", zmq_all_reduce_sum, zmq_all_gather, zmq_broadcast, zmq_destroy};

int ac_comm_zmq_new(int rank, int size, const char *path, int timeout_ms, ac_comm_t **out) {
  *out = NULL;
  if (size < 1 || size > 256 || rank < 0 || rank >= size) return ac_error(AC_EINVAL, "rank %d of a group of %d", rank, size);
  if (!path || !*path) return ac_error(AC_EINVAL, "a process group needs a path to meet at");
  zmq_comm_t *c = calloc(1, sizeof *c);
  if (!c) return ac_error(AC_ENOMEM, "out of memory");
  c->base = (ac_comm_t){&zmq_ops, rank, size};
  int rc = 0;
  if (snprintf(c->endpoint, sizeof c->endpoint, "ipc://%s", path) >= (int)sizeof c->endpoint) {
    rc = ac_error(AC_EINVAL, "path '%s' is too long", path);
    goto fail;
  }
  if (!(c->zctx = zmq_ctx_new()) || !(c->sock = zmq_socket(c->zctx, rank == 0 ? ZMQ_ROUTER : ZMQ_DEALER))) {
    rc = zfail(c, "socket");
    goto fail;
  }
  int zero = 0, one = 1, hwm = 0;
  zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);  // no limit: a collective never drops
  zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
  if (rank == 0) {
    zmq_setsockopt(c->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    if (zmq_bind(c->sock, c->endpoint) != 0) {
      rc = zfail(c, "bind");
      goto fail;
    }
  } else {
    char id[16];
    int n = snprintf(id, sizeof id, "r%d", rank);
    zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, id, (size_t)n);
    if (zmq_connect(c->sock, c->endpoint) != 0) {
      rc = zfail(c, "connect");
      goto fail;
    }
  }
  // Joining: every follower says hello, and rank 0 answers once all have (a broadcast of the
  // group's size, which also catches a follower started with another --tp).
  int32_t k = size;
  int tmo = timeout_ms > 0 ? timeout_ms : -1;
  zmq_setsockopt(c->sock, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
  if (rank == 0) {
    for (int got = 1; got < size && !rc; got++) {
      int from;
      int32_t theirs;
      if ((rc = recv_from(c, &from, &theirs, sizeof theirs))) break;
      if (theirs != size) rc = ac_error(AC_EINVAL, "rank %d joined a group of %d; this one has %d ranks", from, theirs, size);
    }
    for (int r = 1; r < size && !rc; r++) rc = send_to(c, r, &k, sizeof k);
  } else {
    // Rank 0 may not be bound yet: the DEALER keeps reconnecting; the hello waits in its queue.
    if (!(rc = send_to(c, 0, &k, sizeof k))) rc = recv_from(c, NULL, &k, sizeof k);
  }
  if (rc) {
    if (errno == EAGAIN) rc = ac_error(AC_EIO, "tensor-parallel rank %d of %d: the group did not form within %d ms at %s",
                                      rank, size, timeout_ms, c->endpoint);
    goto fail;
  }
  int forever = -1;  // collectives wait as long as the leader is idle
  zmq_setsockopt(c->sock, ZMQ_RCVTIMEO, &forever, sizeof forever);
  *out = &c->base;
  return 0;
fail:
  zmq_destroy(&c->base);
  return rc;
}
