"""experiment.py end to end on a very small tinycode: every arm trains and is evaluated,
report.md and its pictures appear, its per-head accuracy and value-AUC tables hold what the
saved checkpoints and the critic's logs say, and a rerun redoes only what is missing.

    python -m pytest tests/test_experiment.py -q
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import data
import eval as ev
import experiment
import pretrained
import sample

ARMS = experiment.ARMS   # baseline, critic, rho1, the oracle and its shuffled control


@pytest.fixture(scope="module")
def small_tinycode(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tinycode"))
    data.prepare_tinycode(d, "bytes", n_train=120, n_val=20, n_test=10, n_incorrect=1, n_pretrain=60,
                          families="arithmetic", pretrain_families="arithmetic", noise=0.3)
    return d


def argv(exp_dir, data_dir, **kw):
    train = dict(data_dir=data_dir, max_iters=8, lr_decay_iters=8, warmup_iters=2,
                 eval_interval=4, eval_samples=4, log_interval=2, batch_size=4,
                 critic_pretrain_epochs=0.05)
    cfg = dict(exp_dir=exp_dir, seeds=2, n_samples=2, ks="1,2", eval_limit=4,
               max_new_tokens=12, device="cpu", jobs=2,
               overrides=",".join(f"{k}={v}" for k, v in train.items()), **kw)
    return [f"--{k}={v}" for k, v in cfg.items()]


def report_rows(report, heading):
    """The rows (lists of cells) of the markdown table under '### heading', header excluded."""
    section = report.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| scheme")]


def check_heads_and_auc(exp_dir, report, schemes, seeds):
    """report.md's per-head accuracy table equals eval.head_accuracy recomputed here on the
    saved checkpoints (and on the base as every run starts from it: a run dir, or the
    pretrained model with the runs' heads), mean and sample sd over seeds; its value-AUC
    table equals the critic runs' logs (first, best, last evaluation)."""
    runs = os.path.join(exp_dir, "runs")
    ref = json.load(open(os.path.join(runs, "reference", "config.json")))
    val, train = (data.PreparedSplit(os.path.join(experiment.HERE, ref["data_dir"], s)) for s in ("val", "train"))

    def accuracy(source):
        if pretrained.is_pretrained_source(source):
            model = pretrained.load_pretrained(source, n_future=ref["n_future"], head_init=ref["head_init"],
                                               max_seq_len=ref["block_size"])[0]
        else:
            model = sample.load_model(source)[0]
        return [h["accuracy"] for h in ev.head_accuracy(model, val, train, batch_size=1)["heads"]]

    table = {row[0]: row[1:] for row in report_rows(report, "Per-head accuracy")}
    expected = {"base": [accuracy(ref["init_from"])]}
    expected.update({s: [accuracy(os.path.join(runs, f"{s}-s{i}")) for i in seeds] for s in schemes})
    assert set(table) == set(expected)
    for scheme, accs in expected.items():
        a = 100 * np.array(accs)                                   # (seeds, H)
        assert table[scheme][0] == str(len(accs)) and len(table[scheme]) == 1 + a.shape[1] == 1 + ref["n_future"]
        for k, cell in enumerate(table[scheme][1:]):
            mean, _, sd = cell.partition(" ± ")
            assert abs(float(mean) - a[:, k].mean()) <= 0.05 + 1e-9, (scheme, k, cell)
            if len(accs) > 1:
                assert abs(float(sd) - a[:, k].std(ddof=1)) <= 0.05 + 1e-9, (scheme, k, cell)
    # the critic's value-head AUC per seed, as its log has it
    rows = report_rows(report, "Value-head AUC")
    assert [(r[0], int(r[1])) for r in rows] == [("critic", i) for i in seeds]
    for scheme, seed, *cells in rows:
        log = [json.loads(line) for line in open(os.path.join(runs, f"{scheme}-s{seed}", "log.jsonl"))]
        auc = [(x["iter"], x["val_value_auc"]) for x in log if "val_value_auc" in x]
        best = max(auc, key=lambda a: -math.inf if math.isnan(a[1]) else a[1])
        for cell, (step, value) in zip(cells, [auc[0], best, auc[-1]]):
            got, got_step = re.fullmatch(r"(\S+) \((\d+)\)", cell).groups()
            assert int(got_step) == step
            assert (math.isnan(value) and got == "nan") or abs(float(got) - value) <= 5e-4 + 1e-9, (cell, value)


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
    assert names == sorted(["base_stage1", "base", "reference"] + [f"{a}-s{s}" for a in ARMS for s in (0, 1)])
    for name in names:
        summary = json.load(open(os.path.join(runs, name, "summary.json")))
        assert summary["finished"] and summary["iter_num"] == summary["total_iters"]
        if name not in ("base", "base_stage1", "reference"):   # every arm evaluated on the same 4 problems, 2 samples each
            ev = json.load(open(os.path.join(runs, name, "eval", "summary.json")))
            assert ev["n_problems"] == 4 and ev["n_completions"] == 8
    # identical budgets: the same main-stage steps and samples in every arm
    main_iters = {n: json.load(open(os.path.join(runs, n, "summary.json")))["total_iters"]
                  - json.load(open(os.path.join(runs, n, "summary.json")))["pretrain_iters"]
                  for n in names if n not in ("base", "base_stage1", "reference")}
    assert len(set(main_iters.values())) == 1, main_iters
    # every run but the base fine-tunes the base: a 2-head model pretrained on the
    # 'pretrain' split, then its two added heads alone on the same split
    stage1 = json.load(open(os.path.join(runs, "base_stage1", "config.json")))
    base_cfg = json.load(open(os.path.join(runs, "base", "config.json")))
    assert stage1["train_split"] == base_cfg["train_split"] == "pretrain" and stage1["init_from"] == "scratch"
    assert stage1["n_future"] == 2 and base_cfg["n_future"] == 4 and base_cfg["heads_only"]
    assert os.path.samefile(base_cfg["init_from"], os.path.join(runs, "base_stage1"))
    for n in names:
        if n not in ("base", "base_stage1"):
            assert os.path.samefile(json.load(open(os.path.join(runs, n, "config.json")))["init_from"],
                                    os.path.join(runs, "base"))
    # the rho1 arms read the experiment's own reference
    cfg = json.load(open(os.path.join(runs, "rho1-s0", "config.json")))
    assert os.path.samefile(cfg["ref_init_from"], os.path.join(runs, "reference"))
    # report: the table printed and written, every picture it links exists
    report = open(os.path.join(exp_dir, "report.md")).read()
    for scheme in ARMS:
        assert re.search(rf"^\| {scheme} \| 2 \|", report, re.M), scheme
        assert f"| {scheme} | 2 |" in out
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(pictures) == 5 + 3   # + the stability section's (report.stability_section)
    for p in pictures:
        assert os.path.getsize(os.path.join(exp_dir, p)) > 1000
    check_heads_and_auc(exp_dir, report, ARMS, (0, 1))
    # `python report.py exp_dir` rebuilds the same results from the finished runs
    os.rename(os.path.join(exp_dir, "report.md"), os.path.join(exp_dir, "report-experiment.md"))
    subprocess.run([sys.executable, os.path.join(experiment.HERE, "report.py"), exp_dir], check=True,
                   capture_output=True)
    rebuilt = open(os.path.join(exp_dir, "report.md")).read()
    assert rebuilt.split("## Results", 1)[1] == report.split("## Results", 1)[1]

    # a rerun trains and evaluates nothing again
    def stamps():
        return {n: (os.path.getmtime(os.path.join(runs, n, "ckpt.pt")),   # a job's log is its last dir's
                    os.path.getsize(os.path.join(runs, "base" if n == "base_stage1" else n, "train.log")))
                for n in names}
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


def test_arms_by_name():
    """Any scheme is an arm; its controls are made by name and keep its data and scheme."""
    assert experiment.arm("baseline") == dict(weighting="uniform", train_on="correct")
    assert experiment.arm("critic") == dict(weighting="critic", train_on="all")
    assert experiment.arm("oracle_shuffled") == dict(weighting="shuffled", control_of="oracle", train_on="correct")
    assert experiment.arm("critic_random") == dict(weighting="random_matched", _matched="critic", train_on="all")
    assert experiment.arm("rho1_tokens") == dict(weighting="rho1", train_on="correct", weight_norm="tokens")
    # a scheme's declared normalisation and data go into its arms and their controls
    assert experiment.arm("group_shuffled") == dict(weighting="shuffled", control_of="group", train_on="all",
                                                    weight_norm="tokens")
    assert experiment.needs_reference(experiment.arm("hybrid_shuffled"))
    assert experiment.needs_reward_model(experiment.arm("rm_critic"))
    assert not experiment.needs_reference(experiment.arm("dft")) and not experiment.needs_reward_model(experiment.arm("critic"))
    with pytest.raises(ValueError, match="no scheme"):
        experiment.arm("no_such_idea_shuffled")


def write_fake_runs(root, arm, per_seed):
    """An experiment dir whose runs/<arm>-s<i>/eval holds per-problem (n, c) counts."""
    for i, counts in enumerate(per_seed):
        d = os.path.join(root, "runs", f"{arm}-s{i}", "eval")
        os.makedirs(d)
        with open(os.path.join(d, "results.jsonl"), "w") as f:
            for j, c in enumerate(counts):
                f.write(json.dumps({"problem_id": f"p{j}", "n": 5, "c": int(c)}) + "\n")
        json.dump({"pass@1": {}}, open(os.path.join(d, "summary.json"), "w"))


def test_compare_two_experiments(tmp_path):
    """report.robustness: the same results reproduce; a shift beyond the CIs does not, and
    `report.py --compare` exits non-zero on it."""
    import report
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(3, 40))
    a, same, far = (str(tmp_path / n) for n in ("a", "same", "far"))
    write_fake_runs(a, "baseline", counts)
    write_fake_runs(same, "baseline", counts[::-1])          # the seeds in another order
    write_fake_runs(far, "baseline", np.minimum(counts + 3, 5))
    lines, ok = report.robustness(a, same)
    assert ok and "| baseline |" in lines[-1] and lines[-1].endswith("yes |")
    mean = counts.mean() / 5 * 100
    assert f"{mean:.1f} [" in lines[-1]
    lines, ok = report.robustness(a, far)
    assert not ok and lines[-1].endswith("NO |")
    p = subprocess.run([sys.executable, os.path.join(experiment.HERE, "report.py"), "--compare", a, far],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "NOT reproduced" in p.stdout
