"""
Hostile programs against sandbox.py, under each isolation this machine has
(bwrap when it works, and rlimits-only, which CI without bubblewrap gets).

    python -m pytest tests/test_sandbox.py -q
"""
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings

import pytest

import sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["auto", "rlimits"])
def s(request, monkeypatch):
    """The sandbox setup under test; WMTP_SANDBOX selects it for every call."""
    monkeypatch.setenv("WMTP_SANDBOX", request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'auto' without bubblewrap warns; tested below
        return sandbox.setup()


def protected(s):
    """Do our files and processes stay out of the program's reach? (see sandbox.py)"""
    return s.bwrap or s.root


def marked_processes(marker):
    """pids of live processes whose command line contains `marker`."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if marker.encode() in cmdline and not zombie:
            pids.append(int(pid))
    return pids


def exec_marked(code, marker):
    """Source of a program that becomes `code` with `marker` in its command line, so the
    test can find it and everything it forks in /proc."""
    code = f"# {marker}\n{code}"
    return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-S', '-c', {code!r}])\n"


def assert_all_gone(marker):
    for _ in range(20):  # SIGKILLed processes take a moment to leave /proc
        if not marked_processes(marker):
            return
        time.sleep(0.05)
    pytest.fail(f"processes left behind: {marked_processes(marker)}")


# ---- the basics -------------------------------------------------------------------------
def test_runs_a_program(s):
    r = sandbox.run_program("import sys\nprint(sys.stdin.read().upper())", stdin="hello")
    assert (r.status, r.returncode, r.stdout, r.isolation) == ("passed", 0, "HELLO\n", s.isolation)
    assert not r.truncated and r.elapsed < 5


def test_nonzero_exit_fails(s):
    r = sandbox.run_program("assert 1 + 1 == 3")
    assert (r.status, r.returncode) == ("failed", 1)
    assert "AssertionError" in r.stderr


def test_runs_in_a_fresh_directory_with_an_empty_environment(s, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("WMTP_TEST_SECRET", secret)
    r = sandbox.run_program(
        "import json, os\nprint(json.dumps([sorted(os.environ), os.listdir('.')]))\n"
        "open('scratch.txt', 'w').write('its own directory is writable')\n"
        f"try:\n    print(open('/proc/{os.getpid()}/environ').read())\n"
        "except OSError as e:\n    print('no access', e)\n")
    assert r.status == "passed", r.stderr
    names, files = json.loads(r.stdout.splitlines()[0])
    assert set(names) <= set(sandbox.ENV) | {"PWD"} and "main.py" in files  # bwrap sets PWD
    if protected(s):  # reading our /proc/<pid>/environ needs our uid (and our pid namespace)
        assert secret not in r.stdout
    else:
        assert secret not in r.stdout.splitlines()[0]


# ---- time, memory, processes, output ------------------------------------------------------
def test_infinite_loop_times_out(s):
    r = sandbox.run_program("while True:\n    pass", timeout=1.0)
    assert r.status == "timeout" and r.returncode == -9
    assert 1.0 <= r.elapsed < 1.5, r.elapsed
    assert "[sandbox] killed after" in r.stderr


def test_memory_bomb(s):
    for bomb in ["x = bytearray(4 * 1024 ** 3)",
                 "xs = []\nwhile True:\n    xs.append(' ' * 10 ** 7)"]:
        r = sandbox.run_program(bomb, memory_mb=256, timeout=5.0)
        assert r.status == "failed" and "MemoryError" in r.stderr, r
        assert r.elapsed < 3


def test_memory_is_one_budget_for_the_whole_run(s):
    # issue 14: RLIMIT_AS bounds each process, so three children of one program held
    # 100 MB each under memory_mb=128 (and 64 x 1 GB under the defaults)
    r = sandbox.run_program(
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n"
        "        x = b'x' * (100 << 20)\n        time.sleep(3)\n        os._exit(0)\n"
        "for _ in range(3):\n    os.wait()\nprint('held 300 MB')", memory_mb=128, timeout=10.0)
    assert r.status == "failed" and "held 300 MB" not in r.stdout, r
    assert "[sandbox] killed: the run held" in r.stderr and r.elapsed < 3


def test_memory_budget_counts_shared_pages_once(s):
    # eight forked children share the interpreter's pages: a budget that summed each
    # process's RSS would count them eight times and kill this honest program
    r = sandbox.run_program(
        "import os, time\nx = b'x' * (40 << 20)\npids = []\nfor _ in range(8):\n"
        "    pid = os.fork()\n    if pid == 0:\n        y = b'y' * (10 << 20)\n"
        "        time.sleep(1)\n        os._exit(0)\n    pids.append(pid)\n"
        "for pid in pids:\n    os.waitpid(pid, 0)\nprint('ok')", memory_mb=256, timeout=10.0)
    assert (r.status, r.stdout) == ("passed", "ok\n"), r


def test_deep_recursion(s):
    r = sandbox.run_program("def f(n):\n    return f(n + 1)\nf(0)")
    assert r.status == "failed" and "RecursionError" in r.stderr
    # recursing through C (map) past the C stack: a segfault, seen as a signal, not a pass
    r = sandbox.run_program("import sys\nsys.setrecursionlimit(10 ** 7)\n"
                            "def f(n):\n    return list(map(f, [n + 1]))\nf(0)")
    assert r.status == "failed" and r.returncode != 0


def test_process_limit(s):
    r = sandbox.run_program(
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(10)\n            os._exit(0)\n        n += 1\n"
        "    except OSError:\n        break\nprint(n)", max_procs=16, timeout=5.0)
    assert r.status == "passed", r.stderr
    # as a normal user the limit is our uid's task count at start + 16, and that count moves
    assert 0 < int(r.stdout) < (16 if s.root else 24)
    assert r.elapsed < 3  # the sleeping children are killed, not waited for


def test_fork_bomb_leaves_nothing_behind(s):
    marker = f"wmtp-forkbomb-{uuid.uuid4().hex}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = sandbox.run_program(exec_marked(bomb, marker), timeout=2.0, max_procs=32)
    assert r.status == "timeout"
    assert_all_gone(marker)
    assert subprocess.run(["true"]).returncode == 0  # and we can still start processes


def test_escaped_daemon_is_killed(s):
    if not protected(s):
        pytest.skip("rlimits-only as a normal user: a setsid() daemon escapes the process "
                    "group kill (documented in sandbox.py)")
    marker = f"wmtp-daemon-{uuid.uuid4().hex}"
    daemon = exec_marked("import time\ntime.sleep(60)", marker)
    r = sandbox.run_program(f"import os\nif os.fork() == 0:\n    os.setsid()\n"
                            f"    exec({daemon!r})\nprint('parent exits at once')")
    assert r.status == "passed" and r.elapsed < 2
    assert_all_gone(marker)


def throwaway_ipc():
    """SysV IPC objects (kind, id) in our IPC namespace owned or created by a run uid."""
    found = []
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            header, *rows = [line.split() for line in f]
        for row in rows:
            fields = dict(zip(header, row))
            if any(sandbox.UID_BASE <= int(fields[k]) < sandbox.UID_BASE + sandbox.N_UIDS
                   for k in ("uid", "cuid")):
                found.append((kind, int(fields[header[1]])))
    return found


IPC_HOG = """\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
ids = [libc.shmget(IPC_PRIVATE, ctypes.c_size_t(16 << 20), IPC_CREAT | 0o600) for _ in range(4)]
ids += [libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600), libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)]
assert min(ids) >= 0, ctypes.get_errno()
print(ids)
"""


def test_sysv_ipc_does_not_outlive_the_run(s):
    # issue 14: in rlimits mode as root, shared memory segments a program created
    # outlived it (4 x 16 MB seen); under bwrap they die with the IPC namespace
    if not s.root:
        pytest.skip("not root: the program's IPC objects are ours, and can't be told "
                    "apart from our own (documented in sandbox.py)")
    try:
        r = sandbox.run_program(IPC_HOG)
        assert r.status == "passed", r.stderr
        assert throwaway_ipc() == []
        assert sandbox.check_many([IPC_HOG], batch=2) == [True] and throwaway_ipc() == []
    finally:
        for kind, ident in throwaway_ipc():  # so that a failure here leaks nothing
            subprocess.run(["ipcrm", {"shm": "-m", "sem": "-s", "msg": "-q"}[kind], str(ident)])


def test_output_is_capped(s):
    # over the cap but under the flood limit (4x the cap, both streams together)
    r = sandbox.run_program("import sys\nsys.stdout.write('y' * 150_000)\n"
                            "sys.stderr.write('z' * 150_000)", max_output_bytes=100_000)
    assert r.status == "passed" and r.truncated
    assert r.stdout == "y" * 100_000 and r.stderr == "z" * 100_000
    r = sandbox.run_program("while True:\n    print('x' * 1000)", max_output_bytes=100_000)
    assert r.status == "failed" and r.truncated and len(r.stdout) == 100_000
    assert "[sandbox] killed: over" in r.stderr and r.elapsed < 2


# ---- our files, processes and network -----------------------------------------------------
def test_cannot_touch_files_outside_its_directory(s, tmp_path):
    if not protected(s):
        pytest.skip("rlimits-only as a normal user: the program has our uid and can write "
                    "whatever we can (documented in sandbox.py)")
    canary = tmp_path / "canary.txt"
    canary.write_text("precious")
    targets = [str(canary), os.path.join(ROOT, "wmtp_pwned.txt"), "/usr/wmtp_pwned.txt",
               "/etc/wmtp_pwned.txt"]
    r = sandbox.run_program(
        f"import os, shutil\nfor p in {targets!r}:\n"
        "    for attack in (lambda: open(p, 'w').write('pwned'), lambda: os.remove(p),\n"
        "                   lambda: shutil.rmtree(os.path.dirname(p))):\n"
        "        try:\n            attack()\n            print('did', p)\n"
        "        except OSError:\n            pass\n")
    assert r.status == "passed", r.stderr
    assert "did" not in r.stdout
    assert canary.read_text() == "precious"
    assert not any(os.path.exists(p) for p in targets[1:])


def test_cannot_kill_its_parent(s):
    if not protected(s):
        pytest.skip("rlimits-only as a normal user: the program could signal pytest")
    me = os.getuid()
    # inside bwrap's pid namespace the parent is bwrap's init, which ignores it; as a
    # throwaway uid it is not allowed. kill(-1) is only attempted where it can't reach us.
    r = sandbox.run_program(
        "import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError as e:\n    print(e)\n"
        f"if os.getuid() != {me} or os.getpid() < 10:\n    os.kill(-1, 9)\n")
    assert r.status in ("passed", "failed")
    assert sandbox.run_program("print('still here')").stdout == "still here\n"


def test_no_network(s):
    if not s.bwrap:
        pytest.skip("no network namespace without bubblewrap")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    r = sandbox.run_program(
        "import socket\n"
        f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 80), ('pypi.org', 443)]:\n"
        "    try:\n        socket.create_connection(addr, timeout=2)\n        print('reached', addr)\n"
        "    except OSError as e:\n        print('blocked', e)\n")
    assert r.status == "passed" and "reached" not in r.stdout, r.stdout
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


# ---- the pass/fail check ------------------------------------------------------------------
SOLUTION = "def add3(x):\n    return x + 3\n"
TESTS = "assert add3(1) == 4\nassert add3(-3) == 0\n"
CHEATS = {
    "wrong": "def add3(x):\n    return x + 2\n" + TESTS,
    "sys.exit(0) before the asserts": SOLUTION + "import sys\nsys.exit(0)\n" + "assert add3(1) == 5\n",
    "os._exit(0) before the asserts": SOLUTION + "import os\nos._exit(0)\n" + "assert add3(1) == 5\n",
    "prints the sentinel itself": SOLUTION + f"print({sandbox.SENTINEL!r})\nimport os\nos._exit(0)\n"
                                  + "assert add3(1) == 5\n",
    "echoes its stdin, then exits": SOLUTION + "import sys, os\nprint(sys.stdin.read())\n"
                                    + f"print({sandbox.SENTINEL!r})\nos._exit(0)\nassert add3(1) == 5\n",
    "silences print, then fails": "print = lambda *a, **k: None\n" + SOLUTION + "assert add3(1) == 5\n",
    "hangs": "while True:\n    pass\n" + SOLUTION + TESTS,
}
HONEST = {
    "correct": SOLUTION + TESTS,
    "correct, shadows print and sys.stdout": "import sys, io\nprint = None\nsys.stdout = io.StringIO()\n"
                                            + SOLUTION + TESTS,
    "correct, reads an empty stdin": "import sys\nassert sys.stdin.read() == ''\n" + SOLUTION + TESTS,
    "correct, prints a lot": "print('x' * 10000)\n" + SOLUTION + TESTS,
}


def test_check_python(s):
    for name, program in HONEST.items():
        assert sandbox.check_python(program, timeout=2.0), name
    for name, program in CHEATS.items():
        assert not sandbox.check_python(program, timeout=2.0), name


def test_check_many_batched_agrees(s):
    programs = list(HONEST.values()) + list(CHEATS.values())
    # kills the batch harness (its parent, same uid), or fails to kill its parent alone
    programs += ["import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError:\n    pass\n"
                 + SOLUTION + TESTS]
    programs += ["import os, time\nif os.fork() == 0:\n    time.sleep(30)\n" + SOLUTION + TESTS]  # a leftover
    want = [True] * len(HONEST) + [False] * len(CHEATS) + [True, True]
    if not protected(s):
        programs, want = programs[:-2], want[:-2]  # it could kill pytest, not only the harness
    assert sandbox.check_many(programs, timeout=2.0, workers=2) == want
    assert sandbox.check_many(programs, batch=4, timeout=2.0, workers=2) == want


def test_proof_of_completion_is_not_cut_off_with_stdout(s):
    # issue 14: the proof travelled on stdout at batch=1, so an honest program that
    # printed more than max_output_bytes (but less than the flood limit) failed there
    # and passed batched
    chatty = "print('x' * 150_000)\n" + SOLUTION + TESTS
    early = "print('x' * 150_000)\nimport os\nos._exit(0)\n" + SOLUTION + TESTS.replace("4", "5")
    for batch in (1, 2):
        assert sandbox.check_many([chatty, early], batch=batch, max_output_bytes=100_000) \
            == [True, False], batch



def test_from_future_imports_pass_in_both_modes(s):
    # the proof's first line used to go before them (a SyntaxError at batch=1 only);
    # one that shares its line with other code keeps failing: that code would run first
    future = '"""A docstring."""\nfrom __future__ import annotations\n' + SOLUTION + TESTS
    reads_nonce = ("from __future__ import annotations; import sys, os; "
                   "fd, nonce = sys.stdin.readline().split(); os.write(int(fd), nonce.encode()); "
                   "os._exit(0)\n" + CHEATS["wrong"])
    for batch in (1, 2):
        assert sandbox.check_many([future, reads_nonce], batch=batch) == [True, False], batch

# takes the harness's stdout from its parent with pidfd_getfd(2) and writes a verdict of
# all True for the batch, padded so that the harness's own verdict falls past the cap
FORGER = """\
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_getfd = 438  # the same on x86_64 and aarch64
fd = libc.syscall(SYS_pidfd_getfd, os.pidfd_open(os.getppid()), 1, 0)
if fd >= 0:
    os.write(fd, (json.dumps([True] * 4) + " " * 1_200_000).encode())
assert False, "a wrong solution"
"""


def test_batched_verdict_cannot_be_forged(s):
    # issue 14: same uid, no Yama: a program could write the verdict of its whole batch
    programs = [FORGER] + [CHEATS["wrong"]] * 3
    assert sandbox.check_many(programs, batch=4, timeout=2.0) == [False] * 4
    assert sandbox.check_many(programs, batch=1, timeout=2.0) == [False] * 4


def test_a_bad_verdict_means_a_rerun():
    good = sandbox.ExecResult("passed", 0, "101\n", "", 0.1, "rlimits")
    assert sandbox._verdict(good, 3) == [True, False, True]
    bad = [dataclasses.replace(good, truncated=True),        # the end may be cut off
           dataclasses.replace(good, stdout="10\n"),         # too short
           dataclasses.replace(good, stdout="1011\n"),       # too long
           dataclasses.replace(good, stdout="111\n101\n"),   # two verdicts
           dataclasses.replace(good, stdout="101"),          # no end of line
           dataclasses.replace(good, status="failed", returncode=1)]
    for r in bad:
        assert sandbox._verdict(r, 3) is None, r


# Known residual risks (see sandbox.py): a program written against the checker passes
# without being correct. These tests keep the documentation honest; if one starts to
# fail, the hole is closed: update the docstrings and the README.
RESIDUAL = {
    "always-true __eq__": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                          "def add3(x):\n    return Yes()\n" + TESTS,
    "sys.settrace jumps over the asserts": """\
import dis, sys
def skip_asserts(frame, event, arg):
    if event == "line":
        code = list(dis.get_instructions(frame.f_code))
        asserts = {i.positions.lineno for i in code if i.opname == "LOAD_ASSERTION_ERROR"}
        line = frame.f_lineno
        while line in asserts:  # a jump lands past the line event of its target
            line = min(i.positions.lineno for i in code if (i.positions.lineno or 0) > line)
        if line != frame.f_lineno:
            frame.f_lineno = line
    return skip_asserts
sys.settrace(skip_asserts)
sys._getframe().f_trace = skip_asserts
def add3(x):
    return x + 2
""" + TESTS + "print('the jump needs a line after the asserts')\n",
}


def test_known_residual_risks(s):
    for batch in (1, 2):
        assert sandbox.check_many(list(RESIDUAL.values()), batch=batch) == [True] * len(RESIDUAL)


def test_run_many_keeps_programs_apart(s):
    hostile = ["while True:\n    pass", "x = bytearray(4 * 1024 ** 3)", "import os\nos._exit(3)",
               "while True:\n    print('x' * 1000)"]
    programs = [f"print({i} * {i})" if i % 2 else hostile[i // 2 % 4] for i in range(12)]
    results = sandbox.run_many(programs, workers=3, timeout=1.0, memory_mb=256,
                               max_output_bytes=10_000)
    for i, r in enumerate(results):
        if i % 2:
            assert (r.status, r.stdout) == ("passed", f"{i * i}\n")
        else:
            assert r.status in ("failed", "timeout")


def test_falling_back_is_loud(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which",
                        lambda cmd, **kw: None if cmd == "bwrap" else real_which(cmd, **kw))
    with pytest.warns(RuntimeWarning, match="bubblewrap"):
        assert sandbox._probe("auto").isolation == "rlimits"
    with pytest.raises(RuntimeError, match="WMTP_SANDBOX=bwrap"):
        sandbox._probe("bwrap")


def test_bad_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("WMTP_SANDBOX", "none")
    with pytest.raises(ValueError):
        sandbox.setup()
