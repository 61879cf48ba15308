"""bench/workloads: the deterministic workload generator, the format, the checkers, the splits."""
import collections
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
WL_DIR = ROOT / "bench" / "workloads"
sys.path.insert(0, str(WL_DIR))

import checkers  # noqa: E402
import generate  # noqa: E402
import split  # noqa: E402
import workload  # noqa: E402
from conftest import SHARED  # noqa: E402

GSM8K = SHARED / "data" / "gsm8k"
TYPES = {"literature_summary", "hypothesis_generation", "data_to_text", "citation_formatting",
         "factual_query", "quantitative_reasoning"}
DOMAINS = {"cs", "physics", "chemistry", "biology"}
STOPWORDS = {"a", "an", "and", "the", "or", "of", "in", "on", "is", "it", "to", "for", "with", "as", "at", "by"}


def run_generate(out, *args):
    subprocess.run([sys.executable, str(WL_DIR / "generate.py"), "--gsm8k", str(GSM8K), "-o", str(out), *args],
                   check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def default_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("wl") / "default.jsonl"
    run_generate(out)
    return out


@pytest.fixture(scope="module")
def default_workload(default_file):
    return workload.read_workload(default_file)


# ---------------------------------------------------------------- generator

def test_deterministic_for_a_seed(default_file, tmp_path):
    again = run_generate(tmp_path / "again.jsonl", "--seed", "1", "--workflows", "600")
    assert again == default_file.read_bytes()
    other = run_generate(tmp_path / "other.jsonl", "--seed", "2")
    assert other != again
    # in-process generation writes the same bytes as the command line
    header, tasks = generate.generate(1, 600, GSM8K)
    text = "".join(generate.dumps(o) + "\n" for o in [header, *tasks]).encode("utf-8")
    assert text == again


def test_shorter_workload_is_a_prefix(default_file, tmp_path):
    short = run_generate(tmp_path / "short.jsonl", "--workflows", "25").decode().splitlines()[1:]
    full = default_file.read_text(encoding="utf-8").splitlines()[1:]
    assert short == full[:len(short)]
    assert json.loads(full[len(short)])["workflow"] == "w00025"


def test_header(default_workload):
    header, tasks = default_workload
    assert header["format"] == "agentcompress-workload" and header["version"] == 1
    assert header["seed"] == 1 and header["workflows"] == 600 and header["tasks"] == len(tasks)
    assert set(header["domains"]) == DOMAINS and set(header["task_types"]) == TYPES


def test_every_line_has_the_documented_fields(default_file):
    lines = default_file.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and all(lines[:-1])
    for line in lines[1:-1]:
        t = json.loads(line)
        workload.validate_task(t)
        for f in ("id", "workflow", "step", "domain", "type", "difficulty", "messages", "max_tokens", "checker"):
            assert f in t, f
        assert "prompt" not in t
        assert t["id"] == f"{t['workflow']}/{t['step']}"
        assert t["domain"] in DOMAINS and t["type"] in TYPES
        assert t["difficulty"] in ("easy", "medium", "hard")
        assert [m["role"] for m in t["messages"]] == ["user"]
        assert 16 <= t["max_tokens"] <= 160
        assert len(t["messages"][0]["content"]) < 1000
        kind = t["checker"]["kind"]
        if t["type"] in ("literature_summary", "hypothesis_generation", "data_to_text"):
            assert t["checker"] == {"kind": "similarity", "theta": 0.5} and "answer" not in t
            assert t["max_tokens"] >= 96
        elif t["type"] == "citation_formatting":
            assert kind == "exact" and t["answer"]
        elif t["type"] == "quantitative_reasoning":
            assert kind == "number" and t["answer"] == checkers.final_number(t["answer"])
        else:
            assert kind in ("contains", "number") and t["answer"] and t["max_tokens"] <= 48


def test_workflows_domains_types(default_workload):
    _, tasks = default_workload
    by_wf = collections.defaultdict(list)
    for t in tasks:
        by_wf[t["workflow"]].append(t)
    assert len(by_wf) >= 500
    for steps in by_wf.values():
        assert 3 <= len(steps) <= 8
        assert [t["step"] for t in steps] == list(range(len(steps)))
        assert len({t["domain"] for t in steps}) == 1
    assert {t["domain"] for t in tasks} == DOMAINS
    assert {t["type"] for t in tasks} == TYPES
    pairs = collections.Counter((t["domain"], t["type"]) for t in tasks)
    assert all(pairs[(d, ty)] >= 50 for d in DOMAINS for ty in TYPES)
    # difficulty varies inside every type
    for ty in TYPES:
        levels = collections.Counter(t["difficulty"] for t in tasks if t["type"] == ty)
        assert len(levels) >= 2 and min(levels.values()) >= 50, (ty, levels)
    # the workflow steps follow the research order
    order = generate.TASK_TYPES
    for steps in by_wf.values():
        idx = [order.index(t["type"]) for t in steps]
        assert idx == sorted(idx)


def test_quantitative_steps_carry_gsm8k_answers(default_workload):
    _, tasks = default_workload
    files = {f: (GSM8K / f).read_text(encoding="utf-8").splitlines() for f in ("test.jsonl", "train.jsonl")}
    quant = [t for t in tasks if t["type"] == "quantitative_reasoning"]
    assert len(quant) >= 400
    seen = set()
    for t in quant:
        src = t["source"]
        assert src["dataset"] == "gsm8k"
        key = (src["file"], src["line"])
        assert key not in seen
        seen.add(key)
        row = json.loads(files[src["file"]][src["line"] - 1])
        assert row["question"].strip() in t["messages"][0]["content"]
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        assert t["answer"] == final, (key, final)
        assert checkers.judge(t, row["answer"], row["answer"]) == (True, 1.0, True)


def test_ground_truths_are_judged_correct(default_workload):
    _, tasks = default_workload
    for t in tasks:
        if "answer" in t:
            assert checkers.correct(t, t["answer"]) is True, t["id"]
            assert checkers.correct(t, "I do not know.") is False
        if t["checker"]["kind"] == "contains":     # no phrase that ordinary prose contains by chance
            for p in [t["answer"], *t["checker"]["aliases"]]:
                assert len(checkers.normalize(p)) >= 2 and checkers.normalize(p) not in STOPWORDS, p


def test_citation_styles():
    authors = [("Maria", "Garcia"), ("Wei", "Chen"), ("Amina", "Okafor")]
    title = "A water-based route for cleaner drug manufacturing"
    args = ("Journal of Sustainable Chemistry", 2019, 12, 3, "45-67")
    f = generate.format_citation
    assert f("APA", authors[:1], title, *args) == \
        "Garcia, M. (2019). A water-based route for cleaner drug manufacturing. Journal of Sustainable Chemistry, 12(3), 45-67."
    assert f("APA", authors, title, *args).startswith("Garcia, M., Chen, W., & Okafor, A. (2019). ")
    assert f("APA", authors[:2], title, *args).startswith("Garcia, M., & Chen, W. (2019). ")
    assert f("MLA", authors[:2], title, *args) == ('Garcia, Maria, and Wei Chen. "A Water-Based Route for Cleaner Drug '
                                                 'Manufacturing." Journal of Sustainable Chemistry, vol. 12, no. 3, 2019, pp. 45-67.')
    assert f("MLA", authors, title, *args).startswith('Garcia, Maria, et al. "A Water-Based')
    assert f("Chicago", authors, title, *args) == ('Garcia, Maria, Wei Chen, and Amina Okafor. 2019. "A Water-Based Route '
                                                 'for Cleaner Drug Manufacturing." Journal of Sustainable Chemistry 12 (3): 45-67.')
    assert f("IEEE", authors, title, *args) == ('M. Garcia, W. Chen, and A. Okafor, "A water-based route for cleaner drug '
                                              'manufacturing," Journal of Sustainable Chemistry, vol. 12, no. 3, pp. 45-67, 2019.')
    assert f("IEEE", authors[:2], title, *args).startswith("M. Garcia and W. Chen, ")
    assert generate.title_case("16S rRNA sequencing links diversity to weight: evidence from mice in a maze") == \
        "16S rRNA Sequencing Links Diversity to Weight: Evidence from Mice in a Maze"


# ---------------------------------------------------------------- checkers

@pytest.mark.parametrize("text,expected", [
    ("#### 42", "42"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("The answer is 1,250.", "1250"),
    ("$1,000.50", "1000.5"),
    ("12,345,678 people", "12345678"),
    ("-3.50 degrees", "-3.5"),
    ("x = -5", "-5"),
    ("(-5)", "-5"),
    ("5-3", "3"),
    ("COVID-19", "19"),
    ("2 + 3 = 5", "5"),
    ("42.", "42"),
    ("007", "7"),
    ("-0.0", "0"),
    ("0.250", "0.25"),
    ("1,2", "2"),
    ("3, 4", "4"),
    ("1,23", "23"),
    (".5", "5"),
    ("3.14.15", "15"),
    ("#### 18, bonus 4", "4"),
    ("total 18 ####", "18"),
    ("costs 5 dollars #### 18 dollars", "18"),
    ("no digits here", None),
    ("", None),
    ("Café costs 3 €", "3"),
])
def test_final_number(text, expected):
    assert checkers.final_number(text) == expected


def test_numbers_list():
    assert checkers.numbers("from 2019-2020 we saw -4 and 1,000 then 2.50") == ["2019", "2020", "-4", "1000", "2.5"]


@pytest.mark.parametrize("text,expected", [
    ("  The Answer:\n\n Paris. ", "the answer: paris"),
    ("Smith, J. (2019). Title.", "smith, j. (2019). title"),
    ("\"Quoted!\"", "quoted"),
    ("A\tB  \r\n C", "a b c"),
    ("...", ""),
    ("ÉCOLE Müller", "École müller"),      # only ASCII letters change case
])
def test_normalize(text, expected):
    assert checkers.normalize(text) == expected


def test_contains_phrase():
    assert checkers.contains_phrase("It is Paris.", "paris")
    assert not checkers.contains_phrase("Parisian food", "Paris")
    assert checkers.contains_phrase("a CO2-rich gas", "co2")
    assert checkers.contains_phrase("Random-Access  Memory", "random-access memory")
    assert not checkers.contains_phrase("random access memory", "random-access memory")
    assert checkers.contains_phrase("cells, cells", "cells")
    assert not checkers.contains_phrase("anything", "...")


def test_tokens():
    assert checkers.tokens("Hello, World! It's 2.5x") == [b"hello", b"world", b"it", b"s", b"2", b"5x"]
    assert checkers.tokens("café au lait") == ["café".encode(), b"au", b"lait"]
    assert checkers.tokens(" .,;") == []


@pytest.mark.parametrize("ref,cand,expected", [
    ("the cat sat on the mat", "the cat lay on a mat", 8 / 12),     # LCS the cat on mat = 4
    ("a b c d", "a c d e", 6 / 8),                                   # LCS a c d = 3
    ("a b c", "c b a", 2 / 6),                                       # LCS 1
    ("one two three four", "one two", 4 / 6),                        # LCS 2
    ("Hello, World!", "hello world", 1.0),
    ("same text here", "same text here", 1.0),
    ("alpha beta", "gamma delta", 0.0),
    ("", "", 1.0),
    ("words", "", 0.0),
    ("", "words", 0.0),
])
def test_rouge_l(ref, cand, expected):
    assert checkers.rouge_l(ref, cand) == pytest.approx(expected, abs=1e-12)
    assert checkers.rouge_l(cand, ref) == pytest.approx(expected, abs=1e-12)


def task(kind, answer=None, **params):
    t = {"workflow": "w", "step": 0, "domain": "cs", "type": "x", "prompt": "p", "max_tokens": 8,
         "checker": {"kind": kind, **params}}
    if answer is not None:
        t["answer"] = answer
    return t


def test_judge_number():
    t = task("number", "1250")
    assert checkers.judge(t, "It is 1,250.", "#### 1250") == (True, 1.0, True)
    assert checkers.judge(t, "It is 1,250.", "It is 1,251.") == (False, 0.0, False)
    assert checkers.judge(t, "I think 7", "7.0") == (True, 1.0, False)      # agrees with the full model, both wrong
    assert checkers.judge(t, "I think 7", "no idea") == (False, 0.0, False)
    assert checkers.judge(t, "no idea", "No idea!") == (True, 1.0, False)   # no number: normalised text
    assert checkers.judge(t, "no idea", "unsure") == (False, 0.0, False)
    assert checkers.judge(task("number"), "5", "5")[2] is None


def test_judge_exact():
    t = task("exact", "Garcia, M. (2019). Title. J, 1(2), 3-4.")
    assert checkers.judge(t, "garcia, m. (2019). title. j, 1(2), 3-4", " Garcia, M. (2019).  Title. J, 1(2), 3-4.\n") \
        == (True, 1.0, True)
    assert checkers.judge(t, "Garcia, M. 2019. Title.", "Garcia, M. (2019). Title.")[:2] == (False, 0.0)
    assert checkers.judge(task("exact"), "a", "A.")[2] is None


def test_judge_contains():
    t = task("contains", "carbon dioxide", aliases=["CO2"])
    assert checkers.judge(t, "Carbon dioxide.", "They take in CO2 from the air.") == (True, 1.0, True)
    assert checkers.judge(t, "Oxygen", "oxygen!") == (True, 1.0, False)         # same wrong answer
    assert checkers.judge(t, "Oxygen", "Nitrogen") == (False, 0.0, False)
    assert checkers.judge(t, "Oxygen", "carbon dioxide") == (False, 0.0, True)  # right, but not what full said
    assert checkers.judge(t, "carbon dioxide", "carbon") == (False, 0.0, False)
    with pytest.raises(ValueError):
        checkers.judge(task("contains"), "a", "a")


def test_judge_similarity():
    t = task("similarity")
    s, score, c = checkers.judge(t, "the cat sat on the mat", "the cat lay on a mat")
    assert s is True and score == pytest.approx(2 / 3) and c is None
    assert checkers.judge(task("similarity", theta=0.7), "the cat sat on the mat", "the cat lay on a mat")[0] is False
    assert checkers.judge(task("similarity", theta=0.75), "a b c d", "a c d e")[0] is True   # 0.75 >= 0.75
    assert checkers.judge(t, "x y", "x y") == (True, 1.0, None)
    assert checkers.judge(t, "x y", "z w") == (False, 0.0, None)
    with pytest.raises(ValueError):
        checkers.judge(task("regex"), "a", "a")


# ---------------------------------------------------------------- format, splits

def write(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


HEADER = {"format": "agentcompress-workload", "version": 1}


def test_user_workload_with_prompts(tmp_path):
    p = write(tmp_path / "mine.jsonl", [HEADER,
              {"workflow": "a", "step": 0, "domain": "law", "type": "qa", "prompt": "Q?", "max_tokens": 4,
               "checker": {"kind": "exact"}, "answer": "yes", "extra": [1, 2]},
              {"workflow": "a", "step": 1, "domain": "law", "type": "qa",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
               "max_tokens": 4, "checker": {"kind": "similarity"}}])
    header, tasks = workload.read_workload(p)
    assert header == HEADER and len(tasks) == 2
    assert workload.task_id(tasks[0]) == "a/0" and workload.task_text(tasks[1]) == "Be brief.\nWhy?"


@pytest.mark.parametrize("bad,message", [
    ({"step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1, "checker": {"kind": "exact"}}, "workflow"),
    ({"workflow": "w", "step": -1, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
      "checker": {"kind": "exact"}}, "step"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "max_tokens": 1, "checker": {"kind": "exact"}}, "exactly one"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "messages": [], "max_tokens": 1,
      "checker": {"kind": "exact"}}, "exactly one"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "messages": [{"role": "bot", "content": "x"}],
      "max_tokens": 1, "checker": {"kind": "exact"}}, "message"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 0,
      "checker": {"kind": "exact"}}, "max_tokens"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": True,
      "checker": {"kind": "exact"}}, "max_tokens"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
      "checker": {"kind": "regex"}}, "checker"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
      "checker": {"kind": "similarity", "theta": 2}}, "theta"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
      "checker": {"kind": "contains"}}, "contains"),
    ({"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
      "checker": {"kind": "number"}, "answer": 5}, "answer"),
])
def test_invalid_tasks_are_rejected(tmp_path, bad, message):
    p = write(tmp_path / "bad.jsonl", [HEADER, bad])
    with pytest.raises(workload.WorkloadError, match=message) as e:
        workload.read_workload(p)
    assert ":2:" in str(e.value)


def test_invalid_files_are_rejected(tmp_path):
    ok = {"workflow": "w", "step": 0, "domain": "d", "type": "t", "prompt": "p", "max_tokens": 1,
          "checker": {"kind": "exact"}}
    for objs, message in (([{"format": "other", "version": 1}, ok], "header"),
                          ([{"format": "agentcompress-workload", "version": 2}, ok], "version"),
                          ([HEADER, ok, ok], "twice")):
        with pytest.raises(workload.WorkloadError, match=message):
            workload.read_workload(write(tmp_path / "f.jsonl", objs))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(workload.WorkloadError, match="empty"):
        workload.read_workload(tmp_path / "empty.jsonl")
    (tmp_path / "junk.jsonl").write_text(json.dumps(HEADER) + "\n{not json\n")
    with pytest.raises(workload.WorkloadError, match=":2:"):
        workload.read_workload(tmp_path / "junk.jsonl")


def test_fnv1a32_vectors():
    assert workload.fnv1a32(b"") == 0x811C9DC5
    assert workload.fnv1a32(b"a") == 0xE40C292C
    assert workload.fnv1a32(b"foobar") == 0xBF9CF968


def test_domain_split(default_file, tmp_path):
    counts = split.split_file(default_file, "domain", tmp_path / "tr.jsonl", tmp_path / "te.jsonl")
    htr, tr = workload.read_workload(tmp_path / "tr.jsonl")
    hte, te = workload.read_workload(tmp_path / "te.jsonl")
    assert {t["domain"] for t in tr} == {"cs", "physics"} and {t["domain"] for t in te} == {"chemistry", "biology"}
    assert htr["split"]["side"] == "train" and hte["split"]["side"] == "test" and htr["tasks"] == len(tr)
    assert counts["neither"] == 0
    # task lines are copied byte for byte
    src = set(default_file.read_text(encoding="utf-8").splitlines()[1:])
    out = (tmp_path / "tr.jsonl").read_text(encoding="utf-8").splitlines()[1:] + \
        (tmp_path / "te.jsonl").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(out) == sorted(src)


def test_workflow_split(default_file, tmp_path):
    split.split_file(default_file, "workflow", tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    _, tr = workload.read_workload(tmp_path / "a.jsonl")
    _, te = workload.read_workload(tmp_path / "b.jsonl")
    wtr, wte = {t["workflow"] for t in tr}, {t["workflow"] for t in te}
    assert not wtr & wte and len(wtr) + len(wte) == 600
    assert 0.12 <= len(wte) / 600 <= 0.28
    assert all(workload.workflow_is_test(w) for w in wte)
    split.split_file(default_file, "workflow", tmp_path / "a2.jsonl", tmp_path / "b2.jsonl")
    assert (tmp_path / "b2.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert not any(workload.workflow_is_test(w, 0.0) for w in wtr | wte)
    assert all(workload.workflow_is_test(w, 1.0) for w in wtr | wte)


def test_split_command_line(default_file, tmp_path):
    r = subprocess.run([sys.executable, str(WL_DIR / "split.py"), str(default_file), "--by", "domain",
                        "--train", str(tmp_path / "x.jsonl"), "--test", str(tmp_path / "y.jsonl")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stderr
    r = subprocess.run([sys.executable, str(WL_DIR / "split.py"), str(tmp_path / "missing.jsonl"), "--by", "domain",
                        "--train", str(tmp_path / "x.jsonl"), "--test", str(tmp_path / "y.jsonl")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "missing.jsonl" in r.stderr
