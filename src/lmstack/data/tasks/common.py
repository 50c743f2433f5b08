"""Helpers shared by the task generators: seeded RNGs, split partitions, templates, atomic JSONL, progress.

Splits are kept apart *by construction*, never by after-the-fact filtering against another split, so each
split can be generated on its own and still never overlap the others:

- hand-written pools (first names, objects, ...) are partitioned by position (`pool_split`);
- invented names and number patterns are partitioned by a SHA-256 of the string (`hash_split`);
- every template belongs to exactly one split (`Templates`).

Nothing here depends on `hash()` or set order, so output bytes do not change with PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from lmstack.errors import DataError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
T = TypeVar("T")

# Hand-written pools are split 3:1:1 by position: items 0,1,2 (mod 5) train, 3 validation, 4 test.
_POOL_RESIDUES = {"train": (0, 1, 2), "validation": (3,), "test": (4,)}


def check_split(split: str) -> int:
    """Return the index of `split`, or raise a DataError that lists the valid names."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def split_rng(seed: int, task: str, split: str) -> random.Random:
    """An RNG private to (task, split, seed). String seeds go through SHA-512, so this is stable everywhere."""
    return random.Random(f"lmstack/{task}/{split}/{seed}")


def hash_split(key: str) -> str:
    """The split that owns `key` (a name stem or a number pattern): a fixed, uniform partition by SHA-256."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return SPLITS[int.from_bytes(digest[:8], "big") % len(SPLITS)]


def pool_split(pool: Sequence[T], split: str) -> list[T]:
    """The part of a hand-written pool that belongs to `split` (3:1:1 by position)."""
    check_split(split)
    residues = _POOL_RESIDUES[split]
    return [x for i, x in enumerate(pool) if i % 5 in residues]


_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def numbers_in(text: str) -> list[str]:
    """Every number written in `text`, normalised (no thousands commas, no trailing zeros): '$2.50' -> '2.5'."""
    out = []
    for match in _NUMBER.finditer(text):
        value = Decimal(match.group().replace(",", ""))
        s = format(value.normalize(), "f") if value != value.to_integral_value() else str(int(value))
        out.append(s)
    return out


def number_signature(text: str) -> str:
    """The *number pattern* of a text: its sorted multiset of numbers. Splits never share one."""
    return " ".join(sorted(numbers_in(text)))


class Templates:
    """Surface templates, each owned by exactly one split: `table[slot] = (train, validation, test)` lists."""

    def __init__(self, prefix: str, table: dict[str, tuple[Sequence[str], Sequence[str], Sequence[str]]]):
        for slot, variants in table.items():
            if len(variants) != len(SPLITS) or not all(variants):
                raise ValueError(f"template slot {prefix}.{slot} needs a non-empty list for each split")
        self.prefix = prefix
        self.table = table

    def pick(self, rng: random.Random, slot: str, split: str) -> tuple[str, str]:
        """Choose a template of `slot` owned by `split`; returns (template id, template text)."""
        variants = self.table[slot][check_split(split)]
        k = rng.randrange(len(variants))
        return f"{self.prefix}.{slot}.{split}.{k}", variants[k]

    def by_split(self) -> dict[str, list[str]]:
        """All template texts of each split (used by the tests to prove the splits share none)."""
        return {s: [t for variants in self.table.values() for t in variants[i]] for i, s in enumerate(SPLITS)}


def fill(template: str, **fields: Any) -> str:
    """`str.format` plus capitalisation of the first letter (templates may start with a pronoun)."""
    text = template.format(**fields)
    return text[:1].upper() + text[1:]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file, naming the file and line of any malformed record."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"JSONL file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
    return rows


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only when it is a terminal); yields `advance(k=1)`."""
    if not sys.stderr.isatty():
        yield lambda k=1: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k=1: bar.advance(task, k)


def draw_distinct(
    task: str,
    n: int,
    split: str,
    draw: Callable[[], dict | None],
    key: Callable[[dict], str],
    belongs: Callable[[dict], bool] = lambda item: True,
) -> list[dict]:
    """Call `draw` until `n` items with distinct `key`s that `belong` to the split are found (a draw may return
    None to skip); gives up with a clear error when the generator cannot find that many."""
    items: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    with progress(n, f"{task} {split}") as advance:
        while len(items) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise too_few(task, split, len(items), n, "ask for fewer items")
            item = draw()
            if item is None or key(item) in seen or not belongs(item):
                continue
            seen.add(key(item))
            items.append(item)
            advance(1)
    return items


def too_few(task: str, split: str, have: int, want: int, hint: str) -> DataError:
    """The error raised when a generator cannot find `want` distinct items."""
    return DataError(f"{task}/{split}: only {have} distinct items could be generated, {want} were asked for; {hint}")
