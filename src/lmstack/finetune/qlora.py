"""QLoRA-style bases: frozen linear layers held in int8 or int4, with full-precision LoRA adapters beside them.

QLoRA (Dettmers et al., 2023) trains adapters on top of a base whose weights are stored in 4 bits, so that
the frozen base costs a quarter (int8: half) of its bf16 bytes. `quantize_frozen` turns the linear layers of
a model into `QuantizedLinear`s that hold `generate/fast.py`'s weight formats and run its CPU kernels, the
same ones `FastDecoder` decodes with: int8 with one scale per output row, or int4 in groups of 32 with a
scale and a zero point (GGUF Q4_1's layout; SmolLM2's Q4_1 weights are represented exactly). Like those
modes, the kernels take bf16 activations and return fp32. `apply_lora` then adapts them like any linear.

The backward pass reaches the input through the dequantized weight (the gradient of the layer as stored;
the bf16 rounding of activations is passed straight through), so adapters in earlier layers train. The
base has no weight gradient: it is frozen. int4 keeps its 4-bit codes twice, packed for the kernel and
nibble-packed for dequantizing (1 byte per weight in all, still a quarter of fp32). Merging an adapter into
a quantized base is refused: save the adapter and merge it into the full-precision model instead. QLoRA's
NF4 data type, double quantization and paged optimizers are not implemented here. Off the CPU (the kernels
are CPU kernels) the layer multiplies by its dequantized weight instead, which gives the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.errors import ConfigError
from lmstack.finetune.lora import OUTPUT_HEADS, LoRALayer
from lmstack.generate.fast import INT4_GROUP, PackedLinear, packed_linear, quantize_int4
from lmstack.models.fused import FusedLinear

QUANT_MODES = ("int8", "int4")


class _QuantizedLinearFn(torch.autograd.Function):
    """y = x Wqᵀ + b through the packed kernel; dy/dx through the dequantized Wq."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: QuantizedLinear) -> Tensor:
        ctx.layer, ctx.dtype = layer, x.dtype
        if x.device.type == "cpu":
            y = packed_linear(layer.mode, x, layer.qweight, layer.qscale, layer.bias)
        else:
            y = F.linear(x.float(), layer.dequantized(), layer.bias)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        w = ctx.layer.dequantized()
        return (grad.to(w.dtype) @ w).to(ctx.dtype), None


class QuantizedLinear(nn.Module):
    """A frozen linear layer (or fused projection: `splits` is kept) stored as int8 or int4.

    Its tensors are non-persistent buffers: the model's state dict no longer holds these base weights
    (checkpoints of a QLoRA run hold the adapters; the base is re-quantized from its source)."""

    lora_compatible = True

    def __init__(self, linear: nn.Linear, mode: str = "int4") -> None:
        super().__init__()
        if mode not in QUANT_MODES:
            raise ConfigError(f"unknown quantized base mode {mode!r}; choose one of {', '.join(QUANT_MODES)}")
        weight = linear.weight.detach()
        if weight.device.type != "cpu":
            raise ConfigError(f"quantize the base on the CPU (fast.py's {mode} kernels), not on {weight.device}")
        self.in_features, self.out_features, self.mode = linear.in_features, linear.out_features, mode
        self.splits = getattr(linear, "splits", None)
        packed = PackedLinear(weight, linear.bias, mode)
        self.register_buffer("qweight", packed.weight, persistent=False)
        self.register_buffer("qscale", packed.scale, persistent=False)
        self.register_buffer("bias", packed.bias, persistent=False)
        codes = None
        if mode == "int4":
            q = quantize_int4(weight)[0]  # the codes `PackedLinear` packed, in a layout we can read back
            codes = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
        self.register_buffer("codes", codes, persistent=False)

    def dequantized(self) -> Tensor:
        """The weight as stored, (out, in) fp32: int8 q·scale, or int4 (q - 8)·scale + zero per group."""
        if self.mode == "int8":
            return self.qweight.float() * self.qscale.float()[:, None]
        q = torch.stack([self.codes & 15, self.codes >> 4], dim=-1).reshape(self.out_features, -1, INT4_GROUP)
        scale, zero = self.qscale.float().unbind(-1)  # each (groups, out)
        w = (q.float() - 8) * scale.t()[..., None] + zero.t()[..., None]
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return _QuantizedLinearFn.apply(x, self)

    def extra_repr(self) -> str:
        parts = "" if self.splits is None else f", splits={self.splits}"
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, mode={self.mode}{parts}"


def quantize_frozen(model: nn.Module, mode: str = "int4", skip: tuple[str, ...] = OUTPUT_HEADS) -> int:
    """Replace every plain linear layer of `model` (in place; not those named in `skip`, by default the
    output head) by a frozen `QuantizedLinear`; call it before `apply_lora`. Returns the count."""
    if any(isinstance(m, LoRALayer) for m in model.modules()):
        raise ConfigError("quantize the base before apply_lora: adapted layers cannot be re-based")
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) in (nn.Linear, FusedLinear) and not any(name == s or name.endswith("." + s) for s in skip):
                setattr(parent, child_name, QuantizedLinear(child, mode))
                count += 1
    if not count:
        raise ConfigError(f"{type(model).__name__} has no plain linear layers to quantize (BitNet layers are ternary)")
    model.requires_grad_(False)
    return count
