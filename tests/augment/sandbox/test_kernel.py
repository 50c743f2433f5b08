"""The kernel layers (kernel.py, applied by child.py): reported per run, switched off on request, and the
Landlock read roots the host hands the child."""

from __future__ import annotations

import os
import sys

import pytest

from lmstack.augment.sandbox import Limits, run_program
from lmstack.augment.sandbox.kernel import read_roots

FAST = Limits(cpu_s=1, wall_s=5.0)


@pytest.mark.skipif(sys.platform != "linux", reason="kernel layers are Linux-only")
def test_kernel_layers_are_reported_and_can_be_disabled() -> None:
    with_kernel = run_program("answer = 1", limits=FAST)
    without = run_program("answer = 1", limits=FAST, kernel=False)
    assert with_kernel.ok and without.ok
    assert "rlimits" in with_kernel.layers and without.layers == ("rlimits",)


def test_landlock_read_roots_are_real_existing_paths_including_the_standard_library() -> None:
    roots = read_roots()
    assert len(set(roots)) == len(roots)
    assert all(os.path.isabs(r) and os.path.realpath(r) == r and os.path.exists(r) for r in roots)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    assert any(stdlib == r or stdlib.startswith(r + os.sep) for r in roots)
