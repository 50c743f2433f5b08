"""Reward models: a `DecoderLM` backbone plus a scalar head, trained on preference pairs with the
Bradley–Terry loss on the one training loop (`train.loop.train`).

    pairs = load_pairs("data/preferences/train.jsonl", tok, InstructFormat(max_len=256))
    rm, summary = train_reward_model(model, pairs, "runs/rm", TrainConfig(steps=300, batch_size=8, lr=1e-4))
    rewards = rm(input_ids, attention_mask)                      # (B,) fp32, one score per sequence

The head reads the final hidden state of each sequence's LAST NON-PAD token, so right- and left-padded
batches score alike (positions count real tokens). The loss is TRL's RewardTrainer loss,

    -logsigmoid(r_chosen - r_rejected - margin).mean() + center_coef * mean((r_chosen + r_rejected)^2)

where `margin` is a row's optional `margin` field (0 without one) and the centring term (TRL's
`center_rewards_coefficient`) pins the free offset of BT rewards near zero.

Rows are JSONL objects with `prompt`, `chosen` and `rejected` strings (the task suite's `preferences` task
writes them). Each response is rendered like an instruction row (`data.instruct.encode_row`: the tokenizer's
chat template, or plain `prompt + separator + response + EOS`), so a reward model scores exactly the text a
fine-tuned model produces. This module also holds what DPO (`align.dpo`) shares: the pairs, their
validation and their deterministic batch order.

On disk the head sits next to the model: `reward_head/` (`head.safetensors` + `config.json`) inside a
checkpoint or an exported model directory, each written atomically.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file, save_model
from torch import Tensor, nn

from lmstack.config import from_dict, to_dict
from lmstack.data.instruct import InstructFormat, Sample, encode_row, read_rows
from lmstack.data.instruct_batch import seeded
from lmstack.errors import ConfigError, DataError, WeightsError
from lmstack.fileio import atomic_directory, write_json
from lmstack.finetune.lora import LoRAConfig, apply_lora, is_lora_key, lora_layers, lora_summary, unload_lora
from lmstack.finetune.lora_peft import load_adapter, save_adapter
from lmstack.models import DecoderLM, ModelConfig, build_model
from lmstack.tokenizer import Tokenizer
from lmstack.train.callbacks import Callback, LoopState
from lmstack.train.loop import TrainConfig, TrainingJob, train
from lmstack.weights.checkpoint import is_filtered_checkpoint, load_weights, resolve_checkpoint

HEAD_DIR = "reward_head"  # the head beside the model, in checkpoints and exported directories
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"  # a LoRA run's adapter in peft's layout (the name fine-tuning runs use)
FIELDS = ("prompt", "chosen", "rejected")

# ----------------------------------------------------------------------------- preference pairs


@dataclass(frozen=True, eq=False)
class PreferencePair:
    """One rendered pair. `chosen`/`rejected` are whole samples (prompt + response, `trained` marking the
    response tokens); `margin` is the row's optional BT margin; `ref_*` are the summed reference log-probs
    of the two responses, filled in once before DPO training (None until then)."""

    chosen: Sample
    rejected: Sample
    margin: float = 0.0
    origin: str = ""
    ref_chosen: float | None = None
    ref_rejected: float | None = None


def check_preference_row(row: dict[str, Any]) -> tuple[str, str, str, float]:
    """(prompt, chosen, rejected, margin) of a well-formed row, else a DataError (without location) that
    says what is wrong: a pair that cannot teach a preference is refused, not silently trained on."""
    for key in FIELDS:
        if key not in row:
            raise DataError(f"has no '{key}'; a preference row needs 'prompt', 'chosen' and 'rejected' strings")
        if not isinstance(row[key], str):
            raise DataError(f"'{key}' must be a string, got {type(row[key]).__name__}")
        if not row[key].strip():
            raise DataError(f"'{key}' is empty")
    if row["chosen"].strip() == row["rejected"].strip():
        raise DataError("'chosen' and 'rejected' are the same text, so the pair prefers nothing")
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
        raise DataError(f"'margin' must be a finite number, got {margin!r}")
    return row["prompt"], row["chosen"], row["rejected"], float(margin)


def encode_pairs(
    rows: Iterable[tuple[str, dict[str, Any]]], tokenizer: Tokenizer, fmt: InstructFormat, task: str = "preferences"
) -> list[PreferencePair]:
    """(origin, row) → pairs, every row checked first; the first bad one raises a DataError naming its
    origin (`file:line`). Each response is rendered as the completion of an instruction row."""
    mode = fmt.resolve(tokenizer)
    pairs = []
    for origin, row in rows:
        try:
            prompt, chosen, rejected, margin = check_preference_row(row)
            sides = [encode_row(tokenizer, {"prompt": prompt, "completion": c}, fmt, mode) for c in (chosen, rejected)]
        except (DataError, ConfigError) as exc:
            raise DataError(f"{origin}: {exc}") from exc
        (ci, ct), (ri, rt) = sides
        pairs.append(PreferencePair(Sample(ci, ct, task, origin), Sample(ri, rt, task, origin), margin, origin))
    return pairs


def load_pairs(path: str | Path, tokenizer: Tokenizer, fmt: InstructFormat) -> list[PreferencePair]:
    """Every row of a preference JSONL file as a pair (errors name `path:line`)."""
    rows = [(f"{path}:{lineno}", row) for lineno, row in read_rows(path)]
    return encode_pairs(rows, tokenizer, fmt, task=Path(path).stem)


@functools.lru_cache(maxsize=8)
def _order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=seeded(seed, "preferences", epoch)).tolist())


def pair_indices(n: int, batch_size: int, step: int, seed: int, rows: range | None = None) -> list[int]:
    """Which pairs form rows `rows` of step `step`'s batch: a fresh permutation per epoch, a pure function
    of (seed, step), so that a resumed run sees exactly the batches it would have seen."""
    if n == 0:
        raise DataError("no preference pairs to train on")
    out = []
    for r in range(batch_size) if rows is None else rows:
        epoch, position = divmod(step * batch_size + r, n)
        out.append(_order(n, seed, epoch)[position])
    return out


def pad_right(seqs: Sequence[np.ndarray | Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids (B, T) long, mask (B, T) long) of right-padded sequences, T the longest."""
    width = max(1, *(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = 1
    return ids, mask


# ----------------------------------------------------------------------------- the model and its loss


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token, for right and left padding alike."""
    mask = attention_mask.bool()
    if not mask.any(-1).all():
        raise DataError("a row of the batch has no real token to read a reward at")
    width = mask.shape[-1]
    return width - 1 - mask.flip(-1).int().argmax(-1)


class RewardModel(nn.Module):
    """A decoder backbone and `head`, an (d_model → 1) linear layer on the final-norm hidden state of the
    last real token. `forward` returns one fp32 reward per row. The backbone's `lm_head` is not used."""

    def __init__(self, backbone: DecoderLM, head: nn.Linear | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, DecoderLM):
            raise ConfigError(f"a reward model needs a decoder-only DecoderLM backbone, got {type(backbone).__name__}")
        like = backbone.embed.tokens.weight
        if head is None:  # small weights (HF's score-head init), zero bias: initial rewards near 0
            head = nn.Linear(backbone.cfg.d_model, 1, device=like.device, dtype=like.dtype)
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        elif tuple(head.weight.shape) != (1, backbone.cfg.d_model):
            raise ConfigError(
                f"reward head of shape {tuple(head.weight.shape)} does not fit d_model {backbone.cfg.d_model}"
            )
        self.backbone, self.head, self.cfg = backbone, head.to(like.device), backbone.cfg

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.backbone.hidden_states(input_ids, attention_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1).float()


def reward_batch(pairs: Sequence[PreferencePair], pad_id: int = 0) -> dict[str, Tensor]:
    """Right-padded chosen and rejected sequences of one width (so one forward scores both), and margins."""
    ids, mask = pad_right([p.chosen.ids for p in pairs] + [p.rejected.ids for p in pairs], pad_id)
    b = len(pairs)
    return {
        "chosen_ids": ids[:b],
        "chosen_mask": mask[:b],
        "rejected_ids": ids[b:],
        "rejected_mask": mask[b:],
        "margin": torch.tensor([p.margin for p in pairs], dtype=torch.float32),
    }


def pair_rewards(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(r_chosen, r_rejected), each (B,), from one forward over both halves of a `reward_batch`."""
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    return model(ids, mask).chunk(2)


def bt_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, center_coef: float = 0.0) -> Tensor:
    """Bradley–Terry: mean -log σ(r_c - r_r - margin), plus `center_coef` · mean((r_c + r_r)^2)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff)
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, float]:
    """Pairwise accuracy (r_c > r_r: a tie counts as wrong, as in TRL), mean margin and mean rewards."""
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen": float(chosen.mean()),
        "rejected": float(rejected.mean()),
    }


def reward_loss_fn(center_coef: float = 0.0) -> Callable[[nn.Module, dict[str, Tensor]], Tensor]:
    """The `TrainingJob.loss_fn` of a reward model."""

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        chosen, rejected = pair_rewards(model, batch)
        return bt_loss(chosen, rejected, batch["margin"], center_coef)

    return loss


@torch.no_grad()
def score_pairs(model: RewardModel, pairs: Sequence[PreferencePair], batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """(r_chosen, r_rejected) of every pair on the model's device, in the model's current mode."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in reward_batch(pairs[i : i + batch_size], model.cfg.pad_token_id).items()}
        c, r = pair_rewards(model, batch)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


# ----------------------------------------------------------------------------- on disk


def save_reward_head(model: RewardModel, directory: str | Path) -> Path:
    """Write `directory/reward_head/` (the head's weight and bias + config.json), atomically."""
    target = Path(directory) / HEAD_DIR
    head = model.head
    tensors = {"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()}
    with atomic_directory(target) as tmp:
        save_file(tensors, str(tmp / HEAD_FILE), metadata={"format": "pt"})
        write_json(tmp / "config.json", {"kind": "reward_head", "d_model": head.in_features, "read_at": "last_token"})
    return target


def load_reward_head(directory: str | Path, d_model: int | None = None) -> nn.Linear:
    """The head saved in `directory/reward_head/` (or in `directory` itself), checked against `d_model`."""
    directory = Path(directory)
    head_dir = directory if (directory / HEAD_FILE).is_file() else directory / HEAD_DIR
    path = head_dir / HEAD_FILE
    if not path.is_file():
        raise WeightsError(f"{directory} has no reward head ({HEAD_DIR}/{HEAD_FILE}); is it a reward model?")
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise WeightsError(f"{path}: cannot read safetensors ({exc})") from exc
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.dim() != 2 or weight.shape[0] != 1 or bias.shape != (1,):
        raise WeightsError(f"{path}: expected a (1, d) weight and a (1,) bias, got {sorted(tensors)}")
    if d_model is not None and weight.shape[1] != d_model:
        raise WeightsError(f"{path}: a head for d_model {weight.shape[1]} does not fit a backbone of {d_model}")
    head = nn.Linear(weight.shape[1], 1, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head


def save_reward_model(model: RewardModel, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Export for scoring: the backbone in lmstack's model-directory layout (LoRA adapters merged into a copy;
    `load_pretrained` reads it) with `reward_head/` beside it and the tokenizer; one atomic directory."""
    backbone = model.backbone
    if lora_layers(backbone):
        backbone = unload_lora(copy.deepcopy(backbone), merge=True)
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_model(backbone, str(tmp / "model.safetensors"))
        write_json(tmp / "config.json", {"model": to_dict(backbone.cfg), "reward_head": HEAD_DIR})
        if tokenizer is not None:
            tokenizer.save(tmp)
        save_reward_head(model, tmp)
    return directory


def load_reward_model(
    path: str | Path, base: str | DecoderLM | None = None, device: str = "cpu"
) -> tuple[RewardModel, Tokenizer | None]:
    """(reward model in eval mode, tokenizer or None) from `save_reward_model`'s directory or a reward run's
    checkpoint (or run directory). A LoRA run's checkpoint holds only the adapter and the head: give its
    `base` (a `load_pretrained` spec or the model itself)."""
    from lmstack.weights.load import load_pretrained

    path = Path(path)
    is_run = (path / "manifest.json").is_file() or path.name.startswith("step-") or any(path.glob("step-*"))
    if not is_run:
        backbone, tok = load_pretrained(path)
        model = RewardModel(backbone, load_reward_head(path, backbone.cfg.d_model))
        return model.to(device).eval(), tok
    ckpt = resolve_checkpoint(path)
    tok = Tokenizer.load(ckpt) if (ckpt / "tokenizer.json").is_file() else None
    if is_filtered_checkpoint(ckpt):
        if base is None:
            raise ConfigError(f"{ckpt} holds only a LoRA adapter and the reward head; pass base= (its base model)")
        backbone = load_pretrained(base)[0] if isinstance(base, str | Path) else base
        load_adapter(backbone, ckpt / ADAPTER_DIR)
        model = RewardModel(backbone, load_reward_head(ckpt, backbone.cfg.d_model))
    else:
        try:
            cfg = from_dict(
                ModelConfig, json.loads((ckpt / "config.json").read_text())["model"], path="config.json:model"
            )
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise WeightsError(f"{ckpt}/config.json is missing or malformed: {exc}") from exc
        model = RewardModel(build_model(cfg))
        load_weights(model, ckpt)
    return model.to(device).eval(), tok


# ----------------------------------------------------------------------------- training


class PairMetrics(Callback):
    """Logs `measure(model)` (a dict of floats, computed in eval mode without grad) as `<prefix>/<key>`
    records at the loop's evaluation points, every `eval_every` steps and at the end, and once before the
    first step of a fresh run (the untrained baseline). `last` holds the latest values."""

    def __init__(self, measure: Callable[[nn.Module], dict[str, float]], prefix: str) -> None:
        self.measure, self.prefix = measure, prefix
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def _run(self, step: int) -> None:
        model = self.state.model
        was = model.training
        model.eval()
        with torch.no_grad():
            self.last = self.measure(model)
        model.train(was)
        self.state.log_record({"step": step, **{f"{self.prefix}/{k}": round(v, 6) for k, v in self.last.items()}})

    def on_train_start(self, state: LoopState) -> None:
        self.state = state
        if state.start_step == 0:
            self._run(0)
            self.first = dict(self.last)

    def on_step_end(self, step: int, loss: float) -> None:
        cfg, done = self.state.cfg, step + 1
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            self._run(done)


def pair_batches(
    pairs: Sequence[PreferencePair], cfg: TrainConfig, make: Callable[[Sequence[PreferencePair]], dict[str, Tensor]]
) -> tuple[Callable[[int, range | None], dict[str, Tensor]], list[dict[str, Tensor]]]:
    """(step → batch function, fixed evaluation batches) over `pairs` for the loop."""
    pairs = list(pairs)

    def train_batch(step: int, rows: range | None = None) -> dict[str, Tensor]:
        return make([pairs[i] for i in pair_indices(len(pairs), cfg.batch_size, step, cfg.seed, rows)])

    return train_batch, [make(pairs[i : i + cfg.batch_size]) for i in range(0, len(pairs), cfg.batch_size)]


def check_fits(pairs: Sequence[PreferencePair], max_seq_len: int) -> None:
    """ConfigError when a rendered pair is longer than the model's context."""
    longest = max((len(s) for p in pairs for s in (p.chosen, p.rejected)), default=0)
    if longest > max_seq_len:
        raise ConfigError(
            f"a rendered response has {longest} tokens but the model's context is {max_seq_len}; lower the "
            "format's max_len (with truncation=left) or drop the long rows"
        )


@dataclass(frozen=True)
class RewardConfig:
    """`center_coef`: TRL's `center_rewards_coefficient` (0 = off; 0.01 is the value its docs suggest).
    `lora`: train LoRA adapters on the backbone (and the head) instead of every weight. `base_name`: the
    backbone's `load_pretrained` spec, recorded in the adapter's config."""

    center_coef: float = 0.0
    lora: LoRAConfig | None = None
    base_name: str = ""
    metrics_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.center_coef < 0:
            raise ConfigError(f"center_coef must be >= 0, got {self.center_coef}")
        if self.metrics_batch_size <= 0:
            raise ConfigError(f"metrics_batch_size must be positive, got {self.metrics_batch_size}")


def reward_job(
    model: DecoderLM | RewardModel,
    train_pairs: Sequence[PreferencePair],
    train_cfg: TrainConfig,
    val_pairs: Sequence[PreferencePair] | None = None,
    cfg: RewardConfig | None = None,
    tokenizer: Tokenizer | None = None,
    log: Callable[[str], None] = print,
) -> tuple[TrainingJob, PairMetrics]:
    """The reward model's `TrainingJob` (and its metrics callback). A bare `DecoderLM` gets a fresh head;
    with `cfg.lora` the backbone gets adapters and only they and the head train (checkpoints then hold just
    those, plus the adapter in peft's layout). Metrics come from `val_pairs`, else from the training pairs."""
    cfg = cfg or RewardConfig()
    rm = model if isinstance(model, RewardModel) else RewardModel(model)
    check_fits([*train_pairs, *(val_pairs or ())], rm.cfg.max_seq_len)
    rm.train()
    state_filter = None
    if cfg.lora is not None:
        torch.manual_seed(train_cfg.seed)  # the adapters' A matrices
        apply_lora(rm.backbone, cfg.lora)  # freezes the rest of the backbone
        rm.head.requires_grad_(True)
        state_filter = lambda name: is_lora_key(name) or name.startswith("head.")  # noqa: E731
        log(f"LoRA: {lora_summary(rm.backbone)['trainable']:,} adapter parameters + the reward head")
    elif not rm.cfg.tie_embeddings:
        rm.backbone.lm_head.requires_grad_(False)  # unused: no gradient would ever reach it (and DDP would wait)
    pad = rm.cfg.pad_token_id
    train_batch, fixed_eval = pair_batches(train_pairs, train_cfg, lambda ps: reward_batch(ps, pad))
    if val_pairs:
        fixed_eval = pair_batches(val_pairs, train_cfg, lambda ps: reward_batch(ps, pad))[1]
    else:
        log("reward model: no validation pairs; val_loss and metrics are on the training pairs")
    scored = list(val_pairs or train_pairs)
    metrics = PairMetrics(lambda m: reward_metrics(*score_pairs(m, scored, cfg.metrics_batch_size)), "reward")

    def write_extras(directory: Path) -> None:
        write_json(directory / "config.json", {"model": to_dict(rm.cfg), "reward_head": HEAD_DIR})
        save_reward_head(rm, directory)
        if tokenizer is not None:
            tokenizer.save(directory)
        if cfg.lora is not None:
            save_adapter(rm.backbone, directory / ADAPTER_DIR, base_name=cfg.base_name or None)

    job = TrainingJob(
        rm,
        reward_loss_fn(cfg.center_coef),
        train_batch,
        lambda: fixed_eval,
        write_extras,
        lambda b: int(b["chosen_mask"].sum() + b["rejected_mask"].sum()),
        callbacks=[metrics],
        state_filter=state_filter,
    )
    return job, metrics


def train_reward_model(
    model: DecoderLM | RewardModel,
    train_pairs: Sequence[PreferencePair],
    run_dir: str | Path,
    train_cfg: TrainConfig,
    val_pairs: Sequence[PreferencePair] | None = None,
    cfg: RewardConfig | None = None,
    tokenizer: Tokenizer | None = None,
    log: Callable[[str], None] = print,
) -> tuple[RewardModel, dict[str, Any]]:
    """Train a reward model on the one loop; returns it (in eval mode) and the loop's summary plus
    `metrics` (the last accuracy/margin/reward means) and `initial_metrics` (before the first step)."""
    job, metrics = reward_job(model, train_pairs, train_cfg, val_pairs, cfg, tokenizer, log)
    summary = train(job, train_cfg, run_dir, log)
    summary.update(metrics=metrics.last, initial_metrics=metrics.first)
    return job.model.eval(), summary
