"""The one training loop: AdamW + warmup/cosine, gradient accumulation and clipping, autocast, periodic
evaluation, metrics JSONL, a progress bar, atomic checkpoints and exact resume.

It is strategy-agnostic: it sees a model, a loss function and a step → batch function. Exact resume works
because everything random is either restored (torch/python RNG, optimizer, scheduler) or a pure function of
the step (which samples form the batch, how they are masked).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lmstack.errors import ConfigError
from lmstack.train.metrics import MetricsLog, read_metrics
from lmstack.train.optim import build_optimizer, build_scheduler
from lmstack.weights.checkpoint import (
    latest_good_checkpoint,
    load_trainer_state,
    load_weights,
    remove_partial_saves,
    resolve_checkpoint,
    save_checkpoint,
)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step (global)
    grad_accum: int = 1  # micro-batches per step; batch_size must be a multiple
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    eval_every: int = 100  # 0 = only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2  # 0 = keep all
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast dtype; auto = bf16 on GPU
    resume: str = "auto"  # auto (newest good checkpoint in the run dir) | never | PATH to a checkpoint
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum ({self.grad_accum})"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")


@dataclass
class TrainingJob:
    """What the loop trains: the model, its loss, and deterministic batches (dicts of CPU tensors)."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor]
    train_batch: Callable[[int], dict[str, Tensor]]  # optimizer step (0-based) → global batch
    eval_batches: Callable[[], Iterable[dict[str, Tensor]]]
    write_extras: Callable[[Path], None] | None = None  # config.json, tokenizer … into a checkpoint dir
    count_tokens: Callable[[dict[str, Tensor]], int] = lambda b: int(b["input_ids"].numel())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None = plain fp32. `auto` is bf16 on CUDA and fp32 elsewhere (exact on CPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def split_batch(batch: dict[str, Tensor], parts: int) -> list[dict[str, Tensor]]:
    chunks = {k: v.chunk(parts, dim=0) for k, v in batch.items()}
    return [{k: v[i] for k, v in chunks.items()} for i in range(parts)]


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(job: TrainingJob, device: torch.device, amp: torch.dtype | None) -> float:
    """Mean loss over the fixed validation batches."""
    model = job.model
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for batch in job.eval_batches():
        with _autocast(device, amp):
            total += float(job.loss_fn(model, to_device(batch, device)))
        n += 1
    model.train(was_training)
    return total / max(n, 1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), disable=not enabled, transient=False,
    )


def train(job: TrainingJob, cfg: TrainConfig, run_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Train `job.model` for `cfg.steps` optimizer steps in `run_dir`, resuming if a checkpoint is there."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.dtype, device)
    model = job.model.to(device)
    model.train()
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None

    for partial in remove_partial_saves(run_dir):
        log(f"removed {partial.name}: a save that was interrupted")
    start_step, ckpt = 0, None
    if cfg.resume == "auto":
        ckpt = latest_good_checkpoint(run_dir, warn=log)
    elif cfg.resume != "never":
        ckpt = resolve_checkpoint(cfg.resume)
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        load_weights(model, ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step = state["step"]
        log(f"resumed from {ckpt} at step {start_step}")
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if ckpt is not None else None)

    def trainer_state(step: int) -> dict[str, Any]:
        state = {
            "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "data_position": step * cfg.batch_size,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        return state

    summary: dict[str, Any] = {"step": start_step, "checkpoint": str(ckpt) if ckpt else None}
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter()
    with _progress(cfg.progress) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=start_step, info="")
        for step in range(start_step, cfg.steps):
            batch = job.train_batch(step)
            micro_batches = split_batch(batch, cfg.grad_accum)
            loss_sum = 0.0
            for micro in micro_batches:
                micro = to_device(micro, device)
                with _autocast(device, amp):
                    loss = job.loss_fn(model, micro) / cfg.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += float(loss.detach())
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0 else 0.0
            )
            lr = scheduler.get_last_lr()[0]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            window_tokens += job.count_tokens(batch)
            summary.update(step=done, loss=loss_sum)

            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": done, "loss": round(loss_sum, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                    "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1),
                    "elapsed_s": round(time.perf_counter() - run_start, 2),
                }
                metrics.log(record)
                window_tokens, window_start = 0, time.perf_counter()
                if not cfg.progress:
                    log(f"step {done}: loss {loss_sum:.4f} lr {lr:.2e} {record['tokens_per_s']:.0f} tok/s")
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                val = evaluate(job, device, amp)
                metrics.log({"step": done, "val_loss": round(val, 6)})
                summary["val_loss"] = val
                if not cfg.progress:
                    log(f"step {done}: val_loss {val:.4f}")
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                path = save_checkpoint(
                    run_dir, done, model, trainer_state(done), job.write_extras, keep=cfg.keep_checkpoints
                )
                summary["checkpoint"] = str(path)
            info = f"loss {loss_sum:.3f}" + (f" val {summary['val_loss']:.3f}" if "val_loss" in summary else "")
            bar.update(task, completed=done, info=info)
    if start_step >= cfg.steps:
        log(f"nothing to do: the run in {run_dir} already reached step {start_step}")
        vals = [r["val_loss"] for r in read_metrics(metrics.path) if "val_loss" in r]
        if vals:
            summary["val_loss"] = vals[-1]
    summary["elapsed_s"] = time.perf_counter() - run_start
    return summary
