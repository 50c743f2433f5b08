import pytest
import torch

from lmstack.models import build_model
from lmstack.train.objectives import (
    IGNORE,
    OBJECTIVES,
    SpecialIds,
    denoising_batch,
    masked_lm_batch,
    row_generators,
    span_corruption_batch,
)
from testutil import tiny_config

IDS = SpecialIds(pad=0, eos=1, mask=2, sentinels=tuple(range(3, 13)), special=tuple(range(13)), vocab_size=97)


def gens(blocks, seed):
    return row_generators(seed, 0, range(len(blocks)))


PRESET = {"causal_lm": "gpt-tiny", "masked_lm": "bert-tiny", "span_corruption": "t5-tiny", "denoising": "bart-tiny"}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    objective = OBJECTIVES[name]
    model = build_model(tiny_config(PRESET[name]))
    blocks = torch.randint(13, 97, (4, 24 + objective.block_extra))
    batch = objective.make_batch(blocks, IDS, gens(blocks, 0))
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
    batch = masked_lm_batch(blocks, IDS, gens(blocks, 1))
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
    a = masked_lm_batch(blocks, IDS, gens(blocks, 3))
    b = masked_lm_batch(blocks, IDS, gens(blocks, 3))
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert (a["labels"][:, ::5] == IGNORE).all()


def test_span_corruption_reconstructs_the_original():
    blocks = torch.randint(13, 97, (6, 40))
    batch = span_corruption_batch(blocks, IDS, gens(blocks, 2))
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
    batch = denoising_batch(blocks, IDS, gens(blocks, 0))
    for row in range(3):
        tgt = [t for t in batch["labels"][row].tolist() if t != IGNORE]
        assert tgt == blocks[row].tolist() + [IDS.eos]
        assert IDS.mask in batch["input_ids"][row].tolist()
        assert batch["attention_mask"][row].sum() < 30


def unpadded_rows(batch):
    """Each row's real input and target tokens (seq2seq batches pad to the longest row of their batch)."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    return [
        ([t for t, m in zip(i.tolist(), a.tolist()) if m], [t for t in y.tolist() if t != IGNORE])
        for i, a, y in zip(batch["input_ids"], mask, batch["labels"])
    ]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_a_rank_building_its_own_rows_gets_the_global_batch_rows(name):
    """Randomness is per (seed, step, global row): the two halves built apart are the global batch's rows,
    so no rank needs to build the whole global batch."""
    objective = OBJECTIVES[name]
    blocks = torch.randint(13, 97, (8, 40 + objective.block_extra), generator=torch.Generator().manual_seed(5))
    whole = objective.make_batch(blocks, IDS, row_generators(7, 3, range(8)))
    halves = [
        objective.make_batch(blocks[r.start : r.stop], IDS, row_generators(7, 3, r)) for r in (range(4), range(4, 8))
    ]
    assert unpadded_rows(whole) == unpadded_rows(halves[0]) + unpadded_rows(halves[1])
    if name != "causal_lm":  # and the rows do differ between steps and between rows
        other_step = objective.make_batch(blocks, IDS, row_generators(7, 4, range(8)))
        assert unpadded_rows(other_step) != unpadded_rows(whole)
        twins = objective.make_batch(blocks[:1].repeat(2, 1), IDS, row_generators(7, 3, range(2)))
        assert unpadded_rows(twins)[0] != unpadded_rows(twins)[1]  # the same text, masked differently per row


def test_one_generator_per_row_is_required():
    blocks = torch.randint(13, 97, (4, 20))
    with pytest.raises(ValueError, match="one generator each"):
        masked_lm_batch(blocks, IDS, row_generators(0, 0, range(3)))
