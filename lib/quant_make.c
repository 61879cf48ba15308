// quant_make.c - error-minimizing weight quantizers for every block type we write.
//
// The common shape: for each block (or sub-block), try a set of candidate grids, refine the best
// by least squares and by alternating "round every value to the nearest level / refit the scale
// to those levels" steps (each step can only lower the squared error), then store the scale as it
// will be read (half, or a small integer code times a half) and round the levels once more
// against the stored value. For the 32-element types ggml's own min/max rounding is kept as a
// second candidate, judged by the same stored error, so no block ends up worse than ggml's
// reference quantizer would make it. For K-quants the sub-block scales are themselves quantized
// (4, 6 or 8 bits against one half per super-block); there each sub-block tries the codes next to
// the rounded one and keeps the pair (code, levels) with the smallest error, and the super-block
// halves are refit by least squares to the chosen codes and levels.
//
// Error is always measured on the values exactly as the dequantizers compute them (the same
// float expressions as lib/quant.c), so what is minimized here is what a reader sees.

// The same bytes from every build: a compiler allowed to fuse a*b+c (GCC in GNU mode, with -mfma
// or -march=native) would round the error sums differently and could tip near-equal candidates
// the other way. As in quant.c, this comes before any header.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant_make.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "error.h"
#include "quant.h"
#include "quant_blocks.h"
#include "quant_impl.h"
#include "quant_q2x.h"

// --- small helpers -----------------------------------------------------------------------------

// Nearest integer (ties to even) of v clamped into [lo, hi]; a NaN fails the first comparison and
// goes to lo, so every input gives a defined level. Adding 1.5 * 2^23 leaves the rounded value in
// the low mantissa bits, which is exact for |v| < 2^22 and much cheaper than lrintf's library
// call. (Plain comparisons rather than fmaxf/fminf, which are library calls at -O2.)
static inline int qround(float v, int lo, int hi) {
  v = v >= (float)lo ? v : (float)lo;
  v = v <= (float)hi ? v : (float)hi;
  float f = v + 12582912.0f;
  int32_t i;
  memcpy(&i, &f, sizeof i);
  return (i & 0x007FFFFF) - 0x00400000;
}

// --- sums in lanes ------------------------------------------------------------------------------
// Blocks and sub-blocks have 16 or 32 values. Sums over them are kept in 8 lanes (value j goes to
// lane j % 8) and the lanes are added in one fixed order at the end: the compiler can then run
// the loops as SIMD without reordering any float addition, so the result, and hence every choice
// the search makes, is the same with or without vectorization.

#define LANES 8

static inline float hsum8(const float *a) {
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

// --- symmetric grids: x ~ d * L, L in [lo, hi] ------------------------------------------------

// Candidate grids per side for the 32-element symmetric types. The alternating refinement does
// most of the work: on SmolLM2's and stories260K's weights 6 candidates give the same error as 20
// to four digits, at a third of the time.
#define SYM_STEPS 6

// <x,L> and <L,L> for the levels L = round(x * id).
static inline void sym_sums(int n, const float *x, float id, int lo, int hi, float *sxl, float *sll) {
  float a[LANES] = {0}, b[LANES] = {0};
  for (int j = 0; j < n; j += LANES)
    for (int k = 0; k < LANES; k++) {
      const float l = (float)qround(x[j + k] * id, lo, hi);
      a[k] += x[j + k] * l;
      b[k] += l * l;
    }
  *sxl = hsum8(a);
  *sll = hsum8(b);
}

static inline void sym_levels(int n, const float *x, float id, int lo, int hi, int8_t *L) {
  for (int j = 0; j < n; j++) L[j] = (int8_t)qround(x[j] * id, lo, hi);
}

// Fits x[0..n) ~ d * L (n 16 or 32). The value of largest magnitude is mapped near either end
// of the range (r levels from zero, r from top - span to top + 0.5 in `nstep` steps: past the end
// clips it, short of it spends the top level on it); each grid is scored by the error it has after
// the least-squares scale, <x,L>^2/<L,L> (larger is better). The best is then refined by
// alternating steps: refit d = <x,L>/<L,L>, re-round every value against d, until the levels
// stop changing (each step lowers the error). Returns d and fills L.
static float fit_sym(int n, const float *x, int lo, int hi, int nstep, float span, int8_t *L) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; i++) {
    if (fabsf(x[i]) > amax) {
      amax = fabsf(x[i]);
      vmax = x[i];
    }
  }
  if (!(amax > 0) || !(amax <= FLT_MAX)) {
    memset(L, 0, (size_t)n);
    return 0;
  }
  float best_score = 0, best_id = 0;
  for (int side = 0; side < 2; side++) {
    const float top = side ? (float)hi : (float)-lo;
    const float sgn = (side ? 1.0f : -1.0f) * (vmax > 0 ? 1.0f : -1.0f) / amax;
    // Finest grid first, and a coarser one must be clearly better: in a block that is one large
    // value among small ones, mapping the large value to 4 or to 2 levels gives the same error,
    // and the finer grid (the smaller scale) is the one a super-block's shared scale can use.
    for (int k = nstep; k >= 0; k--) {
      const float id = sgn * (top - span + (span + 0.5f) * (float)k / (float)nstep);
      float sxl, sll;
      sym_sums(n, x, id, lo, hi, &sxl, &sll);
      if (sll > 0 && sxl * sxl > best_score * sll * (1 + 1e-6f)) {
        best_score = sxl * sxl / sll;
        best_id = id;
      }
    }
  }
  if (best_score == 0) {
    memset(L, 0, (size_t)n);
    return 0;
  }
  float sxl, sll;
  sym_sums(n, x, best_id, lo, hi, &sxl, &sll);
  for (int it = 0; it < 8; it++) {
    const float d = sxl / sll;
    if (!(d != 0)) break;
    const float id = 1.0f / d;
    if (id == best_id) break;  // the levels would not change
    float nxl, nll;
    sym_sums(n, x, id, lo, hi, &nxl, &nll);
    if (!(nll > 0) || !(nxl * nxl * sll > sxl * sxl * nll)) break;  // no better: keep the last
    sxl = nxl;
    sll = nll;
    best_id = id;
  }
  sym_levels(n, x, best_id, lo, hi, L);
  return sxl / sll;
}

// Levels against a stored scale dh (what the dequantizer reads) and the squared error of
// (float)L * dh, the dequantizers' expression for Q4_0 / Q5_0 / Q8_0.
static float sym_store(int n, const float *x, int lo, int hi, float dh, int8_t *L) {
  const float id = dh != 0 ? 1.0f / dh : 0.0f;
  float e2[LANES] = {0};
  for (int j = 0; j < n; j += LANES)
    for (int k = 0; k < LANES; k++) {
      const int l = qround(x[j + k] * id, lo, hi);
      L[j + k] = (int8_t)l;
      const float e = (float)l * dh - x[j + k];
      e2[k] += e * e;
    }
  return hsum8(e2);
}

// A 32-element symmetric block: the search, and ggml's scale (`d_ref`, the largest-magnitude value
// over the grid's end) as the second candidate, both stored as halves. Returns the half bits.
static uint16_t sym_block_best(const float *x, int lo, int hi, int nstep, float d_ref, int8_t *L) {
  int8_t Lc[AC_QK8_0];
  const float d = fit_sym(AC_QK8_0, x, lo, hi, nstep, 1.0f, Lc);
  const uint16_t h1 = ac_f32_to_f16(d), h2 = ac_f32_to_f16(d_ref);
  const float e1 = sym_store(AC_QK8_0, x, lo, hi, ac_f16_to_f32(h1), Lc);
  const float e2 = sym_store(AC_QK8_0, x, lo, hi, ac_f16_to_f32(h2), L);
  if (e1 <= e2 || !(e2 == e2)) {
    memcpy(L, Lc, AC_QK8_0);
    return h1;
  }
  return h2;
}

// The value with the largest magnitude, keeping its sign (the first one on ties).
static float signed_absmax(int n, const float *x) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; i++) {
    if (fabsf(x[i]) > amax) {
      amax = fabsf(x[i]);
      max = x[i];
    }
  }
  return max;
}

// --- affine grids: x ~ d * L + m, L in [0, nmax] -----------------------------------------------
// The search works on the values centred on the middle of their range, xc = x - c, so that the
// error, computed from sums, does not lose its digits to cancellation when a block sits far from
// zero. m' = m - c is the offset in centred terms.

typedef struct {
  float n, sx, sxx;  // of the block: count, sum(xc), sum(xc^2)
  float c;           // the centre
  bool le0;          // keep m <= 0 and d >= 0
} ablock_t;

typedef struct {
  float sl, sll, sxl;  // sum(L), sum(L^2), sum(xc L)
} lsums_t;

static inline void affine_sums(int n, const float *xc, int nmax, float id, float off, lsums_t *s) {
  float a[LANES] = {0}, b[LANES] = {0}, e[LANES] = {0};
  for (int j = 0; j < n; j += LANES)
    for (int k = 0; k < LANES; k++) {
      const float l = (float)qround((xc[j + k] - off) * id, 0, nmax);
      a[k] += l;
      b[k] += l * l;
      e[k] += xc[j + k] * l;
    }
  s->sl = hsum8(a);
  s->sll = hsum8(b);
  s->sxl = hsum8(e);
}

static inline float affine_err(const ablock_t *B, const lsums_t *s, float d, float m) {
  return B->sxx - 2 * d * s->sxl - 2 * m * B->sx + d * d * s->sll + 2 * d * m * s->sl + B->n * m * m;
}

// Least squares (d, m') for fixed levels; with le0, the optimum on the boundary m = m' + c = 0
// (or d = 0) when the free one leaves the allowed region.
static inline void affine_ls(const ablock_t *B, const lsums_t *s, float *d, float *m) {
  const float det = B->n * s->sll - s->sl * s->sl;
  if (det > 0) {
    *d = (B->n * s->sxl - s->sl * B->sx) / det;
    *m = (B->sx - *d * s->sl) / B->n;
  } else {
    *d = 0;
    *m = B->sx / B->n;
  }
  if (B->le0 && *m + B->c > 0) {
    *m = -B->c;
    *d = s->sll > 0 ? (s->sxl - *m * s->sl) / s->sll : 0;
  }
  if (B->le0 && *d < 0) {
    *d = 0;
    *m = fminf(B->sx / B->n, -B->c);
  }
}

// How many candidate grids per anchor the affine search tries. Measured on SmolLM2's weights:
// beyond these counts the error falls by less than 0.1%, while the time grows in proportion.
static int affine_steps(int nmax) { return nmax <= 3 ? 6 : (nmax <= 15 ? 6 : 4); }

float ac__fit_affine(int n, const float *x, int nmax, bool le0, float *d_out, float *m_out,
                     uint8_t *L) {
  float mn = x[0], mx = x[0];
  for (int i = 1; i < n; i++) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
  }
  if (le0 && mn > 0) mn = 0;
  if (!(mx > mn) || !(mx - mn <= FLT_MAX)) {
    // A constant block (or one that is not finite): every level 0 at the minimum.
    memset(L, 0, (size_t)n);
    *d_out = 0;
    *m_out = (mn == mn && fabsf(mn) <= FLT_MAX) ? mn : 0;
    float err = 0;
    for (int i = 0; i < n; i++) err += (x[i] - *m_out) * (x[i] - *m_out);
    return err;
  }
  ablock_t B = {(float)n, 0, 0, 0.5f * (mn + mx), le0};
  float xc[32];
  for (int i = 0; i < n; i++) {
    xc[i] = x[i] - B.c;
    B.sx += xc[i];
    B.sxx += xc[i] * xc[i];
  }
  // Candidates: the grid's bottom at the minimum or its top at the maximum, with r levels across
  // the range, r from nmax - span to nmax + 0.5 (fewer than nmax levels clip the other end).
  const int nstep = affine_steps(nmax);
  const float span = nmax <= 3 ? 1.5f : 1.0f, lo = mn - B.c, hi = mx - B.c;
  float best_err = INFINITY, best_d = (mx - mn) / (float)nmax, best_m = lo;
  lsums_t s;
  for (int anchor = 0; anchor < 2; anchor++) {
    // Finest grid first; a coarser one must be clearly better (see fit_sym).
    for (int k = nstep; k >= 0; k--) {
      const float r = (float)nmax - span + (span + 0.5f) * (float)k / (float)nstep;
      const float id = r / (mx - mn), d = 1.0f / id;
      const float off = anchor ? hi - (float)nmax * d : lo;
      affine_sums(n, xc, nmax, id, off, &s);
      float dd, mm;
      affine_ls(&B, &s, &dd, &mm);
      const float err = affine_err(&B, &s, dd, mm);
      if (err < best_err * (1 - 1e-6f)) {
        best_err = err;
        best_d = dd;
        best_m = mm;
      }
    }
  }
  // Alternate rounding and refitting from the best candidate.
  float d = best_d, m = best_m;
  for (int it = 0; it < 8 && d > 0; it++) {
    affine_sums(n, xc, nmax, 1.0f / d, m, &s);
    const float err = affine_err(&B, &s, d, m);
    float dd, mm;
    affine_ls(&B, &s, &dd, &mm);
    const float nerr = affine_err(&B, &s, dd, mm);
    if (!(nerr < err)) break;
    d = dd;
    m = mm;
    best_err = nerr;
  }
  const float id = d > 0 ? 1.0f / d : 0.0f;
  for (int i = 0; i < n; i++) L[i] = (uint8_t)qround((xc[i] - m) * id, 0, nmax);
  *d_out = d;
  *m_out = m + B.c;
  return best_err;
}

// Levels against stored halves and the squared error of (float)L * d + m, the dequantizers'
// expression for Q4_1 / Q5_1 / q2x.
static float affine_store(int n, const float *x, int nmax, uint16_t hd, uint16_t hm, uint8_t *L) {
  const float d = ac_f16_to_f32(hd), m = ac_f16_to_f32(hm);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  float e2[LANES] = {0};
  for (int j = 0; j < n; j += LANES)
    for (int k = 0; k < LANES; k++) {
      const int l = qround((x[j + k] - m) * id, 0, nmax);
      L[j + k] = (uint8_t)l;
      const float e = (float)l * d + m - x[j + k];
      e2[k] += e * e;
    }
  return hsum8(e2);
}

float ac__affine_block_best(int n, const float *x, int nmax, uint16_t *d16, uint16_t *m16,
                            uint8_t *L) {
  uint8_t Lc[32];
  float d, m;
  ac__fit_affine(n, x, nmax, false, &d, &m, Lc);
  const uint16_t hd1 = ac_f32_to_f16(d), hm1 = ac_f32_to_f16(m);
  const float e1 = affine_store(n, x, nmax, hd1, hm1, Lc);
  // ggml's reference: d = (max - min) / nmax, m = min.
  float mn = x[0], mx = x[0];
  for (int i = 1; i < n; i++) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
  }
  const uint16_t hd2 = ac_f32_to_f16((mx - mn) / (float)nmax), hm2 = ac_f32_to_f16(mn);
  const float e2 = affine_store(n, x, nmax, hd2, hm2, L);
  if (e1 <= e2 || !(e2 == e2)) {
    memcpy(L, Lc, (size_t)n);
    *d16 = hd1;
    *m16 = hm1;
    return e1;
  }
  *d16 = hd2;
  *m16 = hm2;
  return e2;
}

// --- 32-element types --------------------------------------------------------------------------

static void make_q4_0(const float *x, void *vy, int64_t nb) {
  ac_block_q4_0 *y = vy;
  int8_t L[AC_QK4_0];
  for (int64_t i = 0; i < nb; i++, x += AC_QK4_0) {
    y[i].d = sym_block_best(x, -8, 7, SYM_STEPS, signed_absmax(AC_QK4_0, x) / -8, L);
    for (int j = 0; j < AC_QK4_0 / 2; j++)
      y[i].qs[j] = (uint8_t)((L[j] + 8) | ((L[j + AC_QK4_0 / 2] + 8) << 4));
  }
}

static void make_q5_0(const float *x, void *vy, int64_t nb) {
  ac_block_q5_0 *y = vy;
  int8_t L[AC_QK5_0];
  for (int64_t i = 0; i < nb; i++, x += AC_QK5_0) {
    y[i].d = sym_block_best(x, -16, 15, SYM_STEPS, signed_absmax(AC_QK5_0, x) / -16, L);
    uint32_t qh = 0;
    for (int j = 0; j < AC_QK5_0 / 2; j++) {
      const int a = L[j] + 16, b = L[j + AC_QK5_0 / 2] + 16;
      y[i].qs[j] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
      qh |= (uint32_t)(a >> 4) << j;
      qh |= (uint32_t)(b >> 4) << (j + AC_QK5_0 / 2);
    }
    memcpy(y[i].qh, &qh, sizeof qh);
  }
}

static void make_q8_0(const float *x, void *vy, int64_t nb) {
  ac_block_q8_0 *y = vy;
  int8_t L[AC_QK8_0];
  for (int64_t i = 0; i < nb; i++, x += AC_QK8_0) {
    // -128 is left out, as ggml does: some dot-product kernels take |q| in 8 bits.
    y[i].d = sym_block_best(x, -127, 127, 6, fabsf(signed_absmax(AC_QK8_0, x)) / 127, L);
    memcpy(y[i].qs, L, AC_QK8_0);
  }
}

static void make_q4_1(const float *x, void *vy, int64_t nb) {
  ac_block_q4_1 *y = vy;
  uint8_t L[AC_QK4_1];
  for (int64_t i = 0; i < nb; i++, x += AC_QK4_1) {
    ac__affine_block_best(AC_QK4_1, x, 15, &y[i].d, &y[i].m, L);
    for (int j = 0; j < AC_QK4_1 / 2; j++)
      y[i].qs[j] = (uint8_t)(L[j] | (L[j + AC_QK4_1 / 2] << 4));
  }
}

static void make_q5_1(const float *x, void *vy, int64_t nb) {
  ac_block_q5_1 *y = vy;
  uint8_t L[AC_QK5_1];
  for (int64_t i = 0; i < nb; i++, x += AC_QK5_1) {
    ac__affine_block_best(AC_QK5_1, x, 31, &y[i].d, &y[i].m, L);
    uint32_t qh = 0;
    for (int j = 0; j < AC_QK5_1 / 2; j++) {
      const int a = L[j], b = L[j + AC_QK5_1 / 2];
      y[i].qs[j] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
      qh |= (uint32_t)(a >> 4) << j;
      qh |= (uint32_t)(b >> 4) << (j + AC_QK5_1 / 2);
    }
    memcpy(y[i].qh, &qh, sizeof qh);
  }
}

// --- the second level of K-quants: integer codes for the sub-block scales ----------------------

// Candidate scales for the codes. Unlike the grids above this one matters: on SmolLM2 the Q4_K
// error is 5% lower with 24 candidates than with 6 (the sub-block scales of a model that was
// quantized before are few and distinct, and the codes must hit them).
#define CODE_STEPS 24

// Picks D for codes c_j = round(v_j / D) in [clo, chi] so that sum w_j (v_j - D c_j)^2 is small:
// the sub-block whose |v| is largest is placed r codes from zero, r near the end of the range on
// the side where it fits best (chi for positive values, clo for negative ones, or the other way
// round when the range is asymmetric), and each candidate's D is refit by weighted least squares
// to its codes. w_j is how much sub-block j's error grows with the error of its scale.
static float code_scale(int n, const float *v, const float *w, int clo, int chi) {
  const float vmax = signed_absmax(n, v);
  if (!(vmax != 0) || !(fabsf(vmax) <= FLT_MAX)) return 0;
  float best_err = INFINITY, best_d = 0;
  for (int side = 0; side < 2; side++) {
    if (clo == 0 && side == 0) continue;  // unsigned codes: only the positive side
    const float top = side ? (float)chi : (float)-clo;
    for (int k = 0; k <= CODE_STEPS; k++) {
      const float r = top * (0.75f + 0.25f * (float)k / (float)CODE_STEPS) + (k == CODE_STEPS ? 0.49f : 0.0f);
      const float D = (side ? 1.0f : -1.0f) * vmax / r;
      const float iD = 1.0f / D;
      float c[16], svc = 0, scc = 0;
      for (int j = 0; j < n; j++) {
        c[j] = (float)qround(v[j] * iD, clo, chi);
        svc += w[j] * v[j] * c[j];
        scc += w[j] * c[j] * c[j];
      }
      if (!(scc > 0)) continue;
      const float Dls = svc / scc;
      float err = 0;
      for (int j = 0; j < n; j++) {
        const float e = v[j] - Dls * c[j];
        err += w[j] * e * e;
      }
      if (err < best_err) {
        best_err = err;
        best_d = Dls;
      }
    }
  }
  return best_d;
}

// --- affine K-quants: Q2_K (16 x 16, 4-bit codes), Q4_K and Q5_K (8 x 32, 6-bit codes) ---------

typedef struct {
  int nsub, len;  // sub-blocks per super-block and values per sub-block
  int nmax;       // levels 0..nmax
  int cmax;       // codes 0..cmax for the sub-block scales and minimums
  int reach;      // codes tried on each side of the rounded one
} kaffine_t;

// Best (scale code, min code, levels) for one sub-block against the stored halves d, dmin: every
// pair of codes within `reach` of the rounded ones, each with its levels rounded against it.
// Values are judged as the dequantizers compute them: (d * sc) * L - (dmin * mc).
static float kaffine_sub(const kaffine_t *k, const float *x, float d, float dmin, float s, float b,
                         uint8_t *sc_out, uint8_t *mc_out, uint8_t *L) {
  const int c0 = d > 0 ? qround(s / d, 0, k->cmax) : 0;
  const int m0 = dmin > 0 ? qround(b / dmin, 0, k->cmax) : 0;
  float best = INFINITY;
  int bc = c0, bm = m0;
  for (int c = c0 - k->reach; c <= c0 + k->reach; c++) {
    if (c < 0 || c > k->cmax) continue;
    const float d1 = d * (float)c;
    const float id = d1 > 0 ? 1.0f / d1 : 0.0f;
    for (int mc = m0 - k->reach; mc <= m0 + k->reach; mc++) {
      if (mc < 0 || mc > k->cmax) continue;
      const float m1 = dmin * (float)mc;
      float e2[LANES] = {0};
      for (int j = 0; j < k->len; j += LANES)
        for (int l = 0; l < LANES; l++) {
          const float e = d1 * (float)qround((x[j + l] + m1) * id, 0, k->nmax) - m1 - x[j + l];
          e2[l] += e * e;
        }
      const float err = hsum8(e2);
      if (err < best) {
        best = err;
        bc = c;
        bm = mc;
      }
    }
  }
  *sc_out = (uint8_t)bc;
  *mc_out = (uint8_t)bm;
  const float d1 = d * (float)bc, m1 = dmin * (float)bm;
  const float id = d1 > 0 ? 1.0f / d1 : 0.0f;
  for (int l = 0; l < k->len; l++) L[l] = (uint8_t)qround((x[l] + m1) * id, 0, k->nmax);
  return best;
}

// One super-block's stored form while it is being searched.
typedef struct {
  float err;
  uint16_t hd, hdmin;
  uint8_t sc[16], mc[16];
  uint8_t L[AC_QK_K];
} kaffine_state_t;

// From a starting pair of halves (d, dmin): the best codes and levels for each sub-block, then a
// least-squares refit of both halves to those codes and levels, repeated while the error falls.
// Fills *st with the best state seen.
static void kaffine_refine(const kaffine_t *k, const float *x, const float *s, const float *b, float d,
                           float dmin, kaffine_state_t *st) {
  kaffine_state_t cur;
  st->err = INFINITY;
  for (int it = 0; it < 3; it++) {
    cur.hd = ac_f32_to_f16(d);
    cur.hdmin = ac_f32_to_f16(dmin);
    const float df = ac_f16_to_f32(cur.hd), dmf = ac_f16_to_f32(cur.hdmin);
    cur.err = 0;
    for (int j = 0; j < k->nsub; j++)
      cur.err += kaffine_sub(k, x + k->len * j, df, dmf, s[j], b[j], &cur.sc[j], &cur.mc[j], cur.L + k->len * j);
    if (cur.err < st->err) {
      *st = cur;
    } else {
      break;
    }
    // Refit both halves to the codes and levels just chosen: x ~ d * (sc * L) - dmin * mc.
    double saa = 0, sab = 0, sbb = 0, sxa = 0, sxb = 0;
    for (int j = 0; j < k->nsub; j++) {
      const double bm = cur.mc[j];
      for (int l = 0; l < k->len; l++) {
        const double a = (double)cur.sc[j] * cur.L[k->len * j + l], xv = x[k->len * j + l];
        saa += a * a;
        sab += a * bm;
        sbb += bm * bm;
        sxa += xv * a;
        sxb += xv * bm;
      }
    }
    // Normal equations of min sum (x - d a + dmin b)^2 in (d, dmin).
    const double det = saa * sbb - sab * sab;
    if (!(det > 0)) break;
    const double nd = (sxa * sbb - sxb * sab) / det;
    const double ndmin = (sxa * sab - sxb * saa) / det;
    if (!(nd > 0) || ndmin < 0) break;
    if (ac_f32_to_f16((float)nd) == cur.hd && ac_f32_to_f16((float)ndmin) == cur.hdmin) break;
    // The codes are re-centred on the float fits against the new halves.
    d = (float)nd;
    dmin = (float)ndmin;
  }
}

// Quantizes one super-block of QK_K values into *st. Two starting points are refined and the
// better kept: the halves that fit the sub-block scales and minimums best (code_scale), and the
// plain ones that put the largest at the top code, as ggml does. The second wins where the first
// fits many small sub-blocks at the cost of one large one.
static void kaffine_block(const kaffine_t *k, const float *x, kaffine_state_t *st) {
  float s[16], b[16], ws[16], wb[16];
  uint8_t L[32];
  float smax = 0, bmax = 0;
  for (int j = 0; j < k->nsub; j++) {
    float dj, mj;
    ac__fit_affine(k->len, x + k->len * j, k->nmax, true, &dj, &mj, L);
    s[j] = dj;
    b[j] = -mj;
    smax = s[j] > smax ? s[j] : smax;
    bmax = b[j] > bmax ? b[j] : bmax;
    // An error in a sub-block's scale costs it sum(L^2) times the error squared; one in its
    // minimum costs len times.
    float w = 0;
    for (int l = 0; l < k->len; l++) w += (float)(L[l] * L[l]);
    ws[j] = w;
    wb[j] = (float)k->len;
  }
  kaffine_state_t alt;
  kaffine_refine(k, x, s, b, code_scale(k->nsub, s, ws, 0, k->cmax), code_scale(k->nsub, b, wb, 0, k->cmax), st);
  kaffine_refine(k, x, s, b, smax / (float)k->cmax, bmax / (float)k->cmax, &alt);
  if (alt.err < st->err) *st = alt;
  if (!(st->err < INFINITY)) {
    // Nothing finite to fit: an all-zero block.
    memset(st, 0, sizeof *st);
  }
}

static const kaffine_t K_Q2 = {16, 16, 3, 15, 1};
static const kaffine_t K_Q4 = {8, 32, 15, 63, 1};
static const kaffine_t K_Q5 = {8, 32, 31, 63, 1};

static void make_q2_k(const float *x, void *vy, int64_t nb) {
  ac_block_q2_K *y = vy;
  kaffine_state_t st;
  for (int64_t i = 0; i < nb; i++, x += AC_QK_K) {
    kaffine_block(&K_Q2, x, &st);
    const uint8_t *L = st.L;
    y[i].d = st.hd;
    y[i].dmin = st.hdmin;
    for (int g = 0; g < 16; g++) y[i].scales[g] = (uint8_t)(st.sc[g] | (st.mc[g] << 4));
    // Four 32-value runs per 32 bytes, at bit shifts 0, 2, 4, 6.
    for (int h = 0; h < 2; h++)
      for (int l = 0; l < 32; l++) {
        const uint8_t *p = L + 128 * h + l;
        y[i].qs[32 * h + l] = (uint8_t)(p[0] | (p[32] << 2) | (p[64] << 4) | (p[96] << 6));
      }
  }
}

static void make_q4_k(const float *x, void *vy, int64_t nb) {
  ac_block_q4_K *y = vy;
  kaffine_state_t st;
  for (int64_t i = 0; i < nb; i++, x += AC_QK_K) {
    kaffine_block(&K_Q4, x, &st);
    const uint8_t *L = st.L;
    y[i].d = st.hd;
    y[i].dmin = st.hdmin;
    ac__pack_scale_min_k4(st.sc, st.mc, y[i].scales);
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++)
        y[i].qs[32 * j + l] = (uint8_t)(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
  }
}

static void make_q5_k(const float *x, void *vy, int64_t nb) {
  ac_block_q5_K *y = vy;
  kaffine_state_t st;
  for (int64_t i = 0; i < nb; i++, x += AC_QK_K) {
    kaffine_block(&K_Q5, x, &st);
    const uint8_t *L = st.L;
    y[i].d = st.hd;
    y[i].dmin = st.hdmin;
    ac__pack_scale_min_k4(st.sc, st.mc, y[i].scales);
    memset(y[i].qh, 0, sizeof y[i].qh);
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 32; l++) {
        const uint8_t a = L[64 * j + l], b = L[64 * j + 32 + l];
        y[i].qs[32 * j + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        y[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1)));
      }
  }
}

// --- symmetric K-quants: Q3_K (3-bit levels, 6-bit codes) and Q6_K (6-bit, 8-bit codes) -------

typedef struct {
  int lo, hi;    // levels
  int clo, chi;  // sub-block scale codes
  int nstep;     // candidate grids per sub-block fit
  int reach;     // codes tried on each side of the rounded one
} ksym_t;

static const ksym_t K_Q3 = {-4, 3, -32, 31, 8, 1};
static const ksym_t K_Q6 = {-32, 31, -128, 127, 6, 1};

// Best (code, levels) for one 16-value sub-block against the stored half d; values are judged as
// the dequantizers compute them, (d * sc) * L.
static float ksym_sub(const ksym_t *k, const float *x, float d, float s, int8_t *sc_out, int8_t *L) {
  const int c0 = d != 0 ? qround(s / d, k->clo, k->chi) : 0;
  float best = INFINITY;
  int bc = c0;
  for (int c = c0 - k->reach; c <= c0 + k->reach; c++) {
    if (c < k->clo || c > k->chi) continue;
    const float d1 = d * (float)c;
    const float id = d1 != 0 ? 1.0f / d1 : 0.0f;
    float e2[LANES] = {0};
    for (int j = 0; j < 16; j += LANES)
      for (int l = 0; l < LANES; l++) {
        const float e = d1 * (float)qround(x[j + l] * id, k->lo, k->hi) - x[j + l];
        e2[l] += e * e;
      }
    const float err = hsum8(e2);
    if (err < best) {
      best = err;
      bc = c;
    }
  }
  *sc_out = (int8_t)bc;
  const float d1 = d * (float)bc;
  const float id = d1 != 0 ? 1.0f / d1 : 0.0f;
  for (int l = 0; l < 16; l++) L[l] = (int8_t)qround(x[l] * id, k->lo, k->hi);
  return best;
}

typedef struct {
  float err;
  uint16_t hd;
  int8_t sc[16];
  int8_t L[AC_QK_K];
} ksym_state_t;

// From a starting half d: the best code and levels for each sub-block, then a least-squares refit
// of d to them, repeated while the error falls. Fills *st with the best state seen.
static void ksym_refine(const ksym_t *k, const float *x, const float *s, float d, ksym_state_t *st) {
  ksym_state_t cur;
  st->err = INFINITY;
  for (int it = 0; it < 3; it++) {
    cur.hd = ac_f32_to_f16(d);
    const float df = ac_f16_to_f32(cur.hd);
    cur.err = 0;
    for (int j = 0; j < 16; j++) cur.err += ksym_sub(k, x + 16 * j, df, s[j], &cur.sc[j], cur.L + 16 * j);
    if (cur.err < st->err) {
      *st = cur;
    } else {
      break;
    }
    // Refit d to the chosen codes and levels: x ~ d * (sc * L).
    double sxa = 0, saa = 0;
    for (int j = 0; j < 16; j++)
      for (int l = 0; l < 16; l++) {
        const double a = (double)cur.sc[j] * cur.L[16 * j + l];
        sxa += x[16 * j + l] * a;
        saa += a * a;
      }
    if (!(saa > 0)) break;
    const float nd = (float)(sxa / saa);
    if (ac_f32_to_f16(nd) == cur.hd) break;
    d = nd;
  }
}

// Quantizes one super-block into *st: as kaffine_block, two starting points (code_scale's, and
// the sub-block scale of largest magnitude at the negative end of the codes, as ggml does).
static void ksym_block(const ksym_t *k, const float *x, ksym_state_t *st) {
  float s[16], w[16];
  int8_t L[16];
  for (int j = 0; j < 16; j++) {
    s[j] = fit_sym(16, x + 16 * j, k->lo, k->hi, k->nstep, k->lo >= -4 ? 1.5f : 1.0f, L);
    float ww = 0;
    for (int l = 0; l < 16; l++) ww += (float)(L[l] * L[l]);
    w[j] = ww;
  }
  ksym_state_t alt;
  ksym_refine(k, x, s, code_scale(16, s, w, k->clo, k->chi), st);
  ksym_refine(k, x, s, signed_absmax(16, s) / (float)k->clo, &alt);
  if (alt.err < st->err) *st = alt;
  if (!(st->err < INFINITY)) memset(st, 0, sizeof *st);
}

static void make_q3_k(const float *x, void *vy, int64_t nb) {
  ac_block_q3_K *y = vy;
  ksym_state_t st;
  for (int64_t i = 0; i < nb; i++, x += AC_QK_K) {
    ksym_block(&K_Q3, x, &st);
    const int8_t *L = st.L, *sc = st.sc;
    y[i].d = st.hd;
    // Codes stored +32 in 6 bits: low nibbles in bytes 0..7 (two per byte), high 2 bits in bytes
    // 8..11 (see ac__q3_k_scales).
    memset(y[i].scales, 0, sizeof y[i].scales);
    for (int g = 0; g < 16; g++) {
      const int v = sc[g] + 32;
      if (g < 8)
        y[i].scales[g] |= (uint8_t)(v & 0xF);
      else
        y[i].scales[g - 8] |= (uint8_t)((v & 0xF) << 4);
      y[i].scales[8 + (g & 3)] |= (uint8_t)((v >> 4) << (2 * (g >> 2)));
    }
    // Low 2 bits of level + 4 as in Q2_K; the third bit in hmask.
    memset(y[i].hmask, 0, sizeof y[i].hmask);
    for (int h = 0; h < 2; h++)
      for (int l = 0; l < 32; l++) {
        uint8_t lo = 0;
        for (int sh = 0; sh < 4; sh++) {
          const int u = L[128 * h + 32 * sh + l] + 4;
          lo |= (uint8_t)((u & 3) << (2 * sh));
          if (u & 4) y[i].hmask[l] |= (uint8_t)(1u << (4 * h + sh));
        }
        y[i].qs[32 * h + l] = lo;
      }
  }
}

static void make_q6_k(const float *x, void *vy, int64_t nb) {
  ac_block_q6_K *y = vy;
  ksym_state_t st;
  for (int64_t i = 0; i < nb; i++, x += AC_QK_K) {
    ksym_block(&K_Q6, x, &st);
    const int8_t *L = st.L;
    y[i].d = st.hd;
    memcpy(y[i].scales, st.sc, 16);
    for (int h = 0; h < 2; h++) {
      uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
      const int8_t *p = L + 128 * h;
      for (int l = 0; l < 32; l++) {
        const int a = p[l] + 32, b = p[l + 32] + 32, c = p[l + 64] + 32, e = p[l + 96] + 32;
        ql[l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
        ql[l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
        qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
      }
    }
  }
}

// --- float types and q2x -----------------------------------------------------------------------

static void make_f32(const float *x, void *vy, int64_t n) { memcpy(vy, x, (size_t)n * sizeof(float)); }

static void make_f16(const float *x, void *vy, int64_t n) {
  uint16_t *y = vy;
  for (int64_t i = 0; i < n; i++) y[i] = ac_f32_to_f16(x[i]);
}

static void make_bf16(const float *x, void *vy, int64_t n) {
  uint16_t *y = vy;
  for (int64_t i = 0; i < n; i++) y[i] = ac_f32_to_bf16(x[i]);
}

static void make_q2x(const float *x, void *vy, int64_t nb) {
  ac__q2x_traits_for("ref")->from_float_ref(x, vy, nb * AC_QK2X);
}

// --- dispatch ----------------------------------------------------------------------------------

typedef struct {
  uint32_t type;
  int64_t blck;                                  // elements per block (1 for float types)
  void (*fn)(const float *, void *, int64_t);    // takes the number of blocks
} maker_t;

static const maker_t makers[] = {
    {AC_TYPE_F32, 1, make_f32},           {AC_TYPE_F16, 1, make_f16},
    {AC_TYPE_BF16, 1, make_bf16},         {AC_TYPE_Q4_0, AC_QK4_0, make_q4_0},
    {AC_TYPE_Q4_1, AC_QK4_1, make_q4_1},  {AC_TYPE_Q5_0, AC_QK5_0, make_q5_0},
    {AC_TYPE_Q5_1, AC_QK5_1, make_q5_1},  {AC_TYPE_Q8_0, AC_QK8_0, make_q8_0},
    {AC_TYPE_Q2_K, AC_QK_K, make_q2_k},   {AC_TYPE_Q3_K, AC_QK_K, make_q3_k},
    {AC_TYPE_Q4_K, AC_QK_K, make_q4_k},   {AC_TYPE_Q5_K, AC_QK_K, make_q5_k},
    {AC_TYPE_Q6_K, AC_QK_K, make_q6_k},   {AC_TYPE_Q2X, AC_QK2X, make_q2x},
};

static const maker_t *find_maker(uint32_t type) {
  for (size_t i = 0; i < sizeof makers / sizeof *makers; i++)
    if (makers[i].type == type) return &makers[i];
  return NULL;
}

bool ac_quantize_best_supported(uint32_t type) { return find_maker(type) != NULL; }

int ac_quantize_row_best(uint32_t type, const float *x, void *y, int64_t n) {
  const maker_t *mk = find_maker(type);
  if (!mk) return ac_error(AC_EUNSUPPORTED, "no weight quantizer for type %u", type);
  if (n < 0 || n % mk->blck) {
    return ac_error(AC_EINVAL, "%lld values are not a whole number of %lld-element blocks",
                    (long long)n, (long long)mk->blck);
  }
  mk->fn(x, y, n / mk->blck);
  return 0;
}
