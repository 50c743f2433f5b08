"""Packed sequences: `segment_ids` make attention block-diagonal causal and restart positions per segment."""

import pytest
import torch

from lmstack.models import DecoderLM
from lmstack.models.blocks import build_attention_mask, segment_positions
from testutil import tiny_config

DECODER_PRESETS = ["gpt-tiny", "llama-tiny"]  # learned positions and RoPE


def test_segment_positions_restart_at_every_segment():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0, 0], [1, 2, 3, 3, 3, 3, 3]])
    assert segment_positions(seg).tolist() == [[0, 1, 0, 1, 2, 0, 1], [0, 0, 0, 1, 2, 3, 4]]


def test_segment_mask_is_block_diagonal_causal():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0]])
    pad = (seg > 0).long()
    mask, is_causal = build_attention_mask(6, 6, True, pad, torch.device("cpu"), seg)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],  # a padding query sees every key (no NaN); its output is ignored
        ],
        dtype=torch.bool,
    )
    assert not is_causal
    assert torch.equal(mask[0, 0], expected)


def test_without_segments_the_fast_causal_path_is_kept():
    assert build_attention_mask(5, 5, True, None, torch.device("cpu")) == (None, True)
    assert build_attention_mask(5, 5, True, None, torch.device("cpu"), None) == (None, True)


def test_segment_mask_with_cached_keys_uses_the_query_rows():
    seg = torch.tensor([[1, 1, 2, 2]])  # keys: 4 tokens; queries: the last 2
    mask, _ = build_attention_mask(2, 4, True, None, torch.device("cpu"), seg)
    assert mask[0, 0].tolist() == [[False, False, True, False], [False, False, True, True]]


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_packed_rows_equal_separate_forwards(preset):
    """Three sequences packed into one row give each one the logits it gets alone (float64: exact up to
    rounding), with positions derived from the segment ids."""
    model = DecoderLM(tiny_config(preset)).double().eval()
    parts = [torch.randint(0, 97, (1, n)) for n in (5, 9, 4)]
    packed = torch.cat(parts, 1)
    seg = torch.cat([torch.full((1, p.shape[1]), i + 1) for i, p in enumerate(parts)], 1)
    with torch.no_grad():
        out = model(packed, segment_ids=seg)
        at = 0
        for p in parts:
            alone = model(p)
            assert torch.allclose(out[:, at : at + p.shape[1]], alone, atol=1e-12, rtol=0)
            at += p.shape[1]
        leaky = model(packed)  # without segments the later sequences see the earlier ones
    assert not torch.allclose(leaky[:, 5:], out[:, 5:], atol=1e-6)


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_segments_with_kv_cache_match_the_full_forward(preset):
    model = DecoderLM(tiny_config(preset)).double().eval()
    ids = torch.randint(0, 97, (2, 12))
    seg = torch.tensor([[1] * 5 + [2] * 7, [1] * 8 + [2] * 4])
    with torch.no_grad():
        full = model(ids, segment_ids=seg)
        cache = model.new_cache(2, 12)
        first = model(ids[:, :7], segment_ids=seg[:, :7], cache=cache)
        steps = [model(ids[:, t : t + 1], segment_ids=seg[:, : t + 1], cache=cache) for t in range(7, 12)]
    incremental = torch.cat([first, *steps], 1)
    assert torch.allclose(incremental, full, atol=1e-12, rtol=0)
