"""A second red-team pass against the process boundary, in categories the earlier suites do not cover:
namespace escapes, /proc /sys /dev probing, signals to other processes, ptrace, io_uring / userfaultfd /
bpf / perf / keyrings, memfd and exec, fd leaks, CPU affinity / priority / clock abuse, clone flags, hostile
results (pickles, bytes, forged JSON), writev floods, netlink and UDP sockets, and writes past the minimal
root. Raw Python (no policy) unless noted, all cases in one fresh host process, each checked by
`assert_contained` (host rlimits/affinity/priority, SysV IPC, temp dirs, neighbours, stderr, follow-up run).

Attacks that would do harm if they escaped are aimed at processes this suite owns (the fresh host, its
victim process, a warm sibling) or are no-ops (signal 0, setting the clock to the current time, renicing a
uid with no processes)."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from sandbox_harness import PRELUDE, Case, assert_contained, probes_in, refused, run_in_fresh_host

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fresh-host checks read Linux /proc")

ABSENT = probes_in("ENOENT")
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17


def probes(*lines: str) -> str:
    """A program that runs each `label=expression` probe and answers `label=result,...`."""
    body = "\n".join(
        f"got.append({label!r} + '=' + ({expr}))" for label, _, expr in (ln.partition("=") for ln in lines)
    )
    return PRELUDE + "got = []\n" + body + "\nanswer = ','.join(got)\n"


def value_equals(expected: object) -> object:
    def check(report: dict) -> None:
        assert report["value"] == expected, report["value"]

    return check


FIND_RESULT_FD = """
import stat
fds = [fd for fd in range(3, 64) if attempt(os.fstat, fd) == "ok" and stat.S_ISFIFO(os.fstat(fd).st_mode)]
result_fd = fds[0]
"""

FD_INVENTORY = """
import stat
kinds = []
for fd in range(0, 1024):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        continue
    kind = "fifo" if stat.S_ISFIFO(mode) else "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
    escape = attempt(lambda: os.open("..", os.O_RDONLY, dir_fd=fd)) if kind == "dir" else "n/a"
    kinds.append(f"{fd}:{kind}:{escape}")
answer = ",".join(kinds)
"""


def only_pipes(report: dict) -> None:
    entries = str(report["value"]).split(",")
    assert len(entries) <= 3 and all(e.split(":")[1] == "fifo" for e in entries), entries


_CASES = [
    # --- namespace escapes
    Case(
        "ns_setns_into_host",
        probes("open=attempt(os.open, '/proc/1/ns/mnt', os.O_RDONLY)", "setns=sys_call(308, 1, 0)"),
        ("ok",),
        probes_in("ENOENT", "EPERM"),
    ),
    Case("ns_unshare_again", probes(f"unshare=sys_call(272, {CLONE_NEWUSER})"), ("ok",), refused),
    Case("ns_clone_new_user", probes(f"clone=sys_call(56, {CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0)"), ("ok",), refused),
    Case(
        "ns_mount_over_root",
        probes(
            "proc=sys_call(165, b'proc', b'.', b'proc', 0, None)",
            "tmpfs=sys_call(165, b'tmpfs', b'/usr/lib', b'tmpfs', 0, None)",
            "umount=sys_call(166, b'/usr/lib', 2)",
        ),
        ("ok",),
        refused,
    ),
    Case(
        "ns_chroot_dotdot_escape",
        PRELUDE + "c = attempt(os.chroot, '.')\nfor _ in range(64):\n    os.chdir('..')\n"
        "answer = 'chroot=' + c + ',work=' + attempt(os.stat, '/work') + ',proc=' + attempt(os.stat, '/proc')\n",
        ("ok",),
        probes_in("EPERM", "ENOENT"),
    ),
    Case(
        "ns_new_mount_api",
        probes(
            "fsopen=sys_call(430, b'tmpfs', 0)",
            "open_tree=sys_call(428, -100, b'/', 1)",
            "pivot=sys_call(155, b'.', b'.')",
        ),
        ("ok",),
        refused,
    ),
    Case(
        "ns_hostname",
        probes("name=os.uname().nodename", "set=sys_call(170, b'pwned', 5)"),
        ("ok",),
        value_equals("name=sandbox,set=EPERM"),
    ),
    # --- /proc, /sys and /dev probing
    Case(
        "proc_probing",
        probes(
            "list=attempt(os.listdir, '/proc')",
            "mounts=attempt(os.stat, '/proc/self/mountinfo')",
            "host_env=attempt(os.stat, '/proc/{HOST_PID}/environ')",
            "core_pattern=attempt(os.stat, '/proc/sys/kernel/core_pattern')",
            "self_fd=attempt(os.listdir, '/proc/self/fd')",
        ),
        ("ok",),
        ABSENT,
    ),
    Case(
        "sys_probing",
        probes(
            *(
                f"{n}=attempt(os.stat, '/sys/{p}')"
                for n, p in [("net", "class/net"), ("cg", "fs/cgroup"), ("lsm", "kernel/security")]
            )
        ),
        ("ok",),
        ABSENT,
    ),
    Case(
        "dev_probing",
        probes(*(f"{d}=attempt(os.stat, '/dev/{d}')" for d in ("tty", "mem", "kmsg", "shm", "null", "mqueue"))),
        ("ok",),
        ABSENT,
    ),
    # --- signals to other processes (null signals where a real one could hurt the machine)
    Case("signal_host", probes("term=attempt(os.kill, {HOST_PID}, 15)"), ("ok",), refused),
    Case(
        "signal_everyone_null",
        probes("all=attempt(os.kill, -1, 0)", "group=attempt(os.killpg, {HOST_PGID}, 0)"),
        ("ok",),
        refused,
    ),
    Case("signal_unrelated_process", probes("kill=attempt(os.kill, {VICTIM_PID}, 9)"), ("ok",), refused),
    Case(
        "signal_warm_sibling",
        PRELUDE + "answer = ','.join(attempt(os.kill, pid, 9) for pid in {SIBLING_PIDS})\n",
        ("ok",),
        refused,
        mode="pool",
    ),
    Case(
        "signal_by_pidfd_and_queue",
        probes(
            "pidfd=sys_call(434, {HOST_PID}, 0)",
            "sigqueue=sys_call(129, {HOST_PID}, 15, ctypes.create_string_buffer(128))",
            "tgkill=sys_call(234, {HOST_PID}, {HOST_PID}, 0)",
        ),
        ("ok",),
        refused,
    ),
    # --- ptrace and cross-process memory
    Case(
        "ptrace_host",
        probes("attach=sys_call(101, 16, {HOST_PID}, 0, 0)", "traceme=sys_call(101, 0, 0, 0, 0)"),
        ("ok",),
        refused,
    ),
    Case(
        "process_memory_of_host",
        probes(
            "vm_read=sys_call(310, {HOST_PID}, ctypes.create_string_buffer(16), 1, "
            "ctypes.create_string_buffer(16), 1, 0)",
            "kcmp=sys_call(312, {HOST_PID}, os.getpid(), 0, 0, 0)",
        ),
        ("ok",),
        refused,
    ),
    # --- kernel attack surface: io_uring, userfaultfd, bpf, perf, keyrings
    Case("io_uring", probes("setup=sys_call(425, 8, ctypes.create_string_buffer(120))"), ("ok",), refused),
    Case("userfaultfd", probes("uffd=sys_call(323, 0)"), ("ok",), refused),
    Case("bpf", probes("prog_load=sys_call(321, 5, ctypes.create_string_buffer(128), 128)"), ("ok",), refused),
    Case(
        "perf_event_open",
        probes("perf=sys_call(298, ctypes.create_string_buffer(128), 0, -1, -1, 0)"),
        ("ok",),
        refused,
    ),
    Case(
        "keyrings",
        probes("add=sys_call(248, b'user', b'lmstack', b'x', 1, -3)", "get=sys_call(250, 0, -3, 0)"),
        ("ok",),
        refused,
    ),
    # --- memfd and exec
    Case(
        "memfd_exec",
        PRELUDE + "fd = os.memfd_create('x')\nos.write(fd, b'#!/bin/sh\\necho pwned\\n')\n"
        "answer = 'execveat=' + sys_call(322, fd, b'', None, None, 0x1000) + ',fexecve=' + "
        "attempt(os.execve, fd, ['x'], {}) + ',execv=' + attempt(os.execv, '/usr/bin/env', ['env'])\n",
        ("ok",),
        probes_in("EPERM", "ENOENT", "EACCES"),
    ),
    Case(
        "memfd_memory_bound",
        PRELUDE + "total = 0\nfor _ in range(40):\n    try:\n        fd = os.memfd_create('m')\n    except OSError:\n"
        "        break\n    try:\n        while True:\n            total += os.write(fd, b'x' * 65536)\n"
        "    except OSError:\n        pass\nanswer = total >> 20\n",
        ("ok",),
        lambda r: r["value"] <= 32 or pytest.fail(str(r["value"])),  # RLIMIT_FSIZE per memfd x RLIMIT_NOFILE
    ),
    # --- fd leaks
    Case("fd_inventory", PRELUDE + FD_INVENTORY, ("ok",), only_pipes),
    Case(
        "result_pipe_closed_early",
        PRELUDE + FIND_RESULT_FD + "os.close(result_fd)\ndef solution():\n    return 5\n",
        ("crash", "exception"),
        lambda r: "rlimits" in r["layers"] or pytest.fail(str(r["layers"])),
    ),
    # --- CPU affinity, priority, scheduling and clock abuse
    Case("affinity_of_host", probes("affinity=attempt(os.sched_setaffinity, {HOST_PID}, {0})"), ("ok",), refused),
    Case(
        "priority_of_others",
        probes(
            "process=attempt(os.setpriority, os.PRIO_PROCESS, {HOST_PID}, 19)",
            "group=attempt(os.setpriority, os.PRIO_PGRP, {HOST_PGID}, 19)",
            "user=attempt(os.setpriority, os.PRIO_USER, 54321, 19)",
        ),
        ("ok",),
        refused,
    ),
    Case(
        "scheduler_of_host",
        probes(
            "idle=attempt(os.sched_setscheduler, {HOST_PID}, os.SCHED_IDLE, os.sched_param(0))",
            "ioprio=sys_call(251, 1, {HOST_PID}, 3 << 13)",
        ),
        ("ok",),
        refused,
    ),
    Case(
        "clock_set",
        PRELUDE + "import time\nnow = time.clock_gettime(time.CLOCK_REALTIME)\n"
        "answer = 'realtime=' + attempt(time.clock_settime, time.CLOCK_REALTIME, now)\n",
        ("ok",),
        refused,
    ),
    # --- clone flags
    Case(
        "clone_variants",
        probes(
            "thread=sys_call(56, 0x00010900, 0, 0, 0, 0)",  # CLONE_VM | CLONE_SIGHAND | CLONE_THREAD
            "clone3=sys_call(435, ctypes.create_string_buffer(88), 88)",
            "vfork=sys_call(58)",
            "fork=attempt(os.fork)",
        ),
        ("ok",),
        refused,
    ),
    # --- hostile results
    Case(
        "result_is_a_pickle_payload",
        "def solution():\n    return \"cos\\nsystem\\n(S'echo pwned'\\ntR.\"\n",
        ("ok",),
        value_equals("cos\nsystem\n(S'echo pwned'\ntR."),  # a string, never unpickled
        policy=True,
    ),
    Case("result_is_bytes", "def solution():\n    return b'cos\\nsystem\\n'\n", ("bad_result",)),
    Case("result_is_a_memoryview", "def solution():\n    return memoryview(b'x')\n", ("bad_result",)),
    Case(
        "result_forged_deep_json",
        PRELUDE + FIND_RESULT_FD + "os.write(result_fd, b'{\"ok\": true, \"value\": ' + b'[' * 15000)\nos._exit(0)\n",
        ("protocol",),
    ),
    Case(
        "result_forged_nan",
        PRELUDE + FIND_RESULT_FD + 'os.write(result_fd, b\'{"ok": true, "value": NaN}\')\nos._exit(0)\n',
        ("protocol",),
    ),
    # --- writev floods
    Case("writev_stdout_flood", PRELUDE + "while True:\n    os.writev(1, [b'x' * 65536] * 16)\n", ("output_limit",)),
    Case("writev_stderr_flood", PRELUDE + "while True:\n    os.writev(2, [b'e' * 65536] * 16)\n", ("output_limit",)),
    Case(
        "writev_result_flood",
        PRELUDE + FIND_RESULT_FD + "while True:\n    os.writev(result_fd, [b' ' * 65536] * 16)\n",
        ("output_limit",),
    ),
    # --- network
    Case(
        "netlink_and_udp",
        PRELUDE + "import socket\nanswer = 'netlink=' + attempt(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, 0)"
        " + ',udp=' + attempt(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)"
        " + ',pair=' + attempt(socket.socketpair)\n",
        ("ok",),
        refused,
    ),
    # --- writes past the minimal root
    Case(
        "write_past_the_root",
        probes(
            "root=attempt(os.open, '/lmstack-x', os.O_CREAT | os.O_WRONLY)",
            "lib=attempt(os.open, '/usr/lib/lmstack-x', os.O_CREAT | os.O_WRONLY)",
            "link=attempt(os.link, '/etc/ld.so.cache', 'cache')",
            "rename=attempt(os.rename, '/etc/ld.so.cache', 'cache')",
        ),
        ("ok",),
        probes_in("EROFS", "EACCES", "EXDEV", "EPERM"),
    ),
    Case(
        "sparse_file_past_the_limit",
        PRELUDE + "f = open('sparse', 'wb')\nf.seek(10 << 30)\nanswer = 'write=' + attempt(f.write, b'x') + "
        "',flush=' + attempt(f.flush)\n",
        ("ok",),
        value_equals("write=ok,flush=EFBIG"),  # buffered: the flush is the write past RLIMIT_FSIZE
    ),
]
# what each expected outcome relies on; a machine without it skips the case and says so
SYSCALLS = ("seccomp",)
NEEDS = {
    "ns_setns_into_host": ("mount_ns", "seccomp"),
    "ns_chroot_dotdot_escape": ("mount_ns", "seccomp"),
    "ns_hostname": ("uts_ns", "no_capabilities"),
    "proc_probing": ("mount_ns",),
    "sys_probing": ("mount_ns",),
    "dev_probing": ("mount_ns",),
    "memfd_exec": SYSCALLS,
    "clock_set": ("no_capabilities",),
    "write_past_the_root": ("mount_ns",),
    "fd_inventory": (),
    "memfd_memory_bound": (),
    "result_pipe_closed_early": (),
    "sparse_file_past_the_limit": (),
}
RAW_RESULTS = ("result_", "writev_")
CASES = [
    dataclasses.replace(c, needs=NEEDS.get(c.name, () if c.name.startswith(RAW_RESULTS) else SYSCALLS)) for c in _CASES
]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return run_in_fresh_host(CASES, tmp_path_factory.mktemp("redteam-host"))


def test_the_red_team_pass_is_large_and_names_are_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_attack_is_contained(case: Case, reports: dict[str, dict]) -> None:
    assert_contained(case, reports)


def test_the_fresh_host_finished_cleanly(reports: dict[str, dict]) -> None:
    assert reports["_host"]["returncode"] == 0, reports["_host"]
    assert reports["_done"]["leftovers"] == []
