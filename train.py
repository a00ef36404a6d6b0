"""
Train a multi-token-prediction transformer with weighted per-(t, k) losses.

    python train.py                                   # the embedded default: tiny baseline, CPU, minutes
    python train.py config/tiny_baseline.py --max_iters=100
    torchrun --standalone --nproc_per_node=2 train.py config/tiny_baseline.py

The defaults below are the whole configuration; config files and --key=value overrides
change them (configurator.py). Every scheme runs through the same step: only the weights
w[t, k] differ (weights.py).
"""
import datetime
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
import data
import mtp_loss
import parallel
import pretrained
import weights
from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_targets

# -----------------------------------------------------------------------------
# default config: the tiny tinycode baseline, a few minutes on 2 CPU cores
# I/O
out_dir = "out/tiny_baseline"   # checkpoints, log.jsonl, config.json
init_from = "scratch"           # 'scratch', 'resume' (out_dir/ckpt.pt), a run dir / .pt, or a pretrained
                                # model (HF dir, Meta params.json dir, .gguf, hf:ORG/NAME; pretrained.py)
eval_interval = 200             # iterations between validation + checkpoint
eval_samples = 80               # validation samples per evaluation: a fixed set per dataset
log_interval = 10               # iterations between log lines
# data
data_dir = "data_cache/tinycode"  # prepared by `python data.py` (done here if missing)
tokenizer = "bytes"             # must equal the tokenizer the data was prepared with
train_split = "train"           # the split trained on: 'train', or 'pretrain' (the tiny base model)
train_on = "correct"            # 'correct' solutions only, or 'all' (the critic's data)
block_size = 192                # longest sample (tokens) a row may hold; longer ones are skipped
group_by_length = True          # batch samples of similar length together: less padding
# model (ModelConfig)
n_layer = 3                     # trunk blocks + one block per head
n_future = 2                    # H: heads predict tokens t+1 .. t+H
n_head = 8
n_kv_head = 4
d_model = 128
d_ff = 352
rope_theta = 10000.0
tie_embeddings = True
dropout = 0.0
heads_only = False              # train heads 2..H alone (trunk, head 1, embeddings frozen): new heads' warm-up
head_init = "copy"              # heads added to a pretrained model or a run with fewer: 'copy' its last block, or 'random'
# (init_from a pretrained model: its architecture replaces n_layer .. tie_embeddings; n_future stays)
# weighting (weights.py): the only thing that differs between arms
weighting = "uniform"           # 'uniform', 'rho1', 'critic', 'oracle', or a control: 'shuffled', 'random_matched'
control_of = "rho1"             # 'shuffled': the scheme whose own weights are permuted
control_weights = ""            # 'random_matched': the run dir whose weights_sample.npy is drawn from
weight_norm = "heads"           # 'heads': sum_k w[t, k] = 1 (times #heads); 'tokens': over the whole step
temperature = 1.0               # T of Rho-1's softmax(excess / T)
w_min = 0.0                     # clip weights to [w_min, w_max]; 0 = no bound
w_max = 0.0
weight_top_frac = 0.0           # keep only this top fraction of each sequence's terms; 0 = all
weight_top_p = 1.0              # keep each sequence's smallest set of terms holding this share of its
                                # score mass (raw scores: Rho-1's excess, the critic's |delta|; not w)
# Rho-1
ref_init_from = ""              # reference: a run dir (its ckpt.pt) or a pretrained model; same tokenizer, frozen
ref_ce_mode = "cache"           # 'cache': score the data once, read memmaps; 'online': every step
ref_ce_cache = ""               # explicit cache file; default data_dir/train/ref_ce[_matched<H>]-<ref hash>.bin
rho1_ref = "next_token"         # head k at t vs the ref's next-token CE of x_{t+k} ('next_token') or its own head k ('matched')
# (default: the method as written, any reference; 'matched' drops the horizon gap, needs >= n_future ref heads)
min_ce_diff = 0.0               # terms with |excess| below this get weight 0, moved to the group's kept terms (none kept: uniform)
rho1_mode = "abs"               # 'abs' |CE_ref - CE|, 'signed' CE - CE_ref, 'topk' binary selection
rho1_top_frac = 0.6             # share of tokens 'topk' keeps (Rho-1 kept 60%)
# Verifiable Critic
gamma = 1.0                     # discount of the TD errors and GAE
lam = 0.95                      # GAE lambda, for the value targets
reward = "binary"               # r = is_correct ('binary'), +-1 ('pm1'), or standardised ('zscore')
whiten = True                   # centre (and scale) TD errors by running moments; the scale cancels in w ∝ |z|
whiten_decay = 0.99             # per step, the moments' weight on older deltas: ~100-step memory (1 = all since step 0)
value_coef = 0.5                # weight of the value loss next to the LM loss
value_clip = 0.2                # trust region around the sample's previous values; 0 = off
value_anchor_coef = 0.0         # pull V towards its values at the start of main training; 0 = off
value_detach = True             # the value loss trains the value head only, not the LM's trunk
value_surprise = True           # the value head also reads the LM's surprise at the solution so far
critic_pretrain_epochs = 0.5    # value-only stage before main training, in epochs of its data
incorrect_mode = "weighted"     # incorrect solutions in the LM loss: 'weighted', 'value_only', 'signed'
# optimizer: AdamW, cosine schedule with linear warmup
batch_size = 8                  # rows (samples) per micro-batch per process
gradient_accumulation_steps = 1  # micro-batches per step, over all processes together
max_iters = 1200
learning_rate = 4e-3
min_lr = 3e-4
warmup_iters = 30
lr_decay_iters = 1200           # cosine reaches min_lr here; ~max_iters
decay_lr = True
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # max global grad norm; 0 disables
# system
seed = 1337
device = "auto"                 # 'auto', 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"                  # 'auto' (bf16 on capable GPUs, else fp32), 'float32', 'bfloat16', 'float16'
compile = False                 # torch.compile each block (parallel.py)
length_buckets = False          # pad T up to a power of two (>= 64, <= block_size): compile sees few shapes
# the loss path (mtp_loss.py): same loss and gradients, different memory
loss_impl = "chunked"           # 'chunked': heads in turn, vocabulary in chunks; 'simple': (B, T, H, V) logits
loss_chunk = 0                  # rows per vocabulary chunk of the 'chunked' loss; 0 = 2**24 logits a chunk
loss_kernel = "torch"           # 'torch' chunks; fused linear CE (CUDA only): 'cce' (cut-cross-entropy), 'liger' (>= 0.8.2)
# scale (parallel.py)
data_parallel = "ddp"           # with several processes: 'ddp' (replicas, small models) or 'fsdp' (FSDP2 per block)
activation_checkpointing = "none"  # per block: 'none', 'selective' (keep matmul/attention outputs), 'full'
checkpoint_format = "file"      # 'file': one ckpt.pt of whole tensors; 'dcp': sharded (torch.distributed.checkpoint)
peak_flops = 0.0                # device peak FLOP/s for MFU; 0 = guess for known GPUs
dist_timeout_min = 30           # a collective waiting longer than this fails (process group timeout)
wandb_log = False
wandb_project = "wmtp"
wandb_run_name = ""
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
# weightings whose w reads nothing the forward computes (no CE, no values, no random draw
# after it): with loss_impl='chunked' their step is one pass (mtp_loss.forward_backward),
# the others' two (CE first, weights, then the backward). 'random_matched' reads no CE
# but draws its weights after the forward's dropout masks, as the baseline's masks: kept
# on two passes so that the arms keep drawing the same masks. Under weight_norm='tokens'
# they are rescaled to the step's mass like the others (their pre-pass needs no forward).
WEIGHTS_BEFORE_CE = ("uniform",)
MODEL_KEYS = ("n_layer", "n_future", "n_head", "n_kv_head", "d_model", "d_ff",
              "rope_theta", "tie_embeddings", "dropout", "value_detach", "value_surprise")


# ---- distributed setup ------------------------------------------------------------
def resolve_device(device):
    """'auto' -> 'cuda' where a GPU is visible, else 'cpu'; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def setup_distributed(device, timeout_min=30):
    """-> (ddp, rank, local_rank, world_size, device). torchrun sets RANK; nccl on CUDA,
    gloo on CPU, so a 2-process CPU run works the same as 8 GPUs. A collective that waits
    longer than timeout_min fails loudly instead of hanging (the backends' defaults differ)."""
    device = resolve_device(device)
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_min))
    return True, rank, local_rank, world_size, device


def all_reduce_sum(t, ddp):
    if ddp:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ---- schedule, checkpoints, logs ----------------------------------------------------
def get_lr(it, c):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (nanoGPT)."""
    if not c.decay_lr:
        return c.learning_rate
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    ratio = (it - c.warmup_iters) / max(1, c.lr_decay_iters - c.warmup_iters)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)


def save_checkpoint(path, state):
    """Write to a temp file, fsync, then rename over the old file: a crash or kill at
    any moment leaves either the old or the new checkpoint, never half of one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu", sharded_ok=False, mmap=False):
    """A checkpoint file, or a run dir's ckpt.pt. sharded_ok: a 'dcp' checkpoint (its
    weights in a directory beside it) is fine: only resuming reads those. mmap: tensors
    stay in the file until read (FSDP's ranks other than 0 never read the weights)."""
    if not path.endswith(".pt"):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: init_from / ref_init_from must name a run dir "
                                f"(with ckpt.pt), a .pt file, or a pretrained model (an HF dir with "
                                f"config.json, a Meta dir with params.json, a .gguf file, hf:ORG/NAME)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:
        raise RuntimeError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                           f"({type(e).__name__}: {e}); delete it to start from scratch") from None
    missing = {"model", "model_args", "iter_num"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {sorted(missing)}: not a wmtp checkpoint")
    if ckpt["model"] == "dcp" and not sharded_ok:
        raise ValueError(f"checkpoint {path} keeps its weights sharded in {ckpt['dcp_dir']} "
                         f"(checkpoint_format='dcp'): resume it (init_from='resume'), or export "
                         f"one file with `python -m torch.distributed.checkpoint.format_utils "
                         f"dcp_to_torch_save` and load that")
    return ckpt


def model_args_changed(saved, now, ignore=()):
    """{key: (saved, now)} for the model arguments a checkpoint and this run disagree on."""
    return {k: (saved.get(k), v) for k, v in now.items()
            if not k.startswith(ignore) and saved.get(k) != v}


def git_hash():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def environment(device):
    """What a bit-for-bit rerun must match besides the config and the code: the same torch
    build, thread count and processor (float sums are ordered by the kernels these pick;
    README, Reproducibility)."""
    import platform
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
            "python": platform.python_version(), "numpy": np.__version__}


def guess_peak_flops(device):
    """Dense bf16 peak of common GPUs, for MFU; None where unknown (CPUs)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12),
                       ("4090", 165e12), ("A10", 125e12)):
        if key in name:
            return flops
    return None


def pad_to_bucket(mb, block_size, pad_id):
    """Pad a micro-batch's T up to the next power of two, at least 64 and at most
    block_size, so that torch.compile (static shapes) compiles a few graphs instead of one
    per length. The new positions are padding as the Loader writes it (pad tokens,
    loss_mask 0, ref_ce 0); causal attention leaves every real position unchanged."""
    T = mb["tokens"].shape[1]
    L = min(max(64, 1 << (T - 1).bit_length()), block_size)
    if L <= T:
        return mb
    extend = lambda x, fill: torch.cat([x, x.new_full((x.shape[0], L - T), fill)], dim=1)
    mb["tokens"] = extend(mb["tokens"], pad_id)
    mb["loss_mask"] = extend(mb["loss_mask"], False)
    if "ref_ce" in mb:
        ref = mb["ref_ce"]   # (B, T), or (B, T, H) for a horizon-matched reference
        mb["ref_ce"] = torch.cat([ref, ref.new_zeros((ref.shape[0], L - T, *ref.shape[2:]))], dim=1)
    return mb


# ---- evaluation -----------------------------------------------------------------------
def validation_ids(split, n, block_size):
    """The validation set: the first n correct samples (that fit block_size) of one fixed
    permutation of the split, sorted by length (less padding). It depends on the data alone,
    so runs that differ in batch size, accumulation or processes report comparable numbers."""
    idx = split.index
    ok = np.nonzero((idx[:, 3] == 1) & (idx[:, 1] <= block_size))[0]
    ids = ok[np.random.default_rng(0).permutation(len(ok))[:n]]
    return ids[np.argsort(idx[ids, 1], kind="stable")]


@torch.no_grad()
def evaluate(model, split, c, ctx, device, ddp, rank, world_size, pad_id):
    """Mean CE per head over the same eval_samples validation samples every time, whatever
    the batch size or number of processes (each rank takes every world_size-th one)."""
    loader = data.Loader(split, c.batch_size, c.block_size, seed=0, correct_only=True, pad_id=pad_id)
    mine = validation_ids(split, c.eval_samples, c.block_size)[rank::world_size]
    sums = torch.zeros(c.n_future, dtype=torch.float64, device=device)
    counts = torch.zeros(c.n_future, dtype=torch.float64, device=device)
    model.eval()
    for i in range(0, len(mine), c.batch_size):
        mb = loader.collate(mine[i:i + c.batch_size])
        if c.length_buckets:
            mb = pad_to_bucket(mb, c.block_size, pad_id)
        tokens, mask = mb["tokens"].to(device), mb["loss_mask"].to(device)
        targets = mtp_targets(tokens, mask, c.n_future)
        with ctx:
            if c.loss_impl == "chunked":
                ce = mtp_loss.forward(model, tokens, targets, c.loss_chunk, c.loss_kernel).ce
            else:
                ce = mtp_cross_entropy(model(tokens), targets)      # (B, T, H)
        sums += ce.sum(dim=(0, 1)).double()
        counts += (targets >= 0).sum(dim=(0, 1)).double()
    model.train()
    all_reduce_sum(sums, ddp)
    all_reduce_sum(counts, ddp)
    return (sums / counts.clamp(min=1)).tolist()


# ---- scheme plumbing ----------------------------------------------------------------------
def step_mass(parts, device, ddp):
    """The step's totals for weight_norm='tokens' from each micro-batch's normalize stats
    (all ranks): (n_step, the largest log mass, the sum of exp(log mass - largest)), the
    arguments of weights.step_scale; None for a step without valid terms."""
    parts = [p for p in parts if p.get("n", 0) > 0]
    zero = torch.zeros((), device=device)
    n_step = all_reduce_sum(sum((p["n"] for p in parts), zero), ddp)
    top = max((p["log_mass"] for p in parts), default=zero - math.inf).clone()
    if ddp:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    mass = all_reduce_sum(sum((torch.exp(p["log_mass"] - top) for p in parts), zero), ddp)
    return (n_step, top, mass) if n_step > 0 else None


def unlikelihood_where(ce, neg):
    """incorrect_mode='signed': where neg, the unlikelihood loss -log(1 - p) (Welleck et al.
    2020) of the token instead of its CE -log p, which pushes its probability down."""
    return torch.where(neg, -torch.log(-torch.expm1(-ce.clamp(min=1e-6))), ce)


def clip_gradients(model, max_norm):
    """Clip the LM's and the value head's gradients each to max_norm, separately: one joint
    norm would let the critic's value gradients shrink its LM step below the baseline's at
    the same LM gradient, a confound between arms that must share their clipping.
    -> (LM gradient norm, value head gradient norm or None), before clipping."""
    lm, value = [], []
    for name, p in model.named_parameters():
        if p.grad is not None:
            (value if name.startswith("value_head.") else lm).append(p)
    max_norm = max_norm if max_norm > 0 else float("inf")
    lm_norm = parallel.clip_grad_norm(lm, max_norm)    # FSDP: sharded and replicated grads
    return lm_norm, (parallel.clip_grad_norm(value, max_norm) if value else None)


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
        return ref.requires_grad_(False), __import__("hashlib").sha256(ident.encode()).hexdigest()[:16]
    ckpt = load_checkpoint(path, map_location=device)
    data.check_tokenizer(ckpt["tokenizer"], tok_id, f"reference {path}")
    ref = Transformer(ModelConfig(**{**ckpt["model_args"], "value_head": False}))
    data.check_reference_heads(ref, heads)
    ref.load_state_dict({k: v for k, v in ckpt["model"].items() if not k.startswith("value_head.")})
    ref.to(device).eval().requires_grad_(False)
    h = __import__("hashlib").sha256()
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


def critic_inputs(mb, c, reward_stats):
    """Rewards and terminal structure of a batch. Sample b ends at e = lengths - 1 (its
    <eot>); the reward for the whole solution arrives on the last transition, at state
    e-1, and every state from e on is terminal with V = 0 (weights.td_errors)."""
    B, T = mb["tokens"].shape
    e = mb["lengths"].to(mb["tokens"].device) - 1
    pos = torch.arange(T, device=e.device)
    states = pos[None, :] < e[:, None]                               # (B, T) non-terminal states
    r = mb["is_correct"].to(e.device)
    if c.reward == "pm1":
        r = 2 * r - 1
    elif c.reward == "zscore":
        mean, std = reward_stats
        r = (r - mean) / std
    rewards = torch.zeros(B, T, device=e.device)
    rewards[torch.arange(B, device=e.device), e - 1] = r
    return states, rewards


def value_auc(scores, labels):
    """Area under the ROC curve by the rank statistic (Mann-Whitney U), ties averaged."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):                                     # average tied ranks
        tie = scores == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def probe_values(model, split, ids, c, ctx, device, pad_id):
    """V(s_{e-1}) (the critic's belief just before the last token) for the given val
    samples, with their labels: for the value AUC and the drift probe."""
    loader = data.Loader(split, c.batch_size, c.block_size, seed=0, correct_only=False, pad_id=pad_id)
    scores, labels, full = [], [], []
    model.eval()
    for i in range(0, len(ids), c.batch_size):
        mb = loader.collate(ids[i:i + c.batch_size])
        if c.length_buckets:
            mb = pad_to_bucket(mb, c.block_size, pad_id)
        with ctx:
            _, v = model(mb["tokens"].to(device), with_values=True, value_mask=mb["loss_mask"].to(device))
        e = mb["lengths"] - 1
        scores += v[torch.arange(len(e)), (e - 1).to(device)].float().cpu().tolist()
        labels += mb["is_correct"].bool().tolist()
        full += [v[b, :e[b]].float().cpu() for b in range(len(e))]
    model.train()
    return scores, labels, full


class WeightLog:
    """Weight diagnostics: per-log statistics, per-head histograms and a sample of weight
    values (what the 'random_matched' control of this run draws from). The histogram's
    last bin, from 7.875, also holds every larger weight ('tokens' gives some), so that it
    counts every term."""
    BINS = np.linspace(0, 8, 65)

    def __init__(self, n_future, seed, cap=200_000):
        self.hist = np.zeros((n_future, len(self.BINS) - 1), dtype=np.int64)
        self.sample, self.cap = [], cap
        self.rng = np.random.default_rng(seed)

    def record(self, step):
        """Statistics of a step's weights over their valid terms: step is its micro-batches'
        (w (B, T, H), valid (B, T, H)) pairs, each with its own T."""
        v = torch.cat([w[valid] for w, valid in step])
        if v.numel() == 0:
            return {}
        ent, mass = [], 0.0
        for w, valid in step:
            wn = w / w.sum(-1, keepdim=True).clamp(min=1e-12)            # share per head at t
            multi = valid.sum(-1) > 1
            ent.append(-(wn * wn.clamp(min=1e-12).log()).sum(-1)[multi])  # entropy over heads
            mass = mass + w.sum(dim=(0, 1))
            for k in range(w.shape[-1]):
                x = w[..., k][valid[..., k]].float().cpu().numpy()
                self.hist[k] += np.histogram(np.minimum(x, self.BINS[-1]), self.BINS)[0]
        ent = torch.cat(ent)
        if sum(len(s) for s in self.sample) < self.cap:
            vals = v.float().cpu().numpy()
            self.sample.append(self.rng.choice(vals, size=min(len(vals), 2000), replace=False))
        return {"w_mean": v.mean().item(), "w_std": v.std().item() if v.numel() > 1 else 0.0,
                "w_min": v.min().item(), "w_max": v.max().item(),
                "w_entropy": ent.mean().item() if ent.numel() else 0.0,
                "w_head_mass": (mass / mass.sum().clamp(min=1e-12)).tolist()}

    def state_dict(self):
        """Saved in checkpoints, so that a resumed run's histograms and sample (what the
        random-matched control draws from) cover the whole run, not only what followed."""
        return {"hist": self.hist.copy(), "sample": [s.copy() for s in self.sample],
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.hist = state["hist"].copy()
        self.sample = [s.copy() for s in state["sample"]]
        self.rng.bit_generator.state = state["rng"]

    def save(self, out_dir):
        np.savez(os.path.join(out_dir, "weight_hist.npz"), bins=self.BINS, counts=self.hist)
        if self.sample:
            np.save(os.path.join(out_dir, "weights_sample.npy"), np.concatenate(self.sample))


# ---- training -----------------------------------------------------------------------
def train(cfg):
    """Run one training job from a config dict (see DEFAULTS); returns a summary dict."""
    t_start = time.time()
    c = SimpleNamespace(**cfg)
    ddp, rank, local_rank, world_size, device = setup_distributed(c.device, c.dist_timeout_min)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    if c.gradient_accumulation_steps % world_size:
        raise ValueError(f"gradient_accumulation_steps={c.gradient_accumulation_steps} must be "
                         f"divisible by the number of processes ({world_size})")
    grad_accum = c.gradient_accumulation_steps // world_size   # per process
    controls = ("shuffled", "random_matched")
    if c.weighting not in (*weights.SCHEMES, *controls):
        raise ValueError(f"unknown weighting {c.weighting!r}; available: "
                         f"{sorted(weights.SCHEMES) + list(controls)}")
    # the scheme whose inputs this run needs ('shuffled' permutes control_of's weights)
    family = {"shuffled": c.control_of, "random_matched": "uniform"}.get(c.weighting, c.weighting)
    if family not in weights.SCHEMES:
        raise ValueError(f"control_of={c.control_of!r} is not a scheme: {sorted(weights.SCHEMES)}")
    use_critic, use_ref = family == "critic", family == "rho1"
    before_ce = c.weighting in WEIGHTS_BEFORE_CE          # w needs nothing the forward computes
    one_pass = c.loss_impl == "chunked" and before_ce
    for key, allowed in (("train_on", ("correct", "all")), ("weight_norm", ("heads", "tokens")),
                         ("loss_impl", ("chunked", "simple")), ("loss_kernel", mtp_loss.KERNELS),
                         ("data_parallel", ("ddp", "fsdp")), ("checkpoint_format", ("file", "dcp")),
                         ("activation_checkpointing", ("none", "selective", "full")),
                         ("rho1_mode", ("abs", "signed", "topk")), ("reward", ("binary", "pm1", "zscore")),
                         ("incorrect_mode", ("weighted", "value_only", "signed")),
                         ("ref_ce_mode", ("cache", "online")), ("rho1_ref", ("next_token", "matched"))):
        if getattr(c, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {getattr(c, key)!r}")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if c.loss_impl == "chunked":   # a fused kernel that cannot run here fails now, not at step 1
        mtp_loss.check_kernel(c.loss_kernel, device_type)
    if c.dtype == "auto":
        c.dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[c.dtype]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(c.out_dir, exist_ok=True)
    ckpt_path = os.path.join(c.out_dir, "ckpt.pt")

    # data: prepare tinycode on first use so the quick start is one command
    enc = data.get_tokenizer(c.tokenizer)
    if not os.path.exists(os.path.join(c.data_dir, c.train_split, "meta.json")):
        if master:
            say(f"no prepared data in {c.data_dir}: preparing tinycode ({c.tokenizer} tokenizer)")
            data.prepare_tinycode(c.data_dir, c.tokenizer)
        if ddp:
            dist.barrier()
    train_split = data.PreparedSplit(os.path.join(c.data_dir, c.train_split))
    val_split = data.PreparedSplit(os.path.join(c.data_dir, "val"))
    tok_id = data.tokenizer_identity(enc)
    for split in (train_split, val_split):
        data.check_tokenizer(split.meta["tokenizer"], tok_id, f"the data in {split.path}")
        data.check_roundtrip(split, enc)
    pad_id = data.eot_token(enc)

    # Rho-1's frozen reference, scored once into a cache unless asked to run online
    ref, ref_cache = None, None
    if use_ref:
        if not c.ref_init_from:
            raise ValueError("weighting='rho1' needs ref_init_from: a reference run dir "
                             "(train one with `python train.py config/tiny_ref.py`)")
        ref, ref_hash = load_reference(c.ref_init_from, device, tok_id,
                                       ptdtype if device_type == "cuda" else torch.float32,
                                       heads=c.n_future if c.rho1_ref == "matched" else 0)
        if c.ref_ce_mode == "cache":
            ref_cache = reference_cache(c, train_split, ref, ref_hash, device, master, ddp,
                                        ctx, rank, world_size)
            ref = None                                    # not needed in memory any more
    loader = data.Loader(train_split, c.batch_size, c.block_size, seed=c.seed,
                         correct_only=c.train_on == "correct", rank=rank,
                         world_size=world_size, pad_id=pad_id, token_fields={"ref_ce": ref_cache},
                         group_by_length=c.group_by_length)
    rows_per_step = c.batch_size * c.gradient_accumulation_steps
    # the critic's value pre-training, then max_iters of main training like every arm
    pretrain_iters = math.ceil(c.critic_pretrain_epochs * len(loader.ids) / rows_per_step) if use_critic else 0
    total_iters = pretrain_iters + c.max_iters
    labels = train_split.index[loader.ids, 3].astype(float)
    reward_stats = (labels.mean(), max(labels.std(), 1e-6))       # for reward='zscore'

    # model, optimizer, and the state to resume from
    model_args = {k: getattr(c, k) for k in MODEL_KEYS}
    model_args.update(vocab_size=64 * math.ceil(enc.n_vocab / 64),  # multiple of 64: faster matmuls
                      max_seq_len=c.block_size, value_head=use_critic)
    iter_num, best_val, tokens_seen = 0, float("inf"), 0
    moments = weights.RunningMoments(c.whiten_decay)
    probe_start = None    # the critic's values on the probe batch when main training starts
    # the critic's values per training token at the previous visit and at main start, for
    # value_clip and the anchor, sharded over the ranks; none when neither reads it
    value_memory = ValueMemory(train_split, loader.ids, c.value_anchor_coef > 0, rank, world_size, device) \
        if use_critic and (c.value_clip > 0 or c.value_anchor_coef > 0) else None
    ckpt, source_model, model_source, init_weights = None, None, None, None
    value_args = {k: v for k, v in model_args.items() if k.startswith("value_") or k == "dropout"}
    # FSDP: only rank 0 builds the weights, in host memory, and parallel.materialize sends
    # every rank its shards: at 7B no rank holds the whole model on its GPU, and only rank 0
    # holds it at all. Checkpoints are memory-mapped, so the other ranks read only what
    # they use (the optimizer state: the page cache is shared).
    fsdp = ddp and c.data_parallel == "fsdp"
    build = master or not fsdp
    host = "cpu" if fsdp else device
    from_pretrained = c.init_from not in ("scratch", "resume") and pretrained.is_pretrained_source(c.init_from)
    if from_pretrained:
        # a pretrained model: its architecture, with this run's heads, dropout and value head
        check_source_tokenizer(c.init_from, tok_id, "init_from")
        if build:
            torch.manual_seed(c.seed)   # a fresh value head (and 'random' heads) seeded as a run
            source_model, model_args, model_source = pretrained.load_pretrained(
                c.init_from, n_future=c.n_future, head_init=c.head_init, max_seq_len=c.block_size,
                device=host, **value_args)
        if fsdp:   # the other ranks learn the architecture, not the weights
            box = [(model_args, model_source)]
            dist.broadcast_object_list(box, src=0)
            model_args, model_source = box[0]
        if enc.n_vocab > model_args["vocab_size"]:
            raise ValueError(f"init_from={c.init_from!r} has {model_args['vocab_size']} embedding rows, "
                             f"fewer than the tokenizer's {enc.n_vocab} tokens")
        say(f"init_from {c.init_from}: {model_source['format']} checkpoint; its architecture replaces "
            f"n_layer/n_head/d_model/...: {model_args}")
    if c.init_from == "resume":
        ckpt = load_checkpoint(ckpt_path, map_location=host, sharded_ok=True, mmap=fsdp)
        data.check_tokenizer(ckpt["tokenizer"], tok_id, f"checkpoint {ckpt_path}")
        if ckpt["data_hash"] != train_split.meta["hash"]:
            raise ValueError(f"checkpoint {ckpt_path} was trained on other data (hash "
                             f"{ckpt['data_hash']}) than {train_split.path} ({train_split.meta['hash']})")
        model_source = ckpt.get("model_source")
        if model_source:   # the architecture came from a pretrained model, not from these keys
            model_args = {**ckpt["model_args"], **value_args, "n_future": c.n_future}
        changed = model_args_changed(ckpt["model_args"], model_args)
        if changed:
            raise ValueError(f"model config differs from the checkpoint's (checkpoint, now): {changed}")
        iter_num, best_val, tokens_seen = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["tokens_seen"]
        t_start -= ckpt["wall_s"]           # wall time counts the whole run, across resumes
        loader.load_state_dict(ckpt["loader"])
        moments.load_state_dict(ckpt["moments"])
        probe_start = ckpt["probe_start"]
        if value_memory is not None:
            value_memory.load(os.path.join(c.out_dir, "value_memory.npy"))
    elif c.init_from != "scratch" and not from_pretrained:   # fine-tune another run: fresh optimizer, step 0
        init = load_checkpoint(c.init_from, map_location=host, mmap=fsdp)
        data.check_tokenizer(init["tokenizer"], tok_id, f"init_from checkpoint {c.init_from}")
        model_source = init.get("model_source")
        if model_source:   # a run that started from a pretrained model: its architecture
            model_args = {**init["model_args"], **value_args, "n_future": c.n_future}
        saved, more = init["model_args"], c.n_future - init["model_args"]["n_future"]
        if more > 0:   # more heads than it has: a pretrained model's way (pretrained.add_heads),
            # the new heads on the same trunk, so n_layer grows by one block per head
            if model_args["n_layer"] != saved["n_layer"] + more:
                raise ValueError(f"init_from={c.init_from!r} has n_layer={saved['n_layer']} with "
                                 f"{saved['n_future']} head(s); with n_future={c.n_future} its trunk "
                                 f"and {more} new head(s) make n_layer={saved['n_layer'] + more}: set that")
            saved = {**saved, "n_layer": model_args["n_layer"], "n_future": c.n_future}
        changed = model_args_changed(saved, model_args, ignore=("value_", "dropout"))
        if changed:
            raise ValueError(f"init_from={c.init_from!r}: model config differs from that "
                             f"checkpoint's (checkpoint, now): {changed}")
        init_weights = {k: v for k, v in init["model"].items() if not k.startswith("value_head.")}
        if more > 0:
            pretrained.add_heads(init_weights, ModelConfig(**model_args),
                                 init["model_args"]["n_layer"] - init["model_args"]["n_future"] + 1,
                                 init["model_args"]["n_future"], c.head_init)
            say(f"init_from {c.init_from}: {init['model_args']['n_future']} head(s), "
                f"{more} added ({c.head_init})")
        init = None
    torch.manual_seed(c.seed)   # same initial weights on every rank
    raw_model = None
    if build:
        raw_model = source_model.train() if source_model else Transformer(ModelConfig(**model_args)).to(host)
        if ckpt and ckpt["model"] != "dcp":
            raw_model.load_state_dict(ckpt["model"])
        elif init_weights is not None:   # a value head is new here: it keeps its fresh init
            missing, unexpected = raw_model.load_state_dict(init_weights, strict=False)
            assert not unexpected and all(k.startswith("value_head.") for k in missing), (missing, unexpected)
    source_model = init_weights = None
    # checkpointing, compile, FSDP2: before the optimizer, which must see the sharded parameters
    # every rank takes part in a save: FSDP's and 'dcp''s shards, the value memory's
    collective_save = fsdp or c.checkpoint_format == "dcp" or (ddp and value_memory is not None)
    if fsdp:   # shards only: built with no memory, sharded, then given rank 0's weights
        source = raw_model
        with torch.device("meta"):
            raw_model = Transformer(ModelConfig(**model_args))
        parallel.parallelize(raw_model, c, ptdtype, fsdp)
        parallel.materialize(raw_model, source, device)
        source = None
        say(f"FSDP2: {len(parallel.blocks(raw_model))} blocks sharded over {world_size} processes")
    else:
        parallel.parallelize(raw_model, c, ptdtype, fsdp)
    optimizer = raw_model.configure_optimizers(c.weight_decay, c.learning_rate,
                                               (c.beta1, c.beta2), device_type)
    if ckpt and ckpt["model"] == "dcp":   # shards, resharded onto this world size
        parallel.load_sharded(raw_model, optimizer, os.path.join(c.out_dir, ckpt["dcp_dir"]))
    elif ckpt:   # FSDP's 'file' checkpoints hold whole tensors: any world size resumes them
        parallel.load_optimizer(raw_model, optimizer, ckpt["optimizer"])
    resumed = {k: ckpt[k] for k in ("weight_log", "scaler", "dcp_dir") if k in ckpt} if ckpt else {}
    ckpt = None  # free memory
    # parameters only the LM loss trains: frozen (no update, no weight decay) while the
    # critic pre-trains its value head
    if c.value_detach:   # the value loss does not reach the trunk: the whole LM waits
        lm_only = [p for n, p in raw_model.named_parameters() if not n.startswith("value_head.")]
    else:                # the trunk learns from the value loss; the heads wait
        lm_only = [p for m in (*raw_model.heads, raw_model.norm) for p in m.parameters()]
        if not c.tie_embeddings:
            lm_only.append(raw_model.output.weight)
    # heads_only: heads 2..H learn on the trunk as it is (Medusa-style warm-up of heads
    # added to a next-token model), so that their first, large errors do not reach it
    frozen = [p for n, p in raw_model.named_parameters() if not n.startswith("extra_heads.")] \
        if c.heads_only else []
    if c.heads_only and (c.n_future < 2 or use_critic):
        raise ValueError("heads_only trains heads 2..H: it needs n_future >= 2 and a scheme without a value head")
    model = raw_model
    if ddp and c.loss_impl == "simple" and not fsdp:   # else: parallel.all_reduce_replicated
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    wrapped = isinstance(model, DDP)
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)
    if "scaler" in resumed:   # fp16's loss scale continues where it was
        scaler.load_state_dict(resumed["scaler"])
    scheme = weights.SCHEMES[family]
    matched = None
    if c.weighting == "random_matched":
        src = os.path.join(c.control_weights, "weights_sample.npy")
        if not os.path.exists(src):
            raise FileNotFoundError(f"weighting='random_matched' draws from {src}: set "
                                    f"control_weights to a finished weighted run's out_dir")
        matched = torch.from_numpy(np.load(src))
    peak = c.peak_flops or guess_peak_flops(device)
    wlog = WeightLog(c.n_future, c.seed)
    if "weight_log" in resumed:
        wlog.load_state_dict(resumed["weight_log"])
    probe_ids = list(range(min(64, len(val_split)))) if use_critic else None

    dcp_named = [resumed.get("dcp_dir")]   # the shard directory ckpt.pt names

    def checkpoint_state(loader_state):
        extra = {}
        if c.checkpoint_format == "dcp":   # every rank writes its shards (a collective)
            # never into the directory ckpt.pt names now (a resumed run saves its first
            # iteration again): a crash mid-write must leave that pair whole
            name = f"ckpt_dcp-{iter_num}"
            extra["dcp_dir"] = dcp_named[0] = name + "-b" if name == dcp_named[0] else name
            parallel.save_sharded(raw_model, optimizer, os.path.join(c.out_dir, extra["dcp_dir"]))
            model_sd = optim_sd = "dcp"
        elif fsdp:   # whole tensors gathered from every rank (a collective: all ranks call this)
            model_sd, optim_sd = parallel.full_state_dicts(raw_model, optimizer)
        else:
            model_sd, optim_sd = raw_model.state_dict(), optimizer.state_dict()
        return {"model": model_sd, "optimizer": optim_sd, **extra,
                "model_args": model_args, "iter_num": iter_num, "best_val_loss": best_val,
                "tokens_seen": tokens_seen, "moments": moments.state_dict(),
                "wall_s": time.time() - t_start, "probe_start": probe_start,
                "config": cfg, "loader": loader_state, "tokenizer": tok_id,
                "weight_log": wlog.state_dict(), "scaler": scaler.state_dict(),
                "model_source": model_source,
                "data_hash": train_split.meta["hash"], "git": git_hash()}

    def save_all(loader_state):
        """Rank 0 writes ckpt.pt; under collective_save every rank calls this (its shards)."""
        state = checkpoint_state(loader_state)
        if value_memory is not None:   # beside the checkpoint; written first so a checkpoint never lacks it
            value_memory.save(os.path.join(c.out_dir, "value_memory.npy"))
        if not master:
            return
        save_checkpoint(ckpt_path, state)   # the commit point: it names the shards to read
        if c.checkpoint_format == "dcp":     # older shard directories are no longer named
            for old in os.listdir(c.out_dir):
                if old.startswith("ckpt_dcp-") and old != state["dcp_dir"]:
                    shutil.rmtree(os.path.join(c.out_dir, old), ignore_errors=True)
        wlog.save(c.out_dir)

    # say exactly what runs: forks are reproducible only if the log does
    if master:
        with open(os.path.join(c.out_dir, "config.json"), "w") as f:
            json.dump({**cfg, "git": git_hash(), "world_size": world_size,
                       "environment": environment(device)}, f, indent=1)
        say(configurator.format_config(cfg))
        say(f"git {git_hash()}, device {device}, dtype {c.dtype}, {world_size} process(es), "
            f"grad_accum {grad_accum} per process")
        say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters (non-embedding), "
            f"{raw_model.num_params(False) / 1e6:.2f}M in all, {c.n_future} heads")
        say(f"data: {len(loader.ids)} training samples ({c.train_on}), padding waste "
            f"{loader.padding_waste():.1%}, epoch = {len(loader.ids) / rows_per_step:.0f} iterations"
            + (f"; value pre-training {pretrain_iters} iterations" if use_critic else ""))
    log_file = open(os.path.join(c.out_dir, "log.jsonl"), "a") if master else None
    if master and c.wandb_log:
        import wandb
        wandb.init(project=c.wandb_project, name=c.wandb_run_name or None, config=cfg)

    stop = {"sigterm": False}
    def on_sigterm(signum, frame):   # cluster preemption: save, then leave
        stop["sigterm"] = True
    old_handler = signal.signal(signal.SIGTERM, on_sigterm)

    def log(row):
        if master:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            if c.wandb_log:
                import wandb
                wandb.log(row, step=row["iter"])

    from tqdm import tqdm
    # disable=None: no bar when stderr is not a terminal (log files stay readable)
    bar = tqdm(total=total_iters, initial=iter_num, disable=None if master else True, desc="train",
               dynamic_ncols=True)
    history, last_val = [], None
    t_last, tokens_since, iters_since, skipped_since, sq_since = time.time(), 0, 0, 0, 0.0
    eval_model = lambda: model.module if wrapped else model  # DDP's forward would sync buffers

    def forward(m, mb):
        """The CE of every (t, k) term (B, T, H) fp32 and, for the critic, V(s_t) (B, T);
        'chunked' also returns pass 1's state for mtp_loss.backward ('simple': None)."""
        value_mask = mb["loss_mask"].to(device) if use_critic else None
        with ctx:
            if c.loss_impl == "chunked":   # the bare module: DDP's hooks allow one backward
                p = mtp_loss.forward(raw_model, mb["tokens"], mb["targets"], c.loss_chunk,
                                     c.loss_kernel, with_values=use_critic, value_mask=value_mask)
                return p.ce, p.values, p
            out = m(mb["tokens"], with_values=use_critic, value_mask=value_mask)
        logits, values = out if use_critic else (out, None)       # (B, T, H, V), (B, T)
        return mtp_cross_entropy(logits, mb["targets"]), values, None

    @torch.no_grad()
    def scheme_weights(mb, ce, values, norm_stats=None, step_norm=None):
        """w (B, T, H) of one micro-batch, and the critic's values (V = 0 at terminal states).
        ce None: the weights are asked for before the CE (WEIGHTS_BEFORE_CE). norm_stats: a
        dict for normalize's statistics (the 'tokens' pre-pass); step_norm: the step's totals
        from it (step_mass): w rescaled to this micro-batch's share of the step's mass."""
        valid, kw, v = mb["targets"] >= 0, {}, None
        if use_ref:
            kw["ref_ce"] = online_ref_ce(ref, mb["tokens"], ctx, c.loss_chunk,
                                         mb["targets"] if c.rho1_ref == "matched" else None) \
                if ref is not None else mb["ref_ce"].to(device)
        if use_critic:
            v = values.detach() * mb["states"]
            kw.update(values=v, rewards=mb["rewards"], moments=moments)
        if "noise" in mb:
            kw["noise"] = mb["noise"].to(device)
        if c.weighting == "random_matched":
            return weights.random_matched(valid, matched, c.weight_norm), v
        stats = {} if step_norm else norm_stats
        w = scheme(None if ce is None else ce.detach(), valid, cfg=c, norm_stats=stats, **kw)
        if c.weighting == "shuffled":   # permuted within each group: the group's mass is kept
            w = weights.shuffled(w, valid, c.weight_norm)
        if step_norm:
            w = w * weights.step_scale(stats, *step_norm)
        return w, v

    while True:
        # -- evaluate and checkpoint
        if iter_num % c.eval_interval == 0 or iter_num == total_iters:
            last_val = evaluate(eval_model(), val_split, c, ctx, device, ddp, rank, world_size, pad_id)
            val_loss = sum(last_val) / len(last_val)
            best_val = min(best_val, val_loss)
            row = {"iter": iter_num, "val_loss": val_loss, "val_ce_head": last_val}
            if use_critic and (master or fsdp):   # FSDP: all ranks run the forward
                scores, labels, _ = probe_values(eval_model(), val_split, list(range(min(256, len(val_split)))),
                                                 c, ctx, device, pad_id)
                row["val_value_auc"] = value_auc(scores, labels)
            log(row)
            if master:
                bar.write(f"iter {iter_num}: val loss {val_loss:.4f}, per head "
                          + " ".join(f"{v:.3f}" for v in last_val)
                          + (f", value AUC {row['val_value_auc']:.3f}" if "val_value_auc" in row else ""))
            if (master or collective_save) and iter_num > 0:
                save_all(loader.state_dict())
        if iter_num >= total_iters:
            break
        flag = all_reduce_sum(torch.tensor([float(stop["sigterm"])], device=device), ddp)
        if flag.item() > 0:
            if master or collective_save:
                save_all(loader.state_dict())
            say(f"SIGTERM: saved {ckpt_path} at iter {iter_num}; resume with --init_from=resume")
            break

        # -- one optimizer step
        pretraining = iter_num < pretrain_iters        # the critic's value-only stage
        if use_critic and iter_num == pretrain_iters:
            if value_memory is not None:
                value_memory.freeze_anchor()              # the anchor: values at main start
            if master or fsdp:
                probe_start = probe_values(eval_model(), val_split, probe_ids, c, ctx, device, pad_id)[2]
        lr = get_lr(min(iter_num, c.warmup_iters) if pretraining else iter_num - pretrain_iters, c)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # dropout and the controls' randomness are a function of (seed, iteration, rank,
        # micro-batch): nothing to save, a resumed run draws what an uninterrupted one
        # would, and the 'tokens' pre-pass below draws the main pass's dropout masks
        seed_of = lambda i: c.seed + 1_000_003 * iter_num + 7_919 * i + rank
        loader_state = loader.state_dict()
        micro = loader.next_step(grad_accum)
        for mb in micro:
            if c.length_buckets:
                pad_to_bucket(mb, c.block_size, pad_id)
            mb["tokens"] = mb["tokens"].to(device)
            mb["targets"] = mtp_targets(mb["tokens"], mb["loss_mask"].to(device), c.n_future)
            if use_critic:
                if c.incorrect_mode == "value_only":   # incorrect solutions train only the critic
                    mb["targets"][mb["is_correct"].to(device) == 0] = -1
                mb["states"], mb["rewards"] = critic_inputs(mb, c, reward_stats)
        if value_memory is not None:   # each micro-batch's remembered values, from their owners
            value_memory.recall(micro, ddp)
        # N = valid (t, k) terms in the whole step over all ranks, counted before the
        # forward pass; the same for every scheme, so all arms share the loss scale
        n_valid = all_reduce_sum(sum((mb["targets"] >= 0).sum() for mb in micro).float(), ddp)
        n_valid = n_valid.clamp(min=1)   # a step with no LM term (critic, 'value_only'): loss 0, not 0/0
        n_states = all_reduce_sum(sum(mb["states"].sum() for mb in micro).float(), ddp) if use_critic else None
        H = c.n_future
        # LM loss, tokens, value loss, CE per head, count per head, sum of squared sample
        # lengths (MFU's attention cost), sum of the step's weights
        stats = torch.zeros(5 + 2 * H, dtype=torch.float64, device=device)
        delta_stats = torch.zeros(3, dtype=torch.float64, device=device)   # count, sum, sum of squares
        seen, bad = [], torch.zeros((), dtype=torch.bool, device=device)   # bad: non-finite weights
        logs = (iter_num + 1) % c.log_interval == 0 or iter_num + 1 == total_iters
        logged = []   # a log step's (w, valid) of every micro-batch, for WeightLog

        # weight_norm='tokens' normalises over the whole step: a pass over every
        # micro-batch first gives each one's share of the step's weight mass (only with
        # accumulation or several processes; an extra forward pass unless the weights read
        # none: WEIGHTS_BEFORE_CE, one pass or two alike). 'random_matched' draws weights
        # that no normalisation made: nothing to rescale
        step_norm = None
        if c.weight_norm == "tokens" and (len(micro) > 1 or ddp) and not pretraining \
                and c.weighting != "random_matched":
            parts = [{} for _ in micro]
            with torch.no_grad():
                for i, (mb, part) in enumerate(zip(micro, parts)):
                    torch.manual_seed(seed_of(i))          # the main pass's dropout masks
                    ce_values = (None, None) if before_ce else forward(raw_model, mb)[:2]
                    scheme_weights(mb, *ce_values, norm_stats=part)
            step_norm = step_mass(parts, device, ddp)

        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            # DDP: all-reduce gradients only once, on the last micro-step
            if fsdp:   # reduce-scatter on the last micro-batch only, as DDP's no_sync
                parallel.set_gradient_sync(raw_model, last)
            with model.no_sync() if wrapped and not last else nullcontext():
                torch.manual_seed(seed_of(i))
                # DDP averages gradients over ranks; the loss is already a global mean
                scale = lambda l: scaler.scale(l * world_size)
                if one_pass:   # w known before the CE: each head's forward and backward at once
                    valid = mb["targets"] >= 0
                    with torch.no_grad():
                        w = scheme_weights(mb, None, None, step_norm=step_norm)[0]
                        bad |= ~torch.isfinite(w).all()
                    ce = mtp_loss.forward_backward(raw_model, mb["tokens"], mb["targets"], w, n_valid,
                                                   c.loss_chunk, c.loss_kernel, scale=scale, ctx=ctx)
                    loss = weights.weighted_loss(ce, w, n_valid)      # the value only
                else:
                    ce, values, heads = forward(model, mb)
                    valid = mb["targets"] >= 0
                    with torch.no_grad():
                        w, v = scheme_weights(mb, ce, values, step_norm=step_norm)
                        if use_critic:
                            delta = weights.td_errors(v, mb["rewards"], H, c.gamma)[valid]
                            delta_stats += torch.stack([torch.tensor(delta.numel(), device=device),
                                                        delta.sum(), delta.pow(2).sum()]).double()
                        if pretraining:
                            w = torch.zeros_like(w)                       # LM loss off
                        bad |= ~torch.isfinite(w).all()          # on the device: no sync here
                    lm_ce, term = ce, None
                    if use_critic and c.incorrect_mode == "signed":
                        # advantage sign kept: where the TD error of an incorrect solution is
                        # negative, push the token's probability down instead of pulling it up
                        neg = (weights.td_errors(v, mb["rewards"], H, c.gamma) < 0) & \
                            (mb["is_correct"].to(device) == 0)[:, None, None]
                        lm_ce = unlikelihood_where(ce, neg)
                        term = lambda ce_k, k: unlikelihood_where(ce_k, neg[..., k])
                    if pretraining and c.value_detach and not wrapped:
                        loss = ce.new_zeros(())   # w = 0 and the LM waits: skip its backward pass
                    else:                         # (DDP needs every parameter in the graph)
                        loss = weights.weighted_loss(lm_ce, w, n_valid)   # 'chunked': the value only
                    value_loss = None   # the critic's: trained with the LM loss, logged apart
                    if use_critic:      # (`loss` is the weighted LM loss in every arm)
                        value_loss = critic_value_loss(values, v, mb, c, n_states)
                        seen.append((mb["sample_ids"], mb["lengths"], values.detach().float()))
                        stats[2] += value_loss.detach().double()
                    if heads is None:
                        scale(loss if value_loss is None else loss + c.value_coef * value_loss).backward()
                    else:   # the same gradient, head by head (mtp_loss.py)
                        mtp_loss.backward(heads, raw_model, w, n_valid, term=term, scale=scale, ctx=ctx,
                                          extra_loss=c.value_coef * value_loss if use_critic else None,
                                          heads=not pretraining)
            with torch.no_grad():
                stats[0] += loss.double()
                stats[1] += mb["lengths"].sum()
                stats[3:3 + H] += ce.sum(dim=(0, 1)).double()
                stats[3 + H:3 + 2 * H] += valid.sum(dim=(0, 1)).double()
                stats[-2] += mb["lengths"].double().pow(2).sum()
                stats[-1] += w.sum().double()
                if logs and not pretraining:
                    logged.append((w, valid))
        if ddp and not wrapped:
            parallel.all_reduce_replicated(raw_model, world_size)
        all_reduce_sum(stats, ddp)
        for p in (lm_only if pretraining else []) + frozen:   # no update, no weight decay,
            p.grad = None                                      # Adam state untouched
        scaler.unscale_(optimizer)
        grad_norm, value_grad_norm = clip_gradients(raw_model, c.grad_clip)
        # the update must not happen on non-finite values: losses, gradient norms and the
        # finite-weights flag come to the host in one transfer
        vgn = grad_norm.new_zeros(()) if value_grad_norm is None else value_grad_norm
        step_loss, step_value_loss, gn, vgn, step_tokens, step_sq, bad_weights = torch.stack(
            [stats[0], stats[2], grad_norm.double(), vgn.double(), stats[1], stats[-2],
             bad.double()]).tolist()
        finite_grads = math.isfinite(gn) and math.isfinite(vgn)
        # fp16: an inf/nan gradient is GradScaler's routine overflow (its scale is too high):
        # scaler.step skips the update and scaler.update halves the scale. Anywhere else,
        # and a non-finite loss always, it is an error.
        overflow = scaler.is_enabled() and not finite_grads
        skipped_since += overflow
        if not (math.isfinite(step_loss) and math.isfinite(step_value_loss) and (finite_grads or overflow)):
            # the parameters are still those of the last good step: keep them
            if master or collective_save:
                save_all(loader_state)
            raise FloatingPointError(
                f"non-finite training loss ({step_loss})" +
                (f", value loss ({step_value_loss}), value head gradient norm ({vgn})" if use_critic else "") +
                f" or gradient norm ({gn}) at "
                f"iter {iter_num}" + (f" (scheme {c.weighting!r} returned non-finite weights)"
                                      if bad_weights else "") +
                f"; the last good state is saved in {ckpt_path}. Lower learning_rate, check "
                f"the data, or try dtype='float32'.")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if use_critic:
            moments.update(*all_reduce_sum(delta_stats, ddp).tolist())
            if value_memory is not None:
                value_memory.store(seen, ddp)
        iter_num += 1
        tokens_since += int(step_tokens)
        sq_since += step_sq
        iters_since += 1
        tokens_seen += int(step_tokens)   # real (non-padding) tokens, all ranks
        bar.update(1)
        history.append(step_loss)

        if logs:
            dt = time.time() - t_last
            tok_s = tokens_since / dt
            ce_head = (stats[3:3 + H] / stats[3 + H:3 + 2 * H].clamp(min=1)).tolist()
            # each row holds one sample, its padding after it: a token's attention cost is
            # its sample's length n, so the FLOPs use the token-weighted mean n (sum n^2 /
            # sum n, real tokens); tok_s is every rank's, MFU one device's
            mfu = raw_model.estimate_mfu(tok_s, sq_since / max(tokens_since, 1), peak,
                                         world_size) if peak else None
            row = {"iter": iter_num, "loss": step_loss, "ce_head": ce_head, "lr": lr,
                   "grad_norm": grad_norm.item(), "tokens_per_s": tok_s, "mfu": mfu,
                   "step_ms": 1000 * dt / iters_since,
                   "epoch": loader.epoch(), "tokens_seen": tokens_seen,
                   "stage": "value_pretrain" if pretraining else "main"}
            if scaler.is_enabled():   # fp16: steps skipped on overflow since the last row
                row.update(skipped_steps=skipped_since, loss_scale=scaler.get_scale())
            if not pretraining:
                row.update(wlog.record(logged))
                # the step's mean weight over its N terms: 1 for every scheme unless clipping
                # moved it (README, stabilisers)
                row["w_step_mean"] = (stats[-1] / n_valid).item()
            if use_critic:
                row["value_loss"] = stats[2].item()
                if value_grad_norm is not None:
                    row["value_grad_norm"] = value_grad_norm.item()
                if probe_start is not None:
                    now = probe_values(eval_model(), val_split, probe_ids, c, ctx, device, pad_id)[2]
                    row["value_drift"] = float(torch.cat([(a - b).abs() for a, b in zip(now, probe_start)]).mean())
            log(row)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tok_s:,.0f}",
                            **({"mfu": f"{mfu:.1%}"} if mfu else {}))
            t_last, tokens_since, iters_since, skipped_since, sq_since = time.time(), 0, 0, 0, 0.0

    bar.close()
    signal.signal(signal.SIGTERM, old_handler)
    summary = {"iter_num": iter_num, "total_iters": total_iters, "pretrain_iters": pretrain_iters,
               "finished": iter_num >= total_iters, "val_ce_head": last_val,
               "best_val_loss": best_val, "tokens_seen": tokens_seen,
               "wall_s": time.time() - t_start, "weighting": c.weighting, "seed": c.seed,
               # peak resident memory of this process (Linux reports KiB), and of the GPU
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device_type == "cuda" else None}
    if master:
        log_file.close()
        with open(os.path.join(c.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    if ddp:   # every rank arrives before any tears the group down: a gloo rank that left
        dist.barrier()   # while its peer was still writing aborted at exit ("terminate called")
        dist.destroy_process_group()
    return {**summary, "train_losses": history, "out_dir": c.out_dir}


def critic_value_loss(values, v_detached, mb, c, n_states):
    """Squared error to the GAE value targets over non-terminal states, divided by the
    step's global state count. value_clip > 0: PPO's clipped value loss around the values
    this sample got at its previous visit (a trust region against drift);
    value_anchor_coef > 0: plus a pull towards the values at the start of main training.
    Those come from ValueMemory.recall (mb['value_prev'], mb['value_anchor'], NaN where
    none is stored: the current values stand in, so the term is plain there)."""
    _, returns = weights.gae(v_detached, mb["rewards"], c.gamma, c.lam)  # targets, no gradient
    err = (values - returns).pow(2)
    known = lambda old: torch.where(torch.isnan(old), v_detached, old)
    if c.value_clip > 0:
        old = known(mb["value_prev"])
        clipped = old + (values - old).clamp(-c.value_clip, c.value_clip)
        err = torch.maximum(err, (clipped - returns).pow(2))
    if c.value_anchor_coef > 0:
        err = err + c.value_anchor_coef * (values - known(mb["value_anchor"])).pow(2)
    return (err * mb["states"]).sum() / n_states


class ValueMemory:
    """The critic's value of every training token at its sample's previous visit (the
    centre of value_clip's trust region) and, with value_anchor_coef > 0, at the start of
    main training (the anchor); NaN until the sample is seen.

    Sharded so that it scales with the data: rank r keeps the tokens of the samples
    ids[r::world_size] (ids: the Loader's samples, sorted) in one flat float32 row per kept
    value, 1/world_size of the training tokens, on the device, and no row nobody reads (the
    anchor's only with the anchor on; none at all without clip and anchor: train() then
    makes no ValueMemory). Per step, on the device, without a host sync: shapes are fixed
    by the longest training sample, and a token this rank does not hold reads and writes one
    spare slot at the end of its rows instead of being masked out (a boolean mask would sync).
      recall  before the step: every rank's sample ids (all-gather), then one all-reduce
              in which each token's owner gives its stored values and the others zeros,
              so each rank gets exactly the floats the owner holds (x + 0 = x);
      store   after the step: the step's values from every rank (all-gather), each owner
              writing its own samples'.
    The checkpoint holds one (2, split tokens) file in the split's token layout, written
    by rank 0 from every rank's shard in turn: it resumes on any number of processes."""

    def __init__(self, split, ids, anchor, rank, world_size, device):
        self.split, self.all_ids, self.anchor = split, ids, anchor
        self.rank, self.world, self.device = rank, world_size, device
        self.ids, self.starts, self.lengths = self.layout(rank)
        self.T = int(split.index[ids, 1].max()) if len(ids) else 1   # the longest sample
        n = int(self.lengths.sum())
        self.values = torch.full((2 if anchor else 1, n + 1), float("nan"), device=device)
        self.spare = n                                                  # the slot at the end
        self.ids_d = torch.from_numpy(self.ids).to(device)
        self.starts_d = torch.from_numpy(self.starts).to(device)

    def layout(self, rank):
        """Rank `rank`'s samples (sorted), where each starts in its flat rows, their lengths."""
        ids = self.all_ids[rank::self.world]
        lengths = self.split.index[ids, 1].astype(np.int64)
        return ids, np.cumsum(lengths) - lengths, lengths

    def positions(self, rank):
        """For each entry of rank `rank`'s flat rows, its token's position in the split."""
        ids, starts, lengths = self.layout(rank)
        return np.arange(int(lengths.sum())) + np.repeat(self.split.index[ids, 0] - starts, lengths)

    def host(self):
        """This rank's rows as a numpy array (rows, its tokens), without the spare slot."""
        return self.values[:, :-1].cpu().numpy()

    def _gather(self, x, ddp):
        """(n, ...) on every rank -> (world_size * n, ...) in rank order (equal n per rank:
        the Loader's contract), on the device."""
        x = x.to(self.device)
        if not ddp:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    def _mine(self, ids, lengths):
        """(N, T) indices into this rank's rows for the tokens of samples `ids` (the spare
        slot where this rank does not hold the token, or t >= length), and the (N, T) mask
        of those it holds."""
        t = torch.arange(self.T, device=self.device)
        if not len(self.ids):
            held = torch.zeros(len(ids), self.T, dtype=torch.bool, device=self.device)
            return torch.full_like(held, self.spare, dtype=torch.long), held
        j = torch.searchsorted(self.ids_d, ids).clamp(max=len(self.ids) - 1)
        held = (self.ids_d[j] == ids)[:, None] & (t < lengths[:, None])
        return torch.where(held, self.starts_d[j][:, None] + t, self.spare), held

    def recall(self, micro, ddp):
        """Set each micro-batch's mb['value_prev'] (and mb['value_anchor']) (B, T) on the
        device: the stored values of its tokens, NaN where none is stored or t >= length."""
        ids = self._gather(torch.cat([mb["sample_ids"] for mb in micro]), ddp)
        lengths = self._gather(torch.cat([mb["lengths"] for mb in micro]), ddp)
        idx, held = self._mine(ids, lengths)
        out = torch.where(held, self.values[:, idx], 0.0)            # (rows, N, T)
        if ddp:   # one owner per token, zeros from the others: the owner's floats exactly
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        real = torch.arange(self.T, device=self.device) < lengths[:, None]
        out = out.masked_fill(~real, float("nan"))
        n = len(ids) // self.world
        out = out[:, self.rank * n:(self.rank + 1) * n]               # this rank's rows
        names = ("value_prev", "value_anchor")[:len(self.values)]
        s = 0
        for mb in micro:
            B, T_mb = mb["tokens"].shape
            part = F.pad(out[:, s:s + B], (0, max(0, T_mb - self.T)), value=float("nan"))[..., :T_mb]
            mb.update(zip(names, part))
            s += B

    def store(self, seen, ddp):
        """Write this step's values (seen: (sample_ids, lengths, values (B, T)) per
        micro-batch) into their owners' rows."""
        values = torch.cat([F.pad(v[:, :self.T], (0, self.T - min(v.shape[1], self.T)))
                            for _, _, v in seen])                     # (N, T), every rank alike
        ids = self._gather(torch.cat([s for s, _, _ in seen]), ddp)
        lengths = self._gather(torch.cat([n for _, n, _ in seen]), ddp)
        values = self._gather(values, ddp)
        idx, _ = self._mine(ids, lengths)
        self.values[0].index_put_((idx.flatten(),), values.flatten().to(self.values.dtype))
        self.values[0, self.spare] = float("nan")                     # what landed there is nobody's

    def freeze_anchor(self):
        """Main training starts: the anchor is the values as they are now."""
        if self.anchor:
            self.values[1] = self.values[0]

    def save(self, path):
        """A collective: rank 0 writes `path`, a (2, split tokens) float32 .npy in the
        split's token layout (row 1 NaN without the anchor), taking every rank's shard in
        turn, so no rank holds more than one shard; written beside, then renamed."""
        if self.rank == 0:
            tmp = f"{path}.tmp.{os.getpid()}.npy"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(2, len(self.split.tokens)))
            out[:] = np.nan
        for r in range(self.world):
            if r == self.rank == 0:
                shard = self.host()
            elif self.rank == 0:   # the sender's shard: its size is known from the layout
                n = int(self.layout(r)[2].sum())
                buf = torch.empty(len(self.values), n, device=self.device)
                dist.recv(buf, src=r)
                shard = buf.cpu().numpy()
            elif self.rank == r:
                dist.send(self.values[:, :-1].contiguous(), dst=0)
                continue
            else:
                continue
            pos = self.positions(r)
            for row, vals in enumerate(shard):
                out[row, pos] = vals
        if self.rank == 0:
            out.flush()
            del out
            os.replace(tmp, path)

    def load(self, path):
        """This rank's shard from save()'s file (memory-mapped: only the shard is read),
        whatever the number of processes that wrote it."""
        saved = np.load(path, mmap_mode="r")
        pos = self.positions(self.rank)
        for row in range(len(self.values)):
            self.values[row, :-1] = torch.from_numpy(np.ascontiguousarray(saved[row, pos])).to(self.device)


def main(argv=None):
    rank0 = int(os.environ.get("RANK", 0)) == 0
    cfg = configurator.configure(DEFAULTS, sys.argv[1:] if argv is None else argv,
                                 log=print if rank0 else (lambda *a, **k: None))
    return train(cfg)


if __name__ == "__main__":
    main()
