"""
The experiment: does weighting help, and which scheme? One command compares the three
schemes under one training budget, over seeds, with statistics and pictures.

    python experiment.py                          # tiny tinycode setting, CPU, 3 seeds
    python experiment.py --seeds=5 --controls=True --ablation=True
    python experiment.py --nproc_per_node=8 --device=cuda --exp_dir=out/exp-gpu

Steps, each skipped when its output is already there (a killed experiment continues):
  1. prepare the data (data.py)
  2. pretrain the base model every run starts from, where the setting has one (the tiny
     setting: canonical solutions of two tinycode families, once, one seed)
  3. train the Rho-1 reference on correct solutions (its CE is scored on first use)
  4. train every arm for every seed: same config except the arm's keys (ARMS)
  5. evaluate every run: pass@k on the test split with n samples per problem (eval.py)
  6. write exp_dir/report.md with the table and pictures, and print the table
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
ABLATION = {   # --ablation=True: normalise over all terms of the step instead of over heads
    "rho1_tokens": dict(weighting="rho1", train_on="correct", weight_norm="tokens"),
    "critic_tokens": dict(weighting="critic", train_on="all", weight_norm="tokens"),
}

# settings: the training config shared by every arm and the reference, and the base
# model they all start from (no 'base': from scratch). Fine-tuning a base that already copies
# constants from the description is what makes the tiny setting's seeds comparable: from
# scratch, a tiny model learns it at a seed-dependent step (dev/LOG.md).
SETTINGS = {
    "tiny": dict(     # config/tiny_base.py, then config/tiny_{ref,baseline,critic,rho1}.py
        train=dict(data_dir="data_cache/tinycode", tokenizer="bytes", log_interval=20,
                   max_iters=500, lr_decay_iters=500, learning_rate=2e-3, min_lr=2e-4),
        base=dict(train_split="pretrain", train_on="correct", batch_size=16, max_iters=1200,
                  lr_decay_iters=1200, learning_rate=4e-3, min_lr=3e-4, seed=1337),
    ),
}

defaults = dict(
    exp_dir="out/experiment",   # everything the experiment writes
    setting="tiny",             # a key of SETTINGS
    seeds=3,                    # seeds per arm; the method asks for >= 5 before any claim
    controls=False,             # add the shuffled and random-matched control arms
    ablation=False,             # add the weight_norm='tokens' arms
    n_samples=5,                # completions per test problem
    ks="1,5",                   # pass@k reported
    temperature=0.2,            # sampling for pass@k (pass@1 from the same samples); Chen et al. 2021 found 0.2 best for pass@1
    top_p=0.95,
    max_new_tokens=64,          # tinycode bodies are < 50 bytes; a rambling sample stops here
    eval_limit=100,             # evaluate the first N test problems (the families in turn); 0 = all
    device="auto",
    nproc_per_node=1,           # > 1: every run under torchrun
    jobs=0,                     # runs side by side; 0 = as many as CPU cores on CPU, 1 on GPU
    overrides="",               # train.py keys for every run, reference included: "key=value,..."
)


def parse_overrides(text):
    """'key=value,key=value' (leading -- optional) -> {key: value}; train.py checks them."""
    out = {}
    for item in filter(None, (a.strip() for a in text.split(","))):
        key, eq, value = item.lstrip("-").partition("=")
        if not eq:
            raise ValueError(f"overrides: {item!r} is not key=value")
        out[key] = value
    return out


def run_dir(cfg, name, seed):
    return os.path.join(cfg["exp_dir"], "runs", f"{name}-s{seed}")


def finished(out_dir):
    path = os.path.join(out_dir, "summary.json")
    return os.path.exists(path) and json.load(open(path)).get("finished", False)


def train_command(cfg, out_dir, keys):
    """The command line of one training run: the setting, then the arm's keys."""
    args = [f"--{k}={v}" for k, v in keys.items() if not k.startswith("_")]
    args += [f"--out_dir={out_dir}", f"--device={cfg['device']}"]
    if os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        args.append("--init_from=resume")          # a killed run continues where it was
    launcher = [sys.executable]
    if cfg["nproc_per_node"] > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={cfg['nproc_per_node']}"]
    return launcher + [os.path.join(HERE, "train.py"), *args]


def eval_command(cfg, out_dir, name, seed):
    """The command line that evaluates one trained run: pass@k on the test split (eval.py run)."""
    ks = [k for k in str(cfg["ks"]).split(",") if k]
    args = [out_dir, "--task=tinycode", f"--out_dir={os.path.join(out_dir, 'eval')}",
            f"--n_samples={cfg['n_samples']}", "--k", *ks, f"--temperature={cfg['temperature']}",
            f"--top_p={cfg['top_p']}", f"--max_new_tokens={cfg['max_new_tokens']}",
            f"--seed={seed}", f"--scheme={name}", f"--device={cfg['device']}"]
    if cfg["eval_limit"]:
        args.append(f"--limit={cfg['eval_limit']}")
    return [sys.executable, os.path.join(HERE, "eval.py"), "run", *args]


def evaluated(out_dir):
    return os.path.exists(os.path.join(out_dir, "eval", "summary.json"))


def run_all(cfg, jobs, bar):
    """Run jobs, `jobs` of them at a time. A job is (out_dir, steps, needs): its commands in
    order, each (command, done) skipped when done(out_dir) already holds, started once every
    run dir in `needs` has finished training; output goes to out_dir/train.log. A run's
    evaluation follows its training in the same slot, so the CPU stays busy. The bar counts
    finished jobs."""
    queue, running = list(jobs), []
    cores = os.cpu_count() or 1

    def start(out_dir, steps):
        """Start the job's first step not done yet; False if none is left. A job that runs
        alone (nothing else running or ready: the base) gets every core's thread."""
        steps = [(cmd, done) for cmd, done in steps if not done(out_dir)]
        if not steps:
            return False
        (cmd, done), rest = steps[0], steps[1:]
        alone = not running and not any(all(finished(d) for d in j[2]) for j in queue)
        threads = cores if alone else max(1, cores // max(1, cfg["jobs"]))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        os.makedirs(out_dir, exist_ok=True)
        log = open(os.path.join(out_dir, "train.log"), "a")
        p = subprocess.Popen(cmd(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE)
        running.append((p, out_dir, log, done, rest))
        return True

    while queue or running:
        while queue and len(running) < cfg["jobs"]:
            ready = [j for j in queue if all(finished(d) for d in j[2])]
            if not ready:
                if not running:
                    raise RuntimeError(f"jobs wait on runs that no job makes: {[j[2] for j in queue]}")
                break
            queue.remove(ready[0])
            start(*ready[0][:2])
        time.sleep(1.0)
        for job in list(running):
            p, out_dir, log, done, rest = job
            if p.poll() is None:
                continue
            running.remove(job)
            log.close()
            if p.returncode != 0 or not done(out_dir):
                tail = open(os.path.join(out_dir, "train.log")).read()[-3000:]
                raise RuntimeError(f"{out_dir} failed (exit {p.returncode}):\n{tail}")
            if not start(out_dir, rest):              # its next step, or it is finished
                bar.update(1)
        bar.set_postfix_str(", ".join(f"{os.path.basename(j[1])} {progress(j[1])}" for j in running))


def progress(out_dir):
    """'iter/total' of a running run, from its log."""
    if finished(out_dir):
        return "eval"
    try:
        with open(os.path.join(out_dir, "log.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        return str(max(r["iter"] for r in rows))
    except (OSError, ValueError):
        return "starting"


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
    overrides = parse_overrides(cfg["overrides"])
    base = dict(setting["train"], **overrides)
    # 1. data, once
    import data
    splits = ("train", "val", "test") + (("pretrain",) if setting.get("base") else ())
    if not all(os.path.exists(os.path.join(base["data_dir"], s, "meta.json")) for s in splits):
        data.prepare_tinycode(base["data_dir"], base["tokenizer"])
    # 2.-5. the base, the reference, then every arm and seed, each run evaluated once trained
    arms = dict(ARMS, **(CONTROLS if cfg["controls"] else {}), **(ABLATION if cfg["ablation"] else {}))
    ref_dir = os.path.join(cfg["exp_dir"], "runs", "reference")
    seeds = list(range(cfg["seeds"]))

    def train(out_dir, keys):
        return (lambda: train_command(cfg, out_dir, keys)), finished

    jobs, start = [], []
    if setting.get("base"):
        base_dir = os.path.join(cfg["exp_dir"], "runs", "base")
        jobs.append((base_dir, [train(base_dir, {**base, **setting["base"], **overrides})], []))
        base, start = dict(base, init_from=base_dir), [base_dir]
    # the reference: a model trained on correct solutions, like the baseline arm (seed 0)
    jobs.append((ref_dir, [train(ref_dir, dict(base, weighting="uniform", train_on="correct", seed=0))], start))
    runs = []
    for name, keys in arms.items():
        for seed in seeds:
            d = run_dir(cfg, name, seed)
            keys_s, needs = dict(base, **keys, seed=1337 + seed), list(start)
            if keys["weighting"] in ("rho1", "shuffled") and keys.get("control_of", "rho1") == "rho1":
                keys_s["ref_init_from"] = ref_dir
                needs.append(ref_dir)
            if "_matched" in keys:   # random-matched controls draw from their source run's weights
                keys_s["control_weights"] = run_dir(cfg, keys["_matched"], seed)
                needs.append(keys_s["control_weights"])
            steps = [train(d, keys_s),
                     ((lambda d=d, name=name, seed=seed: eval_command(cfg, d, name, seed)), evaluated)]
            jobs.append((d, steps, needs))
            runs.append((name, seed, d))
    # the base and the reference first, then runs that wait on nothing else, so that they
    # train while the reference does
    n_first = 2 if setting.get("base") else 1
    jobs = jobs[:n_first] + sorted(jobs[n_first:], key=lambda j: len(j[2]))
    todo = sum(1 for d, steps, _ in jobs if not all(done(d) for _, done in steps))
    bar = tqdm(total=len(jobs), initial=len(jobs) - todo, desc="experiment: runs (train + eval)",
               dynamic_ncols=True)
    run_all(cfg, jobs, bar)
    bar.close()
    # 5. the report
    import report
    table = report.write(cfg, arms, seeds, runs, ref_dir, wall_s=time.time() - t0)
    print(table)
    print(f"report: {os.path.join(cfg['exp_dir'], 'report.md')}")


if __name__ == "__main__":
    main(sys.argv[1:])
