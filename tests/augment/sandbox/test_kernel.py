"""The kernel layers (kernel.py, applied by jail.py and child.py): reported per run, switched off on request,
missing ones named; the paths the child may see; and the seccomp program, run here on a small classic-BPF
interpreter so its decisions are checked without locking down the test process."""

from __future__ import annotations

import ast
import marshal
import os
import struct
import sys
import sysconfig
from pathlib import Path

import pytest

from lmstack.augment.sandbox import Limits, host, run_program
from lmstack.augment.sandbox.kernel import (
    SECCOMP_DENY_X86_64,
    SECCOMP_IPC_X86_64,
    SECCOMP_SELF_ONLY_X86_64,
    expected_layers,
    jail_code,
    jail_hidden,
    jail_links,
    missing_layers,
    read_roots,
    seccomp_filter,
)

FAST = Limits(cpu_s=1, wall_s=5.0)
ALLOW, EPERM, KILL = 0x7FFF0000, 0x00050001, 0x80000000
X86_64, I386 = 0xC000003E, 0x40000003


def run_bpf(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = X86_64) -> int:
    """Evaluate a seccomp classic-BPF program (only the opcodes kernel.py emits) on one syscall."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x15:  # jeq #k
            pc += jt if acc == k else jf
        elif code == 0x35:  # jge #k
            pc += jt if acc >= k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


@pytest.mark.skipif(sys.platform != "linux", reason="kernel layers are Linux-only")
def test_kernel_layers_are_reported_and_can_be_disabled() -> None:
    with_kernel = run_program("answer = 1", limits=FAST)
    without = run_program("answer = 1", limits=FAST, kernel=False)
    assert with_kernel.ok and without.ok
    assert {"policy", "rlimits"} <= set(with_kernel.layers)
    assert without.layers == ("policy", "polled_quota", "rlimits") and without.missing == ()
    assert set(with_kernel.missing) == set(missing_layers(expected_layers(True, True), with_kernel.layers))
    raw = run_program("answer = 1", limits=FAST, policy=None, kernel=False)
    assert raw.layers == ("polled_quota", "rlimits")


def test_missing_layers_are_the_expected_ones_not_in_effect() -> None:
    expected = expected_layers(True, True)
    assert expected[:2] == ("policy", "rlimits") and "user_ns" in expected and "seccomp" in expected
    assert expected_layers(False, False) == ("rlimits",)
    active = ("policy", "rlimits", "landlock-v3", "no_new_privs")
    missing = missing_layers(expected, active)
    assert "landlock" not in missing and "seccomp" in missing and "pid_ns" in missing and "rlimits" not in missing


def test_read_roots_are_real_existing_paths_with_the_stdlib_and_without_site_packages() -> None:
    roots = read_roots()
    assert len(set(roots)) == len(roots)
    assert all(os.path.isabs(r) and os.path.realpath(r) == r and os.path.exists(r) for r in roots)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    assert any(stdlib == r or stdlib.startswith(r + os.sep) for r in roots)
    # site-packages (a venv's, or the interpreter's own) is outside every root, or hidden inside the jail
    purelib = os.path.realpath(sysconfig.get_paths()["purelib"])
    assert purelib in jail_hidden() or not any(purelib.startswith(r + os.sep) for r in roots)
    assert all(h.startswith(stdlib + os.sep) for h in jail_hidden())


def test_jail_imports_only_the_standard_library() -> None:
    """The child runs jail.py's code under `python -I -S`: nothing outside the standard library exists there."""
    tree = ast.parse((Path(host.__file__).with_name("jail.py")).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").partition(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_jail_links_and_code_are_what_the_child_needs() -> None:
    for link, target in jail_links():
        assert os.path.islink(link) and os.readlink(link) == target
    code = marshal.loads(jail_code())
    names: dict = {}
    exec(code, names)  # defines functions only: nothing runs at import
    assert callable(names["enter"]) and callable(names["supervise"])


@pytest.mark.parametrize("deny_ipc", [False, True])
def test_seccomp_denies_the_listed_calls_and_allows_the_rest(deny_ipc: bool) -> None:
    prog = seccomp_filter(deny_ipc)
    for nr in SECCOMP_DENY_X86_64:
        assert run_bpf(prog, nr) == EPERM, nr
    for nr in (0, 1, 3, 9, 60, 231, 257):  # read, write, close, mmap, exit, exit_group, openat
        assert run_bpf(prog, nr) == ALLOW, nr
    for nr in SECCOMP_IPC_X86_64:
        assert run_bpf(prog, nr) == (EPERM if deny_ipc else ALLOW), nr


def test_seccomp_lets_process_calls_name_only_the_caller() -> None:
    prog = seccomp_filter()
    for nr, args in SECCOMP_SELF_ONLY_X86_64:
        assert run_bpf(prog, nr, (0, 0, 7)) == ALLOW, nr
        for position in args:
            named = [0, 0, 7]
            named[position] = 4242  # the host's pid, a sibling's, anyone's
            assert run_bpf(prog, nr, tuple(named)) == EPERM, (nr, position)
    # prlimit64(getppid() in the host's namespace, RLIMIT_CPU, ...) and a high word that the kernel ignores
    assert run_bpf(prog, 302, (os.getpid(), 0)) == EPERM
    assert run_bpf(prog, 302, (1 << 32, 0)) == ALLOW  # low word 0: the kernel reads pid 0, the caller


def test_seccomp_kills_other_architectures_and_refuses_x32() -> None:
    prog = seccomp_filter()
    assert run_bpf(prog, 1, arch=I386) == KILL
    assert run_bpf(prog, 0x40000000 | 1) == EPERM
