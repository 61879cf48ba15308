// stories.h - the real stories260K model (../shared, or $AC_SHARED) as the C tests use it:
// converted into a temporary GGUF, and its q8_0 and low-rank (rank 8, f32 factors) variants.
#ifndef AC_TEST_STORIES_H
#define AC_TEST_STORIES_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "convert.h"
#include "error.h"
#include "lowrank.h"
#include "quant.h"
#include "quantize.h"

// Writes the model to a new file named from `path`, a mkstemp template ("/tmp/x_XXXXXX").
static inline int stories_gguf(char *path) {
  const char *shared = getenv("AC_SHARED");
  char ckpt[1024], tok[1024];
  snprintf(ckpt, sizeof ckpt, "%s/models/stories260K/stories260K.bin", shared ? shared : "../shared");
  snprintf(tok, sizeof tok, "%s/models/stories260K/tok512.bin", shared ? shared : "../shared");
  int fd = mkstemp(path);
  if (fd < 0) return ac_error(AC_EIO, "mkstemp %s", path);
  close(fd);
  return ac_convert_llama2c(ckpt, tok, path);
}

// From the model at `f32`: q8 = f32 + ".q8_0" and lr = f32 + ".lowrank" (buffers of n bytes).
static inline int stories_variants(const char *f32, char *q8, char *lr, size_t n) {
  snprintf(q8, n, "%s.q8_0", f32);
  snprintf(lr, n, "%s.lowrank", f32);
  ac_quantize_params_t qp = ac_quantize_default_params(AC_TYPE_Q8_0);
  int rc = ac_quantize_model(f32, q8, &qp, NULL);
  if (rc) return rc;
  ac_lowrank_params_t lp = ac_lowrank_params_default();
  lp.rank = 8;
  lp.type = AC_TYPE_F32;
  return ac_lowrank_file(f32, lr, &lp, NULL);
}

#endif
