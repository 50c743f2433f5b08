"""Layer 4 of the sandbox, the host's half: what the child is told to lock itself into. The child applies it
itself (`jail.py`: namespaces and the minimal root; `child.py`: no_new_privs, Landlock, no capabilities,
seccomp); the host decides the paths the child may see, builds the seccomp program and sends both in the
child's set-up message. Everything here is pure computation, so it is tested in the host.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

# Syscalls the child's seccomp filter fails with EPERM (x86-64 numbers). Capability-gated calls (reboot,
# module loading, clock setting, ...) are not listed: the child has no capabilities left.
SECCOMP_DENY_X86_64 = (
    *(56, 57, 58, 435, 59, 322),  # clone, fork, vfork, clone3, execve, execveat
    *(41, 53),  # socket, socketpair
    *(62, 200, 234, 129, 297, 424, 434, 438, 440, 448),  # kill, tkill, tgkill, sigqueueinfo, pidfd_*, process_m*
    *(101, 310, 311, 312, 298),  # ptrace, process_vm_readv/writev, kcmp, perf_event_open
    *(90, 91, 268, 452, 92, 93, 94, 260),  # chmod, fchmod, fchmodat, fchmodat2, chown, fchown, lchown, fchownat
    *(132, 235, 261, 280),  # utime, utimes, futimesat, utimensat
    *(188, 189, 190, 197, 198, 199, 463, 466),  # setxattr family, removexattr family, setxattrat, removexattrat
    *(272, 308, 165, 166, 155, 161, 428, 429, 430, 431, 432, 433, 442, 457, 458, 467),  # namespaces, mounts
    *(133, 259),  # mknod, mknodat
    *(321, 323, 425, 426, 427, 447),  # bpf, userfaultfd, io_uring, memfd_secret
    *(248, 249, 250),  # add_key, request_key, keyctl
    *(109, 112),  # setpgid, setsid
    *(303, 304),  # name_to_handle_at, open_by_handle_at
    *(253, 254, 294, 300, 301),  # inotify_init, inotify_add_watch, inotify_init1, fanotify_init, fanotify_mark
    *(103, 134, 154, 251),  # syslog (the kernel log), uselib, modify_ldt, ioprio_set
    *(240, 241, 242, 243, 244, 245),  # POSIX message queues
)

# SysV IPC (shm*, sem*, msg*): an IPC namespace already confines these to the run; without one they reach
# every same-user process on the machine, so the child adds them to the deny-list then.
SECCOMP_IPC_X86_64 = (29, 30, 31, 64, 65, 66, 67, 68, 69, 70, 71, 220)

# Calls that name a process: allowed only on the caller itself (every listed argument 0), so the program
# cannot change the rlimits, affinity, scheduling or priority of the host or of a sibling even without a PID
# namespace. The kernel reads these arguments as 32-bit ints, so only the low word is checked.
SECCOMP_SELF_ONLY_X86_64 = (
    (302, (0,)),  # prlimit64(pid, ...)
    (203, (0,)),  # sched_setaffinity(pid, ...)
    (142, (0,)),  # sched_setparam(pid, ...)
    (144, (0,)),  # sched_setscheduler(pid, ...)
    (314, (0,)),  # sched_setattr(pid, ...)
    (141, (0, 1)),  # setpriority(which=PRIO_PROCESS, who=0, ...)
    (256, (0,)),  # migrate_pages(pid, ...)
    (279, (0,)),  # move_pages(pid, ...)
    (274, (0,)),  # get_robust_list(pid, ...)
)

# classic BPF as seccomp runs it: load a 32-bit word of struct seccomp_data, compare, return an action
_LD, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ARCH_X86_64, _X32_BIT = 0xC000003E, 0x40000000
_KILL_PROCESS, _ALLOW, _EPERM = 0x80000000, 0x7FFF0000, 0x00050001
_NR, _ARCH, _ARGS = 0, 4, 16  # offsets in struct seccomp_data (args are u64; the low word comes first)


@lru_cache(maxsize=2)
def seccomp_filter(deny_ipc: bool = False) -> bytes:
    """The child's x86-64 seccomp program as packed `struct sock_filter`s. Another architecture's calls kill
    the process; x32 calls and the deny-list fail with EPERM; the self-only calls fail unless they name the
    caller."""
    deny = SECCOMP_DENY_X86_64 + (SECCOMP_IPC_X86_64 if deny_ipc else ())
    prog: list[tuple[int, object, object, int]] = [
        (_LD, 0, 0, _ARCH),
        (_JEQ, 1, 0, _ARCH_X86_64),
        (_RET, 0, 0, _KILL_PROCESS),
        (_LD, 0, 0, _NR),
        (_JGE, "deny", 0, _X32_BIT),
    ]
    prog += [(_JEQ, "deny", 0, nr) for nr in deny]
    prog += [(_JEQ, f"self{i}", 0, nr) for i, (nr, _) in enumerate(SECCOMP_SELF_ONLY_X86_64)]
    prog.append((_RET, 0, 0, _ALLOW))
    for i, (_, args) in enumerate(SECCOMP_SELF_ONLY_X86_64):
        prog.append((_LD, f"self{i}", 0, _ARGS + 8 * args[0]))  # the jt slot carries the label here
        for n, arg in enumerate(args):
            if n:
                prog.append((_LD, 0, 0, _ARGS + 8 * arg))
            prog.append((_JEQ, 0, "deny", 0))
        prog.append((_RET, 0, 0, _ALLOW))
    prog.append((_RET, "deny", 0, _EPERM))
    return _assemble(prog)


def _assemble(prog: list[tuple[int, object, object, int]]) -> bytes:
    """Resolve label jumps (forward, at most 255 instructions) and pack. An instruction whose code is not a
    jump and whose jt slot is a string defines that label."""
    labels = {jt: i for i, (code, jt, _, _) in enumerate(prog) if code != _JEQ and code != _JGE and isinstance(jt, str)}
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        if code not in (_JEQ, _JGE):
            jt = jf = 0
        offsets = [labels[x] - i - 1 if isinstance(x, str) else x for x in (jt, jf)]
        assert all(0 <= off <= 255 for off in offsets), (i, offsets)
        out.append(struct.pack("=HBBI", code, offsets[0], offsets[1], k))
    return b"".join(out)


# --------------------------------------------------------------------------------------------------------
# What the child may see: the minimal root of its mount namespace, and its Landlock read rules.


def _stdlib() -> str:
    return os.path.realpath(os.path.dirname(os.__file__))


@lru_cache(maxsize=1)
def read_roots() -> tuple[str, ...]:
    """What the child may read: the standard library, the interpreter's shared library directory, the system
    libraries and the loader cache. Real paths, no duplicates; a venv's site-packages is not among them. In
    a mount namespace these are the only host paths that exist (read-only); Landlock allows reading only them."""
    candidates = [
        _stdlib(),
        sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None,
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/etc/ld.so.cache",
    ]
    out: list[str] = []
    for path in candidates:
        if path and os.path.exists(path):
            real = os.path.realpath(path)
            if real not in out:
                out.append(real)
    return tuple(out)


@lru_cache(maxsize=1)
def jail_links() -> tuple[tuple[str, str], ...]:
    """Top-level symlinks the loader may go through (`/lib -> usr/lib` on merged-/usr systems), recreated in
    the minimal root so that library paths in the loader cache still resolve."""
    out = []
    for path in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(path):
            out.append((path, os.readlink(path)))
    return tuple(out)


@lru_cache(maxsize=1)
def jail_hidden() -> tuple[str, ...]:
    """Directories inside the read roots that the child gets as empty read-only dirs: the interpreter's own
    site-packages (third-party code is no part of the program's world)."""
    base = os.path.join(_stdlib(), "site-packages")
    return (base,) if os.path.isdir(base) else ()


@lru_cache(maxsize=1)
def jail_code() -> bytes:
    """`jail.py` compiled for the child (marshalled code; the child runs `python -I -S` and cannot import
    lmstack). The host and the child are the same interpreter, so the bytecode matches."""
    path = Path(__file__).with_name("jail.py")
    return marshal.dumps(compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True))


# --------------------------------------------------------------------------------------------------------
# Which layers a run should get, so that a missing one is named rather than silently absent.

NAMESPACE_LAYERS = ("user_ns", "pid_ns", "ipc_ns", "net_ns", "uts_ns", "mount_ns", "tmpfs_quota")
LOCKDOWN_LAYERS = ("no_new_privs", "landlock", "no_capabilities", "seccomp")


def expected_layers(kernel: bool, policy: bool) -> tuple[str, ...]:
    """Every layer a run asks for (`landlock` stands for any `landlock-vN`)."""
    out = ("policy",) if policy else ()
    out += ("rlimits",)
    if kernel:
        out += NAMESPACE_LAYERS + LOCKDOWN_LAYERS
    return out


def missing_layers(expected: tuple[str, ...], active: tuple[str, ...]) -> tuple[str, ...]:
    """The expected layers that did not take effect (names match up to a `-vN` suffix)."""
    have = {layer.partition("-v")[0] for layer in active}
    return tuple(layer for layer in expected if layer not in have)


def kernel_supported() -> bool:
    """Namespaces, Landlock and seccomp are Linux mechanisms; elsewhere only rlimits and supervision apply."""
    return sys.platform == "linux"
