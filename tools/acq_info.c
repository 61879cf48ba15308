// acq_info.c - `acq info MODEL`: what is in a GGUF file.
#include <stdio.h>
#include <string.h>

#include "acq.h"
#include "error.h"
#include "gguf.h"
#include "quant.h"
#include "quant_q2x.h"

// Prints a kv value on one line; long arrays are summarised.
static void print_value(const ac_gguf_kv_t *kv) {
  switch (kv->type) {
    case AC_GGUF_STRING: {
      // Multi-line strings (chat templates) are shown on one line, shortened.
      uint64_t n = kv->v.str.len < 120 ? kv->v.str.len : 120;
      putchar('"');
      for (uint64_t i = 0; i < n; i++) {
        char ch = kv->v.str.ptr[i];
        if (ch == '\n') fputs("\\n", stdout);
        else if ((unsigned char)ch < 0x20 || ch == 0x7f) printf("\\x%02x", (unsigned char)ch);
        else putchar(ch);
      }
      printf("\"%s", n < kv->v.str.len ? "..." : "");
      break;
    }
    case AC_GGUF_ARRAY: {
      printf("[%s x %llu]", ac_gguf_vtype_name(kv->arr_type), (unsigned long long)kv->arr_n);
      uint64_t show = kv->arr_n < 8 ? kv->arr_n : 8;
      printf(" ");
      for (uint64_t i = 0; i < show; i++) {
        uint32_t u;
        float f;
        ac_str_t s;
        if (kv->arr_type == AC_GGUF_STRING && ac_gguf_arr_str(kv, i, &s) == 0)
          printf("%s\"%.*s\"", i ? ", " : "", (int)(s.len < 24 ? s.len : 24), s.ptr);
        else if (ac_gguf_arr_u32(kv, i, &u) == 0) printf("%s%u", i ? ", " : "", u);
        else if (ac_gguf_arr_f32(kv, i, &f) == 0) printf("%s%g", i ? ", " : "", f);
      }
      if (show < kv->arr_n) printf(", ...");
      break;
    }
    case AC_GGUF_FLOAT32:
    case AC_GGUF_FLOAT64: printf("%g", kv->v.f64); break;
    case AC_GGUF_BOOL: printf("%s", kv->v.b ? "true" : "false"); break;
    case AC_GGUF_INT8:
    case AC_GGUF_INT16:
    case AC_GGUF_INT32:
    case AC_GGUF_INT64: printf("%lld", (long long)kv->v.i64); break;
    default: printf("%llu", (unsigned long long)kv->v.u64);
  }
}

int acq_info_main(int argc, char **argv) {
  if (argc != 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: acq info MODEL.gguf\n");
    return 2;
  }
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(argv[1], &g);
  if (rc) return acq_fail("info", rc);

  printf("file: %s\nformat: GGUF v%u, %zu bytes, %lld kv, %lld tensors, alignment %zu\n\nmetadata:\n", argv[1],
         ac_gguf_version(g), ac_gguf_file_size(g), (long long)ac_gguf_n_kv(g), (long long)ac_gguf_n_tensors(g),
         ac_gguf_alignment(g));
  for (int64_t i = 0; i < ac_gguf_n_kv(g); i++) {
    const ac_gguf_kv_t *kv = ac_gguf_kv(g, i);
    printf("  %-44s ", kv->key);
    print_value(kv);
    putchar('\n');
  }

  printf("\ntensors:\n  %-36s %-6s %-22s %12s %6s\n", "name", "type", "shape", "bytes", "bpw");
  int64_t params = 0;
  size_t bytes = 0;
  for (int64_t i = 0; i < ac_gguf_n_tensors(g); i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    char shape[64];
    int o = 0;
    int64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
      o += snprintf(shape + o, sizeof shape - o, "%s%lld", d ? " x " : "", (long long)t->ne[d]);
      n *= t->ne[d];
    }
    params += n;
    bytes += t->nbytes;
    printf("  %-36s %-6s %-22s %12zu %6.2f\n", t->name, ac_type_name(t->type), shape, t->nbytes, 8.0 * t->nbytes / n);
  }
  printf("\ntotal: %lld parameters, %zu bytes of tensors, %.3f bits per weight\n", (long long)params, bytes,
         params ? 8.0 * bytes / params : 0.0);
  // Our GGUF extensions: say so, since other readers will refuse the file.
  int factored = 0, q2x = 0;
  for (int64_t i = 0; i < ac_gguf_n_tensors(g); i++) {
    const char *n = ac_gguf_tensor(g, i)->name;
    q2x += ac_gguf_tensor(g, i)->type == AC_TYPE_Q2X;
    size_t len = strlen(n);
    factored += len > 5 && strcmp(n + len - 5, ".lr_a") == 0;
  }
  if (q2x)
    printf("extension: agentcompress q2x type (2-bit weights in 32-element blocks, %.1f bits per weight) in %d "
           "tensors; llama.cpp cannot load this file\n", ac_type_bpw(AC_TYPE_Q2X), q2x);
  if (factored)
    printf("extension: agentcompress low-rank factors (%d matrices stored as X.lr_a, X.lr_b with W = B*A); "
           "llama.cpp cannot load this file\n", factored);
  ac_gguf_close(&g);
  return 0;
}
