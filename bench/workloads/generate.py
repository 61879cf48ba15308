#!/usr/bin/env python3
"""Writes a deterministic workload of multi-step research workflows (agentcompress-workload v1).

    python3 bench/workloads/generate.py [--seed 1] [--workflows 600] [--gsm8k DIR] [-o FILE]

Same arguments and same GSM8K files -> byte-identical output. Workflow i does not depend on how
many workflows follow it (a longer workload extends a shorter one with the same seed). Format
and checkers: bench/workloads/README.md. Python 3.11 standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import checkers  # noqa: E402
from vocab import DOMAINS, FACTS, FIELD, GIVEN, JOURNALS, SURNAMES, TOPICS  # noqa: E402

FORMAT = "agentcompress-workload"
VERSION = 1
# In the order a research workflow uses them; the steps of a workflow follow this order.
TASK_TYPES = ("factual_query", "literature_summary", "hypothesis_generation", "quantitative_reasoning",
              "data_to_text", "citation_formatting")
GSM8K_FILES = ("test.jsonl", "train.jsonl")
GSM8K_MAX_CHARS = 600          # longer questions are skipped (prompts stay short for a 2k context)
MASK64 = (1 << 64) - 1


class Rng:
    """splitmix64: tiny, portable, the same sequence on every platform and Python version."""

    def __init__(self, *seeds: int):
        self.state = 0x9E3779B97F4A7C15
        for s in seeds:
            self.state = (self.state ^ (s & MASK64)) & MASK64
            self.next()
            self.state = (self.state ^ self.next()) & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def between(self, lo: int, hi: int) -> int:
        """lo..hi inclusive."""
        return lo + self.below(hi - lo + 1)

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def shuffle(self, lst: list) -> None:
        for i in range(len(lst) - 1, 0, -1):
            j = self.below(i + 1)
            lst[i], lst[j] = lst[j], lst[i]

    def sample(self, seq, k: int) -> list:
        lst = list(seq)
        self.shuffle(lst)
        return lst[:k]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def fixed(units: int, decimals: int) -> str:
    """An integer count of 10^-decimals written as a decimal number ("1234", 2 -> "12.34")."""
    if decimals == 0:
        return str(units)
    s = str(units).rjust(decimals + 1, "0")
    return s[:-decimals] + "." + s[-decimals:]


def draw_value(rng: Rng, lo: float, hi: float, decimals: int) -> tuple[int, str]:
    scale = 10 ** decimals
    u = rng.between(round(lo * scale), round(hi * scale))
    return u, fixed(u, decimals)


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------- task builders
# Each returns (difficulty, messages, max_tokens, checker, answer or None, extra fields).

def literature_summary(rng: Rng, domain: str, t: dict):
    difficulty = rng.choice(("easy", "medium", "hard"))
    name, unit = t["metric"][0], t["metric"][1]
    verb = "reduces" if t["metric"][5] == "lower" else "raises"
    pct = rng.between(8, 60)
    n = rng.choice((12, 18, 24, 40, 64, 96, 120, 250))
    s = {
        "intro": f"Research on {t['topic']} is active in {FIELD[domain]}.",
        "gap": f"Current approaches based on {t['baseline']} perform poorly {t['condition']}.",
        "method": f"We study {t['method']}, which {t['finding']}.",
        "setup": f"We test it on {n} {t['objects']}.",
        "result": f"Compared with {t['baseline']}, it {verb} {name} by {pct}%.",
        "detail": f"The effect is strongest {t['condition']}, and it holds in {rng.between(70, 98)}% of the {t['objects']}.",
        "limit": f"The main limitation is that all {t['objects']} came from a single {rng.choice(('site', 'laboratory', 'setup'))}.",
        "outlook": f"These results suggest that {t['method']} is a promising route to {t['application']}.",
    }
    keys = {"easy": ("method", "result", "outlook"),
            "medium": ("intro", "method", "setup", "result", "outlook"),
            "hard": ("intro", "gap", "method", "setup", "result", "detail", "limit", "outlook")}[difficulty]
    passage = " ".join(s[k] for k in keys)
    ask = "in one sentence" if difficulty == "easy" else "in two sentences"
    msgs = user(f"Summarize this abstract {ask}.\n\n{passage}")
    return difficulty, msgs, {"easy": 96, "medium": 128, "hard": 160}[difficulty], \
        {"kind": "similarity", "theta": checkers.DEFAULT_THETA}, None, {}


def hypothesis_generation(rng: Rng, domain: str, t: dict):
    difficulty = rng.choice(("easy", "medium", "hard"))
    name = t["metric"][0]
    better = "lower" if t["metric"][5] == "lower" else "higher"
    pct = rng.between(10, 70)
    obs = f"{cap(t['objects'])} tested with {t['method']} show {pct}% {better} {name} than with {t['baseline']}."
    if difficulty == "easy":
        text = f"Observation: {obs}\nPropose one hypothesis that explains this observation."
    elif difficulty == "medium":
        text = (f"Observation: {obs}\nPropose one testable hypothesis that explains it, and name one "
                f"measurement that would test it.")
    else:
        k = rng.between(2, 5)
        text = (f"Observation 1: {obs}\nObservation 2: The difference is {k} times larger {t['condition']}.\n"
                f"Propose one testable hypothesis that explains both observations, and describe an experiment "
                f"with a control group that could test it.")
    return difficulty, user(text), {"easy": 96, "medium": 128, "hard": 160}[difficulty], \
        {"kind": "similarity", "theta": checkers.DEFAULT_THETA}, None, {}


def data_to_text(rng: Rng, domain: str, t: dict):
    difficulty = rng.choice(("easy", "medium", "hard"))
    name, unit, lo, hi, dec, direction = t["metric"]
    label = f"{name} ({unit})"

    def pair():
        a, sa = draw_value(rng, lo, hi, dec)
        b, sb = draw_value(rng, lo, hi, dec)
        good = (b < a) if direction == "lower" else (b > a)
        if rng.below(5) != 0 and not good:          # the method usually wins, not always
            sa, sb = sb, sa
        return sa, sb

    if difficulty == "easy":
        sa, sb = pair()
        table = f"| method | {label} |\n|---|---|\n| {t['baseline']} | {sa} |\n| {t['method']} | {sb} |"
        ask = "Describe this table in one sentence."
    else:
        rows = 3 if difficulty == "medium" else 5
        lines = [f"| trial | {t['baseline']} | {t['method']} |", "|---|---|---|"]
        for i in range(1, rows + 1):
            sa, sb = pair()
            lines.append(f"| {i} | {sa} | {sb} |")
        table = "\n".join(lines)
        ask = "Describe the main result of this table in two sentences."
    text = f"{ask}\n\nTable: {label} on {t['objects']}.\n{table}"
    return difficulty, user(text), {"easy": 96, "medium": 128, "hard": 128}[difficulty], \
        {"kind": "similarity", "theta": checkers.DEFAULT_THETA}, None, {}


MINOR_WORDS = frozenset("""a an the and but or nor for so yet as about above across after against along among
around at before behind below beneath beside between beyond by down during from in inside into like near of
off on onto out over past per since through throughout to toward towards under until up upon via with within
without""".split())


def title_case(title: str) -> str:
    """Headline style (MLA, Chicago): capitalise every word except articles, prepositions and
    coordinating conjunctions that are neither first, last nor after a colon; each part of a
    hyphenated word likewise; words with a capital already (rRNA, Cas9) are kept."""
    words = title.split(" ")
    out = []
    for i, w in enumerate(words):
        first = i == 0 or words[i - 1].endswith(":")
        last = i == len(words) - 1
        parts = []
        for j, p in enumerate(w.split("-")):
            bare = p.rstrip(":,")
            minor = bare.lower() in MINOR_WORDS and not (first and j == 0) and not last
            if not minor and p[:1].islower() and p == p.lower():
                p = p[0].upper() + p[1:]
            parts.append(p)
        out.append("-".join(parts))
    return " ".join(out)


def _and_join(items: list[str], serial_comma: bool = True) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + ("," if serial_comma else "") + f" and {items[-1]}"


def format_citation(style: str, authors: list[tuple[str, str]], title: str, journal: str, year: int,
                    volume: int, issue: int, pages: str) -> str:
    """Journal article reference, ASCII punctuation (hyphen in page ranges, straight quotes)."""
    end = "" if title[-1:] in "?!" else "."
    if style == "APA":
        names = [f"{s}, {g[0]}." for g, s in authors]
        who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", & " + names[-1]
        return f"{who} ({year}). {title}{end} {journal}, {volume}({issue}), {pages}."
    if style == "MLA":
        g0, s0 = authors[0]
        if len(authors) == 1:
            who = f"{s0}, {g0}"
        elif len(authors) == 2:
            who = f"{s0}, {g0}, and {authors[1][0]} {authors[1][1]}"
        else:
            who = f"{s0}, {g0}, et al"
        return f"{who}. \"{title_case(title)}{end}\" {journal}, vol. {volume}, no. {issue}, {year}, pp. {pages}."
    if style == "Chicago":
        g0, s0 = authors[0]
        rest = [f"{g} {s}" for g, s in authors[1:]]
        if not rest:
            who = f"{s0}, {g0}"
        elif len(rest) == 1:
            who = f"{s0}, {g0}, and {rest[0]}"
        else:
            who = f"{s0}, {g0}, " + ", ".join(rest[:-1]) + f", and {rest[-1]}"
        return f"{who}. {year}. \"{title_case(title)}{end}\" {journal} {volume} ({issue}): {pages}."
    if style == "IEEE":
        who = _and_join([f"{g[0]}. {s}" for g, s in authors])
        comma = "" if title[-1:] in "?!" else ","
        return f"{who}, \"{title}{comma}\" {journal}, vol. {volume}, no. {issue}, pp. {pages}, {year}."
    raise ValueError(style)


STYLE_NAME = {"APA": "APA (7th edition)", "MLA": "MLA (9th edition)", "Chicago": "Chicago author-date",
              "IEEE": "IEEE"}


def citation_formatting(rng: Rng, domain: str, t: dict):
    n_authors = rng.choice((1, 1, 2, 2, 3, 3, 4, 5))
    difficulty = "easy" if n_authors <= 2 else "hard"
    surnames = rng.sample(SURNAMES, n_authors)
    authors = [(rng.choice(GIVEN), s) for s in surnames]
    title = cap(rng.choice((
        f"{t['method']} for {t['application']}",
        f"{t['topic']}: evidence from {t['objects']}",
        f"{t['method']} {t['finding']}",
        f"does {t['method']} work {t['condition']}?",
    )))
    journal = rng.choice(JOURNALS[domain])
    year, volume, issue = rng.between(2003, 2024), rng.between(1, 60), rng.between(1, 12)
    first = rng.between(1, 900)
    pages = f"{first}-{first + rng.between(4, 24)}"
    style = rng.choice(("APA", "MLA", "Chicago", "IEEE"))
    answer = format_citation(style, authors, title, journal, year, volume, issue, pages)
    record = (f"Authors: {'; '.join(f'{g} {s}' for g, s in authors)}\nTitle: {title}\nJournal: {journal}\n"
              f"Year: {year}\nVolume: {volume}\nIssue: {issue}\nPages: {pages}")
    text = f"Format this journal article reference in {STYLE_NAME[style]} style. Reply with the reference only.\n\n{record}"
    return difficulty, user(text), 64 if difficulty == "easy" else 96, {"kind": "exact"}, answer, {"style": style}


def factual_query(rng: Rng, domain: str, t: dict):
    question, answer, aliases, difficulty = rng.choice(FACTS[domain])
    numeric = answer.isdigit()
    if numeric:
        checker = {"kind": "number"}
        text = f"Answer with a number only.\nQuestion: {question}"
    else:
        checker = {"kind": "contains", "aliases": list(aliases)}
        text = f"Answer in a few words.\nQuestion: {question}"
    return difficulty, user(text), 32 if difficulty == "easy" else 48, checker, answer, {}


# ---------------------------------------------------------------- GSM8K

def load_gsm8k(directory: pathlib.Path) -> tuple[list[dict], dict]:
    """Problems from DIR/test.jsonl then DIR/train.jsonl (whichever exist), questions of at most
    GSM8K_MAX_CHARS characters; and each file's sha256."""
    pool, digests = [], {}
    for fname in GSM8K_FILES:
        path = directory / fname
        if not path.exists():
            continue
        raw = path.read_bytes()
        digests[f"gsm8k/{fname}"] = "sha256:" + hashlib.sha256(raw).hexdigest()
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            q, a = obj["question"].strip(), obj["answer"]
            if len(q) > GSM8K_MAX_CHARS or "####" not in a:
                continue
            final = checkers.final_number(a[a.rindex("####"):])
            if final is None:
                continue
            steps = len([s for s in a[:a.rindex("####")].split("\n") if s.strip()])
            pool.append({"question": q, "answer": final, "steps": steps, "file": fname, "line": lineno})
    if not pool:
        raise SystemExit(f"generate.py: no GSM8K problems in {directory} (expected {' or '.join(GSM8K_FILES)})")
    return pool, digests


def quantitative_reasoning(problem: dict):
    s = problem["steps"]
    difficulty = "easy" if s <= 2 else "medium" if s <= 4 else "hard"
    text = ("Solve this math problem. Reason step by step briefly, then give the final answer as a number "
            f"on the last line.\n\nProblem: {problem['question']}")
    return difficulty, user(text), {"easy": 96, "medium": 128, "hard": 160}[difficulty], {"kind": "number"}, \
        problem["answer"], {"source": {"dataset": "gsm8k", "file": problem["file"], "line": problem["line"]}}


BUILDERS = {"literature_summary": literature_summary, "hypothesis_generation": hypothesis_generation,
            "data_to_text": data_to_text, "citation_formatting": citation_formatting,
            "factual_query": factual_query}


def generate(seed: int, n_workflows: int, gsm8k_dir: pathlib.Path) -> tuple[dict, list[dict]]:
    pool, digests = load_gsm8k(gsm8k_dir)
    order = list(range(len(pool)))
    Rng(seed, 0x65736D38).shuffle(order)   # GSM8K problems are used in this order, without repeats
    next_problem = 0
    tasks = []
    for w in range(n_workflows):
        rng = Rng(seed, w + 1)
        domain = DOMAINS[w % len(DOMAINS)]
        topic = rng.choice(TOPICS[domain])
        steps = rng.between(3, 8)
        types = sorted((rng.choice(TASK_TYPES) for _ in range(steps)), key=TASK_TYPES.index)
        wid = f"w{w:05d}"
        for i, ttype in enumerate(types):
            if ttype == "quantitative_reasoning":
                difficulty, msgs, max_tokens, checker, answer, extra = \
                    quantitative_reasoning(pool[order[next_problem % len(order)]])
                next_problem += 1
            else:
                difficulty, msgs, max_tokens, checker, answer, extra = BUILDERS[ttype](rng, domain, topic)
            task = {"id": f"{wid}/{i}", "workflow": wid, "step": i, "domain": domain, "type": ttype,
                    "difficulty": difficulty, "messages": msgs, "max_tokens": max_tokens, "checker": checker}
            if answer is not None:
                task["answer"] = answer
            task.update(extra)
            tasks.append(task)
    header = {"format": FORMAT, "version": VERSION, "generator": "bench/workloads/generate.py", "seed": seed,
              "workflows": n_workflows, "tasks": len(tasks), "domains": list(DOMAINS),
              "task_types": list(TASK_TYPES), "sources": digests}
    return header, tasks


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def default_gsm8k() -> pathlib.Path:
    if os.environ.get("AC_SHARED"):
        return pathlib.Path(os.environ["AC_SHARED"]) / "data" / "gsm8k"
    return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    ap.add_argument("--workflows", type=int, default=600, help="number of workflows (default 600)")
    ap.add_argument("--gsm8k", type=pathlib.Path, default=None,
                    help="directory with GSM8K test.jsonl / train.jsonl (default ../shared/data/gsm8k from the "
                         "repository root, or $AC_SHARED/data/gsm8k)")
    ap.add_argument("-o", "--output", default="-", help="output file (default stdout)")
    args = ap.parse_args(argv)
    if args.workflows < 1:
        ap.error("--workflows must be at least 1")
    if not 0 <= args.seed < 2 ** 64:
        ap.error("--seed must be in 0 .. 2^64-1")
    header, tasks = generate(args.seed, args.workflows, args.gsm8k or default_gsm8k())
    text = "".join(dumps(o) + "\n" for o in [header, *tasks])
    if args.output == "-":
        sys.stdout.buffer.write(text.encode("utf-8"))
    else:
        pathlib.Path(args.output).write_text(text, encoding="utf-8", newline="\n")
        print(f"{args.output}: {args.workflows} workflows, {len(tasks)} tasks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
