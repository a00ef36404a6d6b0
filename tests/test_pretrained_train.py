"""Training from a pretrained model: train.py's init_from / ref_init_from / tokenizer take
a foreign checkpoint (here a tiny HF Llama directory written by pretrained.export_hf with its
tokenizer), and the run exports back to HF format with its tokenizer.

    python -m pytest tests/test_pretrained_train.py -q
"""
import os

import pytest
import tiktoken
import torch

pytest.importorskip("safetensors", reason="HF checkpoints are read with safetensors")

import data  # noqa: E402
import pretrained  # noqa: E402
import tokenization  # noqa: E402
import checkpoint  # noqa: E402
import train  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from test_train import make_toy_data, read_log, tiny_cfg  # noqa: E402

ARCH = dict(vocab_size=264, n_layer=2, n_future=1, n_head=4, n_kv_head=2, d_model=32, d_ff=80,
            max_seq_len=64, tie_embeddings=False, head_dim=16)   # not tiny_cfg's shapes


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A 'pretrained' plain Llama (one head) in HF format with the byte tokenizer as a
    tokenizer.json, and data prepared with that tokenizer."""
    root = tmp_path_factory.mktemp("pre")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**ARCH))
    d = str(root / "hf")
    pretrained.export_hf(model, ARCH, d)
    tokenization.write_hf_tokenizer(data.byte_tokenizer(), d)
    return d, make_toy_data(str(root / "data"), tokenizer=d), model


def test_init_from_hf_dir_takes_its_architecture_and_weights(hf_dir, tmp_path):
    d, toy, src = hf_dir
    # lr 0: AdamW moves nothing (its decay is lr * wd), so the checkpoint holds the start
    train.train(tiny_cfg(toy, tmp_path, init_from=d, tokenizer=d, n_future=3, max_iters=2,
                         learning_rate=0.0, min_lr=0.0, eval_interval=2))
    ckpt = checkpoint.load_checkpoint(str(tmp_path))
    args = ckpt["model_args"]
    assert (args["d_model"], args["head_dim"], args["n_layer"], args["n_future"]) == (32, 16, 4, 3)
    assert ckpt["model_source"]["format"] == "hf"
    sd = ckpt["model"]
    for k, v in src.state_dict().items():         # trunk and head 1: the checkpoint's
        assert torch.equal(sd[k], v), k
    for j in range(2):                             # heads 2, 3: copies of its last block
        for k, v in src.layers[-1].state_dict().items():
            assert torch.equal(sd[f"extra_heads.{j}.{k}"], v), (j, k)
    # resume keeps the pretrained architecture (not tiny_cfg's n_layer/d_model keys)
    out = train.train(tiny_cfg(toy, tmp_path, init_from="resume", tokenizer=d, n_future=3,
                               max_iters=4, eval_interval=2))
    assert out["iter_num"] == 4
    # a fine-tune of that run keeps it too, with a fresh value head for the critic
    train.train(tiny_cfg(toy, tmp_path / "critic", init_from=str(tmp_path), tokenizer=d, n_future=3,
                         weighting="critic", train_on="all", critic_pretrain_epochs=0.0, max_iters=2))
    assert checkpoint.load_checkpoint(str(tmp_path / "critic"))["model_args"]["head_dim"] == 16


def test_pretrained_reference_and_export(hf_dir, tmp_path):
    d, toy, _ = hf_dir
    train.train(tiny_cfg(toy, tmp_path / "rho1", init_from=d, tokenizer=d, n_future=2,
                         weighting="rho1", ref_init_from=d, max_iters=3,
                         ref_ce_cache=str(tmp_path / "ref_ce.bin")))
    assert [r for r in read_log(tmp_path / "rho1") if "w_mean" in r]
    # export: transformers-style dir with the run's tokenizer, read back with all heads
    pretrained.main(["export", str(tmp_path / "rho1"), str(tmp_path / "hf_out")])
    back, args, _ = pretrained.load_pretrained(str(tmp_path / "hf_out"))
    sd = checkpoint.load_checkpoint(str(tmp_path / "rho1"))["model"]
    assert args["n_future"] == 2
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert data.tokenizer_identity(data.get_tokenizer(str(tmp_path / "hf_out")))["sha256"] == \
        data.tokenizer_identity(data.get_tokenizer(d))["sha256"]


def test_pretrained_source_with_another_tokenizer_is_refused(hf_dir, tmp_path):
    d, toy, _ = hf_dir
    other = tiktoken.Encoding("bytes+pad", pat_str=r"[\s\S]",
                              mergeable_ranks={bytes([i]): i for i in range(256)},
                              special_tokens={"<|endoftext|>": 256, "<|pad|>": 257})
    bad = str(tmp_path / "other")
    pretrained.export_hf(Transformer(ModelConfig(**ARCH)), ARCH, bad)
    tokenization.write_hf_tokenizer(other, bad)
    for key in ("init_from", "ref_init_from"):
        kw = {key: bad, **({"weighting": "rho1", "init_from": d} if key == "ref_init_from" else {})}
        with pytest.raises(ValueError, match="tokenizer mismatch"):
            train.train(tiny_cfg(toy, tmp_path / key, tokenizer=d, max_iters=1, **kw))
    for f in os.listdir(bad):
        if f.startswith("tokenizer") or f == "special_tokens_map.json":
            os.remove(os.path.join(bad, f))
    with pytest.raises(ValueError, match="no tokenizer beside it"):
        train.train(tiny_cfg(toy, tmp_path / "x", init_from=bad, tokenizer=d, max_iters=1))
