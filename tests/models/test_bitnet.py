import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lmstack.errors import ConfigError
from lmstack.generate.sampling import generate
from lmstack.models import bitnet as bn
from lmstack.models import build_model
from lmstack.models.bitnet import (
    CODES_PER_BYTE,
    PACKING,
    PACKING_BASE3,
    BitLinear,
    PackedBitLinear,
    bitnet_state,
    integer_matmul,
    linear_weight_bytes,
    pack_model,
    pack_ternary,
    quantize_activations,
    set_quant_strength,
    ternarize,
    unpack_ternary,
)
from lmstack.train.loop import train
from lmstack.train.metrics import read_metrics
from lmstack.train.optim import two_stage_factor, weight_decay_factor
from lmstack.train.quant_ramp import BitNetTrainConfig, quant_strength
from lmstack.train.recipe import build_job, load_recipe
from testutil import tiny_config, tiny_text_overrides


def test_weights_are_ternary_with_the_absmean_scale():
    w = torch.randn(24, 40) * 0.05
    codes, gamma = ternarize(w)
    wn = w.numpy().astype(np.float64)
    expected_gamma = np.abs(wn).mean()
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) == {-1, 0, 1}
    assert float(gamma) == pytest.approx(expected_gamma, rel=1e-6)
    expected = np.clip(np.round(wn / expected_gamma), -1, 1)
    assert (codes.numpy() == expected).mean() > 0.999  # a value exactly at ±0.5 γ may round either way
    # the dequantized weight is the closest point of γ·{-1, 0, 1} to each latent weight
    assert torch.all((codes.float() * gamma - w).abs() <= torch.maximum(w.abs() - gamma, gamma / 2) + 1e-7)


def test_fused_parts_get_their_own_scale_as_separate_layers_would():
    """q, k and v in one matrix: each part is ternarized on its own absmean, so the fused layer computes
    exactly what three separate BitLinear layers (sharing the SubLN gain) compute."""
    fused = BitLinear(16, 24, splits=(8, 8, 8))
    with torch.no_grad():
        fused.weight[8:16] *= 0.01  # a part 100x smaller: one shared γ would round it all to zero
        fused.norm.weight.uniform_(0.5, 1.5)
    codes, gamma = ternarize(fused.weight, fused.splits)
    parts = fused.weight.detach().split(8)
    assert gamma.tolist() == [float(p.abs().mean()) for p in parts]
    assert (codes[8:16] != 0).float().mean() > 0.5
    assert (ternarize(fused.weight)[0][8:16] == 0).all()  # what the shared scale would have done
    separate = []
    for part in parts:
        layer = BitLinear(16, 8)
        with torch.no_grad():
            layer.weight.copy_(part)
            layer.norm.weight.copy_(fused.norm.weight)
        separate.append(layer)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        assert torch.equal(fused(x), torch.cat([layer(x) for layer in separate], dim=-1))
    packed = PackedBitLinear.from_bitlinear(fused)
    with torch.no_grad():
        assert torch.equal(packed(x), fused(x))
    with pytest.raises(ValueError, match="add up to"):
        BitLinear(16, 24, splits=(8, 8))


def test_packed_layer_reads_a_single_scale_for_every_part():
    """Exports from before per-part scales stored one γ per matrix; it applies to every part."""
    fused = PackedBitLinear.from_bitlinear(BitLinear(16, 24, splits=(8, 8, 8)))
    state = fused.state_dict()
    state["weight_scale"] = torch.tensor([0.25])
    fused.load_state_dict(state)
    assert fused.weight_scale.tolist() == [0.25, 0.25, 0.25]


def test_activations_are_per_token_absmax_int8():
    x = torch.randn(3, 5, 16) * torch.tensor([0.01, 1.0, 50.0])[:, None, None]
    x_q, scale = quantize_activations(x)
    absmax = x.abs().amax(-1, keepdim=True)
    assert torch.allclose(scale, 127.0 / absmax)
    assert torch.equal(x_q, x_q.round()) and x_q.min() >= -128 and x_q.max() <= 127
    assert torch.equal(x_q.abs().amax(-1), torch.full((3, 5), 127.0))  # every token uses the full range
    assert torch.all((x_q / scale - x).abs() <= 0.5 / scale + 1e-6 * absmax)


def test_zero_weights_and_tokens_stay_finite():
    layer = BitLinear(8, 4)
    with torch.no_grad():
        layer.weight.zero_()
    out = layer(torch.zeros(2, 8))
    assert torch.equal(out, torch.zeros(2, 4))
    x_q, scale = quantize_activations(torch.zeros(1, 8))
    assert torch.isfinite(scale).all() and torch.equal(x_q, torch.zeros(1, 8))


def _reference(layer: BitLinear, x: torch.Tensor):
    """The textbook fake-quant forward: dequantized input and weight through F.linear."""
    xn = layer.norm(x)
    x_q, s = quantize_activations(xn)
    codes, gamma = ternarize(layer.weight)
    return xn, x_q / s, codes.float() * gamma


def test_forward_equals_the_fake_quantized_linear_up_to_rounding():
    """BitLinear computes (x_q W_t) γ/s with an exact integer product; F.linear(x_q/s, γ W_t) rounds every
    product and partial sum. The standard dot-product error bound is K·u·Σ|x_k w_k| (u = 2^-24)."""
    layer = BitLinear(64, 24, bias=True)
    x = torch.randn(4, 7, 64)
    _, x_dq, w_dq = _reference(layer, x)
    ref = F.linear(x_dq, w_dq, layer.bias)
    bound = 2 * 64 * 2.0**-24 * (x_dq.abs() @ w_dq.abs().t() + layer.bias.abs()) + 1e-12
    assert torch.all((layer(x) - ref).abs() <= bound)


def test_ste_passes_gradients_to_the_latent_weights_as_identity():
    layer = BitLinear(32, 16, bias=True)
    x = torch.randn(3, 5, 32, requires_grad=True)
    upstream = torch.randn(3, 5, 16)
    (layer(x) * upstream).sum().backward()

    # reference: a plain linear layer whose weight IS the dequantized weight, fed the dequantized input,
    # with the input's quantization bypassed in the backward pass (x + (q(x) - x).detach())
    x_ref = x.detach().clone().requires_grad_(True)
    ref_layer = copy.deepcopy(layer)
    xn, x_dq, w_dq = _reference(ref_layer, x_ref)
    w_leaf = w_dq.detach().clone().requires_grad_(True)
    b_leaf = layer.bias.detach().clone().requires_grad_(True)
    (F.linear(xn + (x_dq - xn).detach(), w_leaf, b_leaf) * upstream).sum().backward()

    assert torch.allclose(layer.weight.grad, w_leaf.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(layer.bias.grad, b_leaf.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(layer.norm.weight.grad, ref_layer.norm.weight.grad, rtol=1e-4, atol=1e-6)
    # identity: even latent weights deep inside a rounding bucket get the full gradient
    assert (layer.weight.grad != 0).float().mean() > 0.99


def test_pack_layout_is_two_bits_per_weight_planar():
    """Byte j of a row holds columns j, j+K/4, j+2K/4, j+3K/4 (code = w + 1) at bits 0, 2, 4, 6."""
    codes = torch.tensor([[-1, 0, 1, 1, 0, -1, -1, 1]], dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 2)
    assert packed.tolist() == [[0 | 2 << 2 | 1 << 4 | 0 << 6, 1 | 2 << 2 | 0 << 4 | 2 << 6]]


def test_base3_layout_is_five_digits_per_byte_planar():
    """Byte j of a row is Σ_i (code of column j + i·K/5, plus 1) · 3^i: 1.6 bits per weight."""
    codes = torch.tensor([[-1, 0, 1, 1, 0, 1, -1, -1, 0, 1]], dtype=torch.int8)  # K = 10: two bytes
    packed = pack_ternary(codes, PACKING_BASE3)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 2)
    digits = (codes + 1).view(5, 2)  # digit i of byte j = column 2i + j
    expected = [sum(int(digits[i, j]) * 3**i for i in range(5)) for j in range(2)]
    assert packed.tolist() == [expected]
    assert int(pack_ternary(torch.ones(1, 5, dtype=torch.int8), PACKING_BASE3)) == 242  # the largest byte


@pytest.mark.parametrize(("packing", "per_byte"), [(PACKING, 4), (PACKING_BASE3, 5)])
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 23), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_is_bit_exact(packing, per_byte, n, k, seed):
    codes = torch.randint(-1, 2, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_ternary(codes, packing)
    assert packed.shape == (n, math.ceil(k / per_byte))
    out = unpack_ternary(packed, k, packing)
    assert out.dtype == torch.int8 and torch.equal(out, codes)


def test_pack_rejects_non_ternary_values_and_unknown_formats():
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([[0, 2]], dtype=torch.int8))
    with pytest.raises(ValueError, match="unknown packing"):
        pack_ternary(torch.zeros(1, 4, dtype=torch.int8), "3bit")
    with pytest.raises(ValueError, match="unknown packing"):
        PackedBitLinear(8, 4, packing="3bit")


@pytest.mark.parametrize("packing", [PACKING, PACKING_BASE3])
@pytest.mark.parametrize("cache_int8", [True, False])
@pytest.mark.parametrize("k", [64, 30])
def test_packed_layer_equals_the_training_forward_exactly(cache_int8, k, packing):
    """Tolerance 0 (fp32, CPU): both compute the integer product x_q·W_t exactly (|x_q| ≤ 128, ternary
    weights, sums < 2^24), the packed one in int32, then apply the same γ/s rescale and bias."""
    layer = BitLinear(k, 24, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    packed = PackedBitLinear.from_bitlinear(layer, cache_int8=cache_int8, packing=packing)
    assert packed.weight_packed.shape == (24, math.ceil(k / CODES_PER_BYTE[packing]))
    for shape in [(1, 1, k), (3, 9, k), (5, k)]:
        x = torch.randn(shape) * 3
        with torch.no_grad():
            assert torch.equal(packed(x), layer(x))


def test_integer_matmul_float_path_equals_int_path(monkeypatch):
    x_q, _ = quantize_activations(torch.randn(6, 40))
    codes = torch.randint(-1, 2, (12, 40), dtype=torch.int8)
    exact = x_q.double() @ codes.double().t()
    assert torch.equal(integer_matmul(x_q, codes).double(), exact)
    monkeypatch.setattr(bn, "_int_mm_works", lambda device_type: False)
    assert torch.equal(integer_matmul(x_q, codes).double(), exact)


def test_unpacked_cache_follows_new_weights():
    a, b = BitLinear(16, 8), BitLinear(16, 8)
    packed = PackedBitLinear.from_bitlinear(a)
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(packed(x), a(x))
        packed.load_state_dict(PackedBitLinear.from_bitlinear(b).state_dict())
        assert torch.equal(packed(x), b(x))
        other = PackedBitLinear.from_bitlinear(a)  # in-place writes also refresh the cached codes and scales
        packed.weight_packed.copy_(other.weight_packed)
        packed.weight_scale.copy_(other.weight_scale)
        assert torch.equal(packed(x), a(x))


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt-tiny"])
def test_bitnet_switch_turns_block_linears_ternary_and_keeps_embeddings_fp(preset):
    model = build_model(tiny_config(preset, bitnet=True))
    n_layers = model.cfg.n_layers
    assert bitnet_state(model) == {"bitlinear": 4 * n_layers, "packed": 0, "linear": 1}
    assert type(model.lm_head) is torch.nn.Linear
    assert isinstance(model.layers[0].attn.qkv_proj, BitLinear)
    assert isinstance(model.embed.tokens, torch.nn.Embedding)
    fp_counts = bitnet_state(build_model(tiny_config(preset)))
    assert fp_counts == {"bitlinear": 0, "packed": 0, "linear": 4 * n_layers + 1}


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt-tiny"])
def test_packed_model_reproduces_the_training_model(preset):
    model = build_model(tiny_config(preset, bitnet=True)).eval()
    packed = pack_model(copy.deepcopy(model))
    assert bitnet_state(packed)["packed"] == 4 * model.cfg.n_layers
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.equal(packed(ids), model(ids))
    prompt = ids[:1, :5]
    assert torch.equal(generate(packed, prompt, 8), generate(model, prompt, 8))
    layers = [m for m in packed.modules() if isinstance(m, PackedBitLinear)]
    sizes = linear_weight_bytes(packed)
    biases = sum(m.out_features for m in layers if m.bias is not None)
    assert sizes["fp"] == 2 * sum(m.in_features * m.out_features for m in layers) + 2 * biases
    codes_bytes = sum(m.out_features * math.ceil(m.in_features / 4) for m in layers)
    scales = sum(m.weight_scale.numel() for m in layers)  # one γ per fused part: q, k, v; gate, up
    assert scales == model.cfg.n_layers * (3 + 1 + (2 if model.cfg.mlp == "swiglu" else 1) + 1)
    assert sizes["packed"] == codes_bytes + 4 * scales + 4 * biases
    if not model.cfg.bias:  # 2 bits against 16: the codes alone are exactly 8x smaller than fp16
        assert sizes["fp"] == 8 * codes_bytes


def test_pack_model_without_bitlinear_layers_fails_clearly():
    from lmstack.errors import CheckpointError

    with pytest.raises(CheckpointError, match="model.bitnet=true"):
        pack_model(build_model(tiny_config("llama-tiny")))


def test_two_stage_schedule_drops_the_lr_and_stops_weight_decay():
    f = [two_stage_factor(s, 10, 100, 0.1, 0.5, 0.3) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:49], f[11:50], strict=True))  # stage one decays
    assert f[49] > 0.5 and f[50] == pytest.approx(0.3)  # the drop at the boundary
    assert all(a >= b for a, b in zip(f[50:99], f[51:100], strict=True)) and f[99] > 0.03 - 1e-9
    assert [weight_decay_factor(s, 100, "bitnet_two_stage", 0.5) for s in (0, 49, 50, 99)] == [1, 1, 0, 0]
    assert weight_decay_factor(99, 100, "cosine", 0.5) == 1.0


def test_tiny_ternary_model_loss_falls_with_the_recipe(text_corpus, tmp_path):
    recipe = load_recipe(
        "recipes/pretrain_bitnet_tiny.yaml",
        [
            *tiny_text_overrides(tmp_path, text_corpus),
            "model.d_model=32",
            "model.n_layers=2",
            "model.n_heads=4",
            "model.n_kv_heads=2",
            "model.d_ff=64",
            "train.steps=40",
            "train.batch_size=8",
            "train.eval_every=10",
            "train.warmup_steps=4",
            "train.save_every=0",
            "train.progress=false",
            "train.log_every=1",
        ],
    )
    assert recipe.model.bitnet and recipe.train.schedule == "bitnet_two_stage"
    job, _ = build_job(recipe, tmp_path, log=lambda m: None)
    assert bitnet_state(job.model)["bitlinear"] == 8
    train(job, recipe.train, tmp_path, log=lambda m: None)
    records = read_metrics(tmp_path / "metrics.jsonl")
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < vals[0] - 1.0 and vals[-1] < math.log(300) - 1.0
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[21] < 0.7 * lrs[20]  # the stage-two drop (logged lr is the one used at that step)
    state = torch.load(tmp_path / "step-00000040" / "trainer_state.pt", weights_only=True)
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.0, 0.0]


def test_quant_strength_schedule_starts_in_16_bits_and_ends_ternary():
    assert [quant_strength(s, 10, 0.5, 0.0) for s in range(10)] == [0.0] * 5 + [1.0] * 5
    assert [quant_strength(s, 10, 0.2, 0.4) for s in range(10)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1]
    assert quant_strength(9, 10, 0.0, 1.0) == 1.0 and quant_strength(0, 10, 0.0, 0.0) == 1.0
    for bad in ({"quant_start": 1.0}, {"quant_start": 0.6, "quant_ramp": 0.5}, {"quant_ramp": -0.1}):
        with pytest.raises(ConfigError, match="bitnet.quant_start"):
            BitNetTrainConfig(**bad)


def test_quant_strength_interpolates_between_a_plain_linear_and_b1_58():
    torch.manual_seed(0)
    layer = BitLinear(24, 16, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
        layer.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 24)
    with torch.no_grad():
        ternary = layer(x)
        xn = layer.norm(x)
        x_q, s = quantize_activations(xn)
        codes, gamma = ternarize(layer.weight)
        w_q = codes.float() * gamma
    model = nn.Sequential(layer)
    assert set_quant_strength(model, 0.0) == 1
    w = layer.weight
    out = layer(x)
    assert torch.equal(out, F.linear(layer.norm(x), w, layer.bias))  # λ = 0: a plain linear layer after SubLN
    out.sum().backward()
    assert torch.allclose(w.grad, torch.ones(3 * 5, 16).t() @ layer.norm(x).reshape(-1, 24).detach(), atol=1e-5)

    set_quant_strength(model, 0.5)
    with torch.no_grad():
        half = F.linear(xn + 0.5 * (x_q / s - xn), w + 0.5 * (w_q - w), layer.bias)
        assert torch.allclose(layer(x), half, atol=1e-6)
    set_quant_strength(model, 1.0)
    with torch.no_grad():
        assert torch.equal(layer(x), ternary)  # back on the exact path the packed layer reproduces
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_quant_strength(model, 1.5)


def test_16_to_1_58_bit_training_ends_fully_ternary(text_corpus, tmp_path):
    overrides = [
        *tiny_text_overrides(tmp_path, text_corpus),
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.d_ff=64",
        "train.steps=20",
        "train.batch_size=8",
        "train.eval_every=0",
        "train.warmup_steps=2",
        "train.save_every=0",
        "train.progress=false",
        "train.log_every=1",
        "bitnet.quant_start=0.5",
        "bitnet.quant_ramp=0.25",
    ]
    recipe = load_recipe("recipes/pretrain_bitnet_tiny.yaml", overrides)
    job, _ = build_job(recipe, tmp_path, log=lambda m: None)
    seen = []
    layer = job.model.layers[0].attn.qkv_proj
    layer.register_forward_pre_hook(lambda m, args: seen.append(float(m.quant_strength)) if m.training else None)
    summary = train(job, recipe.train, tmp_path, log=lambda m: None)
    assert seen[:10] == [0.0] * 10 and seen[10:15] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert len(seen) == 20 and set(seen[14:]) == {1.0}
    assert summary["val_loss"] < summary["initial_val_loss"]
    assert all(m.fully_quantized for m in job.model.modules() if isinstance(m, BitLinear))
    packed = pack_model(copy.deepcopy(job.model))
    ids = next(iter(job.eval_batches()))["input_ids"]
    with torch.no_grad():
        assert torch.equal(packed(ids), job.model.eval()(ids))

    records = read_metrics(tmp_path / "metrics.jsonl")
    ramps = [(r["step"], r["quant_strength"]) for r in records if "quant_strength" in r]
    assert ramps == [(1, 0.0), (11, 0.2), (12, 0.4), (13, 0.6), (14, 0.8), (15, 1.0)]
    assert job.callbacks[0].flag_flips == 2  # exact b1.58 off at step 1, on again at step 15
    with pytest.raises(ConfigError, match="model.bitnet=true"):  # refused when the recipe is read
        load_recipe("recipes/pretrain_bitnet_tiny.yaml", [*overrides, "model.bitnet=false"])
