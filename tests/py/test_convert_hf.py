"""`acq convert --hf`: Hugging Face llama directories (config.json, tokenizer.json,
tokenizer_config.json, *.safetensors) to GGUF.

The reference is the real SmolLM2-135M-Instruct GGUF. We turn it back into the directory its
authors published: tensors dequantized (gguf.quants), attn_q/attn_k rows un-permuted to
transformers' half-split RoPE layout, written as F16 or BF16 safetensors; the tokenizer as
tokenizer.json with SmolLM2's real pre-tokenizer; the chat template in tokenizer_config.json.
Converting that directory must give back every tensor exactly (up to the F16/BF16 rounding of
the safetensors we wrote, which we apply to the expectation too), the same metadata and
tokenizer arrays, and a file llama.cpp loads and tokenizes like the original.

A second, SentencePiece-style directory (Unigram tokenizer with byte fallback, F32, sharded) is
made the same way from stories260K. Bad inputs must fail with one clear line on stderr.
"""
import json
import shutil
import struct

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize
from safetensors.numpy import save_file

from conftest import acq

# --- helpers ---------------------------------------------------------------------------------

# GGUF suffix -> transformers suffix, per block.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(name):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{LAYER_NAMES[rest]}"


def permute(w, n_head):
    """transformers' half-split RoPE rows -> llama.cpp's adjacent pairs (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """The inverse of permute: GGUF rows back to the layout transformers keeps."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16(x):
    """float32 -> bfloat16 bits (uint16), round to nearest even (no NaNs in weights)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, raw_dtype=None):
    """Writes a safetensors file by hand: {name: (dtype, shape, bytes)}. Used for BF16 (numpy has
    no bfloat16) and for the deliberately broken files."""
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # the reference writer pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_model(d, tensors, dtype, shards=1):
    """Writes {hf_name: float32 array} as safetensors in `dtype` (F32, F16 via the safetensors
    package, BF16 by hand), split over `shards` files with an index when shards > 1."""
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        fn = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        if dtype == "BF16":
            raw = {n: ("BF16", tensors[n].shape, to_bf16(tensors[n]).tobytes()) for n in group}
            write_safetensors(d / fn, raw)
        else:
            np_type = np.float16 if dtype == "F16" else np.float32
            save_file({n: np.ascontiguousarray(tensors[n], dtype=np_type) for n in group}, str(d / fn),
                      metadata={"format": "pt"})
        weight_map.update({n: fn for n in group})
    if shards > 1:
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def rounded(x, dtype):
    """What a float32 array reads back as after being stored in `dtype`."""
    if dtype == "BF16":
        return from_bf16(to_bf16(x))
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float32)
    return x.astype(np.float32)


def fields(reader):
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensor_f32(t):
    """A reader tensor as float32, in transformers' (rows, cols) shape."""
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed([int(n) for n in t.shape])))
    return dequantize(t.data, t.tensor_type).astype(np.float32)


def bytes_to_unicode():
    """GPT-2's byte -> printable code point table (byte-level BPE vocabularies are written in it)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


# Pre-tokenizers as tokenizer.json spells them: GPT-2's, SmolLM2's real one, Llama 3's.
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bpe_tokenizer_json(tokens, types, merges, pre=SMOLLM_PRE, pair_merges=False):
    """tokenizer.json for a byte-level BPE vocabulary; CONTROL tokens become special added tokens."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ") for m in merges] if pair_merges else merges},
    }


def convert(d, out, typ):
    return acq("convert", "--hf", d, "-o", out, "--type", typ, check=False)


def assert_ok(r):
    assert r.returncode == 0, r.stderr


# --- SmolLM2, byte-level BPE ------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm(smollm_q4_1):
    """The original file: reader, metadata, and every tensor dequantized to float32."""
    r = gguf.GGUFReader(smollm_q4_1)
    tensors = {t.name: tensor_f32(t) for t in r.tensors}
    return {"path": smollm_q4_1, "kv": fields(r), "tensors": tensors}


def make_smollm_dir(d, smollm, dtype, tied=True, shards=1, pair_merges=False):
    kv, orig = smollm["kv"], smollm["tensors"]
    n_head, n_kv = kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]
    d.mkdir()
    hf = {}
    for name, w in orig.items():
        if name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        hf[hf_name(name)] = w
    if not tied:
        hf["lm_head.weight"] = orig["token_embd.weight"]
    write_model(d, hf, dtype, shards)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": kv["llama.embedding_length"], "initializer_range": 0.041666666666666664,
        "intermediate_size": kv["llama.feed_forward_length"],
        "max_position_embeddings": kv["llama.context_length"], "model_type": "llama",
        "num_attention_heads": n_head, "num_hidden_layers": kv["llama.block_count"],
        "num_key_value_heads": n_kv, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 100000.0, "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": True,
        "vocab_size": kv["llama.vocab_size"]}))
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    (d / "tokenizer.json").write_text(json.dumps(
        bpe_tokenizer_json(tokens, types, kv["tokenizer.ggml.merges"], pair_merges=pair_merges), ensure_ascii=False))
    special = [t for t, ty in zip(tokens, types) if ty == 3]
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, t in enumerate(tokens) if types[i] == 3},
        "additional_special_tokens": special[1:3],
        # One token as a plain string, one as the {content: ...} object older files use.
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": True},
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "chat_template": kv["tokenizer.chat_template"], "clean_up_tokenization_spaces": False,
        "model_max_length": 8192, "tokenizer_class": "GPT2Tokenizer", "vocab_size": len(tokens)}))


# (safetensors dtype, output type, tied embeddings, shards, merges as [a, b] pairs)
VARIANTS = {
    "f16-src-f32-out": ("F16", "f32", True, 1, False),
    "bf16-src-f32-out-untied-sharded": ("BF16", "f32", False, 3, True),
    "f16-src-f16-out": ("F16", "f16", True, 1, False),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, smollm, tmp_path_factory):
    dtype, typ, tied, shards, pair_merges = VARIANTS[request.param]
    base = tmp_path_factory.mktemp("hf")
    d, out = base / "SmolLM2-135M-Instruct", base / "out.gguf"
    make_smollm_dir(d, smollm, dtype, tied, shards, pair_merges)
    r = convert(d, out, typ)
    assert_ok(r)
    yield {"out": out, "dtype": dtype, "type": typ, "tied": tied, "dir": d}
    shutil.rmtree(base, ignore_errors=True)


def test_tensors_round_trip(converted, smollm):
    """Every tensor equals the dequantized original after the safetensors rounding; attn_q/attn_k
    come back in llama.cpp's row order exactly."""
    r = gguf.GGUFReader(converted["out"])
    orig = dict(smollm["tensors"])
    if not converted["tied"]:
        orig["output.weight"] = orig["token_embd.weight"]
    got = {t.name: t for t in r.tensors}
    assert sorted(got) == sorted(orig)
    dtype = converted["dtype"]
    want_type = gguf.GGMLQuantizationType.F16 if converted["type"] == "f16" else gguf.GGMLQuantizationType.F32
    # Storing the weights in F16 / BF16 changes each by at most half an ulp: 2^-11 / 2^-8 relative
    # (F16 subnormals: 2^-25 absolute).
    rtol = 2.0**-8 if dtype == "BF16" else 2.0**-11
    for name, t in got.items():
        w = orig[name]
        assert [int(n) for n in t.shape] == list(reversed(w.shape)), name
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if w.ndim == 1 else want_type), name
        out = tensor_f32(t)
        exp = rounded(w, dtype)
        if converted["type"] == "f16":
            exp = rounded(exp, "F16")
        np.testing.assert_array_equal(out, exp, err_msg=name)
        np.testing.assert_allclose(out, w, rtol=rtol, atol=2.0**-25, err_msg=name)


KEYS = ["general.architecture", "llama.context_length", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
        "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"]


def test_metadata(converted, smollm):
    kv = fields(gguf.GGUFReader(converted["out"]))
    for k in KEYS:
        assert kv.get(k) == smollm["kv"][k], k
    assert kv["general.file_type"] == (1 if converted["type"] == "f16" else 0)
    assert kv["general.name"] == "SmolLM2-135M-Instruct"
    assert "llama.rope.scaling.type" not in kv


PROMPTS = ["Hello world", "The year 2024 had 366 days.", "  leading spaces\tand\ttabs\n\nnewlines",
           "<|im_start|>user\nWhat is 12*34?<|im_end|>\n<|im_start|>assistant\n", "naïve café 東京 🙂",
           "def f(x):\n    return x**2  # comment"]


@pytest.fixture(scope="module")
def llama_orig(smollm):
    import llama_cpp
    return llama_cpp.Llama(model_path=str(smollm["path"]), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def llama_f16(smollm_f16):
    """The same weights dequantized to F16 by `acq convert --gguf` (no RoPE permutation involved)."""
    import llama_cpp
    return llama_cpp.Llama(model_path=str(smollm_f16), n_ctx=256, logits_all=True, verbose=False)


def last_logits(m, prompt):
    m.reset()
    m.eval(m.tokenize(prompt.encode(), add_bos=False, special=True))
    return np.array(m.scores[m.n_tokens - 1])


def test_llama_cpp_loads_and_tokenizes(converted, llama_orig, llama_f16):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(converted["out"]), vocab_only=False, n_ctx=256, logits_all=True,
                          verbose=False)
    for p in PROMPTS:
        for special in (False, True):
            want = llama_orig.tokenize(p.encode(), add_bos=False, special=special)
            assert llm.tokenize(p.encode(), add_bos=False, special=special) == want, (p, special)
    # Against the same weights dequantized straight to F16: identical logits when our file holds
    # the very same F16 values, else close (a wrong RoPE row order would change them entirely).
    for p in ["The capital of France is", PROMPTS[3]]:
        want, got = last_logits(llama_f16, p), last_logits(llm, p)
        if converted["dtype"] == "F16" and converted["type"] == "f16":
            np.testing.assert_array_equal(got, want)
        else:
            # Measured: 0.03 (F16 weights computed in F32), 0.13 (BF16); logits span about 40.
            atol = 0.1 if converted["dtype"] == "F16" else 0.5
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=p)


# --- stories260K, SentencePiece-style (Unigram + byte fallback), F32, sharded ------------------

@pytest.fixture(scope="module")
def stories(stories_gguf):
    r = gguf.GGUFReader(stories_gguf)
    return {"path": stories_gguf, "kv": fields(r), "tensors": {t.name: tensor_f32(t) for t in r.tensors}}


def spm_merges(tokens, scores, types):
    """Merges for a SentencePiece BPE vocabulary as transformers exports it: every normal
    multi-character piece made from two shorter pieces, best score first."""
    ids = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i in sorted(range(len(tokens)), key=lambda i: -scores[i]):
        t = tokens[i]
        if types[i] != 1 or len(t) < 2:
            continue
        split = next((k for k in range(1, len(t)) if t[:k] in ids and t[k:] in ids), None)
        if split is not None:
            merges.append(f"{t[:split]} {t[split:]}")
    return merges


@pytest.mark.parametrize("model", ["Unigram", "BPE"])
def test_sentencepiece(stories, tmp_path, model):
    """SentencePiece vocabularies exported by transformers, as Unigram (pieces with scores) or as
    BPE with byte fallback (merges; the converter derives scores from merge ranks)."""
    kv, orig = stories["kv"], stories["tensors"]
    n_head, n_kv = kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]
    d = tmp_path / "stories260K"
    d.mkdir()
    hf = {}
    for name, w in orig.items():
        if name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        hf[hf_name(name)] = w
    write_model(d, hf, "F32", shards=2)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": kv["llama.embedding_length"], "intermediate_size": kv["llama.feed_forward_length"],
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "num_hidden_layers": kv["llama.block_count"],
        "max_position_embeddings": kv["llama.context_length"], "rms_norm_eps": 1e-05,
        "tie_word_embeddings": "output.weight" not in orig, "vocab_size": len(kv["tokenizer.ggml.tokens"])}))
    tokens, scores = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.scores"]
    types = kv["tokenizer.ggml.token_type"]
    specials = [i for i, ty in enumerate(types) if ty in (2, 3)]
    (d / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i in specials],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "▁"}]},
        "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                  "vocab": [[t, s] for t, s in zip(tokens, scores)]} if model == "Unigram" else
                 {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": spm_merges(tokens, scores, types)}},
        ensure_ascii=False))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    out = tmp_path / "out.gguf"
    assert_ok(convert(d, out, "f32"))

    r = gguf.GGUFReader(out)
    got = fields(r)
    for k in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
              "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "llama.block_count",
              "llama.attention.head_count_kv", "llama.rope.dimension_count"]:
        assert got[k] == kv[k], k
    if model == "Unigram":
        np.testing.assert_array_equal(np.float32(got["tokenizer.ggml.scores"]), np.float32(scores))
    assert {t.name for t in r.tensors} == set(orig)
    for t in r.tensors:  # F32 in, F32 out: bit-exact, permutation included
        np.testing.assert_array_equal(tensor_f32(t), orig[t.name], err_msg=t.name)

    import llama_cpp
    a = llama_cpp.Llama(model_path=str(stories["path"]), vocab_only=True, verbose=False)
    b = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    for p in ["Once upon a time, there was a little girl.", "Lily and Tom 123 played!", "  two  spaces", "ünïcode"]:
        assert b.tokenize(p.encode()) == a.tokenize(p.encode()), p


# --- a tiny model: GQA permutation against llama.cpp's formula, and bad inputs ----------------

TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 24, "head_dim": 6}


def tiny_tensors(vocab, rng):
    e, h, kv = TINY["hidden_size"], TINY["num_attention_heads"], TINY["num_key_value_heads"]
    ff, hd = TINY["intermediate_size"], TINY["head_dim"]
    t = {"model.embed_tokens.weight": (vocab, e), "model.norm.weight": (e,), "lm_head.weight": (vocab, e)}
    for l in range(TINY["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
                  p + "self_attn.q_proj.weight": (h * hd, e), p + "self_attn.k_proj.weight": (kv * hd, e),
                  p + "self_attn.v_proj.weight": (kv * hd, e), p + "self_attn.o_proj.weight": (e, h * hd),
                  p + "mlp.gate_proj.weight": (ff, e), p + "mlp.up_proj.weight": (ff, e),
                  p + "mlp.down_proj.weight": (e, ff)})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}


@pytest.fixture
def tiny(tmp_path):
    """A valid two-layer model with GQA and head_dim != hidden/heads, and a small byte-level
    vocabulary (256 byte symbols, three merges, one special token)."""
    d = tmp_path / "tiny"
    d.mkdir()
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    types = [1] * 259 + [3]
    merges = ["Ġ t", "h e", "Ġt he"]
    tensors = tiny_tensors(len(tokens), np.random.default_rng(0))
    write_model(d, tensors, "F32")
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                               "vocab_size": len(tokens), "rms_norm_eps": 1e-6,
                                               "max_position_embeddings": 128, "eos_token_id": 259, **TINY}))
    tok = bpe_tokenizer_json(tokens, types, merges, pre=BYTE_LEVEL)
    (d / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    return {"dir": d, "tensors": tensors, "tokens": tokens}


def test_tiny_gqa_permutation(tiny, tmp_path):
    out = tmp_path / "tiny.gguf"
    assert_ok(convert(tiny["dir"], out, "f32"))
    r = gguf.GGUFReader(out)
    kv = fields(r)
    assert kv["tokenizer.ggml.pre"] == "gpt-2"
    assert kv["tokenizer.ggml.eos_token_id"] == 259
    assert kv["tokenizer.ggml.add_bos_token"] is False
    assert kv["llama.attention.key_length"] == kv["llama.attention.value_length"] == 6
    assert kv["tokenizer.ggml.token_type"][-1] == 3
    for t in r.tensors:
        src = next(k for k in tiny["tensors"] if hf_name(t.name) == k)
        w = tiny["tensors"][src]
        if t.name.endswith("attn_q.weight"):
            w = permute(w, TINY["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = permute(w, TINY["num_key_value_heads"])
        np.testing.assert_array_equal(tensor_f32(t), w, err_msg=t.name)
    assert len(r.tensors) == len(tiny["tensors"])


@pytest.mark.parametrize("pre,name", [
    (BYTE_LEVEL, "gpt-2"),
    (SMOLLM_PRE, "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": False}, BYTE_LEVEL]},
     "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {**BYTE_LEVEL, "use_regex": False}]}, "llama-bpe"),
], ids=["gpt2", "smollm-digits", "smollm-split", "llama3"])
def test_tiny_pre_tokenizers(tiny, tmp_path, pre, name):
    f = tiny["dir"] / "tokenizer.json"
    tok = json.loads(f.read_text())
    tok["pre_tokenizer"] = pre
    f.write_text(json.dumps(tok))
    out = tmp_path / "pre.gguf"
    assert_ok(convert(tiny["dir"], out, "f16"))
    assert fields(gguf.GGUFReader(out))["tokenizer.ggml.pre"] == name


def llama3_rope_factors(theta, dim, factor, lo, hi, old_ctx):
    """Llama 3.1's per-frequency RoPE factors, as llama.cpp's converter computes them."""
    import math
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < old_ctx / hi:
            out.append(1.0)
        elif wl > old_ctx / lo:
            out.append(factor)
        else:
            smooth = (old_ctx / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def test_tiny_rope_scaling_and_template_file(tiny, tmp_path):
    d, cfg_path = tiny["dir"], tiny["dir"] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "linear.gguf"
    assert_ok(convert(d, out, "f16"))
    kv = fields(gguf.GGUFReader(out))
    assert kv["llama.rope.scaling.type"] == "linear" and kv["llama.rope.scaling.factor"] == 4.0
    assert kv["tokenizer.chat_template"] == (d / "chat_template.jinja").read_text()

    cfg["rope_theta"] = 500000.0
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}
    cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"] = 64, 1, 1
    cfg_path.write_text(json.dumps(cfg))
    t = dict(tiny["tensors"])  # one 64-wide head, so that the factors span all three regimes
    rng = np.random.default_rng(1)
    for l in range(TINY["num_hidden_layers"]):
        for proj, shape in [("q", (64, 16)), ("k", (64, 16)), ("v", (64, 16)), ("o", (16, 64))]:
            t[f"model.layers.{l}.self_attn.{proj}_proj.weight"] = rng.standard_normal(shape).astype(np.float32)
    write_model(d, t, "F32")
    out = tmp_path / "llama3.gguf"
    assert_ok(convert(d, out, "f32"))
    r = gguf.GGUFReader(out)
    got = tensor_f32(next(x for x in r.tensors if x.name == "rope_freqs.weight"))
    want = llama3_rope_factors(500000.0, 64, 8.0, 1.0, 4.0, 8192)
    assert len(set(want.tolist())) > 3
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert "llama.rope.scaling.type" not in fields(r)

    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    cfg_path.write_text(json.dumps(cfg))
    fails(d, tmp_path, "rope_scaling", "yarn")


def fails(d, tmp_path, *expect):
    """The conversion fails with one line on stderr that contains every `expect`, and leaves no
    output file."""
    out = tmp_path / "bad.gguf"
    r = convert(d, out, "f16")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    print(r.stderr, end="")  # shown by pytest -s, and on failure
    assert r.returncode != 0 and r.returncode < 128, (r.returncode, r.stderr)  # an error, not a crash
    assert len(lines) == 1, r.stderr
    for e in expect:
        assert e in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def test_missing_config(tiny, tmp_path):
    (tiny["dir"] / "config.json").unlink()
    fails(tiny["dir"], tmp_path, "config.json")


def test_missing_tokenizer(tiny, tmp_path):
    (tiny["dir"] / "tokenizer.json").unlink()
    fails(tiny["dir"], tmp_path, "tokenizer.json")


def test_truncated_safetensors(tiny, tmp_path):
    f = tiny["dir"] / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    fails(tiny["dir"], tmp_path, "model.safetensors", "data_offsets")


def test_header_length_past_eof(tiny, tmp_path):
    f = tiny["dir"] / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(data) + 1) + data[8:])
    fails(tiny["dir"], tmp_path, "header length", "past the end")
    f.write_bytes(struct.pack("<Q", 2**64 - 1) + data[8:])
    fails(tiny["dir"], tmp_path, "header length")
    f.write_bytes(b"\x01\x00\x00")
    fails(tiny["dir"], tmp_path, "too short")


def test_bad_header_json(tiny, tmp_path):
    f = tiny["dir"] / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8] = ord("[")
    f.write_bytes(bytes(data))
    fails(tiny["dir"], tmp_path, "header")


def test_unknown_dtype(tiny, tmp_path):
    t = tiny["tensors"]
    raw = {k: ("F32", v.shape, v.tobytes()) for k, v in t.items()}
    raw["model.norm.weight"] = ("I64", (8,), np.zeros(8, np.int64).tobytes())
    write_safetensors(tiny["dir"] / "model.safetensors", raw)
    fails(tiny["dir"], tmp_path, "model.norm.weight", "I64")


def test_sizes_disagree(tiny, tmp_path):
    t = tiny["tensors"]
    raw = {k: ("F32", v.shape, v.tobytes()) for k, v in t.items()}
    # 16 F32 values (64 bytes) declared as F16, which needs 32.
    raw["model.layers.0.input_layernorm.weight"] = ("F16", (16,), t["model.norm.weight"].tobytes())
    write_safetensors(tiny["dir"] / "model.safetensors", raw)
    fails(tiny["dir"], tmp_path, "input_layernorm", "need")


def test_wrong_shape(tiny, tmp_path):
    t = dict(tiny["tensors"])
    t["model.norm.weight"] = np.ones(17, np.float32)
    write_model(tiny["dir"], t, "F32")
    fails(tiny["dir"], tmp_path, "model.norm.weight", "[17]", "[16]")


def test_unknown_tensor(tiny, tmp_path):
    t = dict(tiny["tensors"])
    t["model.layers.0.mlp.gate_proj.bias"] = np.ones(24, np.float32)
    write_model(tiny["dir"], t, "F32")
    fails(tiny["dir"], tmp_path, "model.layers.0.mlp.gate_proj.bias")


def test_missing_tensor(tiny, tmp_path):
    t = dict(tiny["tensors"])
    del t["model.layers.1.mlp.up_proj.weight"]
    write_model(tiny["dir"], t, "F32")
    fails(tiny["dir"], tmp_path, "model.layers.1.mlp.up_proj.weight", "missing")


def test_missing_shard(tiny, tmp_path):
    write_model(tiny["dir"], tiny["tensors"], "F32", shards=2)
    (tiny["dir"] / "model.safetensors").unlink()
    (tiny["dir"] / "model-00002-of-00002.safetensors").unlink()
    fails(tiny["dir"], tmp_path, "model-00002-of-00002.safetensors")


def test_unknown_pre_tokenizer(tiny, tmp_path):
    f = tiny["dir"] / "tokenizer.json"
    tok = json.loads(f.read_text())
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "ByteLevel"}]}
    f.write_text(json.dumps(tok))
    fails(tiny["dir"], tmp_path, "pre-tokenizer", "Whitespace")


def test_unsupported_architecture(tiny, tmp_path):
    f = tiny["dir"] / "config.json"
    cfg = json.loads(f.read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    f.write_text(json.dumps(cfg))
    fails(tiny["dir"], tmp_path, "GPTNeoXForCausalLM")


def test_token_id_out_of_range(tiny, tmp_path):
    f = tiny["dir"] / "tokenizer.json"
    tok = json.loads(f.read_text())
    tok["added_tokens"].append({"id": 999, "content": "<|extra|>", "special": True})
    f.write_text(json.dumps(tok))
    fails(tiny["dir"], tmp_path, "999")
