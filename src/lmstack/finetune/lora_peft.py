"""LoRA adapters on disk in peft's layout: `adapter_config.json` + `adapter_model.safetensors`.

For a model with an HF layout (Llama, GPT-2, BERT; see `weights/hf.py`) the tensors carry the names peft
gives them on the `transformers` model, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`,
so `peft.PeftModel.from_pretrained(hf_model, directory)` loads what we save and we load what peft saved.
Our fused projections map onto HF's separate ones part by part (qkv_proj.q ↔ self_attn.q_proj): an adapter
over a whole fused layer is written as one adapter per HF part sharing its A (the same function), and part
adapters of a layer that HF keeps fused (GPT-2's c_attn) are written as one adapter whose rank is the sum of
theirs (A stacked, B block-diagonal with each part's scale folded in: the same function again).

Models without an HF layout (seq2seq, BitNet) use the same files with our own module names
(`base_model.model.layers.0.attn.qkv_proj.q.lora_A.weight`): they round-trip through lmstack, and an adapter
trained on a BitNet base cannot load silently onto a full-precision one, or the reverse.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lmstack.errors import ConfigError, WeightsError
from lmstack.fileio import atomic_directory, write_json
from lmstack.finetune.lora import (
    WHOLE,
    active_adapters,
    adaptable_layers,
    adapter_names,
    add_unit,
    check_adapter_name,
    lora_layers,
    part_names,
    pattern_key,
    set_adapter,
)
from lmstack.weights.hf import hf_family, key_map

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
_MODEL_PREFIX = {"llama": "model.", "gpt2": "transformer.", "bert": "bert."}
# peft options that change what an adapter computes and that lmstack does not implement: option → its neutral values
_UNSUPPORTED = {
    "use_dora": (False, None),
    "lora_bias": (False, None),
    "bias": ("none", None),
    "modules_to_save": (None, []),
    "trainable_token_indices": (None, [], {}),
    "target_parameters": (None, []),
    "layer_replication": (None, []),
    "alora_invocation_tokens": (None, []),
    "use_qalora": (False, None),
    "use_bdlora": (False, None),
}


# ----------------------------------------------------------------------------- names


def _family(model: nn.Module) -> str | None:
    """The HF family whose names the adapter files use, or None for lmstack's own names."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.bitnet:
        return None
    try:
        return hf_family(cfg)
    except WeightsError:
        return None


def file_names(model: nn.Module) -> dict[tuple[str, str], list[str]]:
    """(our layer, part or `all`) → the module paths that hold its adapters in the files: one HF module per
    part; several for a whole fused layer that HF splits; one fused HF module for every part of GPT-2's qkv."""
    layers = adaptable_layers(model)
    family = _family(model)
    names: dict[tuple[str, str], list[str]] = {}
    if family is None:
        for n, m in layers.items():
            names[(n, WHOLE)] = [n]
            names.update({(n, p): [f"{n}.{p}"] for p in part_names(n, m) or ()})
        return names
    mlm = family == "bert" and getattr(model, "mlm_head", None) is not None
    prefix = _MODEL_PREFIX[family] if family != "bert" or mlm else ""
    for ours, hf_parts, _ in key_map(model.cfg, family, prefix, mlm_head=mlm):
        layer = ours.removesuffix(".weight")
        if not ours.endswith(".weight") or layer not in layers:
            continue
        paths = [hf.removesuffix(".weight") for hf, _ in hf_parts]
        names[(layer, WHOLE)] = paths
        for i, p in enumerate(part_names(layer, layers[layer]) or ()):
            names[(layer, p)] = [paths[i]] if len(paths) > 1 else paths
    return names


def _reverse(model: nn.Module, names: dict[tuple[str, str], list[str]]) -> dict[str, tuple[str, str]]:
    """File module path → (our layer, part), also without the HF model prefix (a bare LlamaModel's save)."""
    reverse = {}
    family = _family(model)
    strip = _MODEL_PREFIX.get(family or "", "")
    for (layer, part), paths in names.items():
        if len(paths) == 1 and (part == WHOLE or names[(layer, WHOLE)] != paths):
            for path in {paths[0], paths[0].removeprefix(strip) if strip else paths[0], f"{strip}{paths[0]}"}:
                reverse.setdefault(path, (layer, part))
    return reverse


# ----------------------------------------------------------------------------- save


def _fused_in_files(names: dict[tuple[str, str], list[str]], layer: str, unit) -> bool:
    """Whether the files keep this fused layer as one module (GPT-2's c_attn): its parts share a path."""
    return len(unit.order) > 1 and names.get((layer, unit.order[0])) == names[(layer, WHOLE)]


def _adapter_tensors(model: nn.Module, adapter: str) -> tuple[dict[str, Tensor], dict[str, tuple[int, float]]]:
    """{file key: tensor} and {module path: (r, scaling)} of one adapter."""
    names = file_names(model)
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, float]] = {}

    def put(path: str, a: Tensor, b: Tensor, r: int, scaling: float) -> None:
        tensors[f"{PREFIX}{path}.lora_A.weight"] = a.detach().contiguous().clone()
        tensors[f"{PREFIX}{path}.lora_B.weight"] = b.detach().contiguous().clone()
        shapes[path] = (r, scaling)

    for layer_name, layer in lora_layers(model).items():
        if adapter not in layer.lora:
            continue
        unit = layer.lora[adapter]
        if WHOLE not in unit and _fused_in_files(names, layer_name, unit):
            put(names[(layer_name, WHOLE)][0], *_fused_block(unit))
            continue
        for part_name, part in unit.items():
            paths = names.get((layer_name, part_name))
            if not paths:
                raise WeightsError(f"{layer_name} has no name in the HF layout (a tied output head?); cannot save it")
            blocks = part.B.split(list(unit.sizes)) if len(paths) > 1 else [part.B]  # HF splits it: A is shared
            for path, b in zip(paths, blocks, strict=True):
                put(path, part.A, b, part.r, part.scaling)
    return tensors, shapes


def _fused_block(unit) -> tuple[Tensor, Tensor, int, float]:
    """Part adapters of one layer as one adapter of rank Σr (`LoRAUnit.low_rank`): its own scale is 1."""
    a, b = unit.low_rank()
    return a.detach(), b.detach(), a.shape[0], 1.0


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    base_name: str | None = None,
    adapter: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write one adapter (default: the active one) as a peft directory, atomically. `base_name` (the HF id or
    path of the base) goes to `base_model_name_or_path`, which `load_adapter` can check. `dtype` (e.g.
    torch.float16) stores the tensors smaller; they load back into the fp32 adapter."""
    known = adapter_names(model)
    if adapter is None:
        active = active_adapters(model)
        if len(active) != 1:
            raise ConfigError(f"pass adapter=...: the model has adapters {known}, active {list(active)}")
        adapter = active[0]
    if adapter not in known:
        raise ConfigError(f"no adapter named {adapter!r}; the model has {known}")
    units = [layer.lora[adapter] for layer in lora_layers(model).values() if adapter in layer.lora]
    rslora = next(iter(units[0].values())).rslora
    tensors, shapes = _adapter_tensors(model, adapter)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    alphas = {path: _number(s * (r**0.5 if rslora else r)) for path, (r, s) in shapes.items()}
    rank = Counter(r for r, _ in shapes.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if model.cfg.family == "decoder" else None,
        "base_model_name_or_path": base_name,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": units[0].p,
        "use_rslora": rslora,
        "target_modules": _target_list(model, sorted(shapes)),
        "exclude_modules": None,
        "rank_pattern": {re.escape(p): r for p, (r, _) in shapes.items() if r != rank},
        "alpha_pattern": {re.escape(p): a for p, a in alphas.items() if a != alpha},
        "bias": "none",
        "fan_in_fan_out": _family(model) == "gpt2",
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "use_dora": False,
        "lora_bias": False,
    }
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, config)
    return directory


def _target_list(model: nn.Module, paths: list[str]) -> list[str]:
    """Short module names (q_proj, v_proj) when, matched as peft matches them (on the end of the name), they
    select exactly `paths` among the model's linear layers; else the full paths."""
    universe = {p for ps in file_names(model).values() for p in ps}
    if _family(model) == "bert":
        universe |= {"pooler.dense", "bert.pooler.dense"}  # a BertModel's pooler would match "dense" too
    short = sorted({p.rsplit(".", 1)[-1] for p in paths})
    selected = {u for u in universe if u.rsplit(".", 1)[-1] in short}
    return short if selected == set(paths) else paths


# ----------------------------------------------------------------------------- load


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise WeightsError(f"{directory} has no {CONFIG_FILE}; is it a peft adapter directory?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: invalid JSON ({exc})") from exc
    if config.get("peft_type") != "LORA":
        raise WeightsError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA; only LoRA adapters load here")
    for option, neutral in _UNSUPPORTED.items():
        if config.get(option, neutral[0]) not in neutral:
            raise WeightsError(f"{path}: {option}={config[option]!r} is a peft feature lmstack does not implement")
    return config


def _read_tensors(directory: Path) -> dict[str, Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"{directory} has no {WEIGHTS_FILE} (adapter_model.bin pickles are not read)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise WeightsError(f"{path}: cannot read safetensors ({exc})") from exc


def load_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    name: str = "default",
    base_name: str | None = None,
    trainable: bool = False,
) -> list[str]:
    """Load a peft LoRA directory as adapter `name` and make it the active one; frozen unless `trainable`
    (peft's `is_trainable`). With `base_name`, the adapter's `base_model_name_or_path` must be the same.
    Anything that does not fit this model (a module it lacks, a shape, another architecture's names) fails
    with the file key before the model is changed. Returns the adapted layer/part names."""
    directory = Path(directory)
    config = _read_config(directory)
    saved_base = config.get("base_model_name_or_path")
    if base_name is not None and saved_base not in (None, base_name):
        raise WeightsError(f"{directory} is an adapter for {saved_base!r}, not for {base_name!r}")
    check_adapter_name(model, name)
    tensors = _read_tensors(directory)
    names = file_names(model)
    reverse = _reverse(model, names)
    layers = adaptable_layers(model)
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise WeightsError(f"{directory}: tensor {key!r} is not a LoRA A/B weight (DoRA, embeddings, bias?)")
        if match[1] not in reverse:
            known = ", ".join(sorted({p for paths in names.values() for p in paths})[:4])
            raise WeightsError(
                f"{directory}: tensor {key!r} names no layer of this {type(model).__name__} (another architecture, "
                f"or more layers than this base has?); expected module names like {known}"
            )
        pairs.setdefault(match[1], {})[match[2]] = tensor
    plan: dict[str, dict[str, tuple[int, float]]] = {}
    weights: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise WeightsError(f"{directory}: {PREFIX}{path} has lora_{'A' if 'A' in ab else 'B'} only")
        layer_name, part = reverse[path]
        a, b = ab["A"], ab["B"]
        layer = layers[layer_name]
        order = part_names(layer_name, layer)
        rows = layer.out_features if part == WHOLE else layer.splits[order.index(part)]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != layer.in_features or b.shape != (rows, a.shape[0]):
            raise WeightsError(
                f"{directory}: {PREFIX}{path}.lora_A/B have shapes {tuple(a.shape)}/{tuple(b.shape)}, but this base "
                f"needs (r, {layer.in_features})/({rows}, r): an adapter for a different base model"
            )
        r = a.shape[0]
        alphas = config.get("alpha_pattern") or {}
        alpha = alphas[pat] if (pat := pattern_key(alphas, path)) else config.get("lora_alpha", 8)
        plan.setdefault(layer_name, {})[part] = (r, float(alpha))
        weights[(layer_name, part)] = (a, b)
    if not plan:
        raise WeightsError(f"{directory}: {WEIGHTS_FILE} holds no LoRA tensors")
    rslora, dropout = bool(config.get("use_rslora", False)), float(config.get("lora_dropout", 0.0))
    adapted = []
    for layer_name, parts in plan.items():
        unit = add_unit(layers[layer_name], layer_name, name, parts, rslora, dropout)
        with torch.no_grad():
            for part, module in unit.items():
                a, b = weights[(layer_name, part)]
                module.A.copy_(a)
                module.B.copy_(b)
        adapted += [layer_name if p == WHOLE else f"{layer_name}.{p}" for p in parts]
    model.requires_grad_(False)
    set_adapter(model, name, trainable=trainable)
    return adapted
