"""
The one place where untrusted generated Python runs.

Nothing here ever runs a program in our own process. Each program gets a fresh child:
    python3 -I -S main.py      isolated mode, no site-packages, an empty environment,
                               its own temporary directory, a new session (process group)
    prlimit                    RLIMIT_AS, RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE, no core files
    setpriv (when we are root) a throwaway uid per run: root ignores RLIMIT_NPROC, can write
                               anywhere and can signal anything; the throwaway uid cannot
    bwrap (when it works)      no network, own pid/ipc/uts namespaces, read-only /usr, a
                               small tmpfs as the only writable place, dies with us
A wall-clock timeout kills the whole process group, and (as root) every process of the
run's uid, and removes the SysV IPC objects that uid left. Output is read in chunks and
capped; a program that floods is killed. memory_mb is one budget for the whole run: each
process has RLIMIT_AS = memory_mb, and every 0.1 s we sum the run's memory (proportional
set sizes of its processes, see _memory_held) and kill the run when it is over.

check_many (the pass/fail check): a program proves that it reached its end by writing a
per-call nonce on a pipe of its own, never on stdout (output can't cut it off). Batched,
each program runs in a fork of a small harness that it can neither reach nor kill, and
the harness reports on a stdout no program can write to (see _HARNESS).

isolation='bwrap' is a real sandbox. isolation='rlimits' (no bubblewrap, or it cannot
create namespaces, as in many containers) is not: it bounds time, memory, processes and
output, and as root the throwaway uid keeps the program out of our files and processes,
but the program can use the network, read world-readable files, fill /tmp and /dev/shm
with files of at most max_output_bytes each (not counted in memory_mb), and (not as
root) signal and ptrace our processes (and take their files with pidfd_getfd), escape
the process group and the memory watch with setsid() and a double fork, and leave SysV
IPC objects that we can't tell from our own. We warn once when we fall back.
WMTP_SANDBOX=bwrap makes the fallback an error (use it for real evaluation),
WMTP_SANDBOX=rlimits forces it (tests).

The memory watch is not a hard limit: between two polls a run can touch what its
processes can allocate in 0.1 s (each still under RLIMIT_AS). cgroup v2's memory.max
would be exact, but needs a delegated memory controller, which these machines (cgroup
v1 holds it) and most containers do not give; under bwrap, SysV segments no process has
attached live in the program's IPC namespace, where we can't count them (they die with it).

Residual risks of the pass/fail check, written against our checker: the program shares
its process with the proof, so it can dig the nonce out (the closure of _with_proof, the
harness's frames when batched) and write it itself; `assert f(x) == y` is passed by a
returned object whose __eq__ is always True; and sys.settrace can jump over a wrong
solution's assert lines (frame.f_lineno) when a line follows them. Only a process
boundary between program and tests closes the first, only type-checked comparisons run
outside the program's interpreter the other two. tests/test_sandbox.py shows each of
them passing.

Needs util-linux (prlimit, setpriv, ipcrm) and procps (kill); for isolation, bubblewrap:
    apt-get install -y bubblewrap

Usage:
    run_program("print(1 + 1)")     # ExecResult(status='passed', stdout='2\\n', ...)
    check_python(prompt + completion + tests)   # True iff it ran to its end with exit code 0
    python sandbox.py               # programs/s on this machine
"""
import ast
import dataclasses
import fcntl
import math
import re
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed

# the child's whole environment: nothing of ours (API keys, tokens) leaks into it
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# throwaway uids, one per concurrent run, from a range no account or subuid map uses;
# claimed with flock so that runs in other processes (other DDP ranks) never share one
UID_BASE, N_UIDS = 1_900_000_000, 4096
UID_LOCK_DIR = os.path.join(tempfile.gettempdir(), "wmtp-sandbox-uids")
TMPFS_MB = 64         # bwrap: size of the program's only writable place (host RAM)
FLOOD_FACTOR = 4      # kill a program once it has written this many times the output cap
EXIT_GRACE_S = 0.05   # how long to drain pipes still held open after the program exited
MEMORY_POLL_S = 0.1   # how often the run's memory is summed (see _memory_held: ~3 ms)
SENTINEL = "__WMTP_ALL_TESTS_PASSED__"


@dataclasses.dataclass
class ExecResult:
    status: str              # 'passed' exit 0 | 'failed' nonzero exit or killed for flooding
                             # | 'timeout' wall clock | 'error' the sandbox failed, not the program
    returncode: int | None   # -N when killed by signal N (under bwrap: 128 + N)
    stdout: str              # at most max_output_bytes (UTF-8, undecodable bytes replaced)
    stderr: str              # the same, plus a '[sandbox] ...' line when we killed it
    elapsed: float           # seconds, start to exit (or kill)
    isolation: str           # 'bwrap' or 'rlimits'
    truncated: bool = False  # stdout or stderr hit the cap
    proof: bytes = b""       # check_many: what the program wrote on its proof pipe


@dataclasses.dataclass(frozen=True)
class Setup:
    python: str              # the interpreter that runs programs
    version: str
    root: bool               # drop to a throwaway uid per run
    bwrap: bool
    binds: tuple = ()        # bwrap mounts for /usr and the interpreter's prefix

    @property
    def isolation(self):
        return "bwrap" if self.bwrap else "rlimits"


# ---- one program -------------------------------------------------------------------------
def run_program(source: str, *, stdin: str = "", timeout: float = 5.0, memory_mb: int = 1024,
                max_output_bytes: int = 1_000_000, max_procs: int = 64) -> ExecResult:
    """Run `source` as a Python program in a fresh sandboxed child process.
    max_procs counts every process and thread of the run, bwrap's own 3 included."""
    return _run(setup(), source, stdin, timeout, memory_mb, max_output_bytes, max_procs)


def _run(s, source, stdin, timeout, memory_mb, max_output_bytes, max_procs, harness=False,
         proof=False):
    """harness: `source` is _HARNESS, which forks each program it runs (see check_many).
    proof: give the program a pipe of its own, its fd number first on stdin (_with_proof)."""
    t0 = time.monotonic()
    uid, lock = _claim_uid() if s.root else (None, None)
    workdir = tempfile.mkdtemp(prefix="wmtp-sandbox-")
    proof_r, proof_w = os.pipe() if proof else (None, None)  # not inherited but by pass_fds
    try:
        if proof:
            stdin = f"{proof_w} {stdin}"
        main = os.path.join(workdir, "main.py")
        with open(main, "w") as f:
            f.write(source)
        if s.bwrap:
            os.chmod(workdir, 0o755)  # bwrap runs as the run uid and binds main.py from here
        elif uid is not None:
            os.chown(workdir, uid, uid)  # rlimits: the program's own writable directory
        cmd = _command(s, uid, main, timeout, memory_mb, max_output_bytes, max_procs, harness)
        try:
            # no preexec_fn (all limits are set by prlimit/setpriv after exec): CPython can
            # then spawn with vfork, which stays cheap when we are a multi-GB training
            # process, and nothing unsafe runs between fork and exec in a threaded parent
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=workdir, env=ENV,
                                    start_new_session=True, pass_fds=(proof_w,) if proof else ())
        except OSError as e:
            return ExecResult("error", None, "", f"[sandbox] could not start: {e}",
                              time.monotonic() - t0, s.isolation)
        deadline = t0 + timeout
        held = lambda: _memory_held(proc.pid, uid)  # noqa: E731
        out, err, truncated, why = _communicate(proc, stdin.encode(), deadline, max_output_bytes,
                                                held, memory_mb << 20)
        elapsed = time.monotonic() - t0
        # kill whatever is left (background children, setsid() escapees) before reaping
        # the main process, so that its pid and process group id can't be reused meanwhile.
        # Under bwrap a normal exit needs no sweep: the pid namespace died with the program.
        _kill(proc, uid, sweep=uid is not None and (why is not None or not s.bwrap))
        returncode = proc.wait()
        if why == "timeout":
            err += f"\n[sandbox] killed after {timeout}s wall time"
        elif why == "flood":
            err += f"\n[sandbox] killed: over {FLOOD_FACTOR} x {max_output_bytes} bytes of output"
        elif why == "memory":
            err += f"\n[sandbox] killed: the run held over memory_mb={memory_mb} MB"
        status = "timeout" if why == "timeout" else \
                 "passed" if returncode == 0 and why is None else "failed"
        if s.bwrap and returncode == 1 and err.startswith("bwrap: "):
            status = "error"  # bwrap could not set the sandbox up; the program never ran
        proved = b""
        if proof:
            os.close(proof_w)  # so that a read ends once the run's copies are closed
            proof_w = None
            os.set_blocking(proof_r, False)
            try:
                proved = os.read(proof_r, 4096)
            except BlockingIOError:
                pass
        return ExecResult(status, returncode, out, err, elapsed, s.isolation, truncated, proved)
    finally:
        for fd in (proof_r, proof_w):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        if lock is not None:
            os.close(lock)  # releases the uid


def _command(s, uid, main, timeout, memory_mb, max_output_bytes, max_procs, harness):
    cmd, argv = [], []
    if harness and uid is not None and not s.bwrap:
        # rlimits as root: the harness stays root and each program it forks drops to the
        # run uid, which then can neither signal the harness nor take its file descriptors
        argv, nproc = [str(uid)], max_procs  # root is exempt; the programs are not
    elif uid is not None:
        # root is exempt from RLIMIT_NPROC and from file permissions; the throwaway uid is
        # not, and it can signal no process but its own (so not us: os.kill(os.getppid()))
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--no-new-privs", "--"]
        nproc = max_procs
    else:
        # RLIMIT_NPROC counts all processes and threads of our uid, ours included
        nproc = _user_tasks(os.getuid()) + max_procs
    cpu = math.ceil(timeout) + 1  # SIGXCPU at the soft limit, SIGKILL a second later
    cmd += ["prlimit", f"--as={memory_mb << 20}", f"--cpu={cpu}:{cpu + 1}", f"--nproc={nproc}",
            f"--fsize={max_output_bytes}", "--core=0", "--"]
    if s.bwrap:
        cmd += ["bwrap",
                "--unshare-all", "--unshare-user", "--disable-userns",  # no net; own pid ns
                "--die-with-parent", "--new-session",
                # the harness as the namespace's init: no process inside can kill it
                *(["--as-pid-1"] if harness else []),
                "--size", str(TMPFS_MB << 20), "--tmpfs", "/tmp",  # first: binds may be under it
                *s.binds,
                "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                "--ro-bind", main, "/tmp/main.py",
                "--remount-ro", "/", "--chdir", "/tmp", "--"]
        main = "/tmp/main.py"
    return cmd + [s.python, "-I", "-S", main, *argv]


def _communicate(proc, stdin, deadline, cap, held, budget):
    """Feed stdin, read stdout/stderr (keeping at most `cap` bytes of each) until both
    close or the deadline, checking every MEMORY_POLL_S that held() <= budget bytes.
    Returns (stdout, stderr, truncated, why) with why in {None, 'timeout', 'flood',
    'memory'}."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    if stdin:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    stdin = memoryview(stdin)
    seen, truncated, why, drain_until = 0, False, None, None
    # the first check after MEMORY_POLL_S: most programs are done by then and cost nothing
    next_poll = time.monotonic() + MEMORY_POLL_S
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            why = "timeout"
            break
        if now >= next_poll:
            if held() > budget:
                why = "memory"
                break
            next_poll = now + MEMORY_POLL_S
        if drain_until is None and _exited(proc.pid):
            # the program is done and all it wrote is in the pipes; whatever still holds
            # them open is a leftover (a daemon) and gets killed after we stop reading
            drain_until = now + EXIT_GRACE_S
        if drain_until is not None and now >= drain_until:
            break
        for key, _ in sel.select(max(min(deadline, next_poll) - now, 0)):
            f = key.fileobj
            if f is proc.stdin:
                try:
                    stdin = stdin[os.write(f.fileno(), stdin[:65536]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # it closed its stdin: the rest is not wanted
                    stdin = stdin[:0]
                if not stdin:
                    sel.unregister(f)
                    f.close()
                continue
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                sel.unregister(f)
                continue
            seen += len(chunk)
            room = cap - len(bufs[f])
            truncated |= len(chunk) > room
            bufs[f] += chunk[:max(room, 0)]
        if seen > FLOOD_FACTOR * cap:
            why = "flood"
            break
    sel.close()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
    out, err = (bytes(b).decode("utf-8", errors="replace") for b in bufs.values())
    return out, err, truncated, why


def _exited(pid):
    # WNOWAIT leaves the zombie unreaped, which keeps its pid and process group id ours
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill(proc, uid, sweep):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group is the program's
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None and sweep:
        # kill(-1) as the run uid reaches every process of that uid, wherever it has moved
        # (setsid, a double fork), and the kernel walks the process list atomically, so a
        # fork bomb can't outrun it. Under bwrap the pid namespace dies with bwrap anyway.
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                        "kill", "-KILL", "-1"],  # the one spelling procps and util-linux share
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        _remove_ipc(uid)


def _memory_held(pid, uid):
    """Bytes the run of main process `pid` (and run uid `uid`, as root) holds now.

    One budget for the whole run, not RLIMIT_AS's one per process (three children of
    one program held 100 MB each under memory_mb=128). cgroup v2's memory.max would be
    exact, but needs a delegated memory controller, which neither these machines (cgroup
    v1 for memory) nor most containers have; so we watch: every MEMORY_POLL_S, the sum
    over the run's processes of their proportional set size (a page shared by n
    processes, as after fork, counts 1/n in each: summing RSS would count the
    interpreter once per child), plus its uid's SysV shared memory that no process has
    attached. The run's processes: the descendants of `pid` (under bwrap, all of them:
    orphans go to its init) and, as root, every process of the run uid (a double fork
    with setsid leaves the tree, never the uid). Between two polls a program can go
    over by what it touches in MEMORY_POLL_S; each process still has RLIMIT_AS.
    """
    children, run = {}, {pid}
    for p in os.listdir("/proc"):
        status = _read_proc(p, "status") if p.isdigit() else None
        if status is None:
            continue
        ppid, real_uid = (int(_field(status, name).split()[0]) for name in (b"PPid", b"Uid"))
        children.setdefault(ppid, []).append(int(p))
        if real_uid == uid:
            run.add(int(p))
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        run.update(kids)
        todo += kids
    total = 0
    for p in run:
        # Pss needs ptrace-read access (not to our non-dumpable harness as a normal
        # user); VmRSS, an over-count, is world-readable
        rollup = _read_proc(p, "smaps_rollup")
        status = _read_proc(p, "status") if rollup is None else None
        if rollup is not None and b"\nPss:" in rollup:
            total += int(_field(rollup, b"Pss").split()[0]) << 10
        elif status is not None and b"\nVmRSS:" in status:  # not in a zombie's
            total += int(_field(status, b"VmRSS").split()[0]) << 10
    if uid is not None:
        total += sum(int(row["rss"]) for row in _ipc_objects("shm", uid) if row["nattch"] == "0")
    return total


def _read_proc(pid, name):
    """/proc/<pid>/<name>, or None if it is gone. os.open, not open(): a scan of /proc
    reads hundreds of these, and the file object costs as much as the read."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def _field(text, name):
    """The value of the line 'name: value' in a /proc file's bytes."""
    i = text.index(b"\n" + name + b":") + len(name) + 2
    return text[i:text.index(b"\n", i)]


def _ipc_objects(kind, uid):
    """SysV IPC objects of `kind` (shm, sem, msg) in our IPC namespace that `uid` owns
    or created (the owner can be changed, the creator can't), as dicts of their columns."""
    with open(f"/proc/sysvipc/{kind}") as f:
        header, *rows = [line.split() for line in f]
    rows = [dict(zip(header, row)) for row in rows]
    return [row for row in rows if str(uid) in (row["uid"], row["cuid"])]


def _remove_ipc(uid):
    """Remove what SysV IPC the run uid left: segments, semaphores and queues outlive
    their creator (rlimits as root: 4 x 16 MB of shm were seen). Under bwrap the
    program's IPC namespace dies with it."""
    args = []
    for kind, flag in (("shm", "-m"), ("sem", "-s"), ("msg", "-q")):
        for row in _ipc_objects(kind, uid):
            args += [flag, list(row.values())[1]]  # the second column: shmid, semid or msqid
    if args:
        subprocess.run(["ipcrm", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=ENV)


def _claim_uid():
    """A uid no other run holds, and its lock (close it to release the uid)."""
    os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
    start = secrets.randbelow(N_UIDS)
    for i in range(N_UIDS):
        uid = UID_BASE + (start + i) % N_UIDS
        fd = os.open(os.path.join(UID_LOCK_DIR, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"sandbox: all {N_UIDS} run uids are busy")


def _user_tasks(uid):
    """Processes + threads of `uid` now (what RLIMIT_NPROC counts)."""
    n = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        if int(fields["Uid"].split()[0]) == uid:
            n += int(fields["Threads"])
    return n


# ---- setup: probed once per process ---------------------------------------------------------
_setup_lock = threading.Lock()
_setups = {}


def setup():
    """The interpreter and isolation in use (WMTP_SANDBOX = auto | bwrap | rlimits)."""
    mode = os.environ.get("WMTP_SANDBOX", "auto")
    if mode not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"WMTP_SANDBOX={mode!r}: expected auto, bwrap or rlimits")
    with _setup_lock:
        if mode not in _setups:
            _setups[mode] = _probe(mode)
        return _setups[mode]


def _probe(mode):
    root = os.geteuid() == 0
    for tool in ["prlimit"] + (["setpriv", "kill", "ipcrm"] if root else []):
        if shutil.which(tool, path=ENV["PATH"]) is None:
            raise RuntimeError(f"sandbox: `{tool}` not found in {ENV['PATH']}; "
                               f"apt-get install -y util-linux procps")
    # our interpreter if the run uid can execute it (a pyenv under /root it cannot)
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    show = "import sys; print(sys.version.split()[0], sys.prefix, sys.base_prefix, sep='\\n')"
    for python in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        s = Setup(python, "", root, bwrap=False)
        r = _run(s, show, "", 10.0, 1024, 10_000, 64)
        if r.status == "passed":
            version, *prefixes = r.stdout.split()
            break
    else:
        raise RuntimeError(f"sandbox: no Python the run user can execute among {candidates}: "
                           f"{r.stderr.strip()[-300:]}")
    binds = ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            binds += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            binds += ["--ro-bind", d, d]
    for p in dict.fromkeys(prefixes + [os.path.dirname(os.path.dirname(python))]):
        if p != "/usr" and not p.startswith("/usr/"):
            binds += ["--ro-bind", p, p]  # a venv, conda or pyenv outside /usr
    s = Setup(python, version, root, bwrap=False, binds=tuple(binds))
    if mode == "rlimits":
        return s
    why = "is not installed (apt-get install -y bubblewrap)"
    if shutil.which("bwrap", path=ENV["PATH"]):
        r = _run(dataclasses.replace(s, bwrap=True), "print('ok')", "", 10.0, 1024, 10_000, 64)
        if r.status == "passed" and r.stdout == "ok\n":
            return dataclasses.replace(s, bwrap=True)
        why = f"does not work here ({r.stderr.strip()[-300:] or r.status})"
    if mode == "bwrap":
        raise RuntimeError(f"sandbox: WMTP_SANDBOX=bwrap but bubblewrap {why}")
    warnings.warn(f"sandbox: bubblewrap {why}; running programs under rlimits only: no "
                  f"network or filesystem isolation (see sandbox.py). "
                  f"WMTP_SANDBOX=bwrap makes this an error.", RuntimeWarning, stacklevel=3)
    return s


# ---- many programs, and the pass/fail check ------------------------------------------------
def run_many(sources: list[str], *, workers: int | None = None, progress: bool | str = False,
             **kw) -> list[ExecResult]:
    """run_program over `sources` in parallel; results in the order of `sources`. Threads
    only wait on child processes, so one program's crash, hang or flood touches no other.
    progress: a tqdm bar (True, or the bar's description)."""
    s = setup()  # probe before starting threads
    desc = progress and (progress if isinstance(progress, str) else f"sandbox ({s.isolation})")
    return _map(lambda src: run_program(src, **kw), sources, workers, desc)


def _with_proof(program):
    """`program` that writes the nonce on its proof pipe when it reaches its end: the
    first line reads 'fd nonce' from stdin, before the program's own code runs, into a
    closure together with os.write; the last line writes it. The same residual risk as
    with_sentinel (a program written against this can dig the nonce out of the closure).
    The first line goes after a leading docstring and `from __future__` imports, which
    must come first (as batched, where the program is compiled as it is)."""
    head = ('__wmtp_done = (lambda fd, nonce, write: lambda: write(int(fd), nonce.encode()))'
            '(*__import__("sys").stdin.readline().split(), __import__("os").write)\n')
    # splitlines ends a line wherever the parser does (\n, \r\n, \r) and at a few more
    # characters (\f, \u2028, ...): at worst the head lands early, and the program fails
    lines = program.splitlines(keepends=True)
    at = _future_end(program)
    return "".join(lines[:at]) + head + "".join(lines[at:]) + "\n__wmtp_done()\n"


def _future_end(program):
    """Lines taken by a leading docstring and `from __future__` imports, 0 if none (or if
    another statement shares their last line: it would run before the nonce is read)."""
    try:
        body = ast.parse(program).body
    except (SyntaxError, ValueError):
        return 0  # it fails to compile anyway
    end = 0
    for i, node in enumerate(body):
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if not (future or docstring):
            return end if node.lineno > end else 0
        end = node.end_lineno
    return end


def with_sentinel(program: str) -> str:
    """`program` wrapped so that it proves it ran to its end on stdout (for run_program's
    callers; check_many proves it on a pipe of its own instead, see _HARNESS).

    Exit code 0 alone can be had by sys.exit(0) or os._exit(0) before the asserts. So the
    first line reads a per-call random nonce from stdin, before the program's own code
    runs, into a closure together with os.write; the last line writes it. A program that
    exits early, shadows print or sys.stdout, or prints the sentinel text itself never
    shows the nonce. Residual risks: those of check_many (see the module docstring), and
    output past max_output_bytes cuts the proof off with stdout. Costs: tracebacks are
    one line off, and a program that starts with `from __future__ import` is a
    SyntaxError (scored failed).
    """
    head = ('__wmtp_done = (lambda line, write: lambda: write(1, line))'
            f'(("\\n{SENTINEL} " + __import__("sys").stdin.readline().strip() + "\\n").encode(),'
            ' __import__("os").write)\n')
    return head + program + "\n__wmtp_done()\n"


def check_many(programs: list[str], *, batch: int = 1, timeout: float = 5.0,
               workers: int | None = None, progress: bool = False, **kw) -> list[bool]:
    """True for each program that exits 0 *and* reaches its last line.

    Either way the program proves that it reached its end by writing a nonce on a pipe
    of its own, not on stdout, so output past max_output_bytes can't cut the proof off.
    batch=1: every program in a sandbox of its own (use this for model outputs), as its
    main process (see _with_proof).
    batch>1: `batch` programs share one sandbox, one after the other, each in a process
    forked from a small harness (_HARNESS) that has run no program code and reports on a
    stdout no program can reach: ~8x faster where interpreter start-up dominates (25 ms a
    program here). A program's crash, hang or
    memory bomb still stays in its own process and is killed with everything it started;
    what the programs of a batch share is the sandbox (its uid, pid namespace, /tmp and
    memory budget), so one that leaves a file behind could disturb a later one. A batch
    whose verdict does not come back whole (a program killed its harness, or
    the verdict is truncated or malformed) is rerun with batch=1. `timeout` is per
    program either way; **kw go to run_program (memory_mb, max_output_bytes, max_procs).
    """
    s = setup()
    if batch == 1:
        nonce = secrets.token_hex(16)
        results = _map(lambda p: _run(s, _with_proof(p), nonce + "\n", timeout, **_limits(**kw),
                                      proof=True),
                       programs, workers, progress and f"sandbox ({s.isolation})")
        return [r.status == "passed" and r.proof == nonce.encode() for r in results]
    chunks = [programs[i:i + batch] for i in range(0, len(programs), batch)]
    # wall time for a whole batch: each program has `timeout`, the harness a little more
    wall = timeout * batch + 5
    desc = progress and f"sandbox ({s.isolation}, {batch} programs a run)"
    runs = _map(lambda chunk: _run_harness(s, chunk, timeout, wall, **kw), chunks, workers, desc)
    passed, redo = [], []
    for chunk, r in zip(chunks, runs):
        got = _verdict(r, len(chunk))
        if got is None:
            got = [None] * len(chunk)
            redo += chunk
        passed += got
    if redo:
        again = iter(check_many(redo, timeout=timeout, workers=workers, **kw))
        passed = [next(again) if p is None else p for p in passed]
    return passed


def _run_harness(s, programs, timeout, wall, **kw):
    source = _HARNESS.format(programs=programs, timeout=timeout,
                             sweep=s.bwrap or s.root)  # kill(-1) as our real uid would kill us
    return _run(s, source, "", wall, **_limits(**kw), harness=True)


def _limits(memory_mb=1024, max_output_bytes=1_000_000, max_procs=64):
    """run_program's limits from check_many's **kw, with run_program's defaults."""
    return dict(memory_mb=memory_mb, max_output_bytes=max_output_bytes, max_procs=max_procs)


def _verdict(r, n):
    """The harness's n verdicts ('1' passed, '0' failed, one line), or None if they did
    not come back whole: a truncated stdout could end in anything a program wrote."""
    if r.status != "passed" or r.truncated or not re.fullmatch(f"[01]{{{n}}}\n", r.stdout):
        return None
    return [c == "1" for c in r.stdout[:n]]


# Runs inside the sandbox (`python -I -S main.py [uid]`). Each program gets a fresh fork
# of this harness, with stdio on /dev/null and its own process group; it proves it ran to
# its end by writing a per-program nonce on a pipe only the harness reads (the residual
# risk of with_sentinel: code written against this checker can dig the nonce out of its
# own process, e.g. from the frame that called exec). The harness itself is out of the
# programs' reach: not dumpable (no ptrace, /proc/<pid>/mem or pidfd_getfd(2) on it, so
# no program can write on its stdout), and it can't be killed by them: under bwrap it is
# the pid namespace's init (--as-pid-1), in rlimits mode as root it stays root and each
# program drops to the run uid. After each program everything it started is killed: its
# group, and with SWEEP (our own pid namespace, or a throwaway uid, never our real uid)
# kill(-1) as the programs' uid, i.e. every process of the run but the harness.
_HARNESS = """\
import ctypes, os, select, sys
PROGRAMS, TIMEOUT, SWEEP = {programs!r}, {timeout!r}, {sweep!r}
UID = int(sys.argv[1]) if len(sys.argv) > 1 else None  # rlimits as root: drop to it
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, SIGKILL = 4, 38, 9  # no `signal`: it imports enum
libc = ctypes.CDLL(None, use_errno=True)


def prctl(option, value):
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def as_programs():  # in a fork: become what the programs are
    if UID is not None:
        os.setgroups([])
        os.setresgid(UID, UID, UID)
        os.setresuid(UID, UID, UID)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 1)  # a uid change (and fork from us) left it undumpable


def run(src):
    nonce = os.urandom(16)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            as_programs()
            exec(compile(src, "main.py", "exec"), {{"__name__": "__main__"}})
            os.write(w, nonce)
        finally:
            os._exit(0)
    os.close(w)
    pidfd = os.pidfd_open(pid)
    select.select([pidfd], [], [], TIMEOUT)
    os.close(pidfd)
    for kill, target in ((os.killpg, pid), (os.kill, pid)):  # it may have left its group
        try:
            kill(target, SIGKILL)
        except OSError:
            pass
    if SWEEP and UID is None:  # bwrap: kill(-1) spares the caller, here the namespace's init
        os.kill(-1, SIGKILL)
    elif SWEEP:  # as root: the run uid for a moment (its saved uid 0 lets us back)
        os.setresuid(UID, UID, 0)
        try:
            os.kill(-1, SIGKILL)
        finally:
            os.setresuid(0, 0, 0)
    while True:  # reap the program and (as init) every orphan
        try:
            os.wait()
        except ChildProcessError:
            break
    os.set_blocking(r, False)
    try:
        proof = os.read(r, len(nonce) + 1)
    except BlockingIOError:
        proof = b""
    os.close(r)
    return proof == nonce


prctl(PR_SET_DUMPABLE, 0)
print("".join("1" if run(src) else "0" for src in PROGRAMS))  # no json: its import costs 5 ms
"""


def _map(fn, items, workers, progress):
    """[fn(item)] in parallel, in the order of `items`; progress: a tqdm bar's description."""
    workers = workers or os.cpu_count() or 1
    results = [None] * len(items)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc=progress, unit="run")
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if bar:
                bar.update()
    if bar:
        bar.close()
    return results


def check_python(program: str, timeout: float = 5.0, **kw) -> bool:
    """Did `program` (a solution followed by its asserts) run to its end with exit code 0?"""
    return check_many([program], timeout=timeout, **kw)[0]


if __name__ == "__main__":
    # a benchmark, not a test: how many trivial programs per second this machine sandboxes
    s = setup()
    print(f"isolation={s.isolation} python={s.python} ({s.version}) root={s.root}")
    n = 200
    for workers in (1, os.cpu_count(), 2 * os.cpu_count()):
        t0 = time.time()
        results = run_many(["print(sum(range(10)))"] * n, workers=workers)
        dt = time.time() - t0
        assert all(r.status == "passed" and r.stdout == "45\n" for r in results), results[0]
        print(f"run_many, workers={workers}: {n / dt:.1f} programs/s ({1000 * dt / n:.1f} ms each)")
    n = 1000
    t0 = time.time()
    assert all(check_many(["assert sum(range(10)) == 45"] * n, batch=64))
    print(f"check_many, batch=64, workers={os.cpu_count()}: {n / (time.time() - t0):.1f} programs/s")
