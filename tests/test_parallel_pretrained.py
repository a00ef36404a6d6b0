"""FSDP from a pretrained model: rank 0 alone reads the checkpoint (a tiny HF Llama),
every rank gets its shards of it (parallel.materialize), and the run starts from exactly
the weights one process starts from.

    OMP_NUM_THREADS=1 python -m pytest tests/test_parallel_pretrained.py -q
"""
import pytest
import torch

pytest.importorskip("safetensors", reason="HF checkpoints are read with safetensors")

from test_parallel import start_weights_under_fsdp  # noqa: E402
from test_pretrained_train import hf_dir  # noqa: E402,F401  (the module fixture)
from test_train import tiny_cfg  # noqa: E402


@pytest.mark.slow
def test_fsdp_starts_from_the_pretrained_weights(hf_dir, tmp_path):
    d, toy, src = hf_dir
    one = tiny_cfg(toy, tmp_path / "one", init_from=d, tokenizer=d, n_future=3)
    a, b = start_weights_under_fsdp(one, tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in src.state_dict().items():      # the checkpoint's trunk and head 1
        assert torch.equal(b[k], v), k
    for k, v in src.layers[-1].state_dict().items():   # heads 2, 3: copies of its last block
        assert torch.equal(b[f"extra_heads.1.{k}"], v), k
