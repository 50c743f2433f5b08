"""Every data-parallel strategy in the one training loop, on 2 real gloo processes (CPU, fp32, a tiny decoder),
against single-process training with the same global batch; DCP checkpoints resharded N=2 → N=1 and across
strategies; per-rank memory against the ZeRO formulas; meta-device initialisation; gradient sync."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmstack.errors import ConfigError
from lmstack.train.distributed import (
    DistContext,
    local_grad_accum,
    materialize_meta,
    prepare_model,
    resolve_strategy,
    zero_model_state_bytes,
)
from lmstack.train.loop import TrainConfig, train
from lmstack.train.metrics import read_metrics
from lmstack.weights.checkpoint import load_model_for_inference, verify_checkpoint
from lmstack.weights.dcp import export_safetensors, is_dcp_checkpoint, load_dcp_weights

WORKER = Path(__file__).with_name("distributed_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
dw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dw)
quiet = lambda m: None  # noqa: E731


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r}


def memory(run_dir: Path, step: int = 2) -> dict:
    return next(r["memory"] for r in read_metrics(run_dir / "metrics.jsonl") if "memory" in r and r["step"] == step)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The single-process reference here, then one 2-rank session that runs every scenario."""
    tmp = tmp_path_factory.mktemp("dist")
    train(dw.toy_job(), dw.config(), tmp / "single", log=quiet)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), "suite", str(tmp), str(tmp / "single")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp


@pytest.mark.parametrize("name", list(dw.VARIANTS))
def test_strategy_matches_single_process(suite, name):
    ref, got = losses(suite / "single"), losses(suite / name)
    assert sorted(got) == list(range(1, dw.STEPS + 1))
    assert max(abs(got[s] - ref[s]) for s in ref) <= 1e-5
    assert got[dw.STEPS] < got[1] - 0.5  # it trained
    ref_val, got_val = val_losses(suite / "single"), val_losses(suite / name)
    assert sorted(got_val) == [0, 10, 20] and max(abs(got_val[s] - ref_val[s]) for s in ref_val) <= 1e-5
    rank0 = torch.load(suite / name / "params_rank0.pt")
    rank1 = torch.load(suite / name / "params_rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different parameters"
    single = load_file(suite / "single" / "step-00000020" / "model.safetensors")
    for k, v in single.items():
        torch.testing.assert_close(rank0[k], v, atol=1e-4, rtol=0)


def test_gradients_are_reduced_on_the_last_micro_step_only(suite):
    sync = json.loads((suite / "results.json").read_text())["sync"]
    assert sync["ddp"] == {"local_accum": 2, "ranks_equal_after_1": False, "ranks_equal_after_2": True}
    # FSDP keeps the unreduced full gradient aside; the sharded gradient appears after the reduce-scatter
    assert sync["zero3"] == {"local_accum": 2, "sharded_grad_after_1": False, "sharded_grad_after_2": True}


@pytest.mark.parametrize("name", ["ddp", "zero1", "zero2", "zero3", "hsdp"])
def test_per_rank_model_state_bytes_match_the_zero_formulas(suite, name):
    m = memory(suite / name)
    n = m["n_params"]
    assert m["world_size"] == 2 and n == sum(t.numel() for t in load_file(
        suite / "single" / "step-00000020" / "model.safetensors").values())
    replicas = 2 if name == "hsdp" else 1
    expected = zero_model_state_bytes(name, n, 2, replicas)
    assert m["formula"] == pytest.approx(expected)
    for rank in m["ranks"]:
        rest, peak = rank["at_rest"], rank["peak"]
        assert rest["total"] == pytest.approx(expected["at_rest"], rel=0.05)
        assert rest["optim"] > 0 and rest["grads"] > 0
        assert peak["total"] >= rest["total"]


def test_fsdp_zero2_rests_sharded_but_gathers_full_parameters_within_a_step(suite):
    """The paper's ZeRO-2 holds a full parameter copy at rest (10Ψ at N=2 in fp32); FSDP2's rests at 8Ψ like
    ZeRO-3 and holds the gathered full parameters (+4Ψ) from forward to the end of backward."""
    z2, z3, ddp = memory(suite / "zero2"), memory(suite / "zero3"), memory(suite / "ddp")
    n = z2["n_params"]
    for rank in z2["ranks"]:
        rest, peak = rank["at_rest"], rank["peak"]
        assert rest["total"] < 0.85 * z2["formula"]["paper"]
        assert peak["params"] >= rest["params"] + 0.95 * 4 * n
        # at the end of forward: sharded + full parameters and the Adam state (gradients not yet produced)
        assert peak["total"] >= 0.95 * (rest["params"] + rest["optim"] + 4 * n)
    for r2, r3, rd in zip(z2["ranks"], z3["ranks"], ddp["ranks"]):
        assert r3["peak"]["total"] < r2["peak"]["total"] < rd["peak"]["total"]


def test_meta_init_shards_equal_one_process_materialisation(suite):
    gathered = torch.load(suite / "meta_params.pt")
    job = dw.toy_job(meta=True)
    materialize_meta(job.model, torch.device("cpu"), seed=0)
    model = job.model
    assert set(gathered) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.equal(gathered[name], p.detach()), name
    assert torch.equal(model.layers[0].mlp_norm.weight, torch.ones(32))
    assert model.lm_head.weight is model.embed.tokens.weight
    std = model.cfg.init_std
    assert abs(float(model.embed.tokens.weight.detach().std()) - std) < 0.1 * std


@pytest.mark.parametrize("name", ["zero3", "zero1"])
def test_reshard_resume_two_ranks_to_one(suite, tmp_path, name):
    """Save at N=2, resume in one plain process: the loss continues as the uninterrupted 2-rank run."""
    ckpt = suite / name / "step-00000010"
    assert is_dcp_checkpoint(ckpt) and verify_checkpoint(ckpt) is None
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(ckpt, run / ckpt.name)
    summary = train(dw.toy_job(seed=99), dw.config(), run, log=quiet)
    assert summary["step"] == dw.STEPS
    got, uninterrupted = losses(run), losses(suite / name)
    assert sorted(got) == list(range(11, dw.STEPS + 1))
    assert abs(got[11] - uninterrupted[11]) <= 1e-6
    assert max(abs(got[s] - uninterrupted[s]) for s in got) <= 1e-5


def test_dcp_shards_and_gathered_weights_are_bit_identical(suite):
    ckpt = suite / "zero3" / "step-00000020"
    model, _ = load_model_for_inference(ckpt)  # from the gathered model.safetensors
    load_dcp_weights(model, ckpt)  # overwritten in place from the DCP shards
    gathered = load_file(ckpt / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in gathered.items())


@pytest.mark.parametrize("name, source", [("zero1_to_zero3", "zero1"), ("single_to_zero2", "single")])
def test_resume_across_strategies(suite, name, source):
    got, ref = losses(suite / name), losses(suite / "single")
    assert sorted(got) == list(range(11, dw.STEPS + 1))
    assert max(abs(got[s] - ref[s]) for s in got) <= 1e-5


def test_export_to_one_hf_safetensors_file(suite, tmp_path):
    from lmstack.weights.hf import load_hf

    out = export_safetensors(suite / "zero3", tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.distcp"))
    hf_model, _ = load_hf(out)
    ours, _ = load_model_for_inference(suite / "zero3")
    ids = torch.arange(16).reshape(1, 16) % 97
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids), ours(ids), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- configuration, in-process


def test_strategy_names_and_errors():
    assert resolve_strategy("auto", 1) == "single" and resolve_strategy("auto", 4) == "ddp"
    assert resolve_strategy("fsdp", 2) == "zero3"
    with pytest.raises(ConfigError, match="single cannot run on 2 ranks"):
        resolve_strategy("single", 2)
    with pytest.raises(ConfigError, match="train.strategy must be one of"):
        TrainConfig(strategy="zero4")
    with pytest.raises(ConfigError, match="hsdp_replicas"):
        TrainConfig(hsdp_replicas=-1)


def test_global_batch_is_kept_whatever_the_world_size():
    assert local_grad_accum(32, 4, 2) == 2  # micro-batch of 8 kept
    assert local_grad_accum(32, 1, 4) == 1  # micro-batch shrinks to 8 per rank
    assert local_grad_accum(48, 3, 2) == 3  # 3 micro-batches of 8 on each rank
    with pytest.raises(ConfigError, match="must split evenly over 4 ranks"):
        local_grad_accum(6, 1, 4)


def test_zero_formulas_as_the_paper_states_them():
    n = 1000
    mixed = dict(param_bytes=2, grad_bytes=2, optim_bytes=12)  # the paper's mixed-precision Adam
    assert zero_model_state_bytes("ddp", n, 8, **mixed)["paper"] == 16 * n
    assert zero_model_state_bytes("zero1", n, 8, **mixed)["paper"] == 4 * n + 12 * n / 8
    assert zero_model_state_bytes("zero2", n, 8, **mixed)["paper"] == 2 * n + 14 * n / 8
    assert zero_model_state_bytes("zero3", n, 8, **mixed)["paper"] == 16 * n / 8
    fp32 = zero_model_state_bytes("zero2", n, 2)
    assert (fp32["paper"], fp32["at_rest"]) == (10 * n, 8 * n)  # design §6: paper 10Ψ, FSDP2 8Ψ at rest
    assert zero_model_state_bytes("hsdp", n, 4, replicas=2)["at_rest"] == 16 * n / 2


def test_float16_with_fsdp_is_refused():
    job = dw.toy_job()
    ctx = DistContext(initialized=True)
    with pytest.raises(ConfigError, match="float16"):
        prepare_model(job.model, TrainConfig(strategy="zero3"), ctx, torch.device("cpu"), torch.float16)


def test_activation_checkpointing_keeps_gradients_and_saves_less(tmp_path):
    """Recomputing blocks in backward gives the same gradients while fewer activations are kept."""

    def grads_and_saved(ac: bool):
        job = dw.toy_job()
        prepare_model(job.model, TrainConfig(activation_checkpointing=ac), DistContext(), torch.device("cpu"), None)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = job.loss_fn(job.model, job.train_batch(0))
        loss.backward()
        return {n: p.grad.clone() for n, p in job.model.named_parameters()}, sum(saved)

    plain, plain_saved = grads_and_saved(False)
    ckpt, ckpt_saved = grads_and_saved(True)
    assert all(torch.equal(plain[k], ckpt[k]) for k in plain)
    assert ckpt_saved < 0.7 * plain_saved


def test_recipe_with_meta_init_builds_nothing_until_the_loop_materialises_it(text_corpus, tmp_path):
    from lmstack.train.recipe import build_job, load_recipe

    recipe = load_recipe("recipes/pretrain_gpt_tiny.yaml", [
        f"out_dir={tmp_path}", "data.source=files", f"data.paths=[{text_corpus}]", "data.seq_len=32",
        "data.val_fraction=0.2", "tokenizer.vocab_size=300", "model.d_model=32", "model.n_layers=2",
        "model.d_ff=64", "train.steps=8", "train.batch_size=8", "train.warmup_steps=2", "train.lr=1e-2",
        "train.progress=false", "train.meta_init=true", "train.log_every=1",
    ])
    job, _ = build_job(recipe, tmp_path, log=quiet)
    assert all(p.is_meta for p in job.model.parameters())
    assert not any(b.is_meta for b in job.model.buffers())  # position tables are real from the start
    train(job, recipe.train, tmp_path, log=quiet)
    assert not any(p.is_meta or p.isnan().any() for p in job.model.parameters())
    assert job.model.lm_head.weight is job.model.embed.tokens.weight
    got = losses(tmp_path)
    assert got[8] < got[1]


@pytest.mark.parametrize("objective", list(dw.FAMILIES))
def test_encoder_and_seq2seq_under_zero3_match_single_process(suite, tmp_path, objective):
    train(dw.family_job(objective), dw.config(steps=6, save_every=0), tmp_path, log=quiet)
    ref, got = losses(tmp_path), losses(suite / objective)
    assert sorted(got) == list(range(1, 7))
    assert max(abs(got[s] - ref[s]) for s in ref) <= 1e-5
