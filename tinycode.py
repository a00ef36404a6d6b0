"""
tinycode: a tiny verifiable code task, for training byte-level models on CPU in minutes.

A problem is a one-line description that fully determines a small Python function, and
its signature; the model writes the body (the completion):

    # Return x multiplied by 3, plus 7.
    def scale(x):
        return x * 3 + 7

To solve one the model has to copy constants from the description into code and map
words to operators, comparisons and idioms. Five families (arithmetic, lists, strings,
conditionals, loops) of ~10 templates each, every template with random constants, names
and phrasings: many thousands of distinct problems, prompts and bodies under 120 bytes.

Each problem carries 3-5 asserts; incorrect solutions are realistic one-token (or
one-branch) mutations of the canonical body, and every solution, canonical included, is
labelled by running it against the asserts in sandbox.py.

    python tinycode.py      # example problems, their variants and labels, the statistics
"""
import hashlib
import io
import os
import random
import time
import tokenize

import sandbox

FAMILIES = ("arithmetic", "lists", "strings", "conditionals", "loops")

# names the model sees; pools for one role never overlap another's, so a comprehension
# variable can't shadow an argument
INT_NAMES = ["x", "y", "n", "m", "a", "b", "num", "val"]
ARG_NAMES = {"int": INT_NAMES, "nat": INT_NAMES, "mid": INT_NAMES, "big": INT_NAMES,  # by kind
             "list": ["xs", "nums", "lst", "items", "values", "arr"],
             "list+": ["xs", "nums", "lst", "items", "values", "arr"],
             "str": ["s", "text", "word", "t", "name"]}
AUX_NAMES = {"e": ["v", "e", "el", "item"],        # comprehension / loop element
             "i": ["i", "j", "k"],                 # loop counter
             "acc": ["total", "acc", "res", "r"]}  # accumulator
CHARS = "abcdexyz"  # string inputs and character constants share it, so counts are not 0
WORDS = ["ab", "ok", "hi", "yes", "no", "cat", "xy", "zz", "-", "!", "abc", "dog", "ha", "?",
         "*", "end", "go", "up", "ex", "by"]
LABELS = ["low", "mid", "high", "neg", "pos", "zero", "small", "big", "odd", "even", "hot", "cold"]
SEPS = ["-", ",", " ", "+", ":", "/", "|", ";", ", ", "."]


def T(family, names, descriptions, body, args, consts=None, where=None):
    """A template. body: the lines of the canonical solution, as format strings over
    the placeholders: args {x}/{y}/{n}/{xs}/{s} (name -> input kind), auxiliary names
    {e}/{i}/{acc}, constants (name -> (lo, hi) ints or a list of choices), `where` a
    condition the constants must meet."""
    return dict(family=family, names=names, descriptions=descriptions, body=body,
                args=args, consts=consts or {}, where=where)


TEMPLATES = [
    # ---- arithmetic
    T("arithmetic", ["scale", "affine", "compute", "f"],
      ["Return {x} multiplied by {a}, plus {b}.", "Return {x} times {a} plus {b}.",
       "Multiply {x} by {a}, then add {b}."],
      ["return {x} * {a} + {b}"], {"x": "int"}, {"a": (2, 9), "b": (1, 20)}),
    T("arithmetic", ["shift", "adjust", "g"],
      ["Subtract {a} from {x}, then multiply by {b}.", "Return {x} minus {a}, all times {b}."],
      ["return ({x} - {a}) * {b}"], {"x": "int"}, {"a": (1, 15), "b": (2, 9)}),
    T("arithmetic", ["diff", "combine", "h"],
      ["Return {x} minus {y}, multiplied by {k}.", "Subtract {y} from {x} and multiply by {k}."],
      ["return ({x} - {y}) * {k}"], {"x": "int", "y": "int"}, {"k": (2, 9)}),
    T("arithmetic", ["mix", "blend", "f"],
      ["Return {x} plus {k} times {y}.", "Add {k} times {y} to {x}."],
      ["return {x} + {k} * {y}"], {"x": "int", "y": "int"}, {"k": (2, 9)}),
    T("arithmetic", ["rem", "modulo", "wrap"],
      ["Return the remainder of {x} divided by {k}.", "Return {x} modulo {k}."],
      ["return {x} % {k}"], {"x": "big"}, {"k": (2, 12)}),
    T("arithmetic", ["div", "bucket", "g"],
      ["Return {x} divided by {k}, rounded down, plus {b}.",
       "Integer-divide {x} by {k} and add {b}."],
      ["return {x} // {k} + {b}"], {"x": "big"}, {"k": (2, 12), "b": (1, 9)}),
    T("arithmetic", ["square", "sq", "h"],
      ["Return the square of {x} minus {a}.", "Return {x} squared, minus {a}."],
      ["return {x} * {x} - {a}"], {"x": "int"}, {"a": (1, 20)}),
    T("arithmetic", ["product", "mul", "f"],
      ["Return the product of {x} and {y}, minus {k}.", "Multiply {x} by {y} and subtract {k}."],
      ["return {x} * {y} - {k}"], {"x": "int", "y": "int"}, {"k": (1, 20)}),
    T("arithmetic", ["mean", "midpoint", "avg"],
      ["Return the average of {x} and {y}, rounded down.",
       "Return the sum of {x} and {y} divided by 2, rounded down."],
      ["return ({x} + {y}) // 2"], {"x": "int", "y": "int"}),
    T("arithmetic", ["dist", "gap", "g"],
      ["Return the absolute difference of {x} and {y}, plus {k}.",
       "Return how far apart {x} and {y} are, plus {k}."],
      ["return abs({x} - {y}) + {k}"], {"x": "int", "y": "int"}, {"k": (1, 9)}),
    # ---- lists
    T("lists", ["total", "sum_plus", "f"],
      ["Return the sum of {xs} plus {k}.", "Add {k} to the total of the numbers in {xs}."],
      ["return sum({xs}) + {k}"], {"xs": "list"}, {"k": (1, 50)}),
    T("lists", ["above", "keep_big", "filt"],
      ["Return the elements of {xs} that are greater than {t}.",
       "Keep only the numbers in {xs} larger than {t}."],
      ["return [{e} for {e} in {xs} if {e} > {t}]"], {"xs": "list"}, {"t": (-5, 25)}),
    T("lists", ["times", "scale_all", "g"],
      ["Return a list of every element of {xs} multiplied by {k}.",
       "Multiply each number in {xs} by {k}."],
      ["return [{e} * {k} for {e} in {xs}]"], {"xs": "list"}, {"k": (2, 20)}),
    T("lists", ["count", "occurrences", "h"],
      ["Return how many times {k} appears in {xs}.", "Count the elements of {xs} equal to {k}."],
      ["return {xs}.count({k})"], {"xs": "list"}, {"k": (-5, 20)}),
    T("lists", ["n_div", "count_mult", "f"],
      ["Return how many numbers in {xs} are divisible by {k}.",
       "Count the multiples of {k} in {xs}.", "Return the number of elements of {xs} that {k} divides."],
      ["return sum(1 for {e} in {xs} if {e} % {k} == 0)"], {"xs": "list"}, {"k": (2, 12)}),
    T("lists", ["between", "n_in", "h"],
      ["Return how many elements of {xs} are between {lo} and {hi} inclusive.",
       "Count the numbers in {xs} from {lo} up to {hi}, both included."],
      ["return sum(1 for {e} in {xs} if {lo} <= {e} <= {hi})"], {"xs": "list"},
      {"lo": (-5, 10), "hi": (0, 25)}, lambda c: c["hi"] - c["lo"] >= 2),
    T("lists", ["top", "peak", "g"],
      ["Return the largest number in {xs} minus {k}.", "Return the maximum of {xs}, minus {k}."],
      ["return max({xs}) - {k}"], {"xs": "list+"}, {"k": (1, 30)}),
    T("lists", ["low", "floor_of", "h"],
      ["Return the smallest number in {xs} times {k}.", "Return the minimum of {xs}, times {k}."],
      ["return min({xs}) * {k}"], {"xs": "list+"}, {"k": (2, 20)}),
    T("lists", ["head", "take", "f"],
      ["Return the first {k} elements of {xs}.", "Return a list of the first {k} items of {xs}."],
      ["return {xs}[:{k}]"], {"xs": "list"}, {"k": (1, 9)}),
    T("lists", ["largest", "top_k", "g"],
      ["Return the {k} largest elements of {xs}, biggest first.",
       "Sort {xs} from largest to smallest and return the first {k}."],
      ["return sorted({xs}, reverse=True)[:{k}]"], {"xs": "list"}, {"k": (1, 6)}),
    T("lists", ["at", "get", "h"],
      ["Return the element at index {k} of {xs}, or {d} if {xs} is too short.",
       "Return {xs}[{k}] if it exists, else {d}."],
      ["return {xs}[{k}] if len({xs}) > {k} else {d}"], {"xs": "list"},
      {"k": (1, 4), "d": (-9, -1)}),
    T("lists", ["mult_sum", "sum_div", "f"],
      ["Return the sum of the numbers in {xs} that are divisible by {k}.",
       "Add up the multiples of {k} in {xs}."],
      ["return sum({e} for {e} in {xs} if {e} % {k} == 0)"], {"xs": "list"}, {"k": (2, 9)}),
    T("lists", ["shifted_sum", "sum_shift", "g"],
      ["Return the sum of {xs} after adding {k} to each element.",
       "Add {k} to every number in {xs} and return the total."],
      ["return sum({e} + {k} for {e} in {xs})"], {"xs": "list"}, {"k": (1, 30)}),
    # ---- strings
    T("strings", ["repeat", "rep", "f"],
      ["Return {s} repeated {k} times.", "Return {k} copies of {s} joined together."],
      ["return {s} * {k}"], {"s": "str"}, {"k": (2, 9)}),
    T("strings", ["shout", "loud", "g"],
      ["Return {s} in upper case, followed by '{w}'.", "Upper-case {s} and append '{w}'."],
      ["return {s}.upper() + '{w}'"], {"s": "str"}, {"w": WORDS}),
    T("strings", ["prefix", "start", "h"],
      ["Return the first {k} characters of {s}.", "Return the prefix of {s} of length {k}."],
      ["return {s}[:{k}]"], {"s": "str"}, {"k": (1, 9)}),
    T("strings", ["suffix", "ending", "f"],
      ["Return the last {k} characters of {s}.", "Return the final {k} characters of {s}."],
      ["return {s}[-{k}:]"], {"s": "str"}, {"k": (1, 9)}),
    T("strings", ["count_char", "n_char", "g"],
      ["Return how many times '{c}' appears in {s}.", "Count the '{c}' characters in {s}."],
      ["return {s}.count('{c}')"], {"s": "str"}, {"c": list(CHARS)}),
    T("strings", ["swap", "subst", "h"],
      ["Return {s} with every '{c}' replaced by '{c2}'.", "Replace each '{c}' in {s} with '{c2}'."],
      ["return {s}.replace('{c}', '{c2}')"], {"s": "str"}, {"c": list(CHARS), "c2": list(CHARS)},
      lambda c: c["c"] != c["c2"]),
    T("strings", ["wrap", "frame", "f"],
      ["Return {s} with '{w}' added at both ends.", "Put '{w}' before and after {s}."],
      ["return '{w}' + {s} + '{w}'"], {"s": "str"}, {"w": WORDS}),
    T("strings", ["starts", "has_prefix", "g"],
      ["Return True if {s} starts with '{w}', otherwise False.",
       "Return whether {s} begins with '{w}'."],
      ["return {s}.startswith('{w}')"], {"s": "str"}, {"w": WORDS}),
    T("strings", ["size", "length", "h"],
      ["Return the length of {s} times {k}.", "Multiply the number of characters in {s} by {k}."],
      ["return len({s}) * {k}"], {"s": "str"}, {"k": (2, 20)}),
    T("strings", ["backwards", "rev", "f"],
      ["Return {s} reversed, followed by '{c}'.", "Reverse {s} and append '{c}'."],
      ["return {s}[::-1] + '{c}'"], {"s": "str"}, {"c": list(CHARS + "!?-.")}),
    T("strings", ["strip_char", "drop", "g"],
      ["Return {s} with every '{c}' removed.", "Delete all the '{c}' characters from {s}."],
      ["return {s}.replace('{c}', '')"], {"s": "str"}, {"c": list(CHARS)}),
    T("strings", ["others", "n_other", "h"],
      ["Return how many characters of {s} are not '{c}'.",
       "Count the characters in {s} other than '{c}'."],
      ["return len({s}) - {s}.count('{c}')"], {"s": "str"}, {"c": list(CHARS)}),
    T("strings", ["where", "find_char", "f"],
      ["Return the index of the first '{c}' in {s}, or -1 if there is none.",
       "Return the position of '{c}' in {s} (-1 if missing)."],
      ["return {s}.find('{c}')"], {"s": "str"}, {"c": list(CHARS)}),
    T("strings", ["twice", "echo", "g"],
      ["Return {s}, then '{w}', then {s} again.", "Return {s} twice with '{w}' in between."],
      ["return {s} + '{w}' + {s}"], {"s": "str"}, {"w": WORDS}),
    # ---- conditionals
    T("conditionals", ["pick", "choose", "f"],
      ["Return {a} if {x} is greater than {t}, otherwise {b}.",
       "If {x} > {t} return {a}, else return {b}."],
      ["if {x} > {t}:", "    return {a}", "return {b}"], {"x": "int"},
      {"t": (-5, 15), "a": (0, 20), "b": (0, 20)}, lambda c: c["a"] != c["b"]),
    T("conditionals", ["compare", "rank", "g"],
      ["Return '{w1}' if {x} is below {t}, '{w2}' if it equals {t}, else '{w3}'."],
      ["if {x} < {t}:", "    return '{w1}'", "return '{w2}' if {x} == {t} else '{w3}'"],
      {"x": "int"}, {"t": (-5, 15), "w1": LABELS, "w2": LABELS, "w3": LABELS},
      lambda c: len({c["w1"], c["w2"], c["w3"]}) == 3),
    T("conditionals", ["clamp", "bound", "h"],
      ["Return {x} clamped to the range {lo} to {hi}.",
       "Limit {x} to at least {lo} and at most {hi}."],
      ["return max({lo}, min({x}, {hi}))"], {"x": "int"}, {"lo": (-5, 10), "hi": (0, 25)},
      lambda c: c["hi"] - c["lo"] >= 3),
    T("conditionals", ["step", "collatz", "f"],
      ["Return half of {x} if {x} is even, else {x} times {k} plus 1.",
       "If {x} is even return {x} // 2, otherwise {k} * {x} + 1."],
      ["if {x} % 2 == 0:", "    return {x} // 2", "return {x} * {k} + 1"], {"x": "int"},
      {"k": (2, 5)}),
    T("conditionals", ["bigger", "larger", "g"],
      ["Return the larger of {x} and {y}, plus {k}.", "Return the maximum of {x} and {y}, plus {k}."],
      ["return max({x}, {y}) + {k}"], {"x": "int", "y": "int"}, {"k": (1, 9)}),
    T("conditionals", ["smaller", "lesser", "h"],
      ["Return the smaller of {x} and {y}, minus {k}.", "Return the minimum of {x} and {y}, minus {k}."],
      ["return min({x}, {y}) - {k}"], {"x": "int", "y": "int"}, {"k": (1, 9)}),
    T("conditionals", ["inside", "in_range", "f"],
      ["Return True if {x} is between {lo} and {hi} inclusive, else False.",
       "Return whether {lo} <= {x} <= {hi}."],
      ["return {lo} <= {x} <= {hi}"], {"x": "int"}, {"lo": (-5, 10), "hi": (0, 25)},
      lambda c: c["hi"] - c["lo"] >= 2),
    T("conditionals", ["level", "grade", "g"],
      ["Return '{w1}' if {x} < {t}, '{w2}' if {x} < {t2}, else '{w3}'."],
      ["if {x} < {t}:", "    return '{w1}'", "return '{w2}' if {x} < {t2} else '{w3}'"],
      {"x": "int"}, {"t": (-5, 10), "t2": (0, 25), "w1": LABELS, "w2": LABELS, "w3": LABELS},
      lambda c: c["t2"] - c["t"] >= 2 and len({c["w1"], c["w2"], c["w3"]}) == 3),
    T("conditionals", ["distance", "away", "h"],
      ["Return {x} minus {t} if {x} is at least {t}, otherwise {t} minus {x}."],
      ["if {x} >= {t}:", "    return {x} - {t}", "return {t} - {x}"], {"x": "int"}, {"t": (-5, 15)}),
    T("conditionals", ["label", "tag", "f"],
      ["Return '{w1}' if {x} is divisible by {k}, else '{w2}'.",
       "Return '{w1}' when {k} divides {x}, otherwise '{w2}'."],
      ["return '{w1}' if {x} % {k} == 0 else '{w2}'"], {"x": "int"},
      {"k": (2, 7), "w1": LABELS, "w2": LABELS}, lambda c: c["w1"] != c["w2"]),
    # ---- loops
    T("loops", ["range_sum", "series", "f"],
      ["Return the sum of the integers from {a} to {n}.", "Add up every integer from {a} to {n}."],
      ["return sum(range({a}, {n} + 1))"], {"n": "nat"}, {"a": (0, 9)}),
    T("loops", ["prod", "fact", "g"],
      ["Return the product of the integers from {a} to {n}.",
       "Multiply together every integer from {a} up to {n}."],
      ["{acc} = 1", "for {i} in range({a}, {n} + 1):", "    {acc} *= {i}", "return {acc}"],
      {"n": "nat"}, {"a": (1, 6)}),
    T("loops", ["digit_sum", "digits", "h"],
      ["Return the sum of the decimal digits of {n}, plus {k}.", "Add up the digits of {n}, then add {k}."],
      ["return sum(int({e}) for {e} in str({n})) + {k}"], {"n": "big"}, {"k": (1, 20)}),
    T("loops", ["repeat_add", "accumulate", "f"],
      ["Start from {x} and add {k} to it {n} times; return the result.",
       "Add {k} to {x}, {n} times over, and return it."],
      ["for {i} in range({n}):", "    {x} += {k}", "return {x}"], {"x": "int", "n": "nat"},
      {"k": (2, 9)}),
    T("loops", ["halvings", "halve", "g"],
      ["Return how many times {n} can be halved, rounding down, before it is below {t}.",
       "Count how often {n} can be integer-divided by 2 before it drops below {t}."],
      ["{acc} = 0", "while {n} >= {t}:", "    {n}, {acc} = {n} // 2, {acc} + 1", "return {acc}"],
      {"n": "big"}, {"t": (1, 9)}),
    T("loops", ["top_power", "power_below", "h"],
      ["Return the largest power of {k} that is at most {n} (1 if {n} is below {k}).",
       "Return the biggest {k} ** i that does not exceed {n}, or 1."],
      ["{acc} = 1", "while {acc} * {k} <= {n}:", "    {acc} *= {k}", "return {acc}"],
      {"n": "big"}, {"k": (2, 9)}),
    T("loops", ["joined", "listing", "h"],
      ["Return the numbers from 1 to {n} joined by '{sep}'.",
       "Join the integers 1 through {n} with '{sep}'."],
      ["return '{sep}'.join(str({i}) for {i} in range(1, {n} + 1))"], {"n": "nat"}, {"sep": SEPS}),
    T("loops", ["powers", "pows", "f"],
      ["Return a list of the first {n} powers of {k}, starting at 1.",
       "Return [1, {k}, {k}**2, ...] with {n} elements."],
      ["return [{k} ** {i} for {i} in range({n})]"], {"n": "nat"}, {"k": (2, 9)}),
    T("loops", ["picks", "stepped", "f"],
      ["Return a list of the numbers from {a} to {n} that are divisible by {k}.",
       "List the multiples of {k} between {a} and {n}, inclusive."],
      ["return [{i} for {i} in range({a}, {n} + 1) if {i} % {k} == 0]"], {"n": "mid"},
      {"a": (0, 9), "k": (2, 9)}),
    T("loops", ["fizz", "multiples", "g"],
      ["Return how many numbers from 1 to {n} are divisible by {a} or {b}.",
       "Count the integers from 1 to {n} that are multiples of {a} or {b}."],
      ["return sum(1 for {i} in range(1, {n} + 1) if {i} % {a} == 0 or {i} % {b} == 0)"],
      {"n": "big"}, {"a": (2, 7), "b": (2, 7)}, lambda c: c["a"] < c["b"]),
    T("loops", ["squares", "sum_sq", "h"],
      ["Return the sum of the squares of the integers from {a} to {n}.",
       "Add up i * i for every i from {a} to {n}."],
      ["return sum({i} * {i} for {i} in range({a}, {n} + 1))"], {"n": "nat"}, {"a": (1, 6)}),
    T("loops", ["stretch", "stutter", "g"],
      ["Return {s} with each character repeated {k} times.",
       "Repeat every character of {s} {k} times, in order."],
      ["return ''.join({e} * {k} for {e} in {s})"], {"s": "str"}, {"k": (2, 9)}),
    T("loops", ["count_in", "hits", "f"],
      ["Return how many characters of {s} are in '{w}'.",
       "Count the characters of {s} that appear in '{w}'."],
      ["return sum(1 for {e} in {s} if {e} in '{w}')"], {"s": "str"},
      {"w": ["ab", "xyz", "ae", "cd", "bde", "ace", "xy", "bd", "z", "dez"]}),
]


# ---- problems ------------------------------------------------------------------------------
def _input(kind, consts, r):
    """One random argument of `kind`; ints near the template's constants are likely, so
    that the tests sit on the boundaries where off-by-one mutations differ."""
    near = [v + d for v in consts.values() if isinstance(v, int) for d in (-1, 0, 1)] + [0]
    if kind == "int":
        return r.choice(near) if r.random() < 0.5 else r.randint(-10, 30)
    if kind == "nat":
        return r.randint(0, 12)
    if kind == "mid":
        return r.randint(0, 60)
    if kind == "big":
        return r.choice([r.randint(0, 99), r.randint(0, 999)])
    # lengths near the constants too: xs[:k], s[-k:] and len(xs) > k differ there
    lengths = [v for v in near if 0 <= v <= 8] if r.random() < 0.5 else list(range(8))
    if kind in ("list", "list+"):
        n = max(r.choice(lengths), kind == "list+")
        return [r.choice(near) if r.random() < 0.3 else r.randint(-5, 20) for _ in range(n)]
    if kind == "str":
        strs = [v for v in consts.values() if isinstance(v, str)]
        s = "".join(r.choice(CHARS) for _ in range(r.choice(lengths)))
        if strs and r.random() < 0.4:  # so that startswith/count/replace have something to find
            s = r.choice(strs) + s if r.random() < 0.5 else s + r.choice(strs)
        return s
    raise ValueError(kind)


def _instantiate(t, r):
    """A random problem from template t, or None if its tests can't be made distinct."""
    while True:
        consts = {k: r.randint(*v) if isinstance(v, tuple) else r.choice(v)
                  for k, v in t["consts"].items()}
        if t["where"] is None or t["where"](consts):
            break
    names = {}
    for k, kind in t["args"].items():
        names[k] = r.choice([v for v in ARG_NAMES[kind] if v not in names.values()])
    for k, pool in AUX_NAMES.items():
        names[k] = r.choice(pool)
    fill = {**consts, **names}
    entry = r.choice(t["names"])
    description = r.choice(t["descriptions"]).format(**fill)
    args = [names[k] for k in t["args"]]
    prompt = f"# {description}\ndef {entry}({', '.join(args)}):\n"
    canonical = "".join(f"    {line.format(**fill)}\n" for line in t["body"])
    # expected values come from running the canonical in this process: it is our own
    # template code, not a model's (the sandbox then checks it like any other solution)
    scope = {}
    exec(prompt + canonical, scope)
    fn = scope[entry]
    calls = {}  # distinct calls -> (inputs, result)
    for _ in range(24):
        inputs = [_input(kind, consts, r) for kind in t["args"].values()]
        try:
            result = fn(*inputs)
        except Exception:  # an input the task does not cover is no test
            continue
        calls.setdefault(f"{entry}({', '.join(map(repr, inputs))})", (inputs, result))
    # five of them (fewer if there aren't): first calls with a result not seen yet (five
    # tests that all expect 0 tell few wrong solutions apart), then calls on a boundary
    # (an argument equal to a constant or one above it: where < and <=, k and k + 1 differ)
    edges = {v + d for v in consts.values() if isinstance(v, int) for d in (0, 1)}
    results, fresh, edge = set(), [], []
    for c, (inputs, v) in calls.items():
        if repr(v) not in results:
            results.add(repr(v))
            fresh.append(c)
        elif any((len(a) if isinstance(a, (str, list)) else a) in edges for a in inputs):
            edge.append(c)
    chosen = (fresh + edge + [c for c in calls if c not in fresh and c not in edge])[:5]
    if len(chosen) < 3:
        return None
    tests = [f"assert {c} == {calls[c][1]!r}" for c in calls if c in chosen]
    digest = hashlib.sha1((prompt + canonical).encode()).hexdigest()[:8]
    return dict(problem_id=f"tinycode/{t['family']}/{digest}", family=t["family"],
                prompt=prompt, canonical=canonical, entry_point=entry, tests=tests)


def templates(families=FAMILIES, max_const=0):
    """The templates of the given families; with max_const > 0, every integer constant
    range is cut to at most max_const (single digits for 9: one token to copy instead of
    two), ranges that start above it kept as they are. Easier settings for smaller budgets."""
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise ValueError(f"tinycode families must be a non-empty subset of {FAMILIES}, got {families}")
    chosen = []
    for t in TEMPLATES:
        if t["family"] not in families:
            continue
        if max_const > 0:
            t = dict(t, consts={k: (v[0], min(v[1], max_const))
                                if isinstance(v, tuple) and v[0] < max_const else v
                                for k, v in t["consts"].items()})
        chosen.append(t)
    return chosen


def description(problem: dict) -> str:
    """The description line: what makes a problem the problem (the function's name does not)."""
    return problem["prompt"].split("\n", 1)[0]


def generate_problems(n: int, seed: int, families=FAMILIES, max_const=0, exclude=()) -> list[dict]:
    """n problems with distinct descriptions, the families in turn (see templates() for
    families and max_const), none whose description is in `exclude`. The sequence for a
    seed is fixed: generate_problems(n, s) is a prefix of generate_problems(n + m, s)."""
    r = random.Random(seed)
    families = [f for f in FAMILIES if f in families]   # a fixed order, whatever was passed
    chosen = templates(families, max_const)
    by_family = {f: [t for t in chosen if t["family"] == f] for f in families}
    problems, seen = [], set(exclude)
    active, misses, turn = list(families), dict.fromkeys(families, 0), 0
    while len(problems) < n:
        if not active:
            raise RuntimeError(f"only {len(problems)} distinct problems exist, {n} asked")
        # families take turns; a few tries for a description not seen yet, and a family
        # that keeps missing is used up and leaves the rotation
        family = active[turn % len(active)]
        turn += 1
        for _ in range(50):
            p = _instantiate(r.choice(by_family[family]), r)
            # the description line is the instance: two problems that differ only in the
            # function's name are the same task and must not land in different splits
            key = p and description(p)
            if p and key not in seen:
                seen.add(key)
                problems.append(p)
                misses[family] = 0
                break
        else:
            misses[family] += 1
            if misses[family] == 3:
                active.remove(family)
    return problems


def make_splits(n_train: int, n_val: int, n_test: int, seed: int = 0, n_pretrain: int = 0,
                pretrain_families=None, **kw) -> dict[str, list[dict]]:
    """Disjoint train/val/test problems (no description in two splits). test and val
    come first in the sequence, so they do not change when n_train does. kw: families,
    max_const (generate_problems). n_pretrain > 0 adds a 'pretrain' split of that many
    problems from pretrain_families (default: the same), disjoint from the other three."""
    problems = generate_problems(n_test + n_val + n_train, seed, **kw)
    splits = {"train": problems[n_test + n_val:], "val": problems[n_test:n_test + n_val],
              "test": problems[:n_test]}
    if n_pretrain:
        kw = dict(kw, families=pretrain_families or kw.get("families", FAMILIES))
        splits["pretrain"] = generate_problems(n_pretrain, seed + 1, exclude={description(p) for p in problems}, **kw)
    return splits


def program(problem: dict, completion: str) -> str:
    """What gets executed to judge a completion: the function, then its asserts."""
    return problem["prompt"] + completion + "\n" + "\n".join(problem["tests"]) + "\n"


# ---- incorrect solutions by mutation -------------------------------------------------------
ARITH = {"+": ["-", "*"], "-": ["+"], "*": ["+", "-"], "//": ["%", "*"], "%": ["//"],
         "**": ["*"], "+=": ["-=", "*="], "-=": ["+="], "*=": ["+="]}
COMPARE = {"<": ["<=", ">"], "<=": ["<", ">="], ">": [">=", "<"], ">=": [">", "<="],
           "==": ["!="], "!=": ["=="]}
BUILTINS = {"max": ["min"], "min": ["max"], "upper": ["lower"], "startswith": ["endswith"],
            "and": ["or"], "or": ["and"], "True": ["False"], "sum": ["max"], "abs": ["int"]}


def mutants(problem: dict, r: random.Random) -> list[tuple[str, str]]:
    """Every single-site mutation of the canonical body as (kind, body): wrong operator,
    wrong comparison, off-by-one, wrong constant, wrong builtin, swapped arguments, missing
    branch or condition. Distinct texts, none equal to the canonical, in a random order
    that cycles through the kinds, so the first few are of different kinds."""
    body = problem["canonical"]
    lines = body.splitlines(keepends=True)
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    args = problem["prompt"].rsplit("(", 1)[1].split(")")[0].split(", ")
    toks = list(tokenize.generate_tokens(io.StringIO(body).readline))

    def at(tok, new):  # body with one token replaced
        a = starts[tok.start[0] - 1] + tok.start[1]
        b = starts[tok.end[0] - 1] + tok.end[1]
        return body[:a] + new + body[b:]

    found = {}
    for j, tok in enumerate(toks):
        s = tok.string
        prev = toks[j - 1] if j else tok
        binary = prev.type in (tokenize.NUMBER, tokenize.STRING) or prev.string in ")]}" or \
            (prev.type == tokenize.NAME and prev.string not in ("return", "else", "if", "in",
                                                                "and", "or", "not"))
        if tok.type == tokenize.OP and s in ARITH and binary:  # not the minus of -3
            found.setdefault("operator", []).extend(at(tok, alt) for alt in ARITH[s])
        elif tok.type == tokenize.OP and s in COMPARE:
            found.setdefault("comparison", []).extend(at(tok, alt) for alt in COMPARE[s])
        elif tok.type == tokenize.NUMBER:
            v = int(s)
            found.setdefault("off-by-one", []).extend(at(tok, str(w)) for w in (v + 1, v - 1) if w >= 0)
            found.setdefault("constant", []).append(
                at(tok, str(r.choice([w for w in range(13) if abs(w - v) > 1]))))
        elif tok.type == tokenize.STRING:
            options = [c for c in CHARS + "".join(WORDS) if repr(c) != s]
            found.setdefault("constant", []).append(at(tok, repr(r.choice(options))))
        elif tok.type == tokenize.NAME and s in BUILTINS:
            found.setdefault("builtin", []).extend(at(tok, alt) for alt in BUILTINS[s])
        elif tok.type == tokenize.NAME and s in args and len(args) > 1:
            found.setdefault("swapped args", []).extend(at(tok, a) for a in args if a != s)
        elif tok.type == tokenize.NAME and s == "if":
            found.setdefault("missing branch", []).extend(_drop_if(body, toks, j, lines, starts))
    out, seen = [], {body}
    kinds = {k: r.sample(v, len(v)) for k, v in found.items()}
    while kinds:
        for kind in r.sample(sorted(kinds), len(kinds)):
            new = kinds[kind].pop()
            if not kinds[kind]:
                del kinds[kind]
            if new not in seen:
                seen.add(new)
                out.append((kind, new))
    return out


def _drop_if(body, toks, j, lines, starts):
    """Bodies with the condition at toks[j] gone: a statement `if c:` with its block (one
    line in every template; the code after it then runs unconditionally), `A if c else B`
    -> A and -> B, and a comprehension filter `... for v in xs if c)` -> `... for v in xs)`."""
    tok = toks[j]
    row = tok.start[0] - 1
    if tok.line[:tok.start[1]].strip() == "":  # a statement: drop it and its one-line block
        return ["".join(lines[:row] + lines[row + 2:])]
    depth, else_tok = 0, None
    for end in toks[j + 1:]:  # the end of the condition: a closing bracket or a newline
        if end.string in "([{" and end.type == tokenize.OP:
            depth += 1
        elif end.string in ")]}" and end.type == tokenize.OP:
            if depth == 0:
                break
            depth -= 1
        elif end.type in (tokenize.NEWLINE, tokenize.NL):
            break
        elif end.string == "else" and depth == 0:
            else_tok = end
    cut = starts[row] + toks[j - 1].end[1]  # just after what precedes `if`
    stop = starts[end.start[0] - 1] + end.start[1]
    if else_tok is None:
        return [body[:cut] + body[stop:]]
    only_a = body[:starts[row] + tok.start[1]].rstrip() + body[stop:]  # `return A`
    ret = body.find("return ", starts[row], cut)
    if ret < 0:
        return [only_a]
    only_b = body[:ret + len("return ")] + body[starts[row] + else_tok.end[1]:].lstrip()
    return [only_a, only_b]


# ---- labelled samples ----------------------------------------------------------------------
LABEL_TIMEOUT = 1.0  # s per program; canonicals take milliseconds, mutated while-loops may hang
LABEL_BATCH = 64     # programs per sandbox (see sandbox.check_many)


def label(pairs: list[tuple[dict, str]], workers: int | None = None,
          progress: bool = False) -> list[bool]:
    """Is each (problem, completion) correct? Decided by running it against the
    problem's asserts in the sandbox."""
    # batched: these are our own template bodies with one token changed. They can hang or
    # crash, never attack, so sharing a sandbox 64 at a time (each still in its own
    # process) is safe, and ~5x faster than a sandbox each on 2 cores (~250 vs ~55 /s).
    # Two harnesses per core: each waits on the program it forked, leaving its core idle.
    return sandbox.check_many([program(p, c) for p, c in pairs], batch=LABEL_BATCH,
                              timeout=LABEL_TIMEOUT, memory_mb=256,
                              workers=workers or 2 * (os.cpu_count() or 1), progress=progress)


def _label(problems, n_incorrect, seed, workers, progress):
    """[(problem, kind, completion, is_correct)], kind 'canonical' or a mutation kind."""
    rows = []
    for p in problems:
        r = random.Random(f"{seed}/{p['problem_id']}")
        rows.append((p, "canonical", p["canonical"]))
        rows += [(p, kind, body) for kind, body in mutants(p, r)[:n_incorrect]]
    passed = label([(p, c) for p, _, c in rows], workers, progress)
    bad = [p["problem_id"] for (p, kind, _), ok in zip(rows, passed) if kind == "canonical" and not ok]
    if bad:
        raise RuntimeError(f"{len(bad)} canonical solutions failed their own tests in the "
                           f"sandbox (a broken sandbox or an overloaded machine?): {bad[:5]}")
    return [(p, kind, c, ok) for (p, kind, c), ok in zip(rows, passed)]


def make_samples(problems: list[dict], n_incorrect: int, seed: int, workers: int | None = None,
                 progress: bool = True, noise: float = 0.0) -> list[dict]:
    """The canonical solution and up to n_incorrect mutants of each problem, each labelled
    by running it against the problem's asserts in the sandbox (a mutant that still
    passes is labelled correct). noise > 0: that share of the problems (drawn per problem,
    seeded) have their canonical solution replaced by a noisy copy (corrupt), still
    labelled correct; such a sample carries `noise_spans`, the corrupted characters of its
    completion, which only the generator knows (the oracle scheme reads them)."""
    out = []
    for p, kind, c, ok in _label(problems, n_incorrect, seed, workers, progress):
        s = dict(problem_id=p["problem_id"], prompt=p["prompt"], completion=c,
                 is_correct=ok, source="tinycode")
        noisy = kind == "canonical" and noise > 0 and \
            random.Random(f"{seed}/noise/{p['problem_id']}").random() < noise
        if noisy and (bad := corrupt(c)) is not None:
            s.update(completion=bad[0], noise_spans=[bad[1]])
        out.append(s)
    return out


def corrupt(body: str):
    """The noise of a noisy training set: body with its last integer constant off by one
    (v -> v + 1), the commonest bug in code, systematic so that it competes with the right
    constant instead of spreading over many. -> (new body, (start, end) of the new
    constant's characters), or None where the body has no integer constant."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(body).readline) if t.type == tokenize.NUMBER]
    if not toks:
        return None
    tok = toks[-1]
    lines = body.splitlines(keepends=True)
    a = sum(map(len, lines[:tok.start[0] - 1])) + tok.start[1]
    b = a + len(tok.string)
    new = str(int(tok.string) + 1)
    return body[:a] + new + body[b:], (a, a + len(new))


if __name__ == "__main__":
    problems = generate_problems(2000, seed=0)
    shown = [next(p for p in problems if p["family"] == f) for f in FAMILIES]
    for p, kind, c, ok in _label(shown, 3, 0, None, False):
        if kind == "canonical":
            print("=" * 72 + f"\n{p['problem_id']}\n{p['prompt']}{c}" + "\n".join(p["tests"]))
            print("-- variants (label by execution):")
        else:
            print(f"[{'correct' if ok else 'wrong'}, {kind}]\n{c}", end="")
    print("=" * 72)
    t0 = time.time()
    rows = _label(problems, 2, 0, None, True)
    dt = time.time() - t0
    mutated = [(kind, ok) for _, kind, _, ok in rows if kind != "canonical"]
    print(f"{len(problems)} problems, {len(rows)} programs labelled in {dt:.1f}s "
          f"({len(rows) / dt:.0f} programs/s, {os.cpu_count()} cores, "
          f"isolation={sandbox.setup().isolation})")
    print(f"mutated variants: {len(mutated)}, incorrect {sum(not ok for _, ok in mutated) / len(mutated):.1%}")
    for kind in sorted({k for k, _ in mutated}):
        oks = [ok for k, ok in mutated if k == kind]
        print(f"  {kind:15s} {len(oks):5d}  still correct {sum(oks) / len(oks):.1%}")
    lengths = [(len(p["prompt"]), len(p["canonical"])) for p in problems]
    print(f"prompt bytes max {max(a for a, _ in lengths)}, completion bytes max "
          f"{max(b for _, b in lengths)}; {len(TEMPLATES)} templates: " +
          ", ".join(f"{f} {sum(t['family'] == f for t in TEMPLATES)}" for f in FAMILIES))
