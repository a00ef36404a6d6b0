"""experiment.py end to end on a very small tinycode: every arm trains and is evaluated,
report.md and its pictures appear, and a rerun redoes only what is missing.

    python -m pytest tests/test_experiment.py -q
"""
import json
import os
import re

import pytest

import data
import experiment


@pytest.fixture(scope="module")
def small_tinycode(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tinycode"))
    data.prepare_tinycode(d, "bytes", n_train=120, n_val=20, n_test=10, n_incorrect=1, n_pretrain=60)
    return d


def argv(exp_dir, data_dir, **kw):
    train = dict(data_dir=data_dir, max_iters=8, lr_decay_iters=8, warmup_iters=2,
                 eval_interval=4, eval_samples=4, log_interval=2, batch_size=4,
                 critic_pretrain_epochs=0.05)
    cfg = dict(exp_dir=exp_dir, seeds=2, n_samples=2, ks="1,2", eval_limit=4,
               max_new_tokens=12, device="cpu", jobs=2,
               overrides=",".join(f"{k}={v}" for k, v in train.items()), **kw)
    return [f"--{k}={v}" for k, v in cfg.items()]


def test_parse_overrides():
    assert experiment.parse_overrides("--max_iters=5, lr_decay_iters=5") == \
        {"max_iters": "5", "lr_decay_iters": "5"}
    with pytest.raises(ValueError, match="not key=value"):
        experiment.parse_overrides("max_iters")


@pytest.mark.slow
def test_experiment_end_to_end_and_resume(small_tinycode, tmp_path, capsys):
    exp_dir = str(tmp_path / "exp")
    experiment.main(argv(exp_dir, small_tinycode))
    out = capsys.readouterr().out
    runs = os.path.join(exp_dir, "runs")
    names = sorted(os.listdir(runs))
    assert names == sorted(["base", "reference"] + [f"{a}-s{s}" for a in ("baseline", "critic", "rho1")
                                                    for s in (0, 1)])
    for name in names:
        summary = json.load(open(os.path.join(runs, name, "summary.json")))
        assert summary["finished"] and summary["iter_num"] == summary["total_iters"]
        if name not in ("base", "reference"):   # every arm evaluated on the same 4 problems, 2 samples each
            ev = json.load(open(os.path.join(runs, name, "eval", "summary.json")))
            assert ev["n_problems"] == 4 and ev["n_completions"] == 8
    # identical budgets: the same main-stage steps and samples in every arm
    main_iters = {n: json.load(open(os.path.join(runs, n, "summary.json")))["total_iters"]
                  - json.load(open(os.path.join(runs, n, "summary.json")))["pretrain_iters"]
                  for n in names if n not in ("base", "reference")}
    assert len(set(main_iters.values())) == 1, main_iters
    # every run but the base fine-tunes the base, which trained on the 'pretrain' split
    base_cfg = json.load(open(os.path.join(runs, "base", "config.json")))
    assert base_cfg["train_split"] == "pretrain" and base_cfg["init_from"] == "scratch"
    for n in names:
        if n != "base":
            assert os.path.samefile(json.load(open(os.path.join(runs, n, "config.json")))["init_from"],
                                    os.path.join(runs, "base"))
    # the rho1 arms read the experiment's own reference
    cfg = json.load(open(os.path.join(runs, "rho1-s0", "config.json")))
    assert os.path.samefile(cfg["ref_init_from"], os.path.join(runs, "reference"))
    # report: the table printed and written, every picture it links exists
    report = open(os.path.join(exp_dir, "report.md")).read()
    for scheme in ("baseline", "critic", "rho1"):
        assert re.search(rf"^\| {scheme} \| 2 \|", report, re.M), scheme
        assert f"| {scheme} | 2 |" in out
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(pictures) == 5
    for p in pictures:
        assert os.path.getsize(os.path.join(exp_dir, p)) > 1000

    # a rerun trains and evaluates nothing again
    def stamps():
        return {n: (os.path.getmtime(os.path.join(runs, n, "ckpt.pt")),
                    os.path.getsize(os.path.join(runs, n, "train.log"))) for n in names}
    before = stamps()
    experiment.main(argv(exp_dir, small_tinycode))
    assert stamps() == before
    # a run whose evaluation was lost (killed mid-way) is evaluated again, and only that
    os.remove(os.path.join(runs, "critic-s1", "eval", "summary.json"))
    experiment.main(argv(exp_dir, small_tinycode))
    after = stamps()
    assert os.path.exists(os.path.join(runs, "critic-s1", "eval", "summary.json"))
    assert after["critic-s1"][0] == before["critic-s1"][0]        # not retrained
    assert {n: v for n, v in after.items() if n != "critic-s1"} == \
        {n: v for n, v in before.items() if n != "critic-s1"}
