"""Several LoRA adapters over one packed copy of the base, chosen per row of a batch.

Each adapter is loaded onto the model as usual (`lora_peft.load_adapter`: peft's layout, checked against
the base), then every projection's low-rank pair is read out (`LoRAUnit.low_rank`), the pairs of all
adapters are stacked with an all-zero adapter 0 ("no adapter") and padded to the largest rank, and the
adapter layers are removed again, unmerged: the base weights are packed once and `fast.lora_delta` adds
each row's own update. Padding with zero rows of A and zero columns of B adds exactly nothing.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from lmstack.errors import ConfigError
from lmstack.finetune.lora import LoRALayer, unload_lora
from lmstack.finetune.lora_peft import load_adapter
from lmstack.generate.fast import LayerAdapters, projections
from lmstack.models.decoder import DecoderLM


def _stack(pairs: list[tuple[Tensor, Tensor] | None], in_features: int, out_features: int) -> tuple[Tensor, Tensor]:
    """(A (N+1, R, in), B (N+1, out, R)) with adapter 0 all zeros and every adapter padded to rank R."""
    rank = max(a.shape[0] for a, _ in (p for p in pairs if p is not None))
    a_all = torch.zeros(len(pairs) + 1, rank, in_features)
    b_all = torch.zeros(len(pairs) + 1, out_features, rank)
    for i, pair in enumerate(pairs, start=1):
        if pair is not None:
            a, b = pair
            a_all[i, : a.shape[0]] = a.detach().float()
            b_all[i, :, : b.shape[1]] = b.detach().float()
    return a_all, b_all


def adapter_bank(
    model: DecoderLM, directories: dict[str, str | os.PathLike], base_name: str | None = None
) -> tuple[dict[str, int], list[LayerAdapters]]:
    """({adapter name: index}, per-block stacked pairs) for `FastDecoder.adapters`. The model must carry no
    adapters of its own; it is left as it came (the adapters' layers are removed, nothing merged)."""
    if any(isinstance(m, LoRALayer) for m in model.modules()):
        raise ConfigError("the base model already carries LoRA layers; merge or unload them before serving adapters")
    names = list(directories)
    try:
        for name in names:
            load_adapter(model, directories[name], name=name, base_name=base_name)
        bank: list[LayerAdapters] = []
        for block in model.layers:
            per_projection = []
            for proj in projections(block):
                units = [proj.lora[n] if isinstance(proj, LoRALayer) and n in proj.lora else None for n in names]
                if all(u is None for u in units):
                    per_projection.append(None)
                    continue
                pairs = [None if u is None else u.low_rank() for u in units]
                weight = proj.weight
                per_projection.append(_stack(pairs, weight.shape[1], weight.shape[0]))
            bank.append(tuple(per_projection))
    finally:
        unload_lora(model, merge=False)
    return {name: i for i, name in enumerate(names, start=1)}, bank


__all__ = ["adapter_bank"]
