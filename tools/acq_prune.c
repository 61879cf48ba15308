// acq_prune.c - `acq prune IN OUT --ffn R --heads R [...]`: structured pruning (lib/prune.h).
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acq.h"
#include "error.h"
#include "prune.h"
#include "quant.h"

static int usage(void) {
  fprintf(stderr,
          "usage: acq prune IN.gguf OUT.gguf --ffn R --heads R [options]\n"
          "  --ffn R            fraction of FFN channels removed, 0..0.9 (default 0)\n"
          "  --heads R          fraction of attention heads removed, 0..0.9, in whole kv groups (default 0)\n"
          "  --calib FILE       measure importance on this text (default: from the weights alone)\n"
          "  --calib-tokens N   tokens of it to use, in whole windows (default 4096)\n"
          "  -c N               calibration window in tokens (default 512)\n"
          "  --random SEED      random importance (a baseline for comparisons)\n"
          "  --global           rank channels and groups across layers: widths differ per layer and\n"
          "                     the file is written as llama.cpp's 'deci' architecture\n"
          "  --drop-layers K    also remove the K layers that change the residual stream least\n"
          "                     (needs --calib or --random)\n"
          "  --align N          round kept FFN widths to a multiple of N when the width is one\n"
          "                     (default 32, so 32-element quant blocks still fit; 1 = exact)\n"
          "  -t N               threads (default 1)\n");
  return 2;
}

// A ratio: a number, checked against the allowed range here so the message names the flag.
static int parse_ratio(const char *flag, const char *s, float *out) {
  char *end;
  errno = 0;
  float v = strtof(s, &end);
  if (end == s || *end || errno) {
    fprintf(stderr, "acq: prune: %s '%s' is not a number\n", flag, s);
    return 1;
  }
  if (!(v >= 0 && v <= AC_PRUNE_MAX_RATIO)) {
    fprintf(stderr, "acq: prune: %s %s is out of range: it must be in [0, %.1f]\n", flag, s, AC_PRUNE_MAX_RATIO);
    return 1;
  }
  *out = v;
  return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

// Fails early, before minutes of calibration, when OUT's directory cannot take the file.
static int check_writable(const char *out) {
  char *copy = strdup(out);
  if (!copy) return 1;
  const char *dir = dirname(copy);
  struct stat st;
  int bad = 0;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "acq: prune: cannot write '%s': directory '%s' does not exist\n", out, dir);
    bad = 1;
  } else if (access(dir, W_OK) != 0) {
    fprintf(stderr, "acq: prune: cannot write '%s': directory '%s' is not writable\n", out, dir);
    bad = 1;
  } else if (stat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
    fprintf(stderr, "acq: prune: cannot write '%s': it is a directory\n", out);
    bad = 1;
  }
  free(copy);
  return bad;
}

// A counter that rewrites itself on a terminal; logs get nothing (the summary says it all).
static void progress(void *user, int done, int total) {
  if (!isatty(STDERR_FILENO)) return;
  fprintf(stderr, "\racq: prune: calibration window %d/%d", done, total);
  if (done == total) fputc('\n', stderr);
}

int acq_prune_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"ffn", required_argument, 0, 'F'},          {"heads", required_argument, 0, 'H'},
      {"calib", required_argument, 0, 'C'},        {"calib-tokens", required_argument, 0, 'N'},
      {"global", no_argument, 0, 'G'},             {"drop-layers", required_argument, 0, 'D'},
      {"random", required_argument, 0, 'R'},       {"align", required_argument, 0, 'A'},
      {"help", no_argument, 0, 'h'},               {0, 0, 0, 0}};
  ac_prune_params_t p = ac_prune_default_params();
  const char *calib = NULL;
  bool random = false;
  long v;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:t:h", opts, NULL)) != -1) {
    switch (c) {
      case 'F': if (parse_ratio("--ffn", optarg, &p.ffn_ratio)) return 1; break;
      case 'H': if (parse_ratio("--heads", optarg, &p.heads_ratio)) return 1; break;
      case 'C': calib = optarg; break;
      case 'N': if (parse_int(optarg, 1, 1 << 28, &v)) return usage(); p.calib_tokens = (int32_t)v; break;
      case 'c': if (parse_int(optarg, 2, 1 << 16, &v)) return usage(); p.n_ctx = (int32_t)v; break;
      case 't': if (parse_int(optarg, 1, 512, &v)) return usage(); p.n_threads = (int32_t)v; break;
      case 'G': p.global = true; break;
      case 'D': if (parse_int(optarg, 0, 1 << 20, &v)) return usage(); p.drop_layers = (int32_t)v; break;
      case 'A': if (parse_int(optarg, 0, 1 << 16, &v)) return usage(); p.ffn_align = (int32_t)v; break;
      case 'R': {
        char *end;
        errno = 0;
        p.seed = strtoull(optarg, &end, 10);
        if (end == optarg || *end || errno) return usage();
        random = true;
        break;
      }
      default: return usage();
    }
  }
  if (optind != argc - 2) return usage();
  const char *in = argv[optind], *out = argv[optind + 1];
  if (random && calib) {
    fprintf(stderr, "acq: prune: --random and --calib exclude each other\n");
    return 2;
  }
  if (check_writable(out)) return 1;
  if (calib) {
    p.importance = AC_PRUNE_IMP_CALIB;
    p.calib_path = calib;
    p.progress = progress;
  } else if (random) {
    p.importance = AC_PRUNE_IMP_RANDOM;
    fprintf(stderr, "acq: prune: random importance (seed %llu): a baseline, not a real prune\n",
            (unsigned long long)p.seed);
  } else {
    fprintf(stderr, "acq: prune: no --calib: importance from the weights only (channel j: max_i |down_ij|; "
                    "kv group: ||Wv_g|| * sum over its heads of ||Wo_h||), a weak proxy: prefer --calib\n");
  }

  ac_prune_report_t r = {0};
  int rc = ac_prune(in, out, &p, &r);
  if (rc) return acq_fail("prune", rc);

  if (r.calib_tokens)
    fprintf(stderr, "acq: prune: importance measured on %d tokens of %s (%d windows of %d)\n", r.calib_tokens, calib,
            r.calib_windows, p.n_ctx);
  if (r.n_dropped) {
    fprintf(stderr, "acq: prune: dropped %d layers:", r.n_dropped);
    for (int i = 0; i < r.n_dropped; i++) fprintf(stderr, " %d", r.dropped[i]);
    fputc('\n', stderr);
  }
  for (int i = 0; i < r.n_retyped; i++)
    fprintf(stderr, "acq: prune: %s: %s -> %s (elements removed inside its quant blocks)\n", r.retyped[i].name,
            ac_type_name(r.retyped[i].from), ac_type_name(r.retyped[i].to));
  fprintf(stderr, "acq: prune: layers %d -> %d, FFN channels %lld -> %lld, heads %lld -> %lld; ", r.n_layer_in,
          r.n_layer_out, (long long)r.ff_in, (long long)r.ff_out, (long long)r.heads_in, (long long)r.heads_out);
  if (r.per_layer_arrays) {
    fprintf(stderr, "per-layer widths (architecture '%s'):", r.arch);
    for (int i = 0; i < r.n_layer_out; i++) fprintf(stderr, " %d/%d", r.n_ff[i], r.n_head[i]);
    fputc('\n', stderr);
  } else {
    fprintf(stderr, "every layer: %d FFN channels, %d heads, %d kv heads (architecture '%s')\n", r.n_ff[0],
            r.n_head[0], r.n_head_kv[0], r.arch);
  }
  printf("wrote %s: %lld parameters (%.1f%% of %lld), %zu bytes of tensors (%.1f%%)\n", out, (long long)r.params_out,
         r.params_in ? 100.0 * r.params_out / r.params_in : 0.0, (long long)r.params_in, r.bytes_out,
         r.bytes_in ? 100.0 * r.bytes_out / r.bytes_in : 0.0);
  ac_prune_report_clear(&r);
  return 0;
}
