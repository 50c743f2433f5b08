"""Run model-written Python as hostile input (design §8): a policy check in the host, then a fresh,
locked-down child process whose only way back is one line of JSON scalars.

Layers, outermost first (docs/security.md explains each one and what it does not cover):

1. **Policy** (host, before anything runs). RestrictedPython's transformer rejects `_`-prefixed names and
   attributes, frame/code/generator introspection attributes, exec/eval calls and async code, and routes
   every attribute read, item write, iteration and unpacking through guard functions. On top of it an
   allow-list: a fixed set of builtins, imports only of pure math/date modules (handed to the program as
   read-only views without their submodules), no `.format`/`.mro` attributes, a size cap.
2. **Process**. `python -I -S -B` (no environment, no site-packages, no user site, no .pyc writes), an empty
   environment, a fresh temporary working directory, a new session (its own process group), stdin closed.
3. **Resource limits**. CPU seconds (soft: SIGXCPU, hard: SIGKILL), address space, file size, open files,
   no new processes (RLIMIT_NPROC, effective for non-root hosts), no core dumps.
4. **Kernel** (Linux, when available; reported in `SandboxResult.layers`). `no_new_privs`; Landlock: read
   only the standard library and system libraries, write only inside the temporary directory, no TCP
   bind/connect, no signals or abstract sockets outside the sandbox; all capabilities dropped; a seccomp
   filter (x86-64) that fails process creation, exec, sockets, signals to other processes, ptrace,
   chmod/chown/xattr, mounts, namespaces, io_uring, bpf, keyrings and session changes with EPERM.
5. **Host supervision**. A wall-clock deadline after which the whole process group is killed, capped
   stdout/stderr/result reads, strict parsing of the result (JSON scalars only: never pickle), and removal
   of the temporary directory. Every failure comes back as a `SandboxResult` with an error kind; nothing
   the program does raises in the host.
"""

from __future__ import annotations

import ast
import builtins
import json
import marshal
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import RestrictingNodeTransformer

from lmstack.errors import ConfigError

Scalar = None | bool | int | float | str

#: Modules a program may import: pure computation, no I/O, no introspection.
DEFAULT_MODULES = frozenset(
    {
        "math",
        "cmath",
        "fractions",
        "decimal",
        "datetime",
        "calendar",
        "statistics",
        "itertools",
        "functools",
        "collections",
        "heapq",
        "bisect",
        "random",
        "re",
    }
)

#: Builtins a program may use. Everything else in `builtins` (open, exec, getattr, type, vars, input, ...)
#: is rejected by the policy and absent at run time.
SAFE_BUILTINS = frozenset(
    {
        "abs",
        "all",
        "any",
        "ascii",
        "bin",
        "bool",
        "bytes",
        "callable",
        "chr",
        "classmethod",
        "complex",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "format",
        "frozenset",
        "hash",
        "hex",
        "id",
        "int",
        "isinstance",
        "issubclass",
        "iter",
        "len",
        "list",
        "map",
        "max",
        "min",
        "next",
        "object",
        "oct",
        "ord",
        "pow",
        "print",
        "property",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "slice",
        "sorted",
        "staticmethod",
        "str",
        "sum",
        "super",
        "tuple",
        "zip",
        "True",
        "False",
        "None",
        "Ellipsis",
        "NotImplemented",
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "Exception",
        "IndexError",
        "KeyError",
        "LookupError",
        "NameError",
        "NotImplementedError",
        "OverflowError",
        "RecursionError",
        "RuntimeError",
        "StopIteration",
        "TypeError",
        "UnboundLocalError",
        "ValueError",
        "ZeroDivisionError",
    }
)

#: Attribute names rejected on top of RestrictedPython's rules: str.format/format_map read attributes named
#: inside the format string at run time; mro() reaches `object`.
DENIED_ATTRIBUTES = frozenset({"format", "format_map", "mro"})
#: Attribute prefixes of frames, tracebacks, code, generators, coroutines and async generators.
DENIED_ATTRIBUTE_PREFIXES = ("f_", "tb_", "co_", "gi_", "cr_", "ag_")

ERROR_KINDS = (
    "policy",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "file_limit",
    "output_limit",
    "exception",
    "crash",
    "bad_result",
    "protocol",
    "sandbox",
)


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. `wall_s` bounds the whole call; `cpu_s` is the RLIMIT_CPU soft limit
    (the hard limit, one second later, is SIGKILL even if SIGXCPU is ignored)."""

    cpu_s: int = 2
    wall_s: float = 5.0
    memory_mb: int = 256
    file_mb: int = 1
    open_files: int = 32
    output_bytes: int = 64_000
    result_bytes: int = 16_000

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_mb", "file_mb", "open_files", "output_bytes", "result_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Limits.{name} must be a positive integer, got {value!r}")
        if not self.wall_s > 0:
            raise ConfigError(f"Limits.wall_s must be > 0 seconds, got {self.wall_s!r}")
        if self.memory_mb < 64:
            raise ConfigError(f"Limits.memory_mb={self.memory_mb} is too small for the interpreter; use >= 64")
        if self.open_files < 16:
            raise ConfigError(f"Limits.open_files={self.open_files} is too small for the interpreter; use >= 16")


@dataclass(frozen=True)
class Policy:
    """What a program may name and import. `max_chars` bounds the host-side parse."""

    modules: frozenset[str] = DEFAULT_MODULES
    builtins: frozenset[str] = SAFE_BUILTINS
    max_chars: int = 20_000


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one run. `ok` means the program finished and returned a JSON scalar (`value`); otherwise
    `error` is one of ERROR_KINDS and `message` says what happened (with the program's line when known)."""

    ok: bool
    value: Scalar = None
    error: str | None = None
    message: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    layers: tuple[str, ...] = field(default_factory=tuple)

    def text(self) -> str:
        """A one-paragraph observation for an agent: printed output, then the value or the error."""
        parts = [self.stdout.rstrip()] if self.stdout.strip() else []
        if self.ok:
            if self.value is not None or not parts:
                parts.append(f"result: {self.value!r}")
        else:
            parts.append(f"error ({self.error}): {self.message}")
        return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# Layer 1: the policy (host side).


class _PolicyTransformer(RestrictingNodeTransformer):
    """RestrictedPython's checks plus lmstack's allow-list. Subclassed per Policy (see `_transformer`)."""

    policy: Policy = DEFAULT_POLICY

    def _check_module(self, node: ast.AST, name: str | None, level: int = 0) -> None:
        if level or name not in self.policy.modules:
            allowed = ", ".join(sorted(self.policy.modules))
            self.error(node, f'import of "{"." * level}{name or ""}" is not allowed (allowed: {allowed})')

    def visit_Import(self, node: ast.Import) -> ast.AST:
        for alias in node.names:
            self._check_module(node, alias.name)
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        self._check_module(node, node.module, node.level)
        return super().visit_ImportFrom(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _denied_builtins(self.policy.builtins):
            self.error(node, f'name "{node.id}" is not available in sandboxed programs')
        return super().visit_Name(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if node.attr in DENIED_ATTRIBUTES or node.attr.startswith(DENIED_ATTRIBUTE_PREFIXES):
            hint = " (use an f-string instead)" if node.attr.startswith("format") else ""
            self.error(node, f'attribute "{node.attr}" is not allowed{hint}')
        return super().visit_Attribute(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        # RestrictedPython refuses `d[k] += 1` and `self.n += 1`; visiting the children already routes the
        # target through `_write_` (and checks the attribute name), which is all the guard we need here.
        if isinstance(node.target, ast.Subscript | ast.Attribute):
            return self.node_contents_visit(node)
        return super().visit_AugAssign(node)


@lru_cache(maxsize=8)
def _denied_builtins(allowed: frozenset[str]) -> frozenset[str]:
    return frozenset(name for name in dir(builtins) if name not in allowed and not name.startswith("_"))


@lru_cache(maxsize=8)
def _transformer(policy: Policy) -> type[_PolicyTransformer]:
    return type("PolicyTransformer", (_PolicyTransformer,), {"policy": policy})


def check_program(source: str, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """The policy violations of `source` (an empty list means it may run). Never raises on hostile input."""
    return _compile(source, policy)[1]


def _compile(source: str, policy: Policy | None) -> tuple[object | None, list[str]]:
    if not isinstance(source, str):
        return None, [f"a program must be a str, got {type(source).__name__}"]
    if policy is not None and len(source) > policy.max_chars:
        return None, [f"program has {len(source)} characters; the limit is {policy.max_chars}"]
    try:
        if policy is None:
            return compile(source, "<program>", "exec", dont_inherit=True), []
        result = compile_restricted_exec(source, "<program>", policy=_transformer(policy))
    except SyntaxError as exc:
        return None, [f"Line {exc.lineno}: SyntaxError: {exc.msg}"[:300]]
    except (RecursionError, MemoryError, ValueError) as exc:  # absurd nesting, NUL bytes, ...
        return None, [f"program cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"]
    if result.errors:
        return None, [e if len(e) <= 300 else e[:297] + "..." for e in result.errors]
    return result.code, []


# --------------------------------------------------------------------------------------------------------
# Layers 2-4: the child. It runs as `python -I -S -B -X utf8 -c _CHILD`, reads a set-up message from stdin,
# locks itself down, then waits for the job message (the compiled program), runs it and writes one JSON
# object to the result pipe. A warm pool (SandboxPool) starts children ahead and hands each exactly one job.
# Only the standard library is available to the child, and it imports as little as possible to start fast.

_CHILD = r"""
import marshal, os, resource, sys
from _json import encode_basestring_ascii as _enc

def _read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(0)          # the host went away (or closed an idle pool) before sending work
        buf += chunk
    return buf

def _message():
    return marshal.loads(_read_exact(int.from_bytes(_read_exact(8), "little")))

req = _message()
layers = []

def _say(fields):
    # `fields` maps keys to already-encoded JSON text
    body = ",".join(_enc(k) + ":" + v for k, v in fields.items())
    os.write(req["result_fd"], ("{" + body + "}").encode())

def _layers():
    return "[" + ",".join(map(_enc, layers)) + "]"

def _fail(kind, message):
    _say({"ok": "false", "error": _enc(kind), "message": _enc(message[:2000]), "layers": _layers()})

# ---- resource limits
mb = 1 << 20
resource.setrlimit(resource.RLIMIT_CPU, (req["cpu_s"], req["cpu_s"] + 1))
resource.setrlimit(resource.RLIMIT_AS, (req["memory_mb"] * mb, req["memory_mb"] * mb))
resource.setrlimit(resource.RLIMIT_FSIZE, (req["file_mb"] * mb, req["file_mb"] * mb))
resource.setrlimit(resource.RLIMIT_NOFILE, (req["open_files"], req["open_files"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
layers.append("rlimits")
import _signal   # not `signal`: that one imports enum, which costs milliseconds on every run
_signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)   # an oversized write fails with EFBIG instead of killing us

# ---- kernel layers (Linux): no_new_privs, Landlock, no capabilities, seccomp
def _kernel():
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:          # PR_SET_NO_NEW_PRIVS
        return
    layers.append("no_new_privs")
    # Landlock (syscalls 444-446 on every architecture): filesystem, TCP and scope rights by ABI version
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi >= 1:
        execute, write_file, read_file, read_dir = 1, 2, 4, 8
        remove_dir, remove_file, make_dir, make_reg = 16, 32, 128, 256
        truncate = 1 << 14 if abi >= 3 else 0
        handled_fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | truncate | (1 << 15 if abi >= 5 else 0)
        handled_net = 3 if abi >= 4 else 0        # bind and connect TCP: no rule grants them
        scoped = 3 if abi >= 6 else 0             # abstract unix sockets and signals stay inside
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        attr = struct.pack("QQQ", handled_fs, handled_net, scoped)[:size]
        rs = libc.syscall(444, ctypes.c_char_p(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if rs >= 0:
            read = execute | read_file | read_dir
            write = read | write_file | remove_dir | remove_file | make_dir | make_reg | truncate
            rules = [(p, read) for p in req["read_roots"]] + [(os.getcwd(), write)]
            good = True
            for path, access in rules:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                if not os.path.isdir(path):
                    access &= execute | write_file | read_file | truncate
                rule = ctypes.c_char_p(struct.pack("=Qi", access, fd))
                good &= libc.syscall(445, ctypes.c_int(rs), ctypes.c_int(1), rule, ctypes.c_uint32(0)) == 0
                os.close(fd)
            if good and libc.syscall(446, ctypes.c_int(rs), ctypes.c_uint32(0)) == 0:
                layers.append("landlock-v%d" % abi)
            os.close(rs)
    if os.uname().machine != "x86_64":
        return
    # capset(v3, pid 0): empty effective, permitted and inheritable sets
    head = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)
    if libc.syscall(126, head, data) == 0:
        layers.append("no_capabilities")
    # seccomp: x86-64 only; other architectures and the x32 ABI get EPERM for the listed syscalls / are killed
    deny = req["seccomp_deny"]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, 0x80000000), (ld, 0, 0, 0)]
    n_after = len(deny) + 1                      # instructions between the x32 check and "deny"
    prog.append((jge, n_after, 0, 0x40000000))
    for i, nr in enumerate(deny):
        prog.append((jeq, len(deny) - i, 0, nr))
    prog += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]   # ALLOW, ERRNO(EPERM)
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.prctl(22, ul(2), fbuf, ul(0), ul(0)) == 0:                  # PR_SET_SECCOMP, FILTER
        layers.append("seccomp")

if req["kernel"] and sys.platform == "linux":
    try:
        _kernel()
    except Exception:
        pass

# ---- the program's world
if req["restricted"]:
    import builtins, _operator as operator
    Module = type(sys)
    Namespace = type(sys.implementation)
    allowed_modules = frozenset(req["modules"])
    denied_attrs = frozenset(req["denied_attributes"])
    denied_prefixes = tuple(req["denied_prefixes"])
    views = {}
    user_types = set()

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name not in allowed_modules:
            raise ImportError("import of %r is not allowed" % name)
        if name not in views:
            mod = __import__(name)
            names = getattr(mod, "__all__", None) or list(vars(mod))
            public = {}
            for n in names:
                if not n.startswith("_") and hasattr(mod, n) and type(getattr(mod, n)) is not Module:
                    public[n] = getattr(mod, n)
            views[name] = Namespace(**public)
        return views[name]

    def _getattr_(obj, name, *default):
        if type(name) is not str or name.startswith("_") or name in denied_attrs or name.startswith(denied_prefixes):
            raise AttributeError("attribute %r is not allowed" % (name,))
        return getattr(obj, name, *default)

    def _write_(obj):
        # module views and classes the program did not define are read-only
        if type(obj) is Namespace or (isinstance(obj, type) and obj not in user_types):
            raise TypeError("cannot modify %s" % ("imported modules" if type(obj) is Namespace else "classes"))
        return obj

    def _metaclass(name, bases, ns):
        cls = type(name, bases, ns)
        user_types.add(cls)
        return cls

    def _unpack(it, spec, getiter):
        items = list(getiter(it))
        if len(items) >= spec["min_len"]:
            for index, child in spec["childs"]:
                items[index] = _unpack(items[index], child, getiter)
        return items

    def _iter_unpack(it, spec, getiter):
        for item in getiter(it):
            yield _unpack(item, spec, getiter)

    inplace = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
               "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
               ">>=": operator.irshift, "|=": operator.ior, "^=": operator.ixor, "&=": operator.iand,
               "@=": operator.imatmul}

    class _Print:
        def __init__(self, getattr_=None):
            pass
        def _call_print(self, *objects, **kwargs):
            kwargs.pop("file", None)                  # output always goes to the captured stdout
            print(*objects, **kwargs)
        def __call__(self):
            return ""

    safe = {n: getattr(builtins, n) for n in req["builtins"] if hasattr(builtins, n)}
    safe["__import__"] = _import
    safe["__build_class__"] = builtins.__build_class__
    g = {"__builtins__": safe, "__name__": "__program__", "__metaclass__": _metaclass,
         "_getattr_": _getattr_, "_getitem_": operator.getitem, "_getiter_": iter, "_write_": _write_,
         "_unpack_sequence_": _unpack, "_iter_unpack_sequence_": _iter_unpack, "_print_": _Print,
         "_inplacevar_": lambda op, x, y: inplace[op](x, y), "_apply_": lambda f, *a, **k: f(*a, **k)}
else:
    g = {"__builtins__": __builtins__, "__name__": "__program__"}

def _line(exc):
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line

def _encode(value):
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is str:
        return _enc(value)
    if t is not float:
        for mod, cls in (("fractions", "Fraction"), ("decimal", "Decimal")):
            m = sys.modules.get(mod)
            if m is not None and t is getattr(m, cls):
                value, t = float(value), float
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("the result is %r; return a finite number" % value)
        return repr(value)
    raise TypeError("the result is a %s; return a number or a string" % t.__name__)

def _flush():
    try:
        sys.stdout.flush()
    except BaseException:
        pass

# ---- wait for the job, then run it
job = _message()
os.close(0)
code = marshal.loads(job["code"])
try:
    exec(code, g)
    entry = g.get(job["entry"]) if job["entry"] else None
    if callable(entry):
        value = entry()
    else:
        value = next((g[n] for n in ("answer", "result") if n in g), None)
except BaseException as exc:
    _flush()
    kind = "memory_limit" if type(exc) is MemoryError else "exception"
    try:
        msg = "%s: %s" % (type(exc).__name__, exc)
    except BaseException:
        msg = type(exc).__name__
    line = _line(exc)
    _fail(kind, msg if line is None else "line %d: %s" % (line, msg))
else:
    _flush()
    try:
        encoded = _encode(value)
        room = req["result_bytes"] - 200
        if len(encoded) > room:
            raise ValueError("the result is %d characters long; the limit is %d" % (len(encoded), room))
    except BaseException as exc:
        _fail("bad_result", "%s: %s" % (type(exc).__name__, exc))
    else:
        _say({"ok": "true", "value": encoded, "layers": _layers()})
_flush()
"""

# Syscalls the child's seccomp filter fails with EPERM (x86-64 numbers). Capability-gated calls (reboot,
# module loading, clock setting, ...) are not listed: the child has no capabilities left.
_SECCOMP_DENY_X86_64 = (
    56,
    57,
    58,
    435,
    59,
    322,  # clone, fork, vfork, clone3, execve, execveat
    41,
    53,  # socket, socketpair
    62,
    200,
    234,
    129,
    297,
    424,
    434,
    438,  # kill, tkill, tgkill, rt_(tg)sigqueueinfo, pidfd_*
    101,
    310,
    311,
    312,
    298,  # ptrace, process_vm_readv/writev, kcmp, perf_event_open
    90,
    91,
    268,
    452,
    92,
    93,
    94,
    260,  # chmod, fchmod, fchmodat, fchmodat2, chown, fchown, lchown, fchownat
    132,
    235,
    261,
    280,  # utime, utimes, futimesat, utimensat
    188,
    189,
    190,
    197,
    198,
    199,
    463,
    466,  # setxattr family, removexattr family, setxattrat, removexattrat
    272,
    308,
    165,
    166,
    155,
    161,
    428,
    429,
    430,
    431,
    432,
    433,
    442,  # namespaces, mounts, chroot
    133,
    259,  # mknod, mknodat
    321,
    323,
    425,
    426,
    427,  # bpf, userfaultfd, io_uring
    248,
    249,
    250,  # add_key, request_key, keyctl
    109,
    112,  # setpgid, setsid
    303,
    304,  # name_to_handle_at, open_by_handle_at
)


@lru_cache(maxsize=1)
def _read_roots() -> tuple[str, ...]:
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


def _frame(obj: object) -> bytes:
    data = marshal.dumps(obj)
    return len(data).to_bytes(8, "little") + data


def _setup(restricted: bool, limits: Limits, policy: Policy, kernel: bool, result_fd: int) -> bytes:
    return _frame(
        {
            "restricted": restricted,
            "result_fd": result_fd,
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "file_mb": limits.file_mb,
            "open_files": limits.open_files,
            "result_bytes": limits.result_bytes,
            "kernel": kernel,
            "read_roots": list(_read_roots()),
            "seccomp_deny": list(_SECCOMP_DENY_X86_64),
            "modules": sorted(policy.modules),
            "builtins": sorted(policy.builtins),
            "denied_attributes": sorted(DENIED_ATTRIBUTES),
            "denied_prefixes": list(DENIED_ATTRIBUTE_PREFIXES),
        }
    )


# --------------------------------------------------------------------------------------------------------
# Layer 5: the host side of one run.


@dataclass
class _Child:
    proc: subprocess.Popen
    result_r: int
    workdir: str


def _spawn(limits: Limits, policy: Policy | None, kernel: bool) -> _Child:
    """Start a child in a fresh temp dir and send it its set-up; it locks itself down and waits for a job."""
    workdir = tempfile.mkdtemp(prefix="lmstack-sbx-")
    result_r, result_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_w,),
            cwd=workdir,
            env={},
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        os.close(result_r)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.close(result_w)
    child = _Child(proc, result_r, workdir)
    try:
        proc.stdin.write(_setup(policy is not None, limits, policy or DEFAULT_POLICY, kernel, result_w))
        proc.stdin.flush()
    except OSError:
        pass  # it died at start-up: _finish reports that as a crash
    return child


def _finish(child: _Child, code: object, entry: str | None, limits: Limits, start: float) -> SandboxResult:
    """Hand the child its one job, supervise it until `start + limits.wall_s`, then dispose of it."""
    proc, deadline = child.proc, start + limits.wall_s
    try:
        try:
            proc.stdin.write(_frame({"code": marshal.dumps(code), "entry": entry or ""}))
            proc.stdin.close()
        except OSError:
            pass
        bufs, stop = _collect(proc, child.result_r, deadline, limits)
        exited = stop is None and _wait_exit(proc.pid, deadline)
        _kill_group(proc)  # kills stragglers while the (zombie) leader still pins the group id
        proc.wait()
        stop = stop if stop else (None if exited else "timeout")
        return _classify(proc.returncode, bufs, stop, limits, time.monotonic() - start)
    finally:
        _discard(child)


def _discard(child: _Child) -> None:
    proc = child.proc
    if proc.returncode is None:
        _kill_group(proc)
        proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            f.close()
        except OSError:
            pass
    os.close(child.result_r)
    shutil.rmtree(child.workdir, ignore_errors=True)


def _policy_failure(errors: list[str], start: float) -> SandboxResult:
    return SandboxResult(False, error="policy", message="; ".join(errors)[:4000], wall_s=time.monotonic() - start)


def _spawn_failure(exc: OSError, start: float) -> SandboxResult:
    # cannot start a child: no temp space, no free fds, ... (the host's problem, reported as a result)
    return SandboxResult(
        False, error="sandbox", message=f"could not start the sandbox: {exc}", wall_s=time.monotonic() - start
    )


def run_program(
    source: str,
    *,
    limits: Limits | None = None,
    policy: Policy | None = DEFAULT_POLICY,
    entry: str | None = "solution",
    kernel: bool = True,
) -> SandboxResult:
    """Run `source` in a fresh sandboxed process and return its value as a JSON scalar.

    The value is `entry()` when the program defines that callable (PAL's `def solution()`), else its
    module-level `answer` or `result` variable, else None. `policy=None` skips the policy layer (the program
    gets full Python inside the process sandbox): only for testing the lower layers. `kernel=False` skips
    the Landlock/seccomp/capability layer. Never raises because of what the program does.
    """
    limits = limits or Limits()
    start = time.monotonic()
    code, errors = _compile(source, policy)
    if errors:
        return _policy_failure(errors, start)
    try:
        child = _spawn(limits, policy, kernel)
    except OSError as exc:
        return _spawn_failure(exc, start)
    return _finish(child, code, entry, limits, start)


class SandboxPool:
    """Warm, single-use sandbox processes. Each child is started ahead of need (interpreter start-up,
    limits, Landlock and seccomp all done) and then runs exactly one program in its own temp dir, so the
    pool hides start-up latency without sharing anything between programs. Thread-safe; `map` runs
    `size` programs at a time. Close it (or use `with`) to stop the idle children."""

    def __init__(
        self,
        size: int = 2,
        *,
        limits: Limits | None = None,
        policy: Policy | None = DEFAULT_POLICY,
        kernel: bool = True,
    ) -> None:
        if size < 1:
            raise ConfigError(f"pool size must be >= 1, got {size}")
        self.size, self.limits, self.policy, self.kernel = size, limits or Limits(), policy, kernel
        self._idle: deque[_Child] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _discard_all, self._idle)
        for _ in range(size):
            self._refill()

    def run(self, source: str, entry: str | None = "solution") -> SandboxResult:
        """Like `run_program` with this pool's limits and policy; the wall clock starts at this call."""
        start = time.monotonic()
        code, errors = _compile(source, self.policy)
        if errors:
            return _policy_failure(errors, start)
        try:
            child = self._take()
        except OSError as exc:
            return _spawn_failure(exc, start)
        self._refill()  # its replacement starts up while this program runs
        return _finish(child, code, entry, self.limits, start)

    def map(self, sources: Sequence[str], entry: str | None = "solution") -> list[SandboxResult]:
        """Run all `sources`, `size` at a time; results in input order."""
        if self.size == 1 or len(sources) <= 1:
            return [self.run(s, entry) for s in sources]
        with ThreadPoolExecutor(max_workers=self.size) as workers:
            return list(workers.map(lambda s: self.run(s, entry), sources))

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.popleft()
                if child.proc.poll() is None:
                    return child
                _discard(child)
        return _spawn(self.limits, self.policy, self.kernel)

    def _refill(self) -> None:
        with self._lock:
            if self._closed or len(self._idle) >= self.size:
                return
        try:
            child = _spawn(self.limits, self.policy, self.kernel)
        except OSError:
            return  # run() will try again, and report a failure as a result
        with self._lock:
            if not self._closed:
                self._idle.append(child)
                return
        _discard(child)


def _discard_all(idle: deque[_Child]) -> None:
    while idle:
        try:
            _discard(idle.popleft())
        except IndexError:
            break


def _collect(
    proc: subprocess.Popen, result_fd: int, deadline: float, limits: Limits
) -> tuple[dict[str, bytes], str | None]:
    """Read stdout, stderr and the result pipe until all close. Returns the bytes and why reading stopped
    early: None (all closed), "timeout" or "output_limit"."""
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", result_fd: "result"}
    caps = {"stdout": limits.output_bytes, "stderr": limits.output_bytes, "result": limits.result_bytes}
    bufs = {name: bytearray() for name in caps}
    with selectors.DefaultSelector() as sel:
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {k: bytes(v) for k, v in bufs.items()}, "timeout"
            for key, _ in sel.select(remaining):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                name = streams[key.fd]
                room = caps[name] - len(bufs[name])
                bufs[name] += chunk[:room]
                if len(chunk) > room:
                    return {k: bytes(v) for k, v in bufs.items()}, "output_limit"
    return {k: bytes(v) for k, v in bufs.items()}, None


def _wait_exit(pid: int, deadline: float) -> bool:
    """Wait (without reaping) until `pid` exits or the deadline passes."""
    pause = 0.0005
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _kill_group(proc: subprocess.Popen) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _classify(
    returncode: int, bufs: dict[str, bytes], stop: str | None, limits: Limits, wall_s: float
) -> SandboxResult:
    stdout = bufs["stdout"].decode("utf-8", "replace")
    stderr = bufs["stderr"].decode("utf-8", "replace")

    def fail(kind: str, message: str, layers: tuple[str, ...] = ()) -> SandboxResult:
        return SandboxResult(
            False, error=kind, message=message, stdout=stdout, stderr=stderr, wall_s=wall_s, layers=layers
        )

    if stop == "timeout":
        return fail("timeout", f"the program did not finish within {limits.wall_s:g} s and was killed")
    if stop == "output_limit":
        return fail("output_limit", f"the program wrote more than {limits.output_bytes} bytes and was killed")
    if returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return fail(
                "cpu_limit", f"the program used more than {limits.cpu_s} s of CPU and was killed ({_signal_name(sig)})"
            )
        if sig == signal.SIGXFSZ:
            return fail("file_limit", f"the program wrote a file larger than {limits.file_mb} MB")
        return fail("crash", f"the program crashed ({_signal_name(sig)})")
    parsed = _parse_result(bufs["result"])
    if parsed is None:
        tail = stderr.strip().splitlines()[-1:] or [""]
        return fail("crash", f"the program exited with status {returncode} without a result {tail[0][:300]}".strip())
    if isinstance(parsed, str):
        return fail("protocol", parsed)
    layers = tuple(x for x in parsed.get("layers", ()) if isinstance(x, str))
    if parsed.get("ok") is True:
        return SandboxResult(
            True, value=parsed.get("value"), stdout=stdout, stderr=stderr, wall_s=wall_s, layers=layers
        )
    kind = parsed.get("error")
    kind = kind if kind in ERROR_KINDS else "protocol"
    message = parsed.get("message")
    return fail(kind, message if isinstance(message, str) else "", layers)


def _parse_result(raw: bytes) -> dict | str | None:
    """Strictly decode the child's result line: a flat JSON object whose values are scalars or a list of
    strings. Returns None if there is none, a description string if it is malformed."""
    if not raw:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError):
        return "the result channel carried something that is not a JSON object"
    if not isinstance(obj, dict):
        return "the result channel carried something that is not a JSON object"
    for key, value in obj.items():
        if key == "layers":
            if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                return "malformed result: layers"
        elif not (value is None or isinstance(value, bool | int | float | str)):
            return f"malformed result: {key} is not a JSON scalar"
    if isinstance(obj.get("value"), float) and not math.isfinite(obj["value"]):
        return "malformed result: a non-finite number"
    return obj


# --------------------------------------------------------------------------------------------------------
# Conveniences: many programs at once, an agent tool, and what this machine supports.


def run_many(
    sources: Sequence[str],
    *,
    workers: int = 2,
    limits: Limits | None = None,
    policy: Policy | None = DEFAULT_POLICY,
    entry: str | None = "solution",
) -> list[SandboxResult]:
    """Run several programs through a warm pool of `workers` single-use processes (nothing is shared between
    runs). Results come back in input order."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if len(sources) <= 1:
        return [run_program(s, limits=limits, policy=policy, entry=entry) for s in sources]
    with SandboxPool(min(workers, len(sources)), limits=limits, policy=policy) as pool:
        return pool.map(sources, entry)


def run_python(code: str, limits: Limits | None = None) -> str:
    """The sandbox as an agent tool (ReAct's python action): run `code`, return what it printed plus its
    `solution()`/`answer`/`result` value, or the error, as text. Never raises."""
    return run_program(code, limits=limits).text()


def make_tool(limits: Limits | None = None) -> Callable[[str], str]:
    """`run_python` with fixed limits, for registries that expect a one-argument callable."""
    return lambda code: run_python(code, limits)


def available_layers() -> tuple[str, ...]:
    """The layers a benign run gets on this machine (e.g. rlimits, no_new_privs, landlock-v7, seccomp)."""
    return run_program("answer = 1", limits=Limits(cpu_s=2, wall_s=10.0)).layers
