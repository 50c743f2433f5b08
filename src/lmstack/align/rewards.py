"""Reward functions for RL (PPO, GRPO) and rejection-sampling fine-tuning (ReST), all with one signature:

    reward(completion_text, row) -> float

where `row` is the task record the prompt came from (its `answer`, `constraint`, ...). A `Reward` adds a
name and, where one call can score many texts at once (a warm sandbox pool, one reward-model forward), a
batch function. Built in:

- `execution`: the program in the completion (PAL's extraction), run in the PAL sandbox; 1.0 when its value
  matches the row's `answer` (PAL's own scoring, `finetune.task_metrics.score_texts("pal", ...)`);
- `oracle`: the preference task's programmatic judge (`data.tasks.preferences.oracle_score`);
- `reward_model(score)`: any callable that scores texts (the learned reward model of `align/reward.py`, a
  remote judge), given the prompt followed by the completion;
- `load_reward("package.module:function")`: a user callable, or the name of a built-in.

An RL run must not die because one sample made the reward raise or hang: `GuardedReward` turns both into a
recorded 0.0 (`RewardStats`, logged with the run's metrics). Errors that say the run itself is misconfigured
(`ConfigError`: the reward needs a field the rows lack) still raise, so a wrong setup cannot hide behind a
batch of zeros.
"""

from __future__ import annotations

import importlib
import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmstack.augment.sandbox import Limits
from lmstack.data.tasks.preferences import oracle_score
from lmstack.errors import ConfigError, DataError
from lmstack.finetune.task_metrics import score_texts

Row = Mapping[str, Any]
RewardFn = Callable[[str, Row], float]
BatchRewardFn = Callable[[Sequence[str], Sequence[Row]], Sequence[float]]


@dataclass(frozen=True)
class Reward:
    """A named reward function, with an optional batch form that scores many (text, row) pairs in one call."""

    name: str
    fn: RewardFn
    batch_fn: BatchRewardFn | None = None

    def __call__(self, text: str, row: Row) -> float:
        return float(self.fn(text, row))

    def batch(self, texts: Sequence[str], rows: Sequence[Row]) -> list[float]:
        _check_pairs(texts, rows)
        if self.batch_fn is None:
            return [self(t, r) for t, r in zip(texts, rows)]
        out = _floats(self.batch_fn(texts, rows))
        if len(out) != len(texts):
            raise DataError(f"reward {self.name!r} returned {len(out)} scores for {len(texts)} texts")
        return out


def _check_pairs(texts: Sequence[str], rows: Sequence[Row]) -> None:
    if len(texts) != len(rows):
        raise DataError(f"{len(texts)} texts but {len(rows)} rows; score each completion with its own task row")


def _floats(values: Any) -> list[float]:
    """Scores as floats, from a list or a tensor / array (anything with `tolist`)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- built-in rewards


def _golds(rows: Sequence[Row], name: str) -> list[Any]:
    missing = [i for i, r in enumerate(rows) if "answer" not in r]
    if missing:
        raise ConfigError(f"the {name} reward scores against the row's 'answer' field; row {missing[0]} has none")
    return [r["answer"] for r in rows]


def execution_batch(
    texts: Sequence[str], rows: Sequence[Row], *, limits: Limits | None = None, workers: int = 2
) -> list[float]:
    """`execution` for many completions: every extracted program through one warm sandbox pool."""
    _check_pairs(texts, rows)
    if not texts:
        return []
    right = score_texts("pal", list(texts), [""] * len(texts), _golds(rows, "execution"), workers, limits)
    return [float(r) for r in right]


def execution(text: str, row: Row, *, limits: Limits | None = None) -> float:
    """1.0 when the program PAL extracts from `text`, run in the sandbox, returns the row's `answer`; 0.0 for
    a wrong value, a crash, a timeout or no program at all."""
    return execution_batch([text], [row], limits=limits, workers=1)[0]


def oracle(text: str, row: Row) -> float:
    """The preference task's oracle: 1.0 for a correct final answer + 0.5 for the style constraint."""
    for key in ("answer", "constraint"):
        if key not in row:
            raise ConfigError(f"the oracle reward needs preference-task rows; this row has no {key!r}")
    return float(oracle_score(text, dict(row)))


def reward_model(
    score: Callable[[list[str]], Any],
    *,
    prompt_key: str | None = "prompt",
    separator: str = "",
    name: str = "reward_model",
) -> Reward:
    """A reward from a callable that scores whole texts (`score(texts) -> one float per text`, a list or a
    tensor): each completion is scored after its row's prompt (`row[prompt_key] + separator + text`; no
    prompt with `prompt_key=None`), as a reward model was trained on prompt and response together. One
    batch is one `score` call."""

    def texts_of(texts: Sequence[str], rows: Sequence[Row]) -> list[str]:
        if prompt_key is None:
            return list(texts)
        missing = [i for i, r in enumerate(rows) if prompt_key not in r]
        if missing:
            raise ConfigError(f"reward_model puts row[{prompt_key!r}] before the completion; row {missing[0]} lacks it")
        return [f"{r[prompt_key]}{separator}{t}" for t, r in zip(texts, rows)]

    def batch(texts: Sequence[str], rows: Sequence[Row]) -> list[float]:
        return _floats(score(texts_of(texts, rows)))

    return Reward(name, lambda text, row: batch([text], [row])[0], batch)


BUILTIN: dict[str, Reward] = {
    "execution": Reward("execution", execution, execution_batch),
    "oracle": Reward("oracle", oracle),
}


def as_reward(reward: Reward | RewardFn, name: str | None = None) -> Reward:
    """A `Reward` from a plain `(text, row) -> float` callable (a Reward is returned as it is)."""
    if isinstance(reward, Reward):
        return reward
    if not callable(reward):
        raise ConfigError(f"a reward must be callable as reward(text, row) -> float, got {type(reward).__name__}")
    return Reward(name or getattr(reward, "__name__", type(reward).__name__), reward)


def load_reward(spec: str) -> Reward:
    """A reward by name (`execution`, `oracle`) or from a `package.module:function` string (the attribute
    may be dotted, `module:Class.method`), for recipes that name their reward in YAML."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"unknown reward {spec!r}; use one of {', '.join(BUILTIN)} or 'package.module:function' for your own"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reward {spec!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"reward {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return as_reward(obj, name=spec)


# ----------------------------------------------------------------------------- guarding against bad samples


@dataclass
class RewardStats:
    """What went wrong while scoring: every failure became a 0.0 score and is counted here."""

    calls: int = 0
    errors: int = 0  # the reward raised
    timeouts: int = 0  # it ran past the deadline (its thread is left behind, see GuardedReward)
    invalid: int = 0  # it returned something that is not a finite number
    kinds: dict[str, int] = field(default_factory=dict)  # exception type name → count
    last_error: str = ""

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts + self.invalid

    def record(self, kind: str, message: str, n: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + n
        self.last_error = message

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Counters for a metrics record (`reward/errors`, ...; `reward/failed_frac` of all calls)."""
        out = {f"{prefix}{k}": float(getattr(self, k)) for k in ("calls", "errors", "timeouts", "invalid")}
        out[f"{prefix}failed_frac"] = self.failed / self.calls if self.calls else 0.0
        return out


_PENDING = object()


class GuardedReward:
    """`reward` with failures turned into 0.0: a call that raises (anything but the `passthrough` errors,
    which mean the run is misconfigured), returns a non-finite or non-numeric value, or does not return
    within `timeout_s` seconds (None: no deadline) scores 0.0 and is counted in `stats`.

    A timed-out call cannot be killed inside this process: its daemon thread is abandoned. While `max_hung`
    of them are still running, further calls score 0.0 at once instead of starting more (rewards that run
    untrusted code should sandbox it, as `execution` does). A batch that raises is rescored item by item, so
    one bad sample costs only its own score; a batch that times out scores 0.0 throughout."""

    def __init__(
        self,
        reward: Reward | RewardFn,
        timeout_s: float | None = 30.0,
        *,
        max_hung: int = 4,
        passthrough: tuple[type[BaseException], ...] = (ConfigError,),
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0 seconds (or None for no deadline), got {timeout_s!r}")
        if max_hung < 1:
            raise ConfigError(f"max_hung must be >= 1, got {max_hung}")
        self.reward = as_reward(reward)
        self.timeout_s, self.max_hung, self.passthrough = timeout_s, max_hung, passthrough
        self.stats = RewardStats()
        self._hung: list[threading.Thread] = []
        self._warned = False

    @property
    def name(self) -> str:
        return self.reward.name

    def _run(self, fn: Callable[[], Any], timeout: float | None) -> tuple[str, Any]:
        """("ok", value) | ("error", exception) | ("timeout", None), running `fn` on a daemon thread when
        there is a deadline."""
        if timeout is None:
            try:
                return "ok", fn()
            except self.passthrough:
                raise
            except Exception as exc:
                return "error", exc
        box: list[Any] = [_PENDING, None]

        def target() -> None:
            try:
                box[0] = fn()
            except BaseException as exc:  # handed to the caller's thread, which decides
                box[1] = exc

        thread = threading.Thread(target=target, name=f"reward-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self._hung.append(thread)
            return "timeout", None
        if box[1] is not None:
            if isinstance(box[1], self.passthrough) or not isinstance(box[1], Exception):
                raise box[1]
            return "error", box[1]
        return "ok", box[0]

    def _too_many_hung(self, n: int) -> bool:
        self._hung = [t for t in self._hung if t.is_alive()]
        if len(self._hung) < self.max_hung:
            return False
        self.stats.timeouts += n
        self.stats.record("hung", f"{len(self._hung)} earlier calls of {self.name!r} are still running", n)
        if not self._warned:
            warnings.warn(
                f"reward {self.name!r}: {len(self._hung)} calls hung past {self.timeout_s}s and are still "
                "running; scoring 0.0 until they finish",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        return True

    def _value(self, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            self.stats.invalid += 1
            self.stats.record("invalid", f"{self.name!r} returned {value!r}, not a finite number")
            return 0.0
        return number

    def _failure(self, status: str, exc: BaseException | None, n: int) -> None:
        if status == "timeout":
            self.stats.timeouts += n
            self.stats.record("timeout", f"{self.name!r} did not return within {self.timeout_s}s", n)
        else:
            assert exc is not None
            self.stats.errors += n
            self.stats.record(type(exc).__name__, f"{self.name!r} raised {type(exc).__name__}: {exc}", n)

    def __call__(self, text: str, row: Row) -> float:
        self.stats.calls += 1
        if self._too_many_hung(1):
            return 0.0
        status, value = self._run(lambda: self.reward.fn(text, row), self.timeout_s)
        if status != "ok":
            self._failure(status, value, 1)
            return 0.0
        return self._value(value)

    def batch(self, texts: Sequence[str], rows: Sequence[Row]) -> list[float]:
        """Scores of many pairs: the reward's batch form in one guarded call (deadline `timeout_s` per
        item), else one guarded call per pair."""
        _check_pairs(texts, rows)
        if self.reward.batch_fn is None or not texts:
            return [self(t, r) for t, r in zip(texts, rows)]
        n = len(texts)
        if self._too_many_hung(n):
            self.stats.calls += n
            return [0.0] * n
        timeout = None if self.timeout_s is None else self.timeout_s * n
        status, value = self._run(lambda: self.reward.batch(texts, rows), timeout)
        if status == "error":  # find the bad sample(s): the others keep their scores
            return [self(t, r) for t, r in zip(texts, rows)]
        self.stats.calls += n
        if status == "timeout":
            self._failure(status, None, n)
            return [0.0] * n
        return [self._value(v) for v in value]


def score_batch(reward: Reward | GuardedReward | RewardFn, texts: Sequence[str], rows: Sequence[Row]) -> list[float]:
    """One score per (completion text, task row), through the reward's batch form when it has one."""
    if isinstance(reward, GuardedReward):
        return reward.batch(texts, rows)
    return as_reward(reward).batch(texts, rows)
