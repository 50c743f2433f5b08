"""Normalisation layers: RMSNorm (Llama, T5, BitNet's SubLN) and LayerNorm (GPT-2, BERT), picked by config."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmstack.models.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama, T5): no mean subtraction, no bias. Computed in fp32 like HF."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The model's norm kind at its width: RMSNorm or LayerNorm with `cfg.norm_eps`."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
