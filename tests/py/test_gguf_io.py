"""GGUF files written by acq, read back by the `gguf` package, and loaded by llama.cpp."""
import struct

import gguf
import numpy as np
import pytest

from conftest import STORIES, acq


def fields(reader):
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        v = f.contents()
        out[name] = (f.types, v)
    return out


def test_llama2c_conversion_is_read_back_identically(stories_gguf):
    r = gguf.GGUFReader(stories_gguf)
    meta = {k: v for k, (_, v) in fields(r).items()}
    assert meta["general.architecture"] == "llama"
    assert meta["llama.embedding_length"] == 64
    assert meta["llama.block_count"] == 5
    assert meta["llama.attention.head_count"] == 8
    assert meta["llama.attention.head_count_kv"] == 4
    assert meta["llama.feed_forward_length"] == 172
    assert meta["tokenizer.ggml.model"] == "llama"
    toks = meta["tokenizer.ggml.tokens"]
    assert len(toks) == 512 and toks[:3] == ["<unk>", "<s>", "</s>"] and toks[3] == "<0x00>"
    assert toks[259] == "\u2581t"  # ' t' in tok512.bin: spaces are SentencePiece's U+2581 in GGUF
    assert meta["tokenizer.ggml.token_type"][3] == 6 and meta["tokenizer.ggml.token_type"][1] == 3

    # Tensor bytes equal the float32 slices of the checkpoint, in llama2.c's order.
    raw = (STORIES / "stories260K.bin").read_bytes()
    dim, hidden, L, nh, nkv, vocab, seq = struct.unpack("<7i", raw[:28])
    w = np.frombuffer(raw[28:], dtype=np.float32)
    by_name = {t.name: t for t in r.tensors}
    emb = w[: vocab * dim].reshape(vocab, dim)
    assert np.array_equal(by_name["token_embd.weight"].data, emb)
    off = vocab * dim + L * dim  # after rms_att
    hd = dim // nh
    wq = w[off: off + L * dim * dim].reshape(L, dim, dim)
    for l in range(L):
        assert np.array_equal(by_name[f"blk.{l}.attn_q.weight"].data, wq[l])
    assert by_name["blk.0.ffn_down.weight"].data.shape == (64, 172)
    assert "output.weight" not in by_name  # shared classifier: tied


def test_f16_conversion_metadata_and_bytes(smollm_q4_1, smollm_f16):
    src, dst = gguf.GGUFReader(smollm_q4_1), gguf.GGUFReader(smollm_f16)
    fs, fd = fields(src), fields(dst)
    for k, v in fs.items():
        if k == "general.file_type":
            continue
        assert fd[k][1] == v[1], k
        assert fd[k][0] == v[0], k
    assert fd["general.file_type"][1] == 1
    assert fd["agentcompress.source_file_type"][1] == 3
    dt = {t.name: t for t in dst.tensors}
    for t in src.tensors:
        d = dt[t.name]
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        if len(t.shape) == 1:
            assert d.tensor_type == gguf.GGMLQuantizationType.F32
            assert np.array_equal(d.data, ref)
        else:
            assert d.tensor_type == gguf.GGMLQuantizationType.F16
            # Our dequantize + f16 rounding must equal numpy's, bit for bit.
            assert np.array_equal(d.data.view(np.uint16), ref.astype(np.float16).view(np.uint16)), t.name


def test_llama_cpp_loads_what_acq_writes(stories_gguf, smollm_f16):
    llama_cpp = pytest.importorskip("llama_cpp")
    for path in (stories_gguf, smollm_f16):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
        toks = llm.tokenize(b"Once upon a time", add_bos=True)
        llm.eval(toks)
        assert np.isfinite(llm.scores[len(toks) - 1]).all()


def test_every_value_type_round_trips(tmp_path):
    """test_gguf --write writes one key of each GGUF value type; the gguf package reads them."""
    import os
    import subprocess
    exe = os.path.join(os.environ.get("AC_BIN", ""), "..", "tests", "test_gguf")
    out = tmp_path / "types.gguf"
    subprocess.run([exe, "--write", str(out)], check=True)
    meta = {k: v for k, (_, v) in fields(gguf.GGUFReader(out)).items()}
    assert meta["t.u8"] == 200 and meta["t.i8"] == -100
    assert meta["t.u16"] == 60000 and meta["t.i16"] == -30000
    assert meta["t.u32"] == 4000000000 and meta["t.i32"] == -2000000000
    assert meta["t.u64"] == 2**63 + 5 and meta["t.i64"] == -(2**62)
    assert meta["t.f32"] == pytest.approx(1.5) and meta["t.f64"] == 2.25
    assert meta["t.bool"] is True
    assert meta["t.str"] == "héllo wörld"
    assert meta["t.arr_i32"] == [1, -2, 3]
    assert meta["t.arr_str"] == ["a", "", "ccc"]
    r = gguf.GGUFReader(out)
    t = {t.name: t for t in r.tensors}
    assert np.array_equal(t["w"].data, np.arange(64, dtype=np.float32).reshape(2, 32))
    assert t["w"].data_offset % 32 == 0
