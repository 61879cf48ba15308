// quantize.c - `acq quantize`: a model rewritten with its matrices in another tensor type.
//
// One pass over the input's tensors decides each one's type (the policy in quantize.h), then the
// rows of each tensor are dequantized to float and requantized with the error-minimizing
// quantizers of quant_make.c, split across threads; the output is written in one go through
// ac_gguf_write's temporary file, so an error at any point leaves no output behind.
#include "quantize.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"
#include "log.h"
#include "quant.h"
#include "quant_make.h"
#include "quant_q2x.h"
#include "threadpool.h"

ac_quantize_params_t ac_quantize_default_params(uint32_t type) {
  return (ac_quantize_params_t){.type = type, .keep_embd_output = true, .n_threads = 1};
}

// --- types -------------------------------------------------------------------------------------
// q2x is looked up here as well as through ac_type_traits(), so that this file works whether or
// not quant.c's table lists our extension type.

static const ac_type_traits_t *traits_of(uint32_t type) {
  const ac_type_traits_t *tt = ac_type_traits(type);
  if (!tt && type == AC_TYPE_Q2X) tt = ac__q2x_traits();
  return tt;
}

static const char *name_of(uint32_t type) {
  const ac_type_traits_t *tt = traits_of(type);
  return tt ? tt->name : "?";
}

static bool fits(uint32_t type, int64_t ne0) {
  const ac_type_traits_t *tt = traits_of(type);
  return tt && ne0 % tt->blck_size == 0;
}

static size_t row_bytes(uint32_t type, int64_t ne0) {
  const ac_type_traits_t *tt = traits_of(type);
  return tt && ne0 % tt->blck_size == 0 ? (size_t)(ne0 / tt->blck_size) * tt->type_size : 0;
}

static double bpw_of(uint32_t type) {
  const ac_type_traits_t *tt = traits_of(type);
  return tt ? 8.0 * (double)tt->type_size / (double)tt->blck_size : 0;
}

// The type a row length that a target cannot take falls back to: the 32-element type of the same
// bits where one exists.
//   Q4_K -> Q4_1, not Q4_0: both are 4-bit codes, and Q4_1's minimum buys a lower error on real
//     weights (relative RMSE 0.072 against 0.081 on stories260K; on SmolLM2, which ships as
//     Q4_1, it gives the weights back exactly where Q4_0 is at 0.078) for 5.0 bits per weight
//     instead of 4.5. llama.cpp takes Q5_0 here, which is no longer a 4-bit type.
//   Q5_K -> Q5_1, the same choice at 5 bits (6.0 bits per weight).
//   Q6_K -> Q8_0: there is no 6-bit 32-element type; the next one up.
//   Q3_K -> Q4_0: ggml has no 3-bit 32-element type. Going down to 2 bits (q2x) would lose far
//     more than the 3-bit type promises and make the file unreadable to llama.cpp, so the
//     fallback rounds up, to the cheaper 4-bit type (4.5 bits per weight).
//   Q2_K -> q2x, our 2-bit 32-element type (3.0 bits per weight; quant_q2x.h).
// A row that not even 32-element blocks fit is written as F16.
static uint32_t fallback_of(uint32_t type) {
  switch (type) {
    case AC_TYPE_Q4_K: return AC_TYPE_Q4_1;
    case AC_TYPE_Q5_K: return AC_TYPE_Q5_1;
    case AC_TYPE_Q6_K: return AC_TYPE_Q8_0;
    case AC_TYPE_Q3_K: return AC_TYPE_Q4_0;
    case AC_TYPE_Q2_K: return AC_TYPE_Q2X;
    default: return AC_TYPE_F16;
  }
}

// llama.cpp's LLAMA_FTYPE_MOSTLY_* for a target (general.file_type), or -1 where none exists.
// For the K-quants the "_S" mix is the closest: mostly that type, nothing mixed in on purpose.
static int llama_ftype(uint32_t type) {
  switch (type) {
    case AC_TYPE_F32: return 0;
    case AC_TYPE_F16: return 1;
    case AC_TYPE_Q4_0: return 2;
    case AC_TYPE_Q4_1: return 3;
    case AC_TYPE_Q8_0: return 7;
    case AC_TYPE_Q5_0: return 8;
    case AC_TYPE_Q5_1: return 9;
    case AC_TYPE_Q2_K: return 10;
    case AC_TYPE_Q3_K: return 11;  // Q3_K_S
    case AC_TYPE_Q4_K: return 14;  // Q4_K_S
    case AC_TYPE_Q5_K: return 16;  // Q5_K_S
    case AC_TYPE_Q6_K: return 18;
    case AC_TYPE_BF16: return 32;
    default: return -1;
  }
}

static bool is_target(uint32_t type) {
  return type != AC_TYPE_Q8_1 && type != AC_TYPE_Q8_K && ac_quantize_best_supported(type) && traits_of(type);
}

// token_embd / output under keep_embd_output (see quantize.h): targets of at least Q6_K's 6.5625
// bits per weight stay as they are; the others get Q6_K where rows fit 256, else Q8_0.
static uint32_t embd_output_type(uint32_t target, int64_t ne0) {
  if (bpw_of(target) >= bpw_of(AC_TYPE_Q6_K) || !traits_of(target)->is_quantized) return target;
  return fits(AC_TYPE_Q6_K, ne0) ? AC_TYPE_Q6_K : AC_TYPE_Q8_0;
}

typedef enum { KIND_TARGET, KIND_FALLBACK, KIND_KEPT } kind_t;

// The type of one tensor under the policy, and why.
static uint32_t choose(const ac_gguf_tensor_t *t, const ac_quantize_params_t *p, kind_t *kind) {
  if (t->n_dims < 2) {
    *kind = KIND_KEPT;
    return AC_TYPE_F32;
  }
  uint32_t want = p->type;
  *kind = KIND_TARGET;
  if (p->keep_embd_output &&
      (strcmp(t->name, "token_embd.weight") == 0 || strcmp(t->name, "output.weight") == 0)) {
    want = embd_output_type(p->type, t->ne[0]);
    if (want != p->type) *kind = KIND_KEPT;
  }
  while (!fits(want, t->ne[0])) {
    want = fallback_of(want);
    if (*kind == KIND_TARGET) *kind = KIND_FALLBACK;
  }
  return want;
}

// --- the per-tensor work -----------------------------------------------------------------------

typedef struct {
  const ac_gguf_tensor_t *t;
  const ac_type_traits_t *src;  // input type
  uint32_t dst;                 // output type
  int64_t n_rows;
  size_t src_rb, dst_rb;        // bytes per row
  uint8_t *out;
  float **scratch;              // one row of floats per thread
  int *rc;                      // per thread: 0, or an error code
  int64_t *bad_row;             // per thread: first row with a value that is not finite, or -1
} job_t;

static void quantize_rows(void *arg, int ith, int nth) {
  job_t *j = arg;
  const int64_t ne0 = j->t->ne[0];
  float *row = j->scratch[ith];
  j->rc[ith] = 0;
  j->bad_row[ith] = -1;
  for (int64_t r = ith; r < j->n_rows; r += nth) {
    j->src->to_float((const uint8_t *)j->t->data + r * j->src_rb, row, ne0);
    for (int64_t k = 0; k < ne0; k++) {
      if (!isfinite(row[k])) {
        j->bad_row[ith] = r;
        return;
      }
    }
    int rc = ac_quantize_row_best(j->dst, row, j->out + r * j->dst_rb, ne0);
    if (rc) {
      j->rc[ith] = rc;
      return;
    }
  }
}

// The input's main type: the type holding the most elements among its matrices. (ggml's ids
// index the counts directly; the last slot counts q2x.)
static uint32_t main_type(const ac_gguf_t *g) {
  int64_t count[AC_TYPE_COUNT + 1] = {0};
  int best = AC_TYPE_F32;
  for (int64_t i = 0; i < ac_gguf_n_tensors(g); i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    const int k = t->type == AC_TYPE_Q2X ? AC_TYPE_COUNT : (int)t->type;
    if (t->n_dims < 2 || k > AC_TYPE_COUNT) continue;
    count[k] += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (count[k] > count[best]) best = k;
  }
  return best == AC_TYPE_COUNT ? AC_TYPE_Q2X : (uint32_t)best;
}

// --- the model ---------------------------------------------------------------------------------

// Fails early if `path` cannot be written, before minutes of quantizing: creates and removes the
// temporary file ac_gguf_write will use (same name), which checks the directory, permissions and
// a read-only filesystem at once.
static int check_writable(const char *path) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
    return ac_error(AC_EINVAL, "path too long: %s", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return ac_error(AC_EIO, "cannot write '%s': %s", path, strerror(errno));
  fclose(f);
  unlink(tmp);
  return 0;
}

int ac_quantize_model(const char *in_path, const char *out_path, const ac_quantize_params_t *p,
                      ac_quantize_report_t *report) {
  if (!in_path || !out_path || !p) return ac_error(AC_EINVAL, "quantize: missing argument");
  if (!is_target(p->type)) {
    const char *n = traits_of(p->type) ? name_of(p->type) : NULL;
    if (n) return ac_error(AC_EINVAL, "type %s cannot be a quantize target", n);
    return ac_error(AC_EINVAL, "unknown quantize target type %u", p->type);
  }
  const int nth = p->n_threads < 1 ? 1 : p->n_threads;
  ac_quantize_report_t rep = {0};
  ac_gguf_t *g = NULL;
  ac_gguf_writer_t *w = NULL;
  ac_pool_t *pool = NULL;
  uint8_t **bufs = NULL;
  float **scratch = NULL;
  int rcs[256];
  int64_t bad[256];
  int64_t n_t = 0;
  int rc = ac_gguf_open(in_path, &g);
  if (rc || (rc = check_writable(out_path))) goto fail;
  n_t = ac_gguf_n_tensors(g);
  if (!(bufs = calloc((size_t)n_t + 1, sizeof *bufs))) goto oom;
  if (!(w = ac_gguf_writer_new())) goto oom;
  if (!(pool = ac_pool_new(nth > 256 ? 256 : nth))) goto oom;
  const int pn = ac_pool_size(pool);
  if (!(scratch = calloc((size_t)pn, sizeof *scratch))) goto oom;
  int64_t max_ne0 = 1;
  for (int64_t i = 0; i < n_t; i++)
    if (ac_gguf_tensor(g, i)->ne[0] > max_ne0) max_ne0 = ac_gguf_tensor(g, i)->ne[0];
  for (int k = 0; k < pn; k++)
    if (!(scratch[k] = malloc((size_t)max_ne0 * sizeof(float)))) goto oom;

  // Metadata: the input's, with the quantization recorded.
  for (int64_t i = 0; i < ac_gguf_n_kv(g); i++) {
    const ac_gguf_kv_t *kv = ac_gguf_kv(g, i);
    if (strcmp(kv->key, "general.file_type") == 0 || strncmp(kv->key, "agentcompress.quantize.", 23) == 0)
      continue;
    if ((rc = ac_gguf_set_kv(w, kv))) goto fail;
  }

  const uint32_t src_main = main_type(g);
  size_t bytes_mat = 0;
  int64_t params_mat = 0;
  for (int64_t i = 0; i < n_t; i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    const ac_type_traits_t *src = traits_of(t->type);
    if (!src || !src->to_float) {
      rc = ac_error(AC_EUNSUPPORTED, "tensor '%s': cannot read type %s", t->name, name_of(t->type));
      goto fail;
    }
    if (src->is_quantized) rep.dequantized_input = true;
    kind_t kind;
    const uint32_t dst = choose(t, p, &kind);
    const int64_t n_el = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    const int64_t n_rows = n_el / t->ne[0];
    const size_t dst_rb = row_bytes(dst, t->ne[0]);
    const size_t nbytes = dst_rb * (size_t)n_rows;
    const void *data;
    if (dst == t->type) {
      // Already in the type it would get: its bytes are copied, as llama.cpp does, rather than
      // requantized through float (which could only lose precision).
      data = t->data;
    } else {
      if (!(bufs[i] = malloc(nbytes ? nbytes : 1))) goto oom;
      job_t job = {t, src, dst, n_rows, row_bytes(t->type, t->ne[0]), dst_rb, bufs[i], scratch, rcs, bad};
      ac_pool_run(pool, quantize_rows, &job);
      for (int k = 0; k < pn; k++) {
        if (bad[k] >= 0) {
          rc = ac_error(AC_EFORMAT, "tensor '%s': row %lld has a value that is not finite", t->name,
                        (long long)bad[k]);
          goto fail;
        }
        if (rcs[k]) {
          rc = rcs[k];
          goto fail;
        }
      }
      data = bufs[i];
    }
    if ((rc = ac_gguf_add_tensor(w, t->name, dst, t->n_dims, t->ne, data, nbytes))) goto fail;
    rep.n_tensors++;
    rep.n_quantized += kind == KIND_TARGET;
    rep.n_fallback += kind == KIND_FALLBACK;
    rep.bytes += nbytes;
    rep.n_params += n_el;
    if (t->n_dims >= 2) {
      bytes_mat += nbytes;
      params_mat += n_el;
    }
    if (kind == KIND_FALLBACK)
      AC_DEBUG("quantize: %s: row length %lld does not fit %s: written as %s", t->name, (long long)t->ne[0],
               name_of(p->type), name_of(dst));
    if (p->progress) p->progress(p->user, (int)(i + 1), (int)n_t, t->name, dst);
  }
  rep.bpw = rep.n_params ? 8.0 * (double)rep.bytes / (double)rep.n_params : 0;
  rep.bpw_matrices = params_mat ? 8.0 * (double)bytes_mat / (double)params_mat : 0;

  const int ft = llama_ftype(p->type);
  if (ft >= 0 && (rc = ac_gguf_set_u32(w, "general.file_type", (uint32_t)ft))) goto fail;
  // ggml's quantization format version, which llama.cpp writes with every quantized model.
  if (traits_of(p->type)->is_quantized && (rc = ac_gguf_set_u32(w, "general.quantization_version", 2))) goto fail;
  if ((rc = ac_gguf_set_str(w, "agentcompress.quantize.type", name_of(p->type))) ||
      (rc = ac_gguf_set_str(w, "agentcompress.quantize.source_type", name_of(src_main))) ||
      (rc = ac_gguf_set_bool(w, "agentcompress.quantize.dequantized_input", rep.dequantized_input)) ||
      (rc = ac_gguf_set_bool(w, "agentcompress.quantize.keep_embd_output", p->keep_embd_output)) ||
      (rc = ac_gguf_set_u32(w, "agentcompress.quantize.fallback_tensors", (uint32_t)rep.n_fallback)) ||
      (rc = ac_gguf_set_f32(w, "agentcompress.quantize.bits_per_weight", (float)rep.bpw)))
    goto fail;
  if ((rc = ac_gguf_write(w, out_path))) goto fail;
  if (report) *report = rep;
  goto done;

oom:
  rc = ac_error(AC_ENOMEM, "quantize: out of memory");
fail:
done:
  if (bufs)
    for (int64_t i = 0; i < n_t; i++) free(bufs[i]);
  free(bufs);
  if (scratch)
    for (int k = 0; pool && k < ac_pool_size(pool); k++) free(scratch[k]);
  free(scratch);
  ac_pool_destroy(&pool);
  ac_gguf_writer_destroy(&w);
  ac_gguf_close(&g);
  return rc;
}
