"""The packed BitNet checkpoint format as a loader sees it: the `quantization` entry of `config.json` and how a
freshly built model is reshaped (BitLinear → PackedBitLinear) to receive the packed weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from lmstack.errors import CheckpointError
from lmstack.models.bitnet import CODES_PER_BYTE, PACKING, pack_model

METHOD = "bitnet_b1.58"


def quantization_entry(packing: str = PACKING) -> dict[str, Any]:
    return {"method": METHOD, "format": packing}


def prepare_packed(model: nn.Module, quantization: dict[str, Any]) -> nn.Module:
    """Shape `model` (built from the checkpoint's config) like the packed export, ready for its weights."""
    if not isinstance(quantization, dict) or quantization.get("method") != METHOD:
        raise CheckpointError(f"unknown quantization {quantization!r} in config.json; this lmstack reads {METHOD}")
    packing = quantization.get("format")
    if packing not in CODES_PER_BYTE:
        raise CheckpointError(f"unknown packing {packing!r}; this lmstack reads {sorted(CODES_PER_BYTE)}")
    return pack_model(model, packing=packing)
