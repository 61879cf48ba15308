// convert.h - writing GGUF files from other formats, and re-typing GGUF files.
#ifndef AC_CONVERT_H
#define AC_CONVERT_H

#include <stdint.h>

// A llama2.c checkpoint (legacy v0 layout: 7 int32 header, float32 weights) plus its tokenizer
// file (int32 max length, then per token: float32 score, int32 length, bytes) -> GGUF, F32.
int ac_convert_llama2c(const char *ckpt_path, const char *tok_path, const char *out_path);

// Rewrites a GGUF model with every matrix converted to `type` (AC_TYPE_F16 or AC_TYPE_F32),
// dequantizing quantized tensors; 1-D tensors (norms) stay F32, as llama.cpp keeps them.
// Metadata is copied; general.file_type is updated and agentcompress.source_file_type records
// what the source was.
int ac_convert_gguf(const char *in_path, const char *out_path, uint32_t type);

// A Hugging Face model directory (config.json, tokenizer.json, *.safetensors; llama
// architecture) -> GGUF with matrices in `type` (AC_TYPE_F16 or AC_TYPE_F32).
int ac_convert_hf(const char *dir, const char *out_path, uint32_t type);

#endif
