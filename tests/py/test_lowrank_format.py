"""The low-rank GGUF extension as the engine reads it: X.weight stored as X.weight.lr_a [in, r]
and X.weight.lr_b [r, out] with W = B·A. Factoring a real stories260K matrix exactly (A = I,
B = W) must give bit-identical logits; a wrong factorization must not."""
import gguf
import numpy as np

from conftest import acq

IDS = "1 403 407 261 378 275 262 384 310 260 412 270"


def write_factored(src, dst, name, make_factors):
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        t = f.types
        if t[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), t[0], sub_type=t[-1])
        else:
            w.add_key_value(k, f.contents(), t[0])
    for t in r.tensors:
        if t.name == name:
            a, b = make_factors(np.array(t.data))  # W is (out, in) as numpy sees it
            w.add_tensor(name + ".lr_a", np.ascontiguousarray(a, dtype=np.float32))
            w.add_tensor(name + ".lr_b", np.ascontiguousarray(b, dtype=np.float32))
        else:
            w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def logits(path, tmp_path, tag):
    out = tmp_path / f"{tag}.f32"
    acq("logits", path, "--ids", IDS, "-o", out)
    return np.fromfile(out, dtype=np.float32)


def test_exact_factors_give_identical_logits(stories_gguf, tmp_path):
    f = tmp_path / "f.gguf"
    # ffn_up: W (172, 64) = B (172, 64) @ A (64, 64) with A = I.
    write_factored(stories_gguf, f, "blk.1.ffn_up.weight", lambda W: (np.eye(W.shape[1]), W))
    info = acq("info", f).stdout
    assert "blk.1.ffn_up.weight.lr_a" in info and "llama.cpp cannot load this file" in info
    assert np.array_equal(logits(f, tmp_path, "f"), logits(stories_gguf, tmp_path, "base"))


def test_truncated_factors_change_logits_and_svd_rank_is_close(stories_gguf, tmp_path):
    base = logits(stories_gguf, tmp_path, "base")

    def svd(rank):
        def make(W):
            u, s, vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
            return vt[:rank], u[:, :rank] * s[:rank]
        return make

    errs = []
    for rank in (8, 32, 64):
        f = tmp_path / f"r{rank}.gguf"
        write_factored(stories_gguf, f, "blk.2.ffn_down.weight", svd(rank))
        errs.append(np.abs(logits(f, tmp_path, f"r{rank}") - base).max())
    assert errs[0] > errs[1] > errs[2]  # more rank, closer to the base
    # Full rank (64 = min dim) reproduces it up to float rounding, which the f16 KV cache can turn
    # into one f16 step of a logit (measured 1e-4 to 2.4e-3 with AVX-512 / AVX2 kernels).
    assert errs[2] < 5e-3 and errs[2] < errs[1] / 4, errs


def test_bad_factor_shapes_are_clear_errors(stories_gguf, tmp_path):
    f = tmp_path / "bad.gguf"
    write_factored(stories_gguf, f, "blk.0.attn_q.weight", lambda W: (np.eye(64)[:16], W[:, :8]))
    r = acq("run", f, "-p", "a", "-n", "1", check=False)
    assert r.returncode == 1 and "blk.0.attn_q.weight" in r.stderr and len(r.stderr.strip().splitlines()) == 1
