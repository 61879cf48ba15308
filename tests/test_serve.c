// test_serve.c - continuous batching (lib/serve) on the real stories260K weights.
//
// The greedy text of a sequence must not depend on what else runs beside it: six prompts through
// three slots (slots reused) give exactly the texts of each prompt run alone, and of a plain
// single-sequence loop written here on ac_ctx (what `acq run` does). A long prompt is fed in
// chunks while the others keep getting a token every step. Errors, cancel and skip_tokens.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "stories.h"
#include "error.h"
#include "model.h"
#include "prompt.h"
#include "quant.h"
#include "sampler.h"
#include "serve.h"

#define N_PROMPTS 6
#define MAX_TAGS 16

static const char *prompts[N_PROMPTS] = {
    "",  // BOS alone: the first piece loses its leading space
    "Once upon a time",
    "Lily went to the park with her mom",
    "The dog was very happy because",
    "One day, a little boy named Tim found a big red ball. He",
    "She said",
};

// --- the reference: one sequence, straight on ac_ctx -----------------------------------------

typedef struct {
  char text[8192];
  size_t len;
  int32_t ids[1024];
  int n_ids;
  ac_finish_t fin;
  bool context_full;
} ref_out_t;

static int ref_generate(ac_model_t *m, const int32_t *ids, int n, int max_tokens, int n_ctx, const char *stop,
                        ref_out_t *out) {
  memset(out, 0, sizeof *out);
  ac_ctx_t *ctx = NULL;
  ac_sampler_t *smp = NULL;
  ac_stopper_t *st = NULL;
  float *logits = malloc((size_t)m->hp.n_vocab * sizeof *logits);
  ac_ctx_params_t cp = {.n_ctx = n_ctx, .n_seq = 1, .n_batch = 512, .n_threads = 1};
  int rc;
  const char *stops[1] = {stop};
  if ((rc = ac_ctx_new(m, cp, &ctx)) || (rc = ac_sampler_new(ac_sampler_default_params(), m->hp.n_vocab, &smp)) ||
      (rc = ac_stopper_new(m->tok, max_tokens, stops, stop ? 1 : 0, &st)))
    goto done;
  if (n == 1 && ids[0] == ac_tokenizer_bos(m->tok) && ac_tokenizer_kind(m->tok) == AC_TOK_SPM)
    ac_stopper_strip_leading_space(st);
  for (int i = 0; i < n; i += 512) {
    int k = n - i < 512 ? n - i : 512;
    if ((rc = ac_ctx_eval(ctx, k, ids + i, NULL, NULL, logits))) goto done;
  }
  const char *t;
  size_t tl;
  for (;;) {
    int32_t tok = ac_sampler_sample(smp, logits);
    out->ids[out->n_ids++] = tok;
    out->fin = ac_stopper_push(st, tok, &t, &tl);
    memcpy(out->text + out->len, t, tl);
    out->len += tl;
    if (out->fin != AC_FINISH_NONE) break;
    if (ac_ctx_seq_len(ctx, 0) >= ac_ctx_n_ctx(ctx)) {
      ac_stopper_flush(st, &t, &tl);
      memcpy(out->text + out->len, t, tl);
      out->len += tl;
      out->context_full = true;
      break;
    }
    if ((rc = ac_ctx_eval(ctx, 1, &tok, NULL, NULL, logits))) goto done;
  }
done:
  free(logits);
  ac_stopper_destroy(&st);
  ac_sampler_destroy(&smp);
  ac_ctx_destroy(&ctx);
  return rc;
}

// --- collecting events -------------------------------------------------------------------------

typedef struct {
  char text[8192];      // streamed text
  size_t len;
  char all[8192];       // the finish event's whole answer
  size_t all_len;
  int32_t ids[1024];
  int n_ids;
  int events;
  ac_serve_finish_t fin;
  int n_prompt, n_completion;
  double busy_s, prefill_ms, decode_ms;
  int last_step;        // step number of the last event
} got_t;

typedef struct {
  got_t got[MAX_TAGS];
  int step;             // current step number
  int finished;
} sink_t;

static void on_event(void *user, const ac_serve_event_t *ev) {
  sink_t *k = user;
  if (ev->tag >= MAX_TAGS) return;
  got_t *g = &k->got[ev->tag];
  if (g->len + ev->len < sizeof g->text) {
    memcpy(g->text + g->len, ev->text, ev->len);
    g->len += ev->len;
  }
  for (int i = 0; i < ev->n_tokens && g->n_ids < 1024; i++) g->ids[g->n_ids++] = ev->tokens[i];
  g->events++;
  g->last_step = k->step;
  if (ev->finish != AC_SERVE_RUNNING) {
    g->fin = ev->finish;
    if (ev->all_len < sizeof g->all) {
      memcpy(g->all, ev->all_text, ev->all_len);
      g->all_len = ev->all_len;
    }
    g->n_prompt = ev->n_prompt;
    g->n_completion = ev->n_completion;
    g->busy_s = ev->busy_s;
    g->prefill_ms = ev->prefill_ms;
    g->decode_ms = ev->decode_ms;
    k->finished++;
  }
}

static ac_serve_req_t req_of(const int32_t *ids, int n, int max_tokens) {
  ac_serve_req_t r = {.tokens = ids, .n_tokens = n, .max_tokens = max_tokens};
  r.sampling = ac_sampler_default_params();
  return r;
}

static bool same_text(const got_t *g, const ref_out_t *r) {
  return g->len == r->len && memcmp(g->text, r->text, r->len) == 0 && g->all_len == r->len &&
         memcmp(g->all, r->text, r->len) == 0;
}

int main(void) {
  ac_quant_init();
  char path[] = "/tmp/ac_test_serve_XXXXXX";
  int rc = stories_gguf(path);
  CHECK(rc == 0, "convert: %s", ac_errmsg());
  ac_model_t *m = NULL;
  if (rc || (rc = ac_model_load(path, &m))) {
    CHECK(rc == 0, "load: %s", ac_errmsg());
    unlink(path);
    return check_report();
  }
  const int V = m->hp.n_vocab, MAXTOK = 48, NCTX = 256;
  int32_t *ids[N_PROMPTS];
  int n_ids[N_PROMPTS];
  ref_out_t *ref = calloc(N_PROMPTS, sizeof *ref);
  for (int p = 0; p < N_PROMPTS; p++) {
    rc = ac_prompt_tokens(m->gguf, m->tok, prompts[p], strlen(prompts[p]), false, NULL, 0, &ids[p], &n_ids[p]);
    CHECK(rc == 0, "tokenize %d: %s", p, ac_errmsg());
    rc = ref_generate(m, ids[p], n_ids[p], MAXTOK, NCTX, NULL, &ref[p]);
    CHECK(rc == 0, "reference %d: %s", p, ac_errmsg());
  }
  CHECK(ref[0].len > 0 && ref[0].text[0] != ' ', "BOS-only prompt: no leading space");

  // --- The batched forward pass gives every row the same bits as alone.
  {
    ac_ctx_t *c = NULL;
    ac_ctx_params_t cp = {.n_ctx = 64, .n_seq = 3, .n_batch = 64, .n_threads = 2};
    CHECK(ac_ctx_new(m, cp, &c) == 0, "ctx: %s", ac_errmsg());
    float *alone = malloc((size_t)3 * V * sizeof *alone), *batch = malloc((size_t)3 * V * sizeof *batch);
    // Sequence s is prompt s+1; alone: each prefilled on its own in slot s.
    for (int s = 0; s < 3; s++) {
      int32_t seqs[64];
      for (int i = 0; i < n_ids[s + 1]; i++) seqs[i] = s;
      CHECK(ac_ctx_eval(c, n_ids[s + 1], ids[s + 1], seqs, NULL, alone + (size_t)s * V) == 0, "alone");
      ac_ctx_seq_truncate(c, s, 0);
    }
    // Together, in one batch of three prompt chunks.
    int32_t toks[192], seqs[192];
    int8_t want[192] = {0};
    int n = 0;
    for (int s = 0; s < 3; s++)
      for (int i = 0; i < n_ids[s + 1]; i++) {
        toks[n] = ids[s + 1][i];
        seqs[n] = s;
        want[n] = i == n_ids[s + 1] - 1;
        n++;
      }
    CHECK(ac_ctx_eval(c, n, toks, seqs, want, batch) == 0, "batch: %s", ac_errmsg());
    CHECK(memcmp(alone, batch, (size_t)3 * V * sizeof *batch) == 0, "batched rows are bit-identical to alone");
    free(alone);
    free(batch);
    ac_ctx_destroy(&c);
  }

  // --- Each prompt alone through serve == the reference loop.
  ac_serve_t *srv = NULL;
  ac_serve_params_t sp = {.slots = 3, .n_ctx = NCTX, .n_threads = 2, .prefill_chunk = 16};
  CHECK(ac_serve_new(m, sp, &srv) == 0, "serve: %s", ac_errmsg());
  if (!srv) goto out;
  CHECK(ac_serve_slots(srv) == 3 && ac_serve_free_slots(srv) == 3 && ac_serve_n_ctx(srv) == NCTX, "counts");
  sink_t *k = calloc(1, sizeof *k);
  for (int p = 0; p < N_PROMPTS; p++) {
    ac_serve_req_t r = req_of(ids[p], n_ids[p], MAXTOK);
    CHECK(ac_serve_add(srv, &r, (uint64_t)p) >= 0, "add %d: %s", p, ac_errmsg());
    while (ac_serve_busy(srv) > 0) CHECK(ac_serve_step(srv, on_event, k, NULL) > 0, "step");
    CHECK(same_text(&k->got[p], &ref[p]), "prompt %d alone: serve '%.*s' vs reference '%.*s'", p, (int)k->got[p].len,
          k->got[p].text, (int)ref[p].len, ref[p].text);
    CHECK(k->got[p].n_ids == ref[p].n_ids && memcmp(k->got[p].ids, ref[p].ids, ref[p].n_ids * sizeof(int32_t)) == 0,
          "prompt %d alone: same ids", p);
    CHECK(k->got[p].n_prompt == n_ids[p] && k->got[p].n_completion == ref[p].n_ids, "prompt %d counts", p);
    ac_serve_finish_t want_fin = ref[p].fin == AC_FINISH_EOS ? AC_SERVE_EOS : AC_SERVE_LENGTH;
    CHECK(k->got[p].fin == want_fin, "prompt %d finish %s", p, ac_serve_finish_name(k->got[p].fin));
  }
  ref_out_t *alone = ref;

  // --- Six prompts concurrently through three slots, added as slots free.
  memset(k, 0, sizeof *k);
  {
    int next = 0, steps = 0;
    while (k->finished < N_PROMPTS && steps < 10000) {
      while (next < N_PROMPTS && ac_serve_free_slots(srv) > 0) {
        ac_serve_req_t r = req_of(ids[next], n_ids[next], MAXTOK);
        int slot = ac_serve_add(srv, &r, (uint64_t)next);
        CHECK(slot >= 0 && slot < 3, "add %d: %s", next, ac_errmsg());
        next++;
      }
      k->step = ++steps;
      CHECK(ac_serve_step(srv, on_event, k, NULL) > 0, "step %d", steps);
    }
    CHECK(ac_serve_busy(srv) == 0 && ac_serve_free_slots(srv) == 3, "all slots free at the end");
    double busy = 0;
    for (int p = 0; p < N_PROMPTS; p++) {
      CHECK(same_text(&k->got[p], &alone[p]), "prompt %d concurrent: '%.*s' vs alone '%.*s'", p, (int)k->got[p].len,
            k->got[p].text, (int)alone[p].len, alone[p].text);
      CHECK(k->got[p].n_ids == alone[p].n_ids, "prompt %d concurrent: token count", p);
      CHECK(k->got[p].busy_s > 0 && k->got[p].prefill_ms >= 0 && k->got[p].decode_ms >= 0, "prompt %d timings", p);
      busy += k->got[p].busy_s;
    }
    CHECK(busy > 0, "busy seconds attributed");
  }

  // --- A long prompt fed in chunks while two others decode: they get a token every step.
  memset(k, 0, sizeof *k);
  {
    int32_t long_ids[200];
    for (int i = 0; i < 200; i++) long_ids[i] = i == 0 ? ac_tokenizer_bos(m->tok) : ids[4][1 + i % (n_ids[4] - 1)];
    ref_out_t *lr = calloc(1, sizeof *lr);
    CHECK(ref_generate(m, long_ids, 200, 8, NCTX, NULL, lr) == 0, "long reference");
    ac_serve_req_t r1 = req_of(ids[1], n_ids[1], 0), r2 = req_of(ids[2], n_ids[2], 0);
    r1.ignore_eos = r2.ignore_eos = true;
    CHECK(ac_serve_add(srv, &r1, 1) >= 0 && ac_serve_add(srv, &r2, 2) >= 0, "add two");
    // Until both are decoding.
    int steps = 0;
    while (k->got[1].events == 0 || k->got[2].events == 0) {
      k->step = ++steps;
      ac_serve_step(srv, on_event, k, NULL);
    }
    ac_serve_req_t rl = req_of(long_ids, 200, 8);
    CHECK(ac_serve_add(srv, &rl, 3) >= 0, "add long: %s", ac_errmsg());
    int chunked_steps = 0, bad = 0;
    for (;;) {
      ac_serve_step_t st;
      int e1 = k->got[1].events, e2 = k->got[2].events;
      k->step = ++steps;
      CHECK(ac_serve_step(srv, on_event, k, &st) > 0, "step");
      if (st.prefilling == 0) break;
      chunked_steps++;
      CHECK(st.prefill_rows <= 16, "prefill budget kept: %d rows", st.prefill_rows);
      if (st.decode_rows != 2 || k->got[1].events != e1 + 1 || k->got[2].events != e2 + 1) bad++;
    }
    CHECK(chunked_steps >= 200 / 16, "the long prompt took %d steps", chunked_steps);
    CHECK(bad == 0, "%d steps of the long prefill had no decode rows", bad);
    while (k->got[3].fin == AC_SERVE_RUNNING) {
      k->step = ++steps;
      ac_serve_step(srv, on_event, k, NULL);
    }
    CHECK(k->got[3].len == lr->len && memcmp(k->got[3].text, lr->text, lr->len) == 0,
          "long prompt text == reference: '%.*s' vs '%.*s'", (int)k->got[3].len, k->got[3].text, (int)lr->len, lr->text);
    // Cancel frees the slot; the cancelled sequences report nothing more.
    int ev1 = k->got[1].events;
    CHECK(ac_serve_cancel(srv, 1) == 0 && ac_serve_cancel(srv, 2) == 0, "cancel");
    CHECK(ac_serve_cancel(srv, 1) == AC_ENOTFOUND, "cancel twice");
    CHECK(ac_serve_free_slots(srv) == 3, "cancel frees slots");
    CHECK(ac_serve_step(srv, on_event, k, NULL) == 0 && k->got[1].events == ev1, "idle after cancel");
    free(lr);
  }

  // --- Errors.
  {
    int32_t big[NCTX];
    for (int i = 0; i < NCTX; i++) big[i] = 1 + i % 100;
    ac_serve_req_t r = req_of(big, NCTX, 4);
    CHECK(ac_serve_add(srv, &r, 9) == AC_ERANGE, "prompt as long as the context");
    CHECK(strstr(ac_errmsg(), "longer than the context") != NULL, "message: %s", ac_errmsg());
    r.n_tokens = NCTX - 1;
    CHECK(ac_serve_add(srv, &r, 9) >= 0, "prompt of n_ctx - 1 fits");
    ac_serve_cancel(srv, 9);
    int32_t badid[2] = {1, V};
    r = req_of(badid, 2, 4);
    CHECK(ac_serve_add(srv, &r, 9) == AC_EINVAL, "id outside the vocabulary");
    r = req_of(badid, 0, 4);
    CHECK(ac_serve_add(srv, &r, 9) == AC_EINVAL, "empty prompt");
    r = req_of(ids[1], n_ids[1], 4);
    r.sampling.temp = 1;
    r.sampling.top_p = 0;
    CHECK(ac_serve_add(srv, &r, 9) == AC_EINVAL, "bad sampling");
    r = req_of(ids[1], n_ids[1], 4);
    for (int i = 0; i < 3; i++) CHECK(ac_serve_add(srv, &r, 20 + i) >= 0, "fill");
    CHECK(ac_serve_add(srv, &r, 30) == AC_ENOTFOUND, "no free slot");
    CHECK(ac_serve_cancel(srv, 21) == 0 && ac_serve_add(srv, &r, 30) >= 0, "cancel makes room");
    for (int i = 0; i < 3; i++) ac_serve_cancel(srv, i == 1 ? 30 : 20 + i);
    CHECK(ac_serve_busy(srv) == 0, "all cancelled");
  }

  // --- skip_tokens drops exactly the text of the first K tokens; the whole answer is kept.
  memset(k, 0, sizeof *k);
  {
    int p = 4, K = 5;
    ac_serve_req_t r = req_of(ids[p], n_ids[p], MAXTOK);
    r.skip_tokens = K;
    CHECK(ac_serve_add(srv, &r, 7) >= 0, "add skip");
    while (ac_serve_busy(srv)) ac_serve_step(srv, on_event, k, NULL);
    // The text of the first K tokens, as the stopper emits it.
    ac_stopper_t *st = NULL;
    ac_stopper_new(m->tok, MAXTOK, NULL, 0, &st);
    size_t head = 0, tl;
    const char *t;
    for (int i = 0; i < K; i++) {
      ac_stopper_push(st, ref[p].ids[i], &t, &tl);
      head += tl;
    }
    ac_stopper_destroy(&st);
    got_t *g = &k->got[7];
    CHECK(head > 0 && g->len + head == ref[p].len && memcmp(g->text, ref[p].text + head, g->len) == 0,
          "skip %d: streamed '%.*s'", K, (int)g->len, g->text);
    CHECK(g->all_len == ref[p].len && memcmp(g->all, ref[p].text, ref[p].len) == 0, "skip: whole answer kept");
    CHECK(g->n_ids == ref[p].n_ids - K && memcmp(g->ids, ref[p].ids + K, g->n_ids * sizeof(int32_t)) == 0,
          "skip: ids after the first K");
  }

  // --- Stop strings, and a sequence that fills its context.
  memset(k, 0, sizeof *k);
  {
    int p = 1;
    ref_out_t *r0 = calloc(1, sizeof *r0);
    ref_generate(m, ids[p], n_ids[p], MAXTOK, NCTX, NULL, r0);
    // A stop string from the middle of the reference text.
    char stop[8] = {0};
    memcpy(stop, r0->text + r0->len / 2, 3);
    ref_out_t *rs = calloc(1, sizeof *rs);
    CHECK(ref_generate(m, ids[p], n_ids[p], MAXTOK, NCTX, stop, rs) == 0 && rs->fin == AC_FINISH_STOP, "stop ref");
    const char *stops[1] = {stop};
    ac_serve_req_t r = req_of(ids[p], n_ids[p], MAXTOK);
    r.stop = stops;
    r.n_stop = 1;
    CHECK(ac_serve_add(srv, &r, 1) >= 0, "add stop");
    while (ac_serve_busy(srv)) ac_serve_step(srv, on_event, k, NULL);
    CHECK(k->got[1].fin == AC_SERVE_STOP && same_text(&k->got[1], rs), "stop string: '%.*s' vs '%.*s'",
          (int)k->got[1].len, k->got[1].text, (int)rs->len, rs->text);

    ac_serve_t *small = NULL;
    ac_serve_params_t sp2 = {.slots = 2, .n_ctx = 24, .n_threads = 1, .prefill_chunk = 4};
    CHECK(ac_serve_new(m, sp2, &small) == 0, "small serve");
    ref_out_t *rc24 = calloc(1, sizeof *rc24);
    ref_generate(m, ids[p], n_ids[p], 0, 24, NULL, rc24);
    r = req_of(ids[p], n_ids[p], 0);
    r.ignore_eos = true;
    ac_serve_add(small, &r, 2);
    r.ignore_eos = false;
    ac_serve_add(small, &r, 3);
    while (ac_serve_busy(small)) ac_serve_step(small, on_event, k, NULL);
    CHECK(k->got[2].fin == AC_SERVE_CONTEXT && k->got[2].n_prompt + k->got[2].n_completion == 24 + 1,
          "full context: %s, %d + %d", ac_serve_finish_name(k->got[2].fin), k->got[2].n_prompt, k->got[2].n_completion);
    CHECK(same_text(&k->got[3], rc24) && (rc24->context_full ? k->got[3].fin == AC_SERVE_CONTEXT : true),
          "small context == reference");
    ac_serve_destroy(&small);
    CHECK(small == NULL, "destroy clears the pointer");
    free(r0);
    free(rs);
    free(rc24);
  }

  free(k);
  ac_serve_destroy(&srv);
out:
  for (int p = 0; p < N_PROMPTS; p++) free(ids[p]);
  free(ref);
  ac_model_destroy(&m);
  unlink(path);
  return check_report();
}
