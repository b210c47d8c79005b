"""Run untrusted programs on grids, in a persistent pool of sandboxed worker processes.

    from arcsl.config import SandboxConfig
    from arcsl.sandbox import Job, SandboxPool

    with SandboxPool(SandboxConfig(timeout_s=2.0)) as pool:
        results = pool.run([Job(program, [grid_a, grid_b]), ...])  # one ExecutionResult per job, in order

        with pool.batch() as batch:  # or job by job, as they come (e.g. while a model is still sampling)
            index = batch.submit(Job(program, [grid_a]))  # runs at once on an idle worker
            batch.poll(0.01)                              # collect replies, send queued jobs; at most 10 ms
            results = batch.finish()                      # the rest; one result per submitted job, in order

Linux only: it relies on /proc, process groups, rlimits and (on x86-64) seccomp.

A program is Python text that defines `transform(input_grid)` (or, in older seed programs, `main`),
usually after `from common import *` (the BARC DSL, arcsl/dsl/common.py). It runs on an int64 copy
of each input grid, with `random` and `numpy.random` seeded to 0 before each call, as the BARC
model expects. A failure is data: `ExecutionResult.error` says which kind (`ErrorKind`) and
`message` says what happened ("ValueError: <last line>"). Nothing a program does raises here.

How it works
- Workers are fresh interpreters started by fork+exec (subprocess; what multiprocessing calls
  "spawn"). So a parent that has initialised CUDA, or maps tens of GB, is never duplicated, and
  the memory cap applies to the worker alone. A batch (`SandboxPool.batch`) takes jobs one at a
  time: `submit` sends a job to an idle worker at once, `poll` collects replies and sends queued jobs
  for at most the time it is given, `finish` runs the rest and puts the results back in submission
  order. `run` is a batch submitted whole, then finished. One batch at a time per pool.
- A worker is two processes (sandbox_worker.py): a supervisor, which imports numpy, scipy.ndimage
  and every module a program may import (BLAS threads = 1), compiles the DSL, holds the pool's two
  pipes and never runs a program; and a child forked from it, which runs the programs, one job at
  a time, holding only its own pipes to the supervisor.
- Each worker runs in its own process group and session, with cwd = a scratch directory deleted
  at close, a minimal environment (no API tokens) and stdin/stdout/stderr on /dev/null.
- Timeout, two layers: the supervisor SIGKILLs the child at the deadline, replies TIMEOUT and
  forks a fresh child; the pool SIGKILLs the worker's whole process group at deadline + 0.5 s if
  no reply came, and starts a replacement. A program that catches every exception, or hangs in C
  code, costs its timeout and nothing else.
- The pool never blocks on a worker: it writes jobs without blocking and keeps what the pipe does
  not take for later, under the job's deadline (a job a worker never took goes back to the queue,
  unblamed), and reads replies without blocking.
- A worker holds at most two jobs: the running one and the next, already in its pipe, so it never
  waits a round trip for work. If it dies, the job behind goes back to the queue, unblamed. With
  check_determinism a program runs twice, so its time limit is twice timeout_s.
- A batch that ends early (an exception, Ctrl-C, or closed unfinished) replaces the workers still
  holding its jobs, so the next batch finds every worker free.
- Replies come back as JSON plus raw bytes, never pickle, and are checked again here (shapes,
  sizes, values), so a worker that a program has taken over cannot run code in this process.

Isolation between jobs, and why this way (measured on the 2-core KVM guest of bench/RESULTS.md)
- Each job gets a fresh namespace, fresh builtins and a freshly executed `common` module. The
  child is reused for the next job unless the program's bytecode, read before it runs, could change
  the process: a name starting with "_" (dunders, `random._os`, `np.__builtins__`...), an attribute
  assignment or deletion (`Counter.most_common = f`, `label.__code__ = c`), or a name in
  RISKY_NAMES (getattr, ctypes, as_strided...). Such a job, any job that timed out or crashed, and
  every 500th job, end their child; the supervisor, which no program ever ran in, forks the next.
- After a reused job the child still puts back module attributes in GUARDED_MODULES, numpy's error
  and print state, warnings filters, the recursion limit, stdio and cwd.
- Measured alternatives: a fresh child for every job costs 9-12 ms per BARC-style program here
  (fork 1.5-2 ms, copy-on-write faults while the program runs, and 2.7 ms to tear the child's
  address space down), about twice the program itself (5-6 ms); a fresh interpreter, to recycle a
  worker without a supervisor, costs ~0.4 s; comparing every class dict and function `__code__`/
  `__defaults__`/`__kwdefaults__` reachable from the loaded modules (1,334 classes, 7,583
  functions) after each job costs 7.4 ms, and still misses what an escaped program changes. The
  bytecode test costs ~25 us, and a fresh child 10-12 ms (bench/bench_sandbox.py, "recycled"),
  paid only by programs that look like they tamper. The relay through the supervisor costs
  ~0.4 ms per program (overhead 0.37 -> 0.74 ms for a trivial program): the price of keeping the
  pool's pipes out of the programs' process.

What is covered (each has a test in tests/test_sandbox.py or tests/test_sandbox_escapes.py)
- Infinite loops, sleeps, loops that catch BaseException: TIMEOUT within timeout + 2 s.
- Memory: RLIMIT_AS (default 2 GB) on each worker process's own address space; allocating 50 GB
  gives MEMORY_LIMIT, not a dead machine.
- Crashes (os._exit, segfaults, abort): WORKER_CRASHED, and a fresh child.
- Imports of os, sys, subprocess, socket, shutil, ctypes, multiprocessing, threading (and the other
  BANNED_MODULES) and the builtins open, exec, eval, compile, input: FORBIDDEN. This is enforced
  when the code runs (an `__import__` hook and restricted builtins), not by reading the source, so
  a comment that mentions os, `random_sprite` or `re.compile` is fine.
- Output on stdout/stderr is discarded without being written anywhere; it cannot block or fill
  a disk. Outputs must be ndarrays of ndim 2, sides 1..max_side, whole numbers 0..9.
- Programs that get past the Python-level ban (`random._os`, `np.__builtins__`,
  `().__class__.__subclasses__()`, ctypes through numpy...) are still held by the OS: on Linux
  x86-64 each worker drops all capabilities and each child installs a seccomp filter
  (sandbox_seccomp.py, its rules checked in tests/test_sandbox_seccomp.py) that makes
  these syscalls fail: creating processes or threads, exec, sending signals to any process (the
  pool included), the fcntl and ioctl commands that make the kernel signal a chosen process or
  resize a pipe (F_SETOWN, F_SETOWN_EX, F_SETSIG, F_SETLEASE, F_NOTIFY, F_SETPIPE_SZ, O_ASYNC,
  FIOSETOWN, SIOCSPGRP, FIOASYNC), changing other processes' priority, scheduling or memory
  placement, ptrace and reading other processes' memory or fds, leaving its process group,
  sockets, raising its limits, opening any file (read-only included: numpy's np.load, np.loadtxt,
  DataSource... get PermissionError, and /proc/<pool pid>/environ and /mem are out of reach),
  every call that creates, changes or deletes files, and kernel objects that would outlive the
  process (SysV shared memory, semaphores and message queues, POSIX message queues, keyring
  keys, memfd, userfaultfd). RLIMIT_FSIZE = 0 and RLIMIT_NPROC = 0 back this up where the filter
  is missing, and the process-group kill catches forked grandchildren.
  `SandboxPool.is_syscall_filtered` says whether the filter is on.
- A program can reply what it likes for its own job (as it could by returning it), and nothing
  more: its child holds no pipe to the pool, and the supervisor puts the job id on the child's
  one reply per job.
- A program does not change what later programs compute through the examples above: class
  attributes, functions' code, sys.modules, timers and signal handlers left behind end with its
  child.
- No worker or grandchild outlives `close()` (or interpreter exit), except as noted below.

What is not covered (Python-level checks are not a security boundary)
- The bytecode test is a heuristic on names. A program that changes a shared object in place
  through plain names (`d = np.typecodes; d["All"] = ""`), or escapes the ban by a route that
  names nothing it looks for, changes its child for later jobs of that child (at most 500), though
  not the pool, other workers or files.
- A module that no preloaded module imports cannot be imported by a program (the child may not
  open files): see PRELOADED_MODULES.
- Without the seccomp filter (not Linux x86-64, or refused by the kernel) an escaped program can
  read files, signal the pool, write files, open sockets, create SysV objects, and escape the
  group kill with setsid. Only a container, a VM or a separate user stops that.
- This process is not made non-dumpable (PR_SET_DUMPABLE 0 would also hide it from its own
  user's debuggers and profilers, and change who owns its /proc files); the filter's refusal of
  open(), ptrace, process_vm_readv and pidfd_getfd is what keeps a program out of its memory and
  environment. Programs can see the scratch directory's path and stat() any path.
- A worker started by root keeps uid 0 (minus its capabilities).
- CPU time and memory bandwidth are shared: a heavy program slows the others down.
- If this process dies without closing the pool (SIGKILL), an idle worker exits on EOF and a busy
  one at its deadline, when it finds its reply pipe closed; its child dies with it
  (PR_SET_PDEATHSIG). The (empty) scratch directory stays.
"""

import contextlib
import fcntl
import itertools
import json
import math
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcsl.config import SandboxConfig
from arcsl.sandbox_worker import ENTRY_POINTS, ErrorKind

__all__ = ["DSL_PATH", "ENTRY_POINTS", "ErrorKind", "ExecutionResult", "Job", "SandboxBatch", "SandboxPool"]

DSL_PATH = Path(__file__).parent / "dsl" / "common.py"
WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")

_KILL_GRACE_S = 0.5  # after a job's deadline, how long its supervisor gets to report it before the pool kills both
_STARTUP_TIMEOUT_S = 60.0
_MAX_HEADER_BYTES = 1 << 16
_MAX_MESSAGE_CHARS = 2000  # a worker's startup traceback can be long; program messages are 300
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")
_PASSED_ENV = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL")


@dataclass(frozen=True, slots=True)
class Job:
    """One program and the grids to run it on.

    program: the program text (from `prompting.extract_program`); None or blank gives NO_CODE.
    inputs: 2-D integer arrays, e.g. a task's uint8 grids. They are not modified.
    """

    program: str | None
    inputs: Sequence[np.ndarray]


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What running one program on all its inputs gave."""

    outputs: list[np.ndarray] | None  # one uint8 grid of shape (h, w) per input, in order; None on error
    error: ErrorKind | None = None  # None on success
    message: str = ""  # e.g. "ValueError: cannot reshape array of size 9 into shape (2,2)"; "" on success
    elapsed_s: float = 0.0  # the program's time in the worker (for timeouts and crashes: as seen by the pool)

    @property
    def is_ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Sent:
    """A job written to a worker's pipe: running, or queued right behind the running one."""

    index: int  # in the current batch
    job_id: int
    max_blob: int  # the largest reply blob this job can legitimately produce
    started_at: float = math.inf  # when it started running (as far as the pool can tell)


@dataclass(slots=True, eq=False)
class _Worker:
    """The pool's handle on one worker process."""

    proc: subprocess.Popen
    job_fd: int  # we write jobs here
    reply_fd: int  # we read replies here (non-blocking)
    deadline: float  # monotonic: for starting up, or for the running job; inf while idle
    buffer: bytearray = field(default_factory=bytearray)
    has_started: bool = False  # it said it is ready
    is_accepting: bool = False  # it may be sent jobs
    is_syscall_filtered: bool = False
    sent: deque = field(default_factory=deque)  # _Sent jobs, the running one first
    pipe_bytes: int = 0  # capacity of the job pipe: a job queued behind a running one must fit
    outbox: bytearray = field(default_factory=bytearray)  # the rest of the last job's frame, not yet written


class _Garbled(Exception):
    """A reply that does not parse: the worker is broken or a program wrote to its pipe."""


class SandboxPool:
    """A persistent pool of sandboxed worker processes. Use as a context manager, or call close()."""

    def __init__(self, cfg: SandboxConfig, dsl_path: str | Path | None = DSL_PATH, *, filter_syscalls: bool = True):
        """
        Args:
            cfg: timeout, memory cap, number of workers, largest output side, determinism check.
            dsl_path: the DSL module, importable by its file name (`from common import *` for
                arcsl/dsl/common.py, `from draw import *` for the toy DSL); None runs without one.
            filter_syscalls: False only to test what remains where the seccomp filter is unavailable.
        """
        if dsl_path is not None and not Path(dsl_path).is_file():
            raise ValueError(f"dsl_path must be a file (or None for no DSL), got {str(dsl_path)!r}")
        self.cfg = cfg
        self.num_workers = cfg.sandbox_workers or len(os.sched_getaffinity(0))
        self._budget_s = cfg.timeout_s * (2 if cfg.check_determinism else 1)
        self._scratch = tempfile.mkdtemp(prefix="arcsl-sandbox-")
        self._settings = json.dumps({
            "dsl_path": None if dsl_path is None else str(Path(dsl_path).resolve()),
            "memory_bytes": cfg.memory_mb << 20, "budget_s": self._budget_s, "max_side": cfg.max_side,
            "check_determinism": cfg.check_determinism, "filter_syscalls": filter_syscalls,
        })
        self._env = _worker_env(self._scratch)
        self._job_ids = itertools.count()
        self._workers: list[_Worker] = []
        self._batch: SandboxBatch | None = None  # the open batch: the workers' jobs are its jobs
        self._closer = weakref.finalize(self, _shut_down, self._workers, self._scratch)
        try:
            for _ in range(self.num_workers):
                self._workers.append(self._spawn())
            startup = SandboxBatch(self)
            while not all(w.has_started for w in self._workers):
                self._wait_once(startup)
        except BaseException:
            self.close()
            raise
        if filter_syscalls and not self.is_syscall_filtered:
            warnings.warn("sandbox workers run without the seccomp filter (needs Linux x86-64): a program "
                          "that escapes the import ban can read files, signal this process and write files", stacklevel=2)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Kill every worker and its process group, and delete the scratch directory. Idempotent."""
        self._closer()

    @property
    def is_syscall_filtered(self) -> bool:
        """Whether every ready worker runs its programs under the seccomp filter (see the module docstring)."""
        return all(w.is_syscall_filtered for w in self._workers if w.has_started)

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    @property
    def scratch_dir(self) -> str:
        """The workers' working directory, deleted at close."""
        return self._scratch

    def batch(self) -> "SandboxBatch":
        """An empty batch, to submit jobs to one at a time (see `SandboxBatch`); one batch at a time."""
        if not self._closer.alive:
            raise RuntimeError("SandboxPool used after close()")
        if self._batch is not None:
            raise RuntimeError("a sandbox batch is still open: finish or close it before the next one")
        self._batch = SandboxBatch(self)
        return self._batch

    def run(self, jobs: Sequence[Job]) -> list[ExecutionResult]:
        """Run every job; return one ExecutionResult per job, in the same order."""
        with self.batch() as batch:
            for i, job in enumerate(jobs):
                _check_inputs(i, job.inputs)  # every job before the first runs: a bad list starts nothing
            for job in jobs:
                batch.submit(job)
            return batch.finish()

    # --- workers -------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        job_r, job_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), str(job_r), str(reply_w), self._settings],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=self._scratch, env=self._env, pass_fds=(job_r, reply_w),
                start_new_session=True,  # its own process group: one killpg takes its children too
            )
        except BaseException:
            os.close(job_w)
            os.close(reply_r)
            raise
        finally:
            os.close(job_r)
            os.close(reply_w)
        os.set_blocking(reply_r, False)
        os.set_blocking(job_w, False)  # a worker that stops reading must never block this process
        return _Worker(proc, job_w, reply_r, deadline=time.monotonic() + _STARTUP_TIMEOUT_S, pipe_bytes=_widen_pipe(job_w))

    def _replace(self, w: _Worker, batch: "SandboxBatch") -> int:
        """Kill the worker (and its process group) and start a fresh one; jobs it was sent but had
        not started go back to the front of the queue. Returns the old worker's exit code."""
        batch.queue.extendleft(reversed([sent.index for sent in w.sent if batch.results[sent.index] is None]))
        returncode = _kill(w)
        self._workers[self._workers.index(w)] = self._spawn()
        return returncode

    def _dispatch(self, batch: "SandboxBatch") -> None:
        """Give every idle worker a job, then queue one more behind each running one, so that a
        worker finds its next job waiting instead of waiting a round trip for it. Not at the end
        of a batch: there a job stuck behind a slow one would wait while other workers sit idle."""
        for w in self._workers:
            if batch.queue and w.is_accepting and not w.sent:
                self._send(w, batch)
        for w in self._workers:
            if len(batch.queue) > len(self._workers) and w.is_accepting and len(w.sent) == 1:
                self._send(w, batch)

    def _send(self, w: _Worker, batch: "SandboxBatch") -> None:
        index = batch.queue[0]
        job = batch.jobs[index]
        sent = _Sent(index, next(self._job_ids), len(job.inputs) * self.cfg.max_side**2)
        header = json.dumps({"id": sent.job_id, "max_blob": sent.max_blob}).encode()
        payload = pickle.dumps((job.program, [np.asarray(g) for g in job.inputs]), protocol=5)
        frame = struct.pack("<II", len(header), len(payload)) + header + payload
        if w.outbox or (w.sent and len(frame) > w.pipe_bytes):  # it would wait behind the running job
            return
        batch.queue.popleft()
        if not w.sent:
            self._start_clock(w, sent)
        w.sent.append(sent)
        w.outbox += frame
        self._flush(w, batch)

    def _flush(self, w: _Worker, batch: "SandboxBatch") -> None:
        """Write what the pipe takes now; the rest waits for POLLOUT (or for the job's deadline)."""
        try:
            del w.outbox[:os.write(w.job_fd, w.outbox)]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: it is exiting (retired, or killed), and never got this job
            batch.queue.appendleft(w.sent.pop().index)
            w.outbox.clear()
            w.is_accepting = False
            w.deadline = min(w.deadline, time.monotonic() + _KILL_GRACE_S)

    def _start_clock(self, w: _Worker, sent: _Sent) -> None:
        sent.started_at = time.monotonic()
        w.deadline = sent.started_at + self._budget_s + _KILL_GRACE_S

    # --- replies -------------------------------------------------------------------------------

    def _wait_once(self, batch: "SandboxBatch", until: float = math.inf) -> None:
        """Wait for replies until the nearest deadline (or `until`, time.monotonic(), if sooner), handle them,
        then handle expired deadlines."""
        nearest = min(until, *(w.deadline for w in self._workers))
        assert nearest < math.inf, "waiting with no job running and no worker starting"
        timeout_ms = max(0, math.ceil((nearest - time.monotonic()) * 1000))
        poller, by_fd = select.poll(), {}
        for w in self._workers:
            poller.register(w.reply_fd, select.POLLIN)
            by_fd[w.reply_fd] = w
            if w.outbox:
                poller.register(w.job_fd, select.POLLOUT)
                by_fd[w.job_fd] = w
        for fd, _ in poller.poll(timeout_ms):
            w = by_fd[fd]
            if w not in self._workers:  # replaced meanwhile
                continue
            if fd == w.reply_fd:
                self._read(w, batch)
            elif w.outbox:
                self._flush(w, batch)
        now = time.monotonic()
        for w in [w for w in self._workers if w.deadline <= now]:
            if not w.has_started:
                raise RuntimeError(f"sandbox worker did not start within {_STARTUP_TIMEOUT_S:g} s")
            if w.sent and not (w.outbox and len(w.sent) == 1):  # (else it never got the whole job: not its fault)
                running = w.sent[0]
                message = f"exceeded {self._budget_s:g} s (killed)"
                batch.results[running.index] = ExecutionResult(None, ErrorKind.TIMEOUT, message, now - running.started_at)
            self._replace(w, batch)

    def _read(self, w: _Worker, batch: "SandboxBatch") -> None:
        try:
            chunk = os.read(w.reply_fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            return self._on_exit(w, batch)
        w.buffer += chunk
        try:
            while (frame := _next_frame(w)) is not None:
                if not self._on_frame(w, *frame, batch):
                    return
        except _Garbled as e:
            self._fail_running(w, batch, f"garbled reply: {e}")
            self._replace(w, batch)

    def _on_frame(self, w: _Worker, header: dict, blob: bytes, batch: "SandboxBatch") -> bool:
        """Handle one frame; False once the worker has been replaced."""
        kind = header.get("kind")
        if kind == "fatal":
            raise RuntimeError(f"sandbox worker failed to start:\n{str(header.get('message'))[:_MAX_MESSAGE_CHARS]}")
        if kind == "ready" and not w.has_started:
            w.has_started = w.is_accepting = True
            w.is_syscall_filtered, w.deadline = header.get("is_syscall_filtered") is True, math.inf
            return True
        if kind != "result" or not w.sent or header.get("id") != w.sent[0].job_id:
            raise _Garbled(f"unexpected {kind!r} frame")
        finished = w.sent.popleft()
        batch.results[finished.index] = _decode_result(header, blob, self.cfg.max_side)
        w.deadline = math.inf
        if header.get("retire"):
            self._replace(w, batch)
            return False
        if w.sent:  # the worker has already moved on to the job queued behind
            self._start_clock(w, w.sent[0])
        return True

    def _on_exit(self, w: _Worker, batch: "SandboxBatch") -> None:
        """The worker closed its pipe: it died, or a program closed the pipe. Replace it."""
        has_started = w.has_started
        running = w.sent.popleft() if w.sent else None  # popped: the job that died is not retried
        how = _describe_exit(self._replace(w, batch))
        if not has_started:
            raise RuntimeError(f"sandbox worker {how} during startup")
        if running is not None:
            elapsed = time.monotonic() - running.started_at
            batch.results[running.index] = ExecutionResult(None, ErrorKind.WORKER_CRASHED, f"worker {how}", elapsed)

    def _fail_running(self, w: _Worker, batch: "SandboxBatch", message: str) -> None:
        if w.sent:
            running = w.sent[0]
            elapsed = time.monotonic() - running.started_at
            batch.results[running.index] = ExecutionResult(None, ErrorKind.WORKER_CRASHED, message, elapsed)


class SandboxBatch:
    """Jobs given to the pool one at a time, each sent to a worker as soon as one is free: for running
    programs while the model that writes them is still sampling. Open one with `SandboxPool.batch()`, use it
    as a context manager, and end it with `finish()` (or `close()` to drop what is left).

    Every call returns without waiting on a worker beyond the time it is given (`poll`) or the jobs' own
    time limits (`finish`). An exception in any of them (Ctrl-C included), or leaving the `with` block
    unfinished, closes the batch: workers still holding its jobs are replaced, so none is left busy.
    """

    def __init__(self, pool: SandboxPool):
        self.pool = pool
        self.jobs: list[Job] = []
        self.results: list[ExecutionResult | None] = []  # by submission; None while it runs or waits
        self.queue: deque[int] = deque()  # submitted, not yet sent to a worker
        self.is_open = True

    def __enter__(self) -> "SandboxBatch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def num_pending(self) -> int:
        """Jobs submitted that have no result yet (queued or running)."""
        return self.results.count(None)

    def submit(self, job: Job) -> int:
        """Queue `job` and send it to an idle worker if there is one, without waiting; returns its index
        (its place in `finish()`'s results). Inputs that are not 2-D integer grids raise ValueError."""
        self._check_open()
        index = len(self.jobs)
        _check_inputs(index, job.inputs)
        self.jobs.append(job)
        if job.program is None or not job.program.strip():
            self.results.append(ExecutionResult(None, ErrorKind.NO_CODE, "no program text"))
            return index
        self.results.append(None)
        self.queue.append(index)
        with self._closed_on_error():
            self.pool._dispatch(self)
        return index

    def poll(self, timeout_s: float = 0.0) -> None:
        """Handle the replies that come within `timeout_s` (0: those already there) and the deadlines that
        pass, and keep the workers busy with queued jobs. Returns after at most `timeout_s`, sooner once a
        reply came."""
        self._check_open()
        with self._closed_on_error():
            self.pool._dispatch(self)
            self.pool._wait_once(self, time.monotonic() + timeout_s)
            self.pool._dispatch(self)

    def finish(self) -> list[ExecutionResult]:
        """Run every job submitted to its end; return one ExecutionResult per job, in submission order.
        Closes the batch."""
        self._check_open()
        with self._closed_on_error():
            while self.queue or any(w.sent for w in self.pool._workers):
                self.pool._dispatch(self)
                self.pool._wait_once(self)
        assert None not in self.results, f"jobs without a result: {self.num_pending}"
        self.close()
        return self.results

    def close(self) -> None:
        """End the batch; workers still holding its jobs are replaced and those jobs get no result. Idempotent."""
        if not self.is_open:
            return
        self.is_open = False
        try:
            for w in [w for w in self.pool._workers if w.sent]:
                self.pool._replace(w, self)
        finally:
            self.pool._batch = None

    def _check_open(self) -> None:
        if not self.pool._closer.alive:
            raise RuntimeError("SandboxPool used after close()")
        if not self.is_open:
            raise RuntimeError("this sandbox batch is closed (finished, failed or closed): open another")

    @contextlib.contextmanager
    def _closed_on_error(self):
        try:
            yield
        except BaseException:  # e.g. KeyboardInterrupt: no worker may be left holding a job
            self.close()
            raise


# --- helpers ---------------------------------------------------------------------------------------


def _worker_env(scratch: str) -> dict[str, str]:
    """A minimal environment: what the interpreter needs to find numpy, and no secrets."""
    env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
    env.update({name: "1" for name in _THREAD_VARS})
    env.update(HOME=scratch, TMPDIR=scratch, PYTHONHASHSEED="0")  # str hashes: same set order every run
    return env


def _check_inputs(index: int, inputs: Sequence[np.ndarray]) -> None:
    for k, grid in enumerate(inputs):
        grid = np.asarray(grid)
        if grid.ndim != 2 or grid.dtype.kind not in "iu":
            raise ValueError(f"job {index}: input {k} must be a 2-D integer array, got shape {grid.shape} dtype {grid.dtype}")


def _next_frame(w: _Worker) -> tuple[dict, bytes] | None:
    """Pop one complete (header, blob) frame off the worker's buffer, or None if incomplete."""
    if len(w.buffer) < 8:
        return None
    header_len, blob_len = struct.unpack_from("<II", w.buffer)
    if header_len > _MAX_HEADER_BYTES or blob_len > (w.sent[0].max_blob if w.sent else 0):
        raise _Garbled(f"frame of {header_len} + {blob_len} bytes")
    end = 8 + header_len + blob_len
    if len(w.buffer) < end:
        return None
    try:
        header = json.loads(bytes(w.buffer[8:8 + header_len]))
    except ValueError as e:
        raise _Garbled("header is not JSON") from e
    blob = bytes(w.buffer[8 + header_len:end])
    del w.buffer[:end]
    if not isinstance(header, dict):
        raise _Garbled("header is not an object")
    return header, blob


def _decode_result(header: dict, blob: bytes, max_side: int) -> ExecutionResult:
    """Rebuild an ExecutionResult from a worker's reply, trusting nothing in it."""
    try:
        error = None if header["error"] is None else ErrorKind(header["error"])
        message, elapsed, shapes = str(header["message"])[:_MAX_MESSAGE_CHARS], float(header["elapsed_s"]), header["shapes"]
        if (shapes is None) == (error is None):
            raise _Garbled("outputs must come exactly when there is no error")
        if shapes is None:
            return ExecutionResult(None, error, message, elapsed)
        outputs, offset = [], 0
        for h, w in shapes:
            if not (type(h) is int and type(w) is int and 1 <= h <= max_side and 1 <= w <= max_side):
                raise _Garbled(f"bad shape {h}x{w}")
            grid = np.frombuffer(blob, np.uint8, h * w, offset).reshape(h, w).copy()
            offset += h * w
            outputs.append(grid)
        if offset != len(blob) or any(grid.max() > 9 for grid in outputs):
            raise _Garbled("grid bytes do not match the shapes, or a cell is not 0..9")
        return ExecutionResult(outputs, None, "", elapsed)
    except (KeyError, TypeError, ValueError) as e:
        raise _Garbled(f"bad result header: {e}") from e


def _widen_pipe(fd: int) -> int:
    """Grow a pipe's buffer to 1 MB where allowed, so that a queued job fits; return its size."""
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size: keep the default
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def _kill(w: _Worker) -> int:
    """SIGKILL the worker's process group (forked grandchildren included), reap it, close its pipes."""
    try:
        os.killpg(w.proc.pid, signal.SIGKILL)  # before wait(): its pid cannot have been reused yet
    except ProcessLookupError:
        pass
    returncode = w.proc.wait()
    for fd in (w.job_fd, w.reply_fd):
        os.close(fd)
    return returncode


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _shut_down(workers: list[_Worker], scratch: str) -> None:
    """Runs once: at close(), when the pool is garbage collected, or at interpreter exit."""
    for w in workers:
        _kill(w)
    workers.clear()
    shutil.rmtree(scratch, ignore_errors=True)
