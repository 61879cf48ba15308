// labels.c - see labels.h.
#include "labels.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

// The next non-empty line as an object: 0, 1 at the end, or AC_EFORMAT.
static int next_object(ac_labels_t *r, json_t **out) {
  *out = NULL;
  ssize_t len;
  while ((len = getline(&r->line, &r->cap, r->f)) >= 0) {
    r->lineno++;
    while (len > 0 && (r->line[len - 1] == '\n' || r->line[len - 1] == '\r')) r->line[--len] = 0;
    if (len == 0) continue;
    json_error_t jerr;
    json_t *o = json_loadb(r->line, (size_t)len, 0, &jerr);
    if (o && json_is_object(o)) {
      *out = o;
      return 0;
    }
    json_decref(o);
    if (feof(r->f) || fgetc(r->f) == EOF) {
      fprintf(stderr, "%s: %s:%d: partial last line ignored\n", r->tool, r->path, r->lineno);
      return 1;
    }
    return ac_error(AC_EFORMAT, "%s:%d: not a JSON object (%s)", r->path, r->lineno, jerr.text);
  }
  return 1;
}

int ac_labels_open(ac_labels_t *r, const char *path, const char *tool) {
  memset(r, 0, sizeof *r);
  r->path = path;
  r->tool = tool;
  if (!(r->f = fopen(path, "r"))) return ac_error(AC_EIO, "%s: cannot open", path);
  json_t *h = NULL;
  int rc = next_object(r, &h);
  if (rc == 1) rc = ac_error(AC_EFORMAT, "%s: empty file", path);
  if (rc) return rc;
  r->header = h;
  const char *fmt = json_string_value(json_object_get(h, "format"));
  json_t *ver = json_object_get(h, "version");
  const char *ref = json_string_value(json_object_get(h, "reference"));
  if (!fmt || strcmp(fmt, "agentcompress-labels") != 0)
    return ac_error(AC_EFORMAT, "%s:1: not an agentcompress-labels file (format '%s')", path, fmt ? fmt : "");
  if (!json_is_integer(ver) || json_integer_value(ver) != 1)
    return ac_error(AC_EUNSUPPORTED, "%s:1: labels version %lld; this reads version 1", path,
                    (long long)json_integer_value(ver));
  if (!ref || !*ref) return ac_error(AC_EFORMAT, "%s:1: the header needs a \"reference\" variant name", path);
  return 0;
}

int ac_labels_next(ac_labels_t *r, json_t **out) { return next_object(r, out); }

void ac_labels_close(ac_labels_t *r) {
  if (r->f) fclose(r->f);
  free(r->line);
  json_decref(r->header);
  memset(r, 0, sizeof *r);
}
