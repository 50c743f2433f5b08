"""Distributed checkpoints: `torch.distributed.checkpoint` (DCP) shards that reload on any number of ranks
under any strategy, plus export to one HF-layout safetensors file for inference.

Layout of `RUN_DIR/step-00000100/` for a multi-process strategy (the single-process layout is in
`checkpoint.py`): `dcp/` (each rank's shards + `.metadata`), `model.safetensors` (the full weights, gathered to
rank 0, our key names, so `lmstack generate` and `load_weights` work on it), `trainer_state.pt` (scheduler, step,
data position, every rank's RNG; no optimizer: that is in `dcp/`), `config.json`, tokenizer, `manifest.json`.
It is written to a temporary directory and renamed into place by rank 0 after every rank has written.

Keys are fully qualified parameter names ("layers.0.attn.q_proj.weight"), not parameter indices, for model and
optimizer alike: that is what makes a checkpoint load at N=2 → M=1 or zero3 → ddp. ZeRO-1 writes the Adam
state of each rank's own partition under the same keys.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmstack.errors import CheckpointError
from lmstack.process_group import barrier
from lmstack.weights.checkpoint import checkpoint_name, filtered_state_dict, publish_checkpoint

DCP_DIR = "dcp"
StateFilter = Callable[[str], bool] | None  # parameter name → saved? (None: everything)


def is_dcp_checkpoint(path: str | Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


# ----------------------------------------------------------------------------- state dicts


def _names(module: nn.Module) -> dict[int, str]:
    """id(parameter) → its fully qualified name (the first name of a tied parameter)."""
    return {id(p): n for n, p in module.named_parameters()}


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _is_zero1(optimizer: torch.optim.Optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create lazily-initialised state (Adam moments) with a zero-gradient, zero-LR step, so it can be
    loaded into. Parameters do not change (lr 0 also zeroes AdamW's decay)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not params or all(p in optimizer.state for p in params):
        return
    lrs = [g["lr"] for g in optimizer.param_groups]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    for p, grad in zip(params, grads):
        p.grad = grad


def zero1_state_dict(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[str, Any]:
    """A ZeroRedundancyOptimizer's state in `get_state_dict`'s layout: this rank's partition under parameter
    names, and every group's settings with the names of all its parameters."""
    names = _names(module)
    local = optimizer.optim
    state = {names[id(p)]: dict(local.state[p]) for g in local.param_groups for p in g["params"] if p in local.state}
    # the local groups carry every AdamW default; the global ones the current lr (synced to the local ones
    # only inside step(), so they are a step behind after the scheduler has run)
    groups = [
        {
            **{k: v for k, v in lg.items() if k != "params"},
            **{k: v for k, v in g.items() if k != "params"},
            "params": [names[id(p)] for p in g["params"]],
        }
        for g, lg in zip(optimizer.param_groups, local.param_groups, strict=True)
    ]
    return {"state": state, "param_groups": groups}


def _load_zero1(optimizer: torch.optim.Optimizer, module: nn.Module, osd: dict[str, Any]) -> None:
    names = _names(module)
    local = optimizer.optim
    for g in local.param_groups:
        for p in g["params"]:
            saved = osd["state"].get(names[id(p)])
            if saved is None:
                raise CheckpointError(f"the checkpoint has no optimizer state for {names[id(p)]}")
            local.state[p] = {  # scalar `step` tensors stay on the CPU, as Adam keeps them
                k: v.to(p.device) if isinstance(v, torch.Tensor) and v.dim() else v for k, v in saved.items()
            }
    if len(osd["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError("the checkpoint's optimizer has a different number of parameter groups")
    for g, lg, saved in zip(optimizer.param_groups, local.param_groups, osd["param_groups"]):
        for k, v in saved.items():
            if k != "params":
                g[k] = v
                lg[k] = v


def sharded_state_dicts(
    parallel: Any, optimizer: torch.optim.Optimizer, state_filter: StateFilter = None
) -> tuple[dict, dict]:
    """(model, optimizer) state dicts of this rank, keyed by parameter name, as DCP saves and loads them;
    the model's limited to what `state_filter` keeps."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if _is_zero1(optimizer):
        _init_optimizer_state(optimizer.optim)
        msd, osd = get_model_state_dict(parallel.state_dict_target), zero1_state_dict(optimizer, parallel.module)
    else:
        msd, osd = get_state_dict(parallel.state_dict_target, optimizer)
    if state_filter is not None:
        msd = {k: v for k, v in msd.items() if state_filter(k)}
    return msd, osd


def _apply_state(
    parallel: Any, optimizer: torch.optim.Optimizer, msd: dict, osd: dict, full: bool, strict: bool = True
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    options = StateDictOptions(full_state_dict=full, strict=strict)
    if _is_zero1(optimizer):
        set_model_state_dict(parallel.state_dict_target, msd, options=options)
        _load_zero1(optimizer, parallel.module, osd)
    else:
        set_state_dict(
            parallel.state_dict_target, optimizer, model_state_dict=msd, optim_state_dict=osd, options=options
        )


def _with_tied_aliases(module: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add back the names of tied parameters that safetensors stored once."""
    names = _names(module)
    out = dict(sd)
    for name, p in module.named_parameters(remove_duplicate=False):
        if name not in out and names[id(p)] in out:
            out[name] = out[names[id(p)]]
    return out


def _fqn_optimizer_state(saved: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A single-process optimizer state dict (keyed by parameter index) re-keyed by parameter name."""
    names = _names(module)
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    n_saved = sum(len(g["params"]) for g in saved["param_groups"])
    if n_saved != len(order):
        raise CheckpointError(f"the checkpoint's optimizer has {n_saved} parameters, this model {len(order)}")
    return {
        "state": {order[i]: s for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
    }


def restore_checkpoint(
    path: str | Path,
    parallel: Any,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    state_filter: StateFilter = None,
) -> None:
    """Load model and optimizer state from a checkpoint of any layout into `parallel`'s model (any strategy,
    any number of ranks): DCP shards are resharded on load; a single-process checkpoint is sharded from its
    full tensors. With `state_filter`, only the weights it keeps are loaded. Every rank calls this."""
    path = Path(path)
    strict = state_filter is None
    if is_dcp_checkpoint(path):
        import torch.distributed.checkpoint as dcp

        # templates: shapes and placements of this run
        msd, osd = sharded_state_dicts(parallel, optimizer, state_filter)
        state = {"model": msd, "optim": osd}
        try:
            dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=not _distributed())
        except Exception as exc:  # DCP wraps per-rank failures in its own exception types
            raise CheckpointError(f"cannot load the distributed checkpoint {path}: {exc}") from exc
        _apply_state(parallel, optimizer, state["model"], state["optim"], full=False, strict=strict)
        return
    try:
        msd = _with_tied_aliases(parallel.module, load_file(str(path / "model.safetensors")))
    except Exception as exc:
        raise CheckpointError(f"cannot read weights in {path}: {exc}") from exc
    if "optimizer" not in trainer_state:
        raise CheckpointError(f"{path}/trainer_state.pt has no optimizer state")
    osd = _fqn_optimizer_state(trainer_state["optimizer"], parallel.module, optimizer)
    if _is_zero1(optimizer):
        _init_optimizer_state(optimizer.optim)
    if state_filter is not None:
        msd = {k: v for k, v in msd.items() if state_filter(k)}
    _apply_state(parallel, optimizer, msd, osd, full=True, strict=strict)


# ----------------------------------------------------------------------------- save


def save_distributed_checkpoint(
    run_dir: str | Path,
    step: int,
    parallel: Any,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    write_extras: Callable[[Path], None] | None = None,
    keep: int = 0,
    rng_per_rank: list[Any] | None = None,
    consolidate: bool = True,
    state_filter: StateFilter = None,
) -> Path:
    """Every rank writes its shards; rank 0 adds the full weights (when `consolidate`), the trainer state and
    extras, checksums everything into the manifest and renames the directory into place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    ctx = parallel.ctx
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    tmp = run_dir / f".tmp-{checkpoint_name(step)}-dist"
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier(ctx)
    msd, osd = sharded_state_dicts(parallel, optimizer, state_filter)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / DCP_DIR))
    full = None
    if consolidate:  # collective: gathers the full weights to rank 0's CPU memory
        full = get_model_state_dict(
            parallel.state_dict_target, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    if ctx.is_main:
        if full is not None:
            save_file(filtered_state_dict(parallel.module, full, state_filter), str(tmp / "model.safetensors"))
        state = {**trainer_state, "world_size": ctx.world_size, "strategy": parallel.strategy}
        if rng_per_rank is not None:
            state["rng_per_rank"] = rng_per_rank
        torch.save(state, tmp / "trainer_state.pt")
        if write_extras is not None:
            write_extras(tmp)
        manifest = {"layout": "dcp", **({} if state_filter is None else {"weights": "filtered"})}
        final = publish_checkpoint(tmp, run_dir, step, keep, **manifest)
    barrier(ctx)
    return final


# ----------------------------------------------------------------------------- export


def load_dcp_weights(model: nn.Module, ckpt: Path) -> None:
    """Load the model tensors of a DCP checkpoint in place, in one plain process (any saved world size)."""
    import torch.distributed.checkpoint as dcp

    if not is_dcp_checkpoint(ckpt):
        raise CheckpointError(f"{ckpt} has neither model.safetensors nor DCP shards")
    try:
        dcp.load({"model": model.state_dict()}, checkpoint_id=str(ckpt / DCP_DIR), no_dist=True)
    except Exception as exc:  # DCP wraps read failures in its own exception types
        raise CheckpointError(f"cannot load the distributed checkpoint {ckpt}: {exc}") from exc
