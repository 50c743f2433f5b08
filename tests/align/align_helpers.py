"""Shared by the `kind: align` recipe tests (imported as `align.align_helpers`; tests/ is on the path): a tiny
random-init chat model saved as a checkpoint (a `load_pretrained` spec, as a real base is), recipe files sized
to run in seconds, and what a run ends with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from augment.rag.rag_helpers import tiny_chat_llm_parts
from lmstack.config import to_dict
from lmstack.fileio import write_json
from lmstack.weights.checkpoint import latest_good_checkpoint, save_checkpoint

LORA = {"r": 4, "alpha": 8, "targets": "all-linear"}
TRAIN = {"steps": 3, "batch_size": 2, "lr": 1e-2, "warmup_steps": 1, "eval_every": 2, "save_every": 1,
         "keep_checkpoints": 0, "log_every": 1, "eval_batches": 1, "progress": False, "device": "cpu"}  # fmt: skip
RL = {"iterations": 3, "prompts_per_iteration": 4, "max_new_tokens": 12, "lr": 1e-2, "eval_every": 2, "save_every": 1,
      "keep_checkpoints": 0, "progress": False, "device": "cpu", "correct": 0.5}  # fmt: skip
PREFERENCE_PROMPTS = {"task": "preferences", "n": 8, "n_val": 3}


def save_base(directory: Path, max_seq_len: int = 384) -> Path:
    """The RAG tests' tiny llama and BPE (ChatML template) as an lmstack checkpoint."""
    model, tok = tiny_chat_llm_parts(max_seq_len)

    def extras(d: Path) -> None:
        write_json(d / "config.json", {"model": to_dict(model.cfg)})
        tok.save(d)

    return save_checkpoint(directory, 0, model, None, extras)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_recipe(directory: Path, method: str, base: Path, **sections: Any) -> Path:
    """A recipe for `method` on the tiny base that runs in seconds; `sections` override (merged) its parts."""
    recipe: dict[str, Any] = {"name": f"tiny-{method}", "method": method, "base": str(base), "lora": LORA,
                              "out_dir": str(directory / "run")}  # fmt: skip
    if method in ("reward_model", "dpo"):
        recipe |= {"data": {"task": "preferences", "n": 8, "n_val": 4, "max_len": 256}, "train": TRAIN}
    else:
        recipe |= {"prompts": PREFERENCE_PROMPTS, "reward": {"name": "oracle"}, "rl": RL}
    if method == "ppo":
        recipe["rl"] = {**RL, "samples_per_prompt": 2}
        recipe["ppo"] = {"epochs": 2}
    if method == "grpo":
        recipe["grpo"] = {"group_size": 3, "beta": 0.1}
    if method in ("rest", "rest_em"):
        online_only = ("lr", "eval_every", "save_every", "keep_checkpoints")  # rest fine-tunes with train.*
        recipe["rl"] = {
            **{k: v for k, v in RL.items() if k not in online_only},
            "iterations": 2,
            "samples_per_prompt": 3,
        }
        recipe["rest"] = {"seq_len": 200}
        recipe["train"] = {**TRAIN, "eval_every": 0}
    recipe = merge(recipe, sections)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights in a run's newest good checkpoint."""
    return load_file(str(latest_good_checkpoint(run_dir) / "model.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]
