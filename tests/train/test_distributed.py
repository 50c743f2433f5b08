"""Every data-parallel strategy in the one training loop, on 2 real gloo processes (CPU, fp32, a tiny decoder),
against single-process training with the same global batch; DCP checkpoints resharded N=2 → N=1 and across
strategies; per-rank memory against the ZeRO formulas; meta-device initialisation; gradient sync."""

import contextlib
import copy
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmstack.errors import ConfigError
from lmstack.process_group import DistContext
from lmstack.train.callbacks import Callback
from lmstack.train.distributed import local_grad_accum, materialize_meta, prepare_model, resolve_strategy
from lmstack.train.loop import TrainConfig, train
from lmstack.train.memory import zero_model_state_bytes
from lmstack.train.metrics import read_metrics
from lmstack.weights.checkpoint import verify_checkpoint
from lmstack.weights.dcp import is_dcp_checkpoint, load_dcp_weights
from lmstack.weights.export import export_safetensors
from lmstack.weights.load import load_model_for_inference
from testutil import tiny_text_overrides

WORKER = Path(__file__).with_name("distributed_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
dw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dw)
quiet = lambda m: None  # noqa: E731

# Logged losses: where the weights differ by more than float32 rounding (the key bias) the exact loss does not depend
# on them, so the losses agree to rounding: a pairwise mean of 128 token losses is within log2(128)·2^-24 relative
# (≤ 3e-6 at loss ≤ 5) on each side, + 1e-6 for the log's 6-decimal rounding
LOSS_ATOL = 1e-5
# Each run's gradient is within its own float32 rounding error of the exact one; another summation order (strategy,
# kernel, thread count, CPU) is allowed to round up to 9× worse than the reference's measured error
NOISE_FACTOR = 10
UNIT_ROUNDOFF = 2.0**-24  # float32


def column(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def losses(run_dir: Path) -> dict[int, float]:
    return column(run_dir, "loss")


def val_losses(run_dir: Path) -> dict[int, float]:
    return column(run_dir, "val_loss")


@contextlib.contextmanager
def rank_threads():
    """In-process runs compared with the ranks use a rank's thread count (a kernel may split a sum by thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(dw.RANK_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class GradientNoise(Callback):
    """At every step of the reference run: the gradient AdamW is given (after clipping), and `deltas`, how far
    another run's gradient may be from it: NOISE_FACTOR × (its float32 rounding error, measured against the same
    gradient in float64 at the same weights, + one ulp)."""

    def __init__(self, job):
        self.job, self.grads, self.deltas, self.norm_deltas = job, [], [], []

    def on_train_start(self, state):
        self.model = state.model

    def on_before_optimizer_step(self, step):
        exact = copy.deepcopy(self.model).double()
        self.job.loss_fn(exact, self.job.train_batch(step)).backward()  # the whole batch's mean in one go
        measured = {n: p.grad.double() for n, p in self.model.named_parameters()}  # float32, before clipping
        self.unclipped = measured
        self.pending = {
            n: NOISE_FACTOR * ((p.grad - measured[n]).abs() + UNIT_ROUNDOFF * measured[n].abs())
            for n, p in exact.named_parameters()
        }

    def on_optimizer_step(self, step):
        clipped = {n: p.grad.double() for n, p in self.model.named_parameters()}
        norm = lambda d: math.sqrt(sum(float((t * t).sum()) for t in d.values()))  # noqa: E731
        norm_delta, unclipped_norm = norm(self.pending), norm(self.unclipped)
        scale = norm(clipped) / unclipped_norm
        # clipping scales the perturbation with the gradient, and its factor moves by ≤ ‖δ‖/‖g‖ relative
        self.deltas.append(
            {n: scale * d + clipped[n].abs() * norm_delta / unclipped_norm for n, d in self.pending.items()}
        )
        self.norm_deltas.append(norm_delta)  # | ‖g‖ − ‖g′‖ | ≤ ‖g − g′‖
        self.grads.append(clipped)


def adam_step_bound(t: int, beta1: float, beta2: float) -> float:
    """max |m̂/√v̂| at step t: Cauchy–Schwarz over the moments' weights (≤ 1.04 at betas 0.9, 0.95)."""
    m_weights = [(1 - beta1) * beta1**k / (1 - beta1**t) for k in range(t)]  # of g_{t-k} in m̂_t
    v_weights = [(1 - beta2) * beta2**k / (1 - beta2**t) for k in range(t)]  # of g_{t-k}² in v̂_t
    return math.sqrt(sum(m * m / v for m, v in zip(m_weights, v_weights)))


def adam_divergence_bound(
    noise: GradientNoise, lrs: list[float], cfg: TrainConfig, final: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per parameter element, how far apart two AdamW runs can end when their gradients differ by at most
    `noise.deltas` at every step.

    Adam's step u = m̂/(√v̂+ε) has |u| ≤ A_t (`adam_step_bound`). Gradients apart by ≤ δ_s move m̂ by ≤ m̂[δ] and √v̂
    by ≤ √v̂[δ] (the same averages of δ; triangle inequality), so |u − u′| ≤ (m̂[δ] + A_t·√v̂[δ]) / (√v̂ + ε), and
    never more than 2·A_t: where the gradient is rounding noise (the attention key bias, whose exact gradient is 0)
    that cap, 2·A_t·lr_t a step, is the bound. The weights move apart by ≤ Σ_t lr_t·|u − u′| (decoupled weight
    decay only shrinks a gap), plus per step and side one rounding of the decay and of the update (½ ulp each) and
    a few roundings inside the step (≤ 4·2^-24 of it)."""
    b1, b2, eps = cfg.beta1, cfg.beta2, cfg.eps
    steps = [adam_step_bound(t, b1, b2) for t in range(1, len(lrs) + 1)]
    travel = sum(lr * a for lr, a in zip(lrs, steps))  # the most a weight can move in the run
    bound = {}
    for name, weight in final.items():
        v = m_delta = v_delta = gap = torch.zeros_like(noise.grads[0][name])
        for t, (lr, a) in enumerate(zip(lrs, steps), start=1):
            g, delta = noise.grads[t - 1][name], noise.deltas[t - 1][name]
            v = b2 * v + (1 - b2) * g * g
            m_delta = b1 * m_delta + (1 - b1) * delta
            v_delta = b2 * v_delta + (1 - b2) * delta * delta
            c1, c2 = 1 - b1**t, 1 - b2**t
            step_gap = (m_delta / c1 + a * (v_delta / c2).sqrt()) / ((v / c2).sqrt() + eps)
            gap = gap + lr * step_gap.clamp(max=2 * a)
        largest = (weight.abs() + travel).float()
        ulp = (torch.nextafter(largest, torch.tensor(math.inf)) - largest).double()
        bound[name] = gap + 2 * len(lrs) * ulp + 8 * UNIT_ROUNDOFF * travel
    return bound


def memory(run_dir: Path, step: int = 2) -> dict:
    return next(r["memory"] for r in read_metrics(run_dir / "metrics.jsonl") if "memory" in r and r["step"] == step)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The single-process reference here, then one 2-rank session that runs every scenario."""
    tmp = tmp_path_factory.mktemp("dist")
    job = dw.toy_job()
    noise = GradientNoise(job)
    job.callbacks.append(noise)
    with rank_threads():
        train(job, dw.config(), tmp / "single", log=quiet)
    final = load_file(tmp / "single" / "step-00000020" / "model.safetensors")
    lrs = [column(tmp / "single", "lr")[s] for s in range(1, dw.STEPS + 1)]
    bounds = {"params": adam_divergence_bound(noise, lrs, dw.config(), final), "grad_norm": noise.norm_deltas}
    torch.save(bounds, tmp / "reference_bounds.pt")
    threads = str(dw.RANK_THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, str(WORKER), "suite", str(tmp), str(tmp / "single")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp


@pytest.mark.parametrize("name", list(dw.VARIANTS))
def test_strategy_matches_single_process(suite, name):
    ref, got = losses(suite / "single"), losses(suite / name)
    assert sorted(got) == list(range(1, dw.STEPS + 1))
    assert max(abs(got[s] - ref[s]) for s in ref) <= LOSS_ATOL
    assert got[dw.STEPS] < got[1] - 0.5  # it trained
    ref_val, got_val = val_losses(suite / "single"), val_losses(suite / name)
    assert sorted(got_val) == [0, 10, 20] and max(abs(got_val[s] - ref_val[s]) for s in ref_val) <= LOSS_ATOL
    bounds = torch.load(suite / "reference_bounds.pt")
    # clipping and Adam hide a gradient's scale (a sum for a mean trains the same); its norm shows it. Allowed:
    # the norm of the gradient noise, + 1e-6 for the 6-decimal rounding of the log
    ref_norm, got_norm = column(suite / "single", "grad_norm"), column(suite / name, "grad_norm")
    for s in ref_norm:
        assert abs(got_norm[s] - ref_norm[s]) <= bounds["grad_norm"][s - 1] + 1e-6, (s, got_norm[s], ref_norm[s])
    rank0 = torch.load(suite / name / "params_rank0.pt")
    rank1 = torch.load(suite / name / "params_rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different parameters"
    single = load_file(suite / "single" / "step-00000020" / "model.safetensors")
    for k, v in single.items():  # per element, the bound `adam_divergence_bound` derives from the gradient noise
        excess = (rank0[k].double() - v.double()).abs() - bounds["params"][k]
        i = int(excess.argmax())
        assert excess.max() <= 0, f"{k}[{i}]: {rank0[k].flatten()[i]} vs {v.flatten()[i]}, {excess.max()} past"


def test_the_parameter_bound_is_tight_except_where_the_gradient_is_noise(suite):
    """The per-element bound must not turn vacuous: it is loose only where the gradient is rounding noise."""
    bound = torch.cat([b.flatten() for b in torch.load(suite / "reference_bounds.pt")["params"].values()])
    # no looser than the old uniform 1e-4 but on ≤ 1% of the weights (measured: 66 of 22304, 64 of them key biases)
    assert (bound <= 1e-4).double().mean() >= 0.99


def test_gradients_are_reduced_on_the_last_micro_step_only(suite):
    sync = json.loads((suite / "results.json").read_text())["sync"]
    assert sync["ddp"] == {"local_accum": 2, "ranks_equal_after_1": False, "ranks_equal_after_2": True}
    # FSDP keeps the unreduced full gradient aside; the sharded gradient appears after the reduce-scatter
    assert sync["zero3"] == {"local_accum": 2, "sharded_grad_after_1": False, "sharded_grad_after_2": True}


@pytest.mark.parametrize("name", ["ddp", "zero1", "zero2", "zero3", "hsdp"])
def test_per_rank_model_state_bytes_match_the_zero_formulas(suite, name):
    m = memory(suite / name)
    n = m["n_params"]
    assert m["world_size"] == 2 and n == sum(
        t.numel() for t in load_file(suite / "single" / "step-00000020" / "model.safetensors").values()
    )
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
    with rank_threads():
        summary = train(dw.toy_job(seed=99), dw.config(), run, log=quiet)
    assert summary["step"] == dw.STEPS
    got, uninterrupted = losses(run), losses(suite / name)
    assert sorted(got) == list(range(11, dw.STEPS + 1))
    # the same weights, micro-batch shapes and thread count: the same step-11 loss up to the log's rounding
    assert abs(got[11] - uninterrupted[11]) <= 1e-6
    assert max(abs(got[s] - uninterrupted[s]) for s in got) <= LOSS_ATOL


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
    assert max(abs(got[s] - ref[s]) for s in got) <= LOSS_ATOL


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

    recipe = load_recipe(
        "recipes/pretrain_gpt_tiny.yaml",
        [
            *tiny_text_overrides(tmp_path, text_corpus),
            "model.d_model=32",
            "model.n_layers=2",
            "model.d_ff=64",
            "train.steps=8",
            "train.batch_size=8",
            "train.warmup_steps=2",
            "train.lr=1e-2",
            "train.progress=false",
            "train.meta_init=true",
            "train.log_every=1",
        ],
    )
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
    with rank_threads():
        train(dw.family_job(objective), dw.config(steps=6, save_every=0), tmp_path, log=quiet)
    ref, got = losses(tmp_path), losses(suite / objective)
    assert sorted(got) == list(range(1, 7))
    assert max(abs(got[s] - ref[s]) for s in ref) <= LOSS_ATOL
