"""
Rho-1's frozen reference: loading it, and its CE on every training token.

The reference is a run of this codebase (its ckpt.pt) or a pretrained model (pretrained.py)
with the run's tokenizer. Its CE is scored once into a memmap beside the data
(reference_cache, all ranks together), which the Loader then serves as the batch field
ref_ce; ref_ce_mode='online' scores each batch instead (online_ref_ce).
"""
import hashlib
import json
import os
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

import data
import mtp_loss
import pretrained
from checkpoint import load_checkpoint
from model import ModelConfig, Transformer


def check_source_tokenizer(source, tok_id, what):
    """A pretrained model's own tokenizer must be the run's: same ids, same end token."""
    path = pretrained.tokenizer_source(source)
    if path is None:
        raise ValueError(f"{what} {source!r} has no tokenizer beside it (tokenizer.json, tokenizer.model, "
                         f"or a .gguf header): put its tokenizer there, so that it can be checked against "
                         f"the run's tokenizer")
    data.check_tokenizer(data.tokenizer_identity(data.get_tokenizer(path)), tok_id, f"{what} {source}")


def load_reference(path, device, tok_id, dtype=torch.float32, heads=0):
    """The frozen Rho-1 reference: a checkpoint this codebase wrote, or a pretrained model
    (pretrained.py; in dtype, since it is never trained), with the run's tokenizer.
    heads: how many heads it must have (rho1_ref='matched': the run's n_future; 0 = any)."""
    if pretrained.is_pretrained_source(path):
        check_source_tokenizer(path, tok_id, "reference")
        ref, _, info = pretrained.load_pretrained(path, dtype=dtype, device=device)
        data.check_reference_heads(ref, heads)
        ident = json.dumps([info["files"], info["n_future"], str(dtype)], sort_keys=True)
        return ref.requires_grad_(False), hashlib.sha256(ident.encode()).hexdigest()[:16]
    ckpt = load_checkpoint(path, map_location=device)
    data.check_tokenizer(ckpt["tokenizer"], tok_id, f"reference {path}")
    ref = Transformer(ModelConfig(**{**ckpt["model_args"], "value_head": False}))
    data.check_reference_heads(ref, heads)
    ref.load_state_dict({k: v for k, v in ckpt["model"].items() if not k.startswith("value_head.")})
    ref.to(device).eval().requires_grad_(False)
    h = hashlib.sha256()
    for k, v in sorted(ref.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().float().numpy().tobytes())
    return ref, h.hexdigest()[:16]


def score_reference_sharded(ref, split, path, c, ctx, device, rank, world_size, ddp, heads=0):
    """data.score_reference at scale: the samples sorted by length (batches of similar
    length), every rank scoring every world_size-th of them with head 1 only and chunked
    (mtp_loss.next_token_ce, no (B, T, V) logits), or with heads 1..heads (rho1_ref=
    'matched', mtp_loss.forward: (n_tokens, heads), row t = ce[t, k] as the model's), under
    the run's autocast (bf16 on GPUs), into one memmap on the shared file system (disjoint
    token ranges), renamed into place by rank 0. Samples longer than the reference's
    context are not scored: counted, and refused if this run could train on them (their
    cache entry would be a wrong 0)."""
    data.check_reference_heads(ref, heads)
    shape = (len(split.tokens), heads) if heads else (len(split.tokens),)
    idx = split.index
    limit = ref.config.max_seq_len
    long = idx[:, 1] > limit
    if long.any():
        trained = int((long & (idx[:, 1] <= c.block_size)).sum())
        if trained:
            raise ValueError(f"{trained} of {len(idx)} samples in {split.path} fit block_size="
                             f"{c.block_size} but exceed the reference's context ({limit} "
                             f"tokens): lower block_size to {limit} or use a longer reference")
        if rank == 0:
            print(f"reference scoring: {int(long.sum())} samples longer than its context "
                  f"({limit}) are left unscored (longer than block_size: never trained on)")
    order = np.nonzero(~long)[0]
    order = order[np.argsort(idx[order, 1], kind="stable")][rank::world_size]
    # a temp file of this job's own (rank 0's pid, shared by every rank): two runs scoring the
    # same cache side by side must not map one file that the other truncates (SIGBUS)
    owner = torch.tensor([os.getpid()], dtype=torch.long, device=device)
    if ddp:
        dist.broadcast(owner, src=0)
    tmp = f"{path}.scoring.{int(owner.item())}"
    if rank == 0:   # zeros: the first token of each sample, and unscored samples
        np.memmap(tmp, dtype=np.float32, mode="w+", shape=shape).flush()
    if ddp:
        dist.barrier()
    out = np.memmap(tmp, dtype=np.float32, mode="r+", shape=shape)
    loader = data.Loader(split, c.batch_size, block_size=10**9, seed=0, correct_only=False)
    ref.eval()
    for i in range(0, len(order), c.batch_size):
        ids = order[i:i + c.batch_size]
        batch = loader.collate(ids)
        tokens = batch["tokens"].to(device)
        if heads:
            ce = online_ref_ce(ref, tokens, ctx, c.loss_chunk,
                               targets=data.reference_targets({**batch, "tokens": tokens}, heads))
        else:
            with torch.no_grad(), ctx:
                ce = mtp_loss.next_token_ce(ref, tokens, c.loss_chunk)       # (B, T): x_{t+1} at t
        ce = ce.float().cpu().numpy()
        for b, sid in enumerate(ids):
            start, length = idx[sid, :2]
            if heads:
                out[start:start + length] = ce[b, :length]                   # position t: (H,)
            else:
                out[start + 1:start + length] = ce[b, :length - 1]           # token j <- logits at j-1
    out.flush()
    del out
    if ddp:
        dist.barrier()
    if rank == 0:
        os.replace(tmp, path)


def reference_cache(c, split, ref, ref_hash, device, master, ddp, ctx=None, rank=0, world_size=1):
    """Reference CE for the training split as a memmap, scored once, by all ranks together
    (score_reference_sharded): per token (n_tokens,), or per position and head (n_tokens, H)
    under rho1_ref='matched'. A cache carries the identity of the data, of the reference
    and (matched) of the mode and heads it was made for; a mismatch is refused rather than
    silently misaligning every weight. The two modes' default files differ in name too."""
    heads = c.n_future if c.rho1_ref == "matched" else 0
    name = f"ref_ce_matched{heads}-{ref_hash}.bin" if heads else f"ref_ce-{ref_hash}.bin"
    path = c.ref_ce_cache or os.path.join(split.path, name)
    ident = {"data_hash": split.meta["hash"], "ref_hash": ref_hash, "n_tokens": len(split.tokens)}
    if heads:   # a next-token cache's identity stays as it was: caches made before still load
        ident.update(rho1_ref="matched", heads=heads)
    missing = torch.tensor([float(not os.path.exists(path + ".json"))], device=device)
    if ddp:   # rank 0 decides: every rank must take part in the scoring, or none
        dist.broadcast(missing, src=0)
    if missing.item():                      # the identity is written last
        if master:
            print(f"scoring the reference on {split.path} -> {path} ({world_size} process(es))")
        score_reference_sharded(ref, split, path, c, ctx or nullcontext(), device, rank,
                                world_size, ddp, heads)
        if master:
            with open(f"{path}.json.tmp{os.getpid()}", "w") as f:
                json.dump(ident, f)
            os.replace(f"{path}.json.tmp{os.getpid()}", path + ".json")
    if ddp:
        dist.barrier()
    with open(path + ".json") as f:
        found = json.load(f)
    if found != ident:
        raise ValueError(f"reference CE cache {path} was made for {found}, but this run has "
                         f"{ident}: other data, another reference or another rho1_ref; delete "
                         f"it or point ref_ce_cache elsewhere")
    cache = np.memmap(path, dtype=np.float32, mode="r")
    return cache.reshape(-1, heads) if heads else cache


def online_ref_ce(ref, tokens, ctx, chunk=0, targets=None):
    """Reference CE as the cache holds it, its vocabulary projection in chunks (no (B, T, V)
    logits). targets None: per token, ref_ce[:, j] from head 1's logits at j-1 (B, T).
    targets (B, T, H) (rho1_ref='matched'): the reference's heads 1..H on them, (B, T, H)
    fp32, aligned as the model's ce[t, k]; 0 where the target is -1."""
    with torch.no_grad(), ctx:
        if targets is not None:
            return mtp_loss.forward(ref, tokens, targets, chunk).ce       # (B, T, H)
        ce = mtp_loss.next_token_ce(ref, tokens, chunk)             # (B, T): x_{t+1} at t
    return torch.cat([ce.new_zeros(tokens.shape[0], 1), ce[:, :-1]], dim=1)  # (B, T)
