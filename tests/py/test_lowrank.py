"""`acq lowrank`: truncated-SVD factors checked against numpy's optimum (Eckart–Young), run by
the engine with quality that degrades monotonically with the energy kept, and clear errors that
leave no file behind."""
import json
import re

import gguf
import numpy as np
import pytest

from conftest import SHARED, acq
from test_stories import published_text

# --- helpers ---------------------------------------------------------------------------------


def tensors(reader, names=None):
    """name -> (numpy array as float64, ggml type) for the tensors whose names start with one of
    `names` (all if None). Readers are opened once per file: parsing a 49152-token vocabulary
    takes seconds."""
    return {t.name: (np.array(t.data, dtype=np.float64), t.tensor_type) for t in reader.tensors
            if names is None or t.name.startswith(tuple(names))}


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def reader(path):
    return gguf.GGUFReader(str(path))


def ppl(path, text, *extra):
    out = acq("perplexity", path, text, *extra).stdout
    return float(re.search(r"perplexity: ([0-9.]+|inf|nan)", out).group(1))


def logits(path, prompt, tmp_path, tag):
    out = tmp_path / f"{tag}.f32"
    acq("logits", path, "-p", prompt, "-o", out)
    return np.fromfile(out, dtype=np.float32)


def copy_gguf(src, dst, arch=None, edit=None):
    """Rewrites src as dst with the gguf package: another architecture name, and/or
    edit(name, array) -> (array, raw_dtype or None) for each tensor."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch or field(r, "general.architecture"))
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        t = f.types
        if t[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), t[0], sub_type=t[-1])
        else:
            w.add_key_value(k, f.contents(), t[0])
    for t in r.tensors:
        a, raw = np.array(t.data), None
        if edit:
            a, raw = edit(t.name, a)
        w.add_tensor(t.name, a, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --- (1) the factors are the optimal truncation -------------------------------------------------


def test_factors_reach_the_eckart_young_optimum(smollm_f16, tmp_path):
    out = tmp_path / "r64.gguf"
    # ffn_up is tall (1536 x 576), ffn_down wide (576 x 1536): both orientations of the code.
    names = ["blk.0.ffn_up.weight", "blk.0.ffn_down.weight"]
    r = acq("lowrank", smollm_f16, out, "--rank", "64", "--tensors", ",".join(names), "--type", "f32", "-t", "2")
    assert "factored 2 of 2 matrices" in r.stderr
    ro = reader(out)
    base, ours = tensors(reader(smollm_f16), names), tensors(ro, names)
    for name in names:
        W = base[name][0]  # (out, in)
        A, ta = ours[name + ".lr_a"]
        B, tb = ours[name + ".lr_b"]
        assert name not in ours
        assert ta == tb == gguf.GGMLQuantizationType.F32
        assert A.shape == (64, W.shape[1]) and B.shape == (W.shape[0], 64)
        s = np.linalg.svd(W, compute_uv=False)
        optimum = np.sqrt((s[64:] ** 2).sum())
        err = np.linalg.norm(W - B @ A)
        assert abs(err / optimum - 1) < 1e-6, (name, err, optimum)  # measured: ~1e-16
        # The convention: A = Vᵀ has orthonormal rows, B = UΣ carries the scale.
        assert np.allclose(A @ A.T, np.eye(64), atol=1e-5)
        assert np.allclose(np.linalg.norm(B, axis=0), s[:64], rtol=1e-4)
    assert field(ro, "agentcompress.lowrank.method") == "svd"
    assert field(ro, "agentcompress.lowrank.rank") == 64
    assert field(ro, "agentcompress.lowrank.tensors") == 2


def test_energy_picks_the_smallest_sufficient_rank(stories_gguf, tmp_path):
    out = tmp_path / "e.gguf"
    acq("lowrank", stories_gguf, out, "--energy", "0.8", "--tensors", "ffn_gate,attn_q")
    ro = reader(out)
    base, ours = tensors(reader(stories_gguf)), tensors(ro)
    n = 0
    for name, (W, _) in base.items():
        if name + ".lr_a" not in ours:
            continue
        n += 1
        s2 = np.linalg.svd(W, compute_uv=False) ** 2
        want = int(np.searchsorted(np.cumsum(s2), 0.8 * s2.sum() * (1 - 1e-12)) + 1)
        assert ours[name + ".lr_a"][0].shape[0] == want, name
    assert n == 10  # five layers, two matrices each
    assert abs(field(ro, "agentcompress.lowrank.energy") - 0.8) < 1e-6


# --- (2) the engine runs the variants; quality follows the energy kept ---------------------------


def test_energy_099_keeps_stories_dense_and_identical(stories_gguf, tmp_path):
    # stories260K is 64 wide: keeping 99% of the energy needs ranks for which two factors hold
    # more numbers than the matrix, so every matrix must stay dense.
    out = tmp_path / "e99.gguf"
    r = acq("lowrank", stories_gguf, out, "--energy", "0.99")
    assert "factored 0 of 35" in r.stderr and r.stderr.count("kept dense") == 35
    text = published_text()[:300]
    assert np.array_equal(logits(out, text, tmp_path, "v"), logits(stories_gguf, text, tmp_path, "b"))


def test_mild_variant_stays_close_and_quality_is_monotone(stories_gguf, tmp_path):
    text = published_text()
    base_l = logits(stories_gguf, text, tmp_path, "base").reshape(-1, 512)
    f = tmp_path / "t.txt"
    f.write_text(text * 3)
    ppls, agree = {}, {}
    for e in ("0.5", "0.9", "0.97"):
        out = tmp_path / f"e{e}.gguf"
        r = acq("lowrank", stories_gguf, out, "--energy", e, "-t", "2")
        assert re.search(r"factored [1-9]\d* of 35", r.stderr)
        assert "low-rank factors" in acq("info", out).stdout
        gen = acq("run", out, "-p", "Once upon a time", "-n", "20").stdout
        assert len(gen) > 20
        lg = logits(out, text, tmp_path, e).reshape(-1, 512)
        agree[e] = (lg.argmax(1) == base_l.argmax(1)).mean()
        ppls[e] = ppl(out, f, "-c", "128")
    base_ppl = ppl(stories_gguf, f, "-c", "128")
    # 0.97 factors the attention q/k projections (relative error ~0.17 each): still close.
    assert agree["0.97"] >= 0.9 and ppls["0.97"] < 1.2 * base_ppl
    assert base_ppl < ppls["0.97"] < ppls["0.9"] < ppls["0.5"]
    assert agree["0.97"] > agree["0.9"] > agree["0.5"]


def test_threads_do_not_change_the_file(stories_gguf, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    acq("lowrank", stories_gguf, a, "--energy", "0.9", "-t", "1")
    acq("lowrank", stories_gguf, b, "--energy", "0.9", "-t", "2")
    assert a.read_bytes() == b.read_bytes()


# --- (3) SmolLM2: smaller file, runs, finite perplexity, marked as our extension -----------------


def test_smollm_rank64_ffn(smollm_f16, tmp_path):
    out = tmp_path / "sm.gguf"
    r = acq("lowrank", smollm_f16, out, "--rank", "64", "--tensors", "blk.0.ffn,blk.1.ffn", "-t", "2")
    assert "factored 6 of 6" in r.stderr
    assert out.stat().st_size < smollm_f16.stat().st_size
    info = acq("info", out).stdout
    assert "extension: agentcompress low-rank factors (6 matrices" in info and "llama.cpp cannot load" in info
    assert len(acq("run", out, "-p", "The capital of France is", "-n", "8").stdout) > 0
    qs = [json.loads(l)["question"] for l in (SHARED / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()[:12]]
    text = tmp_path / "q.txt"
    text.write_text("\n\n".join(qs))
    p_var, p_base = ppl(out, text, "-c", "128", "-t", "2"), ppl(smollm_f16, text, "-c", "128", "-t", "2")
    assert np.isfinite(p_var) and p_var > 0.99 * p_base


# --- (4) errors: one line, exit 1, no file ------------------------------------------------------


def _nan_in_wq(name, a):
    if name == "blk.2.attn_q.weight":
        a = a.copy()
        a[3, 5] = np.nan
    return a, None


def _unknown_type_wq(name, a):
    if name == "blk.0.attn_q.weight":  # 64 x 64 as IQ4_NL: 2 blocks of 18 bytes per row
        return np.zeros((64, 36), dtype=np.uint8), gguf.GGMLQuantizationType.IQ4_NL
    return a, None


BAD = {
    "rank0": (["--rank", "0"], None, "rank 0 must be at least 1"),
    "rank_too_big": (["--rank", "40"], None, "larger than min(in, out) = 32"),
    "rank_not_a_number": (["--rank", "8x"], None, "not a whole number"),
    "energy0": (["--energy", "0"], None, "(0, 1]"),
    "energy_big": (["--energy", "1.5"], None, "(0, 1]"),
    "no_match": (["--rank", "8", "--tensors", "nonexistent"], None, "matched no matrix"),
    "tied_output": (["--rank", "8", "--tensors", "output"], None, "tied to token_embd"),
    "token_embd": (["--rank", "8", "--tensors", "token_embd"], None, "never factored"),
    "empty_item": (["--rank", "8", "--tensors", "attn,,ffn"], None, "empty item"),
    "bad_type": (["--rank", "8", "--type", "q4_0"], None, "--type must be"),
    "arch": (["--rank", "8"], ("gpt2", None), "architecture 'gpt2' is not supported"),
    "type": (["--rank", "8"], (None, _unknown_type_wq), "blk.0.attn_q.weight"),
    "nan": (["--rank", "8"], (None, _nan_in_wq), "non-finite"),
    "missing": (["--rank", "8"], "missing", "missing.gguf"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_1_and_no_file(case, stories_gguf, tmp_path):
    args, src, msg = BAD[case]
    inp = stories_gguf
    if src == "missing":
        inp = tmp_path / "missing.gguf"
    elif src:
        inp = tmp_path / "in.gguf"
        copy_gguf(stories_gguf, inp, arch=src[0], edit=src[1])
    out = tmp_path / "out.gguf"
    r = acq("lowrank", inp, out, *args, check=False)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.glob("out.gguf*"))
