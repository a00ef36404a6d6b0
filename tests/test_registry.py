"""
The contract every registered scheme keeps (weights.SCHEMES), checked without naming one:
the schemes that exist and any a fork registers get these tests by being registered.

    python -m pytest tests/test_registry.py -q

A scheme that reads a new input needs one entry in INPUTS below (how to make it for a
unit call, and which train.py keys make a run provide it); the tests say so otherwise.
"""
import os
import random
from types import SimpleNamespace

import pytest
import torch

import data
import train
import weights
from test_train import read_log, tiny_cfg, toy_samples

# name -> (a value for a unit call: f(B, T, H, generator), train.py keys a run needs for it)
INPUTS = {
    "ref_ce": (lambda B, T, H, g: torch.rand(B, T, generator=g) * 4, lambda t: dict(ref_init_from=t.ref)),
    "values": (lambda B, T, H, g: torch.randn(B, T, generator=g), lambda t: dict(critic_pretrain_epochs=0.05)),
    "rewards": (lambda B, T, H, g: torch.rand(B, T, generator=g), lambda t: {}),
    "moments": (lambda B, T, H, g: weights.RunningMoments(), lambda t: {}),
    "noise": (lambda B, T, H, g: torch.rand(B, T, generator=g) < 0.2, lambda t: dict(data_dir=t.noisy)),
    "is_correct": (lambda B, T, H, g: (torch.rand(B, generator=g) < 0.5).float(), lambda t: {}),
    "group": (lambda B, T, H, g: torch.arange(B) // 2, lambda t: {}),
    "entropy": (lambda B, T, H, g: torch.rand(B, T, H, generator=g) * 3, lambda t: {}),
    "group_mean": (lambda B, T, H, g: torch.rand(B, generator=g), lambda t: {}),
    "group_std": (lambda B, T, H, g: torch.rand(B, generator=g) + 0.1, lambda t: {}),
    "goal_grad": (lambda B, T, H, g: torch.rand(B, T, generator=g), lambda t: {}),
    "rm_reward": (lambda B, T, H, g: torch.rand(B, generator=g), lambda t: dict(rm_init_from=t.rm)),
}


def inputs_of(scheme, B, T, H, g):
    missing = [n for n in scheme.reads if n != "ce" and n not in INPUTS]
    assert not missing, f"tests/test_registry.py has no INPUTS entry for {missing}: add one"
    return {n: INPUTS[n][0](B, T, H, g) for n in scheme.reads if n != "ce"}


def config(**kw):
    """train.py's defaults, with kw."""
    return SimpleNamespace(**{**train.DEFAULTS, **kw})


def case(seed, B=4, T=12, H=3):
    g = torch.Generator().manual_seed(seed)
    ce = torch.rand(B, T, H, generator=g) * 5
    valid = torch.rand(B, T, H, generator=g) < 0.8
    valid[:, -1] = False
    valid[0, 3] = False                               # a position with no valid head
    return ce.masked_fill(~valid, 0.0), valid, g


def norms(scheme):
    """The normalisations a scheme runs under: the one it declares, else both."""
    return (scheme.weight_norm,) if scheme.weight_norm else ("heads", "tokens")


# every scheme under each of its normalisations, with the run's defaults and, for a scheme
# that can be signed, under the config that makes it so
VARIANTS = [(name, norm, signed) for name in sorted(weights.SCHEMES) for norm in norms(weights.SCHEMES[name])
            for signed in ((False, True) if weights.SCHEMES[name].signed else (False,))]


# the options of the schemes (train.py keys), each applied to every scheme in turn: a scheme
# that does not read one runs as by default; a new option gets the contract by a line here
OPTIONS = [dict(), dict(temperature=0.5), dict(critic_temperature=0.5), dict(weight_top_frac=0.5),
           dict(weight_top_p=0.8), dict(min_ce_diff=1.5), dict(rho1_mode="signed"), dict(rho1_mode="topk"),
           dict(entropy_mode="soft"), dict(entropy_top_frac=0.5), dict(group_std=True),
           dict(group_negative="drop"), dict(hybrid_mean="geometric"), dict(whiten=False)]


@pytest.mark.parametrize("name,norm,signed", VARIANTS)
def test_the_weight_contract(name, norm, signed):
    """Shape, finite, zero on ignored terms, non-negative unless the config makes the
    scheme signed, and mean |w| = 1 over each normalisation group's valid terms: the batch
    ('tokens'); a position's heads ('heads'), or the sequence where the scheme drops
    terms (their weight goes to the sequence's kept terms: weights.keep_mass). Under the
    defaults and under each of OPTIONS."""
    scheme = weights.SCHEMES[name]
    for seed, option in [(s, o) for o in OPTIONS for s in range(3)]:
        ce, valid, g = case(seed)
        c = config(**{"weight_norm": norm, **option, **(scheme.signed if signed else {})})
        w = scheme.fn(None if scheme.before_ce else ce, valid, cfg=c, norm_stats=None,
                      **inputs_of(scheme, *ce.shape, g))
        assert w.shape == ce.shape and w.dtype == torch.float32 and torch.isfinite(w).all()
        assert (w[~valid] == 0).all()
        if not scheme.is_signed(c):
            assert (w >= 0).all()
        mag = w.abs()
        if norm == "tokens":
            torch.testing.assert_close(mag.sum(), valid.sum().float())
            continue
        for b in range(w.shape[0]):   # a position's heads; a sequence that drops terms
            if (mag[b][valid[b]] == 0).any():   # (sparsity) passes their weight on within it
                torch.testing.assert_close(mag[b].sum(), valid[b].sum().float())
            else:
                torch.testing.assert_close(mag[b].sum(-1), valid[b].sum(-1).float())


@pytest.mark.parametrize("name", sorted(weights.SCHEMES))
def test_weights_carry_no_gradient_into_the_loss(name):
    """Even computed from a CE that carries gradient, a scheme's weights do not: the loss's
    gradient with respect to each CE term is exactly w / N (weighted_loss detaches w)."""
    scheme = weights.SCHEMES[name]
    ce, valid, g = case(13)
    ce = ce.clone().requires_grad_(True)
    c = config(weight_norm=norms(scheme)[0])
    w = scheme.fn(None if scheme.before_ce else ce, valid, cfg=c, norm_stats=None,
                  **inputs_of(scheme, *ce.shape, g))
    n = valid.sum().float()
    weights.weighted_loss(ce, w, n).backward()
    torch.testing.assert_close(ce.grad, (w / n).detach())


@pytest.mark.parametrize("name", sorted(weights.SCHEMES))
def test_weights_are_deterministic_and_use_what_the_scheme_declares(name):
    """The same inputs give the same weights; a scheme reads nothing it did not declare
    (called with only its declared inputs, it runs)."""
    scheme = weights.SCHEMES[name]
    ce, valid, g = case(7)
    ins = inputs_of(scheme, *ce.shape, g)
    c = config(weight_norm=norms(scheme)[0])
    w1 = scheme.fn(None if scheme.before_ce else ce, valid, cfg=c, norm_stats=None, **ins)
    w2 = scheme.fn(None if scheme.before_ce else ce.clone(), valid, cfg=c, norm_stats=None, **ins)
    assert torch.equal(w1, w2)


@pytest.mark.parametrize("name,norm", [(n, m) for n in sorted(weights.SCHEMES) for m in norms(weights.SCHEMES[n])])
def test_every_schemes_shuffled_control_keeps_its_groups(name, norm):
    """The control made for any scheme: its weights permuted within each normalisation
    group, so every group keeps its total and its multiset of values."""
    scheme = weights.SCHEMES[name]
    ce, valid, g = case(11)
    c = config(weight_norm=norm)
    w = scheme.fn(None if scheme.before_ce else ce, valid, cfg=c, norm_stats=None,
                  **inputs_of(scheme, *ce.shape, g))
    torch.manual_seed(0)
    s = weights.shuffled(w, valid, norm)
    assert (s[~valid] == 0).all()
    groups = (lambda x: x.reshape(-1, x.shape[-1])) if norm == "heads" else (lambda x: x.reshape(1, -1))
    for a, b, ok in zip(groups(w), groups(s), groups(valid)):
        assert torch.equal(a[ok].sort().values, b[ok].sort().values)


# configs under which a scheme's one-pass form (Scheme.local) is asked for: it must either
# decline (None) or give, chunk by chunk of positions, the weights of the scheme itself
LOCAL_CONFIGS = [dict(), dict(w_max=1.5, w_min=0.2), dict(temperature=0.5), dict(weight_norm="tokens"),
                 dict(weight_top_frac=0.5), dict(weight_top_p=0.8), dict(min_ce_diff=1.5),
                 dict(rho1_mode="signed"), dict(rho1_mode="topk"), dict(rho1_ref="matched")]
LOCAL = [(n, i) for n in sorted(weights.SCHEMES) if weights.SCHEMES[n].local for i in range(len(LOCAL_CONFIGS))]


@pytest.mark.parametrize("name,i", LOCAL)
def test_a_schemes_one_pass_form_gives_its_weights(name, i):
    """Scheme.local, where a scheme has one: under each config it declines (None) or its
    weigh(ce_rows, rows), called on chunks of the flattened positions as the one pass calls
    it (sizes that do not divide B*T), gives exactly the scheme's weights on the whole batch.
    It must decline where the weights read more than one position ('tokens', sparsity)."""
    scheme, keys = weights.SCHEMES[name], LOCAL_CONFIGS[i]
    c = config(**keys)
    make = weights.local_weigher(scheme, c)
    if c.weight_norm != "heads" or c.weight_top_frac > 0 or c.weight_top_p < 1:
        assert make is None
    if make is None:
        return
    for seed in range(3):
        ce, valid, g = case(seed)
        ins = inputs_of(scheme, *ce.shape, g)
        if "ref_ce" in ins and c.rho1_ref == "matched":   # the reference's own heads (B, T, Hr)
            ins["ref_ce"] = torch.rand(*ce.shape[:2], ce.shape[-1] + 1, generator=g) * 4
        want = scheme.fn(ce, valid, cfg=c, norm_stats=None, **ins)
        weigh = make(valid, **ins)
        flat, got, n = ce.flatten(0, 1), [], 5
        for s in range(0, flat.shape[0], n):
            got.append(weigh(flat[s:s + n], slice(s, s + n)))
        torch.testing.assert_close(torch.cat(got).view_as(want), want, rtol=1e-6, atol=1e-7)


# ---- through train.py ---------------------------------------------------------------------
def noisy_samples(n, seed):
    """toy_samples where a third of the correct ones have their last digit corrupted and marked."""
    rng = random.Random(seed + 100)
    out = []
    for s in toy_samples(n, seed):
        if s["is_correct"] and rng.random() < 0.33:
            last = int(s["completion"][-1])
            s = dict(s, completion=s["completion"][:-1] + str((last + 1) % 10),
                     noise_spans=[[len(s["completion"]) - 1, len(s["completion"])]])
        out.append(s)
    return out


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """Toy data, the same with marked noise, a reference and a reward model trained on the first."""
    root = tmp_path_factory.mktemp("registry")
    enc = data.get_tokenizer("bytes")
    t = SimpleNamespace(plain=str(root / "plain"), noisy=str(root / "noisy"), ref=str(root / "ref"),
                        rm=str(root / "rm"))
    for path, make in ((t.plain, toy_samples), (t.noisy, noisy_samples)):
        for split, n, seed in (("train", 400, 0), ("val", 64, 1)):
            data.write_split(os.path.join(path, split), enc, make(n, seed), [], {"source": "toy"})
    train.train(tiny_cfg(t.plain, t.ref, max_iters=20, eval_interval=20, n_future=1, log_interval=5))
    train.train(tiny_cfg(t.plain, t.rm, max_iters=10, eval_interval=10, log_interval=5, weighting="critic",
                         train_on="all", critic_pretrain_epochs=0.05))    # a reward model (rm_critic)
    return t


def run_keys(name, t):
    """The train.py keys a run of scheme `name` needs: each declared input's, and its data."""
    scheme = weights.SCHEMES[name]
    missing = [n for n in scheme.reads if n != "ce" and n not in INPUTS]
    assert not missing, f"tests/test_registry.py has no INPUTS entry for {missing}: add one"
    keys = dict(weighting=name, train_on=scheme.train_on)
    if scheme.weight_norm:
        keys["weight_norm"] = scheme.weight_norm
    for n in scheme.reads:
        if n != "ce":
            keys.update(INPUTS[n][1](t))
    return keys


@pytest.mark.parametrize("name", sorted(weights.SCHEMES))
def test_every_scheme_and_its_control_train(toys, tmp_path, name):
    """A few steps of the scheme and of its shuffled control through train.py: finite
    losses, weights logged with mean 1, and the run's config names what ran."""
    keys = dict(tiny_cfg(toys.plain, tmp_path / "s", max_iters=3, eval_interval=3), **run_keys(name, toys))
    for kind, extra in (("scheme", {}), ("shuffled", dict(weighting="shuffled", control_of=name))):
        out = tmp_path / kind
        summary = train.train(dict(keys, out_dir=str(out), **extra))
        assert summary["finished"] and all(map(torch.isfinite, map(torch.tensor, summary["train_losses"])))
        rows = [r for r in read_log(out) if "w_step_mean" in r]
        assert rows and all(abs(r["w_step_mean"] - 1) < 1e-4 for r in rows)


def test_a_scheme_reading_an_unknown_input_is_refused_clearly(toys, tmp_path, monkeypatch):
    monkeypatch.setitem(weights.SCHEMES, "needs_x", weights.Scheme(lambda ce, valid, **kw: valid.float(),
                                                                   reads=("ce", "x_unknown")))
    with pytest.raises(ValueError, match="reads 'x_unknown', which no provider computes"):
        train.train(tiny_cfg(toys.plain, tmp_path, weighting="needs_x", max_iters=1))


def test_register_refuses_contradictions():
    with pytest.raises(ValueError, match="one pass"):
        weights.register("bad_one_pass", lambda ce, valid, **kw: valid.float(), reads=("ce",), before_ce=True)
    with pytest.raises(ValueError, match="exists already"):
        weights.register("uniform", lambda ce, valid, **kw: valid.float())
    with pytest.raises(ValueError, match="exists already"):
        weights.register("shuffled", lambda ce, valid, **kw: valid.float())
    assert "bad_one_pass" not in weights.SCHEMES
