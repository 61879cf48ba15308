// acq_lowrank.c - `acq lowrank`: a low-rank variant of a model by truncated SVD (lib/lowrank.h).
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acq.h"
#include "error.h"
#include "lowrank.h"
#include "quant.h"

static int usage(void) {
  fprintf(stderr,
          "usage: acq lowrank IN.gguf OUT.gguf (--rank R | --energy E) [--tensors LIST] [--type f16|f32|bf16|same]\n"
          "                   [-t THREADS]\n"
          "  --rank R       keep R singular values of every chosen matrix\n"
          "  --energy E     per matrix, the smallest rank keeping a fraction E in (0, 1] of sum(sigma^2)\n"
          "  --tensors LIST comma list of attn, ffn, output, all, or substrings of tensor names\n"
          "                 (default attn,ffn); token_embd.weight is never factored\n"
          "  --type T       factor type (default f16; same = the source's if it is a float type, else f16)\n"
          "  -t THREADS     matrices factored at once (default 1)\n"
          "A matrix is factored only where the factors take fewer bytes than it does. The output uses\n"
          "agentcompress's low-rank GGUF extension (X.weight.lr_a, X.weight.lr_b): llama.cpp cannot load it.\n");
  return 2;
}

static void on_tensor(void *user, const ac_lowrank_tensor_t *t) {
  (void)user;
  if (t->factored)
    fprintf(stderr,
            "acq: lowrank [%d/%d] %s (%lld x %lld): rank %lld of %lld, energy %.4f, error %.4f, %zu -> %zu bytes "
            "(%.1f s)\n",
            t->index, t->count, t->name, (long long)t->n_out, (long long)t->n_in, (long long)t->rank,
            (long long)t->full_rank, t->energy, t->rel_err, t->bytes_before, t->bytes_after, t->seconds);
  else
    fprintf(stderr,
            "acq: lowrank [%d/%d] %s (%lld x %lld): rank %lld of %lld would not save bytes: kept dense (%zu bytes)\n",
            t->index, t->count, t->name, (long long)t->n_out, (long long)t->n_in, (long long)t->rank,
            (long long)t->full_rank, t->bytes_before);
}

static void on_note(void *user, const char *note) {
  (void)user;
  fprintf(stderr, "acq: lowrank: %s\n", note);
}

int acq_lowrank_main(int argc, char **argv) {
  static const struct option opts[] = {{"rank", required_argument, 0, 'r'},   {"energy", required_argument, 0, 'e'},
                                       {"tensors", required_argument, 0, 'T'}, {"type", required_argument, 0, 'y'},
                                       {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  ac_lowrank_params_t p = ac_lowrank_params_default();
  const char *rank_s = NULL, *energy_s = NULL, *type_s = "f16";
  char *end;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
    switch (c) {
      case 'r': rank_s = optarg; break;
      case 'e': energy_s = optarg; break;
      case 'T': p.tensors = optarg; break;
      case 'y': type_s = optarg; break;
      case 't':
        p.n_threads = (int)strtol(optarg, &end, 10);
        if (*end || p.n_threads < 1 || p.n_threads > 1024) return usage();
        break;
      default: return usage();
    }
  }
  if (optind != argc - 2 || !!rank_s == !!energy_s) return usage();
  const char *in = argv[optind], *out = argv[optind + 1];

  // Values the library would refuse are refused here with the same one-line form, so a typo
  // ("--rank 0", "--energy 1.5") reads like every other error.
  if (rank_s) {
    errno = 0;
    long long r = strtoll(rank_s, &end, 10);
    if (*end || end == rank_s || errno) {
      fprintf(stderr, "acq: lowrank: --rank '%s' is not a whole number\n", rank_s);
      return 1;
    }
    if (r < 1) {
      fprintf(stderr, "acq: lowrank: rank %lld must be at least 1\n", r);
      return 1;
    }
    p.rank = r;
  } else {
    p.energy = strtod(energy_s, &end);
    if (*end || end == energy_s || !(p.energy > 0 && p.energy <= 1)) {
      fprintf(stderr, "acq: lowrank: energy '%s' must be a number in (0, 1]\n", energy_s);
      return 1;
    }
  }
  if (strcmp(type_s, "same") == 0) {
    p.type = AC_LOWRANK_TYPE_SAME;
  } else {
    p.type = ac_type_from_name(type_s);
    if (p.type != AC_TYPE_F16 && p.type != AC_TYPE_F32 && p.type != AC_TYPE_BF16) {
      fprintf(stderr, "acq: lowrank: --type must be f16, f32, bf16 or same, not '%s'\n", type_s);
      return 1;
    }
  }
  p.on_tensor = on_tensor;
  p.on_note = on_note;

  ac_lowrank_stats_t st;
  int rc = ac_lowrank_file(in, out, &p, &st);
  if (rc) return acq_fail("lowrank", rc);
  fprintf(stderr,
          "acq: lowrank: factored %d of %d matrices; tensor bytes %zu -> %zu (%.1f%%); "
          "mean relative Frobenius error %.4f (%.1f s)\n",
          st.n_factored, st.n_matched, st.bytes_before, st.bytes_after,
          st.bytes_before ? 100.0 * st.bytes_after / st.bytes_before : 0.0, st.mean_rel_err, st.seconds);
  if (st.n_factored == 0)
    fprintf(stderr, "acq: lowrank: no matrix got smaller at this %s: the output is the input with metadata\n",
            rank_s ? "rank" : "energy");
  fprintf(stderr, "acq: wrote %s\n", out);
  return 0;
}
