"""The controller pipeline end to end on real runs of the demo model: a generated workload, a small
zoo of SmolLM2 (F16, Q8_0, Q4_1), `acq label` running every task on every variant, `acq
train-controller` on those labels, and `acbench` replaying the policies into a report. Short, so
it fits in CI; the numbers it checks are the ones that hold by construction on real labels."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from cluster import Cluster
from conftest import BIN, acq

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
WORKFLOWS = 3


@pytest.fixture(scope="module")
def mini_zoo(smollm_q4_1, smollm_f16, tmp_path_factory):
    z = tmp_path_factory.mktemp("smol-zoo")
    shutil.copy(smollm_f16, z / "f16.gguf")
    shutil.copy(smollm_q4_1, z / "int4.gguf")
    acq("quantize", smollm_f16, z / "int8.gguf", "q8_0", "-t", "2")
    return z


@pytest.fixture(scope="module")
def run(mini_zoo, tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    wl, labels, ctrl, out = d / "w.jsonl", d / "labels.jsonl", d / "ctrl.acc", d / "report"
    subprocess.run([sys.executable, str(ROOT / "bench/workloads/generate.py"), "--workflows", str(WORKFLOWS),
                    "-o", str(wl)], check=True, timeout=60)
    acq("label", mini_zoo, wl, "-o", labels, "-t", "2", "--slots", "8", timeout=900)
    tr = acq("train-controller", labels, "-o", ctrl, "--zoo", mini_zoo, "--workload", wl, "--steps", "30",
             "--seed", "1", timeout=600)
    r = subprocess.run([str(BIN / "acbench"), "--labels", str(labels), "--workload", str(wl), "--zoo", str(mini_zoo),
                        "--controller", str(ctrl), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return dict(wl=wl, labels=labels, ctrl=ctrl, out=out, table=r.stdout, train_log=tr.stderr)


def test_labels_cover_every_task_and_variant(run):
    lines = run["labels"].read_text().splitlines()
    head, rows = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    n_tasks = len(run["wl"].read_text().splitlines()) - 1
    assert head["format"] == "agentcompress-labels" and head["reference"] == "f16"
    assert len(rows) == 3 * n_tasks
    assert all(r["success"] for r in rows if r["variant"] == "f16")  # the reference agrees with itself
    assert all(r["measured_cost_usd"] > 0 and r["completion_tokens"] > 0 for r in rows)


def test_acbench_reports_every_policy_from_the_real_run(run):
    rep = json.loads((run["out"] / "report.json").read_text())
    pol = {p["name"]: p for p in rep["policies"]}
    assert {"all-full", "oracle", "random", "uniform-int8", "uniform-int4", "ctrl"} <= set(pol)
    full, oracle, ctrl = pol["all-full"], pol["oracle"], pol["ctrl"]
    assert full["success_pct"] == 100.0 and full["savings_modelled_pct"] == 0.0
    assert oracle["success_pct"] == 100.0  # the oracle only picks variants that succeeded
    assert oracle["modelled_cost_usd"] <= ctrl["modelled_cost_usd"] * (1 + 1e-9)
    assert ctrl["modelled_cost_usd"] <= full["modelled_cost_usd"] * (1 + 1e-9)
    assert sum(ctrl["choices"].values()) == ctrl["tasks"] == full["tasks"]
    for f in ("report.md", "cost_vs_success.svg"):
        assert (run["out"] / f).stat().st_size > 0
    assert "oracle" in run["table"] and "ctrl" in run["table"]


def test_training_lowers_the_loss_of_the_weights_it_saves(run):
    # "loss A -> B": the whole-data loss at the saved weights before and after training. A pure
    # MAML objective once let B end far above A (the saved weights were only good after one more
    # adaptation step); the outer objective now keeps the loss at those weights.
    m = re.search(r"loss ([0-9.]+) -> ([0-9.]+) in", run["train_log"])
    assert m, run["train_log"]
    before, after = float(m.group(1)), float(m.group(2))
    assert after < 0.8 * before, run["train_log"]


REPLAY_TASKS = 8


def test_acbench_replays_the_policies_against_a_running_cluster(run, mini_zoo, tmp_path):
    # The same zoo served by a real cluster (redis, scheduler, router with the controller, one
    # worker per variant); acbench sends each policy's choices through the router.
    with Cluster(mini_zoo, workers=3, variants=["f16", "int8", "int4"], slots=4, ctx=512,
                 controller=run["ctrl"]) as c:
        r = subprocess.run([str(BIN / "acbench"), "--labels", str(run["labels"]), "--workload", str(run["wl"]),
                            "--zoo", str(mini_zoo), "--controller", str(run["ctrl"]), "--cluster", c.router,
                            "--redis", c.redis, "--replay", "all-full,uniform-int4,ctrl,cluster",
                            "--replay-tasks", str(REPLAY_TASKS), "--concurrency", "3", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=600, env=c.env)
    assert r.returncode == 0, r.stderr
    rep = {p["name"]: p for p in json.loads((tmp_path / "report.json").read_text())["replay"]}
    assert list(rep) == ["all-full", "uniform-int4", "ctrl", "cluster"]
    for p in rep.values():
        assert p["tasks"] == REPLAY_TASKS and p["errors"] == 0, p
        assert 0 < p["latency_p50_ms"] <= p["latency_p90_ms"] <= p["latency_p99_ms"], p
        assert p["measured_cost_usd"] > 0 and isinstance(p["reloads"], int) and p["reloads"] >= 0, p
        assert p["cache_hit_pct"] + p["upgraded_pct"] <= 100.0 + 1e-9, p
    # The reference is pinned: all-full never waits and is always served as chosen. (The others may
    # not be: the scheduler moves idle workers to where the demand is, as it should.)
    assert rep["all-full"]["cache_hit_pct"] == 100.0 and rep["all-full"]["success_pct"] == 100.0
    # Greedy answers do not depend on the batch they ran in: served as chosen, the cluster's int4
    # answers succeed exactly where the labels' int4 answers did, on the same first tasks.
    if rep["uniform-int4"]["upgraded_pct"] == 0.0:
        lines = [json.loads(x) for x in run["labels"].read_text().splitlines()[1:]]
        ok = {x["id"]: x["success"] for x in lines if x["variant"] == "int4"}
        order = [json.loads(x)["id"] for x in run["wl"].read_text().splitlines()[1:]][:REPLAY_TASKS]
        assert rep["uniform-int4"]["successes"] == sum(ok[i] for i in order)
    md = (tmp_path / "report.md").read_text()
    assert "## Against the cluster" in md and "| uniform-int4 |" in md
