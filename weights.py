"""
Weighting schemes: how much each (t, k) cross-entropy term counts.

    L = sum_t sum_k w[t, k] * CE(p_k(. | x_<=t), x_{t+k}) / N

A scheme is a plain function of detached per-(t, k) quantities that returns weights
w (B, T, H): finite, zero where the target is ignored, never carrying gradient, with
mean 1 over the valid terms of each normalisation group (`normalize`), so every scheme's
loss has the baseline's scale, and all arms share the normaliser N. It is registered
with what it reads (`register`, SCHEMES at the bottom): train.py computes those inputs and
nothing else, and names no scheme. Every scheme is called as

    fn(ce, valid, cfg=cfg, norm_stats=stats, **{name: input for name in reads})

    ce       (B, T, H)  the model's own CE for each (t, k) term, detached; None for a
                        scheme registered before_ce (its weights are known before the forward)
    valid    (B, T, H)  bool: the target x_{t+k} exists and is a completion token
    cfg                 the run's config namespace (temperature, clipping, ...)
    norm_stats          a dict for normalize's step statistics (weight_norm='tokens'), or None

and the inputs it reads, from providers.py (one table: who computes each, once):
    ref_ce   (B, T)     frozen reference's next-token CE of token j, from its logits at j-1;
             (B, T, Hr) with rho1_ref='matched': its own head-k CE at t of x_{t+k}, as ce
    values   (B, T)     the critic's V(s_t) on the trunk states, detached (0 at terminal states)
    rewards  (B, T)     per-token rewards: the sample's reward on its last transition
    moments             the critic's running moments of its TD errors (RunningMoments)
    any field of the batch (data.Loader.collate): noise (B, T) bool, is_correct (B,),
             group (B,) the sample's problem, ...

A scheme registered signed may return negative weights: the loss takes |w| and, where
w < 0, the unlikelihood term -log(1 - p) instead of the CE (train.py), which pushes the
token's probability down. Its |w| obeys the same rule, mean 1 per group (`signs`).
A new idea is one function here and one `register` line (tests/test_fork.py shows it).
"""
import importlib.util
import os
import sys
from fractions import Fraction
from types import SimpleNamespace
from typing import Callable, NamedTuple

import torch


# ---- shared pieces ---------------------------------------------------------------------
def future(x, n_future, fill=0.0):
    """Per-token x (B, T) -> (B, T, H) with out[:, t, k-1] = x[:, t+k]: the value that
    belongs to head k's target at position t (the alignment mtp_targets uses)."""
    B, T = x.shape
    out = x.new_full((B, T, n_future), fill)
    for k in range(1, min(n_future, T - 1) + 1):
        out[:, :T - k, k - 1] = x[:, k:]
    return out


def normalize(score, valid, weight_norm, temperature=None, n_valid_of=None, stats=None):
    """Non-negative scores -> weights with mean 1 over the valid terms of each group.

    n_valid_of: the mask that sets each group's total (default `valid`); sparsity passes the
    mask from before it dropped terms, so kept terms absorb the dropped ones' weight and the
    loss keeps the baseline's scale.

    temperature=None: proportional, w = n * s / sum(s); otherwise softmax(s / T) * n.
    Groups, by weight_norm:
      'heads'  — the H terms of one position t (the method: sum_k w[t, k] = 1, rescaled by
                 the number of valid heads at t so the mean weight is 1 like the baseline);
      'tokens' — all valid terms of the batch, so positions compete too (over a whole
                 optimizer step with step_scale below).
    A group whose scores are all zero gets uniform weights.

    stats: a dict that receives, for 'tokens', the batch's n (valid terms) and log_mass
    (log of the sum of exp(s / T), or of s): what step_scale needs."""
    dims = {"heads": (-1,), "tokens": (0, 1, 2)}[weight_norm]
    n = (valid if n_valid_of is None else n_valid_of).sum(dim=dims, keepdim=True).float()
    shift = 0.0
    if temperature is not None:
        s = (score / temperature).masked_fill(~valid, float("-inf"))
        shift = s.amax(dim=dims, keepdim=True).clamp(min=-1e30)
        e = (s - shift).exp().masked_fill(~valid, 0.0)               # stable exp
    else:
        e = score.clamp(min=0).masked_fill(~valid, 0.0)
        total = e.sum(dim=dims, keepdim=True)
        e = torch.where(total > 0, e, valid.float())                 # all-zero group: uniform
    total = e.sum(dim=dims, keepdim=True)
    if stats is not None and weight_norm == "tokens":
        stats.update(n=n.reshape(()), log_mass=(total.log() + shift).reshape(()))
    return torch.where(total > 0, n * e / total.clamp(min=1e-30), torch.zeros_like(e))


def step_scale(stats, n_step, log_mass_max, mass_step):
    """weight_norm='tokens' over a whole optimizer step of several micro-batches (and
    ranks): a micro-batch normalised on its own (mean 1 over its n terms) is rescaled by
    its share of the step's mass, so the step's weights are what one batch would get,
    mean 1 over all n_step terms. n_step, log_mass_max and mass_step (the sum over the
    step of exp(log_mass - log_mass_max)) come from a pass over every micro-batch first."""
    if "n" not in stats or stats["n"] == 0:
        return 1.0
    return float(n_step / stats["n"] * torch.exp(stats["log_mass"] - log_mass_max) / mass_step)


def n_top(n, frac):
    """ceil(n * frac) in exact integer arithmetic, at least 1 where n > 0: the number of
    terms a top fraction keeps. frac is read as the decimal it was written as (0.6 = 3/5),
    so 25 terms at 0.6 keep 15, not the 16 that ceil(float32(25) * 0.6) gives."""
    f = Fraction(repr(float(frac)))
    n = torch.as_tensor(n, dtype=torch.long)
    return ((n * f.numerator + f.denominator - 1) // f.denominator).clamp(min=1)


def sparsify(score, valid, top_frac=0.0, top_p=1.0):
    """Keep only the highest-scoring terms of each sequence: the top `top_frac` of its
    valid terms (0 = off) and/or the smallest set holding `top_p` of its score mass.
    Returns the reduced validity mask; dropped terms get weight 0 (they still count in N,
    and their weight goes to the kept terms of the same sequence: keep_mass)."""
    keep = valid.clone()
    B = score.shape[0]
    flat_s = score.masked_fill(~valid, float("-inf")).reshape(B, -1)
    order = flat_s.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=score.device).expand_as(order))
    n_valid = valid.reshape(B, -1).sum(1, keepdim=True)
    if top_frac > 0:
        n_keep = n_top(n_valid, top_frac)
        keep &= (rank < n_keep).view_as(valid)
    if top_p < 1.0:
        mass = flat_s.clamp(min=0).nan_to_num(neginf=0.0).gather(1, order)   # sorted desc
        before = mass.cumsum(1) - mass                    # mass strictly above each term
        total = mass.sum(1, keepdim=True).clamp(min=1e-30)
        inside_sorted = before < top_p * total            # the first term is always kept
        inside = torch.zeros_like(inside_sorted).scatter(1, order, inside_sorted)
        keep &= inside.view_as(valid)
    return keep


def keep_mass(w, valid, weight_norm):
    """After sparsity under weight_norm='heads': a position whose every head was dropped
    has nothing to pass its weight to, so each sequence's weights are rescaled to total its
    number of valid terms (sparsity selects per sequence, so its mass moves per sequence).
    Positions that kept terms keep their proportions; the mean weight stays 1. 'tokens'
    needs nothing: normalize already spreads the whole group's count over the kept terms."""
    if weight_norm != "heads":
        return w
    n = valid.sum(dim=(1, 2), keepdim=True).float()                  # (B, 1, 1)
    total = w.sum(dim=(1, 2), keepdim=True)
    return torch.where(total > 0, w * n / total.clamp(min=1e-30), w)


def finish(score, valid, cfg, temperature=None, stats=None, kept=None):
    """The common tail of every weighted scheme: sparsity, normalisation, clipping.
    kept: the terms a scheme's own filter keeps (rho1's min_ce_diff), None = all; its
    dropped terms' weight goes to the kept terms of their group, as sparsity's does."""
    keep = sparsify(score, valid, cfg.weight_top_frac, cfg.weight_top_p)
    if kept is not None:
        keep &= kept
    w = normalize(score, keep, cfg.weight_norm, temperature, n_valid_of=valid, stats=stats)
    if cfg.weight_top_frac > 0 or cfg.weight_top_p < 1.0 or kept is not None:
        w = keep_mass(w, valid, cfg.weight_norm)
    if cfg.w_max > 0 or cfg.w_min > 0:
        w = torch.where(keep, w.clamp(min=cfg.w_min, max=cfg.w_max if cfg.w_max > 0 else None), w)
    return w


# ---- the schemes -------------------------------------------------------------------------
def uniform(ce, valid, **_):
    """Baseline MTP: every valid (t, k) term counts once."""
    return valid.float()


def rho1_excess(ce, ref_ce, mode):
    """Rho-1 (Lin et al. 2024, sec. 2.2) excess loss per (t, k), ce (B, T, H) -> (B, T, H).

    ref_ce (B, T), rho1_ref='next_token' (the method as written): the reference's next-token
    CE of token j from full context x_<j, so head k at t is compared with the reference on
    the same token t+k. The horizons differ: head k predicts x_{t+k} from x_<=t, the
    reference from x_<t+k, so for k >= 2 the excess is mostly the difficulty of predicting
    k tokens ahead, and a softmax over the heads moves weight to the far heads for that.
    ref_ce (B, T, Hr), Hr >= H, rho1_ref='matched': the reference's own head-k CE at t of
    x_{t+k}, aligned as ce[t, k]: the same prediction problem, so only the models differ."""
    ref = rho1_reference(ref_ce, ce.shape[-1])
    if mode == "abs":        # the method: any disagreement with the reference matters
        return (ref - ce).abs()
    return ce - ref          # 'signed' / 'topk': tokens the model finds harder than the reference


def rho1_reference(ref_ce, H):
    """The reference's CE of each (t, k) term's target, (B, T, H): from next-token CE (B, T),
    ref[t, k] = ref_ce[t + k] (x_{t+k} from x_<t+k); from the reference's own heads
    (B, T, Hr), its first H."""
    if ref_ce.dim() == 2:
        return future(ref_ce, H)                        # (B, T, H): ref CE of x_{t+k} from x_<t+k
    if ref_ce.shape[-1] < H:
        raise ValueError(f"horizon-matched reference CE has {ref_ce.shape[-1]} heads, the model "
                         f"{H}: score it with a reference of >= {H} heads, or use rho1_ref='next_token'")
    return ref_ce[..., :H]                              # (B, T, H): ref head k at t, x_{t+k}


def noise_filter(excess, valid, min_ce_diff, weight_norm):
    """min_ce_diff: a term whose |excess| is below it is noise (the model and the reference
    agree on it) and is dropped. -> (kept (B, T, H) bool, excess with the fallback groups
    zeroed, fallback (B, 1, 1) or (1, 1, 1) bool). A group that keeps none of its valid
    terms (a sequence under weight_norm='heads', whose dropped positions pass their weight
    to its kept ones; the batch under 'tokens') holds no signal: it keeps them all with
    excess 0, i.e. uniform weights, the baseline's."""
    kept = valid & (excess.abs() >= min_ce_diff)
    dims = (1, 2) if weight_norm == "heads" else (0, 1, 2)
    fallback = ~kept.any(dim=dims, keepdim=True)
    return (torch.where(fallback, valid, kept), excess.masked_fill(fallback, 0.0), fallback)


def rho1(ce, valid, ref_ce=None, cfg=None, norm_stats=None, **_):
    """w = softmax(excess / T) over the weight_norm group, over the terms min_ce_diff keeps.

    min_ce_diff > 0: terms with |excess| < min_ce_diff (in every rho1_mode) get weight 0;
    their weight goes to the kept terms of their group (normalize's n_valid_of, keep_mass),
    so the mean weight stays 1. A sequence ('heads') or batch ('tokens') that keeps none
    gets uniform weights (noise_filter). Sparsity and clipping apply after the filter.
    rho1_mode 'topk' is Rho-1's binary selection: the top rho1_top_frac of each sequence's
    valid terms by excess, less those the filter drops, weighted equally (a fallback
    sequence: all its valid terms)."""
    if ref_ce is None:
        raise ValueError("weighting='rho1' needs reference CE (ref_init_from / ref_ce_cache)")
    matched = cfg.rho1_ref == "matched"
    if ref_ce.dim() != (3 if matched else 2):
        raise ValueError(f"rho1_ref={cfg.rho1_ref!r} needs ref_ce of shape "
                         f"{'(B, T, H)' if matched else '(B, T)'}, got {tuple(ref_ce.shape)}")
    excess = rho1_excess(ce, ref_ce, cfg.rho1_mode)
    kept = None
    if cfg.min_ce_diff > 0:
        kept, excess, fallback = noise_filter(excess, valid, cfg.min_ce_diff, cfg.weight_norm)
    if cfg.rho1_mode == "topk":
        keep = sparsify(excess, valid, top_frac=cfg.rho1_top_frac)
        if kept is not None:
            keep = torch.where(fallback, valid, keep & kept)
        w = normalize(torch.ones_like(excess), keep, cfg.weight_norm, n_valid_of=valid,
                      stats=norm_stats)
        return keep_mass(w, valid, cfg.weight_norm)
    return finish(excess, valid, cfg, temperature=cfg.temperature, stats=norm_stats, kept=kept)


def td_errors(values, rewards, n_future, gamma):
    """k-step TD errors, (B, T) values and rewards -> (B, T, H):
        delta[t, k] = sum_{j<k} gamma^j r_{t+j} + gamma^k V(s_{t+k}) - V(s_t)
    values must already be 0 at and past each sample's terminal state, so a reward on the
    last transition is never lost. For k = 1 this is the method's r_t + gamma V(s_{t+1}) - V(s_t)."""
    B, T = values.shape
    delta = torch.zeros(B, T, n_future, dtype=values.dtype, device=values.device)
    ret = torch.zeros_like(values)                      # sum_{j<k} gamma^j r_{t+j}
    for k in range(1, n_future + 1):
        r_k = torch.cat([rewards[:, k - 1:], rewards.new_zeros(B, k - 1)], 1)[:, :T]   # r_{t+k-1}
        ret = ret + gamma ** (k - 1) * r_k
        v_next = torch.cat([values[:, k:], values.new_zeros(B, min(k, T))], 1)[:, :T]
        delta[:, :, k - 1] = ret + gamma ** k * v_next - values
    return delta


def gae(values, rewards, gamma, lam):
    """GAE (Schulman et al. 2016, eq. 16) on the 1-step errors, vectorised with a
    triangular matrix instead of a loop over positions: (B, T) -> advantages, returns.
    A_t = sum_l (gamma lam)^l delta_{t+l};  value targets R_t = A_t + V_t."""
    B, T = values.shape
    v_next = torch.cat([values[:, 1:], values.new_zeros(B, 1)], 1)
    delta = rewards + gamma * v_next - values           # (B, T)
    idx = torch.arange(T, device=values.device)
    power = (idx[None, :] - idx[:, None]).to(values.dtype)        # [t, j] = j - t
    discount = torch.where(power >= 0, (gamma * lam) ** power.clamp(min=0), torch.zeros_like(power))
    adv = delta @ discount.T                            # adv[b, t] = sum_j delta[b, j] d[t, j]
    return adv, adv + values


class RunningMoments:
    """Exponentially weighted mean/variance of the TD errors, for whitening: after each
    update (one per optimizer step) every earlier delta's weight is multiplied by `decay`,
    so a delta seen s steps ago counts decay^s (decay = 1: all since step 0 equally), and
    the value pre-training's deltas, made by a value head that has since changed, age out
    (0.99^460 < 1%). The update is Chan et al.'s parallel merge of the step's (count, sum,
    sum of squares) into the decayed old statistics: the caller all-reduces those three
    over the ranks, so every rank holds the same moments. Saved in checkpoints."""

    def __init__(self, decay=1.0):
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"whiten_decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.count, self.mean, self.var = 0.0, 0.0, 1.0   # count: the weights' sum

    def update(self, count, total, total_sq):
        self.count *= self.decay                            # the old deltas age by one step
        if count == 0:
            return
        b_mean = total / count
        b_var = max(total_sq / count - b_mean ** 2, 0.0)
        n = self.count + count
        d = b_mean - self.mean
        self.mean += d * count / n
        self.var = (self.var * self.count + b_var * count + d * d * self.count * count / n) / n
        self.count = n

    def whiten(self, x):
        return (x - self.mean) / (self.var ** 0.5 + 1e-8)

    def state_dict(self):
        return {"count": self.count, "mean": self.mean, "var": self.var, "decay": self.decay}

    def load_state_dict(self, s):
        # a checkpoint from before whiten_decay has no "decay": its (cumulative) moments
        # load as they are and age from here on with this run's decay
        if s.get("decay", self.decay) != self.decay:
            raise ValueError(f"the checkpoint's whitening moments were made with whiten_decay="
                             f"{s['decay']}, this run has {self.decay}: resume with "
                             f"--whiten_decay={s['decay']}")
        self.count, self.mean, self.var = s["count"], s["mean"], s["var"]


def critic(ce, valid, values=None, rewards=None, moments=None, is_correct=None, cfg=None,
           norm_stats=None, **_):
    """Verifiable Critic: w[t, k] proportional to |whitened delta[t, k]|, the k-step TD error
    of the value head trained on correctness labels, normalised per weight_norm.

    Whitening z = (delta - mu) / sigma with the running moments: under this proportional
    normalisation sigma cancels (in every group, in step_scale's shares, in sparsity's ranks
    and mass shares, and in clipping, which reads the normalised weights), so its only
    effect is the centring, |delta - mu|: a value head biased by mu is not read as surprise.
    sigma matters only under a temperature: critic_temperature > 0 gives softmax(|z| / T) per
    group, as Rho-1's excess gets (the sweep's knob; 0, the method, is proportional).
    incorrect_mode='signed': where an incorrect solution's raw TD error is negative, the
    weight is negative (`signs`): the unlikelihood term pushes that token down."""
    if values is None or rewards is None:
        raise ValueError("weighting='critic' needs values and rewards (model value_head)")
    raw = td_errors(values, rewards, ce.shape[-1], cfg.gamma)
    delta = moments.whiten(raw) if moments is not None and cfg.whiten else raw
    w = finish(delta.abs(), valid, cfg, temperature=cfg.critic_temperature or None, stats=norm_stats)
    if cfg.incorrect_mode == "signed":   # an incorrect solution's negative TD errors push down
        w = signs(w, (raw < 0) & (is_correct == 0)[:, None, None])
    return w


def signs(w, negative):
    """A signed scheme's weights: its normalised magnitudes w >= 0, negated where
    `negative`. Normalisation is of the magnitudes (mean |w| = 1 per group, the baseline's
    scale); the sign only chooses the term (CE, or unlikelihood where w < 0)."""
    return torch.where(negative, -w, w)


def oracle(ce, valid, noise=None, cfg=None, norm_stats=None, **_):
    """Positive control: w = 0 on every term whose target the data's generator corrupted
    (noise (B, T), from the split's noise.bin), the rest normalised like any scheme. It
    reads what the task generator knows and no model could: an experiment in which it
    does not beat the baseline cannot detect a weighting effect."""
    if noise is None:
        raise ValueError("weighting='oracle' needs data that marks its noise (noise.bin): "
                         "prepare tinycode with noise > 0 (python prepare.py --noise=0.5)")
    clean = 1.0 - future(noise.float(), ce.shape[-1], fill=1.0)    # (B, T, H): x_{t+k} clean
    return finish(clean, valid, cfg, temperature=None, stats=norm_stats)


def entropy(ce, valid, entropy=None, cfg=None, norm_stats=None, **_):
    """High-entropy "forking" tokens (Wang et al. 2025, arXiv 2506.01939, who restrict the
    policy gradient to the top 20% of tokens by predictive entropy). entropy (B, T, H): the
    predictive entropy of head k at t, detached (providers.py: the loss path's).
    entropy_mode 'top': the top entropy_top_frac of each sequence's valid terms, weighted
    equally (a position left with no kept head passes its weight to the sequence's kept
    terms, keep_mass); 'soft': softmax(H / temperature) over the weight_norm group.
    Choosing by predictive entropy can collapse (a 2026 follow-up): the matched control tells."""
    if entropy is None:
        raise ValueError("weighting='entropy' needs the predictive entropy (providers.py 'entropy')")
    if cfg.entropy_mode == "soft":
        return finish(entropy, valid, cfg, temperature=cfg.temperature, stats=norm_stats)
    if cfg.entropy_mode != "top":
        raise ValueError(f"entropy_mode must be 'top' or 'soft', got {cfg.entropy_mode!r}")
    keep = sparsify(entropy, valid, top_frac=cfg.entropy_top_frac)
    w = normalize(torch.ones_like(entropy), keep, cfg.weight_norm, n_valid_of=valid, stats=norm_stats)
    return keep_mass(w, valid, cfg.weight_norm)


def group(ce, valid, is_correct=None, group_mean=None, group_std=None, cfg=None, norm_stats=None, **_):
    """Group-relative advantages on MTP (GRPO; Dr. GRPO, arXiv 2503.20783: A = r - mean of
    the group's r, no std and no length term by default). A group is the samples of one
    problem in the training data (providers.py 'group_mean': tinycode's variants, a
    problem's correct and incorrect solutions, selflabel.py's samples); r = is_correct. A
    sample's advantage spreads over its tokens: w[t, k] = A for each of its valid terms,
    so the groups that normalise it are the batch's (weight_norm must be 'tokens': under
    'heads' a per-sample constant is 1 at every position). group_std: A / std of the
    group (GRPO's original). group_negative 'signed': a negative A weights the
    unlikelihood term (the signed path); 'drop': weight 0. A batch whose advantages are
    all 0 trains like the baseline (normalize's uniform fallback)."""
    if cfg.weight_norm != "tokens":
        raise ValueError("weighting='group' gives every term of a sample one weight, which "
                         "weight_norm='heads' makes 1: set weight_norm='tokens'")
    adv = is_correct - group_mean
    if cfg.group_std:
        adv = adv / group_std.clamp(min=1e-6)
    adv = adv[:, None, None].expand(valid.shape)
    if cfg.group_negative == "drop":
        return normalize(adv.clamp(min=0), valid, "tokens", stats=norm_stats)
    if cfg.group_negative != "signed":
        raise ValueError(f"group_negative must be 'signed' or 'drop', got {cfg.group_negative!r}")
    return signs(normalize(adv.abs(), valid, "tokens", stats=norm_stats), adv < 0)


def dft(ce, valid, cfg=None, norm_stats=None, **_):
    """Dynamic Fine-Tuning (Wu et al. 2025, arXiv 2508.05629: the loss -sg(p) log p):
    w[t, k] = sg(p_k(x_{t+k})) = exp(-CE), normalised like the others (finish), so its loss
    keeps the baseline's scale where DFT's own shrinks with p."""
    return finish(torch.exp(-ce), valid, cfg, temperature=None, stats=norm_stats)


def hybrid(ce, valid, cfg=None, norm_stats=None, **inputs):
    """The critic x Rho-1 (the proposal's sec. 9): the product of both schemes' normalised
    weights (hybrid_mean 'product'), or their geometric mean ('geometric'), renormalised
    per weight_norm group. Reads both schemes' inputs; incorrect solutions are weighted
    (the critic's 'weighted' mode: a product of signed weights has no meaning here)."""
    plain = SimpleNamespace(**{**vars(cfg), "incorrect_mode": "weighted"})
    w_c = critic(ce, valid, cfg=plain, **inputs)
    w_r = rho1(ce, valid, cfg=cfg, **inputs)
    if cfg.hybrid_mean not in ("product", "geometric"):
        raise ValueError(f"hybrid_mean must be 'product' or 'geometric', got {cfg.hybrid_mean!r}")
    score = w_c * w_r if cfg.hybrid_mean == "product" else (w_c * w_r).sqrt()
    return normalize(score, valid, cfg.weight_norm, stats=norm_stats)


def gradient(ce, valid, goal_grad=None, cfg=None, norm_stats=None, **_):
    """Goal-gradient importance (the proposal's sec. 9; the score of GoGI, Zhuang et al.
    2025, arXiv 2505.08392, there used to prune chain-of-thought tokens): w[t, k]
    proportional to |dL_goal / dh_{t+k}|_1, how much target token x_{t+k}'s hidden state
    moves the loss of the solution's last line (providers.py 'goal_grad'), normalised
    like the others (finish)."""
    if goal_grad is None:
        raise ValueError("weighting='gradient' needs the goal gradient (providers.py 'goal_grad')")
    return finish(future(goal_grad, ce.shape[-1]), valid, cfg, temperature=None, stats=norm_stats)


# ---- one pass: weights from each position's own terms ------------------------------------
def position_local(cfg):
    """Whether `finish` makes the weights at position t from t's own terms only: groups of
    one position ('heads'), no per-sequence sparsity. Clipping is per term."""
    return cfg.weight_norm == "heads" and cfg.weight_top_frac == 0 and cfg.weight_top_p >= 1.0


def rows_weigher(fn, valid, cfg, **aligned):
    """weigh(ce_rows (n, H), rows) -> w_rows (n, H) for mtp_loss.forward_backward_weighing:
    the scheme `fn` itself, called on rows of the flattened (B*T) positions as a (1, n, H)
    batch, with its inputs already aligned per term (B, T, H) and sliced alike. Equal to
    fn on the whole batch wherever the scheme is position-local (tests/test_registry.py)."""
    ok = valid.flatten(0, 1)
    flat = {name: x.flatten(0, 1) for name, x in aligned.items()}
    return lambda ce, rows: fn(ce[None], ok[rows][None], cfg=cfg,
                               **{name: x[rows][None] for name, x in flat.items()})[0]


def local_weigher(scheme, cfg):
    """The one-pass form of a registered scheme under cfg: None (two passes), or
    make(valid, **inputs) -> weigh for mtp_loss.forward_backward_weighing, which calls the
    scheme's own registered function (scheme.fn) on rows, its inputs aligned per term by
    the scheme's `local` declaration: local(cfg) -> None or (the config the rows are
    weighed under, align(valid, **inputs) -> {name: (B, T, H) tensor})."""
    form = scheme.local(cfg) if scheme.local else None
    if form is None:
        return None
    rows_cfg, align = form
    return lambda valid, **inputs: rows_weigher(scheme.fn, valid, rows_cfg, **align(valid, **inputs))


def rho1_local(cfg):
    """Rho-1 in one pass (Scheme.local): under a position-local config, softmax over the
    heads of each position of the excess, its reference CE aligned per term first
    (rho1_reference, then read as rho1_ref='matched'). None for 'topk' and min_ce_diff,
    which read whole sequences."""
    if not position_local(cfg) or cfg.rho1_mode == "topk" or cfg.min_ce_diff > 0:
        return None
    aligned = SimpleNamespace(**{**vars(cfg), "rho1_ref": "matched"})   # ref_ce (B, T, H) from here on
    return aligned, lambda valid, ref_ce=None, **_: {"ref_ce": rho1_reference(ref_ce, valid.shape[-1])}


def dft_local(cfg):
    """DFT in one pass (Scheme.local): exp(-CE) normalised over the heads of each position;
    it reads nothing to align."""
    return (cfg, lambda valid, **_: {}) if position_local(cfg) else None


class Scheme(NamedTuple):
    """A registered weighting: its function and what train.py must give it."""
    fn: Callable
    reads: tuple = ("ce",)          # inputs the function takes (providers.py); 'ce': the model's own
    before_ce: bool = False         # w known before the forward pass: one pass (mtp_loss.forward_backward)
    signed: dict = None             # the config keys under which its weights may be negative
                                    # (the unlikelihood term where w < 0); None: never
    train_on: str = "correct"       # the data its method names: 'correct' solutions, or 'all' (experiment.py)
    weight_norm: str = None         # the normalisation its weights need ('tokens'); None: either
    local: Callable = None          # local(cfg) -> None, or (cfg for rows, align(valid, **inputs)): its
                                    # weights inside the one pass (local_weigher) where each position's
                                    # weights read that position's CE and aligned inputs only

    def is_signed(self, cfg):
        return bool(self.signed) and all(getattr(cfg, k) == v for k, v in self.signed.items())


SCHEMES = {}


def register(name, fn, reads=("ce",), before_ce=False, signed=None, train_on="correct", weight_norm=None,
             local=None):
    """Add a scheme: `weighting=name` then runs it. -> fn. reads: the inputs it takes by
    name ('ce', and those of providers.PROVIDERS or the batch's fields); signed: the
    config keys under which its weights may be negative ({'incorrect_mode': 'signed'});
    train_on: 'correct' or 'all' samples, what an experiment's arm of it trains on;
    weight_norm: the normalisation it needs, set in its arms (None: the run's); local: its
    one-pass form (Scheme.local), optional: a speed-up, never a change of the weights.
    The same function registered again (its file imported twice: by pytest and as a
    plugin) replaces its entry; another function under a taken name is an error."""
    old = SCHEMES.get(name)
    same = old is not None and (old.fn.__code__.co_filename, old.fn.__qualname__) == \
        (fn.__code__.co_filename, fn.__qualname__)
    if name in CONTROLS or (old is not None and not same):
        raise ValueError(f"a weighting named {name!r} exists already: choose another name")
    if before_ce and ("ce" in reads or signed):
        raise ValueError(f"scheme {name!r}: weights known before the CE (one pass) can neither "
                         f"read 'ce' nor be signed (the unlikelihood term needs two passes)")
    if train_on not in ("correct", "all"):
        raise ValueError(f"scheme {name!r}: train_on must be 'correct' or 'all', got {train_on!r}")
    SCHEMES[name] = Scheme(fn, tuple(reads), before_ce, signed, train_on, weight_norm, local)
    return fn


def load_plugins(paths):
    """Import each python file of `plugins` (comma-separated) once per process: a fork's
    schemes and providers register themselves there (weights.register)."""
    for path in filter(None, (p.strip() for p in paths.split(","))):
        name = "wmtp_plugin_" + os.path.abspath(path).replace(os.sep, "_").replace(".", "_")
        if name not in sys.modules:
            if not os.path.exists(path):
                raise FileNotFoundError(f"plugins: no file {path}")
            spec = importlib.util.spec_from_file_location(name, path)
            sys.modules[name] = module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)


CONTROLS = ("shuffled", "random_matched")    # weighting=<control>, control_of=<scheme> (below)
register("uniform", uniform, reads=(), before_ce=True)
register("rho1", rho1, reads=("ce", "ref_ce"), local=rho1_local)
register("critic", critic, reads=("ce", "values", "rewards", "moments", "is_correct"),
         signed={"incorrect_mode": "signed"}, train_on="all")
# the oracle reads no CE and could run in one pass; it stays on two, as when its arm was measured
register("oracle", oracle, reads=("noise",))
register("entropy", entropy, reads=("ce", "entropy"))
register("group", group, reads=("ce", "is_correct", "group_mean", "group_std"),
         signed={"group_negative": "signed"}, train_on="all", weight_norm="tokens")
register("dft", dft, reads=("ce",), local=dft_local)
register("gradient", gradient, reads=("ce", "goal_grad"))
# the reward-model critic (the proposal's sec. 4.2, Exp 2): the critic's function, its
# rewards from a frozen reward model's score (critic.reward_model_scores) instead of is_correct
register("rm_critic", critic, reads=("ce", "values", "rewards", "moments", "is_correct", "rm_reward"),
         signed={"incorrect_mode": "signed"}, train_on="all")
register("hybrid", hybrid, reads=("ce", "ref_ce", "values", "rewards", "moments"), train_on="all")


# ---- controls --------------------------------------------------------------------------
def _groups(x, weight_norm):
    """x (B, T, H) -> rows of one normalisation group each: (B*T, H) for 'heads' (the
    terms of one position), (1, B*T*H) for 'tokens' (the micro-batch)."""
    return x.reshape(-1, x.shape[-1]) if weight_norm == "heads" else x.reshape(1, -1)


def shuffled(w, valid, weight_norm="heads"):
    """Control: a scheme's own weights permuted among the valid terms of each
    normalisation group (weight_norm), which keeps what the scheme keeps (each group's
    total, the distribution of values within it) and breaks their link to the tokens.
    Under 'heads' the weights move between the heads of a position only, as the scheme's do."""
    g, ok = _groups(w, weight_norm), _groups(valid, weight_norm)
    rows, cols = g.shape
    slot = torch.arange(cols, device=w.device).expand(rows, cols).float()
    big = torch.tensor(float("inf"), device=w.device)
    by_slot = torch.where(ok, slot, big).argsort(dim=1)              # valid slots first, in order
    drawn = torch.where(ok, torch.rand(rows, cols, device=w.device), big).argsort(dim=1)  # ... at random
    out = torch.zeros_like(g).scatter(1, by_slot, g.gather(1, drawn))  # i-th valid slot <- a random valid value
    return (out * ok).view_as(w)


def random_matched(valid, sample, weight_norm="heads"):
    """Control: i.i.d. draws from another run's logged weight values (`sample`, 1-D),
    renormalised to mean 1 within each normalisation group as the scheme's weights are:
    that run's kind of values, no information, and the same group totals."""
    idx = torch.randint(0, sample.numel(), valid.shape, device=valid.device)
    draws = sample.to(valid.device)[idx] * valid
    return normalize(draws, valid, weight_norm)


def weighted_loss(ce, w, n_valid):
    """sum(w * ce) / N, where N is the number of valid (t, k) terms in the whole optimizer
    step (all micro-batches, all ranks), counted before the forward pass.

    Dividing each micro-batch by its own count (nanoGPT's loss / grad_accum) is wrong as
    soon as micro-batches hold different numbers of valid terms; with a global N, gradient
    accumulation and DDP (which averages over ranks, hence the caller multiplies by the
    world size) give the gradient of one big batch (torchtitan's global_valid_tokens)."""
    return (w.detach() * ce).sum() / n_valid
