"""A fresh host process for attack tests (run as a script by `harness.py`, never collected by pytest):
`python fresh_host.py PRIVATE_TMPDIR STDERR_FILE < cases.json`.

It reads a JSON list of cases on stdin and runs each through `run_program` (or a warm `SandboxPool` whose
idle sibling is a target), then checks what an escaped attack would have changed in *this* process and
around it: its own rlimits, affinity and priority; the machine's SysV IPC objects; leftover sandbox temp
dirs (its TMPDIR is private); an unrelated same-user process and a warm sibling (alive, rlimits unchanged,
still able to run a program); bytes written to its stderr; whether run_program raised; and whether a
follow-up benign run is healthy. One JSON line per case goes to stdout as soon as the case is done, so a case
that kills the host is the first one missing.

Placeholders in a case's code: {HOST_PID}, {HOST_PGID}, {VICTIM_PID}, {SIBLING_PIDS} (the warm sibling's
host-side pids), {KEY} (a SysV key unique to this process).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from lmstack.augment.sandbox import Limits, SandboxPool, run_program

RLIMITS = sorted(name for name in dir(resource) if name.startswith("RLIMIT_"))
KEY = 0x5AB00000 + os.getpid() % 0xFFFF


def rlimits(pid: int = 0) -> dict[str, tuple[int, int]]:
    out = {}
    for name in RLIMITS:
        try:
            out[name] = resource.prlimit(pid, getattr(resource, name))
        except OSError as exc:
            out[name] = ("error", exc.errno)
    return out


def sysv_objects() -> set[tuple[str, str, str]]:
    """(kind, key, id) of every SysV IPC object this process can see."""
    found = set()
    for kind in ("shm", "msg", "sem"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 2:
                found.add((kind, fields[0], fields[1]))
    return found


def sandbox_dirs() -> list[str]:
    return sorted(os.listdir(tempfile.gettempdir()))


def children_of(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state != "Z"


def summary(result: object) -> dict:
    value = result.value
    return {
        "ok": result.ok,
        "error": result.error,
        "message": result.message[:2000],
        "value": value[:4000] if isinstance(value, str) else value,
        "layers": list(result.layers),
        "missing": list(getattr(result, "missing", ())),
        "stdout": result.stdout[:1000],
        "stderr": result.stderr[-1000:],
        "text_encodes": _encodes(result.text()),
    }


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def run_case(case: dict, victim: int, stderr_file: Path) -> dict:
    limits = Limits(**case.get("limits", {}))
    policy_kw = {} if case.get("policy", False) else {"policy": None}
    kernel = case.get("kernel", True)
    before = {
        "rlimits": rlimits(),
        "victim": rlimits(victim),
        "affinity": sorted(os.sched_getaffinity(0)),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }
    ipc_before, dirs_before, err_before = sysv_objects(), sandbox_dirs(), stderr_file.stat().st_size
    report: dict = {"name": case["name"], "raised": None}
    sibling: list[int] = []
    pool = None
    try:
        if case.get("mode") == "pool":
            pool = SandboxPool(2, limits=limits, kernel=kernel, **policy_kw)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # wait until the sibling's program process exists
                sibling = [pool._idle[1].proc.pid, *children_of(pool._idle[1].proc.pid)]
                if len(sibling) == 2:
                    break
                time.sleep(0.02)
            time.sleep(0.2)  # and has locked itself down
        sibling_before = {pid: rlimits(pid) for pid in sibling}
        code = (
            case["code"]
            .replace("{HOST_PID}", str(os.getpid()))
            .replace("{VICTIM_PID}", str(victim))
            .replace("{SIBLING_PIDS}", repr(sibling))
            .replace("{KEY}", str(KEY))
            .replace("{HOST_PGID}", str(os.getpgid(0)))
        )
        runner = (
            pool.run if pool is not None else lambda src: run_program(src, limits=limits, kernel=kernel, **policy_kw)
        )
        report.update(summary(runner(code)))
        if pool is not None:
            report["sibling_same"] = all(alive(p) and rlimits(p) == sibling_before[p] for p in sibling)
            report["sibling_pids"] = sibling
            follow = pool.run("answer = 6 * 7")
            report["sibling_ok"] = follow.ok and follow.value == 42
    except BaseException:
        report["raised"] = traceback.format_exc()[-3000:]
    finally:
        if pool is not None:
            pool.close()
    after_dirs = sandbox_dirs()
    report.update(
        {
            "rlimits_same": rlimits() == before["rlimits"],
            "victim_same": alive(victim) and rlimits(victim) == before["victim"],
            "affinity_same": sorted(os.sched_getaffinity(0)) == before["affinity"],
            "nice_same": os.getpriority(os.PRIO_PROCESS, 0) == before["nice"],
            "new_ipc": sorted(sysv_objects() - ipc_before),
            "dirs_left": sorted(set(after_dirs) - set(dirs_before)),
            "host_stderr_bytes": stderr_file.stat().st_size - err_before,
        }
    )
    follow_up = run_program("answer = 6 * 7", limits=Limits(cpu_s=1, wall_s=10.0))
    report["follow_up_ok"] = follow_up.ok and follow_up.value == 42
    report["follow_up_layers"] = list(follow_up.layers)
    return report


def main() -> None:
    cases = json.loads(sys.stdin.read())
    private_tmp, stderr_file = sys.argv[1], Path(sys.argv[2])
    tempfile.tempdir = private_tmp  # every sandbox temp dir of this host lands here, so leftovers are ours
    fd = os.open(stderr_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)  # measure what the host itself prints on stderr (warnings, tracebacks)
    os.close(fd)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for case in cases:
            print(json.dumps(run_case(case, victim.pid, stderr_file)), flush=True)
    finally:
        victim.kill()
        victim.wait()
        print(json.dumps({"done": True, "leftovers": os.listdir(private_tmp)}), flush=True)


if __name__ == "__main__":
    main()
