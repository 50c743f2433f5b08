import math

import pytest
import torch

from lmstack.generate.sampling import generate
from lmstack.models import DecoderLM, EncoderModel, Seq2SeqLM, pool
from lmstack.models.blocks import KVCache, RotaryEmbedding, apply_rope, build_attention_mask, sinusoidal_table
from testutil import tiny_config

DECODER_PRESETS = ["gpt-tiny", "llama-tiny"]


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_decoder_shapes(preset):
    model = DecoderLM(tiny_config(preset))
    ids = torch.randint(0, 97, (3, 11))
    assert model(ids).shape == (3, 11, 97)
    assert model.hidden_states(ids).shape == (3, 11, 32)


def test_encoder_and_seq2seq_shapes():
    enc = EncoderModel(tiny_config("bert-tiny"))
    ids = torch.randint(1, 97, (2, 9))
    hidden = enc(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert hidden.shape == (2, 9, 32)
    assert enc.mlm_logits(hidden).shape == (2, 9, 97)
    assert pool(hidden, torch.ones_like(ids)).shape == (2, 32)
    for preset in ("t5-tiny", "bart-tiny"):
        s2s = Seq2SeqLM(tiny_config(preset))
        assert s2s(ids, ids[:, :5]).shape == (2, 5, 97)


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_causality(preset):
    """Changing future tokens never changes the logits of earlier positions."""
    model = DecoderLM(tiny_config(preset)).eval()
    ids = torch.randint(0, 97, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = torch.randint(0, 97, (2, 6))
    a, b = model(ids), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_seq2seq_decoder_is_causal_and_encoder_is_bidirectional():
    model = Seq2SeqLM(tiny_config("t5-tiny")).eval()
    src = torch.randint(1, 97, (1, 8))
    tgt = torch.randint(1, 97, (1, 8))
    tgt2 = tgt.clone()
    tgt2[:, 5:] = (tgt2[:, 5:] + 1) % 97
    assert torch.equal(model(src, tgt)[:, :5], model(src, tgt2)[:, :5])
    src2 = src.clone()
    src2[:, -1] = (src2[:, -1] + 1) % 97  # the last source token is visible to every target position
    assert not torch.allclose(model(src, tgt)[:, 0], model(src2, tgt)[:, 0])


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_kv_cache_matches_full_forward(preset):
    model = DecoderLM(tiny_config(preset)).eval()
    ids = torch.randint(0, 97, (2, 12))
    cache = model.new_cache(2, 12)
    parts = [model(ids[:, :5], cache=cache)] + [model(ids[:, i : i + 1], cache=cache) for i in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, 1), model(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_greedy_generation_with_cache_equals_without(preset):
    model = DecoderLM(tiny_config(preset)).eval()
    prompt = torch.randint(0, 97, (2, 5))
    with_cache = generate(model, prompt, 20, use_cache=True)
    without = generate(model, prompt, 20, use_cache=False)
    assert with_cache.shape == (2, 20)
    assert torch.equal(with_cache, without)


def test_kv_cache_overflow_is_an_error():
    cache = KVCache(1, 1, 2, 4, 8)
    with pytest.raises(ValueError, match="full"):
        cache.update(0, torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8))


def test_gqa_equals_mha_when_kv_heads_equal_heads():
    mha = DecoderLM(tiny_config("llama-tiny", n_kv_heads=None)).eval()
    gqa = DecoderLM(tiny_config("llama-tiny", n_kv_heads=4)).eval()
    gqa.load_state_dict(mha.state_dict())
    ids = torch.randint(0, 97, (2, 10))
    assert torch.equal(mha(ids), gqa(ids))


def test_gqa_equals_mha_with_repeated_kv_heads():
    """Grouped-query attention = multi-head attention whose k/v heads are copies shared within each group."""
    gqa = DecoderLM(tiny_config("llama-tiny", n_kv_heads=2)).eval()
    mha = DecoderLM(tiny_config("llama-tiny", n_kv_heads=None)).eval()
    state = gqa.state_dict()
    hd, h, kv = 8, 4, 2
    for i in range(2):
        w = state[f"layers.{i}.attn.qkv_proj.weight"]
        q, k, v = w.split([h * hd, kv * hd, kv * hd])
        rep = lambda t: t.view(kv, hd, -1).repeat_interleave(h // kv, dim=0).reshape(h * hd, -1)  # noqa: E731
        state[f"layers.{i}.attn.qkv_proj.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    ids = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(mha(ids), gqa(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", DECODER_PRESETS)
def test_left_padding_gives_unpadded_logits(preset):
    model = DecoderLM(tiny_config(preset)).eval()
    short = torch.randint(1, 97, (1, 6))
    long = torch.randint(1, 97, (1, 9))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, 3:] = short
    batch[1] = long
    mask = (torch.arange(9) >= torch.tensor([[3], [0]])).long()
    out = model(batch, attention_mask=mask)
    torch.testing.assert_close(out[0, 3:], model(short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model(long)[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_encoder_padding_mask():
    model = EncoderModel(tiny_config("bert-tiny")).eval()
    ids = torch.randint(1, 97, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 4)], 1).long()
    h_pad = model(padded, mask)
    torch.testing.assert_close(h_pad[:, :7], model(ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool(h_pad, mask), pool(model(ids), None), atol=1e-5, rtol=1e-5)
    # without the mask the padding leaks into the real tokens
    assert not torch.allclose(model(padded)[:, :7], model(ids), atol=1e-4)


def test_attention_mask_rows_never_empty():
    pad = torch.tensor([[0, 0, 1, 1]])
    mask, is_causal = build_attention_mask(4, 4, True, pad, torch.device("cpu"))
    assert not is_causal and mask.any(-1).all()
    assert mask[0, 0, 3].tolist() == [False, False, True, True]
    assert build_attention_mask(4, 4, True, None, torch.device("cpu")) == (None, True)
    assert build_attention_mask(1, 9, True, None, torch.device("cpu")) == (None, False)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        cq, sq = rope(torch.tensor([[i]]))
        ck, sk = rope(torch.tensor([[j]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(20, 18))
    torch.testing.assert_close(score(0, 0), (q * k).sum())  # position 0 is the identity rotation


def test_sinusoidal_table():
    t = sinusoidal_table(50, 8)
    assert t.shape == (50, 8)
    assert torch.allclose(t[0], torch.tensor([0.0, 1.0] * 4))
    assert math.isclose(float(t[7, 0]), math.sin(7), rel_tol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "none"])
def test_every_position_kind_runs(position):
    model = DecoderLM(tiny_config("gpt-tiny", position=position)).eval()
    assert torch.isfinite(model(torch.randint(0, 97, (1, 8)))).all()


def test_tied_embeddings_share_storage():
    model = DecoderLM(tiny_config("llama-tiny"))
    assert model.lm_head.weight is model.embed.tokens.weight
    untied = DecoderLM(tiny_config("llama-tiny", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.tokens.weight


def test_dropout_only_in_training():
    model = DecoderLM(tiny_config("gpt-tiny", dropout=0.5))
    ids = torch.randint(0, 97, (1, 8))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.equal(model(ids), model(ids))


def test_seq2seq_generate_matches_uncached_greedy():
    model = Seq2SeqLM(tiny_config("bart-tiny")).eval()
    src = torch.randint(1, 97, (2, 7))
    fast = model.generate(src, 10, eos_token_id=-1)
    tgt = torch.full((2, 1), model.decoder_start_id)
    for _ in range(10):
        tgt = torch.cat([tgt, model(src, tgt)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, tgt[:, 1:])
