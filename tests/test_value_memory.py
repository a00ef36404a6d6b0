"""The critic's value memory (critic.ValueMemory): sharded over the ranks, it recalls and
stores exactly what one full per-token array would, its file resumes on another number
of processes, and the clipped / anchored value loss reads it as the method says.

    OMP_NUM_THREADS=1 python -m pytest tests/test_value_memory.py -q
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import critic

N_SAMPLES, STEPS, B, G = 23, 12, 2, 2      # samples; steps; rows per micro-batch; micro-batches


def toy_split():
    """A split-like index (start, length, _, label) of N_SAMPLES samples with a gap of
    unused tokens between samples, and the ids a Loader would train on (every third
    sample left out, as long or incorrect ones are)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, N_SAMPLES)
    starts = np.cumsum(lengths + 2) - lengths - 2
    index = np.stack([starts, lengths, np.zeros_like(lengths), np.ones_like(lengths)], 1)
    split = SimpleNamespace(index=index, tokens=np.zeros(int(starts[-1] + lengths[-1] + 2)))
    return split, np.array([i for i in range(N_SAMPLES) if i % 3 != 1])


def step_batches(ids, step, world_size):
    """Every rank's micro-batches of one step: [rank][micro] -> dict like the Loader's,
    the same on every process (seeded by the step), samples repeating across steps."""
    rng = np.random.default_rng(100 + step)
    out = []
    for _ in range(world_size):
        micro = []
        for _ in range(G):
            sid = rng.choice(ids, B, replace=False)
            T = int(rng.integers(8, 12))    # >= the longest sample (8), as padded batches are
            micro.append({"sample_ids": torch.as_tensor(sid), "tokens": torch.zeros(B, T),
                          "values": torch.from_numpy(rng.standard_normal((B, T)).astype(np.float32))})
        out.append(micro)
    return out


def replay(split, ids, rank, world_size, anchor_at, memory=None, steps=STEPS):
    """Run `steps` steps of recall/store on ValueMemory (this rank's part) next to the one
    full per-token array every rank used to hold. Returns the memory; asserts that every
    recall equals the full array's, NaN for NaN."""
    ddp = world_size > 1
    memory = memory or critic.ValueMemory(split, ids, True, rank, world_size, "cpu")
    full = np.full((2, len(split.tokens)), np.nan, dtype=np.float32)
    for step in range(steps):
        if step == anchor_at:
            memory.freeze_anchor()
            full[1] = full[0]
        batches = step_batches(ids, step, world_size)
        for mb in (mb for micro in batches for mb in micro):
            mb["lengths"] = torch.as_tensor(split.index[mb["sample_ids"].numpy(), 1])
        micro = batches[rank]
        memory.recall(micro, ddp)
        for mb in micro:
            sid, n, T = mb["sample_ids"].numpy(), mb["lengths"].numpy(), mb["tokens"].shape[1]
            t = np.arange(T)
            pos, real = split.index[sid, 0][:, None] + t, t < n[:, None]
            for row, name in enumerate(("value_prev", "value_anchor")):
                want = np.full((len(sid), T), np.nan, dtype=np.float32)
                want[real] = full[row, pos[real]]
                np.testing.assert_array_equal(mb[name].numpy(), want)
        memory.store([(mb["sample_ids"], mb["lengths"], mb["values"]) for mb in micro], ddp)
        for mb in (mb for micro in batches for mb in micro):      # every rank's values
            sid, n = mb["sample_ids"].numpy(), mb["lengths"].numpy()
            t = np.arange(mb["tokens"].shape[1])
            pos, real = split.index[sid, 0][:, None] + t, t < n[:, None]
            full[0, pos[real]] = mb["values"].numpy()[real]
    return memory, full


def test_one_process_recalls_what_the_full_array_holds(tmp_path):
    split, ids = toy_split()
    memory, full = replay(split, ids, 0, 1, anchor_at=5)
    assert memory.host().shape == (2, split.index[ids, 1].sum())   # the trained samples' tokens only
    memory.save(str(tmp_path / "m.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), full)
    without = critic.ValueMemory(split, ids, False, 0, 1, "cpu")      # no anchor: one row
    assert without.host().shape == (1, split.index[ids, 1].sum())


def _two_ranks(rank, init_file, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        split, ids = toy_split()
        memory, full = replay(split, ids, rank, 2, anchor_at=5)
        memory.save(out)
        np.save(f"{out}.full{rank}.npy", full)
        np.save(f"{out}.size{rank}.npy", np.array(memory.host().shape))
    finally:
        dist.destroy_process_group()


def test_two_ranks_shard_it_and_one_resumes_it(tmp_path):
    """2 gloo processes: each holds half the tokens, every recall equals the full array's,
    the saved file is the full array, and 1 process resumes from it and goes on recalling
    what the full array would."""
    import torch.multiprocessing as mp
    out = str(tmp_path / "m.npy")
    mp.spawn(_two_ranks, args=(str(tmp_path / "init"), out), nprocs=2)
    split, ids = toy_split()
    full = np.load(f"{out}.full0.npy")
    np.testing.assert_array_equal(np.load(out), full)
    sizes = [np.load(f"{out}.size{r}.npy")[1] for r in range(2)]
    assert sum(sizes) == split.index[ids, 1].sum() and max(sizes) < 0.7 * sum(sizes)
    one = critic.ValueMemory(split, ids, True, 0, 1, "cpu")
    one.load(out)
    np.testing.assert_array_equal(one.host(), full[:, one.positions(0)])


def test_value_loss_clip_and_anchor_by_hand():
    mb = {"rewards": torch.tensor([[0.0, 1.0, 0.0]]), "states": torch.tensor([[True, True, False]]),
          "value_prev": torch.tensor([[0.0, 0.5, float("nan")]]),
          "value_anchor": torch.tensor([[0.2, 0.2, 0.2]])}
    values = torch.tensor([[0.9, 0.1, 0.0]], requires_grad=True)
    v = values.detach() * mb["states"]
    c = SimpleNamespace(gamma=1.0, lam=1.0, value_clip=0.2, value_anchor_coef=0.0)
    # gamma = lambda = 1: the returns are the reward-to-go, [1, 1, 0]
    ret = torch.tensor([1.0, 1.0])
    err0 = max((0.9 - 1) ** 2, (0.0 + 0.2 - 1) ** 2)      # clipped around old 0.0 -> 0.2
    err1 = max((0.1 - 1) ** 2, (0.5 - 0.2 - 1) ** 2)      # clipped around old 0.5 -> 0.3
    loss = critic.critic_value_loss(values, v, mb, c, n_states=2)
    assert loss.item() == pytest.approx((err0 + err1) / 2, rel=1e-5)
    c.value_clip, c.value_anchor_coef = 0.0, 0.5
    loss = critic.critic_value_loss(values, v, mb, c, n_states=2)
    plain = ((torch.tensor([0.9, 0.1]) - ret) ** 2).sum()
    anchor = 0.5 * ((0.9 - 0.2) ** 2 + (0.1 - 0.2) ** 2)
    assert loss.item() == pytest.approx((plain.item() + anchor) / 2, rel=1e-5)


def test_recall_and_store_never_read_the_device(monkeypatch):
    """The step's value memory stays on the device: recall and store never bring a tensor
    to the host (.item, .tolist, .numpy, .cpu are what would; on CUDA the sync-debug check
    below also catches the implicit syncs, like boolean-mask indexing)."""
    split, ids = toy_split()
    memory = critic.ValueMemory(split, ids, True, 0, 1, "cpu")
    micro = step_batches(ids, 0, 1)[0]
    for mb in micro:
        mb["lengths"] = torch.as_tensor(split.index[mb["sample_ids"].numpy(), 1])

    def host(*a, **k):
        raise AssertionError("a host read in the step")
    for name in ("item", "tolist", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, host)
    memory.store([(mb["sample_ids"], mb["lengths"], mb["values"]) for mb in micro], False)
    memory.recall(micro, False)
    monkeypatch.undo()
    sids = torch.cat([mb["sample_ids"] for mb in micro]).tolist()
    once = [(mb, b) for mb in micro for b, s in enumerate(mb["sample_ids"].tolist()) if sids.count(s) == 1]
    assert once
    for mb, b in once:   # what was stored comes back (the first 3 tokens: every sample has them)
        assert torch.equal(mb["value_prev"][b, :3], mb["values"][b, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the sync check needs CUDA")
def test_no_sync_on_cuda():
    split, ids = toy_split()
    memory = critic.ValueMemory(split, ids, True, 0, 1, "cuda")
    micro = step_batches(ids, 0, 1)[0]
    for mb in micro:
        mb["lengths"] = torch.as_tensor(split.index[mb["sample_ids"].numpy(), 1]).cuda()
        mb["sample_ids"], mb["values"] = mb["sample_ids"].cuda(), mb["values"].cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        memory.store([(mb["sample_ids"], mb["lengths"], mb["values"]) for mb in micro], False)
        memory.recall(micro, False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
