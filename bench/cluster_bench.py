#!/usr/bin/env python3
"""Cluster benchmarks (issue 4): router overhead and throughput, and reload time per variant.

  overhead: a cluster on stories260K; many 1-token tasks from C concurrent clients. The router
            measures received -> dispatched (inference excluded) itself; we read its p50/p99 over
            the run through an AdminRequest "stats", and count tasks/s at the client.
  reload:   a cluster of one worker on the zoo; `acctl reload w0 V --wait` for every variant,
            with the file evicted from the page cache (cold) and just read (warm), next to the
            time `cat FILE > /dev/null` takes in the same state. Medians of --runs.

usage: bench/cluster_bench.py [--zoo DIR] [--tasks 5000] [--clients 8] [--runs 3] [--out report.md]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "py"))
os.environ.setdefault("AC_BIN", str(ROOT / "build" / "bin"))
from cluster import Client, Cluster, pb  # noqa: E402
from conftest import BIN, STORIES  # noqa: E402


def router_stats(endpoint):
    import zmq
    P = pb()
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send(P.Envelope(version=1, admin_request=P.AdminRequest(command="stats")).SerializeToString())
    assert s.poll(5000), "router did not answer stats"
    env = P.Envelope()
    env.ParseFromString(s.recv())
    s.close()
    return json.loads(env.admin_reply.json)


def overhead(tasks, clients, workdir):
    zoo = workdir / "stories-zoo"
    zoo.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "acq"), "convert", "--llama2c", str(STORIES / "stories260K.bin"), "--tokenizer",
                    str(STORIES / "tok512.bin"), "-o", str(zoo / "full.gguf")], check=True, capture_output=True)
    with Cluster(zoo, workers=2, variants=["full", "full"], slots=16) as cl:
        cs = [Client(cl.router) for _ in range(clients)]
        per = tasks // clients
        t0 = time.perf_counter()
        # Each client keeps up to 16 tasks in flight.
        pending = {c: set() for c in cs}
        sent = {c: 0 for c in cs}
        done = 0
        while done < per * clients:
            for c in cs:
                while sent[c] < per and len(pending[c]) < 16:
                    pending[c].add(c.send_task(prompt="Once upon a time", max_tokens=1))
                    sent[c] += 1
                while c.sock.poll(0):
                    env = c.recv(1)
                    kind = env.WhichOneof("body")
                    if kind in ("result", "error"):
                        assert kind == "result", env
                        pending[c].discard(env.result.task_id)
                        done += 1
        dt = time.perf_counter() - t0
        st = router_stats(cl.router)
        for c in cs:
            c.close()
    return {"tasks": done, "seconds": dt, "tasks_per_s": done / dt, "router": st}


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def read_time(path):
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return (time.perf_counter() - t) * 1e3


def reload_bench(zoo, runs):
    m = json.loads((zoo / "manifest.json").read_text())
    names = [v["name"] for v in m["variants"]]
    rows = []
    with Cluster(zoo, workers=1, variants=[names[0]], slots=4) as cl:
        cl.acctl("policy", "set", "sched.min_residency_s", "86400")  # the scheduler must not interfere
        for v in names[1:] + names[:1]:
            f = zoo / f"{v}.gguf"
            res = {"cold": [], "warm": [], "read_cold": [], "read_warm": []}
            other = names[0] if v != names[0] else names[1]
            for _ in range(runs):
                # Cold: nothing of the file in the page cache (the worker holds another variant, so
                # no page of it is mapped and the eviction takes), for the read and for the reload.
                cl.acctl("reload", "w0", other, "--wait")
                evict(f)
                res["read_cold"].append(read_time(f))
                evict(f)
                res["cold"].append(json.loads(cl.acctl("reload", "w0", v, "--wait", "--json").stdout)["reload_ms"])
                # Warm: the file was just read.
                cl.acctl("reload", "w0", other, "--wait")
                read_time(f)
                res["read_warm"].append(read_time(f))
                res["warm"].append(json.loads(cl.acctl("reload", "w0", v, "--wait", "--json").stdout)["reload_ms"])
            med = {k: statistics.median(x) for k, x in res.items()}
            rows.append(dict(variant=v, bytes=f.stat().st_size, **med))
            print(rows[-1], file=sys.stderr)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=str(pathlib.Path(os.environ.get("AC_CACHE", pathlib.Path.home() / ".cache/agentcompress")) / "zoo"))
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    work = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "ac-cluster-bench"
    o = overhead(a.tasks, a.clients, work)
    r = o["router"]
    lines = [f"## Router overhead (stories260K, 1-token tasks, {a.clients} clients x 16 in flight, 2 workers)", "",
             f"{o['tasks']} tasks in {o['seconds']:.2f} s: **{o['tasks_per_s']:.0f} tasks/s** end to end; "
             f"router received -> dispatched: p50 **{r['overhead_us']['p50']:.0f} us**, "
             f"p99 **{r['overhead_us']['p99']:.0f} us**, max {r['overhead_us']['max']:.0f} us", ""]
    zoo = pathlib.Path(a.zoo)
    if (zoo / "manifest.json").exists():
        rows = reload_bench(zoo, a.runs)
        lines += [f"## Reload time per variant (medians of {a.runs}; one worker; ms)", "",
                  "| variant | MB | reload cold | read cold | ratio | reload warm | read warm | ratio |", "|---|---|---|---|---|---|---|---|"]
        for x in rows:
            lines.append(f"| {x['variant']} | {x['bytes'] / 1e6:.0f} | {x['cold']:.0f} | {x['read_cold']:.0f} | "
                         f"{x['cold'] / x['read_cold']:.2f} | {x['warm']:.0f} | {x['read_warm']:.0f} | "
                         f"{x['warm'] / x['read_warm']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        pathlib.Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
