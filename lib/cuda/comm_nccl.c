// comm_nccl.c - the NCCL implementation of comm.h: one rank per GPU, one process per rank.
//
// The group's unique id travels through a file: rank 0 creates it, writes it to a temporary
// name and renames it into place (so no rank reads half an id); the others poll for the file.
// Rank 0 removes the file once every rank has joined, so a later group at the same path never
// reads a stale id. Each collective runs on the communicator's own stream and returns when it is
// done, like the CPU group's: callers finish their own work on the buffers before calling.
#include <cuda_runtime_api.h>
#include <errno.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "comm.h"
#include "cuda_backend.h"
#include "error.h"

typedef struct {
  ac_comm_t base;  // first: the rank hands out &base
  int gpu;
  ncclComm_t nc;
  cudaStream_t stream;
  void *bbuf;      // device buffer for broadcasts of host memory
  size_t bbuf_cap;
} nccl_comm_t;

static int nccl_fail(ncclResult_t r, const nccl_comm_t *c, const char *what) {
  int code = r == ncclInvalidArgument || r == ncclInvalidUsage ? AC_EINVAL : AC_EIO;
  return ac_error(code, "NCCL rank %d of %d (GPU %d): %s: %s", c->base.rank, c->base.size, c->gpu, what,
                  ncclGetErrorString(r));
}

static int cuda_fail(cudaError_t e, const nccl_comm_t *c, const char *what) {
  (void)cudaGetLastError();  // reported here: not for the next kernel launch to pick up
  return ac_error(e == cudaErrorMemoryAllocation ? AC_ENOMEM : AC_EIO, "NCCL rank %d of %d (GPU %d): %s: %s",
                  c->base.rank, c->base.size, c->gpu, what, cudaGetErrorString(e));
}

// Waits for the collective just enqueued (r is how enqueueing went) and reports a failure.
static int finish(nccl_comm_t *c, ncclResult_t r, const char *what) {
  if (r != ncclSuccess) return nccl_fail(r, c, what);
  cudaError_t e = cudaStreamSynchronize(c->stream);
  return e == cudaSuccess ? 0 : cuda_fail(e, c, what);
}

static int nccl_all_reduce_sum(ac_comm_t *base, float *buf, size_t n) {
  nccl_comm_t *c = (nccl_comm_t *)base;
  cudaError_t e = cudaSetDevice(c->gpu);
  if (e != cudaSuccess) return cuda_fail(e, c, "cudaSetDevice");
  return finish(c, ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, c->nc, c->stream), "all-reduce");
}

static int nccl_all_gather(ac_comm_t *base, const float *send, float *recv, size_t n) {
  nccl_comm_t *c = (nccl_comm_t *)base;
  cudaError_t e = cudaSetDevice(c->gpu);
  if (e != cudaSuccess) return cuda_fail(e, c, "cudaSetDevice");
  return finish(c, ncclAllGather(send, recv, n, ncclFloat, c->nc, c->stream), "all-gather");
}

static int nccl_broadcast(ac_comm_t *base, void *buf, size_t bytes, int root) {
  nccl_comm_t *c = (nccl_comm_t *)base;
  if (root < 0 || root >= base->size) return ac_error(AC_EINVAL, "broadcast from rank %d of %d", root, base->size);
  if (bytes == 0) return 0;
  cudaError_t e = cudaSetDevice(c->gpu);
  if (e != cudaSuccess) return cuda_fail(e, c, "cudaSetDevice");
  if (bytes > c->bbuf_cap) {  // every rank grows alike: all see the same sizes
    if (c->bbuf) cudaFree(c->bbuf);
    c->bbuf = NULL;
    c->bbuf_cap = 0;
    size_t cap = bytes < 4096 ? 4096 : bytes;
    if ((e = cudaMalloc(&c->bbuf, cap)) != cudaSuccess) return cuda_fail(e, c, "allocating a broadcast buffer");
    c->bbuf_cap = cap;
  }
  if (base->rank == root &&
      (e = cudaMemcpyAsync(c->bbuf, buf, bytes, cudaMemcpyHostToDevice, c->stream)) != cudaSuccess)
    return cuda_fail(e, c, "broadcast");
  ncclResult_t r = ncclBroadcast(c->bbuf, c->bbuf, bytes, ncclUint8, root, c->nc, c->stream);
  if (r != ncclSuccess) return nccl_fail(r, c, "broadcast");
  if (base->rank != root &&
      (e = cudaMemcpyAsync(buf, c->bbuf, bytes, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess)
    return cuda_fail(e, c, "broadcast");
  return finish(c, ncclSuccess, "broadcast");
}

static void nccl_destroy(ac_comm_t *base) {
  nccl_comm_t *c = (nccl_comm_t *)base;
  if (!c) return;
  cudaSetDevice(c->gpu);
  if (c->nc) ncclCommDestroy(c->nc);
  if (c->bbuf) cudaFree(c->bbuf);
  if (c->stream) cudaStreamDestroy(c->stream);
  (void)cudaGetLastError();  // e.g. cudaSetDevice of a bad GPU number: leave no error behind
  free(c);
}

static const ac_comm_ops_t nccl_ops = {"nccl", nccl_all_reduce_sum, nccl_all_gather, nccl_broadcast, nccl_destroy};

// Rank 0: writes the id to a temporary file beside `path` and renames it into place.
static int write_id(const char *path, const ncclUniqueId *id) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
    return ac_error(AC_EINVAL, "NCCL id path '%s' is too long", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return ac_error(AC_EIO, "cannot write '%s': %s", tmp, strerror(errno));
  size_t w = fwrite(id, 1, sizeof *id, f);
  if (fclose(f) != 0 || w != sizeof *id) {
    unlink(tmp);
    return ac_error(AC_EIO, "cannot write '%s'", tmp);
  }
  if (rename(tmp, path) != 0) {
    int err = errno;
    unlink(tmp);
    return ac_error(AC_EIO, "cannot rename '%s' to '%s': %s", tmp, path, strerror(err));
  }
  return 0;
}

// Other ranks: polls for the file until it holds a whole id or timeout_ms passes.
static int read_id(const char *path, int timeout_ms, ncclUniqueId *id) {
  double deadline = ac_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    FILE *f = fopen(path, "rb");
    if (f) {
      size_t n = fread(id, 1, sizeof *id, f);
      fclose(f);
      if (n == sizeof *id) return 0;
    }
    if (ac_mono_ms() >= deadline)
      return ac_error(AC_EIO, "timed out after %d ms waiting for the NCCL id in '%s'", timeout_ms, path);
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

int ac_comm_nccl_new(int rank, int size, int gpu, const char *id_path, int timeout_ms,
                     struct ac_comm **out) {
  *out = NULL;
  if (size < 1 || rank < 0 || rank >= size) return ac_error(AC_EINVAL, "NCCL rank %d of %d", rank, size);
  if (!id_path || !*id_path) return ac_error(AC_EINVAL, "NCCL group needs an id file path");
  nccl_comm_t *c = calloc(1, sizeof *c);
  if (!c) return ac_error(AC_ENOMEM, "out of memory");
  c->base = (ac_comm_t){&nccl_ops, rank, size};
  c->gpu = gpu;
  int rc = 0;
  cudaError_t e;
  ncclResult_t r;
  ncclUniqueId id;
  if ((e = cudaSetDevice(gpu)) != cudaSuccess) {
    rc = cuda_fail(e, c, "cudaSetDevice");
    goto fail;
  }
  if ((e = cudaStreamCreate(&c->stream)) != cudaSuccess) {
    rc = cuda_fail(e, c, "cudaStreamCreate");
    goto fail;
  }
  if (rank == 0) {
    if ((r = ncclGetUniqueId(&id)) != ncclSuccess) {
      rc = nccl_fail(r, c, "ncclGetUniqueId");
      goto fail;
    }
    if ((rc = write_id(id_path, &id))) goto fail;
  } else if ((rc = read_id(id_path, timeout_ms, &id))) {
    goto fail;
  }
  if ((r = ncclCommInitRank(&c->nc, size, id, rank)) != ncclSuccess) {
    c->nc = NULL;
    rc = nccl_fail(r, c, "ncclCommInitRank");
    if (rank == 0) unlink(id_path);
    goto fail;
  }
  // Every rank has joined (ncclCommInitRank returns when the group is complete).
  if (rank == 0) unlink(id_path);
  *out = &c->base;
  return 0;
fail:
  nccl_destroy(&c->base);
  return rc;
}
