#!/usr/bin/env python3
"""Decode and prefill speed of `acq run` vs llama.cpp (llama-cpp-python) on the same GGUF file and
thread count, measured side by side (runs interleaved), medians of N runs, reported as ratios, and
each decode figure as a fraction of the memory-bandwidth bound (weight bytes / measured read GB/s).

usage: bench/engine_vs_llamacpp.py MODEL.gguf [MODEL.gguf ...] [--threads 1,2] [--runs 5]
                                   [--prompt-tokens 128] [--gen 128] [--out report.md]
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(os.environ.get("AC_BIN", ROOT / "build" / "bin"))

PROMPT_TEXT = ("The history of computing is a story of people, machines and ideas. " * 40)


def ours(model, threads, prompt_ids, n_gen):
    # acq run takes text: it gets the decoded prompt, which tokenizes back to the same ids.
    r = subprocess.run([str(BIN / "acq"), "run", str(model), "-f", "/dev/stdin", "-n", str(n_gen),
                        "-t", str(threads), "--ignore-eos"], input=ids_text_cache[model], capture_output=True,
                       text=True, errors="replace", check=True)
    m = re.search(r"prefill (\d+) tokens in ([0-9.]+) ms \(([0-9.]+) tok/s\); decode (\d+) tokens in ([0-9.]+) ms \(([0-9.]+) tok/s\)", r.stderr)
    if not m:
        raise RuntimeError(r.stderr)
    return float(m.group(3)), float(m.group(6)), int(m.group(1))


def theirs(llm, prompt_ids, n_gen):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    t1 = time.perf_counter()
    tok = int(llm.scores[len(prompt_ids) - 1].argmax())
    for _ in range(n_gen - 1):
        llm.eval([tok])
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
    t2 = time.perf_counter()
    return len(prompt_ids) / (t1 - t0), (n_gen - 1) / (t2 - t1)


ids_text_cache = {}


def bytes_per_token(model):
    """Weight bytes one decode step reads: every tensor, except the token embedding when the
    model has its own output matrix (then only one row of the embedding is read)."""
    import gguf
    r = gguf.GGUFReader(str(model))
    names = {t.name: int(t.n_bytes) for t in r.tensors}
    total = sum(names.values())
    if "output.weight" in names:
        total -= names.get("token_embd.weight", 0)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--out")
    a = ap.parse_args()
    import llama_cpp

    rows = []
    for th in map(int, a.threads.split(",")):
        bw = float(subprocess.run([str(BIN / "ac-membw"), str(th), "1024"], capture_output=True, text=True,
                                  check=True).stdout)
        for model in a.models:
            model = pathlib.Path(model)
            llm = llama_cpp.Llama(model_path=str(model), n_ctx=a.prompt_tokens + a.gen + 8, n_batch=512,
                                  n_threads=th, n_threads_batch=th, verbose=False)
            prompt_ids = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False)[: a.prompt_tokens]
            ids_text_cache[model] = llm.detokenize(prompt_ids).decode("utf-8", "replace")
            o_pf, o_dec, t_pf, t_dec = [], [], [], []
            for _ in range(a.runs):  # interleaved, so both see the same machine state
                p, d, n_eval = ours(model, th, prompt_ids, a.gen)
                o_pf.append(p), o_dec.append(d)
                p, d = theirs(llm, prompt_ids, a.gen)
                t_pf.append(p), t_dec.append(d)
            del llm
            bound = bw * 1e9 / bytes_per_token(model)
            med = statistics.median
            rows.append(dict(model=model.name, threads=th, ours_dec=med(o_dec), llama_dec=med(t_dec),
                             ours_pf=med(o_pf), llama_pf=med(t_pf), bound=bound, bw=bw, n_eval=n_eval))
            print(rows[-1], file=sys.stderr)

    lines = ["| model | threads | decode ours tok/s | decode llama.cpp tok/s | decode ratio | prefill ours tok/s |"
             " prefill llama.cpp tok/s | prefill ratio | decode bound tok/s (GB/s) | ours / bound | llama.cpp / bound |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['threads']} | {r['ours_dec']:.1f} | {r['llama_dec']:.1f} | "
                     f"**{r['ours_dec'] / r['llama_dec']:.2f}x** | {r['ours_pf']:.1f} | {r['llama_pf']:.1f} | "
                     f"{r['ours_pf'] / r['llama_pf']:.2f}x | {r['bound']:.1f} ({r['bw']:.1f}) | "
                     f"{r['ours_dec'] / r['bound']:.0%} | {r['llama_dec'] / r['bound']:.0%} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        pathlib.Path(a.out).write_text(f"medians of {a.runs} interleaved runs, prompt {a.prompt_tokens} tokens, "
                                       f"{a.gen} generated\n\n{table}\n")


if __name__ == "__main__":
    main()
