"""`make demo`: pretrain the tiny GPT on the Python standard library for a couple of minutes, sample from
it, and print a summary table. Later layers of the stack add their own stops to this tour."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lmstack.train.loop import train
from lmstack.train.metrics import plot_metrics, read_metrics
from lmstack.train.recipe import build_job, load_recipe
from lmstack.weights.checkpoint import load_model_for_inference

RECIPE = Path("recipes/pretrain_gpt_tiny.yaml")
PROMPTS = ["import ", "def __init__(self", "    for i in range("]


def main(steps: int = 300) -> int:
    console = Console()
    if not RECIPE.is_file():
        console.print(f"[red]run the demo from the repository root ({RECIPE} not found)")
        return 1
    run_dir = Path("runs/demo/gpt_tiny")
    recipe = load_recipe(RECIPE, [f"out_dir={run_dir}", f"train.steps={steps}", "train.resume=never",
                                  "train.save_every=0", f"train.eval_every={steps // 3}"])
    console.rule("[bold]lmstack demo 1/1: pretrain a tiny GPT on the Python standard library")
    start = time.perf_counter()
    job, tok = build_job(recipe, run_dir, log=console.print)
    n_params = sum(p.numel() for p in job.model.parameters())
    summary = train(job, recipe.train, run_dir, log=console.print)
    wall = time.perf_counter() - start
    records = read_metrics(run_dir / "metrics.jsonl")
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]

    console.rule("[bold]samples (temperature 0.8, top-k 50)")
    model, tok = load_model_for_inference(summary["checkpoint"])
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(prompt)])
        out = model.generate(ids, 48, temperature=0.8, top_k=50, eos_token_id=tok.eos_id, seed=i)
        console.print(f"[cyan]{prompt}[/cyan]{tok.decode(out[0].tolist())}", markup=True, highlight=False)
    plot = None
    try:
        plot = plot_metrics(run_dir)
    except Exception as exc:  # plotting is optional (matplotlib)
        console.print(f"(no plot: {exc})")

    table = Table(title="summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model", f"GPT-2 style decoder, {n_params / 1e6:.2f}M parameters")
    table.add_row("tokenizer", f"byte-level BPE, {tok.vocab_size} tokens, trained on the run's data")
    table.add_row("steps × tokens/step", f"{summary['step']} × {recipe.train.batch_size * recipe.data.seq_len}")
    table.add_row("validation loss: start → end", f"{vals[0]:.3f} → {vals[-1]:.3f}")
    table.add_row("validation perplexity: start → end", f"{math.exp(vals[0]):.0f} → {math.exp(vals[-1]):.1f}")
    table.add_row("median training tokens/s", f"{sorted(speeds)[len(speeds) // 2]:.0f}")
    table.add_row("wall time (incl. tokenizer + data)", f"{wall:.0f} s")
    table.add_row("checkpoint", str(summary["checkpoint"]))
    if plot:
        table.add_row("loss plot", str(plot))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
