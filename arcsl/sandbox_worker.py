"""The sandbox worker: a supervisor process, and the forked child in which programs run.

`arcsl.sandbox.SandboxPool` starts the supervisor as a fresh interpreter,
`python sandbox_worker.py JOB_FD REPLY_FD SETTINGS_JSON`, never as a fork of the pool. It imports
only the stdlib, numpy and whatever the DSL module imports (scipy), and never `arcsl`.
sandbox.py describes the whole design and what it does and does not protect against.

Two processes per worker:
- The supervisor imports everything once, then forks a child and relays jobs to it. It never runs
  a program, so it stays as clean as a fresh worker. It alone holds the pool's two pipes; it
  enforces each job's deadline by SIGKILLing the child, and it discards the child (forking a new
  one, ~10 ms here against ~0.4 s for a fresh interpreter) after any job that could have changed it.
- The child closes every file descriptor except its own two pipes to the supervisor (and
  /dev/null), caps its process count, installs the seccomp filter (sandbox_seccomp.py, Linux
  x86-64) and then runs jobs one at a time. A program that takes it over can reply what it likes for its own job, and nothing
  else: the supervisor puts the job id on every reply and forwards one reply per job.

One job, in the child:
1. Receive (program, input grids) from the supervisor.
2. Compile the program. If its code could change this process for later jobs (`could_change_process`:
   a name starting with `_`, an attribute assignment or deletion, dynamic attribute access, raw
   memory...), tell the supervisor *before* running it, so that the child is discarded afterwards
   whatever the program does to it.
3. Exec it in a fresh namespace: restricted builtins (no `open`, `exec`, `eval`, `compile`, `input`;
   `__import__` refuses `BANNED_MODULES`), with a freshly executed DSL module in `sys.modules`.
4. Call `transform` (else `main`) on an int64 copy of each input, seeding `random` and
   `numpy.random` with 0 before each call; validate each output.
5. Undo what a program may change without the names of step 2 (numpy error state, warnings
   filters, module attributes in GUARDED_MODULES, stdio, cwd) and reply. A program that left threads
   or child processes running gets FORBIDDEN, and the whole worker is retired.

Frames, every way: `<II` (header length, blob length), header, blob.
- pool -> supervisor: header = JSON {"id", "max_blob"}, blob = pickle of (program, inputs). The
  pool is trusted; the supervisor passes the blob on to the child unread, with an empty header.
- child -> supervisor -> pool: header = JSON, blob = output grids as uint8 bytes, row-major. JSON and
  raw bytes, not pickle: a program that escapes the Python-level checks controls the child, and
  unpickling its bytes would run its code in the supervisor or the pool.
"""

import _thread
import builtins
import dis
import enum
import fcntl
import gc
import json
import operator
import os
import pickle
import random
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field

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

# Names a program needs to change shared state or escape the Python-level ban without spelling an
# underscore or an attribute assignment: dynamic attribute access, raw memory (ctypes, strided views
# past an array's end, C callbacks), strings evaluated as code, global registries. A program whose
# code names one (or any name starting with "_", or assigns or deletes an attribute) is the last
# job of its child. Over-matching costs one fork; the list errs that way.
RISKY_NAMES = frozenset({
    "getattr", "setattr", "delattr", "vars", "globals", "locals", "attrgetter", "methodcaller",
    "ctypes", "ctypeslib", "as_strided", "stride_tricks", "LowLevelCallable", "get_type_hints",
    "ForwardRef", "Formatter", "timeit", "doctest", "profile", "cProfile", "trace", "pydoc", "codecs",
    "copyreg", "register", "seterrcall", "setrecursionlimit", "setcontext", "setlocale", "f2py", "extbuild",
})
_ATTRIBUTE_WRITES = (dis.opmap["STORE_ATTR"], dis.opmap["DELETE_ATTR"])

# Module attributes put back after every job if a program rebinds or deletes them without an
# attribute assignment (which discards the child anyway): a second line of defence for the shared
# modules a program reaches without escaping the ban, plus the real builtins.
GUARDED_MODULES = (
    "builtins", "time", "warnings", "random", "math", "itertools", "functools", "collections",
    "operator", "copy", "heapq", "typing", "re", "numpy", "numpy.random", "numpy.random.mtrand",
    "numpy.linalg", "scipy", "scipy.ndimage",
)
# Imported by the supervisor, so that no program pays for them and, above all, so that the child
# never opens a file: the syscall filter refuses every open(). Programs' own imports, numpy's lazily
# loaded submodules, and scipy.ndimage, which the DSL imports on first use. A module not listed
# (and not imported by these) fails to import in a program.
PRELOADED_MODULES = (
    "typing", "math", "cmath", "itertools", "functools", "collections", "collections.abc", "copy",
    "heapq", "bisect", "re", "string", "dataclasses", "enum", "statistics", "fractions", "decimal",
    "numbers", "array", "queue", "datetime", "textwrap", "json", "unicodedata", "scipy.ndimage",
    "numpy.fft", "numpy.linalg", "numpy.polynomial", "numpy.ma", "numpy.random", "numpy.rec",
    "numpy.char", "numpy.strings", "numpy.dtypes", "numpy.exceptions", "numpy.typing",
    "numpy.ctypeslib", "numpy.testing", "numpy.lib.stride_tricks", "encodings.idna",
    "gzip", "bz2", "lzma",  # numpy's file readers import them on first use, before they open anything
)

_MAX_JOBS_PER_CHILD = 500  # bounds how long an undetected in-place change lasts (a fork per 500 jobs: ~0.03 ms/job)
_CHILD_START_S = 10.0
_REAP_WAIT_S = 0.5  # after a child closed its pipe, how long it gets to finish exiting
_MAX_HEADER_BYTES = 1 << 16
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
class _Context:
    """Everything the supervisor prepares once; each child inherits it."""

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
    num_threads: int = 1  # in the child after the fork; a BLAS library may keep its own
    supervisor_pid: int = 0
    libc: object = None  # ctypes' libc, for prctl (Linux only)
    seccomp: object = None  # the prepared filter (sandbox_seccomp.Seccomp), None when not filtering
    is_syscall_filtered: bool | None = None  # what the first child reported


@dataclass(slots=True)
class _Child:
    """The supervisor's handle on its child."""

    pid: int
    job_fd: int  # the supervisor writes jobs here
    reply_fd: int  # and reads frames here (non-blocking)
    poller: object = None  # select.poll on reply_fd
    buffer: bytearray = field(default_factory=bytearray)
    num_jobs: int = 0
    pipe_bytes: int = 0  # capacity of job_fd's pipe
    is_spoiled: bool = False  # a job frame went in half-written: no further job may follow

    def __post_init__(self):
        self.poller = select.poll()
        self.poller.register(self.reply_fd, select.POLLIN)


# --- one job, in the child ---------------------------------------------------------------------


def _serve(ctx: _Context, program: str, inputs: list, reply_fd: int) -> tuple[dict, bytes]:
    """Run one job; return the reply (header, blob) for the supervisor."""
    started = time.perf_counter()
    recycle = False
    try:
        code = compile(program, "<program>", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: the source contains null bytes
        outcome = _Outcome(ErrorKind.SYNTAX_ERROR, _describe(e))
    else:
        recycle = could_change_process(code)
        if recycle:  # said before the program runs: whatever it does, the supervisor knows
            _write_frame(reply_fd, {"kind": "recycle"})
        outcome = _execute(ctx, code, inputs)
    elapsed = time.perf_counter() - started
    _reset_process(ctx)
    leftover = _leftover_activity(ctx.num_threads)
    if leftover is not None:
        outcome = _Outcome(ErrorKind.FORBIDDEN, f"program left {leftover} running")
    outputs = outcome.outputs or []
    header = {
        "kind": "result", "error": outcome.error, "message": outcome.message, "elapsed_s": elapsed,
        "retire": leftover is not None, "recycle": recycle,
        "shapes": None if outcome.outputs is None else [list(grid.shape) for grid in outputs],
    }
    return header, b"".join(grid.tobytes() for grid in outputs)


def could_change_process(code: types.CodeType) -> bool:
    """Whether a compiled program could change this process for later jobs, or escape the ban:
    it names something starting with "_" or in RISKY_NAMES, or assigns or deletes an attribute.

    Read off the bytecode before the program runs (~25 us). In-place changes to shared objects
    through plain names (`d = np.typecodes; d["All"] = ""`) are not caught."""
    todo = [code]
    while todo:
        code = todo.pop()
        for name in code.co_names:
            if any(part[:1] == "_" or part in RISKY_NAMES for part in name.split(".")):
                return True
        opcodes = code.co_code[::2]
        if any(op in opcodes for op in _ATTRIBUTE_WRITES):
            return True
        todo.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return False


def _execute(ctx: _Context, code: types.CodeType, inputs: list) -> _Outcome:
    """Run the program on every input (twice when checking determinism)."""
    outcome = _attempt(ctx, code, inputs)
    if outcome.error is not None or not ctx.check_determinism:
        return outcome
    again = _attempt(ctx, code, inputs)
    if again.error is ErrorKind.MEMORY_LIMIT:
        return again
    if again.error is not None:
        return _Outcome(ErrorKind.NON_DETERMINISTIC, f"second run failed: {again.message}")
    for i, (a, b) in enumerate(zip(outcome.outputs, again.outputs)):
        if not np.array_equal(a, b):
            return _Outcome(ErrorKind.NON_DETERMINISTIC, f"output {i} differs between two runs")
    return outcome


def _attempt(ctx: _Context, code: types.CodeType, inputs: list) -> _Outcome:
    """Run the compiled program once on every input; a failure is returned, never raised."""
    try:
        return _Outcome(None, "", _call_on_each(ctx, code, inputs))
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


# --- startup, in the supervisor -------------------------------------------------------------------


def _setup(settings: dict) -> _Context:
    """Import and compile everything once, and lock down what the children will inherit."""
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
        supervisor_pid=os.getpid(),
    )
    ctx.snapshots = [_Snapshot(vars(m), dict(vars(m))) for m in map(sys.modules.get, GUARDED_MODULES) if m]
    _limit_resources(settings["memory_bytes"])
    if sys.platform == "linux":
        import ctypes

        ctx.libc = ctypes.CDLL(None, use_errno=True)
    if settings["filter_syscalls"]:
        ctx.seccomp = _load_sibling("sandbox_seccomp").prepare_seccomp(ctx.libc)
    gc.freeze()  # everything so far lives forever: no collection touches it, so children share its pages
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



def _load_sibling(name: str) -> types.ModuleType:
    """A module beside this file, loaded by path: the worker does not import arcsl."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _limit_resources(memory_bytes: int) -> None:
    limits = {
        resource.RLIMIT_AS: memory_bytes,  # this fresh process's own address space, not the pool's
        resource.RLIMIT_FSIZE: 0,  # no bytes written to any regular file (Python ignores SIGXFSZ)
        resource.RLIMIT_CORE: 0,
    }  # RLIMIT_NPROC is set in the child: the supervisor must fork
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


# --- the child ------------------------------------------------------------------------------------


def _fork_child(ctx: _Context) -> _Child:
    """Fork a child from this clean process and wait until it is locked down and ready."""
    job_r, job_w = os.pipe()
    reply_r, reply_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into the supervisor's code
        status = 70
        try:
            _close_fds_except((job_r, reply_w, ctx.devnull_fd))  # above all, the pool's pipes
            _child_main(ctx, job_r, reply_w)
            status = 0
        except BaseException:
            _write_frame(reply_w, {"kind": "fatal", "message": traceback.format_exc()[-_MAX_MESSAGE_CHARS:]})
        finally:
            os._exit(status)
    os.close(job_r)
    os.close(reply_w)
    os.set_blocking(reply_r, False)
    os.set_blocking(job_w, False)  # a child that stops reading must not block the supervisor
    child = _Child(pid, job_w, reply_r, pipe_bytes=fcntl.fcntl(job_w, fcntl.F_GETPIPE_SZ))
    frame = _receive(child, 0, time.monotonic() + _CHILD_START_S)
    if isinstance(frame, str) or frame[0].get("kind") != "ready":
        raise RuntimeError(f"sandbox child failed to start: {frame if isinstance(frame, str) else frame[0]}")
    is_filtered = frame[0].get("is_syscall_filtered") is True
    if ctx.is_syscall_filtered is None:
        ctx.is_syscall_filtered = is_filtered
    elif is_filtered != ctx.is_syscall_filtered:
        raise RuntimeError(f"a sandbox child came up with is_syscall_filtered={is_filtered}, unlike the first")
    return child


def _close_fds_except(keep: tuple[int, ...]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))  # close_range(2): cheap however high the limit


def _child_main(ctx: _Context, job_fd: int, reply_fd: int) -> None:
    is_filtered = _lock_down(ctx)
    ctx.num_threads = _num_threads()
    _write_frame(reply_fd, {"kind": "ready", "is_syscall_filtered": is_filtered})
    own_pid = os.getpid()
    while (payload := _read_payload(job_fd)) is not None:
        program, inputs = pickle.loads(payload)  # from the supervisor, which passes on the pool's bytes
        try:
            header, blob = _serve(ctx, program, inputs, reply_fd)
        except BaseException as e:  # a bug or a broken invariant in this file, not the program
            header, blob = _failure(ErrorKind.WORKER_CRASHED, f"worker: {_describe(e)}", 0.0), b""
        if os.getpid() != own_pid:  # a forked copy of this child (filter off) must not reply
            os._exit(0)
        _write_frame(reply_fd, header, blob)


def _lock_down(ctx: _Context) -> bool:
    """In the child, before any job: die with the supervisor, start no process, filter syscalls."""
    if ctx.libc is not None:
        pr_set_pdeathsig = 1
        ctx.libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != ctx.supervisor_pid:  # it died before prctl took effect
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # not enforced for root: the filter is what counts
    return ctx.seccomp is not None and ctx.seccomp.install()


def _read_payload(fd: int) -> bytes | None:
    head = _read_exact(fd, 8)
    if head is None:
        return None
    header_len, blob_len = struct.unpack("<II", head)
    return _read_exact(fd, header_len + blob_len)


# --- the supervisor -----------------------------------------------------------------------------------


def _supervise(ctx: _Context, job_fd: int, reply_fd: int, child: _Child) -> None:
    """Relay jobs from the pool to the child until the pool closes the pipe (or retires us).

    A small job that is already waiting when the one before it starts goes into the child's pipe at
    once, so that the child starts it as soon as it has replied, without a round trip through here;
    if the child is discarded meanwhile, the job goes to the next child instead."""
    exited: list[int] = []  # discarded children not yet reaped
    frame, is_sent = _read_frame(job_fd), False
    while frame is not None:
        job, payload = frame
        started = time.monotonic()
        outcome = None if is_sent else _write_until(child.job_fd, _job_frame(payload), started + ctx.budget_s)
        ahead = _prefetch(job_fd, child, payload) if outcome is None else None
        reply, blob, is_reusable = _await_reply(ctx, child, job, started, outcome)
        reply["id"] = job["id"]
        _write_frame(reply_fd, reply, blob)
        if reply["retire"]:
            return  # the pool replaces this whole process group
        if not is_reusable:
            exited += _discard(child)
            child = _fork_child(ctx)
        exited = [pid for pid in exited if os.waitpid(pid, os.WNOHANG)[0] == 0]  # reap without waiting
        if ahead is None:
            frame, is_sent = _read_frame(job_fd), False
        else:
            frame, is_sent = ahead[0], ahead[1] and is_reusable


def _prefetch(job_fd: int, child: _Child, running: bytes) -> tuple[tuple[dict, bytes], bool] | None:
    """The pool's next job, if it is already waiting: (frame, whether it was written to the child's
    pipe too). Written only when both jobs fit in half the pipe, so that the write cannot block."""
    poller = select.poll()
    poller.register(job_fd, select.POLLIN)
    if not poller.poll(0):
        return None
    frame = _read_frame(job_fd)
    if frame is None:
        return None  # EOF: the caller reads it again
    if 16 + len(running) + len(frame[1]) > child.pipe_bytes // 2:
        return frame, False
    if _write_until(child.job_fd, _job_frame(frame[1]), time.monotonic()) is not None:
        child.is_spoiled = True  # not expected: the pipe held less than its size says
        return frame, False
    return frame, True


def _job_frame(payload: bytes) -> bytes:
    return struct.pack("<II", 0, len(payload)) + payload


def _await_reply(ctx: _Context, child: _Child, job: dict, started: float, outcome: str | None) -> tuple[dict, bytes, bool]:
    """Wait for the child's reply to the job it was given at `started`; return the reply for the pool
    and whether the child may run another. outcome: why the job could not be given to it, if so."""
    deadline = started + ctx.budget_s
    child.num_jobs += 1
    recycle = False
    try:
        while outcome is None:
            outcome = _receive(child, job["max_blob"], deadline)
            if isinstance(outcome, str):
                break
            header, blob = outcome
            if header.get("kind") == "recycle":  # written before the program ran
                recycle, outcome = True, None
            elif header.get("kind") == "result":
                is_reusable = (not recycle and header.get("recycle") is False and not child.is_spoiled
                               and child.num_jobs < _MAX_JOBS_PER_CHILD)
                reply = {key: header.get(key) for key in ("error", "message", "elapsed_s", "shapes")}
                return {"kind": "result", **reply, "retire": header.get("retire") is True}, blob, is_reusable
            else:
                raise _Garbled(f"unexpected {header.get('kind')!r} frame")
    except _Garbled as e:
        return _failure(ErrorKind.WORKER_CRASHED, f"garbled reply: {e}", time.monotonic() - started), b"", False
    elapsed = time.monotonic() - started
    if outcome == "timeout":
        reply = _failure(ErrorKind.TIMEOUT, f"exceeded {ctx.budget_s:g} s", elapsed)
        reply["retire"] = not ctx.is_syscall_filtered  # it may have forked copies that still run
        return reply, b"", False
    return _failure(ErrorKind.WORKER_CRASHED, f"worker {_describe_exit(_reap(child))}", elapsed), b"", False


def _failure(error: ErrorKind, message: str, elapsed: float) -> dict:
    return {"kind": "result", "error": error, "message": message[:_MAX_MESSAGE_CHARS], "elapsed_s": elapsed,
            "shapes": None, "retire": False, "recycle": True}


def _receive(child: _Child, max_blob: int, deadline: float) -> tuple[dict, bytes] | str:
    """The child's next frame, or why none came: "timeout" (deadline passed) or "exit" (pipe closed).
    Raises _Garbled for a frame that does not parse or is larger than max_blob allows."""
    while (frame := _take_frame(child.buffer, max_blob)) is None:
        remaining_ms = (deadline - time.monotonic()) * 1000
        if remaining_ms <= 0:
            return "timeout"
        if not child.poller.poll(remaining_ms):
            continue
        try:
            chunk = os.read(child.reply_fd, 1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            return "exit"
        child.buffer += chunk
    return frame


class _Garbled(Exception):
    """A frame from the child that does not parse: broken, or written by a program."""


def _take_frame(buffer: bytearray, max_blob: int) -> tuple[dict, bytes] | None:
    """Pop one complete (header, blob) frame off the buffer, or None if incomplete."""
    if len(buffer) < 8:
        return None
    header_len, blob_len = struct.unpack_from("<II", buffer)
    if header_len > _MAX_HEADER_BYTES or blob_len > max_blob:
        raise _Garbled(f"frame of {header_len} + {blob_len} bytes")
    end = 8 + header_len + blob_len
    if len(buffer) < end:
        return None
    try:
        header = json.loads(bytes(buffer[8:8 + header_len]))
    except ValueError as e:
        raise _Garbled("header is not JSON") from e
    if not isinstance(header, dict):
        raise _Garbled("header is not an object")
    blob = bytes(buffer[8 + header_len:end])
    del buffer[:end]
    return header, blob


def _write_until(fd: int, data: bytes, deadline: float) -> str | None:
    """Write all of data to a non-blocking fd before the deadline; None if done, else "timeout" or "exit"."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                return "timeout"
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            poller.poll(remaining_ms)
        except OSError:  # EPIPE: the child is gone
            return "exit"
    return None


def _discard(child: _Child) -> list[int]:
    """Kill the child and close its pipes; return its pid if it still has to be reaped."""
    for fd in (child.job_fd, child.reply_fd):
        os.close(fd)
    if not child.pid:
        return []
    os.kill(child.pid, signal.SIGKILL)
    return [child.pid]


def _reap(child: _Child) -> int:
    """Wait for a child that closed its pipe (it is exiting); kill it if it takes too long."""
    deadline = time.monotonic() + _REAP_WAIT_S
    while (done := os.waitpid(child.pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    if done[0] == 0:
        os.kill(child.pid, signal.SIGKILL)
        done = os.waitpid(child.pid, 0)
    child.pid = 0
    return os.waitstatus_to_exitcode(done[1])


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


# --- frames and the main loop -----------------------------------------------------------------------


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> tuple[dict, bytes] | None:
    """A (JSON header, blob) frame from the pool, which is trusted; None at EOF."""
    head = _read_exact(fd, 8)
    if head is None:
        return None
    header_len, blob_len = struct.unpack("<II", head)
    data = _read_exact(fd, header_len + blob_len)
    return None if data is None else (json.loads(data[:header_len]), data[header_len:])


def _write_frame(fd: int, header: dict, blob: bytes = b"") -> None:
    data = json.dumps(header).encode()
    view = memoryview(struct.pack("<II", len(data), len(blob)) + data + blob)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    job_fd, reply_fd, settings = int(argv[1]), int(argv[2]), json.loads(argv[3])
    try:
        ctx = _setup(settings)
        child = _fork_child(ctx)
    except BaseException:
        _write_frame(reply_fd, {"kind": "fatal", "message": traceback.format_exc()})
        return 1
    _write_frame(reply_fd, {"kind": "ready", "is_syscall_filtered": ctx.is_syscall_filtered})
    try:
        _supervise(ctx, job_fd, reply_fd, child)
    except BrokenPipeError:  # the pool is gone; the child dies with this process (PR_SET_PDEATHSIG)
        return 0
    return 0


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # running as a script put arcsl/ itself on the path; programs must not see it
    sys.exit(main(sys.argv))
