"""Pretraining objectives: causal LM (GPT), masked LM (BERT), span corruption (T5) and text-infilling
denoising (BART). Each is a pair: `make_batch(blocks, ids, generators)` turns raw token blocks into model
inputs, and `loss(model, batch)`. Randomness comes only from one generator per row (`row_generators`), so a
row's masking depends on (seed, step, global row index) alone: batches are reproducible on resume, and a rank
that builds only its own rows gets exactly the rows of the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


@dataclass(frozen=True)
class SpecialIds:
    """The token ids the objectives need, taken from the tokenizer."""

    pad: int
    eos: int
    mask: int | None = None
    sentinels: tuple[int, ...] = ()
    special: tuple[int, ...] = ()  # never chosen for masking
    vocab_size: int = 0


def row_generators(seed: int, step: int, rows: Sequence[int]) -> list[torch.Generator]:
    """One generator per global row index of optimizer step `step`: distinct for every (seed, step, row)
    while rows < 1_000_003."""
    return [torch.Generator().manual_seed((seed * 7_919 + step) * 1_000_003 + r) for r in rows]


def lm_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)


# ----------------------------------------------------------------------------- causal LM


def causal_lm_batch(blocks: Tensor, ids: SpecialIds, generators: Sequence[torch.Generator]) -> dict[str, Tensor]:
    """Blocks of T+1 tokens → inputs [:-1] and next-token labels [1:]."""
    return {"input_ids": blocks[:, :-1], "labels": blocks[:, 1:]}


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return lm_cross_entropy(model(batch["input_ids"], attention_mask=batch.get("attention_mask")), batch["labels"])


# ----------------------------------------------------------------------------- masked LM


def masked_lm_batch(
    blocks: Tensor, ids: SpecialIds, generators: Sequence[torch.Generator], mask_prob: float = 0.15
) -> dict[str, Tensor]:
    """BERT masking: choose 15% of non-special tokens; of those 80% → [MASK], 10% → random token, 10% kept."""
    if ids.mask is None:
        raise ValueError("masked_lm needs a tokenizer with a mask token")
    inputs = blocks.clone()
    labels = blocks.clone()
    can_mask = ~torch.isin(blocks, torch.tensor(ids.special or (ids.pad,), dtype=blocks.dtype))
    _check_generators(blocks, generators)
    length = blocks.shape[1]
    draws = [(torch.rand(length, generator=g), torch.rand(length, generator=g)) for g in generators]
    chosen = (torch.stack([d[0] for d in draws]) < mask_prob) & can_mask
    labels[~chosen] = IGNORE
    roll = torch.stack([d[1] for d in draws])
    inputs[chosen & (roll < 0.8)] = ids.mask
    random_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.stack([torch.randint(ids.vocab_size, (length,), generator=g) for g in generators])
    inputs[random_pos] = random_ids[random_pos]
    return {"input_ids": inputs, "labels": labels}


def masked_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    hidden = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    labels = batch["labels"]
    chosen = labels != IGNORE
    # the vocabulary projection only where a prediction is scored: ~15% of the tokens
    return lm_cross_entropy(model.mlm_logits(hidden[chosen]), labels[chosen])


# ----------------------------------------------------------------------------- seq2seq denoising


def _random_lengths(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """Split `total` items into `parts` positive lengths at random cut points."""
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1] + 1
    bounds = [0, *sorted(cuts.tolist()), total]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def _noise_spans(length: int, density: float, mean_span: float, generator: torch.Generator):
    """T5's span layout: alternating (kept, noise) runs with the right total noise and mean span length."""
    n_noise = min(max(1, round(length * density)), length - 1)
    n_spans = max(1, min(round(n_noise / mean_span), n_noise, length - n_noise))
    return _random_lengths(length - n_noise, n_spans, generator), _random_lengths(n_noise, n_spans, generator)


def _check_generators(blocks: Tensor, generators: Sequence[torch.Generator]) -> None:
    if len(generators) != blocks.shape[0]:
        raise ValueError(f"{blocks.shape[0]} rows need one generator each; got {len(generators)}")


def span_corruption_batch(
    blocks: Tensor,
    ids: SpecialIds,
    generators: Sequence[torch.Generator],
    density: float = 0.15,
    mean_span: float = 3.0,
) -> dict[str, Tensor]:
    """T5: each noise span becomes one sentinel in the input; the target lists sentinel + span for each."""
    _check_generators(blocks, generators)
    inputs, targets = [], []
    for row, generator in zip(blocks.tolist(), generators):
        keep, noise = _noise_spans(len(row), density, mean_span, generator)
        if len(noise) > len(ids.sentinels):
            raise ValueError(f"{len(noise)} spans need more sentinel tokens than the {len(ids.sentinels)} available")
        src, tgt, pos = [], [], 0
        for i, (k, n) in enumerate(zip(keep, noise)):
            src += row[pos : pos + k] + [ids.sentinels[i]]
            pos += k
            tgt += [ids.sentinels[i]] + row[pos : pos + n]
            pos += n
        inputs.append(src)
        targets.append(tgt + [ids.eos])
    return _pad_seq2seq(inputs, targets, ids.pad)


def denoising_batch(
    blocks: Tensor, ids: SpecialIds, generators: Sequence[torch.Generator], density: float = 0.3, mean_span: float = 3.0
) -> dict[str, Tensor]:
    """BART text infilling: each noise span becomes a single [MASK]; the target is the original text."""
    if ids.mask is None:
        raise ValueError("denoising needs a tokenizer with a mask token")
    _check_generators(blocks, generators)
    inputs, targets = [], []
    for row, generator in zip(blocks.tolist(), generators):
        keep, noise = _noise_spans(len(row), density, mean_span, generator)
        src, pos = [], 0
        for k, n in zip(keep, noise):
            src += row[pos : pos + k] + [ids.mask]
            pos += k + n
        inputs.append(src)
        targets.append(row + [ids.eos])
    return _pad_seq2seq(inputs, targets, ids.pad)


def _pad_seq2seq(inputs: list[list[int]], targets: list[list[int]], pad: int) -> dict[str, Tensor]:
    src_len, tgt_len = max(map(len, inputs)), max(map(len, targets))
    input_ids = torch.full((len(inputs), src_len), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full((len(targets), tgt_len), IGNORE, dtype=torch.long)
    for i, (s, t) in enumerate(zip(inputs, targets)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
        labels[i, : len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def seq2seq_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    labels = batch["labels"]
    logits = model(batch["input_ids"], model.shift_right(labels), attention_mask=batch.get("attention_mask"))
    return lm_cross_entropy(logits, labels)


@dataclass(frozen=True)
class Objective:
    make_batch: Callable[[Tensor, SpecialIds, Sequence[torch.Generator]], dict[str, Tensor]]
    loss: Callable[[nn.Module, dict[str, Tensor]], Tensor]
    block_extra: int  # tokens per block beyond seq_len (causal LM needs one more for the shifted labels)
    family: str


OBJECTIVES = {
    "causal_lm": Objective(causal_lm_batch, causal_lm_loss, 1, "decoder"),
    "masked_lm": Objective(masked_lm_batch, masked_lm_loss, 0, "encoder"),
    "span_corruption": Objective(span_corruption_batch, seq2seq_loss, 0, "seq2seq"),
    "denoising": Objective(denoising_batch, seq2seq_loss, 0, "seq2seq"),
}
