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
value-head AUC per seed. Every report ends its results with "Stability and convergence"
(the proposal's Experiment 4, from the runs' log.jsonl: stability_section): gradient norms,
the weights' entropy over the heads, the critic's value drift, the weights' rank correlation
with the reference CE, the seed-to-seed spread of validation CE, and the steps each arm needs
to reach the baseline's final validation CE; three more pictures.
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


def common_problems(by_scheme):
    return sorted(set.intersection(*(set(r["nc"]) for runs in by_scheme.values() for r in runs)))


def table(by_scheme, ks, baseline="baseline", pids=None):
    """Markdown table. CIs resample seeds and problems (eval.bootstrap_ci_seeds), so they
    hold the spread between training seeds; p(seeds) pairs the runs by seed, p(problems)
    pairs seed-averaged pass@1 by problem (Wilcoxon signed-rank, two-sided). pids: the
    problems (default: those every run has)."""
    import stats as st
    pids = pids or common_problems(by_scheme)
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
    H = max(len(h["heads"]) for hs in rows.values() for h in hs)   # arms may have fewer heads (the H sweep)
    n_tokens = sorted({h["n_tokens"] for hs in rows.values() for h in hs})
    md = ["### Per-head accuracy", "",
          f"Top-1 accuracy of head k (predicting x_t+k) on the validation split's correct "
          f"solutions ({' / '.join(map(str, n_tokens))} targets of head 1; eval.head_accuracy), in %, "
          f"mean ± sd over seeds. The base row is the model every run starts from.", "",
          "| scheme | seeds | " + " | ".join(f"head {k + 1}" for k in range(H)) + " |",
          "|" + "---|" * (H + 2)]
    for s, hs in rows.items():
        md.append(f"| {s} | {len(hs)} | " + " | ".join(
            mean_sd([h["heads"][k]["accuracy"] for h in hs]) if k < len(hs[0]["heads"]) else "—"
            for k in range(H)) + " |")
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
    H = max(len(m) for m in rows.values())
    return ["### Weight mass per head", "",
            "The share of each arm's weight on head k's terms (w_head_mass in log.jsonl), mean "
            "over main training's log lines and the seeds.", "",
            "| scheme | " + " | ".join(f"head {k + 1}" for k in range(H)) + " |", "|" + "---|" * (H + 1),
            *[f"| {s} | " + " | ".join([f"{v:.3f}" for v in m] + ["—"] * (H - len(m))) + " |"
              for s, m in rows.items()], ""]


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
    colors = arm_colors(by_scheme)
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
    H = max(len(r["train"]["val_ce_head"]) for runs in by_scheme.values() for r in runs)
    width = 0.8 / len(by_scheme)
    for i, (s, runs) in enumerate(by_scheme.items()):
        v = np.array([r["train"]["val_ce_head"] for r in runs])          # (seeds, its H: the H sweep's differ)
        ax.bar(np.arange(v.shape[1]) + i * width, v.mean(0), width, yerr=v.std(0), label=s, color=colors[s])
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
            if counts is not None and k < len(counts) and counts[k].sum() > 0:
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


def arm_colors(names):
    """{arm: colour}, the same in every picture; past ten arms the 20-colour palette, so
    that no two arms share one."""
    import matplotlib
    import matplotlib.pyplot as plt
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"] if len(names) <= 10 else \
        [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    return dict(zip(names, palette * 3))


def save(fig, exp_dir, name):
    import matplotlib.pyplot as plt
    fig.savefig(os.path.join(exp_dir, name), dpi=110, bbox_inches="tight")   # rotated labels stay in
    plt.close(fig)
    return name


# ---- stability and convergence (the proposal's Experiment 4) ---------------------------------
def series(r, key):
    """{step of main training: value} of a run's log rows that hold key. Steps count from
    the start of main training, as in the loss picture: the critic's value pre-training
    comes first, and its LM does not train there (grad_norm 0), so those rows are left out
    and a validation during it sees the LM of step 0."""
    p = r["train"].get("pretrain_iters", 0)
    return {max(x["iter"] - p, 0): x[key] for x in r.get("log", [])
            if x.get(key) is not None and x.get("stage", "main") == "main"}


def over_seeds(runs, key):
    """(the steps every seed logged key at, its values (seeds, steps)), or None if none did."""
    got = [s for s in (series(r, key) for r in runs) if s]
    if not got:
        return None
    steps = sorted(set.intersection(*map(set, got)))
    return steps, np.array([[s[t] for t in steps] for s in got], float)


def grad_norm_stats(runs):
    """The LM's gradient norm before clipping at main training's log steps (each that one
    step's norm): mean, min and max over seeds per step, and each seed's mean over its log
    steps (per_seed) -> dict, or None where no run logged it."""
    got = over_seeds(runs, "grad_norm")
    if got is None:
        return None
    steps, g = got
    per_seed = [np.mean(list(s.values())) for s in (series(r, "grad_norm") for r in runs) if s]
    return {"steps": steps, "mean": g.mean(0), "lo": g.min(0), "hi": g.max(0), "per_seed": np.array(per_seed)}


def entropy_stats(runs):
    """w_entropy (a log step's mean over positions of the entropy of the weights' shares
    over the heads) of every main-training log row of every seed, pooled: its values,
    median and 10th / 90th percentiles -> dict, or None where no run logged it."""
    v = np.array([x for r in runs for x in series(r, "w_entropy").values()], float)
    if not len(v):
        return None
    p10, median, p90 = np.percentile(v, [10, 50, 90])
    return {"values": v, "median": median, "p10": p10, "p90": p90}


def per_step_mean(runs, key):
    """A quantity of main training's log steps (the critic's value_drift, w_ref_spearman)
    -> (steps, its mean over seeds at each), or None where no run logged it."""
    got = over_seeds(runs, key)
    return None if got is None else (got[0], np.nanmean(got[1], 0))


def val_ce_stats(runs):
    """Validation CE (val_loss, the mean over heads) at each validation step every seed
    reached: mean and sample sd over seeds (nan with one seed) -> dict, or None."""
    got = over_seeds(runs, "val_loss")
    if got is None:
        return None
    steps, v = got
    return {"steps": steps, "mean": v.mean(0), "sd": v.std(0, ddof=1) if len(v) > 1 else np.full(len(steps), np.nan)}


def steps_to(r, threshold):
    """The first step of main training at which a run's validation CE is <= threshold,
    linearly interpolated between the validation points either side, and tokens_seen of the
    training log row nearest that step -> (step, tokens or None), or None if never reached."""
    val = sorted(series(r, "val_loss").items())
    for i, (t, v) in enumerate(val):
        if v <= threshold:
            if i > 0:   # val[i - 1] is above the threshold
                t0, v0 = val[i - 1]
                t = t0 + (v0 - threshold) / (v0 - v) * (t - t0)
            tokens = series(r, "tokens_seen")
            return t, tokens[min(tokens, key=lambda s: abs(s - t))] if tokens else None
    return None


def convergence(by_scheme, baseline="baseline"):
    """Steps to a fixed validation CE: the baseline's final one (each seed's last
    validation), mean over its seeds -> (threshold, {arm: [steps_to of each seed]}), or
    (None, {}) where no baseline run logged validation."""
    finals = [s[max(s)] for s in (series(r, "val_loss") for r in by_scheme.get(baseline, [])) if s]
    if not finals:
        return None, {}
    threshold = float(np.mean(finals))
    return threshold, {a: [steps_to(r, threshold) for r in runs] for a, runs in by_scheme.items()}


def stability_section(by_scheme, exp_dir, baseline="baseline"):
    """Markdown lines of the report's "Stability and convergence" section (Experiment 4),
    from the runs' log.jsonl, and its three pictures; a statistic no run logged reads
    'not logged'."""
    colors = arm_colors(by_scheme)
    arms = list(by_scheme)
    grad = {a: grad_norm_stats(rs) for a, rs in by_scheme.items()}
    ent = {a: entropy_stats(rs) for a, rs in by_scheme.items()}
    drift = {a: per_step_mean(rs, "value_drift") for a, rs in by_scheme.items()}
    rho = {a: per_step_mean(rs, "w_ref_spearman") for a, rs in by_scheme.items()}
    val = {a: val_ce_stats(rs) for a, rs in by_scheme.items()}
    threshold, reached = convergence(by_scheme, baseline)
    H = next((len(r["train"]["val_ce_head"]) for rs in by_scheme.values() for r in rs
              if r["train"].get("val_ce_head")), None)
    na = "not logged"
    pm = lambda v, f: f"{v.mean():{f}} ± {v.std(ddof=1):{f}}" if len(v) > 1 else f"{v[0]:{f}}"
    steps_of = lambda d: ", ".join(f"{t}: {v:.3f}" for t, v in zip(*d))
    md = ["## Stability and convergence", "",
          "From each run's log.jsonl; steps count from the start of main training (the critic's "
          "value pre-training rows are left out: its LM does not train there and logs grad_norm 0). "
          f"'{na}': no run of the arm logged it (older runs, or arms without weights or a critic).", "",
          "- **Gradient norm**: the LM's gradient norm before clipping at each log step (that step's "
          "own, every log_interval-th step); the table gives each seed's mean over its log steps, "
          "mean ± sd over seeds; the picture, the mean over seeds with the min–max band.",
          "- **Weight entropy**: w_entropy, a log step's mean over positions of the entropy of the "
          "weights' shares over the heads; median [10th, 90th percentile] over every log row of "
          "every seed. Uniform weights have entropy log H"
          + (f" = {np.log(H):.3f} (H = {H})" if H else "") + " at a position whose H heads all have "
          "a target, less near a sample's end (fewer heads), so the baseline sits a little below it.",
          "- **Value drift** (critic arms): mean |V − V at the start of main training| on a probe "
          "batch, mean over seeds at each log step.",
          "- **Spearman(w, ref CE)** (arms that read a reference CE): the rank correlation, ties "
          "averaged, of a log step's weights with the reference's CE of the same (t, k) terms' "
          "target x_t+k (the reference's own head k at t with rho1_ref='matched'), over the valid "
          "terms of the step's micro-batches; logged where the batch carries the reference CE "
          "(ref_ce_mode='cache'); mean over log steps and seeds.", "",
          "### Training stability", "",
          "| scheme | seeds | grad norm, mean over training (± sd over seeds) | weight entropy, median "
          "[p10, p90] | value drift, last log step | Spearman(w, ref CE) |", "|---|---|---|---|---|---|"]
    for a in arms:
        g, e, d, s = grad[a], ent[a], drift[a], rho[a]
        md.append(f"| {a} | {len(by_scheme[a])} | {pm(g['per_seed'], '.3f') if g else na} | "
                  + (f"{e['median']:.3f} [{e['p10']:.3f}, {e['p90']:.3f}]" if e else na) + " | "
                  + (f"{d[1][-1]:.4f} (step {d[0][-1]})" if d else na) + " | "
                  + (f"{np.nanmean(s[1]):+.3f}" if s else na) + " |")
    per_step = [(a, "value drift", drift[a]) for a in arms if drift[a]] + \
               [(a, "Spearman(w, ref CE)", rho[a]) for a in arms if rho[a]]
    if per_step:
        md += ["", "Per log step (step of main training: mean over seeds):", "",
               "| scheme | quantity | per log step |", "|---|---|---|",
               *[f"| {a} | {q} | {steps_of(d)} |" for a, q, d in per_step]]
    md += ["", "### Convergence", ""]
    if threshold is None:
        md += [f"Steps to a fixed validation CE: {na} (no '{baseline}' arm with validation rows).", ""]
    else:
        md += [f"Validation CE (val_loss, nats/token, mean over heads) at each validation step, mean ± "
               f"sd over seeds. Steps to a fixed validation CE: the threshold is the {baseline}'s final "
               f"validation CE, mean over its {len(by_scheme[baseline])} seeds, **{threshold:.4f}**; for "
               f"each seed, the first step at which val_loss <= threshold, interpolated linearly between "
               f"the validation points either side (so only as fine as the validation interval; the "
               f"{baseline}'s own seeds reach it near their end by construction), mean over the seeds "
               f"that reach it; tokens seen: tokens_seen of the training log row nearest that step "
               f"(the critic's include its value pre-training's).", ""]
    md += ["| scheme | val CE per validation step (mean ± sd over seeds) | steps to val CE <= threshold "
           "(seeds reaching it) | tokens seen then |", "|---|---|---|---|"]
    for a in arms:
        v, hits = val[a], [x for x in reached.get(a, []) if x is not None]
        cell = na if v is None else ", ".join(
            f"{t}: {m:.4f}" + ("" if np.isnan(sd) else f" ± {sd:.4f}") for t, m, sd in zip(v["steps"], v["mean"], v["sd"]))
        if threshold is None or v is None:
            to, tok = na, na
        elif not hits:
            to, tok = f"not reached (0 of {len(by_scheme[a])})", "—"
        else:
            to = f"{np.mean([t for t, _ in hits]):.1f} ({len(hits)} of {len(by_scheme[a])})"
            toks = [n for _, n in hits if n is not None]
            tok = f"{np.mean(toks) / 1e6:.3f}M" if toks else na
        md.append(f"| {a} | {cell} | {to} | {tok} |")
    md.append("")
    for caption, f in stability_pictures(grad, ent, val, threshold, H, exp_dir, colors, baseline):
        md += [f"![{caption}]({f})", ""]
    return md


def stability_pictures(grad, ent, val, threshold, H, exp_dir, colors, baseline="baseline"):
    """The stability section's pictures: gradient norm over training, the weight entropy's
    spread, validation CE over seeds -> [(caption, file)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = list(grad)
    pictures = []
    if any(grad.values()):
        fig, ax = plt.subplots(figsize=(8, 4))
        for a, g in grad.items():
            if g:
                ax.plot(g["steps"], g["mean"], label=a, color=colors[a], marker=".")
                ax.fill_between(g["steps"], g["lo"], g["hi"], alpha=0.15, color=colors[a])
        ax.set(xlabel="step of main training", ylabel="LM gradient norm (before clipping)", yscale="log",
               title="Gradient norm at the log steps: mean and range over seeds")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):   # 0.3, not 3x10^-1
            axis(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.legend(fontsize=8, ncol=2 if len(arms) > 6 else 1, bbox_to_anchor=(1.01, 1), loc="upper left")
        pictures.append(("Gradient norm over training", save(fig, exp_dir, "stability_grad_norm.png")))
    if any(ent.values()):
        names = [a for a in arms if ent[a]]
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.5))
        box = ax.boxplot([ent[a]["values"] for a in names], whis=(10, 90), patch_artist=True,
                         flierprops=dict(markersize=3), medianprops=dict(color="black"))
        ax.set_xticks(range(1, len(names) + 1), names)
        for patch, a in zip(box["boxes"], names):
            patch.set(facecolor=colors[a], alpha=0.6)
        if H:
            ax.axhline(np.log(H), color="grey", lw=0.8, ls="--", label=f"uniform over {H} heads: log {H}")
            ax.legend(fontsize=8)
        ax.set(ylabel="entropy over heads (nats)", title="Weight entropy per log step (whiskers: 10th-90th pct)")
        if len(names) > 4:
            plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        pictures.append(("Weight entropy", save(fig, exp_dir, "stability_w_entropy.png")))
    if any(val.values()):
        fig, ax = plt.subplots(figsize=(8, 4))
        for a, v in val.items():
            if v:
                ax.errorbar(v["steps"], v["mean"], yerr=np.nan_to_num(v["sd"]), label=a, color=colors[a],
                            marker="o", capsize=3)
        if threshold is not None:
            ax.axhline(threshold, color="grey", lw=0.8, ls="--", label=f"threshold ({baseline} final)")
        ax.set(xlabel="step of main training", ylabel="validation CE (nats/token)",
               title="Validation CE: mean ± sd over seeds")
        ax.legend(fontsize=8, ncol=2 if len(arms) > 6 else 1, bbox_to_anchor=(1.01, 1), loc="upper left")
        pictures.append(("Validation CE over seeds", save(fig, exp_dir, "stability_val_ce.png")))
    return pictures


def sweep_section(rows, points, key, exp_dir, ks):
    """Experiment 5: the sweep's points (experiment.sweep_points: [value, arm name]) as the
    main table's rows for those runs (the same function on the same problems, so a point's
    numbers are Experiment 1's), with the value as a column, and a picture of each point's
    Δ pass@k vs the baseline against the value, with its paired 95% CI, a line per swept scheme."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import stats as st
    pids = common_problems(rows)
    view = {"baseline": rows["baseline"], **{a: rows[a] for _, a in points}}
    lines = table(view, ks, pids=pids).splitlines()
    value_of = {a: v for v, a in points}
    out = [lines[0].replace("| scheme |", f"| {key} | scheme |", 1), "|---" + lines[1]]
    for line in lines[2:]:
        name = line.split("|")[1].strip()
        out.append(f"| {value_of.get(name, '(the comparison)')} " + line)
    # the picture: each point's difference from the baseline, paired by seed and problem (the
    # table's Δ column), since two arms' own CIs overlap where their paired difference does not
    fig, ax = plt.subplots(figsize=(6, 3.6))
    base = matrix(rows["baseline"], ks[0], pids)
    ax.axhline(0, color="0.5", lw=1, label="the baseline")
    schemes = dict.fromkeys(a.split(":")[0] for _, a in points)
    numeric = all(str(v).replace(".", "", 1).lstrip("-").isdigit() for v, _ in points)
    xs_all = sorted({float(v) for v, _ in points}) if numeric else list(dict.fromkeys(str(v) for v, _ in points))
    for scheme in schemes:
        pts = [(v, a) for v, a in points if a.split(":")[0] == scheme]
        x = [float(v) if numeric else xs_all.index(str(v)) for v, _ in pts]
        m = np.array([st.bootstrap_ci_seeds(matrix(rows[a], ks[0], pids), base=base) for _, a in pts]) * 100
        order = np.argsort(x)
        x, m = np.array(x)[order], m[order]
        ax.errorbar(x, m[:, 0], yerr=[m[:, 0] - m[:, 1], m[:, 2] - m[:, 0]], marker="o", capsize=3,
                    label=f"{scheme}, {key} varied")
    if not numeric:
        ax.set_xticks(range(len(xs_all)), xs_all)
    ax.set(xlabel=key, ylabel=f"Δ pass@{ks[0]} vs baseline (points)",
           title=f"Sweep of {key}: Δ vs the baseline, 95% CI (seeds x problems, paired)")
    ax.legend(fontsize=8)
    path = save(fig, exp_dir, "sweep.png")
    return ["## Sweep (Experiment 5)", "",
            f"Each point is one arm that differs from its scheme's in `{key}` only (arm_keys.json); "
            "the point at the setting's own value is the scheme's arm itself. Its numbers are the "
            "results table's for the same runs.", "", *out, "", f"![sweep]({path})", ""]


# the published sizes of the proposal's models (their config.json), for the memory arithmetic
PUBLISHED = {"Llama-3.2-1B": 1.236e9, "Llama-2-7B": 6.738e9}


def efficiency_section(by_scheme, exp_dir, bench=None):
    """Experiment 2: per arm, step time and peak memory (bench.py's interleaved measurement
    of the same arms, each in its own process, where exp_dir/efficiency.json has it; the
    runs' own otherwise), tokens seen and steps / tokens / wall time to the baseline's final
    validation CE; then what a reward model costs at the proposal's scale, as arithmetic."""
    threshold, reached = convergence(by_scheme)
    lines = ["## Efficiency (Experiment 2)", ""]
    if bench:
        lines += [f"Step time and peak memory: `bench.py --parts=schemes --arms=...`, each arm in its own "
                  f"process, {len(next(iter(bench['ms'].values())))} interleaved rounds of "
                  f"{bench.get('max_iters', '?')} steps (median; memory: growth of peak RSS over the "
                  "process's start on CPU, max_memory_allocated on CUDA).", ""]
    lines += ["| arm | ms / step | vs baseline | peak memory | vs baseline | tokens seen | "
              "steps to the threshold | tokens to it | wall to it |", "|" + "---|" * 9]
    label = lambda a: "uniform" if a == "baseline" else (f"{a} (cache)" if bench and f"{a} (cache)" in bench["ms"] else a)
    for a, runs in by_scheme.items():
        if bench and label(a) in bench["ms"]:
            ms, mb = np.median(bench["ms"][label(a)]), np.median(bench["peak_mb"][label(a)])
            ms0, mb0 = np.median(bench["ms"]["uniform"]), np.median(bench["peak_mb"]["uniform"])
            mem = f"{mb:.1f} MB"
        else:   # the runs' own: median step time of their main stage, their peak RSS
            per = lambda rs: [np.median([x["step_ms"] for x in r["log"] if "step_ms" in x and x.get("stage") == "main"]) for r in rs]
            ms, ms0 = np.mean(per(runs)), np.mean(per(by_scheme["baseline"]))
            mb = max(r["train"]["peak_rss_mb"] for r in runs)
            mb0 = max(r["train"]["peak_rss_mb"] for r in by_scheme["baseline"])
            mem = f"{mb:.0f} MB (RSS)"
        hit = [x for x in reached.get(a, []) if x]
        steps = f"{np.mean([h[0] for h in hit]):.0f} ({len(hit)}/{len(runs)} seeds)" if hit else "not reached"
        known = [h[1] for h in hit if h[1] is not None]
        toks = f"{np.mean(known) / 1e6:.3f}M" if known else "—"
        wall = f"{np.mean([h[0] for h in hit]) * ms / 1000:.0f} s" if hit else "—"
        lines.append(f"| {a} | {ms:.0f} | {ms / ms0:.2f}x | {mem} | {mb / mb0:.2f}x | "
                     f"{np.mean([r['train']['tokens_seen'] for r in runs]) / 1e6:.3f}M | {steps} | {toks} | {wall} |")
    lines += ["", f"The threshold is the baseline's final validation CE ({threshold:.4f})." if threshold else "", ""]
    if "rm_critic" in by_scheme and "critic" in by_scheme:
        n = by_scheme["critic"][0]["train"].get("n_params")
        lines += ["What the reward model costs, as arithmetic: the reward-model critic holds a second "
                  "model of the policy's size (frozen, forward only) that the verifiable critic does not "
                  "(its value head is one small MLP on the trunk's state). Its weights alone are "
                  + ", ".join(f"{name} {p / 1e9:.2f}B params: {2 * p / 2**30:.1f} GiB in bf16, "
                              f"{4 * p / 2**30:.1f} GiB in fp32" for name, p in PUBLISHED.items())
                  + " — the proposal's '~28 GB saved' is a 7B reward model held in fp32 (or bf16 weights "
                  "plus its forward's working memory at long sequences); in bf16 it is ~13 GB per process. "
                  "At this tiny scale the second model is "
                  + (f"{n * 4 / 2**20:.1f} MB, " if n else "a few MB, ")
                  + "below what peak RSS resolves, so the measured ratio above is the step-time one.", ""]
    return lines


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
    md += stability_section(by_scheme, cfg["exp_dir"])
    rows = {s: [dict(r, nc=r["evals"][edirs[0]]["nc"]) for r in rs] for s, rs in by_scheme.items()}
    if cfg.get("sweep_points"):
        md += sweep_section(rows, cfg["sweep_points"], cfg.get("sweep_key", "value"), cfg["exp_dir"],
                            [int(k) for k in first[2]["k"]])
    if cfg.get("study") == "efficiency":
        path = os.path.join(cfg["exp_dir"], "efficiency.json")
        md += efficiency_section(by_scheme, cfg["exp_dir"], json.load(open(path)) if os.path.exists(path) else None)
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
