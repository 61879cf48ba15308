"""stories260K (a real llama2.c checkpoint) -> GGUF -> `acq run`: the published greedy text."""
import re

from conftest import STORIES, acq


def published_text():
    readme = (STORIES / "README.md").read_text()
    m = re.search(r"must print exactly:\n\n```\n(.*?)\n```", readme, re.S)
    assert m, "reference block not found in the stories260K README"
    return m.group(1)


def test_greedy_empty_prompt_matches_published_output(stories_gguf):
    # llama2.c's `run -n 200` samples once per step for 200 steps: 200 generated tokens.
    r = acq("run", stories_gguf, "-p", "", "-n", "200", "--temp", "0")
    assert r.stdout == published_text()


def test_greedy_is_the_same_with_two_threads(stories_gguf):
    r = acq("run", stories_gguf, "-p", "", "-n", "200", "-t", "2")
    assert r.stdout == published_text()


def test_prompt_continuation_is_deterministic_and_sampling_depends_on_seed(stories_gguf):
    a = acq("run", stories_gguf, "-p", "Once upon a time", "-n", "40").stdout
    b = acq("run", stories_gguf, "-p", "Once upon a time", "-n", "40").stdout
    assert a == b and len(a) > 40
    s1 = acq("run", stories_gguf, "-p", "Once upon a time", "-n", "40", "--temp", "1.0", "--seed", "1").stdout
    s1b = acq("run", stories_gguf, "-p", "Once upon a time", "-n", "40", "--temp", "1.0", "--seed", "1").stdout
    s2 = acq("run", stories_gguf, "-p", "Once upon a time", "-n", "40", "--temp", "1.0", "--seed", "2").stdout
    assert s1 == s1b
    assert s1 != s2


def test_stop_string_cuts_output(stories_gguf):
    full = acq("run", stories_gguf, "-p", "", "-n", "200").stdout
    r = acq("run", stories_gguf, "-p", "", "-n", "200", "--stop", "Lily")
    assert r.stdout == full[: full.index("Lily")]
    assert "finish: stop" in r.stderr


def test_max_tokens_limits_output(stories_gguf):
    r = acq("run", stories_gguf, "-p", "", "-n", "5")
    assert "decode 5 tokens" in r.stderr
    assert published_text().startswith(r.stdout) and 0 < len(r.stdout) < 40


def test_perplexity_of_its_own_output_is_low(stories_gguf, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(published_text() * 3)
    r = acq("perplexity", stories_gguf, text, "-c", "128")
    ppl = float(re.search(r"perplexity: ([0-9.]+)", r.stdout).group(1))
    # The model's own greedy text repeated: far below its perplexity on random words.
    words = tmp_path / "w.txt"
    words.write_text(" ".join(["zebra quantum lamp", "cloud fish", "river seven"] * 60))
    ppl_rand = float(re.search(r"perplexity: ([0-9.]+)", acq("perplexity", stories_gguf, words, "-c", "128").stdout).group(1))
    assert 1.0 < ppl < 4.0
    assert ppl_rand > 4 * ppl
