"""
What a training run needs, by arithmetic, before anything is loaded: its parameters, its
memory per GPU and its FLOPs per step, from the model's arguments (model.ModelConfig's
fields: a checkpoint's config.json read by pretrained.py, or a config's own keys) and the
run's batch, precision, parallelism and world size.

    python plan.py config/rho1_1b.py --world_size=8          # the plan of a config (plan.py)

Memory per GPU, in bytes:
  weights, grads   4 B / parameter each (fp32 master weights; bf16 autocast computes in
                   bf16 but keeps fp32 weights), divided by world_size under FSDP
  optimizer        AdamW's m and v: 8 B / trainable parameter, sharded likewise
  activations      per token per block, bf16, with a fused (flash) attention: 34 x d_model B
                   kept for the backward with activation_checkpointing='none' (Korthikanti et
                   al. 2022, Table 2, without the s^2 attention term); 'selective' keeps the
                   block's input and the matmul outputs but recomputes the norms, SwiGLU and
                   attention inside (~16 x d_model); 'full' keeps only the block's input
                   (2 x d_model) plus one block's working set, recomputed in the backward
  loss             the chunked loss's working set: one chunk of logits (rows x V) in fp32,
                   with its gradient (2 x 4 B), plus the per-token CE of every head (4 B);
                   loss_impl='simple' holds (B, T, H, V) logits (bf16), their fp32 log-softmax
                   and its gradient (2 + 4 + 4 B)
  frozen models    a reference scored online (ref_ce_mode='online') or a reward model: their
                   bf16 weights (2 B / parameter), resident for the whole run; a cached
                   reference scores the data once before training and is freed
GPU-hours (gpu_hours): FLOPs over MFU x peak, both stated (40% of an H100's 989 TFLOP/s).
FLOPs per step: 6 per parameter a token passes through (every block: trunk and heads) plus
the unembedding once per head, plus attention (12 x n_layer x heads x head_dim x T per
token), as model.Transformer.flops_per_token; a frozen model's forward is 2 per parameter.
"""

ACTIVATION_BYTES = {"none": 34, "selective": 16, "full": 2}   # x d_model per token per block, bf16
CHUNK_LOGITS = 2 ** 24   # mtp_loss.DEFAULT_CHUNK_LOGITS: logits per chunk when loss_chunk = 0
VALUE_SURPRISE = 3       # model.ValueHead.N_SURPRISE


def head_dim(a):
    return a.get("head_dim") or a["d_model"] // a["n_head"]


def block_params(a):
    """One transformer block: attention (q, k, v, o; Qwen2's q/k/v biases), SwiGLU, 2 norms."""
    d, hd = a["d_model"], head_dim(a)
    q, kv = a["n_head"] * hd, a["n_kv_head"] * hd
    attention = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if a.get("qkv_bias") else 0)
    return attention + 3 * d * a["d_ff"] + 2 * d


def params(a):
    """Parameter counts of a model with these arguments (n_layer counts every block, trunk
    and heads) -> {blocks, embedding, output, norm, value_head, total}."""
    d, V = a["d_model"], a["vocab_size"]
    out = {"blocks": a["n_layer"] * block_params(a), "embedding": V * d,
           "output": 0 if a.get("tie_embeddings", True) else V * d, "norm": d, "value_head": 0}
    if a.get("value_head"):
        extra = VALUE_SURPRISE if a.get("value_surprise", True) else 0
        out["value_head"] = d + (d + extra) * d + d + d + 1      # norm, fc (+ bias), out (+ bias)
    out["total"] = sum(out.values())
    return out


H100_BF16 = 989e12   # dense bf16 FLOP/s of an H100 SXM (NVIDIA's datasheet, no sparsity)
MFU = 0.4            # the utilisation GPU-hours assume: a stated guess, not a measurement here


def gpu_hours(flops, peak=H100_BF16, mfu=MFU):
    """GPU-hours of `flops` at `mfu` of `peak` FLOP/s per GPU."""
    return flops / (peak * mfu) / 3600


def flops_per_token(a, seq_len):
    """Training FLOPs per token (as model.Transformer.flops_per_token)."""
    blocks = a["n_layer"] * block_params(a)
    unembed = a["n_future"] * a["vocab_size"] * a["d_model"]
    attention = 12 * a["n_layer"] * a["n_head"] * head_dim(a) * seq_len
    return 6 * (blocks + unembed) + attention


def memory(a, run, world_size=1, frozen_params=0):
    """Bytes per GPU of one training step -> {weights, grads, optimizer, activations, loss,
    frozen, total}. run: the train.py keys that matter (batch_size, block_size,
    data_parallel, activation_checkpointing, loss_impl, loss_chunk); frozen_params: the
    parameters of frozen models resident during training (an online reference, a reward model)."""
    p = params(a)["total"]
    shard = world_size if run.get("data_parallel", "ddp") == "fsdp" else 1
    tokens = run["batch_size"] * run["block_size"]                 # one micro-batch's rows, padded
    d, V, H = a["d_model"], a["vocab_size"], a["n_future"]
    act = ACTIVATION_BYTES[run.get("activation_checkpointing", "none")] * d * tokens * a["n_layer"]
    if run.get("activation_checkpointing", "none") == "full":      # one block recomputed at a time
        act += ACTIVATION_BYTES["none"] * d * tokens
    if run.get("loss_impl", "chunked") == "simple":
        loss = tokens * H * V * (2 + 4 + 4)
    else:
        rows = run.get("loss_chunk") or max(1, CHUNK_LOGITS // V)
        loss = min(rows, tokens) * V * 4 * 2 + tokens * H * 4
    out = {"weights": 4 * p / shard, "grads": 4 * p / shard, "optimizer": 8 * p / shard,
           "activations": act, "loss": loss, "frozen": 2 * frozen_params}
    out["total"] = sum(out.values())
    return out


def gib(x):
    return x / 2 ** 30


def describe(a, run, world_size=1, frozen_params=0):
    """The plan's lines: parameters, memory per GPU by part, tokens and FLOPs per step."""
    p, m = params(a), memory(a, run, world_size, frozen_params)
    tokens = run["batch_size"] * run["block_size"] * run.get("gradient_accumulation_steps", 1)
    tied = ", tied" if not p["output"] else f", output {p['output'] / 1e6:.0f}M"
    value = f", value head {p['value_head'] / 1e6:.1f}M" if p["value_head"] else ""
    lines = [f"parameters: {p['total'] / 1e9:.3f}B ({p['blocks'] / 1e9:.3f}B in {a['n_layer']} blocks, "
             f"embedding {p['embedding'] / 1e6:.0f}M{tied}{value})",
             "memory per GPU, GiB: " + ", ".join(f"{k} {gib(v):.1f}" for k, v in m.items() if k != "total")
             + f" -> {gib(m['total']):.1f} ({run.get('data_parallel', 'ddp')}, {world_size} GPU(s), "
             f"activation_checkpointing={run.get('activation_checkpointing', 'none')})",
             f"tokens per step (at most, rows padded): {tokens * world_size:,}; training FLOPs per step: "
             f"{flops_per_token(a, run['block_size']) * tokens * world_size:.3g}"]
    return lines
