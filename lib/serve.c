// serve.c - see serve.h.
#include "serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "error.h"
#include "tokenizer.h"

// --- one sequence slot -------------------------------------------------------------------------

typedef struct {
  bool active;
  uint64_t tag;
  uint64_t serial;          // new for every sequence started here, so stale rows are recognised
  uint64_t order;           // admission order: prompts are fed oldest first
  int32_t *prompt;          // (n_prompt) ids, owned
  int32_t n_prompt, n_fed;  // prompt rows evaluated so far
  bool decoding;            // the prompt is in and `next` waits to be evaluated
  int32_t next;             // the last sampled token
  int32_t n_gen, skip;
  ac_sampler_t *smp;
  ac_stopper_t *stop;
  char *text;               // the whole answer so far
  size_t len, cap;
  double t_start;           // start of the first step that fed its prompt (0: not yet)
  double t_first;           // end of the step that sampled its first token
  double busy_s;
  char pend[4];             // the start of a UTF-8 character not yet reported
  int32_t n_pend;
} seq_t;

struct ac_serve {
  const ac_model_t *m;
  ac_ctx_t *ctx;
  ac_serve_params_t p;
  int32_t n_batch, n_vocab, n_ctx;
  seq_t *seq;               // (slots)
  uint64_t serial, order;
  // Per-step scratch, sized for n_batch rows.
  int32_t *tokens, *seqs;   // (n_batch)
  int8_t *want;             // (n_batch)
  int32_t *row_slot;        // (n_batch) slot of each row
  uint64_t *row_serial;     // (n_batch)
  int32_t *rows_of;         // (slots) rows each slot had in the step
  uint64_t *serial_of;      // (slots) serial of the slot's sequence during the step
  float *logits;            // (slots, n_vocab): at most one logits row per sequence per step
  char *chunk;              // text handed to the callback
  size_t chunk_cap;
  char *fin_text;           // a finished sequence's answer, swapped out of its slot
  size_t fin_cap;
};

const char *ac_serve_finish_name(ac_serve_finish_t f) {
  switch (f) {
    case AC_SERVE_RUNNING: return "running";
    case AC_SERVE_EOS: return "eos";
    case AC_SERVE_STOP: return "stop";
    case AC_SERVE_LENGTH: return "length";
    case AC_SERVE_CONTEXT: return "context";
    case AC_SERVE_FAILED: return "failed";
  }
  return "unknown";
}

// Forgets the sequence in slot i and frees its cache positions. Its text buffer is kept for reuse.
static void slot_clear(ac_serve_t *srv, int32_t i) {
  seq_t *s = &srv->seq[i];
  ac_sampler_destroy(&s->smp);
  ac_stopper_destroy(&s->stop);
  free(s->prompt);
  s->prompt = NULL;
  s->active = false;
  s->decoding = false;
  s->n_prompt = s->n_fed = s->n_gen = s->skip = 0;
  s->len = 0;
  s->n_pend = 0;
  ac_ctx_seq_truncate(srv->ctx, i, 0);
}

// Bytes at the end of s[0..n) that begin a UTF-8 character whose remaining bytes have not come
// yet (0 when the text ends on a whole character, or on bytes that are not UTF-8 at all).
static size_t utf8_open_tail(const char *s, size_t n) {
  for (size_t k = 1; k <= 3 && k <= n; k++) {
    unsigned char c = (unsigned char)s[n - k];
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 1;
    return need > k ? k : 0;
  }
  return 0;
}

static int grow(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 256;
  while (c < need) c *= 2;
  char *b = realloc(*buf, c);
  if (!b) return ac_error(AC_ENOMEM, "out of memory");
  *buf = b;
  *cap = c;
  return 0;
}

// --- lifetime ------------------------------------------------------------------------------------

static ac_serve_params_t defaults(ac_serve_params_t params) {
  if (params.slots <= 0) params.slots = 4;
  if (params.n_threads <= 0) params.n_threads = 1;
  if (params.prefill_chunk <= 0) params.prefill_chunk = 128;
  return params;
}

ac_ctx_params_t ac_serve_ctx_params(ac_serve_params_t params) {
  params = defaults(params);
  return (ac_ctx_params_t){.n_ctx = params.n_ctx, .n_seq = params.slots, .n_batch = params.slots + params.prefill_chunk,
                           .n_threads = params.n_threads, .backend = params.backend, .gpu = params.gpu,
                           .comm = params.comm, .tp = params.tp};
}

int ac_serve_new(const ac_model_t *model, ac_serve_params_t params, ac_serve_t **out) {
  *out = NULL;
  if (!model) return ac_error(AC_EINVAL, "no model");
  params = defaults(params);
  if (params.slots > 4096 || params.prefill_chunk > 65536 || params.n_ctx < 0)
    return ac_error(AC_ERANGE, "serve: %d slots, prefill chunk %d, context %d", params.slots, params.prefill_chunk,
                    params.n_ctx);
  ac_serve_t *srv = calloc(1, sizeof *srv);
  if (!srv) return ac_error(AC_ENOMEM, "out of memory");
  srv->m = model;
  srv->p = params;
  ac_ctx_params_t cp = ac_serve_ctx_params(params);
  srv->n_batch = cp.n_batch;
  srv->n_vocab = model->hp.n_vocab;
  int rc;
  if ((rc = ac_ctx_new(model, cp, &srv->ctx))) goto fail;
  srv->n_ctx = ac_ctx_n_ctx(srv->ctx);
  size_t B = (size_t)srv->n_batch, S = (size_t)params.slots;
  srv->seq = calloc(S, sizeof *srv->seq);
  srv->tokens = malloc(B * sizeof *srv->tokens);
  srv->seqs = malloc(B * sizeof *srv->seqs);
  srv->want = malloc(B);
  srv->row_slot = malloc(B * sizeof *srv->row_slot);
  srv->row_serial = malloc(B * sizeof *srv->row_serial);
  srv->rows_of = malloc(S * sizeof *srv->rows_of);
  srv->serial_of = malloc(S * sizeof *srv->serial_of);
  srv->logits = malloc(S * (size_t)srv->n_vocab * sizeof *srv->logits);
  if (!srv->seq || !srv->tokens || !srv->seqs || !srv->want || !srv->row_slot || !srv->row_serial || !srv->rows_of ||
      !srv->serial_of || !srv->logits || grow(&srv->chunk, &srv->chunk_cap, 4096)) {
    rc = ac_error(AC_ENOMEM, "out of memory (serve buffers for %d slots)", params.slots);
    goto fail;
  }
  *out = srv;
  return 0;
fail:
  ac_serve_destroy(&srv);
  return rc;
}

void ac_serve_destroy(ac_serve_t **self_p) {
  ac_serve_t *srv = *self_p;
  if (!srv) return;
  if (srv->seq) {
    for (int32_t i = 0; i < srv->p.slots; i++) {
      seq_t *s = &srv->seq[i];
      ac_sampler_destroy(&s->smp);
      ac_stopper_destroy(&s->stop);
      free(s->prompt);
      free(s->text);
    }
  }
  ac_ctx_destroy(&srv->ctx);
  free(srv->seq);
  free(srv->tokens);
  free(srv->seqs);
  free(srv->want);
  free(srv->row_slot);
  free(srv->row_serial);
  free(srv->rows_of);
  free(srv->serial_of);
  free(srv->logits);
  free(srv->chunk);
  free(srv->fin_text);
  free(srv);
  *self_p = NULL;
}

// --- adding and cancelling ----------------------------------------------------------------------

int ac_serve_add(ac_serve_t *srv, const ac_serve_req_t *req, uint64_t tag) {
  if (!req || !req->tokens || req->n_tokens <= 0) return ac_error(AC_EINVAL, "the prompt has no tokens");
  // One position must be left for the first generated token, as acq run requires.
  if (req->n_tokens >= srv->n_ctx)
    return ac_error(AC_ERANGE, "prompt of %d tokens is longer than the context of %d (at most %d)", req->n_tokens,
                    srv->n_ctx, srv->n_ctx - 1);
  for (int32_t i = 0; i < req->n_tokens; i++)
    if (req->tokens[i] < 0 || req->tokens[i] >= srv->n_vocab)
      return ac_error(AC_EINVAL, "prompt token %d: id %d is outside the vocabulary (%d)", i, req->tokens[i],
                      srv->n_vocab);
  if (req->n_stop < 0 || (req->n_stop > 0 && !req->stop)) return ac_error(AC_EINVAL, "bad stop list");
  int32_t slot = -1;
  for (int32_t i = 0; i < srv->p.slots && slot < 0; i++)
    if (!srv->seq[i].active) slot = i;
  if (slot < 0) return ac_error(AC_ENOTFOUND, "no free slot (all %d busy)", srv->p.slots);

  seq_t *s = &srv->seq[slot];
  int rc = ac_sampler_new(req->sampling, srv->n_vocab, &s->smp);
  if (rc) {
    char msg[512];  // ac_error writes the buffer ac_errmsg reads
    snprintf(msg, sizeof msg, "%s", ac_errmsg());
    rc = ac_error(AC_EINVAL, "%s", msg);
    goto fail;
  }
  if ((rc = ac_stopper_new(srv->m->tok, req->max_tokens, req->stop, req->n_stop, &s->stop))) goto fail;
  if (!(s->prompt = malloc((size_t)req->n_tokens * sizeof *s->prompt))) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = grow(&s->text, &s->cap, 256))) goto fail;
  memcpy(s->prompt, req->tokens, (size_t)req->n_tokens * sizeof *s->prompt);
  if (req->ignore_eos) ac_stopper_ignore_eos(s->stop);
  // After a prompt of BOS alone, a SentencePiece model's first piece starts with the space that
  // begins every word; acq run (and llama2.c) drop it.
  const ac_tokenizer_t *tok = srv->m->tok;
  if (req->n_tokens == 1 && req->tokens[0] == ac_tokenizer_bos(tok) && ac_tokenizer_kind(tok) == AC_TOK_SPM)
    ac_stopper_strip_leading_space(s->stop);
  ac_ctx_seq_truncate(srv->ctx, slot, 0);
  s->active = true;
  s->tag = tag;
  s->serial = ++srv->serial;
  s->order = ++srv->order;
  s->n_prompt = req->n_tokens;
  s->n_fed = 0;
  s->decoding = false;
  s->n_gen = 0;
  s->skip = req->skip_tokens > 0 ? req->skip_tokens : 0;
  s->len = 0;
  s->n_pend = 0;
  s->t_start = s->t_first = 0;
  s->busy_s = 0;
  return slot;
fail:
  slot_clear(srv, slot);
  return rc;
}

int ac_serve_cancel(ac_serve_t *srv, uint64_t tag) {
  for (int32_t i = 0; i < srv->p.slots; i++)
    if (srv->seq[i].active && srv->seq[i].tag == tag) {
      slot_clear(srv, i);
      return 0;
    }
  return ac_error(AC_ENOTFOUND, "no running sequence with tag %llu", (unsigned long long)tag);
}

// --- one step ------------------------------------------------------------------------------------

// Fills the batch: a decode row per generating sequence, then prompt chunks, oldest prompt first,
// up to the prefill budget. Returns the row count.
static int32_t build_batch(ac_serve_t *srv, ac_serve_step_t *st, double t0) {
  int32_t n = 0, S = srv->p.slots;
  for (int32_t i = 0; i < S; i++) {
    srv->rows_of[i] = 0;
    srv->serial_of[i] = srv->seq[i].serial;
  }
  for (int32_t i = 0; i < S; i++) {
    seq_t *s = &srv->seq[i];
    if (!s->active || !s->decoding) continue;
    srv->tokens[n] = s->next;
    srv->seqs[n] = i;
    srv->want[n] = 1;
    srv->row_slot[n] = i;
    srv->row_serial[n] = s->serial;
    srv->rows_of[i]++;
    n++;
    st->decode_rows++;
  }
  int32_t budget = srv->p.prefill_chunk;
  for (;;) {
    // The oldest sequence with prompt left that has no rows in this batch yet.
    int32_t pick = -1;
    for (int32_t i = 0; i < S; i++) {
      seq_t *s = &srv->seq[i];
      if (!s->active || s->decoding || s->n_fed >= s->n_prompt || srv->rows_of[i]) continue;
      if (pick < 0 || s->order < srv->seq[pick].order) pick = i;
    }
    if (pick < 0) break;
    seq_t *s = &srv->seq[pick];
    st->prefilling++;
    if (budget <= 0) {
      srv->rows_of[pick] = -1;  // seen: counted as prefilling, gets no rows this step
      continue;
    }
    int32_t k = s->n_prompt - s->n_fed < budget ? s->n_prompt - s->n_fed : budget;
    for (int32_t j = 0; j < k; j++) {
      srv->tokens[n] = s->prompt[s->n_fed + j];
      srv->seqs[n] = pick;
      srv->want[n] = s->n_fed + j == s->n_prompt - 1;
      srv->row_slot[n] = pick;
      srv->row_serial[n] = s->serial;
      n++;
    }
    if (s->t_start == 0) s->t_start = t0;
    srv->rows_of[pick] = k;
    st->prefill_rows += k;
    budget -= k;
  }
  for (int32_t i = 0; i < S; i++)
    if (srv->rows_of[i] < 0) srv->rows_of[i] = 0;
  return n;
}

// Reports the end of slot i's sequence: its answer is swapped into fin_text, the slot is freed,
// then the callback runs (so it may reuse the slot).
static void finish(ac_serve_t *srv, int32_t i, ac_serve_event_t *ev, ac_serve_finish_t why, double t_end,
                   ac_serve_cb cb, void *user) {
  seq_t *s = &srv->seq[i];
  char *t = srv->fin_text;
  size_t c = srv->fin_cap;
  srv->fin_text = s->text;
  srv->fin_cap = s->cap;
  s->text = t;
  s->cap = c;
  ev->finish = why;
  ev->all_text = srv->fin_text ? srv->fin_text : "";
  ev->all_len = s->len;
  ev->n_prompt = s->n_prompt;
  ev->n_completion = s->n_gen;
  double t_first = s->t_first ? s->t_first : t_end;
  ev->prefill_ms = s->t_start ? t_first - s->t_start : 0;
  ev->decode_ms = t_end - t_first;
  ev->busy_s = s->busy_s;
  slot_clear(srv, i);
  if (cb) cb(user, ev);
}

int ac_serve_step(ac_serve_t *srv, ac_serve_cb cb, void *user, ac_serve_step_t *stats) {
  ac_serve_step_t st = {0};
  double t0 = ac_mono_ms();
  int32_t n = build_batch(srv, &st, t0);
  if (stats) *stats = st;
  if (n == 0) return 0;
  int rc = ac_ctx_eval(srv->ctx, n, srv->tokens, srv->seqs, srv->want, srv->logits);
  double t1 = ac_mono_ms();
  st.ms = t1 - t0;
  // The step's wall time, shared by rows.
  for (int32_t i = 0; i < srv->p.slots; i++)
    if (srv->rows_of[i] && srv->seq[i].active) srv->seq[i].busy_s += st.ms * 1e-3 * srv->rows_of[i] / n;

  if (rc) {
    // Should not happen (positions and ids are checked before): end every sequence of the batch.
    char msg[512];
    snprintf(msg, sizeof msg, "evaluation failed: %s", ac_errmsg());
    for (int32_t i = 0; i < srv->p.slots; i++) {
      seq_t *s = &srv->seq[i];
      if (!srv->rows_of[i] || !s->active || s->serial != srv->serial_of[i]) continue;
      ac_serve_event_t ev = {.tag = s->tag, .slot = i, .text = "", .error = msg};
      finish(srv, i, &ev, AC_SERVE_FAILED, t1, cb, user);
      st.finished++;
    }
    if (stats) *stats = st;
    return rc;
  }

  // Prompt rows are in the cache now.
  for (int32_t i = 0; i < srv->p.slots; i++)
    if (srv->rows_of[i] && srv->seq[i].active && !srv->seq[i].decoding) srv->seq[i].n_fed += srv->rows_of[i];

  int32_t li = 0;  // logits row
  for (int32_t r = 0; r < n; r++) {
    if (!srv->want[r]) continue;
    const float *lg = srv->logits + (size_t)li++ * srv->n_vocab;
    int32_t i = srv->row_slot[r];
    seq_t *s = &srv->seq[i];
    // Cancelled (or cancelled and reused) by an earlier callback of this step.
    if (!s->active || s->serial != srv->row_serial[r]) continue;
    int32_t tok = ac_sampler_sample(s->smp, lg);
    const char *text;
    size_t len;
    ac_finish_t f = ac_stopper_push(s->stop, tok, &text, &len);
    s->n_gen++;
    if (!s->t_first) s->t_first = t1;
    ac_serve_finish_t why = f == AC_FINISH_EOS ? AC_SERVE_EOS
                            : f == AC_FINISH_STOP ? AC_SERVE_STOP
                            : f == AC_FINISH_LENGTH ? AC_SERVE_LENGTH
                                                    : AC_SERVE_RUNNING;
    // The chunk is what the sequence held back of an unfinished character, then the new text.
    // The stopper's buffer is reused by the flush below, so the text is copied out first.
    size_t total = 0, old = (size_t)s->n_pend;
    if (grow(&srv->chunk, &srv->chunk_cap, s->n_pend + len + 1) == 0) {
      memcpy(srv->chunk, s->pend, s->n_pend);
      memcpy(srv->chunk + s->n_pend, text, len);
      total = s->n_pend + len;
    }
    s->n_pend = 0;
    // The token just sampled needs a position of its own to be evaluated: with none left the
    // sequence ends here, with the text it held back.
    if (why == AC_SERVE_RUNNING && ac_ctx_seq_len(srv->ctx, i) >= srv->n_ctx) {
      const char *tail;
      size_t more;
      ac_stopper_flush(s->stop, &tail, &more);
      if (grow(&srv->chunk, &srv->chunk_cap, total + more + 1) == 0) {
        memcpy(srv->chunk + total, tail, more);
        total += more;
      }
      why = AC_SERVE_CONTEXT;
    }
    // The whole answer takes the new text as it comes; the chunk holds back the bytes of a
    // character that a later token completes (byte-level tokenizers split characters).
    if (total >= old && grow(&s->text, &s->cap, s->len + total - old + 1) == 0) {
      memcpy(s->text + s->len, srv->chunk + old, total - old);
      s->len += total - old;
      s->text[s->len] = 0;
    }
    if (why == AC_SERVE_RUNNING) {
      size_t h = utf8_open_tail(srv->chunk, total);
      memcpy(s->pend, srv->chunk + total - h, h);
      s->n_pend = (int32_t)h;
      total -= h;
    }
    srv->chunk[total] = 0;
    bool skipped = s->n_gen <= s->skip;
    ac_serve_event_t ev = {.tag = s->tag,
                           .slot = i,
                           .text = skipped ? "" : srv->chunk,
                           .len = skipped ? 0 : total,
                           .tokens = skipped ? NULL : &tok,
                           .n_tokens = skipped ? 0 : 1,
                           .finish = AC_SERVE_RUNNING};
    if (why != AC_SERVE_RUNNING) {
      finish(srv, i, &ev, why, t1, cb, user);
      st.finished++;
      continue;
    }
    s->decoding = true;
    s->next = tok;
    if (cb) cb(user, &ev);
  }
  if (stats) *stats = st;
  return n;
}

// --- counters ------------------------------------------------------------------------------------

int32_t ac_serve_slots(const ac_serve_t *srv) { return srv->p.slots; }

int32_t ac_serve_busy(const ac_serve_t *srv) {
  int32_t b = 0;
  for (int32_t i = 0; i < srv->p.slots; i++) b += srv->seq[i].active;
  return b;
}

int32_t ac_serve_free_slots(const ac_serve_t *srv) { return srv->p.slots - ac_serve_busy(srv); }
int32_t ac_serve_n_ctx(const ac_serve_t *srv) { return srv->n_ctx; }
const ac_model_t *ac_serve_model(const ac_serve_t *srv) { return srv->m; }
