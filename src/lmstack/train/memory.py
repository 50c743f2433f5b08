"""Per-rank memory accounting: the bytes of parameters, gradients and optimizer state a rank holds, measured
(at rest and at the peak within a step) and predicted by the ZeRO paper's formulas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lmstack.process_group import gather_objects
from lmstack.train.callbacks import Callback, LoopState
from lmstack.train.distributed import Parallel, find_blocks, local_tensor

MEMORY_STEPS = 2  # per-rank memory is measured and logged over the first steps of a run (step 2 has Adam state)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The optimizer-state tensors this rank holds (for ZeRO-1 only its own partition)."""
    local = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps the local one in .optim
    return [t for s in local.state.values() for t in s.values() if isinstance(t, Tensor)]


def _storage_bytes(tensors: Iterable[Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` (views, shared buckets and tied weights count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = local_tensor(t).untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
    return sum(seen.values())


def model_state_bytes(parallel: Parallel, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This rank's live bytes of parameters (its shards plus any gathered full copies), gradients and
    optimizer state, right now."""
    owned = [p for g in optimizer.param_groups for p in g["params"]]  # what the optimizer updates: the shards
    live = list(parallel.module.parameters())  # FSDP swaps in the gathered full tensors while unsharded
    out = {
        "params": _storage_bytes(owned + live),
        "grads": _storage_bytes([p.grad for p in owned + live]),
        "optim": _storage_bytes(optimizer_state_tensors(optimizer)),
    }
    out["total"] = sum(out.values())
    return out


class MemoryProbe:
    """Samples `model_state_bytes` at every block's entry and exit in forward and at its end in backward
    (where FSDP holds the block's gathered parameters and unreduced gradients), keeping the peak."""

    def __init__(self, parallel: Parallel, optimizer: torch.optim.Optimizer) -> None:
        self.parallel, self.optimizer = parallel, optimizer
        self.peak: dict[str, int] = {"params": 0, "grads": 0, "optim": 0, "total": 0}
        self._handles = []
        for block in find_blocks(parallel.module) or [parallel.module]:
            # registered after FSDP's hooks: the pre-hook runs once parameters are gathered; prepend=True on the
            # post-hook runs it before FSDP frees them
            self._handles.append(block.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._post, prepend=True))

    def sample(self) -> None:
        now = model_state_bytes(self.parallel, self.optimizer)
        if now["total"] > self.peak["total"]:
            self.peak = now

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.sample()
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if x is not None and x.requires_grad:
            x.register_hook(self._on_grad)  # fires at the end of this block's backward

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.sample()

    def _on_grad(self, grad: Tensor) -> None:
        self.sample()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def zero_model_state_bytes(
    strategy: str,
    n_params: int,
    world_size: int,
    replicas: int = 1,
    param_bytes: int = 4,
    grad_bytes: int = 4,
    optim_bytes: int = 8,
    n_trainable: int | None = None,
) -> dict[str, float]:
    """Per-rank model-state bytes (ZeRO paper, Ψ = `n_params`, N = `world_size`): `at_rest` as this package
    implements each strategy, `paper` as the paper defines it. In fp32 with Adam the three terms are 4 + 4 + 8
    bytes per parameter; with mixed precision the paper's are 2 + 2 + 12 (DDP 16Ψ, ZeRO-1 4Ψ + 12Ψ/N, ZeRO-2
    2Ψ + 14Ψ/N, ZeRO-3 16Ψ/N). FSDP2's zero2 shards parameters at rest, so it rests at ZeRO-3's figure and
    adds the gathered full parameters during a step; hsdp shards over the N / replicas ranks of its group.
    Gradients and optimizer state exist only for the `n_trainable` parameters (default: all; fewer for LoRA
    or prompt tuning, whose frozen base holds parameters only)."""
    trainable = n_params if n_trainable is None else n_trainable
    p, g, o, n = param_bytes * n_params, grad_bytes * trainable, optim_bytes * trainable, world_size
    strategy = "zero3" if strategy == "fsdp" else strategy
    shards = {"single": 1, "ddp": 1, "zero1": 1, "zero2": n, "zero3": n, "hsdp": max(1, n // replicas)}[strategy]
    at_rest = {"zero1": p + g + o / n}.get(strategy, (p + g + o) / shards)
    paper = {"zero1": p + g + o / n, "zero2": p + (g + o) / n}.get(strategy, at_rest)
    return {"at_rest": at_rest, "paper": paper}


class MemoryReport(Callback):
    """Measures and logs every rank's model-state memory over the first `steps` steps of a run: at rest (at
    the optimizer step) and the peak within the step (`MemoryProbe`; skipped under torch.compile, whose
    graphs bypass the module hooks), beside the ZeRO formulas. The loop adds one to every run."""

    def __init__(self, steps: int = MEMORY_STEPS) -> None:
        self.steps = steps
        self.state: LoopState | None = None
        self.probe: MemoryProbe | None = None
        self.measured: dict[str, dict[str, int]] | None = None  # at the optimizer step, logged at the step's end

    def on_train_start(self, state: LoopState) -> None:
        self.state = state

    def _due(self, step: int) -> bool:
        return self.state is not None and step - self.state.start_step < self.steps

    def on_step_start(self, step: int) -> None:
        if self._due(step) and not self.state.cfg.compile:
            self.probe = MemoryProbe(self.state.parallel, self.state.optimizer)

    def on_before_optimizer_step(self, step: int) -> None:
        if self.probe is not None:
            self.probe.sample()

    def on_optimizer_step(self, step: int) -> None:
        if not self._due(step):
            return
        st = self.state
        at_rest = model_state_bytes(st.parallel, st.optimizer)
        peak = at_rest
        if self.probe is not None:
            self.probe.sample()
            self.probe.close()
            peak, self.probe = self.probe.peak, None
        self.measured = {"at_rest": at_rest, "peak": peak}

    def on_step_end(self, step: int, loss: float) -> None:
        if self.measured is not None:
            self._log(step + 1, self.measured)
            self.measured = None

    def _log(self, step: int, memory: dict[str, dict[str, int]]) -> None:
        """Every rank's figures in one metrics record (rank 0 writes it), with the ZeRO formulas."""
        st = self.state
        parallel = st.parallel
        ranks = gather_objects(parallel.ctx, memory)
        at_rest, peak = memory["at_rest"], memory["peak"]
        params = list(parallel.module.parameters())
        n_params = sum(p.numel() for p in params)
        n_trainable = sum(p.numel() for p in params if p.requires_grad)
        size = params[0].element_size() if params else 4
        world = parallel.ctx.world_size
        formula = zero_model_state_bytes(
            parallel.strategy, n_params, world, parallel.replicas, size, size, 2 * size, n_trainable
        )
        st.log_record(
            {
                "step": step,
                "memory": {
                    "strategy": parallel.strategy,
                    "world_size": world,
                    "n_params": n_params,
                    "formula": formula,
                    "ranks": ranks,
                },
            }
        )
        mib = 1 / 2**20
        st.log(
            f"step {step}: memory rank 0 ({parallel.strategy}, N={world}): model states "
            f"{at_rest['total'] * mib:.2f} MiB (params {at_rest['params'] * mib:.2f}, grads "
            f"{at_rest['grads'] * mib:.2f}, optim {at_rest['optim'] * mib:.2f}), peak {peak['total'] * mib:.2f} "
            f"MiB; ZeRO formula {formula['at_rest'] * mib:.2f} MiB"
        )
