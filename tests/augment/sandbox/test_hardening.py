"""The red-team findings of issue 14 (the process/kernel/host half), each as an attack run in a fresh host
process (`fresh_host.py`), with the checks of `harness.assert_contained` applied per attack: the host's own
rlimits, affinity and priority unchanged, no SysV IPC object left on the machine, no sandbox temp dir left,
an unrelated same-user process and a warm sibling unharmed, nothing printed on the host's stderr, nothing
raised, and a healthy benign run afterwards. Raw-Python attacks (`policy=False`, the default of `Case`) test
the process and kernel layers alone. Host-side failure paths that need no hostile program are tested in
this process with monkeypatching.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmstack.augment.sandbox import Limits, host, run_many, run_program
from sandbox_harness import PRELUDE, Case, assert_contained, both, refused, run_in_fresh_host, value_has
from testutil import sandbox_dirs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fresh-host checks read Linux /proc")


def prlimit(target: str, limit: str, new: str) -> str:
    return PRELUDE + f"answer = attempt(resource.prlimit, {target}, resource.{limit}, {new})\n"


SHM = """
libc.shmat.restype = ctypes.c_void_p
got = []
for i in range(3):
    shm = libc.shmget({KEY} + i, 64 << 20, 0o1600)  # IPC_CREAT | 0600
    got.append(name(ctypes.get_errno()) if shm < 0 else "ok")
    if shm >= 0 and i == 0:
        addr = libc.shmat(shm, None, 0)
        if addr not in (None, ctypes.c_void_p(-1).value):
            ctypes.memmove(addr, b"lmstack-left-behind", 19)
q = libc.msgget({KEY}, 0o1600)
got.append(name(ctypes.get_errno()) if q < 0 else "ok")
if q >= 0:
    msg = ctypes.create_string_buffer(8 + 19)
    msg[:8] = (1).to_bytes(8, "little")
    msg[8:] = b"lmstack-left-behind"
    libc.msgsnd(q, msg, 19, 0)
sem = libc.semget({KEY}, 1, 0o1600)
got.append(name(ctypes.get_errno()) if sem < 0 else "ok")
answer = ",".join(got)
"""

SHM_READ = """
got = [libc.shmget({KEY} + i, 0, 0) for i in range(3)] + [libc.msgget({KEY}, 0), libc.semget({KEY}, 0, 0)]
answer = "found" if any(x >= 0 for x in got) else "none"
"""

FORGE = """
for fd in range(3, 32):
    try:
        os.write(fd, PAYLOAD)
    except OSError:
        pass
os._exit(0)
"""


def forge(payload: bytes) -> str:
    return PRELUDE + f"PAYLOAD = {payload!r}\n" + FORGE


DEEP = """
depth = 0
try:
    for depth in range(1, 1201):
        os.mkdir("d")
        os.chdir("d")
    for i in range(3):
        with open(f"big{i}", "wb") as f:
            f.write(b"x" * (1 << 20))
except OSError as exc:
    answer = f"{depth}:{name(exc.errno)}"
else:
    answer = f"{depth}:ok"
"""

# the same tree without namespaces, shaped to defeat a recursive cleanup: locked directories on the way
# back up, an unreadable file, a fifo, and symlinks to the host's root
DEEP_LOCKED = (
    DEEP
    + """
os.symlink("/", "root-link")
os.mkfifo("fifo")
with open("locked-file", "w") as f:
    f.write("x")
os.chmod("locked-file", 0)
for _ in range(1200):
    os.chdir("..")
    os.symlink("/", "up-link")
    os.chmod("d", 0)
"""
)

MANY_FILES = """
count = 0
try:
    while count < 100000:
        open(f"f{count}", "w").close()
        count += 1
except OSError as exc:
    answer = f"{count}:{name(exc.errno)}"
else:
    answer = f"{count}:ok"
"""

STAT_HOST = """
import tempfile
paths = ["/proc", "/sys", "/dev", "/home", "/etc/passwd", "/etc/hostname", "/work", "/var", "/run",
         os.path.expanduser("~/.bashrc"), "{HOST_FILE}", os.path.dirname(os.getcwd()) + "/../host.stderr"]
answer = ",".join(p + "=" + attempt(os.stat, p) for p in paths)
"""

INOTIFY = """
fd = libc.inotify_init1(0)
probes = ["init=" + (name(ctypes.get_errno()) if fd < 0 else "ok")]
if fd >= 0:
    for path in (b"/usr/lib", b"/tmp", b"/"):
        w = libc.inotify_add_watch(fd, path, 0xFFF)
        probes.append(path.decode() + "=" + (name(ctypes.get_errno()) if w < 0 else "ok"))
answer = ",".join(probes)
"""


def depth_and_errno(max_depth: int, errnos: tuple[str, ...]) -> object:
    def check(report: dict) -> None:
        depth, _, err = str(report["value"]).partition(":")
        assert int(depth) <= max_depth and err in errnos, report["value"]

    return check


def count_at_most(limit: int) -> object:
    def check(report: dict) -> None:
        count, _, err = str(report["value"]).partition(":")
        assert int(count) <= limit and err in ("ENOSPC", "EMFILE", "EDQUOT"), report["value"]

    return check


def no_forged_layers(report: dict) -> None:
    assert "gvisor" not in report["layers"] and "gvisor" not in report["follow_up_layers"]
    assert "rlimits" in report["layers"]  # the real, pre-program report is still there


def stat_refused(report: dict) -> None:
    probes = dict(p.rsplit("=", 1) for p in str(report["value"]).split(","))
    assert all(v == "ENOENT" for v in probes.values()), probes


SYNTAX_WARNINGS = "x = 1 is 1\n" * 1200 + "y = '\\d'\n" * 200 + "answer = 1\n"

PROCESS = ("seccomp|pid_ns",)  # either stops a program naming another process

_CASES = [
    # finding 1: rlimits of the host, a warm sibling, an unrelated same-user process
    Case("prlimit_host_cpu", prlimit("{HOST_PID}", "RLIMIT_CPU", "(0, 0)"), ("ok",), refused),
    Case("prlimit_host_nofile", prlimit("{HOST_PID}", "RLIMIT_NOFILE", "(3, 3)"), ("ok",), refused),
    Case("prlimit_host_fsize", prlimit("{HOST_PID}", "RLIMIT_FSIZE", "(0, 0)"), ("ok",), refused),
    Case("prlimit_host_as", prlimit("{HOST_PID}", "RLIMIT_AS", "(1 << 20, 1 << 20)"), ("ok",), refused),
    # the parent as the program sees it is pid 0 (outside its PID namespace): that is itself, which it may limit
    Case("prlimit_parent", prlimit("os.getppid()", "RLIMIT_CPU", "(0, 0)"), ("cpu_limit", "crash", "ok")),
    Case("prlimit_unrelated_process", prlimit("{VICTIM_PID}", "RLIMIT_NOFILE", "(3, 3)"), ("ok",), refused),
    Case(
        "prlimit_warm_sibling",
        PRELUDE
        + "answer = ','.join(attempt(resource.prlimit, pid, r, (0, 0)) for pid in {SIBLING_PIDS}"
        + " for r in (resource.RLIMIT_CPU, resource.RLIMIT_NOFILE, resource.RLIMIT_AS))\n",
        ("ok",),
        both(refused, lambda r: len(r["sibling_pids"]) == 2 or pytest.fail(str(r["sibling_pids"]))),
        mode="pool",
    ),
    Case(
        "prlimit_every_pid_read_only",
        PRELUDE
        + "hits = [pid for pid in range(1, 5000) if pid != os.getpid()"
        + " and attempt(resource.prlimit, pid, resource.RLIMIT_CORE) == 'ok']\nanswer = len(hits)\n",
        ("ok",),
        lambda r: r["value"] == 0 or pytest.fail(str(r["value"])),
    ),
    # finding 2: deep trees and big files; the host's cleanup and the disk quota
    Case("deep_tree_in_tmpfs", PRELUDE + DEEP, ("ok",), depth_and_errno(1200, ("ENOSPC", "ok"))),
    Case(
        "deep_locked_tree_without_namespaces",
        PRELUDE + DEEP_LOCKED,
        ("ok",),
        depth_and_errno(1200, ("ok",)),
        kernel=False,
        limits={"cpu_s": 3, "wall_s": 20.0, "memory_mb": 192, "disk_mb": 64, "max_files": 5000},
    ),
    Case("many_files_in_tmpfs", PRELUDE + MANY_FILES, ("ok",), count_at_most(256)),
    Case(
        "many_files_without_namespaces",
        PRELUDE + MANY_FILES.replace("100000", "2000"),
        ("file_limit",),
        kernel=False,
        limits={"cpu_s": 2, "wall_s": 10.0, "memory_mb": 192, "max_files": 50},
    ),
    # finding 3: SysV IPC outliving the run, and a later run reading it
    Case("sysv_shm_msg_sem", PRELUDE + SHM, ("ok",), value_has("ok")),
    Case("sysv_read_what_was_left", PRELUDE + SHM_READ, ("ok",), lambda r: r["value"] == "none" or pytest.fail()),
    Case(
        "posix_message_queue",
        PRELUDE + "libc.mq_open.restype = ctypes.c_int\n"
        "q = libc.mq_open(b'/lmstack', 0o100 | 2, 0o600, None)\nanswer = name(ctypes.get_errno()) if q < 0 else 'ok'\n",
        ("ok",),
        refused,
    ),
    # finding 4: lone surrogates in results and messages
    Case("surrogate_result", "def solution():\n    return 'a' + chr(0xD800)\n", ("bad_result",), policy=True),
    Case(
        "surrogate_exception_message",
        "raise ValueError('bad ' + chr(0xDC80))\n",
        ("exception",),
        lambda r: "\\udc80" in r["message"] or pytest.fail(r["message"]),
        policy=True,
    ),
    Case(
        "surrogate_forged_result",
        forge(b'{"ok": true, "value": "\\ud800"}'),
        ("protocol",),
        value_has(),
    ),
    # finding 6: forged result messages, host metadata, inotify, a warnings flood on the host's stderr
    Case("forged_layers", forge(b'{"ok": true, "value": 7, "layers": ["gvisor"]}'), ("protocol",), no_forged_layers),
    Case(
        "forged_supervisor_header",
        forge(b'{"status": 0, "ready": "[\\"gvisor\\"]", "quota": false, "overflow": false}\n{"ok": true, "value": 7}'),
        ("protocol",),
        no_forged_layers,
    ),
    Case(
        "forged_host_error_kind",
        forge(b'{"ok": false, "error": "timeout", "message": "the host gave up"}'),
        ("protocol",),
    ),
    Case("stat_host_metadata", PRELUDE + STAT_HOST, ("ok",), stat_refused),
    Case("inotify_on_host_dirs", PRELUDE + INOTIFY, ("ok",), refused),
    Case("syntax_warning_flood", SYNTAX_WARNINGS, ("ok",), policy=True),
]
NEEDS = {
    **dict.fromkeys(
        ["prlimit_host_cpu", "prlimit_host_nofile", "prlimit_host_fsize", "prlimit_host_as"]
        + ["prlimit_unrelated_process", "prlimit_warm_sibling", "prlimit_every_pid_read_only"],
        PROCESS,
    ),
    "prlimit_parent": ("pid_ns",),
    "deep_tree_in_tmpfs": ("tmpfs_quota",),
    "many_files_in_tmpfs": ("tmpfs_quota",),
    "sysv_shm_msg_sem": ("ipc_ns",),
    "sysv_read_what_was_left": ("ipc_ns|seccomp",),
    "posix_message_queue": ("seccomp",),
    "stat_host_metadata": ("mount_ns",),
    "inotify_on_host_dirs": ("seccomp",),
}
CASES = [dataclasses.replace(c, needs=NEEDS.get(c.name, ())) for c in _CASES]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("fresh-host")
    cases = [dataclasses.replace(c, code=c.code.replace("{HOST_FILE}", str(tmp / "host.stderr"))) for c in CASES]
    return run_in_fresh_host(cases, tmp)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_finding_is_contained(case: Case, reports: dict[str, dict]) -> None:
    assert_contained(case, reports)


def test_the_fresh_host_finished_cleanly(reports: dict[str, dict]) -> None:
    assert reports["_host"]["returncode"] == 0, reports["_host"]
    assert reports["_done"]["leftovers"] == []


# --------------------------------------------------------------------------------------------------------
# A machine whose kernel refuses every namespace: a user namespace around the fresh host with all of its
# namespace counts set to 0 (the sandbox's unshare then fails with ENOSPC, as where they are disabled). The
# sandbox must say what it lacks, and the layers left (seccomp, Landlock, rlimits, the polled quota) must
# still contain the findings that do not need a namespace.

NO_NAMESPACES = [
    "unshare",
    "-Ur",
    "sh",
    "-c",
    "for n in user mnt pid ipc net uts cgroup; do echo 0 > /proc/sys/user/max_${n}_namespaces || exit 97; done;"
    ' exec "$@"',
    "sh",
]


def layers_named(report: dict) -> None:
    missing = set(report["missing"])
    assert {"user_ns", "pid_ns", "ipc_ns", "net_ns", "mount_ns", "tmpfs_quota"} <= missing, report["missing"]
    assert {"seccomp", "polled_quota", "rlimits"} <= set(report["layers"]), report["layers"]
    assert not missing & set(report["layers"])


DEGRADED = [
    Case("degraded_names_what_is_missing", "answer = 1\n", ("ok",), layers_named, policy=True),
    Case("degraded_prlimit_host", prlimit("{HOST_PID}", "RLIMIT_NOFILE", "(3, 3)"), ("ok",), refused),
    Case(
        "degraded_prlimit_warm_sibling",
        PRELUDE + "answer = ','.join(attempt(resource.prlimit, pid, resource.RLIMIT_CPU, (0, 0))"
        " for pid in {SIBLING_PIDS})\n",
        ("ok",),
        refused,
        mode="pool",
    ),
    Case("degraded_sysv_ipc", PRELUDE + SHM, ("ok",), refused),
    Case("degraded_deep_tree", PRELUDE + DEEP, ("file_limit",)),
    Case("degraded_forged_layers", forge(b'{"ok": true, "value": 7, "layers": ["gvisor"]}'), ("protocol",)),
]


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    probe = subprocess.run([*NO_NAMESPACES, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot build a namespace-less host here (unshare -Ur): {probe.stderr[-300:]!r}")
    return run_in_fresh_host(DEGRADED, tmp_path_factory.mktemp("degraded-host"), prefix=NO_NAMESPACES)


@pytest.mark.parametrize("case", DEGRADED, ids=lambda c: c.name)
def test_without_namespaces_the_rest_still_contains_and_says_what_is_missing(
    case: Case, degraded: dict[str, dict]
) -> None:
    have = set(degraded[DEGRADED[0].name]["layers"]) if DEGRADED[0].name in degraded else set()
    if case.name != DEGRADED[0].name and "seccomp" not in have:
        pytest.skip("without namespaces these attacks rely on seccomp, which this machine lacks")
    assert_contained(case, degraded)
    assert "gvisor" not in degraded[case.name]["layers"]


def test_pal_layers_names_what_the_machine_lacks(degraded: dict[str, dict]) -> None:
    here = subprocess.run([sys.executable, "-m", "lmstack", "pal", "--layers"], capture_output=True, text=True)
    active = here.stdout.splitlines()[0]
    assert active.startswith("active: policy") and "rlimits" in active, here.stdout
    assert here.returncode == (0 if "missing: none" in here.stdout else 1)
    bare = subprocess.run(
        [*NO_NAMESPACES, sys.executable, "-m", "lmstack", "pal", "--layers"], capture_output=True, text=True
    )
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "missing: user_ns, pid_ns, ipc_ns, net_ns, uts_ns, mount_ns, tmpfs_quota" in bare.stdout
    assert "RuntimeWarning" in bare.stderr  # and said so on stderr too


def test_the_degraded_host_warned_once_and_finished_cleanly(degraded: dict[str, dict]) -> None:
    assert degraded["_host"]["returncode"] == 0, degraded["_host"]
    assert degraded["_host"]["stderr"].count("RuntimeWarning: the sandbox runs without") == 1
    assert degraded["_done"]["leftovers"] == []


# --------------------------------------------------------------------------------------------------------
# Host-side failure paths: every one is a SandboxResult, never an exception, and leaves nothing behind.


def test_a_failing_pipe_leaves_no_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pipe() -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    dirs, fds = sandbox_dirs(), len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(host.os, "pipe", no_pipe)
    result = run_program("answer = 1")
    assert result.error == "sandbox" and "Too many open files" in result.message
    assert sandbox_dirs() <= dirs and len(os.listdir("/proc/self/fd")) == fds


def test_a_failing_temp_dir_leaks_no_fds(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(prefix: str = "") -> str:
        raise OSError(28, "No space left on device")

    fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(host.tempfile, "mkdtemp", no_space)
    assert run_program("answer = 1").error == "sandbox"
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_cleanup_error_never_escapes_run_many_or_pal_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmstack.augment.pal import solve

    real_discard = host._discard

    def broken(child: object) -> None:
        real_discard(child)  # clean up, then fail the way shutil.rmtree did on a deep tree
        raise RecursionError("maximum recursion depth exceeded")

    dirs = sandbox_dirs()
    monkeypatch.setattr(host, "_discard", broken)
    results = run_many(["answer = 1", "answer = 2"], workers=2, limits=Limits(cpu_s=1, wall_s=5.0))
    assert [r.error for r in results] == ["sandbox", "sandbox"]
    pal = solve("What is 1 + 1?", lambda prompt, n, t: ["```python\ndef solution():\n    return 2\n```"] * n, k=2)
    assert pal.answer is None and [r.error for r in pal.runs] == ["sandbox", "sandbox"]
    assert sandbox_dirs() <= dirs


def test_a_root_that_cannot_be_built_falls_back_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read root that cannot be bind-mounted: the half-built root is detached again, the program runs in
    the host's temp dir under Landlock and the polled quota, and the result says what is missing."""
    if "mount_ns" not in run_program("answer = 1").layers:
        pytest.skip("no mount namespace on this machine to fall back from")
    roots = host.read_roots()
    monkeypatch.setattr(host, "read_roots", lambda: (*roots, "/nonexistent-lmstack-root"))
    with pytest.warns(RuntimeWarning, match="mount_ns, tmpfs_quota"):
        host._WARNED.discard(("mount_ns", "tmpfs_quota"))
        result = run_program("import os\nopen('x', 'w').write('1')\nanswer = ','.join(os.listdir('.'))\n", policy=None)
    assert result.ok and result.value == "x", (result.error, result.message)
    assert result.missing == ("mount_ns", "tmpfs_quota") and "polled_quota" in result.layers
    assert "landlock-v" in " ".join(result.layers) or "landlock" in result.missing


def test_remove_tree_handles_what_a_program_can_shape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = tmp_path / "tree"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for level in range(1500):  # deeper than the recursion limit, and far past PATH_MAX as one path
        os.mkdir("dddddddd", dir_fd=fd)
        inner = os.open("dddddddd", os.O_RDONLY, dir_fd=fd)
        if level % 100 == 0:
            os.symlink(str(outside), "link", dir_fd=inner)  # must be removed, never followed
            os.mkdir("locked", dir_fd=inner)
            locked = os.open("locked", os.O_RDONLY, dir_fd=inner)
            os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0, dir_fd=locked))
            os.close(locked)
            os.chmod("locked", 0, dir_fd=inner)  # no permissions left, with a file inside
        os.close(fd)
        fd = inner
    os.close(fd)
    os.mkfifo(root / "fifo")
    os.symlink("/", root / "root-link")
    assert host.remove_tree(str(root)) is True
    assert not root.exists() and (outside / "keep").read_text() == "keep"
    assert host.remove_tree(str(root)) is True  # already gone: fine


def test_the_pal_command_prints_surrogate_results(tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text("def solution():\n    raise ValueError('x' + chr(0xD800))\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "lmstack", "pal", "--program", str(program)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error (exception): line 2: ValueError: x\\ud800" in proc.stdout
