"""Export an lmstack checkpoint (single-process, DCP shards of any world size, or a run directory's newest
good one) for inference and for other tools (`lmstack export`), in one of three formats:

- `safetensors`: one `model.safetensors` + config + tokenizer, HF key names where the model has an HF
  layout, else lmstack's own (every model exports; lmstack loads it back);
- `hf`: an HF directory that `transformers` loads (Llama, GPT-2, BERT layouts only);
- `gguf`: one llama-architecture GGUF file for llama.cpp (Llama-style decoders only).

Every output appears whole or not at all, and never replaces a non-empty path unless asked to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_model
from torch import nn

from lmstack.config import to_dict
from lmstack.errors import CheckpointError, WeightsError
from lmstack.fileio import atomic_directory, write_json
from lmstack.tokenizer import Tokenizer
from lmstack.weights.checkpoint import is_filtered_checkpoint, resolve_checkpoint
from lmstack.weights.gguf import SUPPORTED_TYPES as GGUF_TYPES
from lmstack.weights.gguf_write import check_gguf_model, save_gguf
from lmstack.weights.hf import hf_family, save_hf
from lmstack.weights.load import load_model_dir

FORMATS = ("safetensors", "hf", "gguf")
GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class Exported:
    """What an export wrote: from which checkpoint, where (a directory, or the GGUF file), and a one-line
    description of the layout for the user."""

    checkpoint: Path
    path: Path
    layout: str


def load_for_export(ckpt: Path) -> tuple[nn.Module, Tokenizer | None]:
    """(model, tokenizer) of a resolved, verified checkpoint directory (not verified again: that hashes
    every file)."""
    if is_filtered_checkpoint(ckpt):  # adapters live a layer up: `export_checkpoint(load=...)` merges them
        raise CheckpointError(
            f"{ckpt} holds only adapter weights (a finetune checkpoint saved with a state filter), not a whole "
            "model; pass --merge-lora to merge the adapters into the base model and export the result"
        )
    return load_model_dir(ckpt)


def check_output(checkpoint: Path, out: Path, force: bool = False, file: bool = False) -> None:
    """Refuse outputs that would destroy something: the checkpoint itself (or its run directory), a non-empty
    directory or an existing file without `force`, or a file where a directory goes (and vice versa)."""
    if out.resolve() in (checkpoint.resolve(), *checkpoint.resolve().parents):
        raise CheckpointError(f"{out} holds the checkpoint {checkpoint}; the export would replace it")
    if not out.exists():
        return
    if file and out.is_dir():
        raise CheckpointError(f"{out} is a directory; give a file path ending in .gguf, or a directory name")
    if not file and not out.is_dir():
        raise CheckpointError(f"{out} is a file; the export writes a directory there")
    if not force and (out.is_file() or any(out.iterdir())):
        what = "exists" if out.is_file() else "exists and is not empty"
        raise CheckpointError(f"{out} {what}; the export replaces it, pass --force to allow")


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "safetensors",
    force: bool = False,
    gguf_type: str = "F32",
    load: Callable[[Path], tuple[nn.Module, Tokenizer | None]] | None = None,
) -> Exported:
    """Export `checkpoint` (or a run directory's newest good checkpoint) to `out` in format `fmt`.

    For `gguf`, an `out` ending in `.gguf` is the file to write, anything else a directory that will hold
    `model.gguf`; `gguf_type` is one of F32, F16, BF16, Q8_0, Q4_0, Q4_1 (norms always stay F32). `load`
    replaces the loader of the resolved checkpoint: `lmstack export --merge-lora` passes
    `lmstack.finetune.load.load_finetuned(ckpt, merge=True)`, which puts a LoRA run's adapter on its base
    and merges it."""
    if fmt not in FORMATS:
        raise WeightsError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "gguf" and gguf_type.upper() not in GGUF_TYPES:
        raise WeightsError(f"GGUF type {gguf_type!r} not supported; choose one of {', '.join(GGUF_TYPES)}")
    source, out = Path(checkpoint), Path(out)
    if not source.exists():
        raise CheckpointError(f"{source} does not exist; give a checkpoint directory (step-*) or a run directory")
    as_file = fmt == "gguf" and out.suffix.lower() == ".gguf"
    ckpt = resolve_checkpoint(source)  # a run directory → its newest checkpoint that verifies
    check_output(ckpt, out, force, file=as_file)  # before the (slow) load
    model, tok = (load or load_for_export)(ckpt)
    if fmt == "safetensors":
        layout = export_safetensors_model(model, tok, out)
        return Exported(ckpt, out, layout)
    if fmt == "hf":
        try:
            family = hf_family(model.cfg)
        except WeightsError as exc:
            raise WeightsError(f"--format hf: {exc}; --format safetensors exports any model") from exc
        save_hf(model, out, tok)
        return Exported(ckpt, out, f"HF {family} directory (transformers and lmstack load it)")
    check_gguf_model(model.cfg)
    if tok is None:
        raise WeightsError(f"{ckpt} has no tokenizer.json; a GGUF file carries its tokenizer, so it needs one")
    name = ckpt.parent.name if ckpt.name.startswith("step-") else ckpt.name
    qtype = gguf_type.upper()
    if as_file:
        path = save_gguf(model, tok, out, qtype=qtype, name=name)
    else:
        with atomic_directory(out) as tmp:
            save_gguf(model, tok, tmp / GGUF_FILE, qtype=qtype, name=name)
        path = out / GGUF_FILE
    return Exported(ckpt, path, f"GGUF llama, {qtype} weights (llama.cpp and lmstack load it)")


def export_safetensors(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write one `model.safetensors` (+ config.json, tokenizer) for inference: HF key names and config where
    the model has an HF layout (Llama, GPT-2, BERT), else lmstack's own. The directory appears whole or not
    at all."""
    model, tok = load_for_export(resolve_checkpoint(checkpoint))
    export_safetensors_model(model, tok, Path(out_dir))
    return Path(out_dir)


def export_safetensors_model(model: nn.Module, tok: Tokenizer | None, out_dir: Path) -> str:
    """`export_safetensors` for a loaded model; returns which key names it used."""
    try:
        family = hf_family(model.cfg)
    except WeightsError:
        family = None  # no HF layout for this model (e.g. BitNet, T5 here): lmstack's own names and config
    if family is not None:
        save_hf(model, out_dir, tok)
        return f"HF {family} key names and config (transformers and lmstack generate load it)"
    with atomic_directory(out_dir) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        write_json(tmp / "config.json", {"model": to_dict(model.cfg)})
        if tok is not None:
            tok.save(tmp)
    return "lmstack's own key names (this model has no HF layout; lmstack generate loads it)"
