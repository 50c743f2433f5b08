"""Training checkpoints: a directory per step, written to a temp directory and renamed into place (atomic),
with a manifest of SHA-256 checksums written last so that partial or corrupt checkpoints are detected.

Layout of `RUN_DIR/step-00000100/`: `model.safetensors`, `config.json`, `tokenizer.json` (+ config),
`trainer_state.pt` (optimizer, scheduler, RNG, step, data position), `manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from lmstack.errors import CheckpointError
from lmstack.fileio import fsync_dir, write_json

MANIFEST = "manifest.json"
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    trainer_state: dict[str, Any] | None,
    write_extras: Callable[[Path], None] | None = None,
    keep: int = 0,
    state_filter: Callable[[str], bool] | None = None,
) -> Path:
    """Save and return `run_dir/step-XXXXXXXX`; keep only the newest `keep` good checkpoints (0 = all).
    `state_filter(name)` keeps only the named weights (e.g. LoRA adapters); the manifest then says
    `"weights": "filtered"`, so that nobody mistakes the file for a whole model."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if state_filter is None:
        save_model(model, str(tmp / "model.safetensors"))  # de-duplicates tied weights
    else:
        save_file(filtered_state_dict(model, model.state_dict(), state_filter), str(tmp / "model.safetensors"))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    if write_extras is not None:
        write_extras(tmp)
    return publish_checkpoint(tmp, run_dir, step, keep, **({} if state_filter is None else {"weights": "filtered"}))


def without_tied_aliases(module: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per tied parameter: the alphabetically first, as safetensors' `save_model` does."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    drop = {n for names in groups.values() for n in sorted(names)[1:]}
    return {k: v.contiguous() for k, v in sd.items() if k not in drop}


def filtered_state_dict(
    module: nn.Module, sd: dict[str, torch.Tensor], state_filter: Callable[[str], bool] | None
) -> dict[str, torch.Tensor]:
    """The tensors of `sd` to save: those `state_filter` keeps (all if None), one name per tied weight."""
    sd = without_tied_aliases(module, sd)
    return sd if state_filter is None else {k: v for k, v in sd.items() if state_filter(k)}


def is_filtered_checkpoint(path: str | Path) -> bool:
    """True for a checkpoint that holds only some of its model's weights (saved with a state filter)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("weights") == "filtered"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def publish_checkpoint(tmp: Path, run_dir: Path, step: int, keep: int = 0, **manifest: Any) -> Path:
    """Finish a checkpoint written into `tmp`: fsync and checksum every file, write the manifest last, rename
    the directory to `run_dir/step-XXXXXXXX` (replacing a stale one) and prune to the newest `keep` good ones."""
    final = run_dir / checkpoint_name(step)
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
        files[str(f.relative_to(tmp))] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
    write_json(tmp / MANIFEST, {"format": 1, "step": step, **manifest, "files": files})
    for d in sorted({f.parent for f in tmp.rglob("*") if f.is_file()}, reverse=True):
        fsync_dir(d)
    if final.exists():  # e.g. a corrupt checkpoint of the same step from before a resume
        stale = run_dir / f".stale-{final.name}-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    if keep > 0:
        good = [p for p in list_checkpoints(run_dir) if verify_checkpoint(p, raise_error=False) is None]
        for old in good[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (temp directories of interrupted saves excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def remove_partial_saves(run_dir: str | Path) -> list[Path]:
    """Delete temp directories left by saves that were interrupted (e.g. by kill -9)."""
    removed = []
    for p in Path(run_dir).glob(".tmp-" + PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def verify_checkpoint(path: str | Path, raise_error: bool = True) -> str | None:
    """Check the manifest and every file's size and SHA-256. Returns None if good, else the reason (or raises)."""
    path = Path(path)
    reason = None
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        reason = "no manifest.json (the save never finished)"
    else:
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            manifest, files = None, {}
            reason = f"unreadable manifest.json ({exc})"
        for name, meta in files.items():
            f = path / name
            if not f.is_file():
                reason = f"{name} is missing"
            elif f.stat().st_size != meta.get("bytes"):
                reason = f"{name} has {f.stat().st_size} bytes, the manifest says {meta.get('bytes')} (truncated?)"
            elif _sha256(f) != meta.get("sha256"):
                reason = f"{name} fails its SHA-256 checksum (corrupt)"
            if reason:
                break
    if reason and raise_error:
        raise CheckpointError(f"checkpoint {path} is not usable: {reason}")
    return reason


def latest_good_checkpoint(run_dir: str | Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies; every newer bad one is reported through `warn`."""
    for path in reversed(list_checkpoints(run_dir)):
        reason = verify_checkpoint(path, raise_error=False)
        if reason is None:
            return path
        warn(f"skipping checkpoint {path.name}: {reason}; falling back to the previous one")
    return None


def load_weights(model: nn.Module, path: str | Path, state_filter: Callable[[str], bool] | None = None) -> None:
    """Load `model.safetensors` of a verified checkpoint into `model`: strictly every weight, or with
    `state_filter` exactly the weights it keeps (the rest of `model` stays as it is)."""
    try:
        missing, unexpected = load_model(model, str(Path(path) / "model.safetensors"), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights in {path}: {exc}") from exc
    # tied weights are stored once; safetensors reports the alias as missing
    missing = [k for k in missing if not _is_tied_alias(model, k) and (state_filter is None or state_filter(k))]
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _is_tied_alias(model: nn.Module, key: str) -> bool:
    target = dict(model.named_parameters(remove_duplicate=False)).get(key)
    return target is not None and any(p is target for name, p in model.named_parameters() if name != key)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path) / "trainer_state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on corrupt pickles
        raise CheckpointError(f"cannot read trainer_state.pt in {path}: {exc}") from exc


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or a run directory → its newest good checkpoint."""
    path = Path(path)
    if (path / MANIFEST).is_file() or path.name.startswith(PREFIX):
        verify_checkpoint(path)
        return path
    found = latest_good_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} is neither a checkpoint nor a run directory with a good checkpoint")
    return found
