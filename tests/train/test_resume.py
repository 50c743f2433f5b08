"""Crash and resume: a real subprocess killed with SIGKILL, then resumed, ends bitwise identical to an
uninterrupted run (model, optimizer, scheduler, RNG and data position all restored)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmstack.weights.checkpoint import checkpoint_name, list_checkpoints
from testutil import write_tiny_gpt_recipe

WORKER = Path(__file__).with_name("resume_worker.py")
STEPS = 16


def write_recipe(tmp_path: Path, corpus: Path) -> Path:
    return write_tiny_gpt_recipe(tmp_path, corpus, "resume", steps=STEPS, warmup_steps=3, eval_every=4)


def run(args: list[str], expect_kill: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = run_dir / checkpoint_name(STEPS)
    state = load_file(ckpt / "model.safetensors")
    optim = torch.load(ckpt / "trainer_state.pt", weights_only=True)["optimizer"]["state"]
    for i, s in optim.items():
        state[f"adam.{i}.exp_avg"] = s["exp_avg"]
        state[f"adam.{i}.exp_avg_sq"] = s["exp_avg_sq"]
    return state


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    corpus = tmp / "corpus"
    corpus.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    for i in range(30):
        (corpus / f"d{i}.txt").write_text(
            "\n".join(" ".join(words[(i + j * k) % 10] for k in range(9)) for j in range(25))
        )
    recipe = write_recipe(tmp, corpus)
    out = tmp / "run"
    run([str(WORKER), str(recipe), "never", f"out_dir={out}"])
    return recipe, out, final_state(out)


@pytest.mark.parametrize("kill_at", ["after:10", "saving:12"])
def test_sigkill_then_resume_is_bitwise_identical(reference, tmp_path, kill_at):
    recipe, ref_dir, ref_state = reference
    out = tmp_path / "run"
    run([str(WORKER), str(recipe), kill_at, f"out_dir={out}"], expect_kill=True)
    steps_saved = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
    assert steps_saved == [4, 8]  # killed before step 12's checkpoint was complete
    if kill_at.startswith("saving"):
        assert list(out.glob(".tmp-step-*")), "the interrupted save should have left a temp directory"
    resumed = run(["-m", "lmstack", "train", str(recipe), f"out_dir={out}"])
    assert "resumed from" in resumed.stdout and "step-00000008" in resumed.stdout
    assert not list(out.glob(".tmp-step-*"))
    assert_bitwise_equal(final_state(out), ref_state)
    # the metrics log reads as one run: every step exactly once, same losses as the reference
    ref_losses = [line for line in (ref_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    losses = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    strip = lambda lines: [{k: v for k, v in yaml.safe_load(x).items() if k in ("step", "loss")} for x in lines]  # noqa: E731
    assert strip(losses) == strip(ref_losses)


def test_corrupt_newest_checkpoint_falls_back_and_still_matches(reference, tmp_path):
    recipe, _, ref_state = reference
    out = tmp_path / "run"
    run([str(WORKER), str(recipe), "after:10", f"out_dir={out}"], expect_kill=True)
    weights = out / checkpoint_name(8) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the tensor data
    weights.write_bytes(bytes(data))
    resumed = run(["-m", "lmstack", "train", str(recipe), f"out_dir={out}"])
    assert "step-00000008" in resumed.stdout and "checksum" in resumed.stdout
    assert "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout
    assert_bitwise_equal(final_state(out), ref_state)
