"""Hostile tests for the routes of issue 17: each program attacks the pool process, reads secrets,
leaves kernel objects behind, or changes what later programs compute.

Most programs first escape the Python-level ban (`random._os`, `np.__builtins__`), as in
tests/test_sandbox.py, so that what is tested is the containment below it. A program reports
what its attack achieved in its output grid (1 = it worked), so that a refused attack and a
successful one are told apart even when both return normally.
"""

import os
import signal
import time

import numpy as np
import pytest

from arcsl.config import SandboxConfig
from arcsl.sandbox import DSL_PATH, ErrorKind, Job, SandboxPool
from tests.test_sandbox import (BOUND_S, GRID, IDENTITY, TIMEOUT_S, assert_nothing_left, assert_serves_normally, processes_in,
                                program, run_one)

TOKEN = "ARCSL-SECRET-TOKEN-42"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(sandbox_workers=2, timeout_s=TIMEOUT_S, memory_mb=1024), dsl_path=DSL_PATH) as pool:
        yield pool


@pytest.fixture
def filtered(pool):
    if not pool.is_syscall_filtered:
        pytest.skip("needs the seccomp filter (Linux x86-64): without it an escaped program owns its worker's syscalls")


def did_attack_work(pool: SandboxPool, source: str) -> bool:
    """Run an attack that returns 1 when it worked; True if it did (and returned normally)."""
    result = run_one(pool, source)
    return result.is_ok and int(result.outputs[0].max()) == 1


class PoolHang(Exception):
    pass


@pytest.fixture
def hang_guard():
    """Turns a pool blocked forever (in a pipe write, say) into a test failure instead of a hung run."""
    def on_alarm(signum, frame):
        raise PoolHang("the pool process was blocked")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 4 * BOUND_S)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# --- 1. the pool process: signals and blocking ----------------------------------------------------

# Every fd of the worker, every fcntl/ioctl that makes the kernel signal a chosen process.
SIGNAL_ROUTES = """
fcntl = real_import('fcntl')
worked = 0
for fd in range(3, 64):
    for cmd, arg in ((fcntl.F_SETOWN, owner), (10, 29), (15, 0), (1024, 0), (1026, 0x80000001)):  # F_SETSIG F_SETOWN_EX F_SETLEASE F_NOTIFY
        try:
            fcntl.fcntl(fd, cmd, arg)
            worked = 1
        except OSError:
            pass
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        worked = 1
    except OSError:
        pass
    for request in (0x8901, 0x8902, 0x5452):  # FIOSETOWN SIOCSPGRP FIOASYNC
        try:
            fcntl.ioctl(fd, request, (owner if request != 0x5452 else 1).to_bytes(4, 'little'))
            worked = 1
        except OSError:
            pass
return input_grid * 0 + worked
"""


def test_a_program_cannot_make_the_kernel_signal_the_pool_process(pool, filtered):
    received = []
    previous = signal.signal(signal.SIGIO, lambda signum, frame: received.append(signum))  # default: SIGIO kills
    try:
        assert not did_attack_work(pool, program(f"owner = {os.getpid()}\n" + SIGNAL_ROUTES))
        assert_serves_normally(pool)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGIO, previous)
    assert received == []


def test_a_program_cannot_shrink_a_pipe(pool, filtered):
    body = "fcntl = real_import('fcntl')\nworked = 0\nfor fd in range(3, 64):\n    try:\n" \
           "        fcntl.fcntl(fd, 1031, 4096)\n        worked = 1\n    except OSError:\n        pass\nreturn input_grid * 0 + worked"
    assert not did_attack_work(pool, program(body))


# The seen attack: shrink the job pipe, forge this job's reply, ignore the soft timer and spin, so
# that the pool sends the next (large) job into a pipe that nobody reads.
FORGE_AND_SPIN = """
sys, fcntl, json, struct = (real_import(name) for name in ('sys', 'fcntl', 'json', 'struct'))
signal = real_import('signal')
frame, job_id = sys._getframe(), None
while frame is not None:
    job_id = frame.f_locals.get('job_id', job_id)
    frame = frame.f_back
for fd in range(3, 64):
    try:
        fcntl.fcntl(fd, 1031, 4096)
    except OSError:
        pass
header = json.dumps({'kind': 'result', 'id': job_id, 'error': None, 'message': '', 'elapsed_s': 0,
                     'retire': False, 'shapes': [[1, 1]]}).encode()
for fd in range(3, 64):
    try:
        os.write(fd, struct.pack('<II', len(header), 1) + header + bytes([5]))
    except OSError:
        pass
signal.signal(signal.SIGALRM, signal.SIG_IGN)
signal.setitimer(signal.ITIMER_REAL, 0)
while True:
    pass
"""


def test_a_program_that_forges_its_reply_and_spins_never_blocks_the_pool(hang_guard):
    cfg = SandboxConfig(sandbox_workers=1, timeout_s=TIMEOUT_S, memory_mb=1024)
    big = "# " + "x" * (200 << 10) + "\n" + IDENTITY
    with SandboxPool(cfg, dsl_path=None) as pool:
        started = time.monotonic()
        results = pool.run([Job(program(FORGE_AND_SPIN), [GRID]), Job(big, [GRID]), Job(IDENTITY, [GRID])])
        assert time.monotonic() - started < 2 * BOUND_S
        assert results[0].error is not None or results[0].outputs[0].tolist() == [[5]], results[0]  # at most its own result
        assert all(r.is_ok for r in results[1:]), results
        assert_serves_normally(pool)


def test_a_worker_that_stops_reading_never_blocks_the_pool(hang_guard):
    cfg = SandboxConfig(sandbox_workers=1, timeout_s=TIMEOUT_S, memory_mb=1024)
    big = "# " + "x" * (4 << 20) + "\n" + IDENTITY  # more than any pipe holds
    with SandboxPool(cfg, dsl_path=None) as pool:
        os.kill(pool.worker_pids[0], signal.SIGSTOP)
        started = time.monotonic()
        result = run_one(pool, big)
        assert time.monotonic() - started < 2 * BOUND_S
        assert result.is_ok, result  # unblamed: it never reached a worker that could run it, so it ran again
        assert_serves_normally(pool)


# --- 2. secrets -------------------------------------------------------------------------------------


@pytest.fixture
def secret_files(tmp_path):
    text = tmp_path / "token.txt"
    text.write_text(TOKEN + "\n")
    npy = tmp_path / "token.npy"
    np.save(npy, np.frombuffer(TOKEN.encode(), dtype=np.uint8))
    for path in (text, npy):
        path.chmod(0o600)
    return {"text": str(text), "npy": str(npy)}


@pytest.mark.parametrize("read, which, marker", [
    ("bytes(np.load(path)).decode()", "npy", TOKEN),
    ("' '.join(np.loadtxt(path, dtype=str, delimiter='|', comments=None, ndmin=1))", "text", TOKEN),
    ("np.lib.npyio.DataSource().open(path).read()", "text", TOKEN),
    ("' '.join(np.loadtxt(path, dtype=str, delimiter='|', comments=None, ndmin=1))", "/etc/passwd", "root:"),
])
def test_numpys_file_api_cannot_read_files(pool, filtered, secret_files, read, which, marker):
    path = secret_files.get(which, which)
    source = "import numpy as np\n" + program(f"path = {path!r}\ntext = {read}\nreturn input_grid * 0 + int({marker!r} in text)",
                                              escape=False)
    result = run_one(pool, source)
    assert not (result.is_ok and result.outputs[0].max() == 1), result
    assert marker not in result.message


@pytest.mark.parametrize("read", [
    "os.read(os.open(f'/proc/{owner}/environ', os.O_RDONLY), 4096)",
    "os.read(os.open(f'/proc/{owner}/cmdline', os.O_RDONLY), 4096)",
    "os.pread(os.open(f'/proc/{owner}/mem', os.O_RDONLY), 8, id(None))",
])
def test_a_program_cannot_read_the_pool_process(pool, filtered, read):
    # As root, the dropped capabilities already refuse environ and mem (the pool holds capabilities
    # its workers lack); for a pool run by an ordinary user, the refused open() is what holds.
    body = f"owner = {os.getpid()}\ntry:\n    data = {read}\nexcept (OSError, AttributeError, ValueError):\n    data = b''\n" \
           "return input_grid * 0 + int(len(data) > 0)"
    assert not did_attack_work(pool, program(body))


def test_modules_that_numpy_and_programs_load_lazily_still_work(pool):
    source = ("import numpy as np\nimport fractions, statistics, string, dataclasses, bisect, enum\n"
              "from collections import Counter, deque\n" + program(
                  "a = np.fft.fft(np.ones(4)).real + np.linalg.inv(np.eye(4)).sum() + np.polynomial.Polynomial([1, 2])(0)\n"
                  "m = np.ma.masked_equal(input_grid, 0).count()\n"
                  "r = np.random.default_rng(0).integers(0, 1, 3).sum() + statistics.median([1, 2, 3]) + fractions.Fraction(1, 2)\n"
                  "return input_grid * 0 + int(a[0] + m + r) % 10", escape=False))
    result = run_one(pool, source)
    assert result.is_ok, result


# --- 3. kernel objects ------------------------------------------------------------------------------

# Each creates an object that outlives the process, and removes it again at once if that worked
# (so that a failing run leaves nothing on the machine).
KERNEL_OBJECTS = {
    "SysV shared memory": "i = libc.shmget(0, 64 << 20, 0o1000 | 0o600)\nif i >= 0:\n    libc.shmctl(i, 0, None)",
    "SysV semaphores": "i = libc.semget(0, 1, 0o1000 | 0o600)\nif i >= 0:\n    libc.semctl(i, 0, 0)",
    "SysV message queue": "i = libc.msgget(0, 0o1000 | 0o600)\nif i >= 0:\n    libc.msgctl(i, 0, None)",
    "POSIX message queue": "i = libc.syscall(240, b'arcsl-test-mq', 0o100 | 2, 0o600, None)\nif i >= 0:\n    libc.syscall(241, b'arcsl-test-mq')",
    "keyring key": "i = libc.syscall(248, b'user', b'arcsl-test-key', b'secret', 6, -4)\nif i >= 0:\n    libc.syscall(250, 21, i)",
}


@pytest.mark.parametrize("kind", list(KERNEL_OBJECTS))
def test_a_program_cannot_create_kernel_objects_that_outlive_it(pool, filtered, kind):
    body = "libc = real_import('ctypes').CDLL(None, use_errno=True)\n" + KERNEL_OBJECTS[kind] + "\nreturn input_grid * 0 + int(i >= 0)"
    assert not did_attack_work(pool, program(body))


# --- 4. what later programs compute ---------------------------------------------------------------------


def assert_later_jobs_unchanged(pool: SandboxPool, vandal: str, check: str, expected: int) -> None:
    pool.run([Job(vandal, [GRID])] * 2)  # both workers
    for result in pool.run([Job(check, [GRID])] * 6):
        assert result.is_ok and result.outputs[0].max() == expected, result


def test_rebinding_a_method_of_a_shared_class_does_not_change_later_jobs(pool):
    vandal = "from collections import Counter\n" + program("Counter.most_common = lambda self, n=None: [(7, 1)]\nreturn input_grid", escape=False)
    check = "from collections import Counter\n" + program("return input_grid * 0 + Counter([3, 3, 1]).most_common(1)[0][0]", escape=False)
    assert_later_jobs_unchanged(pool, vandal, check, 3)


def test_a_job_queued_behind_a_tamperer_runs_in_a_fresh_child():
    # The next job already waits in the child's pipe while a program runs; when that program
    # tampered, the child (and whatever it made of the next job) is thrown away and the job reruns.
    vandal = "from collections import Counter\n" + program("Counter.most_common = lambda self, n=None: [(7, 1)]\nreturn input_grid", escape=False)
    check = "from collections import Counter\n" + program("return input_grid * 0 + Counter([3, 3, 1]).most_common(1)[0][0]", escape=False)
    with SandboxPool(SandboxConfig(sandbox_workers=1, timeout_s=TIMEOUT_S, memory_mb=1024), dsl_path=None) as pool:
        results = pool.run([Job(source, [GRID]) for _ in range(10) for source in (vandal, check)])
    assert all(r.is_ok for r in results), results
    assert [int(r.outputs[0].max()) for r in results[1::2]] == [3] * 10


def test_replacing_a_scipy_functions_code_does_not_change_the_dsl(pool):
    vandal = "import scipy.ndimage\n" + program(
        "scipy.ndimage.label.__code__ = (lambda input, structure=None, output=None: (input * 0, 0)).__code__\nreturn input_grid",
        escape=False)
    check = "from common import *\n" + program(
        "return input_grid * 0 + len(find_connected_components(input_grid, monochromatic=True))", escape=False)
    assert_later_jobs_unchanged(pool, vandal, check, 4)  # GRID has 4 single-cell objects


def test_replacing_a_module_in_sys_modules_does_not_change_later_jobs(pool):
    vandal = program("real_import('sys').modules['numpy'] = real_import('types').SimpleNamespace(ones=None)\nreturn input_grid")
    check = "import numpy as np\n" + program("return np.ones((2, 2), dtype=int)", escape=False)
    assert_later_jobs_unchanged(pool, vandal, check, 1)


def test_a_timer_and_handler_left_behind_do_not_fire_in_later_jobs(pool):
    vandal = program("signal = real_import('signal')\n"
                     "def boom(*args):\n    raise ValueError('left behind')\n"
                     "for which, number in ((signal.ITIMER_VIRTUAL, signal.SIGVTALRM), (signal.ITIMER_PROF, signal.SIGPROF)):\n"
                     "    signal.signal(number, boom)\n    signal.setitimer(which, 0.01, 0.01)\n"
                     "signal.signal(signal.SIGALRM, boom)\nreturn input_grid")
    check = program("total = 0\nfor i in range(300000):\n    total += i\nreturn input_grid * 0 + 1", escape=False)
    assert_later_jobs_unchanged(pool, vandal, check, 1)


def test_a_hostile_job_leaves_the_workers_filtered_and_capped(pool):
    pool.run([Job(program("real_import('sys').modules.clear()\nreturn input_grid"), [GRID])] * 2)
    too_big = program("x = np.ones(1536 * 2**20, dtype=np.uint8)\nreturn input_grid")
    for result in pool.run([Job(too_big, [GRID])] * 2):
        assert result.error is ErrorKind.MEMORY_LIMIT, result
    if pool.is_syscall_filtered:
        for result in pool.run([Job(program("os.kill(os.getppid(), 0)\nreturn input_grid"), [GRID])] * 2):
            assert result.error is ErrorKind.EXCEPTION and result.message.startswith("PermissionError"), result


# --- the worker's two processes ---------------------------------------------------------------------


def test_a_child_dies_with_its_supervisor_and_the_pool_replaces_both():
    cfg = SandboxConfig(sandbox_workers=1, timeout_s=TIMEOUT_S, memory_mb=1024)
    with SandboxPool(cfg, dsl_path=None) as pool:
        scratch = pool.scratch_dir
        assert len(processes_in(scratch)) == 2  # the supervisor and its child
        os.kill(pool.worker_pids[0], signal.SIGKILL)
        assert_nothing_left(scratch)  # the child went too (PR_SET_PDEATHSIG)
        result = run_one(pool, IDENTITY)  # the pool finds out when it sends the next job, which runs elsewhere
        assert result.is_ok, result
        assert_serves_normally(pool)
