// convert.c - llama2.c checkpoints to GGUF, and GGUF re-typing (dequantize to F16/F32).
// The Hugging Face importer lives in convert_hf.c.
#include "convert.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "file.h"
#include "gguf.h"
#include "quant.h"
#include "tokenizer.h"

// --- llama2.c --------------------------------------------------------------------------------

// The llama2.c tokenizer exported SentencePiece pieces with U+2581 turned back into spaces, and
// BOS/EOS as "\n<s>\n" / "\n</s>\n"; GGUF "llama" vocabularies want the SentencePiece forms.
static int load_llama2c_tokenizer(const char *path, int32_t n_vocab, ac_gguf_writer_t *w) {
  uint8_t *data = NULL;
  size_t len = 0;
  int rc = ac_read_file(path, 0, (char **)&data, &len);
  if (rc) return rc;
  ac_str_t *toks = calloc(n_vocab, sizeof *toks);
  char **owned = calloc(n_vocab, sizeof *owned);
  float *scores = calloc(n_vocab, sizeof *scores);
  int32_t *types = calloc(n_vocab, sizeof *types);
  if (!toks || !owned || !scores || !types) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  size_t off = 4;
  if (len < 4) {
    rc = ac_error(AC_EFORMAT, "%s: too short for a llama2.c tokenizer", path);
    goto done;
  }
  for (int32_t i = 0; i < n_vocab; i++) {
    int32_t n;
    if (len - off < 8) {
      rc = ac_error(AC_EFORMAT, "%s: ends after %d of %d tokens", path, i, n_vocab);
      goto done;
    }
    memcpy(&scores[i], data + off, 4);
    memcpy(&n, data + off + 4, 4);
    off += 8;
    if (n < 0 || (size_t)n > len - off || n > 1024) {
      rc = ac_error(AC_EFORMAT, "%s: token %d has a bad length %d", path, i, n);
      goto done;
    }
    const char *src = (const char *)data + off;
    off += n;
    // Each space becomes the 3-byte U+2581.
    char *t = malloc(3 * (size_t)n + 1), *o = t;
    if (!t) {
      rc = ac_error(AC_ENOMEM, "out of memory");
      goto done;
    }
    owned[i] = t;
    unsigned hx;
    char tail;
    if (i == 0) o += sprintf(o, "<unk>"), types[i] = AC_TOKEN_UNKNOWN;
    else if (i == 1) o += sprintf(o, "<s>"), types[i] = AC_TOKEN_CONTROL;
    else if (i == 2) o += sprintf(o, "</s>"), types[i] = AC_TOKEN_CONTROL;
    else {
      types[i] = n == 6 && sscanf(src, "<0x%2X%c", &hx, &tail) == 2 && tail == '>' ? AC_TOKEN_BYTE : AC_TOKEN_NORMAL;
      for (int k = 0; k < n; k++) {
        if (src[k] == ' ') memcpy(o, "\xe2\x96\x81", 3), o += 3;
        else *o++ = src[k];
      }
    }
    *o = 0;
    toks[i] = (ac_str_t){t, (uint64_t)(o - t)};
  }
  if ((rc = ac_gguf_set_str(w, "tokenizer.ggml.model", "llama")) ||
      (rc = ac_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, n_vocab)) ||
      (rc = ac_gguf_set_arr(w, "tokenizer.ggml.scores", AC_GGUF_FLOAT32, scores, n_vocab)) ||
      (rc = ac_gguf_set_arr(w, "tokenizer.ggml.token_type", AC_GGUF_INT32, types, n_vocab)) ||
      (rc = ac_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
      (rc = ac_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
      (rc = ac_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
      (rc = ac_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true)) ||
      (rc = ac_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", true)))
    goto done;
done:
  for (int32_t i = 0; owned && i < n_vocab; i++) free(owned[i]);
  free(owned);
  free(toks);
  free(scores);
  free(types);
  free(data);
  return rc;
}

int ac_convert_llama2c(const char *ckpt_path, const char *tok_path, const char *out_path) {
  uint8_t *data = NULL;
  size_t len = 0;
  int rc = ac_read_file(ckpt_path, 0, (char **)&data, &len);
  if (rc) return rc;
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  if (!w) {
    free(data);
    return ac_error(AC_ENOMEM, "out of memory");
  }
  int32_t h[7];
  if (len < sizeof h) {
    rc = ac_error(AC_EFORMAT, "%s: too short for a llama2.c checkpoint", ckpt_path);
    goto done;
  }
  memcpy(h, data, sizeof h);
  int32_t dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv = h[4], vocab = h[5], seq_len = h[6];
  bool shared = vocab > 0;
  if (vocab < 0) vocab = -vocab;
  if (dim <= 0 || hidden <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv <= 0 || vocab <= 0 || seq_len <= 0 ||
      dim % n_heads || n_heads % n_kv || dim > 65536 || hidden > 1 << 20 || n_layers > 1024 || vocab > 1 << 22) {
    rc = ac_error(AC_EFORMAT, "%s: implausible llama2.c header (dim %d, hidden %d, layers %d, heads %d/%d, vocab %d)",
                  ckpt_path, dim, hidden, n_layers, n_heads, n_kv, vocab);
    goto done;
  }
  int64_t hd = dim / n_heads, kvd = n_kv * hd, L = n_layers;
  // Float counts of each section in the checkpoint, in order.
  struct {
    const char *fmt;  // tensor name pattern ("%d" = layer), or NULL for skipped sections
    int64_t per_layer_ne0, per_layer_ne1;
    bool layered;
  } sec[] = {
      {"token_embd.weight", dim, vocab, false},
      {"blk.%d.attn_norm.weight", dim, 1, true},
      {"blk.%d.attn_q.weight", dim, dim, true},
      {"blk.%d.attn_k.weight", dim, kvd, true},
      {"blk.%d.attn_v.weight", dim, kvd, true},
      {"blk.%d.attn_output.weight", dim, dim, true},
      {"blk.%d.ffn_norm.weight", dim, 1, true},
      {"blk.%d.ffn_gate.weight", dim, hidden, true},
      {"blk.%d.ffn_down.weight", hidden, dim, true},
      {"blk.%d.ffn_up.weight", dim, hidden, true},
      {"output_norm.weight", dim, 1, false},
      {NULL, seq_len * hd / 2, 2, false},  // freq_cis_real, freq_cis_imag: RoPE is recomputed
      {"output.weight", dim, vocab, false},
  };
  int n_sec = shared ? 12 : 13;
  size_t off = sizeof h;
  for (int s = 0; s < n_sec; s++) {
    int reps = sec[s].layered ? (int)L : 1;
    size_t bytes = (size_t)sec[s].per_layer_ne0 * sec[s].per_layer_ne1 * 4;
    for (int l = 0; l < reps; l++) {
      if (len - off < bytes) {
        rc = ac_error(AC_EFORMAT, "%s: truncated checkpoint (section %d needs %zu bytes at %zu of %zu)", ckpt_path, s,
                      bytes, off, len);
        goto done;
      }
      if (sec[s].fmt) {
        char name[64];
        snprintf(name, sizeof name, sec[s].fmt, l);
        int64_t ne[2] = {sec[s].per_layer_ne0, sec[s].per_layer_ne1};
        if ((rc = ac_gguf_add_tensor(w, name, AC_TYPE_F32, ne[1] == 1 ? 1 : 2, ne, data + off, bytes))) goto done;
      }
      off += bytes;
    }
  }
  if (off != len) {
    rc = ac_error(AC_EFORMAT, "%s: %zu unexpected bytes after the weights", ckpt_path, len - off);
    goto done;
  }
  if ((rc = ac_gguf_set_str(w, "general.architecture", "llama")) ||
      (rc = ac_gguf_set_str(w, "general.name", "llama2.c checkpoint")) ||
      (rc = ac_gguf_set_u32(w, "general.file_type", 0)) ||
      (rc = ac_gguf_set_u32(w, "llama.context_length", seq_len)) ||
      (rc = ac_gguf_set_u32(w, "llama.embedding_length", dim)) ||
      (rc = ac_gguf_set_u32(w, "llama.block_count", n_layers)) ||
      (rc = ac_gguf_set_u32(w, "llama.feed_forward_length", hidden)) ||
      (rc = ac_gguf_set_u32(w, "llama.attention.head_count", n_heads)) ||
      (rc = ac_gguf_set_u32(w, "llama.attention.head_count_kv", n_kv)) ||
      (rc = ac_gguf_set_u32(w, "llama.rope.dimension_count", (uint32_t)hd)) ||
      (rc = ac_gguf_set_f32(w, "llama.rope.freq_base", 10000.0f)) ||
      (rc = ac_gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f)) ||
      (rc = load_llama2c_tokenizer(tok_path, vocab, w)))
    goto done;
  rc = ac_gguf_write(w, out_path);
done:
  ac_gguf_writer_destroy(&w);
  free(data);
  return rc;
}

// --- GGUF re-typing ----------------------------------------------------------------------------

int ac_convert_gguf(const char *in_path, const char *out_path, uint32_t type) {
  if (type != AC_TYPE_F16 && type != AC_TYPE_F32)
    return ac_error(AC_EINVAL, "convert writes f16 or f32; use 'acq quantize' for other types");
  ac_gguf_t *g = NULL;
  int rc = ac_gguf_open(in_path, &g);
  if (rc) return rc;
  ac_gguf_writer_t *w = ac_gguf_writer_new();
  int64_t nt = ac_gguf_n_tensors(g);
  void **bufs = calloc(nt ? nt : 1, sizeof *bufs);
  float *row = NULL;
  if (!w || !bufs) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < ac_gguf_n_kv(g); i++)
    if ((rc = ac_gguf_set_kv(w, ac_gguf_kv(g, i)))) goto done;
  uint32_t src_ft;
  if (ac_gguf_get_u32(g, "general.file_type", &src_ft) == 0 &&
      (rc = ac_gguf_set_u32(w, "agentcompress.source_file_type", src_ft)))
    goto done;
  if ((rc = ac_gguf_set_u32(w, "general.file_type", type == AC_TYPE_F16 ? 1 : 0))) goto done;
  int64_t max_row = 0;
  for (int64_t i = 0; i < nt; i++)
    if (ac_gguf_tensor(g, i)->ne[0] > max_row) max_row = ac_gguf_tensor(g, i)->ne[0];
  if (!(row = malloc(max_row * sizeof *row))) {
    rc = ac_error(AC_ENOMEM, "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < nt; i++) {
    const ac_gguf_tensor_t *t = ac_gguf_tensor(g, i);
    const ac_type_traits_t *tt = ac_type_traits(t->type);
    bool vector = t->n_dims == 1;
    uint32_t dst = vector ? AC_TYPE_F32 : type;
    if (!tt->to_float) {
      rc = ac_error(AC_EUNSUPPORTED, "tensor '%s': cannot dequantize type %s", t->name, tt->name);
      goto done;
    }
    int64_t rows = t->nbytes / ac_row_size(t->type, t->ne[0]);
    size_t src_rb = ac_row_size(t->type, t->ne[0]), dst_rb = ac_row_size(dst, t->ne[0]);
    if (!(bufs[i] = malloc(rows * dst_rb))) {
      rc = ac_error(AC_ENOMEM, "out of memory for tensor '%s'", t->name);
      goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
      tt->to_float((const uint8_t *)t->data + r * src_rb, row, t->ne[0]);
      if (dst == AC_TYPE_F32) memcpy((uint8_t *)bufs[i] + r * dst_rb, row, dst_rb);
      else ac_type_traits(AC_TYPE_F16)->from_float(row, (uint8_t *)bufs[i] + r * dst_rb, t->ne[0]);
    }
    if ((rc = ac_gguf_add_tensor(w, t->name, dst, t->n_dims, t->ne, bufs[i], rows * dst_rb))) goto done;
  }
  rc = ac_gguf_write(w, out_path);
done:
  for (int64_t i = 0; bufs && i < nt; i++) free(bufs[i]);
  free(bufs);
  free(row);
  ac_gguf_writer_destroy(&w);
  ac_gguf_close(&g);
  return rc;
}
