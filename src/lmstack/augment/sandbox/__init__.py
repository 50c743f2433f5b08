"""Run model-written Python as hostile input (design §8): a policy check in the host, then a fresh,
locked-down, namespaced child process whose only way back is one JSON object of scalars behind its
supervisor's header.

Layers, outermost first (docs/security.md explains each one and what it does not cover):

1. **Policy** (host, before anything runs; `policy.py`, with run-time guards from `world.py`). RestrictedPython's
   transformer rejects `_`-prefixed names, exec/eval calls and async code, and routes every attribute read,
   write, iteration and unpacking through guard functions. On top of it: a fixed set of builtins (getattr,
   hasattr and one-argument type guarded), imports only of pure-computation modules (read-only views without
   submodules, with guarded stand-ins for the functions that take attribute names), no dunder attributes
   but a readable few, `_private` attributes only on the program's own objects, str.format through a
   guarded formatter, no string annotations, a size cap.
2. **Process** (`host.py` starts `child.py`, which runs `jail.py`). `python -I -S -B` (no environment, no
   site-packages, no user site, no .pyc writes), a new session, stdin closed; split into a supervisor that
   holds the host's result pipe and never runs program code, and the program's process.
3. **Resource limits** (`limits.py`, set by the program's process on itself). CPU seconds, address space,
   file size, open files, no new processes, no core dumps or locked memory; a size- and inode-capped tmpfs
   as the working directory (or a polled quota without a mount namespace).
4. **Kernel** (Linux, when available; `kernel.py`, `jail.py`, `child.py`). User, PID, IPC, network, UTS and
   mount namespaces with a minimal read-only root (only the standard library and system libraries exist);
   `no_new_privs`; Landlock (the same reads, writes only in the working directory, no TCP, scoped signals);
   all capabilities dropped; a seccomp filter (x86-64) that fails process creation, exec, sockets, signals,
   ptrace, metadata changes, mounts, namespaces, io_uring, bpf, keyrings, inotify, ... with EPERM, and any
   call that names a process (prlimit, affinity, priority) unless it names the caller.
5. **Host supervision** (`host.py`, `result.py`). A wall-clock deadline after which the whole process group
   is killed, capped stdout/stderr/result reads, the supervisor's header (exit status, the pre-program layer
   report) ahead of the program's result, strict parsing of that result (JSON scalars, valid text: never
   pickle), quiet policy compilation, and a cleanup that no directory shape defeats. Every failure comes back
   as a `SandboxResult` with an error kind; nothing raises in the host. `SandboxResult.layers` names the
   layers a run got, `.missing` the ones this machine lacks (with a warning, once).
"""

from lmstack.augment.sandbox.host import (
    SandboxPool,
    available_layers,
    make_tool,
    probe_layers,
    run_many,
    run_program,
    run_python,
)
from lmstack.augment.sandbox.limits import Limits
from lmstack.augment.sandbox.policy import (
    DEFAULT_MODULES,
    DEFAULT_POLICY,
    DENIED_ATTRIBUTE_PREFIXES,
    DENIED_ATTRIBUTES,
    SAFE_BUILTINS,
    Policy,
    check_program,
)
from lmstack.augment.sandbox.result import ERROR_KINDS, SandboxResult, Scalar

__all__ = [
    "DEFAULT_MODULES",
    "DEFAULT_POLICY",
    "DENIED_ATTRIBUTES",
    "DENIED_ATTRIBUTE_PREFIXES",
    "ERROR_KINDS",
    "SAFE_BUILTINS",
    "Limits",
    "Policy",
    "SandboxPool",
    "SandboxResult",
    "Scalar",
    "available_layers",
    "check_program",
    "make_tool",
    "probe_layers",
    "run_many",
    "run_program",
    "run_python",
]
