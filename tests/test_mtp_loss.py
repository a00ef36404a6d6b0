"""
The memory-efficient MTP loss (mtp_loss.py, loss_impl='chunked') against the readable
reference (model.forward + mtp_cross_entropy, loss_impl='simple'): the same CE, the same
gradients for every scheme's ingredients, and the training loop's same steps.

    OMP_NUM_THREADS=1 python -m pytest tests/test_mtp_loss.py -q
"""
from types import SimpleNamespace

import pytest
import torch

import mtp_loss
import weights
from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_entropy, mtp_targets, surprise_features


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=48, n_layer=4, n_future=3, n_head=2, n_kv_head=1, d_model=16,
               d_ff=32, max_seq_len=16)
    cfg.update(kw)
    return Transformer(ModelConfig(**cfg)).double()


def batch(B=3, T=11, V=48, H=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, start in enumerate([2, 5, 1][:B]):   # prompts of different lengths
        mask[b, start:] = True
    return tokens, mask, mtp_targets(tokens, mask, H)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for n in a:   # relative to the tensor's scale: the "<= 1e-5 relative"
        err = (a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-30)
        assert err <= rtol, (n, float(err))


def test_pass_one_ce_is_mtp_cross_entropy():
    m = tiny_model()
    tokens, mask, targets = batch()
    want = mtp_cross_entropy(m(tokens), targets)
    for chunk in (1, 7, 0):     # chunks that do and do not divide B*T = 33
        got = mtp_loss.forward(m, tokens, targets, chunk=chunk).ce
        # both compute the CE in fp32 (mtp_cross_entropy casts the logits): fp32 rounding
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_pass_one_entropy_is_the_predictive_entropy():
    """The entropy the loss path keeps for the 'entropy' scheme, from its chunks of logits,
    equals model.mtp_entropy on the (B, T, H, V) logits and torch.distributions'
    Categorical entropy of each head's distribution; 0 where there is no target."""
    m = tiny_model()
    tokens, mask, targets = batch()
    logits = m(tokens)
    simple = mtp_entropy(logits, targets)
    reference = torch.distributions.Categorical(logits=logits.float()).entropy()
    torch.testing.assert_close(simple, torch.where(targets >= 0, reference, 0.0))
    for chunk in (1, 7, 0):
        got = mtp_loss.forward(m, tokens, targets, chunk=chunk, with_entropy=True).entropy
        torch.testing.assert_close(got, simple, rtol=1e-6, atol=1e-6)
    assert mtp_loss.forward(m, tokens, targets).entropy is None
    with pytest.raises(ValueError, match="loss_kernel='torch'"):
        mtp_loss.forward(m, tokens, targets, kernel="cce", with_entropy=True)


def test_surprise_from_ce_is_surprise_features():
    m = tiny_model()
    tokens, mask, targets = batch()
    logits1 = m(tokens)[:, :, 0]
    nxt = torch.cat([tokens[:, 1:], tokens.new_full((3, 1), -1)], 1)
    ce_next = mtp_cross_entropy(logits1[:, :, None], nxt[:, :, None])[..., 0]
    for msk in (None, mask):
        torch.testing.assert_close(mtp_loss.surprise_from_ce(ce_next, msk),
                                   surprise_features(logits1, tokens, msk))


def test_linear_ce_gradcheck():
    torch.manual_seed(0)
    h = torch.randn(9, 5, dtype=torch.double, requires_grad=True)
    W = torch.randn(7, 5, dtype=torch.double, requires_grad=True)
    t = torch.tensor([0, 3, -1, 6, 2, -1, 1, 5, 4])
    ce, lse = mtp_loss.ce_and_lse(h, W, t, 4, torch.double)
    f = lambda h, W: mtp_loss.LinearCE.apply(h, W, t, *mtp_loss.ce_and_lse(h, W, t, 4, torch.double),
                                             4, torch.double)
    # LinearCE's forward takes ce/lse as given, so gradcheck's perturbed forward must
    # recompute them: f does, and the analytic backward is checked against it
    assert torch.autograd.gradcheck(f, (h, W))


def simple_step(m, tokens, targets, w, n, term=None, value_fn=None, mask=None):
    m.zero_grad(set_to_none=True)
    out = m(tokens, with_values=value_fn is not None, value_mask=mask)
    logits, values = out if value_fn else (out, None)
    ce = mtp_cross_entropy(logits, targets)
    lm = torch.stack([term(ce[..., k], k) for k in range(ce.shape[-1])], -1) if term else ce
    loss = weights.weighted_loss(lm, w, n)
    if value_fn:
        loss = loss + value_fn(values)
    loss.backward()
    return ce.detach(), grads(m)


def chunked_step(m, tokens, targets, w, n, term=None, value_fn=None, mask=None, chunk=5):
    m.zero_grad(set_to_none=True)
    p = mtp_loss.forward(m, tokens, targets, chunk=chunk, with_values=value_fn is not None,
                         value_mask=mask)
    mtp_loss.backward(p, m, w, n, term=term, extra_loss=value_fn(p.values) if value_fn else None)
    return p.ce, grads(m)


def unlikely(ce, neg):
    return torch.where(neg, -torch.log(-torch.expm1(-ce.clamp(min=1e-6))), ce)


@pytest.mark.parametrize("case", ["uniform", "random_w", "signed", "value_detached",
                                  "value_into_trunk", "untied", "dropout"])
def test_gradients_equal_the_simple_path(case):
    kw = {"value_detached": dict(value_head=True), "value_into_trunk": dict(value_head=True, value_detach=False),
          "signed": dict(value_head=True), "untied": dict(tie_embeddings=False),
          "dropout": dict(dropout=0.3)}.get(case, {})
    m = tiny_model(**kw)
    tokens, mask, targets = batch()
    valid = targets >= 0
    n = valid.sum().float()
    w = valid.double() if case == "uniform" else torch.rand(targets.shape, dtype=torch.double) * valid
    term, value_fn = None, None
    if m.config.value_head:
        value_fn = lambda v: (v - torch.linspace(0, 1, v.shape[1], dtype=v.dtype)).pow(2).mean()
    if case == "signed":   # train.py's incorrect_mode='signed': unlikelihood where neg
        neg = torch.rand(targets.shape) < 0.5
        term = lambda ce, k: unlikely(ce, neg[..., k])
    torch.manual_seed(5)
    ce_a, g_a = simple_step(m, tokens, targets, w, n, term, value_fn, mask)
    torch.manual_seed(5)
    ce_b, g_b = chunked_step(m, tokens, targets, w, n, term, value_fn, mask)
    torch.testing.assert_close(ce_b, ce_a, rtol=1e-6, atol=1e-6)   # fp32 CE in both
    assert_same_grads(g_b, g_a, rtol=1e-5)
    if case == "value_detached":   # the value loss must not reach the LM
        m.zero_grad(set_to_none=True)
        p = mtp_loss.forward(m, tokens, targets, with_values=True, value_mask=mask)
        mtp_loss.backward(p, m, w, n, extra_loss=value_fn(p.values), heads=False)
        assert all(n.startswith("value_head.") for n in grads(m))


def test_float32_gradients_within_1e_5():
    """The issue's bar in the dtype training uses on CPU."""
    m = tiny_model(vocab_size=512).float()
    tokens, mask, targets = batch(V=512)
    valid = targets >= 0
    w = torch.rand(targets.shape) * valid
    _, g_a = simple_step(m, tokens, targets, w, valid.sum())
    _, g_b = chunked_step(m, tokens, targets, w, valid.sum(), chunk=8)
    assert_same_grads(g_b, g_a, rtol=1e-5)


# ---- one pass: the weights known before the CE ------------------------------------------
def path_case(case):
    """The model and batch of a loss-path parity case: 'untied', 'dropout', 'float32' (at
    V = 512) or the plain tiny model -> model, tokens, targets, valid, n_valid."""
    kw = {"untied": dict(tie_embeddings=False), "dropout": dict(dropout=0.3),
          "float32": dict(vocab_size=512)}.get(case, {})
    m = tiny_model(**kw)
    if case == "float32":
        m = m.float()
    tokens, mask, targets = batch(V=m.config.vocab_size)
    valid = targets >= 0
    return m, tokens, targets, valid, valid.sum().float()



@pytest.mark.parametrize("case", ["uniform", "random_w", "untied", "dropout", "float32", "scaled"])
def test_one_pass_gradients_equal_the_simple_path(case):
    """forward_backward (each head's forward and backward at once, no pass 1) gives the
    simple path's CE and gradients: every head, tied or untied unembedding, dropout (the
    same masks), chunks that do not divide B*T, float32 at a larger V, and a loss scale."""
    m, tokens, targets, valid, n = path_case(case)
    dt = next(m.parameters()).dtype
    w = valid.to(dt) if case in ("uniform", "dropout") else torch.rand(targets.shape, dtype=dt) * valid
    factor = 3.0 if case == "scaled" else 1.0     # train.py's world size / GradScaler's scale
    torch.manual_seed(5)
    ce_a, g_a = simple_step(m, tokens, targets, w * factor, n)
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    ce_b = mtp_loss.forward_backward(m, tokens, targets, w, n, chunk=5,
                                     scale=lambda loss: loss * factor)
    torch.testing.assert_close(ce_b, ce_a, rtol=1e-6, atol=1e-6)
    assert_same_grads(grads(m), g_a, rtol=1e-5)


def test_one_pass_adds_to_existing_gradients():
    """Gradient accumulation: a second micro-batch's gradient adds to the first's in every
    parameter, the unembedding's (written by hand) included."""
    m = tiny_model(tie_embeddings=False)
    tokens, mask, targets = batch()
    valid = targets >= 0
    w, n = valid.double(), valid.sum().float()
    half = [slice(0, 1), slice(1, 3)]
    _, want = simple_step(m, tokens, targets, w, n)
    m.zero_grad(set_to_none=True)
    for s in half:
        mtp_loss.forward_backward(m, tokens[s], targets[s], w[s], n, chunk=4)
    assert_same_grads(grads(m), want, rtol=1e-5)


# ---- one pass, the weights from each position's CE inside it -------------------------------
def rho1_weigher(valid, ref, T=0.7):
    """Rho-1's one-pass form (weights.local_weigher) at temperature T, and its plain function."""
    c = SimpleNamespace(**{**train.DEFAULTS, "weighting": "rho1", "temperature": T})
    make = weights.local_weigher(weights.SCHEMES["rho1"], c)
    return make(valid, ref_ce=ref), lambda ce: weights.rho1(ce, valid, ref_ce=ref, cfg=c)


@pytest.mark.parametrize("case", ["rho1", "untied", "dropout", "float32", "scaled", "chunk_1"])
def test_weighing_pass_gradients_equal_the_simple_path(case):
    """forward_backward_weighing (every head's CE per chunk of positions, the weights from
    them, the gradients from the same logits) gives the CE, the weights and the gradients
    of the simple path that computes the weights from (B, T, H, V) logits first: tied or
    untied, dropout (the same masks), float32 at a larger V, a loss scale, chunks of one."""
    m, tokens, targets, valid, n = path_case(case)
    ref = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(3)) * 4
    weigh, plain = rho1_weigher(valid, ref)
    factor = 3.0 if case == "scaled" else 1.0
    torch.manual_seed(5)
    with torch.no_grad():
        w_a = plain(mtp_cross_entropy(m(tokens), targets).float())
    torch.manual_seed(5)
    ce_a, g_a = simple_step(m, tokens, targets, w_a.to(next(m.parameters()).dtype) * factor, n)
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    ce_b, w_b = mtp_loss.forward_backward_weighing(m, tokens, targets, weigh, n,
                                                   chunk=1 if case == "chunk_1" else 7,
                                                   scale=lambda loss: loss * factor)
    torch.testing.assert_close(ce_b, ce_a.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w_b, w_a.float(), rtol=1e-5, atol=1e-6)
    assert_same_grads(grads(m), g_a, rtol=1e-5)


# ---- the training loop: 'chunked' trains as 'simple' does ------------------------------
from test_registry import run_keys, toys  # noqa: E402,F401  (toy data, noisy data, a reference)
from test_schemes import toy  # noqa: E402,F401  (the module fixture: toy data + a reference)
from test_train import read_log, tiny_cfg, train_rows  # noqa: E402

import checkpoint  # noqa: E402
import train  # noqa: E402

# every registered scheme as its run needs it (tests/test_registry.py: run_keys), each signed
# scheme signed too, then the paths: 'tokens' with accumulation (the step pre-pass runs
# through the chunked pass 1 too), the value loss into the trunk, a control with dropout
PATHS = {
    "rho1_tokens_online": dict(weighting="rho1", ref_ce_mode="online", weight_norm="tokens"),
    "critic_into_trunk": dict(weighting="critic", train_on="all", value_detach=False,
                              critic_pretrain_epochs=0.05, weight_norm="tokens"),
    "shuffled_dropout": dict(weighting="shuffled", control_of="rho1", ref_ce_mode="online",
                             dropout=0.2),
}
ARMS = [(name, False) for name in sorted(weights.SCHEMES)] + \
    [(name, True) for name in sorted(weights.SCHEMES) if weights.SCHEMES[name].signed] + \
    [(name, None) for name in PATHS]


@pytest.mark.parametrize("arm,signed", ARMS)
def test_training_steps_equal_the_simple_path(toys, tmp_path, arm, signed):
    """Every registered scheme (signed too where it can be; and value pre-training,
    value_detach both ways, 'tokens' with its pre-pass, dropout) takes the same steps with
    either loss path: losses, gradient norms and the final weights agree to float32 rounding."""
    if signed is None:
        keys = dict(PATHS[arm], ref_init_from=toys.ref)
    else:
        keys = run_keys(arm, toys)
        keys.update(weights.SCHEMES[arm].signed if signed else {})
    keys = dict(dict(data_dir=toys.plain), **keys, max_iters=5, eval_interval=5)
    data_dir = keys.pop("data_dir")
    train.train(tiny_cfg(data_dir, tmp_path / "simple", loss_impl="simple", **keys))
    train.train(tiny_cfg(data_dir, tmp_path / "chunked", loss_impl="chunked", loss_chunk=7, **keys))
    a, b = train_rows(tmp_path / "simple"), train_rows(tmp_path / "chunked")
    assert sorted(a) == sorted(b) and len(a) >= 5
    for it in a:
        assert b[it][0] == pytest.approx(a[it][0], rel=1e-5), it
        assert b[it][1] == pytest.approx(a[it][1], rel=1e-4), it
    va = [r["val_loss"] for r in read_log(tmp_path / "simple") if "val_loss" in r]
    vb = [r["val_loss"] for r in read_log(tmp_path / "chunked") if "val_loss" in r]
    assert vb == pytest.approx(va, rel=1e-5)
    wa = checkpoint.load_checkpoint(str(tmp_path / "simple"))["model"]
    wb = checkpoint.load_checkpoint(str(tmp_path / "chunked"))["model"]
    # after 5 AdamW steps, relative to each tensor's scale: Adam divides by sqrt(v), so an
    # entry whose gradient is ~0 turns float rounding into an lr-sized step (3.6e-5 seen)
    assert_same_grads(wb, wa, rtol=1e-4)


def test_baseline_one_pass_takes_the_two_pass_steps(toy, tmp_path, monkeypatch):
    """The baseline's step through one pass (registered before_ce) and through the
    two-pass path every other scheme takes: bit for bit the same losses, gradient norms and
    final weights, with gradient accumulation and dropout on (the same floats in the same
    order: the arms differ only in their weights, as before the one pass existed)."""
    toy_data, _ = toy
    keys = dict(max_iters=4, eval_interval=4, loss_chunk=7, dropout=0.1)
    calls = []
    one_pass = mtp_loss.forward_backward
    monkeypatch.setattr(mtp_loss, "forward_backward", lambda *a, **k: calls.append(1) or one_pass(*a, **k))
    train.train(tiny_cfg(toy_data, tmp_path / "one", **keys))
    assert len(calls) == 4 * 2          # every micro-batch of every step took the one pass
    monkeypatch.setitem(weights.SCHEMES, "uniform", weights.SCHEMES["uniform"]._replace(before_ce=False))
    train.train(tiny_cfg(toy_data, tmp_path / "two", **keys))
    assert len(calls) == 4 * 2
    a, b = train_rows(tmp_path / "two"), train_rows(tmp_path / "one")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a == b
    wa = checkpoint.load_checkpoint(str(tmp_path / "two"))["model"]
    wb = checkpoint.load_checkpoint(str(tmp_path / "one"))["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("keys,takes", [(dict(), True), (dict(weight_norm="tokens"), False),
                                        (dict(rho1_mode="topk"), False), (dict(weights_in_pass=False), False),
                                        (dict(loss_impl="simple"), False)])
def test_rho1_takes_the_weighing_pass_where_it_is_position_local(toy, tmp_path, monkeypatch, keys, takes):
    """Rho-1 (cached reference CE) under 'heads' trains through the one pass with its
    weights inside it, and takes the same steps as through the two passes (losses and
    gradient norms to float rounding); 'tokens', 'topk', weights_in_pass=False and the
    simple path do not take it."""
    toy_data, ref = toy
    base = dict(weighting="rho1", ref_init_from=ref, max_iters=3, eval_interval=3, loss_chunk=7, dropout=0.1)
    calls = []
    weighing = mtp_loss.forward_backward_weighing
    monkeypatch.setattr(mtp_loss, "forward_backward_weighing",
                        lambda *a, **k: calls.append(1) or weighing(*a, **k))
    train.train(tiny_cfg(toy_data, tmp_path / "a", **base, **keys))
    assert len(calls) == (3 * 2 if takes else 0)
    if takes:
        train.train(tiny_cfg(toy_data, tmp_path / "b", **base, weights_in_pass=False))
        a, b = train_rows(tmp_path / "b"), train_rows(tmp_path / "a")
        assert sorted(a) == sorted(b) == [1, 2, 3]
        for it in a:
            assert b[it][0] == pytest.approx(a[it][0], rel=1e-5)
            assert b[it][1] == pytest.approx(a[it][1], rel=1e-4)


# ---- optional fused kernels: refused clearly where they cannot run ----------------------
@pytest.fixture
def installed(monkeypatch):
    """Pretend a package version is installed (None: not installed), for the kernel gate."""
    import importlib.metadata

    def pretend(versions):
        def version(name):
            if versions.get(name) is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]
        monkeypatch.setattr(importlib.metadata, "version", version)
        mtp_loss.check_kernel.cache_clear()
    yield pretend
    mtp_loss.check_kernel.cache_clear()


def test_version_tuple():
    assert mtp_loss.version_tuple("0.8.2") == (0, 8, 2)
    assert mtp_loss.version_tuple("0.8.2.post1") == (0, 8, 2)
    assert mtp_loss.version_tuple("0.10.0rc1") == (0, 10, 0)
    assert mtp_loss.version_tuple("0.8.1+cu121") == (0, 8, 1)
    assert mtp_loss.version_tuple("0.10.0") > mtp_loss.version_tuple("0.8.2") > mtp_loss.version_tuple("0.8.1")


def test_liger_before_the_reduction_none_fix_is_refused(installed):
    """liger-kernel < 0.8.2 scaled every row's gradient by grad_output[0] under
    reduction='none': refused whatever the device, with what to install."""
    for old in ("0.8.1", "0.7.0", "0.5.10"):
        installed({"liger-kernel": old})
        with pytest.raises(ImportError, match=f"needs liger-kernel >= 0.8.2: {old} is installed"):
            mtp_loss.check_kernel("liger", "cuda")
    installed({"liger-kernel": None})
    with pytest.raises(ImportError, match=r"pip install 'liger-kernel>=0.8.2'"):
        mtp_loss.check_kernel("liger", "cuda")
    installed({"cut-cross-entropy": None})
    with pytest.raises(ImportError, match="pip install 'cut-cross-entropy'"):
        mtp_loss.check_kernel("cce", "cuda")


def test_fused_kernels_refuse_the_cpu(installed):
    installed({"liger-kernel": "0.8.2", "cut-cross-entropy": "25.1.1"})
    for kernel in ("liger", "cce"):
        with pytest.raises(ValueError, match="runs on CUDA only"):
            mtp_loss.check_kernel(kernel, "cpu")
        m = tiny_model()
        tokens, mask, targets = batch()
        with pytest.raises(ValueError, match="runs on CUDA only"):   # before any import
            mtp_loss.forward(m, tokens, targets, kernel=kernel)
    with pytest.raises(ValueError, match="loss_kernel must be one of"):
        mtp_loss.check_kernel("triton", "cuda")
    assert mtp_loss.check_kernel("torch", "cpu") is None


def test_train_refuses_a_kernel_it_cannot_run_before_training(toy, tmp_path, installed):
    toy_data, _ = toy
    installed({"liger-kernel": "0.8.0"})
    with pytest.raises(ImportError, match="0.8.0 is installed"):
        train.train(tiny_cfg(toy_data, tmp_path, loss_kernel="liger"))
    assert not (tmp_path / "log.jsonl").exists()
