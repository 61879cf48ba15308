"""acq label: the C checkers against bench/workloads/checkers.py, labelling a stories260K zoo
(one line per task x variant, answers equal to `acq run`, resume), and bad inputs."""
import json
import pathlib
import random
import subprocess
import sys

import pytest

from conftest import BIN, SHARED, acq

WL_DIR = pathlib.Path(__file__).resolve().parents[2] / "bench" / "workloads"
sys.path.insert(0, str(WL_DIR))

import checkers  # noqa: E402

HEADER = {"format": "agentcompress-workload", "version": 1}


# ---------------------------------------------------------------- (a) C judge == Python judge

def c_judge(cases):
    """Runs `acq label --judge-stdin` on [(task, full, variant)], texts as str or bytes."""
    lines = []
    for task, full, var in cases:
        o = {"task": task}
        for key, text in (("full", full), ("variant", var)):
            if isinstance(text, bytes):
                o[key + "_hex"] = text.hex()
            else:
                o[key] = text
        lines.append(json.dumps(o))
    r = subprocess.run([str(BIN / "acq"), "label", "--judge-stdin"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, check=True)
    out = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(out) == len(cases)
    return out


def py_judge(task, full, var):
    def s(x):
        return x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else x
    try:
        return checkers.judge(task, s(full), s(var))
    except ValueError:
        return None


def compare(cases):
    got = c_judge(cases)
    bad = []
    for (task, full, var), g in zip(cases, got):
        want = py_judge(task, full, var)
        if want is None:
            ok = "error" in g
        else:
            ok = "error" not in g and (g["success"], g["correct"]) == (want[0], want[2]) and \
                abs(g["score"] - want[1]) <= 1e-12
        if not ok:
            bad.append((task["checker"], task.get("answer"), full, var, g, want))
    assert not bad, f"{len(bad)} of {len(cases)} differ, first: {bad[:3]}"


PIECES = ["0", "1", "7", "42", "007", "3.14", "1,000", "1,2", "12,345", "-", "--", ".", ",", "#", "####", " ", "  ",
          "\n", "\t", "\r\n", "\v", "\f", "the", "The", "CAT", "cat", "Paris", "carbon", "dioxide", "CO2", "x", "a",
          "!", "?", "(", ")", "\"", "'", ":", ";", "$", "%", "é", "École", "€", "日本", "😀", "\u00a0", "\u2212",
          "\x00", "-5", "5-3", "COVID-19", "1/2", ".5", "+3", "1e5"]


def random_text(rng, max_pieces=14):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, max_pieces)))


def random_task(rng, kind, answer=None):
    t = {"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 8,
         "checker": {"kind": kind}}
    if kind == "similarity" and rng.random() < 0.5:
        t["checker"]["theta"] = rng.choice([0, 0.25, 0.5, 2 / 3, 0.75, 1, 1.0])
    if kind == "contains" and rng.random() < 0.6:
        t["checker"]["aliases"] = [random_text(rng, 3) for _ in range(rng.randint(0, 3))]
    if answer is not None:
        t["answer"] = answer
    elif rng.random() < 0.7 or (kind == "contains" and not t["checker"].get("aliases")):
        t["answer"] = random_text(rng, 4)
    return t


def perturb(rng, text):
    ops = rng.randint(0, 3)
    for _ in range(ops):
        op = rng.randrange(8)
        words = text.split(" ")
        if op == 0 and text:  # drop a character
            i = rng.randrange(len(text))
            text = text[:i] + text[i + 1:]
        elif op == 1:  # insert a piece
            i = rng.randint(0, len(text))
            text = text[:i] + rng.choice(PIECES) + text[i:]
        elif op == 2:
            text = text.upper() if rng.random() < 0.5 else text.lower()
        elif op == 3 and len(words) > 1:  # drop a word
            del words[rng.randrange(len(words))]
            text = " ".join(words)
        elif op == 4:
            text = text + rng.choice([".", "!", " ", "\n", " #### 5", "\n#### " + str(rng.randint(0, 99))])
        elif op == 5:  # change a digit
            ds = [i for i, c in enumerate(text) if c.isdigit()]
            if ds:
                i = rng.choice(ds)
                text = text[:i] + str(rng.randint(0, 9)) + text[i + 1:]
        elif op == 6 and len(words) > 1:
            rng.shuffle(words)
            text = " ".join(words)
        else:
            text = "The answer is " + text
    return text


def test_judge_matches_python_on_random_texts():
    rng = random.Random(5)
    cases = []
    for i in range(3000):
        kind = checkers.KINDS[i % 4]
        full = random_text(rng)
        var = perturb(rng, full) if rng.random() < 0.6 else random_text(rng)
        cases.append((random_task(rng, kind), full, var))
    # A contains checker with nothing to accept is an error on both sides.
    cases.append(({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
                   "checker": {"kind": "contains"}}, "a", "a"))
    compare(cases[:-1])
    assert "error" in c_judge(cases[-1:])[0]


def test_judge_matches_python_on_raw_bytes():
    """Invalid UTF-8 (a generation cut inside a character): C judges the bytes, Python the text
    decoded with surrogateescape; both agree."""
    rng = random.Random(11)
    cases = []
    for i in range(600):
        kind = checkers.KINDS[i % 4]
        full = random_text(rng).encode()
        var = bytearray(perturb(rng, full.decode()).encode())
        for _ in range(rng.randint(1, 3)):
            var.insert(rng.randint(0, len(var)), rng.choice([0x80, 0xC3, 0xE2, 0xF0, 0xFF, 0xBF]))
        cases.append((random_task(rng, kind), full, bytes(var)))
    compare(cases)


@pytest.fixture(scope="module")
def small_workload(tmp_path_factory):
    out = tmp_path_factory.mktemp("wl") / "w.jsonl"
    subprocess.run([sys.executable, str(WL_DIR / "generate.py"), "--workflows", "80", "-o", str(out),
                    "--gsm8k", str(SHARED / "data" / "gsm8k")], check=True, capture_output=True)
    return out


def test_judge_matches_python_on_workload_answers(small_workload):
    """The standard workload's tasks and ground truths, with the answers perturbed the way a
    compressed model gets them wrong (and right)."""
    rng = random.Random(3)
    tasks = [json.loads(l) for l in small_workload.read_text().splitlines()[1:]]
    cases = []
    for t in tasks:
        truth = t.get("answer") or " ".join(t["messages"][0]["content"].split()[:30])
        for _ in range(6):
            full = truth if rng.random() < 0.5 else perturb(rng, truth)
            cases.append((t, full, perturb(rng, full)))
    assert len(cases) >= 2000
    compare(cases)


# ---------------------------------------------------------------- (b) labelling a stories zoo

PROMPTS = ["Once upon a time", "Lily went to the park", "The dog was very happy because",
           "One day, a little boy named Tim", "She said", "", "The sun was", "Tom and Sam"]
KINDS = [{"kind": "similarity"}, {"kind": "exact"}, {"kind": "contains", "aliases": ["park", "Lily"]},
         {"kind": "number"}, {"kind": "similarity", "theta": 0.8}]


def write_workload(path, prompts, max_tokens=16):
    with open(path, "w") as f:
        f.write(json.dumps(HEADER) + "\n")
        for i, p in enumerate(prompts):
            f.write(json.dumps({"workflow": f"w{i // 3}", "step": i % 3, "domain": ["cs", "physics"][i % 2],
                                "type": "story", "prompt": p, "max_tokens": max_tokens,
                                "checker": KINDS[i % len(KINDS)], **({"answer": "Lily"} if i % 5 == 2 else {})})
                    + "\n")
    return path


def read_labels(path):
    lines = pathlib.Path(path).read_bytes().split(b"\n")
    assert lines[-1] == b""
    objs = [json.loads(l) for l in lines[:-1]]
    return objs[0], objs[1:]


def answer_bytes(line):
    return bytes.fromhex(line["answer_hex"]) if "answer_hex" in line else line["answer"].encode()


def test_label_stories_zoo(stories_zoo, tmp_path):
    wl = write_workload(tmp_path / "w.jsonl", PROMPTS)
    out = tmp_path / "labels.jsonl"
    r = acq("label", stories_zoo, wl, "-o", out, "--slots", "3")
    assert "done" in r.stderr
    header, lines = read_labels(out)
    assert header["format"] == "agentcompress-labels" and header["version"] == 1
    assert header["reference"] == "full" and header["workload_tasks"] == len(PROMPTS)
    assert [v["name"] for v in header["variants"]] == ["full", "int8", "int4"]
    assert header["price_per_hour"] == 2.0
    assert len(lines) == len(PROMPTS) * 3
    pairs = {(l["id"], l["variant"]) for l in lines}
    assert len(pairs) == len(lines)
    tasks = {json.loads(l)["workflow"] + "/" + str(json.loads(l)["step"]): json.loads(l)
             for l in wl.read_text().splitlines()[1:]}
    full = {l["id"]: answer_bytes(l).decode("utf-8", "surrogateescape") for l in lines if l["variant"] == "full"}
    spt = {v["name"]: v["modelled_seconds_per_token"] for v in header["variants"]}
    for l in lines:
        t = tasks[l["id"]]
        assert (l["workflow"], l["step"], l["domain"], l["type"]) == (t["workflow"], t["step"], t["domain"], t["type"])
        assert l["finish"] in ("eos", "length") and 1 <= l["completion_tokens"] <= 16 and l["prompt_tokens"] >= 1
        if l["variant"] == "full":
            assert l["success"] is True and l["score"] == 1.0
        s, score, c = checkers.judge(t, full[l["id"]], answer_bytes(l).decode("utf-8", "surrogateescape"))
        assert (l["success"], l["correct"]) == (s, c) and abs(l["score"] - score) <= 1e-12
        assert l["busy_s"] > 0 and l["measured_cost_usd"] == pytest.approx(l["busy_s"] * 2.0 / 3600, rel=1e-12)
        assert l["modelled_cost_usd"] == pytest.approx(
            (l["prompt_tokens"] + l["completion_tokens"]) * spt[l["variant"]] * 2.0 / 3600, rel=1e-12)
    # Answers equal `acq run`'s greedy text for the same file and prompt.
    for l in lines:
        model = stories_zoo / f"{l['variant']}.gguf"
        r = subprocess.run([str(BIN / "acq"), "run", str(model), "-p", tasks[l["id"]]["prompt"], "-n", "16"],
                           capture_output=True, check=True)
        assert r.stdout == answer_bytes(l), (l["id"], l["variant"])


def test_label_resumes_without_duplicates(stories_zoo, tmp_path):
    wl = write_workload(tmp_path / "w.jsonl", PROMPTS)
    out = tmp_path / "labels.jsonl"
    acq("label", stories_zoo, wl, "-o", out, "--limit", "3", "--variants", "int4")
    header, lines = read_labels(out)
    assert len(lines) == 3 * 2 and {l["variant"] for l in lines} == {"full", "int4"}
    first = out.read_bytes()
    # A crash in the middle of a line: the partial line is cut away, nothing is repeated.
    with open(out, "ab") as f:
        f.write(b'{"id": "w1/0", "variant": "int8", "answ')
    r = acq("label", stories_zoo, wl, "-o", out)
    assert "partial" in r.stderr and "6 already" in r.stderr
    data = out.read_bytes()
    assert data.startswith(first)
    header2, lines = read_labels(out)
    assert header2 == header
    assert len(lines) == len(PROMPTS) * 3 and len({(l["id"], l["variant"]) for l in lines}) == len(lines)
    # A third run finds nothing to do and writes nothing.
    r = acq("label", stories_zoo, wl, "-o", out)
    assert out.read_bytes() == data and "24 already" in r.stderr
    # The resumed file equals a straight run, line for line (ignoring order and timings).
    straight = tmp_path / "straight.jsonl"
    acq("label", stories_zoo, wl, "-o", straight)
    strip = ("busy_s", "measured_cost_usd", "prefill_ms", "decode_ms")
    key = lambda l: (l["id"], l["variant"])  # noqa: E731
    a = sorted(({k: v for k, v in l.items() if k not in strip} for l in read_labels(out)[1]), key=key)
    b = sorted(({k: v for k, v in l.items() if k not in strip} for l in read_labels(straight)[1]), key=key)
    assert a == b


# ---------------------------------------------------------------- (c) bad inputs

def test_label_bad_inputs(stories_zoo, tmp_path):
    wl = write_workload(tmp_path / "w.jsonl", PROMPTS[:2])
    out = tmp_path / "l.jsonl"
    r = acq("label", tmp_path / "no-zoo", wl, "-o", out, check=False)
    assert r.returncode == 1 and "no-zoo" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(HEADER) + "\n" + wl.read_text().splitlines()[1] + "\n"
                   + '{"workflow": "w", "step": 1, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 0, '
                     '"checker": {"kind": "exact"}}\n')
    r = acq("label", stories_zoo, bad, "-o", out, check=False)
    assert r.returncode == 1 and f"{bad}:3: field 'max_tokens'" in r.stderr and not out.exists()
    (tmp_path / "junk.jsonl").write_text(json.dumps(HEADER) + "\n{not json\n")
    r = acq("label", stories_zoo, tmp_path / "junk.jsonl", "-o", out, check=False)
    assert r.returncode == 1 and "junk.jsonl:2: bad JSON" in r.stderr
    r = acq("label", stories_zoo, tmp_path / "missing.jsonl", "-o", out, check=False)
    assert r.returncode == 1 and "missing.jsonl" in r.stderr
    r = acq("label", stories_zoo, wl, "-o", out, "--variants", "int3", check=False)
    assert r.returncode == 1 and "int3" in r.stderr
    r = acq("label", stories_zoo, wl, check=False)
    assert r.returncode == 2 and "usage" in r.stderr
    # Chat tasks on a model without a chat template: one clear line naming the task.
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(HEADER) + "\n" + json.dumps(
        {"workflow": "c", "step": 0, "domain": "d", "type": "t", "messages": [{"role": "user", "content": "hi"}],
         "max_tokens": 4, "checker": {"kind": "exact"}}) + "\n")
    r = acq("label", stories_zoo, chat, "-o", tmp_path / "c.jsonl", check=False)
    assert r.returncode == 1 and "task 'c/0'" in r.stderr and "chat template" in r.stderr
    # Labels of another workload are not mixed in.
    acq("label", stories_zoo, wl, "-o", out)
    other = write_workload(tmp_path / "other.jsonl", PROMPTS[:3])
    r = acq("label", stories_zoo, other, "-o", out, check=False)
    assert r.returncode == 1 and "another workload" in r.stderr
    r = acq("label", stories_zoo, wl, "-o", out, "--price-per-hour", "3", check=False)
    assert r.returncode == 1 and "price" in r.stderr
    # Duplicate task ids cannot be labelled.
    dup = tmp_path / "dup.jsonl"
    t = json.loads(wl.read_text().splitlines()[1])
    dup.write_text(json.dumps(HEADER) + "\n" + json.dumps({**t, "id": "x"}) + "\n"
                   + json.dumps({**t, "step": 9, "id": "x"}) + "\n")
    r = acq("label", stories_zoo, dup, "-o", tmp_path / "d.jsonl", check=False)
    assert r.returncode == 1 and "task id 'x'" in r.stderr
