// quantize.h - writing a model with its matrices in another tensor type (`acq quantize`).
//
// A per-tensor policy decides each tensor's type: 1-D tensors (norms) stay F32; the token
// embedding and the output projection may stay at a higher precision, as llama.cpp's mixes do;
// a matrix whose row length is not a multiple of the target's block size falls back to the
// closest type that fits (K-quants with their 256-element super-blocks -> the 32-element-block
// type of the same bits: Q4_K -> Q4_1, Q2_K -> our INT2 extension type), and the report
// says so. A quantized input is dequantized first; the output's metadata records that.
//
// The rules exactly:
//   - 1-D tensors: F32.
//   - token_embd.weight and output.weight, with keep_embd_output: a target of at least Q6_K's
//     6.5625 bits per weight (Q8_0, F16, BF16, F32, Q6_K itself) is kept; any other target
//     gives Q6_K where the rows are a multiple of 256, else Q8_0. (llama.cpp gives the output
//     projection Q6_K in its K-quant mixes, Q8_0 where Q6_K does not fit; we treat the
//     embedding the same way, since small models often tie the two.)
//   - Every other matrix: the target; if its rows do not fit the target's blocks, the fallback
//     Q4_K -> Q4_1, Q5_K -> Q5_1, Q6_K -> Q8_0, Q3_K -> Q4_0, Q2_K -> q2x (quant_q2x.h), and
//     F16 for a row that not even 32-element blocks fit (lib/quantize.c says why each).
//   - A tensor already in the type it would get is copied byte for byte; any other is
//     dequantized to float and requantized by quant_make.h's error-minimizing quantizers.
// Metadata: the input's, plus general.file_type (llama.cpp's LLAMA_FTYPE_MOSTLY_* id of the
// target; the "_S" mix for K-quants; absent for q2x, which has none), general.
// quantization_version = 2 for quantized targets, and agentcompress.quantize.{type, source_type
// (the input's main matrix type), dequantized_input, keep_embd_output, fallback_tensors,
// bits_per_weight}.
#ifndef AC_QUANTIZE_H
#define AC_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint32_t type;            // target type id (ac_type_t, or one of our extension types)
  bool keep_embd_output;    // token_embd / output at a higher precision (default true)
  int32_t n_threads;        // threads quantizing the rows of each tensor (< 1 means 1)
  // Progress: called after each tensor (i of n); NULL for none.
  void (*progress)(void *user, int i, int n, const char *tensor, uint32_t type);
  void *user;
} ac_quantize_params_t;

// Defaults for `type`: keep_embd_output true, one thread.
ac_quantize_params_t ac_quantize_default_params(uint32_t type);

typedef struct {
  int32_t n_tensors;        // tensors written
  int32_t n_quantized;      // of them, written in the target type
  int32_t n_fallback;       // written in a fallback type because of their row length
  size_t bytes;             // bytes of tensor data written
  int64_t n_params;         // elements of all tensors
  double bpw;               // bits per weight over all tensors (8 * bytes / n_params)
  double bpw_matrices;      // bits per weight over the 2-D tensors only
  bool dequantized_input;   // the input had quantized tensors and was dequantized first
} ac_quantize_report_t;

// Reads `in_path`, writes `out_path` (through a temporary file: no partial output on error).
int ac_quantize_model(const char *in_path, const char *out_path, const ac_quantize_params_t *p,
                      ac_quantize_report_t *report);

#endif
