"""Tensor-parallel workers in a real cluster. Every worker of the cluster runs its variant as 2
ranks (threads of the process, over the CPU communicator); a second test adds a worker made of 2
processes (`--tp-id`: rank 0 serves, rank 1 follows over ZeroMQ ipc, as CUDA ranks do over NCCL),
reloads it, and stops it. Answers must equal `acq run`'s single-rank greedy text."""
import json
import os
import signal
import subprocess
import time

import pytest

from cluster import BIN, Cluster, acq_run, free_base

PROMPTS = ["Once upon a time", "Lily and Tom went to the park"]
N = 32


@pytest.fixture(scope="module")
def cl(stories_zoo):
    c = Cluster(stories_zoo, workers=2, variants=["full", "int8"], slots=2, tp=2).start()
    yield c
    c.stop()


@pytest.mark.parametrize("variant", ["full", "int8"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_tp2_worker_answers_what_one_rank_answers(cl, stories_zoo, variant, prompt):
    r = cl.acctl("submit", "-p", prompt, "-n", N, "--variant", variant)
    assert r.stdout == acq_run(stories_zoo / f"{variant}.gguf", prompt, N)


def test_workers_say_they_run_two_ranks(cl):
    for i in range(2):
        assert ", tp 2," in cl.log(f"worker.w{i}")
    st = json.loads(cl.acctl("status", "--json").stdout)
    assert sorted((w["device"], w["tp"]) for w in st["workers"]) == [("cpu", 2), ("cpu", 2)]
    assert "cpu tp2" in cl.acctl("status").stdout


def wait_for(pred, timeout_s=60):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_a_worker_of_two_processes_serves_reloads_and_stops(cl, stories_zoo, tmp_path):
    # Only this worker may serve (the router would otherwise upgrade a task to a better variant
    # another worker holds), and only the operator moves it (the scheduler would follow demand).
    cl.acctl("policy", "set", "sched.min_residency_s", "3600")
    others = [w["id"] for w in json.loads(cl.acctl("status", "--json").stdout)["workers"]]
    for w in others:
        cl.acctl("drain", w)

    def states():
        return {w["id"]: w for w in json.loads(cl.acctl("status", "--json").stdout)["workers"]}
    port = free_base(5) + 3
    ipc = str(tmp_path / "tp.ipc")
    common = ["--zoo", str(stories_zoo), "--tp", "2", "--tp-id", ipc, "--slots", "2", "-c", "512"]
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]
    # The follower first: it waits for its leader to bind.
    follower = subprocess.Popen([str(BIN / "ac-worker"), *common, "--tp-rank", "1"], stdout=logs[1], stderr=logs[1])
    leader = subprocess.Popen([str(BIN / "ac-worker"), *common, "--id", "wtp", "--listen", f"tcp://127.0.0.1:{port}",
                               "--variant", "int4", "--redis", cl.redis], stdout=logs[0], stderr=logs[0],
                              env=cl.env)
    try:
        def ready(variant):
            st = states()
            return all(st[w]["state"] == "draining" for w in others) and "wtp" in st and \
                st["wtp"]["variant"] == variant and st["wtp"]["state"] == "ready" and st["wtp"]["tp"] == 2
        assert wait_for(lambda: ready("int4")), (tmp_path / "rank0.log").read_text()
        time.sleep(0.5)  # a few heartbeats, for the router to see what acctl sees
        prompt = PROMPTS[1]
        for variant in ("int4", "int8"):
            if variant != "int4":  # a reload moves both processes to the new variant together
                cl.acctl("reload", "wtp", variant, "--wait")
                assert wait_for(lambda: ready(variant))
                time.sleep(0.5)
            res = json.loads(cl.acctl("submit", "-p", prompt, "-n", N, "--variant", variant, "--json").stdout)
            assert res["worker"] == "wtp" and res["variant"] == variant
            assert res["text"] == acq_run(stories_zoo / f"{variant}.gguf", prompt, N)
        follower_log = (tmp_path / "rank1.log").read_text()
        assert "int4 loaded" in follower_log and "int8 loaded" in follower_log, follower_log
        # SIGTERM to rank 0: it drains, leaves the group, and the follower ends with it.
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(timeout=60) == 0
        assert follower.wait(timeout=30) == 0, (tmp_path / "rank1.log").read_text()
    finally:
        for w in others:
            cl.acctl("undrain", w)
        cl.acctl("policy", "reset", "sched.min_residency_s")
        for p in (leader, follower):
            if p.poll() is None:
                p.kill()
                p.wait()
