"""GRPO: group advantages on hand values (GRPO, Dr. GRPO, equal groups skipped), the loss aggregations,
the group layout and sampling guards, and one step on a tiny LoRA model that raises the best sample."""

import math
from dataclasses import replace

import pytest
import torch

from lmstack.align.grpo import GRPOConfig, group_advantages, grpo_loss, grpo_step
from lmstack.errors import ConfigError, DataError
from lmstack.finetune.lora import LoRAConfig, apply_lora, lora_parameters
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.rollout import pad_completions, sequence_logprobs
from lmstack.generate.sampling import GenerationConfig
from lmstack.models import DecoderLM
from testutil import tiny_config

T = torch.tensor
SAMPLING = GenerationConfig(max_new_tokens=4, temperature=1.0, logprobs=True)


def close(actual: torch.Tensor, expected, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, T(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_group_advantages_on_a_hand_example():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 1.5, 1.0]  # three prompts, G = 3
    out = group_advantages(rewards, 3)
    # group 0: mean 1/3, std (Bessel) = sqrt(((2/3)² + 2·(1/3)²) / 2) = sqrt(1/3) = 0.57735
    #          → (2/3) / 0.57735 = 1.1547, (-1/3) / 0.57735 = -0.57735
    # group 1: all equal → skipped, advantage 0
    # group 2: mean 1, std sqrt((0.25 + 0.25 + 0) / 2) = 0.5 → -1, 1, 0
    close(out.advantages, [1.1547, -0.57735, -0.57735, 0, 0, 0, -1, 1, 0], atol=1e-3)
    assert out.keep.tolist() == [True] * 3 + [False] * 3 + [True] * 3 and out.skipped_groups == 1
    dr = group_advantages(rewards, 3, scale_by_std=False)  # Dr. GRPO: r - mean only
    close(dr.advantages, [2 / 3, -1 / 3, -1 / 3, 0, 0, 0, -0.5, 0.5, 0])
    kept_all = group_advantages(rewards, 3, skip_equal=False)
    assert kept_all.keep.all() and kept_all.skipped_groups == 0
    with pytest.raises(DataError):
        group_advantages(rewards, 4)
    with pytest.raises(ConfigError):
        group_advantages([1.0, 2.0], 1)


def test_loss_aggregations_and_the_reference_kl_term():
    mask = T([[1, 0, 0], [1, 1, 1]]).bool()
    lp = T([[-1.0, 0.0, 0.0], [-2.0, -1.0, -0.5]], requires_grad=True)
    adv = T([1.0, -1.0])  # ratio 1 everywhere: per-token loss is -A → row 0: [-1], row 1: [1, 1, 1]
    seq = grpo_loss(lp, lp.detach(), adv, mask)
    assert seq.loss.item() == pytest.approx((-1 + 1) / 2) and seq.kl.item() == 0
    dr = grpo_loss(lp, lp.detach(), adv, mask, aggregation="token-sum", max_tokens=4)
    assert dr.loss.item() == pytest.approx((-1 + 3) / (2 * 4))
    tok = grpo_loss(lp, lp.detach(), adv, mask, aggregation="token-mean")
    assert tok.loss.item() == pytest.approx(2 / 4)
    ref = lp.detach() - T([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # d = 1 on row 0's token, 0 elsewhere
    with_kl = grpo_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, beta=0.1)
    k3 = math.exp(-1) - 1 + 1
    assert with_kl.loss.item() == pytest.approx(0.1 * (k3 + 0) / 2) and with_kl.kl.item() == pytest.approx(k3 / 4)


def tiny_lora_policy() -> DecoderLM:
    torch.manual_seed(0)
    policy = DecoderLM(tiny_config("gpt-tiny")).eval()
    apply_lora(policy, LoRAConfig(r=4, targets="all-linear"))
    return policy


def test_a_grpo_step_raises_the_best_sample_and_skips_equal_groups():
    policy = tiny_lora_policy()
    engine = Engine(policy, mode="live")
    prompts = [[5, 6, 7]] * 4 + [[9, 10]] * 4
    completions = [
        c
        for p in (prompts[0], prompts[4])
        for k in range(4)
        for c in engine.generate_ids([p], replace(SAMPLING, seed=k))
    ]
    rewards = [1.0, 0.0, 0.0, 0.0] + [0.5] * 4  # group 1 teaches nothing
    rollout = pad_completions(completions[:1])
    with torch.no_grad():
        before = sequence_logprobs(policy, prompts[:1], rollout).sum().item()
    opt = torch.optim.Adam(lora_parameters(policy), lr=1e-2)
    cfg = GRPOConfig(group_size=4, beta=0.04, iterations=2, minibatch_size=2)
    stats = grpo_step(policy, opt, prompts, completions, rewards, SAMPLING, cfg)
    with torch.no_grad():
        after = sequence_logprobs(policy, prompts[:1], rollout).sum().item()
    assert after > before + 0.01, (before, after)
    assert stats["skipped_groups"] == 1 and stats["kept_rows"] == 4 and stats["steps"] == 2
    assert stats["reward"] == pytest.approx(3 / 8) and stats["kl"] > 0  # the second iteration left the reference
    assert math.isfinite(stats["loss"]) and 0 <= stats["clip_frac"] <= 1


def test_nothing_to_learn_means_no_step():
    policy = tiny_lora_policy()
    prompts = [[5, 6, 7]] * 2
    completions = Engine(policy, mode="live").generate_ids(prompts, replace(SAMPLING, seed=1))
    params = [p.detach().clone() for p in lora_parameters(policy)]
    opt = torch.optim.SGD(lora_parameters(policy), lr=1.0)
    stats = grpo_step(policy, opt, prompts, completions, [1.0, 1.0], SAMPLING, GRPOConfig(group_size=2, dr_grpo=True))
    assert stats["steps"] == 0 and stats["skipped_groups"] == 1 and stats["kept_rows"] == 0
    assert all(torch.equal(a, b) for a, b in zip(params, lora_parameters(policy)))


def test_guards_layout_sampling_and_config():
    policy = tiny_lora_policy()
    opt = torch.optim.SGD(lora_parameters(policy), lr=0.1)
    done = [Completion([1], "", "stop", 1, [1, 2], [-1.0, -1.0])] * 4
    cfg = GRPOConfig(group_size=2)
    with pytest.raises(DataError, match="not one prompt's group"):
        grpo_step(policy, opt, [[3], [4], [3], [4]], done, [1, 0, 1, 0], SAMPLING, cfg)
    with pytest.raises(ConfigError, match="temperature=0.0"):
        grpo_step(policy, opt, [[3]] * 4, done, [1, 0, 1, 0], GenerationConfig(logprobs=True), cfg)
    with pytest.raises(DataError, match="3 rewards"):
        grpo_step(policy, opt, [[3]] * 4, done, [1, 0, 1], SAMPLING, cfg)
    with pytest.raises(ConfigError):
        GRPOConfig(group_size=1)
    assert GRPOConfig(group_size=2, dr_grpo=True).loss_aggregation == "token-sum"
    assert GRPOConfig(group_size=2).loss_aggregation == "seq-mean-token-mean"
