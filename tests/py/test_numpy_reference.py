"""Our forward pass against an independent float64 numpy implementation (npref.py) of the same
architecture: a check that does not depend on llama.cpp. stories260K is F32, so the only
differences are the F16 KV cache and float32 sums; SmolLM2 F16 adds F16 rounding of the
activations that meet F16 weights."""
import numpy as np

from conftest import acq
from npref import NumpyLlama

IDS = [1, 403, 407, 261, 378, 275, 262, 384, 310, 260, 412, 270, 290, 427, 261, 270]


def ours(path, ids, tmp_path):
    out = tmp_path / "l.f32"
    acq("logits", path, "--ids", " ".join(map(str, ids)), "-o", out)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def test_stories260k_matches_float64_reference(stories_gguf, tmp_path):
    exact = NumpyLlama(stories_gguf).logits(IDS)
    got = ours(stories_gguf, IDS, tmp_path)
    d = np.abs(got - exact)
    # K, V, q and the attention probabilities are rounded to F16 (relative 5e-4), as in ggml;
    # over 5 layers that is ~0.03 on logits of magnitude ~10.
    assert d.mean() < 0.01 and d.max() < 0.06, (d.mean(), d.max())
    assert np.array_equal(got.argmax(1), exact.argmax(1))


def test_smollm2_f16_matches_float64_reference(smollm_f16, tmp_path):
    ids = [504, 3575, 282, 4649, 314, 253, 1345, 1500, 28, 281, 260, 5266, 4355, 284, 3465, 30]
    exact = NumpyLlama(smollm_f16).logits(ids)
    got = ours(smollm_f16, ids, tmp_path)
    d = np.abs(got - exact)
    # Logits span ~60 units; F16 activations and KV cache put us ~0.01 from exact on average.
    assert d.mean() < 0.03 and d.max() < 0.2, (d.mean(), d.max())
    assert (got.argmax(1) == exact.argmax(1)).mean() >= 0.9
