"""Layer 4 of the sandbox, the host's half: what the child is told to lock itself into. The child applies
them itself (`child.py`: no_new_privs, Landlock, no capabilities, seccomp); the host only decides the
Landlock read roots and the seccomp deny-list, and sends both in the child's set-up message.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from functools import lru_cache

# Syscalls the child's seccomp filter fails with EPERM (x86-64 numbers). Capability-gated calls (reboot,
# module loading, clock setting, ...) are not listed: the child has no capabilities left.
SECCOMP_DENY_X86_64 = (
    *(56, 57, 58, 435, 59, 322),  # clone, fork, vfork, clone3, execve, execveat
    *(41, 53),  # socket, socketpair
    *(62, 200, 234, 129, 297, 424, 434, 438),  # kill, tkill, tgkill, rt_(tg)sigqueueinfo, pidfd_*
    *(101, 310, 311, 312, 298),  # ptrace, process_vm_readv/writev, kcmp, perf_event_open
    *(90, 91, 268, 452, 92, 93, 94, 260),  # chmod, fchmod, fchmodat, fchmodat2, chown, fchown, lchown, fchownat
    *(132, 235, 261, 280),  # utime, utimes, futimesat, utimensat
    *(188, 189, 190, 197, 198, 199, 463, 466),  # setxattr family, removexattr family, setxattrat, removexattrat
    *(272, 308, 165, 166, 155, 161, 428, 429, 430, 431, 432, 433, 442),  # namespaces, mounts, chroot
    *(133, 259),  # mknod, mknodat
    *(321, 323, 425, 426, 427),  # bpf, userfaultfd, io_uring
    *(248, 249, 250),  # add_key, request_key, keyctl
    *(109, 112),  # setpgid, setsid
    *(303, 304),  # name_to_handle_at, open_by_handle_at
)


@lru_cache(maxsize=1)
def read_roots() -> tuple[str, ...]:
    """Directories the child may read under Landlock: the standard library and the system libraries."""
    candidates = [
        os.path.dirname(os.__file__),
        sysconfig.get_paths()["platstdlib"],
        sysconfig.get_config_var("LIBDIR"),
        os.path.join(sys.base_prefix, "lib"),
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
