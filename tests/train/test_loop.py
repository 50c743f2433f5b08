import json
import math

import pytest

from lmstack.models import DecoderLM
from lmstack.train.loop import TrainConfig, train
from lmstack.train.metrics import plot_metrics, read_metrics
from lmstack.train.optim import lr_factor, param_groups
from lmstack.train.recipe import build_job, load_recipe
from testutil import tiny_config, tiny_text_overrides, toy_lm_job

toy_job = toy_lm_job


def config(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=3, log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """4 micro-batches of 2 give the loss curve of one batch of 8 (up to float summation order; Adam's
    normalisation amplifies rounding in near-zero gradients, so compare losses, not every weight)."""
    a, b = toy_job(), toy_job()
    train(a, config(grad_accum=1), tmp_path / "a", log=lambda m: None)
    train(b, config(grad_accum=4), tmp_path / "b", log=lambda m: None)
    la = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-4)
    # a real difference in batching would show: half the batch gives another curve
    c = toy_job()
    c.train_batch = lambda step, rows=None, f=c.train_batch: {k: v[:4] for k, v in f(step).items()}
    train(c, config(batch_size=4), tmp_path / "c", log=lambda m: None)
    lc = [r["loss"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl") if "loss" in r]
    assert lc[1:] != pytest.approx(la[1:], rel=1e-4)


def test_metrics_and_plot(tmp_path):
    summary = train(toy_job(), config(steps=12, eval_every=6), tmp_path, log=lambda m: None)
    records = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert [r["step"] for r in records if "val_loss" in r] == [0, 6, 12]
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(records[1])
    assert summary["step"] == 12 and summary["checkpoint"].endswith("step-00000012")
    assert losses[-1] < losses[0] - 0.5
    png = plot_metrics(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_completed_run_resumes_to_nothing(tmp_path):
    train(toy_job(), config(), tmp_path, log=lambda m: None)
    messages = []
    summary = train(toy_job(), config(), tmp_path, log=messages.append)
    assert summary["step"] == 6 and any("nothing to do" in m for m in messages)
    assert "val_loss" in summary


def test_schedule_and_groups():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 10, 100, 0.1) < 1.0
    decay, no_decay = param_groups(DecoderLM(tiny_config("gpt-tiny")), 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["pretrain_gpt_tiny", "pretrain_bert_tiny", "pretrain_t5_tiny"])
def test_recipes_lower_validation_loss_on_a_small_corpus(name, text_corpus, tmp_path):
    recipe = load_recipe(
        f"recipes/{name}.yaml",
        [
            *tiny_text_overrides(tmp_path, text_corpus),
            "model.d_model=32",
            "model.n_layers=2",
            "model.d_ff=64",
            "train.steps=30",
            "train.batch_size=8",
            "train.eval_every=10",
            "train.warmup_steps=3",
            "train.save_every=0",
            "train.progress=false",
            "train.lr=1e-2",
        ],
    )
    job, tok = build_job(recipe, tmp_path, log=lambda m: None)
    summary = train(job, recipe.train, tmp_path, log=lambda m: None)
    vals = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert len(vals) == 4 and vals[0] > vals[1] > vals[2] > vals[3]
    assert vals[-1] < math.log(300) - 1.5  # well below a uniform guess over the vocabulary
    config = json.loads((tmp_path / "step-00000030" / "config.json").read_text())
    assert config["model"]["vocab_size"] == tok.vocab_size == 300
    assert summary["step"] == 30
