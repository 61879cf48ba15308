// labels.h - reading an agentcompress-labels file (written by `acq label`, format in
// tools/acq_label.c): the header check and the line loop that acq train-controller and acbench
// share.
#ifndef AC_LABELS_H
#define AC_LABELS_H

#include <jansson.h>
#include <stdio.h>

typedef struct {
  FILE *f;
  const char *path;
  const char *tool;  // prefix of the warning about a partial last line ("acbench")
  char *line;
  size_t cap;
  int lineno;
  json_t *header;    // the header object, after ac_labels_open
} ac_labels_t;

// Opens path and reads and checks its header (format agentcompress-labels, version 1, a
// non-empty "reference"). AC_EIO, AC_EFORMAT (empty file, not a labels file), AC_EUNSUPPORTED
// (another version).
int ac_labels_open(ac_labels_t *r, const char *path, const char *tool);
// The next label line as a JSON object (the caller decrefs it): 0, or 1 at the end. A partial
// last line, what an interrupted `acq label` leaves, ends the file with a warning on stderr; an
// unreadable line elsewhere is AC_EFORMAT.
int ac_labels_next(ac_labels_t *r, json_t **out);
void ac_labels_close(ac_labels_t *r);

#endif
