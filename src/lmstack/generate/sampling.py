"""Token sampling and a KV-cached reference generation loop for `DecoderLM`.

`generate` is the plain reference loop (one prompt or a left-padded batch); the faster `engine.Engine`
must produce exactly its tokens. Sampling draws each row from its own generator, so that a prompt gets
the same tokens for the same seed whether it is generated alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmstack.errors import ConfigError


@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop. `temperature == 0` is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # CTRL-style: >1 discourages tokens already in prompt or output
    stop: Sequence[str] = ()  # stop strings (text-level; not included in the returned text)
    stop_token_ids: Sequence[int] = ()  # in addition to the tokenizer's eos
    ignore_eos: bool = False
    seed: int | None = None
    # record each sampled token's log-probability (`Completion.logprobs`, see `token_logprobs`); off by default
    # because a log_softmax over the whole vocabulary per token is measurable at small-batch CPU decode speed
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Divide positive / multiply negative logits of already-seen tokens by `penalty` (seen: bool (B, V))."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log_softmax(logits) at `tokens`, in fp32: logits (..., V), tokens (...) → (...). Given the model's raw
    logits, this is the policy log-probability RL ratios and KL terms need: before temperature, top-k/top-p
    and repetition penalty, which only shape how the engine draws."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def filter_logits(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus set to -inf."""
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
) -> Tensor:
    """Pick the next token ids (B,) from logits (B, V): greedy at temperature 0, else filtered sampling.

    `generator` is one generator for the whole batch, or a sequence of one per row."""
    if temperature <= 0.0:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g).squeeze(-1) for i, g in enumerate(generator)])


def row_generators(bsz: int, seed: int | None, device: torch.device | str) -> list[torch.Generator] | None:
    """One generator per row, all seeded with `seed`: a row's draws do not depend on its batch mates."""
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(bsz)]


def seen_tokens(input_ids: Tensor, attention_mask: Tensor | None, vocab_size: int) -> Tensor:
    """bool (B, V): which tokens occur among the real (unpadded) prompt tokens of each row."""
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.int32, device=input_ids.device)
    src = torch.ones_like(input_ids, dtype=torch.int32) if attention_mask is None else attention_mask.to(torch.int32)
    return counts.scatter_add_(1, input_ids, src) > 0


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    stop_token_ids: Sequence[int] = (),
) -> Tensor:
    """Return the new tokens (B, <= max_new_tokens). A row stops at `eos_token_id` or any of
    `stop_token_ids` (the stop token is kept); finished rows are padded with `eos_token_id` (or the first
    stop id). Prompts of different lengths go left-padded with `attention_mask` (1 = token)."""
    was_training = model.training
    model.eval()
    bsz, prompt_len = input_ids.shape
    generators = row_generators(bsz, seed, input_ids.device)
    stops = torch.tensor(
        sorted({*stop_token_ids, *([eos_token_id] if eos_token_id is not None else [])}),
        dtype=torch.long,
        device=input_ids.device,
    )
    fill = eos_token_id if eos_token_id is not None else (int(stop_token_ids[0]) if len(stop_token_ids) else 0)
    seen = seen_tokens(input_ids, attention_mask, model.cfg.vocab_size) if repetition_penalty != 1.0 else None
    mask = attention_mask
    cache = model.new_cache(bsz, prompt_len + max_new_tokens) if use_cache else None
    tokens = input_ids
    seq = input_ids
    done = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
    new = []
    for _ in range(max_new_tokens):
        logits = model(tokens if use_cache else seq, attention_mask=mask, cache=cache)[:, -1]
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        nxt = sample_next(logits, temperature, top_k, top_p, generators)
        if len(stops):
            nxt = nxt.masked_fill(done, fill)
            done |= torch.isin(nxt, stops)
        if seen is not None:
            seen[torch.arange(bsz), nxt] = True
        new.append(nxt)
        tokens = nxt[:, None]
        seq = torch.cat([seq, tokens], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        if len(stops) and bool(done.all()):
            break
    model.train(was_training)
    return torch.stack(new, dim=1) if new else input_ids[:, :0]
