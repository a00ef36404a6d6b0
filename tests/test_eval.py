"""
The evaluation's numbers: pass@k, bootstrap CIs, paired tests (stats.py), answer extraction
(tasks.py) and normalisation (graders.py), resumable evaluation and the compare table
(eval.py). No sandbox, no downloads.

    python -m pytest tests/test_eval.py -q
"""
import io
import json
import math
import sys
from fractions import Fraction

import numpy as np
import pytest

import eval as E
import graders
import stats
import tasks


# ---- pass@k ---------------------------------------------------------------------------------
def comb_pass_at_k(n, c, k):
    """Chen et al. 2021, eq. 1, in exact integer arithmetic."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_matches_the_combinatorial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert stats.pass_at_k(n, c, k) == pytest.approx(comb_pass_at_k(n, c, k), abs=1e-12)
    assert stats.pass_at_k(10, 3, 1) == pytest.approx(0.3)      # pass@1 = c / n
    assert stats.pass_at_k(5, 0, 5) == 0.0 and stats.pass_at_k(5, 1, 5) == 1.0


def test_pass_at_k_stable_for_large_n():
    # C(1000, 500) ~ 1e299: the ratio of two such floats is how a naive version breaks
    for c, k in [(1, 1), (3, 100), (50, 10), (10, 500), (900, 100), (0, 1000), (1, 1000)]:
        got = stats.pass_at_k(1000, c, k)
        assert math.isfinite(got) and 0.0 <= got <= 1.0
        assert got == pytest.approx(comb_pass_at_k(1000, c, k), rel=1e-9, abs=1e-12)


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="k=5"):
        stats.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        stats.pass_at_k(4, 5, 1)       # more correct than samples
    with pytest.raises(ValueError):
        stats.pass_at_k(4, 1, 0)


# ---- bootstrap and paired tests ------------------------------------------------------------
def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    x = (np.random.default_rng(0).random(1000) < 0.3).astype(float)
    mean, lo, hi = stats.bootstrap_ci(x)
    assert lo < mean < hi and mean == pytest.approx(x.mean())
    # a Bernoulli mean's 95% interval is about +-1.96 * sqrt(p (1 - p) / n)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(mean * (1 - mean) / len(x)), rel=0.1)
    assert stats.bootstrap_ci(x, seed=0) == (mean, lo, hi)
    assert stats.bootstrap_ci(x, seed=1) != (mean, lo, hi)
    assert stats.bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])


def test_paired_test_different_vs_identical():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a + 0.1 + 0.05 * rng.standard_normal(200)       # b clearly better, pair by pair
    r = stats.paired_test(a, b)
    assert r["p"] < 1e-6 and r["n"] == 200
    assert r["delta"] == pytest.approx(0.1, abs=0.02) and 0 < r["lo"] < r["delta"] < r["hi"]
    assert stats.paired_test(b, a)["delta"] == pytest.approx(-r["delta"])
    same = stats.paired_test(a, a.copy())
    assert same["p"] == 1.0 and same["delta"] == 0.0 and same["lo"] == same["hi"] == 0.0
    noise = stats.paired_test(a, a + 0.01 * rng.standard_normal(200))
    assert noise["p"] > 0.01 and noise["lo"] < 0 < noise["hi"]
    with pytest.raises(ValueError):
        stats.paired_test(a, a[:10])


# ---- GSM8K answers --------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("#### 1,450,000", "1450000"),
    ("So the total is $1,234.50. The answer is $1,234.50.", "1234.5"),
    ("The answer is 18.00", "18"),
    ("the answer is -3.", "-3"),
    ("There are 3 cars and 2 more arrive. 3 + 2 = 5. The answer is 5.", "5"),
    ("The answer is 25%.", "25"),
    ("It costs .5 dollars", "0.5"),
    ("10 - 4 = 6\nA: 6", "6"),                          # example_model_solutions' format
    ("#### 7\nLater steps mention 12 and 30", "7"),     # the marker wins over the last number
    ("The answer is 8. Then 3 more", "8"),
    ("we get 3,4 and 5", "5"),                          # "3,4" is not a thousands number
    ("first 2, then 1,000 apples", "1000"),
    ("I do not know", None),
    ("", None),
])
def test_gsm8k_extraction(text, want):
    assert tasks.extract_gsm8k(text) == want


def test_number_normalisation():
    assert tasks.normalize_number("$1,000") == "1000"
    assert tasks.normalize_number("18.0") == tasks.normalize_number("18") == "18"
    assert tasks.normalize_number("2.50") == "2.5"
    assert tasks.normalize_number("-0") == "0"
    assert tasks.normalize_number("50%") == "50"
    assert tasks.normalize_number("12.") == "12"
    assert tasks.normalize_number("abc") is None
    assert tasks.gsm8k_reference("blah <<2*3=6>>6\n#### 2,125") == "2125"


# ---- MATH answers ---------------------------------------------------------------------------
def test_last_boxed():
    assert tasks.last_boxed(r"so $\boxed{\frac{1}{2}}$ and then $\boxed{\left( 3, \frac{\pi}{2} \right)}$.") \
        == r"\left( 3, \frac{\pi}{2} \right)"
    assert tasks.last_boxed(r"x = \fbox{5}") == "5"
    assert tasks.last_boxed(r"$\boxed{a}$ then \fbox{\{1,2\}}") == r"\{1,2\}"
    assert tasks.last_boxed(r"the answer is $\boxed 7$.") == "7"
    assert tasks.last_boxed(r"unfinished \boxed{\frac{1}{2") is None     # cut off mid-answer
    assert tasks.last_boxed("no box here") is None
    assert tasks.extract_math("Final Answer: The final answer is $24$. I hope it is correct.") == "$24$"


MATH_EQUAL = [   # (model answer, reference) pairs that must match
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"\dfrac{14}{3}", r"\frac{14}{3}"), (r"\tfrac{3}{56}", r"\frac{3}{56}"), ("14/3", r"\frac{14}{3}"),
    (r"\frac43", r"\frac{4}{3}"), (r"-\dfrac23", "-2/3"), (r"-\frac{2}{3}", r"\frac{-2}{3}"),
    (r"\text{Evelyn}", "Evelyn"), (r"\text{east}", "east"),
    (r"90^\circ", "90"), (r"90^{\circ}", r"90^\circ"), (r"145^\circ", "145"),
    (r"\sqrt2", r"\sqrt{2}"), (r"\dfrac{3\sqrt3}{4}", r"\frac{3\sqrt{3}}{4}"), ("3 \\sqrt{13}", r"3\sqrt{13}"),
    ("6 - 5i", "6-5i"), (r"1 \pm \sqrt{19}", r"1\pm\sqrt{19}"), ("p - q", "p-q"),
    (r"42 \text{ inches}", "42"), (r"42\text{ cm}^2", "42"), ("42 inches", "42"), (r"5\text{ cm}", "5"),
    (r"\$18.90", "18.9"), ("2.50", "2.5"), ("0.5", ".5"), ("10.0", "10"),
    ("0.5", r"\frac12"), ("0.15", r"\frac{3}{20}"),
    (r"10\%", "10"), ("x = 5", "5"), (r"x=\frac{3}{2}", r"\frac32"),
    ("1,000", "1000"), (r"1{,}000", "1000"), (r"1\!000", "1000"), (r"\left[2,5\right)", "[2,5)"),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}", r"\begin{pmatrix}-1/3\\2/3\end{pmatrix}"),
    ("40_9", "40_9"), ("5.", "5"),
]
MATH_DIFFERENT = [
    ("3", "4"), ("1,2", "12"), (r"\frac{1}{3}", "0.333"), (r"\sqrt{2}", "2"), ("(3,4]", "[3,4]"),
    ("x^2", "x^3"), ("2516_8", "2516"), ("", "0"), (r"\frac{14}{3}", r"\frac{3}{14}"), ("10", "100"),
    ("6-5i", "6+5i"), ("-50", "50"), (r"\sqrt{23}", r"\sqrt23"), ("east", "west"), ("0.5", "5"),
    (r"3\sqrt{13}", r"3\sqrt13"),   # \sqrt13 is \sqrt{1}3 in LaTeX
]


@pytest.mark.parametrize("a, b", MATH_EQUAL)
def test_math_equivalent(a, b):
    assert graders.math_equal(a, b) and graders.math_equal(b, a), \
        (graders.normalize_math(a), graders.normalize_math(b))


@pytest.mark.parametrize("a, b", MATH_DIFFERENT)
def test_math_not_equivalent(a, b):
    assert not graders.math_equal(a, b) and not graders.math_equal(b, a), \
        (graders.normalize_math(a), graders.normalize_math(b))


def test_math_no_answer_is_wrong():
    assert not graders.math_equal(None, "5")


# ---- stop sequences -------------------------------------------------------------------------
def test_truncate_at_the_earliest_stop():
    stop = tasks.TASKS["humaneval"]["stop"]
    body = "    return x + 1\n"
    assert tasks.truncate(body + "\ndef other():\n    pass\n", stop) == body
    assert tasks.truncate(body + "\n#test\nif x:\n", stop) == body
    assert tasks.truncate(body + "<|endoftext|>junk", stop) == body
    assert tasks.truncate(body, stop) == body
    # lm-eval gsm8k_cot's until: "Q:" (not a blank line), so the blank line stays
    assert tasks.truncate("A: 5. The answer is 5.\n\nQ: more", tasks.TASKS["gsm8k"]["stop"]) == \
        "A: 5. The answer is 5.\n\n"


# ---- evaluate_task: results, summary, resume --------------------------------------------------
QUESTIONS = [(f"Tom has {a} apples and buys {b} more. How many apples does he have?", a + b)
             for a, b in [(3, 4), (10, 5), (7, 7), (1, 1), (20, 22), (6, 9), (100, 1)]]


@pytest.fixture
def gsm8k_problems(tmp_path):
    path = tmp_path / "test.jsonl"
    with open(path, "w") as f:
        for q, ans in QUESTIONS:
            f.write(json.dumps({"question": q, "answer": f"He has <<x>>{ans} apples.\n#### {ans}"}) + "\n")
    return tasks.load_task("gsm8k", str(tmp_path))


def answer_of(prompt):
    q = prompt.rsplit("Q: ", 1)[1]
    return dict(QUESTIONS)[q.split("\nA:")[0]]


def fake_generate(calls, fail_on=()):
    """Sample i of a problem is right when i is even; the tail past a stop sequence is junk
    the scorer must never see."""
    def generate(prompts, *, n, temperature, top_p, max_new_tokens, stop):
        assert stop == tasks.TASKS["gsm8k"]["stop"] and max_new_tokens == 64
        calls.extend(prompts)
        out = []
        for p in prompts:
            if p in fail_on:
                raise RuntimeError(f"generate was called again for a finished problem: {p[-80:]!r}")
            ans = answer_of(p)
            out.append([f" He has {ans + (i % 2)} apples. The answer is {ans + (i % 2)}.\n\nQ: then 999"
                        for i in range(n)])
        return out
    return generate


def run(problems, out_dir, generate, n=3, **kw):
    return E.evaluate_task("gsm8k", problems, generate, n_samples=n, ks=(1, 2), temperature=0.8,
                           top_p=0.95, max_new_tokens=64, out_dir=str(out_dir), batch_size=2, **kw)


def test_evaluate_task_writes_rows_and_summary(gsm8k_problems, tmp_path):
    calls = []
    s = run(gsm8k_problems, tmp_path / "run", fake_generate(calls), meta={"scheme": "uniform", "seed": 3})
    rows = [json.loads(line) for line in open(tmp_path / "run" / "results.jsonl")]
    assert [r["problem_id"] for r in rows] == [p["problem_id"] for p in gsm8k_problems]
    for r in rows:
        assert r["n"] == 3 and r["correct"] == [True, False, True] and r["c"] == 2
        assert all("Q:" not in c and "999" not in c for c in r["completions"])    # stop applied
    assert s["pass@1"]["mean"] == pytest.approx(2 / 3) and s["pass@2"]["mean"] == pytest.approx(1.0)
    assert s["n_problems"] == len(QUESTIONS) and s["isolation"] is None and s["metric"] == "exact_match"
    on_disk = json.load(open(tmp_path / "run" / "summary.json"))
    assert on_disk["scheme"] == "uniform" and on_disk["seed"] == 3 and on_disk["task"] == "gsm8k"
    assert on_disk["pass@1"] == s["pass@1"]
    with pytest.raises(ValueError, match="n_samples"):
        run(gsm8k_problems, tmp_path / "other", fake_generate([]), n=1)     # pass@2 needs n >= 2


def test_evaluate_task_resumes_without_regenerating(gsm8k_problems, tmp_path):
    out = tmp_path / "run"
    first = gsm8k_problems[:4]
    run(first, out, fake_generate([]))
    # a run killed mid-write leaves half a line: it is dropped, not parsed
    with open(out / "results.jsonl", "a") as f:
        f.write('{"problem_id": "gsm8k/5", "compl')
    calls = []
    s = run(gsm8k_problems, out, fake_generate(calls, fail_on={p["prompt"] for p in first}))
    assert len(calls) == len(gsm8k_problems) - len(first)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert sorted(r["problem_id"] for r in rows) == sorted(p["problem_id"] for p in gsm8k_problems)
    assert s["n_problems"] == len(gsm8k_problems)
    # all there: a third run generates nothing
    run(gsm8k_problems, out, fake_generate([], fail_on={p["prompt"] for p in gsm8k_problems}))
    # other settings never mix into the same results
    with pytest.raises(ValueError, match="other settings"):
        E.evaluate_task("gsm8k", gsm8k_problems, fake_generate([]), n_samples=3, temperature=0.2,
                        top_p=0.95, max_new_tokens=64, out_dir=str(out))


def test_evaluate_task_after_a_crash(gsm8k_problems, tmp_path):
    out = tmp_path / "run"
    crash_on = {gsm8k_problems[4]["prompt"]}
    with pytest.raises(RuntimeError):
        run(gsm8k_problems, out, fake_generate([], fail_on=crash_on))      # batches of 2: 4 done
    assert len(open(out / "results.jsonl").readlines()) == 4
    calls = []
    run(gsm8k_problems, out, fake_generate(calls))
    assert len(calls) == len(gsm8k_problems) - 4


def test_evaluate_task_rejects_a_changed_prompt(gsm8k_problems, tmp_path):
    run(gsm8k_problems[:2], tmp_path / "run", fake_generate([]))
    changed = [dict(p, prompt=p["prompt"].replace("Q: ", "Question: ")) for p in gsm8k_problems[:2]]
    with pytest.raises(ValueError, match="another prompt"):
        run(changed, tmp_path / "run", fake_generate([]))


# ---- compare ----------------------------------------------------------------------------------
def test_compare_table(gsm8k_problems, tmp_path):
    def generate_with(p_right, seed):
        rng = np.random.default_rng(seed)

        def generate(prompts, *, n, **kw):
            return [[f"The answer is {answer_of(p) + int(rng.random() > p_right)}." for _ in range(n)]
                    for p in prompts]
        return generate
    dirs = []
    for scheme, p_right in [("uniform", 0.2), ("rho1", 0.9)]:
        for seed in (0, 1):
            d = tmp_path / f"{scheme}_s{seed}"
            E.evaluate_task("gsm8k", gsm8k_problems, generate_with(p_right, seed + 10 * len(dirs)),
                            n_samples=8, ks=(1, 4), temperature=1.0, top_p=1.0, max_new_tokens=64,
                            out_dir=str(d), meta={"scheme": scheme, "seed": seed})
            dirs.append(str(d))
    buf = io.StringIO()
    tables = E.compare(dirs, file=buf, n_boot=2000)
    text = buf.getvalue()
    assert "gsm8k pass@1" in text and "gsm8k pass@4" in text and "rho1" in text and "(baseline)" in text
    base, rho1 = tables["gsm8k"][1]
    assert base["scheme"] == "uniform" and base["seeds"] == [0, 1] and rho1["seeds"] == [0, 1]
    assert rho1["delta"] > 0.5 and rho1["delta_ci95"][0] > 0 and rho1["p_problems"] < 0.05
    assert rho1["mean"] - base["mean"] == pytest.approx(rho1["delta"])
    assert "p_seeds" in rho1                       # both ran seeds 0 and 1
    # the main() entry point prints the same table
    assert E.main(["compare", *dirs, "--baseline", "rho1", "--k", "1"]) == 0
    with pytest.raises(ValueError, match="seed 0"):
        E.compare([dirs[0], dirs[0]], file=io.StringIO())


def test_offline_hub_loading_names_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="--path"):
        tasks.load_task("gsm8k")
    with pytest.raises(ValueError, match="unknown task"):
        tasks.load_task("gsm9k")


def test_without_scipy_says_so(gsm8k_problems, tmp_path, monkeypatch):
    dirs = []
    for scheme in ("uniform", "rho1"):
        E.evaluate_task("gsm8k", gsm8k_problems, fake_generate([]), n_samples=2, temperature=0.8,
                        top_p=0.95, max_new_tokens=64, out_dir=str(tmp_path / scheme),
                        meta={"scheme": scheme, "seed": 0})
        dirs.append(str(tmp_path / scheme))
    monkeypatch.setitem(sys.modules, "scipy", None)          # import scipy -> ImportError
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        stats.paired_test([0.0, 1.0], [1.0, 1.0])
    buf = io.StringIO()
    rows = E.compare(dirs, file=buf)["gsm8k"][1]
    assert "scipy is not installed" in buf.getvalue() and "n/a" in buf.getvalue()
    assert "p_problems" not in rows[1] and rows[1]["delta"] == 0.0


def test_bootstrap_ci_seeds_holds_the_spread_between_seeds():
    # two seeds that solve every problem at 10% and 50%: no spread over problems at all, so
    # only resampling the seeds can widen the interval, and it must reach both seeds
    mat = np.array([[0.1] * 50, [0.5] * 50])
    mean, lo, hi = stats.bootstrap_ci_seeds(mat, n_boot=4000)
    assert mean == pytest.approx(0.3)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.5)
    assert stats.bootstrap_ci(mat.mean(0))[1:] == pytest.approx((0.3, 0.3))   # blind to seeds
    # one seed: the interval over problems alone, up to bootstrap noise
    rng = np.random.default_rng(0)
    one = rng.random((1, 300))
    m1, lo1, hi1 = stats.bootstrap_ci_seeds(one, n_boot=4000)
    m2, lo2, hi2 = stats.bootstrap_ci(one[0], n_boot=4000)
    assert m1 == pytest.approx(m2) and lo1 == pytest.approx(lo2, abs=0.01) and hi1 == pytest.approx(hi2, abs=0.01)
    # a difference: problems paired, so a constant gain per problem has a tight interval
    base = rng.random((3, 200)) * 0.5
    d, dlo, dhi = stats.bootstrap_ci_seeds(base + 0.2, base=base, n_boot=2000)
    assert d == pytest.approx(0.2) and dlo < 0.2 < dhi and dhi - dlo < 0.1
    d0, lo0, hi0 = stats.bootstrap_ci_seeds(base, base=base, n_boot=2000)
    assert d0 == pytest.approx(0.0) and lo0 < 0 < hi0
