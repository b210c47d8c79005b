"""Tests for arcsl.sandbox_seccomp: the BPF program itself, run by a small interpreter here, so that
the rules are checked on any machine (tests/test_sandbox_escapes.py attacks the real thing)."""

import struct

import pytest

from arcsl.sandbox_seccomp import seccomp_program

ALLOW, EPERM, ENOSYS, KILL = 0x7FFF0000, 0x00050001, 0x00050026, 0x80000000
X86_64 = 0xC000003E


def verdict(nr: int, *args: int, arch: int = X86_64) -> int:
    """What the filter returns for one syscall: classic BPF over struct seccomp_data."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    program, pc, acc = seccomp_program(), 0, 0
    while True:
        word = program[pc]
        op, jt, jf, k = word & 0xFFFF, (word >> 16) & 0xFF, (word >> 24) & 0xFF, word >> 32
        if op == 0x06:  # ret
            return k
        if op == 0x20:  # ld word at offset k
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
            continue
        taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
        pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("name, nr, args", [
    ("read", 0, ()), ("write", 1, ()), ("mmap", 9, ()), ("fstat", 5, ()), ("getpid", 39, ()), ("wait4", 61, ()),
    ("fcntl F_GETFL", 72, (3, 3)), ("fcntl F_SETFL O_NONBLOCK", 72, (3, 4, 0o4000)), ("ioctl TCGETS", 16, (0, 0x5401)),
    ("getrlimit via prlimit64", 302, (0, 9, 0, 1)),
])
def test_what_a_child_needs_is_allowed(name, nr, args):
    assert verdict(nr, *args) == ALLOW, name


@pytest.mark.parametrize("name, nr, args", [
    ("open for reading", 2, (0, 0)), ("openat for reading", 257, (0, 0, 0)), ("kill", 62, ()), ("fork", 57, ()),
    ("F_SETOWN", 72, (3, 8)), ("F_SETSIG", 72, (3, 10)), ("F_SETOWN_EX", 72, (3, 15)), ("F_SETLEASE", 72, (3, 1024)),
    ("F_NOTIFY", 72, (3, 1026)), ("F_SETPIPE_SZ", 72, (3, 1031)), ("F_SETFL O_ASYNC", 72, (3, 4, 0o20000)),
    ("FIOSETOWN", 16, (3, 0x8901)), ("SIOCSPGRP", 16, (3, 0x8902)), ("FIOASYNC", 16, (3, 0x5452)),
    ("shmget", 29, ()), ("semget", 64, ()), ("msgget", 68, ()), ("mq_open", 240, ()), ("add_key", 248, ()),
    ("keyctl", 250, ()), ("memfd_create", 319, ()), ("setpriority", 141, ()), ("sched_setaffinity", 203, ()),
    ("setrlimit via prlimit64", 302, (0, 9, 0x1000, 0)), ("io_uring_setup", 425, ()),
])
def test_escape_routes_get_eperm(name, nr, args):
    assert verdict(nr, *args) == EPERM, name


def test_clone3_and_openat2_get_enosys_so_that_libc_falls_back_to_calls_the_filter_checks():
    assert verdict(435) == verdict(437) == ENOSYS


def test_other_architectures_and_x32_calls_kill_the_process():
    assert verdict(0, arch=0x40000003) == KILL  # i386
    assert verdict(0x40000000) == KILL  # x32 read
