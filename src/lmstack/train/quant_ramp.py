"""16-to-1.58-bit BitNet training: train in full precision first, then ramp the ternary quantization in.

`QuantizationRamp` is a training-loop callback that sets the strength λ of every `BitLinear` (0 = plain
linear layer, 1 = b1.58) before each step; `BitNetTrainConfig` is its recipe section (`bitnet:`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmstack.errors import ConfigError
from lmstack.models.bitnet import set_quant_strength
from lmstack.train.callbacks import Callback, LoopState


@dataclass(frozen=True)
class BitNetTrainConfig:
    # the fraction of the steps trained in 16 bits before ternary quantization begins, then the fraction over
    # which its strength ramps from 0 to 1 (0 = switch at once); both 0 = ternary from the first step
    quant_start: float = 0.0
    quant_ramp: float = 0.0

    def __post_init__(self) -> None:
        start, ramp = self.quant_start, self.quant_ramp
        if not (0.0 <= start < 1.0 and ramp >= 0.0 and start + ramp <= 1.0):
            raise ConfigError(
                "bitnet.quant_start must be in [0, 1), bitnet.quant_ramp >= 0, and their sum <= 1 "
                f"(the run must end fully quantized); got {start} and {ramp}"
            )

    @property
    def staged(self) -> bool:
        return self.quant_start > 0 or self.quant_ramp > 0


def quant_strength(step: int, total_steps: int, start: float, ramp: float) -> float:
    """BitNet quantization strength λ for `step` (0-based) of 16-to-1.58-bit training: 0 for the first
    `start` fraction of the steps, then rising linearly to 1 over the next `ramp` fraction (at once if 0).
    With start + ramp ≤ 1 the last step is always fully quantized."""
    begin, span = int(round(start * total_steps)), int(round(ramp * total_steps))
    if step < begin:
        return 0.0
    return 1.0 if span == 0 else min(1.0, (step - begin + 1) / span)


class QuantizationRamp(Callback):
    """Sets λ before every step (from the step alone, so a resumed run continues the ramp exactly) and writes
    each new λ to metrics.jsonl. λ changes at most once per step of the ramp; it is a buffer, so a compiled
    model keeps its graph, except when BitLinear's exact-b1.58 flag flips (λ leaving or reaching 1), which
    `flag_flips` counts: each such flip is one recompile under `train.compile`."""

    def __init__(self, cfg: BitNetTrainConfig) -> None:
        self.cfg = cfg
        self.model = None
        self.total_steps = 0
        self.strength: float | None = None
        self.flag_flips = 0
        self.log_record = None

    def on_train_start(self, state: LoopState) -> None:
        if set_quant_strength(state.model, 1.0) == 0:
            raise ConfigError("bitnet.quant_start/quant_ramp need a BitNet model (model.bitnet=true)")
        self.model, self.total_steps, self.strength = state.model, state.cfg.steps, 1.0
        self.log_record = state.log_record

    def on_step_start(self, step: int) -> None:
        strength = quant_strength(step, self.total_steps, self.cfg.quant_start, self.cfg.quant_ramp)
        if strength != self.strength:
            set_quant_strength(self.model, strength)
            self.flag_flips += (strength == 1.0) != (self.strength == 1.0)
            self.strength = strength
            self.log_record({"step": step + 1, "quant_strength": strength})  # the step as the loss record counts it
