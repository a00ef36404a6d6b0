"""The proposal's Experiments 2, 3 and 5 as experiment.py commands (--study=, --sweep=):
their arms by name, that a study's runs differ from each other only in the keys it varies
(read back from the runs' config.json), and that a sweep point's statistics are
Experiment 1's for the same runs.

    python -m pytest tests/test_studies.py -q
"""
import json
import os

import pytest

import configurator
import experiment
from test_experiment import small_tinycode  # noqa: F401  (the fixture: a small noisy tinycode)


def cfg_of(*argv):
    return configurator.configure(experiment.defaults, list(argv))


def test_arm_names_carry_their_own_keys():
    """'<scheme>[_control]:key=value...': the scheme's arm plus exactly those keys; a
    random-matched control draws from the run with the same keys."""
    assert experiment.arm("critic:incorrect_mode=signed") == dict(weighting="critic", train_on="all",
                                                                  incorrect_mode="signed")
    assert experiment.arm("baseline:train_on=all") == dict(weighting="uniform", train_on="all")
    assert experiment.arm("critic_random:lam=0.9")["_matched"] == "critic:lam=0.9"
    assert experiment.arm("group:group_negative=drop") == dict(weighting="group", train_on="all",
                                                               weight_norm="tokens", group_negative="drop")
    with pytest.raises(ValueError, match="key=value"):
        experiment.arm("critic:lam")


def test_sweep_points_and_presets():
    """--sweep=KEY=v1,v2 for the --arms= arms; the point at the setting's own value is the
    plain arm (the experiment's runs, not a copy); every preset names real keys."""
    import train
    tiny = experiment.SETTINGS["tiny"]
    pts = experiment.sweep_points(cfg_of("--sweep=lam=0.8,0.95", "--arms=critic"), tiny)
    assert pts == [("0.8", "critic:lam=0.8"), ("0.95", "critic")]
    # the tiny setting's own critic_pretrain_epochs is 0.25: that point is 'critic'
    pts = dict(experiment.sweep_points(cfg_of("--sweep=critic_pretrain"), tiny))
    assert pts["0.25"] == "critic" and pts["0.5"] == "critic:critic_pretrain_epochs=0.5"
    assert dict(experiment.sweep_points(cfg_of("--sweep=heads"), tiny))["4"] == "baseline"
    names = experiment.arm_names(cfg_of("--sweep=lam"), tiny)
    assert names[0] == "baseline" and "critic" in names and "critic:lam=0.8" in names
    for key, arms in experiment.SWEEPS.values():
        assert key in train.DEFAULTS
        for a in arms:
            assert set(experiment.arm(a)) - {"_matched"} <= set(train.DEFAULTS), a
    for study in experiment.STUDIES.values():
        assert set(study.get("train", {})) <= set(train.DEFAULTS)
        for a in study["arms"]:
            assert set(experiment.arm(a)) <= set(train.DEFAULTS), a
    with pytest.raises(ValueError, match="no train.py key"):
        experiment.sweep_points(cfg_of("--sweep=no_such_key=1,2"), tiny)
    with pytest.raises(ValueError, match="studies"):
        experiment.arm_names(cfg_of("--study=nothing"), tiny)


def small_argv(exp_dir, data_dir, **kw):
    train = dict(data_dir=data_dir, max_iters=4, lr_decay_iters=4, warmup_iters=1, eval_interval=2,
                 eval_samples=4, log_interval=2, batch_size=4, critic_pretrain_epochs=0.05)
    cfg = dict(exp_dir=exp_dir, seeds=1, eval_limit=3, max_new_tokens=12, device="cpu", jobs=2,
               overrides=",".join(f"{k}={v}" for k, v in train.items()), **kw)
    return [f"--{k}={v}" for k, v in cfg.items()]


@pytest.mark.slow
def test_study_arms_differ_only_in_their_keys(small_tinycode, tmp_path, monkeypatch):
    """A study end to end (four of the data study's arms, to keep it short): every run's
    config.json differs from the baseline's in the keys its arm names and nothing else
    (experiment.arm_differences, which the experiment runs itself and which raises
    otherwise), and two arms of one scheme in exactly their own key."""
    arms = ("baseline", "critic", "critic:incorrect_mode=signed", "group:group_negative=drop")
    assert set(arms) <= set(experiment.STUDIES["data"]["arms"])
    monkeypatch.setitem(experiment.STUDIES, "data", dict(arms=arms))
    exp_dir = str(tmp_path / "data")
    experiment.main(small_argv(exp_dir, small_tinycode, study="data"))
    keys = json.load(open(os.path.join(exp_dir, "arm_keys.json")))
    assert set(keys) == set(arms)
    assert keys["baseline"] == {}
    assert set(keys["critic:incorrect_mode=signed"]) == {"weighting", "train_on", "incorrect_mode"}
    assert set(keys["group:group_negative=drop"]) == {"weighting", "train_on", "weight_norm", "group_negative"}
    cfg = lambda a: json.load(open(os.path.join(experiment.run_dir({"exp_dir": exp_dir}, a, 0), "config.json")))
    x, y = cfg("critic"), cfg("critic:incorrect_mode=signed")
    assert {k for k in set(x) | set(y) if x.get(k) != y.get(k)} == {"incorrect_mode", "out_dir"}
    # an arm that changed anything else is refused
    x["learning_rate"] *= 2
    json.dump(x, open(os.path.join(experiment.run_dir({"exp_dir": exp_dir}, "critic", 0), "config.json"), "w"))
    with pytest.raises(RuntimeError, match="learning_rate"):
        experiment.arm_differences({"exp_dir": exp_dir}, ["critic"], [0])


@pytest.mark.slow
def test_a_sweep_run_writes_its_section_and_picture(small_tinycode, tmp_path):
    """`python experiment.py --sweep=...` end to end: the report it writes itself (not only
    report.py's rebuild from experiment.json) has the sweep's section and picture."""
    exp_dir = str(tmp_path / "sweep")
    experiment.main(small_argv(exp_dir, small_tinycode, sweep="lam=0.8", arms="critic"))
    text = open(os.path.join(exp_dir, "report.md")).read()
    assert "## Sweep (Experiment 5)" in text and "| 0.8 | critic:lam=0.8 |" in text
    assert os.path.getsize(os.path.join(exp_dir, "sweep.png")) > 1000


def test_a_sweep_point_is_experiment_1s_row_for_the_same_runs(tmp_path):
    """report.sweep_section: each point's row equals the results table's row for the same
    runs (same problems, CIs, tests), with its value in front; the picture is written."""
    import numpy as np
    import report
    rng = np.random.default_rng(0)

    def runs(p):   # 3 seeds x 40 problems, n = 5 samples each
        return [{"nc": {f"p{j}": (5, int(rng.binomial(5, p))) for j in range(40)}} for _ in range(3)]
    rows = {"baseline": runs(0.5), "critic:lam=0.8": runs(0.4), "critic": runs(0.6), "critic:lam=1.0": runs(0.7)}
    points = [("0.8", "critic:lam=0.8"), ("0.95", "critic"), ("1.0", "critic:lam=1.0")]
    lines = report.sweep_section(rows, points, "lam", str(tmp_path), [1])
    main = {line.split("|")[1].strip(): line for line in report.table(rows, [1]).splitlines()[2:]}
    for value, name in points:
        row = next(line for line in lines if line.startswith(f"| {value} | {name} |"))
        assert row == f"| {value} " + main[name]
    assert any(line.startswith("| (the comparison) | baseline |") for line in lines)
    assert os.path.getsize(tmp_path / "sweep.png") > 1000


def test_efficiency_section_reads_the_interleaved_measurement():
    """report.efficiency_section: step time and peak memory against the baseline's from
    bench.py's numbers (medians over rounds), the runs' tokens, steps to the baseline's
    final validation CE, and the reward model's memory at the published sizes."""
    import report

    def run(val, tokens):
        log = [{"iter": 0, "val_loss": val[0]}, {"iter": 10, "loss": 1.0, "step_ms": 5.0, "stage": "main",
                                                   "tokens_seen": tokens // 2},
               {"iter": 20, "loss": 1.0, "step_ms": 5.0, "stage": "main", "tokens_seen": tokens},
               {"iter": 20, "val_loss": val[1]}]
        return {"log": log, "train": {"tokens_seen": tokens, "peak_rss_mb": 400.0, "pretrain_iters": 0}}
    by = {"baseline": [run((1.0, 0.5), 1000)], "critic": [run((1.0, 0.25), 1000)],
          "rm_critic": [run((1.0, 0.75), 1000)]}
    bench = {"ms": {"uniform": [10.0, 12.0], "critic": [15.0, 15.0], "rm_critic": [20.0, 24.0]},
             "peak_mb": {"uniform": [100.0, 100.0], "critic": [110.0, 110.0], "rm_critic": [150.0, 150.0]}}
    lines = report.efficiency_section(by, "/tmp", bench)
    row = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines
           if line.startswith("| ") and not line.startswith("| arm")}
    assert row["rm_critic"][1:5] == ["22", "2.00x", "150.0 MB", "1.50x"]
    assert row["critic"][2] == "1.36x"               # 15 / 11
    # the threshold is the baseline's final CE 0.5: the critic reaches it at step 13.3
    # (1.0 -> 0.25 over 0..20), the baseline at 20, the reward-model critic never
    assert row["critic"][6].startswith("13 ") and row["baseline"][6].startswith("20 ")
    assert row["rm_critic"][6] == "not reached"
    text = "\n".join(lines)
    assert "0.5000" in text and "Llama-2-7B 6.74B params: 12.6 GiB in bf16" in text


def test_report_takes_arms_with_fewer_heads(tmp_path):
    """The H sweep's arms have 1 or 2 heads beside the baseline's 4: the per-head tables
    and pictures give each arm its own heads ('—' past them) instead of failing."""
    import report
    rows = {"baseline": [{"heads": {"heads": [{"accuracy": 0.9}] * 4, "n_tokens": 10}}] * 2,
            "baseline:n_future=1:n_layer=2": [{"heads": {"heads": [{"accuracy": 0.8}], "n_tokens": 10}}] * 2}
    lines = report.heads_table(rows)
    assert "| baseline:n_future=1:n_layer=2 | 2 | 80.0 ± 0.0 | — | — | — |" in lines
    mass = {"baseline": [{"log": [{"w_head_mass": [0.25] * 4}]}],
            "baseline:n_future=2:n_layer=3": [{"log": [{"w_head_mass": [0.5, 0.5]}]}]}
    assert "| baseline:n_future=2:n_layer=3 | 0.500 | 0.500 | — | — |" in report.head_mass_table(mass)
