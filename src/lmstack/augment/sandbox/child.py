"""The sandbox child: layers 2-4 as seen from inside the process. `host.py` runs this file by path as
`python -I -S -B -X utf8 child.py`, in an empty environment, a fresh temporary working directory and a new
session. The child

1. reads the set-up message from stdin (`host._setup`: limits, whether to apply the policy and the kernel
   layers, the policy's lists, the Landlock read roots, the seccomp deny-list, the result pipe's fd);
2. sets its rlimits, then locks itself down (no_new_privs, Landlock, no capabilities, seccomp);
3. builds the program's world (under the policy: allowed builtins, read-only module views, the guards);
4. waits for the job message (the compiled program), closes stdin, runs it, and writes one JSON object to
   the result pipe.

A warm pool starts children ahead of need, so steps 1-3 happen before the program exists. `-I -S` leaves
only the standard library importable (not site-packages, not this file's directory), so this file must stay
self-contained: standard library only, never lmstack. It imports as little as possible, as late as possible,
to start fast. Messages are length-prefixed marshal frames of plain dicts; nothing is templated into this
source.
"""

import builtins
import marshal
import os
import resource
import sys
from _json import encode_basestring_ascii as encode_str

MB = 1 << 20


def read_exact(n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(0)  # the host went away (or closed an idle pool) before sending work
        buf += chunk
    return buf


def read_message() -> dict:
    """One frame from stdin: 8 bytes of little-endian length, then a marshalled dict (the host's `_frame`)."""
    return marshal.loads(read_exact(int.from_bytes(read_exact(8), "little")))


def write_result(fd: int, fields: dict[str, str]) -> None:
    """Write the one result object to the result pipe; `fields` maps keys to already-encoded JSON text."""
    body = ",".join(encode_str(k) + ":" + v for k, v in fields.items())
    os.write(fd, ("{" + body + "}").encode())


def encode_layers(layers: list[str]) -> str:
    return "[" + ",".join(map(encode_str, layers)) + "]"


def write_failure(fd: int, layers: list[str], kind: str, message: str) -> None:
    write_result(
        fd,
        {
            "ok": "false",
            "error": encode_str(kind),
            "message": encode_str(message[:2000]),
            "layers": encode_layers(layers),
        },
    )


# --------------------------------------------------------------------------------------------------------
# Layer 3: resource limits. Layer 4: kernel lock-down (Linux).


def set_rlimits(req: dict, layers: list[str]) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu_s"], req["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (req["memory_mb"] * MB, req["memory_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (req["file_mb"] * MB, req["file_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_NOFILE, (req["open_files"], req["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    layers.append("rlimits")
    import _signal  # not `signal`: that one imports enum, which costs milliseconds on every run

    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing us


def lock_down_kernel(read_roots: list[str], seccomp_deny: list[int], layers: list[str]) -> None:
    """no_new_privs, Landlock, no capabilities, seccomp: each step that takes effect is appended to `layers`;
    a step the kernel refuses ends the lock-down there (the caller also swallows exceptions)."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return
    layers.append("no_new_privs")
    # Landlock (syscalls 444-446 on every architecture): filesystem, TCP and scope rights by ABI version
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi >= 1:
        execute, write_file, read_file, read_dir = 1, 2, 4, 8
        remove_dir, remove_file, make_dir, make_reg = 16, 32, 128, 256
        truncate = 1 << 14 if abi >= 3 else 0
        handled_fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | truncate | (1 << 15 if abi >= 5 else 0)
        handled_net = 3 if abi >= 4 else 0  # bind and connect TCP: no rule grants them
        scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals stay inside
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        attr = struct.pack("QQQ", handled_fs, handled_net, scoped)[:size]
        rs = libc.syscall(444, ctypes.c_char_p(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if rs >= 0:
            read = execute | read_file | read_dir
            write = read | write_file | remove_dir | remove_file | make_dir | make_reg | truncate
            rules = [(p, read) for p in read_roots] + [(os.getcwd(), write)]
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
                layers.append(f"landlock-v{abi}")
            os.close(rs)
    if os.uname().machine != "x86_64":
        return
    # capset(v3, pid 0): empty effective, permitted and inheritable sets
    head = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)
    if libc.syscall(126, head, data) == 0:
        layers.append("no_capabilities")
    # seccomp: x86-64 only; other architectures and the x32 ABI get EPERM for the listed syscalls / are killed
    deny = seccomp_deny
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, 0x80000000), (ld, 0, 0, 0)]
    n_after = len(deny) + 1  # instructions between the x32 check and "deny"
    prog.append((jge, n_after, 0, 0x40000000))
    for i, nr in enumerate(deny):
        prog.append((jeq, len(deny) - i, 0, nr))
    prog += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]  # ALLOW, ERRNO(EPERM)
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.prctl(22, ul(2), fbuf, ul(0), ul(0)) == 0:  # PR_SET_SECCOMP, FILTER
        layers.append("seccomp")


# --------------------------------------------------------------------------------------------------------
# The program's world under the policy: RestrictedPython's transformed code calls these guards.


def restricted_globals(req: dict) -> dict:
    """Globals for a policy-checked program: only the allowed builtins, imports as read-only views of the
    allowed modules (public names, no submodules), and the guards that re-check names at run time."""
    import _operator as operator

    Module = type(sys)
    Namespace = type(sys.implementation)
    allowed_modules = frozenset(req["modules"])
    denied_attrs = frozenset(req["denied_attributes"])
    denied_prefixes = tuple(req["denied_prefixes"])
    views = {}
    user_types = set()

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name not in allowed_modules:
            raise ImportError(f"import of {name!r} is not allowed")
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
            raise AttributeError(f"attribute {name!r} is not allowed")
        return getattr(obj, name, *default)

    def _write_(obj):
        # module views and classes the program did not define are read-only
        if type(obj) is Namespace or (isinstance(obj, type) and obj not in user_types):
            what = "imported modules" if type(obj) is Namespace else "classes"
            raise TypeError(f"cannot modify {what}")
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

    inplace = {
        "+=": operator.iadd,
        "-=": operator.isub,
        "*=": operator.imul,
        "/=": operator.itruediv,
        "//=": operator.ifloordiv,
        "%=": operator.imod,
        "**=": operator.ipow,
        "<<=": operator.ilshift,
        ">>=": operator.irshift,
        "|=": operator.ior,
        "^=": operator.ixor,
        "&=": operator.iand,
        "@=": operator.imatmul,
    }

    class _Print:
        def __init__(self, getattr_=None):
            pass

        def _call_print(self, *objects, **kwargs):
            kwargs.pop("file", None)  # output always goes to the captured stdout
            print(*objects, **kwargs)

        def __call__(self):
            return ""

    safe = {n: getattr(builtins, n) for n in req["builtins"] if hasattr(builtins, n)}
    safe["__import__"] = _import
    safe["__build_class__"] = builtins.__build_class__
    return {
        "__builtins__": safe,
        "__name__": "__program__",
        "__metaclass__": _metaclass,
        "_getattr_": _getattr_,
        "_getitem_": operator.getitem,
        "_getiter_": iter,
        "_write_": _write_,
        "_unpack_sequence_": _unpack,
        "_iter_unpack_sequence_": _iter_unpack,
        "_print_": _Print,
        "_inplacevar_": lambda op, x, y: inplace[op](x, y),
        "_apply_": lambda f, *a, **k: f(*a, **k),
    }


# --------------------------------------------------------------------------------------------------------
# Running the job and reporting it.


def program_line(exc: BaseException) -> int | None:
    """The line of the program (not of this file) where `exc` was last raised, if it came from there."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def encode_value(value: object) -> str:
    """JSON text for an exact None/bool/int/str/finite float (Fraction and Decimal become floats). Checks
    types with `type(...) is`, so the program's `__eq__`/`__hash__`/`__repr__` are never called."""
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is str:
        return encode_str(value)
    if t is not float:
        for mod, cls in (("fractions", "Fraction"), ("decimal", "Decimal")):
            m = sys.modules.get(mod)
            if m is not None and t is getattr(m, cls):
                value, t = float(value), float
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"the result is {value!r}; return a finite number")
        return repr(value)
    raise TypeError("the result is a %s; return a number or a string" % t.__name__)  # noqa: UP031 (a program's class name)


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BaseException:
        pass


def main() -> None:
    req = read_message()
    result_fd = req["result_fd"]
    layers: list[str] = []
    set_rlimits(req, layers)
    if req["kernel"] and sys.platform == "linux":
        try:
            lock_down_kernel(req["read_roots"], req["seccomp_deny"], layers)
        except Exception:
            pass
    if req["restricted"]:
        g = restricted_globals(req)
    else:
        g = {"__builtins__": builtins, "__name__": "__program__"}

    # wait for the job, then run it
    job = read_message()
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
        flush_stdout()
        kind = "memory_limit" if type(exc) is MemoryError else "exception"
        try:
            # `%`, not an f-string: an f-string would also call `__format__` on a str subclass that the
            # program's `__str__` returns
            msg = "%s: %s" % (type(exc).__name__, exc)  # noqa: UP031
        except BaseException:
            msg = type(exc).__name__
        line = program_line(exc)
        write_failure(result_fd, layers, kind, msg if line is None else f"line {line}: {msg}")
    else:
        flush_stdout()
        try:
            encoded = encode_value(value)
            room = req["result_bytes"] - 200
            if len(encoded) > room:
                raise ValueError(f"the result is {len(encoded)} characters long; the limit is {room}")
        except BaseException as exc:
            write_failure(result_fd, layers, "bad_result", "%s: %s" % (type(exc).__name__, exc))  # noqa: UP031
        else:
            write_result(result_fd, {"ok": "true", "value": encoded, "layers": encode_layers(layers)})
    flush_stdout()


if __name__ == "__main__":
    main()
