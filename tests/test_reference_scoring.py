"""
Rho-1's reference scoring at scale (train.score_reference_sharded): head 1 only and
chunked, samples sorted by length and sharded over ranks, the same cache as the simple
scorer (data.score_reference); samples beyond the reference's context counted and refused
when the run could train on them.

    OMP_NUM_THREADS=1 python -m pytest tests/test_reference_scoring.py -q
"""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import train
from test_schemes import toy  # noqa: F401  (toy data + a trained reference)
from test_train import overrides, run_train, tiny_cfg


def test_sharded_scorer_equals_the_simple_one(toy, tmp_path):
    """One process, chunks that do not divide the rows: data.score_reference's numbers."""
    toy_data, ref_dir = toy
    enc = data.get_tokenizer("bytes")
    ref, _ = train.load_reference(ref_dir, "cpu", data.tokenizer_identity(enc))
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    want = data.score_reference(ref, split, batch_size=7)
    c = SimpleNamespace(block_size=24, batch_size=5, loss_chunk=13)
    train.score_reference_sharded(ref, split, str(tmp_path / "ce.bin"), c,
                                  torch.autocast("cpu", enabled=False), "cpu", 0, 1, False)
    got = np.fromfile(tmp_path / "ce.bin", dtype=np.float32)
    assert got.shape == want.shape and not os.path.exists(tmp_path / "ce.bin.scoring")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_samples_beyond_the_references_context(toy, tmp_path):
    toy_data, ref_dir = toy
    enc = data.get_tokenizer("bytes")
    ref, _ = train.load_reference(ref_dir, "cpu", data.tokenizer_identity(enc))
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    limit = int(split.index[:, 1].max()) - 1           # the longest samples are too long
    ref.config.max_seq_len = limit
    n_long = int((split.index[:, 1] > limit).sum())
    assert n_long > 0
    ctx = torch.autocast("cpu", enabled=False)
    c = SimpleNamespace(block_size=64, batch_size=8, loss_chunk=0)
    with pytest.raises(ValueError, match=f"{n_long} of {len(split)} samples"):
        train.score_reference_sharded(ref, split, str(tmp_path / "a.bin"), c, ctx, "cpu", 0, 1, False)
    c.block_size = limit   # the run never trains on them: scored without them, counted
    train.score_reference_sharded(ref, split, str(tmp_path / "b.bin"), c, ctx, "cpu", 0, 1, False)
    got = np.fromfile(tmp_path / "b.bin", dtype=np.float32)
    for i in range(len(split)):
        start, length = split.index[i, :2]
        if length > limit:
            assert not got[start:start + length].any(), i
        else:
            assert got[start + 1:start + length].all(), i


@pytest.mark.slow
def test_two_ranks_write_the_one_rank_cache(toy, tmp_path):
    toy_data, ref_dir = toy
    keys = dict(weighting="rho1", ref_init_from=ref_dir, max_iters=1, eval_interval=100)
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
