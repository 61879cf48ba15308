"""The complexity controller in the router, end to end: a controller trained by `acq train-controller`
on a small synthetic labels file (tasks with a marker word succeed only on the full model, the
others on every variant), loaded by ac-router (--controller, through deploy/local/cluster.sh), and
answering from a real local cluster: the chosen variant, complexity and confidence come back in the
Result, the confidence threshold (policy.conf_min) sends everything to the reference, and a
corrupt controller file keeps the router from starting."""
import json
import pathlib
import random
import re
import subprocess
import time

import pytest

from cluster import ROOT, Client, Cluster, free_base
from conftest import BIN, acq

MARKER = "dragon"
WORDS = ("the little girl boy cat dog sun tree park ball happy sad big small went saw played ran jumped home "
         "friend mom dad bird fish toy red blue").split()
VARIANTS = ("full", "int8", "int4")  # the stories_zoo, best quality first


def sentence(rng, marked):
    ws = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
    if marked:
        ws.insert(rng.randint(0, 5), MARKER)
    return " ".join(ws)


def write_data(d, n=240, seed=7):
    """A workload (bench/workloads/README.md format) and its labels (tools/acq_label.c format)."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        marked = i % 3 == 0
        t = {"id": f"t{i:04d}", "workflow": f"w{i:04d}", "step": 0, "domain": ("cs", "physics")[i % 2],
             "type": "factual_query", "max_tokens": 8, "checker": {"kind": "exact"}}
        text = sentence(rng, marked)
        if i % 5 == 4:
            t["messages"] = [{"role": "user", "content": text}]
        else:
            t["prompt"] = text
        tasks.append((t, marked))
    wl, labels = d / "workload.jsonl", d / "labels.jsonl"
    with wl.open("w") as f:
        f.write(json.dumps({"format": "agentcompress-workload", "version": 1}) + "\n")
        for t, _ in tasks:
            f.write(json.dumps(t) + "\n")
    with labels.open("w") as f:
        variants = [{"name": v, "file": f"{v}.gguf", "rank": r} for r, v in enumerate(VARIANTS)]
        f.write(json.dumps({"format": "agentcompress-labels", "version": 1, "zoo": "zoo", "workload": str(wl),
                            "reference": "full", "price_per_hour": 2.0, "variants": variants}) + "\n")
        for t, marked in tasks:
            for v in VARIANTS:
                ok = v == "full" or not marked
                f.write(json.dumps({"id": t["id"], "workflow": t["workflow"], "step": 0, "domain": t["domain"],
                                    "type": t["type"], "variant": v, "answer": "x" if ok else "y", "finish": "length",
                                    "prompt_tokens": 10, "completion_tokens": 8, "success": ok,
                                    "score": 1.0 if ok else 0.0, "correct": None}) + "\n")
    return wl, labels


def train(zoo, wl, labels, out, *extra):
    return acq("train-controller", labels, "-o", out, "--zoo", zoo, "--workload", wl, *extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("ctrl-data"))


@pytest.fixture(scope="module")
def trained(stories_zoo, data, tmp_path_factory):
    wl, labels = data
    out = tmp_path_factory.mktemp("ctrl") / "stories.acctrl"
    r = train(stories_zoo, wl, labels, out, "--steps", "80", "--seed", "1")
    return out, r.stderr


def test_training_lowers_the_loss_and_learns_the_marker(trained):
    _, log = trained
    m = re.search(r"loss ([0-9.]+) -> ([0-9.]+) in ([0-9.]+) s; on the training tasks: success ([0-9.]+)%, "
                  r"cost ([0-9.]+)% of the reference's \(oracle ([0-9.]+)%\)", log)
    assert m, log
    before, after, _, success, cost, oracle = map(float, m.groups())
    assert after < 0.5 * before, log
    assert success == 100.0 and cost <= oracle + 1.0, log
    assert "240 tasks in 2 domains" in log and "step 80/80" in log


def test_training_is_deterministic_for_a_seed(stories_zoo, data, tmp_path):
    wl, labels = data
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train(stories_zoo, wl, labels, a, "--steps", "3", "--seed", "5", "--quiet")
    train(stories_zoo, wl, labels, b, "--steps", "3", "--seed", "5", "--quiet")
    train(stories_zoo, wl, labels, c, "--steps", "3", "--seed", "6", "--quiet")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_train_controller_refuses_bad_input(stories_zoo, data, tmp_path):
    wl, labels = data
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"format": "agentcompress-workload", "version": 1}) + "\n")
    r = acq("train-controller", bad, "-o", tmp_path / "x", "--zoo", stories_zoo, "--workload", wl, check=False)
    assert r.returncode == 1 and "not an agentcompress-labels file" in r.stderr, r.stderr
    # Labels judged against another reference than the zoo's.
    text = labels.read_text().split("\n", 1)
    hdr = json.loads(text[0])
    hdr["reference"] = "int8"
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(hdr) + "\n" + text[1])
    r = acq("train-controller", other, "-o", tmp_path / "x", "--zoo", stories_zoo, "--workload", wl, check=False)
    assert r.returncode == 1 and "reference" in r.stderr, r.stderr
    # Only some domains, none of which exists.
    r = acq("train-controller", labels, "-o", tmp_path / "x", "--zoo", stories_zoo, "--workload", wl,
            "--train-domains", "chemistry", check=False)
    assert r.returncode == 1 and "no task" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


class ControllerCluster(Cluster):
    """A Cluster whose routers load a controller (cluster.sh --controller)."""

    def __init__(self, zoo, controller, **kw):
        super().__init__(zoo, **kw)
        self.controller = controller

    def start(self):
        args = ["bash", str(ROOT / "deploy/local/cluster.sh"), "start", "--zoo", str(self.zoo), "--workers",
                str(self.workers), "--dir", str(self.dir), "--port", str(self.port), "--slots", str(self.slots),
                "--ctx", str(self.ctx), "--routers", str(self.routers), "--threads", str(self.threads),
                "--variants", ",".join(self.variants), "--controller", str(self.controller)]
        r = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            logs = ""
            failed = pathlib.Path(str(self.dir) + ".failed")
            for f in sorted(failed.glob("*.log")):
                logs += f"--- {f.name}\n{f.read_text()[-3000:]}\n"
            raise AssertionError(f"cluster start failed: {r.stderr}\n{logs}")
        return self


@pytest.fixture(scope="module")
def cl(stories_zoo, trained):
    c = ControllerCluster(stories_zoo, trained[0], workers=3, variants=list(VARIANTS), slots=4).start()
    yield c
    c.stop()


def run_tasks(cl, cases):
    """cases: [(kind, text, marked)], kind "prompt" or "chat". Returns [(Result, marked)]."""
    client = Client(cl.router)
    try:
        sent = {}
        for kind, text, marked in cases:
            if kind == "chat":
                tid = client.send_task(messages=[("user", text)], max_tokens=4)
            else:
                tid = client.send_task(prompt=text, max_tokens=4)
            sent[tid] = marked
        got = client.collect(sent, timeout_s=120)
    finally:
        client.close()
    out = []
    for tid, (env, _) in got.items():
        assert env.WhichOneof("body") == "result", env
        out.append((env.result, sent[tid]))
    return out


def fresh_cases(n=24, seed=99):
    """Tasks the controller has not seen: the same vocabulary, new sentences. Raw prompts only:
    stories260K has no chat template, so the router refuses chats for it."""
    rng = random.Random(seed)
    return [("prompt", sentence(rng, i % 2 == 0), i % 2 == 0) for i in range(n)]


def test_the_router_answers_with_the_controllers_choice(cl):
    results = run_tasks(cl, fresh_cases())
    assert len(results) == 24
    for res, marked in results:
        want = "full" if marked else "int4"
        assert res.requested_variant == want, (res.requested_variant, res.complexity, res.confidence, marked)
        assert res.variant == want
        assert res.policy == "controller"
        assert 0 <= res.complexity <= 1 and 0.7 <= res.confidence <= 1
    # Hard tasks are predicted more complex than easy ones.
    hard = [r.complexity for r, m in results if m]
    easy = [r.complexity for r, m in results if not m]
    assert min(hard) > max(easy)
    assert "controller" in cl.log("router.r0")


def test_below_the_confidence_threshold_everything_goes_to_the_full_model(cl):
    cl.acctl("policy", "set", "policy.conf_min", "1.0")
    try:
        time.sleep(0.5)  # the router re-reads its settings every tick (100 ms)
        for res, _ in run_tasks(cl, fresh_cases(8, seed=5)):
            assert res.requested_variant == "full" and res.variant == "full"
            assert res.policy == "controller-fallback"
            assert 0 <= res.complexity <= 1 and 0 <= res.confidence < 1
    finally:
        cl.acctl("policy", "reset", "policy.conf_min")
    time.sleep(0.5)
    # theta above every predicted success: nothing qualifies but the reference.
    cl.acctl("policy", "set", "policy.theta", "1.0")
    try:
        time.sleep(0.5)
        for res, _ in run_tasks(cl, fresh_cases(6, seed=6)):
            assert res.requested_variant == "full" and res.policy == "controller"
    finally:
        cl.acctl("policy", "reset", "policy.theta")


def router(args, timeout=30):
    port = free_base(4)
    return subprocess.run([str(BIN / "ac-router"), "--listen", f"tcp://127.0.0.1:{port + 1}", "--redis",
                           f"127.0.0.1:{port}", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_a_corrupt_controller_file_stops_the_router(stories_zoo, trained, tmp_path):
    good = trained[0].read_bytes()
    bad = tmp_path / "bad.acctrl"
    bad.write_bytes(good[:-100] + bytes(b ^ 0x55 for b in good[-100:]))
    r = router(["--zoo", stories_zoo, "--controller", bad])
    assert r.returncode == 1, r.stderr
    assert "--controller" in r.stderr and "corrupted controller file" in r.stderr and str(bad) in r.stderr, r.stderr
    bad.write_bytes(good[: len(good) // 2])
    r = router(["--zoo", stories_zoo, "--controller", bad])
    assert r.returncode == 1 and "truncated" in r.stderr, r.stderr
    bad.write_bytes(b"not a controller at all")
    r = router(["--zoo", stories_zoo, "--controller", bad])
    assert r.returncode == 1 and "not a controller file" in r.stderr, r.stderr
    r = router(["--zoo", stories_zoo, "--controller", tmp_path / "missing.acctrl"])
    assert r.returncode == 1 and "missing.acctrl" in r.stderr, r.stderr


def test_a_controller_of_other_embeddings_stops_the_router(stories_zoo, trained):
    # int8.gguf holds token_embd as Q8_0: not the embeddings the controller was trained on.
    r = router(["--tokenizer", stories_zoo / "int8.gguf", "--zoo", stories_zoo, "--controller", trained[0]])
    assert r.returncode == 1 and "another base model" in r.stderr, r.stderr


def test_a_variant_the_catalog_lacks_goes_to_the_reference(stories_zoo, trained, tmp_path):
    # The same model without int4: the controller's cheap choice is not there to serve.
    import shutil
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for v in ("full", "int8"):
        shutil.copy(stories_zoo / f"{v}.gguf", zoo / f"{v}.gguf")
    with ControllerCluster(zoo, trained[0], workers=2, variants=["full", "int8"], slots=4) as c:
        results = run_tasks(c, fresh_cases(8, seed=3))
        for res, marked in results:
            assert res.requested_variant == "full" and res.variant == "full"
            assert res.policy == ("controller" if marked else "controller-fallback")
        log = c.log("router.r0")
        assert log.count("variant 'int4' is not in the catalog") == 1, log
