"""The one set of transformer blocks that all three families are assembled from.

Attention (multi-head / grouped-query; causal, bidirectional or cross) runs through
`F.scaled_dot_product_attention`. Projections are fused (one matmul for q,k,v; one for gate,up) because
per-token overhead, not arithmetic, dominates small-batch decoding; weight loaders split/merge them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.models.bitnet import BitLinear
from lmstack.models.config import ModelConfig
from lmstack.models.fused import FusedLinear, check_splits
from lmstack.models.norms import RMSNorm, make_norm


def linear(
    cfg: ModelConfig, d_in: int, d_out: int, bias: bool | None = None, splits: tuple[int, ...] | None = None
) -> nn.Module:
    """Every linear layer of a block is made here, so that a model-wide switch can swap its kind. `splits`:
    output sizes of the parts a fused projection stands for (q/k/v, gate/up): such a layer is a `FusedLinear`
    (or a `BitLinear`, which scales each part apart) and exposes them as `.splits`."""
    bias = cfg.bias if bias is None else bias
    if cfg.bitnet:  # BitNet b1.58 ternary layers; embeddings and lm_head are built elsewhere, full precision
        return BitLinear(d_in, d_out, bias=bias, norm_eps=cfg.norm_eps, splits=splits)
    if check_splits(splits, d_out) is not None:
        return FusedLinear(d_in, d_out, bias=bias, splits=splits)
    return nn.Linear(d_in, d_out, bias=bias)


# ----------------------------------------------------------------------------- positions


class RotaryEmbedding(nn.Module):
    """RoPE with the half-rotation layout of HF (pairs (i, i + d/2)); cos/sin tables precomputed."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: (B, T) → cos, sin of shape (B, 1, T, head_dim), broadcast over heads."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def sinusoidal_table(max_seq_len: int, dim: int) -> Tensor:
    """The fixed sin/cos position table of "Attention is all you need"."""
    pos = torch.arange(max_seq_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_seq_len, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


class Embeddings(nn.Module):
    """Token (+ learned or sinusoidal position) (+ token type) embeddings, optional norm, dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        if cfg.position == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(cfg.max_seq_len, cfg.d_model), persistent=False)
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg) if cfg.embedding_norm else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """`inputs_embeds` (B, T, d) replaces the token lookup (soft prompts, prompt tuning); positions and
        token types are still added, as in HF. Give exactly one of `input_ids` and `inputs_embeds`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.positions is not None:
            x = x + self.positions(positions)
        elif self.cfg.position == "sinusoidal":
            x = x + self.sinusoid[positions].to(x.dtype)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            x = x + self.token_types(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def default_positions(input_ids: Tensor, start: int, attention_mask: Tensor | None) -> Tensor:
    """Position ids (B, T). With a padding mask (1 = token) positions count real tokens only, so that
    left-padded rows get the same positions as the unpadded prompt would."""
    bsz, seq = input_ids.shape
    if attention_mask is None:
        return torch.arange(start, start + seq, device=input_ids.device).expand(bsz, seq)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)[:, -seq:]


def segment_positions(segment_ids: Tensor) -> Tensor:
    """Position ids (B, T) that restart at 0 where each segment (a contiguous run of one id) begins, so a
    sample packed after others is positioned exactly as it would be alone."""
    idx = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return idx - torch.where(starts, idx, torch.zeros_like(idx)).cummax(-1).values


# ----------------------------------------------------------------------------- masks and cache


def build_attention_mask(
    q_len: int,
    k_len: int,
    causal: bool,
    key_padding: Tensor | None,
    device: torch.device,
    segment_ids: Tensor | None = None,
) -> tuple[Tensor | None, bool]:
    """Return (bool mask broadcastable to (B, H, q_len, k_len) with True = attend, is_causal flag).

    Uses SDPA's fast `is_causal` path when no padding or segments are involved. `segment_ids` (B, k_len),
    like `key_padding`, covers cached keys too: a query attends only to keys of its own segment (packed
    samples stay independent; block-diagonal attention). A query row that may attend to no key (a padding
    query) attends to all keys instead of producing NaN; its output is ignored anyway.
    """
    if key_padding is None and segment_ids is None:
        if not causal or q_len == 1:
            return None, False
        if q_len == k_len:
            return None, True
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        mask = torch.tril(mask, diagonal=k_len - q_len)
    mask = mask[None, None]
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, :].bool()
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, -q_len:, None] == segment_ids[:, None, None, :])
    mask = mask | ~mask.any(-1, keepdim=True)
    return mask, False


class KVCache:
    """A preallocated key/value cache for all layers: (layers, batch, kv_heads, max_len, head_dim).

    The model writes each layer's new keys/values at `length` and advances `length` once per forward.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0


# ----------------------------------------------------------------------------- attention and MLP


class Attention(nn.Module):
    """Multi-head / grouped-query attention. Self-attention fuses q,k,v into one projection; cross-attention
    projects queries from x and keys/values from the encoder output (`context`)."""

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.cross = cross
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if cross:
            self.q_proj = linear(cfg, cfg.d_model, q_dim)
            self.kv_proj = linear(cfg, cfg.d_model, 2 * kv_dim, splits=(kv_dim, kv_dim))
        else:
            self.qkv_proj = linear(cfg, cfg.d_model, q_dim + 2 * kv_dim, splits=(q_dim, kv_dim, kv_dim))
        self.o_proj = linear(cfg, q_dim, cfg.d_model)
        self.dropout = cfg.dropout

    def _heads(self, x: Tensor, n: int) -> Tensor:
        bsz, seq, _ = x.shape
        return x.view(bsz, seq, n, self.head_dim).transpose(1, 2)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output (computed once per generation)."""
        k, v = self.kv_proj(context).chunk(2, dim=-1)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        cross_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        bsz, seq, _ = x.shape
        if self.cross:
            assert cross_kv is not None, "cross-attention needs the encoder's keys/values"
            q = self._heads(self.q_proj(x), self.n_heads)
            k, v = cross_kv
        else:
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([q_dim, kv_dim, kv_dim], dim=-1)
            q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(layer_idx, k, v)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, self.n_heads * self.head_dim))


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "swiglu": F.silu,
    "geglu": lambda x: F.gelu(x, approximate="tanh"),
}


class MLP(nn.Module):
    """Feed-forward block: act(x W1) W2, or gated act(x Wg) * (x Wu) W2 for SwiGLU/GeGLU (gate, up fused)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp in ("swiglu", "geglu")
        self.act = _ACTIVATIONS[cfg.mlp]
        self.up_proj = linear(
            cfg, cfg.d_model, (2 if self.gated else 1) * cfg.d_ff, splits=(cfg.d_ff, cfg.d_ff) if self.gated else None
        )
        self.down_proj = linear(cfg, cfg.d_ff, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up_proj(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down_proj(h)


class Block(nn.Module):
    """Self-attention (+ cross-attention) + MLP with residuals; pre-norm (GPT-2, Llama, T5) or post-norm
    (BERT, original Transformer)."""

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.cross_norm = make_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, cross=True) if cross else None
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, fn, *args, **kwargs) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(norm(x), *args, **kwargs))
        return norm(x + self.dropout(fn(x, *args, **kwargs)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        cross_kv: tuple[Tensor, Tensor] | None = None,
        cross_mask: Tensor | None = None,
    ) -> Tensor:
        x = self._residual(x, self.attn_norm, self.attn, mask, is_causal, rope, cache, layer_idx)
        if self.cross_attn is not None:
            x = self._residual(x, self.cross_norm, self.cross_attn, cross_mask, cross_kv=cross_kv)
        return self._residual(x, self.mlp_norm, self.mlp)


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """GPT-2 style init: N(0, init_std) for weights and embeddings, zero biases, unit norms, and output
    projections scaled by 1/sqrt(2 * layers) so the residual stream does not grow with depth."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = cfg.init_std
            if name.endswith(("o_proj", "down_proj")):
                std /= math.sqrt(2 * (cfg.n_layers + (cfg.decoder_layers if cfg.family == "seq2seq" else 0)))
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
