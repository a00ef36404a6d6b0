"""
The MTP loss without (B, T, H, V) logits: loss_impl='chunked'.

The readable reference is model.forward + model.mtp_cross_entropy ('simple'): every head's
logits stacked into (B, T, H, V), an fp32 copy for the CE, one backward over all of it.
At V = 100K, 16 x 1024 tokens and H = 4 that is ~26 GB of fp32 logits alone. This file
computes the same loss and the same gradients in O(chunk * V + one head's activations)
memory, the order of Gloeckle et al. 2024, sec. 2 (fig. 2): after the trunk's forward,
each head's forward *and* backward runs in turn, accumulating the gradient of the trunk's
output, then one backward through the trunk.

Our schemes add one constraint: Rho-1 and the critic normalise the weights over the heads
at each position (and 'tokens' over the batch), so every head's CE must be known before
any head's backward. Hence two passes:

  pass 1, `forward`:  the trunk once (with its graph), then every head without gradient:
                      head block, final norm, and the vocabulary projection + log-sum-exp
                      in chunks of rows, fp32 accumulation; keeps per-token CE and
                      log-sum-exp (B, T, H) and nothing of size V.
  (the scheme computes w (B, T, H) from the CE, as in the simple path)
  pass 2, `backward`: per head, its block's forward again (with gradient) and the
                      backward of sum_t w[t, k] * CE[t, k] / N through a linear-CE whose
                      forward is free (pass 1 already has CE and log-sum-exp) and whose
                      backward recomputes one chunk of logits at a time; the trunk's output
                      enters every head detached and collects their gradients; one backward
                      through the trunk at the end.

What it costs over 'simple', per head: one more forward of the head block (pass 2
recomputes what pass 1 threw away) and one more vocabulary projection (the backward
recomputes the logits pass 1 threw away). bench.py measures it.

One pass, `forward_backward`, when the weights are known before the CE (the baseline's
w = 1): Gloeckle et al.'s order exactly, each head's forward and backward in turn after the
trunk's forward, and nothing recomputed. With w known, d loss / d logits = w / N *
(softmax - onehot) is known as soon as a chunk's logits are, so the chunk loop computes the
CE and both gradients from the same logits (Liger's fused linear CE does the same): three
vocabulary projections per head, as in 'simple' (forward, d/dh, d/dW), and no head block
twice. train.py takes this path for the schemes whose weights do not read the CE.

One pass with the weights inside it, `forward_backward_weighing`, for a scheme whose
weights at position t read only the CE of t's own heads (weights.Scheme.local: Rho-1 and
DFT under 'heads', no sparsity): the loop runs over chunks of positions and, in each, over
every head: the chunk's logits give every head's CE there, the scheme's weights from them,
and the gradients from the same logits. Nothing is recomputed; every head's block graph is
held at once instead of one at a time (bench.py's weighted part measures both). train.py
takes it where it applies (weights_in_pass).

Dropout: pass 2 restores the random state each head had in pass 1, so it draws the same
masks and the gradients are those of the CE the weights were computed from.

Optional fused kernels (CUDA only), chosen by loss_kernel: 'cce', Apple's cut-cross-entropy
`linear_cross_entropy(..., reduction='none')`, or 'liger', Liger's fused linear CE with
reduction='none' (from liger-kernel 0.8.2: see LIGER_MIN). Each computes a head's per-token
CE in pass 1 and its forward + backward in pass 2 (the forward again: one projection
more), or forward + backward once in the one-pass path.
"""
import functools
import importlib.metadata
import re
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from model import surprise_from_ce

DEFAULT_CHUNK_LOGITS = 2 ** 24   # logits per chunk when chunk=0: 64 MB in fp32


def chunk_rows(chunk, vocab_size):
    """Rows (positions) per chunk: `chunk` if given, else as many as fit 2**24 logits."""
    return chunk if chunk > 0 else max(1, DEFAULT_CHUNK_LOGITS // vocab_size)


def compute_dtype(device_type, dtype):
    """The dtype the projection runs in: autocast's where it is on (as nn.Linear under
    autocast in the simple path), else the parameters'."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def chunk_logits(h, weight, dtype):
    """h (n, D) @ weight (V, D).T in `dtype`, returned in fp32 (n, V) (float64 stays)."""
    return F.linear(h.to(dtype), weight.to(dtype)).to(torch.promote_types(dtype, torch.float32))


def chunk_ce_lse(logits, target):
    """One chunk's per-row CE and log-sum-exp from its logits (n, V) fp32 (left as they
    are), target (n,) with -1 = none -> ce (0 where no target, mtp_cross_entropy's
    ignore_index=-1), lse (n,). Both loss paths call this, so their CE and softmax are
    the same floats."""
    # F.cross_entropy's fused log-softmax is ~3x faster than torch.logsumexp on CPU;
    # every row gets a target (0 for none) so that every row's lse is finite
    t0 = target.clamp(min=0)
    ce_all = F.cross_entropy(logits, t0, reduction="none")
    lse = ce_all + logits.gather(1, t0[:, None]).squeeze(1)
    return torch.where(target >= 0, ce_all, 0.0), lse


def chunk_entropy(logits, lse):
    """One chunk's per-row predictive entropy from its logits (n, V) and log-sum-exp (n,):
    H = lse - sum_v p_v logit_v (model.mtp_entropy's value)."""
    return lse - (torch.exp(logits - lse[:, None]) * logits).sum(-1)


@torch.no_grad()
def ce_and_lse(h, weight, target, chunk, dtype, entropy=None):
    """Per-row CE and log-sum-exp of logits h @ weight.T, chunk rows at a time.
    h (N, D), weight (V, D), target (N,) int64 with -1 = no target -> ce, lse (N,) fp32,
    ce 0 where there is no target (mtp_cross_entropy's ignore_index=-1). entropy: an (N,)
    tensor to fill with each row's predictive entropy, from the same logits."""
    ce = torch.empty(h.shape[0], dtype=torch.promote_types(dtype, torch.float32), device=h.device)
    lse = torch.empty_like(ce)
    for s in range(0, h.shape[0], chunk):
        logits = chunk_logits(h[s:s + chunk], weight, dtype)            # (n, V) fp32
        ce[s:s + chunk], lse[s:s + chunk] = chunk_ce_lse(logits, target[s:s + chunk])
        if entropy is not None:
            entropy[s:s + chunk] = chunk_entropy(logits, lse[s:s + chunk])
    return ce, lse


@torch.no_grad()
def chunk_grads(softmax, target, g, h_c, w_c, grad_w, dtype, want_h=True):
    """The backward of sum_i g[i] * ce[i] through one chunk's logits = h_c @ W.T, from
    their softmax (n, V) fp32, overwritten: d ce / d logits = softmax - onehot(target),
    zero where target = -1. Adds d/dW into grad_w (V, D) fp32; returns d/dh_c (n, D) in
    `dtype` (None unless want_h). In place throughout: no (n, V) or (V, D) temporaries."""
    t = target.clamp(min=0)[:, None]
    d = softmax.scatter_add_(1, t, -torch.ones_like(t, dtype=softmax.dtype))   # - onehot
    d.mul_(torch.where(target >= 0, g, 0.0)[:, None])
    d = d.to(dtype)
    if d.dtype == grad_w.dtype:
        grad_w.addmm_(d.T, h_c)                                     # (V, D) += (V, n) @ (n, D)
    else:   # bf16 products, summed in fp32
        grad_w += (d.T @ h_c.to(dtype)).to(grad_w.dtype)
    return d @ w_c if want_h else None


class LinearCE(torch.autograd.Function):
    """ce (N,) = logsumexp(h @ W.T) - (h @ W.T)[target], with the forward's results known
    from pass 1 (ce, lse): the forward only records what the backward needs. The backward
    recomputes one chunk of logits at a time: d ce / d logits = softmax - onehot(target)
    (zero where target = -1), so no (N, V) tensor ever exists.

    grad_w_sum, a one-element list shared by the heads of one step, holds the unembedding's
    gradient summed over heads in one fp32 (V, D) buffer, handed to autograd by the head
    with last=True: one such buffer instead of one per head next to weight.grad."""

    @staticmethod
    def forward(ctx, h, weight, target, ce, lse, chunk, dtype, grad_w_sum=None, last=True):
        ctx.save_for_backward(h, weight, target, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        ctx.grad_w_sum, ctx.last = grad_w_sum if grad_w_sum is not None else [None], last
        return ce.clone()

    @staticmethod
    def backward(ctx, grad_ce):
        h, weight, target, lse = ctx.saved_tensors
        g = grad_ce.to(lse.dtype)                     # (N,); chunk_grads zeroes rows without target
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        if ctx.grad_w_sum[0] is None:
            ctx.grad_w_sum[0] = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
        grad_w = ctx.grad_w_sum[0]                                          # (V, D) fp32 sum
        w_c = weight.to(ctx.dtype)
        for s in range(0, h.shape[0], ctx.chunk):
            h_c = h[s:s + ctx.chunk]
            logits = chunk_logits(h_c, weight, ctx.dtype)                   # (n, V) fp32
            softmax = logits.sub_(lse[s:s + ctx.chunk, None]).exp_()        # in place
            grad_h_c = chunk_grads(softmax, target[s:s + ctx.chunk], g[s:s + ctx.chunk],
                                   h_c, w_c, grad_w, ctx.dtype, grad_h is not None)
            if grad_h is not None:
                grad_h[s:s + ctx.chunk] = grad_h_c.to(h.dtype)
        if not ctx.last:
            return grad_h, None, None, None, None, None, None, None, None
        ctx.grad_w_sum[0] = None
        return grad_h, grad_w.to(weight.dtype), None, None, None, None, None, None, None


# liger-kernel's first release whose reduction='none' gradients are right: before it, the
# fused linear CE computed the gradient in its forward, summed over tokens, and scaled it in
# the backward by grad_output[0] alone, so per-token weights were silently lost
# (linkedin/Liger-Kernel#968, fixed by #1298, first released in 0.8.2)
LIGER_MIN = (0, 8, 2)
KERNELS = ("torch", "cce", "liger")


def version_tuple(version):
    """'0.8.2', '0.8.2.post1', '0.10.0rc1' -> (0, 8, 2), (0, 8, 2), (0, 10, 0)."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


@functools.lru_cache(maxsize=None)
def check_kernel(kernel, device_type):
    """Refuse, with what to do, a loss_kernel that cannot run here: unknown, its package
    missing, a liger-kernel before LIGER_MIN, or a fused kernel off CUDA. Called once at
    start by train.py, and by kernel_ce."""
    if kernel not in KERNELS:
        raise ValueError(f"loss_kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "torch":
        return
    need = {"cce": "cut-cross-entropy", "liger": "liger-kernel"}[kernel]
    try:
        version = importlib.metadata.version(need)
    except importlib.metadata.PackageNotFoundError:
        at_least = ">=" + ".".join(map(str, LIGER_MIN)) if kernel == "liger" else ""
        raise ImportError(f"loss_kernel={kernel!r} needs {need} (pip install '{need}{at_least}') "
                          f"and CUDA; loss_kernel='torch' needs nothing") from None
    if kernel == "liger" and version_tuple(version) < LIGER_MIN:
        raise ImportError(f"loss_kernel='liger' needs liger-kernel >= {'.'.join(map(str, LIGER_MIN))}: "
                          f"{version} is installed, whose fused linear CE with reduction='none' "
                          f"returns wrong gradients for per-token weights (Liger-Kernel#968); "
                          f"pip install -U liger-kernel, or use loss_kernel='cce' or 'torch'")
    if device_type != "cuda":
        raise ValueError(f"loss_kernel={kernel!r} runs on CUDA only (Triton kernels); "
                         f"use loss_kernel='torch' on {device_type}")


def kernel_ce(kernel, h, weight, target):
    """A fused kernel's linear CE per row, with its own autograd: h (N, D), weight (V, D),
    target (N,) with -1 ignored -> ce (N,) fp32, 0 where ignored."""
    check_kernel(kernel, h.device.type)
    if kernel == "cce":
        from cut_cross_entropy import linear_cross_entropy
        return linear_cross_entropy(h, weight, target, ignore_index=-1, reduction="none").float()
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    return liger_fused_linear_cross_entropy(h, weight, target, ignore_index=-1,
                                            reduction="none").float()


def _rng_state(device):
    state = [torch.get_rng_state()]
    if device.type == "cuda":
        state.append(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def forward(model, idx, targets, chunk=0, kernel="torch", with_values=False, value_mask=None,
            with_entropy=False):
    """Pass 1. idx (B, T), targets (B, T, H) from mtp_targets -> a namespace with
    ce (B, T, H) fp32 detached (what mtp_cross_entropy(model(idx), targets) gives),
    values (B, T) with their graph when with_values (the critic's V(s_t), surprise
    features from head 1's CE), entropy (B, T, H) when with_entropy (model.mtp_entropy's,
    from the same chunks of logits; else None), and the state pass 2 needs. Under autocast
    as the caller set it."""
    if with_entropy and kernel != "torch":
        raise ValueError(f"the predictive entropy comes from the chunks of logits of "
                         f"loss_kernel='torch'; loss_kernel={kernel!r} keeps none: use 'torch'")
    B, T, H = targets.shape
    c, W = model.config, model.output.weight
    dev = idx.device
    rows = chunk_rows(chunk, W.shape[0])
    dtype = compute_dtype(dev.type, W.dtype)
    trunk, cos, sin = model.trunk_forward(idx)                   # (B, T, D), with graph
    x = trunk.detach().requires_grad_(torch.is_grad_enabled())   # every head's input
    # head 1's CE on every next token, not only the masked targets: the critic's surprise
    # features read it at prompt positions too (model.surprise_features)
    nxt = torch.cat([idx[:, 1:], idx.new_full((B, 1), -1)], dim=1)   # (B, T)
    ce = torch.zeros(B, T, H, dtype=torch.float32, device=dev)
    lse = torch.zeros_like(ce)
    entropy = torch.zeros_like(ce) if with_entropy else None
    rng, ce_next = [], None
    redraw = model.training and c.dropout > 0
    with torch.no_grad():
        for k in range(H):
            rng.append(_rng_state(dev) if redraw else None)
            h = model.head_hidden(k, x, cos, sin).flatten(0, 1)     # (B*T, D)
            t = (nxt if k == 0 else targets[..., k]).flatten()
            if kernel != "torch":
                ce_k = kernel_ce(kernel, h, W, t)
            else:
                ent_k = torch.empty(B * T, dtype=torch.float32, device=dev) if with_entropy else None
                ce_k, lse_k = ce_and_lse(h, W, t, rows, dtype, entropy=ent_k)
                lse[..., k] = lse_k.view(B, T)
                if with_entropy:
                    entropy[..., k] = torch.where(targets[..., k] >= 0, ent_k.view(B, T), 0.0)
            ce_k = ce_k.view(B, T)
            if k == 0:
                ce_next = ce_k
                ce_k = torch.where(targets[..., 0] >= 0, ce_k, 0.0)
            ce[..., k] = ce_k
    values = None
    if with_values:
        if model.value_head is None:
            raise ValueError("with_values=True needs ModelConfig(value_head=True)")
        extra = surprise_from_ce(ce_next, value_mask) if c.value_surprise else None
        # value_detach=False: the value loss's gradient joins the heads' in x.grad
        values = model.value_head(trunk.detach() if c.value_detach else x, extra)
    return SimpleNamespace(ce=ce, values=values, lse=lse, entropy=entropy, trunk=trunk, x=x, cos=cos, sin=sin,
                           targets=targets, rng=rng, rows=rows, dtype=dtype, kernel=kernel)


@torch.no_grad()
def next_token_ce(model, idx, chunk=0):
    """Head 1's CE of the next token, ce[:, t] = -log p(x_{t+1} | x_<=t) (B, T), 0 at the
    last position: Rho-1's reference scoring, without the other heads and without (B, T, V)
    logits."""
    B, T = idx.shape
    W = model.output.weight
    trunk, cos, sin = model.trunk_forward(idx)
    h = model.head_hidden(0, trunk, cos, sin).flatten(0, 1)          # (B*T, D)
    nxt = torch.cat([idx[:, 1:], idx.new_full((B, 1), -1)], dim=1)   # (B, T)
    ce, _ = ce_and_lse(h, W, nxt.flatten(), chunk_rows(chunk, W.shape[0]),
                       compute_dtype(idx.device.type, W.dtype))
    return ce.view(B, T)


def forward_backward(model, idx, targets, w, n_valid, chunk=0, kernel="torch", scale=None,
                     ctx=None):
    """The whole loss in one pass, for weights known before the CE: the gradient of

        sum_{t,k} w[t, k] * CE[t, k] / n_valid

    into every parameter, and the CE (B, T, H) fp32 detached (what mtp_cross_entropy(
    model(idx), targets) gives, for the logged loss). idx (B, T), targets (B, T, H), w
    (B, T, H) detached; scale(loss) -> the tensor to backpropagate (loss scaling, world
    size; a constant factor); ctx the autocast context. Gloeckle et al. 2024, sec. 2: the
    trunk's forward, then each head's forward and backward in turn (its graph freed before
    the next head's), then one backward through the trunk. The vocabulary projection runs
    in chunks of rows: each chunk's logits give its CE and, w being known, their gradient
    at once (chunk_grads), so no logits are recomputed. Dropout draws what the two-pass
    path's pass 1 draws: the trunk's masks, then each head's in order."""
    B, T, H = targets.shape
    W = model.output.weight
    dev = idx.device
    rows = chunk_rows(chunk, W.shape[0])
    dtype = compute_dtype(dev.type, W.dtype)
    acc = torch.promote_types(dtype, torch.float32)              # the logits' and sums' dtype
    with ctx or nullcontext():
        trunk, cos, sin = model.trunk_forward(idx)               # (B, T, D), with graph
    x = trunk.detach().requires_grad_()                          # every head's input
    # scale is a constant factor (GradScaler's scale times the world size): the gradient of
    # scale(loss) is that factor times the loss's
    factor = scale(torch.ones((), device=dev)) if scale else torch.ones((), device=dev)
    ce = torch.zeros(B, T, H, dtype=torch.float32, device=dev)
    grad_w = None                       # (V, D) fp32: d/dW summed over heads, then W.grad
    for k in range(H):
        with ctx or nullcontext():
            h = model.head_hidden(k, x, cos, sin).flatten(0, 1)      # (B*T, D), with graph
        t = targets[..., k].flatten()
        # d loss / d ce (B*T,), the floats autograd gives two-pass's backward: w * (factor / N)
        g = (w[..., k].detach() * (factor / n_valid)).flatten().to(acc)
        if kernel != "torch":   # a fused kernel's own autograd: its forward, then backward
            with ctx or nullcontext():
                ce_k = kernel_ce(kernel, h, W, t)
            (g * ce_k).sum().backward()
            ce[..., k] = ce_k.detach().view(B, T)
            continue
        if grad_w is None:
            grad_w = torch.zeros(W.shape, dtype=acc, device=dev)
        grad_h = torch.empty_like(h)
        ce_k = torch.empty(h.shape[0], dtype=acc, device=dev)
        w_c = W.detach().to(dtype)
        with torch.no_grad():
            for s in range(0, h.shape[0], rows):
                h_c, t_c = h[s:s + rows], t[s:s + rows]
                logits = chunk_logits(h_c, W.detach(), dtype)            # (n, V) fp32
                ce_k[s:s + rows], lse = chunk_ce_lse(logits, t_c)
                softmax = logits.sub_(lse[:, None]).exp_()               # in place
                grad_h[s:s + rows] = chunk_grads(softmax, t_c, g[s:s + rows], h_c, w_c,
                                                 grad_w, dtype).to(h.dtype)
        ce[..., k] = ce_k.view(B, T)
        h.backward(grad_h)              # head k's block and the norm; frees its graph
    if grad_w is not None:              # the unembedding's gradient, as autograd would add it
        if W.grad is None:
            W.grad = grad_w.to(W.dtype)
        else:
            W.grad += grad_w.to(W.dtype)
    if x.grad is not None:
        trunk.backward(x.grad)          # Gloeckle et al. sec. 2: the trunk last
    return ce


def forward_backward_weighing(model, idx, targets, weigh, n_valid, chunk=0, scale=None, ctx=None):
    """One pass for a scheme whose weights at a position read only that position's CE
    (weights.Scheme.local, e.g. Rho-1 softmax(|CE_ref - CE| / T) over the heads of t): the
    gradient of sum_{t,k} w[t, k] * CE[t, k] / n_valid with w = weigh(CE) computed inside
    the pass. -> (ce, w) (B, T, H) fp32 detached.

    weigh(ce_rows (n, H), rows slice) -> w_rows (n, H): the weights of rows `rows` of the
    flattened (B*T) positions from their own CE, detached. The loop runs over chunks of
    positions and, in each, every head at once: the chunk's logits of every head give
    their CE, weigh gives the weights, and the weights give the gradients from the same
    logits, so no logits are recomputed and no head block runs twice (pass 2 of the
    two-pass path recomputes both). The price: every head's graph is held at once (the
    two-pass path holds one at a time), and a chunk's logits for every head at once: H times
    the other paths' chunk (chunk_rows positions x H heads; at 2**24 logits a chunk, 256 MB
    fp32 for H = 4), so that the unembedding is read as often as there (a chunk of chunk_rows
    / H positions read it H times as often: 1.28x the baseline's step at V = 128K on a CPU,
    bench.py). loss_chunk sets the rows. Dropout draws the two-pass path's masks in its
    order: the trunk's, then each head's."""
    B, T, H = targets.shape
    W = model.output.weight
    dev = idx.device
    rows = chunk_rows(chunk, W.shape[0])
    dtype = compute_dtype(dev.type, W.dtype)
    acc = torch.promote_types(dtype, torch.float32)
    with ctx or nullcontext():
        trunk, cos, sin = model.trunk_forward(idx)               # (B, T, D), with graph
        x = trunk.detach().requires_grad_()
        hs = [model.head_hidden(k, x, cos, sin).flatten(0, 1) for k in range(H)]   # H x (B*T, D)
    factor = scale(torch.ones((), device=dev)) if scale else torch.ones((), device=dev)
    t = targets.flatten(0, 1)                                    # (B*T, H)
    ce = torch.zeros(B * T, H, dtype=acc, device=dev)
    w = torch.zeros_like(ce)
    grad_w = torch.zeros(W.shape, dtype=acc, device=dev)
    grad_hs = [torch.empty_like(h) for h in hs]
    w_c = W.detach().to(dtype)
    with torch.no_grad():
        for s in range(0, B * T, rows):
            sl = slice(s, s + rows)
            softmax = []
            for k in range(H):
                logits = chunk_logits(hs[k][sl], W.detach(), dtype)          # (n, V) fp32
                ce[sl, k], lse = chunk_ce_lse(logits, t[sl, k])
                softmax.append(logits.sub_(lse[:, None]).exp_())              # in place
            w[sl] = weigh(ce[sl], sl).to(acc)
            g = w[sl] * (factor / n_valid)                                   # d loss / d ce
            for k in range(H):
                grad_hs[k][sl] = chunk_grads(softmax[k], t[sl, k], g[:, k], hs[k][sl], w_c,
                                             grad_w, dtype).to(hs[k].dtype)
    torch.autograd.backward(hs, grad_hs)        # the head blocks and the norm
    W.grad = grad_w.to(W.dtype) if W.grad is None else W.grad + grad_w.to(W.dtype)
    if x.grad is not None:
        trunk.backward(x.grad)                  # the trunk last
    return ce.float().view(B, T, H), w.float().view(B, T, H)


def backward(p, model, w, n_valid, term=None, extra_loss=None, scale=None, heads=True, ctx=None):
    """Pass 2: the gradient of

        sum_{t,k} w[t, k] * term(CE)[t, k] / n_valid  +  extra_loss

    into every parameter, head by head, then through the trunk once. p is forward()'s
    result; w (B, T, H) detached weights; term(ce_k, k) -> (B, T) transforms head k's CE
    with its graph (incorrect_mode 'signed'), identity if None; extra_loss a scalar with
    its own graph (the critic's value loss on p.values); scale(loss) -> the tensor to
    backpropagate (loss scaling, world size); heads=False skips the LM heads (the critic's
    value-only stage); ctx the autocast context pass 1 ran under. Returns nothing: the
    loss's value the caller has from p.ce."""
    scale = scale or (lambda loss: loss)
    B, T, H = w.shape
    W = model.output.weight
    dev = p.x.device
    after = _rng_state(dev) if p.rng and p.rng[0] is not None else None
    grad_w_sum = [None]                                # LinearCE: the heads' summed dW
    if heads:
        for k in range(H):
            if p.rng[k] is not None:
                _set_rng_state(p.rng[k], dev)          # pass 1's dropout masks
            with ctx or nullcontext():
                h = model.head_hidden(k, p.x, p.cos, p.sin).flatten(0, 1)   # (B*T, D), with graph
                t = p.targets[..., k].flatten()
                if p.kernel != "torch":
                    ce_k = kernel_ce(p.kernel, h, W, t)
                else:
                    ce_k = LinearCE.apply(h, W, t, p.ce[..., k].flatten(), p.lse[..., k].flatten(),
                                          p.rows, p.dtype, grad_w_sum, k == H - 1)
                ce_k = ce_k.view(B, T)
                if term is not None:
                    ce_k = term(ce_k, k)
                loss_k = (w[..., k].detach() * ce_k).sum() / n_valid
            scale(loss_k).backward()                   # frees head k's graph before head k+1
    if after is not None:
        _set_rng_state(after, dev)
    if extra_loss is not None and extra_loss.requires_grad:
        scale(extra_loss).backward(retain_graph=False)
    if p.x.grad is not None:                           # Gloeckle et al. sec. 2: the trunk last
        p.trunk.backward(p.x.grad)
