// zoo.h - building the standard set of variants of one base model, and its manifest.
//
// From a base GGUF, `ac_zoo_build` writes into a directory: f16 (the full model every variant is
// judged against), int8 (Q8_0), int4 (Q4_K where rows allow, else a 32-block 4-bit type), int2
// (Q2_K where rows allow, else our 2-bit extension type), pruned (FFN channels and attention
// groups removed by calibrated importance), lowrank (FFN matrices as truncated-SVD factors) and
// pruned-int4, plus manifest.json describing each (format in the README): file, sha256, method
// and parameters, bits per weight, bytes, parameters, measured decode tokens/s, modelled bytes
// and FLOPs per token and their cost on a named accelerator, and quality against f16 (KL
// divergence, top-1 agreement, perplexity change).
#ifndef AC_ZOO_H
#define AC_ZOO_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
  const char *base_path;
  const char *out_dir;       // created if missing
  int32_t n_threads;         // for building, evaluating and the speed measurement
  const char *calib_path;    // pruning calibration text; NULL: GSM8K train problems from shared/
  const char *eval_path;     // evaluation text; NULL: GSM8K test problems from shared/
  int32_t eval_ctx;          // evaluation window (default 256)
  int32_t eval_chunks;       // windows scored, 0 = all (default 8)
  int32_t bench_tokens;      // decode steps timed per run (default 64), 3 runs, median
  int32_t cost_ctx;          // context length the modelled per-token cost assumes (default 512)
  const char *accelerator;   // modelled device: "a100" (default), "h100", "l4", "cpu"
  double price_per_hour;     // USD per device-hour for the modelled cost (0: the device's default)
  const char *only;          // comma list of variant names to build (NULL: all)
  // Progress lines ("int4: quantizing 12/272"), NULL for none.
  void (*progress)(void *user, const char *line);
  void *user;
} ac_zoo_params_t;

ac_zoo_params_t ac_zoo_default_params(void);

// Builds the variants and DIR/manifest.json. Variants are written through temporary files, so
// an error leaves the variants finished so far and no partial file.
int ac_zoo_build(const ac_zoo_params_t *p);

// SHA-256 of a file as 64 lowercase hex digits (+ NUL) in `hex`.
int ac_sha256_file(const char *path, char hex[65]);

#endif
