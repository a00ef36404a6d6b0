"""
Checkpoints and what a run records about itself.

    save_checkpoint(path, state)     # atomic: a crash leaves the old file or the new one
    load_checkpoint(run_dir_or_pt)   # a run dir's ckpt.pt or a .pt, checked to be a wmtp checkpoint

save_all(r, loader_state) writes a run's state (model, optimizer, loader cursor, the
critic's moments and value memory, the weight log, ...; FSDP's and 'dcp''s shards from
every rank); eval.py, sample.py, pretrained.py and reference.py read it back.
"""
import os
import shutil
import subprocess
import time

import numpy as np
import torch

import parallel


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
    docs/reproducibility.md)."""
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


def checkpoint_state(r, loader_state):
    c, extra = r.c, {}
    if c.checkpoint_format == "dcp":   # every rank writes its shards (a collective)
        # never into the directory ckpt.pt names now (a resumed run saves its first
        # iteration again): a crash mid-write must leave that pair whole
        name = f"ckpt_dcp-{r.iter_num}"
        extra["dcp_dir"] = r.dcp_named = name + "-b" if name == r.dcp_named else name
        parallel.save_sharded(r.raw_model, r.optimizer, os.path.join(c.out_dir, extra["dcp_dir"]))
        model_sd = optim_sd = "dcp"
    elif r.fsdp:   # whole tensors gathered from every rank (a collective: all ranks call this)
        model_sd, optim_sd = parallel.full_state_dicts(r.raw_model, r.optimizer)
    else:
        model_sd, optim_sd = r.raw_model.state_dict(), r.optimizer.state_dict()
    return {"model": model_sd, "optimizer": optim_sd, **extra,
            "model_args": r.model_args, "iter_num": r.iter_num, "best_val_loss": r.best_val,
            "tokens_seen": r.tokens_seen, "moments": r.moments.state_dict(),
            "wall_s": time.time() - r.t_start, "probe_start": r.probe_start,
            "config": r.cfg, "loader": loader_state, "tokenizer": r.tok_id,
            "weight_log": r.wlog.state_dict(), "scaler": r.scaler.state_dict(),
            "model_source": r.model_source,
            "data_hash": r.train_split.meta["hash"], "git": git_hash()}


def save_all(r, loader_state):
    """Rank 0 writes ckpt.pt; under collective_save every rank calls this (its shards)."""
    if not (r.master or r.collective_save):
        return
    state = checkpoint_state(r, loader_state)
    if r.value_memory is not None:   # beside the checkpoint; written first so a checkpoint never lacks it
        r.value_memory.save(os.path.join(r.c.out_dir, "value_memory.npy"))
    if not r.master:
        return
    save_checkpoint(r.ckpt_path, state)   # the commit point: it names the shards to read
    if r.c.checkpoint_format == "dcp":     # older shard directories are no longer named
        for old in os.listdir(r.c.out_dir):
            if old.startswith("ckpt_dcp-") and old != state["dcp_dir"]:
                shutil.rmtree(os.path.join(r.c.out_dir, old), ignore_errors=True)
    r.wlog.save(r.c.out_dir)
