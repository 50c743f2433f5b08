import pytest
import torch

from lmstack.models import build_model
from lmstack.train.objectives import (
    IGNORE,
    OBJECTIVES,
    SpecialIds,
    denoising_batch,
    masked_lm_batch,
    span_corruption_batch,
)
from testutil import tiny_config

IDS = SpecialIds(pad=0, eos=1, mask=2, sentinels=tuple(range(3, 13)), special=tuple(range(13)), vocab_size=97)
PRESET = {"causal_lm": "gpt-tiny", "masked_lm": "bert-tiny", "span_corruption": "t5-tiny", "denoising": "bart-tiny"}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    objective = OBJECTIVES[name]
    model = build_model(tiny_config(PRESET[name]))
    blocks = torch.randint(13, 97, (4, 24 + objective.block_extra))
    batch = objective.make_batch(blocks, IDS, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = objective.loss(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5  # ≈ ln(97) at random init
    assert float(loss) < 0.3, f"{name} did not overfit: {first:.2f} → {float(loss):.2f}"


def test_bert_masking_proportions():
    blocks = torch.randint(13, 97, (64, 256))
    batch = masked_lm_batch(blocks, IDS, torch.Generator().manual_seed(1))
    chosen = batch["labels"] != IGNORE
    assert torch.equal(batch["labels"][chosen], blocks[chosen])
    rate = chosen.float().mean().item()
    assert 0.14 < rate < 0.16
    as_mask = (batch["input_ids"] == IDS.mask) & chosen
    unchanged = (batch["input_ids"] == blocks) & chosen
    assert 0.77 < as_mask.sum() / chosen.sum() < 0.83
    assert 0.08 < unchanged.sum() / chosen.sum() < 0.13  # 10% kept + random draws that hit the same id
    assert torch.equal(batch["input_ids"][~chosen], blocks[~chosen])


def test_masking_never_touches_special_tokens_and_is_reproducible():
    blocks = torch.randint(13, 97, (8, 64))
    blocks[:, ::5] = IDS.eos
    a = masked_lm_batch(blocks, IDS, torch.Generator().manual_seed(3))
    b = masked_lm_batch(blocks, IDS, torch.Generator().manual_seed(3))
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert (a["labels"][:, ::5] == IGNORE).all()


def test_span_corruption_reconstructs_the_original():
    blocks = torch.randint(13, 97, (6, 40))
    batch = span_corruption_batch(blocks, IDS, torch.Generator().manual_seed(2))
    for row in range(6):
        src = [t for t, m in zip(batch["input_ids"][row].tolist(), batch["attention_mask"][row].tolist()) if m]
        tgt = [t for t in batch["labels"][row].tolist() if t != IGNORE]
        assert tgt[-1] == IDS.eos
        spans, current = {}, None
        for t in tgt[:-1]:
            if t in IDS.sentinels:
                current = t
                spans[current] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in src for x in (spans[t] if t in IDS.sentinels else [t])]
        assert rebuilt == blocks[row].tolist()
        noise = sum(len(s) for s in spans.values())
        assert noise == round(40 * 0.15)


def test_denoising_targets_are_the_original_text():
    blocks = torch.randint(13, 97, (3, 30))
    batch = denoising_batch(blocks, IDS, torch.Generator().manual_seed(0))
    for row in range(3):
        tgt = [t for t in batch["labels"][row].tolist() if t != IGNORE]
        assert tgt == blocks[row].tolist() + [IDS.eos]
        assert IDS.mask in batch["input_ids"][row].tolist()
        assert batch["attention_mask"][row].sum() < 30
