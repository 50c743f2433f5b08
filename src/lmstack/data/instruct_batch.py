"""Batches of instruction samples: padding, packing, multi-task mixtures, and a step → batch function.

Layout of a batch (dict of CPU tensors, rows right-padded to one length T):
`input_ids`, `labels` (B, T) — labels are already shifted: `labels[b, t]` is the target of position t, or
IGNORE_INDEX; `attention_mask` (1 = token), `positions` (count from 0 in every sample), `segment_ids` when
rows are packed (1, 2, … per sample, 0 = padding; the model lets a token attend only to its own segment),
and `label_norm` (B,): each row's share of the token count the loss divides by. The shares of a training
batch sum to its trained-token count, so any slice of rows (a rank's part, a micro-batch) divides by its
share of the *whole* batch's count, and the loop's sum over micro-batches and mean over ranks is exactly the
mean over every trained token of the step.

Everything random is seeded by (seed, purpose, epoch): `InstructBatches(step, rows)` is a pure function of
(seed, step), so resuming at any step gives bit-identical batches without loader state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lmstack.data.instruct import IGNORE_INDEX, Sample
from lmstack.errors import ConfigError, DataError


def seeded(seed: int, purpose: str, index: int) -> torch.Generator:
    """A generator private to (seed, purpose, index), stable across machines (SHA-256, not `hash()`)."""
    digest = hashlib.sha256(f"lmstack/instruct/{seed}/{purpose}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


# ----------------------------------------------------------------------------- packing


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Item indices grouped into bins of `capacity`: each item, in the given order, goes into the first
    (lowest-numbered) bin with room. A max-tree over bin space finds that bin in O(log n)."""
    n = len(lengths)
    size = 1
    while size < max(n, 1):
        size *= 2
    room = [0] * (2 * size)
    room[size : size + n] = [capacity] * n  # at most n bins; unopened bins are empty
    for node in range(size - 1, 0, -1):
        room[node] = max(room[2 * node], room[2 * node + 1])
    bins: list[list[int]] = []
    for item, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"item {item} of length {length} does not fit a bin of {capacity}")
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= length else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(item)
        room[node] -= length
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return bins


def make_batch(
    rows: Sequence[Sequence[Sample]],
    pad_id: int = 0,
    length: int | None = None,
    label_norm: float | None = None,
    segments: bool | None = None,
) -> dict[str, Tensor]:
    """Tensors for rows of samples laid end to end (one sample per row = a padded batch). A sample of n
    tokens fills n - 1 positions (inputs ids[:-1], targets ids[1:]). `length`: T (default the longest row);
    `label_norm`: each row's share of the loss's divisor (default: this batch's trained tokens / rows);
    `segments`: emit `segment_ids` (default: when some row holds more than one sample)."""
    used = [sum(len(s) - 1 for s in row) for row in rows]
    if not rows or not all(rows):
        raise ValueError("a batch needs at least one row and every row at least one sample")
    width = max(used) if length is None else length
    if max(used) > width:
        raise ValueError(f"a row of {max(used)} positions does not fit length {width}")
    shape = (len(rows), width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    segment_ids = np.zeros(shape, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for k, s in enumerate(row, 1):
            m = len(s) - 1
            input_ids[r, at : at + m] = s.ids[:-1]
            labels[r, at : at + m] = np.where(s.trained[1:], s.ids[1:], IGNORE_INDEX)
            positions[r, at : at + m] = np.arange(m)
            segment_ids[r, at : at + m] = k
            at += m
    if label_norm is None:
        label_norm = sum(s.n_trained for row in rows for s in row) / len(rows)
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy((segment_ids > 0).astype(np.int64)),
        "positions": torch.from_numpy(positions),
        "label_norm": torch.full((len(rows),), float(label_norm), dtype=torch.float32),
    }
    if segments if segments is not None else any(len(row) > 1 for row in rows):
        batch["segment_ids"] = torch.from_numpy(segment_ids)
    return batch


def count_tokens(batch: dict[str, Tensor]) -> int:
    """Real (non-padding) tokens of a batch: TrainingJob.count_tokens for throughput figures."""
    return int(batch["attention_mask"].sum())


def _rows(samples: Sequence[Sample], capacity: int | None) -> list[list[Sample]]:
    if capacity is None:
        return [[s] for s in samples]
    return [[samples[i] for i in b] for b in first_fit([len(s) - 1 for s in samples], capacity)]


def eval_batches(
    samples: Sequence[Sample], batch_size: int, pack: bool = False, seq_len: int | None = None, pad_id: int = 0
) -> list[dict[str, Tensor]]:
    """Fixed batches over `samples` in their order (packed first-fit when `pack`, rows of `seq_len`).

    `label_norm` is set so that the plain mean of the batch losses (what the loop's evaluation reports) is
    the mean over every trained token of the whole set, not a mean of per-batch means."""
    if not samples:
        raise DataError("no evaluation samples")
    if pack and seq_len is None:
        raise ConfigError("packed evaluation batches need seq_len")
    rows = _rows(samples, seq_len if pack else None)
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    total = sum(s.n_trained for s in samples)
    return [make_batch(c, pad_id, label_norm=total / (len(chunks) * len(c)), segments=pack) for c in chunks]


# ----------------------------------------------------------------------------- mixtures


def mixture_probabilities(
    sizes: Mapping[str, int], weights: Mapping[str, float] | None = None, temperature: float | None = None
) -> dict[str, float]:
    """Sampling probabilities of named datasets: p_i ∝ weights[i], or p_i ∝ n_i^(1/temperature)
    (1 = proportional to size, larger flattens toward uniform); proportional to size when neither is given."""
    if weights is not None and temperature is not None:
        raise ConfigError("give mixture weights or a temperature, not both")
    if weights is not None:
        unknown, missing = set(weights) - set(sizes), set(sizes) - set(weights)
        if unknown or missing:
            raise ConfigError(
                f"mixture weights must name each dataset once: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        for name, w in weights.items():
            if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"mixture weight of {name!r} must be a finite number >= 0, got {w!r}")
        raw = {name: float(weights[name]) for name in sizes}
    else:
        t = 1.0 if temperature is None else temperature
        if not isinstance(t, int | float) or isinstance(t, bool) or not t > 0:
            raise ConfigError(f"mixture temperature must be > 0, got {temperature!r}")
        raw = {name: float(n) ** (1.0 / t) for name, n in sizes.items()}
    total = sum(raw.values())
    if not total > 0:
        raise ConfigError("mixture weights are all zero")
    return {name: v / total for name, v in raw.items()}


def largest_remainder(probabilities: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to `total`, as close to p_i * total as possible (ties go to the earlier name)."""
    exact = {k: p * total for k, p in probabilities.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(exact, key=lambda k: -(exact[k] - counts[k]))  # stable: earlier names win ties
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


class Mixture:
    """Named datasets sampled with fixed proportions. Mixture epoch e holds `quotas[name]` samples of each
    dataset — the next ones of that dataset's own stream of seeded permutations (so every sample of a dataset
    is seen once before any is repeated) — in a seeded shuffled order. Samples are renamed to their
    dataset's name, so each one carries its task. `epoch_size` defaults to the total number of samples."""

    def __init__(
        self,
        datasets: Mapping[str, Sequence[Sample]],
        weights: Mapping[str, float] | None = None,
        temperature: float | None = None,
        epoch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not datasets:
            raise ConfigError("a mixture needs at least one dataset")
        for name, samples in datasets.items():
            if not samples:
                raise DataError(f"dataset {name!r} has no samples")
        self.datasets = {
            name: [s if s.task == name else dataclasses.replace(s, task=name) for s in samples]
            for name, samples in datasets.items()
        }
        self.probabilities = mixture_probabilities({k: len(v) for k, v in datasets.items()}, weights, temperature)
        self.epoch_size = sum(len(v) for v in datasets.values()) if epoch_size is None else epoch_size
        if not isinstance(self.epoch_size, int) or self.epoch_size < 1:
            raise ConfigError(f"mixture epoch_size must be a positive integer, got {epoch_size!r}")
        self.quotas = largest_remainder(self.probabilities, self.epoch_size)
        starved = [k for k, q in self.quotas.items() if q == 0 and self.probabilities[k] > 0]
        if starved:
            raise ConfigError(f"epoch_size {self.epoch_size} is too small to sample {starved}; raise it")
        self.seed = seed

    def epoch(self, e: int) -> list[Sample]:
        """The samples of mixture epoch `e`, in training order."""
        chosen: list[Sample] = []
        for name, samples in self.datasets.items():
            q, n = self.quotas[name], len(samples)
            start, stop = e * q, (e + 1) * q
            for rep in range(start // n, -(-stop // n)):  # the passes over this dataset that the epoch touches
                perm = torch.randperm(n, generator=seeded(self.seed, f"dataset/{name}", rep)).tolist()
                chosen += [samples[i] for i in perm[max(start - rep * n, 0) : min(stop - rep * n, n)]]
        order = torch.randperm(len(chosen), generator=seeded(self.seed, "mixture", e)).tolist()
        return [chosen[i] for i in order]


# ----------------------------------------------------------------------------- step → batch


class InstructBatches:
    """`batches(step, rows=None)`: the batch of optimizer step `step` (or just its global rows `rows`, for a
    rank that builds only its own part), a pure function of (mixture seed, step): use it as
    `TrainingJob.train_batch`.

    Epoch e's samples (see `Mixture.epoch`) become rows — one sample each, or packed first-fit in that
    order into rows of `seq_len` positions — and steps take `batch_size` consecutive rows, running on into
    the next epoch. Every row of a step is padded to the step's longest row, so a rank's rows are exactly
    those of the global batch."""

    def __init__(self, mixture: Mixture, batch_size: int, seq_len: int, pack: bool = False, pad_id: int = 0) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ConfigError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        for samples in mixture.datasets.values():
            for s in samples:
                if len(s) - 1 > seq_len:
                    raise DataError(
                        f"{s.origin or s.task}: a sample of {len(s)} tokens needs {len(s) - 1} positions, more "
                        f"than seq_len={seq_len}; load it with max_len <= seq_len + 1"
                    )
        self.mixture, self.batch_size, self.seq_len, self.pack, self.pad_id = mixture, batch_size, seq_len, pack, pad_id
        self._epoch_rows: list[int] = []  # rows per epoch, epochs 0, 1, … as far as computed
        self._cache: dict[int, list[list[Sample]]] = {}

    def epoch_rows(self, e: int) -> list[list[Sample]]:
        if e not in self._cache:
            if len(self._cache) >= 2:  # steps only ever straddle two neighbouring epochs
                self._cache.pop(next(iter(self._cache)))
            self._cache[e] = _rows(self.mixture.epoch(e), self.seq_len if self.pack else None)
        return self._cache[e]

    def _rows_in_epoch(self, e: int) -> int:
        while len(self._epoch_rows) <= e:
            k = len(self._epoch_rows)
            self._epoch_rows.append(len(self.epoch_rows(k)) if self.pack else self.mixture.epoch_size)
        return self._epoch_rows[e]

    def step_rows(self, step: int) -> list[list[Sample]]:
        """The samples of every row of step `step`'s global batch."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        first, out = step * self.batch_size, []
        e = 0
        while first >= self._rows_in_epoch(e):
            first -= self._rows_in_epoch(e)
            e += 1
        while len(out) < self.batch_size:
            rows = self.epoch_rows(e)
            out += rows[first : first + self.batch_size - len(out)]
            first, e = 0, e + 1
        return out

    def __call__(self, step: int, rows: range | Sequence[int] | None = None) -> dict[str, Tensor]:
        every = self.step_rows(step)
        norm = sum(s.n_trained for row in every for s in row) / len(every)
        width = max(sum(len(s) - 1 for s in row) for row in every)
        chosen = every if rows is None else [every[i] for i in rows]
        return make_batch(chosen, self.pad_id, width, norm, segments=self.pack)
