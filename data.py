"""
Samples, prepared datasets and the training loader (tokenizers: tokenization.py).

Every source becomes samples of one schema:
    {problem_id, prompt, completion, is_correct, source}
A sample is tokenized as prompt + completion + <eot>. Prompt tokens are never predicted
(loss_mask 0); completion tokens and the closing <eot> are (loss_mask 1), so the model
learns where a solution ends.

Prepare once (prepare.py, the CLI), then train from memmaps:
    python prepare.py                     # tinycode with the byte tokenizer
    python prepare.py --tokenizer=cl100k_base --data_dir=data_cache/tinycode-cl100k
    python prepare.py --dataset=gsm8k,mbpp --data_dir=data_cache/real   # real sources: sources.py
Layout of a prepared split, data_dir/{train,val,test,pretrain}/ ('pretrain': the base
model's canonical solutions, tinycode only):
    tokens.bin      all samples' tokens, concatenated (uint16, or uint32 for big vocabs)
    loss_mask.bin   uint8, 1 where the token may be predicted
    noise.bin       uint8, 1 on the tokens a generator corrupted on purpose; only where
                    some sample has noise_spans (tinycode noise > 0)
    index.npy       int64 (n_samples, 4): start, length, prompt_len, is_correct
    samples.jsonl   problem_id, source, is_correct per sample (same order as index.npy)
    problems.jsonl  the split's problems with their tests (pass@k needs them)
    meta.json       tokenizer identity, counts, a hash of the data
The Loader carries every field to the batch (Loader.collate has the keys and dtypes):
per-token files (TOKEN_FILES: noise.bin -> 'noise') and the per-token arrays a caller
gives (token_fields, e.g. the reference CE cache -> 'ref_ce') are padded to (B, T, ...);
from samples.jsonl, problem_id becomes 'group' (B,), the problem's index in the split,
and every other field whose values are numbers or bools becomes a (B,) tensor, so a
scheme that needs a new per-sample field needs no loader change, only a column in
samples.jsonl (SplitWriter writes problem_id, source, is_correct). is_correct always
comes from index.npy; strings are not emitted.
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch

# the tokenizers live in tokenization.py; callers keep using data.get_tokenizer etc.
from tokenization import (TIKTOKEN_URLS, byte_tokenizer, cache_tokenizer_files,  # noqa: F401
                          check_tokenizer, eot_token, get_tokenizer, tokenizer_identity)


# ---- preparing a dataset ------------------------------------------------------------
def encode_sample(enc, sample):
    """-> (tokens, loss_mask) for prompt + completion + <eot>."""
    prompt = enc.encode_ordinary(sample["prompt"])
    completion = enc.encode_ordinary(sample["completion"]) + [eot_token(enc)]
    return prompt + completion, [0] * len(prompt) + [1] * len(completion)


def encode_samples(enc, samples, threads=8):
    """encode_sample over a batch: tiktoken's encode_ordinary_batch encodes on `threads`
    threads (its Rust core releases the GIL); a tokenizer without it (SentencePiece) loops.
    A prompt shared by a problem's samples is encoded once."""
    batch = getattr(enc, "encode_ordinary_batch", None)
    texts = list(dict.fromkeys(t for s in samples for t in (s["prompt"], s["completion"])))
    ids = batch(texts, num_threads=threads) if batch and len(texts) > 1 else [enc.encode_ordinary(t) for t in texts]
    ids = dict(zip(texts, ids))
    eot = eot_token(enc)
    out = []
    for s in samples:
        prompt, completion = ids[s["prompt"]], ids[s["completion"]] + [eot]
        out.append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    return out


def noise_flags(enc, sample, tokens, n_prompt):
    """(len(tokens),) uint8: 1 on the tokens that overlap a character span of
    sample['noise_spans'] (offsets into its completion: what a data generator corrupted on
    purpose and knows), 0 elsewhere; all 0 for a sample without spans."""
    flags = np.zeros(len(tokens), dtype=np.uint8)
    spans = sample.get("noise_spans") or []
    if not spans:
        return flags
    if not hasattr(enc, "decode_single_token_bytes"):
        raise ValueError(f"noise_spans need a tokenizer that maps tokens to bytes "
                         f"(tiktoken's decode_single_token_bytes); {enc!r} has none")
    text = sample["completion"]
    ends = np.cumsum([len(enc.decode_single_token_bytes(int(t))) for t in tokens[n_prompt:]])
    starts = ends - np.diff(ends, prepend=0)                    # byte range of each completion token
    for a, b in spans:
        a, b = len(text[:a].encode()), len(text[:b].encode())  # characters -> bytes
        flags[n_prompt:][(starts < b) & (ends > a)] = 1
    return flags


class SplitWriter:
    """Writes one prepared split sample by sample, so a dataset of any size is prepared in
    bounded memory: tokens and masks go straight to disk, only index.npy (32 bytes a
    sample) is held. Atomic: everything goes to a temp dir renamed into place by close(),
    so a killed prepare never leaves half a dataset. write_split is this over a list."""

    def __init__(self, path, enc):
        self.path, self.tmp, self.enc = path, path + ".tmp", enc
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        self.dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
        self.files = {name: open(os.path.join(self.tmp, name), "wb" if name.endswith(".bin") else "w")
                      for name in ("tokens.bin", "loss_mask.bin", "noise.bin", "samples.jsonl")}
        self.n_noisy = 0   # samples with noise_spans; noise.bin is kept only where there are any
        self.index, self.start = [], 0
        self.hash = hashlib.sha256()   # of tokens.bin, then index.npy's array (see close)

    def add(self, sample, tokens=None, mask=None):
        """Append one sample; tokens/mask as encode_sample gives them, if already encoded."""
        if tokens is None:
            tokens, mask = encode_sample(self.enc, sample)
        t = np.asarray(tokens, dtype=self.dtype)
        self.files["tokens.bin"].write(t.tobytes())
        self.hash.update(t.tobytes())
        self.files["loss_mask.bin"].write(np.asarray(mask, dtype=np.uint8).tobytes())
        noise = noise_flags(self.enc, sample, tokens, list(mask).index(1))
        self.n_noisy += bool(noise.any())
        self.files["noise.bin"].write(noise.tobytes())
        self.index.append((self.start, len(t), list(mask).index(1), int(bool(sample["is_correct"]))))
        self.start += len(t)
        self.files["samples.jsonl"].write(
            json.dumps({k: sample[k] for k in ("problem_id", "source", "is_correct")}) + "\n")

    def close(self, problems, source_info):
        """Write index, problems and meta.json, rename into place; -> meta."""
        for f in self.files.values():
            f.close()
        if not self.n_noisy:
            os.remove(os.path.join(self.tmp, "noise.bin"))
        index = np.asarray(self.index, dtype=np.int64).reshape(-1, 4)
        np.save(os.path.join(self.tmp, "index.npy"), index)
        n_problems = 0
        with open(os.path.join(self.tmp, "problems.jsonl"), "w") as f:
            for p in problems:
                f.write(json.dumps(p) + "\n")
                n_problems += 1
        lengths = index[:, 1]
        self.hash.update(index.tobytes())
        meta = {
            "tokenizer": tokenizer_identity(self.enc),
            "dtype": np.dtype(self.dtype).name,
            "n_samples": int(len(index)),
            "n_correct": int(index[:, 3].sum()) if len(index) else 0,
            "n_problems": n_problems,
            "n_tokens": int(lengths.sum()),
            "max_len": int(lengths.max()) if len(index) else 0,
            "mean_len": float(lengths.mean()) if len(index) else 0.0,
            # identity of the token data: a reference-CE cache is valid only for this hash
            "hash": self.hash.hexdigest()[:16],
            "n_noisy": self.n_noisy,
            **source_info,
        }
        with open(os.path.join(self.tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.tmp, self.path)
        return meta


def write_split(path, enc, samples, problems, source_info):
    """Tokenize a list of samples and write one prepared split to `path` (atomically)."""
    from tqdm import tqdm
    w = SplitWriter(path, enc)
    for s in tqdm(samples, desc=f"tokenize {os.path.basename(path)}", leave=False):
        w.add(s)
    return w.close(problems, source_info)


# The embedded default's tinycode: all five families with single-digit constants to
# fine-tune on, and a 'pretrain' split of canonical solutions from two families (arithmetic,
# strings) for the base model every arm starts from. A tiny model trained from scratch
# learns to copy constants from the description at a seed-dependent step, or not at all
# within a CPU budget on the full task (dev/LOG.md); a base that has learned it once
# makes the arms' seeds comparable, as fine-tuning a pretrained model does at scale.
TINYCODE_FAMILIES = "all"
TINYCODE_MAX_CONST = 9
TINYCODE_PRETRAIN = 4000
TINYCODE_PRETRAIN_FAMILIES = ("arithmetic", "strings")


def prepare_tinycode(data_dir, tokenizer="bytes", n_train=3000, n_val=200, n_test=200,
                     n_incorrect=2, seed=0, workers=None, families=TINYCODE_FAMILIES,
                     max_const=TINYCODE_MAX_CONST, n_pretrain=TINYCODE_PRETRAIN,
                     pretrain_families=TINYCODE_PRETRAIN_FAMILIES, noise=0.0):
    """Generate tinycode problems, label every solution variant by execution, and write
    the train/val/test splits, and with n_pretrain > 0 a 'pretrain' split of canonical
    solutions only, from pretrain_families, disjoint from the others. noise > 0: that share
    of the train split's correct solutions carry a corrupted constant, still labelled
    correct, and noise.bin marks its tokens (tinycode.make_samples). Returns {split: meta}."""
    import tinycode

    def family_list(f):
        return tinycode.FAMILIES if f == "all" else tuple(f.split(",")) if isinstance(f, str) else tuple(f)
    enc = get_tokenizer(tokenizer)
    families, pretrain_families = family_list(families), family_list(pretrain_families)
    splits = tinycode.make_splits(n_train, n_val, n_test, seed=seed, families=families,
                                  max_const=max_const, n_pretrain=n_pretrain,
                                  pretrain_families=pretrain_families)
    metas = {}
    for split, problems in splits.items():
        k = 0 if split == "pretrain" else n_incorrect
        samples = tinycode.make_samples(problems, n_incorrect=k, seed=seed, workers=workers,
                                        noise=noise if split == "train" else 0.0)
        info = {"source": "tinycode", "split": split, "seed": seed, "n_incorrect": k,
                "noise": noise if split == "train" else 0.0,
                "families": list(pretrain_families if split == "pretrain" else families),
                "max_const": max_const}
        metas[split] = write_split(os.path.join(data_dir, split), enc, samples, problems, info)
        m = metas[split]
        print(f"{split}: {m['n_problems']} problems, {m['n_samples']} samples "
              f"({m['n_correct']} correct), {m['n_tokens']:,} tokens, "
              f"mean/max length {m['mean_len']:.0f}/{m['max_len']}")
    return metas


# ---- reading a prepared dataset -------------------------------------------------------
# Per-token files a split may hold besides tokens.bin and loss_mask.bin, each aligned with
# tokens.bin: batch key -> (file, dtype on disk, dtype in the batch). The Loader emits
# every one the split has, like the per-token arrays a caller gives it (token_fields).
TOKEN_FILES = {"noise": ("noise.bin", np.uint8, np.bool_)}   # corrupted on purpose (tinycode noise)


def read_sample_fields(path, n_samples):
    """samples.jsonl -> {name: (n_samples,) array}, read once, one column per field:
    'group' int64, the dense index of the sample's problem_id in this split, numbered in
    order of first appearance (the samples of one problem share it); and each other field
    whose value in every row is a bool (-> bool) or a number (-> int64, or float32 where
    any value is a float). Strings (problem_id, source), lists and fields that some rows
    lack are left out. {} where there is no samples.jsonl (older splits)."""
    if not os.path.exists(path):
        return {}
    columns, n = {}, 0           # name -> list of values, None where a row lacks the field
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            for k in row.keys() - columns.keys():
                columns[k] = [None] * n
            for k, col in columns.items():
                col.append(row.get(k))
            n += 1
    if n != n_samples:
        raise ValueError(f"{path} has {n} rows but index.npy has {n_samples} samples: "
                         f"the split is inconsistent; prepare it again (python prepare.py)")
    fields = {}
    pids = columns.pop("problem_id", None)
    if pids is not None and all(p is not None for p in pids):
        first = {}
        fields["group"] = np.fromiter((first.setdefault(p, len(first)) for p in pids),
                                      dtype=np.int64, count=n)
    for k, col in columns.items():
        if all(type(v) is bool for v in col):
            fields[k] = np.array(col, dtype=np.bool_)
        elif all(type(v) in (bool, int, float) for v in col):
            fields[k] = np.array(col, dtype=np.float32 if any(type(v) is float for v in col)
                                 else np.int64)
    return fields


class PreparedSplit:
    """Memory-mapped view of one prepared split. token_files: its per-token files
    (TOKEN_FILES) that exist, memory-mapped; sample_fields: samples.jsonl as columns
    (read_sample_fields), read on first use."""

    def __init__(self, path):
        meta_path = os.path.join(path, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no prepared data at {path}: run `python prepare.py` "
                                    f"(or point data_dir at a prepared dataset)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.path = path
        self.index = np.load(os.path.join(path, "index.npy"))
        self.tokens = np.memmap(os.path.join(path, "tokens.bin"), dtype=self.meta["dtype"], mode="r")
        self.loss_mask = np.memmap(os.path.join(path, "loss_mask.bin"), dtype=np.uint8, mode="r")
        self.token_files = {name: np.memmap(os.path.join(path, file), dtype=dtype, mode="r")
                            for name, (file, dtype, _) in TOKEN_FILES.items()
                            if os.path.exists(os.path.join(path, file))}
        self.noise = self.token_files.get("noise")
        self._sample_fields = None
        n_tok = int(self.index[:, 1].sum()) if len(self.index) else 0
        sizes = {"tokens.bin": len(self.tokens), "loss_mask.bin": len(self.loss_mask),
                 **{TOKEN_FILES[k][0]: len(v) for k, v in self.token_files.items()}}
        if any(v != n_tok for v in sizes.values()):
            raise ValueError(f"{path} is inconsistent: index.npy covers {n_tok} tokens but "
                             + ", ".join(f"{k} has {v}" for k, v in sizes.items())
                             + "; re-run `python prepare.py`")

    def __len__(self):
        return len(self.index)

    @property
    def sample_fields(self):
        if self._sample_fields is None:
            self._sample_fields = read_sample_fields(os.path.join(self.path, "samples.jsonl"), len(self))
        return self._sample_fields

    def sample(self, i):
        start, length, _, _ = self.index[i]
        return self.tokens[start:start + length], self.loss_mask[start:start + length]

    def problems(self):
        with open(os.path.join(self.path, "problems.jsonl")) as f:
            return [json.loads(line) for line in f]


def check_roundtrip(split, enc, n=16):
    """Decode a few stored samples with `enc` and re-encode them: the ids must come back.
    Catches data tokenized with another tokenizer even where metadata says otherwise."""
    eot = eot_token(enc)
    for i in np.linspace(0, len(split) - 1, min(n, len(split))).astype(int):
        tokens, _ = split.sample(i)
        prompt_len = int(split.index[i, 2])
        for part in (tokens[:prompt_len], tokens[prompt_len:-1]):
            ids = [int(x) for x in part]
            if enc.encode_ordinary(enc.decode(ids)) != ids:
                raise ValueError(f"sample {i} of {split.path} does not re-encode to the same "
                                 f"token ids with tokenizer {enc.name!r}: the data was prepared "
                                 f"with another tokenizer; re-run `python prepare.py`")
        if int(tokens[-1]) != eot:
            raise ValueError(f"sample {i} of {split.path} does not end with <eot> ({eot}) of "
                             f"{enc.name!r}: misaligned or foreign data")


def reference_targets(batch, heads):
    """The targets a horizon-matched reference is scored on: every token of the sample,
    mtp_targets(tokens, in-sample mask, heads) (B, T, heads), -1 past each sample's end."""
    from model import mtp_targets
    T = batch["tokens"].shape[1]
    in_sample = torch.arange(T) < batch["lengths"][:, None]                     # (B, T)
    return mtp_targets(batch["tokens"], in_sample.to(batch["tokens"].device), heads)


def check_reference_heads(model, heads):
    if heads > model.config.n_future:
        raise ValueError(f"a horizon-matched reference (rho1_ref='matched') needs >= {heads} "
                         f"heads, this one has {model.config.n_future}: train the reference with "
                         f"n_future >= {heads}, or use rho1_ref='next_token'")


@torch.no_grad()
def score_reference(model, split, device="cpu", batch_size=16, out_path=None, heads=0):
    """Per-token CE of a frozen reference on every token of a split, with full context.
    heads=0 (rho1_ref='next_token'): ref_ce[j] = CE(ref(x_<j), x_j) from head 1's logits
    at j-1; the first token of each sample gets 0 (nothing predicts it). (n_tokens,).
    heads=H (rho1_ref='matched'): ref_ce[j, k-1] = CE of the reference's head k at
    position j of x_{j+k}, as the model's ce[t, k] (mtp_targets); 0 where j+k is past the
    sample's end. (n_tokens, H). Aligned with tokens.bin, float32. Written atomically to
    out_path when given, the CE alone: no .json identity, so it is not a cache
    reference.reference_cache accepts (that one scores with score_reference_sharded and writes
    the identity it checks)."""
    from tqdm import tqdm
    import torch.nn.functional as F
    from model import mtp_cross_entropy
    check_reference_heads(model, heads)
    ref = np.zeros((len(split.tokens), heads) if heads else len(split.tokens), dtype=np.float32)
    loader = Loader(split, batch_size, block_size=10**9, seed=0, correct_only=False)
    ids = np.arange(len(split))
    model.eval()
    for i in tqdm(range(0, len(ids), batch_size), desc="score reference", leave=False):
        batch = loader.collate(ids[i:i + batch_size])
        tokens = batch["tokens"].to(device)
        if heads:
            targets = reference_targets({**batch, "tokens": tokens}, heads)     # (B, T, H)
            ce = mtp_cross_entropy(model(tokens)[:, :, :heads], targets).cpu().numpy()
        else:
            logits = model(tokens)[:, :-1, 0].float()                  # (B, T-1, V) head 1
            ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                                 reduction="none").view(tokens.shape[0], -1).cpu().numpy()
        for b, sid in enumerate(ids[i:i + batch_size]):
            start, length = split.index[sid, :2]
            if heads:
                ref[start:start + length] = ce[b, :length]           # position t: (H,)
            else:
                ref[start + 1:start + length] = ce[b, :length - 1]   # token j <- logits at j-1
    if out_path:   # a temp file per process: parallel runs may score the same cache
        tmp = f"{out_path}.tmp{os.getpid()}"
        ref.tofile(tmp)
        os.replace(tmp, out_path)
    return ref


# the keys every batch has (Loader.collate); a field of the data may not reuse them
CORE_KEYS = ("tokens", "loss_mask", "is_correct", "lengths", "sample_ids")


def token_dtype(dtype):
    """The batch dtype of a per-token array the caller gives: bool stays bool, floats
    become float32 (a reference cache is float32), integers int64."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.bool_
    if np.issubdtype(dtype, np.floating):
        return np.float32
    if np.issubdtype(dtype, np.integer):
        return np.int64
    raise ValueError(f"a token field must be bool, integer or float, not {dtype}")


class Loader:
    """Deterministic, resumable batches of whole samples, one sample per row.

    Rows are padded (with <eot>, loss_mask 0) to the longest sample of the micro-batch,
    so no sample is cut and none attends to another; padding waste is measured by
    `padding_waste`. Sample order is a fresh permutation per epoch, seeded by
    (seed, epoch); with group_by_length, each run of 32 batches of it is sorted by length
    and cut into batches, whose order is then shuffled again, so a batch holds samples of
    similar length (far less padding) while the batches still come in random order. The
    only state is `cursor`, the number of rows the whole job has consumed, so resuming is
    exact.

    One optimizer step consumes rows_per_step = batch_size * grad_accum * world_size
    consecutive rows; micro-step m of rank r takes the slice starting at
    (m * world_size + r) * batch_size. Hence 1 process with grad_accum = 8 and 8 processes
    with grad_accum = 1 see exactly the same rows in every step.

    Every field of a sample reaches the batch (collate): the split's per-sample fields
    (split.sample_fields) and per-token files (split.token_files), and token_fields, a
    dict name -> array aligned with split.tokens ((n_tokens,) or (n_tokens, ...)) that the
    caller gives, e.g. {"ref_ce": reference_cache}; a None value is left out.

    reverse_rows puts each micro-batch's rows in reverse order: the same samples and the
    same maths, its sums over rows taken in another float order (the reproducibility check).
    """

    def __init__(self, split: PreparedSplit, batch_size, block_size, seed, correct_only,
                 rank=0, world_size=1, pad_id=0, token_fields=None, group_by_length=True,
                 reverse_rows=False):
        self.split, self.batch_size, self.block_size = split, batch_size, block_size
        self.group_by_length, self.reverse_rows = group_by_length, reverse_rows
        # per-token fields: name -> (array aligned with split.tokens, dtype in the batch);
        # the caller's first (their order in the batch dict), then the split's own files
        given = {k: v for k, v in (token_fields or {}).items() if v is not None}
        self.token_fields = {k: (v, token_dtype(v.dtype)) for k, v in given.items()}
        for k, v in split.token_files.items():
            if k in given:
                raise ValueError(f"token field {k!r} is given and is also the split's own {TOKEN_FILES[k][0]}")
            self.token_fields[k] = (v, TOKEN_FILES[k][2])
        for k, (v, _) in self.token_fields.items():
            if len(v) != len(split.tokens):
                raise ValueError(f"token field {k!r} has {len(v)} rows but {split.path} has "
                                 f"{len(split.tokens)} tokens: it belongs to other data")
        # per-sample fields: samples.jsonl's columns; is_correct comes from index.npy
        self.sample_fields = {k: v for k, v in split.sample_fields.items() if k != "is_correct"}
        taken = set(CORE_KEYS) | set(self.token_fields)
        for k in self.sample_fields:
            if k in taken:
                raise ValueError(f"samples.jsonl of {split.path} has a field {k!r}, a name the "
                                 f"batch already uses ({sorted(taken)}): rename it")
        self.seed, self.rank, self.world_size, self.pad_id = seed, rank, world_size, pad_id
        idx = split.index
        keep = idx[:, 1] <= block_size
        if correct_only:
            keep &= idx[:, 3] == 1
        n_long = int((idx[:, 1] > block_size).sum())
        if n_long and rank == 0:
            print(f"warning: {n_long} of {len(idx)} samples in {split.path} are longer than "
                  f"block_size={block_size} and are skipped; raise block_size to keep them",
                  file=sys.stderr)
        self.ids = np.nonzero(keep)[0]
        if len(self.ids) == 0:
            raise ValueError(f"no usable samples in {split.path} (correct_only={correct_only}, "
                             f"block_size={block_size})")
        self.cursor = 0
        self._cached = (None, None)   # (epoch, its sample order)

    def order(self, epoch):
        """The sample ids of one epoch, in training order."""
        if self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = self.ids[rng.permutation(len(self.ids))]
            if self.group_by_length:
                B, group = self.batch_size, 32 * self.batch_size
                for s in range(0, len(order), group):
                    chunk = order[s:s + group]
                    chunk = chunk[np.argsort(self.split.index[chunk, 1], kind="stable")]
                    batches = [chunk[i:i + B] for i in range(0, len(chunk), B)]
                    full = len(chunk) // B          # a short last batch stays last, so
                    shuffled = [batches[j] for j in rng.permutation(full)] + batches[full:]
                    order[s:s + len(chunk)] = np.concatenate(shuffled)   # batches stay whole
            self._cached = (epoch, order)
        return self._cached[1]

    def _sample_id(self, row):
        epoch, pos = divmod(row, len(self.ids))
        return self.order(epoch)[pos]

    def epoch(self):
        return self.cursor / len(self.ids)

    def next_step(self, grad_accum):
        """The micro-batches this rank trains on in the next optimizer step."""
        B, W = self.batch_size, self.world_size
        micro = []
        for m in range(grad_accum):
            first = self.cursor + (m * W + self.rank) * B
            ids = [self._sample_id(first + i) for i in range(B)]
            micro.append(self.collate(ids[::-1] if self.reverse_rows else ids))
        self.cursor += B * grad_accum * W
        return micro

    def collate(self, sample_ids):
        """-> dict of (B = len(sample_ids), T = the longest sample's length):
        per-token fields, first (the Loader's token_fields, then the split's files):
            ref_ce       (B, T) or (B, T, H) float32, when the caller gives a reference cache
            noise        (B, T) bool, when the split has noise.bin: the tokens its
                         generator corrupted on purpose
            any other    (B, T, ...): bool stays bool, floats become float32, integers
                         int64; 0 (False) past each sample's end
        always:
            tokens       (B, T) int64, pad_id past each sample's end
            loss_mask    (B, T) bool, 1 where a token may be predicted
            is_correct   (B,) float32, index.npy column 3
            lengths      (B,) int64
            sample_ids   (B,) int64, rows of the split
        per-sample fields, from samples.jsonl (split.sample_fields), where it has them:
            group        (B,) int64, the problem's index in the split (samples of one
                         problem share it: group-relative schemes)
            any other    (B,) field whose values are numbers or bools: bool, int64 or
                         float32 (read_sample_fields); strings are not emitted."""
        pairs = [self.split.sample(i) for i in sample_ids]
        T = max(len(t) for t, _ in pairs)
        tokens = np.full((len(pairs), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(pairs), T), dtype=bool)
        for b, (t, m) in enumerate(pairs):
            tokens[b, :len(t)] = t
            mask[b, :len(m)] = m
        ids = np.asarray(sample_ids, dtype=np.int64)
        extra = {}
        for name, (values, dtype) in self.token_fields.items():
            out = np.zeros((len(pairs), T, *values.shape[1:]), dtype=dtype)
            for b, (start, length) in enumerate(self.split.index[ids, :2]):
                out[b, :length] = values[start:start + length]
            extra[name] = torch.from_numpy(out)
        return {**extra,
            "tokens": torch.from_numpy(tokens),
            "loss_mask": torch.from_numpy(mask),
            "is_correct": torch.tensor([float(self.split.index[i, 3]) for i in sample_ids]),
            "lengths": torch.tensor([len(t) for t, _ in pairs]),
            "sample_ids": torch.as_tensor(ids),
            **{name: torch.from_numpy(values[ids]) for name, values in self.sample_fields.items()},
        }

    def padding_waste(self, n_batches=50):
        """Fraction of token slots that are padding, over the next n_batches batches
        (read without moving the cursor)."""
        real = total = 0
        for j in range(n_batches):
            ids = [self._sample_id(self.cursor + j * self.batch_size + i) for i in range(self.batch_size)]
            lengths = self.split.index[ids, 1]
            real += lengths.sum()
            total += lengths.max() * len(ids)
        return 1 - real / total

    def state_dict(self):
        return {"cursor": self.cursor, "seed": self.seed, "n_ids": len(self.ids)}

    def load_state_dict(self, state):
        if state["n_ids"] != len(self.ids):
            raise ValueError(f"the loader was saved over {state['n_ids']} samples but the data "
                             f"now has {len(self.ids)}: the dataset or the filter changed")
        self.cursor, self.seed = state["cursor"], state["seed"]
        self._cached = (None, None)


def pad_to_bucket(mb, block_size, pad_id):
    """Pad a micro-batch's T up to the next power of two, at least 64 and at most
    block_size, so that torch.compile (static shapes) compiles a few graphs instead of one
    per length. The new positions are padding as the Loader writes it: pad tokens, and 0
    (False) in every other per-token field (loss_mask, ref_ce, noise, ...: each (B, T, ...)
    tensor); causal attention leaves every real position unchanged."""
    B, T = mb["tokens"].shape
    L = min(max(64, 1 << (T - 1).bit_length()), block_size)
    if L <= T:
        return mb
    for k, x in mb.items():
        if torch.is_tensor(x) and x.dim() >= 2 and x.shape[:2] == (B, T):
            fill = pad_id if k == "tokens" else 0
            mb[k] = torch.cat([x, x.new_full((B, L - T, *x.shape[2:]), fill)], dim=1)
    return mb


if __name__ == "__main__":   # the CLI moved to prepare.py (data.py imports no source)
    sys.exit("data.py prepares nothing itself: run `python prepare.py [--key=value ...]` "
             "(same flags)")
