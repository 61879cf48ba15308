"""Tokenizer and chat-template reference checks.

Our ids (`acq tokenize`) must equal llama.cpp's (llama-cpp-python, vocab only) on the same GGUF
file, for SmolLM2 (byte-level BPE, pre-tokenizer "smollm") and for stories260K converted to GGUF
(SentencePiece-style). Decoding must give the text back. Chat prompts must equal what the
model's Jinja template renders (jinja2, configured as Hugging Face does).
"""
import json
import subprocess

import jinja2
import jinja2.sandbox
import pytest

from conftest import BIN

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n \n",
    "Hello world",
    "Hello world!",
    " Hello world",
    "Hello world ",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   spaces    inside",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four",
    "windows\r\nline\r\nendings",
    "\n\n\nstarts with newlines",
    "ends with newlines\n\n\n",
    "mixed \t \n whitespace \n\t ",
    "I'm sure you're right, they've said it's what we'll do and he'd agree.",
    "I'M SURE YOU'RE RIGHT, THEY'VE",
    "don't can't won't shouldn't",
    "'s 're 'quoted' \"double\"",
    "1",
    "12",
    "123",
    "1234567890",
    "3.14159265358979",
    "1,000,000 and 2.5e-10",
    "99999999999999999999999999999999",
    "Call 555-0123 at 10:30pm on 2024-01-15.",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
    "Ni\u00f1o, a\u00f1o, se\u00f1or",
    "\u00c9COLE \u00c0 PARIS",
    "e\u0301 (combining accent)",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "\U0001f600",
    "\U0001f389\U0001f680 party time \U0001f44d",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
    "\U0001f1fa\U0001f1f8 flag",
    "mixed English \u4e2d\u6587 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 123",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; i++) { sum += a[i]; }",
    "if __name__ == '__main__':\n\tmain()",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.com",
    "$100 + 50% = ??? !!! ...",
    "~!@#$%^&*()_+`-=[]{}|;':\",./<>?",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start",
    "im_start|>",
    "<|endoftext|> at start",
    "\u00a0non-breaking\u00a0space",
    "em\u2003space and\u3000ideographic space",
    "\u00bd \u00bc \u2460 \u0663 \u2167",
    "\u2581already has the SentencePiece space",
    "zero\u200bwidth",
    "a \u180eb (not whitespace for llama.cpp)",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


def run_acq(*args):
    r = subprocess.run([str(BIN / "acq"), *map(str, args)], capture_output=True)
    return r


def unescape(s):
    """Undoes acq tokenize --pieces escaping: \\\\, \\n, \\t, \\r, \\xNN."""
    out = bytearray()
    raw = s.encode()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):
            e = chr(raw[i + 1])
            if e == "x":
                out.append(int(raw[i + 2:i + 4], 16))
                i += 4
                continue
            out += {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}[e]
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def our_ids(model, text, tmp_path, bos=True, special=True):
    f = tmp_path / "in.txt"
    f.write_bytes(text.encode())
    args = ["tokenize", model, "-f", f]
    if not bos:
        args.append("--no-bos")
    if not special:
        args.append("--no-special")
    r = run_acq(*args)
    assert r.returncode == 0, r.stderr.decode()
    return [int(x) for x in r.stdout.split()]


def our_pieces(model, text, tmp_path, bos=False):
    f = tmp_path / "in.txt"
    f.write_bytes(text.encode())
    args = ["tokenize", model, "-f", f, "--pieces"] + ([] if bos else ["--no-bos"])
    r = run_acq(*args)
    assert r.returncode == 0, r.stderr.decode()
    rows = []
    for line in r.stdout.decode().split("\n")[:-1]:
        tid, _, piece = line.partition("\t")
        rows.append((int(tid), unescape(piece)))
    return rows


@pytest.fixture(scope="module")
def smollm_vocab(smollm_q4_1):
    return llama_cpp.Llama(str(smollm_q4_1), vocab_only=True, verbose=False)


def test_enough_strings():
    assert len(TEXTS) >= 60 and len(set(TEXTS)) == len(TEXTS)


# --- SmolLM2: byte-level BPE -------------------------------------------------


@pytest.mark.parametrize("bos", [True, False])
def test_smollm_ids_match_llama_cpp(smollm_q4_1, smollm_vocab, tmp_path, bos):
    bad = []
    for text in TEXTS:
        ref = smollm_vocab.tokenize(text.encode(), add_bos=bos, special=True)
        ours = our_ids(smollm_q4_1, text, tmp_path, bos=bos)
        if ours != ref:
            bad.append((text, ours, ref))
    assert not bad, f"{len(bad)} of {len(TEXTS)} differ; first: {bad[0]!r}"


def test_smollm_no_special_matches_llama_cpp(smollm_q4_1, smollm_vocab, tmp_path):
    for text in [t for t in TEXTS if "<|" in t or "|>" in t]:
        ref = smollm_vocab.tokenize(text.encode(), add_bos=False, special=False)
        assert our_ids(smollm_q4_1, text, tmp_path, bos=False, special=False) == ref, text


def test_smollm_round_trip(smollm_q4_1, tmp_path):
    for text in TEXTS:
        rows = our_pieces(smollm_q4_1, text, tmp_path)
        assert b"".join(p for _, p in rows) == text.encode(), text


def test_smollm_pieces_match_llama_cpp(smollm_q4_1, smollm_vocab, tmp_path):
    text = "Hello \u65e5\u672c <|im_start|>user\n\U0001f389 x  y\t1234"
    for tid, piece in our_pieces(smollm_q4_1, text, tmp_path):
        assert piece == smollm_vocab.detokenize([tid], special=True), tid


def test_smollm_long_text(smollm_q4_1, smollm_vocab, tmp_path):
    text = "\n".join(TEXTS) * 4
    ref = smollm_vocab.tokenize(text.encode(), add_bos=False, special=True)
    assert our_ids(smollm_q4_1, text, tmp_path, bos=False) == ref


@pytest.fixture(scope="module")
def smollm_pre_copy(smollm_q4_1, tmp_path_factory):
    """SmolLM2's vocabulary and merges under another tokenizer.ggml.pre name, without tensors
    (llama.cpp loads it vocab-only): exercises the other pre-tokenizers on a real vocabulary."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(smollm_q4_1))
    made = {}

    def make(pre):
        if pre in made:
            return made[pre]
        out = tmp_path_factory.mktemp("pre") / f"smollm-{pre}.gguf"
        w = gguf.GGUFWriter(str(out), "llama")
        for name, f in reader.fields.items():
            if name.startswith("GGUF.") or name in ("general.architecture", "tokenizer.ggml.pre"):
                continue
            t = f.types[0]
            if t == gguf.GGUFValueType.ARRAY:
                w.add_key_value(name, f.contents(), t, sub_type=f.types[-1])
            else:
                w.add_key_value(name, f.contents(), t)
        w.add_string("tokenizer.ggml.pre", pre)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        made[pre] = out
        return out

    return make


@pytest.mark.parametrize("pre", ["llama-bpe", "gpt-2", "default", "qwen2"])
def test_other_pre_tokenizers_match_llama_cpp(smollm_pre_copy, tmp_path, pre):
    model = smollm_pre_copy(pre)
    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    bad = []
    for text in TEXTS:
        ref = vocab.tokenize(text.encode(), add_bos=True, special=True)
        ours = our_ids(model, text, tmp_path)
        if ours != ref:
            bad.append((text, ours, ref))
    assert not bad, f"{pre}: {len(bad)} of {len(TEXTS)} differ; first: {bad[0]!r}"


def test_unknown_pre_tokenizer_is_an_error(smollm_pre_copy):
    r = run_acq("tokenize", smollm_pre_copy("no-such-pre"), "-p", "x")
    err = r.stderr.decode()
    assert r.returncode == 1 and "no-such-pre" in err and err.count("\n") == 1


# --- stories260K: SentencePiece-style ----------------------------------------


@pytest.fixture(scope="module")
def stories_vocab(stories_gguf):
    return llama_cpp.Llama(str(stories_gguf), vocab_only=True, verbose=False)


SPM_EXTRA = ["Once upon a time, there was a little girl named Lily.", "a<s>b</s>c", "<s>",
             " <s> x", "<unk>hello", "Lily<0x41>"]


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("special", [True, False])
def test_stories_ids_match_llama_cpp(stories_gguf, stories_vocab, tmp_path, bos, special):
    bad = []
    for text in TEXTS + SPM_EXTRA:
        ref = stories_vocab.tokenize(text.encode(), add_bos=bos, special=special)
        ours = our_ids(stories_gguf, text, tmp_path, bos=bos, special=special)
        if ours != ref:
            bad.append((text, ours, ref))
    assert not bad, f"{len(bad)} of {len(TEXTS) + len(SPM_EXTRA)} differ; first: {bad[0]!r}"


def test_stories_round_trip(stories_gguf, tmp_path):
    # The text comes back with the leading space SentencePiece adds. Text with special-token
    # markers (a space is added after each) or with a literal U+2581 does not round-trip.
    for text in TEXTS:
        if "\u2581" in text or "<s>" in text or "</s>" in text or "<unk>" in text:
            continue
        rows = our_pieces(stories_gguf, text, tmp_path)
        want = (" " + text).encode() if text else b""
        assert b"".join(p for _, p in rows) == want, text


# --- chat templates ----------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "  padded question \n"},
     {"role": "assistant", "content": "An answer.\n\n"},
     {"role": "user", "content": "Thanks! \u65e5\u672c\u8a9e \U0001f389"}],
    [{"role": "system", "content": " sys with spaces "}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}],
    [{"role": "user", "content": ""}],
]

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


def render(template, messages, bos, eos, strip_bos=True):
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    out = env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                           bos_token=bos, eos_token=eos)
    # ac_chat_format leaves out the leading BOS: the tokenizer adds it.
    return out[len(bos):] if strip_bos and out.startswith(bos) else out


def our_prompt(model, messages, tmp_path):
    f = tmp_path / "conv.json"
    f.write_text(json.dumps(messages))
    r = run_acq("tokenize", model, "--chat", "--print-prompt", "-f", f)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_smollm_chat_matches_jinja(smollm_q4_1, smollm_vocab, tmp_path):
    template = smollm_vocab.metadata["tokenizer.chat_template"]
    for conv in CONVERSATIONS:
        want = render(template, conv, "<|im_start|>", "<|im_end|>", strip_bos=False)
        rc, got, err = our_prompt(smollm_q4_1, conv, tmp_path)
        assert rc == 0, err
        assert got == want
        # And the ids of the formatted prompt equal llama.cpp's for the rendered text.
        f = tmp_path / "conv.json"
        r = run_acq("tokenize", smollm_q4_1, "--chat", "-f", f)
        ref = smollm_vocab.tokenize(want.encode(), add_bos=True, special=True)
        assert [int(x) for x in r.stdout.split()] == ref


def write_template_model(path, template):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_llama_chat_matches_jinja(tmp_path, family):
    template = LLAMA2_TEMPLATE if family == "llama2" else LLAMA3_TEMPLATE
    bos = "<s>" if family == "llama2" else "<|begin_of_text|>"
    eos = "</s>" if family == "llama2" else "<|eot_id|>"
    model = tmp_path / f"{family}.gguf"
    write_template_model(model, template)
    for conv in CONVERSATIONS:
        want = render(template, conv, bos, eos)
        rc, got, err = our_prompt(model, conv, tmp_path)
        assert rc == 0, err
        assert got == want, conv
    if family == "llama2":
        conv = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        with pytest.raises(jinja2.exceptions.TemplateError):
            render(template, conv, bos, eos)
        rc, _, err = our_prompt(model, conv, tmp_path)
        assert rc == 1 and "alternate" in err


def test_unknown_template_is_an_error(tmp_path):
    model = tmp_path / "odd.gguf"
    write_template_model(model, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rc, _, err = our_prompt(model, CONVERSATIONS[0], tmp_path)
    assert rc == 1 and "raw completion" in err and err.count("\n") == 1


# --- errors ----------------------------------------------------------------


def test_errors_are_one_line(smollm_q4_1, tmp_path):
    r = run_acq("tokenize", tmp_path / "missing.gguf", "-p", "x")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
    r = run_acq("tokenize", smollm_q4_1, "-f", tmp_path / "missing.txt")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
    r = run_acq("tokenize", smollm_q4_1, "--chat", "-p", "not json")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
    r = run_acq("tokenize", smollm_q4_1)
    assert r.returncode == 2
