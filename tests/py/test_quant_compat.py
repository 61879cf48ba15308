"""Bit-compatibility of our tensor types with ggml's, checked against the `gguf` Python package.

A GGUF file is written with the gguf package holding, for every type we support, tensors of
random but valid block bytes (every scale a finite half, everything else random). `acq dump`
dequantizes each tensor with our kernels (the ones this CPU selects); the result must equal
gguf.quants.dequantize bit for bit. Exact equality is the right bar: both sides perform the
same float operations in the same order (see lib/quant.c), so any difference is a layout or
rounding bug, not noise.

Q8_K has no dequantizer in the gguf package; it is checked against a few lines of numpy that
follow ggml's definition (x = d * q with a float d). Q8_1 is left out: the gguf package still
lists ggml's old 40-byte Q8_1 block (float d and s), while ggml and we use 36 bytes (half d, s);
it is an activation-only type that never appears in model files.
"""
import os
import subprocess

import numpy as np
import pytest

from conftest import BIN, acq

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

QK_K = 256

# Byte offsets of the half-precision scale fields in each block, from ggml's block layouts
# (lib/quant_blocks.h): these are set to finite values, everything else is random.
HALF_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}

QUANT_TYPES = list(HALF_FIELDS) + [T.Q8_K]
FLOAT_TYPES = [T.F32, T.F16, T.BF16]

# Row lengths: SmolLM2's 576 and 1536 where the block size allows, and a few rows each.
SHAPES = {32: [(3, 576), (2, 1536), (1, 32)], QK_K: [(2, 1536), (3, 256), (1, 512)]}


def random_blocks(rng, qtype, rows, cols):
    """Random block bytes of `qtype` for a (rows, cols) tensor, with finite scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    data = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype == T.Q8_K:
        d = (rng.standard_normal(n_blocks) * 0.01).astype(np.float32)
        data[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    else:
        for off in HALF_FIELDS[qtype]:
            # Scales across the half range, subnormals and both signs included.
            mag = np.exp2(rng.uniform(-20, 4, n_blocks))
            h = (mag * rng.choice([-1.0, 1.0], n_blocks)).astype(np.float16)
            data[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return data.reshape(rows, -1)


def q8_k_dequantize(data):
    """ggml's dequantize_row_q8_K: x = d * q, d a float32 per 256 values."""
    blocks = data.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32)
    q = blocks[:, 4:4 + QK_K].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def random_floats(rng, qtype, rows, cols):
    """Finite values of a float type as raw bytes, including subnormals and extremes."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x.flat[::7] *= np.float32(1e-6)
    if qtype == T.F32:
        x.flat[1::11] = np.float32(3e38)
        x.flat[2::13] = np.float32(1e-42)  # float subnormal
        return x
    if qtype == T.F16:
        x.flat[1::11] = np.float32(65504.0)
        x.flat[2::13] = np.float32(3e-7)  # half subnormal
        return x.astype(np.float16)
    # bfloat16: truncate the float32 bits (any finite pattern is a valid bf16).
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    bits.flat[3::17] = 0x0001  # bf16 subnormal
    return bits.view(np.uint8).reshape(rows, -1)


def expected(qtype, data):
    if qtype == T.Q8_K:
        return q8_k_dequantize(data)
    if qtype == T.BF16:
        return dequantize(data.reshape(-1), T.BF16).reshape(-1)
    if qtype in (T.F32, T.F16):
        return np.asarray(data, dtype=np.float32).reshape(-1)
    return dequantize(data, qtype).reshape(-1)


@pytest.fixture(scope="module")
def compat_file(tmp_path_factory):
    """One GGUF with every case as a tensor; returns (path, {tensor name: (qtype, data)})."""
    rng = np.random.default_rng(20240607)
    path = tmp_path_factory.mktemp("quant_compat") / "types.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    cases = {}
    for qtype in FLOAT_TYPES + QUANT_TYPES:
        block_size = gguf.GGML_QUANT_SIZES[qtype][0]
        for k, (rows, cols) in enumerate(SHAPES[QK_K if block_size == QK_K else 32]):
            name = f"{qtype.name.lower()}.{k}"
            if qtype in FLOAT_TYPES:
                data = random_floats(rng, qtype, rows, cols)
                if qtype == T.BF16:
                    w.add_tensor(name, data, raw_dtype=T.BF16)
                else:
                    w.add_tensor(name, data)
            else:
                data = random_blocks(rng, qtype, rows, cols)
                w.add_tensor(name, data, raw_dtype=qtype)
            cases[name] = (qtype, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, cases


CASE_NAMES = [f"{q.name.lower()}.{k}" for q in FLOAT_TYPES + QUANT_TYPES for k in range(3)]


# Every kernel set: AC_SIMD caps the choice, so on a CPU without AVX-512 the "avx512" run simply
# repeats the best set it has.
@pytest.mark.parametrize("simd", ["ref", "avx2", "avx512"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_dequantize_matches_gguf(compat_file, tmp_path, name, simd):
    path, cases = compat_file
    qtype, data = cases[name]
    out = tmp_path / "out.f32"
    acq("dump", path, name, "-o", out, env={**os.environ, "AC_SIMD": simd})
    got = np.fromfile(out, dtype="<f4")
    want = expected(qtype, data)
    assert got.shape == want.shape, f"{name}: {got.size} values, want {want.size}"
    if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
        bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        i = bad[0]
        pytest.fail(f"{name}: {bad.size} of {got.size} values differ in their bits; first at {i}: "
                    f"got {got[i]!r}, gguf {want[i]!r} (max abs diff "
                    f"{np.nanmax(np.abs(got[bad] - want[bad])):.3g})")


def test_unsupported_type_is_named(tmp_path):
    """A tensor type we do not implement (IQ4_NL here) is refused with the tensor's name."""
    path = tmp_path / "iq4.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    block_size, type_size = gguf.GGML_QUANT_SIZES[T.IQ4_NL]
    data = np.zeros((2, 256 // block_size * type_size), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_up.weight", data, raw_dtype=T.IQ4_NL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = acq("dump", path, "blk.0.ffn_up.weight", "-o", tmp_path / "x.f32", check=False)
    assert r.returncode != 0
    assert "blk.0.ffn_up.weight" in r.stderr, r.stderr


def test_dump_rejects_missing_tensor(compat_file, tmp_path):
    path, _ = compat_file
    r = acq("dump", path, "no.such.tensor", "-o", tmp_path / "x.f32", check=False)
    assert r.returncode != 0 and "no.such.tensor" in r.stderr


def test_acq_binary_present():
    assert (BIN / "acq").exists(), f"{BIN / 'acq'} is missing: build the project first"
    r = subprocess.run([str(BIN / "acq")], capture_output=True, text=True)
    assert r.returncode != 0  # usage without a command
