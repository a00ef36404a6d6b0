"""
The inputs a scheme can read, and who computes each: one table.

A scheme declares what it reads (weights.register(name, fn, reads=(...))); for each name,
train.py asks `provide` once per micro-batch. The model's own CE comes from the loss path
(mtp_loss.py) and is passed to every scheme that reads 'ce'; the rest come from here:

    ref_ce    the frozen reference (reference.py): the Loader's cached field, or scored
              online (ref_ce_mode='online'); reading it makes train.py load a reference
    values    the critic's value head (critic.py), V(s_t) detached, 0 at terminal states;
              reading it gives the model a value head and its training (value loss,
              value pre-training, probes)
    entropy   the predictive entropy of head k at t (B, T, H), detached, from the loss path
              (mtp_loss.forward's chunks of logits, or model.mtp_entropy on 'simple')
    rewards   the critic's per-token rewards: the sample's reward on its last transition
    moments   the critic's running moments of its TD errors (weights.RunningMoments)
    goal_grad (B, T): |dL_goal / dh_j|_1, the goal (the solution's last line) CE's gradient
              at each position's trunk state: one more forward and backward (goal_grad)
    group_mean, group_std   (B,): the mean and std of is_correct over the samples of each
              sample's problem that the run trains on (its group; GRPO's statistics)
    any other name: the batch's field of that name (data.Loader.collate: noise,
              is_correct, group, ... whatever the data carries)

A new input is one function here, `(run, mb, fwd) -> tensor`, and its name in PROVIDERS:
run is train.py's namespace (config run.c, device, model, reference, ...), mb the
micro-batch, fwd this micro-batch's forward: fwd.ce (B, T, H) detached (None before the
CE), fwd.values the critic's values (None without a value head), fwd.state the rest of
the forward (train.forward: the chunked loss's pass 1, mtp_loss.forward, with the trunk's
output and per-head log-sum-exp; on the simple path only the entropy).
"""
import numpy as np
import torch

import reference


def ref_ce(run, mb, fwd):
    if run.ref is not None:                                   # ref_ce_mode='online'
        targets = mb["targets"] if run.c.rho1_ref == "matched" else None
        return reference.online_ref_ce(run.ref, mb["tokens"], run.ctx, run.c.loss_chunk, targets)
    return mb["ref_ce"].to(run.device)


def group_stats(run):
    """Per problem of the training data, over the samples of it this run trains on (its
    loader's): the mean and the standard deviation of is_correct, computed once ->
    (mean, std), (n_groups,) float32 tensors on the run's device, indexed by 'group'."""
    if getattr(run, "group_stats", None) is None:
        split, ids = run.loader.split, run.loader.ids
        if "group" not in split.sample_fields:
            raise ValueError(f"{split.path} has no problem ids (samples.jsonl): group statistics "
                             f"need them; prepare the data again (python prepare.py)")
        g, r = split.sample_fields["group"][ids], split.index[ids, 3].astype(np.float64)
        n = np.bincount(g, minlength=int(split.sample_fields["group"].max()) + 1).clip(min=1)
        mean = np.bincount(g, r, minlength=len(n)) / n
        var = np.bincount(g, r * r, minlength=len(n)) / n - mean ** 2
        run.group_stats = tuple(torch.tensor(x, dtype=torch.float32, device=run.device)
                                for x in (mean, np.sqrt(var.clip(min=0))))
    return run.group_stats


def newline_ids(run):
    """(V,) bool on the run's device: the tokens whose text holds a newline, once per run."""
    if getattr(run, "newlines", None) is None:
        enc, V = run.enc, run.raw_model.config.vocab_size
        text = getattr(enc, "decode_single_token_bytes", None) or (lambda v: enc.decode([v]).encode())
        nl = torch.zeros(V, dtype=torch.bool)
        for v in range(min(V, enc.n_vocab)):
            try:
                nl[v] = b"\n" in text(v)
            except Exception:          # ids without a text (specials, padding rows)
                pass
        run.newlines = nl.to(run.device)
    return run.newlines


def goal_mask(tokens, loss_mask, lengths, newline):
    """(B, T) bool: the tokens of each solution's last line, its goal (the final answer:
    code's return statement, GSM8K's '#### n', MATH's boxed line): the completion's
    tokens (loss_mask) before its <eot>, after the last newline that precedes its last
    token that is not a newline."""
    B, T = tokens.shape
    pos = torch.arange(T, device=tokens.device)[None, :]
    body = loss_mask & (pos < (lengths.to(tokens.device) - 1)[:, None])      # the completion, no <eot>
    nl = newline[tokens] & body
    last = torch.where(body & ~nl, pos, -1).amax(1, keepdim=True)           # its last non-newline token
    start = torch.where(nl & (pos < last), pos, -1).amax(1, keepdim=True)    # the newline before it
    return body & (pos > start) & (pos <= last)


def goal_grad(run, mb, fwd):
    """(B, T): |dL_goal / dh_j|_1 at every position j, h the trunk's output (the hidden
    state every head reads; GoGI, Zhuang et al. 2025, arXiv 2505.08392, takes one layer's
    L1 norm), L_goal the summed head-1 CE of the goal tokens (goal_mask). One more forward
    of the trunk (no graph) and of head 1 with a backward to h only: no parameter gets a
    gradient. Detached."""
    model, tokens = run.raw_model, mb["tokens"]
    goal = goal_mask(tokens, mb["loss_mask"].to(tokens.device), mb["lengths"], newline_ids(run))
    target = torch.cat([torch.where(goal, tokens, -1)[:, 1:], tokens.new_full((tokens.shape[0], 1), -1)], 1)
    with torch.no_grad(), run.ctx:
        trunk, cos, sin = model.trunk_forward(tokens)
    h = trunk.detach().float().requires_grad_(True)
    with torch.enable_grad(), run.ctx:
        logits = model.output(model.head_hidden(0, h, cos, sin))                  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(),
                                                 ignore_index=-1, reduction="sum")
        grad, = torch.autograd.grad(loss, h, allow_unused=True)
    return torch.zeros_like(h[..., 0]) if grad is None else grad.abs().sum(-1).detach()


PROVIDERS = {
    "ref_ce": ref_ce,
    "values": lambda run, mb, fwd: fwd.values,
    "entropy": lambda run, mb, fwd: fwd.state.entropy,   # the loss path's, from its chunks of logits
    "rewards": lambda run, mb, fwd: mb["rewards"],
    "moments": lambda run, mb, fwd: run.moments,
    "goal_grad": goal_grad,
    "group_mean": lambda run, mb, fwd: group_stats(run)[0][mb["group"].to(run.device)],
    "group_std": lambda run, mb, fwd: group_stats(run)[1][mb["group"].to(run.device)],
}


def provide(name, run, mb, fwd):
    """The input `name` of one micro-batch mb, on the run's device."""
    if name in PROVIDERS:
        return PROVIDERS[name](run, mb, fwd)
    if name in mb:
        return mb[name].to(run.device)
    raise ValueError(f"weighting={run.c.weighting!r} reads {name!r}, which no provider computes "
                     f"and the batch does not carry (its fields: {sorted(mb)}): add a provider to "
                     f"providers.PROVIDERS, or the field to the data (data.Loader.collate)")
