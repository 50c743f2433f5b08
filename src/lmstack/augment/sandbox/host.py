"""Layers 2 and 5 of the sandbox, the host side: start a locked-down child, hand it one compiled program, supervise
it against the wall clock and the output caps, and always clean up (kill its process group, remove its temp
dir). `SandboxPool` keeps children warm; each still runs exactly one program.

The child is `child.py` next to this file, run by path as `python -I -S -B -X utf8 child.py` in an empty
environment: it gets its configuration as a set-up message on stdin, then waits for the job message (the
compiled program), so nothing is templated into its source.
"""

from __future__ import annotations

import marshal
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lmstack.augment.sandbox.kernel import SECCOMP_DENY_X86_64, read_roots
from lmstack.augment.sandbox.limits import Limits
from lmstack.augment.sandbox.policy import (
    DEFAULT_POLICY,
    DENIED_ATTRIBUTE_PREFIXES,
    DENIED_ATTRIBUTES,
    Policy,
    compile_program,
)
from lmstack.augment.sandbox.result import SandboxResult, classify
from lmstack.errors import ConfigError

#: The program the child interpreter runs (by absolute path: the child's working directory is its temp dir).
CHILD_PATH = Path(__file__).resolve().with_name("child.py")


# --------------------------------------------------------------------------------------------------------
# The messages to the child: a length-prefixed marshal frame for the set-up, then one for the job.


def _frame(obj: object) -> bytes:
    data = marshal.dumps(obj)
    return len(data).to_bytes(8, "little") + data


def _setup(restricted: bool, limits: Limits, policy: Policy, kernel: bool, result_fd: int) -> bytes:
    """The child's set-up message: every key `child.py` reads from it, as plain marshal-able values."""
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
            "read_roots": list(read_roots()),
            "seccomp_deny": list(SECCOMP_DENY_X86_64),
            "modules": sorted(policy.modules),
            "builtins": sorted(policy.builtins),
            "denied_attributes": sorted(DENIED_ATTRIBUTES),
            "denied_prefixes": list(DENIED_ATTRIBUTE_PREFIXES),
        }
    )


# --------------------------------------------------------------------------------------------------------
# One run: start a child, hand it its job, supervise it, dispose of it.


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
        return classify(proc.returncode, bufs, stop, limits, time.monotonic() - start)
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
    code, errors = compile_program(source, policy)
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
        code, errors = compile_program(source, self.policy)
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
