"""Not enough disk: every command that writes a model fails with a clear error and leaves no file,
neither the output nor a temporary. The disk is made "full" with RLIMIT_FSIZE (writes past the
limit fail with EFBIG once SIGXFSZ is ignored), which needs no root and no real full disk."""
import resource
import signal

import pytest

from conftest import acq

LIMIT = 64 << 10  # bytes; stories260K's GGUF is ~1 MiB, so every writer runs past this


def small_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.mark.parametrize("cmd", [
    ["quantize", "{in}", "{out}", "q8_0"],
    ["convert", "--gguf", "{in}", "--type", "f16", "-o", "{out}"],
    ["prune", "{in}", "{out}", "--ffn", "0.25"],
    ["lowrank", "{in}", "{out}", "--rank", "8"],
])
def test_disk_full_leaves_nothing(stories_gguf, tmp_path, cmd):
    out = tmp_path / "out.gguf"
    args = [a.format(**{"in": stories_gguf, "out": out}) for a in cmd]
    ok = acq(*args, check=False)
    assert ok.returncode == 0, ok.stderr  # the same command works with room to write
    assert out.stat().st_size > LIMIT
    out.unlink()
    r = acq(*args, check=False, preexec_fn=small_disk)
    assert r.returncode != 0
    assert "cannot write" in r.stderr and "File too large" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == [], "a partial or temporary file was left behind"
