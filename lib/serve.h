// serve.h - continuous batching: many sequences generating at once on one model.
//
// An ac_serve_t owns a context with S sequence slots on one model. Requests (prompt ids plus
// generation options) are added into free slots at any time; each ac_serve_step runs ONE batched
// evaluation that holds a decode row for every sequence that is generating and, within a per-step
// prefill budget, chunks of the prompts of sequences that are still prefilling, oldest first. A
// long prompt therefore never stalls the others: they get a token every step while it is fed in
// chunks. After the evaluation each sequence with logits samples a token, pushes it through its
// stopper (stop strings, end-of-generation, max tokens) and the caller hears about it through a
// callback: the new text, and when the sequence ends, why and what it cost. A finished or
// cancelled sequence frees its slot at once.
//
// A sequence's greedy output does not depend on what else is in the batch: the forward pass
// computes every row the same way whatever the other rows are, so the text equals `acq run`'s
// for the same prompt (the same rule for the first piece after a BOS-only SentencePiece prompt).
//
// No sockets, no threads of its own (the context's thread pool aside): the worker daemon drives it.
#ifndef AC_SERVE_H
#define AC_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"

typedef struct ac_serve ac_serve_t;

typedef struct {
  int32_t slots;          // concurrent sequences (KV caches); default 4
  int32_t n_ctx;          // positions per sequence; 0 = the model's training context (capped at 4096)
  int32_t n_threads;      // default 1
  int32_t prefill_chunk;  // most prompt rows per step, over all prefilling sequences; default 128
  // Where the forward pass runs (ac_ctx_params_t's fields of the same names).
  ac_backend_t backend;
  int32_t gpu;
  int32_t tp;             // tensor-parallel ranks in this process (CPU), or the group's size
  struct ac_comm *comm;   // rank 0 of a group of other processes (NCCL), or NULL
} ac_serve_params_t;

// The context ac_serve_new makes for `params` (defaults filled in): a follower rank of a
// tensor-parallel group makes its own context with these, to match its leader's.
ac_ctx_params_t ac_serve_ctx_params(ac_serve_params_t params);

// What to generate. The arrays are copied by ac_serve_add.
typedef struct {
  const int32_t *tokens;        // the prompt as ids (BOS included when the model wants it)
  int32_t n_tokens;
  int32_t max_tokens;           // <= 0: until end-of-generation, a stop string or a full context
  ac_sampler_params_t sampling;
  const char *const *stop;      // stop strings (not part of the output)
  int32_t n_stop;
  bool ignore_eos;              // generate past end-of-generation tokens
  // Do not report the text (nor the ids) that the first K tokens make: a retry of a task whose
  // first K tokens already reached the client. Generation is unchanged, so with the same model and
  // greedy sampling the reported text continues exactly where the first attempt stopped. The
  // finish event's whole answer still holds everything.
  int32_t skip_tokens;
} ac_serve_req_t;

typedef enum {
  AC_SERVE_RUNNING = 0,  // not finished
  AC_SERVE_EOS,          // an end-of-generation token
  AC_SERVE_STOP,         // a stop string
  AC_SERVE_LENGTH,       // max_tokens
  AC_SERVE_CONTEXT,      // the sequence filled its context
  AC_SERVE_FAILED,       // the evaluation failed (message in `error`); should not happen
} ac_serve_finish_t;

const char *ac_serve_finish_name(ac_serve_finish_t f);  // "running", "eos", "stop", ...

// One sampled token of one sequence, and when `finish` is set, the end of that sequence.
// Pointers are valid during the callback only.
typedef struct {
  uint64_t tag;                // the caller's tag from ac_serve_add
  int32_t slot;
  // Text now safe to show: possibly empty (held back as the start of a stop string, or of a UTF-8
  // character the next token completes, or skipped). Not NUL-safe: use len.
  const char *text;
  size_t len;
  const int32_t *tokens;       // the new token id (none while skipping)
  int32_t n_tokens;
  ac_serve_finish_t finish;    // AC_SERVE_RUNNING while it goes on
  // Set when finish != AC_SERVE_RUNNING:
  const char *all_text;        // the whole answer, skipped part included
  size_t all_len;
  int32_t n_prompt, n_completion;
  double prefill_ms;           // from the first step that fed its prompt to its first token
  double decode_ms;            // from its first token to its end
  double busy_s;               // each step's wall time, shared among sequences by their rows
  const char *error;           // AC_SERVE_FAILED: what went wrong
} ac_serve_event_t;

typedef void (*ac_serve_cb)(void *user, const ac_serve_event_t *ev);

// What one step did (for metrics and tests).
typedef struct {
  int32_t decode_rows;    // sequences that were generating
  int32_t prefill_rows;   // prompt rows fed
  int32_t prefilling;     // sequences that still had prompt left before the step
  int32_t finished;       // sequences that ended in this step
  double ms;              // wall time of the step
} ac_serve_step_t;

// The model must outlive the server.
int ac_serve_new(const ac_model_t *model, ac_serve_params_t params, ac_serve_t **out);
void ac_serve_destroy(ac_serve_t **self_p);

// Starts a sequence in a free slot; returns the slot (>= 0). Errors: AC_ERANGE when the prompt
// does not leave room for one generated token in the context ("prompt of N tokens is longer
// than the context of M"), AC_EINVAL for an empty prompt or an id outside the vocabulary or bad
// sampling parameters, AC_ENOTFOUND when no slot is free. Tags should be unique among running
// sequences (ac_serve_cancel finds a sequence by its tag).
int ac_serve_add(ac_serve_t *srv, const ac_serve_req_t *req, uint64_t tag);

// Runs one batched evaluation and reports through cb (called once per sampled token, in batch
// order, after the slot of a finished sequence is already free; the callback may call
// ac_serve_add and ac_serve_cancel). Returns the rows evaluated (0 when nothing is running), or a
// negative error (the sequences in the batch are then finished as AC_SERVE_FAILED and reported).
// `stats` may be NULL.
int ac_serve_step(ac_serve_t *srv, ac_serve_cb cb, void *user, ac_serve_step_t *stats);

// Ends the sequence with this tag without reporting it, and frees its slot. AC_ENOTFOUND if no
// running sequence has it.
int ac_serve_cancel(ac_serve_t *srv, uint64_t tag);

int32_t ac_serve_slots(const ac_serve_t *srv);
int32_t ac_serve_free_slots(const ac_serve_t *srv);
int32_t ac_serve_busy(const ac_serve_t *srv);
int32_t ac_serve_n_ctx(const ac_serve_t *srv);
const ac_model_t *ac_serve_model(const ac_serve_t *srv);

#endif
