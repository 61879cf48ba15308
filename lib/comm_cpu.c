// comm_cpu.c - a tensor-parallel group whose ranks are threads of one process.
//
// Each collective is two or three barrier phases over pointers the ranks publish: no copies
// through a staging buffer. The all-reduce is a reduce-scatter and all-gather in place: rank r
// adds up slice r of every rank's buffer (in rank order, so every rank gets the same bits) and
// writes the sum back into slice r of every buffer.
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "error.h"

typedef struct {
  int size;
  atomic_int refs;
  pthread_barrier_t bar;
  float **bufs;         // (size) each rank's buffer, published for one collective
  const void **sends;   // (size)
} group_t;

typedef struct {
  ac_comm_t base;  // first: the group hands out &rank->base
  group_t *g;
} cpu_comm_t;

static group_t *grp(ac_comm_t *c) { return ((cpu_comm_t *)c)->g; }

static int cpu_all_reduce_sum(ac_comm_t *c, float *buf, size_t n) {
  group_t *g = grp(c);
  const int K = g->size, r = c->rank;
  g->bufs[r] = buf;
  pthread_barrier_wait(&g->bar);
  size_t lo = n * r / K, hi = n * (r + 1) / K;
  for (size_t i = lo; i < hi; i++) {
    float s = g->bufs[0][i];
    for (int k = 1; k < K; k++) s += g->bufs[k][i];
    for (int k = 0; k < K; k++) g->bufs[k][i] = s;
  }
  pthread_barrier_wait(&g->bar);
  return 0;
}

static int cpu_all_gather(ac_comm_t *c, const float *send, float *recv, size_t n) {
  group_t *g = grp(c);
  g->sends[c->rank] = send;
  pthread_barrier_wait(&g->bar);
  for (int k = 0; k < g->size; k++) memcpy(recv + (size_t)k * n, g->sends[k], n * sizeof *recv);
  pthread_barrier_wait(&g->bar);  // the senders' buffers stay untouched until all have copied
  return 0;
}

static int cpu_broadcast(ac_comm_t *c, void *buf, size_t bytes, int root) {
  group_t *g = grp(c);
  if (root < 0 || root >= g->size) return ac_error(AC_EINVAL, "broadcast from rank %d of %d", root, g->size);
  if (c->rank == root) g->sends[root] = buf;
  pthread_barrier_wait(&g->bar);
  if (c->rank != root) memcpy(buf, g->sends[root], bytes);
  pthread_barrier_wait(&g->bar);
  return 0;
}

static void cpu_destroy(ac_comm_t *c) {
  group_t *g = grp(c);
  free(c);
  if (atomic_fetch_sub(&g->refs, 1) == 1) {
    pthread_barrier_destroy(&g->bar);
    free(g->bufs);
    free(g->sends);
    free(g);
  }
}

static const ac_comm_ops_t cpu_ops = {"cpu", cpu_all_reduce_sum, cpu_all_gather, cpu_broadcast, cpu_destroy};

void ac_comm_destroy(ac_comm_t **c) {
  if (!*c) return;
  (*c)->ops->destroy(*c);
  *c = NULL;
}

int ac_comm_cpu_group(int size, ac_comm_t **out) {
  if (size < 1 || size > 256) return ac_error(AC_EINVAL, "a CPU group of %d ranks (1..256)", size);
  group_t *g = calloc(1, sizeof *g);
  if (!g) return ac_error(AC_ENOMEM, "out of memory");
  g->size = size;
  g->bufs = calloc(size, sizeof *g->bufs);
  g->sends = calloc(size, sizeof *g->sends);
  if (!g->bufs || !g->sends || pthread_barrier_init(&g->bar, NULL, (unsigned)size)) {
    free(g->bufs);
    free(g->sends);
    free(g);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  for (int r = 0; r < size; r++) {
    cpu_comm_t *c = calloc(1, sizeof *c);
    if (!c) {
      for (int k = 0; k < r; k++) ac_comm_destroy(&out[k]);
      if (r == 0) {  // no rank took a reference yet
        pthread_barrier_destroy(&g->bar);
        free(g->bufs);
        free(g->sends);
        free(g);
      }
      return ac_error(AC_ENOMEM, "out of memory");
    }
    c->base = (ac_comm_t){&cpu_ops, r, size};
    c->g = g;
    atomic_fetch_add(&g->refs, 1);
    out[r] = &c->base;
  }
  return 0;
}
