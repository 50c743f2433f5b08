"""The `lmstack` command line. Each subcommand is one small function that wires arguments to the library;
heavy imports happen inside the subcommand so that `lmstack --help` stays instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lmstack.errors import LMStackError


def _cmd_train(args: argparse.Namespace) -> int:
    from lmstack.train.recipe import run_recipe

    summary = run_recipe(args.recipe, args.overrides)
    print(f"done: step {summary['step']}, val_loss {summary.get('val_loss', float('nan')):.4f}, "
          f"checkpoint {summary['checkpoint']}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model from a YAML recipe",
        description="Train from a recipe. Any key can be overridden: lmstack train recipes/x.yaml train.steps=50",
    )
    p.add_argument("recipe", help="path to a recipe YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-3 model.n_layers=2")
    p.set_defaults(func=_cmd_train)


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from lmstack.weights.checkpoint import load_model_for_inference

    model, tokenizer = load_model_for_inference(args.checkpoint)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        ids = [tokenizer.bos_id if tokenizer.bos_id is not None else 0]
    for i in range(args.num_samples):
        out = model.generate(
            torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, eos_token_id=tokenizer.eos_id, seed=args.seed + i,
        )
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tokenizer.decode(out[0].tolist()))
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample text from a trained decoder checkpoint")
    p.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its latest good checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_sample)


def _cmd_plot(args: argparse.Namespace) -> int:
    from lmstack.train.metrics import plot_metrics

    out = plot_metrics(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot the loss curves of a run (needs matplotlib)")
    p.add_argument("run_dir", help="a run directory containing metrics.jsonl")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train, _add_sample, _add_plot]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmstack", description="The LLM development stack in one package.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LMStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
