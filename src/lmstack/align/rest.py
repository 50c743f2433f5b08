"""ReST (Gulcehre et al. 2023) and ReST-EM (Singh et al. 2023): RL as repeated filtered fine-tuning. This is
the data side; sampling is the engine's job and training the fine-tune recipe's.

- Grow: sample N completions per prompt from the current policy and score them (`score_groups`, any
  `align.rewards` reward);
- Improve: keep the samples whose reward exceeds a threshold that rises from one Improve step to the next
  (`ThresholdSchedule`, `filter_samples`), and fine-tune on them;
- ReST-EM: binary rewards, at most `c` distinct correct samples per prompt (so easy prompts, with many
  correct samples, do not swamp the hard ones), and every iteration fine-tunes the *base* model on the
  latest samples; the iteration to keep is the one with the best validation accuracy (`best_iteration`:
  later ones can overfit).

`finetune_rows` writes what `lmstack finetune` reads: JSONL rows with `prompt` and `completion` (and, kept
from the task row, fields such as `answer` that its task metrics score against); `write_rows` writes
them atomically, so a killed run never leaves a half-written data file for the next iteration to train on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmstack.align.rewards import GuardedReward, Reward, RewardFn, score_batch
from lmstack.errors import ConfigError, DataError
from lmstack.fileio import write_jsonl


@dataclass
class PromptSamples:
    """One prompt's Grow samples: its text, the task row it came from, and each completion's reward."""

    prompt: str
    completions: list[str]
    rewards: list[float]
    row: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.completions) != len(self.rewards):
            raise DataError(f"{len(self.completions)} completions but {len(self.rewards)} rewards for one prompt")


@dataclass(frozen=True)
class Selected:
    """One sample chosen for fine-tuning."""

    prompt: str
    completion: str
    reward: float
    row: Mapping[str, Any]


def score_groups(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    rows: Sequence[Mapping[str, Any]],
    reward: Reward | GuardedReward | RewardFn,
) -> list[PromptSamples]:
    """Grow's scoring: every prompt's completions scored against that prompt's task row, all in one batch
    (one sandbox pool or reward-model pass for the whole Grow step)."""
    if not len(prompts) == len(completions) == len(rows):
        raise DataError(f"{len(prompts)} prompts, {len(completions)} completion lists, {len(rows)} rows")
    texts = [c for cs in completions for c in cs]
    scores = iter(score_batch(reward, texts, [r for r, cs in zip(rows, completions) for _ in cs]))
    return [
        PromptSamples(p, list(cs), [next(scores) for _ in cs], dict(r)) for p, cs, r in zip(prompts, completions, rows)
    ]


@dataclass(frozen=True)
class ThresholdSchedule:
    """The reward threshold of each Improve step: the listed `values` (the last one repeats past the end),
    or, without values, `start` to `end` in equal steps over `steps` Improve steps. It must not fall: each
    Improve step trains on a subset of the previous one's data, each of higher quality."""

    values: tuple[float, ...] = ()
    start: float = 0.0
    end: float = 0.0
    steps: int = 1

    def __post_init__(self) -> None:
        if self.values:
            if any(not math.isfinite(v) for v in self.values):
                raise ConfigError(f"thresholds must be finite numbers, got {self.values}")
            if any(b < a for a, b in zip(self.values, self.values[1:])):
                raise ConfigError(f"a ReST threshold schedule must not decrease, got {list(self.values)}")
            return
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.end < self.start:
            raise ConfigError(f"a ReST threshold schedule must not decrease: start {self.start} > end {self.end}")

    def __call__(self, step: int) -> float:
        """The threshold of Improve step `step` (0-based)."""
        if step < 0:
            raise ConfigError(f"Improve steps count from 0, got {step}")
        if self.values:
            return self.values[min(step, len(self.values) - 1)]
        if self.steps == 1:
            return self.end
        return self.start + (self.end - self.start) * min(step, self.steps - 1) / (self.steps - 1)


def filter_samples(groups: Sequence[PromptSamples], threshold: float) -> list[Selected]:
    """ReST's Improve filter: the samples whose reward is strictly above `threshold`, in input order."""
    return [Selected(g.prompt, c, r, g.row) for g in groups for c, r in zip(g.completions, g.rewards) if r > threshold]


def improve_samples(groups: Sequence[PromptSamples], step: int, schedule: ThresholdSchedule) -> list[Selected]:
    """The training samples of Improve step `step`: the Grow samples above that step's threshold."""
    return filter_samples(groups, schedule(step))


def _dedupe_key(text: str) -> str:
    return " ".join(text.split())


def rest_em_select(
    groups: Sequence[PromptSamples], max_per_prompt: int, *, correct: float = 1.0, seed: int | None = None
) -> list[Selected]:
    """ReST-EM's E-step: per prompt, the samples with reward >= `correct` (binary rewards: the correct ones),
    duplicates dropped (the same text up to whitespace counts once), at most `max_per_prompt` of them: the
    first ones in sample order, or a random choice of them with `seed`."""
    if max_per_prompt < 1:
        raise ConfigError(f"max_per_prompt must be >= 1, got {max_per_prompt}")
    rng = random.Random(seed) if seed is not None else None
    out = []
    for g in groups:
        seen: set[str] = set()
        chosen = []
        for c, r in zip(g.completions, g.rewards):
            key = _dedupe_key(c)
            if r >= correct and key and key not in seen:
                seen.add(key)
                chosen.append(Selected(g.prompt, c, r, g.row))
        if rng is not None and len(chosen) > max_per_prompt:
            keep = sorted(rng.sample(range(len(chosen)), max_per_prompt))
            chosen = [chosen[i] for i in keep]
        out += chosen[:max_per_prompt]
    return out


def finetune_rows(selected: Sequence[Selected], keep_fields: Sequence[str] = ("answer",)) -> list[dict[str, Any]]:
    """Fine-tuning rows: `prompt`, `completion`, the sample's `reward`, and the task row's `keep_fields`
    where it has them (`answer`, which the `answer`/`pal` task metrics score against). Samples with a blank
    prompt or completion are left out: the fine-tune data loader rejects them (nothing to train on)."""
    rows = []
    for s in selected:
        if not s.prompt.strip() or not s.completion.strip():
            continue
        row = {k: s.row[k] for k in keep_fields if k in s.row and k not in ("prompt", "completion", "reward")}
        rows.append({"prompt": s.prompt, "completion": s.completion, "reward": s.reward, **row})
    return rows


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write fine-tuning rows as JSONL, atomically; returns the row count. Refuses an empty set: a finetune
    run on an empty file fails later and less clearly (lower the threshold, or sample more)."""
    if not rows:
        raise DataError(f"no samples passed the filter; nothing to write to {path}")
    return write_jsonl(path, [dict(r) for r in rows])


def best_iteration(val_accuracy: Sequence[float] | Mapping[int, float]) -> int:
    """The iteration with the highest validation accuracy (a list: index = iteration; a mapping: iteration →
    accuracy); ties go to the earliest, the one least fitted to its own samples. NaN entries are ignored."""
    items = list(val_accuracy.items()) if isinstance(val_accuracy, Mapping) else list(enumerate(val_accuracy))
    items = [(i, float(a)) for i, a in items if not math.isnan(float(a))]
    if not items:
        raise DataError("no validation accuracy to choose an iteration by")
    return max(sorted(items), key=lambda item: item[1])[0]
