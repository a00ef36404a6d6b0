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
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
import data
import weights
from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_targets

# -----------------------------------------------------------------------------
# default config: the tiny tinycode baseline, a few minutes on 2 CPU cores
# I/O
out_dir = "out/tiny_baseline"   # checkpoints, log.jsonl, config.json
init_from = "scratch"           # 'scratch' or 'resume' (from out_dir/ckpt.pt)
eval_interval = 100             # iterations between validation + checkpoint
eval_iters = 10                 # validation batches per evaluation
log_interval = 10               # iterations between log lines
# data
data_dir = "data_cache/tinycode"  # prepared by `python data.py` (done here if missing)
tokenizer = "bytes"             # must equal the tokenizer the data was prepared with
train_on = "correct"            # 'correct' solutions only, or 'all' (the critic's data)
block_size = 192                # longest sample (tokens) a row may hold; longer ones are skipped
# model (ModelConfig)
n_layer = 4                     # trunk blocks + one block per head
n_future = 2                    # H: heads predict tokens t+1 .. t+H
n_head = 4
n_kv_head = 2
d_model = 128
d_ff = 352
rope_theta = 10000.0
tie_embeddings = True
dropout = 0.0
# weighting (weights.py)
weighting = "uniform"           # name of a scheme in weights.SCHEMES
# optimizer: AdamW, cosine schedule with linear warmup
batch_size = 16                 # rows (samples) per micro-batch per process
gradient_accumulation_steps = 2  # micro-batches per step, over all processes together
max_iters = 600
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 30
lr_decay_iters = 600            # cosine reaches min_lr here; ~max_iters
decay_lr = True
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # max global grad norm; 0 disables
# system
seed = 1337
device = "auto"                 # 'auto', 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"                  # 'auto' (bf16 on capable GPUs, else fp32), 'float32', 'bfloat16', 'float16'
compile = False                 # torch.compile the model
peak_flops = 0.0                # device peak FLOP/s for MFU; 0 = guess for known GPUs
wandb_log = False
wandb_project = "wmtp"
wandb_run_name = ""
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
MODEL_KEYS = ("n_layer", "n_future", "n_head", "n_kv_head", "d_model", "d_ff",
              "rope_theta", "tie_embeddings", "dropout")


# ---- distributed setup ------------------------------------------------------------
def setup_distributed(device):
    """-> (ddp, rank, local_rank, world_size, device). torchrun sets RANK; nccl on CUDA,
    gloo on CPU, so a 2-process CPU run works the same as 8 GPUs."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
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


def load_checkpoint(path, map_location="cpu"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"init_from='resume' but there is no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise RuntimeError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                           f"({type(e).__name__}: {e}); delete it to start from scratch") from None
    missing = {"model", "model_args", "iter_num"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {sorted(missing)}: not a wmtp checkpoint")
    return ckpt


def git_hash():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


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


# ---- evaluation -----------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, split, c, ctx, device, ddp, rank, world_size, pad_id):
    """Mean CE per head over the same eval_iters * batch_size validation samples every
    time, whatever the number of processes (each rank takes every world_size-th one)."""
    loader = data.Loader(split, c.batch_size, c.block_size, seed=0, correct_only=True, pad_id=pad_id)
    ids = [loader._sample_id(i) for i in range(min(c.eval_iters * c.batch_size, len(loader.ids)))]
    mine = ids[rank::world_size]
    sums = torch.zeros(c.n_future, dtype=torch.float64, device=device)
    counts = torch.zeros(c.n_future, dtype=torch.float64, device=device)
    model.eval()
    for i in range(0, len(mine), c.batch_size):
        mb = loader.collate(mine[i:i + c.batch_size])
        tokens, mask = mb["tokens"].to(device), mb["loss_mask"].to(device)
        targets = mtp_targets(tokens, mask, c.n_future)
        with ctx:
            ce = mtp_cross_entropy(model(tokens), targets)          # (B, T, H)
        sums += ce.sum(dim=(0, 1)).double()
        counts += (targets >= 0).sum(dim=(0, 1)).double()
    model.train()
    all_reduce_sum(sums, ddp)
    all_reduce_sum(counts, ddp)
    return (sums / counts.clamp(min=1)).tolist()


# ---- training -----------------------------------------------------------------------
def train(cfg):
    """Run one training job from a config dict (see DEFAULTS); returns a summary dict."""
    c = SimpleNamespace(**cfg)
    ddp, rank, local_rank, world_size, device = setup_distributed(c.device)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    if c.gradient_accumulation_steps % world_size:
        raise ValueError(f"gradient_accumulation_steps={c.gradient_accumulation_steps} must be "
                         f"divisible by the number of processes ({world_size})")
    grad_accum = c.gradient_accumulation_steps // world_size   # per process
    if c.weighting not in weights.SCHEMES:
        raise ValueError(f"unknown weighting {c.weighting!r}; available: {sorted(weights.SCHEMES)}")
    if c.train_on not in ("correct", "all"):
        raise ValueError(f"train_on must be 'correct' or 'all', got {c.train_on!r}")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
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
    if not os.path.exists(os.path.join(c.data_dir, "train", "meta.json")):
        if master:
            say(f"no prepared data in {c.data_dir}: preparing tinycode ({c.tokenizer} tokenizer)")
            data.prepare_tinycode(c.data_dir, c.tokenizer)
        if ddp:
            dist.barrier()
    train_split = data.PreparedSplit(os.path.join(c.data_dir, "train"))
    val_split = data.PreparedSplit(os.path.join(c.data_dir, "val"))
    tok_id = data.tokenizer_identity(enc)
    for split in (train_split, val_split):
        data.check_tokenizer(split.meta["tokenizer"], tok_id, f"the data in {split.path}")
    pad_id = data.eot_token(enc)
    loader = data.Loader(train_split, c.batch_size, c.block_size, seed=c.seed,
                         correct_only=c.train_on == "correct", rank=rank,
                         world_size=world_size, pad_id=pad_id)

    # model, optimizer, and the state to resume from
    model_args = {k: getattr(c, k) for k in MODEL_KEYS}
    model_args.update(vocab_size=64 * math.ceil(enc.n_vocab / 64),  # multiple of 64: faster matmuls
                      max_seq_len=c.block_size)
    iter_num, best_val, tokens_seen = 0, float("inf"), 0
    ckpt = None
    if c.init_from == "resume":
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        data.check_tokenizer(ckpt["tokenizer"], tok_id, f"checkpoint {ckpt_path}")
        if ckpt["data_hash"] != train_split.meta["hash"]:
            raise ValueError(f"checkpoint {ckpt_path} was trained on other data (hash "
                             f"{ckpt['data_hash']}) than {train_split.path} ({train_split.meta['hash']})")
        changed = {k: (ckpt["model_args"][k], v) for k, v in model_args.items()
                   if ckpt["model_args"].get(k) != v}
        if changed:
            raise ValueError(f"model config differs from the checkpoint's (checkpoint, now): {changed}")
        iter_num, best_val, tokens_seen = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["tokens_seen"]
        loader.load_state_dict(ckpt["loader"])
    elif c.init_from != "scratch":
        raise ValueError(f"init_from must be 'scratch' or 'resume', got {c.init_from!r}")
    torch.manual_seed(c.seed)   # same initial weights on every rank
    raw_model = Transformer(ModelConfig(**model_args)).to(device)
    if ckpt:
        raw_model.load_state_dict(ckpt["model"])
    optimizer = raw_model.configure_optimizers(c.weight_decay, c.learning_rate,
                                               (c.beta1, c.beta2), device_type)
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    ckpt = None  # free memory
    model = torch.compile(raw_model) if c.compile else raw_model
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)
    scheme = weights.SCHEMES[c.weighting]
    peak = c.peak_flops or guess_peak_flops(device)

    def checkpoint_state(loader_state):
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_args": model_args, "iter_num": iter_num, "best_val_loss": best_val,
                "tokens_seen": tokens_seen,
                "config": cfg, "loader": loader_state, "tokenizer": tok_id,
                "data_hash": train_split.meta["hash"], "git": git_hash()}

    # say exactly what runs: forks are reproducible only if the log does
    if master:
        with open(os.path.join(c.out_dir, "config.json"), "w") as f:
            json.dump({**cfg, "git": git_hash(), "world_size": world_size}, f, indent=1)
        say(configurator.format_config(cfg))
        say(f"git {git_hash()}, device {device}, dtype {c.dtype}, {world_size} process(es), "
            f"grad_accum {grad_accum} per process")
        say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters (non-embedding), "
            f"{raw_model.num_params(False) / 1e6:.2f}M in all, {c.n_future} heads")
        say(f"data: {len(loader.ids)} training samples ({c.train_on}), padding waste "
            f"{loader.padding_waste():.1%}, epoch = {len(loader.ids) / (c.batch_size * c.gradient_accumulation_steps):.0f} iterations")
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
    bar = tqdm(total=c.max_iters, initial=iter_num, disable=not master, desc="train",
               dynamic_ncols=True)
    history, last_val = [], None
    t_last, tokens_since = time.time(), 0
    while True:
        # -- evaluate and checkpoint
        if iter_num % c.eval_interval == 0 or iter_num == c.max_iters:
            # the unwrapped module: DDP's forward would sync buffers, and ranks may run
            # different numbers of evaluation batches
            last_val = evaluate(model.module if ddp else model, val_split, c, ctx, device,
                                ddp, rank, world_size, pad_id)
            val_loss = sum(last_val) / len(last_val)
            best_val = min(best_val, val_loss)
            log({"iter": iter_num, "val_loss": val_loss, "val_ce_head": last_val})
            bar.write(f"iter {iter_num}: val loss {val_loss:.4f}, per head "
                      + " ".join(f"{v:.3f}" for v in last_val)) if master else None
            if master and iter_num > 0:
                save_checkpoint(ckpt_path, checkpoint_state(loader.state_dict()))
        if iter_num >= c.max_iters:
            break
        flag = all_reduce_sum(torch.tensor([float(stop["sigterm"])], device=device), ddp)
        if flag.item() > 0:
            if master:
                save_checkpoint(ckpt_path, checkpoint_state(loader.state_dict()))
            say(f"SIGTERM: saved {ckpt_path} at iter {iter_num}; resume with --init_from=resume")
            break

        # -- one optimizer step
        lr = get_lr(iter_num, c)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # dropout randomness is a function of (seed, iteration, rank): nothing to save, and
        # a resumed run draws the same masks as an uninterrupted one
        torch.manual_seed(c.seed + 1_000_003 * iter_num + rank)
        loader_state = loader.state_dict()
        micro = loader.next_step(grad_accum)
        for mb in micro:
            mb["tokens"] = mb["tokens"].to(device)
            mb["targets"] = mtp_targets(mb["tokens"], mb["loss_mask"].to(device), c.n_future)
        # N = valid (t, k) terms in the whole step over all ranks, counted before the forward
        n_valid = all_reduce_sum(sum((mb["targets"] >= 0).sum() for mb in micro).float(), ddp)
        stats = torch.zeros(2 + 2 * c.n_future, dtype=torch.float64, device=device)
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            # DDP: all-reduce gradients only once, on the last micro-step
            with model.no_sync() if ddp and not last else nullcontext():
                with ctx:
                    logits = model(mb["tokens"])                     # (B, T, H, V)
                ce = mtp_cross_entropy(logits, mb["targets"])        # (B, T, H) fp32
                valid = mb["targets"] >= 0
                with torch.no_grad():
                    w = scheme(ce.detach(), valid, cfg=c)            # (B, T, H)
                loss = weights.weighted_loss(ce, w, n_valid)
                # DDP averages gradients over ranks; the loss is already a global mean
                scaler.scale(loss * world_size).backward()
            with torch.no_grad():
                stats[0] += loss.double()
                stats[1] += mb["lengths"].sum()
                stats[2:2 + c.n_future] += ce.sum(dim=(0, 1)).double()
                stats[2 + c.n_future:] += valid.sum(dim=(0, 1)).double()
        all_reduce_sum(stats, ddp)
        step_loss = stats[0].item()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                   c.grad_clip if c.grad_clip > 0 else float("inf"))
        if not (math.isfinite(step_loss) and torch.isfinite(grad_norm)):
            # the parameters are still those of the last good step: keep them
            if master:
                save_checkpoint(ckpt_path, checkpoint_state(loader_state))
            raise FloatingPointError(
                f"non-finite training loss ({step_loss}) or gradient norm ({grad_norm.item()}) at "
                f"iter {iter_num}; the last good state is saved in {ckpt_path}. Lower "
                f"learning_rate, check the data, or try dtype='float32'.")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        tokens_since += int(stats[1].item())
        tokens_seen += int(stats[1].item())   # real (non-padding) tokens, all ranks
        bar.update(1)
        history.append(step_loss)

        if iter_num % c.log_interval == 0 or iter_num == c.max_iters:
            dt = time.time() - t_last
            tok_s = tokens_since / dt
            ce_head = (stats[2:2 + c.n_future] / stats[2 + c.n_future:].clamp(min=1)).tolist()
            mfu = raw_model.estimate_mfu(tok_s, c.block_size, peak) if peak else None
            row = {"iter": iter_num, "loss": step_loss, "ce_head": ce_head, "lr": lr,
                   "grad_norm": grad_norm.item(), "tokens_per_s": tok_s, "mfu": mfu,
                   "epoch": loader.epoch(), "tokens_seen": tokens_seen,
                   **weight_stats(w, valid)}
            log(row)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tok_s:,.0f}",
                            **({"mfu": f"{mfu:.1%}"} if mfu else {}))
            t_last, tokens_since = time.time(), 0

    bar.close()
    signal.signal(signal.SIGTERM, old_handler)
    if log_file:
        log_file.close()
    if ddp:
        dist.destroy_process_group()
    return {"iter_num": iter_num, "val_ce_head": last_val, "best_val_loss": best_val,
            "tokens_seen": tokens_seen,
            "train_losses": history, "out_dir": c.out_dir}


def weight_stats(w, valid):
    """Summary of the last micro-batch's weights over valid terms, for the log."""
    v = w[valid]
    if v.numel() == 0:
        return {}
    return {"w_mean": v.mean().item(), "w_std": v.std().item() if v.numel() > 1 else 0.0,
            "w_min": v.min().item(), "w_max": v.max().item()}


def main(argv=None):
    rank0 = int(os.environ.get("RANK", 0)) == 0
    cfg = configurator.configure(DEFAULTS, sys.argv[1:] if argv is None else argv,
                                 log=print if rank0 else (lambda *a, **k: None))
    return train(cfg)


if __name__ == "__main__":
    main()
