"""
The dry run: everything about a training run that can be resolved without its weights,
checked before a download, a process group or a GPU-hour is spent.

    python train.py config/rho1_1b.py --dry_run=True
    WORLD_SIZE=8 DEVICE_MEMORY_GB=80 python train.py config/rho1_1b.py --dry_run=True   # a node's

It resolves the config (train.py's keys), the model's shape (from init_from's config.json
or params.json, a run dir's config.json, or the config's own keys: no weights read), the
tokenizer and its identity, the prepared data (its splits and the tokenizer they were made
with), the reference's and the reward model's tokenizers where the scheme reads them, the
batch arithmetic over the world size, and the memory estimate (estimate.py) against the
device's (DEVICE_MEMORY_GB, else the visible GPU's); prints the plan, and returns one line
per problem, each saying what to fix (train.py exits non-zero when there is one).
"""
import json
import os
from types import SimpleNamespace

import estimate

HERE = os.path.dirname(os.path.abspath(__file__))


def model_shape(c, problems):
    """The model's arguments and where they came from: init_from's config (a pretrained
    dir or a run dir), or the config's keys (scratch, resume of nothing yet)."""
    import build
    import pretrained
    a = {k: getattr(c, k) for k in build.MODEL_KEYS if hasattr(c, k)}
    a.update(value_head=False, vocab_size=None)
    source = c.init_from
    if source in ("scratch", "resume"):
        return a, "the config's keys"
    if not os.path.exists(source):
        problems.append(f"init_from={source!r} does not exist: download the checkpoint there "
                        f"(the config's header says how) or point init_from at it")
        return None, source
    if pretrained.is_pretrained_source(source):
        hf, meta = os.path.join(source, "config.json"), os.path.join(source, "params.json")
        if os.path.exists(hf):
            args, n_blocks = pretrained._hf_args(json.load(open(hf)), hf)
            # its blocks become trunk + head 1; heads 2..H are one block each (pretrained.py)
            return {**a, **args, "n_layer": n_blocks + c.n_future - 1}, hf
        if os.path.exists(meta):   # Meta's layout: n_layers counts every block, its heads' too
            args, n_blocks, n_heads = pretrained._meta_args(json.load(open(meta)), meta)
            return {**a, **args, "n_layer": n_blocks + c.n_future - 1}, meta
        problems.append(f"init_from={source!r}: no config.json or params.json (a .gguf file is "
                        f"checked when it is loaded)")
        return None, source
    run_cfg = os.path.join(source, "config.json")
    if os.path.exists(run_cfg):
        saved = json.load(open(run_cfg))
        return {**a, **{k: saved[k] for k in build.MODEL_KEYS if k in saved}}, run_cfg
    problems.append(f"init_from={source!r} is neither a checkpoint dir with config.json nor a run dir")
    return None, source


def identity_of(source, problems, what):
    """A tokenizer's identity, or None with a problem line."""
    import data
    import pretrained
    try:
        tok = pretrained.tokenizer_source(source) if os.path.isdir(source) else source
        return data.tokenizer_identity(data.get_tokenizer(tok or source))
    except Exception as e:   # a missing or unreadable tokenizer is the problem to report
        problems.append(f"{what}: cannot load the tokenizer of {source!r} ({type(e).__name__}: {e})")
        return None


def budget(c, meta, value_head):
    """The run's budget from its split's meta.json: steps (max_iters, or max_epochs of the
    samples train_on reads), rows per step, epochs, the critic's value pre-training steps,
    as train.py derives them -> (the plan's line, tokens in all at the split's mean sample)."""
    import math
    n = meta["n_correct"] if c.train_on == "correct" else meta["n_samples"]
    rows = c.batch_size * c.gradient_accumulation_steps
    steps = math.ceil(c.max_epochs * n / rows) if c.max_epochs > 0 else c.max_iters
    pre = math.ceil(c.critic_pretrain_epochs * n / rows) if value_head else 0
    tokens = (steps + pre) * rows * meta["n_tokens"] / max(meta["n_samples"], 1)   # the split's mean sample
    return (f"budget: {steps:,} steps of {rows:,} rows = {steps * rows / max(n, 1):.2f} epochs of {n:,} "
            f"{c.train_on} samples"
            + (f"; value pre-training {pre:,} steps ({c.critic_pretrain_epochs} epoch)" if value_head else "")
            + f"; ~{tokens / 1e6:,.1f}M tokens in all"), tokens


def check(c, world_size=None, device_memory_gb=None):
    """(lines of the plan, problems) for train.py's config namespace c; the world size and
    the device's memory default to WORLD_SIZE and DEVICE_MEMORY_GB (else the visible GPU's)."""
    import weights
    world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    device_memory_gb = device_memory_gb or float(os.environ.get("DEVICE_MEMORY_GB", 0))
    problems, lines = [], [f"dry run: {c.weighting} on {c.data_dir}, {world_size} process(es)"]
    train_tokens = None
    a, where = model_shape(c, problems)
    ours = identity_of(c.tokenizer, problems, "tokenizer")
    if ours:
        lines.append(f"tokenizer: {ours['name']} ({ours['n_vocab']:,} tokens, hash {ours['sha256']})")
    # the prepared data: its splits, made with this tokenizer
    splits = (c.train_split, "val") if os.path.isdir(c.data_dir) else ()
    if not splits:
        problems.append(f"data_dir={c.data_dir!r} does not exist: prepare the data first (prepare.py, or the "
                        f"command in the config's header)")
    for split in splits:
        meta = os.path.join(c.data_dir, split, "meta.json")
        if not os.path.exists(meta):
            problems.append(f"data_dir={c.data_dir!r} has no '{split}' split ({meta} missing): prepare it "
                            f"first (prepare.py, or the config's header)")
            continue
        m = json.load(open(meta))
        lines.append(f"data {split}: {m['n_samples']:,} samples ({m['n_correct']:,} correct), {m['n_tokens']:,} tokens")
        if split == c.train_split:
            value_head = "values" in weights.SCHEMES.get(c.control_of if c.weighting == "shuffled"
                                                         else c.weighting, weights.SCHEMES["uniform"]).reads
            line, train_tokens = budget(c, m, value_head)
            lines.append(line)
        if ours and m["tokenizer"]["sha256"] != ours["sha256"]:
            problems.append(f"data_dir={c.data_dir!r} ({split}) was made with tokenizer {m['tokenizer']['name']!r} "
                            f"(hash {m['tokenizer']['sha256']}), the run uses {ours['name']!r} (hash "
                            f"{ours['sha256']}): re-prepare it with tokenizer={c.tokenizer!r}")
    # the frozen models the scheme reads: the same tokenizer, enforced as at load time
    scheme = c.control_of if c.weighting == "shuffled" else c.weighting
    reads = weights.SCHEMES[scheme].reads if scheme in weights.SCHEMES else ()
    frozen = 0
    for key, needed in (("ref_init_from", "ref_ce" in reads), ("rm_init_from", "rm_reward" in reads)):
        src = getattr(c, key)
        if not needed:
            continue
        if not src or not os.path.exists(src):
            problems.append(f"weighting={c.weighting!r} reads {key}={src!r}, which does not exist: "
                            f"download or train it first")
            continue
        theirs = identity_of(src, problems, key)
        if ours and theirs and theirs["sha256"] != ours["sha256"]:
            problems.append(f"{key}={src!r} has tokenizer {theirs['name']!r} (hash {theirs['sha256']}), the run "
                            f"{ours['name']!r} (hash {ours['sha256']}): a reference must share the tokenizer")
        if key == "rm_init_from" or c.ref_ce_mode == "online":   # resident for the whole run
            shape, _ = model_shape(SimpleNamespace(**{**vars(c), "init_from": src, "n_future": 1}), [])
            if shape and shape.get("vocab_size"):
                frozen += estimate.params(shape)["total"]
    # batch arithmetic
    if c.gradient_accumulation_steps % world_size:
        problems.append(f"gradient_accumulation_steps={c.gradient_accumulation_steps} does not divide by the "
                        f"world size {world_size}: make it a multiple of {world_size}")
    # the memory estimate, against the device's
    if a and (a.get("vocab_size") or -1) < 0 and ours:   # Meta's params.json: the tokenizer's
        a["vocab_size"] = ours["n_vocab"]
    if a and a.get("vocab_size"):
        a["value_head"] = "values" in reads
        run = dict(batch_size=c.batch_size, block_size=c.block_size, data_parallel=c.data_parallel,
                   activation_checkpointing=c.activation_checkpointing, loss_impl=c.loss_impl,
                   loss_chunk=c.loss_chunk, gradient_accumulation_steps=c.gradient_accumulation_steps // world_size)
        lines.append(f"model: from {where}, {a['n_layer']} blocks ({c.n_future} heads), d_model {a['d_model']}")
        lines += estimate.describe(a, run, world_size, frozen)
        if train_tokens:   # the budget's FLOPs at a stated MFU: GPU-hours, arithmetic
            flops = estimate.flops_per_token(a, c.block_size) * train_tokens
            lines.append(f"compute: {flops:.3g} training FLOPs (uniform loss; weighted schemes cost more: "
                         f"bench.py) = {estimate.gpu_hours(flops):.1f} GPU-hours at {estimate.MFU:.0%} MFU of "
                         f"{estimate.H100_BF16 / 1e12:.0f} TFLOP/s (an H100's dense bf16), "
                         f"{estimate.gpu_hours(flops) / world_size:.2f} h on {world_size} GPU(s)")
        need = estimate.gib(estimate.memory(a, run, world_size, frozen)["total"])
        have = device_memory_gb or device_memory(c.device)
        if have and need > have:
            problems.append(f"the estimate ({need:.1f} GiB per GPU) is over the device's {have:.0f} GiB: use "
                            f"data_parallel='fsdp', activation_checkpointing='full', or fewer rows (batch_size)")
        elif have:
            lines.append(f"device memory: {have:.0f} GiB per GPU, estimate {need:.1f} GiB")
    return lines, problems


def device_memory(device):
    """GiB of the first CUDA device where the run goes there and one is visible, else 0."""
    if not str(device).startswith(("cuda", "auto")):
        return 0.0
    import torch
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2 ** 30


def report(lines, problems, out=print):
    """Print the plan and the problems -> the exit status (1 with any problem)."""
    for line in lines:
        out(line)
    for p in problems:
        out(f"PROBLEM: {p}")
    out(f"dry run: {len(problems)} problem(s)" if problems else "dry run: ready")
    return 1 if problems else 0
