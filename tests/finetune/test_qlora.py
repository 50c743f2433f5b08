"""QLoRA-style training: fp32 adapters beside frozen int8/int4 bases that run generate/fast.py's kernels."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.finetune.lora import LoRAConfig, apply_lora, is_lora_key, lora_parameters, merge_lora
from lmstack.finetune.lora_peft import load_adapter, save_adapter
from lmstack.finetune.qlora import QuantizedLinear, quantize_frozen
from lmstack.generate.fast import INT4_GROUP, PackedLinear
from lmstack.models import build_model
from lmstack.models.fused import FusedLinear
from testutil import tiny_config

BF16_EPS = torch.finfo(torch.bfloat16).eps
FP32_EPS = torch.finfo(torch.float32).eps


def llama():
    torch.manual_seed(0)
    return build_model(tiny_config("llama-tiny")).eval()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_linear_is_fast_py_s_kernel_with_a_gradient_through_the_stored_weight(mode):
    torch.manual_seed(0)
    linear = FusedLinear(64, 48, bias=True, splits=(32, 16))
    layer = QuantizedLinear(linear, mode)
    assert layer.splits == (32, 16) and not layer.state_dict()  # nothing persistent: a derived, frozen copy
    w = layer.dequantized()
    # the stored weight is the rounded one: within half a step of the original (int8: per row; int4: per group)
    step = (linear.weight.abs().amax(1, keepdim=True) / 127) if mode == "int8" else None
    if mode == "int4":
        g = linear.weight.detach().reshape(48, -1, INT4_GROUP)
        step = ((g.amax(-1) - g.amin(-1)) / 15).repeat_interleave(INT4_GROUP, 1)
    # plus the bf16 rounding (half of 2^-7, relative) of the scale and zero point that the kernel reads:
    # |q·scale| and |zero| + |(q - 8)·scale| are at most max|W| (int4: twice that)
    assert ((w - linear.weight).abs() <= 0.5 * step + BF16_EPS * linear.weight.abs().max()).all()
    x = torch.randn(5, 64, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, PackedLinear(linear.weight, linear.bias, mode)(x.detach()))  # FastDecoder's numbers
    # and that is x Wᵀ + b with bf16 activations and bf16 outputs, nothing else
    ref = F.linear(x.detach().bfloat16().float(), w, linear.bias.detach())
    assert (y - ref).abs().max() <= 2 * BF16_EPS * ref.abs().max()
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad @ w, rtol=0, atol=0)


def test_quantize_frozen_refuses_what_it_cannot_hold():
    model = llama()
    assert quantize_frozen(model, "int8") == 2 * 4  # qkv, o, gate|up, down per layer; the head stays
    assert type(model.lm_head) is nn.Linear and isinstance(model.layers[0].attn.qkv_proj, QuantizedLinear)
    with pytest.raises(ConfigError, match="no plain linear layers"):
        quantize_frozen(model, "int8")
    with pytest.raises(ConfigError, match="unknown quantized base mode"):
        quantize_frozen(llama(), "int3")
    adapted = llama()
    apply_lora(adapted, LoRAConfig())
    with pytest.raises(ConfigError, match="before apply_lora"):
        quantize_frozen(adapted)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_trains_adapters_on_a_quantized_base_and_they_transfer_to_the_fp_base(mode, tmp_path):
    fp = llama()
    model = copy.deepcopy(fp)
    quantize_frozen(model, mode)
    apply_lora(model, LoRAConfig(r=4, targets="all-linear"))
    assert all(p.requires_grad == is_lora_key(n) for n, p in model.named_parameters())
    data = (torch.randint(0, 97, (8, 1), generator=torch.Generator().manual_seed(3)) + 5 * torch.arange(13)) % 97
    opt = torch.optim.AdamW(lora_parameters(model), lr=3e-2)
    losses = []
    for step in range(25):
        loss = F.cross_entropy(model(data[:, :-1]).reshape(-1, 97), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        if step == 0:  # the first layer's adapters learn through the quantized layers above them
            assert model.layers[0].attn.qkv_proj.lora["default"]["q"].B.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.15
    with pytest.raises(ConfigError, match="quantised base"):
        merge_lora(model)

    # the adapter saved from the QLoRA model loads onto the full-precision base, where it merges
    save_adapter(model, tmp_path / "adapter")
    load_adapter(fp, tmp_path / "adapter")
    x = data[:2, :-1]
    with torch.no_grad():
        q_out, fp_out = model(x), fp(x)
        # they differ by the base's quantization only (int8: ~1e-3 of the scale, int4 ~1e-2)
        assert (q_out - fp_out).abs().max() <= (0.02 if mode == "int8" else 0.1) * fp_out.abs().max()
        # merged vs unmerged fp32 differ by rounding only; bound it by the unmerged model's own fp32 rounding
        # error (against a float64 copy), which grows with these trained adapters' size, with a 4x margin
        rounding = (fp_out.double() - copy.deepcopy(fp).double()(x)).abs().max().item()
        merge_lora(fp)
        scale = fp_out.abs().max().item()
        torch.testing.assert_close(fp(x), fp_out, rtol=0, atol=4 * rounding + FP32_EPS * scale)
