"""An inference-only forward pass of `DecoderLM` with packed weights, for fast decoding.

Small-batch decoding is bound by reading the weights once per token plus a fixed cost per PyTorch op;
`DecoderLM.forward` is written for clarity and training. `FastDecoder` computes the same function with
fewer ops (no module calls, one RMSNorm kernel, RoPE on q and k together, logits only where needed) and
with the projection weights in one of four formats:

- "fp32" (default): the model's fp32 weights, stored transposed ((in, out) contiguous), the layout that
  single-row CPU gemv reads fastest; matches `DecoderLM` up to float reassociation (~1e-5).
- "bf16": bfloat16 weight copies (half the bytes).
- "int8": weight-only int8, one scale per output row (`torch._weight_int8pack_mm`), a quarter of the bytes.
- "int4": weight-only int4 in groups of 32 with scale and zero point (`torch._weight_int4pack_mm_for_cpu`),
  the layout of GGUF's Q4_1, so SmolLM2's Q4_1 weights are represented exactly. The output head stays
  int8 (4 bits there cost much more quality), run by fbgemm's dynamic int8 GEMV (int8 activations too).

The int8/int4 kernels are CPU kernels and take bfloat16 activations (their fast path); embeddings,
norms, the residual stream, attention and the KV cache stay fp32 in every mode. Every mode holds its own
copy of the projection weights (fp32: one more fp32 copy), taken when it is built: after an optimizer step
call `refresh()` to re-pack them (embeddings and norms are read from the model's parameters). The packed
path never applies dropout, whatever the model's train/eval mode. `ModelForward` is the live alternative:
it runs the model's own modules, so it always sees the current weights (and follows the model's mode).

`compile=True` (opt-in; needs a C++ compiler; the first decode step compiles for a few seconds) runs each
single-token decode step through `torch.compile`, with the batch-1 projections, the output head and the
attention written as explicit multiply-and-sum reductions (`rowdot_linear`, `decode_attention`). Inductor
turns each into one vectorised, multi-threaded pass over the weights or the cache, which reads memory
close to the measured bandwidth; the BLAS GEMV behind `x @ W` reaches about half of it here and does not
speed up with a second thread. The sums run in another order than BLAS's, so fp32 + compile differs from
fp32 by float reassociation (~1e-4 on logits). int4 keeps its packed kernel inside the compiled layer.
Prefill stays eager (it is a matrix-matrix product, where the BLAS kernels are already efficient).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.errors import ConfigError
from lmstack.models.blocks import KVCache
from lmstack.models.decoder import DecoderLM
from lmstack.models.fused import FusedLinear

Mode = Literal["fp32", "bf16", "int8", "int4"]
MODES: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")
INT4_GROUP = 32  # weights per int4 scale/zero group (as GGUF's Q4_0/Q4_1 blocks)
# per projection of a block (qkv, o, up, down): (A (N, R, in), B (N, out, R)) stacked over N adapters with
# each scale folded into B; adapter 0 is all zeros (no adapter), None where no adapter touches the projection
LayerAdapters = tuple[tuple[Tensor, Tensor] | None, ...]


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-row int8: w ≈ q * scale[:, None], |q| ≤ 127."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantize_int4(w: Tensor, group: int = INT4_GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int4 per group of `group` input weights (min/max, like GGUF Q4_1):
    w ≈ (q - 8) * scale + zero with q in [0, 15]. Returns (q int32 (out, in), scale, zero) with
    scale/zero of shape (out, in // group). Q4_1-dequantized weights come back exactly."""
    out_f, in_f = w.shape
    if in_f % group:
        raise ConfigError(f"int4 needs input sizes divisible by {group}, got {in_f}")
    g = w.detach().float().reshape(out_f, in_f // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((g - lo) / scale).clamp_(0, 15).to(torch.int32).reshape(out_f, in_f)
    return q, scale.squeeze(-1), (lo + 8 * scale).squeeze(-1)


def _prepack_int8_dynamic(weight: Tensor) -> Any:
    """fbgemm's packed int8 weight (per-row scales) for `quantized.linear_dynamic`; None if unavailable."""
    if (
        "fbgemm" not in torch.backends.quantized.supported_engines
        and "x86" not in torch.backends.quantized.supported_engines
    ):
        return None
    q, scale = quantize_int8(weight)
    try:
        with warnings.catch_warnings():  # quantized tensors are deprecated, the fbgemm kernel is still the fastest
            warnings.simplefilter("ignore")
            zeros = torch.zeros_like(scale, dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
            return torch.ops.quantized.linear_prepack(qw, None)
    except (RuntimeError, AttributeError):
        return None


def packed_linear(mode: str, x: Tensor, weight: Any, scale: Tensor | None, bias: Tensor | None) -> Tensor:
    """y = x Wᵀ + b for a weight packed by `PackedLinear` (a plain function, so that it compiles)."""
    if mode == "fp32":
        y = x @ weight
    elif mode == "fp32rows":
        y = F.linear(x, weight)
    elif mode == "int8dyn":
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]), weight).view(*shape[:-1], -1)
    elif mode == "bf16":
        y = F.linear(x.to(torch.bfloat16), weight).float()
    else:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if mode == "int8":
            y = torch._weight_int8pack_mm(x2, weight, scale)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2, weight, INT4_GROUP, scale)
        y = y.float().view(*shape[:-1], -1)
    return y if bias is None else y + bias


def rowdot_linear(mode: str, x: Tensor, weight: Any, scale: Tensor | None, bias: Tensor | None) -> Tensor:
    """`packed_linear` for one token, written as a multiply-and-sum over the rows of an (out, in) weight:
    under torch.compile this becomes one fused pass that converts and reduces each weight as it is read.
    Modes whose weights are not plain (out, in) tensors (fp32's transposed copy, int4, int8dyn) fall back."""
    if mode not in ("fp32rows", "bf16", "int8"):
        return packed_linear(mode, x, weight, scale, bias)
    y = (x.unsqueeze(-2) * weight.float()).sum(-1)
    if scale is not None:
        y = y * scale.float()
    return y if bias is None else y + bias


def lora_delta(x: Tensor, pair: tuple[Tensor, Tensor], index: Tensor) -> Tensor:
    """Each row's own low-rank update x·Aᵢᵀ·Bᵢᵀ (x (B, T, in), index (B,) into the stacked adapters): rows
    of one batch can use different adapters over the one copy of the base weights (as S-LoRA/punica)."""
    a, b = pair
    return torch.bmm(torch.bmm(x, a[index].transpose(1, 2)), b[index].transpose(1, 2))


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax attention of one new query per row over the cache, as explicit reductions (compiles to a
    fused pass over the cache). q: (B, 1, H, D); k, v: (B, KVH, T, D), query head i uses kv head
    i // (H // KVH) as in `enable_gqa`; mask: bool (B, 1, 1, T), True = attend. Returns (B, 1, H * D)."""
    bsz, _, h, hd = q.shape
    kvh = k.shape[1]
    q = q.reshape(bsz, kvh, h // kvh, 1, hd)
    scores = (q * k.unsqueeze(2)).sum(-1) * hd**-0.5  # (B, KVH, G, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs.unsqueeze(-1) * v.unsqueeze(2)).sum(-2).reshape(bsz, 1, h * hd)


class PackedLinear:
    """A weight (+ scale, bias) stored as the mode asks; calling it maps fp32 input to fp32 output.

    fp32 keeps W transposed, (in, out) contiguous: single-row CPU gemv reads that layout markedly faster
    than `F.linear`'s (out, in). The int kernels run on bfloat16 activations (their fast CPU path)."""

    __slots__ = ("bias", "mode", "nbytes", "scale", "weight")

    def __init__(self, weight: Tensor, bias: Tensor | None, mode: str) -> None:
        weight = weight.detach()
        self.mode, self.bias, self.scale = mode, None if bias is None else bias.detach().float(), None
        if mode == "int8dyn":
            self.weight = _prepack_int8_dynamic(weight)
            if self.weight is None:
                mode = self.mode = "int8"
            else:
                self.nbytes = weight.numel() + 4 * weight.shape[0]
        if mode == "fp32":
            self.weight = weight.float().t().contiguous()
        elif mode == "fp32rows":
            self.weight = weight.float().contiguous()
        elif mode == "bf16":
            self.weight = weight.to(torch.bfloat16).contiguous()
        elif mode == "int8":
            self.weight, scale = quantize_int8(weight)
            self.scale = scale.to(torch.bfloat16)
        elif mode == "int4":
            q, scale, zero = quantize_int4(weight)
            self.weight = torch._convert_weight_to_int4pack_for_cpu(q, 1)
            self.scale = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        elif mode != "int8dyn":
            raise ConfigError(f"unknown weight mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != "int8dyn":
            self.nbytes = self.weight.numel() * self.weight.element_size() + (
                0 if self.scale is None else self.scale.numel() * self.scale.element_size()
            )

    def load_(self, weight: Tensor, bias: Tensor | None) -> None:
        """Re-pack from new values of the same-shaped weight (e.g. after an optimizer step), overwriting the
        packed tensors in place: no new allocation, and compiled decode steps are reused as they are."""
        weight = weight.detach()
        self.bias = None if bias is None else bias.detach().float()
        if self.mode in ("fp32", "fp32rows", "bf16"):
            self.weight.copy_(weight.t() if self.mode == "fp32" else weight)  # copy_ converts the dtype
        elif self.mode == "int8dyn":
            self.weight = _prepack_int8_dynamic(weight)  # an opaque fbgemm object, never compiled
        else:
            fresh = PackedLinear(weight, None, self.mode)
            self.weight.copy_(fresh.weight)
            self.scale.copy_(fresh.scale)

    def __call__(self, x: Tensor) -> Tensor:
        return packed_linear(self.mode, x, self.weight, self.scale, self.bias)

    @property
    def tensors(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.weight, self.scale, self.bias


def _norm_tensors(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    bias = getattr(module, "bias", None)
    return module.weight.detach(), None if bias is None else bias.detach()


def projections(block: nn.Module) -> tuple[nn.Module, ...]:
    return block.attn.qkv_proj, block.attn.o_proj, block.mlp.up_proj, block.mlp.down_proj


def _layer_tensors(block: nn.Module, lins: list[PackedLinear]) -> tuple[Tensor | None, ...]:
    """(norm1 w, b, qkv w, s, b, o w, s, b, norm2 w, b, up w, s, b, down w, s, b): what `_layer` reads."""
    return (
        *_norm_tensors(block.attn_norm),
        *lins[0].tensors,
        *lins[1].tensors,
        *_norm_tensors(block.mlp_norm),
        *lins[2].tensors,
        *lins[3].tensors,
    )


class FastDecoder:
    """`FastDecoder(model, mode)(input_ids, positions, cache, mask, is_causal, last_only)` → fp32 logits;
    `refresh()` re-packs the weights after the model's parameters changed."""

    packs_weights = True

    def __init__(self, model: DecoderLM, mode: str = "fp32", compile: bool = False) -> None:
        if not isinstance(model, DecoderLM):
            raise ConfigError(f"FastDecoder needs a DecoderLM, got {type(model).__name__}")
        if mode not in MODES:
            raise ConfigError(f"unknown weight mode {mode!r}; choose one of {', '.join(MODES)}")
        if not model.cfg.pre_norm:
            raise ConfigError("FastDecoder supports pre-norm decoders only; use the model's own forward")
        if mode in ("int8", "int4") and model.embed.tokens.weight.device.type != "cpu":
            raise ConfigError(f"mode {mode!r} uses CPU kernels; on {model.embed.tokens.weight.device} use fp32 or bf16")
        plain = [type(m) in (nn.Linear, FusedLinear) for b in model.layers for m in projections(b)]
        if not all(plain) or type(model.lm_head) is not nn.Linear:
            raise ConfigError(
                "FastDecoder packs plain nn.Linear projections only (this model has other layer "
                "kinds, e.g. BitNet); use the model's own forward"
            )
        self.model, self.cfg, self.mode, self.compiled = model, model.cfg, mode, compile
        # the compiled decode step reduces over the rows of (out, in) fp32 weights, not their transpose
        self.packing = packing = "fp32rows" if compile and mode == "fp32" else mode
        c = self.cfg
        self.h, self.kvh, self.hd, self.d = c.n_heads, c.kv_heads, c.head_dim, c.d_model
        self.rms, self.eps = c.norm == "rmsnorm", c.norm_eps
        self.gated, self.act_name = c.mlp in ("swiglu", "geglu"), c.mlp
        self.linears = [PackedLinear(lin.weight, lin.bias, packing) for b in model.layers for lin in projections(b)]
        # per layer, a flat tuple of tensors (see `_layer_tensors`)
        self.layers = [_layer_tensors(b, self.linears[4 * i : 4 * i + 4]) for i, b in enumerate(model.layers)]
        # The output head stays int8 in int4 mode: 4 bits there cost far more quality than in the blocks. It
        # runs through fbgemm's dynamic int8 GEMV (int8 activations too), several times faster here than
        # the weight-only int8 kernel on this 49152-row matrix.
        self.head = PackedLinear(model.lm_head.weight, None, "int8dyn" if mode == "int4" else packing)
        self.final_norm = _norm_tensors(model.norm)
        self.adapters: list[LayerAdapters] | None = None  # per block, see `lora_delta`; `serve.adapters`
        if compile:
            # One graph per (weight mode, model shape, batch of 1 or more, mask or not, first or later cache
            # length): several engines in one process pass dynamo's default limit of 8 per function.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self._decode_layer = torch.compile(functools.partial(self._layer, decode=True))
            # fbgemm's packed int8 head (int4 mode) is an opaque object that torch.compile does not trace
            self._decode_head = self._head if mode == "int4" else torch.compile(self._head)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read per decoded token (projections, head and norms; one embedding row)."""
        n = self.head.nbytes + sum(lin.nbytes for lin in self.linears)
        norms = [t for layer in self.layers for i, t in enumerate(layer) if i in (0, 1, 8, 9) and t is not None]
        return n + sum(t.numel() * t.element_size() for t in norms)

    def refresh(self) -> None:
        """Re-pack the weights from the model's current parameters (after an optimizer step or a weight
        load; same shapes). One pass over the weights (fp32: a transposed copy into the buffers it already
        holds); compiled decode steps are kept, not recompiled."""
        current = [lin for b in self.model.layers for lin in projections(b)]
        for packed, lin in zip(self.linears, current):
            packed.load_(lin.weight, lin.bias)
        self.layers = [_layer_tensors(b, self.linears[4 * i : 4 * i + 4]) for i, b in enumerate(self.model.layers)]
        self.head.load_(self.model.lm_head.weight, None)
        self.final_norm = _norm_tensors(self.model.norm)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.model.embed.tokens.weight
        c = self.cfg
        return KVCache(c.n_layers, batch, c.kv_heads, max_len, c.head_dim, torch.float32, p.device)

    def _embed(self, input_ids: Tensor | None, positions: Tensor, inputs_embeds: Tensor | None) -> Tensor:
        """The model's embeddings without their dropout, whatever the model's train/eval mode."""
        embed = self.model.embed
        dropout = embed.dropout
        if not (dropout.training and dropout.p > 0):
            return embed(input_ids, positions, inputs_embeds=inputs_embeds)
        dropout.training = False  # only this flag, only for this call: the caller's mode is put back
        try:
            return embed(input_ids, positions, inputs_embeds=inputs_embeds)
        finally:
            dropout.training = True

    def _norm(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.rms:
            return F.rms_norm(x, (self.d,), w, self.eps)
        return F.layer_norm(x, (self.d,), w, b, self.eps)

    def _act(self, x: Tensor) -> Tensor:
        name = self.act_name
        if name == "swiglu":
            return F.silu(x)
        if name == "relu":
            return F.relu(x)
        return F.gelu(x) if name == "gelu" else F.gelu(x, approximate="tanh")

    def _layer(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        k_cache: Tensor,
        v_cache: Tensor,
        start: int,
        mask: Tensor | None,
        is_causal: bool,
        p: tuple[Tensor | None, ...],
        decode: bool = False,
        write_pos: Tensor | None = None,
        lora: tuple[LayerAdapters, Tensor] | None = None,
    ) -> Tensor:
        """One block. `decode=True` (the compiled single-token step) uses the explicit reductions.
        `write_pos` (B,): one new token per row, row i's keys/values written at its own position (the slots
        of continuous batching) instead of all at `start`. `lora`: (this layer's adapter bank, each row's
        adapter index) adds each row's own low-rank update to the four projections."""
        bsz, seq, _ = x.shape
        h, kvh, hd = self.h, self.kvh, self.hd
        mode = self.packing
        plain = rowdot_linear if decode and bsz == 1 else packed_linear

        def linear(mode: str, inp: Tensor, w: Any, s: Tensor | None, b: Tensor | None, j: int) -> Tensor:
            y = plain(mode, inp, w, s, b)
            if lora is not None and lora[0][j] is not None:
                y = y + lora_delta(inp, lora[0][j], lora[1])
            return y

        qkv = linear(mode, self._norm(x, p[0], p[1]), p[2], p[3], p[4], 0).view(bsz, seq, h + 2 * kvh, hd)
        qk, v = qkv[:, :, : h + kvh], qkv[:, :, h + kvh :]
        if cos is not None:
            half = hd // 2
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
        end = start + seq
        if write_pos is None:
            k_cache.narrow(2, start, seq).copy_(qk[:, :, h:].transpose(1, 2))
            v_cache.narrow(2, start, seq).copy_(v.transpose(1, 2))
        else:
            rows = torch.arange(bsz, device=x.device)
            k_cache[rows, :, write_pos] = qk[:, 0, h:]
            v_cache[rows, :, write_pos] = v[:, 0]
        keys, values = k_cache.narrow(2, 0, end), v_cache.narrow(2, 0, end)
        if decode:
            out = decode_attention(qk[:, :, :h], keys, values, mask)
        else:
            out = (
                F.scaled_dot_product_attention(
                    qk[:, :, :h].transpose(1, 2),
                    keys,
                    values,
                    attn_mask=mask,
                    is_causal=is_causal,
                    enable_gqa=kvh != h,
                )
                .transpose(1, 2)
                .reshape(bsz, seq, h * hd)
            )
        x = x + linear(mode, out, p[5], p[6], p[7], 1)
        u = linear(mode, self._norm(x, p[8], p[9]), p[10], p[11], p[12], 2)
        if self.gated:
            gate, up = u.chunk(2, dim=-1)
            u = self._act(gate) * up
        else:
            u = self._act(u)
        return x + linear(mode, u, p[13], p[14], p[15], 3)

    def _head(self, x: Tensor, decode: bool = False) -> Tensor:
        x = self._norm(x, *self.final_norm)
        if decode and x.shape[0] == 1:
            return rowdot_linear(self.head.mode, x, *self.head.tensors)
        return self.head(x)

    def __call__(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        cache: KVCache,
        mask: Tensor | None = None,
        is_causal: bool = False,
        last_only: bool = True,
        inputs_embeds: Tensor | None = None,
        adapter_index: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, V) of the last position (or (B, T, V)); writes keys/values at `cache.length` and
        advances it. `mask`: bool (B|1, 1, T, past+T), True = attend; None with `is_causal` for plain
        causal prefill, None alone for single-token decoding without padding. `inputs_embeds` (B, T, d)
        replaces `input_ids` (pass None for those). `adapter_index` (B,): each row's adapter in
        `self.adapters` (0 = none)."""
        seq = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        start = cache.length
        if start + seq > cache.max_len:
            raise ValueError(f"KV cache is full: {start + seq} tokens > max_len {cache.max_len}")
        decode = self.compiled and seq == 1
        # compiled graphs are traced under no_grad: inference tensors would add guards and recompiles
        with torch.no_grad() if decode else torch.inference_mode():
            x = self._embed(input_ids, positions, inputs_embeds)
            cos = sin = None
            if self.model.rope is not None:
                cos = self.model.rope.cos[positions].unsqueeze(2)
                sin = self.model.rope.sin[positions].unsqueeze(2)
            layer = self._decode_layer if decode else self._layer
            for i, p in enumerate(self.layers):
                lora = self._lora(i, adapter_index)
                x = layer(x, cos, sin, cache.k[i], cache.v[i], start, mask, is_causal, p, lora=lora)
            cache.length = start + seq
            if last_only:
                x = x[:, -1]
            return self._decode_head(x, decode=True) if decode else self._head(x)

    def _lora(self, layer: int, adapter_index: Tensor | None) -> tuple[LayerAdapters, Tensor] | None:
        if self.adapters is None or adapter_index is None:
            return None
        return self.adapters[layer], adapter_index

    def decode_at(
        self, input_ids: Tensor, positions: Tensor, cache: KVCache, adapter_index: Tensor | None = None
    ) -> Tensor:
        """Logits (n, V) for one new token in each of the cache's first n rows, row i written at
        `positions[i]` and attending to its keys 0..positions[i] only: rows of different lengths and ages
        in one forward pass (continuous batching). `cache.length` is not used or changed."""
        n = input_ids.shape[0]
        width = int(positions.max()) + 1
        if width > cache.max_len:
            raise ValueError(f"KV cache is full: {width} tokens > max_len {cache.max_len}")
        keys = torch.arange(width, device=positions.device)[None] <= positions[:, None]
        mask = keys[:, None, None]  # (n, 1, 1, width)
        decode = self.compiled
        with torch.no_grad() if decode else torch.inference_mode():
            x = self._embed(input_ids[:, None], positions[:, None], None)
            cos = sin = None
            if self.model.rope is not None:
                cos = self.model.rope.cos[positions[:, None]].unsqueeze(2)
                sin = self.model.rope.sin[positions[:, None]].unsqueeze(2)
            layer = self._decode_layer if decode else self._layer
            for i, p in enumerate(self.layers):
                k, v = cache.k[i][:n], cache.v[i][:n]
                lora = self._lora(i, adapter_index)
                x = layer(x, cos, sin, k, v, width - 1, mask, False, p, write_pos=positions, lora=lora)
            x = x[:, -1]
            return self._decode_head(x, decode=True) if decode else self._head(x)


class ModelForward:
    """The same call interface over the model's own modules: the "live" mode, which reads the current
    parameters on every call (no copy, nothing to refresh after an optimizer step) and follows the model's
    train/eval mode, and the fallback for decoders `FastDecoder` cannot pack (BitNet layers, post-norm).
    Runs in the model's dtype under no_grad; `key_mask` (B, past+T) replaces the 4-D mask."""

    packs_weights = False

    def __init__(self, model: DecoderLM) -> None:
        self.model, self.cfg, self.mode = model, model.cfg, "live"

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return self.model.new_cache(batch, max_len)

    # no_grad rather than inference_mode: nothing made here (a module's cached tensors included) may later
    # be refused by autograd when the same model trains
    @torch.no_grad()
    def __call__(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        cache: KVCache,
        key_mask: Tensor | None = None,
        last_only: bool = True,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        x = self.model.hidden_states(input_ids, key_mask, positions, cache, inputs_embeds=inputs_embeds)
        return self.model.lm_head(x[:, -1] if last_only else x).float()

    @torch.no_grad()
    def decode_at(
        self, input_ids: Tensor, positions: Tensor, cache: KVCache, adapter_index: Tensor | None = None
    ) -> Tensor:
        """`FastDecoder.decode_at` over the model's own modules (per-row adapters are a packed-mode feature)."""
        if adapter_index is not None and bool((adapter_index != 0).any()):
            raise ConfigError("per-row adapters need a packed weight mode; this model runs its own modules")
        n = input_ids.shape[0]
        width = int(positions.max()) + 1
        if width > cache.max_len:
            raise ValueError(f"KV cache is full: {width} tokens > max_len {cache.max_len}")
        key_mask = torch.arange(width, device=positions.device)[None] <= positions[:, None]
        rows = RowWrites(cache, positions, n, width)
        x = self.model.hidden_states(input_ids[:, None], key_mask, positions[:, None], rows)
        return self.model.lm_head(x[:, -1]).float()


class RowWrites(KVCache):
    """A view of a cache's first n rows in which each row's one new key/value goes to its own position
    (what the model's attention calls `update` with), for `ModelForward.decode_at`."""

    def __init__(self, cache: KVCache, positions: Tensor, n: int, width: int) -> None:
        self.positions, self.n = positions, n
        self.k, self.v = cache.k, cache.v
        self.max_len, self.length = width, width - 1

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        rows = torch.arange(self.n, device=k.device)
        self.k[layer, rows, :, self.positions] = k[:, :, 0]
        self.v[layer, rows, :, self.positions] = v[:, :, 0]
        return self.k[layer, : self.n, :, : self.max_len], self.v[layer, : self.n, :, : self.max_len]
