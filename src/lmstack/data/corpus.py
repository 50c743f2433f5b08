"""Pretraining text: the running interpreter's standard-library sources (real code and prose, no download),
or the user's own text/JSONL files; tokenised once, packed into fixed-length blocks.

The train/validation split is by a hash of each file's relative path, so it is the same on every machine
and never changes when files are added or removed elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lmstack.errors import DataError

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "turtledemo"}


def stdlib_files() -> tuple[Path, list[Path]]:
    """(root, sorted .py files) of the standard library, without third-party packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts)]
    return root, sorted(files)


def is_validation(relative_path: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def read_documents(path: Path) -> Iterator[str]:
    """Documents of one file: the whole text, or the `text` field of each JSONL line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if path.suffix != ".jsonl":
        yield raw
        return
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{lineno}: each line must be an object with a string 'text' field")
        yield record["text"]


def split_documents(
    source: str, paths: list[str], val_fraction: float, max_train_bytes: int = 0, max_val_bytes: int = 0
) -> dict[str, list[str]]:
    """{'train': [...], 'val': [...]} documents, capped by byte budgets (0 = no cap), in file-path order."""
    # (file, name that decides its split): names are relative to the corpus root, so the split does not
    # depend on where the corpus happens to live
    named: list[tuple[Path, str]] = []
    if source == "stdlib":
        root, files = stdlib_files()
        named = [(f, str(f.relative_to(root))) for f in files]
    else:
        if not paths:
            raise DataError("data.source=files needs data.paths (text or .jsonl files, or directories)")
        for p in map(Path, paths):
            if p.is_dir():
                suffixes = (".txt", ".md", ".py", ".jsonl")
                found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)
                named += [(f, str(f.relative_to(p))) for f in found]
            elif p.is_file():
                named.append((p, p.name))
            else:
                raise DataError(f"data.paths: {p} does not exist")
    out: dict[str, list[str]] = {"train": [], "val": []}
    used = {"train": 0, "val": 0}
    caps = {"train": max_train_bytes, "val": max_val_bytes}
    for f, rel in named:
        split = "val" if is_validation(rel, val_fraction) else "train"
        if caps[split] and used[split] >= caps[split]:
            continue
        for doc in read_documents(f):
            out[split].append(doc)
            used[split] += len(doc)
    if not out["train"] or not out["val"]:
        raise DataError(
            f"the split left no {'training' if not out['train'] else 'validation'} text; "
            "add more files or change data.val_fraction"
        )
    return out


def tokenize_documents(tokenizer, documents: list[str], eos_id: int) -> np.ndarray:
    """One stream of token ids with an end-of-text token after every document."""
    ids: list[int] = []
    for chunk_start in range(0, len(documents), 256):
        for doc_ids in tokenizer.encode_batch(documents[chunk_start : chunk_start + 256]):
            ids.extend(doc_ids)
            ids.append(eos_id)
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.int32
    return np.asarray(ids, dtype=dtype)


class PackedBlocks:
    """Non-overlapping blocks of `block_len` tokens cut from one token stream (the tail is dropped)."""

    def __init__(self, tokens: np.ndarray, block_len: int) -> None:
        n = len(tokens) // block_len
        if n == 0:
            raise DataError(f"{len(tokens)} tokens are fewer than one block of {block_len}; use more text")
        self.blocks = torch.from_numpy(tokens[: n * block_len].astype(np.int64).reshape(n, block_len))

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        return self.blocks[idx]


def sample_indices(step: int, batch_size: int, n_items: int, seed: int) -> torch.Tensor:
    """Indices of the `batch_size` samples of optimizer step `step` (0-based): epochs of seeded permutations.

    A pure function of (step, seed) — the data position is the step, so resuming needs no loader state.
    """
    first = step * batch_size
    positions = torch.arange(first, first + batch_size)
    epochs = positions // n_items
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        sel = epochs == epoch
        out[sel] = perm[positions[sel] % n_items]
    return out
