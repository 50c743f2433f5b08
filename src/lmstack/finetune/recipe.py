"""Fine-tuning recipes (`kind: finetune`): a pretrained model + instruction data → the one training loop.

    kind: finetune
    name: pal-lora
    base: smollm2                      # any load_pretrained spec: a name, a GGUF file, an HF dir, a run dir
    method: lora                       # full | lora
    data:
      seq_len: 384
      datasets:
        - {name: pal, path: data/math_word/train.jsonl, val_path: data/math_word/validation.jsonl,
           prompt: "{question}", completion: "{program}", metric: pal, metric_rows: 32}
    lora: {r: 8, alpha: 16, targets: all-linear}
    train: {steps: 300, batch_size: 8, lr: 2e-4}

Each dataset's rows are JSONL; `prompt`/`completion` are templates over a row's fields (`{question}`), so a
task file can be trained in several formats (PAL programs, CoT rationales) without rewriting it. Without
templates a row's own `prompt`/`completion` or `messages` are used. The loss is on completion (assistant)
tokens only; several datasets form a mixture with sampling `weight`s or a `temperature`; validation loss is
logged per task (`val_loss/<task>`, with two or more datasets).

A dataset's `metric` adds a task metric at the same evaluation points (`val_metric/<task>`, an accuracy in
[0, 1]; `lmstack.finetune.task_metrics`): the first `metric_rows` validation rows (default 32) are decoded
greedily from their training prompt, in batches of `train.batch_size`, and scored as `exact` (the text equals
the reference completion, both stripped), `answer` (its final number matches the row's `answer` field) or
`pal` (the extracted program, run in the sandbox, returns the row's `answer`). It needs a validation split.

LoRA and prompt-tuning checkpoints hold only what trains (`TrainingJob.state_filter`) plus a
peft-layout copy under `adapter/` or `prompt/`, which `lmstack.finetune.load.load_finetuned` puts back on the
base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lmstack.config import from_dict, to_dict
from lmstack.data.instruct import InstructFormat, Sample, encode_row, read_rows
from lmstack.data.instruct_batch import InstructBatches, Mixture, count_tokens, eval_batches
from lmstack.data.instruct_loss import completion_loss, per_task_loss
from lmstack.errors import ConfigError, DataError
from lmstack.fileio import write_json
from lmstack.finetune.lora import LoRAConfig, apply_lora, is_lora_key, lora_summary
from lmstack.finetune.lora_peft import save_adapter
from lmstack.finetune.prompt_tuning import PromptTuned, PromptTuningConfig, is_prompt_key, save_prompt
from lmstack.finetune.task_metrics import METRICS, MetricSet, TaskMetricEval, check_rows
from lmstack.train.callbacks import Callback, LoopState
from lmstack.train.loop import TrainConfig, TrainingJob

ADAPTER_DIR = "adapter"  # a LoRA checkpoint's adapter in peft's layout
PROMPT_DIR = "prompt"  # a prompt-tuning checkpoint's virtual tokens (peft's PROMPT_TUNING layout)
FINETUNE_FILE = "finetune.json"  # what a checkpoint needs to rebuild the model: base spec, method, adapter


@dataclass(frozen=True)
class DatasetConfig:
    """One named dataset of the mixture: JSONL files (`path`, `val_path`), or a task of the task suite
    generated in memory (`task`: math_word, records, …; `n` train and `n_val` validation rows, `seed`).
    `prompt`/`completion`/`system` are `str.format` templates over the row's fields; empty = the row's own
    `prompt`/`completion` (or `messages`)."""

    path: str = ""
    task: str = ""
    n: int = 1000
    n_val: int = 100
    seed: int = 0
    name: str = ""  # default: the task or the file's stem
    val_path: str = ""
    weight: float = 1.0
    prompt: str = ""
    completion: str = ""
    system: str = ""
    max_rows: int = 0  # 0 = all rows
    max_val_rows: int = 0
    metric: str = ""  # "" (none) | pal | answer | exact: a task metric on the validation rows
    metric_rows: int = 32  # how many validation rows (the first ones) the metric scores

    @property
    def label(self) -> str:
        return self.name or self.task or Path(self.path).stem

    @property
    def has_val(self) -> bool:
        return bool(self.val_path or (self.task and self.n_val))


@dataclass(frozen=True)
class FinetuneData:
    datasets: tuple[DatasetConfig, ...] = ()
    seq_len: int = 512  # input positions per row (a sample of n tokens fills n - 1)
    format: Literal["auto", "chat", "plain"] = "auto"
    truncation: Literal["error", "left"] = "error"
    separator: str = "\n"  # plain rendering: prompt + separator + completion ("" when the prompt ends open)
    pack: bool = False
    temperature: float | None = None  # mixture p_i ∝ n_i^(1/T); None = the weights


@dataclass(frozen=True)
class FinetuneRecipe:
    name: str
    kind: Literal["finetune"] = "finetune"
    base: str = "smollm2"
    method: Literal["full", "lora", "prompt_tuning"] = "lora"
    out_dir: str = ""  # default runs/<name>
    data: FinetuneData = field(default_factory=FinetuneData)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def recipe_from_dict(data: dict[str, Any]) -> FinetuneRecipe:
    recipe = from_dict(FinetuneRecipe, data, path="")
    if not recipe.data.datasets:
        raise ConfigError("data.datasets: list at least one dataset (e.g. [{path: train.jsonl}])")
    for i, d in enumerate(recipe.data.datasets):
        if bool(d.path) == bool(d.task):
            raise ConfigError(f"data.datasets[{i}]: give either path (a JSONL file) or task (a task generator)")
        if d.task and d.val_path:
            raise ConfigError(f"data.datasets[{i}]: a task dataset generates its validation split; drop val_path")
        if d.metric not in ("", *METRICS):
            raise ConfigError(
                f"data.datasets[{i}].metric must be one of {', '.join(METRICS)} (or empty); got {d.metric!r}"
            )
        if d.metric and not d.has_val:
            raise ConfigError(f"data.datasets[{i}].metric needs a validation split: val_path, or a task with n_val > 0")
        if not isinstance(d.metric_rows, int) or d.metric_rows < 1:
            raise ConfigError(f"data.datasets[{i}].metric_rows must be a positive integer, got {d.metric_rows!r}")
    names = [d.label for d in recipe.data.datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.datasets: task names must be distinct, got {names}")
    if any(d.weight <= 0 for d in recipe.data.datasets):
        raise ConfigError("data.datasets[].weight must be positive")
    if recipe.data.temperature is not None and recipe.data.temperature <= 0:
        raise ConfigError(f"data.temperature must be positive, got {recipe.data.temperature}")
    return recipe


def _row_mapper(d: DatasetConfig):
    """The row transform of a dataset's templates (None when it has none)."""
    if not (d.prompt or d.completion or d.system):
        return None

    def render(template: str, row: dict[str, Any]) -> str:
        try:
            return template.format_map(row)
        except KeyError as exc:
            raise ConfigError(f"template {template!r} names the field {exc.args[0]!r}, which the row lacks") from exc

    def mapped(row: dict[str, Any]) -> dict[str, Any]:
        prompt = render(d.prompt, row) if d.prompt else row.get("prompt")
        completion = render(d.completion, row) if d.completion else row.get("completion")
        if not d.system:
            return {"prompt": prompt, "completion": completion}
        return {
            "messages": [
                {"role": "system", "content": render(d.system, row)},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": completion},
            ]
        }

    return mapped


def _rows(d: DatasetConfig, val: bool) -> list[tuple[str, dict[str, Any]]]:
    """(origin, row) for a dataset's train or validation split."""
    if d.task:
        from lmstack.data.tasks import generate

        split = "validation" if val else "train"
        items = generate(d.task, d.n_val if val else d.n, d.seed, split)["items"]
        return [(f"{d.task}/{split}#{i}", row) for i, row in enumerate(items)]
    path = d.val_path if val else d.path
    return [(f"{path}:{lineno}", row) for lineno, row in read_rows(path)]


def dataset_rows(d: DatasetConfig, val: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(origin, raw row) for a dataset's train (or validation) split, capped by max_rows (max_val_rows)."""
    rows = _rows(d, val)
    cap = d.max_val_rows if val else d.max_rows
    return rows[:cap] if cap else rows


def load_dataset(
    d: DatasetConfig,
    tok: Any,
    fmt: InstructFormat,
    val: bool = False,
    rows: list[tuple[str, dict[str, Any]]] | None = None,
) -> list[Sample]:
    """A dataset's train (or validation) samples, tokenised and checked: every row first, and the first bad
    one raises a DataError naming its file:line (or task/split#index). `rows` (from `dataset_rows`) saves
    reading them again; sample i is always row i."""
    rows = dataset_rows(d, val) if rows is None else rows
    mapper, mode = _row_mapper(d), fmt.resolve(tok)
    samples = []
    for origin, row in rows:
        try:
            ids, trained = encode_row(tok, mapper(row) if mapper else row, fmt, mode)
        except (DataError, ConfigError) as exc:
            raise DataError(f"{origin}: {exc}") from exc
        samples.append(Sample(ids, trained, d.label, origin))
    return samples


class PerTaskEval(Callback):
    """Per-task validation loss next to the loop's overall one (same schedule: every `eval_every` steps and
    at the end), logged as `val_loss/<task>` records. Every rank runs it (FSDP's forward is collective);
    only rank 0's log_record writes."""

    def __init__(self, eval_sets: dict[str, list[Sample]], batch_size: int, seq_len: int, pad_id: int) -> None:
        self.eval_sets, self.batch_size, self.seq_len, self.pad_id = eval_sets, batch_size, seq_len, pad_id

    def on_train_start(self, state: LoopState) -> None:
        self.state = state

    def on_step_end(self, step: int, loss: float) -> None:
        cfg, done = self.state.cfg, step + 1
        if len(self.eval_sets) < 2:
            return
        if not ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            return
        losses = per_task_loss(self.state.model, self.eval_sets, self.batch_size, False, self.seq_len, self.pad_id)
        self.state.log_record({"step": done, **{f"val_loss/{k}": round(v, 6) for k, v in losses.items()}})


def build_job(recipe: FinetuneRecipe, run_dir: Path | None = None, log=print) -> tuple[TrainingJob, Any]:
    """The base model (with adapters for `method: lora`), the tokenised mixture, and the job."""
    from lmstack.weights.load import load_pretrained

    run_dir = run_dir or recipe.run_dir
    d, cfg = recipe.data, recipe.train
    model, tok = load_pretrained(recipe.base)
    if tok is None:
        raise ConfigError(f"base {recipe.base!r} has no tokenizer; fine-tuning needs one")
    if d.seq_len > model.cfg.max_seq_len:
        raise ConfigError(f"data.seq_len ({d.seq_len}) exceeds the base's context ({model.cfg.max_seq_len})")
    fmt = InstructFormat(max_len=d.seq_len + 1, format=d.format, truncation=d.truncation, separator=d.separator)
    train_sets = {ds.label: load_dataset(ds, tok, fmt) for ds in d.datasets}
    eval_sets, metric_sets = {}, {}
    for i, ds in enumerate(d.datasets):
        if not ds.has_val:
            continue
        rows = dataset_rows(ds, val=True)
        eval_sets[ds.label] = load_dataset(ds, tok, fmt, val=True, rows=rows)
        if ds.metric:
            scored = rows[: ds.metric_rows]
            check_rows(ds.metric, scored, f"data.datasets[{i}].metric")
            samples = eval_sets[ds.label][: ds.metric_rows]
            metric_sets[ds.label] = MetricSet(ds.metric, samples, [row for _, row in scored])
    log("data: " + ", ".join(f"{k} {len(v)} train / {len(eval_sets.get(k, []))} val" for k, v in train_sets.items()))
    weights = None if d.temperature is not None else {ds.label: ds.weight for ds in d.datasets}
    mixture = Mixture(train_sets, weights=weights, temperature=d.temperature, seed=cfg.seed)
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    batches = InstructBatches(mixture, cfg.batch_size, d.seq_len, pack=d.pack, pad_id=pad)

    model.train()
    state_filter = None
    if recipe.method == "lora":
        torch.manual_seed(cfg.seed)  # the adapters' A matrices
        apply_lora(model, recipe.lora)
        state_filter = is_lora_key
        info = lora_summary(model)
        log(f"LoRA: {info['trainable']:,} trainable parameters in {info['layers']} layers")
    elif recipe.method == "prompt_tuning":
        torch.manual_seed(cfg.seed)
        model = PromptTuned(model, recipe.prompt_tuning, tok)
        state_filter = is_prompt_key
    capped = {k: v[: cfg.eval_batches * cfg.batch_size] for k, v in eval_sets.items()}  # per task
    # one set, so the loop's mean over batches is the token mean over every task's validation samples
    fixed_eval = eval_batches([s for v in capped.values() for s in v], cfg.batch_size, d.pack, d.seq_len, pad)

    def write_extras(directory: Path) -> None:
        write_json(directory / "config.json", {"model": to_dict(model.cfg)})
        write_json(directory / FINETUNE_FILE, {"base": recipe.base, "method": recipe.method, "recipe": to_dict(recipe)})
        tok.save(directory)
        if recipe.method == "lora":
            save_adapter(model, directory / ADAPTER_DIR, base_name=recipe.base)
        elif recipe.method == "prompt_tuning":
            save_prompt(model, directory / PROMPT_DIR, base_name=recipe.base)

    job = TrainingJob(
        model, completion_loss, batches, lambda: fixed_eval, write_extras, count_tokens, state_filter=state_filter
    )
    if len(capped) > 1:
        job.callbacks.append(PerTaskEval(capped, cfg.batch_size, d.seq_len, pad))
    if metric_sets:  # also for a single dataset
        job.callbacks.append(TaskMetricEval(metric_sets, tok, cfg.batch_size))
        log("task metrics: " + ", ".join(f"{k} {m.metric} on {len(m.samples)} rows" for k, m in metric_sets.items()))
    return job, tok


__all__ = ["DatasetConfig", "FinetuneData", "FinetuneRecipe", "build_job", "recipe_from_dict"]
