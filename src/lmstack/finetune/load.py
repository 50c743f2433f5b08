"""Load a fine-tuned model for inference: a `kind: finetune` run or checkpoint (full weights, or a LoRA
adapter put back on its base), or any `load_pretrained` spec with peft-layout adapters on top.

The weights layer cannot do this itself (adapters live one layer up, in `finetune/`), so the commands
that take a model (`generate`, `chat`, `pal`, `export --merge-lora`) load through here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from lmstack.errors import CheckpointError
from lmstack.finetune.lora import unload_lora
from lmstack.finetune.lora_peft import load_adapter
from lmstack.finetune.prompt_tuning import load_prompt
from lmstack.finetune.recipe import ADAPTER_DIR, FINETUNE_FILE, PROMPT_DIR
from lmstack.tokenizer import Tokenizer
from lmstack.weights.checkpoint import resolve_checkpoint
from lmstack.weights.load import load_model_for_inference, load_pretrained

ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"  # the adapters that ship in the package
# short name → directory under ADAPTERS (README: recipe)
SHIPPED = {"pal": "smollm2-pal", "rag": "smollm2-rag", "react": "smollm2-react"}  # name → directory (+ README)


def shipped_adapter(name: str) -> Path:
    """The directory of a LoRA adapter that ships with lmstack (e.g. `pal`, for SmolLM2-135M-Instruct)."""
    if name not in SHIPPED:
        raise CheckpointError(f"no shipped adapter named {name!r}; shipped: {', '.join(SHIPPED)}")
    path = ADAPTERS / SHIPPED[name]
    if not (path / "adapter_config.json").is_file():
        raise CheckpointError(f"the shipped adapter {name!r} is missing from {path} (a broken install?)")
    return path


def resolve_adapter(choice: str | None, model: str, shipped: str) -> Path | None:
    """The adapter a command puts on `model`: `auto` (or None) = the shipped adapter `shipped` when the model is
    the default SmolLM2 and nothing otherwise, `none` = nothing, a shipped name, or a peft adapter directory."""
    from lmstack.weights.load import SMOLLM_NAMES

    choice = choice or "auto"
    if choice == "none" or (choice == "auto" and str(model).lower() not in SMOLLM_NAMES):
        return None
    if choice == "auto":
        return shipped_adapter(shipped)
    return shipped_adapter(choice) if choice in SHIPPED else Path(choice)


def adapter_llm(shipped: str):
    """A loader `(model spec, adapter choice[, weight mode]) -> (LocalLLM, adapter path or None)` for the commands
    of the augment layer (`rag ask`, `agent`), which cannot import this layer: the adapter (see
    `resolve_adapter`) is merged into the weights, so the engine decodes a plain model (in `mode`: fp32, int8…)."""

    def load(spec: str, choice: str | None = None, mode: str = "fp32"):
        from lmstack.augment.llm import LocalLLM
        from lmstack.generate.engine import Engine
        from lmstack.models.decoder import DecoderLM

        adapter = resolve_adapter(choice, spec, shipped)
        model, tok = load_finetuned(spec, {shipped: adapter} if adapter else {}, merge=True)
        if not isinstance(model, DecoderLM) or tok is None:
            raise CheckpointError(f"{spec} is not a decoder with a tokenizer; an LLM needs both")
        name = f"{spec}:{shipped}" if adapter else str(spec)
        return LocalLLM(Engine(model, tok, mode=mode), name), adapter

    return load


def finetune_checkpoint(spec: str | os.PathLike) -> Path | None:
    """The checkpoint of a fine-tuning run or checkpoint directory `spec` (None when it is not one)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return None
    try:
        ckpt = resolve_checkpoint(path)
    except CheckpointError:
        return None
    return ckpt if (ckpt / FINETUNE_FILE).is_file() else None


def load_finetuned(
    spec: str | os.PathLike,
    adapters: dict[str, str | os.PathLike] | None = None,
    merge: bool = False,
) -> tuple[nn.Module, Tokenizer | None]:
    """(model in eval mode, tokenizer). `spec`: a fine-tuning run/checkpoint or any `load_pretrained` spec.
    `adapters` (name → peft directory) are loaded on top; the last one is active. `merge` folds the active
    adapter into the base weights and removes the adapter layers: a plain model for export and for the
    engine's fast (packed, compiled) modes."""
    ckpt = finetune_checkpoint(spec)
    if ckpt is None:
        model, tok = load_pretrained(spec)
    else:
        try:
            info = json.loads((ckpt / FINETUNE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{ckpt / FINETUNE_FILE} is unreadable: {exc}") from exc
        if info.get("method") in ("lora", "prompt_tuning"):
            model, tok = load_pretrained(info["base"])
            if info["method"] == "lora":
                load_adapter(model, ckpt / ADAPTER_DIR, name="default", base_name=info["base"])
            else:  # a PromptTuned wrapper: generate with prompt_tuning.generate_with_prompt
                model = load_prompt(model, ckpt / PROMPT_DIR, base_name=info["base"])
            tok = Tokenizer.load(ckpt) if (ckpt / "tokenizer.json").is_file() else tok
        else:
            model, tok = load_model_for_inference(ckpt)
    for name, directory in (adapters or {}).items():
        load_adapter(model, directory, name=name)
    if merge:
        unload_lora(model, merge=True)
    return model.eval(), tok
