"""
Checkpoints and what a run records about itself.

    save_checkpoint(path, state)     # atomic: a crash leaves the old file or the new one
    load_checkpoint(run_dir_or_pt)   # a run dir's ckpt.pt or a .pt, checked to be a wmtp checkpoint

train.py assembles the state (model, optimizer, loader cursor, the critic's moments, the
weight log, ...); eval.py, sample.py, pretrained.py and reference.py read it back.
"""
import os
import subprocess

import numpy as np
import torch


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
