"""Tensor-parallel workers in a real cluster: every worker runs its variant as 2 ranks (threads of
the process, over the CPU communicator). Answers must equal `acq run`'s single-rank greedy text."""
import json

import pytest

from cluster import Cluster, acq_run

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
