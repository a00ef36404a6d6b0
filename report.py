"""
The experiment's report: tables and five pictures, written next to each other.

    python report.py out/experiment           # rebuild report.md from finished runs

report.md links training loss per scheme (mean and band over seeds), per-head validation
CE, weight distributions (per scheme and head), the critic's value drift, and pass@k with
95% CIs. The table lists each seed's pass@1; its CIs are percentile bootstraps that
resample both the training seeds and the test problems (eval.bootstrap_ci_seeds), so they
hold the seed-to-seed spread; Δ vs baseline has a Wilcoxon signed-rank p paired by seed
(the test that can support a claim; with 3 seeds it cannot go below 0.25) and one paired
by problem on seed-averaged pass@1 (which ignores the seed spread). Two more tables: each
head's top-1 accuracy on the validation split (the base included), and the critic's
value-head AUC per seed.
"""
import json
import os
import sys
from datetime import date

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load(run, edirs=("eval",), trained=True):
    """Training log and summary (if trained), and per evaluation dir its summary and
    per-problem (n, c), of one run; "eval" and "nc" are the first evaluation's."""
    import eval as ev
    r = {"evals": {}}
    if trained:
        r["log"] = read_jsonl(os.path.join(run, "log.jsonl"))
        r["train"] = json.load(open(os.path.join(run, "summary.json")))
    for e in edirs:
        rows = ev.read_results(os.path.join(run, e, "results.jsonl"))
        r["evals"][e] = {"eval": json.load(open(os.path.join(run, e, "summary.json"))),
                         "nc": {pid: (x["n"], x["c"]) for pid, x in rows.items()}}
    r.update(r["evals"][edirs[0]])
    if os.path.exists(os.path.join(run, "heads.json")):   # experiment.py step 6
        r["heads"] = json.load(open(os.path.join(run, "heads.json")))
    return r


def data_section(exp_dir):
    """Markdown lines on a real setting's data: what self-labelling gave and what each
    source kept after decontamination (meta.json's counts); [] for tinycode."""
    root = os.path.join(exp_dir, "data")
    sl_path = os.path.join(root, "sampled-mbpp", "selflabel.json")
    if not os.path.exists(os.path.join(root, "real", "train", "meta.json")):
        return []
    md = ["## Data", ""]
    if os.path.exists(sl_path):
        sl = json.load(open(sl_path))
        r, st = sl["report"], sl["settings"]
        md += [f"Self-labelled by the base model on MBPP train: {r['n_problems']} problems x "
               f"{st['n']} samples (temperature {st['temperature']}, {st['max_new_tokens']} new "
               f"tokens), {r['n_correct']} of {r['n_samples']} correct ({100 * r['share_correct']:.1f}%); "
               f"{r['problems_with_both']} problems with both correct and incorrect samples, "
               f"{r['problems_all_correct']} all correct, {r['problems_none_correct']} none.", ""]
    train, val = (json.load(open(os.path.join(root, "real", sp, "meta.json"))) for sp in ("train", "val"))
    md += ["| source | problems read | dropped: overlap with an eval set | dropped: longer than block_size "
           "| train samples (problems) | val samples (problems) |", "|---|---|---|---|---|---|"]
    for s, v in zip(train["sources"], val["sources"]):
        c = s["counts"]   # per source, counted before the split (the same in both metas)
        overlap = ", ".join(f"{k.removeprefix('dropped_problems_overlap_')} {n}" for k, n in c.items()
                            if k.startswith("dropped_problems_overlap_")) or "0"
        md.append(f"| {s['source']} | {c.get('problems', 0)} | {overlap} | "
                  f"{c.get('dropped_longer_than_block_size', 0)} | {s['kept_train']} ({s['problems_train']}) "
                  f"| {v['kept_val']} ({v['problems_val']}) |")
    dc = train["decontamination"]
    note = dc if isinstance(dc, str) else (dc.get("rule", f"word {dc['n']}-grams, threshold {dc['threshold']}")
                                           + ", against " + ", ".join(f"{k} ({n} problems)"
                                                                      for k, n in dc["eval_sets"].items()))
    md += ["", f"Train split: {train['n_samples']} samples ({train['n_correct']} correct) over "
           f"{train['n_problems']} problems, {train['n_tokens']:,} tokens. Decontamination: {note}.", ""]
    return md


def matrix(runs, k, pids):
    """(seeds, problems) pass@k of each run on the given problems."""
    import stats as st
    return np.array([[st.pass_at_k(*r["nc"][p], k) for p in pids] for r in runs])


def table(by_scheme, ks, baseline="baseline"):
    """Markdown table. CIs resample seeds and problems (eval.bootstrap_ci_seeds), so they
    hold the spread between training seeds; p(seeds) pairs the runs by seed, p(problems)
    pairs seed-averaged pass@1 by problem (Wilcoxon signed-rank, two-sided)."""
    import stats as st
    pids = sorted(set.intersection(*(set(r["nc"]) for runs in by_scheme.values() for r in runs)))
    head = ["scheme", "seeds", f"pass@{ks[0]} per seed"] + [f"pass@{k} [95% CI]" for k in ks] + \
        [f"Δ pass@{ks[0]} vs {baseline} [95% CI]", "p (seeds)", "p (problems)", "tokens seen",
         "wall / run", "peak mem"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = matrix(by_scheme[baseline], ks[0], pids) if baseline in by_scheme else None
    for scheme, runs in by_scheme.items():
        m = matrix(runs, ks[0], pids)
        cells = [scheme, str(len(runs)), " / ".join(f"{100 * v:.1f}" for v in m.mean(1))]
        for k in ks:
            mean, lo, hi = st.bootstrap_ci_seeds(matrix(runs, k, pids))
            cells.append(f"{100 * mean:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
        if base is not None and scheme != baseline:
            d, lo, hi = st.bootstrap_ci_seeds(m, base=base)
            cells.append(f"{100 * d:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]")
            n = min(len(m), len(base))    # seeds both ran, paired in order
            cells.append(f"{st.paired_test(base.mean(1)[:n], m.mean(1)[:n])['p']:.3g}" if n > 1 else "—")
            cells.append(f"{st.paired_test(base.mean(0), m.mean(0))['p']:.3g}")
        else:
            cells += ["—", "—", "—"]
        if all("train" in r for r in runs):
            tokens = np.mean([r["train"]["tokens_seen"] for r in runs])
            wall = np.mean([r["train"]["wall_s"] for r in runs])
            mem = max(r["train"]["peak_rss_mb"] for r in runs)
            cells += [f"{tokens / 1e6:.2f}M", f"{wall / 60:.1f} min", f"{mem:.0f} MB"]
        else:   # the base model's own row: nothing trained in this experiment
            cells += ["—", "—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sd(values, scale=100):
    """'mean ± sd' over seeds (sample sd), or the one value."""
    v = scale * np.asarray(values, float)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def heads_table(by_scheme):
    """Markdown lines: per-head top-1 accuracy on the validation split (each run's
    heads.json), mean ± sd over seeds, a row per scheme; [] where a run has none."""
    if not all("heads" in r for runs in by_scheme.values() for r in runs):
        return []
    rows = {s: [r["heads"] for r in runs] for s, runs in by_scheme.items()}
    H = len(next(iter(rows.values()))[0]["heads"])
    n_tokens = sorted({h["n_tokens"] for hs in rows.values() for h in hs})
    md = ["### Per-head accuracy", "",
          f"Top-1 accuracy of head k (predicting x_t+k) on the validation split's correct "
          f"solutions ({' / '.join(map(str, n_tokens))} targets of head 1; eval.head_accuracy), in %, "
          f"mean ± sd over seeds. The base row is the model every run starts from.", "",
          "| scheme | seeds | " + " | ".join(f"head {k + 1}" for k in range(H)) + " |",
          "|" + "---|" * (H + 2)]
    for s, hs in rows.items():
        md.append(f"| {s} | {len(hs)} | " + " | ".join(
            mean_sd([h["heads"][k]["accuracy"] for h in hs]) for k in range(H)) + " |")
    return md + [""]


def auc_table(by_scheme):
    """Markdown lines: each critic run's value-head AUC on the validation solutions (train.py
    logs val_value_auc: V just before the last token, correct vs incorrect) at its first,
    best and last evaluation; [] without critic runs."""
    md, val = [], None
    for s, runs in by_scheme.items():
        for r in runs:
            auc = [(x["iter"], x["val_value_auc"]) for x in r["log"] if "val_value_auc" in x]
            if not auc:
                continue
            best = max(auc, key=lambda a: -np.inf if np.isnan(a[1]) else a[1])
            md.append(f"| {s} | {r['seed']} | {fmt_auc(auc[0])} | {fmt_auc(best)} | {fmt_auc(auc[-1])} |")
            cfg = json.load(open(os.path.join(r["train"]["out_dir"], "config.json")))
            val = os.path.join(HERE, cfg["data_dir"], "val", "meta.json")   # relative: to train.py's dir
    if not md:
        return []
    what = ""
    if os.path.exists(val):
        m = json.load(open(val))
        what = (f" (the validation split: {m['n_samples']} solutions, {m['n_correct']} correct; "
                f"train.py reads the first 256)")
    return ["### Value-head AUC", "",
            f"How well the critic's value just before the last token tells the correct from the "
            f"incorrect validation solutions{what}; 0.5 is chance, nan: one class only. "
            f"Per seed, at the run's first, best and last evaluation (step).", "",
            "| scheme | seed | first | best | last |", "|---|---|---|---|---|", *md, ""]


def head_mass_table(by_scheme):
    """Markdown lines: the share of each arm's weight that each head holds (train.py's
    w_head_mass at every log line of main training), mean over the log lines and seeds.
    Uniform weights give every head its share of the valid terms; a scheme that moves
    weight to far heads for their horizon alone shows it here."""
    rows = {}
    for s, runs in by_scheme.items():
        m = [x["w_head_mass"] for r in runs for x in r.get("log", []) if "w_head_mass" in x]
        if m:
            rows[s] = np.mean(m, axis=0)
    if not rows:
        return []
    H = len(next(iter(rows.values())))
    return ["### Weight mass per head", "",
            "The share of each arm's weight on head k's terms (w_head_mass in log.jsonl), mean "
            "over main training's log lines and the seeds.", "",
            "| scheme | " + " | ".join(f"head {k + 1}" for k in range(H)) + " |", "|" + "---|" * (H + 1),
            *[f"| {s} | " + " | ".join(f"{v:.3f}" for v in m) + " |" for s, m in rows.items()], ""]


def robustness(dir_a, dir_b, k=1):
    """Markdown lines: does experiment dir_b reproduce dir_a (the same command under another
    float order, e.g. another thread count)? Per arm, each run's mean pass@k with its 95% CI
    (seeds x problems), and whether each mean lies inside the other run's CI."""
    import stats as st
    out = [f"| arm | {dir_a} pass@{k} [95% CI] | {dir_b} pass@{k} [95% CI] | each inside the other's CI |",
           "|---|---|---|---|"]
    def runs_by_arm(root):   # {arm: its evaluated run dirs}
        out = {}
        for d in sorted(os.listdir(os.path.join(root, "runs"))):
            if "-s" in d and os.path.exists(os.path.join(root, "runs", d, "eval", "summary.json")):
                out.setdefault(d.rsplit("-s", 1)[0], []).append(os.path.join(root, "runs", d))
        return out
    ok, stats = True, {}
    found = {root: runs_by_arm(root) for root in (dir_a, dir_b)}
    for name in sorted(set(found[dir_a]) & set(found[dir_b])):
        for root in (dir_a, dir_b):
            runs = [load(d, trained=False) for d in found[root][name]]
            pids = sorted(set.intersection(*(set(r["nc"]) for r in runs)))
            stats[name, root] = st.bootstrap_ci_seeds(matrix(runs, k, pids))
        (ma, la, ha), (mb, lb, hb) = stats[name, dir_a], stats[name, dir_b]
        inside = la <= mb <= ha and lb <= ma <= hb
        ok &= inside
        out.append(f"| {name} | {100 * ma:.1f} [{100 * la:.1f}, {100 * ha:.1f}] | "
                   f"{100 * mb:.1f} [{100 * lb:.1f}, {100 * hb:.1f}] | {'yes' if inside else 'NO'} |")
    return out, ok


def fmt_auc(step_auc):
    return f"{step_auc[1]:.3f} ({step_auc[0]})"


# ---- pictures --------------------------------------------------------------------------------
def plots(by_scheme, exp_dir, ks, task="tinycode"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import stats as st
    colors = dict(zip(by_scheme, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    files = {}

    # training loss: mean and min-max band over seeds, main stage, by step
    fig, ax = plt.subplots(figsize=(7, 4))
    for s, runs in by_scheme.items():
        xs, ys = [], []
        for r in runs:   # main stage only, its steps counted from 0 (the critic pre-trains first)
            rows = [x for x in r["log"] if "loss" in x and x.get("stage", "main") == "main"]
            xs.append([x["iter"] - r["train"]["pretrain_iters"] for x in rows])
            ys.append([x["loss"] for x in rows])
        n = min(len(y) for y in ys)
        y = np.array([y[:n] for y in ys])
        ax.plot(xs[0][:n], y.mean(0), label=s, color=colors[s])
        ax.fill_between(xs[0][:n], y.min(0), y.max(0), alpha=0.2, color=colors[s])
    ax.set(xlabel="step of main training", ylabel="training loss (weighted)", yscale="log",
           title="Training loss: mean and range over seeds")
    ax.legend()
    files["loss"] = save(fig, exp_dir, "loss.png")

    # per-head validation CE at the end of training, one bar group per head
    fig, ax = plt.subplots(figsize=(7, 4))
    H = len(next(iter(by_scheme.values()))[0]["train"]["val_ce_head"])
    width = 0.8 / len(by_scheme)
    for i, (s, runs) in enumerate(by_scheme.items()):
        v = np.array([r["train"]["val_ce_head"] for r in runs])          # (seeds, H)
        ax.bar(np.arange(H) + i * width, v.mean(0), width, yerr=v.std(0), label=s, color=colors[s])
    ax.set(xticks=np.arange(H) + width * (len(by_scheme) - 1) / 2,
           xticklabels=[f"head {k + 1} (x_t+{k + 1})" for k in range(H)],
           ylabel="validation CE (nats/token)", title="Per-head validation CE (mean ± sd over seeds)")
    ax.legend()
    files["val_ce"] = save(fig, exp_dir, "val_ce_heads.png")

    # weight distributions: histogram per scheme (rows) and head (columns), all seeds pooled
    fig, axes = plt.subplots(len(by_scheme), H, figsize=(3.2 * H, 2.2 * len(by_scheme)), squeeze=False)
    for i, (s, runs) in enumerate(by_scheme.items()):
        counts = None
        for r in runs:
            path = os.path.join(r["train"]["out_dir"], "weight_hist.npz") if "out_dir" in r["train"] else None
            if path and os.path.exists(path):
                h = np.load(path)
                counts = h["counts"] if counts is None else counts + h["counts"]
                bins = h["bins"]
        for k in range(H):
            ax = axes[i, k]
            if counts is not None and counts[k].sum() > 0:
                ax.bar(bins[:-1], counts[k] / counts[k].sum(), width=np.diff(bins), align="edge",
                       color=colors[s])
            ax.set_title(f"{s}, head {k + 1}", fontsize=9)
            ax.set_xlim(0, 4)
    fig.suptitle("Weight distributions (share of terms per weight bin)")
    fig.tight_layout()
    files["weights"] = save(fig, exp_dir, "weights.png")

    # the critic's value drift, and its validation AUC
    critic = {s: runs for s, runs in by_scheme.items() if any("value_drift" in x for x in runs[0]["log"])}
    if critic:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for s, runs in critic.items():
            for j, r in enumerate(runs):
                d = [(x["iter"], x["value_drift"]) for x in r["log"] if "value_drift" in x]
                auc = [(x["iter"], x["val_value_auc"]) for x in r["log"] if "val_value_auc" in x]
                a1.plot(*zip(*d), color=colors[s], alpha=0.7, label=s if j == 0 else None)
                a2.plot(*zip(*auc), color=colors[s], alpha=0.7, marker="o", label=s if j == 0 else None)
        a1.set(xlabel="step", ylabel="mean |V - V at main start|", title="Value drift (probe batch)")
        a2.set(xlabel="step", ylabel="AUC", title="Value head: correct vs incorrect (val)", ylim=(0.3, 1.0))
        a2.axhline(0.5, color="grey", lw=0.8, ls="--")
        a1.legend(), a2.legend()
        fig.tight_layout()
        files["drift"] = save(fig, exp_dir, "value_drift.png")

    # pass@k with 95% CIs
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(ks)
    names = list(by_scheme)
    pids = sorted(set.intersection(*(set(r["nc"]) for runs in by_scheme.values() for r in runs)))
    for j, k in enumerate(ks):
        mats = [matrix(by_scheme[s], k, pids) for s in names]
        stats = [st.bootstrap_ci_seeds(m) for m in mats]
        mean = np.array([m for m, _, _ in stats])
        err = np.array([[m - lo, hi - m] for m, lo, hi in stats]).T
        x = np.arange(len(names)) + j * width
        ax.bar(x, 100 * mean, width, yerr=100 * err, capsize=4, label=f"pass@{k}", alpha=0.8)
        for xi, m in zip(x, mats):    # one dot per seed: the spread the CI has to hold
            ax.scatter(np.full(len(m), xi), 100 * m.mean(1), color="black", s=12, zorder=3)
    ax.set(xticks=np.arange(len(names)) + width * (len(ks) - 1) / 2, xticklabels=names,
           ylabel="% of test problems",
           title=f"pass@k on {task}: mean, 95% CI over seeds and problems, dots = seeds")
    if len(names) > 4:   # controls and ablations: long names side by side would overlap
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.legend()
    files["passk"] = save(fig, exp_dir, "passk.png")
    return files


def save(fig, exp_dir, name):
    import matplotlib.pyplot as plt
    fig.savefig(os.path.join(exp_dir, name), dpi=110, bbox_inches="tight")   # rotated labels stay in
    plt.close(fig)
    return name


def eval_heading(name, edir, summary):
    """One evaluation's title: its name, task, problems and sampling."""
    st = summary["settings"]
    how = "greedy" if st["temperature"] == 0 else f"temperature {st['temperature']}, top-p {st['top_p']}"
    return (f"{name} ({edir}/): {summary['task']}, {summary['n_problems']} problems, "
            f"{st['n_samples']} sample(s) per problem, {how}, {st['max_new_tokens']} new tokens")


def write(cfg, arms, seeds, runs, ref_dir, wall_s=None, evals=None):
    """Write exp_dir/report.md and its pictures; return the tables (markdown). evals:
    [(name, dir, eval.py arguments)] as experiment.eval_table gives them (default: the one
    'eval' dir with the config's ks); the first is the one the pictures show. The base
    model's own evaluation (runs/base), where there is one, is a row of every table."""
    evals = evals or [("eval", "eval", {"k": [int(k) for k in str(cfg["ks"]).split(",")]})]
    edirs = [e for _, e, _ in evals]
    by_scheme = {}
    for name, seed, d in runs:
        r = load(d, edirs)
        r["train"]["out_dir"], r["seed"] = d, seed
        by_scheme.setdefault(name, []).append(r)
    base_dir = os.path.join(cfg["exp_dir"], "runs", "base")
    base_trained = os.path.exists(os.path.join(base_dir, "summary.json"))
    base_row = {}
    if all(os.path.exists(os.path.join(base_dir, e, "summary.json")) for e in edirs):
        base_row = {"base": [load(base_dir, edirs, trained=False)]}
    tabs = []
    for name, e, args in evals:
        rows = {s: [dict(r, nc=r["evals"][e]["nc"]) for r in rs] for s, rs in {**base_row, **by_scheme}.items()}
        head = eval_heading(name, e, by_scheme[next(iter(by_scheme))][0]["evals"][e]["eval"])
        tabs.append(f"### {head}\n\n" + table(rows, [int(k) for k in args["k"]]))
    tab = "\n\n".join(tabs)
    first = evals[0]
    files = plots(by_scheme, cfg["exp_dir"], [int(k) for k in first[2]["k"]],
                  task=by_scheme[next(iter(by_scheme))][0]["eval"]["task"])
    args = " ".join(f"--{k}={v}" for k, v in cfg.items() if k != "exp_dir") if cfg else ""
    md = [f"# Experiment report — {cfg.get('setting', '?')} setting, {date.today().isoformat()}", "",
          f"Command: `python experiment.py {args}`", "",
          f"{len(seeds)} seeds per arm; every arm has the same optimizer, schedule, clipping, "
          f"steps of main training and loss normaliser; the critic adds value pre-training and "
          f"its value loss. Each evaluation below says its samples and temperature.", ""]
    if base_trained:
        stages = sorted(d for d in os.listdir(os.path.dirname(base_dir)) if d.startswith("base_stage"))
        parts = []
        for d in stages + ["base"]:   # experiment.py's base_stages, then the base itself
            b = json.load(open(os.path.join(os.path.dirname(base_dir), d, "summary.json")))
            c = json.load(open(os.path.join(os.path.dirname(base_dir), d, "config.json")))
            parts.append(f"{d}: {b['iter_num']} steps of {c['batch_size']} on the '{c['train_split']}' split, "
                         f"{c['n_future']} heads{', the added heads alone' if c.get('heads_only') else ''}, "
                         f"{b['wall_s'] / 60:.1f} min")
        md += [f"Every run, the reference included, fine-tunes the same base model ({'; then '.join(parts)}), "
               f"so the seeds vary the fine-tuning only.", ""]
    elif base_row:
        md += [f"Every run, the reference included, fine-tunes the same pretrained model "
               f"({cfg.get('base_model') or 'the setting’s'}; heads 2..H added as copies of its last "
               f"block); the row 'base' is that model as it is, so the table shows what fine-tuning changes.", ""]
    if base_row:
        md += ["The 'base' row is one model, not seeds: its CI resamples problems only, its Δ is "
               "paired by problem.", ""]
    train_min = sum(r["train"]["wall_s"] for rs in by_scheme.values() for r in rs) / 60
    if wall_s is not None:   # a rerun that reuses finished runs is quick: say both
        md += [f"Wall time of this invocation: {wall_s / 60:.1f} min; training time summed over "
               f"the {sum(map(len, by_scheme.values()))} runs (not the base or the reference): {train_min:.0f} min.", ""]
    md += data_section(cfg["exp_dir"])
    md += ["## Results", "", tab, ""]
    md += heads_table({**base_row, **by_scheme}) + head_mass_table(by_scheme) + auc_table(by_scheme)
    md += ["## Pictures", ""]
    captions = {"passk": "pass@k with 95% CIs", "loss": "Training loss over seeds",
                "val_ce": "Per-head validation CE", "weights": "Weight distributions per scheme and head",
                "drift": "Critic: value drift and AUC"}
    for key in ("passk", "loss", "val_ce", "weights", "drift"):
        if key in files:
            md += [f"### {captions[key]}", "", f"![{captions[key]}]({files[key]})", ""]
    with open(os.path.join(cfg["exp_dir"], "report.md"), "w") as f:
        f.write("\n".join(md))
    return tab


if __name__ == "__main__":
    if sys.argv[1] == "--compare":   # python report.py --compare EXP_A EXP_B
        lines, ok = robustness(sys.argv[2], sys.argv[3])
        print("\n".join(lines))
        print("every arm's mean lies inside the other run's CI" if ok else "NOT reproduced within the CIs")
        sys.exit(0 if ok else 1)
    exp_dir = sys.argv[1]
    runs_dir = os.path.join(exp_dir, "runs")
    cfg = json.load(open(os.path.join(exp_dir, "experiment.json"))) if \
        os.path.exists(os.path.join(exp_dir, "experiment.json")) else {"exp_dir": exp_dir, "ks": "1"}
    cfg["exp_dir"] = exp_dir
    # the experiment's evaluations and its order of the arms (its table's rows), as it ran them
    evals = [tuple(e) for e in cfg.pop("evals")] if "evals" in cfg else None
    arm_order = cfg.pop("arm_order", None)
    last = (evals or [(None, "eval", None)])[-1][1]
    runs = []
    for d in sorted(os.listdir(runs_dir)):
        if d in ("base", "reference", "reward_model") or d.startswith("base_stage") or not os.path.exists(os.path.join(runs_dir, d, last, "summary.json")):
            continue
        name, seed = d.rsplit("-s", 1)
        runs.append((name, int(seed), os.path.join(runs_dir, d)))
    if arm_order:   # else by name
        order = {a: i for i, a in enumerate(arm_order)}
        runs.sort(key=lambda r: (order.get(r[0], len(order)), r[0], r[1]))
    print(write(cfg, {n for n, _, _ in runs}, sorted({s for _, s, _ in runs}), runs, None, evals=evals))
