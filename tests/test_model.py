"""
The MTP transformer: causality, (t, k) target alignment, and n_future=1 == a plain Llama.

    python -m pytest tests/test_model.py -q
"""
import math

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer, mtp_cross_entropy, mtp_targets

TINY = dict(vocab_size=64, n_layer=4, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=32)


def tiny_model(n_future=3, seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**{**TINY, "n_future": n_future, **kw}))
    # random gains so that a norm or a head mixed up with another would show
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m.eval()


def test_shapes_and_layout():
    m = tiny_model(n_future=3)
    assert len(m.layers) == 4 - 3 + 1 and len(m.extra_heads) == 2
    idx = torch.randint(0, 64, (2, 10))
    assert m(idx).shape == (2, 10, 3, 64)
    # the heads are distinct blocks reading the same trunk
    assert m.heads[0] is m.layers[-1] and m.heads[1] is m.extra_heads[0]


def test_causality_every_head():
    m = tiny_model(n_future=3)
    idx = torch.randint(0, 64, (2, 16))
    base = m(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 64, changed[:, t + 1:].shape)
        out = m(changed)
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_targets_by_hand():
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.bool)   # prompt, completion, pad
    t = mtp_targets(tokens, mask, 3)
    # written out by hand: row t, column k-1 holds tokens[t+k] when it is a completion token
    expected = torch.tensor([[[-1, 12, 13],
                              [12, 13, 14],
                              [13, 14, -1],
                              [14, -1, -1],
                              [-1, -1, -1],
                              [-1, -1, -1]]])
    assert torch.equal(t, expected)


def test_alignment_training_path_equals_hand_ce():
    m = tiny_model(n_future=3)
    B, T, H = 2, 12, 3
    tokens = torch.randint(0, 64, (B, T))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, 2:9] = True
    logits = m(tokens)
    ce = mtp_cross_entropy(logits, mtp_targets(tokens, mask, H))
    n = 0
    for b in range(B):
        for t in range(T):
            for k in range(1, H + 1):
                if t + k < T and mask[b, t + k]:
                    hand = F.cross_entropy(logits[b, t, k - 1], tokens[b, t + k])
                    assert torch.allclose(ce[b, t, k - 1], hand, atol=1e-5), (b, t, k)
                    n += 1
                else:
                    assert ce[b, t, k - 1] == 0
    assert n == (mtp_targets(tokens, mask, H) >= 0).sum()


# ---- an independent Llama forward, written from Meta's reference description ----
def reference_llama(sd, cfg, idx):
    """Plain Llama written separately from model.py: complex rotary (Meta's llama code),
    explicit masked softmax attention, repeated kv heads, SwiGLU, tied unembedding."""
    D, nh, nkv = cfg.d_model, cfg.n_head, cfg.n_kv_head
    hd = D // nh
    B, T = idx.shape

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    freqs_cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))

    def rope(x):  # (B, T, n, hd)
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    x = sd["tok_embeddings.weight"][idx]
    n_blocks = sum(1 for k in sd if k.endswith("attention.wq.weight"))
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(n_blocks):
        p = lambda name: sd[f"layers.{i}.{name}"]
        h = rms(x, p("attention_norm.weight"))
        q = rope((h @ p("attention.wq.weight").T).view(B, T, nh, hd))
        k = rope((h @ p("attention.wk.weight").T).view(B, T, nkv, hd))
        v = (h @ p("attention.wv.weight").T).view(B, T, nkv, hd)
        k = k.repeat_interleave(nh // nkv, dim=2)
        v = v.repeat_interleave(nh // nkv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + causal
        att = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, T, D)
        x = x + att @ p("attention.wo.weight").T
        h = rms(x, p("ffn_norm.weight"))
        ff = (F.silu(h @ p("feed_forward.w1.weight").T) * (h @ p("feed_forward.w3.weight").T))
        x = x + ff @ p("feed_forward.w2.weight").T
    return rms(x, sd["norm.weight"]) @ sd["output.weight"].T


@pytest.mark.parametrize("tie", [True, False])
def test_n_future_1_is_plain_llama(tie):
    m = tiny_model(n_future=1, tie_embeddings=tie)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    assert not any(k.startswith("extra_heads") for k in sd)  # Llama names, nothing extra
    idx = torch.randint(0, 64, (2, 20))
    ours = m(idx)[:, :, 0]
    ref = reference_llama(sd, m.config, idx)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_extra_heads_read_the_trunk():
    """Head k's logits equal the shared norm + unembedding applied to extra block k-1
    run on the trunk output (not on head k-1's output)."""
    m = tiny_model(n_future=3)
    idx = torch.randint(0, 64, (1, 9))
    cos, sin = m.rope_cos[:9], m.rope_sin[:9]
    trunk = m.tok_embeddings(idx)
    for blk in m.layers[:-1]:
        trunk = blk(trunk, cos, sin)
    for k, head in enumerate(m.heads):
        expected = m.output(m.norm(head(trunk, cos, sin)))
        torch.testing.assert_close(m(idx)[:, :, k], expected)


def test_value_head_fp32_and_optimizer_groups():
    m = tiny_model(n_future=2, value_head=True)
    logits, values = m(torch.randint(0, 64, (2, 7)), with_values=True)
    assert values.shape == (2, 7) and values.dtype == torch.float32
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in m.parameters())


def test_surprise_features_by_hand():
    from model import surprise_features
    g = torch.Generator().manual_seed(1)
    logits, idx = torch.randn(2, 6, 11, generator=g), torch.randint(0, 11, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    f = surprise_features(logits, idx, mask)
    for b in range(2):
        seen = []
        for t in range(6):
            s = -torch.log_softmax(logits[b, t - 1], -1)[idx[b, t]].item() if t > 0 and mask[b, t] else 0.0
            seen += [s] if mask[b, t] and t > 0 else []
            assert f[b, t, 0].item() == pytest.approx(s, abs=1e-5)
            assert f[b, t, 1].item() == pytest.approx(max(seen, default=0.0), abs=1e-5)
            assert f[b, t, 2].item() == pytest.approx(sum(seen) / max(len(seen), 1), abs=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_value_detach_keeps_the_value_loss_off_the_trunk(detach):
    m = tiny_model(n_future=2, value_head=True, value_detach=detach)
    _, values = m(torch.randint(0, 64, (2, 7)), with_values=True)
    values.sum().backward()
    trunk_grad = m.layers[0].attention.wq.weight.grad
    assert m.value_head.fc.weight.grad.abs().sum() > 0
    assert (trunk_grad is None) == detach


def test_flops_count_all_heads():
    c = ModelConfig(**{**TINY, "n_future": 2})
    m = Transformer(c)
    block = sum(p.numel() for p in m.layers[0].parameters())
    # 4 blocks (trunk 2 + 2 heads), unembedding once per head, attention 12 * L * D * T
    expected = 6 * (4 * block + 2 * c.vocab_size * c.d_model) + 12 * 4 * c.d_model * 32
    assert m.flops_per_token(32) == expected


def test_training_path_compiles_to_one_graph_for_every_length():
    """torch.compile sees the training path (forward with values, and the chunked loss's
    trunk_forward / head_hidden) as one graph without breaks, and with dynamic shapes one
    graph serves every sequence length (is_causal is a plain bool, not a SymBool)."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    m = Transformer(ModelConfig(value_head=True, n_future=2))
    idx = torch.randint(0, 320, (2, 40))
    x, cos, sin = m.trunk_forward(idx)
    for f, args, kw in [(m, (idx,), dict(with_values=True)), (m.trunk_forward, (idx,), {}),
                        (m.head_hidden, (1, x, cos, sin), {})]:
        explained = torch._dynamo.explain(f)(*args, **kw)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(m, backend=counter, dynamic=True)
    for T in (40, 57, 64, 100):
        logits = compiled(torch.randint(0, 320, (2, T)))
        assert logits.shape == (2, T, 2, 320)
    assert counter.frame_count == 1
