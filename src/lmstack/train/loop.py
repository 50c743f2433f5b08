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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lmstack.errors import ConfigError
from lmstack.process_group import DistContext, broadcast_object, setup_distributed, teardown_distributed
from lmstack.train.callbacks import Callback, LoopState
from lmstack.train.distributed import STRATEGIES, ModuleView, Parallel, as_float, prepare_model
from lmstack.train.memory import MemoryReport
from lmstack.train.metrics import MetricsLog, read_metrics
from lmstack.train.optim import build_scheduler, decaying_groups, set_weight_decay, weight_decay_factor
from lmstack.weights.checkpoint import (
    latest_good_checkpoint,
    load_trainer_state,
    remove_partial_saves,
    resolve_checkpoint,
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
    schedule: Literal["cosine", "bitnet_two_stage"] = "cosine"  # two-stage: LR drop, then weight decay 0
    stage2_start: float = 0.5  # bitnet_two_stage: fraction of the steps where stage two begins
    stage2_lr_ratio: float = 0.3  # bitnet_two_stage: stage two's starting LR as a fraction of train.lr
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
    compile: bool = False  # torch.compile the training forward/backward (fuses elementwise ops; slow first step)
    # data parallelism (train/distributed.py): auto = single on one process, ddp under torchrun with N > 1
    strategy: Literal["auto", "single", "ddp", "zero1", "zero2", "zero3", "fsdp", "hsdp"] = "auto"
    hsdp_replicas: int = 0  # hsdp: replica groups (mesh rows); 0 = one per node
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    meta_init: bool = False  # build parameters on the meta device; each rank materialises only its shard
    dist_timeout_s: float = 600.0  # a collective waiting longer than this fails, so a hung rank ends the job
    consolidate_checkpoints: bool = True  # multi-process checkpoints also hold the full weights (rank 0 gathers)

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
        if not (0.0 < self.stage2_start <= 1.0 and self.stage2_lr_ratio > 0):
            raise ConfigError("train.stage2_start must be in (0, 1] and train.stage2_lr_ratio positive")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.hsdp_replicas < 0 or self.dist_timeout_s <= 0:
            raise ConfigError("train.hsdp_replicas must be >= 0 and train.dist_timeout_s positive")


@dataclass
class TrainingJob:
    """What the loop trains: the model, its loss, and deterministic batches (dicts of CPU tensors).

    `callbacks` act on every step (see `train/callbacks.py`); `state_filter(name)` picks the weights that
    checkpoints hold (e.g. only LoRA adapters; None = the whole model) and that resume loads back."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor]
    # (optimizer step (0-based), global row indices) → those rows of the step's batch. Each rank asks only for
    # its own rows, so no rank builds the global batch; rows=None means the whole batch.
    train_batch: Callable[[int, range | None], dict[str, Tensor]]
    eval_batches: Callable[[], Iterable[dict[str, Tensor]]]
    write_extras: Callable[[Path], None] | None = None  # config.json, tokenizer … into a checkpoint dir
    count_tokens: Callable[[dict[str, Tensor]], int] = lambda b: int(b["input_ids"].numel())
    callbacks: list[Callback] = field(default_factory=list)
    state_filter: Callable[[str], bool] | None = None


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


def evaluate(job: TrainingJob, device: torch.device | str = "cpu", amp: torch.dtype | None = None) -> float:
    """Mean loss of `job.model` over `job.eval_batches()` in this process: the loop's own validation, for
    scoring a model outside a run (e.g. a packed export against the model it came from)."""
    device = torch.device(device)
    parallel = Parallel("single", DistContext(device=device), job.model)
    return parallel.evaluate(job.eval_batches(), job.loss_fn, lambda: _autocast(device, amp))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress_bar(enabled: bool):
    """The training progress bar (step n/N, time left, the latest loss): one look for `lmstack train`,
    `finetune` and `align` runs; `enabled=False` draws nothing (non-main ranks, `progress: false`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


def train(
    job: TrainingJob,
    cfg: TrainConfig,
    run_dir: str | Path,
    log: Callable[[str], None] = print,
    ctx: DistContext | None = None,
) -> dict:
    """Train `job.model` for `cfg.steps` optimizer steps in `run_dir`, resuming if a checkpoint is there.

    Under torchrun (or in an initialised process group) every rank calls this with the same job: each trains
    on its own rows of the global batch, `cfg.strategy` decides how the model is wrapped, rank 0 alone logs.
    Pass `ctx` when the caller already joined the process group (a recipe does, to prepare data first)."""
    owned = ctx is None
    if owned:
        ctx = setup_distributed(cfg.device, cfg.strategy, cfg.dist_timeout_s)
    ok = False
    try:
        summary = _train(job, cfg, Path(run_dir), log if ctx.is_main else quiet, ctx)
        ok = True
        return summary
    finally:
        if owned:
            teardown_distributed(ctx, ok)


def quiet(message: str) -> None:
    """A log function that drops messages (ranks other than 0)."""


def _find_checkpoint(cfg: TrainConfig, run_dir: Path, log: Callable[[str], None], ctx: DistContext) -> Path | None:
    """The checkpoint to resume from, decided by rank 0 and shared with the other ranks."""
    ckpt = None
    if ctx.is_main:
        for partial in remove_partial_saves(run_dir):
            log(f"removed {partial.name}: a save that was interrupted")
        if cfg.resume == "auto":
            ckpt = latest_good_checkpoint(run_dir, warn=log)
        elif cfg.resume != "never":
            ckpt = resolve_checkpoint(cfg.resume)
    return broadcast_object(ctx, ckpt)


def _train(job: TrainingJob, cfg: TrainConfig, run_dir: Path, log: Callable[[str], None], ctx: DistContext) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = ctx.device
    amp = autocast_dtype(cfg.dtype, device)
    parallel = prepare_model(job.model, cfg, ctx, device, amp)  # single: just `.to(device)`
    model = parallel.module
    model.train()
    optimizer = parallel.build_optimizer(cfg)
    scheduler = build_scheduler(
        optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio, cfg.schedule, cfg.stage2_start, cfg.stage2_lr_ratio
    )
    decay_groups = decaying_groups(optimizer)
    scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None

    start_step, ckpt = 0, _find_checkpoint(cfg, run_dir, log, ctx)
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        parallel.restore(ckpt, optimizer, state, job.state_filter)  # any layout, any number of ranks
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        set_rng_state(per_rank[ctx.rank] if per_rank and len(per_rank) == ctx.world_size else state["rng"])
        start_step = state["step"]
        log(f"resumed from {ckpt} at step {start_step}")
    else:
        torch.manual_seed(cfg.seed + ctx.rank)  # ranks draw different dropout masks
        random.seed(cfg.seed + ctx.rank)
    metrics = (
        MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if ckpt is not None else None)
        if ctx.is_main
        else None
    )
    log_record = metrics.log if metrics is not None else (lambda record: None)
    callbacks = [MemoryReport(), *job.callbacks]
    loop_state = LoopState(model, parallel, optimizer, cfg, run_dir, start_step, log, log_record)
    for cb in callbacks:
        cb.on_train_start(loop_state)

    def trainer_state(step: int) -> dict[str, Any]:
        state = {
            "step": step,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "data_position": step * cfg.batch_size,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        return state

    def run_eval() -> float:
        return parallel.evaluate(job.eval_batches(), job.loss_fn, lambda: _autocast(device, amp))

    summary: dict[str, Any] = {"step": start_step, "checkpoint": str(ckpt) if ckpt else None}
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter()
    step_model = parallel.forward_model  # the model, or a view through DDP
    if cfg.compile:  # shares parameters with `model`
        step_model = (
            torch.compile(model) if parallel.wrapper is None else ModuleView(torch.compile(parallel.wrapper), model)
        )
    if start_step == 0:  # the untrained baseline, so every curve shows how far training moved it
        summary["initial_val_loss"] = run_eval()
        log_record({"step": 0, "val_loss": round(summary["initial_val_loss"], 6)})
    with progress_bar(cfg.progress and ctx.is_main) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=start_step, info="")
        for step in range(start_step, cfg.steps):
            for cb in callbacks:
                cb.on_step_start(step)
            batch = job.train_batch(step, parallel.local_rows(cfg.batch_size))
            micro_batches = split_batch(batch, parallel.local_accum)
            loss_sum = 0.0
            for i, micro in enumerate(micro_batches):
                micro = to_device(micro, device)
                with parallel.no_sync(i < len(micro_batches) - 1):  # reduce gradients on the last micro-step only
                    with _autocast(device, amp):
                        loss = job.loss_fn(step_model, micro) / parallel.local_accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += float(loss.detach())
            loss_sum = parallel.mean(loss_sum)
            for cb in callbacks:
                cb.on_before_optimizer_step(step)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = (  # a DTensor under FSDP
                as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if cfg.grad_clip > 0
                else 0.0
            )
            lr = scheduler.get_last_lr()[0]
            wd_scale = weight_decay_factor(step, cfg.steps, cfg.schedule, cfg.stage2_start)
            set_weight_decay(optimizer, decay_groups, cfg.weight_decay * wd_scale)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            for cb in callbacks:
                cb.on_optimizer_step(step)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            window_tokens += job.count_tokens(batch)
            summary.update(step=done, loss=loss_sum)

            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": done,
                    "loss": round(loss_sum, 6),
                    "lr": lr,
                    "grad_norm": round(grad_norm, 6),
                    "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1),
                    "elapsed_s": round(time.perf_counter() - run_start, 2),
                }
                log_record(record)
                window_tokens, window_start = 0, time.perf_counter()
                if not cfg.progress:
                    log(f"step {done}: loss {loss_sum:.4f} lr {lr:.2e} {record['tokens_per_s']:.0f} tok/s")
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                val = run_eval()
                log_record({"step": done, "val_loss": round(val, 6)})
                summary["val_loss"] = val
                if not cfg.progress:
                    log(f"step {done}: val_loss {val:.4f}")
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                path = parallel.save(
                    run_dir,
                    done,
                    optimizer,
                    trainer_state(done),
                    job.write_extras,
                    keep=cfg.keep_checkpoints,
                    consolidate=cfg.consolidate_checkpoints,
                    state_filter=job.state_filter,
                )
                summary["checkpoint"] = str(path)
            for cb in callbacks:
                cb.on_step_end(step, loss_sum)
            info = f"loss {loss_sum:.3f}" + (f" val {summary['val_loss']:.3f}" if "val_loss" in summary else "")
            bar.update(task, completed=done, info=info)
    if start_step >= cfg.steps:
        log(f"nothing to do: the run in {run_dir} already reached step {start_step}")
        vals = [r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]
        if vals:
            summary["val_loss"] = vals[-1]
    summary["elapsed_s"] = time.perf_counter() - run_start
    return summary
