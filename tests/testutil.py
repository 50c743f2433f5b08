"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

import os
import tempfile
from pathlib import Path

from lmstack.models import model_config

# tiny shapes shared by the unit tests (d_model ≤ 64)
TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)


def tiny_config(preset: str, **overrides):
    return model_config(preset, **{**TINY, **overrides})


def live_children() -> set[str]:
    """PIDs of this process's live children (all threads), from /proc."""
    out: set[str] = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            out |= set(Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return out


def sandbox_dirs() -> set[str]:
    """The sandbox's temp working directories that exist right now."""
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("lmstack-sbx-")}
