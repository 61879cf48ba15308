// workload.h - reading agentcompress-workload v1 files (bench/workloads/README.md, "File format").
//
// UTF-8 JSONL: a header line {"format": "agentcompress-workload", "version": 1, ...}, then one
// task per line; lines end at "\n", blank lines are skipped. Validation follows
// bench/workloads/workload.py (validate_header, validate_task, unique (workflow, step)); the
// first problem is an AC_EFORMAT error "FILE:LINE: what is wrong" (ac_errmsg()).
#ifndef AC_WORKLOAD_H
#define AC_WORKLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "judge.h"

typedef struct {
  char *id;          // "id", or "<workflow>/<step>"
  char *workflow;
  int64_t step;
  char *domain;
  char *type;
  char *difficulty;  // NULL when absent
  // Exactly one of the two: a raw prompt (prompt != NULL), or a chat (n_messages > 0).
  char *prompt;
  size_t prompt_len;  // may hold NUL bytes
  ac_chat_msg_t *messages;
  size_t n_messages;
  int64_t max_tokens;      // >= 1
  ac_checker_t checker;    // points into this task's strings
  bool has_answer;
  char *answer;            // ground truth, NULL when absent
  size_t answer_len;
  int line;                // 1-based line in the file
  char *json;              // the task's line as read (without the newline)
} ac_task_t;

typedef struct {
  ac_task_t *tasks;
  size_t n;
  char *header;            // the header line as read
} ac_workload_t;

// Reads and validates the whole file. Errors: AC_EIO (cannot read), AC_EFORMAT (FILE:LINE: ...),
// AC_ENOMEM. On error *out is empty.
int ac_workload_load(const char *path, ac_workload_t *out);
// From text in memory; `name` names it in error messages.
int ac_workload_parse(const char *text, size_t len, const char *name, ac_workload_t *out);
void ac_workload_free(ac_workload_t *w);

// The task text (what a controller reads): the prompt, or the message contents joined by "\n".
// malloc'ed, NUL-terminated; *len (may be NULL) gets its length.
char *ac_task_text(const ac_task_t *t, size_t *len);

// Strict UTF-8 (what Python's bytes.decode("utf-8") accepts: no overlongs, no surrogates, at
// most U+10FFFF).
bool ac_utf8_valid(const char *s, size_t len);
// The length of the valid UTF-8 sequence starting at s[0] (1..4), or 0 when s[0] starts none.
int ac_utf8_seq_len(const unsigned char *s, size_t avail);

#endif
