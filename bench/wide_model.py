#!/usr/bin/env python3
"""A LLaMA model with random weights whose rows are multiples of 256, so that every K-quant type
applies to every matrix (the demo model's 576-wide rows make K-quants fall back). Speed does not
depend on weight values, so this is the model for per-type decode benchmarks. The tokenizer is
copied from BASE so prompts tokenize as usual.

usage: bench/wide_model.py BASE.gguf OUT.gguf [--dim 1024 --ffn 2816 --layers 12 --heads 16 --kv 4]
"""
import argparse

import gguf
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv", type=int, default=4)
    a = ap.parse_args()
    r = gguf.GGUFReader(a.base)
    w = gguf.GGUFWriter(a.out, "llama")
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        t = f.types
        if t[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), t[0], sub_type=t[-1])
        else:
            w.add_key_value(name, f.contents(), t[0])
    vocab = len(r.fields["tokenizer.ggml.tokens"].contents())
    w.add_name("wide-random")
    w.add_context_length(2048)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv)
    w.add_rope_dimension_count(a.dim // a.heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)  # mostly F16
    rng = np.random.default_rng(7)
    hd = a.dim // a.heads

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(vocab, a.dim))
    w.add_tensor("output_norm.weight", np.ones(a.dim, np.float32))
    w.add_tensor("output.weight", mat(vocab, a.dim))
    for l in range(a.layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", np.ones(a.dim, np.float32))
        w.add_tensor(p + "attn_q.weight", mat(a.dim, a.dim))
        w.add_tensor(p + "attn_k.weight", mat(a.kv * hd, a.dim))
        w.add_tensor(p + "attn_v.weight", mat(a.kv * hd, a.dim))
        w.add_tensor(p + "attn_output.weight", mat(a.dim, a.dim))
        w.add_tensor(p + "ffn_norm.weight", np.ones(a.dim, np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(a.ffn, a.dim))
        w.add_tensor(p + "ffn_up.weight", mat(a.ffn, a.dim))
        w.add_tensor(p + "ffn_down.weight", mat(a.dim, a.ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
