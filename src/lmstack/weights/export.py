"""Export any lmstack checkpoint (single-process, DCP shards of any world size, or a run directory) to one
`model.safetensors` directory for inference and for other tools (`lmstack export`)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_model

from lmstack.config import to_dict
from lmstack.errors import WeightsError
from lmstack.fileio import atomic_directory, write_json
from lmstack.weights.hf import save_hf
from lmstack.weights.load import load_model_for_inference


def export_safetensors(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write one `model.safetensors` (+ config.json, tokenizer) for inference: HF key names and config where
    the model has an HF layout (Llama, GPT-2, BERT), else lmstack's own. The directory appears whole or not
    at all."""
    model, tok = load_model_for_inference(checkpoint)
    try:
        return save_hf(model, out_dir, tok)
    except WeightsError:
        pass  # no HF layout for this model (e.g. BitNet, T5 here): lmstack's own names and config
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        write_json(tmp / "config.json", {"model": to_dict(model.cfg)})
        if tok is not None:
            tok.save(tmp)
    return out_dir
