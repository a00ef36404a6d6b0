"""
Generation: the KV cache, sampling, and self-speculative decoding with the MTP heads.

    python -m pytest tests/test_generate.py -q
"""
import pytest
import torch

import train
from model import ModelConfig, Transformer, sample_next
from test_train import make_toy_data, tiny_cfg


def random_model(seed, n_future=3, scale=1.0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=64, n_layer=4, n_future=n_future, n_head=4,
                                n_kv_head=2, d_model=32, d_ff=48, max_seq_len=96))
    with torch.no_grad():   # larger weights: peaked, varied predictions, not one repeated token
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    return m.eval()


def greedy_without_cache(m, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(m(torch.tensor([seq]))[0, -1, 0].argmax()))
    return seq[len(prompt):]


def test_cached_chunks_equal_full_forward():
    m = random_model(0)
    idx = torch.randint(0, 64, (2, 30))
    caches = m.new_caches(2)
    parts = [m(idx[:, a:b], caches=caches) for a, b in ((0, 9), (9, 10), (10, 22), (22, 30))]
    torch.testing.assert_close(torch.cat(parts, 1), m(idx), rtol=1e-5, atol=1e-5)
    for c in caches:                       # roll back and redo: the same numbers
        c.pos = 9
    torch.testing.assert_close(m(idx[:, 9:22], caches=caches), m(idx)[:, 9:22], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_with_cache_equals_recomputation(seed):
    m = random_model(seed, scale=4.0)
    prompt = torch.randint(0, 64, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    assert m.generate(prompt, 40)[0] == greedy_without_cache(m, prompt, 40)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_speculative_equals_greedy_on_random_models(seed):
    m = random_model(seed, n_future=4, scale=4.0)
    prompt = torch.randint(0, 64, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
    greedy = m.generate(prompt, 60)[0]
    spec, rates = m.generate_speculative(prompt, 60)
    assert spec == greedy
    assert len(rates) == 4 and rates[0] is None


@pytest.fixture(scope="module")
def trained_heads(tmp_path_factory):
    """A tiny 3-head model trained 80 steps on the toy sums (its heads draft real guesses)."""
    root = tmp_path_factory.mktemp("trained")
    toy = make_toy_data(str(root / "data"))
    train.train(tiny_cfg(toy, root / "run", max_iters=80, n_future=3, n_layer=4,
                         eval_interval=80, block_size=24))
    ckpt = torch.load(root / "run" / "ckpt.pt", weights_only=False)
    m = Transformer(ModelConfig(**ckpt["model_args"]))
    m.load_state_dict(ckpt["model"])
    return m.eval()


def test_speculative_equals_greedy_on_a_trained_model(trained_heads):
    m = trained_heads
    accepted = []
    for prompt in ("12+30=", "7+7=", "49+1="):
        p = list(prompt.encode())
        greedy = m.generate(p, 10, eos_id=256)[0]
        spec, rates = m.generate_speculative(p, 10, eos_id=256)
        assert spec == greedy, prompt
        accepted += [r for r in rates if r is not None]
    assert accepted     # the trained heads proposed drafts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_speculative_equals_greedy(seed):
    """generate_speculative_batch: prompts of different lengths (left-padded), each row
    accepting its own number of drafts a step, give each prompt's greedy tokens; with an
    eos and a stop rule too; its acceptance rates are rates (head 1 drafts nothing)."""
    m = random_model(seed, n_future=4, scale=4.0).double()
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (5, 1, 9, 3)]
    out, rates = m.generate_speculative_batch(prompts, 40)
    assert out == [m.generate(p, 40)[0] for p in prompts]
    assert rates[0] is None and all(0 <= r <= 1 for r in rates[1:])
    stop = lambda row: len(row) >= 3 and row[-1] == row[-3]
    out, _ = m.generate_speculative_batch(prompts, 40, eos_id=7, stop=stop)
    assert out == [m.generate(p, 40, eos_id=7, stop=stop)[0] for p in prompts]
    assert m.generate_speculative_batch(prompts, 0)[0] == [[]] * 4


def test_batched_speculative_on_a_trained_model_accepts_what_one_row_does(trained_heads):
    """On trained heads the batched decoder gives greedy's tokens, as the one-row
    speculative decoder does, and some of the heads' drafts are accepted."""
    import copy
    m = copy.deepcopy(trained_heads).double()
    prompts = [list(p.encode()) for p in ("12+30=", "7+7=", "49+1=", "3+18=")]
    out, rates = m.generate_speculative_batch(prompts, 10, eos_id=256)
    one = [m.generate_speculative(p, 10, eos_id=256) for p in prompts]
    assert out == [r for r, _ in one] == [m.generate(p, 10, eos_id=256)[0] for p in prompts]
    assert any(r for r in rates[1:])   # the trained heads' drafts were accepted


def test_eos_and_stop_end_rows():
    m = random_model(5, scale=4.0)
    prompt = [1, 2, 3]
    free = m.generate(prompt, 30)[0]
    eos = free[4]
    cut = m.generate(prompt, 30, eos_id=eos)[0]
    assert cut == free[:free.index(eos)]
    stopped = m.generate(prompt, 30, stop=lambda row: len(row) >= 6)[0]
    assert stopped == free[:6]


def test_sampling_top_p_and_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    # top_p = 0.5: the first token alone holds 64% of the mass, so it is the only one kept
    assert (sample_next(logits, 1.0, 0.5, g) == 0).all()
    counts = torch.bincount(sample_next(logits, 1.0, 1.0, g), minlength=4).float() / 4000
    torch.testing.assert_close(counts, torch.softmax(logits[0], -1), atol=0.03, rtol=0)
    # top_p = 0.8 keeps tokens 0 and 1 (64% + 24%), renormalised
    kept = sample_next(logits, 1.0, 0.8, g)
    assert set(kept.tolist()) == {0, 1}
    assert (kept == 0).float().mean().item() == pytest.approx(0.64 / 0.88, abs=0.03)


def test_n_samples_batched_and_seeded():
    m = random_model(6)
    a = m.generate([1, 2], 20, n=4, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = m.generate([1, 2], 20, n=4, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) == 4 and len({tuple(r) for r in a}) > 1


def test_make_generate_for_eval(tmp_path):
    """The callable eval.py scores: n completions per prompt, cut at stop strings, seeded
    per prompt (so the order of prompts does not change anything)."""
    import sample
    toy = make_toy_data(str(tmp_path / "data"))
    train.train(tiny_cfg(toy, tmp_path / "run", max_iters=40, eval_interval=40))
    model, enc, _ = sample.load_model(str(tmp_path / "run"))
    gen = sample.make_generate(model, enc, seed=3)
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=12, stop=["9"])
    a = gen(["12+30=", "7+7="], n=4, **kw)
    b = gen(["7+7=", "12+30="], n=4, **kw)
    assert a == b[::-1] and len(a) == 2 and all(len(x) == 4 for x in a)
    assert all("9" not in c for x in a for c in x)
    greedy = gen(["12+30="], n=3, temperature=0.0, top_p=1.0, max_new_tokens=12, stop=[])
    assert len(set(greedy[0])) == 1
    ids = enc.encode_ordinary("12+30=")
    expect = enc.decode(model.generate(ids, 12, eos_id=256, n_vocab=257)[0])
    assert greedy[0][0] == expect


@pytest.mark.parametrize("check_every", [1, 5, 16])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_generate_batch_equals_generate(check_every, temperature):
    """Several prompts of different lengths decoded together (left-padded, each prefilled
    once, caches for the trunk and head 1 only, last-position unembedding, no per-token
    host sync) give what generate() gives for each prompt alone with the same draws:
    eos, stop strings and the vocabulary limit included."""
    m = random_model(3, scale=4.0)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (6, 1, 11)]
    stop = lambda row: len(row) >= 3 and row[-1] == row[-3]          # a Python stop condition
    n, new = 4, 40
    u = torch.rand(len(prompts) * n, new, generator=g)
    for kw in (dict(), dict(eos_id=7), dict(eos_id=7, stop=stop), dict(stop=stop, n_vocab=50)):
        got = m.generate_batch(prompts, new, n=n, temperature=temperature, top_p=0.9,
                               uniforms=u if temperature else None, check_every=check_every, **kw)
        for i, p in enumerate(prompts):
            want = m.generate(p, new, n=n, temperature=temperature, top_p=0.9,
                              uniforms=u[i * n:(i + 1) * n] if temperature else None, **kw)
            assert got[i] == want, (kw, i)
    assert any(len(r) < new for r in want)     # some rows did end early


def test_left_padded_prefill_equals_each_prompt_alone():
    """Padding is invisible: a padded row's logits (prefill and the steps after) equal its
    prompt's run alone, for positions, masks and the KV cache."""
    m = random_model(5)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (9, 3, 6)]
    L = max(map(len, prompts))
    pad = torch.tensor([L - len(p) for p in prompts])
    idx = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    caches = m.new_caches(3, L + 4, n_blocks=len(m.layers))
    nxt = torch.randint(0, 64, (3, 4), generator=g)
    got = [m.next_logits(idx, caches, pad)] + [m.next_logits(nxt[:, i:i + 1], caches, pad) for i in range(4)]
    for b, p in enumerate(prompts):
        alone = m(torch.tensor([p + nxt[b].tolist()]))[0, :, 0]          # (len, V), no cache
        want = alone[len(p) - 1:]
        torch.testing.assert_close(torch.stack([x[b] for x in got]), want, rtol=1e-5, atol=1e-5)


def test_inverse_cdf_sampling():
    """sample_next with uniforms: a grid of u reproduces the (nucleus) distribution exactly,
    and u near 1 never picks a token outside the nucleus."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    u = (torch.arange(1000) + 0.5) / 1000
    picks = sample_next(logits.expand(1000, 4), 1.0, 1.0, u=u)
    torch.testing.assert_close(torch.bincount(picks, minlength=4).float() / 1000,
                               torch.tensor([0.5, 0.3, 0.15, 0.05]))
    picks = sample_next(logits.expand(1000, 4), 1.0, 0.75, u=u)      # nucleus {0, 1}: 0.5/0.8, 0.3/0.8
    torch.testing.assert_close(torch.bincount(picks, minlength=4).float() / 1000,
                               torch.tensor([0.625, 0.375, 0.0, 0.0]))
    edge = sample_next(logits, 1.0, 0.75, u=torch.tensor([1 - 1e-12]))
    assert edge.item() == 1


def test_make_generate_independent_of_batching(tmp_path):
    """What a prompt gets does not depend on which prompts share its batch, nor on a
    prompt's samples being decoded in slices (max_rows smaller than n)."""
    import sample
    toy = make_toy_data(str(tmp_path / "data"))
    train.train(tiny_cfg(toy, tmp_path / "run", max_iters=40, eval_interval=40))
    model, enc, _ = sample.load_model(str(tmp_path / "run"))
    prompts = ["12+30=", "7+7=", "100+250=", "1+1="]
    for temperature in (0.0, 1.0):
        kw = dict(n=5, temperature=temperature, top_p=0.95, max_new_tokens=10, stop=["\n"])
        wide = sample.make_generate(model, enc, seed=2, max_rows=64)(prompts, **kw)
        narrow = sample.make_generate(model, enc, seed=2, max_rows=3)(prompts, **kw)
        alone = [sample.make_generate(model, enc, seed=2, max_rows=64)([p], **kw)[0] for p in prompts]
        assert wide == narrow == alone
    assert len({c for x in wide for c in x}) > 4           # sampled, not one repeated string



def test_bench_decoding_compares_like_with_like():
    """sample.py --bench: greedy one at a time, batched and speculative give the same rows."""
    import data
    import sample
    torch.manual_seed(0)
    m = Transformer(ModelConfig(n_layer=3, n_future=2, max_seq_len=64))
    with torch.no_grad():   # peaked random predictions: varied tokens, eos rare
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    enc = data.get_tokenizer("bytes")
    r = sample.bench_decoding(m.eval(), enc, ["ab", "hello", "x = 1\n"], 20, max_rows=2)
    assert r["batched_identical"] and r["spec_identical"] and r["spec_batched_identical"] and r["tokens"] > 20


def test_next_logits_is_head_one_at_the_last_position():
    m = random_model(1)
    idx = torch.randint(0, 64, (3, 12))
    caches = [c for c in m.new_caches(3)][:len(m.layers)]
    torch.testing.assert_close(m.next_logits(idx, caches), m(idx)[:, -1, 0], rtol=1e-5, atol=1e-5)


def test_compiled_decode_step_gives_the_same_tokens():
    """generate_batch through torch.compile(decode_step) (static shapes: the position a
    tensor, the whole cache masked) samples what the eager path samples, with one graph
    for every step of a batch."""
    from torch._dynamo.testing import CompileCounterWithBackend
    m = random_model(4, scale=4.0)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (5, 9, 2)]
    u = torch.rand(len(prompts) * 3, 30, generator=g)
    kw = dict(n=3, temperature=0.9, top_p=0.9, uniforms=u, eos_id=7)
    want = m.generate_batch(prompts, 30, **kw)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    m.compile_decode(backend=counter)
    got = m.generate_batch(prompts, 30, **kw)
    del m.compiled_decode
    assert got == want
    assert counter.frame_count == 1
    assert any(len(r) < 30 for x in want for r in x)       # eos ended some rows
