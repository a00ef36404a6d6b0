"""
Parallelism applied from outside the model (parallel.py): activation checkpointing leaves
the gradients alone; FSDP2 over 2 processes (gloo on CPU) builds the model on the meta
device and gets rank 0's weights (a fresh init, a run, a pretrained model) bit for bit,
takes the steps one process takes, and its checkpoint resumes on another world size.

    OMP_NUM_THREADS=1 python -m pytest tests/test_parallel.py -q     # -m "not slow" skips torchrun
"""
import pytest
import torch

import mtp_loss
import parallel
import checkpoint
import data
import train
import weights
from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_targets
from test_train import make_toy_data, overrides, read_log, run_train, tiny_cfg, train_rows


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("loss_impl", ["simple", "chunked"])
def test_activation_checkpointing_keeps_the_gradients(mode, loss_impl):
    def grads(ac):
        torch.manual_seed(0)
        m = Transformer(ModelConfig(vocab_size=40, n_layer=4, n_future=2, n_head=2, n_kv_head=1,
                                    d_model=16, d_ff=32, max_seq_len=16, dropout=0.1))
        c = type("C", (), dict(activation_checkpointing=ac, compile=False))
        parallel.parallelize(m, c, torch.float32, fsdp=False)
        tokens = torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(1))
        targets = mtp_targets(tokens, torch.ones_like(tokens, dtype=torch.bool), 2)
        valid = targets >= 0
        torch.manual_seed(2)   # dropout on: the recomputation must draw the same masks
        if loss_impl == "simple":
            weights.weighted_loss(mtp_cross_entropy(m(tokens), targets), valid.float(), valid.sum()).backward()
        else:
            mtp_loss.backward(mtp_loss.forward(m, tokens, targets), m, valid.float(), valid.sum())
        return {n: p.grad for n, p in m.named_parameters()}
    want, got = grads("none"), grads(mode)
    assert got.keys() == want.keys()   # parameter names (checkpoints) unchanged
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_data(str(tmp_path_factory.mktemp("toy")))


def fsdp_then_one(one, tmp_path):
    """Train `one` in this process for all its steps; the same config's first 3 steps under
    FSDP2 on 2 gloo processes, resumed in 1 process for the rest. Both runs' step rows must
    agree: (loss within 1e-5, gradient norm within 1e-4). Returns torchrun's output."""
    train.train(one)
    two = dict(one, out_dir=str(tmp_path / "two"), max_iters=3, data_parallel="fsdp")
    p = run_train(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *overrides(two)])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    train.train(dict(one, out_dir=str(tmp_path / "two"), init_from="resume"))   # 1 process
    a, b = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for it in a:
        assert b[it][0] == pytest.approx(a[it][0], rel=1e-5), it
        assert b[it][1] == pytest.approx(a[it][1], rel=1e-4), it
    return out


@pytest.mark.slow
@pytest.mark.parametrize("loss_impl", ["chunked", "simple"])
def test_fsdp_two_processes_match_one_and_resume_on_one(toy_data, tmp_path, loss_impl):
    """FSDP2 over 2 gloo processes: steps 1-3 equal one process's; its checkpoint (whole
    tensors, optimizer state by name) resumes in 1 process, and steps 4-6 equal too."""
    keys = dict(max_iters=6, eval_interval=3, loss_impl=loss_impl, weighting="critic",
                train_on="all", critic_pretrain_epochs=0.0, activation_checkpointing="selective")
    one = tiny_cfg(toy_data, tmp_path / "one", **keys)
    assert "FSDP2: 2 blocks sharded over 2 processes" in fsdp_then_one(one, tmp_path)
    # validation by iteration (the resumed run evaluates iteration 3 again, as resumes do)
    va = {r["iter"]: r["val_loss"] for r in read_log(tmp_path / "one") if "val_loss" in r}
    vb = {r["iter"]: r["val_loss"] for r in read_log(tmp_path / "two") if "val_loss" in r}
    assert sorted(va) == sorted(vb) == [0, 3, 6]
    assert [vb[i] for i in va] == pytest.approx(list(va.values()), rel=1e-5)


def test_length_buckets_change_nothing_but_the_shapes(toy_data, tmp_path):
    """Padding each micro-batch to a power-of-two length (for compile) gives the same steps:
    padding is masked and attention is causal. The critic reads lengths and values too."""
    keys = dict(block_size=100, max_iters=4, eval_interval=4, weighting="critic", train_on="all",
                critic_pretrain_epochs=0.0)
    train.train(tiny_cfg(toy_data, tmp_path / "plain", **keys))
    train.train(tiny_cfg(toy_data, tmp_path / "buckets", length_buckets=True, **keys))
    a, b = train_rows(tmp_path / "plain"), train_rows(tmp_path / "buckets")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for it in a:
        assert b[it][0] == pytest.approx(a[it][0], rel=1e-5), it
    mb = {"tokens": torch.zeros(2, 70, dtype=torch.long), "loss_mask": torch.ones(2, 70, dtype=torch.bool)}
    assert data.pad_to_bucket(mb, 100, 0)["tokens"].shape == (2, 100)   # capped at block_size
    mb = {"tokens": torch.zeros(2, 5, dtype=torch.long), "loss_mask": torch.ones(2, 5, dtype=torch.bool)}
    out = data.pad_to_bucket(mb, 512, 7)
    assert out["tokens"].shape == (2, 64) and not out["loss_mask"][:, 5:].any()
    assert (out["tokens"][:, 5:] == 7).all()


@pytest.mark.slow
def test_compile_without_graph_breaks(toy_data, tmp_path):
    """compile=True with length_buckets: per-block graphs with no graph break, a few
    graphs (one per shape and grad mode, shared by the blocks), the eager run's losses."""
    from torch._dynamo.utils import counters
    import torch._dynamo
    torch._dynamo.reset()
    counters.clear()
    keys = dict(max_iters=3, eval_interval=3, eval_samples=4, length_buckets=True)
    train.train(tiny_cfg(toy_data, tmp_path / "eager", **keys))
    train.train(tiny_cfg(toy_data, tmp_path / "compiled", compile=True, **keys))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert 1 <= counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    a, b = train_rows(tmp_path / "eager"), train_rows(tmp_path / "compiled")
    for it in a:
        assert b[it][0] == pytest.approx(a[it][0], rel=1e-4), it


def test_sharded_checkpoint_resumes_exactly(toy_data, tmp_path):
    """checkpoint_format='dcp' in one process: shards in ckpt_dcp-<iter>/, named by
    ckpt.pt; a resumed run takes the uninterrupted run's steps bit for bit, and code that
    wants the weights from ckpt.pt alone is told where they are."""
    keys = dict(checkpoint_format="dcp", eval_interval=3, weighting="critic", train_on="all",
                critic_pretrain_epochs=0.0)
    train.train(tiny_cfg(toy_data, tmp_path / "full", max_iters=6, **keys))
    part = tmp_path / "part"
    train.train(tiny_cfg(toy_data, part, max_iters=3, **keys))
    assert sorted(p.name for p in part.iterdir() if p.name.startswith("ckpt_dcp-")) == ["ckpt_dcp-3"]
    train.train(tiny_cfg(toy_data, part, max_iters=3, init_from="resume", **keys))
    # the resumed run saved iteration 3 again, beside (not over) the directory ckpt.pt named
    assert sorted(p.name for p in part.iterdir() if p.name.startswith("ckpt_dcp-")) == ["ckpt_dcp-3-b"]
    train.train(tiny_cfg(toy_data, part, max_iters=6, init_from="resume", **keys))
    assert sorted(p.name for p in part.iterdir() if p.name.startswith("ckpt_dcp-")) == ["ckpt_dcp-6"]
    a, b = train_rows(tmp_path / "full"), train_rows(part)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for it in a:
        assert a[it] == b[it], it
    with pytest.raises(ValueError, match="sharded"):
        checkpoint.load_checkpoint(str(part))


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_resumes_on_one_process(toy_data, tmp_path):
    """Shards written by 2 FSDP processes, read back by 1 process (resharded by DCP)."""
    keys = dict(max_iters=6, eval_interval=3, checkpoint_format="dcp")
    fsdp_then_one(tiny_cfg(toy_data, tmp_path / "one", **keys), tmp_path)


# ---- FSDP: built on the meta device, weights from rank 0 -----------------------------------
META_CFG = dict(vocab_size=40, n_layer=3, n_future=2, n_head=2, n_kv_head=1, d_model=16, d_ff=32,
                max_seq_len=16, value_head=True)


def _materialize_worker(rank, init_file, out):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        c = type("C", (), dict(activation_checkpointing="none", compile=False))
        source = None
        if rank == 0:   # only rank 0 builds the weights, as train.py does
            torch.manual_seed(3)
            source = Transformer(ModelConfig(**META_CFG))
        with torch.device("meta"):
            m = Transformer(ModelConfig(**META_CFG))
        parallel.parallelize(m, c, torch.float32, fsdp=True)
        parallel.materialize(m, source, "cpu")
        sd = get_model_state_dict(m, options=StateDictOptions(full_state_dict=True))
        torch.save({"sd": sd, "tied": m.output.weight is m.tok_embeddings.weight,
                    "sharded": parallel.is_sharded(m.layers[0].attention.wq.weight),
                    "buffers": {n: b.clone() for n, b in m.named_buffers()}}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_materialize_gives_every_rank_rank0s_weights(tmp_path):
    """A model built on the meta device and sharded over 2 gloo processes, then
    materialized from rank 0's freshly initialised model: every rank's gathered weights
    and buffers are bit for bit one process's model with the same seed, the blocks are
    sharded, and the tied unembedding is tied again."""
    import torch.multiprocessing as mp
    mp.spawn(_materialize_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    torch.manual_seed(3)
    want = Transformer(ModelConfig(**META_CFG))
    for rank in range(2):
        got = torch.load(tmp_path / f"out.{rank}")
        assert got["tied"] and got["sharded"], rank
        assert got["sd"].keys() == want.state_dict().keys()
        for k, v in want.state_dict().items():
            assert torch.equal(got["sd"][k], v), (rank, k)
        for n, b in want.named_buffers():
            assert torch.equal(got["buffers"][n], b), (rank, n)


def start_weights_under_fsdp(one, tmp_path):
    """The weights a run starts from, in 1 process and under FSDP on 2: learning rate 0
    (AdamW moves nothing: its decay is lr * wd), one step, the checkpoint's weights."""
    one = dict(one, learning_rate=0.0, min_lr=0.0, max_iters=1, eval_interval=1)
    train.train(one)
    two = dict(one, out_dir=str(tmp_path / "two"), data_parallel="fsdp")
    p = run_train(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *overrides(two)])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return (checkpoint.load_checkpoint(one["out_dir"])["model"],
            checkpoint.load_checkpoint(two["out_dir"])["model"])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["scratch", "run"])
def test_fsdp_starts_from_the_one_process_weights(toy_data, tmp_path, source):
    """FSDP builds on the meta device and takes rank 0's weights: a fresh init with the
    run's seed (the critic's value head included), or a run's checkpoint (init_from), bit
    for bit what one process starts from."""
    keys = dict(weighting="critic", train_on="all", critic_pretrain_epochs=0.0)
    if source == "run":
        train.train(tiny_cfg(toy_data, tmp_path / "base", max_iters=2, eval_interval=2, seed=7))
        keys["init_from"] = str(tmp_path / "base")
    a, b = start_weights_under_fsdp(tiny_cfg(toy_data, tmp_path / "one", **keys), tmp_path)
    assert a.keys() == b.keys() and any(k.startswith("value_head.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if source == "run":   # and they are the run's, not a fresh init
        base = checkpoint.load_checkpoint(str(tmp_path / "base"))["model"]
        assert all(torch.equal(a[k], base[k]) for k in base)
