// comm.h - the collective operations a tensor-parallel group needs, behind one interface.
//
// A group has `size` ranks; each rank holds one communicator and calls every collective in the
// same order with the same sizes (a collective is a meeting: all ranks must reach it). Buffers
// live where the backend keeps its activations: host memory for the CPU engine, device memory
// for the CUDA one. Three implementations:
//   - CPU threads (comm_cpu.c): the ranks are threads of one process; CI tests the sharding with
//     it at TP = 2 and 4.
//   - CPU processes (comm_zmq.c, in libaccluster): one process per rank on one machine, over
//     ZeroMQ ipc://; CI tests the workers' process groups with it.
//   - NCCL (lib/cuda/comm_nccl.c, AC_CUDA builds): one rank per GPU, one process per rank.
//
// Every rank gets bit-identical results from every collective (the CPU all-reduce adds the
// ranks' values in rank order), so ranks never drift apart and greedy decoding agrees.
#ifndef AC_COMM_H
#define AC_COMM_H

#include <stddef.h>

typedef struct ac_comm ac_comm_t;

typedef struct {
  const char *name;  // "cpu", "nccl"
  // buf[0..n) = the sum over ranks of every rank's buf[0..n), on every rank.
  int (*all_reduce_sum)(ac_comm_t *c, float *buf, size_t n);
  // recv[r * n .. (r + 1) * n) = rank r's send[0..n), on every rank.
  int (*all_gather)(ac_comm_t *c, const float *send, float *recv, size_t n);
  // buf[0..bytes) = rank root's buf, on every rank. Host memory on every implementation: it
  // carries the leader's batch (tokens, sequences) to the followers.
  int (*broadcast)(ac_comm_t *c, void *buf, size_t bytes, int root);
  void (*destroy)(ac_comm_t *c);
} ac_comm_ops_t;

struct ac_comm {
  const ac_comm_ops_t *ops;
  int rank, size;
};

static inline int ac_comm_all_reduce_sum(ac_comm_t *c, float *buf, size_t n) {
  return c->ops->all_reduce_sum(c, buf, n);
}
static inline int ac_comm_all_gather(ac_comm_t *c, const float *send, float *recv, size_t n) {
  return c->ops->all_gather(c, send, recv, n);
}
static inline int ac_comm_broadcast(ac_comm_t *c, void *buf, size_t bytes, int root) {
  return c->ops->broadcast(c, buf, bytes, root);
}
// Destroys one rank's communicator (NULL-safe); the group's shared state goes with the last.
void ac_comm_destroy(ac_comm_t **c);

// Creates a CPU group of `size` ranks: out[r] is rank r's communicator, to be used from one
// thread each.
int ac_comm_cpu_group(int size, ac_comm_t **out);

// Joins a group of `size` CPU processes as rank `rank`: rank 0 binds ipc://PATH, the others
// connect. Returns when every rank has joined, or AC_EIO after timeout_ms (<= 0: no limit).
// The sums and gathers give the bits the thread group gives.
int ac_comm_zmq_new(int rank, int size, const char *path, int timeout_ms, ac_comm_t **out);

#endif
