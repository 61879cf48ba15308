// acq.c - the model tool: dispatches to one subcommand.
#include "acq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "quant.h"

static const struct {
  const char *name;
  int (*main)(int, char **);
  const char *help;
} commands[] = {
    {"info", acq_info_main, "info MODEL                      metadata, hyper-parameters, tensors"},
    {"run", acq_run_main, "run MODEL -p PROMPT [--chat]   generate text (see 'acq run --help')"},
    {"perplexity", acq_perplexity_main, "perplexity MODEL TEXTFILE       perplexity of a text"},
    {"logits", acq_logits_main, "logits MODEL -p PROMPT -o OUT    logits at every position (raw float32)"},
    {"convert", acq_convert_main, "convert --llama2c|--hf|--gguf  write a GGUF model"},
    {"prune", acq_prune_main, "prune IN OUT --ffn R --heads R  remove FFN channels, head groups, layers"},
    {"quantize", acq_quantize_main, "quantize IN OUT TYPE [-t N]     requantize a model (q8_0, q4_k, q2_k, q2x, ...)"},
    {"eval", acq_eval_main, "eval BASE VARIANT [TEXTFILE]    PPL, KL divergence, top-1 agreement vs a base"},
    {"zoo", acq_zoo_main, "zoo BASE --out DIR [-t N]        build all variants and DIR/manifest.json"},
    {"lowrank", acq_lowrank_main, "lowrank IN OUT --rank R|--energy E  low-rank factors by truncated SVD"},
    {"tokenize", acq_tokenize_main, "tokenize MODEL -p TEXT          print token ids"},
    {"dump", acq_dump_main, "dump MODEL TENSOR -o OUT        write a tensor as raw float32"},
    {"train-controller", acq_train_controller_main,
     "train-controller LABELS -o CTRL --zoo DIR --workload W  train the complexity controller"},
    {"label", acq_label_main, "label ZOO WORKLOAD -o LABELS     run every task on every variant, judge, record costs"},
};

int acq_fail(const char *context, int rc) {
  const char *msg = ac_errmsg();
  fprintf(stderr, "acq: %s: %s\n", context, *msg ? msg : ac_strerror(rc));
  return 1;
}

static void usage(FILE *f) {
  fprintf(f, "usage: acq COMMAND [ARGS]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) fprintf(f, "  %s\n", commands[i].help);
  fprintf(f, "\nenvironment: AC_SIMD=ref|avx2|avx512 caps the kernels, AC_LOG=debug|info|warn|error\n");
}

int main(int argc, char **argv) {
  const char *lvl = getenv("AC_LOG");
  if (lvl && ac_log_parse_level(lvl) >= 0) ac_log_set_level(ac_log_parse_level(lvl));
  ac_quant_init();
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].main(argc - 1, argv + 1);
  fprintf(stderr, "acq: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
