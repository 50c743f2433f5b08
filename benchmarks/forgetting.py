"""Catastrophic forgetting: SmolLM2-135M that learned task A (PAL math: the shipped PAL adapter, merged) is then
trained on task B (`records` extraction, JSON out) three ways on one budget, and both tasks are scored before
and after:

- sequential: full fine-tuning on B alone (`recipes/finetune_records.yaml`);
- mixture: full fine-tuning on B mixed half and half with A's own training data (replay);
- LoRA on B: a rank-8 adapter on the frozen A model (scored with the adapter on; off, it *is* the A model).

    python -m benchmarks.forgetting --steps 40 --n 50   # all three: 33 min on 2 idle cores (measured)
    python -m benchmarks.forgetting --quick         # smoke run: 2 steps, 4 problems

Task A = `math_word` test split, the generated program run in the PAL sandbox (greedy); task B = `records`
test split, the greedy completion parsed as JSON: exact (all six fields right) and the mean share of fields
right. Writes docs/results/forgetting.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import RESULTS, ROOT, markdown_table, repo_relative, rewrite_page, write_results
from benchmarks.finetune import RECIPE as PAL_RECIPE
from benchmarks.finetune import datasets_override, problems, run_metrics

RECIPE = ROOT / "recipes" / "finetune_records.yaml"
RESULTS_JSON = RESULTS / "forgetting.json"
ADAPTER = ROOT / "src" / "lmstack" / "adapters" / "smollm2-pal"
CONDITIONS: dict[str, dict[str, Any]] = {  # condition → recipe overrides; "mix": add task A's data
    "sequential": {"overrides": []},
    "mixture": {"overrides": ["data.seq_len=288"], "mix": True},
    "lora": {"overrides": ["method=lora", "train.lr=1e-3"]},
}
LABELS = {
    "start": "A model (SmolLM2 + the PAL adapter, merged), before B",
    "sequential": "A → B: full fine-tuning on B alone",
    "mixture": "A → A+B: full fine-tuning on B mixed 1:1 with A's data",
    "lora": "A → LoRA r=8 on B alone (frozen A weights)",
}


def make_start_model(directory: Path) -> Path:
    """The task-A model as an HF directory (the recipes' `base`): SmolLM2 with the shipped PAL adapter folded in."""
    from lmstack.finetune.load import load_finetuned
    from lmstack.weights.hf import save_hf

    if not (directory / "config.json").is_file():
        model, tok = load_finetuned("smollm2", {"pal": ADAPTER}, merge=True)
        save_hf(model, directory, tok)
    return directory


def train_condition(name: str, base: Path, out: Path, steps: int | None, quick: bool) -> Path:
    from lmstack.train.recipe import run_recipe

    overrides = [f"base={base}", f"out_dir={out}", "train.progress=false", *CONDITIONS[name]["overrides"]]
    if steps:  # a shorter (or longer) budget for every condition alike; evaluate and save halfway and at the end
        half = max(steps // 2, 1)
        overrides += [f"train.steps={steps}", f"train.warmup_steps={min(10, half)}"]
        overrides += [f"train.eval_every={half}", f"train.save_every={half}"]
    if CONDITIONS[name].get("mix"):  # B's dataset plus the PAL recipe's, equal weights
        records = yaml.safe_load(RECIPE.read_text())["data"]["datasets"][0]
        pal = yaml.safe_load(PAL_RECIPE.read_text())["data"]["datasets"][0]
        overrides.append(datasets_override(records, {**pal, "n": records["n"]}))
    if quick:
        overrides += ["train.steps=2", "train.eval_every=0", "train.eval_batches=1", "train.save_every=0"]
    run_recipe(RECIPE, overrides, log=lambda m: print(f"  [{name}] {m}", flush=True), default_kind="finetune")
    return out


def score(spec: str | Path, n: int, batch_size: int) -> dict[str, Any]:
    """Task A accuracy (PAL, sandboxed) and task B exact / field accuracy of one model, greedy."""
    from lmstack.augment.pal import FINETUNED_PROMPT, engine_generate_many, evaluate
    from lmstack.data.tasks.records import field_accuracy
    from lmstack.finetune.load import load_finetuned
    from lmstack.generate.engine import Engine
    from lmstack.generate.sampling import GenerationConfig

    model, tok = load_finetuned(spec, merge=True)
    engine = Engine(model, tok, mode="fp32")
    start = time.perf_counter()
    items = problems("math_word", n)
    generate_many = engine_generate_many(engine, GenerationConfig(max_new_tokens=224), chat=True, batch_size=batch_size)
    a = evaluate([(i["question"], i["answer"]) for i in items], generate_many, **FINETUNED_PROMPT)["accuracy"]
    records = problems("records", n)
    chats = [[{"role": "user", "content": r["prompt"]}] for r in records]
    texts: list[str] = []
    for j in range(0, len(chats), batch_size):
        texts += [c.text for c in engine.generate(chats[j : j + batch_size], GenerationConfig(max_new_tokens=96))]
    fields = [field_accuracy(t.strip(), r["fields"]) for t, r in zip(texts, records)]
    out = {
        "a_accuracy": a,
        "b_exact": sum(f == 1.0 for f in fields) / len(fields),
        "b_fields": sum(fields) / len(fields),
        "n": n,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"  [{spec}] A {a:.1%}, B exact {out['b_exact']:.1%}, fields {out['b_fields']:.1%}", flush=True)
    return out


def render(data: dict[str, Any]) -> tuple[str, str]:
    rows, start = data["rows"], data["rows"].get("start")
    table = []
    for name in LABELS:
        if name not in rows:
            continue
        r, s = rows[name], rows[name]["score"]
        drop = f"{100 * (start['score']['a_accuracy'] - s['a_accuracy']):+.0f}" if start and name != "start" else "—"
        run = r.get("run", {})
        table.append(
            [
                LABELS[name],
                f"{s['a_accuracy']:.0%}",
                drop,
                f"{s['b_exact']:.0%}",
                f"{s['b_fields']:.0%}",
                run.get("step_s", "—"),
                run.get("train_wall_s", "—"),
            ]
        )
    header = ["model", "task A (PAL) acc", "A lost (points)", "task B exact", "B fields right", "step (s)", "train (s)"]
    n = start["score"]["n"] if start else 0
    steps = {r["run"]["steps"] for r in rows.values() if "run" in r}
    budget = "/".join(str(s) for s in sorted(steps)) or "its"
    notes = [
        f"Greedy decoding, {n} test problems per task (task suite seed 0, never trained on). Every condition "
        f"starts from the same A model and runs `recipes/finetune_records.yaml` ({budget} steps of batch 8, AdamW; "
        "full fine-tuning at lr 5e-5, LoRA at 1e-3) with only the overrides its row names, so B gets half the "
        "examples under the mixture. Task A is scored with the zero-shot prompt the PAL adapter was trained on."
    ]
    if n:
        notes.append(
            f"With {n} problems an accuracy's standard error is up to {50 / n**0.5:.0f} points, a difference's "
            f"up to {50 * (2 / n) ** 0.5:.0f}."
        )
    if start and "sequential" in rows and "mixture" in rows:
        seq = start["score"]["a_accuracy"] - rows["sequential"]["score"]["a_accuracy"]
        mix = start["score"]["a_accuracy"] - rows["mixture"]["score"]["a_accuracy"]
        ok = mix <= seq / 2 if seq > 0 else None
        verdict = "not testable: sequential training lost nothing" if ok is None else "met" if ok else "**missed**"
        notes.append(
            f"\n**Goal** (the mixture at most halves sequential training's loss of task-A accuracy): sequential "
            f"lost {100 * seq:.0f} points, the mixture {100 * mix:.0f} — {verdict}."
        )
    if "lora" in rows:
        notes.append(
            "\nThe LoRA row leaves the A weights untouched: with its adapter disabled the model is the A model "
            "(first row); its task-A figure is with the adapter on, as one would serve it for task B."
        )
    conditions = [f"- {LABELS[r]}: {rows[r]['conditions']}" for r in LABELS if rows.get(r, {}).get("conditions")]
    if conditions:
        notes.append("\n**Conditions** (as recorded with each run):\n" + "\n".join(conditions))
    return markdown_table(header, table), "\n".join(notes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conditions", default="", help="how the machine was during these runs (shown on the page)")
    p.add_argument("--only", default=",".join(["start", *CONDITIONS]), help="comma-separated rows to (re)run")
    p.add_argument("--n", type=int, default=100, help="test problems per task")
    p.add_argument("--steps", type=int, default=None, help="training steps per condition (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "forgetting"), help="where the runs go")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 training steps, 4 problems, nothing written")
    p.add_argument("--render", action="store_true", help="only redraw the page from the JSON")
    args = p.parse_args()
    if args.render:
        rewrite_page("forgetting", *render(json.loads(RESULTS_JSON.read_text())))
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in LABELS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(LABELS)}")
    out = Path(args.out)
    base = make_start_model(out / "a_model")
    n = 4 if args.quick else args.n
    data: dict[str, Any] = {"rows": {}}
    if RESULTS_JSON.is_file() and not args.quick:
        data["rows"] = json.loads(RESULTS_JSON.read_text()).get("rows", {})
    for name in wanted:
        record: dict[str, Any] = {}
        if name == "start":
            record["score"] = score(base, n, args.batch_size)
        else:
            run_dir = train_condition(name, base, out / name, args.steps, args.quick)
            record["run"] = run_metrics(run_dir)
            record["run_dir"] = repo_relative(str(run_dir))
            record["score"] = score(run_dir, n, args.batch_size)
        if args.conditions:
            record["conditions"] = args.conditions
        data["rows"][name] = record
        if not args.quick:  # after every row, so a long run that stops keeps what it measured
            write_results("forgetting", data, *render(data))
    table, notes = render(data)
    print(table)
    print(notes)


if __name__ == "__main__":
    main()
