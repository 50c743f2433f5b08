"""The loop's two seams: callbacks act on every step, and a state filter decides what checkpoints hold."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmstack.errors import CheckpointError
from lmstack.train.callbacks import Callback
from lmstack.train.loop import TrainConfig, TrainingJob, train
from lmstack.train.metrics import read_metrics
from lmstack.weights.checkpoint import is_filtered_checkpoint, load_weights
from lmstack.weights.load import load_model_for_inference
from testutil import toy_lm_job

quiet = lambda m: None  # noqa: E731


toy_job = toy_lm_job


def config(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=0, log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


class Recorder(Callback):
    """Logs the order of hooks and, before the update, scales every gradient (so it changes the training)."""

    def __init__(self, grad_scale: float = 1.0) -> None:
        self.events, self.grad_scale = [], grad_scale

    def on_train_start(self, state):
        self.events.append(("start", state.start_step))
        self.state = state

    def on_step_start(self, step):
        self.events.append(("step", step))

    def on_before_optimizer_step(self, step):
        self.events.append(("grads", step))
        for p in self.state.model.parameters():
            if p.grad is not None:
                p.grad.mul_(self.grad_scale)

    def on_optimizer_step(self, step):
        self.events.append(("updated", step))

    def on_step_end(self, step, loss):
        self.events.append(("end", step))
        self.state.log_record({"step": step + 1, "seen_loss": loss})


def test_callbacks_run_in_order_and_change_what_the_loop_does(tmp_path):
    rec = Recorder()
    job = toy_job()
    job.callbacks.append(rec)
    train(job, config(), tmp_path / "a", log=quiet)
    assert rec.events[0] == ("start", 0)
    assert rec.events[1:6] == [("step", 0), ("grads", 0), ("updated", 0), ("end", 0), ("step", 1)]
    assert len(rec.events) == 1 + 4 * 4
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert {r["step"]: r["seen_loss"] for r in records if "seen_loss" in r} == pytest.approx(losses, abs=1e-6)
    # zeroing the gradients before every update (AdamW with zero gradients and no decay: no change) freezes it
    frozen = toy_job()
    before = {k: v.clone() for k, v in frozen.model.state_dict().items()}
    frozen.callbacks.append(Recorder(grad_scale=0.0))
    train(frozen, config(weight_decay=0.0), tmp_path / "b", log=quiet)
    assert all(torch.equal(before[k], v) for k, v in frozen.model.state_dict().items())
    assert not torch.equal(before["lm_head.weight"], job.model.state_dict()["lm_head.weight"])


def only_norms(name: str) -> bool:
    return "norm" in name


def filtered_job() -> TrainingJob:
    job = toy_job()
    for name, p in job.model.named_parameters():
        p.requires_grad_(only_norms(name))  # as an adapter would: train a few tensors, keep the rest frozen
    job.state_filter = only_norms
    return job


def test_a_state_filter_saves_only_what_it_keeps_and_resume_loads_it_back(tmp_path):
    job = filtered_job()
    train(job, config(steps=4, save_every=2), tmp_path, log=quiet)
    ckpt = tmp_path / "step-00000002"
    saved = load_file(ckpt / "model.safetensors")
    assert saved and all(only_norms(k) for k in saved)
    assert set(saved) == {k for k in job.model.state_dict() if only_norms(k)}
    assert is_filtered_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="only some of the model's weights"):
        load_model_for_inference(ckpt)
    fresh = toy_job().model
    load_weights(fresh, ckpt, state_filter=only_norms)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(toy_job().model, ckpt)  # without the filter the checkpoint is incomplete, and says so

    # resume from step 2 (as after a crash): a fresh model with the same frozen base gets the trained tensors
    # and optimizer state back and ends exactly where the uninterrupted run ended
    shutil.rmtree(tmp_path / "step-00000004")
    resumed = filtered_job()
    summary = train(resumed, config(steps=4, save_every=2), tmp_path, log=quiet)
    assert summary["step"] == 4
    assert all(torch.equal(job.model.state_dict()[k], v) for k, v in resumed.model.state_dict().items())

    # the same run without a filter saves everything
    whole = toy_job()
    train(whole, config(steps=1), tmp_path / "whole", log=quiet)
    assert not is_filtered_checkpoint(tmp_path / "whole" / "step-00000001")
    assert len(load_file(tmp_path / "whole" / "step-00000001" / "model.safetensors")) > len(saved)
