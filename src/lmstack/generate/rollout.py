"""RL rollouts as tensors: a batch of `Completion`s padded into (tokens, logprobs, mask), and the log-probs
a model gives those tokens now (the other side of a PPO/GRPO ratio, or of a KL penalty to a reference).

    completions = engine.generate_ids(prompts, GenerationConfig(temperature=1.0, logprobs=True, seed=s))
    rollout = pad_completions(completions)
    new = sequence_logprobs(policy, prompts, rollout)           # with grad, in the policy's train/eval mode
    ratio = torch.exp(new - rollout.logprobs) * rollout.mask     # padding contributes nothing

The tokens are each row's `sampled_ids`, so a row that stopped keeps its stop token (and its log-prob).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmstack.errors import ConfigError, DataError
from lmstack.generate.engine import Completion
from lmstack.generate.sampling import token_logprobs
from lmstack.models.decoder import DecoderLM


@dataclass
class Rollout:
    """Right-padded completions: `tokens` (B, T) long, `pad_id` on padding; `logprobs` (B, T) fp32, the
    sampler's log-probs and 0 on padding, or None if they were not recorded; `mask` (B, T) bool, True on
    sampled tokens. T is the longest completion (at least 1, so that empty completions still make a batch)."""

    tokens: Tensor
    logprobs: Tensor | None
    mask: Tensor


def pad_completions(completions: Sequence[Completion], pad_id: int = 0, device: torch.device | str = "cpu") -> Rollout:
    """Stack the `sampled_ids` (and `logprobs`, when every completion has them) of a batch into a `Rollout`."""
    if not completions:
        raise DataError("pad_completions needs at least one completion")
    recorded = [c.logprobs is not None for c in completions]
    if any(recorded) and not all(recorded):
        raise ConfigError(
            "some completions have logprobs and some do not; generate the whole batch with one "
            "GenerationConfig(logprobs=True)"
        )
    width = max(1, *(len(c.sampled_ids) for c in completions))
    tokens = torch.full((len(completions), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(completions), width) if all(recorded) else None
    mask = torch.zeros(len(completions), width, dtype=torch.bool)
    for i, c in enumerate(completions):
        n = len(c.sampled_ids)
        tokens[i, :n] = torch.tensor(c.sampled_ids, dtype=torch.long)
        mask[i, :n] = True
        if logprobs is not None:
            logprobs[i, :n] = torch.tensor(c.logprobs, dtype=torch.float32)
    return Rollout(tokens.to(device), None if logprobs is None else logprobs.to(device), mask.to(device))


def sequence_logprobs(model: DecoderLM, prompts: Sequence[Sequence[int]], rollout: Rollout) -> Tensor:
    """log p(token | prompt, earlier tokens) under `model` as it is now, (B, T) fp32 and 0 on padding, from
    one forward pass over the left-padded prompts followed by the rollout's tokens. Runs in the caller's
    grad and train/eval mode (so it can be the differentiated side of a policy-gradient loss); the output
    head runs on the completion positions only."""
    if len(prompts) != rollout.tokens.shape[0]:
        raise DataError(f"{len(prompts)} prompts for a rollout of {rollout.tokens.shape[0]} rows")
    if any(len(p) == 0 for p in prompts):
        raise DataError("every prompt needs at least one token (its last one predicts the first sampled token)")
    dev = model.embed.tokens.weight.device
    tokens, mask = rollout.tokens.to(dev), rollout.mask.to(dev)
    bsz, width = tokens.shape
    longest = max(len(p) for p in prompts)
    ids = torch.full((bsz, longest), model.cfg.pad_token_id, dtype=torch.long, device=dev)
    prompt_mask = torch.zeros(bsz, longest, dtype=torch.bool, device=dev)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        prompt_mask[i, longest - len(p) :] = True
    hidden = model.hidden_states(torch.cat([ids, tokens], 1), torch.cat([prompt_mask, mask], 1).long())
    logits = model.lm_head(hidden[:, longest - 1 : longest - 1 + width])  # position t predicts token t + 1
    return token_logprobs(logits, tokens).masked_fill(~mask, 0.0)
