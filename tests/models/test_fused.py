"""Fused projections expose their parts: q/k/v of attention, gate/up of a gated MLP."""

import pytest
import torch
from torch import nn

from lmstack.models import DecoderLM, Seq2SeqLM
from lmstack.models.bitnet import BitLinear
from lmstack.models.fused import FusedLinear, check_splits, split_parts
from testutil import tiny_config


def test_every_fused_projection_names_its_parts_and_the_parts_compute_the_separate_projections():
    cfg = tiny_config("llama-tiny")  # grouped-query attention: kv heads < heads, so the parts differ in size
    model = DecoderLM(cfg)
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    assert kv_dim < q_dim
    x = torch.randn(2, 5, cfg.d_model)
    for block in model.layers:
        qkv, up = block.attn.qkv_proj, block.mlp.up_proj
        assert isinstance(qkv, FusedLinear) and qkv.splits == (q_dim, kv_dim, kv_dim)
        assert isinstance(up, FusedLinear) and up.splits == (cfg.d_ff, cfg.d_ff)
        assert type(block.attn.o_proj) is nn.Linear and type(block.mlp.down_proj) is nn.Linear  # not fused
        q_w, k_w, v_w = qkv.weight_parts()
        assert q_w.data_ptr() == qkv.weight.data_ptr()  # views, not copies: LoRA and exports see the live weight
        fused_out = split_parts(qkv(x), qkv.splits, dim=-1)
        for out, w in zip(fused_out, (q_w, k_w, v_w)):
            torch.testing.assert_close(out, x @ w.t(), rtol=0, atol=1e-6)


def test_cross_attention_and_bitnet_fused_layers_carry_splits_too():
    s2s = Seq2SeqLM(tiny_config("t5-tiny"))
    kv = s2s.decoder_layers[0].cross_attn.kv_proj
    assert isinstance(kv, FusedLinear) and len(kv.splits) == 2 and kv.splits[0] == kv.splits[1]
    bit = DecoderLM(tiny_config("llama-tiny", bitnet=True))
    qkv = bit.layers[0].attn.qkv_proj
    assert isinstance(qkv, BitLinear) and isinstance(qkv, FusedLinear) and len(qkv.splits) == 3


def test_splits_are_checked():
    assert check_splits(None, 8) is None and check_splits((8,), 8) is None
    assert check_splits((4, 2, 2), 8) == (4, 2, 2)
    with pytest.raises(ValueError, match="add up"):
        FusedLinear(4, 8, splits=(4, 2))
    with pytest.raises(ValueError, match="positive"):
        check_splits((8, 0), 8)
