"""Shared benchmark plumbing: machine description, medians, and writing docs/results/<name>.{json,md}."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def commit() -> str:
    """Short HEAD, '+dirty' when code differs from it (results this benchmark is writing do not count)."""
    try:
        git = {"capture_output": True, "text": True, "timeout": 10, "cwd": ROOT}
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git)
        results = RESULTS.relative_to(ROOT).as_posix()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", f":!{results}"], **git).stdout
        return out.stdout.strip() + ("+dirty" if dirty.strip() else "")
    except OSError:
        return "unknown"


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call for `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def repo_relative(text: str) -> str:
    """`text` with paths inside the repository made relative to it: results name no path of the machine
    they were measured on."""
    return text.replace(f"{ROOT}{os.sep}", "")


def command(name: str) -> str:
    """The command that ran benchmark `name`, as a reader would type it in the repository."""
    args = [repo_relative(a) for a in sys.argv[1:]]
    return f"python -m benchmarks.{name}" + (f" {shlex.join(args)}" if args else "")


def write_results(name: str, data: dict[str, Any], table_md: str, notes: str = "") -> Path:
    """Write the JSON record and a markdown page stating machine, commit and command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "machine": machine(), "commit": commit(), "command": command(name), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    page = (
        f"# {name}\n\n{table_md}\n\n{notes}\n\n"
        f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} with {m['torch_threads']} threads"
        f"{', GPU ' + m['cuda'] if m['cuda'] else ''}. Commit `{record['commit']}`. "
        f"Command: `{record['command']}`.\n"
    )
    path = RESULTS / f"{name}.md"
    path.write_text(page)
    return path


def rewrite_page(name: str, table_md: str, notes: str = "") -> Path:
    """Redraw docs/results/<name>.md from new table and notes, keeping the machine, commit and command line
    of the run that measured it (a page re-rendered from its JSON, e.g. after correcting a recorded note)."""
    page = RESULTS / f"{name}.md"
    footer = page.read_text().rsplit("\n\nMachine: ", 1)[-1]
    page.write_text(f"# {name}\n\n{table_md}\n\n{notes}\n\nMachine: {footer}")
    return page


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
