// acq_dump.c - `acq dump MODEL TENSOR -o OUT`: one tensor, dequantized, as raw float32.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acq.h"
#include "error.h"
#include "gguf.h"
#include "quant.h"

int acq_dump_main(int argc, char **argv) {
  if (argc != 5 || strcmp(argv[3], "-o") != 0) {
    fprintf(stderr, "usage: acq dump MODEL.gguf TENSOR -o OUT.f32\n");
    return 2;
  }
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(argv[1], &g);
  if (rc) return acq_fail("dump", rc);
  const ac_gguf_tensor_t *t = ac_gguf_find_tensor(g, argv[2]);
  if (!t) {
    fprintf(stderr, "acq: dump: no tensor '%s' in %s\n", argv[2], argv[1]);
    ac_gguf_close(&g);
    return 1;
  }
  const ac_type_traits_t *tt = ac_type_traits(t->type);
  size_t rb = ac_row_size(t->type, t->ne[0]);
  int64_t rows = t->nbytes / rb;
  float *row = malloc(t->ne[0] * sizeof *row);
  FILE *f = fopen(argv[4], "wb");
  int status = 0;
  if (!row || !f || !tt->to_float) {
    fprintf(stderr, "acq: dump: %s\n", !tt->to_float ? "type cannot be dequantized" : !row ? "out of memory" : strerror(errno));
    status = 1;
  }
  for (int64_t r = 0; !status && r < rows; r++) {
    tt->to_float((const uint8_t *)t->data + r * rb, row, t->ne[0]);
    if (fwrite(row, sizeof *row, t->ne[0], f) != (size_t)t->ne[0]) {
      fprintf(stderr, "acq: dump: cannot write %s: %s\n", argv[4], strerror(errno));
      status = 1;
    }
  }
  if (f && fclose(f) != 0 && !status) {
    fprintf(stderr, "acq: dump: cannot write %s: %s\n", argv[4], strerror(errno));
    status = 1;
  }
  free(row);
  ac_gguf_close(&g);
  return status;
}
