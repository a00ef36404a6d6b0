"""
Real training sources, decontamination, mixtures, self-labelling (sources.py, selflabel.py).

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python -m pytest tests/test_sources.py -q

Fixtures are hand-written rows in each hub schema (deepmind/code_contests, MBPP 'full',
openai/gsm8k, EleutherAI/hendrycks_math), written as the hub's parquet shards and as jsonl.
The real-rows tests read ../shared/data and skip without it.
"""
import json
import os

import pytest
import torch

import data
import graders
import selflabel
import sources
import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")


# ---- fixtures in the hubs' schemas ---------------------------------------------------------
def sols(*pairs):
    return {"language": [lang for lang, _ in pairs], "solution": [s for _, s in pairs]}


def io_tests(*pairs):
    return {"input": [i for i, _ in pairs], "output": [o for _, o in pairs]}


def cc_row(name, description, correct, incorrect):
    """One deepmind/code_contests row with every field of the hub's schema."""
    return {"name": name, "description": description,
            "public_tests": io_tests(("1 2\n", "3\n")), "private_tests": io_tests(("5 5\n", "10\n")),
            "generated_tests": io_tests(("0 0\n", "0\n"), ("7 1\n", "8\n")),
            "source": 2, "difficulty": 7, "solutions": sols(*correct),
            "incorrect_solutions": sols(*incorrect), "cf_contest_id": 1, "cf_index": "A",
            "cf_points": 500.0, "cf_rating": 800, "cf_tags": ["math"],
            "is_description_translated": False, "untranslated_description": "",
            "time_limit": {"seconds": 2, "nanos": 0}, "memory_limit_bytes": 256000000,
            "input_file": "", "output_file": ""}


ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
CC_TRAIN = [
    cc_row("1_A. Sum", "You are given two integers a and b. Print their sum a plus b, "
           "which fits in a signed thirty-two bit integer.",
           [(3, ADD), (3, ADD), (3, "print(sum(map(int, input().split())))\n"),
            (1, "print sum(map(int, raw_input().split()))\n"), (2, "int main(){}"),
            (3, "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n")],
           [(3, "a, b = map(int, input().split())\nprint(a - b)\n"), (4, "class Main {}"),
            (3, "print(sum(map(int, input().split())))\n")]),   # also in solutions: dropped
    cc_row("2_B. Twice", "Given an integer n, print two times n. The input holds a single "
           "line with the number n and nothing else at all.",
           [(3, "print(2 * int(input()))\n"), (3, "n = int(input())\nprint(n + n)\n"),
            (3, "print(int(input()) * 2)\n")],
           [(3, "print(int(input()) ** 2)\n"), (3, "print(int(input()))\n")]),
    cc_row("3_C. Copy", "Read a string s from the input and print it back unchanged, exactly "
           "as it was given to you on the single line of input.",
           [(3, "print(input())\n")], [(3, "print(input()[::-1])\n")]),
]
# the eval set: one problem copies 3_C's statement (CodeContests valid), one is unrelated
CC_VALID = [cc_row("9_A. Echo", CC_TRAIN[2]["description"], [(3, "print(input())\n")], []),
            cc_row("9_B. Other", "Count the vowels of a word.", [(3, "print(0)\n")], [])]
CC_TEST = [cc_row("8_A. Max", "Print the larger of two integers a and b.", [(3, "print(1)\n")], [])]

MBPP_ROWS = [{"task_id": 600 + i, "text": f"Write a function to return {i} plus the argument "
              f"number {i} in a test case of this kind.",
              "code": f"def f(x):\r\n  return x + {i}", "test_list": [f"assert f(1) == {i + 1}"],
              "test_setup_code": "", "challenge_test_list": []} for i in range(1, 9)]
MBPP_ROWS.append({**MBPP_ROWS[0], "task_id": 11})   # a test-split row: not training data
GSM8K_ROWS = [{"question": f"Tom has {i} apples and buys {i + 2} more at the village shop on "
               f"day {i}. How many apples does he have now?",
               "answer": f"He has {i}+{i + 2}=<<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n"
                         f"#### {2 * i + 2}"} for i in range(10)]
MATH_ROWS = [{"problem": f"What is ${i}+{i}$?", "level": "Level 1", "type": "Algebra",
              "solution": f"${i}+{i}=\\boxed{{{2 * i}}}$."} for i in range(5)]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def code_contests_features():
    """deepmind/code_contests' columns as `datasets` types, from its dataset card (Data
    Fields: source, difficulty and a solution's language are class labels, 0 = UNKNOWN_*)
    and contest_problem.proto for the numeric widths. `datasets` stores a sequence of
    {input, output} / {language, solution} as a struct of lists, as the hub's parquet has it."""
    import datasets as hf
    tests = hf.Sequence({"input": hf.Value("string"), "output": hf.Value("string")})
    solutions = hf.Sequence({"language": hf.ClassLabel(names=list(sources.CC_LANGUAGES.values())),
                             "solution": hf.Value("string")})
    difficulty = ["UNKNOWN_DIFFICULTY", "EASY", "MEDIUM", "HARD", "HARDER", "HARDEST", "EXTERNAL",
                  *"ABCDEFGHIJKLMNOPQRSTUV"]
    return hf.Features({
        "name": hf.Value("string"), "description": hf.Value("string"),
        "public_tests": tests, "private_tests": tests, "generated_tests": tests,
        "source": hf.ClassLabel(names=["UNKNOWN_SOURCE", "CODECHEF", "CODEFORCES", "HACKEREARTH",
                                       "CODEJAM", "ATCODER", "AIZU"]),
        "difficulty": hf.ClassLabel(names=difficulty),
        "solutions": solutions, "incorrect_solutions": solutions,
        "cf_contest_id": hf.Value("int32"), "cf_index": hf.Value("string"),
        "cf_points": hf.Value("float32"), "cf_rating": hf.Value("int32"),
        "cf_tags": hf.Sequence(hf.Value("string")),
        "is_description_translated": hf.Value("bool"), "untranslated_description": hf.Value("string"),
        "time_limit": {"seconds": hf.Value("int64"), "nanos": hf.Value("int32")},
        "memory_limit_bytes": hf.Value("int64"), "input_file": hf.Value("string"),
        "output_file": hf.Value("string")})


def write_code_contests(d, splits):
    """{split: [[rows of shard 0], [rows of shard 1], ...]} -> d/<split>-0000i-of-0000n.parquet
    as the hub names its shards, each written by `datasets` with the hub's column types."""
    import datasets as hf
    features = code_contests_features()
    for split, shards in splits.items():
        for i, rows in enumerate(shards):
            path = os.path.join(d, f"{split}-{i:05d}-of-{len(shards):05d}.parquet")
            os.makedirs(d, exist_ok=True)
            hf.Dataset.from_list(rows, features=features).to_parquet(path)
    return str(d)


@pytest.fixture
def cc_dir(tmp_path):
    """The hub's layout and column types: data/{train,valid,test}-0000n-of-0000m.parquet."""
    return write_code_contests(str(tmp_path / "code_contests" / "data"),
                               {"train": [CC_TRAIN[:2], CC_TRAIN[2:]], "valid": [CC_VALID], "test": [CC_TEST]})


def run_source(name, path, **options):
    info = {}
    out = list(sources.SOURCES[name](path=path, info=info, **options))
    return out, info


# ---- code_contests ------------------------------------------------------------------------
def test_code_contests_labels_languages_duplicates(cc_dir):
    out, info = run_source("code_contests", cc_dir)
    assert [p["problem_id"] for p, _ in out] == ["1_A. Sum", "2_B. Twice", "3_C. Copy"]
    (p, ss) = out[0]
    by_label = {lab: sorted(s["completion"] for s in ss if s["is_correct"] == lab) for lab in (True, False)}
    # solutions -> 1, incorrect_solutions -> 0; Python 3 only; ADD once; the text in both lists gone
    assert by_label[True] == sorted([ADD, "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"])
    assert by_label[False] == ["a, b = map(int, input().split())\nprint(a - b)\n"]
    n = info["counts"]
    assert n["skipped_language"] == 3 and n["dropped_duplicate"] == 1 and n["dropped_in_both_lists"] == 2
    assert n["solutions_PYTHON2"] == 1 and n["incorrect_solutions_JAVA"] == 1
    assert p["prompt"] == tasks.TASKS["code_contests"]["prompt"].format(description=CC_TRAIN[0]["description"])
    assert len(p["tests"]) == 4 and p["n_generated_tests"] == 2 and p["time_limit"] == 2.0
    # Python 2 only on request
    out2, _ = run_source("code_contests", cc_dir, languages=(1, 3))
    assert "print sum(map(int, raw_input().split()))\n" in [s["completion"] for s in out2[0][1]]


def test_code_contests_parquet_reads_as_the_hub_stream_does(cc_dir):
    """The local path (pyarrow, sources.file_rows) gives code_contests() the rows that
    `datasets` gives from the same parquet, which is what the hub path streams; every
    column of the schema is there, and a problem without a time limit gets the default."""
    import datasets as hf
    files = sources.local_files(cc_dir, "train")
    ours = [r for f in files for r in sources.file_rows(f)]
    theirs = list(hf.load_dataset("parquet", data_files=files, split="train", streaming=True))
    assert ours == theirs == CC_TRAIN
    assert set(ours[0]) == set(code_contests_features())
    assert ours[0]["solutions"]["language"][:2] == [3, 3]      # class labels stay ints
    no_limit = {**CC_TRAIN[0], "time_limit": None}               # "None if not defined" (the card)
    assert tasks.code_contests_tests(no_limit)[1] == 2.0


def test_code_contests_caps_are_seeded_and_order_free(cc_dir, tmp_path):
    out, info = run_source("code_contests", cc_dir, max_correct=1, max_incorrect=1, seed=3)
    assert all(sum(s["is_correct"] for s in ss) <= 1 and sum(not s["is_correct"] for s in ss) <= 1
               for _, ss in out)
    assert info["counts"]["dropped_cap"] == 1 + 2 + 1   # Sum: 2 correct; Twice: 3 correct, 2 incorrect
    # the same rows in another order and another file format keep the same samples
    rev = write_jsonl(str(tmp_path / "rev.jsonl"), CC_TRAIN[::-1])
    out_rev, _ = run_source("code_contests", rev, max_correct=1, max_incorrect=1, seed=3)
    assert sorted(map(str, out_rev)) == sorted(map(str, out))
    picks = {str(run_source("code_contests", cc_dir, max_correct=1, seed=s)[0][1][1]) for s in range(8)}
    assert len(picks) > 1   # the seed decides which solutions are kept


def prepare(tmp_path, specs, name="out", **kw):
    kw.setdefault("val_frac", 0.0)
    kw.setdefault("decontam", "")
    return sources.prepare(str(tmp_path / name), specs, **kw)


def files_of(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                out[os.path.relpath(os.path.join(root, n), d)] = f.read()
    return out


def test_prepare_is_deterministic_and_the_loader_reads_it(cc_dir, tmp_path):
    spec = [("code_contests", cc_dir, {})]
    prepare(tmp_path, spec, "a", n_samples=6, seed=1)
    prepare(tmp_path, spec, "b", n_samples=6, seed=1)
    prepare(tmp_path, spec, "c", n_samples=6, seed=2)
    a, b, c = (files_of(str(tmp_path / x)) for x in "abc")
    assert a == b                                     # same seed -> same bytes
    assert a["train/tokens.bin"] != c["train/tokens.bin"]
    split = data.PreparedSplit(str(tmp_path / "a" / "train"))
    assert len(split) == 6
    data.check_roundtrip(split, data.get_tokenizer("bytes"))
    # the index's labels are the sources' labels, sample by sample
    out, _ = run_source("code_contests", cc_dir)
    label = {(s["problem_id"], s["completion"]): s["is_correct"] for _, ss in out for s in ss}
    enc = data.get_tokenizer("bytes")
    for i, row in enumerate(open(os.path.join(split.path, "samples.jsonl"))):
        row = json.loads(row)
        tokens, _ = split.sample(i)
        completion = enc.decode([int(t) for t in tokens[split.index[i, 2]:-1]])
        assert label[(row["problem_id"], completion)] == row["is_correct"] == bool(split.index[i, 3])
    loader = data.Loader(split, batch_size=2, block_size=10**6, seed=0, correct_only=False)
    assert loader.next_step(1)[0]["tokens"].shape[0] == 2
    meta = split.meta["sources"][0]
    assert meta["provenance"]["files"][0]["sha256"] == sources.sha256_file(
        os.path.join(cc_dir, "train-00000-of-00002.parquet"))
    assert {"correct", "incorrect", "auc_length_predicts_correct"} <= set(meta["lengths"])


def test_block_size_drops_and_counts(cc_dir, tmp_path):
    metas = prepare(tmp_path, [("code_contests", cc_dir, {})], block_size=170)
    n = metas["train"]["sources"][0]["counts"]
    lengths = data.PreparedSplit(str(tmp_path / "out" / "train")).index[:, 1]
    assert n["dropped_longer_than_block_size"] > 0 and lengths.max() <= 170
    assert n["dropped_longer_than_block_size"] + len(lengths) == n["samples"]


def test_decontamination_drops_overlapping_problems(cc_dir, tmp_path):
    metas = prepare(tmp_path, [("code_contests", cc_dir, {})], decontam=f"code_contests={cc_dir}")
    n = metas["train"]["sources"][0]["counts"]
    assert n["dropped_problems_overlap_code_contests"] == 1        # 3_C copies 9_A's statement
    ids = {json.loads(r)["problem_id"] for r in open(tmp_path / "out" / "train" / "problems.jsonl")}
    assert ids == {"1_A. Sum", "2_B. Twice"}
    assert metas["train"]["decontamination"]["eval_sets"] == {"code_contests": 3}
    # a one-word edit of a statement of contest length (80 words) is still caught, and of
    # a 15-content-word one (14 of 15 words covered); not a short text with one content
    # word changed (tests/test_decontam.py), nor another text
    long = " ".join(f"w{i}" for i in range(80))
    dc = sources.Decontaminator({"x": [long, CC_TRAIN[0]["description"]]})
    assert dc.check(long.replace("w40", "edited")) == "x"
    assert dc.check(CC_TRAIN[0]["description"]) == "x"
    assert dc.check(CC_TRAIN[0]["description"].replace("sum", "total")) == "x"
    assert dc.check(CC_TRAIN[1]["description"]) is None


def test_mixture_proportions_and_meta(tmp_path):
    g = write_jsonl(str(tmp_path / "gsm8k" / "train.jsonl"), GSM8K_ROWS)
    m = write_jsonl(str(tmp_path / "mbpp.jsonl"), MBPP_ROWS)
    specs = [("gsm8k", str(tmp_path / "gsm8k"), {}), ("mbpp", m, {})]
    metas = prepare(tmp_path, specs, n_samples=8, mix=(0.75, 0.25))
    kept = {s["source"]: s["kept_train"] for s in metas["train"]["sources"]}
    assert kept == {"gsm8k": 6, "mbpp": 2}
    rows = [json.loads(r) for r in open(tmp_path / "out" / "train" / "samples.jsonl")]
    assert [r["source"] for r in rows].count("gsm8k") == 6
    prov = {s["source"]: s["provenance"]["files"][0]["sha256"] for s in metas["train"]["sources"]}
    assert prov == {"gsm8k": sources.sha256_file(g), "mbpp": sources.sha256_file(m)}
    assert metas["train"]["sources"][1]["counts"]["skipped_not_train"] == 1
    # 0 = as much as the proportions allow: gsm8k's 10 samples are three quarters of 13
    metas = prepare(tmp_path, specs, "all", mix=(0.75, 0.25))
    assert {s["source"]: s["kept_train"] for s in metas["train"]["sources"]} == {"gsm8k": 10, "mbpp": 3}
    with pytest.raises(ValueError, match="more than sources have"):
        prepare(tmp_path, specs, "big", n_samples=100, mix=(0.5, 0.5))
    # a problem two sources hold (mbpp and its sampled twin) is in one split, listed once
    prepare(tmp_path, [("mbpp", m, {}), ("mbpp", m, {})], "twice", val_frac=0.5)
    ids = {s: [json.loads(r)["problem_id"] for r in open(tmp_path / "twice" / s / "problems.jsonl")]
           for s in ("train", "val")}
    assert ids["train"] and ids["val"] and not set(ids["train"]) & set(ids["val"])
    assert sorted(ids["train"] + ids["val"]) == sorted(f"mbpp/{600 + i}" for i in range(1, 9))
    for s in ("train", "val"):
        rows = [json.loads(r)["problem_id"] for r in open(tmp_path / "twice" / s / "samples.jsonl")]
        assert sorted(rows) == sorted(2 * ids[s])


def test_source_prompts_match_eval_and_checkers_pass_references(tmp_path):
    m = write_jsonl(str(tmp_path / "mbpp.jsonl"), MBPP_ROWS)
    (p, [s]), *_ = run_source("mbpp", m)[0]
    assert "\r" not in s["completion"]
    # the same row as eval's test-split loader builds it (task_id moved into 11-510)
    ref = tasks.load_mbpp(write_jsonl(str(tmp_path / "t.jsonl"), [{**MBPP_ROWS[0], "task_id": 11}]))[0]
    assert {k: p[k] for k in ("prompt", "test_list", "setup")} == {k: ref[k] for k in ("prompt", "test_list", "setup")}
    g = write_jsonl(str(tmp_path / "g" / "train.jsonl"), GSM8K_ROWS)
    d = tmp_path / "math" / "algebra"
    write_parquet(str(d / "train-00000-of-00001.parquet"), MATH_ROWS)
    write_parquet(str(d / "test-00000-of-00001.parquet"), MATH_ROWS[:1])
    for task, path in (("mbpp", m), ("gsm8k", os.path.dirname(g)), ("math", str(tmp_path / "math"))):
        out, _ = run_source(task, path)
        items = [(p, s["completion"]) for p, ss in out for s in ss]
        assert len(out) == {"mbpp": 8, "gsm8k": 10, "math": 5}[task]   # math: the train shard only
        assert all(r["correct"] for r in graders.score_batch(task, items, workers=1)), task
        if task == "gsm8k":   # calculator notes removed, the final answer kept
            assert "<<" not in items[0][1] and items[0][1].endswith("#### 2\n")


def test_offline_without_a_file_says_what_to_give(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"--path.*incorrect_solutions"):
        list(sources.code_contests())
    with pytest.raises(RuntimeError, match=r"mbpp.*test_list"):
        list(sources.mbpp())
    with pytest.raises(RuntimeError, match="gsm8k=PATH"):
        sources.eval_texts("gsm8k")


def test_encode_samples_equals_encode_sample(tmp_path):
    enc = data.get_tokenizer("bytes")
    ss = [{"prompt": f"# {i}\n", "completion": "x" * i + "é\n"} for i in range(5)]
    assert data.encode_samples(enc, ss, threads=2) == [data.encode_sample(enc, s) for s in ss]


# ---- self-labelled samples ----------------------------------------------------------------
def tiny_model(problems, enc, steps=150):
    """A 2-layer byte model that has memorised the canonical solutions: at temperature 1.3
    it writes both correct and broken bodies, so the labels are mixed."""
    from model import ModelConfig, Transformer
    import torch.nn.functional as F
    torch.manual_seed(0)
    seqs = [data.encode_sample(enc, {"prompt": p["prompt"], "completion": p["canonical"]}) for p in problems]
    T = max(len(t) for t, _ in seqs)
    x = torch.full((len(seqs), T), data.eot_token(enc))
    m = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (t, mk) in enumerate(seqs):
        x[i, :len(t)], m[i, :len(t)] = torch.tensor(t), torch.tensor(mk, dtype=torch.bool)
    model = Transformer(ModelConfig(n_layer=2, n_future=1, d_model=64, n_head=4, n_kv_head=2,
                                    d_ff=128, max_seq_len=512))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(x[:, :-1])[:, :, 0]                                   # (B, T-1, V)
        ce = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        loss = (ce * m[:, 1:].flatten()).sum() / m[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_selflabel_tinycode_end_to_end(tmp_path):
    import tinycode
    enc = data.get_tokenizer("bytes")
    problems = tinycode.generate_problems(4, seed=0, families=("arithmetic",), max_const=9)
    samples = [{"problem_id": p["problem_id"], "prompt": p["prompt"], "completion": p["canonical"],
                "is_correct": True, "source": "tinycode"} for p in problems]
    data.write_split(str(tmp_path / "tc" / "train"), enc, samples, problems, {"source": "tinycode"})
    model = tiny_model(problems, enc)
    todo = selflabel.task_problems("tinycode", str(tmp_path / "tc" / "train"))
    out = str(tmp_path / "sampled")
    kw = dict(model_id=selflabel.model_identity(model, "test"), n=6, temperature=1.3, top_p=1.0,
              max_new_tokens=60, seed=0, workers=1)
    run = selflabel.selflabel("tinycode", todo[:2], model, enc, out, **kw)   # killed after 2 problems...
    run = selflabel.selflabel("tinycode", todo, model, enc, out, **kw)       # ...and resumed
    assert run["throughput"]["new_samples"] == 2 * 6
    rows = [json.loads(r) for r in open(os.path.join(out, "samples.jsonl"))]
    assert len(rows) == 4 * 6
    # every label is what the checker says when run on its own
    by_id = {p["problem_id"]: p for p in todo}
    labels = [r["is_correct"] for r in rows]
    assert labels == [graders.score("tinycode", by_id[r["problem_id"]], r["completion"]) for r in rows]
    assert 0 < sum(labels) < len(labels)
    r = run["report"]
    assert r["n_samples"] == 24 and r["n_correct"] == sum(labels) and r["samples_per_problem"] == 6
    assert r["problems_with_both"] == sum(0 < sum(x["is_correct"] for x in rows if x["problem_id"] == pid) < 6
                                          for pid in by_id)
    # another model in the same out_dir is refused
    with pytest.raises(ValueError, match="another run"):
        selflabel.selflabel("tinycode", todo, model, enc, out, **{**kw, "model_id": {"from": "other"}})
    # into a prepared dataset: labels and provenance carried through
    metas = prepare(tmp_path, [("sampled", out, {})])
    split = data.PreparedSplit(str(tmp_path / "out" / "train"))
    assert len(split) == 24 and int(split.index[:, 3].sum()) == sum(labels)
    assert metas["train"]["sources"][0]["options"]["model"]["params_sha256"] == kw["model_id"]["params_sha256"]
    assert metas["train"]["sources"][0]["options"]["settings"]["temperature"] == 1.3


# ---- real rows, offline ---------------------------------------------------------------------
def shared(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (the shared offline copy of the benchmark data)")
    return path


def test_real_mbpp_train_prepares_and_drops_test_copies(tmp_path):
    mbpp = shared("mbpp", "mbpp.jsonl")
    metas = prepare(tmp_path, [("mbpp", mbpp, {})], decontam=f"mbpp={mbpp}", val_frac=0.05)
    n = metas["train"]["sources"][0]["counts"]
    assert n["problems"] == 374 and n["skipped_not_train"] == 600
    kept = metas["train"]["n_samples"] + metas["val"]["n_samples"]
    assert kept + n["dropped_problems_overlap_mbpp"] == 374 and 0 < n["dropped_problems_overlap_mbpp"] < 20
    ids = {json.loads(r)["problem_id"] for s in ("train", "val")
           for r in open(tmp_path / "out" / s / "problems.jsonl")}
    # train task 602 is test task 'first repeated character in a given string', verbatim
    row = next(json.loads(r) for r in open(mbpp) if json.loads(r)["task_id"] == 602)
    assert "first repeated character" in row["text"] and "mbpp/602" not in ids


def test_real_gsm8k_train_prepares_and_references_pass_the_checker(tmp_path):
    gsm = shared("gsm8k")
    metas = prepare(tmp_path, [("gsm8k", gsm, {})], decontam=f"gsm8k={gsm}", val_frac=0.02)
    n = metas["train"]["sources"][0]["counts"]
    rows = sum(1 for _ in open(os.path.join(gsm, "train.jsonl")))
    assert n["problems"] == rows and metas["train"]["n_samples"] + metas["val"]["n_samples"] == rows
    out, _ = run_source("gsm8k", gsm)
    assert all(tasks.extract_gsm8k(ss[0]["completion"]) == p["answer"] is not None for p, ss in out)


def test_real_selflabel_mbpp_labels_match_the_checker(tmp_path):
    mbpp = shared("mbpp", "mbpp.jsonl")
    enc = data.get_tokenizer("bytes")
    problems = selflabel.task_problems("mbpp", mbpp, limit=2)
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_future=1, d_model=32, n_head=2, n_kv_head=1,
                                    d_ff=64, max_seq_len=512)).eval()
    out = str(tmp_path / "s")
    run = selflabel.selflabel("mbpp", problems, model, enc, out, model_id={"from": "random init"},
                              n=2, temperature=1.0, max_new_tokens=24, workers=1)
    rows = [json.loads(r) for r in open(os.path.join(out, "samples.jsonl"))]
    by_id = {p["problem_id"]: p for p in problems}
    assert [r["is_correct"] for r in rows] == [graders.score("mbpp", by_id[r["problem_id"]], r["completion"]) for r in rows]
    # and the reference solutions, through the same checker, are correct
    assert all(graders.score("mbpp", p, s["completion"]) for p, ss in sources.mbpp(mbpp) for s in ss[:1]
               if p["problem_id"] in by_id)
    assert run["report"]["n_samples"] == 4
