// lowrank.h - low-rank variants: weight matrices replaced by truncated-SVD factors.
//
// A matrix W (out x in; GGUF shape [in, out]) is factored in double precision as W = U Σ Vᵀ and
// truncated to rank r: A = Vᵀ[:r] (r x in) and B = U[:, :r] Σ[:r] (out x r), so W ≈ B·A, the best
// rank-r approximation in the Frobenius norm (Eckart–Young). The factors are written as
// X.weight.lr_a [in, r] and X.weight.lr_b [r, out], the GGUF extension the engine reads
// (model.h, ac_weight_t); llama.cpp cannot load such files.
//
// Σ goes wholly into B, not √Σ into each factor: A then has orthonormal rows, so the
// intermediate A·x the engine computes is a projection of x with the same scale as x (it is
// rounded to the activation type, e.g. F16, before the second matmul), and B carries the scale
// W had. Splitting √Σ would gain nothing in F16/F32 range and lose that property.
#ifndef AC_LOWRANK_H
#define AC_LOWRANK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ac_lowrank_params_t.type: keep the source type when it is a float type (F32, F16, BF16),
// else F16.
#define AC_LOWRANK_TYPE_SAME (-1)

// One matrix done, in completion order (from worker threads, one call at a time).
typedef struct {
  const char *name;       // the dense matrix's name, e.g. "blk.0.ffn_up.weight"
  int index, count;       // this is the index-th (1-based) of count matrices
  int64_t n_in, n_out;    // W is (n_out x n_in)
  int64_t rank;           // the rank chosen (rounded up to the factor type's block)
  int64_t full_rank;      // min(n_in, n_out)
  bool factored;          // false: factors of that rank would not be smaller: kept dense
  uint32_t type;          // factor type (when factored)
  double energy;          // fraction of Σσ² the rank keeps
  double rel_err;         // ‖W − B·A‖_F / ‖W‖_F of the stored factors (0 when dense)
  size_t bytes_before, bytes_after;
  double seconds;
} ac_lowrank_tensor_t;

typedef struct {
  int64_t rank;       // fixed rank >= 1, or 0 to choose per matrix by energy
  double energy;      // in (0, 1]: per matrix, the smallest r with Σσ²(top r) >= energy·Σσ²
  // Which matrices: a comma list of "attn" (attn_q/k/v/output), "ffn" (ffn_gate/up/down),
  // "output" (output.weight), "all", or substrings of tensor names ("blk.0.", "ffn_down").
  // NULL means "attn,ffn". token_embd.weight is never factored (the engine looks it up by row).
  const char *tensors;
  int32_t type;       // factor type: AC_TYPE_F16, AC_TYPE_BF16, AC_TYPE_F32 or AC_LOWRANK_TYPE_SAME
  int n_threads;      // matrices factored at once (each SVD is single-threaded); < 1 means 1
  // Optional: called once per matrix, and with notes ("output is tied to ...") for the user.
  void (*on_tensor)(void *user, const ac_lowrank_tensor_t *t);
  void (*on_note)(void *user, const char *note);
  void *user;
} ac_lowrank_params_t;

typedef struct {
  int n_matched;            // matrices the selection chose
  int n_factored;           // of those, stored as factors
  size_t bytes_before;      // all tensors of the input
  size_t bytes_after;       // all tensors of the output
  double mean_rel_err;      // mean ‖W − B·A‖_F / ‖W‖_F over the factored matrices
  double seconds;
} ac_lowrank_stats_t;

// Defaults: energy 0.9, tensors "attn,ffn", F16 factors, one thread.
ac_lowrank_params_t ac_lowrank_params_default(void);

// The smallest r in 1..n with s[0]² + ... + s[r-1]² >= energy·Σ s², for singular values s in
// decreasing order; n for energy >= 1 only when the tail is not exactly zero.
int64_t ac_lowrank_rank_for_energy(const double *s, int64_t n, double energy);

// Reads the model at in_path (it must load: supported architecture and types), factors the
// chosen matrices and writes out_path through a temporary file, so an error leaves no file.
// Everything else is copied unchanged; metadata agentcompress.lowrank.* records the method.
// Errors: AC_EINVAL (rank < 1, energy outside (0, 1], bad selection or type), AC_ERANGE (rank
// larger than min(in, out) of a chosen matrix), AC_ENOTFOUND (nothing matched), AC_EUNSUPPORTED,
// AC_EFORMAT (non-finite weights), AC_ENOMEM, AC_EIO; ac_errmsg() says which tensor.
int ac_lowrank_file(const char *in_path, const char *out_path, const ac_lowrank_params_t *params,
                    ac_lowrank_stats_t *stats);

#endif
