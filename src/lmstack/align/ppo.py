"""PPO for language models, InstructGPT style (Ziegler et al. 2019; Ouyang et al. 2022; Schulman et al. 2017).

A rollout is a batch of completions sampled from the policy (`generate.engine.Engine.generate_ids` with
`logprobs=True`); `ppo_update` turns one such batch into several optimizer steps:

1. one no-grad forward pass gives the policy's log-probs of the sampled tokens (the ratio's denominator)
   and the value head's values; the reference model's log-probs come from a second one (for a LoRA policy:
   the same model with its adapters disabled);
2. rewards per token: -β·KL(policy‖reference) everywhere, plus the scalar score at each row's last real
   token; a row that hit max_new_tokens without stopping first loses `missing_eos_penalty`;
3. GAE advantages and returns (terminal at the end of each row), the advantages whitened over the batch;
4. `epochs` passes over shuffled minibatches: clipped surrogate + clipped value loss (- entropy bonus,
   + PPO-ptx pretraining loss), one optimizer step each. A minibatch whose approximate KL to the rollout's
   policy already exceeds `max_approx_kl` (a ratio blow-up) is skipped and counted, not stepped.

The ratio is only a ratio of the policy's own probabilities when the rollout was sampled from exactly them:
temperature 1, no top-k/top-p, no repetition penalty. `check_sampling` enforces that; a negative mean KL
estimate (impossible for samples from the policy) is reported as a metric and a warning.

Everything is over right-padded (B, T) tensors with a bool mask, as `generate.rollout.pad_completions` makes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lmstack.errors import ConfigError, DataError
from lmstack.finetune.lora import disable_adapters, lora_layers
from lmstack.generate.engine import Completion
from lmstack.generate.rollout import Rollout, pad_completions, sequence_logprobs
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.decoder import DecoderLM
from lmstack.train.objectives import causal_lm_loss

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS = ("k1", "k2", "k3")
NEGATIVE_KL_TOL = 1e-3  # per-sequence nats: below -this, the samples cannot have come from the policy

# ----------------------------------------------------------------------------- masked statistics


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over the True positions (0 where there are none, instead of NaN)."""
    return masked_sum(x, mask, dim) / (mask.sum() if dim is None else mask.sum(dim)).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over the True positions (Bessel-corrected when `unbiased` and there are at least 2)."""
    n = mask.sum()
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * n / (n - 1) if unbiased and n > 1 else var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the real tokens of the whole batch, 0 on padding: advantages on one scale
    whatever the reward's, so one learning rate fits every task. `shift_mean=False` keeps the mean."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def check_right_padded(mask: Tensor) -> None:
    """GAE runs backwards from each row's end: its real tokens must come first, then only padding."""
    if mask.ndim != 2:
        raise DataError(f"expected a (batch, tokens) mask, got shape {tuple(mask.shape)}")
    if (mask[:, 1:].long() > mask[:, :-1].long()).any():
        raise DataError("the mask must be right-padded: every row's real tokens first, then only padding")


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token; a row without any is an error (nothing to reward)."""
    lengths = mask.long().sum(1)
    if (lengths == 0).any():
        raise DataError("a row has no sampled tokens, so there is no token to give its score to")
    return lengths - 1


# ----------------------------------------------------------------------------- rewards and advantages


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded (B, T) rows:

        δ_t = r_t + γ·V_{t+1} - V_t,   A_t = δ_t + γλ·A_{t+1},   returns_t = A_t + V_t

    with V and A zero past each row's last real token (the episode ends there). Padding gets 0 in both
    outputs, whatever `rewards` and `values` hold there. Computed without grad (they are targets)."""
    check_right_padded(mask)
    if rewards.shape != mask.shape or values.shape != mask.shape:
        raise DataError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)}")
    m = mask.to(rewards.dtype)
    rewards, values = rewards.detach() * m, values.detach() * m
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * m


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(policy‖reference) from tokens sampled from the policy (Schulman's
    estimators, with d = log π - log π_ref): k1 = d (unbiased, can be negative: InstructGPT's penalty),
    k2 = d²/2, k3 = exp(-d) - 1 + d (unbiased and never negative: GRPO's)."""
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.exp(-d) - 1 + d
    raise ConfigError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")


def shape_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float, kind: KLKind = "k1"
) -> tuple[Tensor, Tensor]:
    """(rewards, kl), both (B, T): rewards = -kl_coef·kl on every real token, plus `scores[i]` (B,) on row
    i's last real token (the reward model judges the whole completion); 0 on padding."""
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def truncated_rows(completions: Sequence[Completion]) -> Tensor:
    """(B,) bool: the rows that ran into max_new_tokens instead of choosing to stop."""
    return torch.tensor([c.finish_reason == "length" for c in completions], dtype=torch.bool)


def apply_missing_eos_penalty(scores: Tensor, truncated: Tensor, penalty: float | None) -> Tensor:
    """Scores minus `penalty` on truncated rows: otherwise a policy learns that rambling to the length limit
    costs nothing, as long as the (unjudged) cut-off text scores well. None or 0 = no penalty."""
    if not penalty:
        return scores
    return scores - penalty * truncated.to(scores.device, scores.dtype)


# ----------------------------------------------------------------------------- losses


@dataclass
class PolicyLoss:
    """The clipped surrogate loss and its diagnostics: the fraction of tokens where clipping was active and
    the mean k3 estimate of KL(old‖new) (0 at the first minibatch of an update)."""

    loss: Tensor
    clip_frac: Tensor
    approx_kl: Tensor
    ratio: Tensor  # (B, T), 1 on padding


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    n_rows: int | None = None,
    n_tokens: int | float | None = None,
    max_tokens: int | None = None,
) -> Tensor:
    """A scalar loss from per-token terms. `token-mean`: mean over every real token of the batch (PPO);
    `seq-mean-token-mean`: each row's token mean, then the mean over rows (GRPO); `token-sum`: the sum over
    every real token divided by a constant, rows × `max_tokens` (Dr. GRPO: no length normalisation, so long
    wrong answers are not penalised less per token). `n_rows`/`n_tokens` override the denominators, so that
    minibatches of one batch add up to the whole batch's loss (gradient accumulation)."""
    mask = mask.to(per_token.dtype)
    rows = per_token.shape[0] if n_rows is None else n_rows
    if mode == "token-mean":
        return masked_sum(per_token, mask) / max(float(mask.sum()) if n_tokens is None else float(n_tokens), 1.0)
    if mode == "seq-mean-token-mean":
        return (masked_sum(per_token, mask, 1) / mask.sum(1).clamp(min=1)).sum() / max(rows, 1)
    if mode == "token-sum":
        if max_tokens is None or max_tokens < 1:
            raise ConfigError("token-sum aggregation divides by rows × max_tokens; give max_tokens >= 1")
        return masked_sum(per_token, mask) / (max(rows, 1) * max_tokens)
    raise ConfigError(f"unknown loss aggregation {mode!r}; choose token-mean, seq-mean-token-mean or token-sum")


def ppo_policy_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    mode: str = "token-mean",
    **denominators: Any,
) -> PolicyLoss:
    """max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)) per token with ρ = π_new/π_old, aggregated by `mode` (see
    `aggregate`). `advantages` are (B, T) or (B,) (one per sequence, GRPO). Clipping stops the update from
    leaving the region where the rollout's samples still say something about the new policy."""
    if advantages.ndim == 1:
        advantages = advantages[:, None].expand_as(new_logprobs)
    log_ratio = (new_logprobs - old_logprobs.detach()) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, mode, **denominators)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
    return PolicyLoss(loss, clip_frac, approx_kl, ratio)


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.2
) -> tuple[Tensor, Tensor]:
    """(loss, clip fraction): ½·mean(max((V - R)², (V_clip - R)²)) with V_clip = V_old + clip(V - V_old, ±ε),
    the value function's own trust region (`clip=None`: the plain squared error)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), torch.zeros((), device=values.device)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, frac


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dimension, in fp32: logsumexp(z) - Σ softmax(z)·z."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


# ----------------------------------------------------------------------------- KL coefficient


@dataclass
class FixedKLController:
    """A constant β."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target - 1, ±0.2)·n_steps/horizon), which steers the
    per-sequence KL towards `target` nats; `n_steps` counts the samples (or updates) since the last call."""

    value: float
    target: float = 6.0
    horizon: int = 10_000

    def __post_init__(self) -> None:
        if self.value < 0 or self.target <= 0 or self.horizon < 1:
            raise ConfigError(
                f"adaptive KL needs value >= 0, target > 0 and horizon >= 1, got {self.value}, {self.target}, "
                f"{self.horizon}"
            )

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# ----------------------------------------------------------------------------- the policy's forward pass


class ValueHead(nn.Module):
    """V(state) = w·h + b over the policy's final hidden state at the position that predicts each token
    (the trunk is shared with the policy: one forward pass gives both). Zero-initialised, so the first
    advantages are the rewards themselves and no random critic biases the first update."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @classmethod
    def for_model(cls, model: DecoderLM) -> ValueHead:
        p = model.embed.tokens.weight
        return cls(model.cfg.d_model).to(device=p.device, dtype=torch.float32)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)


@contextmanager
def capture_hidden(model: DecoderLM) -> Iterator[list[Tensor]]:
    """Collect the final-norm hidden states of every forward pass run inside the block, so that the value
    head reads the pass `sequence_logprobs` already makes instead of running a second one."""
    store: list[Tensor] = []
    handle = model.norm.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        yield store
    finally:
        handle.remove()


def policy_forward(
    policy: DecoderLM,
    value_head: ValueHead | None,
    prompts: Sequence[Sequence[int]],
    rollout: Rollout,
    logits: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(log-probs, values, logits) of a rollout from one policy forward pass: `sequence_logprobs`, then the
    value head (and, with `logits`, the output head again, for the entropy) on the hidden states of the
    completion positions: `sequence_logprobs` puts the left-padded prompts first, so position
    longest_prompt - 1 + t is the one that predicts sampled token t."""
    with capture_hidden(policy) as store:
        logprobs = sequence_logprobs(policy, prompts, rollout)
    if value_head is None and not logits:
        return logprobs, None, None
    if len(store) != 1:
        raise DataError(f"expected one forward pass of the policy, saw {len(store)}")
    start, width = max(len(p) for p in prompts) - 1, rollout.tokens.shape[1]
    hidden = store[0][:, start : start + width]
    values = value_head(hidden) * rollout.mask.to(hidden.device) if value_head is not None else None
    return logprobs, values, policy.lm_head(hidden) if logits else None


def reference_logprobs(
    policy: DecoderLM, prompts: Sequence[Sequence[int]], rollout: Rollout, reference: DecoderLM | None = None
) -> Tensor:
    """The frozen reference's log-probs of the rollout, without grad: `reference` when given, else the
    policy itself with its LoRA adapters disabled (the base model is the reference, no second copy)."""
    with torch.no_grad():
        if reference is not None:
            return sequence_logprobs(reference, prompts, rollout)
        if not lora_layers(policy):
            raise ConfigError(
                "no reference model: pass reference=<frozen copy of the initial policy>, or train the policy "
                "as LoRA adapters, whose disabled base is the reference"
            )
        with disable_adapters(policy):
            return sequence_logprobs(policy, prompts, rollout)


def check_sampling(config: GenerationConfig) -> None:
    """Raise ConfigError unless `config` samples from the policy's own distribution and records log-probs:
    temperature, top-k/top-p and the repetition penalty change which tokens are drawn but not the log-probs
    the ratio and the KL penalty are computed from, so with them the estimates are biased."""
    wrong = []
    if config.temperature != 1.0:
        wrong.append(f"temperature={config.temperature} (need 1.0)")
    if config.top_k != 0:
        wrong.append(f"top_k={config.top_k} (need 0)")
    if config.top_p != 1.0:
        wrong.append(f"top_p={config.top_p} (need 1.0)")
    if config.repetition_penalty != 1.0:
        wrong.append(f"repetition_penalty={config.repetition_penalty} (need 1.0)")
    if not config.logprobs:
        wrong.append("logprobs=False (need True)")
    if wrong:
        raise ConfigError(
            "RL rollouts must be sampled from the policy's own distribution, but the GenerationConfig has "
            + ", ".join(wrong)
        )


# ----------------------------------------------------------------------------- one PPO update


@dataclass(frozen=True)
class PPOConfig:
    """One PPO update's settings (InstructGPT-like defaults). `minibatch_size=0`: the whole batch.
    `max_approx_kl`: skip a minibatch whose KL(old‖new) estimate exceeds it (None: never). `ptx_coef`:
    weight of the pretraining loss (PPO-ptx) when `ppo_update` gets a `ptx_batch`."""

    epochs: int = 4
    minibatch_size: int = 0
    clip: float = 0.2
    value_clip: float | None = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_kind: KLKind = "k1"
    whiten_advantages: bool = True
    max_grad_norm: float | None = 1.0
    max_approx_kl: float | None = 1.0
    missing_eos_penalty: float | None = None
    ptx_coef: float = 0.0
    seed: int | None = None  # minibatch shuffling (None: the global torch RNG)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.minibatch_size < 0:
            raise ConfigError(f"epochs must be >= 1 and minibatch_size >= 0, got {self.epochs}, {self.minibatch_size}")
        if not 0 < self.clip < 1:
            raise ConfigError(f"clip must be in (0, 1), got {self.clip}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.kl_kind not in KL_KINDS:
            raise ConfigError(f"kl_kind must be one of {', '.join(KL_KINDS)}, got {self.kl_kind!r}")


PtxLoss = Callable[[nn.Module, dict[str, Tensor]], Tensor]


def _minibatches(n: int, size: int, seed: int | None, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    order = torch.randperm(n, generator=gen).to(device)
    return list(order.split(size or n))


def _sub(rollout: Rollout, idx: Tensor) -> Rollout:
    logprobs = None if rollout.logprobs is None else rollout.logprobs[idx]
    return Rollout(rollout.tokens[idx], logprobs, rollout.mask[idx])


def rollout_stats(rollout: Rollout, logprobs: Tensor, ref_logprobs: Tensor, truncated: Tensor) -> dict[str, float]:
    """Metrics of a rollout before any update: mean per-sequence KL (k1), whether it is impossibly
    negative (warned: the samples are not the policy's), how far the sampler's recorded log-probs are from
    the policy's (a gap: the engine's packed weights are stale, call `Engine.refresh()`), truncation."""
    mask = rollout.mask
    kl = float(masked_sum(logprobs - ref_logprobs, mask, 1).mean())
    out = {"kl": kl, "kl_negative": float(kl < -NEGATIVE_KL_TOL), "truncated": float(truncated.sum())}
    out["length"] = float(mask.sum(1).float().mean())
    if rollout.logprobs is not None:
        out["sampler_logprob_gap"] = float(masked_mean((rollout.logprobs.to(logprobs) - logprobs).abs(), mask))
    if kl < -NEGATIVE_KL_TOL:
        warnings.warn(
            f"mean KL(policy‖reference) estimate is {kl:.4f} < 0: the rollout was not sampled from the policy "
            "(temperature / top-k / top-p, or engine weights not refreshed after an optimizer step)",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def ppo_update(
    policy: DecoderLM,
    value_head: ValueHead,
    optimizer: torch.optim.Optimizer,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Completion],
    scores: Sequence[float] | Tensor,
    sampling: GenerationConfig,
    kl_coef: float,
    config: PPOConfig | None = None,
    reference: DecoderLM | None = None,
    ptx_batch: dict[str, Tensor] | None = None,
    ptx_loss: PtxLoss = causal_lm_loss,
) -> dict[str, float]:
    """One PPO update on one rollout batch (steps 1-4 of the module docstring); returns its metrics.

    `prompts[i]` are the token ids completion i was sampled from with `sampling` (checked by
    `check_sampling`); `scores[i]` its scalar reward. The optimizer must hold the policy's trainable
    parameters and the value head's. `reference`: the frozen reference model (None: the LoRA policy with
    its adapters disabled). Runs in the caller's train/eval mode (eval: no dropout, so the first minibatch's
    ratio is exactly 1). After it, refresh the engine before sampling the next rollout."""
    config = config or PPOConfig()
    check_sampling(sampling)
    if not len(prompts) == len(completions) == len(scores):
        raise DataError(f"{len(prompts)} prompts, {len(completions)} completions, {len(scores)} scores")
    if ptx_batch is not None and not config.ptx_coef:
        raise ConfigError("a ptx_batch without PPOConfig.ptx_coef > 0 would be ignored; set ptx_coef (PPO-ptx)")
    device = policy.embed.tokens.weight.device
    rollout = pad_completions(completions, device=device)
    mask = rollout.mask
    truncated = truncated_rows(completions).to(device)
    raw = torch.as_tensor(scores, dtype=torch.float32).to(device)
    score = apply_missing_eos_penalty(raw, truncated, config.missing_eos_penalty)

    with torch.no_grad():
        old_logprobs, old_values, _ = policy_forward(policy, value_head, prompts, rollout)
        assert old_values is not None
        ref = reference_logprobs(policy, prompts, rollout, reference)
        rewards, kl = shape_rewards(score, old_logprobs, ref, mask, kl_coef, config.kl_kind)
        advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)

    stats = rollout_stats(rollout, old_logprobs, ref, truncated)
    stats |= {"score": float(score.mean()), "score_raw": float(raw.mean()), "kl_coef": float(kl_coef)}
    stats["kl_penalty"] = float((-kl_coef * kl).sum(1).mean())
    stats["returns"] = float(masked_mean(returns, mask))
    sums = dict.fromkeys(("policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl"), 0.0)
    if config.entropy_coef:
        sums["entropy"] = 0.0
    if ptx_batch is not None:
        sums["ptx_loss"] = 0.0
    steps = skipped_kl = skipped_nonfinite = 0
    params = [p for group in optimizer.param_groups for p in group["params"]]

    for epoch in range(config.epochs):
        seed = None if config.seed is None else config.seed + epoch
        for idx in _minibatches(len(completions), config.minibatch_size, seed, device):
            sub, m = _sub(rollout, idx), mask[idx]
            sub_prompts = [prompts[int(i)] for i in idx]
            new_logprobs, values, logits = policy_forward(
                policy, value_head, sub_prompts, sub, logits=bool(config.entropy_coef)
            )
            pl = ppo_policy_loss(new_logprobs, old_logprobs[idx], advantages[idx], m, config.clip)
            if config.max_approx_kl is not None and pl.approx_kl.item() > config.max_approx_kl:
                skipped_kl += 1
                continue
            assert values is not None
            vl, vclip = ppo_value_loss(values, old_values[idx], returns[idx], m, config.value_clip)
            loss = pl.loss + config.vf_coef * vl
            terms = {"policy_loss": pl.loss, "value_loss": vl, "clip_frac": pl.clip_frac}
            terms |= {"value_clip_frac": vclip, "approx_kl": pl.approx_kl}
            if logits is not None:
                entropy = masked_mean(entropy_from_logits(logits), m)
                loss = loss - config.entropy_coef * entropy
                terms["entropy"] = entropy
            if "ptx_loss" in sums:
                assert ptx_batch is not None
                ptx = ptx_loss(policy, ptx_batch)
                loss = loss + config.ptx_coef * ptx
                terms["ptx_loss"] = ptx
            if not torch.isfinite(loss):
                skipped_nonfinite += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            steps += 1
            for k, v in terms.items():
                sums[k] += float(v.detach())
    optimizer.zero_grad(set_to_none=True)
    stats |= {k: (v / steps if steps else math.nan) for k, v in sums.items()}
    stats |= {"steps": float(steps), "skipped_kl": float(skipped_kl), "skipped_nonfinite": float(skipped_nonfinite)}
    return stats
