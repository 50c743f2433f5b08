"""`EncoderModel`: a bidirectional encoder, BERT style (token types, post-norm, MLM head, pooling)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmstack.models.blocks import (
    Block,
    Embeddings,
    RotaryEmbedding,
    build_attention_mask,
    default_positions,
    init_weights,
)
from lmstack.models.config import ModelConfig
from lmstack.models.norms import make_norm


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense → GELU → norm → vocabulary projection (tied to the embeddings) + bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = make_norm(cfg)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden)))) + self.bias


class EncoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig, mlm_head: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta) if cfg.position == "rope" else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.mlm_head = MLMHead(cfg) if mlm_head else None
        init_weights(self, cfg)
        if self.mlm_head is not None and cfg.tie_embeddings:
            self.mlm_head.decoder.weight = self.embed.tokens.weight

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Contextual hidden states (B, T, d); `attention_mask` 1 = token, 0 = padding."""
        positions = default_positions(input_ids, 0, None)
        x = self.embed(input_ids, positions, token_type_ids)
        rope = self.rope(positions) if self.rope is not None else None
        seq = input_ids.shape[1]
        mask, _ = build_attention_mask(seq, seq, False, attention_mask, input_ids.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, False, rope, None, i)
        return self.norm(x)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        if self.mlm_head is None:
            raise ValueError("this EncoderModel was built without an MLM head")
        return self.mlm_head(hidden)


def pool(hidden: Tensor, attention_mask: Tensor | None, method: Literal["mean", "cls"] = "mean") -> Tensor:
    """Sentence vectors from token states: the first ([CLS]) token, or the mean over real tokens."""
    if method == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
