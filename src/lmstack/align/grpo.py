"""GRPO (Shao et al. 2024, DeepSeekMath) and Dr. GRPO (Liu et al. 2025): PPO without a value model.

Each prompt is sampled G times; a completion's advantage is its reward against its own group's,

    GRPO:      A_i = (r_i - mean(r)) / (std(r) + eps)        Dr. GRPO:  A_i = r_i - mean(r)

given to every token of the completion, in PPO's clipped-ratio loss, plus optionally β·KL to the reference
(the k3 estimator, per token). GRPO averages each completion's tokens, then the completions; Dr. GRPO sums
the tokens and divides by a constant (completions × max_new_tokens), because both the std division and the
per-sequence mean bias the update (towards easy or hard prompts, and towards long wrong answers).

A group whose rewards are all equal has zero advantage everywhere: it teaches nothing, so its rows are
dropped before the forward pass (with β > 0 they would only pull towards the reference) and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lmstack.align.ppo import (
    aggregate,
    apply_missing_eos_penalty,
    check_sampling,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    reference_logprobs,
    truncated_rows,
)
from lmstack.errors import ConfigError, DataError
from lmstack.generate.engine import Completion
from lmstack.generate.rollout import Rollout, pad_completions, sequence_logprobs
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.decoder import DecoderLM

Aggregation = Literal["seq-mean-token-mean", "token-sum", "token-mean"]


@dataclass
class GroupAdvantages:
    """Per-completion advantages (N,), which rows belong to a group with any reward spread (`keep`), and
    how many groups had none (`skipped_groups`)."""

    advantages: Tensor
    keep: Tensor
    skipped_groups: int


def group_advantages(
    rewards: Tensor | Sequence[float],
    group_size: int,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-4,
    skip_equal: bool = True,
) -> GroupAdvantages:
    """Advantages of N = P·G rewards laid out group by group (prompt 0's G samples, then prompt 1's, ...):
    r - group mean, divided by (group std + eps) when `scale_by_std` (std with Bessel's correction, as in
    TRL). With `skip_equal`, the rows of groups whose rewards are all equal are marked not kept."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.ndim != 1 or group_size < 1 or r.numel() % group_size:
        raise DataError(f"{r.numel()} rewards do not split into groups of {group_size}")
    if group_size < 2:
        raise ConfigError("group advantages need at least 2 samples per prompt (group_size >= 2)")
    groups = r.view(-1, group_size)
    adv = groups - groups.mean(1, keepdim=True)
    if scale_by_std:
        adv = adv / (groups.std(1, keepdim=True) + eps)
    equal = groups.max(1).values == groups.min(1).values
    keep = ~equal if skip_equal else torch.ones_like(equal)
    return GroupAdvantages(adv.reshape(-1), keep.repeat_interleave(group_size), int(equal.sum()) if skip_equal else 0)


@dataclass
class GRPOLoss:
    loss: Tensor
    clip_frac: Tensor
    kl: Tensor  # mean per-token k3 KL(policy‖reference), 0 without a reference


def grpo_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    aggregation: Aggregation = "seq-mean-token-mean",
    **denominators: Any,
) -> GRPOLoss:
    """The clipped-ratio loss with one advantage per sequence (`advantages` (B,)) plus β·k3 KL to the
    reference per token, aggregated by `aggregation` (`ppo.aggregate`; `denominators` as there)."""
    policy = ppo_policy_loss(new_logprobs, old_logprobs, advantages, mask, clip, mode=aggregation, **denominators)
    if ref_logprobs is None or beta == 0:
        return GRPOLoss(policy.loss, policy.clip_frac, torch.zeros((), device=new_logprobs.device))
    kl = kl_penalty(new_logprobs, ref_logprobs.detach(), "k3")
    loss = policy.loss + beta * aggregate(kl, mask, aggregation, **denominators)
    return GRPOLoss(loss, policy.clip_frac, masked_mean(kl.detach(), mask))


@dataclass(frozen=True)
class GRPOConfig:
    """One GRPO step's settings. `dr_grpo`: no std division and token-sum aggregation (Dr. GRPO), unless
    `aggregation` names another. `iterations` (μ): optimizer steps on the same samples (each one a pass
    over the minibatches with gradients accumulated); with μ = 1 the old log-probs are the current ones.
    `beta`: weight of the k3 KL to the reference (0: no reference pass at all)."""

    group_size: int
    clip: float = 0.2
    beta: float = 0.0
    dr_grpo: bool = False
    aggregation: Aggregation | None = None  # None: seq-mean-token-mean, or token-sum with dr_grpo
    eps: float = 1e-4
    skip_equal: bool = True
    iterations: int = 1
    minibatch_size: int = 0  # rows per backward pass; 0: all kept rows at once
    max_grad_norm: float | None = 1.0
    missing_eos_penalty: float | None = None

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (samples of one prompt are compared), got {self.group_size}")
        if not 0 < self.clip < 1 or self.beta < 0:
            raise ConfigError(f"clip must be in (0, 1) and beta >= 0, got {self.clip}, {self.beta}")
        if self.iterations < 1 or self.minibatch_size < 0:
            raise ConfigError(f"need iterations >= 1, minibatch_size >= 0: {self.iterations}, {self.minibatch_size}")

    @property
    def loss_aggregation(self) -> Aggregation:
        if self.aggregation is not None:
            return self.aggregation
        return "token-sum" if self.dr_grpo else "seq-mean-token-mean"


def _check_groups(prompts: Sequence[Sequence[int]], group_size: int) -> None:
    """Group i is rows i·G .. i·G + G - 1, all from one prompt: a shuffled batch would compare the rewards of
    different prompts and silently learn nothing useful."""
    for start in range(0, len(prompts), group_size):
        first = list(prompts[start])
        if any(list(p) != first for p in prompts[start + 1 : start + group_size]):
            raise DataError(
                f"rows {start}..{start + group_size - 1} are not one prompt's group; lay the batch out as each "
                "prompt's group_size samples in a row"
            )


def grpo_step(
    policy: DecoderLM,
    optimizer: torch.optim.Optimizer,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Completion],
    rewards: Sequence[float] | Tensor,
    sampling: GenerationConfig,
    config: GRPOConfig,
    reference: DecoderLM | None = None,
) -> dict[str, float]:
    """One GRPO update on a batch of groups; returns its metrics. `prompts[i]` are the token ids completion
    i was sampled from with `sampling` (checked by `ppo.check_sampling`), each prompt's `group_size`
    samples in a row; `rewards[i]` its scalar reward. `reference`: the frozen reference for β > 0 (None:
    the LoRA policy with its adapters disabled)."""
    check_sampling(sampling)
    if not len(prompts) == len(completions) == len(rewards):
        raise DataError(f"{len(prompts)} prompts, {len(completions)} completions, {len(rewards)} rewards")
    _check_groups(prompts, config.group_size)
    raw = torch.as_tensor(rewards, dtype=torch.float32)
    score = apply_missing_eos_penalty(raw, truncated_rows(completions), config.missing_eos_penalty)
    groups = group_advantages(
        score, config.group_size, scale_by_std=not config.dr_grpo, eps=config.eps, skip_equal=config.skip_equal
    )
    stats = {
        "reward": float(raw.mean()),
        "reward_std": float(raw.view(-1, config.group_size).std(1).mean()),
        "skipped_groups": float(groups.skipped_groups),
        "groups": float(len(completions) // config.group_size),
        "truncated": float(truncated_rows(completions).sum()),
    }
    kept = groups.keep.nonzero().squeeze(1).tolist()
    stats["kept_rows"] = float(len(kept))
    if not kept:
        return stats | {"steps": 0.0}

    device = policy.embed.tokens.weight.device
    rows = [completions[i] for i in kept]
    kept_prompts = [prompts[i] for i in kept]
    rollout = pad_completions(rows, device=device)
    adv = groups.advantages[kept].to(device)
    mode = config.loss_aggregation
    denominators = {"n_rows": len(kept), "n_tokens": int(rollout.mask.sum()), "max_tokens": sampling.max_new_tokens}
    ref = reference_logprobs(policy, kept_prompts, rollout, reference) if config.beta > 0 else None
    old = None
    if config.iterations > 1:
        with torch.no_grad():
            old = sequence_logprobs(policy, kept_prompts, rollout)
    size = config.minibatch_size or len(kept)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0}
    steps = skipped_nonfinite = 0
    for _ in range(config.iterations):
        optimizer.zero_grad(set_to_none=True)
        total, finite = {k: 0.0 for k in sums}, True
        for start in range(0, len(kept), size):
            sl = slice(start, start + size)
            sub_prompts = kept_prompts[sl]
            sub = Rollout(rollout.tokens[sl], None, rollout.mask[sl])
            new = sequence_logprobs(policy, sub_prompts, sub)
            out = grpo_loss(
                new,
                new.detach() if old is None else old[sl],
                adv[sl],
                sub.mask,
                config.clip,
                None if ref is None else ref[sl],
                config.beta,
                mode,
                **denominators,
            )
            if not torch.isfinite(out.loss):
                finite = False
                break
            out.loss.backward()
            share = sub.mask.shape[0] / len(kept)  # diagnostics: row-weighted means over the minibatches
            total["loss"] += out.loss.item()
            total["clip_frac"] += float(out.clip_frac) * share
            total["kl"] += float(out.kl) * share
        if not finite:
            skipped_nonfinite += 1
            continue
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        steps += 1
        for k in sums:
            sums[k] += total[k]
    optimizer.zero_grad(set_to_none=True)
    stats |= {k: v / steps if steps else float("nan") for k, v in sums.items()}
    return stats | {"steps": float(steps), "skipped_nonfinite": float(skipped_nonfinite)}
