"""The dry run (plan.py, `train.py --dry_run=True`) and the estimate it prints (estimate.py):
a 1B config resolves without its weights and passes, and each problem a GPU node would
otherwise find after the downloads gets its own line: a missing data directory, a
reference with another tokenizer, an estimate over the device's memory, a batch that does
not divide by the world size. The parameter count is checked against the model built on the
meta device from the checkpoint's published config.json (written here, no weights).

    python -m pytest tests/test_plan.py -q
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import estimate
import plan
import pretrained
import tokenization
import train
from model import ModelConfig, Transformer
from test_data import tiny_bpe_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the published config.json of meta-llama/Llama-3.2-1B and Llama-3.1-8B (model cards' values)
LLAMA_32_1B = dict(model_type="llama", hidden_act="silu", hidden_size=2048, intermediate_size=8192,
                   num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=16, head_dim=64,
                   vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=500000.0,
                   max_position_embeddings=131072,
                   rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                     original_max_position_embeddings=8192, rope_type="llama3"))
LLAMA_31_8B = dict(LLAMA_32_1B, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   tie_word_embeddings=False, head_dim=128,
                   rope_scaling=dict(LLAMA_32_1B["rope_scaling"], factor=8.0))


def checkpoint_dir(path, config, enc):
    """A checkpoint as the hub ships it, less the weights: config.json and tokenizer.json."""
    os.makedirs(path)
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    tokenization.write_hf_tokenizer(enc, path)
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    enc = data.byte_tokenizer()   # a stand-in for Llama 3's tokenizer: the checks read identities
    model = checkpoint_dir(str(root / "Llama-3.2-1B"), LLAMA_32_1B, enc)
    ref = checkpoint_dir(str(root / "Llama-3.1-8B"), LLAMA_31_8B, enc)
    other = checkpoint_dir(str(root / "other-ref"), LLAMA_31_8B,
                           data.get_tokenizer(tiny_bpe_file(root / "t.tiktoken")))
    d = str(root / "data")
    data.prepare_tinycode(d, model, n_train=20, n_val=6, n_test=4, n_pretrain=0, families="arithmetic")
    return dict(model=model, ref=ref, other=other, data=d, root=str(root))


def rho1_1b(node, **kw):
    """config/rho1_1b.py's keys, its paths pointed at the fixtures."""
    import configurator
    cfg = configurator.configure(train.DEFAULTS, [os.path.join(ROOT, "config", "rho1_1b.py")],
                                 log=lambda *a, **k: None)
    cfg.update({**dict(init_from=node["model"], tokenizer=node["model"], data_dir=node["data"],
                       ref_init_from=node["ref"]), **kw})
    from types import SimpleNamespace
    return SimpleNamespace(**cfg)


def test_parameter_count_is_the_meta_device_models():
    """estimate.params equals the model built on the meta device, for Llama-3.2-1B with 4
    heads (the checkpoint's 16 blocks + 3 head blocks, as pretrained.py builds it: 1.2358B
    for the checkpoint alone, its published size) and with a value head, untied too."""
    args, n_blocks = pretrained._hf_args(LLAMA_32_1B, "config.json")
    for extra in (dict(n_layer=n_blocks, n_future=1), dict(n_layer=n_blocks + 3, n_future=4),
                  dict(n_layer=n_blocks + 3, n_future=4, value_head=True),
                  dict(n_layer=4, n_future=2, tie_embeddings=False, qkv_bias=True)):
        a = {**args, **extra}
        with torch.device("meta"):
            m = Transformer(ModelConfig(**a))
        assert estimate.params(a)["total"] == sum(p.numel() for p in m.parameters()), extra
        assert estimate.flops_per_token(a, 2048) == m.flops_per_token(2048)
    assert estimate.params({**args, "n_layer": 16, "n_future": 1})["total"] == 1_235_814_400


def test_memory_estimate_by_hand():
    """estimate.memory's parts for a small shape, against the formulas of its docstring."""
    a = dict(vocab_size=1000, d_model=64, n_layer=3, n_future=2, n_head=4, n_kv_head=2, d_ff=128)
    p = estimate.params(a)["total"]
    block = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert p == 3 * block + 1000 * 64 + 64
    run = dict(batch_size=2, block_size=10, loss_chunk=5)
    m = estimate.memory(a, run)
    assert (m["weights"], m["grads"], m["optimizer"]) == (4 * p, 4 * p, 8 * p)
    assert m["activations"] == 34 * 64 * 20 * 3
    assert m["loss"] == 5 * 1000 * 8 + 20 * 2 * 4
    fsdp = estimate.memory(a, dict(run, data_parallel="fsdp", activation_checkpointing="full"), world_size=4)
    assert fsdp["weights"] == p and fsdp["activations"] == 2 * 64 * 20 * 3 + 34 * 64 * 20
    assert estimate.memory(a, dict(run, loss_impl="simple"))["loss"] == 20 * 2 * 1000 * 10
    assert estimate.memory(a, run, frozen_params=100)["frozen"] == 200


def test_the_1b_config_passes_its_dry_run(node):
    lines, problems = plan.check(rho1_1b(node), world_size=8, device_memory_gb=80)
    assert problems == []
    text = "\n".join(lines)
    assert "parameters: 1.418B (1.156B in 19 blocks" in text    # 16 + 3 head blocks, tied embedding
    assert "data train:" in text and "device memory: 80 GiB" in text


@pytest.mark.parametrize("case", ["data", "tokenizer", "memory", "world"])
def test_each_problem_gets_its_line(node, case):
    kw, world, mem, expect = {}, 8, 80, ""
    if case == "data":
        kw, expect = dict(data_dir=os.path.join(node["root"], "nothing")), "does not exist: prepare the data first"
    elif case == "tokenizer":
        kw, expect = dict(ref_init_from=node["other"]), "a reference must share the tokenizer"
    elif case == "memory":
        mem, expect = 8, "over the device's 8 GiB"
    else:
        kw, world, expect = dict(gradient_accumulation_steps=12), 8, "does not divide by the world size 8"
    lines, problems = plan.check(rho1_1b(node, **kw), world_size=world, device_memory_gb=mem)
    assert len(problems) == 1 and expect in problems[0], problems


def test_train_dry_run_exits_with_the_problems(node, tmp_path):
    """`python train.py CONFIG --dry_run=True` prints the plan and exits 1 on a problem, 0
    without one, before loading any weights (there are none in the fixtures)."""
    args = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "rho1_1b.py"),
            f"--init_from={node['model']}", f"--tokenizer={node['model']}", f"--ref_init_from={node['ref']}",
            "--dry_run=True", f"--out_dir={tmp_path}"]
    env = {**os.environ, "WORLD_SIZE": "8", "DEVICE_MEMORY_GB": "80"}
    bad = subprocess.run(args + [f"--data_dir={tmp_path / 'missing'}"], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert bad.returncode == 1 and "PROBLEM: data_dir=" in bad.stdout, bad.stdout + bad.stderr
    good = subprocess.run(args + [f"--data_dir={node['data']}"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert good.returncode == 0 and "dry run: ready" in good.stdout, good.stdout + good.stderr
    assert not os.path.exists(tmp_path / "ckpt.pt")


def test_max_epochs_sets_the_steps_from_the_prepared_split(node, tmp_path):
    """max_epochs: the dry run's budget line and train.py's run derive the same steps,
    ceil(epochs x samples of train_on / rows a step), from the split's meta.json; the
    critic's line adds its value pre-training (0.5 epoch)."""
    import math
    meta = json.load(open(os.path.join(node["data"], "train", "meta.json")))
    lines, problems = plan.check(rho1_1b(node, max_epochs=3.0), world_size=8, device_memory_gb=80)
    want = math.ceil(3.0 * meta["n_correct"] / (2 * 128))
    assert problems == [] and f"budget: {want:,} steps of 256 rows" in "\n".join(lines)
    critic = rho1_1b(node, weighting="critic", train_on="all", max_epochs=2.5, critic_pretrain_epochs=0.5)
    text = "\n".join(plan.check(critic, world_size=8, device_memory_gb=80)[0])
    assert f"budget: {math.ceil(2.5 * meta['n_samples'] / 256):,} steps" in text
    assert f"value pre-training {math.ceil(0.5 * meta['n_samples'] / 256):,} steps" in text
    from test_train import tiny_cfg
    train.train(tiny_cfg(node["data"], tmp_path / "run", max_epochs=2.0, batch_size=4, eval_interval=1000,
                         block_size=128, tokenizer=node["model"]))
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    rows = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    assert cfg["max_iters"] == cfg["lr_decay_iters"] == math.ceil(2.0 * meta["n_correct"] / rows)
    assert json.load(open(tmp_path / "run" / "summary.json"))["iter_num"] == cfg["max_iters"]
