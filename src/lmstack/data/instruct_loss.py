"""Completion-only losses over instruction batches (see `instruct_batch` for the batch layout).

Labels in these batches are already shifted per sample, so `logits[b, t]` is scored against `labels[b, t]`
and no target ever crosses from one packed sample into the next. Positions labelled IGNORE_INDEX (prompt,
system and user tokens, padding) contribute nothing, not even to the divisor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.data.instruct import IGNORE_INDEX, Sample
from lmstack.data.instruct_batch import eval_batches

MODEL_KEYS = ("input_ids", "attention_mask", "positions", "segment_ids")


def _wide(logits: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 logits are upcast; float64 stays float64, for exactness tests)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch entries a DecoderLM takes (segment_ids only when the rows are packed)."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def completion_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy over the trained tokens of the whole batch: `TrainingJob.loss_fn`. The divisor is
    the rows' `label_norm` shares (the step's count, however its rows are split), else this batch's count."""
    labels = batch["labels"]
    keep = labels != IGNORE_INDEX
    logits = model(**model_inputs(batch), logits_at=keep)  # the head runs on trained positions only
    total = F.cross_entropy(_wide(logits), labels[keep], reduction="sum")
    norm = batch["label_norm"].sum() if "label_norm" in batch else keep.sum()
    return total / norm.to(total.dtype).clamp_min(torch.finfo(total.dtype).tiny)


def token_losses(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy of every position (B, T), at least float32; 0 where the label is ignored."""
    logits = model(**model_inputs(batch))
    labels = batch["labels"]
    flat = F.cross_entropy(_wide(logits.flatten(0, 1)), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return flat.view(labels.shape)


def sample_losses(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean loss over each sample's trained tokens, one value per sample in row-major order (row 0's
    samples first): the order the samples were given to `make_batch`. Summed in float64, so that how the
    samples are laid out in rows adds no rounding of its own."""
    losses = token_losses(model, batch).double()
    trained = (batch["labels"] != IGNORE_INDEX).double()
    segment = batch.get("segment_ids", batch["attention_mask"]).long()
    width = int(segment.max()) + 1
    key = (torch.arange(segment.shape[0], device=segment.device)[:, None] * width + segment).flatten()
    sums = torch.zeros(segment.shape[0] * width, dtype=losses.dtype, device=losses.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, key, losses.flatten())
    counts.index_add_(0, key, trained.flatten())
    present = torch.zeros_like(sums, dtype=torch.bool)
    present[key[segment.flatten() > 0]] = True
    return sums[present] / counts[present].clamp_min(1)


@torch.no_grad()
def per_task_loss(
    model: nn.Module,
    eval_sets: Mapping[str, Sequence[Sample]],
    batch_size: int = 8,
    pack: bool = False,
    seq_len: int | None = None,
    pad_id: int = 0,
) -> dict[str, float]:
    """Validation loss of each named set: the mean over all its trained tokens (the training loss's
    normalisation), computed in eval mode on the model's device; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    try:
        for name, samples in eval_sets.items():
            total, count = 0.0, 0
            for batch in eval_batches(samples, batch_size, pack, seq_len, pad_id):
                batch = {k: v.to(device) for k, v in batch.items()}
                total += float(token_losses(model, batch).double().sum())
                count += int((batch["labels"] != IGNORE_INDEX).sum())
            out[name] = total / count
    finally:
        model.train(was_training)
    return out
