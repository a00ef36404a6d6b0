"""
The experiment: does weighting help, and which scheme? One command compares the three
schemes under one training budget, over seeds, with statistics and pictures.

    python experiment.py                          # tiny tinycode setting, CPU, 3 seeds
    python experiment.py --seeds=5 --controls=True --ablation=True
    python experiment.py --nproc_per_node=8 --device=cuda --exp_dir=out/exp-gpu

Steps, each skipped when its output is already there (a killed experiment continues):
  1. prepare the data (data.py)
  2. train the Rho-1 reference on correct solutions (its CE is scored on first use)
  3. train every arm for every seed: same config except the arm's keys (ARMS)
  4. evaluate every run: pass@k on the test split with n samples per problem (eval.py)
  5. write exp_dir/report.md with the table and pictures, and print the table
Runs are subprocesses (`python train.py ...`, or torchrun with nproc_per_node > 1);
on CPU `jobs` of them run side by side, each with cores/jobs threads.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

import configurator

HERE = os.path.dirname(os.path.abspath(__file__))

# the arms: the keys in which a run differs from the setting; nothing else may differ
ARMS = {
    "baseline": dict(weighting="uniform", train_on="correct"),
    "critic": dict(weighting="critic", train_on="all"),
    "rho1": dict(weighting="rho1", train_on="correct"),
}
CONTROLS = {   # --controls=True: without them no gain can be attributed to the weighting
    "rho1_shuffled": dict(weighting="shuffled", control_of="rho1", train_on="correct"),
    "rho1_random": dict(weighting="random_matched", train_on="correct", _matched="rho1"),
    "critic_shuffled": dict(weighting="shuffled", control_of="critic", train_on="all"),
    "critic_random": dict(weighting="random_matched", train_on="all", _matched="critic"),
}
ABLATION = {   # --ablation=True: normalise over the micro-batch instead of over heads
    "rho1_tokens": dict(weighting="rho1", train_on="correct", weight_norm="tokens"),
    "critic_tokens": dict(weighting="critic", train_on="all", weight_norm="tokens"),
}

# settings: training config shared by every arm, and how the reference is trained
SETTINGS = {
    "tiny": dict(
        train=dict(data_dir="data_cache/tinycode", tokenizer="bytes", max_iters=600,
                   lr_decay_iters=600, eval_interval=200, log_interval=10),
        ref=dict(n_future=1),
    ),
}

defaults = dict(
    exp_dir="out/experiment",   # everything the experiment writes
    setting="tiny",             # a key of SETTINGS
    seeds=3,                    # seeds per arm; the method asks for >= 5 before any claim
    controls=False,             # add the shuffled and random-matched control arms
    ablation=False,             # add the weight_norm='tokens' arms
    n_samples=10,               # completions per test problem
    ks="1,5",                   # pass@k reported
    temperature=0.8,            # sampling for pass@k (pass@1 from the same samples)
    top_p=0.95,
    max_new_tokens=96,
    eval_limit=0,               # evaluate only the first N test problems; 0 = all
    device="auto",
    nproc_per_node=1,           # > 1: every run under torchrun
    jobs=0,                     # runs side by side; 0 = as many as CPU cores on CPU, 1 on GPU
    overrides="",               # extra train.py --key=value for every run, comma-separated
)


def run_dir(cfg, name, seed):
    return os.path.join(cfg["exp_dir"], "runs", f"{name}-s{seed}")


def finished(out_dir):
    path = os.path.join(out_dir, "summary.json")
    return os.path.exists(path) and json.load(open(path)).get("finished", False)


def train_command(cfg, out_dir, keys):
    """The command line of one training run: the setting, then the arm's keys."""
    args = [f"--{k}={v}" for k, v in keys.items() if not k.startswith("_")]
    args += [f"--out_dir={out_dir}", f"--device={cfg['device']}"]
    args += [a for a in cfg["overrides"].split(",") if a]
    if os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        args.append("--init_from=resume")          # a killed run continues where it was
    launcher = [sys.executable]
    if cfg["nproc_per_node"] > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={cfg['nproc_per_node']}"]
    return launcher + [os.path.join(HERE, "train.py"), *args]


def run_all(cfg, jobs, bar):
    """Run (out_dir, keys) jobs, `jobs` at a time; each run's output goes to its train.log."""
    from collections import deque
    queue, running = deque(jobs), []
    threads = max(1, (os.cpu_count() or 1) // max(1, cfg["jobs"]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    while queue or running:
        while queue and len(running) < cfg["jobs"]:
            out_dir, keys = queue.popleft()
            os.makedirs(out_dir, exist_ok=True)
            log = open(os.path.join(out_dir, "train.log"), "a")
            p = subprocess.Popen(train_command(cfg, out_dir, keys), stdout=log,
                                 stderr=subprocess.STDOUT, env=env, cwd=HERE)
            running.append((p, out_dir, log))
        time.sleep(1.0)
        for p, out_dir, log in list(running):
            if p.poll() is None:
                continue
            running.remove((p, out_dir, log))
            log.close()
            if p.returncode != 0 or not finished(out_dir):
                tail = open(os.path.join(out_dir, "train.log")).read()[-3000:]
                raise RuntimeError(f"run {out_dir} failed (exit {p.returncode}):\n{tail}")
            bar.update(1)
        bar.set_postfix_str(", ".join(f"{os.path.basename(d)} {progress(d)}" for _, d, _ in running))


def progress(out_dir):
    """'iter/total' of a running run, from its log."""
    try:
        with open(os.path.join(out_dir, "log.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        return str(max(r["iter"] for r in rows))
    except (OSError, ValueError):
        return "starting"


# ---- evaluation -------------------------------------------------------------------------
def evaluate_run(cfg, out_dir, scheme, seed, problems):
    """pass@k of one trained run on the test problems, resumable (eval.py)."""
    import eval as ev
    import sample
    import torch
    device = cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, enc, _ = sample.load_model(out_dir, device)
    generate = sample.make_generate(model, enc, seed=seed)
    ks = [int(k) for k in cfg["ks"].split(",")]
    return ev.evaluate_task("tinycode", problems, generate, n_samples=cfg["n_samples"], ks=ks,
                            temperature=cfg["temperature"], top_p=cfg["top_p"],
                            max_new_tokens=cfg["max_new_tokens"],
                            out_dir=os.path.join(out_dir, "eval"),
                            meta={"scheme": scheme, "seed": seed, "run": out_dir})


def main(argv):
    cfg = configurator.configure(defaults, argv)
    from tqdm import tqdm
    setting = SETTINGS[cfg["setting"]]
    if cfg["jobs"] == 0:
        cfg["jobs"] = 1 if cfg["device"].startswith("cuda") or cfg["nproc_per_node"] > 1 else (os.cpu_count() or 1)
    os.makedirs(cfg["exp_dir"], exist_ok=True)
    with open(os.path.join(cfg["exp_dir"], "experiment.json"), "w") as f:
        json.dump(cfg, f, indent=1)                # report.py rebuilds the report from it
    t0 = time.time()
    base = dict(setting["train"])
    # 1. data, once
    import data
    if not os.path.exists(os.path.join(base["data_dir"], "test", "meta.json")):
        data.prepare_tinycode(base["data_dir"], base["tokenizer"])
    # 2.-3. the reference, then every arm and seed
    arms = dict(ARMS, **(CONTROLS if cfg["controls"] else {}), **(ABLATION if cfg["ablation"] else {}))
    ref_dir = os.path.join(cfg["exp_dir"], "runs", "reference")
    seeds = list(range(cfg["seeds"]))
    plan = [(ref_dir, dict(base, **setting["ref"], train_on="correct", seed=0))]
    later = []    # random-matched controls need their source run's weights first
    for name, keys in arms.items():
        for seed in seeds:
            keys_s = dict(base, **keys, seed=1337 + seed)
            if keys["weighting"] in ("rho1", "shuffled") and keys.get("control_of", "rho1") == "rho1":
                keys_s["ref_init_from"] = ref_dir
            if "_matched" in keys:
                keys_s["control_weights"] = run_dir(cfg, keys["_matched"], seed)
                later.append((run_dir(cfg, name, seed), keys_s))
            else:
                plan.append((run_dir(cfg, name, seed), keys_s))
    todo = [(d, k) for d, k in plan + later if not finished(d)]
    bar = tqdm(total=len(plan) + len(later), initial=len(plan) + len(later) - len(todo),
               desc="experiment: training runs", dynamic_ncols=True)
    first = [(d, k) for d, k in todo if d == ref_dir]
    run_all(cfg, first, bar)                       # everything else waits for the reference
    rest = [(d, k) for d, k in todo if d != ref_dir]
    run_all(cfg, [j for j in rest if j not in later], bar)
    run_all(cfg, [j for j in rest if j in later], bar)
    bar.close()
    # 4. evaluation
    import eval as ev
    problems = ev.load_task("tinycode", path=os.path.join(base["data_dir"], "test"),
                            limit=cfg["eval_limit"] or None)
    runs = [(name, seed, run_dir(cfg, name, seed)) for name in arms for seed in seeds]
    for name, seed, d in tqdm(runs, desc="experiment: evaluation", dynamic_ncols=True):
        evaluate_run(cfg, d, name, seed, problems)
    # 5. the report
    import report
    table = report.write(cfg, arms, seeds, runs, ref_dir, wall_s=time.time() - t0)
    print(table)
    print(f"report: {os.path.join(cfg['exp_dir'], 'report.md')}")


if __name__ == "__main__":
    main(sys.argv[1:])
