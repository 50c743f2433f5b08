"""BitNet b1.58: ternary-weight linear layers for training, and their packed 2-bit form for inference.

Training (`BitLinear`): the layer keeps latent full-precision weights. Every forward quantizes them to
{-1, 0, +1} with one absmean scale per tensor (γ = mean|W|, W_t = clip(round(W / γ), -1, 1)); a fused
projection (q, k and v in one matrix; SwiGLU's gate and up) gets one γ per part (`splits`), exactly as the
separate layers of the paper's LLaMA-style models would, so that no part is rounded on another's scale. The input
goes through an RMSNorm inside the layer (SubLN) and is quantized per token to int8 with absmax
(s = 127 / max|x|, x_q = clip(round(x s), -128, 127)). The output is (x_q W_tᵀ) · γ / s. Gradients pass
both roundings straight through (STE): the latent weights receive exactly the gradient a plain linear layer
with weight γ·W_t would receive.

The integer product x_q W_tᵀ has |x_q| ≤ 128 and ternary weights, so every partial sum is an integer of
magnitude at most 2^24 for fan-in up to 131072: fp32 computes it *exactly*, in any summation order. Training
computes it in floating point, the packed layer with an int8 × int8 → int32 matmul; both then apply the
same fp32 rescale, so on CPU in fp32 the packed model reproduces the training-time forward bit for bit.

Inference (`PackedBitLinear`): ternary codes stored 2 bits each, 4 per byte, in a planar layout (byte j of a
row holds columns j, j + K/4, j + 2K/4, j + 3K/4, so unpacking is 4 shifts and a concatenation), plus γ.
The denser `base3` format stores 5 codes per byte as the base-3 digits of one number (3^5 = 243 ≤ 256):
1.6 bits per weight, about 10× smaller than fp16 instead of the 2-bit format's (just under) 8×; it unpacks
with a 256-entry lookup table, same planar layout with K/5.
The fast CPU path unpacks once to int8 (cached, 1 byte/weight, rebuilt whenever the packed weights change)
and uses `torch._int_mm`; `cache_int8=False` unpacks per call instead (2 bits/weight resident).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.errors import CheckpointError
from lmstack.models.fused import FusedLinear, check_splits
from lmstack.models.norms import RMSNorm

EPS = 1e-5  # floor of both scales' denominators: an all-zero weight or token stays zero instead of NaN
ACT_MAX = 127.0  # int8 activations: round(x · 127 / max|x|) lies in [-127, 127]; clamp to [-128, 127]
PACKING = "bitnet_b1.58/2bit-planar"  # the on-disk format names, recorded in config.json: the default,
PACKING_BASE3 = "bitnet_b1.58/base3-planar"  # and the denser 5-codes-per-byte one
CODES_PER_BYTE = {PACKING: 4, PACKING_BASE3: 5}


# ----------------------------------------------------------------------------- quantizers


def weight_scale(w: Tensor, splits: tuple[int, ...] | None = None) -> Tensor:
    """Absmean scales γ = mean|W| of each part of W (its rows cut by `splits`; None: the whole tensor is one
    part): fp32, shape (parts,)."""
    w = w.detach().float()
    parts = (w,) if splits is None else w.split(list(splits), dim=0)
    return torch.stack([p.abs().mean() for p in parts]).clamp(min=EPS)


def row_scales(gamma: Tensor, splits: tuple[int, ...] | None) -> Tensor:
    """Per-part γ (parts,) → one γ per output row (rows,); a single γ stays (1,) and broadcasts."""
    if splits is None:
        return gamma
    return gamma.repeat_interleave(torch.tensor(splits, device=gamma.device))


def ternarize(w: Tensor, splits: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
    """(codes in {-1, 0, 1} as int8, γ per part): W ≈ γ_part · codes, row by row."""
    gamma = weight_scale(w, splits)
    codes = (w.detach().float() / row_scales(gamma, splits)[:, None]).round().clamp(-1, 1).to(torch.int8)
    return codes, gamma


def quantize_activations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token absmax int8: (integer-valued x_q in x's dtype, scale s of shape (..., 1)); x ≈ x_q / s."""
    xf = x.detach().float()
    scale = ACT_MAX / xf.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (xf * scale).round().clamp(-128, 127).to(x.dtype), scale


def output_scale(gamma_rows: Tensor, act_scale: Tensor) -> Tensor:
    """γ / s, (..., rows): turns the integer product into the layer output. One function so both paths
    round alike."""
    return gamma_rows / act_scale


# ----------------------------------------------------------------------------- training layer


class _TernaryLinearFn(torch.autograd.Function):
    """y = (x_q W_tᵀ) γ/s + b; backward is the straight-through estimator of the fake-quantized linear."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_q, act_scale, codes, gamma):
        w_t = codes.to(x_q.dtype)
        out = F.linear(x_q, w_t) * output_scale(gamma, act_scale).to(x_q.dtype)
        if bias is not None:
            out = out + bias.to(out.dtype)
        ctx.save_for_backward(x_q, act_scale, codes, gamma)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x_q, act_scale, codes, gamma = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # d/dx of x_q/s taken as identity
            grad_x = (grad_out @ (codes.to(grad_out.dtype) * gamma.to(grad_out.dtype)[:, None])).to(x_dtype)
        if ctx.needs_input_grad[1]:  # d/dW of γ·W_t taken as identity
            x_dq = (x_q.float() / act_scale).to(grad_out.dtype)
            g2, x2 = grad_out.reshape(-1, grad_out.shape[-1]), x_dq.reshape(-1, x_dq.shape[-1])
            grad_w = (g2.t() @ x2).to(w_dtype)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


class BitLinear(FusedLinear):
    """A drop-in `nn.Linear` (same `weight`/`bias` names, same init) that trains a BitNet b1.58 layer.

    `weight` holds the latent full-precision weights; `norm` is the SubLN RMSNorm applied to the input
    before it is quantized; `splits` (output sizes of fused parts, e.g. q, k, v) gives each part its own γ.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        norm_eps: float = 1e-5,
        splits: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, splits=splits)
        self.norm = RMSNorm(in_features, norm_eps)
        # quantization strength λ (see `set_quant_strength`): 1 = b1.58; below 1 during a 16-bit phase
        self.register_buffer("quant_strength", torch.ones(()), persistent=False)
        self.fully_quantized = True  # λ == 1: the exact integer path that the packed layer reproduces

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        x_q, act_scale = quantize_activations(x)
        codes, gamma = ternarize(self.weight, self.splits)
        rows = row_scales(gamma, self.splits)
        if self.fully_quantized:
            return _TernaryLinearFn.apply(x, self.weight, self.bias, x_q, act_scale, codes, rows)
        # λ < 1: the input and weights move λ of the way to their quantized values (straight through)
        lam = self.quant_strength.to(x.dtype)
        x_dq = x_q / act_scale.to(x.dtype)
        w_q = (codes.float() * rows.float()[:, None]).to(self.weight.dtype)
        x_in = x + lam * (x_dq - x).detach()
        w = self.weight + lam.to(w_q.dtype) * (w_q - self.weight).detach()
        return F.linear(x_in, w.to(x_in.dtype), None if self.bias is None else self.bias.to(x_in.dtype))


# ----------------------------------------------------------------------------- packing


def _check_packing(packing: str) -> int:
    """Codes per byte of a packing format; a clear error for an unknown one."""
    if packing not in CODES_PER_BYTE:
        raise ValueError(f"unknown packing {packing!r}; choose one of {sorted(CODES_PER_BYTE)}")
    return CODES_PER_BYTE[packing]


def pack_ternary(codes: Tensor, packing: str = PACKING) -> Tensor:
    """int8 codes in {-1, 0, 1} of shape (N, K) → uint8 (N, ceil(K/c)), c = 4 (2 bits each) or 5 (base-3
    digits), planar: byte j of a row holds columns j, j + K/c, ..., j + (c-1)K/c."""
    per_byte = _check_packing(packing)
    if codes.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D weight, got shape {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < -1 or codes.max() > 1):
        raise ValueError("pack_ternary expects values in {-1, 0, 1}")
    n, k = codes.shape
    width = -(-k // per_byte)
    u = torch.ones(n, per_byte * width, dtype=torch.uint8, device=codes.device)  # padding holds code 1 (= 0)
    u[:, :k] = (codes + 1).to(torch.uint8)
    planes = u.view(n, per_byte, width)
    if packing == PACKING:
        return planes[:, 0] | (planes[:, 1] << 2) | (planes[:, 2] << 4) | (planes[:, 3] << 6)
    out = torch.zeros(n, width, dtype=torch.uint8, device=codes.device)
    for digit in reversed(range(per_byte)):  # Horner: ((d4·3 + d3)·3 + ...)·3 + d0 ≤ 242
        out = out * 3 + planes[:, digit]
    return out


@functools.cache
def _base3_table(device: torch.device) -> Tensor:
    """(256, 5) int8: the five base-3 digits of each byte, minus 1 (bytes above 242 never occur)."""
    values = torch.arange(256)
    digits = torch.stack([(values // 3**i) % 3 for i in range(5)], dim=1)
    return (digits - 1).to(torch.int8).to(device)


def unpack_ternary(packed: Tensor, in_features: int, packing: str = PACKING) -> Tensor:
    """Inverse of `pack_ternary`: uint8 (N, ceil(K/c)) → int8 codes (N, K)."""
    if _check_packing(packing) == 5:
        digits = _base3_table(packed.device)[packed.long()]  # (N, K/5, 5): digit i is column i·K/5 + j
        return digits.transpose(1, 2).reshape(packed.shape[0], -1)[:, :in_features].contiguous()
    planes = [(packed >> shift) & 3 for shift in (0, 2, 4, 6)]
    return (torch.cat(planes, dim=1)[:, :in_features].view(torch.int8) - 1).contiguous()


# ----------------------------------------------------------------------------- inference layer


@functools.cache
def _int_mm_works(device_type: str) -> bool:
    """`torch._int_mm` on this device for any shape (CUDA needs M > 16, so it uses the float path)."""
    if device_type != "cpu" or not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.tensor([[3, -2]], dtype=torch.int8)
        return torch._int_mm(a, torch.tensor([[1], [-1]], dtype=torch.int8)).item() == 5
    except RuntimeError:
        return False


def integer_matmul(x_q: Tensor, codes: Tensor) -> Tensor:
    """Exact x_q @ codesᵀ as float32, for integer-valued x_q (..., K) and int8 codes (N, K)."""
    lead = x_q.shape[:-1]
    x2 = x_q.reshape(-1, x_q.shape[-1])
    if x2.device.type == "cpu" and _int_mm_works("cpu"):
        acc = torch._int_mm(x2.to(torch.int8), codes.t()).float()
    else:  # integer sums below 2^24 are exact in fp32 (and in TF32/bf16 inputs, which hold |v| ≤ 256)
        acc = F.linear(x2.float(), codes.float())
    return acc.reshape(*lead, codes.shape[0])


class PackedBitLinear(nn.Module):
    """Inference-only BitNet layer: 2-bit packed ternary weights + γ per part; output equals `BitLinear`'s
    forward."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        norm_eps: float = 1e-5,
        cache_int8: bool = True,
        splits: tuple[int, ...] | None = None,
        packing: str = PACKING,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.cache_int8, self.packing = cache_int8, packing
        self.splits = check_splits(splits, out_features)
        packed = torch.zeros(out_features, -(-in_features // _check_packing(packing)), dtype=torch.uint8)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", torch.ones(1 if self.splits is None else len(self.splits)))
        self.norm = RMSNorm(in_features, norm_eps)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._codes: Tensor | None = None
        self._codes_key: tuple | None = None
        self._rows: Tensor | None = None  # γ per output row, built once per scale tensor (and its version)
        self._rows_key: tuple | None = None

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, cache_int8: bool = True, packing: str = PACKING) -> PackedBitLinear:
        out = cls(
            layer.in_features,
            layer.out_features,
            layer.bias is not None,
            layer.norm.eps,
            cache_int8,
            layer.splits,
            packing,
        )
        codes, gamma = ternarize(layer.weight, layer.splits)
        out.weight_packed.copy_(pack_ternary(codes, packing))
        out.weight_scale.copy_(gamma)
        out.norm.weight.data.copy_(layer.norm.weight.detach())
        if layer.bias is not None:
            out.bias.data.copy_(layer.bias.detach())
        return out.to(layer.weight.device)

    def codes(self) -> Tensor:
        """The int8 ternary weights (N, K): unpacked once and cached, or per call without the cache."""
        if not self.cache_int8:
            return unpack_ternary(self.weight_packed, self.in_features, self.packing)
        p = self.weight_packed
        key = (p.data_ptr(), p.device, p._version)  # a move, a new buffer or an in-place write
        if self._codes is None or self._codes_key != key:
            self._codes, self._codes_key = unpack_ternary(p, self.in_features, self.packing), key
        return self._codes

    def scales_per_row(self) -> Tensor:
        """`row_scales` of this layer's γ, cached (building it costs as much as a small matmul)."""
        g = self.weight_scale
        key = (g.data_ptr(), g.device, g._version)
        if self._rows is None or self._rows_key != key:
            self._rows, self._rows_key = row_scales(g, self.splits), key
        return self._rows

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self._codes = self._codes_key = self._rows = self._rows_key = None
        key = prefix + "weight_scale"
        scale = state_dict.get(key)
        if scale is not None and scale.numel() == 1 and self.weight_scale.numel() > 1:
            # exports made before fused parts had their own γ: the one γ holds for every part
            state_dict[key] = scale.reshape(1).expand(self.weight_scale.numel()).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        x_q, act_scale = quantize_activations(x)
        out = (integer_matmul(x_q, self.codes()) * output_scale(self.scales_per_row(), act_scale)).to(x_q.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def packed_bytes(self) -> int:
        """Bytes of this layer's linear weights as stored: packed codes + the fp32 scale (+ bias)."""
        n = self.weight_packed.numel() + 4 * self.weight_scale.numel()
        return n + (4 * self.bias.numel() if self.bias is not None else 0)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        parts = "" if self.splits is None else f", splits={self.splits}"
        packing = "" if self.packing == PACKING else f", packing={self.packing!r}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}{parts}{packing}"


# ----------------------------------------------------------------------------- whole models


def _replace(model: nn.Module, kind: type, make) -> int:
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is kind:
                setattr(module, child_name, make(child))
                count += 1
    return count


def pack_model(model: nn.Module, cache_int8: bool = True, packing: str = PACKING) -> nn.Module:
    """Replace every `BitLinear` of `model` (in place) by its `PackedBitLinear`; returns the model."""
    if _replace(model, BitLinear, lambda m: PackedBitLinear.from_bitlinear(m, cache_int8, packing)) == 0:
        raise CheckpointError("the model has no BitLinear layers: train it with model.bitnet=true to pack it")
    return model.eval()


def set_quant_strength(model: nn.Module, value: float) -> int:
    """Set λ of every `BitLinear`: 0 trains it as a plain linear layer (still with its SubLN), 1 as BitNet
    b1.58, values between interpolate input and weights toward their quantized values. 16-to-1.58-bit
    continual pre-training (Nielsen et al., 2025) trains in 16 bits first, then switches (or ramps) to 1.58
    bits; they report it ending closer to a 16-bit model than 1.58-bit training from scratch (at the 2M
    parameters of benchmarks/bitnet.py it made no measurable difference). Returns the layer count."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"quantization strength must lie in [0, 1], got {value}")
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    for m in layers:
        m.quant_strength.fill_(value)
        m.fully_quantized = value >= 1.0
    return len(layers)


def bitnet_state(model: nn.Module) -> dict[str, int]:
    """Counts of BitLinear / PackedBitLinear / other nn.Linear layers (for reports and checks)."""
    counts = {"bitlinear": 0, "packed": 0, "linear": 0}
    for m in model.modules():
        if isinstance(m, BitLinear):
            counts["bitlinear"] += 1
        elif isinstance(m, PackedBitLinear):
            counts["packed"] += 1
        elif isinstance(m, nn.Linear):
            counts["linear"] += 1
    return counts


def linear_weight_bytes(model: nn.Module, fp_bytes: int = 2) -> dict[str, int]:
    """Bytes of a packed model's block linear weights: `packed` (packed codes + fp32 scales + biases, as
    stored), `fp` (the same matrices and biases at `fp_bytes` per value; 2 = fp16), and `subln` (the fp32
    SubLN gains that BitNet adds, counted apart because an FP model has no such vectors)."""
    packed = fp = subln = 0
    for m in model.modules():
        if isinstance(m, PackedBitLinear):
            packed += m.packed_bytes()
            fp += fp_bytes * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
            subln += 4 * m.norm.weight.numel()
    return {"packed": packed, "fp": fp, "subln": subln}
