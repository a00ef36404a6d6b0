"""
Weighting schemes against hand-computed and straightforward reference computations.

    python -m pytest tests/test_weights.py -q
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import weights
from model import mtp_targets


def cfg(**kw):
    base = dict(weight_norm="heads", temperature=1.0, min_ce_diff=0.0, rho1_mode="abs",
                rho1_ref="next_token", rho1_top_frac=0.6, weight_top_frac=0.0, weight_top_p=1.0,
                w_min=0.0, w_max=0.0, gamma=0.9, whiten=False, incorrect_mode="weighted",
                entropy_mode="top", entropy_top_frac=0.2, group_std=False, group_negative="signed",
                hybrid_mean="product", critic_temperature=0.0)
    return SimpleNamespace(**{**base, **kw})


def random_case(B=3, T=10, H=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, 2 + b: T - b] = True
    valid = mtp_targets(tokens, mask, H) >= 0
    ce = torch.rand(B, T, H, generator=g) * 3 * valid
    return ce, valid, mask


def test_future_alignment():
    x = torch.arange(12.0).view(2, 6)
    out = weights.future(x, 3)
    for b in range(2):
        for t in range(6):
            for k in range(1, 4):
                assert out[b, t, k - 1] == (x[b, t + k] if t + k < 6 else 0)


def test_normalize_heads_by_hand():
    valid = torch.tensor([[[True, True], [True, False]]])
    score = torch.tensor([[[1.0, 2.0], [5.0, 0.0]]])
    w = weights.normalize(score, valid, "heads", temperature=1.0)
    e1, e2 = math.exp(1), math.exp(2)
    torch.testing.assert_close(w[0, 0], torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]))
    torch.testing.assert_close(w[0, 1], torch.tensor([1.0, 0.0]))   # one valid head: weight 1
    w = weights.normalize(score, valid, "heads", temperature=None)  # proportional
    torch.testing.assert_close(w[0, 0], torch.tensor([2 / 3, 4 / 3]))


def test_normalize_tokens_mean_one_and_temperature():
    ce, valid, _ = random_case()
    score = torch.rand_like(ce)
    w = weights.normalize(score, valid, "tokens", temperature=0.5)
    assert w[valid].mean().item() == pytest.approx(1.0, abs=1e-5)
    assert (w[~valid] == 0).all()
    hot = weights.normalize(score, valid, "tokens", temperature=100.0)
    assert hot[valid].std() < w[valid].std()       # high temperature flattens


@pytest.mark.parametrize("temperature,top_frac", [(0.7, 0.0), (None, 0.0), (None, 0.5)])
def test_step_scale_makes_micro_batches_one_batch(temperature, top_frac):
    """weight_norm='tokens' over a step of micro-batches: each normalised on its own, then
    rescaled by step_scale, equals normalising the whole batch at once (the scores are
    per-micro-batch-scaled so that the micro-batches' masses differ a lot)."""
    ce, valid, _ = random_case(B=5, T=12, H=2, seed=3)
    score = torch.rand_like(ce) * torch.tensor([1.0, 4.0, 0.2, 3.0, 1.0])[:, None, None]
    c = cfg(weight_norm="tokens", weight_top_frac=top_frac)
    whole = weights.finish(score, valid, c, temperature)
    parts = [slice(0, 2), slice(2, 5)]
    stats = [{} for _ in parts]
    ws = [weights.finish(score[p], valid[p], c, temperature, stats=st) for p, st in zip(parts, stats)]
    n_step = sum(st["n"] for st in stats)
    L = torch.stack([st["log_mass"] for st in stats]).max()
    mass = sum(torch.exp(st["log_mass"] - L) for st in stats)
    scaled = torch.cat([w * weights.step_scale(st, n_step, L, mass) for w, st in zip(ws, stats)])
    torch.testing.assert_close(scaled, whole, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(torch.cat(ws), whole, rtol=1e-3)   # without it: another weighting


def test_uniform_through_every_scheme_path_is_baseline():
    ce, valid, mask = random_case()
    base = weights.uniform(ce, valid)
    # Rho-1 with a reference that agrees with the model everywhere: excess 0 -> uniform
    ref_ce = torch.zeros(ce.shape[:2])
    for b in range(ce.shape[0]):
        for t in range(ce.shape[1]):
            for k in range(1, 4):
                if t + k < ce.shape[1] and valid[b, t, k - 1]:
                    ref_ce[b, t + k] = ce[b, t, k - 1]
    ce_same = weights.future(ref_ce, 3) * valid            # model CE == reference CE
    for norm in ("heads", "tokens"):
        w = weights.rho1(ce_same, valid, ref_ce=ref_ce, cfg=cfg(weight_norm=norm))
        torch.testing.assert_close(w, base)
        # critic with a value head that is exactly right (0 reward, 0 values): delta = 0
        z = torch.zeros(ce.shape[:2])
        w = weights.critic(ce, valid, values=z, rewards=z, cfg=cfg(weight_norm=norm))
        torch.testing.assert_close(w, base)


def test_rho1_aligns_reference_token_t_plus_k():
    """Head k at t must be compared with the reference's CE of token t+k."""
    B, T, H = 1, 8, 3
    valid = torch.ones(B, T, H, dtype=torch.bool)
    for k in range(1, H + 1):
        valid[:, T - k:, k - 1] = False
    ref_ce = torch.arange(T, dtype=torch.float).view(1, T) * 0.5      # CE of token j is j/2
    ce = torch.zeros(B, T, H)
    w = weights.rho1(ce, valid, ref_ce=ref_ce, cfg=cfg())
    for t in range(T):
        ks = [k for k in range(1, H + 1) if t + k < T]
        if not ks:
            continue
        ex = torch.tensor([0.5 * (t + k) for k in ks])
        expected = len(ks) * ex.exp() / ex.exp().sum()
        torch.testing.assert_close(w[0, t, :len(ks)], expected)


def test_rho1_min_ce_diff_and_modes():
    ce = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    ref_ce = torch.tensor([[0.0, 1.05, 3.0]])
    valid = torch.tensor([[[True, True], [True, False], [False, False]]])
    ex = weights.rho1_excess(ce, ref_ce, "abs")
    torch.testing.assert_close(ex[0, 0], torch.tensor([0.05, 2.0]))
    signed = weights.rho1_excess(ce, ref_ce, "signed")
    torch.testing.assert_close(signed[0, 0], torch.tensor([-0.05, -2.0]))
    # |excess| 0.05 < min_ce_diff: dropped, its weight goes to the other head at t
    w = weights.rho1(ce, valid, ref_ce=ref_ce, cfg=cfg(min_ce_diff=0.1))
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 2.0]))
    # binary top-k: the top 50% of the sequence's 3 valid terms by signed excess -> 2 kept
    w = weights.rho1(ce, valid, ref_ce=ref_ce, cfg=cfg(rho1_mode="topk", rho1_top_frac=0.5,
                                                      weight_norm="tokens"))
    assert (w > 0).sum() == 2 and w[valid].sum().item() == pytest.approx(3.0)
    assert w[0, 0, 1] == 0     # the most negative excess is dropped


def filter_case():
    """Two sequences, 5 positions, 2 heads, positions 3 and 4 invalid; the excess
    (CE - CE_ref) is chosen per term: ref_ce = 3 on every token, so ce = 3 + excess."""
    e = torch.zeros(2, 5, 2)
    e[:, :3] = torch.tensor([[[0.05, 2.0], [0.02, -0.08], [1.0, -0.5]],
                             [[0.05, -0.05], [0.0, 0.09], [-0.07, 0.01]]])
    valid = torch.ones(2, 5, 2, dtype=torch.bool)
    valid[:, 3:] = False
    return 3.0 + e, valid, torch.full((2, 5), 3.0)


def softmax_n(xs, n):
    """n * softmax(xs), in plain Python."""
    z = sum(math.exp(x) for x in xs)
    return [n * math.exp(x) / z for x in xs]


@pytest.mark.parametrize("mode", ["abs", "signed"])
def test_min_ce_diff_drops_terms_heads(mode):
    """weight_norm='heads', min_ce_diff = 0.1: terms with |excess| < 0.1 get weight 0.
    Sequence 0: at t=0 head 1 (0.05) is dropped, head 2 takes the position's 2; t=1 loses
    both heads (0.02, -0.08), so its 2 goes to the sequence's kept terms (x 6/4); t=2 keeps
    both (1.0 and 0.5 in 'abs', -0.5 in 'signed': the filter reads |excess| in either mode).
    Sequence 1 keeps nothing: uniform, the baseline's weights."""
    ce, valid, ref_ce = filter_case()
    w = weights.rho1(ce, valid, ref_ce=ref_ce, cfg=cfg(min_ce_diff=0.1, rho1_mode=mode))
    second = 0.5 if mode == "abs" else -0.5
    expected = torch.zeros(2, 5, 2)
    expected[0, 0] = torch.tensor([0.0, 2.0 * 6 / 4])
    expected[0, 2] = torch.tensor(softmax_n([1.0, second], 2.0)) * 6 / 4
    expected[1, :3] = 1.0
    torch.testing.assert_close(w, expected)


def test_min_ce_diff_drops_terms_tokens():
    """weight_norm='tokens': the group is the batch, so the 12 valid terms' weight goes to its
    3 kept terms (sequence 1 keeps none and gets 0); a batch that keeps none is uniform."""
    ce, valid, ref_ce = filter_case()
    c = cfg(min_ce_diff=0.1, weight_norm="tokens", rho1_mode="signed")
    w = weights.rho1(ce, valid, ref_ce=ref_ce, cfg=c)
    expected = torch.zeros(2, 5, 2)
    expected[0, 0, 1], expected[0, 2, 0], expected[0, 2, 1] = softmax_n([2.0, 1.0, -0.5], 12.0)
    torch.testing.assert_close(w, expected)
    w = weights.rho1(ce[1:], valid[1:], ref_ce=ref_ce[1:], cfg=c)
    torch.testing.assert_close(w, valid[1:].float())


def test_min_ce_diff_with_topk():
    """'topk' keeps the top rho1_top_frac of each sequence's valid terms less those the filter
    drops: of sequence 0's top 3 (2.0, 1.0, 0.05) the 0.05 goes; the 2 kept share its 6."""
    ce, valid, ref_ce = filter_case()
    w = weights.rho1(ce, valid, ref_ce=ref_ce, cfg=cfg(min_ce_diff=0.1, rho1_mode="topk",
                                                      rho1_top_frac=0.5))
    expected = torch.zeros(2, 5, 2)
    expected[0, 0, 1] = expected[0, 2, 0] = 3.0
    expected[1, :3] = 1.0                  # nothing kept: all its valid terms, equally
    torch.testing.assert_close(w, expected)


def td_reference(values, rewards, H, gamma):
    B, T = values.shape
    out = torch.zeros(B, T, H)
    for b in range(B):
        for t in range(T):
            for k in range(1, H + 1):
                r = sum(gamma ** j * rewards[b, t + j] for j in range(k) if t + j < T)
                v = values[b, t + k] if t + k < T else 0.0
                out[b, t, k - 1] = r + gamma ** k * v - values[b, t]
    return out


def test_td_errors_equal_loop_reference():
    g = torch.Generator().manual_seed(1)
    values, rewards = torch.randn(3, 9, generator=g), torch.randn(3, 9, generator=g)
    torch.testing.assert_close(weights.td_errors(values, rewards, 4, 0.9),
                               td_reference(values, rewards, 4, 0.9))


@pytest.mark.parametrize("T,H", [(3, 5), (1, 4), (2, 2), (4, 4)])
def test_td_errors_on_sequences_shorter_than_the_heads(T, H):
    g = torch.Generator().manual_seed(T * 10 + H)
    values, rewards = torch.randn(2, T, generator=g), torch.randn(2, T, generator=g)
    torch.testing.assert_close(weights.td_errors(values, rewards, H, 0.9),
                               td_reference(values, rewards, H, 0.9))


def test_gae_equals_loop_reference():
    g = torch.Generator().manual_seed(2)
    values, rewards = torch.randn(2, 11, generator=g), torch.randn(2, 11, generator=g)
    gamma, lam = 0.95, 0.8
    adv, ret = weights.gae(values, rewards, gamma, lam)
    ref = torch.zeros(2, 11)
    for b in range(2):
        running = 0.0
        for t in reversed(range(11)):       # the textbook backward recursion
            v_next = values[b, t + 1] if t + 1 < 11 else 0.0
            delta = rewards[b, t] + gamma * v_next - values[b, t]
            running = delta + gamma * lam * running
            ref[b, t] = running
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(ret, ref + values)


def test_terminal_reward_moves_exactly_the_last_k_positions():
    T, H, e = 10, 3, 7            # e: index of the sample's last token; states >= e terminal
    values = torch.rand(1, T)
    values[:, e:] = 0
    r0 = torch.zeros(1, T)
    r1 = r0.clone()
    r1[0, e - 1] = 1.0            # reward on the last transition (emitting token e)
    d0 = weights.td_errors(values, r0, H, 0.9)
    d1 = weights.td_errors(values, r1, H, 0.9)
    changed = (d1 - d0).abs() > 1e-7
    for t in range(T):
        for k in range(1, H + 1):
            assert changed[0, t, k - 1] == (e - k <= t <= e - 1), (t, k)
    valid = (mtp_targets(torch.zeros(1, T, dtype=torch.long),
                         torch.arange(T)[None] <= e, H) >= 0)
    w0 = weights.critic(torch.zeros(1, T, H), valid, values=values, rewards=r0, cfg=cfg())
    w1 = weights.critic(torch.zeros(1, T, H), valid, values=values, rewards=r1, cfg=cfg())
    # at e-2 and e-3 several heads are valid, and the reward moves their shares
    assert not torch.allclose(w0[0, e - 2], w1[0, e - 2])
    assert not torch.allclose(w0[0, e - 3], w1[0, e - 3])
    torch.testing.assert_close(w0[0, :e - 3], w1[0, :e - 3])


def test_clipping_and_sparsity():
    ce, valid, _ = random_case(seed=4)
    score = torch.rand_like(ce) * 5
    c = cfg(weight_norm="tokens", w_min=0.5, w_max=1.5)
    w = weights.finish(score, valid, c, temperature=1.0)
    assert w[valid].min() >= 0.5 and w[valid].max() <= 1.5
    keep = weights.sparsify(score, valid, top_frac=0.25)
    for b in range(ce.shape[0]):
        n = valid[b].sum().item()
        assert keep[b].sum() == math.ceil(0.25 * n)
        assert score[b][keep[b]].min() >= score[b][valid[b] & ~keep[b]].max()
    keep = weights.sparsify(score, valid, top_p=0.5)
    for b in range(ce.shape[0]):
        s = score[b][valid[b]].sort(descending=True).values
        need = int((s.cumsum(0) < 0.5 * s.sum()).sum()) + 1   # smallest prefix with mass >= p
        assert keep[b].sum() == need


def test_top_fraction_counts_are_exact():
    """n_top is ceil(n * frac) for frac read as the decimal it was written as: 25 terms
    at 0.6 keep 15 (float32 maths kept 16), 100 keep 60 (it kept 61)."""
    from fractions import Fraction
    for frac in (0.1, 0.25, 0.3, 0.6, 0.7, 0.9, 1.0):
        n = torch.arange(1, 400)
        want = [max(1, math.ceil(Fraction(int(i)) * Fraction(str(frac)))) for i in n]
        assert weights.n_top(n, frac).tolist() == want, frac
    valid = torch.ones(1, 25, 1, dtype=torch.bool)
    assert weights.sparsify(torch.rand(1, 25, 1), valid, top_frac=0.6).sum() == 15


@pytest.mark.parametrize("sparsity", [dict(rho1_mode="topk", rho1_top_frac=0.5),
                                      dict(weight_top_frac=0.5), dict(weight_top_p=0.5),
                                      dict(weight_top_frac=0.3, rho1_mode="signed")])
@pytest.mark.parametrize("norm", ["heads", "tokens"])
def test_sparsity_keeps_the_loss_scale(sparsity, norm):
    """Dropped terms' weight goes to the kept ones: sum(w) = N, whether or not a position
    lost every head. The issue's case: T=6, H=2 (N=9 valid terms), top-k 0.5 summed to 6."""
    T, H = 6, 2
    mask = torch.tensor([[False, True, True, True, True, True]])
    valid = mtp_targets(torch.zeros(1, T, dtype=torch.long), mask, H) >= 0
    assert valid.sum() == 9
    ce, ref = torch.rand(1, T, H), torch.rand(1, T) * 3
    w = weights.rho1(ce * valid, valid, ref_ce=ref, cfg=cfg(weight_norm=norm, **sparsity))
    assert w.sum().item() == pytest.approx(valid.sum().item(), rel=1e-6)
    assert (w[~valid] == 0).all() and (w > 0).sum() < valid.sum()   # something was dropped
    for seed in range(5):     # bigger random batches: 'heads' keeps each sequence's mass
        ce, valid, _ = random_case(B=4, T=12, H=3, seed=seed)
        w = weights.rho1(ce, valid, ref_ce=torch.rand(4, 12) * 3, cfg=cfg(weight_norm=norm, **sparsity))
        assert w.sum().item() == pytest.approx(valid.sum().item(), rel=1e-5)
        for b in range(4 if norm == "heads" else 0):
            assert w[b].sum().item() == pytest.approx(valid[b].sum().item(), rel=1e-5)


@pytest.mark.parametrize("norm", ["heads", "tokens"])
def test_controls_keep_what_their_scheme_keeps(norm):
    """A control differs from its scheme in the link of weights to tokens only: the
    shuffled weights are the scheme's own, permuted within each normalisation group (one
    position's heads under 'heads', the micro-batch under 'tokens'), so every group keeps
    its total and its values; random-matched draws are renormalised per group likewise."""
    ce, valid, _ = random_case(B=4, T=12, H=3, seed=5)
    w = weights.normalize(torch.rand_like(ce), valid, norm, 1.0)
    torch.manual_seed(0)
    s = weights.shuffled(w, valid, norm)
    assert (s[~valid] == 0).all() and not torch.equal(s, w)
    groups = [(b, t) for b in range(4) for t in range(12)] if norm == "heads" else [None]
    for g in groups:   # a plain loop over the groups: the same multiset of values in each
        sel = (lambda x: x[g[0], g[1]][valid[g[0], g[1]]]) if g else (lambda x: x[valid])
        assert torch.equal(sel(s).sort().values, sel(w).sort().values)
    if norm == "heads":   # something moved within a position, and nothing across positions
        assert any(not torch.equal(s[b, t], w[b, t]) for b, t in groups)
        assert torch.allclose(s.sum(-1), w.sum(-1))
    sample = torch.tensor([0.5, 2.0])
    r = weights.random_matched(valid, sample, norm)
    assert (r[~valid] == 0).all()
    dims = (-1,) if norm == "heads" else (0, 1, 2)
    assert torch.allclose(r.sum(dims), valid.float().sum(dims))   # mean 1 per group
    for g in groups:                       # still the sample's values, up to the group's scale
        v = r[g[0], g[1]][valid[g[0], g[1]]] if g else r[valid]
        assert v.numel() == 0 or {round(x, 4) for x in (v / v.min()).tolist()} <= {1.0, 4.0}


def test_shuffled_is_a_permutation_by_hand():
    """One position with three valid heads and one invalid: the valid values are permuted
    among the valid slots, the invalid slot stays 0."""
    w = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    valid = torch.tensor([[[False, True, True, True]]])
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        s = weights.shuffled(w, valid, "heads")
        assert s[0, 0, 0] == 0 and sorted(s[0, 0, 1:].tolist()) == [1.0, 2.0, 3.0]
        seen.add(tuple(s[0, 0].tolist()))
    assert len(seen) == 6                  # every permutation of three values turns up


def test_oracle_zeroes_the_corrupted_targets():
    """oracle: w[t, k] = 0 where x_{t+k} is a token the generator corrupted; the other
    heads of that position share its weight (mean 1 per position under 'heads')."""
    T, H = 8, 2
    mask = torch.tensor([[False, False, True, True, True, True, True, True]])
    valid = mtp_targets(torch.zeros(1, T, dtype=torch.long), mask, H) >= 0
    noise = torch.zeros(1, T, dtype=torch.bool)
    noise[0, 5] = True                      # token 5 is the corrupted one
    w = weights.oracle(torch.rand(1, T, H), valid, noise=noise, cfg=cfg())
    expect = valid.float().clone()
    for t in range(T):                      # by hand: head k at t targets token t + k
        for k in range(1, H + 1):
            if t + k == 5:
                expect[0, t, k - 1] = 0.0
                other = 2 - k               # the other head's index at this position
                if valid[0, t, other]:
                    expect[0, t, other] = float(valid[0, t].sum())   # it takes the position's mass
    assert torch.allclose(w, expect)
    with pytest.raises(ValueError, match="noise"):
        weights.oracle(torch.rand(1, T, H), valid, cfg=cfg())


def test_running_moments_equal_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3, 2, size=n) for n in (5, 17, 40)]
    m = weights.RunningMoments()
    for x in batches:
        m.update(len(x), x.sum(), (x ** 2).sum())
    allx = np.concatenate(batches)
    assert m.mean == pytest.approx(allx.mean()) and m.var == pytest.approx(allx.var())


def test_running_moments_decay_by_hand():
    """decay d: after S updates, batch s's deltas weigh d^(S-1-s); mean and variance are the
    weighted ones (a loop over every delta), count is the sum of the weights."""
    rng = np.random.default_rng(1)
    batches = [rng.normal(mu, 1 + abs(mu), size=n) for mu, n in ((3, 5), (1, 17), (-2, 9), (0, 1), (0, 0), (4, 12))]
    d = 0.8
    m = weights.RunningMoments(d)
    for x in batches:
        m.update(len(x), x.sum(), (x ** 2).sum())
    S = len(batches)
    ws, xs = [], []
    for s, x in enumerate(batches):
        for v in x:
            ws.append(d ** (S - 1 - s))
            xs.append(v)
    W = sum(ws)
    mean = sum(w * v for w, v in zip(ws, xs)) / W
    var = sum(w * (v - mean) ** 2 for w, v in zip(ws, xs)) / W
    assert m.count == pytest.approx(W) and m.mean == pytest.approx(mean) and m.var == pytest.approx(var)


def test_pretraining_deltas_age_out():
    """50 steps of deltas around 5 (an untrained value head), then 500 around 0: with decay
    0.99 the first ones weigh 0.99^500 < 1% and the mean is ~0; with decay 1 they keep 50/550."""
    rng = np.random.default_rng(0)
    steps = [rng.normal(5, 1, 10) for _ in range(50)] + [rng.normal(0, 1, 10) for _ in range(500)]
    ema, cum = weights.RunningMoments(0.99), weights.RunningMoments(1.0)
    for x in steps:
        for m in (ema, cum):
            m.update(len(x), x.sum(), (x ** 2).sum())
    assert abs(ema.mean) < 0.1 and ema.var == pytest.approx(1.0, abs=0.15)
    assert cum.mean == pytest.approx(5 * 50 / 550, abs=0.1) and cum.var > 2.5


def test_running_moments_checkpoint():
    """A resumed copy continues exactly; a checkpoint from before whiten_decay (no 'decay')
    loads as it is; another decay than the checkpoint's is refused, with what to pass."""
    a, b = weights.RunningMoments(0.9), weights.RunningMoments(0.9)
    a.update(4, 2.0, 3.0)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.update(3, -1.0, 2.0)
    assert a.state_dict() == b.state_dict()
    old = weights.RunningMoments(0.99)
    old.load_state_dict({"count": 10.0, "mean": 0.5, "var": 2.0})
    old.update(10, 0.0, 10.0)          # the old 10 age to 9.9, then merge
    assert old.count == pytest.approx(19.9) and old.mean == pytest.approx(0.5 * 9.9 / 19.9)
    with pytest.raises(ValueError, match="whiten_decay=0.9, this run has 0.99"):
        weights.RunningMoments(0.99).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"whiten_decay must be in \(0, 1\]"):
        weights.RunningMoments(0.0)


def test_critic_whitening_is_centring_only():
    """Proportional normalisation: scaling the moments' sigma leaves the weights unchanged
    (sigma cancels), moving mu changes them."""
    ce, valid, _ = random_case()
    g = torch.Generator().manual_seed(3)
    values, rewards = torch.rand(ce.shape[:2], generator=g), torch.zeros(ce.shape[:2])
    rewards[:, -3] = 1.0
    c = cfg(whiten=True, w_max=3.0, weight_top_frac=0.5)
    m = weights.RunningMoments()
    m.mean, m.var = 0.1, 1.0
    w1 = weights.critic(ce, valid, values=values, rewards=rewards, moments=m, cfg=c)
    m.var = 25.0
    torch.testing.assert_close(weights.critic(ce, valid, values=values, rewards=rewards, moments=m, cfg=c), w1)
    m.mean = 0.4
    assert not torch.allclose(weights.critic(ce, valid, values=values, rewards=rewards, moments=m, cfg=c), w1)


def test_critic_temperature_is_a_softmax_of_the_whitened_delta_per_position():
    """critic_temperature=T > 0: w[t, k] = n_t * softmax_k(|z[t, k]| / T) over the position's
    valid heads, z the whitened k-step TD error (by loops); 0 keeps w proportional to |z|."""
    ce, valid, _ = random_case()
    g = torch.Generator().manual_seed(5)
    values, rewards = torch.rand(ce.shape[:2], generator=g), torch.zeros(ce.shape[:2])
    rewards[:, -2] = 1.0
    m = weights.RunningMoments()
    m.mean, m.var = 0.05, 4.0
    T = 0.7
    w = weights.critic(ce, valid, values=values, rewards=rewards, moments=m, cfg=cfg(whiten=True, critic_temperature=T))
    z = (weights.td_errors(values, rewards, ce.shape[-1], 0.9) - 0.05) / 2.0
    B, L, H = ce.shape
    for b in range(B):
        for t in range(L):
            ks = [k for k in range(H) if valid[b, t, k]]
            e = [math.exp(abs(float(z[b, t, k])) / T) for k in ks]
            for k, x in zip(ks, e):
                assert float(w[b, t, k]) == pytest.approx(len(ks) * x / sum(e), rel=1e-4, abs=1e-6)
    proportional = weights.critic(ce, valid, values=values, rewards=rewards, moments=m, cfg=cfg(whiten=True))
    assert not torch.allclose(proportional, w)
    torch.testing.assert_close(proportional, loop_heads(((weights.td_errors(values, rewards, H, 0.9) - 0.05) / 2.0).abs() * valid, valid))


# ---- the schemes since Rho-1 (issue 21), each against a plain-loop hand computation ------
def loop_heads(score, valid):
    """Proportional weights per position by loops: w[t, k] = n_t * s / sum_k s (uniform
    where every score of the position is 0)."""
    B, T, H = score.shape
    w = torch.zeros(B, T, H)
    for b in range(B):
        for t in range(T):
            ks = [k for k in range(H) if valid[b, t, k]]
            total = sum(float(score[b, t, k]) for k in ks)
            for k in ks:
                w[b, t, k] = len(ks) * (float(score[b, t, k]) / total if total > 0 else 1 / len(ks))
    return w


def test_entropy_top_keeps_the_highest_entropy_terms_by_hand():
    ce, valid, _ = random_case(B=2, T=6, H=3, seed=21)
    ent = torch.rand(ce.shape, generator=torch.Generator().manual_seed(5)) * 3
    c = cfg(entropy_mode="top", entropy_top_frac=0.25)
    w = weights.entropy(ce, valid, entropy=ent, cfg=c)
    for b in range(2):
        terms = [(float(ent[b, t, k]), t, k) for t in range(6) for k in range(3) if valid[b, t, k]]
        n_keep = math.ceil(0.25 * len(terms))
        kept = {(t, k) for _, t, k in sorted(terms, key=lambda x: -x[0])[:n_keep]}
        # per position: its valid heads' count shared by its kept heads; then the sequence's
        # weights rescaled to total its valid terms (keep_mass)
        raw = torch.zeros(6, 3)
        for t in range(6):
            kk = [k for k in range(3) if (t, k) in kept]
            for k in kk:
                raw[t, k] = int(valid[b, t].sum()) / len(kk)
        expected = raw * len(terms) / raw.sum()
        torch.testing.assert_close(w[b], expected)
        assert {(t, k) for t in range(6) for k in range(3) if w[b, t, k] > 0} == kept


def test_entropy_soft_is_a_softmax_over_the_heads_by_hand():
    ce, valid, _ = random_case(B=2, T=5, H=3, seed=22)
    ent = torch.rand(ce.shape, generator=torch.Generator().manual_seed(6)) * 3
    w = weights.entropy(ce, valid, entropy=ent, cfg=cfg(entropy_mode="soft", temperature=0.5))
    torch.testing.assert_close(w, loop_heads(torch.exp(ent / 0.5), valid))


def group_case():
    valid = torch.ones(4, 3, 2, dtype=torch.bool)
    valid[:, -1, 1] = False                          # 5 valid terms per sample
    valid[3, :, :] = False
    valid[3, 0, 0] = True                            # sample 3: 1 valid term
    is_correct = torch.tensor([1.0, 0.0, 1.0, 0.0])
    mean = torch.tensor([0.5, 0.5, 1 / 3, 1 / 3])    # groups {0, 1} and {2, 3, (another)}
    std = torch.tensor([0.5, 0.5, 0.4714, 0.4714])
    return valid, is_correct, mean, std


def test_group_advantages_by_hand():
    valid, r, mean, std = group_case()
    ce = torch.zeros(valid.shape)
    n = int(valid.sum())                                            # 16 valid terms
    A = [1 - 0.5, 0 - 0.5, 1 - 1 / 3, 0 - 1 / 3]
    count = [int(valid[b].sum()) for b in range(4)]                 # 5, 5, 5, 1
    mass = sum(abs(a) * m for a, m in zip(A, count))
    c = cfg(weight_norm="tokens", group_std=False, group_negative="signed")
    w = weights.group(ce, valid, is_correct=r, group_mean=mean, group_std=std, cfg=c)
    for b in range(4):
        expected = n * abs(A[b]) / mass * (-1 if A[b] < 0 else 1)
        torch.testing.assert_close(w[b][valid[b]], torch.full((count[b],), expected))
    assert (w[~valid] == 0).all()
    # 'drop': the negative samples get 0, the rest share the whole mass
    w = weights.group(ce, valid, is_correct=r, group_mean=mean, group_std=std,
                      cfg=cfg(weight_norm="tokens", group_std=False, group_negative="drop"))
    pos = sum(a * m for a, m in zip(A, count) if a > 0)
    for b in range(4):
        torch.testing.assert_close(w[b][valid[b]], torch.full((count[b],), n * max(A[b], 0) / pos))
    # std: A / std, then the same normalisation
    w = weights.group(ce, valid, is_correct=r, group_mean=mean, group_std=std,
                      cfg=cfg(weight_norm="tokens", group_std=True, group_negative="signed"))
    As = [a / float(s) for a, s in zip(A, std)]
    mass = sum(abs(a) * m for a, m in zip(As, count))
    for b in range(4):
        torch.testing.assert_close(w[b][valid[b]], torch.full((count[b],), n * As[b] / mass))
    with pytest.raises(ValueError, match="weight_norm='tokens'"):
        weights.group(ce, valid, is_correct=r, group_mean=mean, group_std=std, cfg=cfg(group_std=False))


def test_group_statistics_provider_by_hand():
    """providers.group_stats: per problem, mean and std of is_correct over the samples the
    run trains on."""
    import numpy as np
    from types import SimpleNamespace

    import providers
    groups = np.array([0, 0, 1, 1, 1, 2, 0])
    labels = np.array([1, 0, 1, 1, 0, 0, 1])
    split = SimpleNamespace(path="toy", sample_fields={"group": groups},
                            index=np.stack([np.zeros(7), np.ones(7), np.zeros(7), labels], 1).astype(np.int64))
    ids = np.array([0, 1, 2, 3, 4, 5])                              # sample 6 is not trained on
    run = SimpleNamespace(loader=SimpleNamespace(split=split, ids=ids), device="cpu")
    mean, std = providers.group_stats(run)
    torch.testing.assert_close(mean, torch.tensor([0.5, 2 / 3, 0.0]))
    torch.testing.assert_close(std, torch.tensor([0.5, (2 / 9) ** 0.5, 0.0]))
    mb = {"group": torch.tensor([2, 0, 1])}
    torch.testing.assert_close(providers.provide("group_mean", run, mb, None), torch.tensor([0.0, 0.5, 2 / 3]))


def test_dft_weights_are_the_probability_by_hand():
    ce, valid, _ = random_case(B=2, T=5, H=3, seed=23)
    w = weights.dft(ce, valid, cfg=cfg())
    torch.testing.assert_close(w, loop_heads(torch.exp(-ce), valid))
    w = weights.dft(ce, valid, cfg=cfg(weight_norm="tokens"))
    p = torch.exp(-ce) * valid
    torch.testing.assert_close(w, p * valid.sum() / p.sum())


@pytest.mark.parametrize("mean", ["product", "geometric"])
def test_hybrid_is_the_renormalised_product_of_critic_and_rho1(mean):
    ce, valid, _ = random_case(B=2, T=6, H=3, seed=24)
    g = torch.Generator().manual_seed(8)
    ins = dict(ref_ce=torch.rand(2, 6, generator=g) * 4, values=torch.randn(2, 6, generator=g),
               rewards=torch.rand(2, 6, generator=g))
    c = cfg(hybrid_mean=mean)
    w_c = weights.critic(ce, valid, cfg=c, **ins)
    w_r = weights.rho1(ce, valid, cfg=c, **ins)
    score = w_c * w_r if mean == "product" else (w_c * w_r).sqrt()
    torch.testing.assert_close(weights.hybrid(ce, valid, cfg=c, **ins), loop_heads(score, valid))


def test_gradient_weights_follow_the_goal_gradient_of_each_target_by_hand():
    ce, valid, _ = random_case(B=2, T=6, H=3, seed=25)
    g = torch.rand(2, 6, generator=torch.Generator().manual_seed(9))
    w = weights.gradient(ce, valid, goal_grad=g, cfg=cfg())
    score = torch.zeros(2, 6, 3)
    for b in range(2):
        for t in range(6):
            for k in range(3):
                if t + k + 1 < 6:
                    score[b, t, k] = g[b, t + k + 1]        # head k+1 at t predicts x_{t+k+1}
    torch.testing.assert_close(w, loop_heads(score, valid))
