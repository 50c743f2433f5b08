"""Hooks into the one training loop, so that a technique can act on each step without the loop knowing it
(BitNet's quantization ramp, memory reports; later EMA weights, RL rollouts, early stopping).

A callback is an object with any of the methods below; the loop calls them in list order. Subclass
`Callback` for the no-op defaults and override what you need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class LoopState:
    """What a callback may read (and, with care, change) during a run."""

    model: nn.Module  # the model being trained (under FSDP its parameters are shards)
    parallel: Any  # train.distributed.Parallel: the strategy, the process group context, the wrapper
    optimizer: torch.optim.Optimizer
    cfg: Any  # the run's TrainConfig
    run_dir: Path
    start_step: int
    log: Callable[[str], None]  # a message for the console (rank 0 only)
    log_record: Callable[[dict[str, Any]], None]  # a record for metrics.jsonl (rank 0 writes it)


class Callback:
    """No-op hooks; `step` is the 0-based optimizer step being run."""

    def on_train_start(self, state: LoopState) -> None:
        """Once, after the model is wrapped, the optimizer built and any checkpoint restored."""

    def on_step_start(self, step: int) -> None:
        """Before the step's batch goes through the model."""

    def on_before_optimizer_step(self, step: int) -> None:
        """After every micro-batch's backward (gradients reduced), before clipping and the update."""

    def on_optimizer_step(self, step: int) -> None:
        """Right after the update, before gradients are zeroed."""

    def on_step_end(self, step: int, loss: float) -> None:
        """After the step is done (and logged, evaluated, saved where due); `loss` is its mean loss."""
