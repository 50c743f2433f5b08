"""Layers 2 and 5 of the sandbox, the host side: start a locked-down child, hand it one compiled program, supervise
it against the wall clock and the output caps, and always clean up (kill its process group, remove its temp
dir). `SandboxPool` keeps children warm; each still runs exactly one program.

The child is `child.py` next to this file, run by path as `python -I -S -B -X utf8 child.py` in an empty
environment: it gets its configuration as a set-up message on stdin (with `jail.py` compiled, which splits
it into a supervisor and the namespaced program process), then waits for the job message (the compiled
program), so nothing is templated into its source. Nothing here raises because of what a program does: every
failure, the host's own included (no fds, no temp space, a cleanup error), comes back as a `SandboxResult`.
"""

from __future__ import annotations

import dataclasses
import marshal
import os
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lmstack.augment.sandbox.kernel import (
    expected_layers,
    jail_code,
    jail_hidden,
    jail_links,
    kernel_supported,
    missing_layers,
    read_roots,
    seccomp_filter,
)
from lmstack.augment.sandbox.limits import Limits
from lmstack.augment.sandbox.policy import (
    DEFAULT_POLICY,
    DENIED_ATTRIBUTE_PREFIXES,
    DENIED_ATTRIBUTES,
    Policy,
    compile_program,
    world_code,
)
from lmstack.augment.sandbox.result import SandboxResult, classify, clean_text
from lmstack.errors import ConfigError

#: The program the child interpreter runs (by absolute path: the child's working directory is its temp dir).
CHILD_PATH = Path(__file__).resolve().with_name("child.py")
#: Room on the result pipe for the supervisor's header (its pre-program layer report is at most 4 KiB).
HEADER_BYTES = 8192


# --------------------------------------------------------------------------------------------------------
# The messages to the child: a length-prefixed marshal frame for the set-up, then one for the job.


def _frame(obj: object) -> bytes:
    data = marshal.dumps(obj)
    return len(data).to_bytes(8, "little") + data


def _setup(restricted: bool, limits: Limits, policy: Policy, kernel: bool, result_fd: int) -> bytes:
    """The child's set-up message: every key `child.py` and `jail.py` read from it, as plain marshal-able
    values (the jail's code and the seccomp programs as bytes)."""
    return _frame(
        {
            "restricted": restricted,
            "result_fd": result_fd,
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "file_mb": limits.file_mb,
            "open_files": limits.open_files,
            "result_bytes": limits.result_bytes,
            "disk_mb": limits.disk_mb,
            "max_files": limits.max_files,
            "kernel": kernel,
            "jail_code": jail_code(),
            "world_code": world_code(),  # world.py compiled: the program's world under the policy
            "read_roots": list(read_roots()),
            "jail_hidden": list(jail_hidden()),
            "jail_links": [list(link) for link in jail_links()],
            "seccomp": seccomp_filter(False),
            "seccomp_no_ipc_ns": seccomp_filter(True),
            "modules": sorted(policy.modules),
            "builtins": sorted(policy.builtins),
            "denied_attributes": sorted(DENIED_ATTRIBUTES),
            "denied_prefixes": list(DENIED_ATTRIBUTE_PREFIXES),
        }
    )


# --------------------------------------------------------------------------------------------------------
# The policy check, quietly: compile() warns (SyntaxWarning for `x is 1`, ...) through the process-wide
# warnings machinery, so a hostile program could flood the host's stderr. catch_warnings swaps global state,
# so the swap is serialised.

_COMPILE_LOCK = threading.Lock()


def _compile(source: str, policy: Policy | None) -> tuple[object | None, list[str]]:
    with _COMPILE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, errors = compile_program(source, policy)
    return code, [clean_text(e) for e in errors]


# --------------------------------------------------------------------------------------------------------
# One run: start a child, hand it its job, supervise it, dispose of it.


@dataclass
class _Child:
    proc: subprocess.Popen
    result_r: int
    workdir: str
    expected: tuple[str, ...]


def _spawn(limits: Limits, policy: Policy | None, kernel: bool) -> _Child:
    """Start a child in a fresh temp dir and send it its set-up; it locks itself down and waits for a job.
    Leaves nothing behind (fds, temp dir) if any step fails."""
    kernel = kernel and kernel_supported()
    result_r, result_w = os.pipe()
    workdir = None
    try:
        workdir = tempfile.mkdtemp(prefix="lmstack-sbx-")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", os.fspath(CHILD_PATH)],
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
        if workdir is not None:
            remove_tree(workdir)
        raise
    finally:
        os.close(result_w)
    child = _Child(proc, result_r, workdir, expected_layers(kernel, policy is not None))
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
        result = classify(proc.returncode, bufs, stop, limits, time.monotonic() - start)
    finally:
        _discard(child)
    return _with_layers(result, child.expected)


def _with_layers(result: SandboxResult, expected: tuple[str, ...]) -> SandboxResult:
    """Add the policy layer and name every expected layer that did not take effect (a warning, once per set)."""
    layers = (("policy",) if "policy" in expected else ()) + result.layers
    missing = missing_layers(expected, layers) if result.layers else ()
    if missing:
        _warn_missing(missing)
    return dataclasses.replace(result, layers=layers, missing=missing)


_WARNED: set[tuple[str, ...]] = set()


def _warn_missing(missing: tuple[str, ...]) -> None:
    if missing not in _WARNED:
        _WARNED.add(missing)
        warnings.warn(
            f"the sandbox runs without {', '.join(missing)} on this machine (see docs/security.md); "
            "SandboxResult.missing names them in every result",
            RuntimeWarning,
            stacklevel=5,  # run_program's caller
        )


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
    remove_tree(child.workdir)


def remove_tree(path: str) -> bool:
    """Delete a directory tree that a hostile program may have shaped (thousands of levels deep, paths past
    PATH_MAX, directories without permissions, symlinks, fifos): iteratively, without recursion, with at
    most two directory fds open, never following a symlink. Every subdirectory is moved up to the top level
    before it is opened, so nothing is ever more than one level below `path`. Returns whether the tree is
    gone; never raises."""
    try:
        top = _open_dir(path, None)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    prefix, serial = f".lmstack-rm-{os.urandom(4).hex()}-", 0  # names the program cannot have chosen
    try:
        pending: list[str | None] = [None]  # None: `path` itself; else a name directly under it
        flat: list[str] = []
        while pending:
            name = pending.pop()
            try:
                fd = top if name is None else _open_dir(name, top)
            except OSError:
                continue
            try:
                if name is not None:
                    flat.append(name)
                for entry in list(os.scandir(fd)):
                    if not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=fd)
                        continue
                    _unlock(entry.name, fd)
                    if name is None:
                        pending.append(entry.name)
                    else:
                        serial += 1
                        new = f"{prefix}{serial}"
                        os.rename(entry.name, new, src_dir_fd=fd, dst_dir_fd=top)
                        pending.append(new)
            except OSError:
                pass
            finally:
                if fd != top:
                    os.close(fd)
        for name in flat:
            try:
                os.rmdir(name, dir_fd=top)
            except OSError:
                pass
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int:
    """Open a directory (never a symlink), first giving its owner rwx if the program took them away."""
    _unlock(name, dir_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _unlock(name: str, dir_fd: int | None) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
            os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)  # a directory: no symlink to follow
    except OSError:
        pass


def _policy_failure(errors: list[str], start: float) -> SandboxResult:
    return SandboxResult(
        False, error="policy", message="; ".join(errors)[:4000], wall_s=time.monotonic() - start, layers=("policy",)
    )


def _host_failure(exc: BaseException, start: float) -> SandboxResult:
    # cannot start or finish a child: no temp space, no free fds, a cleanup error... (the host's problem,
    # reported as a result)
    return SandboxResult(
        False,
        error="sandbox",
        message=clean_text(f"the sandbox failed: {type(exc).__name__}: {exc}")[:2000],
        wall_s=time.monotonic() - start,
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
    the namespace/Landlock/seccomp/capability layers. Never raises because of what the program does, nor
    because the host ran out of something: that is a `sandbox` error.
    """
    limits = limits or Limits()
    start = time.monotonic()
    try:
        code, errors = _compile(source, policy)
        if errors:
            return _policy_failure(errors, start)
        child = _spawn(limits, policy, kernel)
        return _finish(child, code, entry, limits, start)
    except Exception as exc:
        return _host_failure(exc, start)


class SandboxPool:
    """Warm, single-use sandbox processes. Each child is started ahead of need (interpreter start-up,
    namespaces, limits, Landlock and seccomp all done) and then runs exactly one program in its own temp
    dir, so the pool hides start-up latency without sharing anything between programs: a warm sibling is
    in PID namespaces of its own, so a program cannot name it. Thread-safe; `map` runs `size` programs at a
    time. Close it (or use `with`) to stop the idle children."""

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
        try:
            code, errors = _compile(source, self.policy)
            if errors:
                return _policy_failure(errors, start)
            child = self._take()
            self._refill()  # its replacement starts up while this program runs
            return _finish(child, code, entry, self.limits, start)
        except Exception as exc:
            return _host_failure(exc, start)

    def map(self, sources: Sequence[str], entry: str | None = "solution") -> list[SandboxResult]:
        """Run all `sources`, `size` at a time; results in input order."""
        if self.size == 1 or len(sources) <= 1:
            return [self.run(s, entry) for s in sources]
        try:
            with ThreadPoolExecutor(max_workers=self.size) as workers:
                return list(workers.map(lambda s: self.run(s, entry), sources))
        except RuntimeError:  # no threads to be had: one at a time (run() itself never raises)
            return [self.run(s, entry) for s in sources]

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
        except Exception:
            return  # run() will try again, and report a failure as a result
        with self._lock:
            if not self._closed:
                self._idle.append(child)
                return
        _discard(child)


def _discard_all(idle: deque[_Child]) -> None:
    """Stop every idle child; one that fails to clean up does not keep the others alive."""
    while idle:
        try:
            child = idle.popleft()
        except IndexError:
            break
        try:
            _discard(child)
        except Exception:
            pass


def _collect(
    proc: subprocess.Popen, result_fd: int, deadline: float, limits: Limits
) -> tuple[dict[str, bytes], str | None]:
    """Read stdout, stderr and the result pipe until all close. Returns the bytes and why reading stopped
    early: None (all closed), "timeout" or "output_limit"."""
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", result_fd: "result"}
    caps = {"stdout": limits.output_bytes, "stderr": limits.output_bytes, "result": limits.result_bytes + HEADER_BYTES}
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
    if len(sources) > 1:
        pool = results = None
        try:
            pool = SandboxPool(min(workers, len(sources)), limits=limits, policy=policy)
            results = pool.map(sources, entry)
        except Exception:
            pass  # the pool itself failed (not a program): fall back to one fresh process per program
        finally:
            if pool is not None:
                pool.close()
        if results is not None:
            return results
    return [run_program(s, limits=limits, policy=policy, entry=entry) for s in sources]


def run_python(code: str, limits: Limits | None = None) -> str:
    """The sandbox as an agent tool (ReAct's python action): run `code`, return what it printed plus its
    `solution()`/`answer`/`result` value, or the error, as text. Never raises."""
    return run_program(code, limits=limits).text()


def make_tool(limits: Limits | None = None) -> Callable[[str], str]:
    """`run_python` with fixed limits, for registries that expect a one-argument callable."""
    return lambda code: run_python(code, limits)


def probe_layers() -> SandboxResult:
    """A benign run with every layer asked for: its `layers` are what this machine gives, its `missing` what
    it lacks (e.g. no user namespaces, no Landlock, not x86-64 for seccomp)."""
    return run_program("answer = 1", limits=Limits(cpu_s=2, wall_s=10.0))


def available_layers() -> tuple[str, ...]:
    """The layers a benign run gets on this machine (e.g. policy, user_ns, ..., landlock-v7, seccomp)."""
    return probe_layers().layers
