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
from lmstack.models.bitnet import set_quant_strength
from lmstack.train.distributed import (
    STRATEGIES,
    MemoryProbe,
    ModuleView,
    as_float,
    broadcast_object,
    build_parallel_optimizer,
    evaluate_parallel,
    gather_objects,
    model_state_bytes,
    prepare_model,
    setup_distributed,
    teardown_distributed,
    zero_model_state_bytes,
)
from lmstack.train.metrics import MetricsLog, read_metrics
from lmstack.train.optim import (
    build_optimizer,
    build_scheduler,
    decaying_groups,
    quant_strength,
    set_weight_decay,
    weight_decay_factor,
)
from lmstack.weights.checkpoint import (
    latest_good_checkpoint,
    load_trainer_state,
    load_weights,
    remove_partial_saves,
    resolve_checkpoint,
    save_checkpoint,
)
from lmstack.weights.dcp import is_dcp_checkpoint, restore_checkpoint, save_distributed_checkpoint

MEMORY_STEPS = 2  # per-rank memory is measured and logged over the first steps of a run (step 2 has Adam state)


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
    # BitNet models, 16-to-1.58-bit training: the fraction of the steps trained in 16 bits before ternary
    # quantization begins, then the fraction over which its strength ramps from 0 to 1 (0 = switch at once)
    bitnet_quant_start: float = 0.0
    bitnet_quant_ramp: float = 0.0
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
        start, ramp = self.bitnet_quant_start, self.bitnet_quant_ramp
        if not (0.0 <= start < 1.0 and ramp >= 0.0 and start + ramp <= 1.0):
            raise ConfigError(
                "train.bitnet_quant_start must be in [0, 1), train.bitnet_quant_ramp >= 0, and their sum <= 1 "
                f"(the run must end fully quantized); got {start} and {ramp}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.hsdp_replicas < 0 or self.dist_timeout_s <= 0:
            raise ConfigError("train.hsdp_replicas must be >= 0 and train.dist_timeout_s positive")


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
    """Train `job.model` for `cfg.steps` optimizer steps in `run_dir`, resuming if a checkpoint is there.

    Under torchrun (or in an initialised process group) every rank calls this with the same job: each trains
    on its own rows of the global batch, `cfg.strategy` decides how the model is wrapped, rank 0 alone logs."""
    ctx = setup_distributed(cfg.device, cfg.strategy, cfg.dist_timeout_s)
    ok = False
    try:
        summary = _train(job, cfg, Path(run_dir), log if ctx.is_main else quiet, ctx)
        ok = True
        return summary
    finally:
        teardown_distributed(ctx, ok)


def quiet(message: str) -> None:
    """A log function that drops messages (ranks other than 0)."""


def _train(job: TrainingJob, cfg: TrainConfig, run_dir: Path, log: Callable[[str], None], ctx) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = ctx.device if ctx.initialized else resolve_device(cfg.device)
    amp = autocast_dtype(cfg.dtype, device)
    parallel = prepare_model(job.model, cfg, ctx, device, amp)  # single: just `.to(device)`
    model = parallel.module
    model.train()
    if parallel.distributed:
        optimizer = build_parallel_optimizer(parallel, cfg)
    else:
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    scheduler = build_scheduler(
        optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio, cfg.schedule, cfg.stage2_start, cfg.stage2_lr_ratio
    )
    decay_groups = decaying_groups(optimizer)
    staged_quant = cfg.bitnet_quant_start > 0 or cfg.bitnet_quant_ramp > 0
    if staged_quant and set_quant_strength(model, 1.0) == 0:
        raise ConfigError("train.bitnet_quant_start/ramp need a BitNet model (model.bitnet=true)")
    strength_now = 1.0
    scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None

    start_step, ckpt = 0, None
    if ctx.is_main:  # decided once, then shared with the other ranks
        for partial in remove_partial_saves(run_dir):
            log(f"removed {partial.name}: a save that was interrupted")
        if cfg.resume == "auto":
            ckpt = latest_good_checkpoint(run_dir, warn=log)
        elif cfg.resume != "never":
            ckpt = resolve_checkpoint(cfg.resume)
    ckpt = broadcast_object(ctx, ckpt)
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        if parallel.distributed or is_dcp_checkpoint(ckpt):  # any layout, any number of ranks → this run's
            restore_checkpoint(ckpt, parallel, optimizer, state)
        else:
            load_weights(model, ckpt)
            optimizer.load_state_dict(state["optimizer"])
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
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if ckpt is not None else None) \
        if ctx.is_main else None
    log_record = metrics.log if metrics is not None else (lambda record: None)

    def trainer_state(step: int) -> dict[str, Any]:
        state = {
            "step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(),
            "data_position": step * cfg.batch_size,
        }
        if not parallel.distributed:  # sharded runs keep the optimizer in the DCP shards
            state["optimizer"] = optimizer.state_dict()
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        return state

    def run_eval() -> float:
        if not parallel.distributed:
            return evaluate(job, device, amp)
        return evaluate_parallel(job.eval_batches(), job.loss_fn, parallel, lambda: _autocast(device, amp))

    summary: dict[str, Any] = {"step": start_step, "checkpoint": str(ckpt) if ckpt else None}
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter()
    step_model = parallel.forward_model  # the model, or a view through DDP
    if cfg.compile:  # shares parameters with `model`
        step_model = torch.compile(model) if parallel.wrapper is None \
            else ModuleView(torch.compile(parallel.wrapper), model)
    if start_step == 0:  # the untrained baseline, so every curve shows how far training moved it
        summary["initial_val_loss"] = run_eval()
        log_record({"step": 0, "val_loss": round(summary["initial_val_loss"], 6)})
    with _progress(cfg.progress and ctx.is_main) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=start_step, info="")
        for step in range(start_step, cfg.steps):
            batch = job.train_batch(step)
            if staged_quant:  # λ changes at most once per step of the ramp
                strength = quant_strength(step, cfg.steps, cfg.bitnet_quant_start, cfg.bitnet_quant_ramp)
                if strength != strength_now:
                    set_quant_strength(model, strength)
                    strength_now = strength
            micro_batches = split_batch(parallel.local_batch(batch), parallel.local_accum)
            probe = None
            if step - start_step < MEMORY_STEPS and not cfg.compile:
                probe = MemoryProbe(parallel, optimizer)
            loss_sum = 0.0
            for i, micro in enumerate(micro_batches):
                micro = to_device(micro, device)
                with parallel.no_sync(i < len(micro_batches) - 1):  # reduce gradients on the last micro-step only
                    with _autocast(device, amp):
                        loss = job.loss_fn(step_model, micro) / parallel.local_accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += float(loss.detach())
            loss_sum = parallel.mean(loss_sum)
            if probe is not None:
                probe.sample()
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = (  # a DTensor under FSDP
                as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0
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
            memory = _measure_memory(parallel, optimizer, probe) if step - start_step < MEMORY_STEPS else None
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
                log_record(record)
                window_tokens, window_start = 0, time.perf_counter()
                if not cfg.progress:
                    log(f"step {done}: loss {loss_sum:.4f} lr {lr:.2e} {record['tokens_per_s']:.0f} tok/s")
            if memory is not None:
                _log_memory(done, parallel, memory, log, log_record)
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                val = run_eval()
                log_record({"step": done, "val_loss": round(val, 6)})
                summary["val_loss"] = val
                if not cfg.progress:
                    log(f"step {done}: val_loss {val:.4f}")
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                if parallel.distributed:
                    path = save_distributed_checkpoint(
                        run_dir, done, parallel, optimizer, trainer_state(done), job.write_extras,
                        keep=cfg.keep_checkpoints, rng_per_rank=gather_objects(ctx, rng_state()),
                        consolidate=cfg.consolidate_checkpoints,
                    )
                else:
                    path = save_checkpoint(
                        run_dir, done, model, trainer_state(done), job.write_extras, keep=cfg.keep_checkpoints
                    )
                summary["checkpoint"] = str(path)
            info = f"loss {loss_sum:.3f}" + (f" val {summary['val_loss']:.3f}" if "val_loss" in summary else "")
            bar.update(task, completed=done, info=info)
    if start_step >= cfg.steps:
        log(f"nothing to do: the run in {run_dir} already reached step {start_step}")
        vals = [r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]
        if vals:
            summary["val_loss"] = vals[-1]
    summary["elapsed_s"] = time.perf_counter() - run_start
    return summary


def _measure_memory(parallel, optimizer, probe) -> dict[str, dict[str, int]]:
    """This rank's model-state bytes (parameters, gradients, Adam state) in their resting layout, measured at
    the optimizer step, and the peak within the step."""
    at_rest = model_state_bytes(parallel, optimizer)
    peak = at_rest
    if probe is not None:
        probe.sample()
        probe.close()
        peak = probe.peak
    return {"at_rest": at_rest, "peak": peak}


def _log_memory(step: int, parallel, memory: dict, log: Callable[[str], None], log_record) -> None:
    """Every rank's memory figures in one metrics record (rank 0 writes it), with the ZeRO formulas."""
    ranks = gather_objects(parallel.ctx, memory)
    at_rest, peak = memory["at_rest"], memory["peak"]
    params = list(parallel.module.parameters())
    n_params = sum(p.numel() for p in params)
    size = params[0].element_size() if params else 4
    formula = zero_model_state_bytes(parallel.strategy, n_params, parallel.ctx.world_size, parallel.replicas,
                                     size, size, 2 * size)
    log_record({"step": step, "memory": {
        "strategy": parallel.strategy, "world_size": parallel.ctx.world_size, "n_params": n_params,
        "formula": formula, "ranks": ranks,
    }})
    mib = 1 / 2**20
    log(f"step {step}: memory rank 0 ({parallel.strategy}, N={parallel.ctx.world_size}): model states "
        f"{at_rest['total'] * mib:.2f} MiB (params {at_rest['params'] * mib:.2f}, grads {at_rest['grads'] * mib:.2f}, "
        f"optim {at_rest['optim'] * mib:.2f}), peak {peak['total'] * mib:.2f} MiB; "
        f"ZeRO formula {formula['at_rest'] * mib:.2f} MiB")
