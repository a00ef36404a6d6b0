"""
Train a multi-token-prediction transformer with weighted per-(t, k) losses.

    python train.py                                   # the embedded default: tiny baseline, CPU, minutes
    python train.py config/tiny_baseline.py --max_iters=100
    torchrun --standalone --nproc_per_node=2 train.py config/tiny_baseline.py

The defaults below are the whole configuration; config files and --key=value overrides
change them (configurator.py). Every scheme runs through the same step: only the weights
w[t, k] differ (weights.py).
"""
import json
import math
import os
import resource
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

import build
import configurator
import critic
import data
import mtp_loss
import parallel
import providers
import reference
import weights
from checkpoint import environment, git_hash, save_all
from diagnostics import WeightLog
from model import mtp_cross_entropy, mtp_entropy, mtp_targets
from parallel import all_reduce_sum

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
data_dir = "data_cache/tinycode"  # prepared by `python prepare.py` (done here if missing)
tokenizer = "bytes"             # must equal the tokenizer the data was prepared with
train_split = "train"           # the split trained on: 'train', or 'pretrain' (the tiny base model)
train_on = "correct"            # 'correct' solutions only, or 'all' (the critic's data)
block_size = 192                # longest sample (tokens) a row may hold; longer ones are skipped
group_by_length = True          # batch samples of similar length together: less padding
dry_run = False                 # check everything but the weights (plan.py), print the plan, exit; non-zero
                                # with one line per problem. WORLD_SIZE=N / DEVICE_MEMORY_GB=G: a node's
row_order = "forward"           # 'reversed': each micro-batch's rows in reverse, the same maths summed in
                                # another float order (the reproducibility check, docs/reproducibility.md)
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
weighting = "uniform"           # a name in weights.SCHEMES ('uniform', 'rho1', 'critic', 'oracle', ...), or a
                                # control: 'shuffled', 'random_matched'
control_of = "rho1"             # 'shuffled': the scheme whose own weights are permuted
control_weights = ""            # 'random_matched': the run dir whose weights_sample.npy is drawn from
plugins = ""                    # python files that register more schemes (weights.register), comma-separated
weight_norm = "heads"           # 'heads': sum_k w[t, k] = 1 (times #heads); 'tokens': over the whole step
temperature = 1.0               # T of a softmax scheme: Rho-1's softmax(excess / T), entropy 'soft'
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
# entropy: high-entropy "forking" tokens
entropy_mode = "top"            # 'top': the top entropy_top_frac of each sequence's terms, equal weights; 'soft': softmax(H / T)
entropy_top_frac = 0.2          # share of terms 'top' keeps (Wang et al. 2025 kept 20%)
# group: group-relative advantages (Dr. GRPO), needs weight_norm='tokens'
group_std = False               # divide A = r - mean by the group's std (GRPO); False: Dr. GRPO's A
group_negative = "signed"       # A < 0: 'signed' (the unlikelihood term) or 'drop' (weight 0)
# hybrid: critic x Rho-1
hybrid_mean = "product"         # 'product' of both schemes' weights, or their 'geometric' mean; renormalised
# rm_critic: the critic with a reward model's score in place of the label
rm_init_from = ""               # the reward model: a critic run on the same base (its value head scores correctness)
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
critic_temperature = 0.0        # 0: w ∝ |z| (the method); > 0: softmax(|z| / T) per weight_norm group
# optimizer: AdamW, cosine schedule with linear warmup
batch_size = 8                  # rows (samples) per micro-batch per process
gradient_accumulation_steps = 1  # micro-batches per step, over all processes together
max_iters = 1200
max_epochs = 0.0                # > 0: main training lasts this many epochs of the run's samples (train_on):
                                # max_iters and lr_decay_iters become ceil(epochs x samples / rows per step)
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
weights_in_pass = True          # 'chunked' + 'torch': a scheme whose weights are position-local (Scheme.local:
                                # rho1, dft under 'heads', no sparsity) gets them inside one pass, every head's
                                # graph held at once (faster, more memory: bench.py); False: two passes
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


# ---- schedule -----------------------------------------------------------------------
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
            mb = data.pad_to_bucket(mb, c.block_size, pad_id)
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
    """A signed scheme's terms with w < 0: where neg, the unlikelihood loss -log(1 - p)
    (Welleck et al. 2020) of the token instead of its CE -log p, which pushes its
    probability down (the critic's incorrect_mode='signed')."""
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


# ---- the run: its config, data, model and state -----------------------------------------
CHOICES = (("train_on", ("correct", "all")), ("weight_norm", ("heads", "tokens")),
           ("loss_impl", ("chunked", "simple")), ("loss_kernel", mtp_loss.KERNELS),
           ("data_parallel", ("ddp", "fsdp")), ("checkpoint_format", ("file", "dcp")),
           ("activation_checkpointing", ("none", "selective", "full")),
           ("rho1_mode", ("abs", "signed", "topk")), ("reward", ("binary", "pm1", "zscore")),
           ("incorrect_mode", ("weighted", "value_only", "signed")),
           ("ref_ce_mode", ("cache", "online")), ("rho1_ref", ("next_token", "matched")),
           ("entropy_mode", ("top", "soft")), ("group_negative", ("signed", "drop")),
           ("hybrid_mean", ("product", "geometric")), ("row_order", ("forward", "reversed")))


def resolve_scheme(c):
    """The scheme whose inputs this run computes: the weighting itself, or the scheme a
    control is made from ('shuffled': control_of's own weights permuted; 'random_matched':
    draws from another run's weights, reading nothing)."""
    weights.load_plugins(c.plugins)
    if c.weighting not in (*weights.SCHEMES, *weights.CONTROLS):
        raise ValueError(f"unknown weighting {c.weighting!r}; available: "
                         f"{sorted(weights.SCHEMES) + list(weights.CONTROLS)}")
    family = {"shuffled": c.control_of, "random_matched": "uniform"}.get(c.weighting, c.weighting)
    if family not in weights.SCHEMES:
        raise ValueError(f"control_of={c.control_of!r} is not a scheme: {sorted(weights.SCHEMES)}")
    return weights.SCHEMES[family]


def setup(cfg):
    """The run's namespace r: config c, processes, device and dtype, and what the scheme's
    declaration asks for (r.value_head: a critic's value head and its training; r.use_ref:
    a frozen reference; r.one_pass: weights known before the CE)."""
    c = SimpleNamespace(**cfg)
    r = SimpleNamespace(cfg=cfg, c=c, t_start=time.time())
    r.ddp, r.rank, r.local_rank, r.world_size, r.device = parallel.setup_distributed(c.device, c.dist_timeout_min)
    r.master = r.rank == 0
    r.say = print if r.master else (lambda *a, **k: None)
    if c.gradient_accumulation_steps % r.world_size:
        raise ValueError(f"gradient_accumulation_steps={c.gradient_accumulation_steps} must be "
                         f"divisible by the number of processes ({r.world_size})")
    r.grad_accum = c.gradient_accumulation_steps // r.world_size   # per process
    r.scheme = resolve_scheme(c)
    r.value_head = "values" in r.scheme.reads
    r.use_ref = "ref_ce" in r.scheme.reads
    r.entropy = "entropy" in r.scheme.reads             # the loss path computes it (mtp_loss.forward)
    r.reward_model = "rm_reward" in r.scheme.reads      # a frozen reward model scores each sample
    r.signed = r.scheme.is_signed(c)
    # the controls draw their random numbers after the forward's dropout masks, as the
    # baseline draws its masks: they stay on two passes so that the arms draw the same masks
    r.before_ce = r.scheme.before_ce and c.weighting not in weights.CONTROLS
    r.one_pass = c.loss_impl == "chunked" and r.before_ce
    # weights inside the one pass (mtp_loss.forward_backward_weighing): a position-local
    # scheme's make(valid, **inputs) -> weigh (weights.local_weigher), or None (two passes)
    r.weighing = (weights.local_weigher(r.scheme, c) if c.weights_in_pass and c.loss_impl == "chunked"
                  and c.loss_kernel == "torch" and c.weighting not in weights.CONTROLS and not r.signed
                  and not r.value_head else None)
    for key, allowed in CHOICES:
        if getattr(c, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {getattr(c, key)!r}")
    if r.scheme.weight_norm and c.weight_norm != r.scheme.weight_norm:
        raise ValueError(f"weighting={c.weighting!r} needs weight_norm={r.scheme.weight_norm!r} "
                         f"(weights.register), got {c.weight_norm!r}: set --weight_norm={r.scheme.weight_norm}")
    if c.heads_only and (c.n_future < 2 or r.value_head):
        raise ValueError("heads_only trains heads 2..H: it needs n_future >= 2 and a scheme without a value head")
    r.device_type = "cuda" if r.device.startswith("cuda") else "cpu"
    if c.loss_impl == "chunked":   # a fused kernel that cannot run here fails now, not at step 1
        mtp_loss.check_kernel(c.loss_kernel, r.device_type)
    if c.dtype == "auto":
        c.dtype = "bfloat16" if r.device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    r.ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[c.dtype]
    r.ctx = nullcontext() if r.ptdtype == torch.float32 else torch.autocast(r.device_type, dtype=r.ptdtype)
    if r.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(c.out_dir, exist_ok=True)
    r.ckpt_path = os.path.join(c.out_dir, "ckpt.pt")
    return r


def load_data(r):
    """The splits (tinycode prepared on first use, so the quick start is one command), the
    reference's CE where the scheme reads it, and the loader."""
    c = r.c
    r.enc = data.get_tokenizer(c.tokenizer)
    if not os.path.exists(os.path.join(c.data_dir, c.train_split, "meta.json")):
        if r.master:
            r.say(f"no prepared data in {c.data_dir}: preparing tinycode ({c.tokenizer} tokenizer)")
            data.prepare_tinycode(c.data_dir, c.tokenizer)
        if r.ddp:
            dist.barrier()
    r.train_split = data.PreparedSplit(os.path.join(c.data_dir, c.train_split))
    r.val_split = data.PreparedSplit(os.path.join(c.data_dir, "val"))
    r.tok_id = data.tokenizer_identity(r.enc)
    for split in (r.train_split, r.val_split):
        data.check_tokenizer(split.meta["tokenizer"], r.tok_id, f"the data in {split.path}")
        data.check_roundtrip(split, r.enc)
    r.pad_id = data.eot_token(r.enc)
    # the frozen reference, scored once into a cache unless asked to run online
    r.ref, ref_cache = None, None
    if r.use_ref:
        if not c.ref_init_from:
            raise ValueError(f"weighting={c.weighting!r} reads the reference's CE: it needs ref_init_from, "
                             f"a reference run dir (train one with `python train.py config/tiny_ref.py`)")
        r.ref, ref_hash = reference.load_reference(
            c.ref_init_from, r.device, r.tok_id, r.ptdtype if r.device_type == "cuda" else torch.float32,
            heads=c.n_future if c.rho1_ref == "matched" else 0)
        if c.ref_ce_mode == "cache":
            ref_cache = reference.reference_cache(c, r.train_split, r.ref, ref_hash, r.device, r.master,
                                                  r.ddp, r.ctx, r.rank, r.world_size)
            r.ref = None                                  # not needed in memory any more
    r.rm = None
    if r.reward_model:
        if not c.rm_init_from:
            raise ValueError(f"weighting={c.weighting!r} reads a reward model's score: set rm_init_from "
                             f"to a critic run (its value head scores correctness)")
        r.rm = critic.load_reward_model(c.rm_init_from, r.device, r.tok_id,
                                        r.ptdtype if r.device_type == "cuda" else torch.float32)
    r.loader = data.Loader(r.train_split, c.batch_size, c.block_size, seed=c.seed,
                           correct_only=c.train_on == "correct", rank=r.rank,
                           world_size=r.world_size, pad_id=r.pad_id, token_fields={"ref_ce": ref_cache},
                           group_by_length=c.group_by_length, reverse_rows=c.row_order == "reversed")
    r.rows_per_step = c.batch_size * c.gradient_accumulation_steps
    if c.max_epochs > 0:   # the budget in epochs of the prepared data, as the proposal states it
        c.max_iters = c.lr_decay_iters = math.ceil(c.max_epochs * len(r.loader.ids) / r.rows_per_step)
        r.cfg.update(max_iters=c.max_iters, lr_decay_iters=c.lr_decay_iters)
    # the critic's value pre-training, then max_iters of main training like every arm
    r.pretrain_iters = math.ceil(c.critic_pretrain_epochs * len(r.loader.ids) / r.rows_per_step) \
        if r.value_head else 0
    r.total_iters = r.pretrain_iters + c.max_iters
    labels = r.train_split.index[r.loader.ids, 3].astype(float)
    r.reward_stats = (labels.mean(), max(labels.std(), 1e-6))       # for reward='zscore'
    # the critic's values per training token at the previous visit and at main start, for
    # value_clip and the anchor, sharded over the ranks; none when neither reads it
    r.value_memory = critic.ValueMemory(r.train_split, r.loader.ids, c.value_anchor_coef > 0, r.rank,
                                        r.world_size, r.device) \
        if r.value_head and (c.value_clip > 0 or c.value_anchor_coef > 0) else None


def prepare_run(r, resumed):
    """What the steps read besides the model: the random-matched control's source, the
    weight log, the critic's probe samples, the peak FLOP/s for MFU."""
    c = r.c
    r.matched = None
    if c.weighting == "random_matched":
        src = os.path.join(c.control_weights, "weights_sample.npy")
        if not os.path.exists(src):
            raise FileNotFoundError(f"weighting='random_matched' draws from {src}: set "
                                    f"control_weights to a finished weighted run's out_dir")
        r.matched = torch.from_numpy(np.load(src))
    r.peak = c.peak_flops or parallel.guess_peak_flops(r.device)
    r.wlog = WeightLog(c.n_future, c.seed)
    if "weight_log" in resumed:
        r.wlog.load_state_dict(resumed["weight_log"])
    r.probe_ids = list(range(min(64, len(r.val_split)))) if r.value_head else None
    r.dcp_named = resumed.get("dcp_dir")   # the shard directory ckpt.pt names


# ---- logs -----------------------------------------------------------------------------------
def announce(r):
    """Say exactly what runs: forks are reproducible only if the log does. Opens the log."""
    c, cfg = r.c, r.cfg
    if r.master:
        with open(os.path.join(c.out_dir, "config.json"), "w") as f:
            json.dump({**cfg, "git": git_hash(), "world_size": r.world_size,
                       "environment": environment(r.device)}, f, indent=1)
        r.say(configurator.format_config(cfg))
        r.say(f"git {git_hash()}, device {r.device}, dtype {c.dtype}, {r.world_size} process(es), "
              f"grad_accum {r.grad_accum} per process")
        r.say(f"model: {r.raw_model.num_params() / 1e6:.2f}M parameters (non-embedding), "
              f"{r.raw_model.num_params(False) / 1e6:.2f}M in all, {c.n_future} heads")
        r.say(f"data: {len(r.loader.ids)} training samples ({c.train_on}), padding waste "
              f"{r.loader.padding_waste():.1%}, epoch = {len(r.loader.ids) / r.rows_per_step:.0f} iterations"
              + (f"; value pre-training {r.pretrain_iters} iterations" if r.value_head else ""))
    r.log_file = open(os.path.join(c.out_dir, "log.jsonl"), "a") if r.master else None
    if r.master and c.wandb_log:
        import wandb
        wandb.init(project=c.wandb_project, name=c.wandb_run_name or None, config=cfg)


def log(r, row):
    if r.master:
        r.log_file.write(json.dumps(row) + "\n")
        r.log_file.flush()
        if r.c.wandb_log:
            import wandb
            wandb.log(row, step=row["iter"])


# ---- one step ---------------------------------------------------------------------------------
def forward(r, m, mb):
    """One micro-batch's forward -> (ce, values, state): the CE of every (t, k) term
    (B, T, H) fp32; with a value head, V(s_t) (B, T); and what pass 2 and the providers
    read: 'chunked', pass 1's state (mtp_loss.forward: its .entropy where the scheme reads
    'entropy'); 'simple', a namespace holding only that entropy (model.mtp_entropy)."""
    c = r.c
    value_mask = mb["loss_mask"].to(r.device) if r.value_head else None
    with r.ctx:
        if c.loss_impl == "chunked":   # the bare module: DDP's hooks allow one backward
            p = mtp_loss.forward(r.raw_model, mb["tokens"], mb["targets"], c.loss_chunk,
                                 c.loss_kernel, with_values=r.value_head, value_mask=value_mask,
                                 with_entropy=r.entropy)
            return p.ce, p.values, p
        out = m(mb["tokens"], with_values=r.value_head, value_mask=value_mask)
    logits, values = out if r.value_head else (out, None)       # (B, T, H, V), (B, T)
    entropy = mtp_entropy(logits, mb["targets"]) if r.entropy else None
    return mtp_cross_entropy(logits, mb["targets"]), values, SimpleNamespace(entropy=entropy)


@torch.no_grad()
def scheme_weights(r, mb, ce, values, norm_stats=None, step_norm=None, state=None):
    """w (B, T, H) of one micro-batch, signed where the scheme is, and the critic's values
    (V = 0 at terminal states). ce None: the weights are asked for before the CE
    (Scheme.before_ce). norm_stats: a dict for normalize's statistics (the 'tokens'
    pre-pass); step_norm: the step's totals from it (step_mass): w rescaled to this
    micro-batch's share of the step's mass. The scheme's inputs come from providers.py,
    which see this forward (state: forward's third value)."""
    c, valid = r.c, mb["targets"] >= 0
    v = critic.state_values(values, mb) if values is not None else None
    if c.weighting == "random_matched":
        return weights.random_matched(valid, r.matched, c.weight_norm), v
    fwd = SimpleNamespace(ce=ce, values=v, state=state)
    kw = {name: providers.provide(name, r, mb, fwd) for name in r.scheme.reads if name != "ce"}
    stats = {} if step_norm else norm_stats
    w = r.scheme.fn(None if ce is None else ce.detach(), valid, cfg=c, norm_stats=stats, **kw)
    if c.weighting == "shuffled":   # permuted within each group: the group's mass is kept
        w = weights.shuffled(w, valid, c.weight_norm)
    if step_norm:
        w = w * weights.step_scale(stats, *step_norm)
    return w, v


def next_micro_batches(r):
    """The step's micro-batches on the device, with their MTP targets and, with a value
    head, the critic's states and rewards and remembered values."""
    c = r.c
    micro = r.loader.next_step(r.grad_accum)
    for mb in micro:
        if c.length_buckets:
            data.pad_to_bucket(mb, c.block_size, r.pad_id)
        mb["tokens"] = mb["tokens"].to(r.device)
        mb["targets"] = mtp_targets(mb["tokens"], mb["loss_mask"].to(r.device), c.n_future)
        if r.value_head:
            if c.incorrect_mode == "value_only":   # incorrect solutions train only the critic
                mb["targets"][mb["is_correct"].to(r.device) == 0] = -1
            if r.rm is not None:   # the reward model's score in place of the label
                mb["rm_reward"] = critic.reward_model_scores(r.rm, mb, r.ctx)
            mb["states"], mb["rewards"] = critic.critic_inputs(mb, c, r.reward_stats)
    if r.value_memory is not None:   # each micro-batch's remembered values, from their owners
        r.value_memory.recall(micro, r.ddp)
    return micro


def tokens_pre_pass(r, micro, seed_of):
    """weight_norm='tokens' normalises over the whole step: a pass over every micro-batch
    first gives each one's share of the step's weight mass (only with accumulation or
    several processes; an extra forward pass unless the weights are known before the CE).
    'random_matched' draws weights that no normalisation made: nothing to rescale."""
    parts = [{} for _ in micro]
    with torch.no_grad():
        for i, (mb, part) in enumerate(zip(micro, parts)):
            torch.manual_seed(seed_of(i))          # the main pass's dropout masks
            ce, values, state = (None, None, None) if r.before_ce else forward(r, r.raw_model, mb)
            scheme_weights(r, mb, ce, values, norm_stats=part, state=state)
    return step_mass(parts, r.device, r.ddp)


def micro_step(r, mb, step):
    """Forward, weights and backward of one micro-batch -> (loss, ce, valid, w). step holds
    what the whole step shares: n_valid, n_states, step_norm, pretraining, the running sums."""
    c, H = r.c, r.c.n_future
    # DDP averages gradients over ranks; the loss is already a global mean
    scale = lambda l: r.scaler.scale(l * r.world_size)
    valid = mb["targets"] >= 0
    if r.one_pass:   # w known before the CE: each head's forward and backward at once
        with torch.no_grad():
            w = scheme_weights(r, mb, None, None, step_norm=step.norm)[0]
            step.bad |= ~torch.isfinite(w).all()
        ce = mtp_loss.forward_backward(r.raw_model, mb["tokens"], mb["targets"], w, step.n_valid,
                                       c.loss_chunk, c.loss_kernel, scale=scale, ctx=r.ctx)
        return weights.weighted_loss(ce, w, step.n_valid), ce, valid, w   # the loss: its value only
    if r.weighing is not None:   # w from each position's CE, inside the one pass
        with torch.no_grad():
            fwd = SimpleNamespace(ce=None, values=None, state=None)
            weigh = r.weighing(valid, **{name: providers.provide(name, r, mb, fwd)
                                         for name in r.scheme.reads if name != "ce"})
        ce, w = mtp_loss.forward_backward_weighing(r.raw_model, mb["tokens"], mb["targets"], weigh,
                                                   step.n_valid, c.loss_chunk, scale=scale, ctx=r.ctx)
        step.bad |= ~torch.isfinite(w).all()
        return weights.weighted_loss(ce, w, step.n_valid), ce, valid, w
    ce, values, state = forward(r, r.model, mb)
    heads = state if c.loss_impl == "chunked" else None   # pass 1, for the head-by-head backward
    with torch.no_grad():
        w, v = scheme_weights(r, mb, ce, values, step_norm=step.norm, state=state)
        neg = w < 0 if r.signed else None     # signed: the unlikelihood term where w < 0
        if neg is not None:
            w = w.abs()
        if r.value_head:
            step.delta_stats += critic.delta_stats(v, mb["rewards"], valid, H, c.gamma)
        if step.pretraining:
            w = torch.zeros_like(w)                       # LM loss off
        step.bad |= ~torch.isfinite(w).all()          # on the device: no sync here
    lm_ce, term = ce, None
    if neg is not None:
        lm_ce = unlikelihood_where(ce, neg)
        term = lambda ce_k, k: unlikelihood_where(ce_k, neg[..., k])
    if step.pretraining and c.value_detach and not r.wrapped:
        loss = ce.new_zeros(())   # w = 0 and the LM waits: skip its backward pass
    else:                         # (DDP needs every parameter in the graph)
        loss = weights.weighted_loss(lm_ce, w, step.n_valid)   # 'chunked': the value only
    value_loss = None   # the critic's: trained with the LM loss, logged apart
    if r.value_head:    # (`loss` is the weighted LM loss in every arm)
        value_loss = critic.critic_value_loss(values, v, mb, c, step.n_states)
        step.seen.append((mb["sample_ids"], mb["lengths"], values.detach().float()))
        step.sums[2] += value_loss.detach().double()
    if heads is None:
        scale(loss if value_loss is None else loss + c.value_coef * value_loss).backward()
    else:   # the same gradient, head by head (mtp_loss.py)
        mtp_loss.backward(heads, r.raw_model, w, step.n_valid, term=term, scale=scale, ctx=r.ctx,
                          extra_loss=c.value_coef * value_loss if r.value_head else None,
                          heads=not step.pretraining)
    return loss, ce, valid, w


def check_finite(r, loss, value_loss, gn, vgn, bad_weights, overflow, loader_state):
    """The update must not happen on non-finite values. fp16: an inf/nan gradient is
    GradScaler's routine overflow (its scale is too high): scaler.step skips the update and
    scaler.update halves the scale. Anywhere else, and a non-finite loss always, it is an
    error: the parameters are still those of the last good step, saved before raising."""
    finite_grads = math.isfinite(gn) and math.isfinite(vgn)
    if math.isfinite(loss) and math.isfinite(value_loss) and (finite_grads or overflow):
        return
    save_all(r, loader_state)
    raise FloatingPointError(
        f"non-finite training loss ({loss})" +
        (f", value loss ({value_loss}), value head gradient norm ({vgn})" if r.value_head else "") +
        f" or gradient norm ({gn}) at iter {r.iter_num}" +
        (f" (scheme {r.c.weighting!r} returned non-finite weights)" if bad_weights else "") +
        f"; the last good state is saved in {r.ckpt_path}. Lower learning_rate, check "
        f"the data, or try dtype='float32'.")


def train_step(r):
    """One optimizer step over grad_accum micro-batches -> its log statistics (SimpleNamespace)."""
    c, H = r.c, r.c.n_future
    step = SimpleNamespace(pretraining=r.iter_num < r.pretrain_iters)   # the critic's value-only stage
    if r.value_head and r.iter_num == r.pretrain_iters:
        if r.value_memory is not None:
            r.value_memory.freeze_anchor()              # the anchor: values at main start
        if r.master or r.fsdp:
            r.probe_start = critic.probe_values(r.eval_model(), r.val_split, r.probe_ids, c, r.ctx,
                                                r.device, r.pad_id)[2]
    step.lr = get_lr(min(r.iter_num, c.warmup_iters) if step.pretraining else r.iter_num - r.pretrain_iters, c)
    for group in r.optimizer.param_groups:
        group["lr"] = step.lr
    # dropout and the controls' randomness are a function of (seed, iteration, rank,
    # micro-batch): nothing to save, a resumed run draws what an uninterrupted one
    # would, and the 'tokens' pre-pass draws the main pass's dropout masks
    seed_of = lambda i: c.seed + 1_000_003 * r.iter_num + 7_919 * i + r.rank
    loader_state = r.loader.state_dict()
    micro = next_micro_batches(r)
    # N = valid (t, k) terms in the whole step over all ranks, counted before the
    # forward pass; the same for every scheme, so all arms share the loss scale
    n_valid = all_reduce_sum(sum((mb["targets"] >= 0).sum() for mb in micro).float(), r.ddp)
    step.n_valid = n_valid.clamp(min=1)   # a step with no LM term (critic, 'value_only'): loss 0, not 0/0
    step.n_states = all_reduce_sum(sum(mb["states"].sum() for mb in micro).float(), r.ddp) \
        if r.value_head else None
    # LM loss, tokens, value loss, CE per head, count per head, sum of squared sample
    # lengths (MFU's attention cost), sum of the step's weights
    step.sums = sums = torch.zeros(5 + 2 * H, dtype=torch.float64, device=r.device)
    step.delta_stats = torch.zeros(3, dtype=torch.float64, device=r.device)   # count, sum, sum of squares
    step.seen, step.bad = [], torch.zeros((), dtype=torch.bool, device=r.device)   # bad: non-finite weights
    step.logs = (r.iter_num + 1) % c.log_interval == 0 or r.iter_num + 1 == r.total_iters
    step.logged = []   # a log step's (w, valid, ref_ce or None) of every micro-batch, for WeightLog
    step.norm = None
    if c.weight_norm == "tokens" and (len(micro) > 1 or r.ddp) and not step.pretraining \
            and c.weighting != "random_matched":
        step.norm = tokens_pre_pass(r, micro, seed_of)
    for i, mb in enumerate(micro):
        last = i == len(micro) - 1
        if r.fsdp:   # reduce-scatter on the last micro-batch only, as DDP's no_sync
            parallel.set_gradient_sync(r.raw_model, last)
        with r.model.no_sync() if r.wrapped and not last else nullcontext():   # DDP: all-reduce once
            torch.manual_seed(seed_of(i))
            loss, ce, valid, w = micro_step(r, mb, step)
        with torch.no_grad():
            sums[0] += loss.double()
            sums[1] += mb["lengths"].sum()
            sums[3:3 + H] += ce.sum(dim=(0, 1)).double()
            sums[3 + H:3 + 2 * H] += valid.sum(dim=(0, 1)).double()
            sums[-2] += mb["lengths"].double().pow(2).sum()
            sums[-1] += w.sum().double()
            if step.logs and not step.pretraining:
                step.logged.append((w, valid, mb.get("ref_ce")))   # the batch's reference CE, if any
    if r.ddp and not r.wrapped:
        parallel.all_reduce_replicated(r.raw_model, r.world_size)
    all_reduce_sum(sums, r.ddp)
    for p in (r.lm_only if step.pretraining else []) + r.frozen:   # no update, no weight decay,
        p.grad = None                                               # Adam state untouched
    r.scaler.unscale_(r.optimizer)
    step.grad_norm, step.value_grad_norm = clip_gradients(r.raw_model, c.grad_clip)
    # losses, gradient norms and the finite-weights flag come to the host in one transfer
    vgn = step.grad_norm.new_zeros(()) if step.value_grad_norm is None else step.value_grad_norm
    step.loss, value_loss, gn, vgn, step.tokens, step.sq, bad_weights = torch.stack(
        [sums[0], sums[2], step.grad_norm.double(), vgn.double(), sums[1], sums[-2],
         step.bad.double()]).tolist()
    step.overflow = r.scaler.is_enabled() and not (math.isfinite(gn) and math.isfinite(vgn))
    check_finite(r, step.loss, value_loss, gn, vgn, bad_weights, step.overflow, loader_state)
    r.scaler.step(r.optimizer)
    r.scaler.update()
    r.optimizer.zero_grad(set_to_none=True)
    if r.value_head:
        r.moments.update(*all_reduce_sum(step.delta_stats, r.ddp).tolist())
        if r.value_memory is not None:
            r.value_memory.store(step.seen, r.ddp)
    return step


def log_step(r, step, meter):
    """A log line of the steps since the last one: loss, CE per head, throughput and MFU,
    the weights' statistics, the critic's value loss and drift."""
    c, H, sums = r.c, r.c.n_future, step.sums
    dt = time.time() - meter.t_last
    tok_s = meter.tokens / dt
    ce_head = (sums[3:3 + H] / sums[3 + H:3 + 2 * H].clamp(min=1)).tolist()
    # each row holds one sample, its padding after it: a token's attention cost is its
    # sample's length n, so the FLOPs use the token-weighted mean n (sum n^2 / sum n, real
    # tokens); tok_s is every rank's, MFU one device's
    mfu = r.raw_model.estimate_mfu(tok_s, meter.sq / max(meter.tokens, 1), r.peak,
                                   r.world_size) if r.peak else None
    row = {"iter": r.iter_num, "loss": step.loss, "ce_head": ce_head, "lr": step.lr,
           "grad_norm": step.grad_norm.item(), "tokens_per_s": tok_s, "mfu": mfu,
           "step_ms": 1000 * dt / meter.iters,
           "epoch": r.loader.epoch(), "tokens_seen": r.tokens_seen,
           "stage": "value_pretrain" if step.pretraining else "main"}
    if r.scaler.is_enabled():   # fp16: steps skipped on overflow since the last row
        row.update(skipped_steps=meter.skipped, loss_scale=r.scaler.get_scale())
    if not step.pretraining:
        row.update(r.wlog.record([(w, valid) for w, valid, _ in step.logged],
                                 ref_ce=[ref for _, _, ref in step.logged]))
        # the step's mean weight over its N terms: 1 for every scheme unless clipping
        # moved it (docs/method.md, stabilisers)
        row["w_step_mean"] = (sums[-1] / step.n_valid).item()
    if r.value_head:
        row["value_loss"] = sums[2].item()
        if step.value_grad_norm is not None:
            row["value_grad_norm"] = step.value_grad_norm.item()
        if r.probe_start is not None:
            now = critic.probe_values(r.eval_model(), r.val_split, r.probe_ids, c, r.ctx, r.device, r.pad_id)[2]
            row["value_drift"] = float(torch.cat([(a - b).abs() for a, b in zip(now, r.probe_start)]).mean())
    log(r, row)
    r.bar.set_postfix(loss=f"{step.loss:.4f}", tok_s=f"{tok_s:,.0f}", **({"mfu": f"{mfu:.1%}"} if mfu else {}))


def validate(r):
    """Validation loss per head, the critic's value AUC; a checkpoint after step 0."""
    c = r.c
    r.last_val = evaluate(r.eval_model(), r.val_split, c, r.ctx, r.device, r.ddp, r.rank, r.world_size, r.pad_id)
    val_loss = sum(r.last_val) / len(r.last_val)
    r.best_val = min(r.best_val, val_loss)
    row = {"iter": r.iter_num, "val_loss": val_loss, "val_ce_head": r.last_val}
    if r.value_head and (r.master or r.fsdp):   # FSDP: all ranks run the forward
        scores, labels, _ = critic.probe_values(r.eval_model(), r.val_split,
                                                list(range(min(256, len(r.val_split)))),
                                                c, r.ctx, r.device, r.pad_id)
        row["val_value_auc"] = critic.value_auc(scores, labels)
    log(r, row)
    if r.master:
        r.bar.write(f"iter {r.iter_num}: val loss {val_loss:.4f}, per head "
                    + " ".join(f"{v:.3f}" for v in r.last_val)
                    + (f", value AUC {row['val_value_auc']:.3f}" if "val_value_auc" in row else ""))
    if r.iter_num > 0:
        save_all(r, r.loader.state_dict())


def summarize(r, history):
    summary = {"iter_num": r.iter_num, "total_iters": r.total_iters, "pretrain_iters": r.pretrain_iters,
               "finished": r.iter_num >= r.total_iters, "val_ce_head": r.last_val,
               "best_val_loss": r.best_val, "tokens_seen": r.tokens_seen,
               "wall_s": time.time() - r.t_start, "weighting": r.c.weighting, "seed": r.c.seed,
               # peak resident memory of this process (Linux reports KiB), and of the GPU
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "peak_gpu_mb": torch.cuda.max_memory_allocated(r.device) / 2**20
               if r.device_type == "cuda" else None}
    if r.master:
        r.log_file.close()
        with open(os.path.join(r.c.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


# ---- training ---------------------------------------------------------------------------------
def train(cfg):
    """Run one training job from a config dict (see DEFAULTS); returns a summary dict."""
    r = setup(cfg)
    load_data(r)
    resumed = build.build_model(r)
    prepare_run(r, resumed)
    announce(r)
    stop = {"sigterm": False}
    def on_sigterm(signum, frame):   # cluster preemption: save, then leave
        stop["sigterm"] = True
    old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    from tqdm import tqdm
    # disable=None: no bar when stderr is not a terminal (log files stay readable)
    r.bar = tqdm(total=r.total_iters, initial=r.iter_num, disable=None if r.master else True, desc="train",
                 dynamic_ncols=True)
    history, r.last_val = [], None
    meter = SimpleNamespace(t_last=time.time(), tokens=0, iters=0, skipped=0, sq=0.0)   # since the last log
    while True:
        if r.iter_num % r.c.eval_interval == 0 or r.iter_num == r.total_iters:
            validate(r)
        if r.iter_num >= r.total_iters:
            break
        if all_reduce_sum(torch.tensor([float(stop["sigterm"])], device=r.device), r.ddp).item() > 0:
            save_all(r, r.loader.state_dict())
            r.say(f"SIGTERM: saved {r.ckpt_path} at iter {r.iter_num}; resume with --init_from=resume")
            break
        step = train_step(r)
        r.iter_num += 1
        r.tokens_seen += int(step.tokens)   # real (non-padding) tokens, all ranks
        meter.tokens += int(step.tokens)
        meter.sq += step.sq
        meter.iters += 1
        meter.skipped += step.overflow
        r.bar.update(1)
        history.append(step.loss)
        if step.logs:
            log_step(r, step, meter)
            meter = SimpleNamespace(t_last=time.time(), tokens=0, iters=0, skipped=0, sq=0.0)
    r.bar.close()
    signal.signal(signal.SIGTERM, old_handler)
    summary = summarize(r, history)
    if r.ddp:   # every rank arrives before any tears the group down: a gloo rank that left
        dist.barrier()   # while its peer was still writing aborted at exit ("terminate called")
        dist.destroy_process_group()
    return {**summary, "train_losses": history, "out_dir": r.c.out_dir}


def main(argv=None):
    rank0 = int(os.environ.get("RANK", 0)) == 0
    cfg = configurator.configure(DEFAULTS, sys.argv[1:] if argv is None else argv,
                                 log=print if rank0 else (lambda *a, **k: None))
    if cfg["dry_run"]:   # everything but the weights, checked; one line per problem
        import plan
        sys.exit(plan.report(*plan.check(SimpleNamespace(**cfg))))
    return train(cfg)


if __name__ == "__main__":
    main()
