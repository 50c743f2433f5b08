"""Per-task task metrics for fine-tuning runs: greedy completions of validation rows, scored.

Validation loss says how well the model predicts the reference; it does not say whether what the model
*generates* solves the task (a PAL program can be one token off and crash). So at every evaluation point
`TaskMetricEval` decodes the first `metric_rows` validation rows of each dataset that names a `metric`:

- `exact`: the generated text, stripped, equals the reference completion, stripped;
- `answer`: the final number of the text (`extract_answer`) is within tolerance of the row's `answer`;
- `pal`: the program extracted from the text, run in the sandbox, returns the row's `answer`.

The prompt is the validation sample's own tokens before its first trained token, so the model sees
exactly what it was trained on (chat template or plain separator, left truncation included), and the
reference is the sample's first run of trained tokens (the completion, or the first assistant turn).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from lmstack.augment.pal import answers_match, extract_program, run_value
from lmstack.augment.sandbox import Limits, run_many
from lmstack.data.instruct import Sample
from lmstack.data.tasks.answers import extract_answer, is_correct
from lmstack.errors import ConfigError
from lmstack.finetune.prompt_tuning import PromptTuned, generate_with_prompt
from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.tokenizer import Tokenizer
from lmstack.train.callbacks import Callback, LoopState
from lmstack.train.distributed import FSDP_STRATEGIES
from lmstack.train.loop import rng_state, set_rng_state

METRICS = ("pal", "answer", "exact")
EXTRA_TOKENS = 16  # decoded beyond the longest reference, so a near miss shows up as wrong, not cut off

# (prompt token ids, max_new_tokens) → one generated text per prompt
GenerateIds = Callable[[list[list[int]], int], list[str]]


def split_sample(sample: Sample) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids): the tokens before the first trained one (what the model was conditioned
    on in training) and the first run of trained tokens (what it was taught to produce there)."""
    trained = np.asarray(sample.trained, dtype=bool)
    first = int(np.argmax(trained))
    rest = trained[first:]
    run = len(rest) if rest.all() else int(np.argmin(rest))
    ids = np.asarray(sample.ids)
    return ids[:first].tolist(), ids[first : first + run].tolist()


def check_rows(metric: str, rows: Sequence[tuple[str, Mapping[str, Any]]], key: str) -> None:
    """Fail before training, not at the first evaluation: `answer` and `pal` need each (origin, row) to hold
    an `answer` field, and `answer` compares numbers, so that field must be one."""
    if metric not in ("answer", "pal"):
        return
    for origin, row in rows:
        if "answer" not in row:
            raise ConfigError(f"{key}: {metric} scores against the row's 'answer' field; {origin} has none")
        gold = row["answer"]
        if metric == "answer":
            try:
                ok = not isinstance(gold, bool) and np.isfinite(float(gold))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"{key}: answer compares numbers; {origin} has answer {gold!r} (use exact or pal)")


def score_texts(
    metric: str,
    texts: Sequence[str],
    references: Sequence[str],
    golds: Sequence[Any],
    workers: int = 2,
    limits: Limits | None = None,
) -> list[bool]:
    """Whether each generated text is right under `metric` (see the module docstring). `pal` runs every
    extracted program through the sandbox pool at once; a text with no program, or a failing run, is wrong."""
    if metric == "exact":
        return [t.strip() == r.strip() for t, r in zip(texts, references)]
    if metric == "answer":
        return [is_correct(extract_answer(t), g) for t, g in zip(texts, golds)]
    if metric == "pal":
        programs = [extract_program(t) for t in texts]
        runnable = [p for p in programs if p is not None]
        runs = iter(run_many(runnable, workers=workers, limits=limits or Limits()) if runnable else [])
        values = [run_value(next(runs)) if p is not None else None for p in programs]
        return [answers_match(v, g) for v, g in zip(values, golds)]
    raise ConfigError(f"unknown task metric {metric!r}; choose one of {', '.join(METRICS)}")


def score_rows(
    metric: str,
    samples: Sequence[Sample],
    rows: Sequence[Mapping[str, Any]],
    generate: GenerateIds,
    tokenizer: Tokenizer,
    batch_size: int = 8,
) -> float:
    """Accuracy of `generate` on validation samples (and their raw rows, for the `answer` gold): each
    sample's prompt decoded in batches of `batch_size`, with room for the longest reference + EXTRA_TOKENS."""
    if not samples:
        return 0.0
    prompts, refs = zip(*(split_sample(s) for s in samples))
    max_new = max(len(r) for r in refs) + EXTRA_TOKENS
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts += generate(list(prompts[i : i + batch_size]), max_new)
    references = [tokenizer.decode(r) for r in refs]
    right = score_texts(metric, texts, references, [row.get("answer") for row in rows])
    return sum(right) / len(right)


def stop_ids(samples: Sequence[Sample], tokenizer: Tokenizer) -> tuple[int, ...]:
    """The special tokens that end the references (a chat template's end of turn, which need not be the
    tokenizer's EOS), so that generation stops where training taught the model to stop."""
    special = tokenizer.special_ids()
    ends = {ref[-1] for ref in (split_sample(s)[1] for s in samples) if ref}
    return tuple(sorted(ends & special))


def engine_generate(model: nn.Module, tokenizer: Tokenizer, stop: Sequence[int] = ()) -> GenerateIds:
    """Greedy decoding with the model's current parameters: a live `Engine` (LoRA layers included; a
    prompt-tuned model behind its virtual tokens). max_new_tokens is cut to what the context leaves."""
    tuned = isinstance(model, PromptTuned)
    engine = Engine(model.base if tuned else model, tokenizer, mode="live")
    prefix = model.n_tokens if tuned else 0

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        room = model.cfg.max_seq_len - prefix - max(len(p) for p in prompts)
        cfg = GenerationConfig(max_new_tokens=max(0, min(max_new_tokens, room)), stop_token_ids=tuple(stop))
        out = generate_with_prompt(engine, model, prompts, cfg) if tuned else engine.generate_ids(prompts, cfg)
        return [c.text for c in out]

    return generate


@dataclass(frozen=True)
class MetricSet:
    """One task's metric and what it scores: validation samples and their raw rows, in the same order."""

    metric: str
    samples: Sequence[Sample]
    rows: Sequence[Mapping[str, Any]]


class TaskMetricEval(Callback):
    """Task metrics next to the validation loss (same schedule: every `eval_every` steps and at the end),
    logged as `val_metric/<task>` records. Generation runs in eval mode (no dropout); the mode is restored.
    Every rank runs it, keeping them in step; only rank 0's log_record writes. FSDP shards the parameters
    the live engine reads outside the model's forward, so under zero2/zero3/hsdp it is skipped (said once)."""

    def __init__(self, sets: Mapping[str, MetricSet], tokenizer: Tokenizer, batch_size: int) -> None:
        self.sets, self.tokenizer, self.batch_size = dict(sets), tokenizer, batch_size
        self.stop = stop_ids([s for m in self.sets.values() for s in m.samples], tokenizer)
        self.enabled = True

    def on_train_start(self, state: LoopState) -> None:
        self.state = state
        if state.parallel.strategy in FSDP_STRATEGIES:
            self.enabled = False
            state.log(f"val_metric: not computed under train.strategy={state.parallel.strategy} (sharded parameters)")

    def evaluate(self) -> dict[str, float]:
        """Every task's metric on the model as it is now. The RNG state is put back afterwards, so that
        scoring (after the step's checkpoint was saved) leaves a resumed run identical to a straight one."""
        model, rng = self.state.model, rng_state()
        was_training = model.training
        model.eval()
        try:
            generate = engine_generate(model, self.tokenizer, self.stop)
            return {
                task: score_rows(m.metric, m.samples, m.rows, generate, self.tokenizer, self.batch_size)
                for task, m in self.sets.items()
            }
        finally:
            model.train(was_training)
            set_rng_state(rng)

    def on_step_end(self, step: int, loss: float) -> None:
        cfg, done = self.state.cfg, step + 1
        if not self.enabled or not ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            return
        values = self.evaluate()
        self.state.log_record({"step": done, **{f"val_metric/{k}": round(v, 6) for k, v in values.items()}})
        shown = ", ".join(f"{k} ({self.sets[k].metric}) {v:.3f}" for k, v in values.items())
        self.state.log(f"step {done}: val_metric {shown}")
