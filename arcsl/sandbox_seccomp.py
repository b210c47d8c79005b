"""The sandbox's syscall filter: a seccomp BPF program for Linux x86-64, written by hand.

The worker's supervisor calls `prepare_seccomp` once (it drops every capability and sets
no_new_privs, which its children inherit, and builds the program); each child calls
`Seccomp.install` after the fork, before it runs any job. The filter returns EPERM for the
syscalls in `_X86_64_DENIED` and for the fcntl/ioctl commands listed below, ENOSYS for clone3 and
openat2 (so that libc falls back to calls it can check), and kills the process for any other
architecture or x32 call. Everything else is allowed. Like sandbox_worker.py, it imports nothing
from arcsl: the worker loads it by path.
"""

import os
from dataclasses import dataclass

# Syscalls that fail with EPERM in a child once the filter is on. It needs none of them after
# startup: every module is loaded and every file it uses is open before the fork.
_X86_64_DENIED = {
    "new processes and programs": (56, 57, 58, 59, 322),  # clone fork vfork execve execveat
    "signals to any process": (62, 200, 234, 129, 297, 424),  # kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal
    "other processes' memory and fds": (101, 310, 311, 438, 434, 312),  # ptrace process_vm_readv/writev pidfd_getfd pidfd_open kcmp
    # setpriority sched_setparam sched_setscheduler sched_setaffinity sched_setattr ioprio_set
    # migrate_pages move_pages process_madvise process_mrelease: all reach other processes of the same user
    "other processes' scheduling and memory": (141, 142, 144, 203, 314, 251, 256, 279, 440, 448),
    "leaving the process group": (112, 109),  # setsid setpgid
    "network": (41, 53),  # socket socketpair
    "raising limits": (160,),  # setrlimit (prlimit64 is checked below: getrlimit uses it too)
    # open openat creat name_to_handle_at open_by_handle_at uselib inotify_add_watch fanotify_init
    # fanotify_mark memfd_create memfd_secret userfaultfd: no file is read or written after the fork
    "opening files": (2, 257, 85, 303, 304, 134, 254, 300, 301, 319, 447, 323),
    # unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir link linkat symlink symlinkat
    # chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat truncate ftruncate mknod mknodat
    # utime utimes utimensat futimesat (l,f)setxattr (l,f)removexattr fallocate
    "changing files": (
        87, 263, 82, 264, 316, 83, 258, 84, 86, 265, 88, 266, 90, 91, 268, 452, 92, 93, 94,
        260, 76, 77, 133, 259, 132, 235, 280, 261, 188, 189, 190, 197, 198, 199, 285,
    ),
    # shmget shmat shmctl shmdt semget semop semctl semtimedop msgget msgsnd msgrcv msgctl,
    # mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr, add_key request_key
    # keyctl: objects that outlive the process, outside its memory cap
    "kernel objects": (
        29, 30, 31, 67, 64, 65, 66, 220, 68, 69, 70, 71, 240, 241, 242, 243, 244, 245, 248, 249, 250,
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
_X86_64_NOSYS = (435, 437)  # clone3, openat2: ENOSYS makes libc fall back to clone / openat, refused above
_X86_64_FCNTL, _X86_64_IOCTL, _X86_64_PRLIMIT64 = 72, 16, 302
# fcntl commands that make the kernel signal a chosen process (the pool, say) or resize a pipe:
# F_SETOWN F_SETSIG F_SETOWN_EX F_SETLEASE F_NOTIFY F_SETPIPE_SZ; F_SETFL is refused with O_ASYNC.
_DENIED_FCNTL = (8, 10, 15, 1024, 1026, 1031)
_F_SETFL, _O_ASYNC = 4, 0o20000
_DENIED_IOCTL = (0x8901, 0x8902, 0x5452)  # FIOSETOWN SIOCSPGRP FIOASYNC: the same as ioctls


@dataclass(slots=True)
class Seccomp:
    """A filter prepared in the supervisor, for each child to install after the fork."""

    libc: object
    fprog_ref: object  # ctypes.byref(struct sock_fprog); keeps the program's memory alive
    filters: object

    def install(self) -> bool:
        pr_set_seccomp, seccomp_mode_filter = 22, 2
        return self.libc.prctl(pr_set_seccomp, seccomp_mode_filter, self.fprog_ref, 0, 0) == 0


def prepare_seccomp(libc) -> Seccomp | None:
    """Drop capabilities and set no_new_privs here (children inherit both), and build the filter;
    None where unsupported or refused."""
    if libc is None or os.uname().machine != "x86_64":
        return None
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    # Capabilities first: a worker started by root keeps uid 0 but loses root's powers
    # (raising its limits, mounting, ignoring file permissions, reading other processes...).
    cap_header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    cap_data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all empty
    pr_set_no_new_privs = 38
    if libc.capset(cap_header, cap_data) != 0 or libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        return None
    program = seccomp_program()
    filters = (ctypes.c_uint64 * len(program))(*program)  # struct sock_filter is 8 bytes
    fprog = SockFprog(len(program), ctypes.addressof(filters))
    return Seccomp(libc, ctypes.byref(fprog), filters)


def seccomp_program() -> list[int]:
    """Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}, as u64 words."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    arg1, arg2 = 24, 32  # low words of args[1] and args[2] (little-endian)
    code = [  # (opcode, jump-if-true, jump-if-false, k); a jump is a label name, or 0 for "next"
        (ld, 0, 0, 4), (jeq, 0, "kill", 0xC000003E),  # arch must be x86-64 (no i386 int 0x80)
        (ld, 0, 0, 0), (jge, "kill", 0, 0x40000000),  # no x32 syscalls
        (jeq, "fcntl", 0, _X86_64_FCNTL), (jeq, "ioctl", 0, _X86_64_IOCTL),
        (jeq, "prlimit64", 0, _X86_64_PRLIMIT64),
    ]
    code += [(jeq, "enosys", 0, nr) for nr in _X86_64_NOSYS]
    code += [(jeq, "eperm", 0, nr) for group in _X86_64_DENIED.values() for nr in group]
    code += [(ret, 0, 0, allow)]
    blocks = {
        "fcntl": [(ld, 0, 0, arg1)] + [(jeq, "eperm", 0, cmd) for cmd in _DENIED_FCNTL]
                 + [(jeq, 0, "allow", _F_SETFL), (ld, 0, 0, arg2), (jset, "eperm", "allow", _O_ASYNC)],
        "ioctl": [(ld, 0, 0, arg1)] + [(jeq, "eperm", 0, request) for request in _DENIED_IOCTL] + [(ret, 0, 0, allow)],
        "prlimit64": [(ld, 0, 0, arg2), (jeq, 0, "eperm", 0), (ld, 0, 0, arg2 + 4), (jeq, "allow", "eperm", 0)],  # new limit = NULL
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
        jump = 0 if target == 0 else where[target] - i - 1
        assert 0 <= jump < 256, f"a BPF jump must fit in 8 bits, got {jump} to {target}"
        return jump

    return [op | offset(jt, i) << 16 | offset(jf, i) << 24 | k << 32 for i, (op, jt, jf, k) in enumerate(code)]
