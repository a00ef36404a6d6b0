"""
providers.py: the inputs schemes read, each against an independent computation.

    python -m pytest tests/test_providers.py -q
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import data
import providers
from model import ModelConfig, Transformer


def test_goal_mask_is_the_last_line_by_hand():
    enc = data.get_tokenizer("bytes")
    eot = data.eot_token(enc)
    rows = [("p:", "x = 1\n    return x + 2\n"), ("q:", "a\nb\n\n"), ("r:", "only")]
    seqs = [enc.encode(p) + enc.encode(c) + [eot] for p, c in rows]
    T = max(map(len, seqs))
    tokens = torch.full((3, T), eot)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for b, ((p, _), s) in enumerate(zip(rows, seqs)):
        tokens[b, :len(s)] = torch.tensor(s)
        mask[b, len(enc.encode(p)):len(s)] = True
    lengths = torch.tensor([len(s) for s in seqs])
    run = SimpleNamespace(enc=enc, raw_model=SimpleNamespace(config=SimpleNamespace(vocab_size=320)), device="cpu")
    goal = providers.goal_mask(tokens, mask, lengths, providers.newline_ids(run))
    got = [bytes(tokens[b][goal[b]].tolist()).decode() for b in range(3)]
    assert got == ["    return x + 2", "b", "only"]


def test_goal_gradient_equals_autograd_through_the_models_own_forward():
    """goal_grad's |dL/dh|_1 equals the gradient of the same loss taken through
    Transformer.forward (head 1's logits) at the trunk's output, caught by a hook."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=40, n_layer=3, n_future=2, n_head=2, n_kv_head=1,
                                d_model=16, d_ff=32, max_seq_len=16))
    B, T = 2, 9
    tokens = torch.randint(1, 39, (B, T))
    tokens[:, 4] = 10                                      # a newline: the last line starts after it
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 2:] = True
    lengths = torch.tensor([T, T - 1])
    run = SimpleNamespace(raw_model=m, ctx=torch.autocast("cpu", enabled=False), device="cpu",
                          newlines=(torch.arange(40) == 10))
    got = providers.goal_grad(run, {"tokens": tokens, "loss_mask": mask, "lengths": lengths}, None)
    assert all(p.grad is None for p in m.parameters())      # the backward reached h only
    goal = providers.goal_mask(tokens, mask, lengths, run.newlines)
    kept = {}
    hook = m.layers[-2].register_forward_hook(lambda mod, i, out: kept.update(h=out) or out.retain_grad())
    logits = m(tokens)[:, :, 0]                           # head 1: x_{j+1} at j
    hook.remove()
    target = torch.cat([torch.where(goal, tokens, -1)[:, 1:], torch.full((B, 1), -1)], 1)
    F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1, reduction="sum").backward()
    torch.testing.assert_close(got, kept["h"].grad.abs().sum(-1))
    assert (got[:, 7:] == 0).all() and (got[:, :4] > 0).all()   # causal: after the goal nothing counts


def test_the_reward_model_score_replaces_the_label(tmp_path):
    """rm_critic: critic_inputs puts the reward model's score where the label was, and
    reward_model_scores is the frozen critic's V(s_{e-1}) clamped to [0, 1]."""
    import critic
    import train
    from test_train import make_toy_data, tiny_cfg
    toy = make_toy_data(str(tmp_path / "data"))
    train.train(tiny_cfg(toy, tmp_path / "rm", max_iters=4, eval_interval=4, weighting="critic",
                         train_on="all", critic_pretrain_epochs=0.05))
    enc = data.get_tokenizer("bytes")
    rm = critic.load_reward_model(str(tmp_path / "rm"), "cpu", data.tokenizer_identity(enc))
    split = data.PreparedSplit(str(tmp_path / "data" / "train"))
    mb = data.Loader(split, 4, 24, seed=0, correct_only=False, pad_id=data.eot_token(enc)).collate([0, 1, 2, 3])
    scores = critic.reward_model_scores(rm, mb, torch.autocast("cpu", enabled=False))
    _, v = rm(mb["tokens"], with_values=True, value_mask=mb["loss_mask"])
    e = mb["lengths"] - 1
    torch.testing.assert_close(scores, v[torch.arange(4), e - 1].clamp(0, 1))
    c = SimpleNamespace(reward="binary")
    _, rewards = critic.critic_inputs({**mb, "rm_reward": scores}, c, None)
    _, labels = critic.critic_inputs(mb, c, None)
    for b in range(4):
        assert rewards[b, e[b] - 1] == scores[b] and labels[b, e[b] - 1] == mb["is_correct"][b]
        assert rewards[b].count_nonzero() <= 1
    train.train(tiny_cfg(toy, tmp_path / "u", max_iters=1))
    with pytest.raises(ValueError, match="no value head"):
        critic.load_reward_model(str(tmp_path / "u"), "cpu", data.tokenizer_identity(enc))
