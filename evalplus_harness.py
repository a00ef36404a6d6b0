"""
HumanEval+ / MBPP+ scored as EvalPlus scores them (Liu et al. 2023; evalplus 0.3.1's
evaluate.py): each sample runs once on the problem's base inputs and once on its plus
inputs, its outputs compared with the canonical solution's, in our sandbox. tasks.py loads
the problems (load_evalplus) and graders.score_batch calls score(); tests/test_evalplus.py
checks the verdicts against evalplus's own check_correctness on the same completions.
"""
import base64
import cmath
import itertools
import json
import math
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor

# evalplus/eval/__init__.py (0.3.1, and the repository's main since) runs each sample once on
# the base inputs and once on the plus inputs, each in a fresh process: exec the solution,
# then per input call the entry point under a time limit and compare its output with the
# canonical solution's. We run the same steps as a program in our sandbox (check_many:
# passing is reaching its end), so the comparison runs inside the solution's process, as
# there. The comparison is written as plain functions below; the program holds their source.
EVALPLUS_FACTOR = 4.0          # config.py DEFAULT_GT_TIME_LIMIT_FACTOR
EVALPLUS_TASK_CAP_S = 60.0     # untrusted_check: EVALPLUS_TIMEOUT_PER_TASK caps a whole run
EVALPLUS_MEMORY_MB = 4096      # query_maximum_memory_bytes: 4 GB
EVALPLUS_STARTUP_S = 1.0       # ours, on top of its cap: interpreter start, unpickling inputs
# _special_oracle.py: MBPP+ problems (by entry point) whose outputs compare as sets, or only
# as "not None" (the canonical's output is recorded as `output is not None`)
MBPP_SET_EQ = ["similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
               "larg_nnum", "intersection_array", "find_dissimilar", "Diff"]
MBPP_NOT_NONE = ["check_str", "text_match_three", "text_starta_endb"]


def evalplus_is_floats(x):
    """evalplus.eval.is_floats: a float, or a non-empty list/tuple of floats (or a float ndarray,
    which can only exist where numpy is loaded)."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    np_ = sys.modules.get("numpy")
    if np_ is not None and isinstance(x, np_.ndarray):
        return x.dtype == np_.float64 or x.dtype == np_.float32
    return False


def _as_array(v):
    """(shape, flat values, kind) of numpy.asarray(v) for numbers and nested lists/tuples of
    them; kind: b bool, i int64, u uint64, f float64, c complex128. Raises where numpy's array
    would be ragged, text or object (an int no int64/uint64 holds): isclose fails on those."""
    if isinstance(v, (list, tuple)):
        parts = [_as_array(x) for x in v]
        if len({p[0] for p in parts}) > 1:
            raise ValueError("an inhomogeneous shape")
        kinds = {p[2] for p in parts}
        kind = ("c" if "c" in kinds else "f" if "f" in kinds or {"i", "u"} <= kinds or not kinds
                else "u" if "u" in kinds else "i" if "i" in kinds else "b")
        return (len(v),) + (parts[0][0] if parts else ()), [x for p in parts for x in p[1]], kind
    if isinstance(v, bool):
        return (), [v], "b"
    if isinstance(v, int):
        if not -2 ** 63 <= v < 2 ** 64:
            raise TypeError("an int beyond 64 bits: an object array")
        return (), [v], "i" if v < 2 ** 63 else "u"
    if isinstance(v, (float, complex)):
        return (), [v], "f" if isinstance(v, float) else "c"
    raise TypeError(f"{type(v).__name__} is not a number")


def evalplus_allclose(a, b, rtol, atol):
    """numpy 2's allclose(a, b, rtol, atol) on what Python code returns, written out because
    the sandbox's Python has no numpy: numbers stay Python numbers (an int b becomes a float),
    lists and tuples become arrays (broadcast as numpy does); element-wise
    |a - b| <= atol + rtol |b| where b is finite, or a == b. Raises where numpy raises."""
    arrays = [(((), [v], None) if isinstance(v, (int, float, complex)) else _as_array(v)) for v in (a, b)]
    (sa, xa, _), (sb, xb, kb) = arrays
    if kb is None:     # b a Python number
        xb = [float(xb[0]) if isinstance(xb[0], int) else xb[0]]
    else:              # b an array: numpy makes it inexact, and a's values follow it
        xb = [complex(v) if kb == "c" else float(v) for v in xb]
        if arrays[0][2] is not None:
            xa = [v if isinstance(v, complex) else float(v) for v in xa]
    ndim = max(len(sa), len(sb))
    sa, sb = (1,) * (ndim - len(sa)) + sa, (1,) * (ndim - len(sb)) + sb
    if any(m != n and 1 not in (m, n) for m, n in zip(sa, sb)):
        raise ValueError(f"shapes {sa} and {sb} do not broadcast")

    def flat(index, shape):   # position in a row-major array of `shape`; size-1 axes broadcast
        pos = 0
        for i, n in zip(index, shape):
            pos = pos * n + (i if n > 1 else 0)
        return pos

    for index in itertools.product(*(range(max(m, n)) for m, n in zip(sa, sb))):
        x, y = xa[flat(index, sa)], xb[flat(index, sb)]
        finite = cmath.isfinite(y) if isinstance(y, complex) else math.isfinite(y)
        if not ((abs(x - y) <= atol + rtol * abs(y)) and finite or x == y):
            return False
    return True


def _poly(xs, x):   # _special_oracle.py _poly: HumanEval/32 checks the root it returns
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _mbpp_surface_area(base_edge, height):   # Mbpp/581's other reading: height, not slant
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def _mbpp_digit_distance(a, b):   # Mbpp/558's other reading: the shorter number zero-padded
    a, b = str(a), str(b)
    a, b = a.zfill(len(b)), b.zfill(len(a))
    return sum(abs(int(x) - int(y)) for x, y in zip(a, b))


def evalplus_passes(out, exp, inp, atol, dataset, entry):
    """(passed, atol): unsafe_execute's verdict on one output. A float expected output raises
    atol to 1e-6 for this and every later input of the run, as its loop does; a mismatch under
    a nonzero atol needs the same type (and length) and allclose with rtol 1e-7."""
    exact = out == exp
    if dataset == "mbpp":
        if entry == "are_equivalent":       # Mbpp/164: any output
            exact = exact or True
        elif entry == "sum_div":            # Mbpp/295
            exact = exact or out == 0
        elif entry == "surface_Area":       # Mbpp/581
            exact = exact or abs(out - _mbpp_surface_area(*inp)) <= atol
        elif entry == "digit_distance_nums":   # Mbpp/558
            exact = exact or out == _mbpp_digit_distance(*inp)
        elif entry in MBPP_SET_EQ:
            exact = set(out) == set(exp)
        elif entry in MBPP_NOT_NONE:        # exp: was the canonical's output not None
            exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if dataset == "humaneval" and entry == "find_zero":
        return abs(_poly(*inp, out)) <= atol, atol
    if atol == 0 and evalplus_is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        return (type(out) == type(exp) and (not isinstance(exp, (list, tuple)) or len(out) == len(exp))
                and evalplus_allclose(out, exp, rtol=1e-07, atol=atol)), atol
    return bool(exact), atol


# evaluate.py get_groundtruth -> gen/util trusted_exec: the canonical solution on a deep copy
# of each input, timed per call (wall clock); for MBPP's not-None problems only whether its
# output is not None. One json line back: per input set its times and pickled outputs.
_EVALPLUS_TRUTH = """
import base64, copy, io, json, pickle, time
report, out, sys.stdout = [], sys.stdout, io.StringIO()   # what the code prints is not the report
for inputs in pickle.loads(base64.b64decode(INPUTS)):
    g = {}
    exec(CODE, g)
    fn = g[ENTRY]
    outputs, times = [], []
    for inp in inputs:
        inp = copy.deepcopy(inp)
        t0 = time.time()
        outputs.append(fn(*inp))
        times.append(time.time() - t0)
    if NOT_NONE:
        outputs = [o is not None for o in outputs]
    report.append({"times": times, "floats": any(evalplus_is_floats(o) for o in outputs),
                   "outputs": base64.b64encode(pickle.dumps(outputs)).decode()})
out.write(json.dumps(report) + "\\n")
"""

# eval/__init__.py unsafe_execute with fast_check (evaluate.py's default): reliability_guard
# (eval/utils.py: the functions it switches off, its data and stack limits; its 4 GB address
# space is the sandbox's memory_mb), exec under swallowed io, then each input under its own
# SIGALRM limit; the first failing input ends the run.
_EVALPLUS_CHECK = """
import base64, builtins, contextlib, faulthandler, io, os, pickle, resource, shutil, signal, subprocess
INPUTS = pickle.loads(base64.b64decode(INPUTS))
EXPECTED = pickle.loads(base64.b64decode(EXPECTED))


class WriteOnly(io.StringIO):   # swallow_io's stream: reading it raises
    def read(self, *args, **kwargs):
        raise IOError

    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnly()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        stdin, sys.stdin = sys.stdin, stream
        try:
            yield
        finally:
            sys.stdin = stdin


class TimeoutException(Exception):
    pass


def alarm(signum, frame):
    raise TimeoutException("Timed out!")


def guard():
    for limit in (resource.RLIMIT_DATA, resource.RLIMIT_STACK):
        try:
            resource.setrlimit(limit, (4 << 30, 4 << 30))
        except (ValueError, OSError):
            pass   # a lower hard limit stays
    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"
    for module, names in ((builtins, "exit quit open help"), (shutil, "rmtree move chown"),
                          (subprocess, "Popen"),
                          (os, "kill system putenv remove removedirs rmdir fchdir setuid fork "
                               "forkpty killpg rename renames truncate replace unlink fchmod "
                               "fchown chmod chown chroot lchflags lchmod lchown getcwd chdir")):
        for name in names.split():
            setattr(module, name, None)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def run():
    atol, g = ATOL, {}
    with swallow_io():
        exec(CODE, g)
        fn = g[ENTRY]
    for inp, exp, limit in zip(INPUTS, EXPECTED, LIMITS):
        signal.setitimer(signal.ITIMER_REAL, limit)
        signal.signal(signal.SIGALRM, alarm)
        try:
            with swallow_io():
                out = fn(*inp)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        passed, atol = evalplus_passes(out, exp, inp, atol, DATASET, ENTRY)
        if not passed:
            return False
    return True


guard()
if not run():
    raise SystemExit(1)
"""


def _evalplus_source(body, **constants):
    """A sandbox program: `constants` as literals, the comparison functions' source, `body`."""
    import inspect
    funcs = [evalplus_is_floats, _as_array, evalplus_allclose, _poly, _mbpp_surface_area,
             _mbpp_digit_distance, evalplus_passes]
    return ("import cmath, itertools, math, sys\n"
            + "".join(f"{k} = {v!r}\n" for k, v in dict(constants, MBPP_SET_EQ=MBPP_SET_EQ,
                                                         MBPP_NOT_NONE=MBPP_NOT_NONE).items())
            + "\n\n" + "\n\n".join(inspect.getsource(f) for f in funcs) + body)


_EVALPLUS_TRUTHS = {}   # (problem_id, data_sha) -> the canonical solution's outputs and times


def evalplus_truth(problem):
    """{"base": ..., "plus": ...}, each {times, floats, outputs}: the canonical solution run on
    the problem's inputs in the sandbox, its outputs pickled there and never loaded here.
    Once per problem and process (evalplus caches it per dataset on disk)."""
    key = (problem["problem_id"], problem["data_sha"])
    if key not in _EVALPLUS_TRUTHS:
        import sandbox
        not_none = (problem["dataset"] == "mbpp"
                    and problem["entry_point"] in MBPP_NOT_NONE)
        inputs = base64.b64encode(pickle.dumps([problem["base_input"], problem["plus_input"]]))
        src = _evalplus_source(_EVALPLUS_TRUTH, CODE=problem["truth_code"], NOT_NONE=not_none,
                               ENTRY=problem["entry_point"], INPUTS=inputs.decode())
        r = sandbox.run_program(src, timeout=600, memory_mb=EVALPLUS_MEMORY_MB, max_output_bytes=1 << 28)
        if r.status != "passed" or r.truncated:
            raise RuntimeError(f"{problem['problem_id']}: its canonical solution did not run on its "
                               f"own inputs in the sandbox ({r.status}): {r.stderr.strip()[-500:]}")
        base, plus = json.loads(r.stdout)
        _EVALPLUS_TRUTHS[key] = {"base": base, "plus": plus}
    return _EVALPLUS_TRUTHS[key]


def evalplus_program(problem, completion, part, min_time_limit):
    """(program, wall seconds): prompt + completion checked on the `part` ("base" or "plus")
    inputs, each input's limit max(min_time_limit, 4 x the canonical's time), the whole run
    capped as untrusted_check caps it (its join's +1 s and +1 s) plus our start-up."""
    truth = evalplus_truth(problem)[part]
    limits = [max(min_time_limit, EVALPLUS_FACTOR * t) for t in truth["times"]]
    src = _evalplus_source(_EVALPLUS_CHECK, DATASET=problem["dataset"],
                           ENTRY=problem["entry_point"], ATOL=problem["atol"], LIMITS=limits,
                           CODE=problem["prompt"] + completion, EXPECTED=truth["outputs"],
                           INPUTS=base64.b64encode(pickle.dumps(problem[f"{part}_input"])).decode())
    return src, min(EVALPLUS_TASK_CAP_S, sum(limits)) + 2 + EVALPLUS_STARTUP_S


def score(items, workers, min_time_limit):
    """[{correct, base, isolation}] for (problem, completion) pairs: `base` passes the base
    tests, `correct` the base and the plus tests (EvalPlus's "+" score). The plus run is
    skipped where the base run failed: it cannot change either verdict."""
    import sandbox
    # the canonical solutions first, one at a time (evalplus times them with nothing else running)
    for p in {p["problem_id"]: p for p, _ in items}.values():
        evalplus_truth(p)

    def check(problem, completion, part):
        src, wall = evalplus_program(problem, completion, part, min_time_limit)
        return sandbox.check_many([src], timeout=wall, workers=1, memory_mb=EVALPLUS_MEMORY_MB)[0]

    def one(item):
        base = check(*item, "base")
        return {"correct": base and check(*item, "plus"), "base": base,
                "isolation": sandbox.setup().isolation}

    with ThreadPoolExecutor(workers) as ex:   # the work is in child processes
        return list(ex.map(one, items))
