"""
tinycode: problem format, determinism, disjoint splits, and labels that come from
running the code in the sandbox.

    python -m pytest tests/test_tinycode.py -q
"""
import ast
import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest

import sandbox
import tinycode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = re.compile(r"# [^\n]+\ndef (\w+)\((\w+(?:, \w+)*)\):\n")


def test_problem_format():
    problems = tinycode.generate_problems(600, seed=0)
    for p in problems:
        m = PROMPT.fullmatch(p["prompt"])
        assert m and m.group(1) == p["entry_point"], p["prompt"]
        assert re.fullmatch(r"tinycode/(\w+)/[0-9a-f]{8}", p["problem_id"]).group(1) == p["family"]
        body = p["canonical"]
        assert body.endswith("\n") and 1 <= body.count("\n") <= 4
        assert all(line.startswith("    ") for line in body.splitlines())
        assert len(p["prompt"]) <= 120 and len(body) <= 120
        assert 3 <= len(p["tests"]) <= 5
        assert all(t.startswith(f"assert {p['entry_point']}(") for t in p["tests"])
        ast.parse(tinycode.program(p, body))
    assert tinycode.program(problems[0], "    pass\n") == (
        problems[0]["prompt"] + "    pass\n" + "\n" + "\n".join(problems[0]["tests"]) + "\n")


def test_families_and_templates():
    assert len(tinycode.TEMPLATES) >= 25
    for f in tinycode.FAMILIES:
        assert sum(t["family"] == f for t in tinycode.TEMPLATES) >= 5, f
    problems = tinycode.generate_problems(1000, seed=0)
    # the families take turns
    assert [p["family"] for p in problems[:10]] == list(tinycode.FAMILIES) * 2
    assert {p["family"] for p in problems} == set(tinycode.FAMILIES)
    assert len({p["prompt"].split("\n")[0] for p in problems}) == 1000  # distinct descriptions


def _digest(problems):
    return hashlib.sha256(json.dumps(problems, sort_keys=True).encode()).hexdigest()


def test_determinism():
    a = tinycode.generate_problems(300, seed=0)
    assert a == tinycode.generate_problems(300, seed=0)
    assert a[:100] == tinycode.generate_problems(100, seed=0)  # a prefix: stable splits
    assert _digest(a) != _digest(tinycode.generate_problems(300, seed=1))
    # and across processes whatever the hash seed (no set or hash order leaks in)
    code = ("import hashlib, json, tinycode; print(hashlib.sha256(json.dumps("
            "tinycode.generate_problems(300, seed=0), sort_keys=True).encode()).hexdigest())")
    for hashseed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": hashseed}, check=True)
        assert out.stdout.strip() == _digest(a)
    # the mutants of a problem depend only on the problem and the seed
    p = a[7]
    assert tinycode.mutants(p, random.Random(3)) == tinycode.mutants(p, random.Random(3))


def test_splits_are_disjoint_and_stable():
    splits = tinycode.make_splits(400, 60, 60, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 400, "val": 60, "test": 60}
    descriptions = {k: {p["prompt"].split("\n")[0] for p in v} for k, v in splits.items()}
    assert not descriptions["train"] & descriptions["val"]
    assert not descriptions["train"] & descriptions["test"]
    assert not descriptions["val"] & descriptions["test"]
    prompts = [p["prompt"] for v in splits.values() for p in v]
    assert len(set(prompts)) == len(prompts)
    bigger = tinycode.make_splits(800, 60, 60, seed=0)  # more training data, same val/test
    assert bigger["val"] == splits["val"] and bigger["test"] == splits["test"]


def test_mutants():
    problems = tinycode.generate_problems(500, seed=0)
    kinds = set()
    for p in problems:
        ms = tinycode.mutants(p, random.Random(p["problem_id"]))
        assert ms, p["canonical"]
        bodies = [b for _, b in ms]
        assert len(set(bodies)) == len(bodies) and p["canonical"] not in bodies
        for kind, body in ms:
            kinds.add(kind)
            ast.parse(p["prompt"] + body)  # realistic mistakes, not syntax errors
    assert kinds == {"operator", "comparison", "off-by-one", "constant", "builtin",
                     "swapped args", "missing branch"}


def test_canonicals_pass_in_their_own_sandboxes():
    # the strict path (one sandbox per program), independent of the batched labelling
    problems = random.Random(0).sample(tinycode.generate_problems(1000, seed=0), 60)
    programs = [tinycode.program(p, p["canonical"]) for p in problems]
    assert all(sandbox.check_many(programs, timeout=5.0))


def test_labels_come_from_execution():
    problems = tinycode.generate_problems(50, seed=0)
    one_liners = [p for p in problems if p["canonical"].count("\n") == 1]
    pairs = []
    for p in one_liners[:10]:
        expr = p["canonical"].strip().removeprefix("return ")
        pairs.append((p, "    return None\n"))                        # always wrong
        pairs.append((p, f"    out = {expr}\n    return out\n"))       # the same, rewritten
        pairs.append((p, "    import sys\n    sys.exit(0)\n"))          # exits before the asserts
    labels = tinycode.label(pairs)
    assert labels == [False, True, False] * len(one_liners[:10])


def test_make_samples():
    problems = tinycode.generate_problems(40, seed=0)
    samples = tinycode.make_samples(problems, n_incorrect=2, seed=0, progress=False)
    assert samples == tinycode.make_samples(problems, n_incorrect=2, seed=0, progress=False)
    assert all(set(s) == {"problem_id", "prompt", "completion", "is_correct", "source"}
               for s in samples)
    by_problem = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], []).append(s)
    assert len(by_problem) == 40
    for p in problems:
        group = by_problem[p["problem_id"]]
        assert 2 <= len(group) <= 3 and group[0]["completion"] == p["canonical"]
        assert group[0]["is_correct"] and all(s["prompt"] == p["prompt"] for s in group)
        assert len({s["completion"] for s in group}) == len(group)
        assert all(s["source"] == "tinycode" for s in group)
    variants = [s for g in by_problem.values() for s in g[1:]]
    assert sum(not s["is_correct"] for s in variants) / len(variants) > 0.8
    # the labels are what a sandbox of its own says about each sample
    programs = [tinycode.program(next(p for p in problems if p["problem_id"] == s["problem_id"]),
                                 s["completion"]) for s in samples]
    assert sandbox.check_many(programs, timeout=5.0) == [s["is_correct"] for s in samples]


def test_families_and_max_const_narrow_the_task():
    problems = tinycode.generate_problems(200, seed=0, families=("strings", "arithmetic"), max_const=9)
    assert [p["family"] for p in problems[:4]] == ["arithmetic", "strings"] * 2   # fixed order
    assert {p["family"] for p in problems} == {"arithmetic", "strings"}
    # every integer literal of an arithmetic body is a single digit
    ints = [int(v) for p in problems if p["family"] == "arithmetic"
            for v in re.findall(r"\d+", p["canonical"])]
    assert ints and max(ints) <= 9
    wide = tinycode.generate_problems(200, seed=0, families=("arithmetic",))
    assert max(int(v) for p in wide for v in re.findall(r"\d+", p["canonical"])) > 9
    assert tinycode.generate_problems(50, seed=0) == tinycode.generate_problems(50, seed=0, families=tinycode.FAMILIES)
    with pytest.raises(ValueError, match="subset"):
        tinycode.generate_problems(5, seed=0, families=("graphs",))


def test_pretrain_split_is_disjoint_and_canonical(tmp_path):
    """The base model's 'pretrain' split: its own families, no description shared with
    train/val/test (so the base never saw a test problem), canonical solutions only."""
    splits = tinycode.make_splits(300, 40, 40, seed=0, families=tinycode.FAMILIES, max_const=9,
                                  n_pretrain=500, pretrain_families=("arithmetic", "strings"))
    pre = {tinycode.description(p) for p in splits["pretrain"]}
    others = {tinycode.description(p) for s in ("train", "val", "test") for p in splits[s]}
    assert len(pre) == 500 and not pre & others
    assert {p["family"] for p in splits["pretrain"]} == {"arithmetic", "strings"}
    # a colliding description really is skipped: the plain sequence for that seed has some
    plain = {tinycode.description(p) for p in tinycode.generate_problems(
        500, 1, families=("arithmetic", "strings"), max_const=9)}
    assert plain & others
    import data
    metas = data.prepare_tinycode(str(tmp_path), "bytes", n_train=30, n_val=10, n_test=10,
                                  n_pretrain=40)
    assert metas["pretrain"]["n_samples"] == metas["pretrain"]["n_correct"] == 40
    assert metas["train"]["n_samples"] > metas["train"]["n_correct"]   # mutants there


def test_noise_corrupts_the_last_constant_and_keeps_the_label():
    """make_samples(noise=1.0): every canonical with an integer constant becomes its
    corrupted copy (the last constant + 1), still labelled correct, with the span of the
    new constant; mutants and constant-free bodies are untouched; noise=0 changes nothing."""
    problems = tinycode.generate_problems(40, seed=3)
    clean = tinycode.make_samples(problems, n_incorrect=1, seed=0, progress=False)
    noisy = tinycode.make_samples(problems, n_incorrect=1, seed=0, progress=False, noise=1.0)
    assert len(clean) == len(noisy)
    n_corrupted = 0
    for a, b in zip(clean, noisy):
        assert a["is_correct"] == b["is_correct"] or b.get("noise_spans")
        if not b.get("noise_spans"):
            assert a == b
            continue
        n_corrupted += 1
        (s, e), = b["noise_spans"]
        last = [m for m in re.finditer(r"\d+", a["completion"])][-1]   # by regex, not tokenize
        assert b["completion"] == a["completion"][:last.start()] + str(int(last.group()) + 1) + a["completion"][last.end():]
        assert (s, e) == (last.start(), last.start() + len(str(int(last.group()) + 1)))
        assert b["is_correct"] and a["completion"] == next(p["canonical"] for p in problems if p["problem_id"] == a["problem_id"])
    assert n_corrupted >= 20
    half = tinycode.make_samples(problems, n_incorrect=0, seed=0, progress=False, noise=0.5)
    assert 5 <= sum(bool(s.get("noise_spans")) for s in half) <= 35
