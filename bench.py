"""
Benchmarks whose ratios are the numbers to quote, each comparison measured side by side in
one run with interleaved repeats: on a busy machine the speed drifts between runs by more
than the effects measured (a baseline run first and last once differed by 31-41%), so
arms alternate repeat by repeat and every ratio is taken between neighbours.

  loss     step time (forward + backward of the uniform MTP loss) of H=4 against H=1 at
           equal blocks, next to the FLOP ratio (6N + attention, every head's unembedding),
           for the three loss paths: 'simple' ((B, T, H, V) logits), 'chunked' in two
           passes (mtp_loss.forward + backward: what Rho-1 and the critic run) and in one
           pass (mtp_loss.forward_backward: what the baseline runs); each against
           'simple'; tokens/s
  memory   peak memory of one such step against V, H=4 over H=1, each loss path; each
           measurement in its own process (growth of peak RSS over the step on CPU,
           max_memory_allocated on CUDA)
  schemes  train.py's real step for every scheme against uniform, arms alternating in
           rounds, and the one-off cost of scoring the Rho-1 reference
  weighted Rho-1's step (cached reference CE) by the two passes and by the one pass with its
           weights inside it (mtp_loss.forward_backward_weighing), against the baseline's one
           pass, and the peak memory of each (the one pass holds every head's graph at once)
  compile  per-block torch.compile against eager (H=4, both chunked paths)
  decode   greedy tokens/s, one row against batches, eager and with the compiled step

    OMP_NUM_THREADS=1 python bench.py                       # all parts, minutes on one core
    python bench.py --gpu=True                              # the prepared GPU check (below)

--gpu=True is the check for one H200 (~8 minutes, not yet run; `python bench.py --gpu=True
--report=gpu.md` writes its tables to gpu.md too, and needs nothing beyond torch): a ~1B shape (16 blocks,
d=2048, V=128K, 4 x 2048 tokens a step) in bf16 with per-block torch.compile: H=1 and
H=4 by each loss path, tokens/s, MFU against the device's dense bf16 peak, and peak
memory (the memory part runs eager: each measurement is a fresh process); decoding speed,
1 / 16 / 128 rows, eager and compiled.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

from types import SimpleNamespace

import configurator
import mtp_loss
import parallel
import weights
from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_targets

defaults = dict(
    parts="loss,memory,weighted,schemes",   # which comparisons to run
    device="cpu",
    dtype="float32",               # 'bfloat16' runs the step under autocast
    repeats=7,                     # timed steps per arm, interleaved with the other arms
    # the loss path's model: equal blocks for H=1 and H=4 (n_layer counts trunk + heads)
    n_layer=8,
    d_model=256,
    batch_size=4,
    seq_len=128,
    vocab_sizes="8192,32768",      # V for the timing part
    mem_vocab_sizes="8192,32768,131072",   # V for the memory part
    mem_batch_size=2,              # rows per step in the memory part (its logits are big)
    loss_chunk=0,                  # as train.py's: rows per vocabulary chunk, 0 = auto
    compile=False,                 # torch.compile each block (static shapes), as train.py does
    # the schemes part: train.py's tiny default config, this many steps per arm per round
    max_iters=15,
    rounds=2,
    arms="",                       # experiment arms to compare (experiment.arm names); '' = every scheme
    train_keys="",                 # train.py keys of the schemes part's runs, "key=value,..." (the study's model)
    out="",                        # also write the schemes part's numbers to this JSON file
    gpu=False,                     # the prepared one-GPU check: sets the keys in GPU below
    report="",                     # also write everything printed (the tables) to this file
    peak_flops=0.0,                # the device's peak FLOP/s for MFU; 0 = parallel.py's table (GPUs; none on CPU)
)
GPU = dict(parts="loss,memory,weighted,decode", device="cuda", dtype="bfloat16", compile=True, repeats=5,
           n_layer=16, d_model=2048, batch_size=4, seq_len=2048, vocab_sizes="131072",
           mem_vocab_sizes="32768,131072", mem_batch_size=4)


def model_for(c, V, H, compile=False):
    """Llama-like proportions: head dim 64..128, 2 query heads per key/value head, SwiGLU
    width 8/3 d. n_layer blocks in all, whatever H (equal blocks)."""
    torch.manual_seed(0)
    d = c["d_model"]
    n_head = max(4, d // 128)
    m = Transformer(ModelConfig(vocab_size=V, n_layer=c["n_layer"], n_future=H, n_head=n_head,
                                n_kv_head=n_head // 2, d_model=d, d_ff=d * 8 // 3 // 16 * 16,
                                max_seq_len=c["seq_len"])).to(c["device"])
    if compile:
        parallel.parallelize(m, SimpleNamespace(activation_checkpointing="none", compile=True),
                             torch.float32, fsdp=False)
    return m


IMPLS = ("simple", "two-pass", "one-pass")   # the loss paths compared
# the weighted part: Rho-1's step (reference CE cached: random here) by the two passes and by
# the one pass with its weights inside it, against the baseline's one pass
WEIGHTED = ("uniform one-pass", "rho1 two-pass", "rho1 one-pass")
# the keys weights.rho1 reads, at train.py's defaults (tests/test_bench.py checks): bench's
# GPU parts import nothing beyond torch (the GPU machine has torch alone)
RHO1 = dict(weighting="rho1", weight_norm="heads", temperature=1.0, rho1_mode="abs", rho1_ref="next_token",
            min_ce_diff=0.0, rho1_top_frac=0.6, weight_top_frac=0.0, weight_top_p=1.0, w_max=0.0, w_min=0.0)


def make_step(model, impl, B, T, c):
    """One training step's forward + backward of the uniform loss, on random tokens, by
    one of IMPLS: 'simple', or loss_impl='chunked' in two passes or in one."""
    H, V = model.config.n_future, model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (B, T), generator=g).to(c["device"])
    targets = mtp_targets(tokens, torch.ones_like(tokens, dtype=torch.bool), H)   # (B, T, H)
    valid = targets >= 0
    w, n = valid.float(), valid.sum().float()
    dev = torch.device(c["device"])
    ctx = nullcontext() if c["dtype"] == "float32" else \
        torch.autocast(dev.type, dtype=getattr(torch, c["dtype"]))

    if impl.startswith("rho1"):
        cfg = SimpleNamespace(**RHO1)
        ref = (torch.rand(B, T, generator=g) * 4).to(c["device"])
        make = weights.local_weigher(weights.SCHEMES["rho1"], cfg)

    def step():
        model.zero_grad(set_to_none=True)
        if impl == "rho1 two-pass":
            with ctx:
                p = mtp_loss.forward(model, tokens, targets, c["loss_chunk"])
            mtp_loss.backward(p, model, weights.rho1(p.ce, valid, ref_ce=ref, cfg=cfg), n, ctx=ctx)
        elif impl == "rho1 one-pass":
            mtp_loss.forward_backward_weighing(model, tokens, targets, make(valid, ref_ce=ref), n,
                                               c["loss_chunk"], ctx=ctx)
        elif impl == "uniform one-pass":
            mtp_loss.forward_backward(model, tokens, targets, w, n, c["loss_chunk"], ctx=ctx)
        if impl in WEIGHTED:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return
        with ctx:
            if impl == "simple":
                loss = weights.weighted_loss(mtp_cross_entropy(model(tokens), targets), w, n)
        if impl == "simple":
            loss.backward()
        elif impl == "two-pass":
            with ctx:
                p = mtp_loss.forward(model, tokens, targets, c["loss_chunk"])
            mtp_loss.backward(p, model, w, n, ctx=ctx)
        else:
            mtp_loss.forward_backward(model, tokens, targets, w, n, c["loss_chunk"], ctx=ctx)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return step


def interleaved(arms, repeats):
    """{arm: [seconds] * repeats}: every arm's step once per round, rounds in a row, so
    neighbouring repeats share the machine's state of the moment."""
    times = {a: [] for a in arms}
    for _ in range(repeats):
        for a, step in arms.items():
            t0 = time.perf_counter()
            step()
            times[a].append(time.perf_counter() - t0)
    return times


def paired_ratio(times, a, b):
    """Median over rounds of arm a's time over arm b's in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def bench_loss(c):
    """Step times of H in (1, 4) x the loss paths, per V, interleaved repeat by repeat."""
    B, T = c["batch_size"], c["seq_len"]
    rows = []
    for V in [int(v) for v in c["vocab_sizes"].split(",")]:
        arms = {(H, impl): make_step(model_for(c, V, H, c["compile"]), impl, B, T, c)
                for H in (1, 4) for impl in IMPLS}
        for step in arms.values():          # warm-up: allocator, kernels, (compile)
            step()
        times = interleaved(arms, c["repeats"])
        flops = [model_for(c, V, H).flops_per_token(T) for H in (1, 4)]
        # ratios between neighbours: repeat r of one arm against repeat r of the other
        ratio = lambda a, b: paired_ratio(times, a, b)
        med = {a: statistics.median(t) for a, t in times.items()}
        peak = c["peak_flops"] or train_peak_flops(c["device"])
        rows.append(dict(V=V, flop_ratio=flops[1] / flops[0],
                         h4_h1={i: ratio((4, i), (1, i)) for i in IMPLS},
                         vs_simple={(H, i): ratio((H, i), (H, "simple")) for H in (1, 4) for i in IMPLS},
                         tok_s={f"H{H} {i}": B * T / med[(H, i)] for (H, i) in med},
                         mfu={f"H{H} {i}": B * T / med[(H, i)] * flops[H == 4] / peak
                              for (H, i) in med} if peak else None))
    print(f"\n## loss path: step time (forward + backward), B={B}, T={T}, d={c['d_model']}, "
          f"{c['n_layer']} blocks, {c['device']} {c['dtype']}, median of {c['repeats']} paired repeats")
    print("H4/H1: step time of H=4 over H=1; / FLOP: that over the FLOP ratio (target <= 1.05)")
    print("| V | FLOP ratio H4/H1 | " + " | ".join(f"H4/H1 {i} (/ FLOP)" for i in IMPLS) + " | "
          + " | ".join(f"{i}/simple H{H}" for i in IMPLS[1:] for H in (1, 4)) + " |")
    print("|---" * (2 + len(IMPLS) + 2 * (len(IMPLS) - 1)) + "|")
    for r in rows:
        print(f"| {r['V']:,} | {r['flop_ratio']:.2f} | "
              + " | ".join(f"{r['h4_h1'][i]:.2f} ({r['h4_h1'][i] / r['flop_ratio']:.2f})" for i in IMPLS)
              + " | " + " | ".join(f"{r['vs_simple'][(H, i)]:.2f}" for i in IMPLS[1:] for H in (1, 4)) + " |")
    for r in rows:
        print(f"V={r['V']:,} tokens/s: " + ", ".join(f"{a} {v:,.0f}" for a, v in r["tok_s"].items())
              + ("; MFU: " + ", ".join(f"{a} {v:.1%}" for a, v in r["mfu"].items()) if r["mfu"] else ""))
    return rows


def bench_weighted(c):
    """Rho-1's step (H=4) by the two passes and by the one pass with its weights inside it,
    against the baseline's one pass, interleaved; then each one's peak memory, and H=1's
    one pass, each in its own process."""
    B, T = c["batch_size"], c["seq_len"]
    rows = []
    for V in [int(v) for v in c["vocab_sizes"].split(",")]:
        model = model_for(c, V, 4, c["compile"])
        arms = {i: make_step(model, i, B, T, c) for i in WEIGHTED}
        for step in arms.values():
            step()
        times = interleaved(arms, c["repeats"])
        mb = {}
        for H, impl in [(1, "uniform one-pass")] + [(4, i) for i in WEIGHTED]:
            code = f"import bench; bench.memory_child({c!r}, {V}, {H}, {impl!r})"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)
            if out.returncode:
                raise RuntimeError(out.stderr)
            mb[(H, impl)] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        rows.append(dict(V=V, vs_uniform={i: paired_ratio(times, i, "uniform one-pass") for i in WEIGHTED},
                         ms={i: 1000 * statistics.median(t) for i, t in times.items()}, mb=mb))
    print(f"\n## weighted step: Rho-1 (cached reference CE) against the baseline, H=4, B={B}, T={T}, "
          f"d={c['d_model']}, {c['n_layer']} blocks, {c['device']} {c['dtype']}, median of "
          f"{c['repeats']} paired repeats; peak memory at B={c['mem_batch_size']} (MB over the model)")
    print("| V | rho1 two-pass / uniform | rho1 one-pass / uniform (target <= 1.03) | "
          "memory H1 uniform | H4 uniform | H4 rho1 two-pass | H4 rho1 one-pass | rho1 one-pass / H1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["mb"]
        print(f"| {r['V']:,} | {r['vs_uniform']['rho1 two-pass']:.2f} | {r['vs_uniform']['rho1 one-pass']:.2f} | "
              f"{m[(1, 'uniform one-pass')]:.0f} | {m[(4, 'uniform one-pass')]:.0f} | "
              f"{m[(4, 'rho1 two-pass')]:.0f} | {m[(4, 'rho1 one-pass')]:.0f} | "
              f"{m[(4, 'rho1 one-pass')] / m[(1, 'uniform one-pass')]:.2f} |")
    return rows


def train_peak_flops(device):
    """The device's dense bf16 peak (parallel.py's table), None on CPU: no MFU there."""
    return parallel.guess_peak_flops(device)


def memory_child(c, V, H, impl):
    """In a fresh process: the growth of peak memory over one step (MB), printed as JSON."""
    model = model_for(c, V, H)
    step = make_step(model, impl, c["mem_batch_size"], c["seq_len"], c)
    if c["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
    else:   # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak
        before = proc_status_kb("VmRSS")
        step()
        peak = (proc_status_kb("VmHWM") - before) * 1024
    print(json.dumps({"peak_mb": peak / 2**20}))


def proc_status_kb(field):
    """This process's resident memory (VmRSS) or its peak (VmHWM) in KiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def bench_memory(c):
    rows = []
    for V in [int(v) for v in c["mem_vocab_sizes"].split(",")]:
        mb = {}
        for H in (1, 4):
            for impl in IMPLS:
                code = f"import bench; bench.memory_child({c!r}, {V}, {H}, {impl!r})"
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     cwd=os.path.dirname(os.path.abspath(__file__)))
                if out.returncode:
                    raise RuntimeError(out.stderr)
                mb[(H, impl)] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        rows.append(dict(V=V, mb=mb))
    print(f"\n## peak memory of one step, B={c['mem_batch_size']}, T={c['seq_len']}, "
          f"d={c['d_model']}, {c['n_layer']} blocks, {c['device']} {c['dtype']} (MB over the model)")
    print("| V | " + " | ".join(f"H1 {i} | H4 {i} | H4/H1 {i}" for i in IMPLS) + " |")
    print("|---" * (1 + 3 * len(IMPLS)) + "|")
    for r in rows:
        m = r["mb"]
        print(f"| {r['V']:,} | " + " | ".join(
            f"{m[(1, i)]:.0f} | {m[(4, i)]:.0f} | {m[(4, i)] / m[(1, i)]:.2f}" for i in IMPLS) + " |")
    return rows


def median_step_ms(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    windows = [r for r in rows if "loss" in r and r.get("stage") == "main"]
    times = [r["step_ms"] for r in windows[1:]] or [r["step_ms"] for r in windows]
    return statistics.median(times)


def arm_child(cfg):
    """In a fresh process: one arm's train.py run -> its median step time and the growth of
    its peak memory over the process before the run (model, optimizer, frozen models, data,
    activations), printed as JSON."""
    import train
    from contextlib import redirect_stdout
    cuda = cfg["device"].startswith("cuda")
    before = torch.cuda.memory_allocated() if cuda else proc_status_kb("VmRSS") * 1024
    with redirect_stdout(open(os.devnull, "w")):
        train.train(cfg)
    peak = torch.cuda.max_memory_allocated() if cuda else proc_status_kb("VmHWM") * 1024
    print(json.dumps({"ms": median_step_ms(cfg["out_dir"]), "peak_mb": (peak - before) / 2**20}))


def bench_schemes(c):
    """train.py's step per arm against uniform, each arm a fresh process (its peak memory
    its own), the arms alternating round by round. arms='' is every registered scheme;
    else experiment arms by name (the efficiency study's)."""
    import build
    import data
    import experiment
    import parallel
    import reference
    import train
    # the quick experiment's data (it marks its noise, so every scheme can run on it)
    tiny = experiment.SETTINGS["tiny"]
    cfg = dict(train.DEFAULTS, max_iters=c["max_iters"], log_interval=3, eval_interval=10**9,
               critic_pretrain_epochs=0.0, device=c["device"], dtype=c["dtype"],
               data_dir=os.path.join(HERE, tiny["train"]["data_dir"]))
    for key, value in experiment.parse_overrides(c["train_keys"]).items():
        if key not in train.DEFAULTS:
            raise ValueError(f"--train_keys: {key!r} is no train.py key")
        cfg[key] = type(train.DEFAULTS[key])(value) if not isinstance(train.DEFAULTS[key], bool) else value == "True"
    if not os.path.exists(os.path.join(cfg["data_dir"], "train", "meta.json")):
        data.prepare_tinycode(cfg["data_dir"], cfg["tokenizer"], **tiny.get("data_args", {}))
    root = tempfile.mkdtemp(prefix="wmtp-bench-")
    quiet = lambda: open(os.devnull, "w")
    try:
        from contextlib import redirect_stdout
        ref_dir = os.path.join(root, "ref")   # a plain next-token reference, trained briefly
        with redirect_stdout(quiet()):
            train.train(dict(cfg, out_dir=ref_dir, n_future=1, max_iters=2 * c["max_iters"]))
        ref, _ = reference.load_reference(ref_dir, parallel.resolve_device(c["device"]),
                                          data.tokenizer_identity(data.get_tokenizer(cfg["tokenizer"])))
        split = data.PreparedSplit(os.path.join(cfg["data_dir"], "train"))
        t0 = time.time()
        data.score_reference(ref, split, device=next(ref.parameters()).device, batch_size=cfg["batch_size"])
        score_s = time.time() - t0
        cache = os.path.join(root, "ref_ce.bin")
        # the arms as the experiment runs them (every registered scheme, or --arms=), a
        # reference read from the cache (and online too), plus the simple loss path
        names = c["arms"].split(",") if c["arms"] else \
            ["uniform"] + sorted(set(weights.SCHEMES) - {"uniform"}) + ["rho1_shuffled"]
        rm_dir = os.path.join(root, "rm")   # a reward model where an arm reads one: a critic run
        if any(experiment.needs_reward_model(experiment.arm(n)) for n in names):
            with redirect_stdout(quiet()):
                train.train(dict(cfg, out_dir=rm_dir, **experiment.arm("critic")))
        arms = {}
        for name in names:
            keys = {k: v for k, v in experiment.arm(name).items() if not k.startswith("_")}
            label = "uniform" if keys == experiment.arm("baseline") else name
            if experiment.needs_reward_model(keys):
                keys["rm_init_from"] = rm_dir
            if experiment.needs_reference(keys):
                arms[f"{label} (cache)"] = dict(keys, ref_init_from=ref_dir, ref_ce_cache=cache)
                if not c["arms"]:
                    arms[f"{label} (online)"] = dict(keys, ref_init_from=ref_dir, ref_ce_mode="online")
            else:
                arms[label] = keys
        arms.setdefault("uniform", {})
        if not c["arms"]:
            arms["uniform, simple loss"] = dict(loss_impl="simple")
        ms, mb = {a: [] for a in arms}, {a: [] for a in arms}
        for rnd in range(c["rounds"]):
            for i, (name, extra) in enumerate(arms.items()):
                run = dict(cfg, out_dir=os.path.join(root, f"r{rnd}a{i}"), **extra)
                out = subprocess.run([sys.executable, "-c", f"import bench; bench.arm_child({run!r})"],
                                     capture_output=True, text=True, cwd=HERE)
                if out.returncode:
                    raise RuntimeError(f"{name}: {out.stderr[-3000:]}")
                got = json.loads(out.stdout.strip().splitlines()[-1])
                ms[name].append(got["ms"])
                mb[name].append(got["peak_mb"])
        ratio = lambda d, a: statistics.median(x / u for x, u in zip(d[a], d["uniform"]))
        print(f"\n## schemes: train.py's step, {c['max_iters']} steps per arm per round, "
              f"{c['rounds']} rounds, batch {cfg['batch_size']}, {c['device']} {c['dtype']}, "
              f"each arm in its own process")
        print("| arm | ms/step | vs uniform (median over rounds) | peak memory over the process's start | vs uniform |")
        print("|---|---|---|---|---|")
        for name in arms:
            print(f"| {name} | {statistics.median(ms[name]):.1f} | {ratio(ms, name):.2f}x | "
                  f"{statistics.median(mb[name]):.1f} MB | {ratio(mb, name):.2f}x |")
        drift = max(ms["uniform"]) / min(ms["uniform"]) - 1
        print(f"uniform's own spread over rounds: {drift:.0%} (the machine's drift)")
        print(f"reference scoring of {len(split)} samples ({len(split.tokens):,} tokens): "
              f"{score_s:.1f} s, {len(split.tokens) / score_s:,.0f} tokens/s")
        result = {"ms": ms, "peak_mb": mb, "score_tok_s": len(split.tokens) / score_s,
                  "max_iters": c["max_iters"], "rounds": c["rounds"],
                  "config": {k: cfg[k] for k in build.MODEL_KEYS} | {"batch_size": cfg["batch_size"]}}
        if c["out"]:
            with open(c["out"], "w") as f:
                json.dump(result, f, indent=1)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_compile(c):
    """compile=True's per-block torch.compile against eager, H=4, both chunked paths, at the
    first of vocab_sizes, interleaved: the ratio issue 13 asks for (compile time apart)."""
    B, T, V = c["batch_size"], c["seq_len"], int(c["vocab_sizes"].split(",")[0])
    arms = {(impl, comp): make_step(model_for(c, V, 4, comp), impl, B, T, c)
            for impl in ("one-pass", "two-pass") for comp in (False, True)}
    t0 = time.perf_counter()
    for step in arms.values():              # warm-up; compiles the blocks
        step()
    warm = time.perf_counter() - t0
    times = interleaved(arms, c["repeats"])
    for impl in ("one-pass", "two-pass"):
        r = paired_ratio(times, (impl, True), (impl, False))
        print(f"compile, V={V}, H=4 {impl}: compiled / eager step time {r:.2f} "
              f"(eager {statistics.median(times[(impl, False)]) * 1e3:.0f} ms)")
    print(f"compile: warm-up of the four arms (compiling included) {warm:.0f} s")


def bench_decode(c):
    """Greedy decoding of a random model at the loss part's shape (H=1, the first of
    vocab_sizes, prompts of T/2 tokens, T/2 new): tokens/s one row at a time against
    batches of rows, eager and through the compiled decode step."""
    V, T = int(c["vocab_sizes"].split(",")[0]), c["seq_len"]
    model = model_for(c, V, 1).eval()
    g = torch.Generator().manual_seed(0)
    rows = [1, 16] + ([128] if c["device"] == "cuda" else [])
    prompts = [torch.randint(0, V, (T // 2,), generator=g).tolist() for _ in range(max(rows))]

    def tok_s(n_rows):
        t0 = time.perf_counter()
        out = model.generate_batch(prompts[:n_rows], T // 2)
        if c["device"] == "cuda":
            torch.cuda.synchronize()
        return sum(len(r) for (r,) in out) / (time.perf_counter() - t0)

    for label in ("eager", "compiled"):
        if label == "compiled":
            model.compile_decode()
            for n in rows:                    # compile each batch shape first
                tok_s(n)
        speeds = {n: tok_s(n) for n in rows}
        print(f"decode ({label}), V={V}, {T // 2}-token prompts, {T // 2} new: " + ", ".join(
            f"{n} rows {v:,.0f} tok/s" for n, v in speeds.items()))


def main(argv):
    c = configurator.configure(defaults, argv)
    if c["gpu"]:   # the preset, then the command line again so its keys still win
        c = configurator.configure({**defaults, **GPU}, argv)
    if c["report"]:   # the tables to a file as well as the screen
        sys.stdout = Tee(sys.stdout, open(c["report"], "w"))
    try:
        run_parts(c)
    finally:
        if c["report"]:
            sys.stdout.files[1].close()
            sys.stdout = sys.stdout.files[0]


class Tee:
    """A stream that writes to several."""
    def __init__(self, *files):
        self.files = files

    def write(self, text):
        for f in self.files:
            f.write(text)
            f.flush()

    def flush(self):
        for f in self.files:
            f.flush()


def run_parts(c):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {c['device']}, "
          f"{time.strftime('%Y-%m-%d')}")
    parts = c["parts"].split(",")
    if "loss" in parts:
        bench_loss(c)
    if "memory" in parts:
        bench_memory(c)
    if "weighted" in parts:
        bench_weighted(c)
    if "schemes" in parts:
        bench_schemes(c)
    if "compile" in parts:
        bench_compile(c)
    if "decode" in parts:
        bench_decode(c)


if __name__ == "__main__":
    main(sys.argv[1:])
