"""Process groups: join or create one (torchrun's env://, an existing group, or a group of one), tear it
down safely, and the few object collectives the training loop and checkpoints need.

A leaf module (only torch): training, checkpoints and serving may all import it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its device. `owned` = this context created the process
    group and so must tear it down."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False
    owned: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def device_for_rank(name: str, local_rank: int) -> torch.device:
    """`auto` is cuda if present, else cpu; an unindexed cuda device becomes this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def backend_for(device: torch.device) -> str:
    """nccl for GPU tensors (gloo beside it for CPU-side objects); gloo on CPU, which has no bf16 all-reduce."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(device: str = "auto", strategy: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the process group: an existing one (tests, notebooks), or torchrun's env:// variables. A
    multi-process strategy without either runs as a group of one; single-process runs need no group.

    A rank that dies closes its sockets, so the others fail their next collective at once; `timeout_s`
    bounds the wait when a rank hangs instead."""
    owned = False
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            init: dict[str, Any] = {}
        elif strategy not in ("auto", "single"):
            init = {"init_method": f"tcp://127.0.0.1:{_free_port()}", "rank": 0, "world_size": 1}
        else:
            return DistContext(device=device_for_rank(device, 0) if device == "auto" else torch.device(device))
        dev = device_for_rank(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend_for(dev), timeout=timedelta(seconds=timeout_s), **init)
        owned = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = device_for_rank(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return DistContext(rank, world, local_rank, local_world, dev, initialized=True, owned=owned)


def teardown_distributed(ctx: DistContext, ok: bool = True) -> None:
    """Destroy a process group this context created. The barrier first lets every rank finish its last
    collective (an intermittent SIGABRT at exit was seen without it); after a failure it is skipped, since
    a dead peer would never arrive."""
    if not (ctx.owned and dist.is_initialized()):
        return
    if ok:
        dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.initialized and ctx.world_size > 1:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. which checkpoint to resume, decided once)."""
    if not (ctx.initialized and ctx.world_size > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not (ctx.initialized and ctx.world_size > 1):
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
