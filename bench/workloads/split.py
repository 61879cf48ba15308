#!/usr/bin/env python3
"""Splits a workload into train and test files.

    split.py WORKLOAD --by workflow [--test-fraction 0.2] --train OUT --test OUT
    split.py WORKLOAD --by domain [--train-domains cs,physics] [--test-domains chemistry,biology] --train OUT --test OUT

--by workflow: deterministic by workflow id (FNV-1a-32 of the id, modulo 10000, below
round(fraction * 10000) is test), so every step of a workflow lands on the same side.
--by domain: the cross-domain evaluation (train on CS + physics, test on chemistry + biology);
tasks of other domains go to neither file. Task lines are copied byte for byte; each output
starts with the input's header plus a "split" object saying how it was made.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import workload as wl  # noqa: E402


def split_file(src, by: str, train_out, test_out, test_fraction=wl.DEFAULT_TEST_FRACTION,
               train_domains=wl.TRAIN_DOMAINS, test_domains=wl.TEST_DOMAINS) -> dict:
    header, counts = None, {"train": 0, "test": 0, "neither": 0}
    out = {"train": [], "test": []}
    for _, obj, line in wl.iter_workload(src, raw=True):
        if header is None:
            header = obj
            continue
        side = wl.split_of(obj, by, test_fraction, train_domains, test_domains)
        if side is None:
            counts["neither"] += 1
            continue
        counts[side] += 1
        out[side].append(line + b"\n")
    rule = {"by": by, "source": str(src)}
    if by == "workflow":
        rule["test_fraction"] = test_fraction
    else:
        rule["train_domains"], rule["test_domains"] = list(train_domains), list(test_domains)
    for side, dest in (("train", train_out), ("test", test_out)):
        h = dict(header)
        h["split"] = dict(rule, side=side)
        h["tasks"] = counts[side]
        h.pop("workflows", None)
        first = json.dumps(h, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        pathlib.Path(dest).write_bytes(first.encode("utf-8") + b"".join(out[side]))
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload")
    ap.add_argument("--by", choices=("workflow", "domain"), required=True)
    ap.add_argument("--test-fraction", type=float, default=wl.DEFAULT_TEST_FRACTION)
    ap.add_argument("--train-domains", default=",".join(wl.TRAIN_DOMAINS))
    ap.add_argument("--test-domains", default=",".join(wl.TEST_DOMAINS))
    ap.add_argument("--train", required=True, help="output file for the training side")
    ap.add_argument("--test", required=True, help="output file for the test side")
    a = ap.parse_args(argv)
    if not 0 <= a.test_fraction <= 1:
        ap.error("--test-fraction must be in [0, 1]")
    try:
        c = split_file(a.workload, a.by, a.train, a.test, a.test_fraction,
                       tuple(a.train_domains.split(",")), tuple(a.test_domains.split(",")))
    except (OSError, wl.WorkloadError) as e:
        print(f"split.py: {e}", file=sys.stderr)
        return 1
    print(f"train {c['train']} tasks, test {c['test']} tasks" +
          (f", {c['neither']} in neither" if c["neither"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
