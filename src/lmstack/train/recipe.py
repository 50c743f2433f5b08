"""Recipes: a YAML file (+ `key=value` overrides) → a training job → the one training loop.

A recipe's `kind` (default `pretrain`) names the module that knows that kind of job: it defines the recipe's
dataclass (`recipe_from_dict`) and builds its job (`build_job`). A new kind (finetune, align, …) is a new
module and one line in `KINDS`, not new branches here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from lmstack.config import apply_overrides, load_yaml, to_dict
from lmstack.errors import ConfigError
from lmstack.process_group import barrier, setup_distributed, teardown_distributed
from lmstack.train.loop import TrainingJob, quiet, train

KINDS = {
    "pretrain": "lmstack.train.pretrain",
    "finetune": "lmstack.finetune.recipe",
}  # recipe kind → the module that builds its jobs


def kind_module(kind: Any) -> ModuleType:
    """The module that defines recipes of `kind`."""
    if kind not in KINDS:
        raise ConfigError(f"kind: {kind!r} is not allowed. Allowed values: {', '.join(map(repr, KINDS))}")
    return importlib.import_module(KINDS[kind])


def recipe_from_dict(data: dict[str, Any], default_kind: str = "pretrain") -> Any:
    """Validate a recipe mapping into its kind's frozen dataclass (`default_kind` when it names none)."""
    data = {"kind": default_kind, **data}
    return kind_module(data["kind"]).recipe_from_dict(data)


def load_recipe(path: str | Path, overrides: list[str] | None = None, default_kind: str = "pretrain") -> Any:
    """Parse and validate a recipe file; overrides like `train.steps=50` win over the file."""
    return recipe_from_dict(apply_overrides(load_yaml(path), overrides or []), default_kind)


def build_job(recipe: Any, run_dir: Path | None = None, log=print) -> tuple[TrainingJob, Any]:
    """The training job of a recipe (and its tokenizer), prepared in `run_dir` (default: the recipe's)."""
    return kind_module(recipe.kind).build_job(recipe, run_dir, log)


def run_recipe(path: str | Path, overrides: list[str] | None = None, log=print, default_kind: str = "pretrain") -> dict:
    """Load, validate and train a recipe; returns the loop's summary.

    Under torchrun every rank runs this unchanged: rank 0 prepares the run directory (tokenizer, token
    cache) while the others wait, then they read it."""
    recipe = load_recipe(path, overrides, default_kind)
    cfg = recipe.train
    ctx = setup_distributed(cfg.device, cfg.strategy, cfg.dist_timeout_s)
    ok = False
    try:
        if not ctx.is_main:
            log = quiet
        run_dir = recipe.run_dir
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
            job, _ = build_job(recipe, run_dir, log)
        barrier(ctx)
        if not ctx.is_main:
            job, _ = build_job(recipe, run_dir, log)
        n = sum(p.numel() for p in job.model.parameters())
        trainable = sum(p.numel() for p in job.model.parameters() if p.requires_grad)
        log(
            f"{recipe.name} ({recipe.kind}): {job.model.cfg.family} with {n / 1e6:.2f}M parameters, "
            f"{trainable / 1e6:.2f}M trainable ({100 * trainable / max(n, 1):.2f}%)"
        )
        summary = train(job, cfg, run_dir, log, ctx=ctx)
        ok = True
        return summary
    finally:
        teardown_distributed(ctx, ok)
