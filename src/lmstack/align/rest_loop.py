"""ReST and ReST-EM for `lmstack align` (`method: rest | rest_em`): iterations of Grow (sample N completions
per prompt from the current policy, score them) and Improve (select, fine-tune with the `kind: finetune`
machinery: `finetune.recipe.build_job` + the one training loop), each iteration validated greedily.

- ReST-EM: binary rewards, at most `rest.max_per_prompt` distinct correct samples per prompt, and every
  iteration fine-tunes the starting policy afresh (a new LoRA adapter, or the full weights) on the latest
  samples; `best_iteration` picks the iteration to keep by validation accuracy (later ones can overfit).
- ReST: `rest.improve_steps` Improve steps per Grow step, each on the Grow samples above that step's
  threshold (`rest.thresholds`, rising), each continuing from the model before it (across iterations too).

An iteration that selects nothing keeps the previous policy (and says so). The run directory:

    iterations/000/done.json                   the starting policy's validation
    iterations/001/grow.jsonl                  every Grow sample and its reward (reused on resume)
    iterations/001/improve-0/{train,val}.jsonl the fine-tuning rows (lmstack finetune reads them)
    iterations/001/improve-0/run/              a finetune run: step-* checkpoints, metrics.jsonl
    iterations/001/done.json                   written last: the iteration's policy and validation
    metrics.jsonl, rest.json                   one record per iteration; val_accuracy per iteration + best

Resume is at iteration granularity: iterations with a done.json are kept, the next one is redone, reusing
its Grow samples and resuming its fine-tune from that run's newest good checkpoint (exact, like any run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmstack.align.rest import (
    PromptSamples,
    ThresholdSchedule,
    best_iteration,
    finetune_rows,
    improve_samples,
    rest_em_select,
    score_groups,
    write_rows,
)
from lmstack.align.reward import pair_indices
from lmstack.align.rewards import GuardedReward, RewardStats
from lmstack.align.rollouts import PromptData, PromptSet, RLConfig, clean, evaluate, load_policy, render, sample
from lmstack.config import to_dict
from lmstack.data.tasks import read_jsonl
from lmstack.errors import ConfigError
from lmstack.fileio import write_json, write_jsonl
from lmstack.finetune.lora import LoRAConfig
from lmstack.finetune.recipe import DatasetConfig, FinetuneData, FinetuneRecipe, build_job
from lmstack.generate.engine import Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.process_group import device_for_rank
from lmstack.train.loop import TrainConfig, progress_bar, train
from lmstack.train.metrics import MetricsLog, read_metrics
from lmstack.weights.checkpoint import load_weights, resolve_checkpoint

DONE = "done.json"


@dataclass(frozen=True)
class RestConfig:
    """The Improve step (`rest:`). ReST-EM: `max_per_prompt` (its c) distinct samples with reward >=
    rl.correct per prompt, the first ones or, with `select_seed`, a random choice. ReST: `improve_steps` per
    Grow step, step k keeping the samples strictly above `thresholds(k)`. `seq_len`: the fine-tuning rows'
    input positions."""

    max_per_prompt: int = 4
    select_seed: int | None = None
    thresholds: ThresholdSchedule = field(default_factory=ThresholdSchedule)
    improve_steps: int = 1
    seq_len: int = 384

    def __post_init__(self) -> None:
        if self.max_per_prompt < 1 or self.improve_steps < 1 or self.seq_len < 2:
            raise ConfigError("rest.max_per_prompt and rest.improve_steps must be >= 1 and rest.seq_len >= 2")


@dataclass
class RestRun:
    """What a ReST run needs (`align.recipe` builds it): the starting policy's spec, the prompts (train and
    validation, encoded with its tokenizer) and the reward, the sampling loop's and the fine-tunes' settings."""

    method: Literal["rest", "rest_em"]
    name: str
    start: str
    data: PromptData
    train: PromptSet
    val: PromptSet
    reward: GuardedReward
    rl: RLConfig
    rest: RestConfig
    finetune: TrainConfig
    lora: LoRAConfig | None
    run_dir: Path


def completed(root: Path) -> list[dict[str, Any]]:
    """The done.json of iterations 0, 1, ... up to the first one that is missing."""
    out = []
    while (root / f"{len(out):03d}" / DONE).is_file():
        out.append(json.loads((root / f"{len(out):03d}" / DONE).read_text()))
    return out


def grow(run: RestRun, engine: Engine, iteration: int, path: Path) -> tuple[list[PromptSamples], dict[str, float]]:
    """Grow: N samples of this iteration's prompts from the current policy, scored, written to `path`
    atomically (the reward's failure counts beside it, first); read back from there when the iteration is
    redone after an interruption. Returns the samples and those counts."""
    stats_path = path.with_suffix(".stats.json")
    if path.is_file():
        groups = [PromptSamples(r["prompt"], r["completions"], r["rewards"], r["row"]) for r in read_jsonl(path)]
        return groups, json.loads(stats_path.read_text())
    rl = run.rl
    run.reward.stats = RewardStats()
    index = pair_indices(len(run.train), rl.prompts_per_iteration or len(run.train), iteration - 1, rl.seed)
    batch = run.train.subset(index)
    cfg = GenerationConfig(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, stop_token_ids=batch.stop)
    with progress_bar(rl.progress) as bar:
        task = bar.add_task("grow", total=len(batch) * rl.samples_per_prompt, info=f"iteration {iteration}")
        out = sample(
            engine,
            batch.ids,
            rl.samples_per_prompt,
            cfg,
            rl.seed,
            iteration,
            rl.batch_size,
            lambda n: bar.advance(task, n),
        )
    groups = score_groups(batch.texts, [[c.text for c in cs] for cs in out], batch.rows, run.reward)
    stats = run.reward.stats.metrics()
    write_json(stats_path, stats)
    write_jsonl(
        path, [{"prompt": g.prompt, "completions": g.completions, "rewards": g.rewards, "row": g.row} for g in groups]
    )
    return groups, stats


def val_rows(run: RestRun, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fine-tune's validation rows: the validation prompts with their reference completion
    (`prompts.reference`), else the selected rows themselves (the val_loss is then a training loss)."""
    if not run.data.reference:
        return rows
    return [
        {"prompt": text, "completion": render(run.data.reference, row, "prompts.reference", f"validation#{i}")}
        for i, (text, row) in enumerate(zip(run.val.texts, run.val.rows))
    ]


def improve(
    run: RestRun, directory: Path, rows: list[dict[str, Any]], previous: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """One Improve step: the rows written as finetune JSONL, a `kind: finetune` run on them in
    `directory/run` from the starting policy (continuing from `previous`'s weights when given)."""
    write_rows(directory / "train.jsonl", rows)
    write_jsonl(directory / "val.jsonl", val_rows(run, rows))
    data = FinetuneData(
        datasets=(
            DatasetConfig(name="rest", path=str(directory / "train.jsonl"), val_path=str(directory / "val.jsonl")),
        ),
        seq_len=run.rest.seq_len,
        format=run.data.format,
        truncation="left",
    )
    recipe = FinetuneRecipe(
        name=f"{run.name}-{directory.parent.name}-{directory.name}",
        base=run.start,
        method="lora" if run.lora is not None else "full",
        out_dir=str(directory / "run"),
        data=data,
        lora=run.lora or LoRAConfig(),
        train=run.finetune,
    )
    directory.joinpath("run").mkdir(parents=True, exist_ok=True)
    (directory / "run" / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    job, _ = build_job(recipe, recipe.run_dir, log)
    if previous is not None:  # ReST continues; a checkpoint of this run, if any, wins in the loop's resume
        load_weights(job.model, resolve_checkpoint(previous), state_filter=job.state_filter)
    return train(job, run.finetune, recipe.run_dir, log)


def select(run: RestRun, groups: list[PromptSamples], step: int) -> list[dict[str, Any]]:
    if run.method == "rest_em":
        chosen = rest_em_select(groups, run.rest.max_per_prompt, correct=run.rl.correct, seed=run.rest.select_seed)
    else:
        chosen = improve_samples(groups, step, run.rest.thresholds)
    return finetune_rows(chosen)


def last_losses(finetune_run: Path) -> dict[str, float]:
    """The fine-tune's last training and validation loss, from its metrics.jsonl (also when it was finished
    before an interruption and the loop had nothing left to do)."""
    out: dict[str, float] = {}
    for record in read_metrics(finetune_run / "metrics.jsonl"):
        out |= {k: record[k] for k in ("loss", "val_loss") if k in record}
    return out


def grow_metrics(groups: list[PromptSamples], correct: float) -> dict[str, float]:
    rewards = [r for g in groups for r in g.rewards]
    n = max(len(rewards), 1)
    return {
        "grow/reward": sum(rewards) / n,
        "grow/correct": sum(r >= correct for r in rewards) / n,
        "grow/solved": sum(any(r >= correct for r in g.rewards) for g in groups) / max(len(groups), 1),
    }


def train_rest(run: RestRun, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the iterations of `run`; returns the per-iteration validation and the best one."""
    rl, root = run.rl, run.run_dir / "iterations"
    done = completed(root)
    if done and rl.resume == "never":
        raise ConfigError(f"rl.resume=never, but {root} holds earlier iterations; use another out_dir or remove it")
    if done:
        log(f"resuming after iteration {len(done) - 1} ({root})")
    metrics = MetricsLog(run.run_dir / "metrics.jsonl", resume_step=len(done) - 1 if done else None)
    run_start = time.perf_counter()

    def finish(it: int, policy: str, checkpoint: str | None, record: dict[str, Any], engine: Engine) -> None:
        record |= evaluate(engine, run.val, run.reward, rl.max_new_tokens, rl.correct, rl.batch_size)
        record["elapsed_s"] = time.perf_counter() - run_start
        record = clean({"step": it, **record})
        entry = {"iteration": it, "policy": policy, "checkpoint": checkpoint, **record}
        write_json(root / f"{it:03d}" / DONE, entry)
        done.append(entry)
        metrics.log(record)
        accuracy = {d["iteration"]: d["val_accuracy"] for d in done}
        best = best_iteration(accuracy)
        write_json(
            run.run_dir / "rest.json",
            {
                "method": run.method,
                "val_accuracy": accuracy,
                "best_iteration": best,
                "best_policy": done[best]["policy"],
            },
        )
        log(f"iteration {it}: val_accuracy {record['val_accuracy']:.3f} (best so far: iteration {best})")

    device = device_for_rank(rl.device, 0)
    model, tok = load_policy(done[-1]["policy"] if done else run.start)
    engine = Engine(model.to(device), tok)
    if not done:
        finish(0, run.start, None, {}, engine)
    for it in range(len(done), rl.iterations + 1):
        directory = root / f"{it:03d}"
        t0 = time.perf_counter()
        groups, reward_stats = grow(run, engine, it, directory / "grow.jsonl")
        record: dict[str, Any] = {**grow_metrics(groups, rl.correct), **reward_stats}
        t1 = time.perf_counter()
        policy, checkpoint, previous = done[-1]["policy"], done[-1]["checkpoint"], done[-1]["checkpoint"]
        steps = 1 if run.method == "rest_em" else run.rest.improve_steps
        for k in range(steps):
            rows = select(run, groups, k)
            record[f"selected/{k}" if steps > 1 else "selected"] = len(rows)
            if not rows:
                log(f"iteration {it}: no sample passed Improve step {k}'s filter; the policy stays {policy}")
                break
            step_dir = directory / f"improve-{k}"
            summary = improve(run, step_dir, rows, previous if run.method == "rest" else None, log)
            record |= last_losses(step_dir / "run")
            policy = checkpoint = previous = summary["checkpoint"]
        record["improve_s"], record["grow_s"] = time.perf_counter() - t1, t1 - t0
        model, tok = load_policy(policy)
        engine = Engine(model.to(device), tok)
        finish(it, policy, checkpoint, record, engine)
    best = best_iteration({d["iteration"]: d["val_accuracy"] for d in done})
    return {
        "iteration": len(done) - 1,
        "best_iteration": best,
        "best_policy": done[best]["policy"],
        "val_accuracy": done[-1]["val_accuracy"],
        "checkpoint": done[-1]["checkpoint"],
    }
