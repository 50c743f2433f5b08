"""`lmstack align RECIPE.yaml key=value ...`: run (or resume) a `kind: align` recipe (see `align.recipe`)."""

from __future__ import annotations

import argparse


def _cmd_align(args: argparse.Namespace) -> int:
    from lmstack.align.recipe import load_recipe, run_align

    recipe = load_recipe(args.recipe, args.overrides)
    summary = run_align(recipe)
    if recipe.method in ("reward_model", "dpo"):
        print(
            f"done: step {summary['step']}, val_loss {summary.get('val_loss', float('nan')):.4f}, "
            f"checkpoint {summary['checkpoint']}"
        )
    elif recipe.method in ("rest", "rest_em"):
        print(
            f"done: iteration {summary['iteration']}, val_accuracy {summary['val_accuracy']:.4f}, best iteration "
            f"{summary['best_iteration']} ({summary['best_policy']})"
        )
    else:
        accuracy = summary.get("val_accuracy")
        shown = f"{accuracy:.4f}" if accuracy is not None else "n/a"
        print(f"done: iteration {summary['iteration']}, val_accuracy {shown}, checkpoint {summary['checkpoint']}")
    return 0


def add_align_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="align a model from a YAML recipe: reward model, DPO, PPO, GRPO, ReST, ReST-EM",
        description="Run a kind: align recipe (method: reward_model | dpo | ppo | grpo | rest | rest_em) with "
        "resume, checkpoints and metrics.jsonl like `lmstack train`: lmstack align recipes/align_grpo.yaml "
        "rl.iterations=5",
    )
    p.add_argument("recipe", help="path to a recipe YAML file")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value overrides, e.g. rl.iterations=5 lora.r=16")
    p.set_defaults(func=_cmd_align)
