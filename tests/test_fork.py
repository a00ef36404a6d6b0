"""
The fork path, as a test: a new weighting idea is one function and one `register` line,
trained through train.py and compared in the experiment with no other file changed. The
README's "Add a scheme" is this example; tests/test_registry.py gives the new scheme the
contract tests every scheme gets, by its being registered.

    python -m pytest tests/test_fork.py -q
"""
import os

import torch

import weights


# ---- the fork: all that a new idea needs ------------------------------------------------
def p_weighted(ce, valid, cfg=None, norm_stats=None, **_):
    """w[t, k] proportional to p_k(x_{t+k}) = exp(-CE): the terms the model already predicts
    well count more. finish(): sparsity, normalisation (mean 1 per group), clipping."""
    return weights.finish(torch.exp(-ce), valid, cfg, stats=norm_stats)


weights.register("p_weighted", p_weighted)   # reads the model's CE; --weighting=p_weighted
# -------------------------------------------------------------------------------------------

HERE = os.path.abspath(__file__)


def test_the_fork_trains_through_train_py(tmp_path):
    """A few steps with the new scheme: its weights are exp(-CE) normalised per position,
    as a hand computation on the logged step says (mean 1, and more mass where CE is low)."""
    import train
    from test_train import make_toy_data, read_log, tiny_cfg
    toy = make_toy_data(str(tmp_path / "data"))
    summary = train.train(tiny_cfg(toy, tmp_path / "run", weighting="p_weighted", max_iters=4,
                                   eval_interval=4, plugins=HERE))
    assert summary["finished"] and summary["weighting"] == "p_weighted"
    steps = [r for r in read_log(tmp_path / "run") if "w_step_mean" in r]
    assert len(steps) == 4 and all(abs(r["w_step_mean"] - 1) < 1e-5 for r in steps)
    assert all(r["w_std"] > 0 for r in steps)                     # not the baseline's w = 1
    # the function itself, by hand on one position: p = (0.5, 0.25) -> w = 2 p / sum p
    c = train.SimpleNamespace(**train.DEFAULTS)
    ce = torch.tensor([[[-torch.log(torch.tensor(0.5)), -torch.log(torch.tensor(0.25))]]])
    w = weights.SCHEMES["p_weighted"].fn(ce, torch.ones(1, 1, 2, dtype=torch.bool), cfg=c)
    torch.testing.assert_close(w, torch.tensor([[[4 / 3, 2 / 3]]]))


def test_the_fork_is_an_experiment_arm(tmp_path):
    """One seed of the new arm and its shuffled control beside the baseline, in
    experiment.py, given the file that registers it (--overrides=plugins=...)."""
    import experiment
    from test_experiment import argv
    import data
    d = str(tmp_path / "tinycode")
    data.prepare_tinycode(d, "bytes", n_train=60, n_val=12, n_test=4, n_incorrect=1, n_pretrain=40,
                          families="arithmetic", pretrain_families="arithmetic", noise=0.3)
    args = argv(str(tmp_path / "exp"), d, arms="baseline,p_weighted,p_weighted_shuffled")
    args = ["--seeds=1" if a.startswith("--seeds=") else
            a + f",plugins={HERE}" if a.startswith("--overrides=") else a for a in args]
    experiment.main(args)
    report = open(tmp_path / "exp" / "report.md").read()
    for arm in ("baseline", "p_weighted", "p_weighted_shuffled"):
        assert f"| {arm} |" in report, arm
        cfg = __import__("json").load(open(tmp_path / "exp" / "runs" / f"{arm}-s0" / "config.json"))
        assert cfg["plugins"] == HERE
    assert not os.path.exists(tmp_path / "exp" / "runs" / "reference" / "ckpt.pt")   # no arm reads one
