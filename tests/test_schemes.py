"""
Rho-1, the Verifiable Critic and the controls through the real training loop: reference
alignment and caching, tokenizer checks, identical plumbing for every arm, the critic's
two stages.

    python -m pytest tests/test_schemes.py -q
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import checkpoint
import reference
import train
import weights
from model import ModelConfig, Transformer
from test_train import make_toy_data, read_log, tiny_cfg, train_rows


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemes")
    toy_data = make_toy_data(str(root / "data"))
    ref_dir = root / "ref"   # a reference trained on correct solutions, as the method says
    train.train(tiny_cfg(toy_data, ref_dir, max_iters=30, eval_interval=30, n_future=1,
                         n_layer=2))
    return toy_data, str(ref_dir)


def same_losses(a, b, rel=0.0):
    ra, rb = train_rows(a), train_rows(b)
    assert sorted(ra) == sorted(rb)
    for it in ra:
        assert ra[it][0] == pytest.approx(rb[it][0], rel=rel, abs=0), it


def test_uniform_weights_through_every_path_reproduce_the_baseline(toy, tmp_path, monkeypatch):
    toy_data, ref_dir = toy
    train.train(tiny_cfg(toy_data, tmp_path / "base"))
    flat = lambda ce, valid, **kw: valid.float()
    for name in ("rho1", "critic"):   # each still reads its inputs: only its function is flat
        monkeypatch.setitem(weights.SCHEMES, name, weights.SCHEMES[name]._replace(fn=flat))
    train.train(tiny_cfg(toy_data, tmp_path / "rho1", weighting="rho1", ref_init_from=ref_dir,
                         weights_in_pass=False))
    same_losses(tmp_path / "base", tmp_path / "rho1")
    # rho1's one pass with its weights inside it (the registered function, flat here, called
    # on rows): the same numbers up to float rounding (its sums run in another order)
    train.train(tiny_cfg(toy_data, tmp_path / "rho1_one", weighting="rho1", ref_init_from=ref_dir))
    same_losses(tmp_path / "base", tmp_path / "rho1_one", rel=1e-6)
    # the critic's extra value loss switched off and no pre-training: the same numbers, up
    # to float rounding (the value head's zero gradients join the clipping norm's sum)
    train.train(tiny_cfg(toy_data, tmp_path / "critic", weighting="critic", value_coef=0.0,
                         critic_pretrain_epochs=0.0))
    same_losses(tmp_path / "base", tmp_path / "critic", rel=1e-6)


def test_critic_lm_step_is_the_baselines(toy, tmp_path, monkeypatch):
    """The LM and the value head are clipped separately: with its weights set to 1 and its
    value loss on, the critic arm's LM trains exactly like the baseline's (a joint norm gave
    its LM a 2-7% smaller step at the same LM gradient), and logs the baseline's loss."""
    toy_data, _ = toy
    monkeypatch.setitem(weights.SCHEMES, "critic",
                        weights.SCHEMES["critic"]._replace(fn=lambda ce, valid, **kw: valid.float()))
    keys = dict(max_iters=8, eval_interval=100, grad_clip=0.5)
    train.train(tiny_cfg(toy_data, tmp_path / "base", **keys))
    train.train(tiny_cfg(toy_data, tmp_path / "critic", weighting="critic", value_coef=1.0,
                         critic_pretrain_epochs=0.0, **keys))
    a = checkpoint.load_checkpoint(str(tmp_path / "base"))["model"]
    b = checkpoint.load_checkpoint(str(tmp_path / "critic"))["model"]
    assert set(b) - set(a) and all(k.startswith("value_head.") for k in set(b) - set(a))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7, msg=k)
    rows = [r for r in read_log(tmp_path / "critic") if "value_grad_norm" in r]
    assert rows and all(r["value_grad_norm"] > 0 for r in rows)   # the value head did learn
    assert any(r["grad_norm"] > 0.5 for r in rows)                  # and clipping was active
    # its logged `loss` is the LM loss, the baseline's, without value_coef * value_loss
    # (5.84 against 6.58 at iter 1 when it held it): one axis for all arms (report.py)
    assert all(r["value_loss"] > 1e-3 for r in rows)
    same_losses(tmp_path / "base", tmp_path / "critic", rel=1e-5)


def test_tokens_norm_with_dropout_keeps_the_step_mean(toy, tmp_path):
    """weight_norm='tokens' with accumulation: the pre-pass draws the main pass's dropout
    masks, so the step's weights have mean exactly 1 (they were 48.10/47.77/47.24 of 48
    at dropout 0.2 when the pre-pass drew its own)."""
    toy_data, ref_dir = toy
    train.train(tiny_cfg(toy_data, tmp_path, weighting="rho1", ref_init_from=ref_dir,
                         ref_ce_cache=str(tmp_path / "ref_ce.bin"), weight_norm="tokens",
                         dropout=0.2, max_iters=6, eval_interval=100))
    means = [r["w_step_mean"] for r in read_log(tmp_path) if "w_step_mean" in r]
    assert len(means) == 6
    assert means == pytest.approx([1.0] * 6, abs=1e-5)


@pytest.mark.parametrize("arm", ["rho1", "critic"])
def test_tokens_norm_over_the_whole_step(toy, tmp_path, monkeypatch, arm):
    """weight_norm='tokens' normalises over the optimizer step: 2 micro-batches of 4 train
    exactly like one batch of 8 (same samples: no length grouping)."""
    toy_data, ref_dir = toy
    keys = dict(weight_norm="tokens", group_by_length=False, max_iters=6, eval_interval=100,
                ref_ce_cache=str(tmp_path / "ref_ce.bin"),
                **(dict(weighting="rho1", ref_init_from=ref_dir) if arm == "rho1" else
                   dict(weighting="critic", train_on="all", critic_pretrain_epochs=0.0)))
    train.train(tiny_cfg(toy_data, tmp_path / "one", batch_size=8, gradient_accumulation_steps=1, **keys))
    train.train(tiny_cfg(toy_data, tmp_path / "acc", batch_size=4, gradient_accumulation_steps=2, **keys))
    same_losses(tmp_path / "one", tmp_path / "acc", rel=1e-5)
    # without the step-wide rescale each micro-batch has its own mean 1: other losses
    monkeypatch.setattr(weights, "step_scale", lambda *a: 1.0)
    train.train(tiny_cfg(toy_data, tmp_path / "micro", batch_size=4, gradient_accumulation_steps=2, **keys))
    with pytest.raises(AssertionError):
        same_losses(tmp_path / "one", tmp_path / "micro", rel=1e-5)


def test_tokens_norm_one_pass_is_the_two_pass_step(toy, tmp_path, monkeypatch):
    """A scheme registered before_ce (one pass) whose weights vary, under
    weight_norm='tokens' with accumulation, gets the step-wide rescale too: it trains as on
    two passes, bit for bit, not with each micro-batch normalised on its own."""
    toy_data, _ = toy
    def by_position(ce, valid, cfg=None, norm_stats=None, **_):   # reads no CE
        score = torch.arange(1.0, valid.shape[1] + 1, device=valid.device)[None, :, None]
        return weights.normalize(score.expand(valid.shape), valid, cfg.weight_norm, stats=norm_stats)
    monkeypatch.setitem(weights.SCHEMES, "by_position", weights.Scheme(by_position, reads=()))
    keys = dict(weighting="by_position", weight_norm="tokens", max_iters=4, eval_interval=100)
    train.train(tiny_cfg(toy_data, tmp_path / "two", **keys))
    calls = []
    one_pass = train.mtp_loss.forward_backward
    monkeypatch.setattr(train.mtp_loss, "forward_backward", lambda *a, **k: calls.append(1) or one_pass(*a, **k))
    monkeypatch.setitem(weights.SCHEMES, "by_position", weights.Scheme(by_position, reads=(), before_ce=True))
    train.train(tiny_cfg(toy_data, tmp_path / "one", **keys))
    assert len(calls) == 4 * 2                                       # one pass, every micro-batch
    same_losses(tmp_path / "two", tmp_path / "one")


def bigram_reference(path, enc, V=320, seed=0):
    """A reference whose CE is known per token: every block is switched off (zero output
    projections), so its logits at j depend on x_j alone through a table we choose."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, n_layer=1, n_future=1, n_head=2, n_kv_head=1, d_model=32,
                      d_ff=32, max_seq_len=64, tie_embeddings=False)
    m = Transformer(cfg)
    with torch.no_grad():
        for blk in m.layers:
            blk.attention.wo.weight.zero_()
            blk.feed_forward.w2.weight.zero_()
        m.output.weight.normal_(0, 1.0)
    table = m.output(m.norm(m.tok_embeddings.weight))                # (V, V): logits given x_j
    os.makedirs(path, exist_ok=True)
    checkpoint.save_checkpoint(os.path.join(path, "ckpt.pt"), {
        "model": m.state_dict(), "model_args": cfg.__dict__, "iter_num": 0,
        "tokenizer": data.tokenizer_identity(enc)})
    return table.detach()


def test_reference_cache_alignment_is_exact(toy, tmp_path):
    toy_data, _ = toy
    enc = data.get_tokenizer("bytes")
    table = bigram_reference(str(tmp_path / "ref"), enc)
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    ref, ref_hash = reference.load_reference(str(tmp_path / "ref"), "cpu", data.tokenizer_identity(enc))
    ce = data.score_reference(ref, split, batch_size=7)
    for i in range(0, len(split), 37):
        tokens, _ = split.sample(i)
        start = split.index[i, 0]
        t = torch.as_tensor(tokens.astype(np.int64))
        # CE of token j is the table's row for x_{j-1}; the first token has none
        expected = F.cross_entropy(table[t[:-1]], t[1:], reduction="none")
        got = torch.from_numpy(np.array(ce[start:start + len(t)]))
        assert got[0] == 0
        torch.testing.assert_close(got[1:], expected, rtol=1e-4, atol=1e-4)
    # the online path computes the same numbers from a padded batch
    loader = data.Loader(split, 5, 64, seed=0, correct_only=False, pad_id=256, token_fields={"ref_ce": ce})
    mb = loader.collate(list(range(5)))
    online = reference.online_ref_ce(ref, mb["tokens"], torch.autocast("cpu", enabled=False))
    for b in range(5):
        L = mb["lengths"][b]
        torch.testing.assert_close(online[b, :L], mb["ref_ce"][b, :L], rtol=1e-4, atol=1e-4)


def test_rho1_cache_and_online_train_identically(toy, tmp_path):
    toy_data, ref_dir = toy
    cached = tiny_cfg(toy_data, tmp_path / "cache", weighting="rho1", ref_init_from=ref_dir,
                      ref_ce_cache=str(tmp_path / "ref_ce.bin"))
    train.train(cached)
    assert os.path.exists(tmp_path / "ref_ce.bin.json")
    train.train(dict(cached, out_dir=str(tmp_path / "online"), ref_ce_mode="online"))
    same_losses(tmp_path / "cache", tmp_path / "online", rel=1e-5)
    rows = [r for r in read_log(tmp_path / "cache") if "w_mean" in r]
    assert rows and all(r["w_mean"] == pytest.approx(1.0, abs=1e-4) for r in rows)
    assert any(r["w_std"] > 0.01 for r in rows)          # the weights are not uniform
    assert os.path.exists(tmp_path / "cache" / "weight_hist.npz")


def test_reference_cache_for_other_data_is_refused(toy, tmp_path):
    toy_data, ref_dir = toy
    cfg = tiny_cfg(toy_data, tmp_path / "a", weighting="rho1", ref_init_from=ref_dir,
                   ref_ce_cache=str(tmp_path / "ref_ce.bin"), max_iters=2)
    train.train(cfg)
    meta = json.load(open(tmp_path / "ref_ce.bin.json"))
    json.dump({**meta, "data_hash": "0123456789abcdef"}, open(tmp_path / "ref_ce.bin.json", "w"))
    with pytest.raises(ValueError, match="other data, another reference"):
        train.train(dict(cfg, out_dir=str(tmp_path / "b")))


def test_reference_with_another_tokenizer_is_refused(toy, tmp_path):
    toy_data, ref_dir = toy
    ckpt = torch.load(os.path.join(ref_dir, "ckpt.pt"), weights_only=False)
    ckpt["tokenizer"] = {"name": "gpt2", "n_vocab": 50257, "sha256": "fa8a46d958916501"}
    os.makedirs(tmp_path / "ref")
    torch.save(ckpt, tmp_path / "ref" / "ckpt.pt")
    with pytest.raises(ValueError, match="tokenizer mismatch for reference"):
        train.train(tiny_cfg(toy_data, tmp_path / "out", weighting="rho1",
                             ref_init_from=str(tmp_path / "ref")))


def test_critic_two_stages(toy, tmp_path):
    toy_data, _ = toy
    cfg = tiny_cfg(toy_data, tmp_path / "critic", weighting="critic", train_on="all",
                   critic_pretrain_epochs=0.1, max_iters=8)
    out = train.train(cfg)
    n_all = data.PreparedSplit(os.path.join(toy_data, "train")).meta["n_samples"]
    assert out["pretrain_iters"] == int(np.ceil(0.1 * n_all / 8))
    rows = [r for r in read_log(tmp_path / "critic") if "loss" in r]
    stages = [r["stage"] for r in rows]
    assert stages == ["value_pretrain"] * out["pretrain_iters"] + ["main"] * 8
    assert all("value_loss" in r for r in rows) and any("value_drift" in r for r in rows)
    assert any("val_value_auc" in r for r in read_log(tmp_path / "critic"))
    ckpt = torch.load(tmp_path / "critic" / "ckpt.pt", weights_only=False)
    assert ckpt["moments"]["count"] > 0                    # whitening statistics saved


@pytest.mark.parametrize("detach", [True, False])
def test_value_pretraining_leaves_the_lm_alone(toy, tmp_path, detach):
    """Value pre-training trains the value head; the LM heads never move, and the trunk
    moves only when the value loss may reach it (value_detach=False)."""
    toy_data, _ = toy
    cfg = tiny_cfg(toy_data, tmp_path, weighting="critic", train_on="all", n_layer=3,
                   critic_pretrain_epochs=0.05, max_iters=0, eval_interval=1000, value_detach=detach)
    out = train.train(cfg)
    assert out["pretrain_iters"] > 0
    trained = torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"]
    torch.manual_seed(cfg["seed"])
    fresh = Transformer(ModelConfig(**torch.load(tmp_path / "ckpt.pt", weights_only=False)["model_args"])).state_dict()
    for k in fresh:
        moved = not torch.equal(fresh[k], trained[k])
        if k.startswith(("layers.1.", "extra_heads.", "norm.")):   # heads 1, 2: untouched
            assert not moved, k
        if detach and not k.startswith("value_head."):             # nor anything of the LM
            assert not moved, k
    assert not torch.equal(fresh["value_head.out.weight"], trained["value_head.out.weight"])
    trunk_moved = not torch.equal(fresh["layers.0.attention.wq.weight"], trained["layers.0.attention.wq.weight"])
    assert trunk_moved == (not detach)


@pytest.mark.parametrize("mode", ["value_only", "signed"])
def test_incorrect_modes_run(toy, tmp_path, mode):
    toy_data, _ = toy
    out = train.train(tiny_cfg(toy_data, tmp_path, weighting="critic", train_on="all",
                               incorrect_mode=mode, critic_pretrain_epochs=0.02, max_iters=4,
                               reward="pm1"))
    assert all(np.isfinite(out["train_losses"]))


def test_critic_resume_is_exact(toy, tmp_path):
    toy_data, _ = toy
    cfg = tiny_cfg(toy_data, tmp_path / "full", weighting="critic", train_on="all",
                   critic_pretrain_epochs=0.05, max_iters=6, eval_interval=4)
    train.train(cfg)
    part = dict(cfg, out_dir=str(tmp_path / "part"))
    train.train(dict(part, max_iters=2))                  # stops (and saves) at iter 4
    train.train(dict(part, init_from="resume"))
    same_losses(tmp_path / "full", tmp_path / "part")
    # the weight diagnostics and the sample the random-matched control draws from span the
    # whole run, not only what followed the resume
    for f in ("weight_hist.npz", "weights_sample.npy"):
        a, b = np.load(tmp_path / "full" / f), np.load(tmp_path / "part" / f)
        if f.endswith(".npz"):
            a, b = a["counts"], b["counts"]
        assert np.array_equal(a, b), f


def test_controls(toy, tmp_path):
    toy_data, ref_dir = toy
    rho = tiny_cfg(toy_data, tmp_path / "rho1", weighting="rho1", ref_init_from=ref_dir,
                   ref_ce_cache=str(tmp_path / "ref_ce.bin"))
    train.train(rho)
    sample = np.load(tmp_path / "rho1" / "weights_sample.npy")
    assert sample.mean() == pytest.approx(1.0, abs=0.05)
    train.train(dict(rho, out_dir=str(tmp_path / "shuf"), weighting="shuffled", control_of="rho1"))
    train.train(dict(rho, out_dir=str(tmp_path / "rand"), weighting="random_matched",
                     control_weights=str(tmp_path / "rho1")))
    for run in ("shuf", "rand"):
        rows = [r for r in read_log(tmp_path / run) if "w_mean" in r]
        assert rows and all(np.isfinite(r["loss"]) for r in rows)
    # random_matched draws only values that the source run logged
    with pytest.raises(FileNotFoundError, match="control_weights"):
        train.train(dict(rho, out_dir=str(tmp_path / "x"), weighting="random_matched",
                         control_weights=str(tmp_path / "nowhere")))


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["rho1", "critic", "shuffled", "random_matched", "rho1_tokens"])
def test_torchrun_two_processes_match_one(toy, tmp_path, arm):
    """Every scheme under 2-process torchrun (gloo) gives the single process's losses:
    weights, whitening statistics and the value memory are synchronised across ranks."""
    from test_train import overrides, run_train
    toy_data, ref_dir = toy
    keys = {"rho1": dict(weighting="rho1", ref_init_from=ref_dir),
            "rho1_tokens": dict(weighting="rho1", ref_init_from=ref_dir, weight_norm="tokens"),
            "random_matched": dict(weighting="random_matched", control_weights=str(tmp_path / "src")),
            "critic": dict(weighting="critic", train_on="all", critic_pretrain_epochs=0.05,
                           value_anchor_coef=0.1),
            "shuffled": dict(weighting="shuffled", control_of="critic", train_on="all",
                             critic_pretrain_epochs=0.0)}[arm]
    if arm == "random_matched":   # the control draws from a finished weighted run's weights
        train.train(tiny_cfg(toy_data, tmp_path / "src", max_iters=6, eval_interval=100,
                             weighting="rho1", ref_init_from=ref_dir))
    one = tiny_cfg(toy_data, tmp_path / "one", max_iters=6, eval_interval=100,
                   ref_ce_cache=str(tmp_path / "ref_ce.bin"), **keys)
    train.train(one)
    p = run_train(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *overrides(dict(one, out_dir=str(tmp_path / "two")))])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    if arm in ("shuffled", "random_matched"):   # drawn per rank: same scale, other numbers
        rows = train_rows(tmp_path / "two")
        assert len(rows) == len(train_rows(tmp_path / "one"))
        assert all(np.isfinite(v[0]) for v in rows.values())
    else:
        same_losses(tmp_path / "one", tmp_path / "two", rel=1e-4)


@pytest.mark.slow
def test_value_head_learns_visible_correctness(tmp_path):
    """When correctness is visible in the text (a marker at the end of the solution), the
    critic's value head must learn to separate correct from incorrect solutions: the
    plumbing from is_correct to rewards, GAE targets and V(s_{e-1}) works."""
    import random
    enc = data.get_tokenizer("bytes")
    rng = random.Random(0)
    def samples(n):
        out = []
        for i in range(n):
            ok = rng.random() < 0.5
            a = rng.randint(0, 99)
            out.append({"problem_id": f"v{i}", "prompt": f"{a}:", "source": "toy",
                        "completion": f"{a}{'!' if ok else '?'}", "is_correct": ok})
        return out
    for split, n in (("train", 600), ("val", 200)):
        data.write_split(str(tmp_path / "d" / split), enc, samples(n), [], {"source": "toy"})
    out = train.train(tiny_cfg(str(tmp_path / "d"), tmp_path / "run", weighting="critic",
                               train_on="all", critic_pretrain_epochs=1.0, max_iters=40,
                               eval_interval=1000, block_size=16, learning_rate=3e-3,
                               value_surprise=False))   # the LM's surprise alone would tell them apart
    auc = [r["val_value_auc"] for r in read_log(tmp_path / "run") if "val_value_auc" in r]
    assert auc[0] < 0.7 < 0.95 < auc[-1], auc


def test_value_only_step_without_correct_samples(toy, tmp_path):
    # one sample per step: steps whose only sample is incorrect have no LM term at all
    # under 'value_only' (N = 0); they must train the critic, not divide by zero
    toy_data, _ = toy
    out = train.train(tiny_cfg(toy_data, tmp_path, weighting="critic", train_on="all",
                               incorrect_mode="value_only", critic_pretrain_epochs=0.0,
                               batch_size=1, max_iters=12, log_interval=1))
    assert all(np.isfinite(out["train_losses"]))
