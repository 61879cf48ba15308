// workload.c - see workload.h. Mirrors bench/workloads/workload.py (iter_workload, validate_*).
#include "workload.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "file.h"

#define WL_FORMAT "agentcompress-workload"
#define WL_VERSION 1

int ac_utf8_seq_len(const unsigned char *s, size_t avail) {
  if (avail == 0) return 0;
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  int n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;
  else if (c >= 0xE1 && c <= 0xEC) n = 3;
  else if (c == 0xED) n = 3, hi = 0x9F;  // no surrogates
  else if (c >= 0xEE && c <= 0xEF) n = 3;
  else if (c == 0xF0) n = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;
  else return 0;
  if ((size_t)n > avail || s[1] < lo || s[1] > hi) return 0;
  for (int i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return n;
}

bool ac_utf8_valid(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < len;) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    int n = ac_utf8_seq_len(p + i, len - i);
    if (!n) return false;
    i += (size_t)n;
  }
  return true;
}

// --- (workflow, step) set ----------------------------------------------------------------------

typedef struct {
  const char **wf;   // borrowed from the tasks
  int64_t *step;
  size_t cap, n;
} keyset_t;

static uint64_t key_hash(const char *wf, int64_t step) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char *p = (const unsigned char *)wf; *p; p++) h = (h ^ *p) * 1099511628211ull;
  h ^= (uint64_t)step * 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 29);
}

// 1 if added, 0 if already there, AC_ENOMEM.
static int keyset_add(keyset_t *s, const char *wf, int64_t step) {
  if (2 * (s->n + 1) > s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 1024;
    const char **wf2 = calloc(cap, sizeof *wf2);
    int64_t *st2 = calloc(cap, sizeof *st2);
    if (!wf2 || !st2) {
      free(wf2);
      free(st2);
      return ac_error(AC_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < s->cap; i++) {
      if (!s->wf[i]) continue;
      size_t j = key_hash(s->wf[i], s->step[i]) & (cap - 1);
      while (wf2[j]) j = (j + 1) & (cap - 1);
      wf2[j] = s->wf[i], st2[j] = s->step[i];
    }
    free(s->wf);
    free(s->step);
    s->wf = wf2, s->step = st2, s->cap = cap;
  }
  size_t j = key_hash(wf, step) & (s->cap - 1);
  while (s->wf[j]) {
    if (s->step[j] == step && strcmp(s->wf[j], wf) == 0) return 0;
    j = (j + 1) & (s->cap - 1);
  }
  s->wf[j] = wf, s->step[j] = step;
  s->n++;
  return 1;
}

// --- one task ----------------------------------------------------------------------------------

static void task_free(ac_task_t *t) {
  free(t->id);
  free(t->workflow);
  free(t->domain);
  free(t->type);
  free(t->difficulty);
  free(t->prompt);
  for (size_t i = 0; i < t->n_messages; i++) {
    free((char *)t->messages[i].role);
    free((char *)t->messages[i].content);
  }
  free(t->messages);
  free(t->answer);
  for (size_t i = 0; i < t->checker.n_aliases; i++) free((char *)t->checker.aliases[i].s);
  free((void *)t->checker.aliases);
  free(t->json);
  memset(t, 0, sizeof *t);
}

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = 0;
  }
  return d;
}

static char *dup_json(json_t *v, size_t *len) {
  size_t n = json_string_length(v);
  if (len) *len = n;
  return dup_n(json_string_value(v), n);
}

static bool nonempty_str(json_t *v) { return json_is_string(v) && json_string_length(v) > 0; }

// Problem messages are Python's (workload.py); the caller prefixes FILE:LINE.
#define BAD(...) (snprintf(msg, msg_cap, __VA_ARGS__), AC_EFORMAT)

static int task_from_json(json_t *o, ac_task_t *t, char *msg, size_t msg_cap) {
  if (!json_is_object(o)) return BAD("a task must be a JSON object");
  static const char *req[] = {"workflow", "domain", "type"};
  for (int i = 0; i < 3; i++)
    if (!nonempty_str(json_object_get(o, req[i]))) return BAD("field '%s' must be a non-empty string", req[i]);
  json_t *step = json_object_get(o, "step");
  if (!json_is_integer(step) || json_integer_value(step) < 0) return BAD("field 'step' must be an integer >= 0");
  json_t *id = json_object_get(o, "id");
  if (id && !nonempty_str(id)) return BAD("field 'id' must be a non-empty string");
  json_t *prompt = json_object_get(o, "prompt"), *msgs = json_object_get(o, "messages");
  if (!!prompt == !!msgs) return BAD("a task needs exactly one of 'prompt' and 'messages'");
  if (prompt && !json_is_string(prompt)) return BAD("field 'prompt' must be a string");
  if (msgs) {
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) return BAD("field 'messages' must be a non-empty list");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
      const char *role = json_string_value(json_object_get(m, "role"));
      bool role_ok = role && json_string_length(json_object_get(m, "role")) == strlen(role) &&
                     (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant"));
      if (!json_is_object(m) || !role_ok || !json_is_string(json_object_get(m, "content")))
        return BAD("each message must be {\"role\": system|user|assistant, \"content\": string}");
    }
  }
  json_t *mt = json_object_get(o, "max_tokens");
  if (!json_is_integer(mt) || json_integer_value(mt) < 1) return BAD("field 'max_tokens' must be an integer >= 1");
  json_t *answer = json_object_get(o, "answer");
  if (answer && !json_is_string(answer)) return BAD("field 'answer' must be a string");
  json_t *diff = json_object_get(o, "difficulty");
  if (diff && !json_is_string(diff)) return BAD("field 'difficulty' must be a string");
  json_t *c = json_object_get(o, "checker");
  json_t *kindv = json_object_get(c, "kind");
  int kind = json_is_string(kindv) && json_string_length(kindv) == strlen(json_string_value(kindv))
                 ? ac_check_kind_parse(json_string_value(kindv))
                 : -1;
  if (!json_is_object(c) || kind < 0)
    return BAD("field 'checker' must be an object whose 'kind' is one of number, exact, contains, similarity");
  double theta = AC_JUDGE_DEFAULT_THETA;
  json_t *th = json_object_get(c, "theta");
  if (kind == AC_CHECK_SIMILARITY && th) {
    if (!json_is_number(th) || !(json_number_value(th) >= 0 && json_number_value(th) <= 1))
      return BAD("checker 'theta' must be a number in [0, 1]");
    theta = json_number_value(th);
  }
  json_t *aliases = json_object_get(c, "aliases");
  if (kind == AC_CHECK_CONTAINS) {
    if (aliases) {
      if (!json_is_array(aliases)) return BAD("checker 'aliases' must be a list of strings");
      for (size_t i = 0; i < json_array_size(aliases); i++)
        if (!json_is_string(json_array_get(aliases, i))) return BAD("checker 'aliases' must be a list of strings");
    }
    if (!answer && json_array_size(aliases) == 0) return BAD("a 'contains' checker needs an 'answer' or 'aliases'");
  }

  // Valid: copy what we keep.
  memset(t, 0, sizeof *t);
  t->workflow = dup_json(json_object_get(o, "workflow"), NULL);
  t->domain = dup_json(json_object_get(o, "domain"), NULL);
  t->type = dup_json(json_object_get(o, "type"), NULL);
  t->step = json_integer_value(step);
  if (id) {
    t->id = dup_json(id, NULL);
  } else if (t->workflow) {
    size_t n = strlen(t->workflow) + 24;
    if ((t->id = malloc(n))) snprintf(t->id, n, "%s/%lld", t->workflow, (long long)t->step);
  }
  if (diff && !(t->difficulty = dup_json(diff, NULL))) goto oom;
  if (prompt && !(t->prompt = dup_json(prompt, &t->prompt_len))) goto oom;
  if (msgs) {
    size_t n = json_array_size(msgs);
    if (!(t->messages = calloc(n, sizeof *t->messages))) goto oom;
    for (size_t i = 0; i < n; i++) {
      json_t *m = json_array_get(msgs, i);
      t->n_messages = i + 1;
      t->messages[i].role = dup_json(json_object_get(m, "role"), NULL);
      t->messages[i].content = dup_json(json_object_get(m, "content"), NULL);
      if (!t->messages[i].role || !t->messages[i].content) goto oom;
    }
  }
  t->max_tokens = json_integer_value(mt);
  if (answer) {
    if (!(t->answer = dup_json(answer, &t->answer_len))) goto oom;
    t->has_answer = true;
  }
  t->checker.kind = (ac_check_kind_t)kind;
  t->checker.theta = theta;
  t->checker.has_answer = t->has_answer;
  t->checker.answer = (ac_text_t){t->answer, t->answer_len};
  // Python's judge reads aliases for a contains checker only; other kinds ignore them.
  if (kind == AC_CHECK_CONTAINS && json_array_size(aliases)) {
    size_t n = json_array_size(aliases);
    ac_text_t *al = calloc(n, sizeof *al);
    if (!al) goto oom;
    t->checker.aliases = al;
    for (size_t i = 0; i < n; i++) {
      size_t len = 0;
      char *s = dup_json(json_array_get(aliases, i), &len);
      if (!s) goto oom;
      al[i] = (ac_text_t){s, len};
      t->checker.n_aliases = i + 1;
    }
  }
  if (!t->workflow || !t->domain || !t->type || !t->id) goto oom;
  return 0;
oom:
  task_free(t);
  return ac_error(AC_ENOMEM, "out of memory");
}

// --- the file ----------------------------------------------------------------------------------

static bool blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!(s[i] == ' ' || (s[i] >= 0x09 && s[i] <= 0x0D))) return false;
  return true;
}

void ac_workload_free(ac_workload_t *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n; i++) task_free(&w->tasks[i]);
  free(w->tasks);
  free(w->header);
  memset(w, 0, sizeof *w);
}

int ac_workload_parse(const char *text, size_t len, const char *name, ac_workload_t *out) {
  memset(out, 0, sizeof *out);
  keyset_t seen = {0};
  size_t cap = 0;
  int lineno = 0, rc = 0;
  char msg[512];
  json_t *o = NULL;
  for (size_t pos = 0; pos < len;) {
    const char *nl = memchr(text + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - text) : len, n = end - pos;
    const char *line = text + pos;
    pos = nl ? end + 1 : len;
    lineno++;
    if (blank(line, n)) continue;
    if (!ac_utf8_valid(line, n)) {
      rc = ac_error(AC_EFORMAT, "%s:%d: not UTF-8", name, lineno);
      goto fail;
    }
    json_error_t jerr;
    o = json_loadb(line, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!o) {
      rc = ac_error(AC_EFORMAT, "%s:%d: bad JSON: %s (column %d)", name, lineno, jerr.text, jerr.column);
      goto fail;
    }
    if (!out->header) {
      json_t *f = json_object_get(o, "format"), *v = json_object_get(o, "version");
      if (!json_is_object(o) || !json_is_string(f) || strcmp(json_string_value(f), WL_FORMAT) != 0 ||
          json_string_length(f) != strlen(WL_FORMAT)) {
        rc = ac_error(AC_EFORMAT, "%s:%d: the first line must be a header {\"format\": \"%s\", \"version\": %d}", name,
                      lineno, WL_FORMAT, WL_VERSION);
        goto fail;
      }
      if (!json_is_integer(v) || json_integer_value(v) != WL_VERSION) {
        char *vs = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        rc = ac_error(AC_EFORMAT, "%s:%d: unsupported workload version %s (this reader knows %d)", name, lineno,
                      vs ? vs : "None", WL_VERSION);
        free(vs);
        goto fail;
      }
      if (!(out->header = dup_n(line, n))) goto oom;
    } else {
      if (out->n == cap) {
        cap = cap ? 2 * cap : 256;
        ac_task_t *nt = realloc(out->tasks, cap * sizeof *nt);
        if (!nt) goto oom;
        out->tasks = nt;
      }
      ac_task_t *t = &out->tasks[out->n];
      if ((rc = task_from_json(o, t, msg, sizeof msg))) {
        if (rc == AC_EFORMAT) rc = ac_error(AC_EFORMAT, "%s:%d: %s", name, lineno, msg);
        goto fail;
      }
      out->n++;
      t->line = lineno;
      if (!(t->json = dup_n(line, n))) goto oom;
      int added = keyset_add(&seen, t->workflow, t->step);
      if (added < 0) {
        rc = added;
        goto fail;
      }
      if (!added) {
        rc = ac_error(AC_EFORMAT, "%s:%d: workflow '%s' has step %lld twice", name, lineno, t->workflow,
                      (long long)t->step);
        goto fail;
      }
    }
    json_decref(o);
    o = NULL;
  }
  if (!out->header) {
    rc = ac_error(AC_EFORMAT, "%s: empty file (no header)", name);
    goto fail;
  }
  free(seen.wf);
  free(seen.step);
  return 0;
oom:
  rc = ac_error(AC_ENOMEM, "out of memory");
fail:
  json_decref(o);
  free(seen.wf);
  free(seen.step);
  ac_workload_free(out);
  return rc;
}

int ac_workload_load(const char *path, ac_workload_t *out) {
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  int rc = ac_read_file(path, 0, &text, &len);
  if (rc) return rc;
  rc = ac_workload_parse(text, len, path, out);
  free(text);
  return rc;
}

char *ac_task_text(const ac_task_t *t, size_t *len) {
  if (t->prompt) {
    char *s = dup_n(t->prompt, t->prompt_len);
    if (s && len) *len = t->prompt_len;
    return s;
  }
  size_t n = 0;
  for (size_t i = 0; i < t->n_messages; i++) n += strlen(t->messages[i].content) + 1;
  char *s = malloc(n + 1), *p = s;
  if (!s) return NULL;
  for (size_t i = 0; i < t->n_messages; i++) {
    if (i) *p++ = '\n';
    size_t k = strlen(t->messages[i].content);
    memcpy(p, t->messages[i].content, k);
    p += k;
  }
  *p = 0;
  if (len) *len = (size_t)(p - s);
  return s;
}
