"""DPO: the loss against its closed form and TRL's DPOTrainer, log(2) and zero rewards when the policy is its
reference, response log-probs against a plain forward pass, the reference with LoRA adapters disabled,
bad configs and batches, and tiny end-to-end runs on the one training loop (full and LoRA)."""

import copy
import math
import shutil
from collections import defaultdict
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmstack.align.dpo import (
    DPOConfig,
    batch_logprobs,
    check_fits,
    dpo_batch,
    dpo_job,
    dpo_loss,
    dpo_metrics,
    reference_logprobs,
    response_logprobs,
    split_sample,
    train_dpo,
)
from lmstack.align.reward import encode_pairs
from lmstack.data.instruct import InstructFormat
from lmstack.errors import ConfigError, DataError
from lmstack.finetune.load import load_finetuned
from lmstack.finetune.lora import LoRAConfig, apply_lora, disable_adapters, is_lora_key, lora_layers
from lmstack.models import DecoderLM
from lmstack.train.loop import TrainConfig
from testutil import tiny_bpe, tiny_config

FMT = InstructFormat(max_len=48)
ROWS = [
    {"prompt": "add 2 and 3", "chosen": "the answer is 5.", "rejected": "the answer is 7."},
    {"prompt": "the fox?", "chosen": "quick brown fox.", "rejected": "the lazy dog."},
    {"prompt": "def add", "chosen": "return a + b", "rejected": "return a - b"},
    {"prompt": "héllo", "chosen": "wörld café", "rejected": "emoji 🤖 too"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_bpe()


def tiny_policy(tok, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(tiny_config("llama-tiny", vocab_size=tok.vocab_size, max_seq_len=96))


def pairs_of(tok, rows=ROWS):
    return encode_pairs([(f"rows#{i}", r) for i, r in enumerate(rows)], tok, FMT)


def softplus(x: float) -> float:  # -log σ(x)
    return math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- the loss, by hand


def test_dpo_loss_is_the_closed_form_on_hand_values():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    beta = 0.5
    # Δ = (pc - rc) - (pr - rr): pair 0: 0.5 - (-1.0) = 1.5; pair 1: -1.0 - 1.0 = -2.0
    out = dpo_loss(pc, pr, rc, rr, beta)
    assert out.loss.item() == pytest.approx((softplus(0.75) + softplus(-1.0)) / 2, abs=1e-6)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.25, -0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.5]))
    eps = 0.1  # conservative DPO: the label is flipped with probability ε
    smooth = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps).loss.item()
    by_hand = sum((1 - eps) * softplus(z) + eps * softplus(-z) for z in (0.75, -1.0)) / 2
    assert smooth == pytest.approx(by_hand, abs=1e-6)
    lengths = torch.tensor([3, 5])  # RPO: + α · token-mean NLL of the chosen responses
    rpo = dpo_loss(pc, pr, rc, rr, beta, rpo_alpha=2.0, chosen_lengths=lengths).loss.item()
    assert rpo == pytest.approx(out.loss.item() + 2.0 * (3.0 + 5.0) / 8, abs=1e-6)
    with pytest.raises(ConfigError, match="chosen_lengths"):
        dpo_loss(pc, pr, rc, rr, beta, rpo_alpha=1.0)


def test_dpo_metrics_on_hand_values():
    pc, pr, rc, rr = (
        torch.tensor([-3.0, -5.0]),
        torch.tensor([-4.0, -2.0]),
        torch.tensor([-3.5, -4.0]),
        torch.tensor([-3.0, -3.0]),
    )
    m = dpo_metrics(pc, pr, rc, rr, beta=0.5)
    assert m["accuracy"] == 0.5
    assert m["margin"] == pytest.approx((0.75 - 1.0) / 2)
    assert m["chosen_logp_drift"] == pytest.approx((0.5 - 1.0) / 2)
    assert m["rejected_logp_drift"] == pytest.approx((-1.0 + 1.0) / 2)
    assert m["chosen_reward"] == pytest.approx(0.5 * m["chosen_logp_drift"])


def test_policy_equal_to_reference_gives_log2_and_zero_rewards(tok):
    policy = tiny_policy(tok).eval()
    pairs = reference_logprobs(policy, pairs_of(tok))
    batch = dpo_batch(pairs, policy.cfg.pad_token_id)
    chosen, rejected = batch_logprobs(policy, batch)
    torch.testing.assert_close(chosen, batch["ref_chosen"], atol=0, rtol=0)
    for beta in (0.1, 1.0, 5.0):
        out = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta)
        assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
        assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0
    out.loss.backward()  # the first step still moves the policy: ∂L/∂Δ = -β/2, not 0
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------- parity with TRL


def trl_dpo_loss(per_token, completion_mask, ref_chosen, ref_rejected, beta, loss_types=("sigmoid",), weights=None):
    """TRL's `DPOTrainer._compute_loss` (TRL 1.x has no separate `dpo_loss` method), called unbound on a minimal
    stand-in `self` that holds only the attributes it reads on this path (precomputed reference log-probs,
    reverse-KL DPO, no WPO weighting, no aux loss, no LD-DPO, identity gathers on one process), and a stand-in
    model whose output carries the given per-token log-probs: `per_token` (2B, T-1), the log-prob of token
    t+1 at position t, zero off the completion, chosen rows first, as TRL's fused LM head returns them."""
    from trl import DPOTrainer

    ident = lambda x: x  # noqa: E731
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=ident, gather_for_metrics=ident),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=list(loss_types),
        loss_weights=list(weights or [1.0] * len(loss_types)),
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(stand_in, lambda **kw: outputs, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in stand_in._metrics["train"].items()}


def random_logps(pairs: int, seed: int):
    """Random per-token log-probs over random-length completions after random-length prompts."""
    g = torch.Generator().manual_seed(seed)
    width = 12
    mask = torch.zeros(2 * pairs, width, dtype=torch.long)
    for i in range(2 * pairs):
        start = int(torch.randint(1, 5, (1,), generator=g))
        end = int(torch.randint(start + 1, width + 1, (1,), generator=g))
        mask[i, start:end] = 1
    per_token = -torch.rand(2 * pairs, width - 1, generator=g) * 3 * mask[:, 1:]
    ref = -torch.rand(2 * pairs, generator=g) * 10 - 5
    return per_token, mask, ref[:pairs], ref[pairs:]


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_rewards_and_metrics_equal_trl(beta):
    n = 8
    per_token, mask, ref_c, ref_r = random_logps(n, seed=int(beta * 10))
    summed = per_token.sum(-1)
    pc, pr = summed[:n], summed[n:]
    trl_loss, trl = trl_dpo_loss(per_token, mask, ref_c, ref_r, beta)
    ours = dpo_loss(pc, pr, ref_c, ref_r, beta)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    m = dpo_metrics(pc, pr, ref_c, ref_r, beta)
    assert m["chosen_reward"] == pytest.approx(trl["rewards/chosen"], abs=1e-6)
    assert m["rejected_reward"] == pytest.approx(trl["rewards/rejected"], abs=1e-6)
    assert m["margin"] == pytest.approx(trl["rewards/margins"], abs=1e-6)
    assert m["accuracy"] == pytest.approx(trl["rewards/accuracies"], abs=1e-6)
    for i in range(n):  # TRL logs batch means only; one pair at a time gives the per-pair loss and rewards
        rows = [i, n + i]
        loss_i, trl_i = trl_dpo_loss(per_token[rows], mask[rows], ref_c[i : i + 1], ref_r[i : i + 1], beta)
        ours_i = dpo_loss(pc[i : i + 1], pr[i : i + 1], ref_c[i : i + 1], ref_r[i : i + 1], beta)
        assert ours_i.loss.item() == pytest.approx(loss_i.item(), abs=1e-6)
        assert ours_i.chosen_rewards.item() == pytest.approx(trl_i["rewards/chosen"], abs=1e-6)
        assert ours_i.rejected_rewards.item() == pytest.approx(trl_i["rewards/rejected"], abs=1e-6)


def test_rpo_term_equals_trl_sigmoid_plus_weighted_sft_loss():
    n, beta, alpha = 6, 0.3, 0.7
    per_token, mask, ref_c, ref_r = random_logps(n, seed=11)
    summed = per_token.sum(-1)
    lengths = mask[:n, 1:].sum(-1)  # the chosen completion tokens TRL's sft term averages over
    trl_loss, _ = trl_dpo_loss(per_token, mask, ref_c, ref_r, beta, ("sigmoid", "sft"), [1.0, alpha])
    ours = dpo_loss(summed[:n], summed[n:], ref_c, ref_r, beta, rpo_alpha=alpha, chosen_lengths=lengths)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)


def test_label_smoothing_is_trl_sigmoid_mixed_with_the_flipped_pairs():
    # TRL 1.x's sigmoid loss no longer takes label_smoothing (cDPO): check ours as the ε-mixture of TRL's
    # sigmoid loss on the pairs and on the same pairs with chosen and rejected swapped
    n, beta, eps = 6, 0.4, 0.2
    per_token, mask, ref_c, ref_r = random_logps(n, seed=5)
    summed = per_token.sum(-1)
    straight, _ = trl_dpo_loss(per_token, mask, ref_c, ref_r, beta)
    swap = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    flipped, _ = trl_dpo_loss(per_token[swap], mask[swap], ref_r, ref_c, beta)
    ours = dpo_loss(summed[:n], summed[n:], ref_c, ref_r, beta, label_smoothing=eps).loss
    assert ours.item() == pytest.approx(((1 - eps) * straight + eps * flipped).item(), abs=1e-6)


# ----------------------------------------------------------------------------- log-probs of responses


def test_response_logprobs_equal_a_plain_forward_pass(tok):
    policy = tiny_policy(tok).eval()
    prompts, responses = [[5, 6, 7], [9], [11, 12]], [[20, 21], [30, 31, 32, 33], [40]]
    with torch.no_grad():
        got = response_logprobs(policy, prompts, responses)
        want = []
        for p, r in zip(prompts, responses):
            ids = torch.tensor([p + r])
            logp = F.log_softmax(policy(ids)[0, :-1].double(), -1)
            want.append(logp[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)].sum())
    torch.testing.assert_close(got.double(), torch.stack(want), atol=1e-4, rtol=1e-5)
    with pytest.raises(DataError, match="at least one token"):
        response_logprobs(policy, [[1]], [[]])


def test_split_sample_cuts_at_the_response(tok):
    pair = pairs_of(tok)[0]
    prompt, response = split_sample(pair.chosen)
    assert tok.decode(response, skip_special_tokens=False) == ROWS[0]["chosen"] + "<|im_end|>"
    assert tok.decode(prompt, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_batch_logprobs_are_each_pairs_own(tok):
    policy = tiny_policy(tok).eval()
    pairs = reference_logprobs(policy, pairs_of(tok), batch_size=1)  # one pair per forward: no padding at all
    with torch.no_grad():
        chosen, rejected = batch_logprobs(policy, dpo_batch(pairs, 0))
    torch.testing.assert_close(chosen, torch.tensor([p.ref_chosen for p in pairs]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rejected, torch.tensor([p.ref_rejected for p in pairs]), atol=1e-4, rtol=1e-5)


def test_reference_with_lora_is_the_base_and_an_explicit_reference_is_used(tok):
    policy = tiny_policy(tok)
    base = copy.deepcopy(policy)
    apply_lora(policy, LoRAConfig(r=4, targets="all-linear"))
    with torch.no_grad():  # a trained-looking adapter, so that adapted and base differ
        for layer in lora_layers(policy).values():
            for unit in layer.lora.values():
                for part in unit.values():
                    part.B.normal_(0, 0.5)
    policy.train()
    pairs = pairs_of(tok)
    ref = reference_logprobs(policy, pairs)
    from_base = reference_logprobs(base, pairs)
    adapted = reference_logprobs(policy, pairs, ref_model=policy)
    assert [p.ref_chosen for p in ref] == pytest.approx([p.ref_chosen for p in from_base], abs=1e-4)
    assert [p.ref_chosen for p in adapted] != pytest.approx([p.ref_chosen for p in from_base], abs=1e-2)
    assert policy.training  # the caller's mode is restored
    with disable_adapters(policy):
        pass
    assert not any(layer.lora_disabled for layer in lora_layers(policy).values())  # adapters back on
    explicit = reference_logprobs(policy, pairs, ref_model=base)
    assert [p.ref_rejected for p in explicit] == pytest.approx([p.ref_rejected for p in from_base], abs=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_bad_configs_and_batches_are_config_errors(tok, tmp_path):
    for bad in ({"beta": 0}, {"label_smoothing": 0.5}, {"rpo_alpha": -1}, {"ref_batch_size": 0}):
        with pytest.raises(ConfigError):
            DPOConfig(**bad)
    with pytest.raises(ConfigError, match="reference log-probs"):
        dpo_batch(pairs_of(tok), 0)
    with pytest.raises(ConfigError, match="context of 16"):
        check_fits(pairs_of(tok), 16)
    cfg = TrainConfig(steps=1, batch_size=2, strategy="ddp", progress=False)
    with pytest.raises(ConfigError, match="one process"):
        train_dpo(tiny_policy(tok), pairs_of(tok), tmp_path, cfg)
    with pytest.raises(ConfigError, match="DecoderLM policy"):
        dpo_job(torch.nn.Linear(2, 2), [], TrainConfig(steps=1, batch_size=2))


# ----------------------------------------------------------------------------- end to end on the loop


def loop_cfg(steps: int, lr: float) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=4, lr=lr, warmup_steps=0, weight_decay=0.0, eval_every=0, log_every=5, progress=False
    )


def test_dpo_raises_the_margin_of_a_tiny_policy(tok, tmp_path):
    pairs = pairs_of(tok)
    cfg = DPOConfig(beta=0.5)
    policy, summary = train_dpo(
        tiny_policy(tok), pairs, tmp_path / "run", loop_cfg(6, 3e-3), cfg=cfg, tokenizer=tok, log=lambda m: None
    )
    first, last = summary["initial_metrics"], summary["metrics"]
    assert first["margin"] == pytest.approx(0.0, abs=1e-6) and first["chosen_logp_drift"] == pytest.approx(0, abs=1e-5)
    assert last["margin"] > first["margin"] + 0.1 and last["accuracy"] == 1.0
    assert summary["val_loss"] < summary["initial_val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert not policy.training
    ckpt = tmp_path / "run" / "step-00000006"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "finetune.json").is_file()
    loaded, loaded_tok = load_finetuned(tmp_path / "run")  # what `lmstack generate --model RUN` loads
    ids = torch.tensor([pairs[0].chosen.ids.tolist()])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), policy(ids))
    assert loaded_tok is not None


def test_dpo_with_lora_moves_only_the_adapters(tok, tmp_path):
    pairs = pairs_of(tok)
    policy = tiny_policy(tok)
    before = copy.deepcopy(policy.state_dict())
    cfg = DPOConfig(beta=0.5, rpo_alpha=0.1, lora=LoRAConfig(r=4, alpha=8, targets="all-linear"))
    policy, summary = train_dpo(policy, pairs, tmp_path / "run", loop_cfg(6, 1e-2), cfg=cfg, log=lambda m: None)
    assert summary["metrics"]["margin"] > summary["initial_metrics"]["margin"] + 0.05
    for name, value in policy.state_dict().items():
        if not is_lora_key(name):
            torch.testing.assert_close(value, before[name], atol=0, rtol=0)
    assert (tmp_path / "run" / "step-00000006" / "adapter" / "adapter_config.json").is_file()


def test_a_resumed_run_recomputes_the_same_reference_and_ends_where_a_straight_run_does(tok, tmp_path):
    pairs, cfg = pairs_of(tok), DPOConfig(beta=0.5)
    train_cfg = replace(loop_cfg(6, 3e-3), save_every=3, keep_checkpoints=0)
    straight, _ = train_dpo(tiny_policy(tok), pairs, tmp_path / "run", train_cfg, cfg=cfg, log=lambda m: None)
    shutil.rmtree(tmp_path / "run" / "step-00000006")  # as if the run died after step 3's checkpoint
    resumed, summary = train_dpo(tiny_policy(tok), pairs, tmp_path / "run", train_cfg, cfg=cfg, log=lambda m: None)
    assert "initial_val_loss" not in summary and summary["checkpoint"].endswith("step-00000006")  # it resumed
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
