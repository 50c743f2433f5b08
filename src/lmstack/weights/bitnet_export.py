"""`lmstack quantize --bitnet CKPT OUT`: turn a BitNet b1.58 training checkpoint into a packed one.

The packed checkpoint is an ordinary lmstack checkpoint directory (manifest, checksums, atomic rename) whose
`model.safetensors` holds, for every block linear layer, `weight_packed` (uint8, 4 ternary weights per byte),
`weight_scale` (fp32 γ, one per fused part: q, k, v; gate, up), the SubLN `norm.weight` and any bias;
embeddings, norms and the LM head stay as trained. `config.json` gains a `quantization` entry, which
`load_model_for_inference` reads to build the packed model, so `generate` and `chat` load it like
any checkpoint. `packing=PACKING_BASE3` stores 5 ternary weights per byte instead (1.6 bits each).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lmstack.errors import CheckpointError
from lmstack.fileio import write_json
from lmstack.models.bitnet import CODES_PER_BYTE, PACKING, linear_weight_bytes, pack_model
from lmstack.weights.checkpoint import MANIFEST, resolve_checkpoint, save_checkpoint
from lmstack.weights.load import load_model_for_inference
from lmstack.weights.packed import quantization_entry


def export_bitnet(checkpoint: str | Path, out: str | Path, packing: str = PACKING) -> dict[str, Any]:
    """Pack the checkpoint (or the newest good one of a run directory) into the new directory `out`, in the
    2-bit format (`PACKING`, the default) or the base-3 one (`PACKING_BASE3`).

    Returns a summary: source, output, and bytes of the linear weights (packed vs fp16) and of the files.
    """
    out = Path(out)
    if packing not in CODES_PER_BYTE:
        raise CheckpointError(f"unknown packing {packing!r}; choose one of {sorted(CODES_PER_BYTE)}")
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new output directory")
    ckpt = resolve_checkpoint(checkpoint)
    config = json.loads((ckpt / "config.json").read_text())
    if config.get("quantization"):
        raise CheckpointError(f"{ckpt} is already quantized ({config['quantization'].get('method')})")
    if not config.get("model", {}).get("bitnet"):
        raise CheckpointError(
            f"{ckpt} is a full-precision model; BitNet packing needs a model trained with model.bitnet=true "
            "(ternary weights are learned during training, not rounded afterwards)"
        )
    model, tokenizer = load_model_for_inference(ckpt)
    pack_model(model, packing=packing)
    step = json.loads((ckpt / MANIFEST).read_text()).get("step", 0)

    def write_extras(directory: Path) -> None:
        quantization = {**quantization_entry(packing), "source": str(ckpt)}
        write_json(directory / "config.json", {**config, "quantization": quantization})
        tokenizer.save(directory)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".tmp-quantize-{out.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        saved = save_checkpoint(staging, step, model, None, write_extras)
        os.replace(saved, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = linear_weight_bytes(model)
    return {
        "source": str(ckpt),
        "out": str(out),
        "linear_bytes_packed": sizes["packed"],
        "linear_bytes_fp16": sizes["fp"],
        "subln_bytes": sizes["subln"],
        "file_bytes_source": (ckpt / "model.safetensors").stat().st_size,
        "file_bytes_packed": (out / "model.safetensors").stat().st_size,
    }
