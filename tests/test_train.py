"""
The training step and loop: the loss normaliser, learning, exact resume, DDP == one
process, NaN stop, corrupt checkpoints, tokenizer mismatch, SIGTERM.

    python -m pytest tests/test_train.py -q            # add -m "not slow" to skip torchrun
"""
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import data
import checkpoint
import diagnostics
import train
import weights
from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_samples(n, seed):
    """Completions that follow from the prompt (a sum), some of them wrong."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        ok = rng.random() < 0.8
        out.append({"problem_id": f"toy/{i}", "prompt": f"{a}+{b}=",
                    "completion": str(a + b + (0 if ok else 1)), "is_correct": ok, "source": "toy"})
    return out


def make_toy_data(root, tokenizer="bytes"):
    enc = data.get_tokenizer(tokenizer)
    for split, n, seed in (("train", 400, 0), ("val", 64, 1)):
        data.write_split(os.path.join(root, split), enc, toy_samples(n, seed), [], {"source": "toy"})
    return root


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_data(str(tmp_path_factory.mktemp("toy")))


def tiny_cfg(toy_data, out_dir, **kw):
    cfg = dict(train.DEFAULTS)
    cfg.update(out_dir=str(out_dir), data_dir=toy_data, n_layer=2, n_future=2, n_head=2,
               n_kv_head=1, d_model=32, d_ff=64, block_size=24, batch_size=4,
               gradient_accumulation_steps=2, max_iters=12, eval_interval=6, eval_samples=8,
               log_interval=1, warmup_iters=2, lr_decay_iters=12, learning_rate=3e-3)
    cfg.update(kw)
    return cfg


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_rows(out_dir):
    return {r["iter"]: (r["loss"], r["grad_norm"]) for r in read_log(out_dir) if "loss" in r}


# ---- the loss normaliser --------------------------------------------------------------
def test_global_normaliser_makes_accumulation_equal_one_batch():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=32, n_layer=2, n_future=2, n_head=2, n_kv_head=1,
                                d_model=16, d_ff=32, max_seq_len=16))
    tokens = torch.randint(0, 32, (6, 12))
    mask = torch.zeros(6, 12, dtype=torch.bool)
    for b, start in enumerate([2, 9, 3, 10, 1, 8]):   # very different valid counts per row
        mask[b, start:] = True
    targets = mtp_targets(tokens, mask, 2)
    w = torch.rand(6, 12, 2) * (targets >= 0)          # any non-uniform weights

    def grads(loss_fn):
        m.zero_grad()
        loss_fn()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    def big():
        ce = mtp_cross_entropy(m(tokens), targets)
        weights.weighted_loss(ce, w, (targets >= 0).sum()).backward()

    def accumulated(per_micro_count):
        n_step = (targets >= 0).sum()
        for sl in (slice(0, 2), slice(2, 6)):          # unequal micro-batches
            ce = mtp_cross_entropy(m(tokens[sl]), targets[sl])
            n = (targets[sl] >= 0).sum() * 2 if per_micro_count else n_step
            weights.weighted_loss(ce, w[sl], n).backward()

    g_big = grads(big)
    torch.testing.assert_close(grads(lambda: accumulated(False)), g_big, rtol=1e-5, atol=1e-7)
    # nanoGPT's per-micro-batch normalisation is measurably different here
    assert not torch.allclose(grads(lambda: accumulated(True)), g_big, rtol=1e-3, atol=1e-6)


def test_weights_never_carry_gradient():
    ce = torch.rand(2, 3, 2, requires_grad=True)
    w = ce * 2                                          # a weight computed from ce itself
    loss = weights.weighted_loss(ce, w, 6)
    loss.backward()
    torch.testing.assert_close(ce.grad, (w.detach() / 6))


def test_mfu_counts_the_real_length_and_one_device(tmp_path):
    """MFU: FLOPs per token at the samples' real length (every sample here is 9 tokens,
    block_size 24), and the throughput of all devices over all their peaks."""
    enc = data.get_tokenizer("bytes")
    rng = random.Random(0)
    for split, n in (("train", 64), ("val", 16)):   # "ab+cd=", 2 digits, <eot>: 9 bytes
        pairs = [(rng.randint(10, 44), rng.randint(10, 44)) for _ in range(n)]
        data.write_split(os.path.join(tmp_path, "data", split), enc, [
            {"problem_id": f"fixed/{i}", "prompt": f"{a}+{b}=", "completion": str(a + b),
             "is_correct": True, "source": "toy"} for i, (a, b) in enumerate(pairs)], [],
            {"source": "toy"})
    lengths = data.PreparedSplit(os.path.join(tmp_path, "data", "train")).index[:, 1]
    assert set(lengths.tolist()) == {9}
    train.train(tiny_cfg(str(tmp_path / "data"), tmp_path / "out", max_iters=3, eval_interval=3,
                         eval_samples=4, peak_flops=1e9))
    m = Transformer(ModelConfig(**checkpoint.load_checkpoint(str(tmp_path / "out"))["model_args"]))
    # 6 FLOPs per weight a token passes (blocks, H unembeddings) + attention over its n = 9
    c = m.config
    weights_ = sum(p.numel() for p in (*m.layers.parameters(), *m.extra_heads.parameters()))
    per_token = 6 * (weights_ + c.n_future * c.vocab_size * c.d_model) + 12 * c.n_layer * c.d_model * 9
    rows = [r for r in read_log(tmp_path / "out") if "mfu" in r]
    assert len(rows) == 3
    for r in rows:
        assert r["mfu"] == pytest.approx(per_token * r["tokens_per_s"] / 1e9, rel=1e-9)
    # 2 devices at 3000 tokens/s together: each does 1500 of its own
    assert m.estimate_mfu(3000.0, 9, 1e9, n_devices=2) == pytest.approx(per_token * 1500 / 1e9, rel=1e-12)


def test_weight_log_counts_every_term_of_the_step():
    """WeightLog.record takes all micro-batches of a step (their T differ) and its
    histogram counts every valid term, weights above its top bin (8) in the last bin."""
    w1 = torch.tensor([[[1.0, 20.0], [0.5, 0.0]]])               # (1, 2, 2); 0 where invalid
    v1 = torch.tensor([[[True, True], [True, False]]])
    w2 = torch.tensor([[[2.0, 0.25], [3.0, 1.0], [0.0, 0.0]]])   # (1, 3, 2)
    v2 = torch.tensor([[[True, True], [True, True], [False, False]]])
    log = diagnostics.WeightLog(2, seed=0)
    row = log.record([(w1, v1), (w2, v2)])
    assert log.hist.sum(1).tolist() == [4, 3]                     # valid terms per head
    assert log.hist[1, -1] == 1                                    # the 20, in the last bin
    assert log.hist[0, np.searchsorted(log.BINS, 3.0, side="right") - 1] == 1
    vals = [1.0, 20.0, 0.5, 2.0, 0.25, 3.0, 1.0]
    assert row["w_mean"] == pytest.approx(np.mean(vals)) and row["w_max"] == 20.0
    assert row["w_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-6)
    assert row["w_head_mass"] == pytest.approx([6.5 / 27.75, 21.25 / 27.75])
    assert sorted(log.sample[0].tolist()) == sorted(vals)


def test_weight_histogram_covers_every_micro_batch(toy_data, tmp_path):
    """The run's histograms hold every valid term of its logged steps, all micro-batches
    (counted again from the loader's batches), not the last micro-batch of each."""
    cfg = tiny_cfg(toy_data, tmp_path, max_iters=3, eval_interval=3)
    train.train(cfg)
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    loader = data.Loader(split, cfg["batch_size"], cfg["block_size"], seed=cfg["seed"],
                         correct_only=True, pad_id=data.eot_token(data.get_tokenizer("bytes")))
    want = torch.zeros(2, dtype=torch.long)
    for _ in range(3):                                             # log_interval 1: every step
        for mb in loader.next_step(2):
            want += (mtp_targets(mb["tokens"], mb["loss_mask"], 2) >= 0).sum(dim=(0, 1))
    counts = np.load(tmp_path / "weight_hist.npz")["counts"]
    assert counts.sum(1).tolist() == want.tolist()


# ---- the loop ---------------------------------------------------------------------------
def test_training_learns(toy_data, tmp_path):
    out = train.train(tiny_cfg(toy_data, tmp_path, max_iters=60, eval_interval=30,
                               lr_decay_iters=60))
    vals = [r["val_loss"] for r in read_log(tmp_path) if "val_loss" in r]
    assert vals[-1] < vals[0] - 1.0, vals             # visibly learns
    assert out["iter_num"] == 60 and out["tokens_seen"] > 0
    assert json.load(open(tmp_path / "config.json"))["n_layer"] == 2


def test_resume_is_exact(toy_data, tmp_path):
    full = tmp_path / "full"
    train.train(tiny_cfg(toy_data, full, max_iters=12))
    part = tmp_path / "part"
    train.train(tiny_cfg(toy_data, part, max_iters=6))            # checkpoint at iter 6
    train.train(tiny_cfg(toy_data, part, max_iters=12, init_from="resume"))
    a, b = train_rows(full), train_rows(part)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for it in a:
        assert a[it] == b[it], (it, a[it], b[it])                  # bit for bit


def test_reversed_rows_are_the_same_maths_in_another_float_order(toy_data, tmp_path):
    """row_order='reversed' (the reproducibility check): every micro-batch holds the same
    samples in reverse order, so each step's loss and gradient norm equal the forward
    order's up to float rounding."""
    train.train(tiny_cfg(toy_data, tmp_path / "fwd", max_iters=6))
    train.train(tiny_cfg(toy_data, tmp_path / "rev", max_iters=6, row_order="reversed"))
    a, b = train_rows(tmp_path / "fwd"), train_rows(tmp_path / "rev")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for it in a:
        assert a[it] == pytest.approx(b[it], rel=1e-4, abs=1e-6), (it, a[it], b[it])
    split = data.PreparedSplit(os.path.join(toy_data, "train"))
    fwd = data.Loader(split, 4, 64, seed=0, correct_only=False).next_step(2)
    rev = data.Loader(split, 4, 64, seed=0, correct_only=False, reverse_rows=True).next_step(2)
    for f, r in zip(fwd, rev):
        assert r["sample_ids"].tolist() == f["sample_ids"].tolist()[::-1]
        assert torch.equal(r["tokens"], f["tokens"].flip(0))
    with pytest.raises(ValueError, match="row_order"):
        train.train(tiny_cfg(toy_data, tmp_path / "bad", row_order="sideways"))


def test_validation_set_does_not_depend_on_the_batch(toy_data, tmp_path):
    """The same weights give the same validation CE whatever batch size the run uses
    (the old set, the first eval_iters * batch_size samples of a length-grouped order,
    gave 5.744 / 5.776 / 5.747)."""
    train.train(tiny_cfg(toy_data, tmp_path, max_iters=6))
    ckpt = checkpoint.load_checkpoint(str(tmp_path))
    model = Transformer(ModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    split = data.PreparedSplit(os.path.join(toy_data, "val"))
    from types import SimpleNamespace
    from contextlib import nullcontext
    got = []
    for bs in (1, 3, 4, 16):
        c = SimpleNamespace(**{**train.DEFAULTS, "batch_size": bs, "block_size": 24,
                               "eval_samples": 20, "n_future": 2})
        got.append(train.evaluate(model, split, c, nullcontext(), "cpu", False, 0, 1, pad_id=256))
    for g in got[1:]:
        assert g == pytest.approx(got[0], rel=1e-5)
    ids = train.validation_ids(split, 20, 24)
    assert len(set(ids.tolist())) == 20 and (split.index[ids, 3] == 1).all()


def test_run_records_what_reproducing_it_needs(toy_data, tmp_path):
    """config.json names the torch build, thread count and processor: a bit-for-bit rerun
    needs all three (docs/reproducibility.md)."""
    train.train(tiny_cfg(toy_data, tmp_path, max_iters=1))
    env = json.load(open(tmp_path / "config.json"))["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["cpu"] and env["python"]


def test_resume_refuses_changed_model(toy_data, tmp_path):
    train.train(tiny_cfg(toy_data, tmp_path, max_iters=6))
    with pytest.raises(ValueError, match="d_model"):
        train.train(tiny_cfg(toy_data, tmp_path, max_iters=12, init_from="resume", d_model=48))


def test_init_from_another_run_fine_tunes_it(toy_data, tmp_path):
    """init_from=RUN_DIR starts from that run's weights at step 0 with a fresh optimizer; a
    critic gets a fresh value head on top; another model shape is refused."""
    train.train(tiny_cfg(toy_data, tmp_path / "base", max_iters=6))
    base = torch.load(tmp_path / "base" / "ckpt.pt", weights_only=False)
    # one step at learning rate 0: the weights are the base's, the optimizer's state is new
    train.train(tiny_cfg(toy_data, tmp_path / "same", max_iters=1, eval_interval=1, learning_rate=0.0,
                         min_lr=0.0, init_from=str(tmp_path / "base")))
    same = torch.load(tmp_path / "same" / "ckpt.pt", weights_only=False)
    assert same["iter_num"] == 1 and base["iter_num"] == 6
    assert float(same["optimizer"]["state"][0]["step"]) == 1.0
    for k, v in base["model"].items():
        assert torch.equal(v, same["model"][k]), k
    out = train.train(tiny_cfg(toy_data, tmp_path / "ft", max_iters=3,
                               init_from=str(tmp_path / "base" / "ckpt.pt"),
                               weighting="critic", train_on="all", critic_pretrain_epochs=0.0))
    assert out["iter_num"] == 3
    ft = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=False)["model"]
    assert any(k.startswith("value_head.") for k in ft)
    assert not torch.equal(ft["tok_embeddings.weight"], base["model"]["tok_embeddings.weight"])  # it trained
    with pytest.raises(ValueError, match="d_model"):
        train.train(tiny_cfg(toy_data, tmp_path / "other", init_from=str(tmp_path / "base"), d_model=48))


def test_init_from_a_run_with_fewer_heads_adds_copies(toy_data, tmp_path):
    """A next-token run (n_future=1) fine-tuned with n_future=3: the trunk and head 1 are
    the run's, heads 2 and 3 start as copies of its last block (head_init='copy', as for a
    pretrained model), so at step 0 every head computes the base's next-token function; a
    resume keeps the grown model; an n_layer that does not fit is refused, naming the value."""
    train.train(tiny_cfg(toy_data, tmp_path / "ntp", n_layer=2, n_future=1, max_iters=6))
    base = torch.load(tmp_path / "ntp" / "ckpt.pt", weights_only=False)["model"]
    grown = tiny_cfg(toy_data, tmp_path / "mtp", n_layer=4, n_future=3, max_iters=1, eval_interval=1,
                     learning_rate=0.0, min_lr=0.0, init_from=str(tmp_path / "ntp"))
    train.train(grown)
    sd = torch.load(tmp_path / "mtp" / "ckpt.pt", weights_only=False)["model"]
    for k, v in base.items():
        assert torch.equal(sd[k], v), k
    for j in (0, 1):              # layers.1 is the base's last block (head 1)
        for k, v in base.items():
            if k.startswith("layers.1."):
                assert torch.equal(sd[f"extra_heads.{j}." + k[len("layers.1."):]], v), (j, k)
    m = Transformer(ModelConfig(**{**torch.load(tmp_path / "mtp" / "ckpt.pt", weights_only=False)["model_args"]}))
    m.load_state_dict(sd)
    x = torch.randint(0, 256, (2, 9))
    logits = m(x)                 # (B, T, H, V): three heads, one function
    assert torch.allclose(logits[..., 1, :], logits[..., 0, :]) and torch.allclose(logits[..., 2, :], logits[..., 0, :])
    out = train.train({**grown, "max_iters": 2, "init_from": "resume"})
    assert out["iter_num"] == 2
    with pytest.raises(ValueError, match="n_layer=4"):
        train.train(tiny_cfg(toy_data, tmp_path / "bad", n_layer=3, n_future=3, init_from=str(tmp_path / "ntp")))


def test_init_from_a_run_with_more_heads_keeps_the_first(toy_data, tmp_path):
    """The H sweep's arms: a 3-head run fine-tuned with n_future=1 (n_layer 2 fewer) keeps
    its trunk and head 1 exactly (a step at learning rate 0 changes nothing), heads 2 and 3
    are gone; an n_layer that does not fit is refused, naming the value."""
    train.train(tiny_cfg(toy_data, tmp_path / "mtp", n_layer=4, n_future=3, max_iters=6))
    base = torch.load(tmp_path / "mtp" / "ckpt.pt", weights_only=False)["model"]
    train.train(tiny_cfg(toy_data, tmp_path / "ntp", n_layer=2, n_future=1, max_iters=1, eval_interval=1,
                         learning_rate=0.0, min_lr=0.0, init_from=str(tmp_path / "mtp")))
    small = torch.load(tmp_path / "ntp" / "ckpt.pt", weights_only=False)["model"]
    assert not any(k.startswith("extra_heads.") for k in small)
    assert set(small) == {k for k in base if not k.startswith("extra_heads.")}
    for k, v in small.items():
        assert torch.equal(v, base[k]), k
    with pytest.raises(ValueError, match="n_layer=3"):
        train.train(tiny_cfg(toy_data, tmp_path / "bad", n_layer=4, n_future=2, init_from=str(tmp_path / "mtp")))


def test_heads_only_trains_the_added_heads_alone(toy_data, tmp_path):
    """heads_only=True: heads 2..H learn, and nothing else moves (trunk, head 1, embeddings,
    final norm: no update and no weight decay), so head 1's function is the base's; it is
    refused where there is no head to train or a value head would be left out."""
    train.train(tiny_cfg(toy_data, tmp_path / "base", n_layer=2, n_future=1, max_iters=4))
    base = torch.load(tmp_path / "base" / "ckpt.pt", weights_only=False)["model"]
    train.train(tiny_cfg(toy_data, tmp_path / "warm", n_layer=3, n_future=2, max_iters=4,
                         init_from=str(tmp_path / "base"), heads_only=True))
    sd = torch.load(tmp_path / "warm" / "ckpt.pt", weights_only=False)["model"]
    for k, v in base.items():
        assert torch.equal(sd[k], v), k                 # weight decay would have moved them too
    assert any(not torch.equal(sd["extra_heads.0." + k[len("layers.1."):]], v)
               for k, v in base.items() if k.startswith("layers.1."))   # the new head learned
    with pytest.raises(ValueError, match="heads_only"):
        train.train(tiny_cfg(toy_data, tmp_path / "bad", n_future=1, heads_only=True))


def test_corrupt_checkpoint_is_a_clear_error(toy_data, tmp_path):
    train.train(tiny_cfg(toy_data, tmp_path, max_iters=6))
    path = tmp_path / "ckpt.pt"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])                        # truncated
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        train.train(tiny_cfg(toy_data, tmp_path, init_from="resume"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, {"a": 1})
    def crash(*a, **k):
        raise KeyboardInterrupt  # killed in the middle of writing
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"a": 2})
    monkeypatch.undo()
    assert torch.load(path) == {"a": 1}                             # old one intact


def test_nan_loss_stops_with_last_good_checkpoint(toy_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    def poisoned(ce, valid, **kw):
        calls["n"] += 1
        w = valid.float()
        return w * float("nan") if calls["n"] > 8 else w            # 2 micro-steps per iter
    monkeypatch.setitem(weights.SCHEMES, "poisoned", weights.Scheme(poisoned))
    with pytest.raises(FloatingPointError, match="iter 4"):
        train.train(tiny_cfg(toy_data, tmp_path, weighting="poisoned"))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ckpt["iter_num"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_tokenizer_mismatch_is_refused(toy_data, tmp_path):
    # a tiny BPE file: the 256 bytes plus one merge, so it encodes differently
    import base64
    bpe = tmp_path / "tiny.tiktoken"
    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    lines.append(f"{base64.b64encode(b'12').decode()} 256")
    bpe.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        train.train(tiny_cfg(toy_data, tmp_path / "out", tokenizer=str(bpe)))


def test_unknown_config_key(toy_data):
    with pytest.raises(ValueError, match="max_iter"):
        train.main(["--max_iter=3"])


# ---- processes -------------------------------------------------------------------------
def run_train(args, env_extra=None, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def overrides(cfg):
    return [f"--{k}={v}" for k, v in cfg.items() if v != train.DEFAULTS[k]]


@pytest.mark.slow
@pytest.mark.parametrize("loss_impl", ["chunked", "simple"])   # own all-reduce / DDP
def test_torchrun_two_processes_match_one(toy_data, tmp_path, loss_impl):
    one = tiny_cfg(toy_data, tmp_path / "one", max_iters=6, eval_interval=6, loss_impl=loss_impl)
    train.train(one)
    two = dict(one, out_dir=str(tmp_path / "two"))
    p = run_train(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *overrides(two)])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    a, b = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for it in a:   # same rows, same global normaliser: equal up to summation order
        assert a[it][0] == pytest.approx(b[it][0], rel=1e-5), it
        assert a[it][1] == pytest.approx(b[it][1], rel=1e-4), it
    va = [r["val_loss"] for r in read_log(tmp_path / "one") if "val_loss" in r]
    vb = [r["val_loss"] for r in read_log(tmp_path / "two") if "val_loss" in r]
    assert va == pytest.approx(vb, rel=1e-5)


@pytest.mark.slow
def test_sigterm_saves_and_resumes(toy_data, tmp_path):
    cfg = tiny_cfg(toy_data, tmp_path, max_iters=100000, eval_interval=100000)
    p = run_train(["train.py", *overrides(cfg)])
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert "SIGTERM: saved" in out
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    stopped = ckpt["iter_num"]
    assert stopped >= 4
    res = train.train(dict(cfg, init_from="resume", max_iters=stopped + 2))
    assert res["iter_num"] == stopped + 2


def test_float16_resume_keeps_the_loss_scale(toy_data, tmp_path):
    """The fp16 GradScaler's state (its loss scale and growth tracker) is checkpointed: a
    resumed fp16 run continues with the scale it had, as an uninterrupted one does."""
    cfg = tiny_cfg(toy_data, tmp_path / "full", dtype="float16", max_iters=6, eval_interval=3)
    train.train(cfg)
    part = dict(cfg, out_dir=str(tmp_path / "part"))
    train.train(dict(part, max_iters=3))
    saved = checkpoint.load_checkpoint(str(tmp_path / "part"))["scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    train.train(dict(part, init_from="resume"))
    full = checkpoint.load_checkpoint(str(tmp_path / "full"))["scaler"]
    assert checkpoint.load_checkpoint(str(tmp_path / "part"))["scaler"] == full
    assert train_rows(tmp_path / "full") == train_rows(tmp_path / "part")


def test_float16_overflow_skips_the_step(toy_data, tmp_path, monkeypatch):
    """fp16: an inf gradient after unscaling is GradScaler's routine overflow, not an error:
    the step is skipped (logged), the scale halves, training goes on. A scale of 2**24 is
    too high for this model: its first steps overflow, then it trains."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler,
                                                                   init_scale=2.0 ** 24))
    out = train.train(tiny_cfg(toy_data, tmp_path, dtype="float16", max_iters=8, eval_interval=8))
    assert out["finished"]
    rows = [r for r in read_log(tmp_path) if "loss" in r]
    skipped = [r["skipped_steps"] for r in rows]
    assert len(rows) == 8 and skipped[0] == 1 and 0 in skipped
    # each skip halves the scale (no growth within 2000 steps): 2**24 * 0.5**(skips so far)
    assert [r["loss_scale"] for r in rows] == [2.0 ** (24 - s) for s in np.cumsum(skipped)]
    assert checkpoint.load_checkpoint(str(tmp_path))["scaler"]["scale"] == rows[-1]["loss_scale"]
    vals = [r["val_loss"] for r in read_log(tmp_path) if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.1                                   # the other steps trained


def test_float32_inf_gradient_stops(toy_data, tmp_path, monkeypatch):
    """Without a loss scaler (fp32, bf16) a non-finite gradient norm is an error, even with
    a finite loss: weights of 1e36 at iter 3 give a loss of ~6e36 and an inf norm."""
    calls = {"n": 0}
    def spike(ce, valid, **kw):
        calls["n"] += 1
        return valid.float() * (1e36 if calls["n"] in (5, 6) else 1.0)   # 2 micro-steps per iter
    monkeypatch.setitem(weights.SCHEMES, "spike", weights.Scheme(spike))
    with pytest.raises(FloatingPointError, match=r"loss \(5\.\d+e\+36\) or gradient norm \(inf\) at iter 2"):
        train.train(tiny_cfg(toy_data, tmp_path, weighting="spike", dtype="float32", max_iters=6))
