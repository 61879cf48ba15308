// acq_quantize.c - `acq quantize IN OUT TYPE`: a model with its matrices in another tensor type
// (lib/quantize.h). Progress and every fallback go to stderr, one line each.
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "acq.h"
#include "error.h"
#include "gguf.h"
#include "quant.h"
#include "quant_q2x.h"
#include "quantize.h"

static int usage(void) {
  fprintf(stderr,
          "usage: acq quantize IN.gguf OUT.gguf TYPE [-t THREADS] [--no-keep-embd]\n"
          "  TYPE    q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, f16, bf16, f32, or q2x\n"
          "          (our 2-bit type with 32-element blocks: a GGUF extension llama.cpp cannot read)\n"
          "  -t N    threads (default 1)\n"
          "  --no-keep-embd  token_embd / output in TYPE too (default: Q6_K where rows fit 256\n"
          "                  elements, else Q8_0, for targets below 6.5 bits per weight)\n"
          "Norms and other 1-D tensors stay F32. A matrix whose rows the type's blocks do not fit\n"
          "falls back to a 32-element type: q4_k -> q4_1, q5_k -> q5_1, q6_k -> q8_0, q3_k -> q4_0,\n"
          "q2_k -> q2x, and F16 where not even 32 fits; each one is listed. A quantized input is\n"
          "dequantized first (tensors already in the type they get are copied).\n");
  return 2;
}

typedef struct {
  const ac_gguf_t *in;  // the input, for the shapes the fallback notes name
  uint32_t target;
  bool keep;
  int n_fallback;
  int n_q2x;  // tensors written as q2x
} progress_t;

static const char *type_name(uint32_t t) {
  const char *n = ac_type_name(t);
  if (!n && t == AC_TYPE_Q2X) n = ac__q2x_traits()->name;
  return n ? n : "?";
}

static void on_tensor(void *user, int i, int n, const char *tensor, uint32_t type) {
  progress_t *pr = user;
  pr->n_q2x += type == AC_TYPE_Q2X;
  const ac_gguf_tensor_t *t = ac_gguf_find_tensor(pr->in, tensor);
  const char *why = "";
  char buf[160];
  if (t && t->n_dims >= 2 && type != pr->target) {
    const bool embd = strcmp(tensor, "token_embd.weight") == 0 || strcmp(tensor, "output.weight") == 0;
    if (embd && pr->keep) {
      why = " (token embedding / output kept at higher precision)";
    } else {
      snprintf(buf, sizeof buf, " (fallback: rows of %lld do not fit %s blocks)", (long long)t->ne[0],
               type_name(pr->target));
      why = buf;
      pr->n_fallback++;
    }
  }
  fprintf(stderr, "acq: quantize [%d/%d] %s -> %s%s\n", i, n, tensor, type_name(type), why);
}

int acq_quantize_main(int argc, char **argv) {
  static const struct option opts[] = {{"threads", required_argument, 0, 't'},
                                       {"no-keep-embd", no_argument, 0, 'k'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int n_threads = 1;
  bool keep = true;
  char *end;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
    switch (c) {
      case 't':
        n_threads = (int)strtol(optarg, &end, 10);
        if (*end || n_threads < 1 || n_threads > 256) {
          fprintf(stderr, "acq: quantize: -t '%s' must be a whole number from 1 to 256\n", optarg);
          return 1;
        }
        break;
      case 'k': keep = false; break;
      default: return usage();
    }
  }
  if (optind != argc - 3) return usage();
  const char *in = argv[optind], *out = argv[optind + 1], *tname = argv[optind + 2];

  int type = ac_type_from_name(tname);
  if (type < 0 && strcasecmp(tname, "q2x") == 0) type = (int)AC_TYPE_Q2X;
  if (type < 0) {
    fprintf(stderr, "acq: quantize: unknown type '%s' (see 'acq quantize --help')\n", tname);
    return 1;
  }

  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(in, &g);
  if (rc) return acq_fail("quantize", rc);
  progress_t pr = {g, (uint32_t)type, keep, 0, 0};
  ac_quantize_params_t p = ac_quantize_default_params((uint32_t)type);
  p.keep_embd_output = keep;
  p.n_threads = n_threads;
  p.progress = on_tensor;
  p.user = &pr;

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ac_quantize_report_t r;
  rc = ac_quantize_model(in, out, &p, &r);
  ac_gguf_close(&g);
  if (rc) return acq_fail("quantize", rc);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  fprintf(stderr,
          "acq: quantize: %d tensors, %d in %s, %d fallbacks; %zu bytes, %.3f bits per weight "
          "(%.3f over the matrices)%s (%.1f s)\n",
          r.n_tensors, r.n_quantized, type_name((uint32_t)type), r.n_fallback, r.bytes, r.bpw, r.bpw_matrices,
          r.dequantized_input ? "; quantized input dequantized first" : "", secs);
  // q2x in the output (the target, or Q2_K's fallback) makes it a file only agentcompress reads.
  if (pr.n_q2x > 0)
    fprintf(stderr, "acq: quantize: %d tensors use agentcompress's q2x type (a GGUF extension): llama.cpp cannot "
            "load this file\n", pr.n_q2x);
  else if (r.n_fallback > 0)
    fprintf(stderr, "acq: quantize: the fallbacks are standard ggml types: llama.cpp loads this file\n");
  fprintf(stderr, "acq: wrote %s\n", out);
  return 0;
}
