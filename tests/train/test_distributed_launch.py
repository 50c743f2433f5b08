"""Launch and failure with real processes: ranks started the way torchrun starts them; one rank SIGKILLed
mid-run makes the survivor exit non-zero within a minute (no endless hang); `lmstack train --nproc 2` (which
runs torchrun) resumes the run from its last checkpoint exactly."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lmstack.train.metrics import read_metrics
from lmstack.weights.checkpoint import list_checkpoints, verify_checkpoint
from lmstack.weights.dcp import is_dcp_checkpoint
from testutil import write_tiny_gpt_recipe

WORKER = Path(__file__).with_name("distributed_worker.py")


def write_recipe(tmp_path: Path, corpus: Path) -> Path:
    return write_tiny_gpt_recipe(
        tmp_path, corpus, "dist", steps=10, warmup_steps=2, eval_every=0, strategy="zero3", dist_timeout_s=300
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_killed_rank_ends_the_job_and_torchrun_resumes_it(text_corpus, tmp_path):
    recipe = write_recipe(tmp_path, text_corpus)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "recipe", "1:6", str(recipe), f"out_dir={out}"],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        out1, _ = procs[1].communicate(timeout=300)
        died = time.monotonic()
        assert procs[1].returncode == -signal.SIGKILL, out1
        out0, _ = procs[0].communicate(timeout=120)
        waited = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode not in (0, None), out0
    assert waited < 60, f"the surviving rank took {waited:.0f} s to exit"
    assert [int(p.name.split("-")[1]) for p in list_checkpoints(out)] == [4]
    assert is_dcp_checkpoint(out / "step-00000004")
    before = step_losses(out)
    assert sorted(before) == [1, 2, 3, 4, 5, 6]  # rank 1 died as step 7 began

    resumed = subprocess.run(
        [sys.executable, "-m", "lmstack", "train", str(recipe), f"out_dir={out}", "--nproc", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout
    after = step_losses(out)
    assert sorted(after) == list(range(1, 11))
    # steps 5 and 6 ran twice, before the kill and after the restart: exactly the same losses
    assert [after[s] for s in (5, 6)] == [before[s] for s in (5, 6)]
    assert verify_checkpoint(out / "step-00000010") is None
    assert after[10] < after[1]


def test_nproc_must_be_a_positive_number(tmp_path, capsys):
    from lmstack.cli import main

    assert main(["train", str(tmp_path / "r.yaml"), "train.steps=2", "--nproc", "zero"]) == 2
    assert "--nproc must be a positive number" in capsys.readouterr().err
