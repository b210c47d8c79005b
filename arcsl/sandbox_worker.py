"""The sandbox worker: one process that runs untrusted programs, one job at a time.

`arcsl.sandbox.SandboxPool` starts it as a fresh interpreter,
`python sandbox_worker.py JOB_FD REPLY_FD SETTINGS_JSON`, never as a fork of the parent. It
imports only the stdlib, numpy and whatever the DSL module imports (scipy), and never `arcsl`.
sandbox.py describes the whole design and what it does and does not protect against.

One job:
1. Receive (job id, program, input grids).
2. Compile the program and exec it in a fresh namespace: restricted builtins (no `open`, `exec`,
   `eval`, `compile`, `input`, and `__import__` refuses `BANNED_MODULES`), with a freshly executed
   DSL module in `sys.modules` (`common`, or whatever the DSL file is called).
3. Call `transform` (else `main`) on an int64 copy of each input, seeding `random` and
   `numpy.random` with 0 before each call; validate each output.
4. Undo what the program may have changed in this process (module attributes it rebound, numpy
   error state, warnings filters, stdio, cwd), so that the next job starts clean. This runs while
   the job's timer is still armed, so a hostile `__del__` costs its own job, not the next one.
5. Reply. A program that left threads or child processes running gets FORBIDDEN, and the worker
   exits so that the pool replaces it.

Frames, both ways: `<II` (header length, blob length), header, blob.
- parent -> worker: header = pickle of (job_id, program, inputs). The parent is trusted.
- worker -> parent: header = JSON, blob = output grids as uint8 bytes, row-major. JSON and raw
  bytes, not pickle: a program that escapes the Python-level checks controls this process, and
  unpickling its bytes would run its code in the parent.
"""

import _thread
import builtins
import enum
import gc
import json
import operator
import os
import pickle
import random
import resource
import signal
import struct
import sys
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from signal import ITIMER_REAL, setitimer

import numpy as np

ENTRY_POINTS = ("transform", "main")  # BARC-model programs define transform; older seeds, main

# Modules a program may not import: the list, then others that reach the OS, processes,
# files or the interpreter's internals directly. Checked on the top-level name at import time.
BANNED_MODULES = frozenset({
    "os", "sys", "subprocess", "socket", "shutil", "ctypes", "multiprocessing", "threading",
    "_thread", "posix", "_posixsubprocess", "signal", "resource", "importlib", "builtins",
    "io", "_io", "pathlib", "tempfile", "glob", "fcntl", "mmap", "pty", "select", "selectors",
    "_socket", "ssl", "asyncio", "concurrent", "urllib", "http", "gc", "inspect", "pickle",
    "_pickle", "marshal", "code", "runpy", "faulthandler", "atexit", "pdb", "platform",
})
BANNED_BUILTINS = ("open", "exec", "eval", "compile", "input", "breakpoint", "help", "exit", "quit")

# Modules whose attributes are put back after every job if a program rebinds or deletes them
# (`np.zeros = None`): the shared modules a program reaches without escaping the ban, plus the
# real builtins. In-place mutation of the objects they hold is not undone. Modules only an
# escaped program reaches (os, sys...) are not listed: such a program can tamper with this
# worker in endless other ways, which is why the OS-level measures exist.
GUARDED_MODULES = (
    "builtins", "time", "warnings", "random", "math", "itertools", "functools", "collections",
    "operator", "copy", "heapq", "typing", "re", "numpy", "numpy.random", "numpy.random.mtrand",
    "numpy.linalg", "scipy", "scipy.ndimage",
)
# Imported at startup so that no program pays for them: what programs import themselves, and
# scipy.ndimage, which the DSL imports on first use (~0.2 s).
PRELOADED_MODULES = ("typing", "math", "itertools", "functools", "collections", "copy", "heapq", "re", "scipy.ndimage")

_ALARM_REPEAT_S = 0.25  # after the soft deadline, re-check every so often that the pool is alive
_MAX_MESSAGE_CHARS = 300


class ErrorKind(enum.StrEnum):
    """Why a job produced no outputs. Defined here because the worker cannot import arcsl."""

    NO_CODE = "no_code"                      # no program text (nothing extracted)
    SYNTAX_ERROR = "syntax_error"            # the program does not compile
    NO_ENTRY_POINT = "no_entry_point"        # compiles, but defines neither transform nor main
    EXCEPTION = "exception"                  # raised; message = "Type: last line"
    FORBIDDEN = "forbidden"                  # banned import/builtin, or left threads/processes
    TIMEOUT = "timeout"                      # exceeded the wall-clock limit
    MEMORY_LIMIT = "memory_limit"            # MemoryError under the address-space cap
    INVALID_OUTPUT = "invalid_output"        # not a 2-D array of 0..9 with sides in 1..max_side
    WORKER_CRASHED = "worker_crashed"        # the worker process died or replied garbage
    NON_DETERMINISTIC = "non_deterministic"  # two runs gave different outputs (check_determinism)


class Forbidden(ImportError):
    """A banned import or builtin. An ImportError, so `try: import os / except ImportError` works."""


class _Timeout(BaseException):
    """Raised by the soft timer. A BaseException, so `except Exception` in a program cannot catch it."""


class _NoEntryPoint(Exception):
    pass


class _InvalidOutput(Exception):
    pass


class _Discard:
    """stdout/stderr for programs: output is never read, so never pay to move it anywhere."""

    __slots__ = ()  # nothing a program sets on sys.stdout can outlive its job

    def write(self, text):
        return len(text)

    def writelines(self, lines):
        pass

    def flush(self):
        pass

    def close(self):  # a program that closes stdout must not break the next one
        pass

    def isatty(self):
        return False


_DISCARD = _Discard()


@dataclass(frozen=True, slots=True)
class _Outcome:
    error: ErrorKind | None
    message: str = ""
    outputs: list[np.ndarray] | None = None  # uint8 grids, one per input, when error is None


@dataclass(slots=True)
class _Snapshot:
    """A module's attribute dict as it was at startup, and its current order of values."""

    namespace: dict
    original: dict
    values: tuple = ()

    def __post_init__(self):
        self.values = tuple(self.namespace.values())


@dataclass(slots=True)
class _Timer:
    """What the SIGALRM handler needs; module-level because signal handlers take no arguments."""

    parent_pid: int = 0
    is_armed: bool = False
    is_timed_out: bool = False


_TIMER = _Timer()


@dataclass(slots=True)
class _Context:
    """Everything the worker prepares once and reuses for every job."""

    budget_s: float
    max_side: int
    check_determinism: bool
    scratch_dir: str
    devnull_fd: int
    dsl_code: types.CodeType | None
    dsl_path: str | None
    safe_builtins: dict
    snapshots: list = field(default_factory=list)
    np_err: dict = field(default_factory=dict)
    np_print: dict = field(default_factory=dict)
    warning_filters: list = field(default_factory=list)
    recursion_limit: int = 1000
    num_threads: int = 1  # at startup; a BLAS library may keep its own
    is_syscall_filtered: bool = False


# --- running one job ---------------------------------------------------------------------------


def _serve(ctx: _Context, program: str, inputs: list) -> tuple[_Outcome, float, bool]:
    """Run one job under the soft timer; return (outcome, seconds, whether to retire this worker)."""
    _TIMER.is_armed, _TIMER.is_timed_out = True, False
    setitimer(ITIMER_REAL, ctx.budget_s, _ALARM_REPEAT_S)
    outcome, elapsed, retire = _Outcome(ErrorKind.TIMEOUT), 0.0, True
    started = time.perf_counter()
    try:
        outcome = _execute(ctx, program, inputs)
        elapsed = time.perf_counter() - started
        _reset_process(ctx)
        leftover = _leftover_activity(ctx.num_threads)
        retire = leftover is not None
        if retire:
            outcome = _Outcome(ErrorKind.FORBIDDEN, f"program left {leftover} running")
    except _Timeout:  # fired during cleanup: the process may be half restored, so retire it
        pass
    finally:
        _TIMER.is_armed = False
        setitimer(ITIMER_REAL, 0)
    if _TIMER.is_timed_out:  # also when the program caught _Timeout and returned something
        outcome = _Outcome(ErrorKind.TIMEOUT, f"exceeded {ctx.budget_s:g} s")
        elapsed = time.perf_counter() - started
    return outcome, elapsed, retire


def _execute(ctx: _Context, program: str, inputs: list) -> _Outcome:
    """Run the program on every input (twice when checking determinism)."""
    outcome = _attempt(ctx, program, inputs)
    if outcome.error is not None or not ctx.check_determinism:
        return outcome
    again = _attempt(ctx, program, inputs)
    if again.error in (ErrorKind.TIMEOUT, ErrorKind.MEMORY_LIMIT):
        return again
    if again.error is not None:
        return _Outcome(ErrorKind.NON_DETERMINISTIC, f"second run failed: {again.message}")
    for i, (a, b) in enumerate(zip(outcome.outputs, again.outputs)):
        if not np.array_equal(a, b):
            return _Outcome(ErrorKind.NON_DETERMINISTIC, f"output {i} differs between two runs")
    return outcome


def _attempt(ctx: _Context, program: str, inputs: list) -> _Outcome:
    """Compile and run the program once on every input; a failure is returned, never raised."""
    try:
        code = compile(program, "<program>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: the source contains null bytes
        return _Outcome(ErrorKind.SYNTAX_ERROR, _describe(e))
    try:
        return _Outcome(None, "", _call_on_each(ctx, code, inputs))
    except _Timeout:
        return _Outcome(ErrorKind.TIMEOUT, f"exceeded {ctx.budget_s:g} s")
    except Forbidden as e:
        return _Outcome(ErrorKind.FORBIDDEN, _describe(e))
    except MemoryError as e:
        return _Outcome(ErrorKind.MEMORY_LIMIT, _describe(e))
    except _NoEntryPoint:
        return _Outcome(ErrorKind.NO_ENTRY_POINT, f"defines none of {', '.join(ENTRY_POINTS)}")
    except _InvalidOutput as e:
        return _Outcome(ErrorKind.INVALID_OUTPUT, str(e))
    except BaseException as e:  # the program's own exception, SystemExit included
        return _Outcome(ErrorKind.EXCEPTION, _describe(e))


def _call_on_each(ctx: _Context, code: types.CodeType, inputs: list) -> list[np.ndarray]:
    namespace = _fresh_namespace(ctx)
    exec(code, namespace)
    entry_point = _entry_point(namespace)
    outputs = []
    for grid in inputs:
        _seed_random(0)
        _seed_numpy(0)
        # int64 because BARC programs expect it; a fresh copy because programs mutate their input
        outputs.append(_validated(entry_point(np.array(grid, dtype=np.int64)), ctx.max_side))
    return outputs


def _fresh_namespace(ctx: _Context) -> dict:
    """Globals for one program run, with a freshly executed `common` module behind the import."""
    _install_dsl(ctx.dsl_code, ctx.dsl_path)
    return {"__name__": "__program__", "__builtins__": dict(ctx.safe_builtins)}


def _install_dsl(code: types.CodeType | None, path: str | None) -> None:
    """Make the DSL importable under its file's name (`common` for common.py), freshly executed.

    Re-executing the compiled DSL gives every job its own Color class and palette lists; the
    modules the DSL imports (numpy, scipy) are shared and guarded instead (see GUARDED_MODULES)."""
    if code is None:
        sys.modules["common"] = None  # `import common` fails cleanly instead of searching sys.path
        return
    module = types.ModuleType(_dsl_name(path))
    module.__file__ = path
    sys.modules[module.__name__] = module  # before exec, as importlib does (dataclasses looks it up)
    exec(code, module.__dict__)


def _dsl_name(path: str | None) -> str:
    return "common" if path is None else os.path.splitext(os.path.basename(path))[0]


def _entry_point(namespace: dict):
    for name in ENTRY_POINTS:
        candidate = namespace.get(name)
        if callable(candidate):
            return candidate
    raise _NoEntryPoint


def _validated(output, max_side: int) -> np.ndarray:
    """The output as a uint8 grid, or _InvalidOutput. Accepts what BARC's harness accepts:
    an ndarray of ndim 2 whose cells are whole numbers in 0..9 (bool and 2.0 included)."""
    if not isinstance(output, np.ndarray):
        raise _InvalidOutput(f"expected a numpy array, got {type(output).__name__}")
    grid = np.asarray(output)  # a plain ndarray, whatever a subclass overrides
    if grid.ndim != 2 or not all(1 <= side <= max_side for side in grid.shape):
        raise _InvalidOutput(f"expected a 2-D grid with sides 1..{max_side}, got shape {grid.shape}")
    if grid.dtype.kind not in "biuf":
        raise _InvalidOutput(f"expected integer cells, got dtype {grid.dtype}")
    cells = grid.astype(np.int64)
    if grid.dtype.kind == "f" and not np.array_equal(cells, grid):
        raise _InvalidOutput("expected integer cells, got fractional or non-finite values")
    if cells.min() < 0 or cells.max() > 9:
        raise _InvalidOutput(f"expected cells in 0..9, got {cells.min()}..{cells.max()}")
    return cells.astype(np.uint8)


def _describe(error: BaseException) -> str:
    """'Type: last line of the message', as nanochat/execution.py reports errors."""
    name = type(error).__name__
    try:
        if isinstance(error, SyntaxError):
            text = f"{error.msg} (line {error.lineno})"
        else:
            lines = str(error).strip().splitlines()
            text = lines[-1] if lines else ""
    except Exception:  # a hostile __str__
        text = ""
    return (f"{name}: {text}" if text else name)[:_MAX_MESSAGE_CHARS]


# --- undoing what a program changed ----------------------------------------------------------------


def _reset_process(ctx: _Context) -> None:
    """Put back the process-wide state a program can change without escaping the sandbox."""
    sys.modules.pop(_dsl_name(ctx.dsl_path), None)  # drop the job's DSL now, so that its __del__s run now
    for snapshot in ctx.snapshots:
        if _is_changed(snapshot):
            _restore(snapshot)
    if np.geterr() != ctx.np_err:
        np.seterr(**ctx.np_err)
    if np.get_printoptions() != ctx.np_print:
        np.set_printoptions(**ctx.np_print)
    if warnings.filters != ctx.warning_filters:
        _ignore_warnings()
    if sys.getrecursionlimit() != ctx.recursion_limit:
        sys.setrecursionlimit(ctx.recursion_limit)
    sys.stdin = sys.stdout = sys.stderr = _DISCARD
    for fd in (0, 1, 2):  # a program that closed or redirected them (needs an escape) gets them back
        os.dup2(ctx.devnull_fd, fd)
    os.chdir(ctx.scratch_dir)
    gc.collect()  # cheap after gc.freeze(); runs cyclic garbage's __del__ inside this job's time


def _is_changed(snapshot: _Snapshot) -> bool:
    # Identity of values in order, at C speed (~40 us in all): never calls a program's __eq__.
    # A deleted or added key shifts the values, so it is caught too; renaming the very last
    # attribute while keeping its value is not, and is harmless.
    namespace = snapshot.namespace
    return len(namespace) != len(snapshot.values) or not all(map(operator.is_, namespace.values(), snapshot.values))


_MISSING = object()


def _restore(snapshot: _Snapshot) -> None:
    namespace, original = snapshot.namespace, snapshot.original
    for key in namespace.keys() - original.keys():
        del namespace[key]
    for key, value in original.items():
        if namespace.get(key, _MISSING) is not value:
            namespace[key] = value
    snapshot.__post_init__()  # a deleted and re-added key moved: remember the new order


def _leftover_activity(num_threads: int) -> str | None:
    """'a thread' or 'a child process' if the program left one running, else None."""
    if _num_threads() > num_threads:
        return "a thread"
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:  # reap children that already exited
            pass
    except ChildProcessError:
        return None
    return "a child process"


def _num_threads() -> int:
    try:  # the kernel's count: includes a thread that has been created but not yet run any Python
        return os.stat("/proc/self/task").st_nlink - 2
    except OSError:  # no procfs
        return _thread._count() + 1


def _ignore_warnings() -> None:
    # Warnings never change a result unless a filter turns them into errors; printing them costs.
    warnings.resetwarnings()
    warnings.simplefilter("ignore")


# --- startup ----------------------------------------------------------------------------------------


def _setup(settings: dict) -> _Context:
    """Import and compile everything once, then lock the process down."""
    _ignore_warnings()
    for name in PRELOADED_MODULES:
        __import__(name)
    dsl_path, dsl_code = settings["dsl_path"], None
    if dsl_path is not None:
        with open(dsl_path, encoding="utf-8") as f:
            dsl_code = compile(f.read(), dsl_path, "exec")
    _install_dsl(dsl_code, dsl_path)  # imports what the DSL imports, once
    sys.stdin = sys.stdout = sys.stderr = _DISCARD
    ctx = _Context(
        budget_s=settings["budget_s"],
        max_side=settings["max_side"],
        check_determinism=settings["check_determinism"],
        scratch_dir=os.getcwd(),
        devnull_fd=os.open(os.devnull, os.O_RDWR),  # opened before the syscall filter forbids it
        dsl_code=dsl_code,
        dsl_path=dsl_path,
        safe_builtins=_safe_builtins(),
        np_err=np.geterr(),
        np_print=np.get_printoptions(),
        warning_filters=list(warnings.filters),
        recursion_limit=sys.getrecursionlimit(),
        num_threads=_num_threads(),
    )
    ctx.snapshots = [_Snapshot(vars(m), dict(vars(m))) for m in map(sys.modules.get, GUARDED_MODULES) if m]
    _TIMER.parent_pid = os.getppid()
    signal.signal(signal.SIGALRM, _on_alarm)
    gc.freeze()  # everything so far lives forever: keep it out of every later collection
    _limit_resources(settings["memory_bytes"])
    if settings["filter_syscalls"]:
        ctx.is_syscall_filtered = _filter_syscalls()
    return ctx


def _safe_builtins() -> dict:
    safe = dict(vars(builtins))
    for name in BANNED_BUILTINS:
        safe[name] = _forbidden_builtin(name)
    safe["__import__"] = _guarded_import
    return safe


def _forbidden_builtin(name: str):
    def forbidden(*args, **kwargs):
        raise Forbidden(f"{name}() is not allowed in the sandbox")

    forbidden.__name__ = name
    return forbidden


_real_import = builtins.__import__


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition(".")[0] in BANNED_MODULES:
        raise Forbidden(f"import of {name!r} is not allowed in the sandbox")
    return _real_import(name, globals, locals, fromlist, level)


_seed_random = random.seed  # bound now, so that a program rebinding random.seed cannot skip it
_seed_numpy = np.random.seed


def _on_alarm(signum, frame) -> None:
    if os.getppid() != _TIMER.parent_pid:  # the pool is gone: nobody will read this result
        os._exit(1)
    if _TIMER.is_armed and not _TIMER.is_timed_out:
        _TIMER.is_timed_out = True
        raise _Timeout


def _limit_resources(memory_bytes: int) -> None:
    limits = {
        resource.RLIMIT_AS: memory_bytes,  # this fresh process's own address space, not the parent's
        resource.RLIMIT_FSIZE: 0,  # no bytes written to any regular file (Python ignores SIGXFSZ)
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: 0,  # no new processes or threads (not enforced for root)
    }
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


# --- the syscall filter (seccomp, Linux x86-64) --------------------------------------------------
# Syscalls that fail with EPERM once the filter is on. The worker needs none of them after startup.
_X86_64_DENIED = {
    "new processes and programs": (56, 57, 58, 59, 322),  # clone fork vfork execve execveat
    "signals to any process": (62, 200, 234, 129, 297, 424),  # kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal
    "other processes' memory and fds": (101, 310, 311, 438),  # ptrace process_vm_readv/writev pidfd_getfd
    "leaving the process group": (112, 109),  # setsid setpgid
    "network": (41, 53),  # socket socketpair
    "raising limits": (160,),  # setrlimit (prlimit64 is checked below: getrlimit uses it too)
    # creat unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir link linkat symlink
    # symlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat truncate ftruncate
    # mknod mknodat utime utimes utimensat futimesat (l,f)setxattr (l,f)removexattr open_by_handle_at
    "changing files": (
        85, 87, 263, 82, 264, 316, 83, 258, 84, 86, 265, 88, 266, 90, 91, 268, 452, 92, 93, 94,
        260, 76, 77, 133, 259, 132, 235, 280, 261, 188, 189, 190, 197, 198, 199, 304,
    ),
    # mount umount2 pivot_root chroot unshare setns reboot kexec_load kexec_file_load init_module
    # finit_module delete_module bpf perf_event_open open_tree move_mount fsopen fsconfig fsmount
    # fspick mount_setattr iopl ioperm; the dropped capabilities refuse most of these as well
    "administration": (
        165, 166, 155, 161, 272, 308, 169, 246, 320, 175, 313, 176, 321, 298, 428, 429, 430, 431,
        432, 433, 442, 172, 173,
    ),
    "io_uring, which would bypass this filter": (425, 426, 427),
}
_X86_64_NOSYS = (435, 437)  # clone3, openat2: ENOSYS makes libc fall back to clone / openat
_X86_64_OPEN, _X86_64_OPENAT, _X86_64_PRLIMIT64 = 2, 257, 302
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND


def _filter_syscalls() -> bool:
    """Drop capabilities and install the seccomp filter; False where unsupported or refused."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    # Capabilities first: a worker started by root keeps uid 0 but loses root's powers
    # (raising its limits, mounting, ignoring file permissions...).
    cap_header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    cap_data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all empty
    program = _seccomp_program()
    filters = (ctypes.c_uint64 * len(program))(*program)  # struct sock_filter is 8 bytes
    fprog = SockFprog(len(program), ctypes.addressof(filters))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    return (
        libc.capset(cap_header, cap_data) == 0
        and libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) == 0
        and libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) == 0
    )


def _seccomp_program() -> list[int]:
    """Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}, as u64 words."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    code = [  # (opcode, jump-if-true, jump-if-false, k); a jump is a label name, or 0 for "next"
        (ld, 0, 0, 4), (jeq, 0, "kill", 0xC000003E),  # arch must be x86-64 (no i386 int 0x80)
        (ld, 0, 0, 0), (jge, "kill", 0, 0x40000000),  # no x32 syscalls
        (jeq, "open", 0, _X86_64_OPEN), (jeq, "openat", 0, _X86_64_OPENAT),
        (jeq, "prlimit64", 0, _X86_64_PRLIMIT64),
    ]
    code += [(jeq, "enosys", 0, nr) for nr in _X86_64_NOSYS]
    code += [(jeq, "eperm", 0, nr) for group in _X86_64_DENIED.values() for nr in group]
    code += [(ret, 0, 0, allow)]
    blocks = {
        "open": [(ld, 0, 0, 24), (jset, "eperm", "allow", _WRITE_FLAGS)],  # flags = args[1]
        "openat": [(ld, 0, 0, 32), (jset, "eperm", "allow", _WRITE_FLAGS)],  # flags = args[2]
        "prlimit64": [(ld, 0, 0, 32), (jeq, 0, "eperm", 0), (ld, 0, 0, 36), (jeq, "allow", "eperm", 0)],  # new limit = NULL
        "allow": [(ret, 0, 0, allow)],
        "enosys": [(ret, 0, 0, enosys)],
        "eperm": [(ret, 0, 0, eperm)],
        "kill": [(ret, 0, 0, kill)],
    }
    where = {}
    for name, block in blocks.items():
        where[name] = len(code)
        code += block

    def offset(target, i):
        return 0 if target == 0 else where[target] - i - 1

    return [op | offset(jt, i) << 16 | offset(jf, i) << 24 | k << 32 for i, (op, jt, jf, k) in enumerate(code)]


# --- frames and the main loop ---------------------------------------------------------------------


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_job(fd: int) -> tuple | None:
    head = _read_exact(fd, 8)
    if head is None:
        return None
    header_len, blob_len = struct.unpack("<II", head)
    payload = _read_exact(fd, header_len + blob_len)
    return None if payload is None else pickle.loads(payload[:header_len])


def _write_frame(fd: int, header: dict, blob: bytes = b"") -> None:
    data = json.dumps(header).encode()
    view = memoryview(struct.pack("<II", len(data), len(blob)) + data + blob)
    while view:
        view = view[os.write(fd, view):]


def _reply(fd: int, job_id: int, outcome: _Outcome, elapsed: float, retire: bool) -> None:
    outputs = outcome.outputs or []
    header = {
        "kind": "result", "id": job_id, "error": outcome.error, "message": outcome.message,
        "elapsed_s": elapsed, "retire": retire,
        "shapes": None if outcome.outputs is None else [list(grid.shape) for grid in outputs],
    }
    _write_frame(fd, header, b"".join(grid.tobytes() for grid in outputs))


def main(argv: list[str]) -> int:
    job_fd, reply_fd, settings = int(argv[1]), int(argv[2]), json.loads(argv[3])
    try:
        ctx = _setup(settings)
    except BaseException:
        _write_frame(reply_fd, {"kind": "fatal", "message": traceback.format_exc()})
        return 1
    _write_frame(reply_fd, {"kind": "ready", "is_syscall_filtered": ctx.is_syscall_filtered})
    own_pid = os.getpid()
    while (job := _read_job(job_fd)) is not None:
        job_id, program, inputs = job
        try:
            outcome, elapsed, retire = _serve(ctx, program, inputs)
        except BaseException as e:  # a bug or a broken invariant in this file, not the program
            outcome, elapsed, retire = _Outcome(ErrorKind.WORKER_CRASHED, f"worker: {_describe(e)}"), 0.0, True
        if os.getpid() != own_pid:  # a forked copy of this worker (filter off) must not reply
            os._exit(0)
        _reply(reply_fd, job_id, outcome, elapsed, retire)
        if retire:
            return 0
    return 0


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # running as a script put arcsl/ itself on the path; programs must not see it
    sys.exit(main(sys.argv))
