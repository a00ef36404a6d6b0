"""
The model a run starts from: init_from (scratch, a checkpoint to resume, another run to
fine-tune, a pretrained model), made parallel (DDP, or FSDP2 shards), with its optimizer,
loss scaler and the parameter groups some stages freeze.

    resumed = build.build_model(r)     # r: train.py's run namespace; sets r.model, r.optimizer, ...

train.py calls it once, after its data; everything a resumed run restores (counters,
loader, moments, value memory) is restored here too.
"""
import math
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import parallel
import pretrained
import reference
import weights
from checkpoint import load_checkpoint, model_args_changed
from model import ModelConfig, Transformer

# the config keys that are the model's architecture (ModelConfig), checked on resume
MODEL_KEYS = ("n_layer", "n_future", "n_head", "n_kv_head", "d_model", "d_ff",
              "rope_theta", "tie_embeddings", "dropout", "value_detach", "value_surprise")


def pretrained_source(r, value_args, host, build):
    """init_from a pretrained model: its architecture, with this run's heads, dropout and
    value head -> (model or None on FSDP's other ranks, model_args, model_source)."""
    c = r.c
    reference.check_source_tokenizer(c.init_from, r.tok_id, "init_from")
    source_model = model_args = model_source = None
    if build:
        torch.manual_seed(c.seed)   # a fresh value head (and 'random' heads) seeded as a run
        source_model, model_args, model_source = pretrained.load_pretrained(
            c.init_from, n_future=c.n_future, head_init=c.head_init, max_seq_len=c.block_size,
            device=host, **value_args)
    if r.fsdp:   # the other ranks learn the architecture, not the weights
        box = [(model_args, model_source)]
        dist.broadcast_object_list(box, src=0)
        model_args, model_source = box[0]
    if r.enc.n_vocab > model_args["vocab_size"]:
        raise ValueError(f"init_from={c.init_from!r} has {model_args['vocab_size']} embedding rows, "
                         f"fewer than the tokenizer's {r.enc.n_vocab} tokens")
    r.say(f"init_from {c.init_from}: {model_source['format']} checkpoint; its architecture replaces "
          f"n_layer/n_head/d_model/...: {model_args}")
    return source_model, model_args, model_source


def resume_checkpoint(r, model_args, value_args, host):
    """init_from='resume': out_dir/ckpt.pt, checked against this run's data and model, and
    the run's counters, loader, moments and value memory restored -> (ckpt, model_args)."""
    c = r.c
    ckpt = load_checkpoint(r.ckpt_path, map_location=host, sharded_ok=True, mmap=r.fsdp)
    data.check_tokenizer(ckpt["tokenizer"], r.tok_id, f"checkpoint {r.ckpt_path}")
    if ckpt["data_hash"] != r.train_split.meta["hash"]:
        raise ValueError(f"checkpoint {r.ckpt_path} was trained on other data (hash "
                         f"{ckpt['data_hash']}) than {r.train_split.path} ({r.train_split.meta['hash']})")
    r.model_source = ckpt.get("model_source")
    if r.model_source:   # the architecture came from a pretrained model, not from these keys
        model_args = {**ckpt["model_args"], **value_args, "n_future": c.n_future}
    changed = model_args_changed(ckpt["model_args"], model_args)
    if changed:
        raise ValueError(f"model config differs from the checkpoint's (checkpoint, now): {changed}")
    r.iter_num, r.best_val, r.tokens_seen = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["tokens_seen"]
    r.t_start -= ckpt["wall_s"]           # wall time counts the whole run, across resumes
    r.loader.load_state_dict(ckpt["loader"])
    r.moments.load_state_dict(ckpt["moments"])
    r.probe_start = ckpt["probe_start"]
    if r.value_memory is not None:
        r.value_memory.load(os.path.join(c.out_dir, "value_memory.npy"))
    return ckpt, model_args


def finetune_weights(r, model_args, value_args, host):
    """init_from another run: its weights (a value head is new), a fresh optimizer, step 0;
    with more heads than it has, the new heads on its trunk (pretrained.add_heads), so
    n_layer grows by one block per head; with fewer, its first n_future heads (n_layer
    shrinks likewise) -> (weights, model_args)."""
    c = r.c
    init = load_checkpoint(c.init_from, map_location=host, mmap=r.fsdp)
    data.check_tokenizer(init["tokenizer"], r.tok_id, f"init_from checkpoint {c.init_from}")
    r.model_source = init.get("model_source")
    if r.model_source:   # a run that started from a pretrained model: its architecture
        model_args = {**init["model_args"], **value_args, "n_future": c.n_future}
    saved, more = init["model_args"], c.n_future - init["model_args"]["n_future"]
    if more:   # heads added, or the last ones dropped (H = 1 or 2 from a 4-head base)
        if model_args["n_layer"] != saved["n_layer"] + more:
            raise ValueError(f"init_from={c.init_from!r} has n_layer={saved['n_layer']} with "
                             f"{saved['n_future']} head(s); with n_future={c.n_future} its trunk "
                             f"and {c.n_future} head(s) make n_layer={saved['n_layer'] + more}: set that")
        saved = {**saved, "n_layer": model_args["n_layer"], "n_future": c.n_future}
    changed = model_args_changed(saved, model_args, ignore=("value_", "dropout"))
    if changed:
        raise ValueError(f"init_from={c.init_from!r}: model config differs from that "
                         f"checkpoint's (checkpoint, now): {changed}")
    init_weights = {k: v for k, v in init["model"].items() if not k.startswith("value_head.")}
    if more < 0:   # heads 2..H are extra_heads.0..H-2: keep the first n_future - 1 of them
        init_weights = {k: v for k, v in init_weights.items()
                        if not (k.startswith("extra_heads.") and int(k.split(".")[1]) >= c.n_future - 1)}
        r.say(f"init_from {c.init_from}: {saved['n_future'] - more} head(s), the last {-more} dropped")
    if more > 0:
        old = init["model_args"]
        pretrained.add_heads(init_weights, ModelConfig(**model_args),
                             old["n_layer"] - old["n_future"] + 1, old["n_future"], c.head_init)
        r.say(f"init_from {c.init_from}: {old['n_future']} head(s), {more} added ({c.head_init})")
    return init_weights, model_args


def build_model(r):
    """The model from init_from (scratch, resume, another run, a pretrained model), made
    parallel (DDP, or FSDP2 shards: only rank 0 builds the weights, in host memory, and
    parallel.materialize sends every rank its shards), its optimizer and loss scaler, and
    the parameter groups some stages freeze. -> the resumed checkpoint's extra state."""
    c = r.c
    model_args = {k: getattr(c, k) for k in MODEL_KEYS}
    model_args.update(vocab_size=64 * math.ceil(r.enc.n_vocab / 64),  # multiple of 64: faster matmuls
                      max_seq_len=c.block_size, value_head=r.value_head)
    r.iter_num, r.best_val, r.tokens_seen = 0, float("inf"), 0
    r.moments = weights.RunningMoments(c.whiten_decay)
    r.probe_start = None  # the critic's values on the probe batch when main training starts
    ckpt, source_model, r.model_source, init_weights = None, None, None, None
    value_args = {k: v for k, v in model_args.items() if k.startswith("value_") or k == "dropout"}
    r.fsdp = r.ddp and c.data_parallel == "fsdp"
    build = r.master or not r.fsdp
    host = "cpu" if r.fsdp else r.device   # checkpoints memory-mapped: other ranks read only what they use
    from_pretrained = c.init_from not in ("scratch", "resume") and pretrained.is_pretrained_source(c.init_from)
    if from_pretrained:
        source_model, model_args, r.model_source = pretrained_source(r, value_args, host, build)
    if c.init_from == "resume":
        ckpt, model_args = resume_checkpoint(r, model_args, value_args, host)
    elif c.init_from != "scratch" and not from_pretrained:
        init_weights, model_args = finetune_weights(r, model_args, value_args, host)
    r.model_args = model_args
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
    # every rank takes part in a save: FSDP's and 'dcp''s shards, the value memory's
    r.collective_save = r.fsdp or c.checkpoint_format == "dcp" or (r.ddp and r.value_memory is not None)
    if r.fsdp:   # shards only: built with no memory, sharded, then given rank 0's weights
        source = raw_model
        with torch.device("meta"):
            raw_model = Transformer(ModelConfig(**model_args))
        parallel.parallelize(raw_model, c, r.ptdtype, r.fsdp)   # before the optimizer
        parallel.materialize(raw_model, source, r.device)
        source = None
        r.say(f"FSDP2: {len(parallel.blocks(raw_model))} blocks sharded over {r.world_size} processes")
    else:
        parallel.parallelize(raw_model, c, r.ptdtype, r.fsdp)
    r.optimizer = raw_model.configure_optimizers(c.weight_decay, c.learning_rate,
                                                 (c.beta1, c.beta2), r.device_type)
    if ckpt and ckpt["model"] == "dcp":   # shards, resharded onto this world size
        parallel.load_sharded(raw_model, r.optimizer, os.path.join(c.out_dir, ckpt["dcp_dir"]))
    elif ckpt:   # FSDP's 'file' checkpoints hold whole tensors: any world size resumes them
        parallel.load_optimizer(raw_model, r.optimizer, ckpt["optimizer"])
    resumed = {k: ckpt[k] for k in ("weight_log", "scaler", "dcp_dir") if k in ckpt} if ckpt else {}
    r.raw_model = r.model = raw_model
    if r.ddp and c.loss_impl == "simple" and not r.fsdp:   # else: parallel.all_reduce_replicated
        r.model = DDP(raw_model, device_ids=[r.local_rank] if r.device_type == "cuda" else None)
    r.wrapped = isinstance(r.model, DDP)
    r.eval_model = lambda: r.model.module if r.wrapped else r.model  # DDP's forward would sync buffers
    r.scaler = torch.amp.GradScaler(r.device_type, enabled=r.ptdtype == torch.float16)
    if "scaler" in resumed:   # fp16's loss scale continues where it was
        r.scaler.load_state_dict(resumed["scaler"])
    # parameters only the LM loss trains: frozen (no update, no weight decay) while the
    # critic pre-trains its value head
    if c.value_detach:   # the value loss does not reach the trunk: the whole LM waits
        r.lm_only = [p for n, p in raw_model.named_parameters() if not n.startswith("value_head.")]
    else:                # the trunk learns from the value loss; the heads wait
        r.lm_only = [p for m in (*raw_model.heads, raw_model.norm) for p in m.parameters()]
        if not c.tie_embeddings:
            r.lm_only.append(raw_model.output.weight)
    # heads_only: heads 2..H learn on the trunk as it is (Medusa-style warm-up of heads
    # added to a next-token model), so that their first, large errors do not reach it
    r.frozen = [p for n, p in raw_model.named_parameters() if not n.startswith("extra_heads.")] \
        if c.heads_only else []
    return resumed
