"""`kind: pretrain` recipes: a corpus (the Python standard library or the user's files) → a byte-level BPE
tokenizer → packed token blocks → a fresh model of any family trained with one of the objectives.

The run directory holds everything needed to resume or use the result: the resolved recipe
(`recipe.yaml`), the tokenizer, the tokenised data cache, metrics and checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lmstack.config import from_dict, to_dict
from lmstack.data.corpus import PackedBlocks, sample_indices, split_documents, tokenize_documents
from lmstack.errors import ConfigError
from lmstack.fileio import write_json
from lmstack.models import ModelConfig, build_model, model_config_from_dict
from lmstack.tokenizer import Tokenizer
from lmstack.train.distributed import meta_parameters
from lmstack.train.loop import TrainConfig, TrainingJob
from lmstack.train.objectives import OBJECTIVES, SpecialIds, row_generators
from lmstack.train.quant_ramp import BitNetTrainConfig, QuantizationRamp


@dataclass(frozen=True)
class DataConfig:
    source: Literal["stdlib", "files"] = "stdlib"
    paths: tuple[str, ...] = ()
    val_fraction: float = 0.05
    max_train_bytes: int = 0  # 0 = no cap
    max_val_bytes: int = 0
    seq_len: int = 128


@dataclass(frozen=True)
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer.json or directory; None = train byte-level BPE on train text
    vocab_size: int = 2048
    train_bytes: int = 2_000_000  # how much training text the BPE learns from


@dataclass(frozen=True)
class Recipe:
    """A pretraining recipe (`kind: pretrain`, the default kind)."""

    name: str
    objective: Literal["causal_lm", "masked_lm", "span_corruption", "denoising"]
    model: ModelConfig
    kind: Literal["pretrain"] = "pretrain"
    out_dir: str = ""  # default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bitnet: BitNetTrainConfig = field(default_factory=BitNetTrainConfig)  # 16-to-1.58-bit training

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    data = dict(data)
    if "model" not in data:
        raise ConfigError("model: required section is missing (e.g. model: {preset: gpt-tiny})")
    model_cfg = model_config_from_dict(data.pop("model"), path="model")
    data["model"] = {}
    recipe = from_dict(Recipe, data, path="")
    recipe = dataclasses.replace(recipe, model=model_cfg)
    wanted = OBJECTIVES[recipe.objective].family
    if model_cfg.family != wanted:
        raise ConfigError(
            f"objective {recipe.objective!r} trains a {wanted} model, but model.family is {model_cfg.family!r}"
        )
    if recipe.bitnet.staged and not model_cfg.bitnet:
        raise ConfigError("bitnet.quant_start/quant_ramp need a BitNet model (model.bitnet=true)")
    return recipe


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_tokenizer(recipe: Recipe, documents: list[str], run_dir: Path, log=print) -> Tokenizer:
    """The run's tokenizer: loaded from the run directory if present (so resume uses the same ids)."""
    saved = run_dir / "tokenizer"
    if (saved / "tokenizer.json").is_file():
        return Tokenizer.load(saved)
    if recipe.tokenizer.path:
        tok = Tokenizer.load(recipe.tokenizer.path)
    else:
        texts, used = [], 0
        for doc in documents:
            if used >= recipe.tokenizer.train_bytes:
                break
            texts.append(doc)
            used += len(doc)
        log(f"training a byte-level BPE tokenizer (vocab {recipe.tokenizer.vocab_size}) on {used / 1e6:.1f} MB")
        tok = Tokenizer.train_bpe(texts, recipe.tokenizer.vocab_size)
    tok.save(saved)
    return tok


def prepare_tokens(recipe: Recipe, tok: Tokenizer, run_dir: Path, log=print) -> dict[str, np.ndarray]:
    """Tokenised train/val streams, cached in the run directory and keyed by data config + tokenizer."""
    d = recipe.data
    key = _fingerprint(to_dict(d), (run_dir / "tokenizer" / "tokenizer.json").read_text())
    cache = run_dir / "data"
    meta = cache / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return {s: np.load(cache / f"{s}.npy") for s in ("train", "val")}
    docs = split_documents(d.source, list(d.paths), d.val_fraction, d.max_train_bytes, d.max_val_bytes)
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "val"):
        out[split] = tokenize_documents(tok, docs[split], tok.eos_id)
        tmp = cache / f".{split}.tmp.npy"
        np.save(tmp, out[split])
        tmp.replace(cache / f"{split}.npy")
    write_json(meta, {"key": key, "train_tokens": len(out["train"]), "val_tokens": len(out["val"])})
    log(f"tokenised {len(out['train']):,} train and {len(out['val']):,} validation tokens")
    return out


def special_ids(tok: Tokenizer) -> SpecialIds:
    return SpecialIds(
        pad=tok.pad_id,
        eos=tok.eos_id,
        mask=tok.mask_id,
        sentinels=tuple(tok.sentinel_ids()),
        special=tuple(sorted(tok.special_ids())),
        vocab_size=tok.vocab_size,
    )


def build_job(recipe: Recipe, run_dir: Path | None = None, log=print) -> tuple[TrainingJob, Tokenizer]:
    """The tokenizer (trained on the corpus unless given), the tokenised corpus packed into blocks, a fresh
    model and the objective's batches: everything the loop needs, prepared in `run_dir`."""
    run_dir = run_dir or recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_path = run_dir / "tokenizer" / "tokenizer.json"
    docs = None
    if not tok_path.is_file() and not recipe.tokenizer.path:
        d = recipe.data
        docs = split_documents(d.source, list(d.paths), d.val_fraction, d.max_train_bytes, d.max_val_bytes)["train"]
    tok = prepare_tokenizer(recipe, docs or [], run_dir, log)
    tokens = prepare_tokens(recipe, tok, run_dir, log)
    model_cfg = dataclasses.replace(
        recipe.model,
        vocab_size=tok.vocab_size,
        pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id,
        bos_token_id=tok.bos_id,
    )
    if recipe.data.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"data.seq_len ({recipe.data.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
    objective = OBJECTIVES[recipe.objective]
    block_len = recipe.data.seq_len + objective.block_extra
    train_blocks = PackedBlocks(tokens["train"], block_len)
    val_blocks = PackedBlocks(tokens["val"], block_len)
    ids = special_ids(tok)
    cfg = recipe.train
    torch.manual_seed(cfg.seed)
    if cfg.meta_init:  # parameters on the meta device; the loop materialises each rank's shard
        with meta_parameters():
            model = build_model(model_cfg)
    else:
        model = build_model(model_cfg)

    def train_batch(step: int, rows: range | None = None):
        rows = range(cfg.batch_size) if rows is None else rows
        idx = sample_indices(step, cfg.batch_size, len(train_blocks), cfg.seed)[rows.start : rows.stop]
        return objective.make_batch(train_blocks[idx], ids, row_generators(cfg.seed, step, rows))

    n_eval = min(len(val_blocks), cfg.eval_batches * cfg.batch_size)
    eval_set = []
    for i in range(0, n_eval, cfg.batch_size):
        rows = range(i, min(i + cfg.batch_size, n_eval))
        eval_set.append(objective.make_batch(val_blocks[torch.tensor(rows)], ids, row_generators(12_345, -1, rows)))

    def write_extras(directory: Path) -> None:
        write_json(directory / "config.json", {"model": to_dict(model_cfg), "recipe": to_dict(recipe)})
        tok.save(directory)

    job = TrainingJob(model, objective.loss, train_batch, lambda: eval_set, write_extras)
    if recipe.bitnet.staged:
        job.callbacks.append(QuantizationRamp(recipe.bitnet))
    return job, tok
