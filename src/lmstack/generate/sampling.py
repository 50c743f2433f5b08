"""Token sampling and a KV-cached generation loop for `DecoderLM`.

`generate` is the plain reference loop (one prompt or a left-padded batch); faster engines must produce
exactly its tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token ids (B,) from logits (B, V): greedy at temperature 0, else filtered sampling."""
    if temperature <= 0.0:
        return logits.argmax(-1)
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
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
) -> Tensor:
    """Return the new tokens (B, <= max_new_tokens). Rows that reach `eos_token_id` are padded with it.

    Prompts of different lengths go left-padded with `attention_mask` (1 = token).
    """
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    bsz, prompt_len = input_ids.shape
    mask = attention_mask
    cache = model.new_cache(bsz, prompt_len + max_new_tokens) if use_cache else None
    tokens = input_ids
    seq = input_ids
    done = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
    new = []
    for _ in range(max_new_tokens):
        logits = model(tokens if use_cache else seq, attention_mask=mask, cache=cache)[:, -1]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(done, eos_token_id)
            done |= nxt == eos_token_id
        new.append(nxt)
        tokens = nxt[:, None]
        seq = torch.cat([seq, tokens], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    model.train(was_training)
    return torch.stack(new, dim=1) if new else input_ids[:, :0]
