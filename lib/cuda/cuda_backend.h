// cuda_backend.h - the CUDA engine behind ac_ctx_* (AC_CUDA builds only).
//
// lib/model.c keeps what every backend shares: checking a batch, assigning positions, the
// sequence lengths, the tensor-parallel leader/follower protocol. When a context is created with
// AC_BACKEND_CUDA it hands the arithmetic to these functions: the weights of one rank's shard
// live on one GPU, with that rank's KV cache and scratch, and the rows of a batch run there.
#ifndef AC_CUDA_BACKEND_H
#define AC_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ac_cuda_ctx ac_cuda_ctx_t;

// What loading a variant onto the GPU cost: bytes uploaded, seconds reading them from the file
// (into pinned staging buffers) and seconds of host -> device copies that did not overlap the
// reads, and the total.
typedef struct {
  size_t bytes;
  double read_s, copy_s, total_s;
} ac_cuda_load_stats_t;

// Uploads `shard` (rank shard->rank of shard->size; the whole model when size is 1) to device
// p->gpu and allocates the KV cache of its heads for p->n_seq sequences of p->n_ctx positions and
// scratch for p->n_batch rows. `comm` (NULL when size is 1) must be a communicator whose buffers
// are device memory (NCCL). Out of device memory is AC_ENOMEM with a message that says how much
// was asked and how much is free; nothing stays allocated on failure.
int ac_cuda_ctx_new(const ac_model_t *m, const ac_shard_t *shard, struct ac_comm *comm,
                    const ac_ctx_params_t *p, ac_cuda_ctx_t **out);
void ac_cuda_ctx_destroy(ac_cuda_ctx_t **self_p);

// Evaluates n rows the engine has checked: row i is token tokens[i] at position pos[i] of
// sequence seqs[i] (rows of one sequence in order). Writes n_vocab floats of logits for each row
// whose want[i] is non-zero, packed in row order, to host memory `logits`.
int ac_cuda_ctx_eval(ac_cuda_ctx_t *c, int32_t n, const int32_t *tokens, const int32_t *pos,
                     const int32_t *seqs, const int8_t *want, float *logits);

void ac_cuda_ctx_load_stats(const ac_cuda_ctx_t *c, ac_cuda_load_stats_t *out);
size_t ac_cuda_ctx_kv_bytes(const ac_cuda_ctx_t *c);

// A rank of an NCCL group: one process per GPU. Rank 0 creates the group's id and writes it to
// `id_path` (atomically); the other ranks wait up to timeout_ms for the file to appear.
int ac_comm_nccl_new(int rank, int size, int gpu, const char *id_path, int timeout_ms,
                     struct ac_comm **out);

#ifdef __cplusplus
}
#endif

#endif
