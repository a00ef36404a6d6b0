"""
Self-labelled samples, the "verifiable" in Verifiable Critic: sample a model on a task's
training problems and label every completion by the task's own checker (graders.score_batch:
the sandboxed tests for code, answer equivalence for maths), so the critic learns from
correct *and* incorrect solutions of the model it will weight.

    python selflabel.py --task=mbpp --path=../shared/data/mbpp/mbpp.jsonl --ckpt=out/x \
        --n=8 --out_dir=data_cache/sampled-mbpp
    python prepare.py --dataset=sampled --path=data_cache/sampled-mbpp --data_dir=data_cache/mbpp-sampled

Tasks: tinycode (a prepared split dir, default data_cache/tinycode/train), mbpp (train
601-974), gsm8k (train), math (train), code_contests (train): the problems sources.py reads.

Sampling and scoring are eval.evaluate_task's (batched KV-cache sampling from head 1,
temperature, top-p, stops; each prompt's sampling seeded by (seed, prompt)), so a killed
job continues where it stopped and draws what an uninterrupted one would. out_dir holds
    eval/                 evaluate_task's results.jsonl (one flushed line per problem)
    selflabel.json        task, model identity, sampling settings, the report
    samples.jsonl         one sample per completion {problem_id, prompt, completion, is_correct, source}
    problems.jsonl        the problems, with what their checker needs
"""
import hashlib
import json
import os
import sys
import time

import eval as ev
import sources
import tasks


def task_problems(task, path=None, limit=None):
    """The training problems of a task, with what graders.score_batch needs to check them."""
    if task == "tinycode":
        problems = tasks.load_tinycode(path or os.path.join("data_cache", "tinycode", "train"))
    elif task in ("mbpp", "gsm8k", "math", "code_contests"):
        problems = []
        for p, _ in sources.SOURCES[task](path=path, split="train"):
            # generated tests are MBs a problem: 13K problems of them would not fit in memory
            if task == "code_contests" and p["n_generated_tests"]:
                p = {**p, "tests": p["tests"][:-p["n_generated_tests"]], "n_generated_tests": 0}
            problems.append(p)
            if limit and len(problems) == limit:
                break
    else:
        raise ValueError(f"task {task!r} has no training problems with a checker; "
                         f"tasks: tinycode, mbpp, gsm8k, math, code_contests")
    return problems[:limit] if limit else problems


def model_identity(model, where):
    """Where the weights came from and a hash of them, so samples name their model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return {"from": where, "params_sha256": h.hexdigest()[:16],
            "n_params": sum(p.numel() for p in model.parameters()),
            "model_args": dict(vars(model.config))}


def report(rows):
    """Per task: the share of correct samples, the problems with both a correct and an
    incorrect sample (what the critic learns to tell apart), samples per problem."""
    n = sum(r["n"] for r in rows)
    c = sum(r["c"] for r in rows)
    return {"n_problems": len(rows), "n_samples": n, "n_correct": c,
            "share_correct": c / n if n else 0.0,
            "problems_with_both": sum(0 < r["c"] < r["n"] for r in rows),
            "problems_all_correct": sum(r["c"] == r["n"] for r in rows),
            "problems_none_correct": sum(r["c"] == 0 for r in rows),
            "samples_per_problem": n / len(rows) if rows else 0.0}


def selflabel(task, problems, model, enc, out_dir, *, model_id, n=8, temperature=0.8, top_p=0.95,
              max_new_tokens=256, seed=0, batch_size=16, workers=None):
    """Sample n completions per problem, label each by the task's checker, write out_dir
    (see the module docstring). Resumable: problems already in eval/results.jsonl are
    skipped; a rerun with another model, seed or settings is refused."""
    import sample
    from tqdm import tqdm
    os.makedirs(out_dir, exist_ok=True)
    settings = {"n": n, "temperature": temperature, "top_p": top_p,
                "max_new_tokens": max_new_tokens, "seed": seed, "stop": tasks.TASKS[task]["stop"]}
    run = {"task": task, "model": model_id, "settings": settings}
    path = os.path.join(out_dir, "selflabel.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in run if old.get(k) != run[k]]
        if diff:
            raise ValueError(f"{out_dir} holds samples of another run (differs in {diff}): "
                             f"use another out_dir")
    with open(path, "w") as f:
        json.dump(run, f, indent=1)

    # progress and throughput around the generate callable evaluate_task drives
    base = sample.make_generate(model, enc, seed=seed)
    bar = tqdm(total=len(problems), desc=f"selflabel {task}", unit=" problems")
    stats = {"samples": 0, "tokens": 0, "t0": time.time()}

    def generate(prompts, **kw):
        outs = base(prompts, **kw)
        stats["samples"] += sum(map(len, outs))
        stats["tokens"] += sum(len(enc.encode_ordinary(c)) for o in outs for c in o)
        dt = time.time() - stats["t0"]
        bar.update(len(prompts))
        bar.set_postfix(samples_s=f"{stats['samples'] / dt:.1f}", tok_s=f"{stats['tokens'] / dt:.0f}")
        return outs

    eval_dir = os.path.join(out_dir, "eval")
    ev.evaluate_task(task, problems, generate, n_samples=n, ks=(1,), temperature=temperature,
                     top_p=top_p, max_new_tokens=max_new_tokens, out_dir=eval_dir,
                     workers=workers, batch_size=batch_size, n_boot=1000,
                     meta={"scheme": "selflabel", "seed": seed, "model": model_id})
    bar.close()
    done = ev.read_results(os.path.join(eval_dir, "results.jsonl"))
    rows = [done[p["problem_id"]] for p in problems]
    # the exported samples: grouped by problem, in the problems' order (sources.sampled)
    with open(os.path.join(out_dir, "samples.jsonl.tmp"), "w") as fs, \
            open(os.path.join(out_dir, "problems.jsonl.tmp"), "w") as fp:
        for p, r in zip(problems, rows):
            fp.write(json.dumps(p) + "\n")
            for completion, ok in zip(r["completions"], r["correct"]):
                fs.write(json.dumps({"problem_id": p["problem_id"], "prompt": p["prompt"],
                                     "completion": completion, "is_correct": bool(ok),
                                     "source": f"sampled:{task}"}) + "\n")
    for name in ("samples.jsonl", "problems.jsonl"):
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
    run["report"] = report(rows)
    dt = time.time() - stats["t0"]
    run["throughput"] = {"seconds": dt, "new_samples": stats["samples"], "new_tokens": stats["tokens"]}
    with open(path, "w") as f:
        json.dump(run, f, indent=1)
    r = run["report"]
    print(f"{task}: {r['n_problems']} problems, {r['n_samples']} samples "
          f"({r['samples_per_problem']:.1f} per problem), {r['share_correct']:.1%} correct; "
          f"{r['problems_with_both']} problems with correct and incorrect samples; "
          f"{stats['samples']} sampled now in {dt:.0f}s ({stats['tokens'] / max(dt, 1e-9):.0f} tok/s)")
    return run


defaults = dict(
    task="tinycode",      # tinycode, mbpp, gsm8k, math, code_contests
    path="",              # the task's local data (sources.py); '' = the hub (tinycode: its train split)
    ckpt="",              # a run dir or checkpoint (sample.load_model)
    out_dir="",           # default: data_cache/sampled-<task>
    n=8,                  # completions per problem
    temperature=0.8,
    top_p=0.95,
    max_new_tokens=256,
    seed=0,
    limit=0,              # the first `limit` problems; 0 = all
    batch_size=16,        # problems per generate call (each samples n rows with a KV cache)
    workers=0,            # sandbox processes; 0 = one per core
    device="cpu",
)

if __name__ == "__main__":
    import configurator
    import sample
    cfg = configurator.configure(defaults, sys.argv[1:])
    if not cfg["ckpt"]:
        sys.exit("give --ckpt: the run dir or checkpoint to sample from")
    model, enc, ckpt = sample.load_model(cfg["ckpt"], cfg["device"])
    problems = task_problems(cfg["task"], cfg["path"] or None, cfg["limit"] or None)
    selflabel(cfg["task"], problems, model, enc, cfg["out_dir"] or f"data_cache/sampled-{cfg['task']}",
              model_id={**model_identity(model, cfg["ckpt"]), "iter_num": ckpt.get("iter_num")},
              n=cfg["n"], temperature=cfg["temperature"], top_p=cfg["top_p"],
              max_new_tokens=cfg["max_new_tokens"], seed=cfg["seed"], batch_size=cfg["batch_size"],
              workers=cfg["workers"] or None)
