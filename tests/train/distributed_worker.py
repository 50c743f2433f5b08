"""Real multi-process runs for test_distributed*.py (gloo, CPU, fp32, a tiny decoder).

usage:
  python distributed_worker.py suite OUT SINGLE_RUN   2 spawned ranks: gradient-sync checks, meta init, every
                                                      strategy for 20 steps, cross-strategy resumes
  python distributed_worker.py recipe KILL RECIPE [key=value ...]
                                                      one rank of a recipe run started with torchrun's env
                                                      variables; KILL = "RANK:STEP" makes that rank SIGKILL
                                                      itself as it starts STEP (0-based), or "none"
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for testutil

from lmstack.config import to_dict  # noqa: E402
from lmstack.fileio import write_json  # noqa: E402
from lmstack.models import DecoderLM  # noqa: E402
from lmstack.train.loop import TrainConfig, TrainingJob, train  # noqa: E402
from lmstack.train.objectives import causal_lm_loss  # noqa: E402
from testutil import tiny_config  # noqa: E402

STEPS = 20
RANK_THREADS = 1  # intra-op threads of each rank; in-process runs compared with the ranks use the same
VARIANTS = {  # run name → TrainConfig overrides
    "ddp": {"strategy": "ddp"},
    "zero1": {"strategy": "zero1"},
    "zero2": {"strategy": "zero2"},
    "zero3": {"strategy": "zero3"},
    "hsdp": {"strategy": "hsdp", "hsdp_replicas": 2},  # a (2 replicas × 1 shard) mesh at N=2
    "fsdp_ac": {"strategy": "fsdp", "activation_checkpointing": True},
}


def toy_job(seed: int = 0, meta: bool = False) -> TrainingJob:
    """A tiny decoder on a learnable sequence task (each token determines the next); batches are a pure
    function of the step."""
    from lmstack.train.distributed import meta_parameters

    torch.manual_seed(seed)
    if meta:
        with meta_parameters():
            model = DecoderLM(tiny_config("gpt-tiny"))
    else:
        model = DecoderLM(tiny_config("gpt-tiny"))
    starts = torch.randint(0, 97, (64, 1), generator=torch.Generator().manual_seed(1))
    data = (starts + 3 * torch.arange(17)) % 97

    def batch(step, rows=None):
        block = data[(step * 8) % 64 : (step * 8) % 64 + 8][
            slice(rows.start, rows.stop) if rows is not None else slice(None)
        ]
        return {"input_ids": block[:, :-1], "labels": block[:, 1:]}

    def write_extras(directory: Path) -> None:  # what export needs to rebuild the model
        write_json(directory / "config.json", {"model": to_dict(model.cfg)})

    return TrainingJob(model, causal_lm_loss, batch, lambda: [batch(0), batch(3)], write_extras)


FAMILIES = {"masked_lm": "bert-tiny", "span_corruption": "t5-tiny"}  # the other model families, under zero3


def family_job(objective: str) -> TrainingJob:
    """An encoder (masked LM: the loss calls `model.mlm_logits`) or a seq2seq model (cross-attention K/V are
    projected outside the decoder blocks) on random tokens; the objective's randomness is seeded by step."""
    from lmstack.models import build_model
    from lmstack.train.objectives import OBJECTIVES, SpecialIds, row_generators

    torch.manual_seed(0)
    model = build_model(tiny_config(FAMILIES[objective]))
    ids = SpecialIds(pad=0, eos=1, mask=2, sentinels=tuple(range(96, 86, -1)), special=(0, 1, 2), vocab_size=97)
    tokens = torch.randint(3, 87, (64, 24), generator=torch.Generator().manual_seed(2))
    obj = OBJECTIVES[objective]

    def batch(step, rows=None):
        rows = range(8) if rows is None else rows
        block = tokens[(step * 8) % 64 : (step * 8) % 64 + 8][rows.start : rows.stop]
        return obj.make_batch(block, ids, row_generators(0, step, rows))

    return TrainingJob(model, obj.loss, batch, lambda: [batch(100)])


def config(**kw) -> TrainConfig:
    base = dict(
        steps=STEPS,
        batch_size=8,
        grad_accum=2,
        lr=1e-2,
        warmup_steps=2,
        eval_every=10,
        save_every=10,
        keep_checkpoints=0,
        log_every=1,
        progress=False,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.named_parameters()}


def sync_checks(rank: int) -> dict:
    """Gradients stay local on non-last micro-steps and are reduced on the last (DDP and FSDP)."""
    from lmstack.process_group import DistContext
    from lmstack.train.distributed import prepare_model

    ctx = DistContext(rank, 2, rank, 2, torch.device("cpu"), initialized=True)
    out = {}
    for strategy in ("ddp", "zero3"):
        job = toy_job()
        cfg = config(strategy=strategy, grad_accum=4)  # 2 micro-steps per rank
        parallel = prepare_model(job.model, cfg, ctx, torch.device("cpu"), None)
        parallel.build_optimizer(cfg)
        batch = job.train_batch(0, parallel.local_rows(cfg.batch_size))
        micro = [{k: v[i * 2 : (i + 1) * 2] for k, v in batch.items()} for i in range(2)]
        param = parallel.module.layers[0].attn.o_proj.weight
        record = {"local_accum": parallel.local_accum}
        for i, m in enumerate(micro):
            with parallel.no_sync(i == 0):
                causal_lm_loss(parallel.forward_model, m).backward()
            if strategy == "ddp":
                grads = [torch.empty_like(param.grad) for _ in range(2)]
                dist.all_gather(grads, param.grad.contiguous())
                record[f"ranks_equal_after_{i + 1}"] = bool(torch.equal(grads[0], grads[1]))
            else:
                record[f"sharded_grad_after_{i + 1}"] = param.grad is not None
        out[strategy] = record
    return out


def suite_rank(rank: int, out: str, single_run: str) -> None:
    torch.set_num_threads(RANK_THREADS)
    out_dir = Path(out).resolve()
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'pg'}", rank=rank, world_size=2)
    quiet = lambda m: None  # noqa: E731
    results = {"sync": sync_checks(rank)}

    # meta-device initialisation: each rank materialises only its shards, the same values as one process
    from lmstack.process_group import DistContext
    from lmstack.train.distributed import prepare_model

    ctx = DistContext(rank, 2, rank, 2, torch.device("cpu"), initialized=True)
    job = toy_job(meta=True)
    parallel = prepare_model(job.model, config(strategy="zero3", meta_init=True), ctx, torch.device("cpu"), None)
    meta = full_params(parallel.module)
    if rank == 0:
        torch.save(meta, out_dir / "meta_params.pt")

    for name, overrides in VARIANTS.items():
        job = toy_job()
        train(job, config(**overrides), out_dir / name, log=quiet)
        torch.save(full_params(job.model), out_dir / name / f"params_rank{rank}.pt")

    for objective in FAMILIES:
        train(family_job(objective), config(strategy="zero3", steps=6, save_every=0), out_dir / objective, log=quiet)

    # resume across strategies at N=2: a zero1 checkpoint into zero3, a single-process checkpoint into zero2
    for name, strategy, source in (
        ("zero1_to_zero3", "zero3", out_dir / "zero1" / "step-00000010"),
        ("single_to_zero2", "zero2", Path(single_run) / "step-00000010"),
    ):
        job = toy_job(seed=123)  # different initial weights: everything must come from the checkpoint
        train(job, config(strategy=strategy, resume=str(source)), out_dir / name, log=quiet)
    if rank == 0:
        (out_dir / "results.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def recipe_rank(kill: str, recipe_path: str, overrides: list[str]) -> None:
    """One rank of a recipe run, as torchrun would start it (RANK, WORLD_SIZE, MASTER_ADDR/PORT set)."""
    from lmstack.process_group import barrier, setup_distributed, teardown_distributed
    from lmstack.train.recipe import build_job, load_recipe

    recipe = load_recipe(recipe_path, overrides)
    ctx = setup_distributed(recipe.train.device, recipe.train.strategy, recipe.train.dist_timeout_s)
    if ctx.is_main:
        job, _ = build_job(recipe, recipe.run_dir)
    barrier(ctx)
    if not ctx.is_main:
        job, _ = build_job(recipe, recipe.run_dir)
    if kill != "none":
        kill_rank, kill_step = (int(x) for x in kill.split(":"))
        make_batch = job.train_batch

        def dying_batch(step, rows=None):
            if ctx.rank == kill_rank and step == kill_step:
                print(f"rank {ctx.rank} pid {os.getpid()}: SIGKILL at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return make_batch(step, rows)

        job.train_batch = dying_batch
    train(job, recipe.train, recipe.run_dir, log=lambda m: print(m, flush=True))
    teardown_distributed(ctx)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "suite":
        mp.spawn(suite_rank, args=tuple(args), nprocs=2)
    elif mode == "recipe":
        recipe_rank(args[0], args[1], args[2:])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
