"""
eval.head_accuracy against a per-sample loop, and `python eval.py run` end to end.

    python -m pytest tests/test_eval_heads.py -q
"""
import os

import numpy as np
import torch

import data
import eval as ev
from model import ModelConfig, Transformer
from test_train import make_toy_data


def test_head_accuracy_equals_a_loop(tmp_path):
    root = make_toy_data(str(tmp_path / "d"))
    split = data.PreparedSplit(os.path.join(root, "val"))
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=320, n_layer=3, n_future=2, n_head=2, n_kv_head=1,
                                d_model=32, d_ff=32, max_seq_len=64)).eval()
    with torch.no_grad():   # peaked predictions, so some are right
        m.output.weight.mul_(20)
    got = ev.head_accuracy(m, split, split, batch_size=5, n_buckets=2)
    freq = np.bincount(np.asarray(split.tokens), minlength=320)
    hits = {1: [], 2: []}
    for i in range(len(split)):
        if split.index[i, 3] != 1:
            continue
        tokens, mask = split.sample(i)
        logits = m(torch.as_tensor(tokens.astype(np.int64))[None])[0]       # (T, H, V)
        for t in range(len(tokens)):
            for k in (1, 2):
                if t + k < len(tokens) and mask[t + k]:
                    hits[k].append(int(logits[t, k - 1].argmax()) == int(tokens[t + k]))
    for k in (1, 2):
        assert got["heads"][k - 1]["accuracy"] == np.mean(hits[k])
    assert got["n_tokens"] == len(hits[1])
