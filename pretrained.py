"""
Start from a real pretrained model: read foreign checkpoint formats into model.Transformer,
and write ours back out as a Hugging Face directory. model.py knows nothing of these formats.

    python pretrained.py info SOURCE              # what a source holds, without loading weights
    python pretrained.py export RUN_DIR OUT_DIR   # a wmtp run's ckpt.pt -> HF dir (+ MTP heads, tokenizer)

SOURCE is one of
  - a Hugging Face directory: config.json + model.safetensors, or shards listed in
    model.safetensors.index.json. Llama architecture (Llama 2/3/3.1/3.2, CodeLlama,
    DeepSeek-Coder, TinyLlama, SmolLM/SmolLM2) and Qwen2 (Llama plus q/k/v biases);
  - Meta's multi-token-prediction release (facebook/multi-token-prediction, e.g. 7B_1T_4):
    params.json + consolidated.pth, with its own trained heads in `extra_heads`;
  - a .gguf file of llama architecture (llama.cpp's format; quantised tensors are dequantised);
  - 'hf:ORG/NAME', a Hugging Face hub id, downloaded with huggingface_hub (online only).

Layout (Gloeckle et al. 2024, sec. 2): the checkpoint's L blocks become our trunk (L - 1
blocks) and head 1 (its last block), so with n_future = 1 the model is the checkpoint
unchanged. Heads 2..H are new blocks on the same trunk output: copies of the last block
(head_init='copy', the default: each new head starts out computing head 1's function, a
next-token predictor on features the trunk was trained to feed exactly that block) or fresh
random blocks (head_init='random', our scratch init: N(0, 0.02), residual projections scaled
down by 1/sqrt(2 n_layer)). A checkpoint with its own heads (Meta's release, our exports)
loads them as they are.

Rotary layout: our apply_rotary rotates adjacent pairs (x0, x1), Meta's layout. Hugging Face
checkpoints rotate halves (x_i, x_{i+hd/2}) instead; their conversion script permuted
Meta's wq/wk rows to make that work (transformers' convert_llama_weights_to_hf.py), so we
undo that permutation on import and redo it on export. llama.cpp's convert_hf_to_gguf.py
applies the same undoing when it writes GGUF, so GGUF q/k are already in Meta's layout. The
tests check all three against transformers' own implementation rather than assume it.
"""
import glob
import hashlib
import json
import math
import os
import shutil
import sys

import torch

from model import Block, ModelConfig, Transformer, ValueHead, rotary_tables

# ---- the name table ---------------------------------------------------------------
# our name <- their name, one row per tensor of a block, then the tensors outside blocks.
# Meta's consolidated.pth uses our names (model.py follows Meta's reference Llama).
BLOCK_NAMES = [  # (ours, Hugging Face, GGUF)
    ("attention_norm.weight",  "input_layernorm.weight",          "attn_norm.weight"),
    ("attention.wq.weight",    "self_attn.q_proj.weight",         "attn_q.weight"),
    ("attention.wk.weight",    "self_attn.k_proj.weight",         "attn_k.weight"),
    ("attention.wv.weight",    "self_attn.v_proj.weight",         "attn_v.weight"),
    ("attention.wo.weight",    "self_attn.o_proj.weight",         "attn_output.weight"),
    ("attention.wq.bias",      "self_attn.q_proj.bias",           "attn_q.bias"),    # Qwen2
    ("attention.wk.bias",      "self_attn.k_proj.bias",           "attn_k.bias"),    # Qwen2
    ("attention.wv.bias",      "self_attn.v_proj.bias",           "attn_v.bias"),    # Qwen2
    ("ffn_norm.weight",        "post_attention_layernorm.weight", "ffn_norm.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight",            "ffn_gate.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight",            "ffn_down.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight",              "ffn_up.weight"),
]
TOP_NAMES = [
    ("tok_embeddings.weight",  "model.embed_tokens.weight",       "token_embd.weight"),
    ("norm.weight",            "model.norm.weight",               "output_norm.weight"),
    ("output.weight",          "lm_head.weight",                  "output.weight"),
]
# block prefixes: checkpoint block i is our layers.{i}; our extra head j (head j+2) is
# stored in exported HF dirs as extra_heads.{j}.<HF block name> (mtp_heads.safetensors)
BLOCK_PREFIX = {"hf": "model.layers.{}.", "gguf": "blk.{}."}
HEADS_FILE = "mtp_heads.safetensors"
# q/k rows are permuted between Meta's interleaved and HF's half-split rotary layouts
ROTARY_PERMUTED = ("attention.wq.weight", "attention.wk.weight",
                   "attention.wq.bias", "attention.wk.bias")


def their_name(ours, fmt):
    """Our parameter name -> the name format fmt ('hf' or 'gguf') stores it under."""
    col = {"hf": 1, "gguf": 2}[fmt]
    for row in TOP_NAMES:
        if ours == row[0]:
            return row[col]
    group, i, suffix = ours.split(".", 2)         # 'layers', '3', 'attention.wq.weight'
    theirs = next(row[col] for row in BLOCK_NAMES if row[0] == suffix)
    if group == "extra_heads":                   # only our HF exports store extra heads
        return f"extra_heads.{i}.{theirs}"
    return BLOCK_PREFIX[fmt].format(i) + theirs


def hf_to_meta(w, n_heads):
    """q/k rows (n_heads * hd, ...) from HF's half-split rotary layout to Meta's interleaved
    one: within each head, rows [0..hd/2) and [hd/2..hd) become the pairs (2i, 2i+1)."""
    return w.unflatten(0, (n_heads, 2, -1)).transpose(1, 2).reshape(w.shape)


def meta_to_hf(w, n_heads):
    """The inverse of hf_to_meta (what transformers' convert_llama_weights_to_hf does)."""
    return w.unflatten(0, (n_heads, -1, 2)).transpose(1, 2).reshape(w.shape)


def rotary_heads(ours, c):
    """How many heads' rows a q/k tensor holds (for the permutation), or None."""
    suffix = ours.split(".", 2)[-1]
    if suffix not in ROTARY_PERMUTED:
        return None
    return c["n_head"] if ".wq." in ours else c["n_kv_head"]


# ---- reading a source's configuration -----------------------------------------------
class CheckpointError(ValueError):
    """A source the model cannot represent exactly, or a damaged one."""


def _meta_ffn_dim(dim, multiple_of, ffn_dim_multiplier):
    """d_ff of Meta's reference FeedForward: 2/3 of 4*dim, scaled, rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _hf_args(cfg, path):
    """ModelConfig arguments from a HF config.json; every field the model would silently
    ignore is an error naming it."""
    def refuse(field, why):
        raise CheckpointError(f"{path}: config field {field}={cfg.get(field)!r} is not supported ({why})")

    model_type = cfg.get("model_type")
    if model_type not in ("llama", "qwen2"):
        refuse("model_type", "llama and qwen2 architectures only")
    if cfg.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "the model's feed-forward is SwiGLU")
    if cfg.get("attention_bias"):
        refuse("attention_bias", "Llama's attention_bias also adds an o_proj bias; only Qwen2's q/k/v biases are supported")
    if cfg.get("mlp_bias"):
        refuse("mlp_bias", "the feed-forward has no biases")
    if cfg.get("use_sliding_window"):
        refuse("use_sliding_window", "attention is full causal attention")
    for field in ("num_experts", "num_local_experts", "n_routed_experts"):
        if cfg.get(field):
            refuse(field, "mixture-of-experts feed-forwards are not implemented")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        refuse("partial_rotary_factor", "rotary embeddings cover the whole head")
    # rope: HF configs before transformers 5 write rope_theta + rope_scaling; 5.x writes
    # rope_parameters holding both. 'type' is the older spelling of 'rope_type'.
    field = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = dict(cfg.get(field) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"{path}: config field {field}.rope_type={rope_type!r} is not supported "
                              "('default', 'linear' and 'llama3' are)")
    n_head = cfg["num_attention_heads"]
    args = dict(
        vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], d_ff=cfg["intermediate_size"],
        n_head=n_head, n_kv_head=cfg.get("num_key_value_heads") or n_head,
        head_dim=cfg.get("head_dim") or 0,
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        qkv_bias=model_type == "qwen2",          # Qwen2Attention: q/k/v biases, no o_proj bias
    )
    if args["head_dim"] == args["d_model"] // n_head:
        args["head_dim"] = 0                     # the default, spelled the default way
    if rope_type == "linear":
        args.update(rope_scaling_type="linear", rope_factor=float(rope["factor"]))
    elif rope_type == "llama3":
        args.update(rope_scaling_type="llama3", rope_factor=float(rope["factor"]),
                    rope_low_freq_factor=float(rope["low_freq_factor"]),
                    rope_high_freq_factor=float(rope["high_freq_factor"]),
                    rope_original_max_seq_len=int(rope.get("original_max_position_embeddings",
                                                           cfg.get("max_position_embeddings"))))
    return args, cfg["num_hidden_layers"]


def _meta_args(params, path):
    """ModelConfig arguments from Meta's params.json (reference llama/model.py ModelArgs)."""
    if params.get("use_scaled_rope"):
        raise CheckpointError(f"{path}: params field use_scaled_rope=True is not supported "
                              "(Llama 3.1+ in Meta's format: load its Hugging Face release instead)")
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
             "ffn_dim_multiplier", "norm_eps", "rope_theta", "n_future_tokens", "max_seq_len",
             "max_batch_size", "use_scaled_rope"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CheckpointError(f"{path}: params fields {unknown} are not understood")
    dim, n_head = params["dim"], params["n_heads"]
    args = dict(vocab_size=params.get("vocab_size", -1), d_model=dim, n_head=n_head,
                n_kv_head=params.get("n_kv_heads") or n_head,
                d_ff=_meta_ffn_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
                rope_theta=float(params.get("rope_theta", 10000.0)),
                norm_eps=float(params.get("norm_eps", 1e-5)),
                tie_embeddings=False, max_seq_len=params.get("max_seq_len", 2048))
    n_heads = params.get("n_future_tokens", 1)
    # n_layers counts every block: n_layers - n_future_tokens + 1 in `layers`, the rest in
    # `extra_heads` (Meta's MTP llama/model.py)
    return args, params["n_layers"] - n_heads + 1, n_heads


def _gguf_args(reader, path):
    """ModelConfig arguments from GGUF metadata (llama.cpp's llama.* keys)."""
    def get(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF general.architecture={arch!r} is not supported (llama only)")
    if get("llama.expert_count"):
        raise CheckpointError(f"{path}: GGUF llama.expert_count={get('llama.expert_count')} "
                              "(mixture of experts) is not supported")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise CheckpointError(f"{path}: GGUF tensor rope_freqs.weight (Llama 3.1-style rope scaling "
                              "stored as per-frequency factors) is not supported: load the HF release")
    scaling = get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise CheckpointError(f"{path}: GGUF llama.rope.scaling.type={scaling!r} is not supported")
    d_model, n_head = get("llama.embedding_length"), get("llama.attention.head_count")
    head_dim = get("llama.rope.dimension_count", d_model // n_head)
    for key in ("llama.attention.key_length", "llama.attention.value_length"):
        if get(key, head_dim) != head_dim:
            raise CheckpointError(f"{path}: GGUF {key}={get(key)} differs from the rotary dimension "
                                  f"{head_dim} (partial rotary embeddings are not supported)")
    tokens = get("tokenizer.ggml.tokens")
    args = dict(vocab_size=get("llama.vocab_size", len(tokens) if tokens else -1),
                d_model=d_model, d_ff=get("llama.feed_forward_length"), n_head=n_head,
                n_kv_head=get("llama.attention.head_count_kv", n_head),
                head_dim=0 if head_dim == d_model // n_head else head_dim,
                rope_theta=float(get("llama.rope.freq_base", 10000.0)),
                norm_eps=float(get("llama.attention.layer_norm_rms_epsilon")),
                # llama.cpp writes no output.weight when the unembedding is tied
                tie_embeddings=all(t.name != "output.weight" for t in reader.tensors),
                max_seq_len=get("llama.context_length", 2048))
    if scaling == "linear":
        args.update(rope_scaling_type="linear", rope_factor=float(get("llama.rope.scaling.factor")))
    return args, get("llama.block_count"), len(tokens) if tokens else None


# ---- sources: a config plus lazily read tensors --------------------------------------
def _file_info(path, hash_limit=64 << 20):
    """Size of a file, and its sha256 when small (configs, tokenizers); weight files are
    identified by size (hashing 14 GB on every load would cost minutes)."""
    info = {"size": os.path.getsize(path)}
    if info["size"] <= hash_limit:
        with open(path, "rb") as f:
            info["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return info


def _need(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing checkpoint file {path}")
    return path


def _resolve(source):
    """A local path for source; 'hf:ORG/NAME' is downloaded (weights and tokenizer only)."""
    if source.startswith("hf:"):
        repo = source[3:]
        try:
            from huggingface_hub import snapshot_download
            return snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
        except Exception as e:
            raise FileNotFoundError(
                f"cannot download {repo!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
                "offline (HF_HUB_OFFLINE=1)? download it elsewhere and pass the directory") from None
    if not os.path.exists(source):
        raise FileNotFoundError(f"no pretrained source at {source!r} (a HF dir, a Meta params.json "
                                "dir, a .gguf file, or hf:ORG/NAME)")
    return source


def is_pretrained_source(path):
    """True if path names something load_pretrained reads (rather than a wmtp run dir)."""
    if path.startswith("hf:"):
        return True
    if os.path.isfile(path):
        return path.endswith(".gguf")
    if os.path.exists(os.path.join(path, "ckpt.pt")):   # a wmtp run dir (it has a config.json too)
        return False
    return any(os.path.exists(os.path.join(path, f)) for f in ("config.json", "params.json"))


def tokenizer_source(source):
    """Where a source's tokenizer lives, for get_tokenizer: the .gguf file itself (its header
    holds it), an HF dir with tokenizer.json / tokenizer.model, or the parent of a Meta model
    dir (the release keeps tokenizer.model beside 7B_1T_4/); None where there is none."""
    path = _resolve(source)
    if os.path.isfile(path):
        return path if path.endswith(".gguf") else None
    for d in (path, os.path.dirname(os.path.abspath(path))):
        for f in ("tokenizer.json", "tokenizer.model", os.path.join("original", "tokenizer.model")):
            if os.path.isfile(os.path.join(d, f)):
                return os.path.join(d, f)
    return None


def _open_source(source):
    """(format, args, n_blocks, n_heads, tensors, info). tensors maps our name, numbered as
    the checkpoint's own model (n_blocks in `layers`, n_heads - 1 in `extra_heads`), to
    (their name, shape, read) where read() returns the tensor in Meta's rotary layout."""
    path = _resolve(source)
    info = {"path": os.path.abspath(path), "files": {}}
    tensors = {}
    if os.path.isfile(path) and path.endswith(".gguf"):
        import gguf                                    # only GGUF sources need it
        try:
            reader = gguf.GGUFReader(path)
        except Exception as e:
            raise CheckpointError(f"{path}: GGUF file unreadable or truncated ({type(e).__name__}: {e})") from None
        args, n_blocks, n_tokens = _gguf_args(reader, path)
        fmt, n_heads = "gguf", 1
        info["files"][os.path.basename(path)] = _file_info(path)
        info["config"] = {k: f.contents() for k, f in reader.fields.items()
                          if not k.startswith(("tokenizer.ggml.", "GGUF."))}
        info["n_tokenizer_vocab"] = n_tokens
        by_name = {t.name: t for t in reader.tensors}
        for ours in _checkpoint_names(args, n_blocks, n_heads):
            t = by_name.get(their_name(ours, "gguf"))
            if t is not None:    # GGUF lists dims innermost first: reversed, (out, in) as torch
                tensors[ours] = (t.name, tuple(int(d) for d in reversed(t.shape)),
                                 lambda t=t: _dequantize(gguf, t))
        unused = set(by_name) - {v[0] for v in tensors.values()}
    elif os.path.exists(os.path.join(path, "params.json")):
        fmt = "meta"
        with open(_need(os.path.join(path, "params.json"))) as f:
            params = json.load(f)
        args, n_blocks, n_heads = _meta_args(params, path)
        shards = sorted(glob.glob(os.path.join(path, "consolidated.*pth")))
        if len(shards) != 1:
            raise CheckpointError(f"{path}: expected one consolidated.pth, found {len(shards) or 'none'} "
                                  "(model-parallel shards must be merged first)")
        info["files"] = {os.path.basename(p): _file_info(p) for p in [os.path.join(path, "params.json"), *shards]}
        info["config"] = params
        try:   # mmap: tensors stay on disk until each is copied into the model
            sd = torch.load(shards[0], map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{shards[0]}: unreadable or truncated ({type(e).__name__}: {e})") from None
        if args["vocab_size"] == -1 and "tok_embeddings.weight" in sd:   # Llama 2 params say -1
            args["vocab_size"] = sd["tok_embeddings.weight"].shape[0]
        for ours in _checkpoint_names(args, n_blocks, n_heads):
            if ours in sd:
                tensors[ours] = (ours, tuple(sd[ours].shape), lambda t=sd[ours]: t)
        # rope.freqs: Llama 1/2's precomputed inverse frequencies; we compute our own
        # (the tests check ours against it when present)
        unused = set(sd) - set(tensors) - {"rope.freqs"}
        info["rope_freqs"] = sd.get("rope.freqs")
    elif os.path.exists(os.path.join(path, "config.json")):
        from safetensors import safe_open
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        args, n_blocks = _hf_args(cfg, path)
        wmtp = cfg.get("wmtp") or {}
        fmt, n_heads = ("wmtp-hf" if wmtp else "hf"), wmtp.get("n_future", 1)
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]      # tensor name -> shard file
        else:
            weight_map = None
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        if wmtp:
            files.append(wmtp["extra_heads"])
        info["files"] = {f: _file_info(_need(os.path.join(path, f)))
                         for f in ["config.json", *files] + (["model.safetensors.index.json"] if weight_map else [])}
        info["config"] = cfg
        handles, where = {}, {}
        for fname in files:
            try:
                handles[fname] = h = safe_open(os.path.join(path, fname), framework="pt", device="cpu")
            except Exception as e:
                raise CheckpointError(f"{os.path.join(path, fname)}: unreadable or truncated "
                                      f"({type(e).__name__}: {e})") from None
            where.update((name, fname) for name in h.keys())
        for ours in _checkpoint_names(args, n_blocks, n_heads):
            theirs = their_name(ours, "hf")
            if theirs not in where:
                continue
            h, heads = handles[where[theirs]], rotary_heads(ours, args)
            read = (lambda h=h, n=theirs: h.get_tensor(n)) if heads is None else \
                (lambda h=h, n=theirs, k=heads: hf_to_meta(h.get_tensor(n), k))
            tensors[ours] = (theirs, tuple(h.get_slice(theirs).get_shape()), read)
        # a tied checkpoint may still store lm_head.weight; old ones store rotary inv_freq
        unused = {n for n in set(where) - {v[0] for v in tensors.values()}
                  if not (n == "lm_head.weight" and args["tie_embeddings"]) and not n.endswith("rotary_emb.inv_freq")}
    else:
        raise FileNotFoundError(f"{path}: neither config.json (Hugging Face), params.json (Meta) "
                                "nor a .gguf file")
    if unused:
        raise CheckpointError(f"{path}: checkpoint tensors the model has no place for: {sorted(unused)[:8]}")
    info["format"] = fmt
    return fmt, args, n_blocks, n_heads, tensors, info


def _dequantize(gguf, t):
    """A GGUF tensor as a torch tensor: quantised blocks are expanded to float32; F32/F16
    tensors come back as a read-only view of the file, copied so the model may train."""
    x = gguf.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def _checkpoint_names(args, n_blocks, n_heads):
    """Our parameter names of the checkpoint's own model, in order (a tied unembedding is
    the embedding, so not a name of its own)."""
    c = ModelConfig(**args, n_layer=n_blocks + n_heads - 1, n_future=n_heads)
    with torch.device("meta"):
        names = list(Transformer(c).state_dict())
    return [n for n in names if not (n == "output.weight" and c.tie_embeddings)]


def _their_name(ours, fmt):
    return ours if fmt == "meta" else their_name(ours, "gguf" if fmt == "gguf" else "hf")


# ---- load ----------------------------------------------------------------------------
def load_pretrained(source, n_future=None, head_init="copy", dtype=torch.float32, device="cpu",
                    max_seq_len=None, **overrides):
    """A Transformer holding a pretrained checkpoint, with n_future heads.

    n_future None keeps the checkpoint's own heads (1 for a plain Llama, n_future_tokens for
    Meta's MTP release, n_future of our exports); more heads than a one-head checkpoint has
    are added as head_init says ('copy' or 'random', see the file's docstring). max_seq_len
    (the rotary table and KV cache length) defaults to the checkpoint's context length.
    overrides are further ModelConfig fields (dropout, value_head, ...): a value head is
    new and keeps its fresh init.
    Returns (model, model_args, info): model_args are ModelConfig's keyword arguments (what
    train.py saves in ckpt.pt); info says what was read (format, path, file sizes/hashes,
    the source's config, how the heads were made).
    """
    if head_init not in ("copy", "random"):
        raise ValueError(f"head_init={head_init!r}: expected 'copy' or 'random'")
    fmt, args, n_blocks, n_ckpt_heads, tensors, info = _open_source(source)
    n_future = n_future or n_ckpt_heads
    if n_ckpt_heads > 1 and n_future != n_ckpt_heads:
        raise CheckpointError(f"{source}: has {n_ckpt_heads} trained heads, n_future={n_future} asked "
                              "(load it with n_future=None)")
    if max_seq_len:
        args["max_seq_len"] = max_seq_len
    model_args = {**args, "n_layer": n_blocks + n_future - 1, "n_future": n_future, **overrides}
    c = ModelConfig(**model_args)

    # every check before any weight is read: the names, the shapes, the vocabulary
    ckpt_names = _checkpoint_names(args, n_blocks, n_ckpt_heads)
    missing = [n for n in ckpt_names if n not in tensors]
    if missing:
        raise CheckpointError(f"{source}: missing tensors {[_their_name(n, fmt) for n in missing[:8]]}"
                              f"{' ...' if len(missing) > 8 else ''}")
    rows = tensors["tok_embeddings.weight"][1][0]
    if rows != c.vocab_size:
        raise CheckpointError(f"{source}: vocab_size={c.vocab_size} in the config, but the embedding "
                              f"{tensors['tok_embeddings.weight'][0]} has {rows} rows")
    if info.get("n_tokenizer_vocab") and info["n_tokenizer_vocab"] > rows:
        raise CheckpointError(f"{source}: the tokenizer has {info['n_tokenizer_vocab']} tokens but the "
                              f"embedding only {rows} rows")
    with torch.device("meta"):
        model = Transformer(c)               # no memory: parameters have shapes only
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    for ours, (theirs, shape, _) in tensors.items():
        if shapes[ours] != shape:
            raise CheckpointError(f"{source}: tensor {theirs} has shape {shape}, the config says "
                                  f"{shapes[ours]} (as our {ours})")

    # read each tensor straight into the target dtype and device, one at a time, and hand
    # it to the model as its parameter (assign=True: no second copy of the model)
    sd = {}
    for ours, (_, _, read) in tensors.items():
        sd[ours] = read().to(device=device, dtype=dtype)
    add_heads(sd, c, n_blocks, n_ckpt_heads, head_init, device, dtype)
    if c.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    value_keys = [n for n in shapes if n.startswith("value_head.")]
    model.load_state_dict(sd, strict=False, assign=True)
    if c.tie_embeddings:                    # assign replaced both parameters: tie them again
        model.output.weight = model.tok_embeddings.weight
    if c.value_head:                        # not in any checkpoint: a fresh head, model.py's init
        model.value_head = ValueHead(c).to(device=device)
        model.value_head.apply(model._init_weights)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    assert not left and set(sd) | set(value_keys) >= set(shapes), left
    cos, sin = rotary_tables(c.head_size, c.max_seq_len, c.rope_theta, c)   # buffers, not weights
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    if info.get("rope_freqs") is not None:       # Meta's own inverse frequencies agree with ours
        ours = 1.0 / c.rope_theta ** (torch.arange(0, c.head_size, 2).float() / c.head_size)
        if not torch.allclose(info["rope_freqs"].float(), ours, rtol=1e-3):
            raise CheckpointError(f"{source}: rope.freqs disagrees with rope_theta={c.rope_theta}")
    info.pop("rope_freqs", None)
    info.update(n_ckpt_heads=n_ckpt_heads, n_future=n_future,
                head_init=head_init if n_future > n_ckpt_heads else "checkpoint")
    return model.eval(), model_args, info


def add_heads(sd, c, n_blocks, n_ckpt_heads, head_init="copy", device="cpu", dtype=torch.float32):
    """Heads n_ckpt_heads+1 .. c.n_future into the state dict sd of a checkpoint whose last
    block (layers.{n_blocks-1}, head 1) is given: copies of that block (head_init='copy') or
    seeded random blocks ('random'), as the file's docstring says. In place; also used by
    train.py to fine-tune one of our runs with more heads than it was trained with."""
    last = f"layers.{n_blocks - 1}."
    for j in range(n_ckpt_heads - 1, c.n_future - 1):        # new heads 2..H
        if head_init == "copy":
            for n in [n for n in sd if n.startswith(last)]:
                sd[f"extra_heads.{j}." + n[len(last):]] = sd[n].clone()
            continue
        with torch.random.fork_rng(devices=[]):     # seeded, and the caller's RNG untouched
            torch.manual_seed(1337 + j)
            block = Block(c).to(device=device, dtype=dtype)
            block.apply(lambda m: Transformer._init_weights(None, m))   # model.py's init
            for name, p in block.named_parameters():    # Transformer's residual scaling
                if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        sd.update({f"extra_heads.{j}.{n}": p.detach() for n, p in block.state_dict().items()})
    return sd


# ---- export --------------------------------------------------------------------------
def export_hf(state_dict_or_model, model_args, out_dir, tokenizer_files=None):
    """Write a Hugging Face Llama (or, with qkv_bias, Qwen2) directory: config.json and
    model.safetensors hold the trunk and head 1, which transformers' AutoModelForCausalLM
    loads as a plain model giving head 1's logits. Heads 2..H go to mtp_heads.safetensors as
    extra_heads.{k-2}.<HF block name> in HF's rotary layout, with n_future in config.json's
    `wmtp` section; load_pretrained reads all heads back exactly. A value head is not exported."""
    from safetensors.torch import save_file
    sd = state_dict_or_model.state_dict() if isinstance(state_dict_or_model, torch.nn.Module) \
        else state_dict_or_model
    c = ModelConfig(**model_args)
    os.makedirs(out_dir, exist_ok=True)
    main, heads = {}, {}
    for ours, t in sd.items():
        if ours.startswith("value_head.") or (ours == "output.weight" and c.tie_embeddings):
            continue   # HF ties lm_head to embed_tokens itself (tie_word_embeddings)
        k = rotary_heads(ours, model_args)
        t = (meta_to_hf(t, k) if k else t).detach().to("cpu").contiguous()
        (heads if ours.startswith("extra_heads.") else main)[their_name(ours, "hf")] = t
    save_file(main, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if heads:
        save_file(heads, os.path.join(out_dir, HEADS_FILE), metadata={"format": "pt"})
    dtype = str(next(iter(main.values())).dtype).removeprefix("torch.")
    rope = None
    if c.rope_scaling_type == "linear":
        rope = {"rope_type": "linear", "factor": c.rope_factor}
    elif c.rope_scaling_type == "llama3":
        rope = {"rope_type": "llama3", "factor": c.rope_factor, "low_freq_factor": c.rope_low_freq_factor,
                "high_freq_factor": c.rope_high_freq_factor,
                "original_max_position_embeddings": c.rope_original_max_seq_len}
    config = {
        "architectures": ["Qwen2ForCausalLM" if c.qkv_bias else "LlamaForCausalLM"],
        "model_type": "qwen2" if c.qkv_bias else "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layer - c.n_future + 1,      # trunk + head 1
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_size, "hidden_act": "silu", "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "rope_scaling": rope,
        "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "torch_dtype": dtype,
        "wmtp": {"n_future": c.n_future, "extra_heads": HEADS_FILE,
                 "names": "head k (k >= 2) is extra_heads.{k-2}.<HF block names>, HF rotary layout; "
                          "it reads the output of model.layers[num_hidden_layers - 2]"},
    }
    if c.n_future == 1:
        del config["wmtp"]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for path in tokenizer_files or []:
        shutil.copy(path, out_dir)
    return out_dir


def export_tokenizer(name, identity, out_dir):
    """The run's tokenizer beside an export, so transformers and vLLM tokenize as we did:
    a SentencePiece model is copied as tokenizer.model, a tiktoken-style one (bytes, cl100k,
    a converted tokenizer.json or GGUF header) is written as tokenizer.json. Read back, it
    must have the run's identity."""
    import tokenization
    enc = tokenization.get_tokenizer(name)
    if isinstance(enc, tokenization.SentencePieceTokenizer):
        with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
            f.write(enc.model_proto)
    else:
        tokenization.write_hf_tokenizer(enc, out_dir)
    back = tokenization.tokenizer_identity(tokenization.get_tokenizer(out_dir))
    tokenization.check_tokenizer(identity, back, f"the tokenizer exported to {out_dir}")


# ---- CLI -----------------------------------------------------------------------------
def main(argv):
    usage = "usage: python pretrained.py info SOURCE | export RUN_DIR OUT_DIR [TOKENIZER_FILE ...]"
    if len(argv) >= 2 and argv[0] == "info":
        fmt, args, n_blocks, n_heads, tensors, info = _open_source(argv[1])
        c = ModelConfig(**args, n_layer=n_blocks + n_heads - 1, n_future=n_heads)
        with torch.device("meta"):
            n_params = sum(p.numel() for p in Transformer(c).parameters())
        print(json.dumps({"format": fmt, "model_args": {**args, "n_layer": c.n_layer, "n_future": n_heads},
                          "parameters": n_params, "files": info["files"],
                          "n_tokenizer_vocab": info.get("n_tokenizer_vocab")}, indent=2, default=str))
    elif len(argv) >= 3 and argv[0] == "export":
        import checkpoint
        ckpt = checkpoint.load_checkpoint(argv[1])
        export_hf(ckpt["model"], ckpt["model_args"], argv[2], tokenizer_files=argv[3:])
        if not argv[3:] and "tokenizer" in ckpt:   # no files given: write the run's own
            export_tokenizer(ckpt["config"]["tokenizer"], ckpt["tokenizer"], argv[2])
        print(f"wrote {argv[2]} (n_future={ckpt['model_args']['n_future']}, from {argv[1]} "
              f"at iter {ckpt['iter_num']})")
    else:
        sys.exit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
