"""
Rho-1's reference scoring at scale (reference.score_reference_sharded): head 1 only and
chunked, samples sorted by length and sharded over ranks, the same cache as the simple
scorer (data.score_reference); samples beyond the reference's context counted and refused
when the run could train on them. The horizon-matched reference (rho1_ref='matched'): its
own head-k CE at t of x_{t+k}, against a hand loop, cached == online, its own cache file.

    OMP_NUM_THREADS=1 python -m pytest tests/test_reference_scoring.py -q
"""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import reference
import train
import weights
from model import mtp_cross_entropy, mtp_targets
from test_schemes import toy  # noqa: F401  (toy data + a trained reference)
from test_train import overrides, read_log, run_train, tiny_cfg
from test_schemes import same_losses


def test_sharded_scorer_equals_the_simple_one(toy, tmp_path):
    """One process, chunks that do not divide the rows: data.score_reference's numbers."""
    toy_data, ref_dir = toy
    enc = data.get_tokenizer("bytes")
    ref, _ = reference.load_reference(ref_dir, "cpu", data.tokenizer_identity(enc))
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    want = data.score_reference(ref, split, batch_size=7)
    c = SimpleNamespace(block_size=24, batch_size=5, loss_chunk=13)
    reference.score_reference_sharded(ref, split, str(tmp_path / "ce.bin"), c,
                                  torch.autocast("cpu", enabled=False), "cpu", 0, 1, False)
    got = np.fromfile(tmp_path / "ce.bin", dtype=np.float32)
    assert got.shape == want.shape and not os.path.exists(tmp_path / "ce.bin.scoring")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_samples_beyond_the_references_context(toy, tmp_path):
    toy_data, ref_dir = toy
    enc = data.get_tokenizer("bytes")
    ref, _ = reference.load_reference(ref_dir, "cpu", data.tokenizer_identity(enc))
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    limit = int(split.index[:, 1].max()) - 1           # the longest samples are too long
    ref.config.max_seq_len = limit
    n_long = int((split.index[:, 1] > limit).sum())
    assert n_long > 0
    ctx = torch.autocast("cpu", enabled=False)
    c = SimpleNamespace(block_size=64, batch_size=8, loss_chunk=0)
    with pytest.raises(ValueError, match=f"{n_long} of {len(split)} samples"):
        reference.score_reference_sharded(ref, split, str(tmp_path / "a.bin"), c, ctx, "cpu", 0, 1, False)
    c.block_size = limit   # the run never trains on them: scored without them, counted
    reference.score_reference_sharded(ref, split, str(tmp_path / "b.bin"), c, ctx, "cpu", 0, 1, False)
    got = np.fromfile(tmp_path / "b.bin", dtype=np.float32)
    for i in range(len(split)):
        start, length = split.index[i, :2]
        if length > limit:
            assert not got[start:start + length].any(), i
        else:
            assert got[start + 1:start + length].all(), i


@pytest.mark.slow
@pytest.mark.parametrize("rho1_ref", ["next_token", "matched"])
def test_two_ranks_write_the_one_rank_cache(toy, tmp_path, request, rho1_ref):
    toy_data, ref_dir = toy
    if rho1_ref == "matched":   # (n_tokens, 2) rows, each rank its own samples
        ref_dir = request.getfixturevalue("ref3")
    keys = dict(weighting="rho1", ref_init_from=ref_dir, rho1_ref=rho1_ref, max_iters=1, eval_interval=100)
    one = tiny_cfg(toy_data, tmp_path / "one", ref_ce_cache=str(tmp_path / "one.bin"), **keys)
    train.train(one)
    two = dict(one, out_dir=str(tmp_path / "two"), ref_ce_cache=str(tmp_path / "two.bin"))
    p = run_train(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *overrides(two)])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "(2 process(es))" in out
    a = np.fromfile(tmp_path / "one.bin", dtype=np.float32)
    b = np.fromfile(tmp_path / "two.bin", dtype=np.float32)
    np.testing.assert_array_equal(a, b)


# ---- the horizon-matched reference (rho1_ref='matched') ---------------------------------
@pytest.fixture(scope="module")
def ref3(toy, tmp_path_factory):
    """A reference with 3 heads: a briefly trained run of this codebase."""
    toy_data, _ = toy
    d = tmp_path_factory.mktemp("ref3")
    train.train(tiny_cfg(toy_data, d, n_layer=3, n_future=3, max_iters=4, eval_interval=4))
    return str(d)


def load(ref_dir, heads=0):
    enc = data.get_tokenizer("bytes")
    return reference.load_reference(ref_dir, "cpu", data.tokenizer_identity(enc), heads=heads)


@pytest.mark.parametrize("heads", [2, 3])
def test_matched_cache_is_each_heads_ce_at_t(toy, ref3, tmp_path, heads):
    """cache[start + t, k-1] = CE(head k's logits at t, x_{t+k}) for t + k inside the sample,
    0 past its end: a loop over (t, k) on each sample alone; the sharded scorer, the simple
    one and the online path (on the model's own targets, as training calls it) agree."""
    toy_data, _ = toy
    ref, _ = load(ref3, heads)
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    simple = data.score_reference(ref, split, batch_size=7, heads=heads)
    c = SimpleNamespace(block_size=24, batch_size=5, loss_chunk=13)
    reference.score_reference_sharded(ref, split, str(tmp_path / "ce.bin"), c,
                                  torch.autocast("cpu", enabled=False), "cpu", 0, 1, False, heads)
    sharded = np.fromfile(tmp_path / "ce.bin", dtype=np.float32).reshape(-1, heads)
    assert simple.shape == sharded.shape == (len(split.tokens), heads)
    np.testing.assert_allclose(sharded, simple, rtol=1e-5, atol=1e-6)
    for i in range(0, len(split), 23):
        tokens, _ = split.sample(i)
        start, L = split.index[i, :2]
        x = torch.as_tensor(tokens.astype(np.int64))[None]
        with torch.no_grad():
            logits = ref(x)[0]                                       # (L, 3, V)
        for t in range(L):
            for k in range(1, heads + 1):
                want = F_ce(logits[t, k - 1], x[0, t + k]) if t + k < L else 0.0
                assert sharded[start + t, k - 1] == pytest.approx(want, rel=1e-4, abs=1e-5), (i, t, k)
    loader = data.Loader(split, 5, 64, seed=0, correct_only=False, pad_id=256, token_fields={"ref_ce": sharded})
    mb = loader.collate(list(range(5)))
    targets = mtp_targets(mb["tokens"], mb["loss_mask"], heads)
    online = reference.online_ref_ce(ref, mb["tokens"], torch.autocast("cpu", enabled=False), 0, targets)
    assert online.shape == mb["ref_ce"].shape == (*mb["tokens"].shape, heads)
    valid = targets >= 0
    torch.testing.assert_close(online[valid], mb["ref_ce"][valid], rtol=1e-4, atol=1e-5)
    assert (online[~valid] == 0).all()


def F_ce(logits, target):
    return torch.nn.functional.cross_entropy(logits[None].float(), target[None]).item()


def test_matched_weights_are_uniform_when_the_model_is_the_reference(toy, ref3):
    """Model == reference: under 'matched' every excess is 0, so the softmax over the heads
    is flat (the baseline's weights); under 'next_token' head 1's excess is 0 but heads 2, 3
    still carry the horizon gap, and the weight moves to them."""
    toy_data, _ = toy
    ref, _ = load(ref3, 3)
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    mb = data.Loader(split, 6, 64, seed=0, correct_only=True, pad_id=256).collate(list(range(6)))
    targets = mtp_targets(mb["tokens"], mb["loss_mask"], 3)
    valid = targets >= 0
    with torch.no_grad():
        ce = mtp_cross_entropy(ref(mb["tokens"]), targets)               # the model's ce (B, T, 3)
    ctx = torch.autocast("cpu", enabled=False)
    cfg = SimpleNamespace(weight_norm="heads", temperature=1.0, min_ce_diff=0.0, rho1_mode="abs",
                          weight_top_frac=0.0, weight_top_p=1.0, w_min=0.0, w_max=0.0,
                          rho1_ref="matched")
    w = weights.rho1(ce, valid, ref_ce=reference.online_ref_ce(ref, mb["tokens"], ctx, 0, targets), cfg=cfg)
    torch.testing.assert_close(w, valid.float(), rtol=0, atol=1e-4)
    cfg.rho1_ref = "next_token"
    w = weights.rho1(ce, valid, ref_ce=reference.online_ref_ce(ref, mb["tokens"], ctx), cfg=cfg)
    full = valid.all(-1)                                                 # positions with 3 heads
    mass = w[full].mean(0)
    assert mass[0] < mass[1] < mass[2] and mass[0] < 1 < mass[2], mass   # the far heads gain


def test_matched_cache_and_online_train_identically(toy, ref3, tmp_path):
    toy_data, _ = toy
    cached = tiny_cfg(toy_data, tmp_path / "cache", weighting="rho1", ref_init_from=ref3,
                      rho1_ref="matched", ref_ce_cache=str(tmp_path / "ref_ce.bin"), max_iters=6,
                      length_buckets=True)
    train.train(cached)
    found = json.load(open(tmp_path / "ref_ce.bin.json"))
    assert found["rho1_ref"] == "matched" and found["heads"] == 2
    train.train(dict(cached, out_dir=str(tmp_path / "online"), ref_ce_mode="online"))
    same_losses(tmp_path / "cache", tmp_path / "online", rel=1e-5)
    rows = [r for r in read_log(tmp_path / "cache") if "w_mean" in r]
    assert rows and any(r["w_std"] > 0.01 for r in rows)


def test_the_two_modes_never_share_a_cache(toy, ref3, tmp_path):
    """Default files differ by mode; a next-token cache named explicitly is refused by a
    matched run (and the other way round), not read with the wrong shape."""
    toy_data, _ = toy
    ref, ref_hash = load(ref3, 2)
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    shutil.copytree(split.path, tmp_path / "train")
    split = data.PreparedSplit(str(tmp_path / "train"))
    c = SimpleNamespace(ref_ce_cache="", rho1_ref="next_token", n_future=2, block_size=24,
                        batch_size=8, loss_chunk=0)
    nxt = reference.reference_cache(c, split, ref, ref_hash, "cpu", True, False)
    c.rho1_ref = "matched"
    mat = reference.reference_cache(c, split, ref, ref_hash, "cpu", True, False)
    assert nxt.shape == (len(split.tokens),) and mat.shape == (len(split.tokens), 2)
    assert sorted(f for f in os.listdir(split.path) if f.startswith("ref_ce")) == [
        f"ref_ce-{ref_hash}.bin", f"ref_ce-{ref_hash}.bin.json",
        f"ref_ce_matched2-{ref_hash}.bin", f"ref_ce_matched2-{ref_hash}.bin.json"]
    for mode, other in (("matched", f"ref_ce-{ref_hash}.bin"), ("next_token", f"ref_ce_matched2-{ref_hash}.bin")):
        c.rho1_ref, c.ref_ce_cache = mode, os.path.join(split.path, other)
        with pytest.raises(ValueError, match="another rho1_ref"):
            reference.reference_cache(c, split, ref, ref_hash, "cpu", True, False)


def test_matched_needs_as_many_reference_heads(toy, tmp_path):
    """The toy reference has one head; a 2-head run under 'matched' stops before training."""
    toy_data, ref_dir = toy
    with pytest.raises(ValueError, match=r"needs >= 2 heads, this one has 1.*rho1_ref='next_token'"):
        train.train(tiny_cfg(toy_data, tmp_path, weighting="rho1", ref_init_from=ref_dir,
                             rho1_ref="matched"))
    ce, valid = torch.rand(1, 5, 2), torch.ones(1, 5, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="has 1 heads, the model 2"):
        weights.rho1_excess(ce, torch.rand(1, 5, 1), "abs")
    cfg = SimpleNamespace(rho1_ref="matched", rho1_mode="abs")
    with pytest.raises(ValueError, match=r"needs ref_ce of shape \(B, T, H\)"):
        weights.rho1(ce, valid, ref_ce=torch.rand(1, 5), cfg=cfg)


def test_pad_to_bucket_pads_per_head_reference_ce():
    mb = {"tokens": torch.ones(2, 5, dtype=torch.long), "loss_mask": torch.ones(2, 5, dtype=torch.bool),
          "ref_ce": torch.rand(2, 5, 3)}
    ref = mb["ref_ce"].clone()
    out = data.pad_to_bucket(mb, 128, 0)
    assert out["ref_ce"].shape == (2, 64, 3) and out["tokens"].shape == (2, 64)
    assert torch.equal(out["ref_ce"][:, :5], ref) and not out["ref_ce"][:, 5:].any()
