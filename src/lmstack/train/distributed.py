"""Data parallelism for the one training loop: DDP, ZeRO-1/2/3 and HSDP, meta-device initialisation and
activation checkpointing. `Parallel` owns every strategy-dependent step of the loop (optimizer, micro-batch
sync, evaluation, saving, restoring), so the loop itself reads the same for one process or many. Process
groups live in `lmstack.process_group`, memory accounting in `train/memory.py`.

| strategy | implementation (design §6) |
|---|---|
| single | the model as it is (no process group) |
| ddp | `DistributedDataParallel`; gradients all-reduced once per step (`no_sync` while accumulating) |
| zero1 | DDP + `ZeroRedundancyOptimizer`: each rank keeps the Adam state of its share of the parameters |
| zero2 | FSDP2 `fully_shard(reshard_after_forward=False)`: full parameters live from forward to the end of backward |
| zero3 (fsdp) | FSDP2 with resharding after forward, per block and then at the root |
| hsdp | FSDP2 on a 2-D mesh (replicate × shard) |

FSDP2's "ZeRO-2" keeps parameters sharded *at rest* (between steps), unlike the paper's ZeRO-2, which keeps a
full copy on every rank; `zero_model_state_bytes` gives both figures and `MemoryProbe` measures them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lmstack.errors import ConfigError
from lmstack.process_group import DistContext, gather_objects
from lmstack.train.optim import build_optimizer, param_groups
from lmstack.weights.checkpoint import load_weights, save_checkpoint
from lmstack.weights.dcp import is_dcp_checkpoint, restore_checkpoint, save_distributed_checkpoint

STRATEGIES = ("auto", "single", "ddp", "zero1", "zero2", "zero3", "fsdp", "hsdp")
FSDP_STRATEGIES = ("zero2", "zero3", "hsdp")
# model methods that loss functions call besides forward; FSDP must gather parameters around them too
EXTRA_FORWARD_METHODS = ("mlm_logits",)


def resolve_strategy(name: str, world_size: int) -> str:
    """`auto` → single on one process, ddp on several; `fsdp` → zero3."""
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "auto":
        return "ddp" if world_size > 1 else "single"
    if name == "fsdp":
        return "zero3"
    if name == "single" and world_size > 1:
        raise ConfigError(
            f"train.strategy=single cannot run on {world_size} ranks; use auto, ddp, zero1, zero2, zero3/fsdp or hsdp"
        )
    return name


# ----------------------------------------------------------------------------- meta-device initialisation


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Build modules with parameters on the meta device (no memory, no random init) but real buffers (RoPE
    and sinusoid tables), so a model too large for one rank can be sharded before it exists anywhere."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def local_tensor(t: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _shard_of(full: Tensor, like: Tensor) -> Tensor:
    """This rank's piece of `full`, laid out as the (possibly sharded) parameter `like`."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        full = full.to(like.device_mesh.device_type)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()
    return full


@torch.no_grad()
def materialize_meta(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate the meta parameters of `model` (each rank's local shard only, when already sharded) and
    initialise them with the model's `init_weights`, one full parameter at a time on CPU. Every rank draws
    the same values from `seed`, so the result does not depend on the sharding or the number of ranks."""
    from lmstack.models.blocks import init_weights

    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ConfigError("train.meta_init needs an lmstack model (one with a .cfg and init_weights)")
    buffers = {name: b for name, b in model.named_buffers() if not b.is_meta}
    tied: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(name)
    model.to_empty(device=device)
    for first, *aliases in tied.values():  # to_empty gives each module its own new tensor: tie them again
        for alias in aliases:
            owner, _, leaf = alias.rpartition(".")
            setattr(model.get_submodule(owner), leaf, model.get_parameter(first))
    for name, buf in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = buf.to(device)
    done: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in model.named_modules():
            own = {k: p for k, p in module._parameters.items() if p is not None and id(p) not in done}
            if not own:
                continue
            standin = copy.copy(module)  # same class and settings, full-size CPU parameters, no children
            standin._parameters = {
                k: None if p is None else nn.Parameter(torch.full(tuple(p.shape), math.nan, dtype=p.dtype))
                for k, p in module._parameters.items()
            }
            standin._modules = {}
            holder = nn.Module()
            holder.add_module(name.rpartition(".")[2] or "model", standin)
            init_weights(holder, cfg)
            if any(standin._parameters[k].isnan().any() for k in own) and hasattr(standin, "reset_parameters"):
                standin.reset_parameters()
            for k, p in own.items():
                full = standin._parameters[k].data
                if full.isnan().any():
                    raise ConfigError(f"meta_init: init_weights does not initialise {name}.{k}; build it on cpu")
                local_tensor(p.data).copy_(_shard_of(full, p.data))
                done.add(id(p))


# ----------------------------------------------------------------------------- wrapping


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the units of FSDP sharding and of activation checkpointing."""
    from lmstack.models.blocks import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute each block's activations in backward instead of storing them (non-reentrant checkpointing,
    which also replays the dropout RNG). Applied before FSDP, so FSDP gathers a block's parameters once
    for its backward and the recomputation uses them. Returns the number of blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    blocks = find_blocks(model)
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)


class ModuleView:
    """What a loss function sees under DDP: calls go through the wrapper (which reduces gradients); other
    attributes (`model.mlm_logits`, `model.cfg`) come from the model itself."""

    def __init__(self, wrapper: nn.Module, module: nn.Module) -> None:
        self._wrapper, self._module = wrapper, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def local_grad_accum(batch_size: int, grad_accum: int, world_size: int) -> int:
    """Micro-steps per rank: the config's micro-batch size is kept where it can be (grad_accum / N when N
    divides it), else every rank accumulates grad_accum smaller micro-batches. The global batch is always
    `batch_size`."""
    local = grad_accum // world_size if grad_accum % world_size == 0 else grad_accum
    if batch_size % (world_size * local):
        raise ConfigError(
            f"train.batch_size ({batch_size}) must split evenly over {world_size} ranks × {local} micro-batches; "
            f"choose a batch_size that is a multiple of {world_size * local}"
        )
    return local


@dataclass
class Parallel:
    """A model prepared for one strategy, plus what the loop needs to drive it."""

    strategy: str
    ctx: DistContext
    module: nn.Module  # the model (under FSDP its parameters are DTensor shards)
    wrapper: nn.Module | None = None  # the DDP wrapper for ddp / zero1
    local_accum: int = 1
    mesh: Any = None

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"

    @property
    def replicas(self) -> int:
        """Replica groups of an hsdp mesh (1 otherwise)."""
        return self.mesh.shape[0] if self.mesh is not None and self.mesh.ndim == 2 else 1

    @property
    def forward_model(self) -> Any:
        return self.module if self.wrapper is None else ModuleView(self.wrapper, self.module)

    @property
    def state_dict_target(self) -> nn.Module:
        return self.module if self.wrapper is None else self.wrapper

    def local_rows(self, batch_size: int) -> range:
        """This rank's disjoint rows of a global batch of `batch_size` (all of them when not distributed)."""
        n = self.ctx.world_size
        if not self.distributed or n == 1:
            return range(batch_size)
        share = batch_size // n
        return range(self.ctx.rank * share, (self.ctx.rank + 1) * share)

    def no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """While accumulating (`skip`), keep gradients local; reduce them only on the last micro-step."""
        if not skip or not self.distributed:
            return contextlib.nullcontext()
        if self.wrapper is not None:
            return self.wrapper.no_sync()
        return _fsdp_no_sync(self.module)

    def mean(self, value: float) -> float:
        """The mean of a per-rank number over ranks (e.g. the step loss)."""
        if not self.distributed or self.ctx.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t)
        return float(t.item()) / self.ctx.world_size

    def build_optimizer(self, cfg: Any) -> torch.optim.Optimizer:
        """AdamW over the (sharded) parameters (`cfg`: a TrainConfig); for zero1 a ZeroRedundancyOptimizer that
        keeps only this rank's share of the Adam state. Called after wrapping, so that it holds the shards."""
        if self.strategy != "zero1":
            return build_optimizer(self.module, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
        from torch.distributed.optim import ZeroRedundancyOptimizer

        fused = self.ctx.device.type == "cuda"
        return ZeroRedundancyOptimizer(
            param_groups(self.module, cfg.weight_decay),
            optimizer_class=torch.optim.AdamW,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            fused=fused or None,
        )

    @torch.no_grad()
    def evaluate(
        self,
        eval_batches: Iterable[dict[str, Tensor]],
        loss_fn: Callable[[Any, dict[str, Tensor]], Tensor],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> float:
        """Mean validation loss over the fixed batches. With several ranks each batch is split over them
        (weighted by rows, so it equals the single-process figure) and every rank gets the result."""
        model, ctx = self.module, self.ctx
        n_ranks = ctx.world_size if self.distributed else 1
        was_training = model.training
        model.eval()
        total, n = 0.0, 0
        for batch in eval_batches:
            rows = next(iter(batch.values())).shape[0]
            if n_ranks == 1:
                part, weight = batch, rows
            elif rows >= n_ranks:
                part = {k: v.tensor_split(n_ranks)[ctx.rank] for k, v in batch.items()}
                weight = next(iter(part.values())).shape[0]
            else:  # too few rows to split: every rank computes the whole batch
                part, weight = batch, rows / n_ranks
            part = {k: v.to(ctx.device, non_blocking=True) for k, v in part.items()}
            with autocast():
                loss = float(loss_fn(self.forward_model, part))
            if n_ranks == 1:
                total += loss
            else:
                acc = torch.tensor([loss * weight, weight], dtype=torch.float64, device=ctx.device)
                dist.all_reduce(acc)
                total += float(acc[0] / acc[1])
            n += 1
        model.train(was_training)
        return total / max(n, 1)

    def save(
        self,
        run_dir: Path,
        step: int,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        write_extras: Callable[[Path], None] | None = None,
        keep: int = 0,
        consolidate: bool = True,
        state_filter: Callable[[str], bool] | None = None,
    ) -> Path:
        """Write checkpoint `step` (every rank calls this): one process saves its weights and optimizer state
        directly; several write DCP shards (+ the gathered full weights when `consolidate`) and every rank's
        RNG state (`trainer_state["rng"]`). `state_filter(name)` picks the weights saved (e.g. adapters)."""
        if not self.distributed:
            state = {**trainer_state, "optimizer": optimizer.state_dict()}
            return save_checkpoint(
                run_dir, step, self.module, state, write_extras, keep=keep, state_filter=state_filter
            )
        rng_per_rank = gather_objects(self.ctx, trainer_state["rng"])
        return save_distributed_checkpoint(
            run_dir,
            step,
            self,
            optimizer,
            trainer_state,
            write_extras,
            keep=keep,
            rng_per_rank=rng_per_rank,
            consolidate=consolidate,
            state_filter=state_filter,
        )

    def restore(
        self,
        ckpt: Path,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        state_filter: Callable[[str], bool] | None = None,
    ) -> None:
        """Load weights and optimizer state from a checkpoint of any layout and any number of ranks."""
        if self.distributed or is_dcp_checkpoint(ckpt):
            restore_checkpoint(ckpt, self, optimizer, trainer_state, state_filter=state_filter)
            return
        load_weights(self.module, ckpt, state_filter=state_filter)
        optimizer.load_state_dict(trainer_state["optimizer"])


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _mesh(strategy: str, ctx: DistContext, hsdp_replicas: int):
    from torch.distributed.device_mesh import init_device_mesh

    kind = ctx.device.type
    if strategy != "hsdp":
        return init_device_mesh(kind, (ctx.world_size,), mesh_dim_names=("shard",))
    replicas = hsdp_replicas or max(1, ctx.world_size // max(ctx.local_world_size, 1))
    if replicas <= 0 or ctx.world_size % replicas:
        raise ConfigError(
            f"train.hsdp_replicas ({replicas}) must divide the world size ({ctx.world_size}); 0 = one replica per node"
        )
    return init_device_mesh(kind, (replicas, ctx.world_size // replicas), mesh_dim_names=("replicate", "shard"))


def prepare_model(
    model: nn.Module, cfg: Any, ctx: DistContext, device: torch.device, amp: torch.dtype | None
) -> Parallel:
    """Wrap `model` for `cfg.strategy` (a TrainConfig). The single strategy only moves it to `device`."""
    strategy = resolve_strategy(cfg.strategy, ctx.world_size)
    local_accum = (
        local_grad_accum(cfg.batch_size, cfg.grad_accum, ctx.world_size) if strategy != "single" else cfg.grad_accum
    )
    if strategy in FSDP_STRATEGIES and amp is torch.float16:
        raise ConfigError(f"train.dtype=float16 is not supported with {strategy} (no sharded scaler); use bfloat16")
    if getattr(cfg, "activation_checkpointing", False):
        checkpoint_blocks(model)
    meta = any(p.is_meta for p in model.parameters())
    if strategy in ("single", "ddp", "zero1"):
        if meta:
            materialize_meta(model, device, cfg.seed)
        model = model.to(device)
        if strategy == "single":
            return Parallel("single", ctx, model, None, local_accum)
        from torch.nn.parallel import DistributedDataParallel

        wrapper = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # grads are views into the buckets: no second copy
        )
        return Parallel(strategy, ctx, model, wrapper, local_accum)

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not meta:
        model = model.to(device)
        with torch.no_grad():  # every rank shards the same full model
            for p in model.parameters():
                dist.broadcast(p.data, src=0)
    mesh = _mesh(strategy, ctx, getattr(cfg, "hsdp_replicas", 0))
    # bf16 compute / fp32 gradient reduction on GPU; plain fp32 on CPU (gloo cannot all-reduce bf16)
    if device.type == "cuda" and amp is torch.bfloat16:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    reshard = strategy != "zero2"
    for block in find_blocks(model):
        cross = getattr(block, "cross_attn", None)
        if cross is not None:  # seq2seq projects every layer's cross-attention K/V up front, outside the block
            fully_shard(cross, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp)
            register_fsdp_forward_method(cross, "project_kv")
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp)
    if meta:
        materialize_meta(model, device, cfg.seed)
    for name in EXTRA_FORWARD_METHODS:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    return Parallel(strategy, ctx, model, None, local_accum, mesh)


def as_float(value: Tensor | float) -> float:
    """A scalar tensor (a DTensor under FSDP, e.g. the clipped gradient norm) as a Python float."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)
