"""Checkers of the agentcompress workload format (bench/workloads/README.md, "Checkers").

Python 3.11 standard library only. Every rule works on ASCII classes only (bytes >= 0x80 are
never digits, letters, whitespace or punctuation), so a C implementation that walks the UTF-8
bytes gets the same results; README.md states each rule step by step.

    judge(task, full_answer, variant_answer) -> (success, score, correct)
"""
from __future__ import annotations

KINDS = ("number", "exact", "contains", "similarity")
DEFAULT_THETA = 0.5

_DIGITS = frozenset("0123456789")
_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACE = frozenset(" \t\n\v\f\r")
_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# ---------------------------------------------------------------- number

def _strip_thousands(s: str) -> str:
    """Drops every ',' that has a digit just before it and three digits just after it."""
    out = []
    n = len(s)
    for i, c in enumerate(s):
        if c == "," and 0 < i and i + 3 < n and s[i - 1] in _DIGITS and \
                s[i + 1] in _DIGITS and s[i + 2] in _DIGITS and s[i + 3] in _DIGITS:
            continue
        out.append(c)
    return "".join(out)


def _canonical(neg: bool, ipart: str, fpart: str) -> str:
    ipart = ipart.lstrip("0") or "0"
    fpart = fpart.rstrip("0")
    body = ipart + ("." + fpart if fpart else "")
    return "-" + body if neg and body != "0" else body


def numbers(text: str) -> list[str]:
    """Every number of the text, in order, in canonical form (see README: number rule 2-4)."""
    s = _strip_thousands(text)
    n = len(s)
    found = []
    i = 0
    while i < n:
        if s[i] not in _DIGITS:
            i += 1
            continue
        start = i
        neg = start > 0 and s[start - 1] == "-" and (start < 2 or s[start - 2] not in _ALNUM)
        while i < n and s[i] in _DIGITS:
            i += 1
        ipart = s[start:i]
        fpart = ""
        if i + 1 < n and s[i] == "." and s[i + 1] in _DIGITS:
            j = i + 1
            while j < n and s[j] in _DIGITS:
                j += 1
            fpart = s[i + 1:j]
            i = j
        found.append(_canonical(neg, ipart, fpart))
    return found


def final_number(text: str) -> str | None:
    """The answer's final number in canonical form, or None when it has none.

    After the last "####" when that part holds a number ("#### 42", GSM8K style), else in the
    whole text: the last number."""
    k = text.rfind("####")
    if k >= 0:
        tail = numbers(text[k + 4:])
        if tail:
            return tail[-1]
    found = numbers(text)
    return found[-1] if found else None


# ---------------------------------------------------------------- exact / contains

def normalize(text: str) -> str:
    """ASCII lower case, runs of ASCII whitespace -> one space, strip ASCII whitespace and
    punctuation at both ends."""
    s = text.translate(_LOWER)
    out = []
    prev_space = False
    for c in s:
        if c in _SPACE:
            if not prev_space:
                out.append(" ")
            prev_space = True
        else:
            out.append(c)
            prev_space = False
    s = "".join(out)
    a, b = 0, len(s)
    while a < b and (s[a] in _PUNCT or s[a] == " "):
        a += 1
    while b > a and (s[b - 1] in _PUNCT or s[b - 1] == " "):
        b -= 1
    return s[a:b]


def contains_phrase(text: str, phrase: str) -> bool:
    """True when normalize(phrase) (non-empty) occurs in normalize(text) with no ASCII letter or
    digit just before or just after the occurrence."""
    hay, needle = normalize(text), normalize(phrase)
    if not needle:
        return False
    start = 0
    while True:
        k = hay.find(needle, start)
        if k < 0:
            return False
        end = k + len(needle)
        if (k == 0 or hay[k - 1] not in _ALNUM) and (end == len(hay) or hay[end] not in _ALNUM):
            return True
        start = k + 1


# ---------------------------------------------------------------- similarity

def tokens(text: str) -> list[bytes]:
    """Word tokens: maximal runs of ASCII letters, ASCII digits and bytes >= 0x80 of the UTF-8
    text, ASCII letters lower-cased."""
    b = text.translate(_LOWER).encode("utf-8", "surrogateescape")
    out = []
    start = -1
    for i, c in enumerate(b):
        word = (48 <= c <= 57) or (97 <= c <= 122) or c >= 0x80
        if word and start < 0:
            start = i
        elif not word and start >= 0:
            out.append(b[start:i])
            start = -1
    if start >= 0:
        out.append(b[start:])
    return out


def lcs_length(a: list, b: list) -> int:
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else (prev[j] if prev[j] >= cur[j - 1] else cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 over tokens(): 2*LCS / (len(ref) + len(cand)); 1.0 when both have no token."""
    r, c = tokens(reference), tokens(candidate)
    if not r and not c:
        return 1.0
    if not r or not c:
        return 0.0
    return 2.0 * lcs_length(r, c) / (len(r) + len(c))


# ---------------------------------------------------------------- judge

def _accepted(task: dict) -> list[str]:
    out = []
    if task.get("answer") is not None:
        out.append(task["answer"])
    out.extend(task.get("checker", {}).get("aliases", []))
    return out


def judge(task: dict, full_answer: str, variant_answer: str) -> tuple[bool, float, bool | None]:
    """Judges a variant's answer against the full model's answer (success, score) and against the
    task's ground truth when it has one (correct; None when it has none)."""
    checker = task["checker"]
    kind = checker["kind"]
    answer = task.get("answer")
    if kind == "number":
        fv, vv = final_number(full_answer), final_number(variant_answer)
        if fv is None and vv is None:
            success = normalize(full_answer) == normalize(variant_answer)
        else:
            success = fv == vv
        correct = None
        if answer is not None:
            correct = vv is not None and vv == final_number(str(answer))
        return success, 1.0 if success else 0.0, correct
    if kind == "exact":
        success = normalize(full_answer) == normalize(variant_answer)
        correct = None if answer is None else normalize(variant_answer) == normalize(str(answer))
        return success, 1.0 if success else 0.0, correct
    if kind == "contains":
        accepted = _accepted(task)
        if not accepted:
            raise ValueError("a 'contains' checker needs an answer or aliases")
        fc = any(contains_phrase(full_answer, p) for p in accepted)
        vc = any(contains_phrase(variant_answer, p) for p in accepted)
        success = (fc and vc) or normalize(full_answer) == normalize(variant_answer)
        return success, 1.0 if success else 0.0, vc
    if kind == "similarity":
        theta = float(checker.get("theta", DEFAULT_THETA))
        score = rouge_l(full_answer, variant_answer)
        return score >= theta, score, None
    raise ValueError(f"unknown checker kind {kind!r}")


def correct(task: dict, answer_text: str) -> bool | None:
    """Correctness of one answer against the ground truth (the full model's own, for instance)."""
    return judge(task, answer_text, answer_text)[2]
