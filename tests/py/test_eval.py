"""acq eval: perplexity of two models, KL(base || variant), top-1 agreement and dPPL.

Checked three ways: a model against itself must give exactly zero divergence; the perplexities
must be exactly what `acq perplexity` prints for each model on the same text and window; and the
KL/top-1 numbers of one window must match a plain numpy computation from `acq logits`.
"""
import json
import re

import numpy as np
import pytest

from conftest import SHARED, acq

N_CTX = 128


def gsm8k_text(n):
    """The first n GSM8K test problems, formatted as acq eval's default text is."""
    out = []
    with open(SHARED / "data" / "gsm8k" / "test.jsonl") as f:
        for line in f:
            if len(out) == n:
                break
            o = json.loads(line)
            out.append(f"Question: {o['question']}\nAnswer: {o['answer']}\n\n")
    return "".join(out)


@pytest.fixture(scope="module")
def text4(tmp_path_factory):
    """About 580 SmolLM2 tokens: 4 windows of 128."""
    p = tmp_path_factory.mktemp("eval") / "gsm8k4.txt"
    p.write_text(gsm8k_text(4))
    return p


def eval_json(*args):
    return json.loads(acq("eval", *args, "--json").stdout)


# --- a model against itself -----------------------------------------------------------------------


def test_self_is_zero_on_default_text(stories_gguf, tmp_path):
    saved = tmp_path / "text.txt"
    r = eval_json(stories_gguf, stories_gguf, "-c", 64, "--gsm8k", 3, "--save-text", saved)
    assert r["text"]["source"] == "gsm8k" and r["text"]["gsm8k_problems"] == 3
    # The default text is built deterministically from GSM8K, exactly as documented.
    assert saved.read_text() == gsm8k_text(3)
    assert r["n_chunks"] == r["text"]["tokens"] // 64 and r["n_scored"] == r["n_chunks"] * 32
    assert r["kld_mean"] == 0.0 and r["kld_p99"] == 0.0 and r["kld_max"] == 0.0
    assert r["top1"] == 1.0 and r["top1_confident"] in (0.0, 1.0)
    assert r["dppl"] == 0.0 and r["ppl_base"] == r["ppl_variant"] and np.isfinite(r["ppl_base"])


def test_self_is_zero_smollm(smollm_q4_1, text4):
    r = eval_json(smollm_q4_1, smollm_q4_1, text4, "-c", N_CTX, "--chunks", 2, "-t", 2)
    assert r["n_chunks"] == 2 and r["n_scored"] == 2 * N_CTX // 2
    assert r["kld_mean"] == 0.0 and r["kld_max"] == 0.0
    assert r["top1"] == 1.0 and r["dppl"] == 0.0 and r["dppl_rel"] == 0.0


# --- F16 base against its Q4_1 source -----------------------------------------------------------


def test_f16_vs_q4_1_matches_perplexity(smollm_f16, smollm_q4_1, text4):
    r = eval_json(smollm_f16, smollm_q4_1, text4, "-c", N_CTX, "-t", 2)
    assert r["n_chunks"] == r["text"]["tokens"] // N_CTX >= 3
    assert r["kld_mean"] > 0 and r["kld_max"] >= r["kld_p99"] >= 0
    assert 0.5 < r["top1"] < 1
    assert 0 <= r["top1_confident"] <= 1 and r["n_confident"] > 0
    for key, model in (("ppl_base", smollm_f16), ("ppl_variant", smollm_q4_1)):
        assert np.isfinite(r[key])
        out = acq("perplexity", model, text4, "-c", N_CTX, "-t", 2).stdout
        m = re.search(r"perplexity: ([0-9.]+) over (\d+) tokens \((\d+) windows", out)
        assert m, out
        # acq perplexity prints 4 decimals: the same scoring gives the same number.
        assert abs(r[key] - float(m.group(1))) <= 0.6e-4, (key, r[key], out)
        assert int(m.group(2)) == r["n_scored"] and int(m.group(3)) == r["n_chunks"]
    assert r["dppl"] == pytest.approx(r["ppl_variant"] - r["ppl_base"], rel=1e-12, abs=1e-12)
    assert r["dppl_rel"] == pytest.approx(r["dppl"] / r["ppl_base"], rel=1e-12, abs=1e-12)


def test_one_window_against_numpy(smollm_f16, smollm_q4_1, text4, tmp_path):
    """KL, top-1, percentiles and perplexities of one window, recomputed in float64 numpy from
    the float32 logits `acq logits` writes for the same ids."""
    ids = [int(x) for x in acq("tokenize", smollm_f16, "--no-bos", "--no-special", "-f", text4).stdout.split()]
    assert len(ids) >= N_CTX
    # SmolLM2's tokenizer adds no BOS, so the window is the first N_CTX ids unchanged.
    win = ids[:N_CTX]
    lg = {}
    for name, model in (("base", smollm_f16), ("variant", smollm_q4_1)):
        out = tmp_path / f"{name}.f32"
        acq("logits", model, "--ids", " ".join(map(str, win)), "-o", out, "-t", 2)
        lg[name] = np.fromfile(out, dtype=np.float32).reshape(N_CTX, -1).astype(np.float64)
    first = N_CTX // 2
    rows = slice(first - 1, N_CTX - 1)  # these rows predict the second half
    tgt = np.array(win[first:])

    def log_softmax(x):
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    la, lb = log_softmax(lg["base"][rows]), log_softmax(lg["variant"][rows])
    kl = (np.exp(la) * (la - lb)).sum(-1)
    same = la.argmax(-1) == lb.argmax(-1)
    conf = np.exp(la.max(-1)) > 0.5
    idx = np.arange(len(tgt))
    want = {
        "kld_mean": kl.mean(),
        "kld_p99": np.percentile(kl, 99),
        "kld_max": kl.max(),
        "top1": same.mean(),
        "top1_confident": same[conf].mean(),
        "ppl_base": np.exp(-la[idx, tgt].mean()),
        "ppl_variant": np.exp(-lb[idx, tgt].mean()),
    }

    r = eval_json(smollm_f16, smollm_q4_1, text4, "-c", N_CTX, "--chunks", 1, "-t", 2)
    assert r["n_chunks"] == 1 and r["n_scored"] == N_CTX - first
    assert r["n_confident"] == int(conf.sum())
    for k, v in want.items():
        assert r[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k


# --- errors -----------------------------------------------------------------------------------------


def one_line_error(r):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_different_tokenizers(stories_gguf, smollm_q4_1, text4):
    line = one_line_error(acq("eval", stories_gguf, smollm_q4_1, text4, "-c", N_CTX, check=False))
    assert "different tokenizers" in line and "512" in line and "49152" in line


def test_missing_files(stories_gguf, tmp_path, text4):
    missing = tmp_path / "nope.gguf"
    line = one_line_error(acq("eval", missing, stories_gguf, text4, check=False))
    assert str(missing) in line
    line = one_line_error(acq("eval", stories_gguf, missing, text4, check=False))
    assert str(missing) in line
    line = one_line_error(acq("eval", stories_gguf, stories_gguf, tmp_path / "nope.txt", check=False))
    assert "nope.txt" in line


def test_text_too_short(stories_gguf, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time")
    line = one_line_error(acq("eval", stories_gguf, stories_gguf, short, "-c", 64, check=False))
    assert "needs at least 64" in line


def test_usage_errors(stories_gguf, text4):
    assert acq("eval", stories_gguf, check=False).returncode == 2
    assert acq("eval", stories_gguf, stories_gguf, text4, "--gsm8k", 3, check=False).returncode == 2
    assert acq("eval", stories_gguf, stories_gguf, "--chunks", 0, check=False).returncode == 2
    assert "GSM8K" in acq("eval", "--help").stdout
