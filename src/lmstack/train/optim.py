"""AdamW with decay / no-decay parameter groups and the learning-rate schedules: linear warmup + cosine, or
BitNet b1.58's two-stage schedule (a drop of the learning rate part-way and no weight decay after it)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmstack.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never biases or norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    # the fused kernel (CPU and CUDA) updates all parameters in one pass instead of a loop of small ops;
    # sharded DTensor parameters (FSDP) keep the default implementation
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and not isinstance(p, DTensor) for p in params)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warmup, then cosine down to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """A picklable schedule callable for `LambdaLR` (its state is saved with the scheduler)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def two_stage_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    stage2_start: float,
    stage2_lr_ratio: float,
) -> float:
    """BitNet b1.58's two-stage schedule. Stage one follows the whole-run warmup + cosine curve from a high
    peak; at `stage2_start` (a fraction of the steps) the LR drops to `stage2_lr_ratio` × peak and decays by
    cosine to `min_lr_ratio` of that. Ternary weights only change when a latent weight crosses a rounding
    threshold, so a high LR early makes them move; the lower second stage lets them settle."""
    boundary = stage2_step(total_steps, stage2_start)
    if step < boundary:
        return lr_factor(step, warmup_steps, total_steps, min_lr_ratio)
    progress = min(1.0, (step - boundary) / max(1, total_steps - boundary))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return stage2_lr_ratio * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def stage2_step(total_steps: int, stage2_start: float) -> int:
    return int(round(stage2_start * total_steps))


def weight_decay_factor(step: int, total_steps: int, schedule: str, stage2_start: float) -> float:
    """Multiplier of the configured weight decay at `step`: 0 in BitNet's second stage, else 1. (Decay pulls
    latent weights toward zero, which keeps flipping ternary signs once the LR is low.)"""
    if schedule == "bitnet_two_stage" and step >= stage2_step(total_steps, stage2_start):
        return 0.0
    return 1.0


def decaying_groups(optimizer: torch.optim.Optimizer) -> list[int]:
    """Indices of the parameter groups that use weight decay (stable across `load_state_dict`)."""
    return [i for i, g in enumerate(optimizer.param_groups) if g["weight_decay"] > 0]


def set_weight_decay(optimizer: torch.optim.Optimizer, groups: list[int], value: float) -> None:
    for i in groups:
        optimizer.param_groups[i]["weight_decay"] = value


class TwoStage:
    """Picklable `LambdaLR` callable for `two_stage_factor`."""

    def __init__(
        self,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float,
        stage2_start: float,
        stage2_lr_ratio: float,
    ) -> None:
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.stage2_start, self.stage2_lr_ratio = stage2_start, stage2_lr_ratio

    def __call__(self, step: int) -> float:
        return two_stage_factor(
            step,
            self.warmup_steps,
            self.total_steps,
            self.min_lr_ratio,
            self.stage2_start,
            self.stage2_lr_ratio,
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    schedule: str = "cosine",
    stage2_start: float = 0.5,
    stage2_lr_ratio: float = 0.3,
) -> torch.optim.lr_scheduler.LambdaLR:
    if schedule == "cosine":
        fn = WarmupCosine(warmup_steps, total_steps, min_lr_ratio)
    elif schedule == "bitnet_two_stage":
        fn = TwoStage(warmup_steps, total_steps, min_lr_ratio, stage2_start, stage2_lr_ratio)
    else:
        raise ConfigError(f"train.schedule: {schedule!r} is not allowed. Allowed values: 'cosine', 'bitnet_two_stage'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
