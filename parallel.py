"""
Parallelism, activation checkpointing and compilation, applied to the model from outside
(torchtitan's lesson: model.py stays a plain Llama with MTP heads and knows nothing of it).

    parallelize(model, c, ptdtype, fsdp)   # in place, before the optimizer is built
    materialize(model, source, device)     # FSDP: a meta-device model gets rank 0's weights

FSDP2 (`torch.distributed.fsdp.fully_shard`, Zhao et al. 2023; the per-parameter DTensor
rewrite) shards every block (trunk blocks and each head) over the ranks: its parameters
are gathered for its forward and backward and its gradients reduce-scattered, so a rank
holds 1/world_size of the blocks' weights, gradients and AdamW state (7B replicated needs
~108 GB a GPU for fp32 weights + grads + Adam; sharded over 8, ~14 GB). The embedding,
final norm, shared unembedding and value head stay replicated and their gradients are
all-reduced by `all_reduce_replicated`: the chunked loss (mtp_loss.py) reads the
unembedding's weight directly, head after head, and runs one backward per head, which a
root FSDP group's per-forward hooks do not allow. At 7B with V=128K that replicated part
is 0.5B parameters (8 GB of weights, gradients and Adam state): the price of the loss path.

Activation checkpointing per block: 'full' keeps only each block's input and recomputes
the block in the backward; 'selective' keeps the outputs of matmuls and attention and
recomputes the cheap elementwise ops (norms, rotary, SiLU, residual adds), the
memory/compute middle ground of Korthikanti et al. 2022.

The process group itself: setup_distributed (torchrun's environment; nccl or gloo) and
all_reduce_sum, at the end.
"""
import datetime
import functools
import os

import torch
import torch.distributed as dist
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts


def blocks(model):
    """Every transformer block: trunk blocks, head 1, heads 2..H."""
    return [*model.layers, *model.extra_heads]


# matmuls and attention: expensive to recompute, so 'selective' keeps their outputs
_SAVE = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
         torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
         torch.ops.aten._scaled_dot_product_efficient_attention.default,
         torch.ops.aten._scaled_dot_product_flash_attention.default,
         torch.ops.aten._scaled_dot_product_cudnn_attention.default}


def _selective_policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_block(block, mode):
    """Wrap block.forward (on the instance: parameter names and checkpoints stay as they
    are) in non-reentrant activation checkpointing. The RNG state is kept, so dropout
    draws the same masks in the recomputation."""
    inner = block.forward
    context_fn = (functools.partial(create_selective_checkpoint_contexts, _selective_policy)
                  if mode == "selective" else None)

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():      # nothing to save: evaluation, pass 1 of the loss
            return inner(*args, **kwargs)
        extra = {"context_fn": context_fn} if context_fn else {}
        return checkpoint(inner, *args, use_reentrant=False, **extra, **kwargs)
    block.forward = forward


def parallelize(model, c, ptdtype, fsdp):
    """Activation checkpointing, per-block torch.compile, then FSDP2 when fsdp, in that
    order (torchtitan's): FSDP's hooks wrap the compiled, checkpointed block."""
    if c.activation_checkpointing != "none":
        for b in blocks(model):
            checkpoint_block(b, c.activation_checkpointing)
    if c.compile:   # per block: one graph per shape serves every block; the loss stays eager
        # static shapes, the fastest kernels, one graph per length; length_buckets bounds the
        # lengths (dynamic shapes would work too: one graph for all, tests/test_model.py)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
        for b in blocks(model):
            b.compile(dynamic=False)
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        # bf16 gathers and compute, fp32 gradient reduction (and fp32 master weights)
        mp = MixedPrecisionPolicy(param_dtype=ptdtype if ptdtype != torch.float32 else None,
                                  reduce_dtype=torch.float32)
        for b in blocks(model):
            fully_shard(b, mp_policy=mp)
    return model


def materialize(model, source, device):
    """Give a model built on the meta device and sharded by parallelize (no memory yet) its
    weights: every rank allocates its shards (and the replicated parts) on `device`, then
    rank 0's `source` (a model holding the full weights on the host: a fresh init with the
    run's seed, a checkpoint, a pretrained model; None on the other ranks) is sent tensor
    by tensor, each rank keeping its shards (torch.distributed.checkpoint's
    broadcast_from_rank0). So no rank but 0 ever holds the whole model, and rank 0 only
    in host memory; the weights are bit for bit the source's, as one process would have
    them. Buffers (the rotary tables: not in a state dict) come from rank 0 too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    shared = {}   # one parameter under several names (tied embeddings): to_empty unties them
    for name, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    model.to_empty(device=device)
    for first, *others in shared.values():
        for name in others:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, model.get_parameter(first))
    set_model_state_dict(model, source.state_dict() if source is not None else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    theirs = dict(source.named_buffers()) if source is not None else {}
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if source is not None:
                buf.copy_(theirs[name])
            dist.broadcast(buf, src=0)
    return model


def is_sharded(p):
    return type(p).__name__ == "DTensor"


def set_gradient_sync(model, on):
    """FSDP2: reduce-scatter gradients only on the last micro-batch of a step."""
    for b in blocks(model):
        if hasattr(b, "set_requires_gradient_sync"):
            b.set_requires_gradient_sync(on)


def all_reduce_replicated(model, world_size):
    """Average over ranks, in one flat all-reduce, the gradients FSDP does not reduce: every
    parameter's when nothing is sharded (the 'chunked' loss without DDP), else those of the
    replicated embedding, norm, unembedding and value head."""
    grads = [p.grad for p in model.parameters() if p.grad is not None and not is_sharded(p)]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def clip_grad_norm(params, max_norm):
    """clip_grad_norm_ over a mix of sharded (DTensor) and replicated gradients: the squared
    norm of each rank's shards is summed over ranks, the replicated ones counted once.
    -> the total norm before clipping (a 0-dim tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(is_sharded(g) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    local = [g.to_local() for g in grads if is_sharded(g)]
    sq = torch.stack([g.float().pow(2).sum() for g in local]).sum()
    dist.all_reduce(sq, op=dist.ReduceOp.SUM)
    rep = [g for g in grads if not is_sharded(g)]
    if rep:
        sq = sq + torch.stack([g.float().pow(2).sum() for g in rep]).sum()
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in local + rep:
        g.mul_(coef.to(g.dtype))
    return norm


def full_state_dicts(model, optimizer):
    """(model, optimizer) state dicts with whole tensors, on every rank (a collective under
    FSDP), the optimizer's keyed by parameter name (torch.distributed.checkpoint's
    format): what the single-file checkpoint holds, loadable on any world size."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=dist.is_initialized()))


def load_optimizer(model, optimizer, optim_sd):
    """Load an optimizer state dict into an optimizer built on `model` (sharded or not):
    by parameter name when full_state_dicts wrote it, else torch's own format by position
    (which FSDP cannot map onto its shards: refused)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    by_name = all(isinstance(k, str) for k in optim_sd["state"])
    if by_name:
        set_optimizer_state_dict(model, optimizer, optim_sd,
                                 options=StateDictOptions(full_state_dict=True))
    elif any(is_sharded(p) for p in model.parameters()):
        raise ValueError("this checkpoint was written without FSDP (optimizer state by position): "
                         "resume it with data_parallel='ddp', or start FSDP from its weights "
                         "with init_from=<run dir>")
    else:
        optimizer.load_state_dict(optim_sd)


def save_sharded(model, optimizer, path):
    """Every rank writes its shards of model and optimizer state with
    torch.distributed.checkpoint into a new directory `path` (a collective). Written
    first, then named by ckpt.pt (the commit point), so a crash leaves the old pair."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=path)


def load_sharded(model, optimizer, path):
    """Read save_sharded's directory into this model and optimizer, whatever the world size
    it was written with: DCP reshards by each tensor's global offsets."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)   # the layout to read into
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


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
