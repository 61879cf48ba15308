"""Reading, validating and splitting agentcompress-workload v1 files (README.md). Stdlib only."""
from __future__ import annotations

import json
import math
from typing import Iterator

FORMAT = "agentcompress-workload"
VERSION = 1
KINDS = ("number", "exact", "contains", "similarity")
ROLES = ("system", "user", "assistant")
TRAIN_DOMAINS = ("cs", "physics")
TEST_DOMAINS = ("chemistry", "biology")
DEFAULT_TEST_FRACTION = 0.2


class WorkloadError(ValueError):
    pass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v) -> bool:
    return isinstance(v, str) and v != ""


def validate_header(h) -> None:
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        raise WorkloadError(f'the first line must be a header {{"format": "{FORMAT}", "version": {VERSION}}}')
    if h.get("version") != VERSION or not _is_int(h.get("version")):
        raise WorkloadError(f"unsupported workload version {h.get('version')!r} (this reader knows {VERSION})")


def validate_task(t) -> None:
    """Raises WorkloadError naming the first field that does not follow the format."""
    if not isinstance(t, dict):
        raise WorkloadError("a task must be a JSON object")
    for f in ("workflow", "domain", "type"):
        if not _str(t.get(f)):
            raise WorkloadError(f"field {f!r} must be a non-empty string")
    if not _is_int(t.get("step")) or t["step"] < 0:
        raise WorkloadError("field 'step' must be an integer >= 0")
    if "id" in t and not _str(t["id"]):
        raise WorkloadError("field 'id' must be a non-empty string")
    has_p, has_m = "prompt" in t, "messages" in t
    if has_p == has_m:
        raise WorkloadError("a task needs exactly one of 'prompt' and 'messages'")
    if has_p and not isinstance(t["prompt"], str):
        raise WorkloadError("field 'prompt' must be a string")
    if has_m:
        m = t["messages"]
        if not isinstance(m, list) or not m:
            raise WorkloadError("field 'messages' must be a non-empty list")
        for msg in m:
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
                raise WorkloadError("each message must be {\"role\": system|user|assistant, \"content\": string}")
    if not _is_int(t.get("max_tokens")) or t["max_tokens"] < 1:
        raise WorkloadError("field 'max_tokens' must be an integer >= 1")
    if "answer" in t and not isinstance(t["answer"], str):
        raise WorkloadError("field 'answer' must be a string")
    if "difficulty" in t and not isinstance(t["difficulty"], str):
        raise WorkloadError("field 'difficulty' must be a string")
    c = t.get("checker")
    if not isinstance(c, dict) or c.get("kind") not in KINDS:
        raise WorkloadError(f"field 'checker' must be an object whose 'kind' is one of {', '.join(KINDS)}")
    if c["kind"] == "similarity" and "theta" in c:
        th = c["theta"]
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not (0 <= th <= 1) or math.isnan(th):
            raise WorkloadError("checker 'theta' must be a number in [0, 1]")
    if c["kind"] == "contains":
        al = c.get("aliases", [])
        if not isinstance(al, list) or not all(isinstance(a, str) for a in al):
            raise WorkloadError("checker 'aliases' must be a list of strings")
        if "answer" not in t and not al:
            raise WorkloadError("a 'contains' checker needs an 'answer' or 'aliases'")


def task_id(t: dict) -> str:
    return t.get("id") or f"{t['workflow']}/{t['step']}"


def task_text(t: dict) -> str:
    """The task's text without any chat template: the prompt, or the message contents joined by
    one newline (what the complexity controller reads the first k tokens of)."""
    if "prompt" in t:
        return t["prompt"]
    return "\n".join(m["content"] for m in t["messages"])


def iter_workload(path, raw: bool = False) -> Iterator[tuple]:
    """Yields (line number, object) for the header (line 1) and every task, validating as it goes;
    with raw=True, (line number, object, the line's bytes without its newline). Lines end at
    "\n" only (a trailing "\r" is white space to JSON); blank lines are skipped. Raises
    WorkloadError with the file and line of the first problem."""
    seen = set()
    first = True
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip(b"\n")
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
                if first:
                    validate_header(obj)
                else:
                    validate_task(obj)
                    key = (obj["workflow"], obj["step"])
                    if key in seen:
                        raise WorkloadError(f"workflow {key[0]!r} has step {key[1]} twice")
                    seen.add(key)
            except UnicodeDecodeError:
                raise WorkloadError(f"{path}:{lineno}: not UTF-8") from None
            except (json.JSONDecodeError, WorkloadError) as e:
                raise WorkloadError(f"{path}:{lineno}: {e}") from None
            first = False
            yield (lineno, obj, line) if raw else (lineno, obj)
    if first:
        raise WorkloadError(f"{path}: empty file (no header)")


def read_workload(path) -> tuple[dict, list[dict]]:
    items = [o for _, o in iter_workload(path)]
    return items[0], items[1:]


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def workflow_is_test(workflow: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> bool:
    """Deterministic train/test split by workflow id: test when FNV-1a-32 of the id's UTF-8 bytes,
    modulo 10000, is below round(test_fraction * 10000)."""
    return fnv1a32(workflow.encode("utf-8")) % 10000 < round(test_fraction * 10000)


def split_of(t: dict, by: str, test_fraction: float = DEFAULT_TEST_FRACTION,
             train_domains=TRAIN_DOMAINS, test_domains=TEST_DOMAINS) -> str | None:
    """'train', 'test' or None (a domain in neither list) for one task."""
    if by == "workflow":
        return "test" if workflow_is_test(t["workflow"], test_fraction) else "train"
    if by == "domain":
        if t["domain"] in train_domains:
            return "train"
        if t["domain"] in test_domains:
            return "test"
        return None
    raise ValueError(f"unknown split {by!r} (workflow or domain)")
