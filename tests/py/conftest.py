"""Shared fixtures for the reference checks: where the binaries, models and scratch files are."""
import os
import pathlib
import subprocess

import pytest

BIN = pathlib.Path(os.environ.get("AC_BIN", pathlib.Path(__file__).resolve().parents[2] / "build" / "bin"))
SHARED = pathlib.Path(os.environ.get("AC_SHARED", pathlib.Path(__file__).resolve().parents[3] / "shared"))
CACHE = pathlib.Path(os.environ.get("AC_CACHE", pathlib.Path.home() / ".cache" / "agentcompress"))
SMOLLM_Q4_1 = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
STORIES = SHARED / "models" / "stories260K"


def acq(*args, check=True, **kw):
    """Runs build/bin/acq and returns the CompletedProcess (text mode)."""
    r = subprocess.run([str(BIN / "acq"), *map(str, args)], capture_output=True, text=True, errors="replace", **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"acq {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}")
    return r


@pytest.fixture(scope="session")
def smollm_q4_1():
    if not SMOLLM_Q4_1.exists():
        pytest.fail(f"{SMOLLM_Q4_1} is missing: run tools/fetch-models.sh")
    return SMOLLM_Q4_1


@pytest.fixture(scope="session")
def smollm_f16(smollm_q4_1):
    """SmolLM2 with every tensor dequantized to F16, written by acq (cached next to the Q4_1)."""
    out = CACHE / "models" / "SmolLM2-135M-Instruct.F16.gguf"
    if not out.exists() or out.stat().st_mtime < (BIN / "acq").stat().st_mtime:
        acq("convert", "--gguf", smollm_q4_1, "--type", "f16", "-o", out)
    return out


@pytest.fixture(scope="session")
def stories_gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("stories") / "stories260K.gguf"
    acq("convert", "--llama2c", STORIES / "stories260K.bin", "--tokenizer", STORIES / "tok512.bin", "-o", out)
    return out


@pytest.fixture(scope="session")
def stories_zoo(stories_gguf, tmp_path_factory):
    """A zoo directory of stories260K variants without a manifest: the catalog ranks them by size
    (full F32 > int8 Q8_0 > int4 Q4_0). Small enough that cluster tests run in seconds."""
    z = tmp_path_factory.mktemp("stories-zoo")
    import shutil
    shutil.copy(stories_gguf, z / "full.gguf")
    acq("quantize", stories_gguf, z / "int8.gguf", "q8_0")
    acq("quantize", stories_gguf, z / "int4.gguf", "q4_0")
    return z
