"""PPO: the math against hand-computed numbers (GAE, the clipped losses, KL estimators, the KL controller),
policy == reference gives KL 0 and ratio 1, the sampling guard, and one seeded PPO update on a tiny model
that moves the policy towards a synthetic reward."""

import copy
import math
from dataclasses import replace

import pytest
import torch

from lmstack.align.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PPOConfig,
    ValueHead,
    aggregate,
    apply_missing_eos_penalty,
    check_sampling,
    entropy_from_logits,
    gae,
    kl_penalty,
    policy_forward,
    ppo_policy_loss,
    ppo_update,
    ppo_value_loss,
    reference_logprobs,
    rollout_stats,
    shape_rewards,
    truncated_rows,
    whiten,
)
from lmstack.errors import ConfigError, DataError
from lmstack.finetune.lora import LoRAConfig, apply_lora, lora_parameters
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.rollout import pad_completions, sequence_logprobs
from lmstack.generate.sampling import GenerationConfig, token_logprobs
from lmstack.models import DecoderLM
from testutil import tiny_config

T = torch.tensor


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, T(expected, dtype=actual.dtype), atol=atol, rtol=0)


SAMPLING = GenerationConfig(max_new_tokens=4, temperature=1.0, logprobs=True, seed=3)
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]


def tiny_policy(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(tiny_config("gpt-tiny")).eval()


def rollouts(engine: Engine, copies: int) -> tuple[list[list[int]], list[Completion]]:
    """`copies` samples of every prompt, each copy with its own seed (one seed gives every row the same
    draws, so copies sampled together would be identical)."""
    completions = [c for k in range(copies) for c in engine.generate_ids(PROMPTS, replace(SAMPLING, seed=k))]
    return PROMPTS * copies, completions


# ----------------------------------------------------------------------------- math on hand values


def test_gae_matches_a_hand_computed_example():
    # row 0: three real tokens and one padding slot (whose reward 5 and value 9 must be ignored)
    # row 1: two real tokens
    rewards = T([[0.1, -0.2, 1.0, 5.0], [0.0, 2.0, 5.0, 5.0]])
    values = T([[0.5, 0.4, 0.6, 9.0], [1.0, 1.0, 9.0, 9.0]])
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards (γλ = 0.72):
    #   δ2 = 1.0 + 0.9·0 - 0.6 = 0.4               A2 = 0.4
    #   δ1 = -0.2 + 0.9·0.6 - 0.4 = -0.06          A1 = -0.06 + 0.72·0.4 = 0.228
    #   δ0 = 0.1 + 0.9·0.4 - 0.5 = -0.04           A0 = -0.04 + 0.72·0.228 = 0.12416
    # row 1:
    #   δ1 = 2.0 - 1.0 = 1.0                        A1 = 1.0
    #   δ0 = 0.0 + 0.9·1.0 - 1.0 = -0.1             A0 = -0.1 + 0.72·1.0 = 0.62
    close(adv, [[0.12416, 0.228, 0.4, 0.0], [0.62, 1.0, 0.0, 0.0]])
    close(ret, [[0.62416, 0.628, 1.0, 0.0], [1.62, 2.0, 0.0, 0.0]])
    # γ = λ = 1: advantages are the reward-to-go minus the value (Monte Carlo)
    adv1, ret1 = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv1[0, :3].tolist() == pytest.approx([0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.6], abs=1e-6)
    assert ret1[1, :2].tolist() == pytest.approx([2.0, 2.0], abs=1e-6)
    with pytest.raises(DataError, match="right-padded"):
        gae(rewards, values, T([[0, 1, 1, 1], [1, 1, 0, 0]]).bool())


def test_whiten_and_aggregate():
    x = T([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, -7.0]])
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    w = whiten(x, mask)
    real = w[mask]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6) and real.std().item() == pytest.approx(1.0, abs=1e-4)
    assert (w[~mask] == 0).all()
    assert whiten(x, mask, shift_mean=False)[mask].mean().item() == pytest.approx(3.0, abs=1e-5)
    # per-token terms: row 0 = [1, 2, 3] (mean 2), row 1 = [4, 5] (mean 4.5)
    assert aggregate(x, mask, "token-mean").item() == pytest.approx(15 / 5)
    assert aggregate(x, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4.5) / 2)
    assert aggregate(x, mask, "token-sum", max_tokens=4).item() == pytest.approx(15 / (2 * 4))
    with pytest.raises(ConfigError):
        aggregate(x, mask, "token-sum")
    with pytest.raises(ConfigError):
        aggregate(x, mask, "mean")


def test_kl_estimators_and_reward_shaping():
    lp, ref = T([[-1.0, -0.5]]), T([[-2.0, -0.5]])  # d = 1, 0
    close(kl_penalty(lp, ref, "k1"), [[1.0, 0.0]])
    close(kl_penalty(lp, ref, "k2"), [[0.5, 0.0]])
    close(kl_penalty(lp, ref, "k3"), [[math.exp(-1) - 1 + 1, 0.0]])
    with pytest.raises(ConfigError):
        kl_penalty(lp, ref, "k4")
    logprobs = T([[-1.0, -1.0, -1.0], [-1.0, -3.0, 0.0]])
    ref_lp = T([[-1.5, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    mask = T([[1, 1, 1], [1, 1, 0]]).bool()
    rewards, kl = shape_rewards(T([2.0, -1.0]), logprobs, ref_lp, mask, kl_coef=0.1)
    # k1 = [[0.5, 0, 0], [1, -1, pad]]; the score goes on each row's last real token
    close(kl, [[0.5, 0.0, 0.0], [1.0, -1.0, 0.0]])
    close(rewards, [[-0.05, 0.0, 2.0], [-0.1, 0.1 - 1.0, 0.0]])
    with pytest.raises(DataError, match="no sampled tokens"):
        shape_rewards(T([1.0]), logprobs[:1], ref_lp[:1], T([[0, 0, 0]]).bool(), 0.1)


def test_clipped_policy_loss_against_its_formula():
    ratios = T([[1.5, 0.5, 0.5, 1.1, 50.0]])  # the last one is padding: ignored
    adv = T([[1.0, 1.0, -2.0, -1.0, 9.0]])
    mask = T([[1, 1, 1, 1, 0]]).bool()
    old = T([[-2.0, -1.0, -1.5, -0.7, -3.0]])
    new = (old + ratios.log()).requires_grad_()
    out = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    # per token max(-Aρ, -A·clip(ρ, 0.8, 1.2)):
    #   ρ=1.5, A=+1: max(-1.5, -1.2) = -1.2   (clipped)
    #   ρ=0.5, A=+1: max(-0.5, -0.8) = -0.5
    #   ρ=0.5, A=-2: max( 1.0,  1.6) =  1.6   (clipped)
    #   ρ=1.1, A=-1: max( 1.1,  1.1) =  1.1
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 1.6 + 1.1) / 4, abs=1e-6)
    assert out.clip_frac.item() == pytest.approx(0.5)
    k3 = [r - 1 - math.log(r) for r in (1.5, 0.5, 0.5, 1.1)]
    assert out.approx_kl.item() == pytest.approx(sum(k3) / 4, abs=1e-6)
    out.loss.backward()  # clipped tokens carry no gradient; unclipped ones -A·ρ/4
    close(new.grad, [[0.0, -0.5 / 4, 0.0, 1.1 / 4, 0.0]])
    per_seq = ppo_policy_loss(new, old, T([1.0]), mask, clip=0.2)  # one advantage per sequence
    assert per_seq.loss.item() == pytest.approx((-1.2 - 0.5 - 0.5 - 1.1) / 4, abs=1e-6)


def test_clipped_value_loss_against_its_formula():
    values, old, returns = T([[1.0, 0.0]]), T([[0.5, 0.1]]), T([[2.0, -1.0]])
    mask = T([[1, 1]]).bool()
    loss, frac = ppo_value_loss(values, old, returns, mask, clip=0.2)
    # token 0: (1 - 2)² = 1; clipped V = 0.5 + 0.2 = 0.7, (0.7 - 2)² = 1.69 → 1.69 (clipped is larger)
    # token 1: (0 + 1)² = 1; clipped V = 0.1 - 0.1 = 0.0 (within ±0.2)  → 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2) and frac.item() == pytest.approx(0.5)
    plain, _ = ppo_value_loss(values, old, returns, mask, clip=None)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)


def test_entropy_kl_controllers_and_missing_eos_penalty():
    assert entropy_from_logits(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2)
    assert entropy_from_logits(T([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    fixed = FixedKLController(0.2)
    assert fixed.update(100.0, 64) == 0.2
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error 1.0 clipped to 0.2
    assert ctl.update(5.4, 10) == pytest.approx(0.102 * (1 - 0.1 * 10 / 100))  # error -0.1
    with pytest.raises(ConfigError):
        AdaptiveKLController(0.1, target=0.0)
    done = [Completion([1], "", "stop", 1, [1, 2]), Completion([1, 1], "", "length", 1, [1, 1])]
    truncated = truncated_rows(done)
    assert truncated.tolist() == [False, True]
    assert apply_missing_eos_penalty(T([1.0, 1.0]), truncated, 0.5).tolist() == [1.0, 0.5]
    assert apply_missing_eos_penalty(T([1.0, 1.0]), truncated, None).tolist() == [1.0, 1.0]


def test_negative_kl_is_reported_and_warned():
    rollout = pad_completions([Completion([1], "", "stop", 1, [1, 2], [-1.0, -1.0])])
    with pytest.warns(RuntimeWarning, match="not sampled from the policy"):
        stats = rollout_stats(rollout, T([[-1.0, -1.0]]), T([[-0.5, -0.5]]), T([False]))
    assert stats["kl"] == pytest.approx(-1.0) and stats["kl_negative"] == 1.0
    assert rollout_stats(rollout, T([[-1.0, -1.0]]), T([[-1.5, -1.0]]), T([True]))["kl_negative"] == 0.0


# ----------------------------------------------------------------------------- on a tiny model


def test_policy_equal_to_reference_gives_zero_kl_and_unit_ratio():
    policy = tiny_policy()
    apply_lora(policy, LoRAConfig(r=4, targets="all-linear"))  # B = 0: the adapted model is the base
    completions = Engine(policy, mode="live").generate_ids(PROMPTS, SAMPLING)
    rollout = pad_completions(completions)
    with torch.no_grad():
        new = sequence_logprobs(policy, PROMPTS, rollout)
    ref = reference_logprobs(policy, PROMPTS, rollout)  # adapters disabled
    assert torch.equal(new, ref)
    for kind in ("k1", "k2", "k3"):
        assert (kl_penalty(new, ref, kind) == 0).all()
    out = ppo_policy_loss(new, ref, torch.randn(rollout.mask.shape), rollout.mask)
    assert torch.equal(out.ratio, torch.ones_like(out.ratio))
    assert out.clip_frac.item() == 0.0 and out.approx_kl.item() == 0.0
    with pytest.raises(ConfigError, match="no reference model"):
        reference_logprobs(tiny_policy(), PROMPTS, rollout)


def test_the_value_head_reads_the_positions_that_predict_each_token():
    policy = tiny_policy()
    completions = Engine(policy).generate_ids(PROMPTS, SAMPLING)
    rollout = pad_completions(completions)
    head = ValueHead.for_model(policy)
    torch.nn.init.normal_(head.proj.weight)
    logprobs, values, logits = policy_forward(policy, head, PROMPTS, rollout, logits=True)
    assert torch.allclose(logprobs, sequence_logprobs(policy, PROMPTS, rollout))
    assert torch.allclose(token_logprobs(logits, rollout.tokens).masked_fill(~rollout.mask, 0), logprobs, atol=1e-6)
    assert values.shape == rollout.mask.shape and (values[~rollout.mask] == 0).all()
    assert values[rollout.mask].abs().min() > 0


def test_rollouts_must_be_sampled_from_the_policys_own_distribution():
    check_sampling(SAMPLING)
    for bad in (
        GenerationConfig(temperature=0.7, logprobs=True),
        GenerationConfig(temperature=1.0, top_p=0.9, logprobs=True),
        GenerationConfig(temperature=1.0, top_k=40, logprobs=True),
        GenerationConfig(temperature=1.0, repetition_penalty=1.1, logprobs=True),
        GenerationConfig(temperature=1.0),
    ):
        with pytest.raises(ConfigError, match="policy's own distribution"):
            check_sampling(bad)
    policy = tiny_policy()
    head = ValueHead.for_model(policy)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    completions = [Completion([1], "", "stop", 1, [1, 2], [-1.0, -1.0])]
    with pytest.raises(ConfigError, match="top_p=0.95"):
        ppo_update(policy, head, opt, [[3]], completions, [1.0], GenerationConfig(temperature=1, top_p=0.95), 0.1)


def low_token_reward(completion: Completion) -> float:
    """Synthetic reward: the fraction of sampled tokens from the lower half of the vocabulary."""
    return sum(t < 48 for t in completion.sampled_ids) / max(len(completion.sampled_ids), 1)


def low_mass(policy: DecoderLM) -> float:
    """Mean log-probability mass the policy puts on the rewarded tokens at each prompt's first step."""
    with torch.no_grad():
        logps = [torch.log_softmax(policy(T([p]))[0, -1], -1)[:48].logsumexp(0) for p in PROMPTS]
    return float(torch.stack(logps).mean())


def test_a_ppo_update_moves_the_policy_towards_the_reward():
    policy = tiny_policy()
    reference = copy.deepcopy(policy).requires_grad_(False)
    head = ValueHead.for_model(policy)
    opt = torch.optim.Adam([*policy.parameters(), *head.parameters()], lr=1e-2)
    prompts, completions = rollouts(Engine(policy), 8)
    scores = [low_token_reward(c) for c in completions]
    before = low_mass(policy)
    cfg = PPOConfig(epochs=2, minibatch_size=16, missing_eos_penalty=0.5, seed=0)
    stats = ppo_update(policy, head, opt, prompts, completions, scores, SAMPLING, 0.05, cfg, reference=reference)
    after = low_mass(policy)
    assert after > before + 0.01, (before, after)
    assert stats["steps"] == 4 and stats["skipped_kl"] == 0
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # the rollout's policy is the reference
    assert stats["sampler_logprob_gap"] < 1e-4
    n_truncated = sum(c.finish_reason == "length" for c in completions)
    assert stats["truncated"] == n_truncated > 0
    assert stats["score_raw"] - stats["score"] == pytest.approx(0.5 * n_truncated / len(completions), abs=1e-6)
    assert all(math.isfinite(stats[k]) for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl"))
    assert head.proj.weight.abs().sum() > 0  # the critic learned too


def test_minibatches_past_the_kl_limit_are_skipped_and_ptx_adds_a_pretraining_loss():
    policy = tiny_policy()
    apply_lora(policy, LoRAConfig(r=4, targets="all-linear"))
    head = ValueHead.for_model(policy)
    opt = torch.optim.Adam([*lora_parameters(policy), *head.parameters()], lr=1e-2)
    prompts, completions = rollouts(Engine(policy, mode="live"), 2)
    scores = [low_token_reward(c) for c in completions]
    ids = torch.randint(0, 97, (2, 9))
    ptx = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    # the first minibatch is exactly on-policy (KL 0); once it has stepped, every later one is past 1e-9
    cfg = PPOConfig(epochs=2, minibatch_size=4, max_approx_kl=1e-9, ptx_coef=0.5, entropy_coef=0.01, seed=1)
    stats = ppo_update(policy, head, opt, prompts, completions, scores, SAMPLING, 0.1, cfg, ptx_batch=ptx)
    assert stats["steps"] == 1 and stats["skipped_kl"] == 3
    assert stats["ptx_loss"] == pytest.approx(math.log(97), rel=0.2) and stats["entropy"] > 0
    with pytest.raises(ConfigError, match="ptx_coef"):
        ppo_update(policy, head, opt, prompts, completions, scores, SAMPLING, 0.1, PPOConfig(), ptx_batch=ptx)
