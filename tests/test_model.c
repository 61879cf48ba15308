// test_model.c - forward-pass properties on the real stories260K weights: the two RoPE pair
// orderings agree on correspondingly permuted weights, a batch of several sequences equals the
// sequences run alone, prefill equals token-by-token decode, and errors leave the cache intact.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "stories.h"
#include "error.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"

static float max_diff(const float *a, const float *b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
  return m;
}

// Logits of every position of `toks` run as one prefill on a fresh context.
static float *run_all(ac_model_t *m, const int32_t *toks, int n) {
  ac_ctx_t *c = NULL;
  ac_ctx_params_t p = {.n_ctx = 64, .n_seq = 1, .n_batch = 64, .n_threads = 2};
  float *out = malloc((size_t)n * m->hp.n_vocab * sizeof *out);
  int8_t want[64];
  memset(want, 1, sizeof want);
  if (ac_ctx_new(m, p, &c) || ac_ctx_eval(c, n, toks, NULL, want, out)) {
    fprintf(stderr, "run_all: %s\n", ac_errmsg());
    free(out);
    out = NULL;
  }
  ac_ctx_destroy(&c);
  return out;
}

// Writes a copy of `src` whose attn_q/attn_k rows are reordered from adjacent pairs (2i, 2i+1)
// to halves (i, i + hd/2) within each head.
static int write_half_split(const char *src, const char *dst) {
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(src, &g);
  if (rc) return rc;
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  void *bufs[64] = {0};
  int nb = 0;
  uint32_t hd = 0, nh = 0;
  ac_gguf_get_u32(g, "llama.rope.dimension_count", &hd);
  ac_gguf_get_u32(g, "llama.attention.head_count", &nh);
  for (int64_t i = 0; i < ac_gguf_n_kv(g); i++) ac_gguf_set_kv(w, ac_gguf_kv(g, i));
  for (int64_t i = 0; i < ac_gguf_n_tensors(g); i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    const void *data = t->data;
    if (strstr(t->name, "attn_q") || strstr(t->name, "attn_k")) {
      size_t rb = t->ne[0] * sizeof(float);
      int64_t rows = t->ne[1];
      uint8_t *b = malloc(t->nbytes);
      for (int64_t r = 0; r < rows; r++) {
        int64_t head = r / hd, j = r % hd;
        int64_t from = j < hd / 2 ? 2 * j : 2 * (j - hd / 2) + 1;
        memcpy(b + r * rb, (const uint8_t *)t->data + (head * hd + from) * rb, rb);
      }
      data = bufs[nb++] = b;
    }
    ac_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, data, t->nbytes);
  }
  (void)nh;
  rc = ac_gguf_write(w, dst);
  for (int i = 0; i < nb; i++) free(bufs[i]);
  ac_gguf_writer_destroy(&w);
  ac_gguf_close(&g);
  return rc;
}

int main(void) {
  ac_quant_init();
  char path[] = "/tmp/ac_test_model_XXXXXX", path2[64];
  int rc = stories_gguf(path);
  snprintf(path2, sizeof path2, "%s.neox", path);
  CHECK(rc == 0, "convert: %s", ac_errmsg());
  if (rc) return check_report();

  ac_model_t *m = NULL, *mn = NULL;
  CHECK(ac_model_load(path, &m) == 0, "load: %s", ac_errmsg());
  const int32_t toks[24] = {1, 403, 407, 261, 378, 275, 262, 384, 310, 260, 412, 270,
                            290, 427, 261, 270, 289, 312, 260, 279, 342, 261, 268, 322};
  const int n = 24, V = m->hp.n_vocab;
  float *ref = run_all(m, toks, n);

  // --- RoPE orderings: half-split weights under NEOX == adjacent-pair weights under NORM.
  CHECK(write_half_split(path, path2) == 0, "write permuted: %s", ac_errmsg());
  CHECK(ac_model_load(path2, &mn) == 0, "load permuted: %s", ac_errmsg());
  if (mn) {
    float *perm_norm = run_all(mn, toks, n);
    mn->hp.rope_type = AC_ROPE_NEOX;
    float *perm_neox = run_all(mn, toks, n);
    float d = max_diff(ref, perm_neox, (size_t)n * V);
    CHECK(d < 1e-3f, "NEOX on half-split weights == NORM on pairs: max diff %g", d);
    CHECK(max_diff(ref, perm_norm, (size_t)n * V) > 0.1f, "the wrong ordering does change the logits");
    free(perm_norm);
    free(perm_neox);
    ac_model_destroy(&mn);
  }

  // --- Prefill == token-by-token decode.
  ac_ctx_t *c = NULL;
  ac_ctx_params_t p = {.n_ctx = 32, .n_seq = 3, .n_batch = 64, .n_threads = 2};
  CHECK(ac_ctx_new(m, p, &c) == 0, "ctx: %s", ac_errmsg());
  float *row = malloc((size_t)V * 3 * sizeof *row);
  float worst = 0;
  for (int i = 0; i < n; i++) {
    CHECK(ac_ctx_eval(c, 1, &toks[i], NULL, NULL, row) == 0, "decode %d: %s", i, ac_errmsg());
    worst = fmaxf(worst, max_diff(row, ref + (size_t)i * V, V));
  }
  CHECK(worst < 1e-4f, "decode == prefill: max diff %g", worst);

  // --- Three sequences in one batch, at different lengths, == each alone.
  ac_ctx_seq_truncate(c, 0, 0);
  int32_t bt[3], bs[3] = {0, 1, 2};
  int8_t want[3] = {1, 1, 1};
  // Sequence 1 is prefilled with 5 tokens first, sequence 2 with 10, so the batch mixes
  // positions 0, 5 and 10.
  CHECK(ac_ctx_eval(c, 5, toks, (int32_t[]){1, 1, 1, 1, 1}, NULL, row) == 0, "prefill seq 1");
  int32_t s2[10];
  for (int i = 0; i < 10; i++) s2[i] = 2;
  CHECK(ac_ctx_eval(c, 10, toks, s2, NULL, row) == 0, "prefill seq 2");
  bt[0] = toks[0], bt[1] = toks[5], bt[2] = toks[10];
  CHECK(ac_ctx_eval(c, 3, bt, bs, want, row) == 0, "mixed batch: %s", ac_errmsg());
  float d0 = max_diff(row, ref, V), d1 = max_diff(row + V, ref + 5 * (size_t)V, V),
        d2 = max_diff(row + 2 * (size_t)V, ref + 10 * (size_t)V, V);
  CHECK(d0 < 1e-4f && d1 < 1e-4f && d2 < 1e-4f, "batch of sequences == alone: %g %g %g", d0, d1, d2);
  CHECK(ac_ctx_seq_len(c, 0) == 1 && ac_ctx_seq_len(c, 1) == 6 && ac_ctx_seq_len(c, 2) == 11, "lengths");

  // --- Errors leave the cache as it was.
  int32_t bad = V + 5;
  CHECK(ac_ctx_eval(c, 1, &bad, NULL, NULL, row) == AC_EINVAL, "bad token id");
  CHECK(ac_ctx_seq_len(c, 0) == 1, "bad token changes nothing");
  int32_t many[32] = {0};
  int32_t seq2[32];
  for (int i = 0; i < 32; i++) seq2[i] = 2, many[i] = toks[i % n];
  CHECK(ac_ctx_eval(c, 32, many, seq2, NULL, row) == AC_ERANGE, "context overflow");
  CHECK(ac_ctx_seq_len(c, 2) == 11, "overflow changes nothing: %d", ac_ctx_seq_len(c, 2));
  CHECK(ac_ctx_eval(c, 1, toks, (int32_t[]){7}, NULL, row) == AC_EINVAL, "bad slot");
  // After the errors, sequence 2 continues exactly where it was.
  CHECK(ac_ctx_eval(c, 1, &toks[11], (int32_t[]){2}, NULL, row) == 0, "continue");
  CHECK(max_diff(row, ref + 11 * (size_t)V, V) < 1e-4f, "continues correctly after errors");

  free(row);
  free(ref);
  ac_ctx_destroy(&c);
  ac_model_destroy(&m);
  unlink(path);
  unlink(path2);
  return check_report();
}
