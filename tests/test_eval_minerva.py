"""
MATH scored as lm-eval's minerva_math scores it, checked against lm-eval's own code.

lm-eval's minerva_math/utils.py needs sympy's LaTeX parser, which needs
antlr4-python3-runtime 4.11 exactly, while math-verify (installed beside it) pulls 4.13:
the two cannot share one site-packages. So the comparison runs in a subprocess whose path
starts with a directory holding antlr 4.11 alone (.ci/run makes it):

    pip install --no-deps --target ~/.cache/wmtp/antlr4-4.11 antlr4-python3-runtime==4.11.0
    python -m pytest -n 0 tests/test_eval_minerva.py -q
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANTLR411 = os.environ.get("WMTP_ANTLR411", os.path.expanduser("~/.cache/wmtp/antlr4-4.11"))
MATH500 = os.path.join(ROOT, "..", "shared", "data", "math", "math500_test.jsonl")


def final(answer):
    return f"Let me think.\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


# (solution with its \boxed answer, completion): equal forms, wrong answers, units, text,
# missing final lines, \boxed-only completions, intervals, tuples, sqrt, decimals
CORPUS = [
    (r"So $x = \boxed{\frac{1}{2}}$.", final(r"\frac12")),
    (r"So $x = \boxed{\frac{1}{2}}$.", final("0.5")),
    (r"So $x = \boxed{\frac{1}{2}}$.", final(r"\dfrac{1}{2}")),
    (r"So $x = \boxed{\frac{1}{2}}$.", final(r"\frac{2}{4}")),
    (r"So $x = \boxed{\frac{1}{2}}$.", final(r"\frac{1}{3}")),
    (r"The total is $\boxed{10,000}$ dollars.", final("10000")),
    (r"The total is $\boxed{10,000}$ dollars.", final(r"10,\!000 \text{ dollars}")),
    (r"It is $\boxed{5\sqrt{2}}$.", final(r"5\sqrt2")),
    (r"It is $\boxed{5\sqrt{2}}$.", final(r"\sqrt{50}")),
    (r"It is $\boxed{5\sqrt{2}}$.", final("7.07")),
    (r"Hence $\boxed{(2, -3)}$.", final("(2,-3)")),
    (r"Hence $\boxed{(2, -3)}$.", final("(-3,2)")),
    (r"The interval is $\boxed{[0, 1)}$.", final("[0,1)")),
    (r"The answer is $\boxed{\text{(C)}}$.", final(r"\text{(C)}")),
    (r"The answer is $\boxed{\text{(C)}}$.", final("C")),
    (r"The angle is $\boxed{90^\circ}$.", final("90")),
    (r"The length is $\boxed{12\text{ cm}}$.", final("12")),
    (r"So $\boxed{x^2+2x+1}$.", final("(x+1)^2")),
    (r"So $\boxed{x^2+2x+1}$.", final("x^2+2x+2")),
    (r"Thus $\boxed{-4}$.", final("x = -4")),
    (r"Thus $\boxed{-4}$.", r"The answer is $\boxed{-4}$."),          # no final line
    (r"Thus $\boxed{-4}$.", "I give up."),
    (r"Thus $\boxed{-4}$.", ""),
    (r"The sum is \boxed 7$.", final("7")),                            # "\boxed " form
    (r"Pick $\boxed{\pi}$.", final(r"\pi")),
    (r"Pick $\boxed{\pi}$.", final("3.14159")),
    (r"It is $\boxed{\infty}$.", final(r"\infty")),
    (r"We get $\boxed{3}$ and $\boxed{4}$.", final("4")),              # the last box counts
    (r"We get $\boxed{3}$ and $\boxed{4}$.", final("3")),
    (r"So $\boxed{\$18.90}$.", final(r"\$18.90")),
]


def corpus():
    rows = list(CORPUS)
    if os.path.exists(MATH500):   # real solutions, with answers right, wrong and reformatted
        with open(MATH500) as f:
            probs = [json.loads(line) for line in f][:40]
        for p in probs:
            rows.append((p["solution"], final(p["answer"])))
            rows.append((p["solution"], final(p["answer"] + "+1")))
            rows.append((p["solution"], p["solution"]))                # a boxed answer, no final line
    return rows


SCRIPT = r"""
import importlib.util, json, sys
sys.path.insert(0, ROOT)
import graders, tasks
spec = importlib.util.spec_from_file_location("lm_eval_minerva_utils", UTILS)
lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lm)   # raises unless antlr 4.11, sympy and math-verify import
rows = json.load(sys.stdin)
out = []
for solution, completion in rows:
    answer = lm.normalize_final_answer(lm.remove_boxed(lm.last_boxed_only_string(solution)))
    theirs = lm.process_results({"problem": "", "solution": solution, "answer": answer}, [completion])
    p = {"task": "math", "problem_id": "m", "prompt": "", "answer": tasks.last_boxed(solution) or "",
         "reference": solution}
    ours = graders.score_batch("math", [(p, completion)])[0]
    out.append({"reference_answer": [answer, graders.minerva_reference(solution)],
                "exact_match": [theirs["exact_match"], int(ours.get("minerva_exact_match", -1))],
                "math_verify": [theirs["math_verify"], int(ours.get("lm_eval_math_verify", -1))],
                "authors_math_verify": int(ours.get("math_verify", -1))})
print(json.dumps(out))
"""


def test_minerva_exact_match_and_math_verify_equal_lm_evals_code():
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("needs lm-eval's code: pip install --no-deps lm_eval==0.4.9")
    if not os.path.isdir(os.path.join(ANTLR411, "antlr4")):
        pytest.skip(f"needs antlr4 4.11 alone in {ANTLR411}: pip install --no-deps --target "
                    f"{ANTLR411} antlr4-python3-runtime==4.11.0")
    pytest.importorskip("math_verify", reason="pip install math-verify==0.9.0")
    utils = os.path.join(spec.submodule_search_locations[0], "tasks", "minerva_math", "utils.py")
    rows = corpus()
    env = dict(os.environ, PYTHONPATH=ANTLR411)
    script = f"ROOT = {ROOT!r}\nUTILS = {utils!r}\n" + SCRIPT
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps(rows), env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    diffs = [(rows[i][1][-80:], r) for i, r in enumerate(res)
             if len({*map(str, r["reference_answer"])}) > 1 or
             r["exact_match"][0] != r["exact_match"][1] or r["math_verify"][0] != r["math_verify"][1]]
    assert not diffs, diffs[:10]
    em = [r["exact_match"][0] for r in res]
    mv = [r["math_verify"][0] for r in res]
    assert 0 < sum(em) < len(em) and 0 < sum(mv) < len(mv)      # the corpus has both verdicts
    assert em != mv                                             # and the two metrics disagree somewhere
    # math-verify as its authors call it (the whole solution as gold) accepts more right
    # answers than lm-eval's call, whose bare normalised gold often does not parse
    authors = [r["authors_math_verify"] for r in res]
    print(f"math-verify on {len(res)} completions: lm-eval's call {sum(mv)} correct, the "
          f"authors' {sum(authors)}, disagreeing on {sum(a != b for a, b in zip(authors, mv))}")
    assert sum(authors) > sum(mv)
