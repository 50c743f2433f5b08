"""The sandbox child: layers 2-4 as seen from inside the process. `host.py` runs this file by path as
`python -I -S -B -X utf8 child.py`, in an empty environment, a fresh temporary working directory and a new
session. The child

1. reads the set-up message from stdin (`host._setup`: limits, whether to apply the policy and the kernel
   layers, the policy's lists, the paths the program may see, the seccomp program, the result pipe's fd);
2. runs `jail.py` (sent compiled in the set-up): the process the host started becomes a supervisor that
   holds the host's result pipe and never runs program code; a forked process in new user, PID, IPC,
   network, UTS and mount namespaces, with a minimal read-only root, continues below;
3. sets its rlimits, then locks itself down (no_new_privs, Landlock, no capabilities, seccomp) and reports
   the layers that took effect to the supervisor, before any program exists;
4. builds the program's world (under the policy: allowed builtins, read-only module views, the guards);
5. waits for the job message (the compiled program), closes stdin, runs it, and writes one JSON object to
   its pipe; the supervisor relays it to the host behind its own header.

A warm pool starts children ahead of need, so steps 1-4 happen before the program exists. `-I -S` leaves
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
    """Write the one result object to the supervisor's pipe; `fields` maps keys to already-encoded JSON text.
    The layers are not part of it: they were reported before the program existed (`write_ready`)."""
    data = ("{" + ",".join(encode_str(k) + ":" + v for k, v in fields.items()) + "}").encode()
    while data:
        data = data[os.write(fd, data) :]


def write_ready(fd: int, layers: list[str]) -> None:
    """The pre-program report: one line, one pipe write (atomic), so the program cannot write ahead of it."""
    os.write(fd, ("[" + ",".join(map(encode_str, layers)) + "]\n").encode())


def clean_text(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (chr(0xD800)) becomes a backslash escape, so the host can
    always encode what it is shown. `text` must be an exact str (no program hooks run)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_failure(fd: int, kind: str, message: str) -> None:
    write_result(fd, {"ok": "false", "error": encode_str(kind), "message": encode_str(clean_text(message[:2000]))})


# --------------------------------------------------------------------------------------------------------
# Layer 3: resource limits. Layer 4: kernel lock-down (Linux).


def set_rlimits(req: dict, layers: list[str]) -> None:
    """Limits on this process only (the kernel checks them against it; seccomp stops it changing anyone
    else's). As PID 1 of its namespace the process ignores SIGXCPU, so there the hard CPU limit is the soft
    one: SIGKILL at `cpu_s`."""
    cpu_hard = req["cpu_s"] if "pid_ns" in layers else req["cpu_s"] + 1
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu_s"], cpu_hard))
    resource.setrlimit(resource.RLIMIT_AS, (req["memory_mb"] * MB, req["memory_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (req["file_mb"] * MB, req["file_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_NOFILE, (req["open_files"], req["open_files"]))
    for name in ("RLIMIT_CORE", "RLIMIT_NPROC", "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_RTPRIO"):
        resource.setrlimit(getattr(resource, name), (0, 0))
    layers.append("rlimits")
    import _signal  # not `signal`: that one imports enum, which costs milliseconds on every run

    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing us


def lock_down_kernel(read_roots: list[str], seccomp_filter: bytes, layers: list[str]) -> None:
    """no_new_privs, Landlock, no capabilities, seccomp: each step that takes effect is appended to `layers`;
    a step the kernel refuses ends the lock-down there (the caller also swallows exceptions). The seccomp
    program comes ready-made from the host (`kernel.seccomp_filter`, x86-64 only)."""
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
    # capset(v3, pid 0): empty effective, permitted and inheritable sets (in a user namespace: all the
    # capabilities it granted, which mounting the minimal root needed)
    head = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)
    if libc.capset(head, data) == 0:
        layers.append("no_capabilities")
    if os.uname().machine != "x86_64" or not seccomp_filter:
        return
    buf = ctypes.create_string_buffer(seccomp_filter, len(seccomp_filter))
    fprog = struct.pack("HxxxxxxQ", len(seccomp_filter) // 8, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.prctl(22, ul(2), fbuf, ul(0), ul(0)) == 0:  # PR_SET_SECCOMP, FILTER
        layers.append("seccomp")


# --------------------------------------------------------------------------------------------------------
# The program's world under the policy: world.py (standard library only), sent compiled by the host
# (`policy.world_code`) as `-I` keeps the package's directory off sys.path.


def restricted_globals(req: dict) -> dict:
    """Globals for a policy-checked program (`world.restricted_globals`). In a sandbox child (not when a test
    builds this world in-process) typing's evaluation of string annotations is switched off first."""
    world = {"__name__": "lmstack_sandbox_world"}
    exec(marshal.loads(req["world_code"]), world)
    if __name__ == "__main__":
        world["no_forward_refs"]()
    return world["restricted_globals"](req)


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
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the result contains a lone surrogate, which is not text; return valid text") from None
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
    layers: list[str] = []
    # the namespaces and the supervisor split (jail.py, sent compiled by the host): only the program's
    # process returns here, with the fd of its pipe to the supervisor
    jail: dict = {"__name__": "jail"}
    exec(marshal.loads(req["jail_code"]), jail)
    result_fd = jail["enter"](req, layers)
    set_rlimits(req, layers)
    if req["kernel"] and sys.platform == "linux":
        try:
            seccomp = req["seccomp"] if "ipc_ns" in layers else req["seccomp_no_ipc_ns"]
            lock_down_kernel(req["read_roots"], seccomp, layers)
        except Exception:
            pass
    write_ready(result_fd, layers)
    del jail
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
        write_failure(result_fd, kind, msg if line is None else f"line {line}: {msg}")
    else:
        flush_stdout()
        try:
            encoded = encode_value(value)
            room = req["result_bytes"] - 200
            if len(encoded) > room:
                raise ValueError(f"the result is {len(encoded)} characters long; the limit is {room}")
        except BaseException as exc:
            write_failure(result_fd, "bad_result", "%s: %s" % (type(exc).__name__, exc))  # noqa: UP031
        else:
            write_result(result_fd, {"ok": "true", "value": encoded})
    flush_stdout()
    os._exit(0)  # no interpreter teardown: it costs milliseconds, and would run the program's __del__/atexit


if __name__ == "__main__":
    main()
