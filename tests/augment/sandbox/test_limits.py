"""Limits (limits.py) refuse values the child could not start with."""

from __future__ import annotations

import pytest

from lmstack.augment.sandbox import Limits
from lmstack.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpu_s": 0},
        {"cpu_s": 1.5},
        {"wall_s": 0},
        {"memory_mb": 8},
        {"open_files": 3},
        {"output_bytes": -1},
        {"result_bytes": True},
        {"disk_mb": 0},
        {"max_files": -3},
    ],
)
def test_bad_limits_fail_fast(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Limits(**kwargs)
