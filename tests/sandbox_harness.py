"""Shared by the sandbox hardening and red-team suites (tests/augment/sandbox): attack cases, run in groups,
each group in one fresh host process (`augment/sandbox/fresh_host.py`), and the checks every case must pass
whatever its category."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FRESH_HOST = Path(__file__).parent / "augment" / "sandbox" / "fresh_host.py"
HOST_STDERR_CAP = 2000  # bytes a contained attack may make the host print (none expected)

#: Raw attacks call syscalls through ctypes; `attempt`/`sys_call` name the errno each probe got.
PRELUDE = """import ctypes, errno, os, resource
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def name(code):
    return errno.errorcode.get(code, str(code))
def attempt(fn, *args):
    try:
        fn(*args)
        return "ok"
    except OSError as exc:
        return name(exc.errno)
def sys_call(nr, *args):
    got = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if type(a) is int else a for a in args])
    return "ok" if got >= 0 else name(ctypes.get_errno())
"""

REFUSED = ("EPERM", "ESRCH", "EACCES")


def probes_in(*allowed: str) -> Callable[[dict], None]:
    """Every probe the program reported (comma-separated errno names, each maybe `label=NAME`) got one of
    `allowed`."""

    def check(report: dict) -> None:
        probes = [p.rpartition("=")[2] for p in str(report["value"]).split(",")]
        assert probes and all(p in allowed for p in probes), report["value"]

    return check


refused = probes_in(*REFUSED)


@dataclass(frozen=True)
class Case:
    """One attack. `outcomes`: acceptable `error` kinds ("ok" for a harmless result). `check`: a further
    assertion on the fresh host's report (the result and the host-side observations). `policy`: run under
    the policy (default: raw Python, so the process and kernel layers are tested alone). `mode`: "run" (a
    cold process) or "pool" (a warm pool child whose idle sibling is a target). `needs`: layers the expected
    outcome relies on ("a|b": either); the case is skipped, naming them, on a machine without them."""

    name: str
    code: str
    outcomes: tuple[str, ...]
    check: Callable[[dict], None] | None = None
    policy: bool = False
    kernel: bool = True
    mode: str = "run"
    limits: dict = field(default_factory=lambda: {"cpu_s": 1, "wall_s": 8.0, "memory_mb": 192})
    needs: tuple[str, ...] = ()

    def wire(self) -> dict:
        return {
            "name": self.name,
            "code": self.code,
            "policy": self.policy,
            "kernel": self.kernel,
            "mode": self.mode,
            "limits": self.limits,
        }


def run_in_fresh_host(
    cases: list[Case], tmp: Path, timeout_s: float = 600, prefix: Sequence[str] = ()
) -> dict[str, dict]:
    """Run `cases` in order in one new host process (started through `prefix`, e.g. a wrapper that takes
    kernel features away); returns each case's report by name, plus "_host" (exit status, stderr tail) and
    "_done" (leftovers in its private temp dir)."""
    private = tmp / "tmp"
    private.mkdir()
    stderr = tmp / "host.stderr"
    proc = subprocess.run(
        [*prefix, sys.executable, str(FRESH_HOST), str(private), str(stderr)],
        input=json.dumps([c.wire() for c in cases]),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        start_new_session=True,  # its own process group: a group-wide attack that escaped hits only it
    )
    reports: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        item = json.loads(line)
        reports["_done" if item.get("done") else item["name"]] = item
    tail = stderr.read_text(errors="replace")[-3000:] if stderr.exists() else ""
    reports["_host"] = {"returncode": proc.returncode, "stderr": tail + proc.stderr[-2000:]}
    return reports


def assert_contained(case: Case, reports: dict[str, dict]) -> None:
    """The checks every attack must pass: its outcome is expected, it did not raise in the host, and the host
    and its neighbours are unchanged and healthy afterwards."""
    report = reports.get(case.name)
    assert report is not None, f"the fresh host died before reporting {case.name}: {reports['_host']}"
    have = {layer.partition("-v")[0] for layer in report["follow_up_layers"]}
    lacking = [need for need in case.needs if not set(need.split("|")) & have]
    if lacking:
        pytest.skip(f"relies on layer(s) {lacking}; this machine gives {sorted(have)}")
    assert report["raised"] is None, report["raised"]
    outcome = "ok" if report["ok"] else report["error"]
    assert outcome in case.outcomes, (outcome, report["message"], report["stderr"][-500:], report["value"])
    assert report["text_encodes"], "the result's text cannot be printed as UTF-8"
    assert report["rlimits_same"], "the host's rlimits changed"
    assert report["victim_same"], "an unrelated same-user process was harmed"
    assert report["affinity_same"] and report["nice_same"], "the host's CPU affinity or priority changed"
    assert report["new_ipc"] == [], f"SysV IPC objects outlived the run: {report['new_ipc']}"
    assert report["dirs_left"] == [], f"sandbox temp dirs left behind: {report['dirs_left']}"
    assert report["host_stderr_bytes"] <= HOST_STDERR_CAP, "the host printed on its stderr"
    assert report["follow_up_ok"], "a benign run after the attack failed"
    if case.mode == "pool":
        assert report["sibling_same"], "the warm sibling was harmed"
        assert report["sibling_ok"], "the warm sibling could not run a program afterwards"
    if case.check is not None:
        case.check(report)


def value_has(*needles: str) -> Callable[[dict], None]:
    """The program's reported value (it describes what each probe got) contains every needle."""

    def check(report: dict) -> None:
        value = str(report["value"])
        for needle in needles:
            assert needle in value, (needle, value)

    return check


def value_lacks(*needles: str) -> Callable[[dict], None]:
    def check(report: dict) -> None:
        blob = f"{report['value']}{report['stdout']}{report['message']}"
        for needle in needles:
            assert needle not in blob, (needle, blob[:500])

    return check


def both(*checks: Callable[[dict], None]) -> Callable[[dict], None]:
    def check(report: dict) -> None:
        for c in checks:
            c(report)

    return check
