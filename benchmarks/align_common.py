"""What the alignment benchmark's parts share (`benchmarks.align` has the preference parts, `benchmarks.align_rl`
the sampling ones): the shipped recipes they run, a run directory per part, training a recipe (or resuming it)
through `run_align`, the page's part record, and the device a recipe runs on. Nothing here imports either
module, so the two import it without a cycle."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, repo_relative

RM_RECIPE = ROOT / "recipes" / "align_reward_model.yaml"
DPO_RECIPE = ROOT / "recipes" / "align_dpo.yaml"
STEP_GOAL = 1.0  # TRL's step time / ours
QUICK = [  # recipe overrides of a smoke run of the preference recipes (reward model, DPO)
    "data.n=16",
    "data.n_val=4",
    "train.steps=2",
    "train.batch_size=2",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.save_every=0",
]


@dataclass(frozen=True)
class Part:
    label: str
    run: Callable[[argparse.Namespace], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[list[Any]]]
    notes: Callable[[dict[str, Any]], str]


def log_for(part: str) -> Callable[[str], None]:
    return lambda m: print(f"  [{part}] {m}", flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """Where run `name` trains: the directory `--run name=DIR` gives, else `--out`/[quick/]name."""
    given = dict(item.split("=", 1) for item in args.run).get(name)
    return Path(given) if given else Path(args.out) / ("quick" if args.quick else "") / name


def preference_overrides(args: argparse.Namespace) -> list[str]:
    """What a preference recipe (reward model, DPO) runs with here: no progress bar; the smoke run's sizes."""
    return ["train.progress=false", *(QUICK if args.quick else [])]


def recipe_run(
    name: str, path: Path, args: argparse.Namespace, overrides: Sequence[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """(recipe, record): the recipe with `overrides` run (or resumed) by `run_align` in `run_dir(args, name)`,
    or only loaded when `--run` names a run trained before; the record holds the recipe, the run directory and,
    when it trained here, the wall time of training."""
    from lmstack.align.recipe import load_recipe, run_align

    out = run_dir(args, name)
    recipe = load_recipe(path, [f"out_dir={out}", *overrides])
    record: dict[str, Any] = {"recipe": repo_relative(str(path)), "run_dir": repo_relative(str(out))}
    if name not in dict(item.split("=", 1) for item in args.run):
        start = time.perf_counter()
        run_align(recipe, log=log_for(name))
        record["train_wall_s"] = round(time.perf_counter() - start, 1)
    return recipe, record


def device_of(recipe: Any) -> torch.device:
    from lmstack.process_group import device_for_rank

    return device_for_rank(recipe.train.device, 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_steps(
    steps: dict[str, Callable[[], float]], repeats: int, device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    """(median seconds, first loss) of each training step: one untimed warm-up each, then `repeats` rounds in
    which every step runs once in turn, so that all of them see the same machine load."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    first: dict[str, float] = {}
    for i in range(repeats + 1):
        for name, fn in steps.items():
            sync(device)
            t = time.perf_counter()
            loss = fn()
            sync(device)
            if i:
                times[name].append(time.perf_counter() - t)
            else:
                first[name] = loss
    return {k: statistics.median(v) for k, v in times.items()}, first


def trl_settings(device: torch.device, output_dir: str) -> dict[str, Any]:
    """The TRL trainer arguments every step comparison shares: fp32, no gradient checkpointing, the device
    ours runs on, nothing saved or reported (`output_dir` a scratch directory)."""
    return {
        "output_dir": output_dir,
        "gradient_checkpointing": False,
        "bf16": False,
        "fp16": False,
        "use_cpu": device.type == "cpu",
        "report_to": "none",
        "save_strategy": "no",
    }


def step_summary(
    med: dict[str, float], first: dict[str, float], ours: list[Any], theirs: list[Any], ref_diff: float
) -> dict[str, Any]:
    """What a step comparison records beside its batch: the checks (first losses, the largest gap between the
    two sides' reference log-probs, trainable parameters) and the median times and their ratio."""
    return {
        "first_loss_lmstack": round(first["lmstack"], 6),
        "first_loss_trl": round(first["trl"], 6),
        "ref_logp_max_abs_diff": float(f"{ref_diff:.2g}"),  # per-token gaps can be ~1e-6: two significant digits
        "lmstack_s": round(med["lmstack"], 3),
        "trl_s": round(med["trl"], 3),
        "speedup": round(med["trl"] / med["lmstack"], 3),
        "trainable_lmstack": sum(p.numel() for p in ours),
        "trainable_trl": sum(p.numel() for p in theirs),
    }


def step_row(label: str, r: dict[str, Any]) -> list[Any]:
    """The page's row of a step comparison: TRL's time over ours against the goal."""
    measured = f"{r['speedup']}× ({r['lmstack_s']} s vs {r['trl_s']} s)"
    return [f"{label}: TRL's time / ours", measured, f"≥ {STEP_GOAL}×", verdict(r["speedup"] >= STEP_GOAL)]


def step_goal_line(what: str, trainer: str, part: str, r: dict[str, Any] | None) -> str:
    if not r:
        return f"- {what} vs TRL (≥ {STEP_GOAL}×): the {part} part was not run."
    return f"- {what} vs TRL's {trainer}: {r['speedup']}× (≥ {STEP_GOAL}×: {verdict(r['speedup'] >= STEP_GOAL)})."
