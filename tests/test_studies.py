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
import data
import experiment


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
        for a in study:
            assert set(experiment.arm(a)) <= set(train.DEFAULTS), a
    with pytest.raises(ValueError, match="no train.py key"):
        experiment.sweep_points(cfg_of("--sweep=no_such_key=1,2"), tiny)
    with pytest.raises(ValueError, match="studies"):
        experiment.arm_names(cfg_of("--study=nothing"), tiny)


@pytest.fixture(scope="module")
def small_tinycode(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tinycode"))
    data.prepare_tinycode(d, "bytes", n_train=120, n_val=20, n_test=10, n_incorrect=1, n_pretrain=60,
                          families="arithmetic", pretrain_families="arithmetic", noise=0.3)
    return d


def small_argv(exp_dir, data_dir, **kw):
    train = dict(data_dir=data_dir, max_iters=4, lr_decay_iters=4, warmup_iters=1, eval_interval=2,
                 eval_samples=4, log_interval=2, batch_size=4, critic_pretrain_epochs=0.05)
    cfg = dict(exp_dir=exp_dir, seeds=1, eval_limit=3, max_new_tokens=12, device="cpu", jobs=2,
               overrides=",".join(f"{k}={v}" for k, v in train.items()), **kw)
    return [f"--{k}={v}" for k, v in cfg.items()]


@pytest.mark.slow
def test_data_study_arms_differ_only_in_their_keys(small_tinycode, tmp_path):
    """--study=data end to end: every run's config.json differs from the baseline's in the
    keys its arm names and nothing else (experiment.arm_differences, which the experiment
    runs itself and which raises otherwise), and two arms of one scheme in exactly their
    own key."""
    exp_dir = str(tmp_path / "data")
    experiment.main(small_argv(exp_dir, small_tinycode, study="data"))
    keys = json.load(open(os.path.join(exp_dir, "arm_keys.json")))
    assert set(keys) == set(experiment.STUDIES["data"])
    assert set(keys["baseline:train_on=all"]) == {"train_on"}
    assert set(keys["critic:incorrect_mode=signed"]) == {"weighting", "train_on", "incorrect_mode"}
    assert set(keys["group:group_negative=drop"]) == {"weighting", "train_on", "weight_norm", "group_negative"}
    cfg = lambda a: json.load(open(os.path.join(experiment.run_dir({"exp_dir": exp_dir}, a, 0), "config.json")))
    for a, b, key in (("critic", "critic:incorrect_mode=value_only", "incorrect_mode"),
                      ("critic", "critic:incorrect_mode=signed", "incorrect_mode"),
                      ("group", "group:group_negative=drop", "group_negative")):
        x, y = cfg(a), cfg(b)
        assert {k for k in set(x) | set(y) if x.get(k) != y.get(k)} == {key, "out_dir"}, (a, b)
    # an arm that changed anything else is refused
    c = cfg("critic")
    c["learning_rate"] *= 2
    json.dump(c, open(os.path.join(experiment.run_dir({"exp_dir": exp_dir}, "critic", 0), "config.json"), "w"))
    with pytest.raises(RuntimeError, match="learning_rate"):
        experiment.arm_differences({"exp_dir": exp_dir}, ["critic"], [0])
