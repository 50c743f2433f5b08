"""`DecoderLM`: a decoder-only causal language model, GPT-2 style or Llama style by config.

Generation lives in `lmstack.generate` (`sampling.generate` is the reference loop, `engine.Engine` the fast
one); the model only computes logits, so that the model package does not depend on the generation one.
"""

from __future__ import annotations

from torch import Tensor, nn

from lmstack.models.blocks import (
    Block,
    Embeddings,
    KVCache,
    RotaryEmbedding,
    build_attention_mask,
    default_positions,
    init_weights,
    segment_positions,
)
from lmstack.models.config import ModelConfig
from lmstack.models.norms import make_norm


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta) if cfg.position == "rope" else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """A preallocated KV cache matching this model's dtype and device."""
        p = self.embed.tokens.weight
        c = self.cfg
        return KVCache(c.n_layers, batch, c.kv_heads, max_len or c.max_seq_len, c.head_dim, p.dtype, p.device)

    def hidden_states(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Final-norm hidden states (B, T, d). `attention_mask` (B, past + T), 1 = real token, covers the
        cached tokens too; `positions` default to counting real tokens. `inputs_embeds` (B, T, d) replaces
        the token lookup (soft prompts, prompt tuning); give it or `input_ids`, not both. `segment_ids`
        (B, past + T) packs several samples in a row: each contiguous run of one id attends only to itself
        and, by default, counts its positions from 0."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        # only the (B, T) shape and the device of `tokens` are read below
        tokens = input_ids if input_ids is not None else inputs_embeds[..., 0]
        start = cache.length if cache is not None else 0
        seq = tokens.shape[1]
        if start + seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + seq} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        if positions is None and segment_ids is not None:
            positions = segment_positions(segment_ids)[:, -seq:]
        elif positions is None:
            positions = default_positions(tokens, start, attention_mask)
        x = self.embed(input_ids, positions, inputs_embeds=inputs_embeds)
        rope = self.rope(positions) if self.rope is not None else None
        mask, is_causal = build_attention_mask(seq, start + seq, True, attention_mask, tokens.device, segment_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, is_causal, rope, cache, i)
        if cache is not None:
            cache.length += seq
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
        segment_ids: Tensor | None = None,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, vocab) of token ids or of input embeddings (see `hidden_states`). `logits_at`, a bool
        (B, T) mask: logits of those positions only, flat (N, vocab) in row-major order. A loss over some
        positions (completion-only fine-tuning) then skips the vocabulary matmul, a small model's largest,
        and its (B, T, vocab) activation everywhere else."""
        hidden = self.hidden_states(input_ids, attention_mask, positions, cache, inputs_embeds, segment_ids)
        return self.lm_head(hidden if logits_at is None else hidden[logits_at])

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.tokens.weight.numel()
            if self.embed.positions is not None:
                n -= self.embed.positions.weight.numel()
        return n
