"""Direct Preference Optimization (Rafailov et al., 2023) on the one training loop.

DPO trains the policy π on preference pairs against a frozen reference π_ref, with the loss

    Δ = (log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x))
    L = -(1 - ε) log σ(βΔ) - ε log σ(-βΔ)                 (ε = label_smoothing: conservative DPO)
      + α · NLL(y_c | x)                                  (α = rpo_alpha: RPO's token-mean NLL on chosen)

whose implicit rewards are β · (log π - log π_ref) per response. Log-probs are summed over the response
tokens (`generate.rollout.sequence_logprobs`, the same function RL uses). The reference never changes, so
its log-probs are computed once, before training, and travel in the batches: with LoRA the reference is
the base (the policy's adapters disabled); without, it is the policy as it is before the first update
(every reference log-prob is taken then, so no frozen copy has to be kept), or an explicit `ref_model`.

    pairs = load_pairs("data/preferences/train.jsonl", tok, InstructFormat(max_len=256))
    policy, summary = train_dpo(model, pairs, "runs/dpo", TrainConfig(steps=200, batch_size=8, lr=5e-6))

Metrics (`dpo/*` records at the evaluation points): reward accuracy and margin, the mean implicit rewards,
and the chosen/rejected log-prob drift from the reference (mean log π - log π_ref). DPO runs in one process:
`sequence_logprobs` calls the model's `hidden_states` directly, which DDP/FSDP wrappers do not see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.align.reward import (
    ADAPTER_DIR,
    PairMetrics,
    PreferencePair,
    pad_right,
    pair_batches,
)
from lmstack.config import to_dict
from lmstack.data.instruct import Sample
from lmstack.errors import ConfigError, DataError
from lmstack.fileio import write_json
from lmstack.finetune.lora import LoRAConfig, apply_lora, disable_adapters, is_lora_key, lora_layers, lora_summary
from lmstack.finetune.lora_peft import save_adapter
from lmstack.finetune.recipe import FINETUNE_FILE
from lmstack.generate.rollout import Rollout, sequence_logprobs
from lmstack.models.decoder import DecoderLM
from lmstack.process_group import device_for_rank
from lmstack.tokenizer import Tokenizer
from lmstack.train.loop import TrainConfig, TrainingJob, autocast_dtype, train


@dataclass(frozen=True)
class DPOOutput:
    """The batch loss and the per-pair implicit rewards β·(log π - log π_ref) (detached, for metrics)."""

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    chosen_lengths: Tensor | None = None,
) -> DPOOutput:
    """DPO's sigmoid loss over (B,) summed response log-probs, mean over pairs (see the module docstring).
    `rpo_alpha` > 0 adds α · (-Σ chosen log-probs / Σ `chosen_lengths`), the token-mean NLL of the chosen
    responses over the whole batch (TRL's `sft` loss term, which is what its `rpo_alpha` became)."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits)
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-logits)
    loss = losses.mean()
    if rpo_alpha:
        if chosen_lengths is None:
            raise ConfigError("rpo_alpha needs chosen_lengths (the token count of each chosen response)")
        n_tokens = chosen_lengths.to(policy_chosen_logps).sum().clamp_min(1.0)
        loss = loss + rpo_alpha * (-policy_chosen_logps.sum() / n_tokens)
    return DPOOutput(loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def dpo_metrics(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> dict[str, float]:
    """Reward accuracy (chosen reward > rejected), mean margin, mean rewards, and mean log-prob drift of each
    side from the reference: DPO can raise the margin while both log-probs fall, and the drift shows it."""
    chosen_drift = (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_drift = (policy_rejected_logps - ref_rejected_logps).detach()
    chosen, rejected = beta * chosen_drift, beta * rejected_drift
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
        "chosen_logp_drift": float(chosen_drift.mean()),
        "rejected_logp_drift": float(rejected_drift.mean()),
    }


# ----------------------------------------------------------------------------- log-probs of responses


def split_sample(sample: Sample) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a rendered pair side: the response runs from its first to its last
    trained token (a chat template's separator after the end-of-turn token is not part of it)."""
    trained = sample.trained.nonzero()[0]
    if len(trained) == 0:
        raise DataError(f"{sample.origin}: the response has no tokens")
    first, last = int(trained[0]), int(trained[-1])
    return sample.ids[:first].tolist(), sample.ids[first : last + 1].tolist()


def response_logprobs(model: DecoderLM, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> Tensor:
    """(B,) fp32: Σ log p(response token | prompt, earlier tokens) under `model` as it is now (the caller's
    grad and train/eval mode), from one forward pass (`sequence_logprobs` over a `Rollout` of the responses)."""
    if any(len(r) == 0 for r in responses):
        raise DataError("every response needs at least one token")
    tokens, mask = pad_right(responses, model.cfg.pad_token_id)
    return sequence_logprobs(model, prompts, Rollout(tokens, None, mask.bool())).sum(-1)


def _pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def dpo_batch(pairs: Sequence[PreferencePair], pad_id: int = 0) -> dict[str, Tensor]:
    """Left-padded prompts and right-padded responses, chosen and rejected at one width each (so one forward
    covers both sides), and the cached reference log-probs. Every tensor is per pair along dim 0, so the
    loop's micro-batch split keeps pairs whole."""
    if any(p.ref_chosen is None or p.ref_rejected is None for p in pairs):
        raise ConfigError("DPO batches need reference log-probs; compute them once with reference_logprobs")
    sides = [split_sample(p.chosen) for p in pairs] + [split_sample(p.rejected) for p in pairs]
    prompt, prompt_mask = _pad_left([s[0] for s in sides], pad_id)
    response, response_mask = pad_right([s[1] for s in sides], pad_id)
    b = len(pairs)
    return {
        "chosen_prompt": prompt[:b],
        "chosen_prompt_mask": prompt_mask[:b],
        "rejected_prompt": prompt[b:],
        "rejected_prompt_mask": prompt_mask[b:],
        "chosen_response": response[:b],
        "chosen_response_mask": response_mask[:b],
        "rejected_response": response[b:],
        "rejected_response_mask": response_mask[b:],
        "ref_chosen": torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32),
        "ref_rejected": torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32),
    }


def batch_logprobs(model: DecoderLM, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) summed response log-probs of a `dpo_batch`, from one forward over both sides."""
    prompt = torch.cat([batch["chosen_prompt"], batch["rejected_prompt"]]).cpu()
    keep = torch.cat([batch["chosen_prompt_mask"], batch["rejected_prompt_mask"]]).cpu().bool()
    prompts = [row[m].tolist() for row, m in zip(prompt, keep)]
    tokens = torch.cat([batch["chosen_response"], batch["rejected_response"]])
    mask = torch.cat([batch["chosen_response_mask"], batch["rejected_response_mask"]]).bool()
    return sequence_logprobs(model, prompts, Rollout(tokens, None, mask)).sum(-1).chunk(2)


def check_fits(pairs: Sequence[PreferencePair], max_seq_len: int) -> None:
    """A batch is [longest prompt | longest response] wide (left-padded prompts, right-padded responses), so
    the longest prompt and the longest response of the data must fit the context together."""
    sides = [split_sample(s) for p in pairs for s in (p.chosen, p.rejected)]
    prompt, response = max(len(s[0]) for s in sides), max(len(s[1]) for s in sides)
    if prompt + response > max_seq_len:
        raise ConfigError(
            f"the longest prompt ({prompt} tokens) and the longest response ({response}) exceed the model's "
            f"context of {max_seq_len} together, which a padded DPO batch can need; lower the format's max_len"
        )


@torch.no_grad()
def reference_logprobs(
    policy: DecoderLM,
    pairs: Sequence[PreferencePair],
    batch_size: int = 8,
    ref_model: DecoderLM | None = None,
    amp: torch.dtype | None = None,
) -> list[PreferencePair]:
    """The pairs with `ref_chosen`/`ref_rejected` filled in, in eval mode on the model's device: from
    `ref_model` if given, else from the policy with its LoRA adapters disabled (the base), else from the
    policy as it is now. Call it once, before training."""
    model = ref_model if ref_model is not None else policy
    adapters = ref_model is None and bool(lora_layers(policy))
    device = model.embed.tokens.weight.device
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    was = model.training
    model.eval()
    out = []
    try:
        with disable_adapters(policy) if adapters else contextlib.nullcontext(), autocast:
            for i in range(0, len(pairs), batch_size):
                part = pairs[i : i + batch_size]
                sides = [split_sample(p.chosen) for p in part] + [split_sample(p.rejected) for p in part]
                logps = response_logprobs(model, [s[0] for s in sides], [s[1] for s in sides]).float().cpu()
                chosen, rejected = logps.chunk(2)
                out += [
                    dataclasses.replace(p, ref_chosen=float(c), ref_rejected=float(r))
                    for p, c, r in zip(part, chosen, rejected)
                ]
    finally:
        model.train(was)
    return out


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class DPOConfig:
    """`beta`: the KL strength (TRL's default 0.1). `label_smoothing`: cDPO's assumed label-flip rate ε in
    [0, 0.5). `rpo_alpha`: weight of the chosen-NLL term (0 = off; the RPO paper uses 1). `lora`: train
    adapters (the reference is then the base). `base_name`: the base's `load_pretrained` spec, written to
    the checkpoints so that `lmstack generate --model RUN` can rebuild a LoRA policy."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0
    ref_batch_size: int = 8
    lora: LoRAConfig | None = None
    base_name: str = ""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"dpo beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.rpo_alpha < 0:
            raise ConfigError(f"dpo rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if self.ref_batch_size <= 0:
            raise ConfigError(f"dpo ref_batch_size must be positive, got {self.ref_batch_size}")


def dpo_loss_fn(cfg: DPOConfig) -> Callable[[nn.Module, dict[str, Tensor]], Tensor]:
    """The `TrainingJob.loss_fn` of DPO over `dpo_batch`es."""

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        chosen, rejected = batch_logprobs(model, batch)
        lengths = batch["chosen_response_mask"].sum(-1)
        ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
        return dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.label_smoothing, cfg.rpo_alpha, lengths
        ).loss

    return loss


def _measure(pairs: Sequence[PreferencePair], cfg: DPOConfig, batch_size: int) -> Callable[[nn.Module], dict]:
    def measure(model: nn.Module) -> dict[str, float]:
        device = model.embed.tokens.weight.device
        chosen, rejected = [], []
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in dpo_batch(pairs[i : i + batch_size], model.cfg.pad_token_id).items()}
            c, r = batch_logprobs(model, batch)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        ref_c = torch.tensor([p.ref_chosen for p in pairs])
        ref_r = torch.tensor([p.ref_rejected for p in pairs])
        return dpo_metrics(torch.cat(chosen), torch.cat(rejected), ref_c, ref_r, cfg.beta)

    return measure


def dpo_job(
    policy: DecoderLM,
    train_pairs: Sequence[PreferencePair],
    train_cfg: TrainConfig,
    val_pairs: Sequence[PreferencePair] | None = None,
    cfg: DPOConfig | None = None,
    tokenizer: Tokenizer | None = None,
    log: Callable[[str], None] = print,
) -> tuple[TrainingJob, PairMetrics]:
    """DPO's `TrainingJob` (and its metrics callback) over pairs that already carry reference log-probs
    (`reference_logprobs`; `train_dpo` does both). With `cfg.lora` the policy must already have its adapter
    (apply it before computing the reference, which then is the base); checkpoints hold only the adapter."""
    cfg = cfg or DPOConfig()
    if not isinstance(policy, DecoderLM):
        raise ConfigError(f"DPO needs a decoder-only DecoderLM policy, got {type(policy).__name__}")
    check_fits([*train_pairs, *(val_pairs or ())], policy.cfg.max_seq_len)
    policy.train()
    adapters = bool(lora_layers(policy))
    pad = policy.cfg.pad_token_id
    train_batch, fixed_eval = pair_batches(train_pairs, train_cfg, lambda ps: dpo_batch(ps, pad))
    if val_pairs:
        fixed_eval = pair_batches(val_pairs, train_cfg, lambda ps: dpo_batch(ps, pad))[1]
    else:
        log("dpo: no validation pairs; val_loss and metrics are on the training pairs")
    metrics = PairMetrics(_measure(list(val_pairs or train_pairs), cfg, cfg.ref_batch_size), "dpo")
    method = "lora" if adapters else "full"

    def write_extras(directory: Path) -> None:
        write_json(directory / "config.json", {"model": to_dict(policy.cfg)})
        info = {"base": cfg.base_name, "method": method, "recipe": {"kind": "dpo", "dpo": to_dict(cfg)}}
        write_json(directory / FINETUNE_FILE, info)  # what `load_finetuned` reads to rebuild the policy
        if tokenizer is not None:
            tokenizer.save(directory)
        if adapters:
            save_adapter(policy, directory / ADAPTER_DIR, base_name=cfg.base_name or None)

    job = TrainingJob(
        policy,
        dpo_loss_fn(cfg),
        train_batch,
        lambda: fixed_eval,
        write_extras,
        lambda b: int(sum(b[k].sum() for k in b if k.endswith("_mask"))),
        callbacks=[metrics],
        state_filter=is_lora_key if adapters else None,
    )
    return job, metrics


def train_dpo(
    policy: DecoderLM,
    train_pairs: Sequence[PreferencePair],
    run_dir: str | Path,
    train_cfg: TrainConfig,
    val_pairs: Sequence[PreferencePair] | None = None,
    cfg: DPOConfig | None = None,
    ref_model: DecoderLM | None = None,
    tokenizer: Tokenizer | None = None,
    log: Callable[[str], None] = print,
) -> tuple[DecoderLM, dict[str, Any]]:
    """DPO on the one loop: apply `cfg.lora` if set, compute every reference log-prob once (see
    `reference_logprobs`), then train. Returns the policy (eval mode) and the loop's summary plus `metrics`
    (the last `dpo/*` values) and `initial_metrics` (before the first step)."""
    cfg = cfg or DPOConfig()
    if train_cfg.strategy not in ("auto", "single") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "DPO runs in one process (train.strategy single): its log-probs call the model's hidden_states "
            "directly, which DDP/FSDP wrappers do not see"
        )
    if cfg.lora is not None:
        torch.manual_seed(train_cfg.seed)  # the adapters' A matrices
        apply_lora(policy, cfg.lora)
        log(f"LoRA: {lora_summary(policy)['trainable']:,} trainable parameters; the reference is the base")
    device = device_for_rank(train_cfg.device, 0)
    policy.to(device)
    if ref_model is not None:
        ref_model.to(device).requires_grad_(False)
    amp = autocast_dtype(train_cfg.dtype, device)
    train_pairs = reference_logprobs(policy, train_pairs, cfg.ref_batch_size, ref_model, amp)
    val_pairs = reference_logprobs(policy, val_pairs, cfg.ref_batch_size, ref_model, amp) if val_pairs else None
    job, metrics = dpo_job(policy, train_pairs, train_cfg, val_pairs, cfg, tokenizer, log)
    summary = train(job, train_cfg, run_dir, log)
    summary.update(metrics=metrics.last, initial_metrics=metrics.first)
    return policy.eval(), summary
