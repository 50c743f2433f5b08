"""Run model-written Python as hostile input (design §8): a policy check in the host, then a fresh,
locked-down child process whose only way back is one line of JSON scalars.

Layers, outermost first (docs/security.md explains each one and what it does not cover):

1. **Policy** (host, before anything runs; `policy.py`). RestrictedPython's transformer rejects `_`-prefixed
   names and attributes, frame/code/generator introspection attributes, exec/eval calls and async code, and
   routes every attribute read, item write, iteration and unpacking through guard functions. On top of it an
   allow-list: a fixed set of builtins, imports only of pure math/date modules (handed to the program as
   read-only views without their submodules), no `.format`/`.mro` attributes, a size cap.
2. **Process** (`host.py` starts `child.py`). `python -I -S -B` (no environment, no site-packages, no user
   site, no .pyc writes), an empty environment, a fresh temporary working directory, a new session (its own
   process group), stdin closed.
3. **Resource limits** (`limits.py`, set by the child). CPU seconds (soft: SIGXCPU, hard: SIGKILL), address
   space, file size, open files, no new processes (RLIMIT_NPROC, effective for non-root hosts), no core dumps.
4. **Kernel** (Linux, when available; reported in `SandboxResult.layers`; `kernel.py` and `child.py`).
   `no_new_privs`; Landlock: read only the standard library and system libraries, write only inside the
   temporary directory, no TCP bind/connect, no signals or abstract sockets outside the sandbox; all
   capabilities dropped; a seccomp filter (x86-64) that fails process creation, exec, sockets, signals to
   other processes, ptrace, chmod/chown/xattr, mounts, namespaces, io_uring, bpf, keyrings and session
   changes with EPERM.
5. **Host supervision** (`host.py`, `result.py`). A wall-clock deadline after which the whole process group
   is killed, capped stdout/stderr/result reads, strict parsing of the result (JSON scalars only: never
   pickle), and removal of the temporary directory. Every failure comes back as a `SandboxResult` with an
   error kind; nothing the program does raises in the host.
"""

from lmstack.augment.sandbox.host import (
    SandboxPool,
    available_layers,
    make_tool,
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
    "run_many",
    "run_program",
    "run_python",
]
