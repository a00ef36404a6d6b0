"""
Benchmark: training step time of every scheme relative to the baseline, in one run on
one machine, plus the one-off cost of scoring the Rho-1 reference.

    python bench.py                          # tiny tinycode setting on this machine
    python bench.py --max_iters=60 --device=cuda --dtype=bfloat16 --batch_size=64

Each arm trains max_iters steps from the same initialisation on the same data settings;
the step time is the median over logged windows after the first (which holds compilation,
warm-up and the first evaluation). The baseline runs first and again last, and the ratios
are against the mean of the two: if the two differ much, the machine's speed drifted during
the benchmark and the ratios are that uncertain. Ratios are the numbers to quote: absolute
times depend on the machine and on whatever else it is doing.
"""
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import configurator
import data
import train


def median_step_ms(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    windows = [r for r in rows if "loss" in r and r.get("stage") == "main"]
    times = [r["step_ms"] for r in windows[1:]] or [r["step_ms"] for r in windows]
    return float(np.median(times))


def main(argv):
    base = dict(train.DEFAULTS, max_iters=60, log_interval=5, eval_interval=10**9,
                critic_pretrain_epochs=0.0)
    cfg = configurator.configure(base, argv)
    root = tempfile.mkdtemp(prefix="wmtp-bench-")
    try:
        # the reference: a plain next-token model trained briefly on correct solutions
        ref_dir = os.path.join(root, "ref")
        train.train(dict(cfg, out_dir=ref_dir, n_future=1, max_iters=cfg["max_iters"]))
        ref, ref_hash = train.load_reference(ref_dir, train.setup_distributed(cfg["device"])[4],
                                             data.tokenizer_identity(data.get_tokenizer(cfg["tokenizer"])))
        split = data.PreparedSplit(os.path.join(cfg["data_dir"], "train"))
        t0 = time.time()
        data.score_reference(ref, split, device=next(ref.parameters()).device, batch_size=cfg["batch_size"])
        score_s = time.time() - t0
        cache = os.path.join(root, "ref_ce.bin")
        arms = {
            "uniform": {},
            "rho1 (cache)": dict(weighting="rho1", ref_init_from=ref_dir, ref_ce_cache=cache),
            "rho1 (online)": dict(weighting="rho1", ref_init_from=ref_dir, ref_ce_mode="online"),
            "critic": dict(weighting="critic", train_on="all"),
            "shuffled (rho1)": dict(weighting="shuffled", control_of="rho1", ref_init_from=ref_dir,
                                    ref_ce_cache=cache),
        }
        results = {}
        for name, extra in arms.items():
            out = os.path.join(root, name.split()[0] + str(len(results)))
            train.train(dict(cfg, out_dir=out, **extra))
            results[name] = median_step_ms(out)
            if name == list(arms)[-1]:   # the baseline again, last: drift over the run shows
                out = os.path.join(root, "uniform_again")
                train.train(dict(cfg, out_dir=out))
                results["uniform (again)"] = median_step_ms(out)
        base_ms = (results["uniform"] + results["uniform (again)"]) / 2
        print(f"\nstep time, {cfg['max_iters']} steps each, batch {cfg['batch_size']} x "
              f"{cfg['gradient_accumulation_steps']} rows, device {cfg['device']}")
        print(f"{'scheme':<18}{'ms/step':>10}{'vs uniform':>12}")
        for name, ms in results.items():
            print(f"{name:<18}{ms:>10.1f}{ms / base_ms:>11.2f}x")
        print(f"reference scoring of {len(split)} samples ({len(split.tokens):,} tokens): "
              f"{score_s:.1f} s, {len(split.tokens) / score_s:,.0f} tokens/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
