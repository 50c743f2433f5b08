"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

import os
import tempfile
from pathlib import Path

import torch
import yaml

from lmstack.models import DecoderLM, model_config
from lmstack.train.loop import TrainingJob
from lmstack.train.objectives import causal_lm_loss

# tiny shapes shared by the unit tests (d_model ≤ 64)
TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)


def tiny_config(preset: str, **overrides):
    return model_config(preset, **{**TINY, **overrides})


def toy_lm_job(seed: int = 0) -> TrainingJob:
    """A tiny GPT on a learnable sequence task (each token determines the next), batches of 8 from 64 rows."""
    torch.manual_seed(seed)
    model = DecoderLM(tiny_config("gpt-tiny"))
    starts = torch.randint(0, 97, (64, 1), generator=torch.Generator().manual_seed(1))
    data = (starts + 3 * torch.arange(17)) % 97

    def batch(step, rows=None):
        block = data[(step * 8) % 64 : (step * 8) % 64 + 8][
            slice(rows.start, rows.stop) if rows is not None else slice(None)
        ]
        return {"input_ids": block[:, :-1], "labels": block[:, 1:]}

    return TrainingJob(model, causal_lm_loss, batch, lambda: [batch(0)])


def tiny_text_overrides(out_dir, corpus) -> list[str]:
    """Recipe overrides that train on the test corpus file with 32-token blocks and a 300-token BPE; callers add
    the model's and the loop's shape."""
    return [
        f"out_dir={out_dir}",
        "data.source=files",
        f"data.paths=[{corpus}]",
        "data.seq_len=32",
        "data.val_fraction=0.2",
        "tokenizer.vocab_size=300",
    ]


def write_tiny_gpt_recipe(directory: Path, corpus: Path, name: str, **train) -> Path:
    """A recipe file for a tiny GPT on `corpus`, with dropout 0.1 (so results depend on restored RNG state)
    and two micro-batches per step; `train` overrides the train section's defaults."""
    recipe = {
        "name": name,
        "objective": "causal_lm",
        "model": {
            "preset": "gpt-tiny",
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 64,
            "max_seq_len": 32,
            "dropout": 0.1,
        },
        "data": {"source": "files", "paths": [str(corpus)], "seq_len": 32, "val_fraction": 0.2},
        "tokenizer": {"vocab_size": 300},
        "train": {
            "batch_size": 8,
            "grad_accum": 2,
            "lr": 3e-3,
            "eval_batches": 2,
            "save_every": 4,
            "keep_checkpoints": 0,
            "log_every": 1,
            "progress": False,
            **train,
        },
    }
    path = Path(directory) / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def live_children() -> set[str]:
    """PIDs of this process's live children (all threads), from /proc."""
    out: set[str] = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            out |= set(Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return out


def sandbox_dirs() -> set[str]:
    """The sandbox's temp working directories that exist right now."""
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("lmstack-sbx-")}


# a tiny byte-level BPE's training texts (ASCII, code, accents, CJK, emoji) for the generation tests
TEXTS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "héllo wörld — naïve café, 日本語 and emoji 🤖👍🏽 too.",
]


def tiny_decoder(preset: str, vocab_size: int, scale: float = 8.0, seed: int = 0) -> DecoderLM:
    """A 2-layer decoder with sharp output distributions (scaled weights: greedy has clear winners)."""
    torch.manual_seed(seed)
    cfg = model_config(
        preset,
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2 if preset == "llama-tiny" else None,
        d_ff=96,
        max_seq_len=128,
    )
    model = DecoderLM(cfg).eval()
    with torch.no_grad():  # larger weights → confident predictions, so greedy has clear winners
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(scale)
    return model


def tiny_bpe():
    """The generation tests' tokenizer: a 330-token byte-level BPE trained on TEXTS."""
    from lmstack.tokenizer import Tokenizer

    return Tokenizer.train_bpe(TEXTS * 10, vocab_size=330, min_frequency=1)
