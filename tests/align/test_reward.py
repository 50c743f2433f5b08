"""Reward model: the Bradley–Terry loss against its closed form and TRL's RewardTrainer, the reward read at
the last real token (left and right padding alike), preference-row encoding and its errors, the head on
disk, and tiny end-to-end runs on the one training loop (full and LoRA)."""

import copy
import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmstack.align.reward import (
    HEAD_DIR,
    RewardConfig,
    RewardModel,
    bt_loss,
    encode_pairs,
    last_token_index,
    load_pairs,
    load_reward_head,
    load_reward_model,
    pair_indices,
    pair_rewards,
    reward_batch,
    reward_metrics,
    save_reward_model,
    score_pairs,
    train_reward_model,
)
from lmstack.data.instruct import InstructFormat
from lmstack.data.tasks import generate
from lmstack.errors import ConfigError, DataError, WeightsError
from lmstack.finetune.lora import LoRAConfig, is_lora_key
from lmstack.models import DecoderLM
from lmstack.train.loop import TrainConfig
from testutil import tiny_bpe, tiny_config

FMT = InstructFormat(max_len=64)


@pytest.fixture(scope="module")
def tok():
    return tiny_bpe()


def tiny_backbone(tok, preset: str = "llama-tiny", seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(tiny_config(preset, vocab_size=tok.vocab_size, max_seq_len=96))


ROWS = [
    {"prompt": "add 2 and 3", "chosen": "the answer is 5.", "rejected": "the answer is 7."},
    {"prompt": "add 4 and 4", "chosen": "it is 8, quick.", "rejected": "it is 9, lazy."},
    {"prompt": "the fox?", "chosen": "quick brown fox.", "rejected": "the lazy dog."},
    {"prompt": "the dog?", "chosen": "a lazy dog, naïve.", "rejected": "a brown fox."},
    {"prompt": "def add", "chosen": "return a + b", "rejected": "return a - b"},
    {"prompt": "héllo", "chosen": "wörld café", "rejected": "emoji 🤖"},
]


def pairs_of(tok, rows=ROWS, fmt=FMT):
    return encode_pairs([(f"rows#{i}", r) for i, r in enumerate(rows)], tok, fmt)


# ----------------------------------------------------------------------------- the loss, by hand


def test_bt_loss_is_the_closed_form_on_hand_values():
    chosen, rejected = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([0.0, 2.0, -1.5])
    softplus = lambda x: math.log1p(math.exp(-x))  # noqa: E731  (-log σ(x))
    plain = (softplus(1.0) + softplus(-2.0) + softplus(1.0)) / 3
    assert bt_loss(chosen, rejected).item() == pytest.approx(plain, abs=1e-6)
    margin = torch.tensor([0.5, 0.0, 2.0])
    with_margin = (softplus(0.5) + softplus(-2.0) + softplus(-1.0)) / 3
    assert bt_loss(chosen, rejected, margin).item() == pytest.approx(with_margin, abs=1e-6)
    centring = 0.01 * (1.0**2 + 2.0**2 + (-2.0) ** 2) / 3
    got = bt_loss(chosen, rejected, margin, center_coef=0.01).item()
    assert got == pytest.approx(with_margin + centring, abs=1e-6)
    assert bt_loss(torch.tensor([0.3]), torch.tensor([0.3])).item() == pytest.approx(math.log(2), abs=1e-7)


def test_reward_metrics_count_ties_as_wrong():
    m = reward_metrics(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert m["accuracy"] == 0.5
    assert m["margin"] == pytest.approx((1 - 1 + 1 + 0) / 4)
    assert m["chosen"] == pytest.approx(1.0) and m["rejected"] == pytest.approx(0.75)


# ----------------------------------------------------------------------------- parity with TRL


def trl_reward_loss(rewards_chosen, rewards_rejected, attention_mask, margin=None, center=None):
    """TRL's `RewardTrainer.compute_loss`, called unbound on a minimal stand-in `self` that holds only what it
    reads (model.training, args.center_rewards_coefficient, an accelerator whose gathers are the identity on
    one process, the token counter and the metrics dict), and a stand-in model whose output logits are the
    given rewards (2B, 1), chosen rows first: exactly the layout TRL's collator builds."""
    from trl import RewardTrainer

    logits = torch.cat([rewards_chosen, rewards_rejected])[:, None]
    ident = lambda x: x  # noqa: E731
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        args=SimpleNamespace(center_rewards_coefficient=center),
        accelerator=SimpleNamespace(gather=ident, gather_for_metrics=ident),
        _total_train_tokens=0,
        _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {"input_ids": torch.zeros_like(attention_mask), "attention_mask": attention_mask}
    if margin is not None:
        inputs["margin"] = margin
    loss = RewardTrainer.compute_loss(stand_in, lambda **kw: SimpleNamespace(logits=logits), inputs)
    return loss, {k: v[-1] for k, v in stand_in._metrics["train"].items()}


@pytest.mark.parametrize("center", [None, 0.01, 0.5])
@pytest.mark.parametrize("with_margin", [False, True])
def test_bt_loss_and_metrics_equal_trl_reward_trainer(center, with_margin):
    g = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(16, generator=g) * 2, torch.randn(16, generator=g) * 2
    margin = torch.rand(16, generator=g) if with_margin else None
    mask = torch.ones(32, 5, dtype=torch.long)
    trl_loss, trl_metrics = trl_reward_loss(chosen, rejected, mask, margin, center)
    ours = bt_loss(chosen, rejected, margin, center_coef=center or 0.0)
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    metrics = reward_metrics(chosen, rejected)
    assert metrics["accuracy"] == pytest.approx(trl_metrics["accuracy"], abs=1e-6)
    assert metrics["margin"] == pytest.approx(trl_metrics["margin"], abs=1e-6)


# ----------------------------------------------------------------------------- reading the reward


def test_last_token_index_for_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(left).tolist() == [3, 3, 3]
    with pytest.raises(DataError, match="no real token"):
        last_token_index(torch.tensor([[0, 0]]))


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt-tiny"])
def test_reward_is_read_at_the_last_real_token_and_padding_side_does_not_matter(tok, preset):
    rm = RewardModel(tiny_backbone(tok, preset)).eval()
    seqs = [[5, 9, 17, 3, 44], [7, 8], [60, 61, 62]]
    width, pad = 7, 0
    right = torch.full((3, width), pad)
    left = torch.full((3, width), pad)
    rmask, lmask = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
    for i, s in enumerate(seqs):
        right[i, : len(s)], rmask[i, : len(s)] = torch.tensor(s), 1
        left[i, width - len(s) :], lmask[i, width - len(s) :] = torch.tensor(s), 1
    with torch.no_grad():
        r_right, r_left = rm(right, rmask), rm(left, lmask)
        alone = torch.stack([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])
        # what the head sees: the final hidden state of the sequence's own last token
        by_hand = torch.stack([rm.head(rm.backbone.hidden_states(torch.tensor([s]))[0, -1])[0] for s in seqs])
        junk = right.masked_fill(rmask == 0, 42)  # what padding holds changes nothing
        r_junk = rm(junk, rmask)
    assert r_right.shape == (3,) and r_right.dtype == torch.float32
    torch.testing.assert_close(r_left, r_right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, r_right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_hand, r_right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_junk, r_right, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- rows and batches


def test_rows_render_like_instruction_rows_with_the_chat_template(tok):
    pairs = pairs_of(tok)
    assert len(pairs) == len(ROWS) and pairs[0].origin == "rows#0"
    c = pairs[0].chosen
    text = tok.decode([int(i) for i in c.ids], skip_special_tokens=False)
    expected = tok.apply_chat_template(
        [{"role": "user", "content": ROWS[0]["prompt"]}, {"role": "assistant", "content": ROWS[0]["chosen"]}]
    )
    assert text == expected
    trained = tok.decode([int(i) for i in c.ids[c.trained]], skip_special_tokens=False)
    assert trained == ROWS[0]["chosen"] + "<|im_end|>"
    plain = pairs_of(tok, fmt=InstructFormat(max_len=64, format="plain"))[0].rejected
    assert tok.decode([int(i) for i in plain.ids]) == ROWS[0]["prompt"] + "\n" + ROWS[0]["rejected"]


def test_the_preferences_task_rows_load(tok, tmp_path):
    items = generate("preferences", 3, seed=0, split="train")["items"]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    pairs = load_pairs(path, tok, InstructFormat(max_len=512))
    assert [p.origin for p in pairs] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert all(p.chosen.task == "prefs" and p.margin == 0.0 for p in pairs)


def test_reward_batch_pads_both_sides_to_one_width(tok):
    rows = [dict(ROWS[0], margin=0.25), ROWS[4]]
    batch = reward_batch(pairs_of(tok, rows), pad_id=0)
    assert batch["chosen_ids"].shape == batch["rejected_ids"].shape
    lengths = [len(p.chosen) for p in pairs_of(tok, rows)]
    assert batch["chosen_mask"].sum(-1).tolist() == lengths
    assert batch["margin"].tolist() == [0.25, 0.0]


def test_pair_order_is_a_permutation_per_epoch_and_a_function_of_the_step():
    seen = [i for step in range(3) for i in pair_indices(6, 2, step, seed=1)]
    assert sorted(seen) == list(range(6))
    assert pair_indices(6, 4, 5, seed=1) == pair_indices(6, 4, 5, seed=1)
    assert pair_indices(6, 4, 5, seed=1, rows=range(2, 4)) == pair_indices(6, 4, 5, seed=1)[2:]
    assert pair_indices(6, 4, 5, seed=1) != pair_indices(6, 4, 5, seed=2)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "rejected": "r"}, "has no 'chosen'"),
        ({"chosen": "c", "rejected": "r"}, "has no 'prompt'"),
        ({"prompt": "p", "chosen": "   ", "rejected": "r"}, "'chosen' is empty"),
        ({"prompt": "p", "chosen": "c", "rejected": ""}, "'rejected' is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": " same "}, "the same text"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "must be a string"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, "'margin' must be a finite number"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": float("nan")}, "'margin' must be a finite"),
        ({"prompt": "p", "chosen": "c " * 80, "rejected": "r"}, "exceed max_len"),
    ],
)
def test_bad_rows_name_the_file_and_line(tok, tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{message}"):
        load_pairs(path, tok, FMT)


def test_unreadable_files_are_data_errors(tok, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "missing.jsonl", tok, FMT)
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:1: invalid JSON"):
        load_pairs(tmp_path / "broken.jsonl", tok, FMT)


# ----------------------------------------------------------------------------- on disk


def test_head_errors_say_what_is_wrong(tok, tmp_path):
    with pytest.raises(WeightsError, match="no reward head"):
        load_reward_head(tmp_path)
    rm = RewardModel(tiny_backbone(tok))
    save_reward_model(rm, tmp_path / "rm")
    with pytest.raises(WeightsError, match="does not fit a backbone of 64"):
        load_reward_head(tmp_path / "rm", d_model=64)
    with pytest.raises(ConfigError, match="does not fit d_model"):
        RewardModel(tiny_backbone(tok), torch.nn.Linear(8, 1))
    with pytest.raises(ConfigError, match="DecoderLM backbone"):
        RewardModel(torch.nn.Linear(4, 4))


def test_too_long_pairs_for_the_context_are_a_config_error(tok, tmp_path):
    torch.manual_seed(0)
    small = DecoderLM(tiny_config("llama-tiny", vocab_size=tok.vocab_size, max_seq_len=8))
    with pytest.raises(ConfigError, match="context is 8"):
        train_reward_model(small, pairs_of(tok), tmp_path, TrainConfig(steps=1, batch_size=2, progress=False))


# ----------------------------------------------------------------------------- end to end on the loop


def loop_cfg(steps: int, lr: float, **kw) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=6, lr=lr, warmup_steps=0, weight_decay=0.0, eval_every=0, progress=False, **kw
    )


def test_a_tiny_reward_model_learns_its_pairs_and_reloads(tok, tmp_path):
    pairs = pairs_of(tok)
    rm, summary = train_reward_model(
        tiny_backbone(tok), pairs, tmp_path / "run", loop_cfg(30, 3e-3), tokenizer=tok, log=lambda m: None
    )
    assert summary["step"] == 30
    assert summary["initial_metrics"]["accuracy"] < 1.0
    assert summary["metrics"]["accuracy"] == 1.0 and summary["metrics"]["margin"] > 0.5
    assert summary["val_loss"] < summary["initial_val_loss"]
    chosen, rejected = score_pairs(rm, pairs)
    assert bool((chosen > rejected).all())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward/accuracy" in r] == [0, 30]
    # the run's checkpoint (backbone + head beside it) and an exported directory both score alike
    ckpt = tmp_path / "run" / "step-00000030"
    assert (ckpt / HEAD_DIR / "head.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    loaded, loaded_tok = load_reward_model(tmp_path / "run")
    assert loaded_tok is not None
    torch.testing.assert_close(score_pairs(loaded, pairs), (chosen, rejected))
    save_reward_model(rm, tmp_path / "export", tok)
    exported, _ = load_reward_model(tmp_path / "export")
    torch.testing.assert_close(score_pairs(exported, pairs), (chosen, rejected))


def test_reward_model_with_lora_trains_adapters_and_head_only(tok, tmp_path):
    pairs = pairs_of(tok)
    base = tiny_backbone(tok)
    before = copy.deepcopy(base.state_dict())
    cfg = RewardConfig(lora=LoRAConfig(r=4, alpha=8, targets="all-linear"), center_coef=0.01)
    rm, summary = train_reward_model(base, pairs, tmp_path / "run", loop_cfg(12, 1e-2), cfg=cfg, log=lambda m: None)
    assert summary["metrics"]["margin"] > summary["initial_metrics"]["margin"]
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all(is_lora_key(n) or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    for name, value in rm.backbone.state_dict().items():  # the base weights did not move
        if not is_lora_key(name):
            torch.testing.assert_close(value, before[name], atol=0, rtol=0)
    with pytest.raises(ConfigError, match="pass base="):
        load_reward_model(tmp_path / "run")
    fresh = tiny_backbone(tok)  # the same base (same seed), without adapters
    loaded, _ = load_reward_model(tmp_path / "run", base=fresh)
    torch.testing.assert_close(score_pairs(loaded, pairs), score_pairs(rm, pairs), atol=1e-5, rtol=1e-5)
    save_reward_model(rm, tmp_path / "merged")  # adapters merged into a copy; rm keeps them
    merged, _ = load_reward_model(tmp_path / "merged")
    torch.testing.assert_close(score_pairs(merged, pairs), score_pairs(rm, pairs), atol=1e-5, rtol=1e-5)


def test_micro_batches_give_the_whole_batch_loss(tok):
    rm = RewardModel(tiny_backbone(tok)).eval()
    batch = reward_batch(pairs_of(tok), pad_id=0)
    with torch.no_grad():
        whole = bt_loss(*pair_rewards(rm, batch))
        halves = [{k: v[i : i + 3] for k, v in batch.items()} for i in (0, 3)]
        parts = sum(bt_loss(*pair_rewards(rm, h)) for h in halves) / 2
    assert whole.item() == pytest.approx(parts.item(), abs=1e-6)
