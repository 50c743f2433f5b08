"""`Engine`: batched, streaming text generation on top of `FastDecoder`.

- Prompts of different lengths are left-padded; padding keys are masked and positions count real tokens
  only, so each row gets the tokens it would get alone (the tests check this against one-by-one runs).
- The whole prompt batch is prefilled in one forward pass into a preallocated KV cache; logits are
  computed only for the last position.
- Each row samples from its own generator (seeded with `config.seed`), applies its own repetition
  penalty, and stops on its own at eos, a stop id or a stop string.
- `stream()` yields text pieces that never split a UTF-8 character and never show a stop string.

Weight modes (see `fast.py`): "fp32" (default; same numerics as `DecoderLM`), "bf16", "int8", "int4";
and `compile=True` for a `torch.compile`d single-token step that reads the weights near memory bandwidth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lmstack.errors import ConfigError, DataError
from lmstack.generate.fast import FastDecoder, ModelForward
from lmstack.generate.sampling import (
    GenerationConfig,
    apply_repetition_penalty,
    row_generators,
    sample_next,
    seen_tokens,
)
from lmstack.generate.text import IncrementalDecoder, StopMatcher
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer


@dataclass
class Completion:
    """One row's result. `token_ids` exclude the stop token; `text` excludes the stop string."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (eos, stop id or stop string) or "length"
    prompt_tokens: int


class _Row:
    """Per-row bookkeeping: generated ids, incremental text, stop handling."""

    def __init__(self, tokenizer: Tokenizer | None, stop: Sequence[str], prompt_tokens: int) -> None:
        self.ids: list[int] = []
        self.done = False
        self.finish_reason = "length"
        self.prompt_tokens = prompt_tokens
        self.decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.matcher = StopMatcher(stop)

    def add(self, token: int, stop_ids: set[int]) -> str:
        """Record a token; return the text it releases. Marks the row done at a stop."""
        if token in stop_ids:
            self.done, self.finish_reason = True, "stop"
            return self._finish_text()
        self.ids.append(token)
        if self.decoder is None:
            return ""
        piece = self.matcher.feed(self.decoder.push(token))
        if self.matcher.stopped:
            self.done, self.finish_reason = True, "stop"
        return piece

    def _finish_text(self) -> str:
        if self.decoder is None:
            return ""
        piece = self.matcher.feed(self.decoder.flush())
        return piece + ("" if self.matcher.stopped else self.matcher.finish())

    def close(self) -> str:
        """Text still held back when generation ends by length."""
        return "" if self.finish_reason == "stop" else self._finish_text()

    def completion(self) -> Completion:
        return Completion(self.ids, self.matcher.text, self.finish_reason, self.prompt_tokens)


class Engine:
    """Fast generation for a `DecoderLM` (+ tokenizer for text in/out, chat templates and stop strings)."""

    def __init__(
        self, model: DecoderLM, tokenizer: Tokenizer | None = None, mode: str = "fp32", compile: bool = False
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mode = mode
        try:
            self.fast: FastDecoder | ModelForward = FastDecoder(model, mode=mode, compile=compile)
        except ConfigError:
            if mode != "fp32" or compile:
                raise
            self.fast = ModelForward(model)  # e.g. BitNet layers: exact, just not packed
        self.device = model.embed.tokens.weight.device

    # ------------------------------------------------------------------ ids in, ids out

    def _stop_ids(self, config: GenerationConfig) -> set[int]:
        ids = {int(i) for i in config.stop_token_ids}
        eos = self.tokenizer.eos_id if self.tokenizer is not None else self.model.cfg.eos_token_id
        if eos is not None and not config.ignore_eos:
            ids.add(int(eos))
        return ids

    def steps(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig
    ) -> Iterator[tuple[list[_Row], list[str]]]:
        """Run generation; after every step yield the rows (their `ids`, `done`, `finish_reason`) and the
        text piece each row released. The first yield comes right after the prefill; use this for
        progress reporting, timing or custom streaming of a batch."""
        if not prompts:
            return
        if any(len(p) == 0 for p in prompts):
            raise DataError("every prompt needs at least one token (add a BOS token to empty prompts)")
        if config.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer; pass one to Engine")
        vocab = self.model.cfg.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise DataError(f"prompt token ids must be in [0, {vocab})")
        bsz, longest = len(prompts), max(len(p) for p in prompts)
        total = longest + config.max_new_tokens
        if total > self.model.cfg.max_seq_len:
            raise ConfigError(
                f"prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the model's "
                f"context of {self.model.cfg.max_seq_len} tokens; shorten the prompt or lower max_new_tokens"
            )
        rows = [_Row(self.tokenizer, config.stop, len(p)) for p in prompts]
        if config.max_new_tokens == 0:
            yield rows, [""] * bsz
            return
        dev = self.device
        pad = self.model.cfg.pad_token_id
        ids = torch.full((bsz, longest), pad, dtype=torch.long, device=dev)
        key_mask = torch.zeros(bsz, total, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            key_mask[i, longest - len(p) : total] = True
        padded = any(len(p) != longest for p in prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=dev)
        positions = (key_mask[:, :longest].long().cumsum(-1) - 1).clamp_(min=0)
        if padded:
            causal = torch.ones(longest, longest, dtype=torch.bool, device=dev).tril()
            mask = (causal[None] & key_mask[:, None, :longest])[:, None]
            mask = mask | ~mask.any(-1, keepdim=True)  # padding queries attend to something (ignored)
            is_causal = False
        else:
            mask, is_causal = None, longest > 1
        stop_ids = self._stop_ids(config)
        generators = row_generators(bsz, config.seed, dev)
        seen = seen_tokens(ids, key_mask[:, :longest].long(), vocab) if config.repetition_penalty != 1.0 else None
        cache = self.fast.new_cache(bsz, total)
        packed = self.fast.packs_weights
        if packed:
            logits = self.fast(ids, positions, cache, mask, is_causal)
        else:
            logits = self.fast(ids, positions, cache, key_mask[:, :longest] if padded else None)
        rows_idx = torch.arange(bsz, device=dev)
        for step in range(config.max_new_tokens):
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
            nxt = sample_next(logits, config.temperature, config.top_k, config.top_p, generators)
            if seen is not None:
                seen[rows_idx, nxt] = True
            pieces = []
            tokens = nxt.tolist()
            for row, tok in zip(rows, tokens):
                pieces.append("" if row.done else row.add(tok, stop_ids))
            last = step == config.max_new_tokens - 1
            if last or all(r.done for r in rows):
                pieces = [p + r.close() for p, r in zip(pieces, rows)]
                yield rows, pieces
                return
            yield rows, pieces
            pos = (lengths + step)[:, None]
            keys = key_mask[:, : cache.length + 1] if padded else None
            logits = self.fast(nxt[:, None], pos, cache, keys[:, None, None] if packed and padded else keys)

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for a batch of tokenised prompts at once."""
        config = config or GenerationConfig()
        rows: list[_Row] = []
        for step_rows, _ in self.steps(prompts, config):
            rows = step_rows
        return [r.completion() for r in rows]

    # ------------------------------------------------------------------ text in, text out

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ConfigError("text generation needs a tokenizer; pass one to Engine")
        return self.tokenizer

    def encode_prompt(self, prompt: str | list[dict[str, str]], chat: bool | None = None) -> list[int]:
        """Token ids of a plain prompt, or of a chat (list of {"role", "content"}) through the chat template."""
        tok = self._tok()
        if isinstance(prompt, list):
            text = tok.apply_chat_template(prompt, add_generation_prompt=True)
        elif chat:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        else:
            text = prompt
        ids = tok.encode(text)
        if not ids:
            bos = tok.bos_id if tok.bos_id is not None else tok.eos_id
            if bos is None:
                raise DataError("empty prompt and the tokenizer has no BOS/EOS token to start from")
            ids = [bos]
        return ids

    def generate(
        self, prompts: str | list[str] | list[list[dict[str, str]]], config: GenerationConfig | None = None,
        chat: bool = False,
    ) -> list[Completion]:
        """Generate for one prompt or a batch; prompts are strings or chats (message lists)."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        return self.generate_ids([self.encode_prompt(p, chat) for p in prompts], config)

    def stream(
        self, prompt: str | list[dict[str, str]], config: GenerationConfig | None = None, chat: bool = False
    ) -> Iterator[str]:
        """Yield the text of one generation piece by piece as it is produced."""
        for _, pieces in self.steps([self.encode_prompt(prompt, chat)], config or GenerationConfig()):
            if pieces[0]:
                yield pieces[0]

