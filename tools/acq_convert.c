// acq_convert.c - `acq convert`: llama2.c checkpoints, Hugging Face directories and GGUF files
// (dequantized to F16/F32) to GGUF.
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "acq.h"
#include "convert.h"
#include "error.h"
#include "quant.h"

static int usage(void) {
  fprintf(stderr,
          "usage: acq convert --llama2c CKPT.bin --tokenizer TOK.bin -o OUT.gguf\n"
          "       acq convert --hf DIR -o OUT.gguf [--type f16|f32]\n"
          "       acq convert --gguf IN.gguf -o OUT.gguf --type f16|f32   (dequantizes every tensor)\n");
  return 2;
}

int acq_convert_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"llama2c", required_argument, 0, 'l'}, {"tokenizer", required_argument, 0, 'k'},
      {"hf", required_argument, 0, 'H'},      {"gguf", required_argument, 0, 'g'},
      {"type", required_argument, 0, 'T'},    {"output", required_argument, 0, 'o'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  const char *llama2c = NULL, *tok = NULL, *hf = NULL, *gguf = NULL, *type_name = "f16", *out = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
      case 'l': llama2c = optarg; break;
      case 'k': tok = optarg; break;
      case 'H': hf = optarg; break;
      case 'g': gguf = optarg; break;
      case 'T': type_name = optarg; break;
      case 'o': out = optarg; break;
      default: return usage();
    }
  }
  if (optind != argc || !out || (!!llama2c + !!hf + !!gguf) != 1 || (llama2c && !tok)) return usage();
  int type = ac_type_from_name(type_name);
  if (type != AC_TYPE_F16 && type != AC_TYPE_F32) {
    fprintf(stderr, "acq: convert: --type must be f16 or f32 (use 'acq quantize' for other types)\n");
    return 2;
  }
  int rc = llama2c ? ac_convert_llama2c(llama2c, tok, out)
           : hf    ? ac_convert_hf(hf, out, (uint32_t)type)
                   : ac_convert_gguf(gguf, out, (uint32_t)type);
  if (rc) return acq_fail("convert", rc);
  fprintf(stderr, "acq: wrote %s\n", out);
  return 0;
}
