"""BitNet b1.58 vs full precision: decoders of several widths trained on the same token budget of the
standard-library corpus (the `pretrain_bitnet_tiny` recipe with width overrides; the FP runs switch
`model.bitnet` off and use the plain cosine schedule). Reports validation perplexity (of the packed export,
checked against the training-time model), block linear-weight bytes (2-bit packed vs fp16), greedy decode
tokens/s (fp32, BitLinear fake-quant, packed), per-layer CPU times of the packed kernel against fp32
`nn.Linear` at the decoder's shapes, and a plot of perplexity against width.

    .venv/bin/python -m benchmarks.bitnet            # ~35 min on 2 cores
    .venv/bin/python -m benchmarks.bitnet --quick    # smoke run, ~1 min

`--extend` adds widths to the runs recorded in docs/results/bitnet.json (same budget, seeds and tokenizer), so
a wider model can be measured in a later session; d=1024 took about 17 min per run on 2 cores (~1.7 h for
2-point grids). Re-running d=1024 with wider grids (its recorded rates lie at their grids' edges):

    .venv/bin/python -m benchmarks.bitnet --widths 1024 --extend --kernel-widths \
        --lr-grid-fp 1024=0.0005,0.0007,0.001 --lr-grid-bitnet 1024=0.0007,0.001,0.0015

Training runs on a GPU when there is one (train.device=auto); the packed models are always evaluated on CPU,
against the trained model reloaded on CPU. A GPU-sized run toward the paper's regime (not yet run; the
standard library holds ~13 MB of source, so more tokens than ~3.5M repeat epochs), for example:

    .venv/bin/python -m benchmarks.bitnet --widths 256 512 1024 2048 --steps 3000 --batch-size 32 \
        --train-bytes 12000000 --new-tokens 0 --kernel-widths \
        --lr-grid-fp 512=0.0005,0.001,0.002 1024=0.00025,0.0005,0.001 2048=0.000125,0.00025,0.0005 \
        --lr-grid-bitnet 512=0.001,0.002,0.004 1024=0.0005,0.001,0.002 2048=0.00025,0.0005,0.001
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS, commit, markdown_table, median, timed, write_results
from lmstack.generate.sampling import generate
from lmstack.models.bitnet import (
    PACKING_BASE3,
    BitLinear,
    PackedBitLinear,
    integer_matmul,
    linear_weight_bytes,
    quantize_activations,
)
from lmstack.train.loop import evaluate, train
from lmstack.train.recipe import build_job, load_recipe
from lmstack.weights.bitnet_export import export_bitnet
from lmstack.weights.load import load_model_for_inference

RECIPE = "recipes/pretrain_bitnet_tiny.yaml"
RUNS = Path("runs/bench_bitnet")


def width_overrides(width: int, layers: int) -> list[str]:
    """Llama-style shapes at `width`: head size 32, half as many KV heads, SwiGLU d_ff ≈ 2.75 d."""
    heads = max(1, width // 32)
    d_ff = max(8, round(2.75 * width / 8) * 8)
    return [
        f"model.d_model={width}",
        f"model.n_heads={heads}",
        f"model.n_kv_heads={max(1, heads // 2)}",
        f"model.d_ff={d_ff}",
        f"model.n_layers={layers}",
    ]


def train_one(
    kind: str,
    width: int,
    seed: int,
    lr: float,
    args: argparse.Namespace,
    tokenizer: Path | None,
    variant: str = "",
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One run; `variant`/`extra` name and add recipe overrides for the ablations."""
    run_dir = RUNS / f"{kind}{variant and '-' + variant}-d{width}-s{seed}-lr{lr:g}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"out_dir={run_dir}",
        f"data.seq_len={args.seq_len}",
        f"model.max_seq_len={args.seq_len}",
        f"data.max_train_bytes={args.train_bytes}",
        f"data.max_val_bytes={args.val_bytes}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.warmup_steps={args.warmup}",
        f"train.eval_batches={args.eval_batches}",
        "train.eval_every=0",
        "train.save_every=0",
        "train.progress=false",
        f"train.log_every={max(1, args.steps // 10)}",
        f"train.seed={seed}",
        *width_overrides(width, args.layers),
    ]
    if kind == "fp":
        overrides += ["model.bitnet=false", "train.schedule=cosine", f"train.lr={lr}"]
    else:
        overrides += ["model.bitnet=true", f"train.lr={lr}"]
    if tokenizer is not None:
        overrides.append(f"tokenizer.path={tokenizer}")
    recipe = load_recipe(RECIPE, [*overrides, *extra])
    job, _ = build_job(recipe, run_dir, log=lambda m: None)
    t0 = time.perf_counter()
    summary = train(job, recipe.train, run_dir, log=lambda m: None)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "kind": kind,
        "width": width,
        "seed": seed,
        "run_dir": str(run_dir),
        "layers": args.layers,
        "lr": recipe.train.lr,
        "schedule": recipe.train.schedule,
        "train_s": round(seconds, 1),
        "tokens": args.steps * args.batch_size * args.seq_len,
        "params": sum(p.numel() for p in job.model.parameters()),
        "val_loss": summary["val_loss"],
        "val_ppl": math.exp(summary["val_loss"]),
    }
    block_linear = [m for m in job.model.modules() if isinstance(m, nn.Linear) and m is not job.model.lm_head]
    row["linear_bytes_fp16"] = sum(2 * m.weight.numel() for m in block_linear)
    if kind == "bitnet":  # pack (both formats), reload from disk, evaluate the packed model on the same batches
        info = export_bitnet(run_dir, run_dir / "packed")
        packed, _ = load_model_for_inference(run_dir / "packed")
        packed_loss = evaluate(dataclasses.replace(job, model=packed), torch.device("cpu"), None)
        sizes = linear_weight_bytes(packed)
        info3 = export_bitnet(run_dir, run_dir / "packed_base3", PACKING_BASE3)
        base3, _ = load_model_for_inference(run_dir / "packed_base3")
        base3_loss = evaluate(dataclasses.replace(job, model=base3), torch.device("cpu"), None)
        reference = summary["val_loss"]
        if next(job.model.parameters()).device.type != "cpu":  # trained on a GPU: compare on the same device
            trained, _ = load_model_for_inference(run_dir)
            reference = evaluate(dataclasses.replace(job, model=trained), torch.device("cpu"), None)
        row.update(
            packed_val_loss=packed_loss,
            base3_val_loss=base3_loss,
            training_val_loss_cpu=reference,
            packed_equals_training=packed_loss == reference == base3_loss,
            linear_bytes_packed=sizes["packed"],
            linear_bytes_base3=linear_weight_bytes(base3)["packed"],
            subln_bytes=sizes["subln"],
            file_bytes_training=info["file_bytes_source"],
            file_bytes_packed=info["file_bytes_packed"],
            file_bytes_base3=info3["file_bytes_packed"],
        )
    row["prompt"] = next(iter(job.eval_batches()))["input_ids"][:8, :16].tolist()
    return row


def decode_speed(fp_dir: Path, bitnet_dir: Path, prompt: list[list[int]], args: argparse.Namespace) -> dict:
    """Greedy decode tokens/s (KV cache) at batch 1 and 8 of the FP model, the BitLinear training model
    (fake quant) and the packed export; repeats interleaved so that all three see the same load."""
    models = {
        "fp32": load_model_for_inference(fp_dir)[0],
        "bitlinear": load_model_for_inference(bitnet_dir)[0],
        "packed": load_model_for_inference(bitnet_dir / "packed")[0],
    }
    ids = torch.tensor(prompt)
    secs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            for batch in (1, 8):
                fn = functools.partial(generate, model, ids[:batch], args.new_tokens)
                secs.setdefault(f"{name}_b{batch}", []).extend(timed(fn, 1, warmup=1))
    return {k: round(int(k[-1]) * args.new_tokens / median(v), 1) for k, v in secs.items()}


def kernel_speed(width: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Microseconds per call of one layer at the decoder's linear shapes: fp32 nn.Linear vs the packed
    layer (SubLN + int8 quantization + int8 matmul + rescale), its bare integer matmul, the packed layer
    unpacking every call, and the BitLinear training layer (fake quant)."""
    heads = max(1, width // 32)
    d_ff = max(8, round(2.75 * width / 8) * 8)
    kv = max(1, heads // 2) * 32
    shapes = {  # (in, out, fused parts with their own γ, as in the decoder)
        "qkv_proj": (width, width + 2 * kv, (width, kv, kv)),
        "o_proj": (width, width, None),
        "up_proj": (width, 2 * d_ff, (d_ff, d_ff)),
        "down_proj": (d_ff, width, None),
    }
    rows = []
    torch.manual_seed(0)
    for name, (k, n, splits) in shapes.items():
        bit = BitLinear(k, n, splits=splits)
        layers = {
            "fp32_linear": nn.Linear(k, n, bias=False),
            "packed": PackedBitLinear.from_bitlinear(bit),
            "packed_unpack_each_call": PackedBitLinear.from_bitlinear(bit, cache_int8=False),
            "bitlinear_fake_quant": bit,
        }
        codes = layers["packed"].codes()
        for m in (1, 64):
            x = torch.randn(m, k)
            x_q, _ = quantize_activations(x)
            fns = {label: functools.partial(layer, x) for label, layer in layers.items()}
            fns["int_matmul"] = functools.partial(integer_matmul, x_q, codes)
            times: dict[str, list[float]] = {label: [] for label in fns}
            with torch.inference_mode():
                for _ in range(args.repeats + 2):  # interleaved, so every variant sees the same load
                    for label, fn in fns.items():
                        times[label].append(median(timed(fn, 30, warmup=5)))
            row: dict[str, Any] = {"width": width, "layer": name, "shape": f"{k}->{n}", "tokens": m}
            row.update({f"{label}_us": round(1e6 * median(v), 1) for label, v in times.items()})
            row["packed_vs_fp32"] = round(row["packed_us"] / row["fp32_linear_us"], 2)
            rows.append(row)
    return rows


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (kind, width): perplexity = exp(mean validation loss over seeds), plus the per-seed values;
    sizes and decode speeds from the first seed's run."""
    out = []
    for kind, width in sorted({(r["kind"], r["width"]) for r in runs}, key=lambda kw: (kw[1], kw[0])):
        group = [r for r in runs if r["kind"] == kind and r["width"] == width]
        loss = sum(r["val_loss"] for r in group) / len(group)
        row = {k: v for k, v in group[0].items() if k not in ("seed", "val_loss", "val_ppl", "train_s")}
        row.update(
            val_loss=loss,
            val_ppl=math.exp(loss),
            seed_ppl=[r["val_ppl"] for r in group],
            train_s=[r["train_s"] for r in group],
        )
        if kind == "bitnet":
            row["packed_equals_training"] = all(r["packed_equals_training"] for r in group)
        out.append(row)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (("fp", "o-"), ("bitnet", "s-")):
        pts = sorted((r["width"], r["val_ppl"], r["seed_ppl"]) for r in rows if r["kind"] == kind)
        label = {"fp": "FP (fp32)", "bitnet": "BitNet b1.58"}[kind]
        line = a.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)[0]
        for w, _, seeds in pts:
            a.scatter([w] * len(seeds), seeds, s=12, alpha=0.5, color=line.get_color())
    a.set_xscale("log", base=2)
    a.set_xlabel("d_model")
    a.set_ylabel("validation perplexity")
    a.legend()
    a.set_title("perplexity vs width (same token budget; dots = seeds)")
    widths = sorted({r["width"] for r in rows})
    ppl = {(r["kind"], r["width"]): r["val_ppl"] for r in rows}
    b.plot(widths, [ppl["bitnet", w] / ppl["fp", w] for w in widths], "d-", color="C2")
    b.axhline(1.10, ls="--", color="grey", label="goal: within 10%")
    b.set_xscale("log", base=2)
    b.set_xlabel("d_model")
    b.set_ylabel("BitNet ppl / FP ppl")
    b.legend()
    b.set_title("the gap")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def narrowing_tail(gaps: dict[int, float]) -> list[int]:
    """The widest widths over which the gap shrinks at every step (the whole list when it narrows
    throughout; a single width when even the last step widens it)."""
    widths = sorted(gaps)
    tail = widths[-1:]
    for a in reversed(widths[:-1]):
        if gaps[a] <= gaps[tail[0]]:
            break
        tail.insert(0, a)
    return tail


def reading(rows: list[dict[str, Any]], kernels: list[dict[str, Any]], narrows: bool) -> str:
    """What the numbers say, in words (phrased from the data, so that a re-run cannot contradict it)."""
    params = max(r["params"] for r in rows)
    ppl = {(r["kind"], r["width"]): r["val_ppl"] for r in rows}
    gaps = {w: ppl["bitnet", w] / ppl["fp", w] - 1 for (kind, w) in ppl if kind == "fp"}
    tail = narrowing_tail(gaps)
    text = (
        f"**Reading.** These models have at most {params / 1e6:.2f}M parameters and see "
        f"{rows[0]['tokens']:,} tokens. The paper reports the gap shrinking from 700M to 3B parameters "
        f"(parity at 3B) after 100B training tokens, a regime 2 CPU cores cannot reach. "
    )
    text += (
        "Here the gap narrows with width, as the paper predicts. "
        if narrows
        else "Here the gap does not shrink steadily with width, so this run does not reproduce the paper's claim "
        "at tiny scale. "
    )
    if not narrows and len(tail) >= 3:
        text += (
            f"From d={tail[0]} up, though, it shrinks at every doubling ("
            + ", ".join(f"{100 * gaps[w]:+.1f}%" for w in tail)
            + f"), so the trend the paper describes shows over the widest {len(tail)} widths. "
        )
    decoded = [r for r in rows if r["kind"] == "fp" and "decode" in r]
    slower = [r["width"] for r in decoded if r["decode"]["packed_b1"] < r["decode"]["fp32_b1"]]
    beats_fake = all(r["decode"]["packed_b1"] > r["decode"]["bitlinear_b1"] for r in decoded)
    if decoded:
        where = ", ".join(map(str, slower)) or "no width"
        faster = [r for r in decoded if r["width"] not in slower]
        text += f"Batch-1 packed decode is slower than fp32 decode at d={where}"
        text += (
            "".join(
                f", faster at d={r['width']} ({r['decode']['packed_b1']:.0f} against "
                f"{r['decode']['fp32_b1']:.0f} tokens/s)"
                for r in faster
            )
            + "; "
        )
        text += "it is faster than the BitLinear fake-quant model at every width. " if beats_fake else ""
    if kernels:
        wins = [k for k in kernels if k["packed_vs_fp32"] < 1]
        text += (
            f"One packed layer call costs at least {min(k['packed_us'] for k in kernels):.0f} µs (SubLN, "
            f"quantization, int8 matmul and rescale are ~15 small ops), against a few µs for a small fp32 "
            f"nn.Linear; the packed layer wins in {len(wins)} of {len(kernels)} layer timings ("
            + (", ".join(f"d={k['width']} {k['layer']} × {k['tokens']}" for k in wins) or "none")
            + "), where reading 4× fewer weight bytes than fp32 outweighs the fixed cost."
        )
    return text


def render(data: dict[str, Any]) -> Path:
    """Write docs/results/bitnet.{json,md,png} from the measured data."""
    args = argparse.Namespace(**data["config"])
    rows, kernels = aggregate(data["runs"]), data["kernels"]
    widths = sorted({r["width"] for r in rows})
    fp = {r["width"]: r for r in rows if r["kind"] == "fp"}
    bit = {r["width"]: r for r in rows if r["kind"] == "bitnet"}
    gaps = {w: bit[w]["val_ppl"] / fp[w]["val_ppl"] - 1 for w in widths}
    widest = widths[-1]
    narrows = len(widths) > 1 and all(gaps[a] > gaps[b] for a, b in zip(widths, widths[1:], strict=False))
    data.update(summary=rows, gap={str(w): g for w, g in gaps.items()}, gap_narrows=narrows)

    def seeds(r: dict[str, Any]) -> str:
        return " / ".join(f"{x:.0f}" for x in r["seed_ppl"])

    def decode(w: int, key: str) -> str:
        d = fp[w].get("decode", {})
        return f"{d[key]:.0f}" if key in d else "-"

    table = markdown_table(
        [
            "d_model",
            "params (FP)",
            "FP lr",
            "FP ppl (seeds)",
            "b1.58 lr",
            "b1.58 ppl (seeds)",
            "gap",
            "packed = training",
            "linear bytes fp16",
            "2-bit",
            "ratio",
            "base-3",
            "ratio",
            "decode b1 tok/s: fp32 / fake-quant / packed",
            "b8: fp32 / packed",
        ],
        [
            [
                w,
                f"{fp[w]['params'] / 1e6:.2f}M",
                f"{fp[w]['lr']:g}",
                f"{fp[w]['val_ppl']:.1f} ({seeds(fp[w])})",
                f"{bit[w]['lr']:g}",
                f"{bit[w]['val_ppl']:.1f} ({seeds(bit[w])})",
                f"{100 * gaps[w]:+.1f}%",
                "yes" if bit[w]["packed_equals_training"] else "NO",
                f"{fp[w]['linear_bytes_fp16']:,}",
                f"{bit[w]['linear_bytes_packed']:,}",
                f"{fp[w]['linear_bytes_fp16'] / bit[w]['linear_bytes_packed']:.4f}x",
                f"{bit[w]['linear_bytes_base3']:,}" if "linear_bytes_base3" in bit[w] else "-",
                f"{fp[w]['linear_bytes_fp16'] / bit[w]['linear_bytes_base3']:.3f}x"
                if "linear_bytes_base3" in bit[w]
                else "-",
                f"{decode(w, 'fp32_b1')} / {decode(w, 'bitlinear_b1')} / {decode(w, 'packed_b1')}",
                f"{decode(w, 'fp32_b8')} / {decode(w, 'packed_b8')}",
            ]
            for w in widths
        ],
    )
    kernel_table = markdown_table(
        [
            "d_model",
            "layer",
            "K->N",
            "tokens",
            "fp32 nn.Linear µs",
            "packed layer µs",
            "packed / fp32",
            "int8 matmul µs",
            "unpack each call µs",
            "BitLinear (train) µs",
        ],
        [
            [
                k["width"],
                k["layer"],
                k["shape"],
                k["tokens"],
                k["fp32_linear_us"],
                k["packed_us"],
                f"{k['packed_vs_fp32']}x",
                k["int_matmul_us"],
                k["packed_unpack_each_call_us"],
                k["bitlinear_fake_quant_us"],
            ]
            for k in kernels
        ],
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "bitnet.png")
    ratio_widest = fp[widest]["linear_bytes_fp16"] / bit[widest]["linear_bytes_packed"]
    base3_bytes = bit[widest].get("linear_bytes_base3")
    ratio_base3 = fp[widest]["linear_bytes_fp16"] / base3_bytes if base3_bytes else None
    size_goal = (
        f"{'met' if ratio_base3 >= 8 else 'NOT met'} with the base-3 export, {ratio_base3:.3f}× at d={widest} "
        f"(5 ternary weights per byte); the 2-bit export gives {ratio_widest:.4f}×"
        if ratio_base3
        else f"{ratio_widest:.4f}× at d={widest} (2-bit export)"
    )
    gap_list = ", ".join(f"d={w}: {100 * gaps[w]:+.1f}%" for w in widths)
    load_start, load_end = data["load_average"]["start"], data["load_average"]["end"]
    notes = (
        f"Same token budget for every run: {args.steps} steps × {args.batch_size} sequences × "
        f"{args.seq_len} tokens = {rows[0]['tokens']:,} tokens of the standard-library corpus, one shared "
        f"tokenizer (vocab 2048), the same validation blocks ({args.eval_batches} × {args.batch_size} × "
        f"{args.seq_len} tokens). {args.layers} layers, head size 32, SwiGLU, RoPE, RMSNorm. Perplexity = "
        f"exp(mean validation loss over seeds {args.seeds}); per-seed perplexities in brackets. FP: warmup + "
        f"cosine, weight decay 0.1. b1.58: the recipe's two-stage schedule (drop to 0.3× at half-way; weight "
        f"decay 0.1, then 0). Each kind and width runs at its own best learning rate: chosen on seed "
        f"{args.seeds[0]} from {args.lrs_fp} (FP) and {args.lrs_bitnet} (b1.58){grid_note(args)}, see the "
        f"last table; the "
        f"other seeds use the chosen rate{edge_note(data['lr_trials'])}. The b1.58 perplexity is "
        f"that of the training-time model; 'packed = training' says whether the packed export, reloaded "
        f"from disk, gives exactly the same validation loss (every seed; both the 2-bit and the base-3 "
        f"export).\n\n"
        f"**Goals.** b1.58 within 10% of FP at the largest width (d={widest}): gap "
        f"{100 * gaps[widest]:+.1f}%, {'met' if gaps[widest] <= 0.10 else 'NOT met'}. The gap narrows as "
        f"width grows: {'yes' if narrows else 'no'} ({gap_list}). Linear weights ≥ 8× smaller than fp16: "
        f"{size_goal} (2-bit codes are exactly 8× smaller than fp16 and each matrix adds a 4-byte fp32 scale "
        f"per fused part, so 2-bit packing stays just under 8×). Not counted there: the "
        f"SubLN gains BitNet adds "
        f"({bit[widest]['subln_bytes']:,} fp32 bytes at d={widest}), which the FP model does not have.\n\n"
        f"{reading(rows, kernels, narrows)}\n\n"
        f"Decode: greedy with the KV cache, {args.new_tokens} new tokens after a 16-token prompt, median of "
        f"{args.repeats} interleaved runs (seed-{args.seeds[0]} models).\n\n"
        f"## Packed layer vs fp32 nn.Linear at decoder shapes\n\n{kernel_table}\n\n"
        f"Medians of {args.repeats + 2} interleaved medians of 30 calls each. 'packed layer' includes the "
        f"SubLN norm and the int8 activation quantization, which an fp32 layer does not do; 'int8 matmul' is "
        f"`torch._int_mm` alone on weights unpacked once (the cached int8 copy: 1 byte/weight in memory, "
        f"2 bits on disk); 'unpack each call' keeps only the 2-bit weights resident.\n\n"
        f"![perplexity vs width](bitnet.png)\n\n"
        f"{ablation_section(data.get('ablations', []))}"
        f"## Learning-rate selection (validation perplexity, seed {args.seeds[0]}; bold = chosen)\n\n"
        f"{lr_table(data['lr_trials'])}\n\n"
        f"Load average (1/5/15 min): {'/'.join(f'{x:.1f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.1f}' for x in load_end)} at the end (this benchmark's own threads count too; more "
        f"than about 2 means other processes shared the 2 cores and absolute times are noisy). "
        f"Total {data['total_s']:.0f} s."
        + "".join(
            f" Widths {part['widths']}: `{part['command']}` at commit `{part['commit']}` ({part['total_s']:.0f} s)."
            for part in data.get("parts", [])
        )
    )
    return write_results("bitnet", data, table, notes)


def edge_note(trials: list[dict[str, Any]]) -> str:
    """Say where the chosen rate is the grid's smallest or largest: the optimum may lie beyond it."""
    edges = []
    for kind in ("fp", "bitnet"):
        for width in sorted({t["width"] for t in trials}):
            tried = [t for t in trials if t["kind"] == kind and t["width"] == width]
            if len(tried) < 2:  # a single rate (or none) has no edge to speak of
                continue
            grid = sorted(t["lr"] for t in tried)
            best = min(tried, key=lambda t: t["val_ppl"])["lr"]
            if best in (grid[0], grid[-1]):
                edges.append(f"{'FP' if kind == 'fp' else 'b1.58'} d={width} ({best:g})")
    return (
        f" (chosen at the edge of its grid, so a rate beyond it might do better: {', '.join(edges)})"
        if edges
        else " (every chosen rate lies inside its grid)"
    )


ABLATIONS = {  # name → recipe overrides, each run once on the first seed at the b1.58 rate chosen above
    "cosine schedule (no stage two)": ("train.schedule=cosine",),
    "16-to-1.58-bit: 16 bits for the first half": ("bitnet.quant_start=0.5",),
    "16-to-1.58-bit + cosine schedule": ("bitnet.quant_start=0.5", "train.schedule=cosine"),
}


def run_ablations(runs: list[dict[str, Any]], args: argparse.Namespace, tokenizer: Path | None) -> list[dict]:
    """Variants of the b1.58 recipe at one width: which part of the recipe the gap depends on."""
    width, seed = args.ablation_width, args.seeds[0]
    first = {r["kind"]: r for r in runs if r["width"] == width and r["seed"] == seed}
    if not width or len(first) < 2:
        return []
    out = [
        {
            "variant": "the recipe (two-stage schedule, ternary from step 0)",
            "overrides": [],
            "lr": first["bitnet"]["lr"],
            "val_ppl": first["bitnet"]["val_ppl"],
            "packed_equals_training": first["bitnet"]["packed_equals_training"],
        }
    ]
    for i, (name, extra) in enumerate(ABLATIONS.items()):
        row = train_one("bitnet", width, seed, first["bitnet"]["lr"], args, tokenizer, f"ablation{i}", extra)
        out.append(
            {
                "variant": name,
                "overrides": list(extra),
                "lr": row["lr"],
                "val_ppl": row["val_ppl"],
                "packed_equals_training": row["packed_equals_training"],
            }
        )
        print(f"ablation d={width} {name}: val ppl {row['val_ppl']:.2f}", flush=True)
    for row in out:
        row.update(width=width, seed=seed, fp_ppl=first["fp"]["val_ppl"])
    return out


def ablation_section(ablations: list[dict[str, Any]]) -> str:
    if not ablations:
        return ""
    a = ablations[0]
    table = markdown_table(
        ["b1.58 variant", "overrides", "val ppl", f"gap to FP ({a['fp_ppl']:.1f})", "packed = training"],
        [
            [
                r["variant"],
                " ".join(r["overrides"]) or "-",
                f"{r['val_ppl']:.1f}",
                f"{100 * (r['val_ppl'] / r['fp_ppl'] - 1):+.1f}%",
                "yes" if r["packed_equals_training"] else "NO",
            ]
            for r in ablations
        ],
    )
    return (
        f"## Recipe ablations (d={a['width']}, seed {a['seed']}, b1.58 lr {a['lr']:g})\n\n{table}\n\n"
        "Every variant ends as the same kind of model (ternary weights, int8 activations), so its packed "
        "export is as small; only how it was trained differs.\n\n"
    )


SAME_BUDGET = (
    "steps",
    "batch_size",
    "seq_len",
    "warmup",
    "train_bytes",
    "val_bytes",
    "eval_batches",
    "layers",
    "seeds",
)


def tokenizer_digest(directory: Path) -> str:
    return hashlib.sha256((directory / "tokenizer.json").read_bytes()).hexdigest()


def load_previous(args: argparse.Namespace) -> dict[str, Any]:
    """bitnet.json of an earlier run that this run adds widths to; it must share the token budget."""
    path = RESULTS / "bitnet.json"
    if not path.exists():
        raise SystemExit(f"--extend: no {path} to extend")
    previous = json.loads(path.read_text())
    differ = [k for k in SAME_BUDGET if previous["config"].get(k) != getattr(args, k)]
    if differ:
        pairs = ", ".join(f"{k} {previous['config'].get(k)} vs {getattr(args, k)}" for k in differ)
        raise SystemExit(f"--extend: settings differ from bitnet.json's run, so the budgets would differ: {pairs}")
    if "tokenizer_sha256" not in previous:
        raise SystemExit("--extend: bitnet.json does not record its tokenizer; re-run all widths instead")
    return previous


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The earlier run's widths that this run did not redo, plus this run's; `parts` says which run measured
    which widths (commit, command, seconds)."""
    widths = set(new["config"]["widths"])
    kernel_widths = {k["width"] for k in new["kernels"]}
    parts = previous.get("parts") or [
        {
            "widths": previous["config"]["widths"],
            "commit": previous.get("commit"),
            "command": previous.get("command"),
            "total_s": previous["total_s"],
        }
    ]
    parts = [{**part, "widths": [w for w in part["widths"] if w not in widths]} for part in parts]
    parts = [part for part in parts if part["widths"]]
    parts.append(
        {
            "widths": new["config"]["widths"],
            "commit": commit(),
            "command": " ".join(sys.argv),
            "total_s": new["total_s"],
        }
    )
    grids = {}
    for kind in ("fp", "bitnet"):
        merged = {
            **width_grids(argparse.Namespace(**previous["config"]), kind),
            **width_grids(argparse.Namespace(**new["config"]), kind),
        }
        grids[f"lr_grid_{kind}"] = [f"{w}={','.join(map(str, g))}" for w, g in sorted(merged.items())]
    all_widths = sorted(widths | set(previous["config"]["widths"]))
    return {
        **new,
        "config": {**new["config"], **grids, "widths": all_widths},
        "runs": [r for r in previous["runs"] if r["width"] not in widths] + new["runs"],
        "lr_trials": [t for t in previous["lr_trials"] if t["width"] not in widths] + new["lr_trials"],
        "kernels": [k for k in previous["kernels"] if k["width"] not in kernel_widths] + new["kernels"],
        "ablations": new["ablations"] or previous.get("ablations", []),
        "parts": parts,
        "total_s": sum(part["total_s"] for part in parts),
    }


def width_grids(args: argparse.Namespace, kind: str) -> dict[int, list[float]]:
    """`--lr-grid-fp 512=0.0005,0.001` → {512: [0.0005, 0.001]}: per-width grids of one kind."""
    grids = {}
    for item in getattr(args, f"lr_grid_{kind}", []):  # absent from runs made before the option
        width, _, lrs = item.partition("=")
        try:
            grids[int(width)] = [float(x) for x in lrs.split(",")]
        except ValueError:
            raise SystemExit(f"--lr-grid-{kind} expects WIDTH=LR,LR,..., got {item!r}") from None
    return grids


def grid_note(args: argparse.Namespace) -> str:
    notes = []
    for kind, name in (("fp", "FP"), ("bitnet", "b1.58")):
        grids = {w: g for w, g in width_grids(args, kind).items() if w in args.widths}
        notes += [f"at d={w} {name} from {g}" for w, g in sorted(grids.items())]
    return "".join(f"; {n}" for n in notes)


def lr_table(trials: list[dict[str, Any]]) -> str:
    widths = sorted({t["width"] for t in trials})
    lrs = {k: sorted({t["lr"] for t in trials if t["kind"] == k}) for k in ("fp", "bitnet")}
    ppl = {(t["kind"], t["width"], t["lr"]): t["val_ppl"] for t in trials}
    header = ["d_model"] + [f"{'FP' if k == 'fp' else 'b1.58'} lr {lr:g}" for k in lrs for lr in lrs[k]]
    rows = []
    for w in widths:
        cells = []
        for k in lrs:
            here = [lr for lr in lrs[k] if (k, w, lr) in ppl]
            best = min(here, key=lambda lr, k=k: ppl[k, w, lr])
            cells += [
                ("-" if lr not in here else f"**{ppl[k, w, lr]:.1f}**" if lr == best else f"{ppl[k, w, lr]:.1f}")
                for lr in lrs[k]
            ]
        rows.append([w, *cells])
    return markdown_table(header, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--lrs-fp", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3, 8e-3])
    p.add_argument("--lrs-bitnet", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3, 8e-3])
    p.add_argument(
        "--lr-grid-fp",
        nargs="*",
        default=["512=0.0005,0.001,0.002"],
        metavar="WIDTH=LR,LR",
        help="FP grid at one width instead of --lrs-fp (wider models want lower rates, and each "
        "d=512 run costs minutes)",
    )
    p.add_argument(
        "--lr-grid-bitnet",
        nargs="*",
        default=["512=0.001,0.002,0.004"],
        metavar="WIDTH=LR,LR",
        help="b1.58 grid at one width instead of --lrs-bitnet",
    )
    p.add_argument(
        "--ablation-width", type=int, default=256, help="width of the one-seed b1.58 recipe ablations (0: none)"
    )
    p.add_argument("--train-bytes", type=int, default=6_000_000)
    p.add_argument("--val-bytes", type=int, default=400_000)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--kernel-widths",
        type=int,
        nargs="*",
        default=[576],
        help="extra decoder widths for the layer timings (576 = SmolLM2-135M's width)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny widths and budget, one lr")
    p.add_argument("--render", action="store_true", help="only rewrite the page and plot from bitnet.json")
    p.add_argument(
        "--extend",
        action="store_true",
        help="add these widths to the runs in bitnet.json (same budget, seeds and tokenizer), e.g. "
        "one wider model per session",
    )
    args = p.parse_args()
    if args.render:  # the page states the command of the run that measured the data
        data = json.loads((RESULTS / "bitnet.json").read_text())
        sys.argv = [sys.argv[0], *data.get("argv", [])]
        print(f"wrote {render(data)}")
        return
    if args.quick:
        args.widths, args.seeds, args.steps, args.train_bytes = [16, 32], [0], 20, 300_000
        args.eval_batches, args.repeats, args.warmup, args.lrs_fp, args.lrs_bitnet = 2, 1, 4, [2e-3], [2e-3]
        args.kernel_widths, args.lr_grid_fp, args.lr_grid_bitnet, args.ablation_width = [], [], [], 0
    previous = load_previous(args) if args.extend else None
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    runs, trials, tokenizer = [], [], None
    if previous and Path(previous.get("tokenizer_dir", "")).is_dir():
        tokenizer = Path(previous["tokenizer_dir"])
    for width in args.widths:
        for kind in ("fp", "bitnet"):
            lrs = width_grids(args, kind).get(width, args.lrs_fp if kind == "fp" else args.lrs_bitnet)
            # each kind at its best learning rate for this width: pick it on the first seed, then add seeds
            tried = []
            for lr in lrs:
                tried.append(train_one(kind, width, args.seeds[0], lr, args, tokenizer))
                tokenizer = tokenizer or Path(tried[-1]["run_dir"]) / "tokenizer"
                if previous and tokenizer_digest(tokenizer) != previous["tokenizer_sha256"]:
                    raise SystemExit("--extend: this run's tokenizer differs from bitnet.json's")
                print(
                    f"{kind:6s} d={width:4d} lr {lr:g}: val ppl {tried[-1]['val_ppl']:.2f} "
                    f"({tried[-1]['train_s']:.0f}s)",
                    flush=True,
                )
            best = min(tried, key=lambda r: r["val_loss"])
            trials += [{k: r[k] for k in ("kind", "width", "lr", "val_ppl")} for r in tried]
            runs.append(best)
            for seed in args.seeds[1:]:
                runs.append(train_one(kind, width, seed, best["lr"], args, tokenizer))
                print(
                    f"{kind:6s} d={width:4d} lr {best['lr']:g} seed {seed}: val ppl {runs[-1]['val_ppl']:.2f}",
                    flush=True,
                )
    ablations = run_ablations(runs, args, tokenizer)
    prompt = runs[0]["prompt"]
    for r in runs:
        r.pop("prompt")
    if args.new_tokens:
        for width in args.widths:
            first = {r["kind"]: Path(r["run_dir"]) for r in runs if r["width"] == width and r["seed"] == args.seeds[0]}
            decode = decode_speed(first["fp"], first["bitnet"], prompt, args)
            for row in runs:
                if row["width"] == width:
                    row["decode"] = decode
            print(f"d={width}: decode tok/s {decode}", flush=True)
    kernels = [row for w in (max(args.widths), *args.kernel_widths) for row in kernel_speed(w, args)]
    skip = ("quick", "render", "extend")
    data = {
        "config": {k: v for k, v in vars(args).items() if k not in skip},
        "runs": runs,
        "lr_trials": trials,
        "kernels": kernels,
        "ablations": ablations,
        "total_s": time.perf_counter() - t0,
        "argv": sys.argv[1:],
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "tokenizer_dir": str(tokenizer),
        "tokenizer_sha256": tokenizer_digest(tokenizer),
    }
    if previous:
        data = merge_results(previous, data)
    print(f"wrote {render(data)} and {RESULTS / 'bitnet.png'}")


if __name__ == "__main__":
    main()
