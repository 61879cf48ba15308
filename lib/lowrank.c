// lowrank.c - low-rank variants by truncated SVD (see lowrank.h for the factor convention).
//
// The source model is loaded with ac_model_load first: that validates the architecture and
// every type, and its layer table names exactly the matrices the engine would run as factors.
// Each chosen matrix is one job: dequantize, SVD in double (LAPACK's symmetric eigensolver on
// the Gram matrix, see factor_one), pick the rank, build and store the factors, and measure the
// error of what was stored. Jobs run in parallel (one matrix per thread: the reference LAPACK
// is single-threaded), then the file is written in one go.
#include "lowrank.h"

#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "threadpool.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

ac_lowrank_params_t ac_lowrank_params_default(void) {
  return (ac_lowrank_params_t){.rank = 0, .energy = 0.9, .tensors = NULL, .type = AC_TYPE_F16, .n_threads = 1};
}

int64_t ac_lowrank_rank_for_energy(const double *s, int64_t n, double energy) {
  double total = 0;
  for (int64_t i = 0; i < n; i++) total += s[i] * s[i];
  // Summed in the same order as the total, so energy 1 is reached exactly at the last
  // non-zero singular value instead of being missed by a rounding difference.
  double target = energy * total, cum = 0;
  for (int64_t r = 1; r <= n; r++) {
    cum += s[r - 1] * s[r - 1];
    if (cum >= target) return r;
  }
  return n;
}

// --- selection and validation ----------------------------------------------------------------

static bool item_matches(const char *item, const char *name) {
  if (strcmp(item, "all") == 0) return true;
  if (strcmp(item, "attn") == 0) return strstr(name, ".attn_") != NULL;
  if (strcmp(item, "ffn") == 0) return strstr(name, ".ffn_") != NULL;
  // A keyword, not a substring: "output" is inside every blk.N.attn_output.weight.
  if (strcmp(item, "output") == 0) return strcmp(name, "output.weight") == 0;
  return strstr(name, item) != NULL;
}

static bool is_keyword(const char *item) {
  return !strcmp(item, "all") || !strcmp(item, "attn") || !strcmp(item, "ffn") || !strcmp(item, "output");
}

// Splits a comma list in place into items (spaces around items dropped); an empty item is an
// error, since "attn,,ffn" is more likely a typo than a wish.
static int split_list(char *s, char **items, int cap, int *n) {
  *n = 0;
  char *save = NULL;
  int commas = 0;
  for (const char *c = s; *c; c++) commas += *c == ',';
  for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ') tok++;
    size_t len = strlen(tok);
    while (len && tok[len - 1] == ' ') tok[--len] = 0;
    if (!len || *n == cap) break;
    items[(*n)++] = tok;
  }
  if (*n == 0 || *n != commas + 1) return ac_error(AC_EINVAL, "--tensors: empty item in the list");
  return 0;
}

// LAPACK may loop or return garbage on NaN/Inf. Checked for every chosen matrix before any is
// factored, so bad weights are one clear error and not a failure halfway through the progress.
static int check_finite(const ac_weight_t *w) {
  float *row = malloc((size_t)w->ne[0] * sizeof *row);
  if (!row) return ac_error(AC_ENOMEM, "out of memory");
  const ac_type_traits_t *tt = ac_type_traits(w->type);
  int rc = 0;
  for (int64_t o = 0; o < w->ne[1] && !rc; o++) {
    tt->to_float((const uint8_t *)w->data + o * w->row_bytes, row, w->ne[0]);
    for (int64_t i = 0; i < w->ne[0]; i++)
      if (!isfinite(row[i])) {
        rc = ac_error(AC_EFORMAT, "tensor '%s': non-finite weight at row %lld, column %lld", w->name, (long long)o,
                      (long long)i);
        break;
      }
  }
  free(row);
  return rc;
}

// --- one matrix --------------------------------------------------------------------------------

typedef struct {
  const ac_weight_t *w;  // the dense matrix in the source model
  uint32_t type;         // factor type
  int64_t align;         // the rank must be a multiple of this (block size of the factor type)
  // Results.
  int rc;
  char err[512];
  bool factored;
  int64_t rank;  // stored rank (>= 2, see factor_one)
  void *a, *b;   // stored factors: (rank, n_in) and (n_out, rank) rows of `type`
  size_t a_bytes, b_bytes;
  ac_lowrank_tensor_t rep;
} job_t;

// G = MᵀM for M (m x k, row-major), into the upper triangle of G in LAPACK's column-major
// order (G[c*k + i] for i <= c). Summing outer products of M's rows streams M once and the inner
// loop vectorises without reassociating a reduction; four rows at a time quarter the passes
// over G, which is larger than the caches for k = 576.
static void gram(const double *M, int64_t m, int64_t k, double *G) {
  memset(G, 0, (size_t)k * k * sizeof *G);
  int64_t o = 0;
  for (; o + 4 <= m; o += 4) {
    const double *r0 = M + o * k, *r1 = r0 + k, *r2 = r1 + k, *r3 = r2 + k;
    for (int64_t c = 0; c < k; c++) {
      const double x0 = r0[c], x1 = r1[c], x2 = r2[c], x3 = r3[c];
      double *gc = G + c * k;
      for (int64_t i = 0; i <= c; i++) gc[i] += x0 * r0[i] + x1 * r1[i] + x2 * r2[i] + x3 * r3[i];
    }
  }
  for (; o < m; o++) {
    const double *r0 = M + o * k;
    for (int64_t c = 0; c < k; c++) {
      const double x0 = r0[c];
      double *gc = G + c * k;
      for (int64_t i = 0; i <= c; i++) gc[i] += x0 * r0[i];
    }
  }
}

// The truncated SVD comes from the eigen-decomposition of the k x k Gram matrix of W's shorter
// side (k = min(in, out)) rather than from LAPACKE_dgesdd on W: with the reference LAPACK and
// BLAS that Debian ships, dgesdd spends ~1.6 s on a 1536 x 576 matrix and Gram + dsyevd ~0.5 s,
// which decides whether a zoo build takes minutes or tens of minutes. What it gives up is the
// relative accuracy of singular values below ~1e-7·σ_max, which truncation discards anyway;
// the kept subspace is as accurate, and the error reported is measured on the stored factors.
static int factor_one(job_t *j, const ac_lowrank_params_t *p) {
  const ac_weight_t *w = j->w;
  const int64_t in = w->ne[0], out = w->ne[1];
  // M = W (out x in) when out >= in, else M = Wᵀ, so that M is m x k with k the shorter side.
  const bool tall = out >= in;
  const int64_t k = tall ? in : out, m = tall ? out : in;
  const ac_type_traits_t *st = ac_type_traits(w->type), *ft = ac_type_traits(j->type);
  float *wf = malloc((size_t)out * in * sizeof *wf), *af = NULL, *bf = NULL;
  double *M = malloc((size_t)m * k * sizeof *M), *G = malloc((size_t)k * k * sizeof *G);
  double *lam = malloc((size_t)k * sizeof *lam), *s = malloc((size_t)k * sizeof *s);
  double *et = NULL, *P = NULL, *nrm = NULL, *rec = NULL;
  int rc = 0;
  if (!wf || !M || !G || !lam || !s) {
    rc = ac_error(AC_ENOMEM, "out of memory for the SVD of '%s'", w->name);
    goto done;
  }
  double norm2 = 0;
  for (int64_t o = 0; o < out; o++) {
    float *row = wf + o * in;
    st->to_float((const uint8_t *)w->data + o * w->row_bytes, row, in);
    for (int64_t i = 0; i < in; i++) {  // all finite: check_finite ran first
      if (tall) M[o * in + i] = row[i];
      else M[i * out + o] = row[i];
      norm2 += (double)row[i] * row[i];
    }
  }
  gram(M, m, k, G);
  // Eigenvalues ascending; eigenvector c is column c of G (contiguous).
  lapack_int info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', (lapack_int)k, G, (lapack_int)k, lam);
  if (info != 0) {
    rc = info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR
             ? ac_error(AC_ENOMEM, "out of memory in LAPACKE_dsyevd for '%s'", w->name)
             : ac_error(AC_ERANGE, "tensor '%s': eigen-decomposition failed (LAPACKE_dsyevd info %d%s)", w->name,
                        (int)info, info > 0 ? ": did not converge" : "");
    goto done;
  }
  for (int64_t q = 0; q < k; q++) s[q] = sqrt(lam[k - 1 - q] > 0 ? lam[k - 1 - q] : 0);  // σ, descending

  int64_t r = p->rank > 0 ? p->rank : ac_lowrank_rank_for_energy(s, k, p->energy);
  r = (r + j->align - 1) / j->align * j->align;
  // The engine's loader takes any [n, 1] tensor for a norm vector, so A = [in, 1] would be
  // refused: a rank-1 approximation is stored with a second, zero component (same product).
  const int64_t rs = r < 2 ? 2 : r;
  double total = 0, kept = 0;
  for (int64_t i = 0; i < k; i++) {
    total += s[i] * s[i];
    if (i < r) kept += s[i] * s[i];
  }
  size_t dense = w->row_bytes * (size_t)out;
  size_t fbytes = rs <= k ? ac_row_size(j->type, in) * rs + ac_row_size(j->type, rs) * out : 0;
  j->rep = (ac_lowrank_tensor_t){.name = w->name, .n_in = in, .n_out = out, .rank = r, .full_rank = k,
                                 .type = j->type, .energy = total > 0 ? kept / total : 1.0,
                                 .bytes_before = dense, .bytes_after = dense};
  // Only worth it when the factors hold fewer numbers than the matrix, r·(in + out) < in·out,
  // so the saving comes from the rank and not from a narrower type (F32 -> F16 factors would
  // "save" at full rank), and when they also take fewer bytes than the matrix as stored (F16
  // factors of a Q4_1 matrix must beat 4.5 bits per weight). Else the matrix stays as it is.
  if (rs > k || rs * (in + out) >= in * out || fbytes == 0 || fbytes >= dense) goto done;

  const size_t arb = ac_row_size(j->type, in), brb = ac_row_size(j->type, rs);
  j->a_bytes = arb * rs;
  j->b_bytes = brb * out;
  af = calloc((size_t)rs * in, sizeof *af);
  bf = calloc((size_t)out * rs, sizeof *bf);
  et = malloc((size_t)k * r * sizeof *et);
  P = calloc((size_t)m * r, sizeof *P);
  nrm = calloc((size_t)r, sizeof *nrm);
  rec = malloc((size_t)in * sizeof *rec);
  j->a = malloc(j->a_bytes);
  j->b = malloc(j->b_bytes);
  if (!af || !bf || !et || !P || !nrm || !rec || !j->a || !j->b) {
    rc = ac_error(AC_ENOMEM, "out of memory for the factors of '%s'", w->name);
    goto done;
  }
  // E (k x r): the top r eigenvectors, largest first, as rows of length r for the product below.
  for (int64_t q = 0; q < r; q++)
    for (int64_t i = 0; i < k; i++) et[i * r + q] = G[(k - 1 - q) * k + i];
  // P = M·E (m x r): column q is σ_q times M's left singular vector q.
  for (int64_t o = 0; o < m; o++) {
    double *po = P + o * r;
    for (int64_t i = 0; i < k; i++) {
      const double x = M[o * k + i];
      const double *ei = et + i * r;
      for (int64_t q = 0; q < r; q++) po[q] += x * ei[q];
    }
  }
  if (tall) {
    // W = M ≈ P·Eᵀ: A = Eᵀ (orthonormal rows), B = P = U·Σ.
    for (int64_t q = 0; q < r; q++)
      for (int64_t i = 0; i < in; i++) af[q * in + i] = (float)et[i * r + q];
    for (int64_t o = 0; o < out; o++)
      for (int64_t q = 0; q < r; q++) bf[o * rs + q] = (float)P[o * r + q];
  } else {
    // W = Mᵀ ≈ E·Pᵀ: A's row q is P's column q normalised (σ_q = its norm), B = E·Σ. A zero
    // column (a rank-deficient W) leaves a zero row and column, which multiply to nothing.
    for (int64_t i = 0; i < in; i++)
      for (int64_t q = 0; q < r; q++) nrm[q] += P[i * r + q] * P[i * r + q];
    for (int64_t q = 0; q < r; q++) {
      double sq = sqrt(nrm[q]), inv = sq > 0 ? 1.0 / sq : 0;
      for (int64_t i = 0; i < in; i++) af[q * in + i] = (float)(P[i * r + q] * inv);
      for (int64_t o = 0; o < out; o++) bf[o * rs + q] = (float)(et[o * r + q] * sq);
    }
  }
  for (int64_t q = 0; q < rs; q++) ft->from_float(af + q * in, (uint8_t *)j->a + q * arb, in);
  for (int64_t o = 0; o < out; o++) ft->from_float(bf + o * rs, (uint8_t *)j->b + o * brb, rs);

  // The error of what is stored (after rounding to the factor type), not the SVD's promise.
  for (int64_t q = 0; q < rs; q++) ft->to_float((uint8_t *)j->a + q * arb, af + q * in, in);
  for (int64_t o = 0; o < out; o++) ft->to_float((uint8_t *)j->b + o * brb, bf + o * rs, rs);
  double err2 = 0;
  for (int64_t o = 0; o < out; o++) {
    memset(rec, 0, in * sizeof *rec);
    for (int64_t q = 0; q < rs; q++) {
      const double bq = bf[o * rs + q];
      const float *arow = af + q * in;
      for (int64_t i = 0; i < in; i++) rec[i] += bq * arow[i];
    }
    for (int64_t i = 0; i < in; i++) {
      double d = wf[o * in + i] - rec[i];
      err2 += d * d;
    }
  }
  j->factored = true;
  j->rank = rs;
  j->rep.factored = true;
  j->rep.rel_err = norm2 > 0 ? sqrt(err2 / norm2) : 0;
  j->rep.bytes_after = j->a_bytes + j->b_bytes;
done:
  if (!j->factored) {
    free(j->a), j->a = NULL;
    free(j->b), j->b = NULL;
  }
  free(rec);
  free(nrm);
  free(P);
  free(et);
  free(bf);
  free(af);
  free(s);
  free(lam);
  free(G);
  free(M);
  free(wf);
  return rc;
}

// --- running the jobs --------------------------------------------------------------------------

typedef struct {
  job_t *jobs;
  int n;
  const ac_lowrank_params_t *p;
  atomic_int next;     // the next job to take
  atomic_bool failed;  // stop taking jobs once one has failed
  int done;            // jobs reported, under mu
  pthread_mutex_t mu;
} run_t;

static void run_worker(void *arg, int ith, int nth) {
  run_t *r = arg;
  while (!atomic_load(&r->failed)) {
    int i = atomic_fetch_add(&r->next, 1);
    if (i >= r->n) return;
    job_t *j = &r->jobs[i];
    double t0 = now_s();
    // The error detail is per thread: keep it with the job for the caller's thread.
    if ((j->rc = factor_one(j, r->p))) {
      snprintf(j->err, sizeof j->err, "%s", ac_errmsg());
      atomic_store(&r->failed, true);
      return;
    }
    j->rep.seconds = now_s() - t0;
    pthread_mutex_lock(&r->mu);
    j->rep.index = ++r->done;
    j->rep.count = r->n;
    if (r->p->on_tensor) r->p->on_tensor(r->p->user, &j->rep);
    pthread_mutex_unlock(&r->mu);
  }
}

// --- the file ----------------------------------------------------------------------------------

static void note(const ac_lowrank_params_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const ac_lowrank_params_t *p, const char *fmt, ...) {
  if (!p->on_note) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  p->on_note(p->user, buf);
}

static int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    int64_t t = a % b;
    a = b, b = t;
  }
  return a;
}

// The factor type for a source type; 0 or an error.
static int pick_type(int32_t want, uint32_t src, uint32_t *out) {
  if (want == AC_LOWRANK_TYPE_SAME) {
    *out = src == AC_TYPE_F32 || src == AC_TYPE_F16 || src == AC_TYPE_BF16 ? src : AC_TYPE_F16;
    return 0;
  }
  const ac_type_traits_t *t = want >= 0 ? ac_type_traits((uint32_t)want) : NULL;
  const ac_type_traits_t *vt = t ? ac_type_traits(t->vec_dot_type) : NULL;
  // The engine runs factors like any weight: it needs the type's dot kernel and a quantizer
  // for the activations; we need from_float/to_float to write and check them.
  if (!t || !t->from_float || !t->to_float || !t->vec_dot || !vt || !vt->from_float)
    return ac_error(AC_EINVAL, "factor type %s is not supported (use f16, bf16, f32 or same)",
                    t ? t->name : "(unknown)");
  *out = (uint32_t)want;
  return 0;
}

// llama.cpp's general.file_type for the types whose id does not depend on a mix (the K-quant
// ids name a mix, *_S/_M/_L): -1 for those.
static int ftype_of(uint32_t type) {
  switch (type) {
    case AC_TYPE_F32: return 0;
    case AC_TYPE_F16: return 1;
    case AC_TYPE_Q4_0: return 2;
    case AC_TYPE_Q4_1: return 3;
    case AC_TYPE_Q8_0: return 7;
    case AC_TYPE_Q5_0: return 8;
    case AC_TYPE_Q5_1: return 9;
    case AC_TYPE_BF16: return 32;
    default: return -1;
  }
}

// general.file_type names the type most weight bytes are in. Factoring can change that (a
// fully factored F32 model with F16 factors is mostly F16): set it when the answer is one of
// the unambiguous ids and differs, and remember the source's.
static int set_file_type(ac_gguf_writer_t *w, const ac_gguf_t *g, const job_t *jobs, int n_jobs) {
  size_t by_type[AC_TYPE_COUNT] = {0};
  for (int64_t i = 0; i < ac_gguf_n_tensors(g); i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    if (t->n_dims >= 2 && t->type < AC_TYPE_COUNT) by_type[t->type] += t->nbytes;
  }
  for (int i = 0; i < n_jobs; i++) {
    if (!jobs[i].factored) continue;
    by_type[jobs[i].w->type] -= jobs[i].rep.bytes_before;
    by_type[jobs[i].type] += jobs[i].a_bytes + jobs[i].b_bytes;
  }
  uint32_t top = 0;
  for (uint32_t t = 1; t < AC_TYPE_COUNT; t++)
    if (by_type[t] > by_type[top]) top = t;
  int ft = ftype_of(top);
  uint32_t src;
  bool has_src = ac_gguf_get_u32(g, "general.file_type", &src) == 0;
  if (ft < 0 || (has_src && src == (uint32_t)ft)) return 0;
  int rc = 0;
  if (has_src && !ac_gguf_find_kv(g, "agentcompress.source_file_type"))
    rc = ac_gguf_set_u32(w, "agentcompress.source_file_type", src);
  return rc ? rc : ac_gguf_set_u32(w, "general.file_type", (uint32_t)ft);
}

int ac_lowrank_file(const char *in_path, const char *out_path, const ac_lowrank_params_t *params,
                    ac_lowrank_stats_t *stats) {
  const ac_lowrank_params_t *p = params;
  if (stats) memset(stats, 0, sizeof *stats);
  if (p->rank < 0 || (p->rank == 0 && !(p->energy > 0 && p->energy <= 1)))
    return p->rank < 0 ? ac_error(AC_EINVAL, "rank %lld must be at least 1", (long long)p->rank)
                       : ac_error(AC_EINVAL, "energy %g must be in (0, 1]", p->energy);
  double t_start = now_s();
  const char *sel = p->tensors ? p->tensors : "attn,ffn";
  ac_model_t *m = NULL;
  ac_pool_t *pool = NULL;
  ac_gguf_writer_t *w = NULL;
  job_t *jobs = NULL;
  char *sel_copy = strdup(sel), **items = NULL;
  bool *item_hit = NULL;
  int n_items = 0, n_jobs = 0, rc;
  bool mu_init = false;
  run_t run = {0};
  if (!sel_copy) return ac_error(AC_ENOMEM, "out of memory");
  size_t cap_items = strlen(sel) + 1;
  items = calloc(cap_items, sizeof *items);
  item_hit = calloc(cap_items, sizeof *item_hit);
  if (!items || !item_hit) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = split_list(sel_copy, items, (int)cap_items, &n_items))) goto fail;
  if ((rc = ac_model_load(in_path, &m))) goto fail;

  // --- choose the matrices ---
  const ac_hparams_t *hp = &m->hp;
  int n_cand = 7 * hp->n_layer + 1;
  jobs = calloc(n_cand, sizeof *jobs);
  if (!jobs) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto fail;
  }
  bool note_type = false;
  int n_prefactored = 0;
  for (int c = 0; c < n_cand; c++) {
    const ac_weight_t *wt;
    if (c == n_cand - 1) {
      // A tied output is token_embd.weight itself, which the engine looks up by row.
      if (hp->tied_output) continue;
      wt = &m->output;
    } else {
      const ac_layer_t *L = &m->layers[c / 7];
      const ac_weight_t *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate, &L->ffn_up, &L->ffn_down};
      wt = ws[c % 7];
    }
    bool hit = false;
    for (int i = 0; i < n_items; i++)
      if (item_matches(items[i], wt->name)) hit = item_hit[i] = true;
    if (!hit) continue;
    if (wt->lr_a) {  // factored before: its factors are copied like any other tensor
      n_prefactored++;
      continue;
    }
    job_t *j = &jobs[n_jobs++];
    j->w = wt;
    if ((rc = pick_type(p->type, wt->type, &j->type))) goto fail;
    if (p->type == AC_LOWRANK_TYPE_SAME && j->type != wt->type && !note_type) {
      note(p, "source type %s is not a float type: factors are %s", ac_type_name(wt->type), ac_type_name(j->type));
      note_type = true;
    }
    const ac_type_traits_t *ft = ac_type_traits(j->type), *vt = ac_type_traits(ft->vec_dot_type);
    // Rows of A are n_in long and rows of B are `rank` long: both must fill whole blocks of the
    // factor type and of the activation type the engine converts to for its dot product.
    int64_t bs = ft->blck_size, vbs = vt->blck_size;
    j->align = bs / gcd64(bs, vbs) * vbs;
    if (wt->ne[0] % j->align) {
      rc = ac_error(AC_EUNSUPPORTED, "tensor '%s': rows of %lld do not fit %s blocks of %lld", wt->name,
                    (long long)wt->ne[0], ft->name, (long long)j->align);
      goto fail;
    }
    int64_t k = wt->ne[0] < wt->ne[1] ? wt->ne[0] : wt->ne[1];
    if (p->rank > k) {
      rc = ac_error(AC_ERANGE, "rank %lld is larger than min(in, out) = %lld of '%s' (%lld x %lld)",
                    (long long)p->rank, (long long)k, wt->name, (long long)wt->ne[1], (long long)wt->ne[0]);
      goto fail;
    }
    if ((rc = check_finite(wt))) goto fail;
    // dsyevd's integer workspace is 2k² + 6k: keep it inside LAPACK's 32-bit integers.
    if (k > 30000) {
      rc = ac_error(AC_EUNSUPPORTED, "tensor '%s': min(in, out) = %lld is too large for LAPACK's 32-bit sizes",
                    wt->name, (long long)k);
      goto fail;
    }
  }
  bool asked_output = false, asked_embd = false;
  for (int i = 0; i < n_items; i++) {
    asked_output |= !strcmp(items[i], "output") || !strcmp(items[i], "all");
    asked_embd |= !is_keyword(items[i]) && strstr("token_embd.weight", items[i]) != NULL;
  }
  const char *why = hp->tied_output && asked_output
                        ? "output.weight is tied to token_embd.weight, which is looked up by row: it cannot be factored"
                    : asked_embd ? "token_embd.weight is never factored: it is looked up by row"
                                 : NULL;
  if (n_jobs == 0) {
    if (n_prefactored) why = "every matrix it matched is low-rank factors already";
    rc = ac_error(AC_ENOTFOUND, "--tensors '%s' matched no matrix that can be factored%s%s%s", sel, why ? " (" : "",
                  why ? why : "", why ? ")" : "");
    goto fail;
  }
  if (why) note(p, "%s", why);
  if (n_prefactored) note(p, "%d chosen matrices are low-rank factors already: copied as they are", n_prefactored);
  for (int i = 0; i < n_items; i++)
    if (!item_hit[i] && strcmp(items[i], "output") != 0) note(p, "--tensors item '%s' matched no matrix", items[i]);

  // --- factor them ---
  int nt = p->n_threads < 1 ? 1 : p->n_threads > n_jobs ? n_jobs : p->n_threads;
  if (!(pool = ac_pool_new(nt))) {
    rc = ac_error(AC_ENOMEM, "cannot start %d threads", nt);
    goto fail;
  }
  run.jobs = jobs, run.n = n_jobs, run.p = p;
  atomic_init(&run.next, 0);
  atomic_init(&run.failed, false);
  pthread_mutex_init(&run.mu, NULL);
  mu_init = true;
  ac_pool_run(pool, run_worker, &run);
  for (int i = 0; i < n_jobs; i++)
    if (jobs[i].rc) {
      rc = ac_error(jobs[i].rc, "%s", jobs[i].err);
      goto fail;
    }

  // --- write ---
  const ac_gguf_t *g = m->gguf;
  if (!(w = ac_gguf_writer_new())) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto fail;
  }
  for (int64_t i = 0; i < ac_gguf_n_kv(g); i++)
    if ((rc = ac_gguf_set_kv(w, ac_gguf_kv(g, i)))) goto fail;
  int n_fact = 0;
  double err_sum = 0;
  for (int i = 0; i < n_jobs; i++)
    if (jobs[i].factored) n_fact++, err_sum += jobs[i].rep.rel_err;
  // A file made from a low-rank file again keeps one description: rank or energy, not both.
  const char *other = p->rank > 0 ? "agentcompress.lowrank.energy" : "agentcompress.lowrank.rank";
  if (ac_gguf_find_kv(g, other) && (rc = ac_gguf_remove_kv(w, other))) goto fail;
  if ((rc = ac_gguf_set_str(w, "agentcompress.lowrank.method", "svd")) ||
      (rc = p->rank > 0 ? ac_gguf_set_u32(w, "agentcompress.lowrank.rank", (uint32_t)p->rank)
                        : ac_gguf_set_f32(w, "agentcompress.lowrank.energy", (float)p->energy)) ||
      (rc = ac_gguf_set_u32(w, "agentcompress.lowrank.tensors", (uint32_t)(n_fact + n_prefactored))) ||
      (rc = ac_gguf_set_str(w, "agentcompress.lowrank.selection", sel)) ||
      (rc = ac_gguf_set_str(w, "agentcompress.lowrank.type", ac_type_name(jobs[0].type))) ||
      (rc = ac_gguf_set_f32(w, "agentcompress.lowrank.mean_rel_error", n_fact ? (float)(err_sum / n_fact) : 0.0f)) ||
      (rc = set_file_type(w, g, jobs, n_jobs)))
    goto fail;

  size_t before = 0, after = 0;
  for (int64_t i = 0; i < ac_gguf_n_tensors(g); i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    before += t->nbytes;
    const job_t *j = NULL;
    for (int q = 0; q < n_jobs && !j; q++)
      if (jobs[q].factored && strcmp(jobs[q].w->name, t->name) == 0) j = &jobs[q];
    if (!j) {
      if ((rc = ac_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes))) goto fail;
      after += t->nbytes;
      continue;
    }
    // The factors take the matrix's place in the tensor order.
    char name[256];
    int64_t ne_a[2] = {t->ne[0], j->rank}, ne_b[2] = {j->rank, t->ne[1]};
    snprintf(name, sizeof name, "%s.lr_a", t->name);
    if ((rc = ac_gguf_add_tensor(w, name, j->type, 2, ne_a, j->a, j->a_bytes))) goto fail;
    snprintf(name, sizeof name, "%s.lr_b", t->name);
    if ((rc = ac_gguf_add_tensor(w, name, j->type, 2, ne_b, j->b, j->b_bytes))) goto fail;
    after += j->a_bytes + j->b_bytes;
  }
  if ((rc = ac_gguf_write(w, out_path))) goto fail;
  if (stats) {
    stats->n_matched = n_jobs;
    stats->n_factored = n_fact;
    stats->bytes_before = before;
    stats->bytes_after = after;
    stats->mean_rel_err = n_fact ? err_sum / n_fact : 0;
    stats->seconds = now_s() - t_start;
  }
  rc = 0;
fail:
  ac_gguf_writer_destroy(&w);
  ac_pool_destroy(&pool);
  if (mu_init) pthread_mutex_destroy(&run.mu);
  for (int i = 0; jobs && i < n_jobs; i++) {
    free(jobs[i].a);
    free(jobs[i].b);
  }
  free(jobs);
  ac_model_destroy(&m);
  free(item_hit);
  free(items);
  free(sel_copy);
  return rc;
}
