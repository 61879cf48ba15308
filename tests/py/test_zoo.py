"""acq zoo on the demo model: the variants it writes, and a manifest that says the truth about
them (files and hashes, bits per weight, quality against f16, speed and modelled cost)."""
import hashlib
import json

import pytest

from conftest import acq


@pytest.fixture(scope="module")
def zoo(smollm_q4_1, tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    r = acq("zoo", smollm_q4_1, "--out", out, "--only", "f16,int8,int4,int2", "-t", "2", "--eval-ctx", "128",
            "--eval-chunks", "3", "--bench-tokens", "8")
    return out, json.loads((out / "manifest.json").read_text()), r


def test_manifest_describes_each_file(zoo):
    out, man, r = zoo
    assert man["format"] == "agentcompress-zoo" and man["version"] == 1
    names = [v["name"] for v in man["variants"]]
    assert names == ["f16", "int8", "int4", "int2"]
    for v in man["variants"]:
        data = (out / v["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == v["sha256"]
        assert v["file_bytes"] == len(data)
        assert v["decode_tokens_per_s"] > 0
        assert v["modelled"]["bytes_per_token"] > 0 and v["modelled"]["flops_per_token"] > 0
    assert "int4" in r.stdout  # the table for people


def test_bits_per_weight_are_true(zoo):
    _, man, _ = zoo
    bpw = {v["name"]: v["bits_per_weight"] for v in man["variants"]}
    # Whole-file figures include the 1-D norms (F32) and a higher-precision embedding.
    assert 15.5 < bpw["f16"] < 16.5
    assert bpw["int8"] < 9.0
    assert bpw["int4"] < bpw["int8"] - 2.5
    assert bpw["int2"] < bpw["int4"] - 0.8
    # Over the transformer blocks' matrices the variants carry the bits they are named for:
    # q8_0 8.5, 4-bit types 4.5-5.0 (Q4_K, or Q4_1 where rows do not fit 256), 2-bit 2.625-3.0
    # (Q2_K, or our q2x).
    lay = {v["name"]: v["bits_per_weight_layers"] for v in man["variants"]}
    assert lay["f16"] == 16 and lay["int8"] == 8.5
    assert 4.5 <= lay["int4"] <= 5.0
    assert 2.625 <= lay["int2"] <= 3.0


def test_quality_orders_with_bits(zoo):
    _, man, _ = zoo
    q = {v["name"]: v["quality"] for v in man["variants"]}
    assert q["f16"]["kld_mean"] == 0 and q["f16"]["top1_agreement"] == 1
    assert 0 < q["int8"]["kld_mean"] < q["int4"]["kld_mean"] < q["int2"]["kld_mean"]
    assert q["int8"]["top1_agreement"] > q["int2"]["top1_agreement"]
    # Modelled cost per token falls with the bytes read.
    c = {v["name"]: v["modelled"]["bytes_per_token"] for v in man["variants"]}
    assert c["f16"] > c["int8"] > c["int4"] > c["int2"]


def test_every_variant_runs(zoo):
    out, man, _ = zoo
    for v in man["variants"]:
        r = acq("run", out / v["file"], "-p", "The capital of France is", "-n", "4")
        assert r.returncode == 0
