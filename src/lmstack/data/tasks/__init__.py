"""Generated, held-out task data for every experiment: `make(name, out, n, seed)` writes JSONL splits.

Each generator is a plain function `(n, seed, split, **options) -> {"items": rows, ...}`; extra keys
become extra files (the knowledge base also returns its `documents`). `make` writes, per split,
`<split>.jsonl` (and `<split>_<key>.jsonl`), plus a `manifest.json` recording the exact call and the
SHA-256 of every file, so any output can be regenerated and checked bit for bit.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmstack.data.tasks import knowledge_base, math_word, preferences, records, reviews
from lmstack.data.tasks.common import SPLITS, check_split, read_jsonl
from lmstack.data.tasks.knowledge_base import sample_dir
from lmstack.errors import DataError
from lmstack.fileio import write_json, write_jsonl

# The submodules keep their names here (`tasks.math_word` is the module); the generators are below.
GENERATORS: dict[str, Callable[..., dict[str, list[dict]]]] = {
    "math_word": math_word.math_word,
    "math_word_hard": math_word.math_word_hard,
    "knowledge_base": knowledge_base.knowledge_base,
    "preferences": preferences.preferences,
    "reviews": reviews.reviews,
    "records": records.records,
}

__all__ = ["GENERATORS", "SPLITS", "describe", "generate", "make", "options_of", "read_jsonl", "sample_dir"]


def describe(name: str) -> str:
    """The one-line description of a generator (its docstring's first line)."""
    return (inspect.getdoc(_generator(name)) or "").splitlines()[0]


def options_of(name: str) -> dict[str, Any]:
    """A generator's extra options and their defaults (beyond n, seed and split)."""
    params = inspect.signature(_generator(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("n", "seed", "split")}


def _generator(name: str) -> Callable[..., dict[str, list[dict]]]:
    if name not in GENERATORS:
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[name]


def _check_options(name: str, options: dict[str, Any]) -> None:
    allowed = options_of(name)
    for key, value in options.items():
        if key not in allowed:
            hint = f"allowed: {', '.join(allowed)}" if allowed else "it takes no options"
            raise DataError(f"task {name!r} has no option {key!r} ({hint})")
        if value is None and allowed[key] is None:  # None means "the default rule"
            continue
        if allowed[key] is None or isinstance(allowed[key], int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"option {key} of {name!r} must be a positive integer, got {value!r}")


def generate(name: str, n: int, seed: int = 0, split: str = "train", **options: Any) -> dict[str, list[dict]]:
    """Rows of one split in memory (what `make` writes): {"items": [...], maybe "documents": [...]}."""
    gen = _generator(name)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(f"n must be a positive integer (items per split), got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(f"seed must be an integer, got {seed!r}")
    check_split(split)
    _check_options(name, options)
    return gen(n, seed, split, **options)


def make(
    name: str, out: str | Path, n: int, seed: int = 0, splits: Sequence[str] = SPLITS, **options: Any
) -> dict[str, Path]:
    """Generate `n` items per split of task `name` into directory `out`; returns {file name: path}.

    Same arguments, same bytes: every file is a pure function of (name, n, seed, split, options), and each
    split is generated independently, so asking for one split gives the same file as asking for all."""
    _generator(name)
    splits = list(splits)
    if not splits:
        raise DataError(f"no splits requested; choose from {', '.join(SPLITS)}")
    for split in splits:
        check_split(split)
    if len(set(splits)) != len(splits):
        raise DataError(f"splits repeat: {splits}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    written: dict[str, Path] = {}
    files: dict[str, dict[str, Any]] = {}
    for split in splits:
        result = generate(name, n, seed, split, **options)
        for key, rows in result.items():
            fname = f"{split}.jsonl" if key == "items" else f"{split}_{key}.jsonl"
            path = out / fname
            count = write_jsonl(path, rows)
            written[fname] = path
            files[fname] = {"rows": count, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest = {"task": name, "n": n, "seed": seed, "splits": splits, "options": options, "files": files}
    write_json(out / "manifest.json", manifest)
    written["manifest.json"] = out / "manifest.json"
    return written
