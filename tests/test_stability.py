"""The report's "Stability and convergence" section (Experiment 4): each statistic against a
hand computation on run dirs written here with known numbers, the weights' Spearman
correlation with the reference CE against an independent computation, and report.write
producing the section, 'not logged' where a run's log lacks a key.

    python -m pytest -q -o addopts="" tests/test_stability.py
"""
import json
import math
import os

import numpy as np
import pytest
import torch

import diagnostics
import report


def fake_run(d, log, pretrain_iters=0, n_problems=4, solved=2):
    """A finished, evaluated run dir: log.jsonl as given, summary.json, an eval on
    n_problems problems of which the first `solved` pass -> the run as report.load reads it."""
    os.makedirs(os.path.join(d, "eval"), exist_ok=True)
    with open(os.path.join(d, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in log)
    json.dump({"iter_num": 1, "total_iters": 1, "pretrain_iters": pretrain_iters, "finished": True,
               "val_ce_head": [0.5, 0.5], "tokens_seen": 1000, "wall_s": 60.0, "peak_rss_mb": 100.0},
              open(os.path.join(d, "summary.json"), "w"))
    with open(os.path.join(d, "eval", "results.jsonl"), "w") as f:
        f.writelines(json.dumps({"problem_id": f"p{i}", "n": 1, "c": int(i < solved)}) + "\n"
                     for i in range(n_problems))
    json.dump({"task": "tinycode", "n_problems": n_problems,
               "settings": {"n_samples": 1, "temperature": 0.0, "top_p": 0.95, "max_new_tokens": 8}},
              open(os.path.join(d, "eval", "summary.json"), "w"))
    r = report.load(d)
    r["train"]["out_dir"] = d
    return r


def train_row(it, stage="main", **kw):
    return {"iter": it, "loss": 1.0, "stage": stage, **kw}


def val_row(it, v):
    return {"iter": it, "val_loss": v, "val_ce_head": [v, v]}


# ---- each statistic against a hand computation ------------------------------------------------
def test_grad_norm_mean_band_and_seed_spread(tmp_path):
    """Two seeds with grad norms [1, 3] and [3, 5]: mean 2, 4 per step, band [1, 3]..[3, 5],
    seed means 2 and 4 -> 3 ± sqrt(2). A critic's value pre-training rows (grad_norm 0) are
    left out and its steps count from main training's start."""
    a = fake_run(tmp_path / "a", [train_row(10, grad_norm=1.0), train_row(20, grad_norm=3.0)])
    b = fake_run(tmp_path / "b", [train_row(10, grad_norm=3.0), train_row(20, grad_norm=5.0)])
    g = report.grad_norm_stats([a, b])
    assert g["steps"] == [10, 20]
    assert g["mean"].tolist() == [2.0, 4.0] and g["lo"].tolist() == [1.0, 3.0] and g["hi"].tolist() == [3.0, 5.0]
    assert g["per_seed"].tolist() == [2.0, 4.0]
    assert g["per_seed"].std(ddof=1) == pytest.approx(math.sqrt(2))
    critic = fake_run(tmp_path / "c", [train_row(5, "value_pretrain", grad_norm=0.0),
                                       train_row(10, "value_pretrain", grad_norm=0.0),
                                       train_row(20, grad_norm=2.0), train_row(30, grad_norm=4.0)],
                      pretrain_iters=10)
    g = report.grad_norm_stats([critic])
    assert g["steps"] == [10, 20] and g["mean"].tolist() == [2.0, 4.0] and g["per_seed"].tolist() == [3.0]
    assert report.grad_norm_stats([fake_run(tmp_path / "old", [{"iter": 10, "loss": 1.0}])]) is None


def test_weight_entropy_percentiles_pool_every_row_of_every_seed(tmp_path):
    """w_entropy 1..5 in one seed and 6..10 in the other: pooled, median 5.5, 10th
    percentile 1.9 and 90th 9.1 (linear between order statistics: 1 + 0.1 * 9)."""
    a = fake_run(tmp_path / "a", [train_row(i, w_entropy=float(i)) for i in range(1, 6)])
    b = fake_run(tmp_path / "b", [train_row(i, w_entropy=float(i + 5)) for i in range(1, 6)])
    e = report.entropy_stats([a, b])
    assert sorted(e["values"].tolist()) == list(map(float, range(1, 11)))
    assert (e["median"], e["p10"], e["p90"]) == pytest.approx((5.5, 1.9, 9.1))


def test_value_drift_and_spearman_mean_over_seeds_per_log_step(tmp_path):
    a = fake_run(tmp_path / "a", [train_row(1, value_drift=0.1, w_ref_spearman=0.2),
                                  train_row(2, value_drift=0.3, w_ref_spearman=float("nan"))])
    b = fake_run(tmp_path / "b", [train_row(1, value_drift=0.3, w_ref_spearman=0.4),
                                  train_row(2, value_drift=0.5, w_ref_spearman=0.6)])
    steps, d = report.per_step_mean([a, b], "value_drift")
    assert steps == [1, 2] and d == pytest.approx([0.2, 0.4])
    steps, s = report.per_step_mean([a, b], "w_ref_spearman")
    assert s == pytest.approx([0.3, 0.6])            # nan (a constant step): left out of the mean
    assert report.per_step_mean([fake_run(tmp_path / "c", [train_row(1)])], "value_drift") is None


def test_validation_ce_mean_and_sd_over_seeds(tmp_path):
    """val_loss [0.5, 0.3] and [0.5, 0.1]: mean 0.5, 0.2 and sd 0, 0.1 * sqrt(2); a critic's
    validation during its value pre-training sees the LM of step 0."""
    a = fake_run(tmp_path / "a", [val_row(0, 0.5), val_row(100, 0.3)])
    b = fake_run(tmp_path / "b", [val_row(0, 0.5), train_row(50), val_row(100, 0.1)])
    v = report.val_ce_stats([a, b])
    assert v["steps"] == [0, 100]
    assert v["mean"] == pytest.approx([0.5, 0.2]) and v["sd"] == pytest.approx([0.0, 0.1 * math.sqrt(2)])
    c = fake_run(tmp_path / "c", [val_row(0, 0.5), val_row(40, 0.5), val_row(140, 0.2)], pretrain_iters=40)
    assert report.val_ce_stats([c])["steps"] == [0, 100]


def test_steps_to_the_baseline_final_validation_ce(tmp_path):
    """Threshold = the baseline's final val CE, mean over seeds: (0.3 + 0.1) / 2 = 0.2. An arm
    at 0.5, 0.3, 0.1 (steps 0, 100, 200) crosses it at 100 + (0.3 - 0.2) / (0.3 - 0.1) * 100
    = 150, its tokens those of the training row nearest 150 (170, not 120); a critic crosses
    at the same main step shifted by its value pre-training; a seed that stays above it does
    not count."""
    base = [fake_run(tmp_path / "b0", [val_row(0, 0.5), val_row(200, 0.3)]),
            fake_run(tmp_path / "b1", [val_row(0, 0.5), val_row(200, 0.1)])]
    arm_log = [val_row(0, 0.5), train_row(120, tokens_seen=1200), val_row(100, 0.3),
               train_row(170, tokens_seen=1700), val_row(200, 0.1)]
    arm = fake_run(tmp_path / "a0", arm_log)
    slow = fake_run(tmp_path / "a1", [val_row(0, 0.5), val_row(200, 0.25)])
    critic = fake_run(tmp_path / "c0", [train_row(30, "value_pretrain", tokens_seen=300), val_row(0, 0.5)]
                      + [dict(x, iter=x["iter"] + 30) for x in arm_log[1:]], pretrain_iters=30)
    threshold, reached = report.convergence({"baseline": base, "arm": [arm, slow], "critic": [critic]})
    assert threshold == pytest.approx(0.2)
    assert reached["arm"][0] == (pytest.approx(150.0), 1700) and reached["arm"][1] is None
    assert reached["critic"][0] == (pytest.approx(150.0), 1700)
    assert reached["baseline"] == [None, (pytest.approx(0.3 / 0.4 * 200), None)]   # no training rows
    assert report.steps_to(fake_run(tmp_path / "fast", [val_row(0, 0.1)]), 0.2) == (0, None)
    assert report.convergence({"arm": [arm]}) == (None, {})   # no baseline arm: no threshold


# ---- the weights' rank correlation with the reference CE --------------------------------------
def test_spearman_by_hand_with_ties_averaged():
    """No ties: 1 - 6 sum d^2 / (n (n^2 - 1)); ties: the Pearson correlation of mean ranks."""
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert diagnostics.spearman(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert diagnostics.average_ranks(torch.tensor([5.0, 1.0, 5.0, 3.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    rx, ry = np.array([3.5, 1.0, 3.5, 2.0]), np.array([1.0, 2.0, 3.0, 4.0])
    want = np.corrcoef(rx, ry)[0, 1]
    assert diagnostics.spearman(torch.tensor([5.0, 1.0, 5.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) \
        == pytest.approx(want)
    assert math.isnan(diagnostics.spearman(torch.ones(4), y))   # uniform weights: undefined


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (300,), generator=g).float()        # many ties
    y = x + torch.randn(300, generator=g)
    assert diagnostics.spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy())[0], abs=1e-12)


def test_weight_log_aligns_the_reference_ce_with_each_term_target():
    """w[t, k] belongs to target x_{t+k}: with a per-token ref_ce (B, T) its partner is
    ref_ce[t + k]; with rho1_ref='matched' (B, T, H), ref_ce[t, k]. Two micro-batches of
    their own T, recomputed here term by term with loops."""
    g = torch.Generator().manual_seed(1)
    H, step, refs, matched = 3, [], [], []
    for T in (7, 5):
        w = torch.rand(2, T, H, generator=g)
        valid = torch.rand(2, T, H, generator=g) > 0.2
        valid &= torch.arange(T)[:, None] + torch.arange(1, H + 1) < T      # x_{t+k} exists
        step.append((w, valid))
        refs.append(torch.rand(2, T, generator=g))
        matched.append(torch.rand(2, T, H + 1, generator=g))    # a reference with more heads: its first H
    ws, per_token, per_head = [], [], []
    for (w, valid), ref, m in zip(step, refs, matched):
        for b in range(w.shape[0]):
            for t in range(w.shape[1]):
                for k in range(H):
                    if valid[b, t, k]:
                        ws.append(w[b, t, k].item())
                        per_token.append(ref[b, t + k + 1].item())
                        per_head.append(m[b, t, k].item())
    ws = torch.tensor(ws, dtype=torch.float64)
    log = diagnostics.WeightLog(H, seed=0)
    row = log.record(step, ref_ce=refs)
    assert row["w_ref_spearman"] == pytest.approx(diagnostics.spearman(ws, torch.tensor(per_token)))
    row = log.record(step, ref_ce=matched)
    assert row["w_ref_spearman"] == pytest.approx(diagnostics.spearman(ws, torch.tensor(per_head)))
    assert "w_ref_spearman" not in log.record(step)                          # no reference: not logged
    assert "w_ref_spearman" not in log.record(step, ref_ce=[None, None])
    # the weights ranked exactly as the reference CE of their targets: 1
    aligned = [(torch.stack([torch.nn.functional.pad(ref[:, k:], (0, k)) for k in range(1, H + 1)], -1), valid)
               for (_, valid), ref in zip(step, refs)]
    assert log.record(aligned, ref_ce=refs)["w_ref_spearman"] == pytest.approx(1.0)


# ---- the section in a report -------------------------------------------------------------------
def test_report_write_has_the_section(tmp_path):
    """report.write on fake runs: the section with its numbers, its three pictures, and
    'not logged' for an older arm whose log has no weights, grad norms or validation."""
    exp = tmp_path / "exp"
    runs = []
    for seed, (g1, g2, final) in enumerate([(1.0, 3.0, 0.3), (3.0, 5.0, 0.1)]):
        log = [val_row(0, 0.5),
               train_row(10, grad_norm=g1, w_entropy=1.2, tokens_seen=100_000, w_head_mass=[0.5, 0.5]),
               train_row(18, grad_norm=g2, w_entropy=1.3, tokens_seen=250_000, w_head_mass=[0.5, 0.5]),
               val_row(20, final)]
        runs.append(("baseline", seed, str(exp / "runs" / f"baseline-s{seed}")))
        fake_run(runs[-1][2], log)
    runs.append(("old", 0, str(exp / "runs" / "old-s0")))
    fake_run(runs[-1][2], [{"iter": 20, "loss": 1.0}])
    report.write({"exp_dir": str(exp), "ks": "1"}, {"baseline", "old"}, [0, 1], runs, None)
    md = open(exp / "report.md").read()
    section = md.split("## Stability and convergence\n", 1)[1].split("\n## ", 1)[0]
    assert "| baseline | 2 | 3.000 ± 1.414 | 1.250 [1.200, 1.300] | not logged | not logged |" in section
    assert "**0.2000**" in section and "log H = 0.693 (H = 2)" in section
    # seed 1 crosses 0.2 at 20 * 0.3 / 0.4 = 15, nearest the training row at 18; seed 0 stays above
    assert "| baseline | 0: 0.5000 ± 0.0000, 20: 0.2000 ± 0.1414 | 15.0 (1 of 2) | 0.250M |" in section
    assert "| old | 1 | not logged | not logged | not logged | not logged |" in section
    assert "| old | not logged | not logged | not logged |" in section
    for name in ("stability_grad_norm.png", "stability_w_entropy.png", "stability_val_ce.png"):
        assert f"({name})" in section and os.path.getsize(exp / name) > 1000


def test_training_logs_the_reference_alignment(tmp_path):
    """Through train.py: a rho1 run (its reference CE cached, so in the batch) logs
    w_ref_spearman at every log step; a run without a reference does not."""
    import train
    from test_train import make_toy_data, read_log, tiny_cfg
    toy = make_toy_data(str(tmp_path / "data"))
    short = dict(max_iters=2, eval_interval=2, lr_decay_iters=2, warmup_iters=1)
    train.train(tiny_cfg(toy, tmp_path / "ref", **short))
    assert not any("w_ref_spearman" in r for r in read_log(tmp_path / "ref"))
    train.train(tiny_cfg(toy, tmp_path / "rho1", weighting="rho1", ref_init_from=str(tmp_path / "ref"),
                         ref_ce_cache=str(tmp_path / "ref_ce.bin"), **short))
    rows = [r for r in read_log(tmp_path / "rho1") if "w_mean" in r]
    assert len(rows) == 2 and all(-1 <= r["w_ref_spearman"] <= 1 for r in rows), rows
