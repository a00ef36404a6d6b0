"""The critic's value head on real tinycode: it tells correct from incorrect solutions.
In a file of its own (the slowest test, ~1-3 min) so that a second test worker runs the
other files beside it (pytest.ini: -n auto --dist loadfile).

    python -m pytest tests/test_critic_tinycode.py -q
"""
import pytest

import data
import train
from test_train import read_log


@pytest.mark.slow
def test_value_head_separates_tinycode_solutions(tmp_path):
    """On real tinycode (arithmetic; incorrect solutions are one-site mutants labelled by
    execution), a critic on an LM trained on the correct solutions tells correct from
    incorrect validation solutions after value pre-training: AUC > 0.65 (0.74 / 0.75 for
    seeds 1337 / 1338 when written). The signal is the LM's surprise at the mutated token
    (value_surprise): a fresh value head on this LM already reads 0.71-0.75, so this checks
    the path from init_from, surprise features and labels to the AUC, not that training
    raises it (the toy test above checks learning)."""
    d = str(tmp_path / "d")
    data.prepare_tinycode(d, "bytes", n_train=600, n_val=100, n_test=10, families="arithmetic",
                          n_pretrain=0)
    keys = dict(data_dir=d, n_layer=3, n_future=2, n_head=4, n_kv_head=2, d_model=64, d_ff=176,
                block_size=128, batch_size=16, eval_interval=10_000, eval_samples=32, log_interval=50,
                learning_rate=4e-3, warmup_iters=10)
    train.train(dict(train.DEFAULTS, out_dir=str(tmp_path / "lm"), max_iters=800, lr_decay_iters=800, **keys))
    train.train(dict(train.DEFAULTS, out_dir=str(tmp_path / "critic"), init_from=str(tmp_path / "lm"),
                     weighting="critic", train_on="all", critic_pretrain_epochs=2.0, max_iters=0,
                     lr_decay_iters=1, **keys))
    auc = [r["val_value_auc"] for r in read_log(tmp_path / "critic") if "val_value_auc" in r]
    assert auc[-1] > 0.65, auc
