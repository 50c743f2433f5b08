"""`Seq2SeqLM`: encoder-decoder with cross-attention, T5 style (pre-norm RMSNorm, gated MLP) or BART style."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmstack.models.blocks import (
    Block,
    Embeddings,
    KVCache,
    RotaryEmbedding,
    build_attention_mask,
    default_positions,
    init_weights,
)
from lmstack.models.config import ModelConfig
from lmstack.models.norms import make_norm


class Seq2SeqLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)  # shared by encoder and decoder
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta) if cfg.position == "rope" else None
        self.encoder_layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.encoder_norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.decoder_layers = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.decoder_norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    @property
    def decoder_start_id(self) -> int:
        c = self.cfg
        return c.pad_token_id if c.decoder_start_token_id is None else c.decoder_start_token_id

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        positions = default_positions(input_ids, 0, None)
        x = self.embed(input_ids, positions)
        rope = self.rope(positions) if self.rope is not None else None
        seq = input_ids.shape[1]
        mask, _ = build_attention_mask(seq, seq, False, attention_mask, input_ids.device)
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, mask, False, rope, None, i)
        return self.encoder_norm(x)

    def cross_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer cross-attention keys/values of the encoder output, computed once per generation."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.embed.tokens.weight
        c = self.cfg
        return KVCache(c.decoder_layers, batch, c.kv_heads, max_len or c.max_seq_len, c.head_dim, p.dtype, p.device)

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        cross_kv: list[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """Decoder logits (B, T, vocab) given the encoder output `memory` and its padding mask."""
        start = cache.length if cache is not None else 0
        seq = decoder_input_ids.shape[1]
        positions = default_positions(decoder_input_ids, start, None)
        x = self.embed(decoder_input_ids, positions)
        rope = self.rope(positions) if self.rope is not None else None
        mask, is_causal = build_attention_mask(seq, start + seq, True, None, x.device)
        cross_mask = None if memory_mask is None else memory_mask[:, None, None, :].bool()
        if cross_kv is None:
            cross_kv = self.cross_kv(memory)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, mask, is_causal, rope, cache, i, cross_kv[i], cross_mask)
        if cache is not None:
            cache.length += seq
        return self.lm_head(self.decoder_norm(x))

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask)

    def shift_right(self, labels: Tensor) -> Tensor:
        """Teacher-forcing decoder inputs: start token then labels[:-1] (ignored positions → pad)."""
        start = torch.full_like(labels[:, :1], self.decoder_start_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted < 0, self.cfg.pad_token_id)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        attention_mask: Tensor | None = None,
        eos_token_id: int | None = None,
    ) -> Tensor:
        """Greedy decoding with a self-attention KV cache and cross-attention K/V computed once."""
        memory = self.encode(input_ids, attention_mask)
        kv = self.cross_kv(memory)
        bsz = input_ids.shape[0]
        cache = self.new_cache(bsz, max_new_tokens + 1)
        tokens = torch.full((bsz, 1), self.decoder_start_id, dtype=torch.long, device=input_ids.device)
        out = []
        done = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
        eos = self.cfg.eos_token_id if eos_token_id is None else eos_token_id
        for _ in range(max_new_tokens):
            logits = self.decode(tokens, memory, attention_mask, cache, kv)
            tokens = logits[:, -1].argmax(-1, keepdim=True)
            if eos is not None:
                tokens = tokens.masked_fill(done[:, None], self.cfg.pad_token_id)
                done |= tokens[:, 0] == eos
            out.append(tokens)
            if eos is not None and bool(done.all()):
                break
        return torch.cat(out, dim=1)
