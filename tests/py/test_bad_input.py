"""Malformed model files and bad arguments: a non-zero exit and one clear line, never a crash."""
import struct

import numpy as np
import pytest

from conftest import acq

# --- a tiny GGUF builder that can be told to lie ------------------------------------------------


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(k, v):
    return s(k) + struct.pack("<II", 4, v)


def kv_f32(k, v):
    return s(k) + struct.pack("<If", 6, v)


def kv_str(k, v):
    return s(k) + struct.pack("<I", 8) + s(v)


def kv_arr_str(k, vs):
    return s(k) + struct.pack("<IIQ", 9, 8, len(vs)) + b"".join(s(v) for v in vs)


def kv_arr_f32(k, vs):
    return s(k) + struct.pack("<IIQ", 9, 6, len(vs)) + struct.pack(f"<{len(vs)}f", *vs)


def kv_arr_i32(k, vs):
    return s(k) + struct.pack("<IIQ", 9, 5, len(vs)) + struct.pack(f"<{len(vs)}i", *vs)


E, V, FF, L = 32, 8, 32, 1
VOCAB = ["<unk>", "<s>", "</s>", "\u2581a", "b", "c", "\u2581ab", "d"]


def model_kvs(skip=()):
    kvs = {
        "general.architecture": kv_str("general.architecture", "llama"),
        "llama.block_count": kv_u32("llama.block_count", L),
        "llama.embedding_length": kv_u32("llama.embedding_length", E),
        "llama.feed_forward_length": kv_u32("llama.feed_forward_length", FF),
        "llama.attention.head_count": kv_u32("llama.attention.head_count", 4),
        "llama.context_length": kv_u32("llama.context_length", 64),
        "tokenizer.ggml.model": kv_str("tokenizer.ggml.model", "llama"),
        "tokenizer.ggml.tokens": kv_arr_str("tokenizer.ggml.tokens", VOCAB),
        "tokenizer.ggml.scores": kv_arr_f32("tokenizer.ggml.scores", [0.0] * 3 + [-1.0, -2.0, -3.0, -0.5, -4.0]),
        "tokenizer.ggml.token_type": kv_arr_i32("tokenizer.ggml.token_type", [2, 3, 3, 1, 1, 1, 1, 1]),
        "tokenizer.ggml.bos_token_id": kv_u32("tokenizer.ggml.bos_token_id", 1),
        "tokenizer.ggml.eos_token_id": kv_u32("tokenizer.ggml.eos_token_id", 2),
    }
    return [v for k, v in kvs.items() if k not in skip]


def model_tensors():
    ts = [("token_embd.weight", [E, V]), ("output_norm.weight", [E])]
    for n, shp in [("attn_norm", [E]), ("attn_q", [E, E]), ("attn_k", [E, E]), ("attn_v", [E, E]),
                   ("attn_output", [E, E]), ("ffn_norm", [E]), ("ffn_gate", [E, FF]), ("ffn_up", [E, FF]),
                   ("ffn_down", [FF, E])]:
        ts.append((f"blk.0.{n}.weight", shp))
    return ts


def build(path, kvs=None, tensors=None, magic=b"GGUF", version=3, n_tensors=None, n_kv=None,
          type_of=lambda name: 0, offset_of=None, dims_of=None):
    kvs = model_kvs() if kvs is None else kvs
    tensors = model_tensors() if tensors is None else tensors
    rng = np.random.default_rng(0)
    infos, blobs, off = b"", b"", 0
    for name, shp in tensors:
        n = int(np.prod(shp))
        data = (rng.standard_normal(n).astype(np.float32) * 0.1).tobytes()
        o = offset_of(name, off) if offset_of else off
        d = dims_of(name, shp) if dims_of else shp
        infos += s(name) + struct.pack("<I", len(d)) + b"".join(struct.pack("<Q", x) for x in d)
        infos += struct.pack("<IQ", type_of(name), o)
        blobs += data + b"\0" * ((-len(data)) % 32)
        off += len(data) + ((-len(data)) % 32)
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    meta = head + b"".join(kvs) + infos
    meta += b"\0" * ((-len(meta)) % 32)
    path.write_bytes(meta + blobs)
    return path


def fails_cleanly(path, *cmd, want=None):
    for args in (["info", path], ["run", path, "-p", "a", "-n", "2"]) if not cmd else [cmd]:
        r = acq(*args, check=False)
        assert r.returncode == 1, (args, r.returncode, r.stderr)  # not a signal, not usage
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("acq: "), r.stderr
        assert "Sanitizer" not in r.stderr
        if want:
            assert want in lines[0], lines[0]
        if not cmd and args[0] == "info" and want is None:
            break
    return r.stderr


def test_valid_tiny_model_runs(tmp_path):
    p = build(tmp_path / "ok.gguf")
    assert acq("info", p).returncode == 0
    r = acq("run", p, "-p", "ab", "-n", "3")
    assert r.returncode == 0


def test_wrong_magic(tmp_path):
    fails_cleanly(build(tmp_path / "m.gguf", magic=b"GGUX"), want="bad magic")


def test_unsupported_version(tmp_path):
    fails_cleanly(build(tmp_path / "v.gguf", version=7), want="version 7")


@pytest.mark.parametrize("cut", [10, 30, 100, 700, 2000, -100, -1])
def test_truncated_file(tmp_path, cut):
    p = build(tmp_path / "t.gguf")
    data = p.read_bytes()
    p.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut])
    err = fails_cleanly(p)
    assert "truncated" in err or "past the end" in err or "too small" in err


def test_offset_past_end(tmp_path):
    p = build(tmp_path / "o.gguf", offset_of=lambda n, o: o + (1 << 30) if n == "blk.0.attn_q.weight" else o)
    fails_cleanly(p, want="blk.0.attn_q.weight")


def test_misaligned_offset(tmp_path):
    p = build(tmp_path / "a.gguf", offset_of=lambda n, o: o + 4 if n == "output_norm.weight" else o)
    fails_cleanly(p, want="not aligned")


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
def test_absurd_counts(tmp_path, field):
    p = build(tmp_path / "c.gguf", **{field: 1 << 60})
    fails_cleanly(p, want="absurd")


def test_absurd_dims(tmp_path):
    p = build(tmp_path / "d.gguf", dims_of=lambda n, shp: [E, 1 << 50] if n == "token_embd.weight" else shp)
    fails_cleanly(p, want="token_embd.weight")
    p = build(tmp_path / "d2.gguf", dims_of=lambda n, shp: [E, 1, 1, 1, 1] if n == "token_embd.weight" else shp)
    fails_cleanly(p, want="dimensions")


def test_unknown_tensor_type(tmp_path):
    p = build(tmp_path / "u.gguf", type_of=lambda n: 99 if n == "blk.0.ffn_up.weight" else 0)
    fails_cleanly(p, want="blk.0.ffn_up.weight")


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length", "tokenizer.ggml.tokens",
                                 "general.architecture", "llama.attention.head_count"])
def test_missing_required_key(tmp_path, key):
    p = build(tmp_path / "k.gguf", kvs=model_kvs(skip=(key,)))
    r = acq("info", p, check=False)
    assert r.returncode == 0  # the file itself is well-formed
    fails_cleanly(p, "run", p, "-p", "a", want=key)


def test_missing_tensor_and_wrong_shape(tmp_path):
    ts = [t for t in model_tensors() if t[0] != "blk.0.attn_k.weight"]
    fails_cleanly(build(tmp_path / "mt.gguf", tensors=ts), "run", tmp_path / "mt.gguf", "-p", "a", want="blk.0.attn_k.weight")
    ts = [(n, [E, 16] if n == "blk.0.ffn_up.weight" else shp) for n, shp in model_tensors()]
    fails_cleanly(build(tmp_path / "ws.gguf", tensors=ts), "run", tmp_path / "ws.gguf", "-p", "a", want="blk.0.ffn_up.weight")


def test_prompt_longer_than_context(tmp_path):
    p = build(tmp_path / "ok.gguf")
    fails_cleanly(p, "run", p, "-p", "ab " * 200, "-c", "16", want="longer than the context")


def test_not_a_file_and_missing_file(tmp_path):
    fails_cleanly(tmp_path / "nope.gguf", "info", tmp_path / "nope.gguf", want="cannot open")
    fails_cleanly(tmp_path, "info", tmp_path, want="not a regular file")


def test_random_garbage_never_crashes(tmp_path):
    good = build(tmp_path / "g.gguf").read_bytes()
    rng = np.random.default_rng(1)
    for i in range(60):
        b = bytearray(good)
        for _ in range(8):
            b[rng.integers(8, len(b))] = rng.integers(0, 256)
        p = tmp_path / f"f{i}.gguf"
        p.write_bytes(bytes(b))
        for args in (["info", p], ["run", p, "-p", "ab", "-n", "2"]):
            r = acq(*args, check=False)
            assert r.returncode in (0, 1), (i, args, r.returncode, r.stderr[-500:])
            assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
