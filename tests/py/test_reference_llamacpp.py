"""SmolLM2-135M-Instruct (Q4_1 as shipped, and its F16 form written by acq) against llama.cpp on
the same file: logits at every position of several prompts, top-1 tokens, and greedy 64-token
continuations.

The tolerance, and why it is measured rather than fixed. Both engines follow ggml's numerics:
activations are rounded to each weight's dot type (Q8_1 for Q4_1, Q8_0 for the Q8_0 embedding,
F16 for F16) and the KV cache is F16. Rounding is discontinuous, and SmolLM2 has a few huge
activation channels, so a 1e-7 relative change upstream flips some rounded values and moves the
Q4_1 logits by ~0.2 on average (measured: perturbing our normed activations by 1e-7 moves them by
0.21). llama.cpp shows the same against itself: with flash attention on vs off (the same
attention, summed in another order) its own Q4_1 logits differ by 0.15-0.25 on average, up to
1.8, and its top-1 token flips where the top two are nearly tied. So the noise floor is measured
here, each run, as llama.cpp(flash attention on) vs llama.cpp(off), and we require our distance
to llama.cpp to stay within 1.5x that floor; a real arithmetic bug moves logits by whole units.
"""
import numpy as np
import pytest

from conftest import acq

llama_cpp = pytest.importorskip("llama_cpp")

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_Q = "What is 12 times 7? Answer briefly."
PROMPTS = {
    "plain": "The capital of France is",
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "gsm8k": ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
              "clips in May. How many clips did Natalia sell altogether in April and May? "
              "Let's think step by step."),
    "list": "Three facts about the Moon:\n1.",
    "chat": f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{CHAT_Q}<|im_end|>\n<|im_start|>assistant\n",
}
SLACK = 1.5


class Peer:
    """llama.cpp on one file, with flash attention off (its default) and on."""

    def __init__(self, path):
        kw = dict(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False)
        self.off = llama_cpp.Llama(flash_attn=False, **kw)
        self.on = llama_cpp.Llama(flash_attn=True, **kw)

    def ids(self, text):
        return self.off.tokenize(text.encode(), add_bos=False, special=True)

    @staticmethod
    def logits(llm, ids):
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    @staticmethod
    def greedy(llm, ids, n):
        """Greedy tokens (stopping at end-of-generation) and llama.cpp's top-2 margin at each."""
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        llm.reset()
        llm.eval(ids)
        out, margins = [], []
        for _ in range(n):
            row = np.asarray(llm.scores[llm.n_tokens - 1])
            tok = int(np.argmax(row))
            top2 = np.partition(row, -2)[-2:]
            margins.append(float(top2[1] - top2[0]))
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            out.append(tok)
            llm.eval([tok])
        return out, margins

    def text(self, toks):
        return self.off.detokenize(toks).decode("utf-8", errors="replace")


@pytest.fixture(scope="module", params=["q4_1", "f16"])
def setup(request, smollm_q4_1, smollm_f16, tmp_path_factory):
    path = smollm_q4_1 if request.param == "q4_1" else smollm_f16
    peer = Peer(path)
    tmp = tmp_path_factory.mktemp("logits")
    rows = {}
    for name, text in PROMPTS.items():
        ids = peer.ids(text)
        out = tmp / f"{name}.f32"
        r = acq("logits", path, "--ids", " ".join(map(str, ids)), "-o", out, "-t", "2")
        assert list(map(int, r.stdout.split())) == ids
        ours = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)
        rows[name] = dict(ids=ids, ours=ours, off=Peer.logits(peer.off, ids), on=Peer.logits(peer.on, ids))
    return request.param, path, peer, rows


def test_logits_within_llama_cpp_self_disagreement(setup):
    kind, _, _, rows = setup
    ours = np.concatenate([np.abs(r["ours"] - r["off"]).ravel() for r in rows.values()])
    floor = np.concatenate([np.abs(r["on"] - r["off"]).ravel() for r in rows.values()])
    print(f"{kind}: ours vs llama.cpp mean {ours.mean():.4f} max {ours.max():.3f}; "
          f"llama.cpp vs itself mean {floor.mean():.4f} max {floor.max():.3f}")
    assert ours.mean() <= SLACK * floor.mean()
    assert ours.max() <= SLACK * floor.max()
    # Absolute sanity: F16 agrees to a few hundredths; Q4_1 stays within its rounding noise.
    assert ours.max() < (0.15 if kind == "f16" else 3.0)


def test_top1_identical_at_every_position(setup):
    """The issue's criterion: identical top-1 at every position of >= 3 prompts, one a chat.
    Where llama.cpp's own top two are closer than its self-disagreement, a flip is noise, so
    those positions are excluded from the all-prompts check below and counted instead."""
    kind, _, _, rows = setup
    identical = [n for n, r in rows.items() if np.array_equal(r["ours"].argmax(1), r["off"].argmax(1))]
    print(f"{kind}: top-1 identical at every position for {identical}")
    assert "chat" in identical and len(identical) >= 3
    floor = max(np.abs(r["on"] - r["off"]).max() for r in rows.values())
    for name, r in rows.items():
        s = np.sort(r["off"], axis=1)
        clear = (s[:, -1] - s[:, -2]) > floor
        assert np.array_equal(r["ours"].argmax(1)[clear], r["off"].argmax(1)[clear]), name


def test_greedy_64_tokens_identical(setup):
    """Greedy text equal to llama.cpp's (flash attention off, or on: both are llama.cpp) for
    every prompt on F16 and >= 3 prompts, one a chat, on Q4_1, where llama.cpp's two paths
    themselves disagree on several of these prompts (see the module docstring). On every prompt
    the token streams must agree up to a near-tie: where ours first differs, llama.cpp's own top
    two were closer than its self-disagreement."""
    kind, path, peer, rows = setup
    floor = max(np.abs(r["on"] - r["off"]).max() for r in rows.values())
    same, llama_self = [], []
    for name, text in PROMPTS.items():
        ids = peer.ids(text)
        want_off, margins = Peer.greedy(peer.off, ids, 64)
        want_on, _ = Peer.greedy(peer.on, ids, 64)
        if name == "chat":  # --chat builds the same ChatML prompt, default system message included
            r = acq("run", path, "--chat", "-p", CHAT_Q, "-n", "64", "-t", "2", "--print-ids")
        else:
            r = acq("run", path, "-p", text, "-n", "64", "-t", "2", "--print-ids")
        got_ids = [int(x) for x in r.stderr.split("acq: ids:")[1].split()]
        if r.stdout in (peer.text(want_off), peer.text(want_on)) and want_off:
            same.append(name)
        if want_off == want_on:
            llama_self.append(name)
        k = 0
        while k < min(len(got_ids), len(want_off)) and got_ids[k] == want_off[k]:
            k += 1
        if k < len(want_off) and r.stdout not in (peer.text(want_off), peer.text(want_on)):
            assert margins[k] < floor, f"{name}: diverged at token {k} where llama.cpp's margin was {margins[k]:.3f}"
    print(f"{kind}: greedy identical for {same}; llama.cpp self-consistent for {llama_self}")
    if kind == "f16":
        assert set(same) >= set(llama_self) and len(same) >= 4
    else:
        assert "chat" in same and len(same) >= 3
