// acq_zoo.c - `acq zoo BASE --out DIR`: build the standard variants and their manifest.
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acq.h"
#include "error.h"
#include "zoo.h"

static void on_progress(void *user, const char *line) {
  (void)user;
  fprintf(stderr, "acq zoo: %s\n", line);
}

static double num(json_t *o, const char *path) {
  // "a.b" looks one level down.
  char key[64];
  const char *dot = strchr(path, '.');
  if (dot) {
    snprintf(key, sizeof key, "%.*s", (int)(dot - path), path);
    return num(json_object_get(o, key), dot + 1);
  }
  json_t *v = json_object_get(o, path);
  return v ? json_number_value(v) : 0.0 / 0.0;
}

// The manifest as a table for people.
static void print_table(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root) return;
  printf("%-12s %6s %10s %9s %10s %9s %8s %9s %12s\n", "variant", "bpw", "MB", "tok/s", "KLD", "top-1", "dPPL%",
         "B/token", "$/Mtok(mod)");
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(root, "variants"), i, v) {
    printf("%-12s %6.2f %10.1f %9.1f %10.5f %8.2f%% %+7.2f%% %9.2e %12.4f\n",
           json_string_value(json_object_get(v, "name")), num(v, "bits_per_weight"), num(v, "bytes") / 1e6,
           num(v, "decode_tokens_per_s"), num(v, "quality.kld_mean"), 100 * num(v, "quality.top1_agreement"),
           100 * num(v, "quality.dppl_rel"), num(v, "modelled.bytes_per_token"), num(v, "modelled.usd_per_million_tokens"));
  }
  json_decref(root);
}

int acq_zoo_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'},      {"calib", required_argument, 0, 'C'},
      {"eval", required_argument, 0, 'E'},     {"eval-ctx", required_argument, 0, 'c'},
      {"eval-chunks", required_argument, 0, 'k'}, {"bench-tokens", required_argument, 0, 'b'},
      {"accelerator", required_argument, 0, 'a'}, {"price-per-hour", required_argument, 0, 'P'},
      {"only", required_argument, 0, 'O'},     {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  ac_zoo_params_t p = ac_zoo_default_params();
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:t:h", opts, NULL)) != -1) {
    switch (c) {
      case 'o': p.out_dir = optarg; break;
      case 't': p.n_threads = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
      case 'C': p.calib_path = optarg; break;
      case 'E': p.eval_path = optarg; break;
      case 'c': p.eval_ctx = atoi(optarg); break;
      case 'k': p.eval_chunks = atoi(optarg); break;
      case 'b': p.bench_tokens = atoi(optarg) > 0 ? atoi(optarg) : 64; break;
      case 'a': p.accelerator = optarg; break;
      case 'P': p.price_per_hour = atof(optarg); break;
      case 'O': p.only = optarg; break;
      default: goto usage;
    }
  }
  if (optind != argc - 1 || !p.out_dir || p.eval_ctx < 16) goto usage;
  p.base_path = argv[optind];
  p.progress = on_progress;
  int rc = ac_zoo_build(&p);
  if (rc) return acq_fail("zoo", rc);
  fprintf(stderr, "acq zoo: wrote %s/manifest.json\n", p.out_dir);
  print_table(p.out_dir);
  return 0;
usage:
  fprintf(stderr,
          "usage: acq zoo BASE.gguf --out DIR [-t THREADS] [--only f16,int8,int4,int2,pruned,lowrank,pruned-int4]\n"
          "       [--calib TEXT] [--eval TEXT] [--eval-ctx N (256)] [--eval-chunks N (8, 0 = all)]\n"
          "       [--bench-tokens N (64)] [--accelerator a100|h100|l4] [--price-per-hour USD]\n"
          "Builds the variants into DIR and writes DIR/manifest.json (format: README).\n");
  return 2;
}
