"""Data-parallel scaling: tokens/s and per-rank memory of every strategy (single, ddp, zero1, zero2, zero3,
hsdp) at N = 1, 2, 4 ranks on CPU (gloo, fp32), through the real training loop. Per-rank model-state bytes
(parameters, gradients, Adam state, as measured by the loop's memory probe) are compared with the ZeRO
formulas as each strategy implements them, and with the paper's (they differ for zero2: FSDP2 keeps
parameters sharded at rest). The GPU section runs when CUDA is present: a 124M GPT-2-shaped decoder in bf16
on every visible GPU, reporting tokens/s, MFU and peak allocated memory per strategy.

    .venv/bin/python -m benchmarks.scaling              # CPU at N=1,2,4 (+ GPU if present); ~5 min on 2 cores
    .venv/bin/python -m benchmarks.scaling --quick      # N=1,2, fewer steps
    .venv/bin/python -m benchmarks.scaling --gpu-only   # just the GPU section
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import markdown_table, write_results

MIB = 2**20
# a small GPT-2-style decoder for CPU: ~1.1M parameters, 16 × 128 tokens per step
CPU_MODEL = dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=128)
GPU_MODEL = dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024)  # 124M
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def strategies(world: int) -> list[str]:
    names = (["single"] if world == 1 else []) + ["ddp", "zero1", "zero2", "zero3"]
    return names + (["hsdp"] if world >= 2 and world % 2 == 0 else [])


def synthetic_job(model_kw: dict[str, int], batch: int, seq: int, seed: int = 0):
    """Random tokens (throughput and memory do not depend on the text); batches are a function of the step."""
    from lmstack.models import DecoderLM, model_config
    from lmstack.train.loop import TrainingJob
    from lmstack.train.objectives import causal_lm_loss

    torch.manual_seed(seed)
    model = DecoderLM(model_config("gpt-tiny", **model_kw))

    def make(step: int, rows: range | None = None) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        block = torch.randint(0, model_kw["vocab_size"], (batch, seq + 1), generator=g)
        if rows is not None:  # this rank's rows of the global batch
            block = block[rows.start : rows.stop]
        return {"input_ids": block[:, :-1], "labels": block[:, 1:]}

    return TrainingJob(model, causal_lm_loss, make, lambda: [make(-1)])


def run_strategy(strategy: str, world: int, args: dict[str, Any], run_dir: Path, device: str) -> dict[str, Any]:
    """Train `args['steps']` steps with the loop; every rank returns the same summary row."""
    from lmstack.train.loop import TrainConfig, train
    from lmstack.train.metrics import read_metrics

    model_kw = GPU_MODEL if device == "cuda" else CPU_MODEL
    job = synthetic_job(model_kw, args["batch"], args["seq"])
    cfg = TrainConfig(
        steps=args["steps"],
        batch_size=args["batch"],
        grad_accum=args.get("grad_accum", 1),
        lr=1e-3,
        warmup_steps=2,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        progress=False,
        device=device,
        resume="never",
        strategy=strategy,
        hsdp_replicas=2 if strategy == "hsdp" else 0,
        consolidate_checkpoints=False,
        keep_checkpoints=1,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(job, cfg, run_dir, log=lambda m: None)
    peak_alloc = torch.cuda.max_memory_allocated() if device == "cuda" else None
    peaks = [peak_alloc]
    if dist.is_initialized() and world > 1:
        peaks = [None] * world
        dist.all_gather_object(peaks, peak_alloc)
    records = read_metrics(run_dir / "metrics.jsonl")
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > args["warmup"]]
    mem = next(r["memory"] for r in records if "memory" in r and r["step"] == 2)
    n = mem["n_params"]
    row = {
        "world": world,
        "strategy": strategy,
        "n_params": n,
        "tokens_per_s": statistics.median(speeds),
        "formula_at_rest": mem["formula"]["at_rest"],
        "formula_paper": mem["formula"]["paper"],
        "ranks": mem["ranks"],
        "peak_allocated": peaks,
    }
    if device == "cuda":
        c = GPU_MODEL
        flops_per_token = 6 * n + 12 * c["n_layers"] * c["d_model"] * args["seq"]  # PaLM appendix B
        row["mfu"] = row["tokens_per_s"] * flops_per_token / (world * args["peak_tflops"] * 1e12)
    return row


def _rank_main(rank: int, world: int, args: dict[str, Any], out: str, device: str) -> None:
    torch.set_num_threads(1)
    init = f"file://{Path(out).resolve() / f'pg-{device}-{world}'}"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo", init_method=init, rank=rank, world_size=world
    )
    rows = []
    for strategy in strategies(world):
        if strategy == "single":
            continue  # run without a process group, below
        rows.append(run_strategy(strategy, world, args, Path(out) / f"{device}-n{world}-{strategy}", device))
    if rank == 0:
        Path(out, f"rows-{device}-{world}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def measure(world: int, args: dict[str, Any], out: Path, device: str) -> list[dict[str, Any]]:
    rows = []
    if world == 1:  # the plain single-process path, in a child so it gets its own thread setting
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(_single, (args, str(out), device)))
    mp.spawn(_rank_main, args=(world, args, str(out), device), nprocs=world)
    return rows + json.loads(Path(out, f"rows-{device}-{world}.json").read_text())


def _single(args: dict[str, Any], out: str, device: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_strategy("single", 1, args, Path(out) / f"{device}-n1-single", device)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "N",
        "strategy",
        "tokens/s",
        "per rank",
        "model states / rank (MiB)",
        "formula (MiB)",
        "measured / formula",
        "paper (MiB)",
        "peak in step (MiB)",
    ]
    body = []
    for r in rows:
        rest = [x["at_rest"]["total"] for x in r["ranks"]]
        peak = [x["peak"]["total"] for x in r["ranks"]]
        ratio = [x / r["formula_at_rest"] for x in rest]
        body.append(
            [
                r["world"],
                r["strategy"],
                f"{r['tokens_per_s']:.0f}",
                f"{r['tokens_per_s'] / r['world']:.0f}",
                _span(rest),
                f"{r['formula_at_rest'] / MIB:.2f}",
                f"{min(ratio):.3f}–{max(ratio):.3f}" if len(ratio) > 1 else f"{ratio[0]:.3f}",
                f"{r['formula_paper'] / MIB:.2f}",
                _span(peak),
            ]
        )
    return markdown_table(header, body)


def gpu_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "N",
        "strategy",
        "tokens/s",
        "MFU",
        "peak allocated / rank (GiB)",
        "model states / rank (GiB)",
        "peak model states (GiB)",
    ]
    body = [
        [
            r["world"],
            r["strategy"],
            f"{r['tokens_per_s']:.0f}",
            f"{100 * r['mfu']:.1f}%",
            f"{max(p for p in r['peak_allocated'] if p) / 2**30:.2f}",
            f"{max(x['at_rest']['total'] for x in r['ranks']) / 2**30:.2f}",
            f"{max(x['peak']['total'] for x in r['ranks']) / 2**30:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def _span(values: list[int]) -> str:
    lo, hi = min(values) / MIB, max(values) / MIB
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=1,2 and fewer steps")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 dense peak for MFU (default: by name)")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="lmstack-scaling-"))
    data: dict[str, Any] = {}
    sections = []
    try:
        if not args.gpu_only:
            worlds = [1, 2] if args.quick else [1, 2, 4]
            cpu_args = {"steps": args.steps or (6 if args.quick else 10), "warmup": 3, "batch": 16, "seq": 128}
            rows = []
            for world in worlds:
                print(f"CPU, N={world} ...", flush=True)
                rows += measure(world, cpu_args, out, "cpu")
            data["cpu"] = {"config": {**cpu_args, "model": CPU_MODEL}, "rows": rows}
            sections.append(
                "## CPU (gloo, fp32)\n\n" + cpu_table(rows) + "\n\n"
                f"A {rows[0]['n_params'] / 1e6:.2f}M-parameter GPT-2-style decoder (d 128, 4 layers, vocab 2048), "
                f"global batch {cpu_args['batch']} × {cpu_args['seq']} tokens whatever N, fp32 AdamW, one thread per "
                f"rank; tokens/s is the median over steps {cpu_args['warmup'] + 1}–{cpu_args['steps']} (global, all "
                "ranks together). Model states = parameters + gradients + Adam state held by one rank in their "
                "resting (sharded) layout, measured at the optimizer step of step 2; the formula is ZeRO's as each "
                "strategy implements it (fp32: 4 + 4 + 8 bytes per parameter; zero1 4Ψ + 4Ψ + 8Ψ/N; zero2 and zero3 "
                "16Ψ/N; hsdp 16Ψ/(N/2)); 'paper' is the paper's ZeRO-2 (4Ψ + 12Ψ/N), which keeps full parameters at "
                "rest. 'Peak in step' is the most model-state memory seen inside the step (FSDP's gathered full "
                "parameters and unreduced gradients included), sampled at every block's entry and exit in forward "
                "and backward. The machine has 2 cores shared with other processes: N=2 fills them and N=4 "
                "oversubscribes them, so tokens/s shows communication and scheduling overhead, not scaling."
            )
        if torch.cuda.is_available():
            n_gpu = torch.cuda.device_count()
            name = torch.cuda.get_device_name(0)
            peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0)
            gpu_args = {"steps": args.steps or 20, "warmup": 5, "batch": 8 * n_gpu, "seq": 1024, "peak_tflops": peak}
            print(f"GPU, N={n_gpu} ({name}) ...", flush=True)
            rows = measure(n_gpu, gpu_args, out, "cuda")
            data["gpu"] = {"config": {**gpu_args, "model": GPU_MODEL, "device": name}, "rows": rows}
            sections.append(
                f"## GPU ({n_gpu} × {name}, bf16 autocast, nccl)\n\n" + gpu_table(rows) + "\n\n"
                f"A 124M GPT-2-shaped decoder, {gpu_args['batch']} × 1024 tokens per step; MFU = tokens/s × "
                f"(6Ψ + 12·L·d·T) / ({n_gpu} × {peak:.0f} TFLOP/s)."
            )
        else:
            sections.append("## GPU\n\nNo CUDA device on this machine: the section runs with the same command on one.")
        write_results("scaling", data, "\n\n".join(sections))
        print("\n\n".join(sections))
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
