"""`Engine`: batched, streaming text generation on top of `FastDecoder`.

- Prompts of different lengths are left-padded; padding keys are masked and positions count real tokens
  only, so each row gets the tokens it would get alone (the tests check this against one-by-one runs).
- The whole prompt batch is prefilled in one forward pass into a preallocated KV cache; logits are
  computed only for the last position.
- Each row samples from its own generator (seeded with `config.seed`), applies its own repetition
  penalty, and stops on its own at eos, a stop id or a stop string.
- `stream()` yields text pieces that never split a UTF-8 character and never show a stop string.
- Prompts are token ids, or (`generate_embeds`) input embeddings, e.g. a soft prompt before the tokens'
  embeddings, or token ids behind one shared soft prompt (`prefix_embeds`: prompt tuning).
- `GenerationConfig(logprobs=True)` records each sampled token's log-probability (RL ratios, KL terms);
  `rollout.pad_completions` turns a batch of completions into tensors.

Weight modes (see `fast.py`): "fp32" (default; same numerics as `DecoderLM`), "bf16", "int8", "int4";
and `compile=True` for a `torch.compile`d single-token step that reads the weights near memory bandwidth.
These pack a copy of the weights when the engine is built, so while the model trains (RL rollouts between
optimizer steps) either
- call `engine.refresh()` after each optimizer step: one pass over the weights (fp32: a transposed copy),
  then every token decodes at full speed. The better choice when a rollout decodes many tokens; or
- use `mode="live"`: the model's own modules, which read the current parameters on every call (no copy,
  nothing to refresh, any layer kind), at the speed of `DecoderLM.forward` with a KV cache.
The engine never changes the model's train/eval mode. The packed modes never apply dropout; live mode runs
the modules as the caller left them, so put the model in eval() for deterministic rollouts (the models
that `FastDecoder` cannot pack, e.g. BitNet, always run live).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmstack.errors import ConfigError, DataError
from lmstack.generate.fast import MODES, FastDecoder, ModelForward
from lmstack.generate.sampling import (
    GenerationConfig,
    apply_repetition_penalty,
    row_generators,
    sample_next,
    seen_tokens,
    token_logprobs,
)
from lmstack.generate.text import IncrementalDecoder, StopMatcher
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer


@dataclass
class Completion:
    """One row's result. `token_ids` exclude the stop token; `text` excludes the stop string.

    `sampled_ids` are every token the row sampled, the eos / stop id that ended it included (the policy
    chose to stop: RL scores that choice too). `logprobs` (with `GenerationConfig(logprobs=True)`, else
    None) align with `sampled_ids`: log_softmax of the model's raw fp32 logits at each sampled token, before
    temperature, top-k/top-p and repetition penalty (in the packed modes, of the packed weights)."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (eos, stop id or stop string) or "length"
    prompt_tokens: int
    sampled_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None


class RowState:
    """Per-row bookkeeping: generated ids, incremental text, stop handling."""

    def __init__(
        self, tokenizer: Tokenizer | None, stop: Sequence[str], prompt_tokens: int, logprobs: bool = False
    ) -> None:
        self.ids: list[int] = []
        self.sampled: list[int] = []
        self.logprobs: list[float] | None = [] if logprobs else None
        self.done = False
        self.finish_reason = "length"
        self.prompt_tokens = prompt_tokens
        self.decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.matcher = StopMatcher(stop)

    def add(self, token: int, stop_ids: set[int], logprob: float | None = None) -> str:
        """Record a token; return the text it releases. Marks the row done at a stop."""
        self.sampled.append(token)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
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
        return Completion(
            self.ids, self.matcher.text, self.finish_reason, self.prompt_tokens, self.sampled, self.logprobs
        )


class Engine:
    """Fast generation for a `DecoderLM` (+ tokenizer for text in/out, chat templates and stop strings).

    `mode`: "fp32", "bf16", "int8", "int4" (packed weights; `refresh()` after the model changes) or "live"
    (the model's own modules and current parameters); see the module docstring for which to use when."""

    def __init__(
        self, model: DecoderLM, tokenizer: Tokenizer | None = None, mode: str = "fp32", compile: bool = False
    ) -> None:
        if mode not in (*MODES, "live"):
            raise ConfigError(f"unknown weight mode {mode!r}; choose one of {', '.join(MODES)}, live")
        if mode == "live" and compile:
            raise ConfigError(
                "compile=True compiles the packed decode step; live mode runs the model's own "
                "modules: use a packed mode (fp32, ...) with compile, or live without it"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.fast: FastDecoder | ModelForward
        if mode == "live":
            self.fast = ModelForward(model)
        else:
            try:
                self.fast = FastDecoder(model, mode=mode, compile=compile)
            except ConfigError:
                if mode != "fp32" or compile:
                    raise
                self.fast = ModelForward(model)  # e.g. BitNet layers: exact, just not packed
        self.mode = self.fast.mode  # "live" also for models that could not be packed

    @property
    def device(self) -> torch.device:
        return self.model.embed.tokens.weight.device

    def refresh(self) -> None:
        """Re-pack the weights from the model's current parameters, e.g. after an optimizer step, so that
        generation samples from the updated model. Live mode reads them on every call: nothing to do."""
        if isinstance(self.fast, FastDecoder):
            self.fast.refresh()

    # ------------------------------------------------------------------ ids in, ids out

    def stop_ids(self, config: GenerationConfig) -> set[int]:
        ids = {int(i) for i in config.stop_token_ids}
        eos = self.tokenizer.eos_id if self.tokenizer is not None else self.model.cfg.eos_token_id
        if eos is not None and not config.ignore_eos:
            ids.add(int(eos))
        return ids

    def _prompt_embeds(self, inputs_embeds: Sequence[Tensor]) -> list[Tensor]:
        d = self.model.cfg.d_model
        if any(not isinstance(e, Tensor) or e.ndim != 2 or e.shape[1] != d for e in inputs_embeds):
            raise DataError(f"inputs_embeds take one (tokens, {d}) tensor per prompt")
        if any(e.shape[0] == 0 for e in inputs_embeds):
            raise DataError("every prompt needs at least one embedding vector")
        return [e.detach() for e in inputs_embeds]

    @torch.no_grad()
    def _prefixed(self, prompts: Sequence[Sequence[int]], prefix: Tensor) -> list[Tensor]:
        """Each row's embeddings: the soft prompt `prefix` (n, d_model), then the prompt's token embeddings."""
        table, vocab = self.model.embed.tokens.weight, self.model.cfg.vocab_size
        if not isinstance(prefix, Tensor) or prefix.ndim != 2 or prefix.shape[1] != table.shape[1]:
            raise DataError(f"prefix_embeds must be one (n_tokens, {table.shape[1]}) tensor")
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise DataError(f"prompt token ids must be in [0, {vocab})")
        prefix = prefix.detach().to(table.device, table.dtype)
        rows = [torch.tensor([int(t) for t in p], dtype=torch.long, device=table.device) for p in prompts]
        return [torch.cat([prefix, table[ids]]) for ids in rows]

    def steps(
        self,
        prompts: Sequence[Sequence[int]] | None,
        config: GenerationConfig,
        inputs_embeds: Sequence[Tensor] | None = None,
        prefix_embeds: Tensor | None = None,
    ) -> Iterator[tuple[list[RowState], list[str]]]:
        """Run generation; after every step yield the rows (their `ids`, `done`, `finish_reason`) and the
        text piece each row released. The first yield comes right after the prefill; use this for
        progress reporting, timing or custom streaming of a batch.

        Prompts are token ids, or (`prompts=None`) `inputs_embeds`: one (T_i, d_model) tensor per row, which
        replaces the token lookup (positions are still added); the repetition penalty then counts generated
        tokens only, as there are no prompt ids.

        `prefix_embeds` (n, d_model) with token-id prompts: a soft prompt (prompt tuning) put before every
        row's token embeddings; the repetition penalty still counts the prompt ids, `prompt_tokens` counts
        the n prefix vectors too (they take context)."""
        if (prompts is None) == (inputs_embeds is None):
            raise ConfigError("pass exactly one of prompts (token ids) and inputs_embeds")
        prompt_ids = None
        if prefix_embeds is not None:
            if prompts is None:
                raise ConfigError("prefix_embeds go with token-id prompts; prepend them to inputs_embeds yourself")
            prompt_ids, inputs_embeds, prompts = prompts, self._prefixed(prompts, prefix_embeds), None
        embeds = None if inputs_embeds is None else self._prompt_embeds(inputs_embeds)
        lens = [len(p) for p in prompts] if embeds is None else [e.shape[0] for e in embeds]
        if not lens:
            return
        if any(n == 0 for n in lens):
            raise DataError("every prompt needs at least one token (add a BOS token to empty prompts)")
        if config.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer; pass one to Engine")
        vocab = self.model.cfg.vocab_size
        if embeds is None and any(not 0 <= t < vocab for p in prompts for t in p):
            raise DataError(f"prompt token ids must be in [0, {vocab})")
        bsz, longest = len(lens), max(lens)
        total = longest + config.max_new_tokens
        if total > self.model.cfg.max_seq_len:
            raise ConfigError(
                f"prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the model's "
                f"context of {self.model.cfg.max_seq_len} tokens; shorten the prompt or lower max_new_tokens"
            )
        rows = [RowState(self.tokenizer, config.stop, n, config.logprobs) for n in lens]
        if config.max_new_tokens == 0:
            yield rows, [""] * bsz
            return
        dev = self.device
        key_mask = torch.zeros(bsz, total, dtype=torch.bool, device=dev)
        for i, n in enumerate(lens):
            key_mask[i, longest - n : total] = True
        ids = x = None  # the prefill's input: token ids, or embeddings (both left-padded)
        if embeds is None:
            ids = torch.full((bsz, longest), self.model.cfg.pad_token_id, dtype=torch.long, device=dev)
            for i, p in enumerate(prompts):
                ids[i, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        else:
            weight = self.model.embed.tokens.weight
            x = torch.zeros(bsz, longest, weight.shape[1], dtype=weight.dtype, device=dev)
            for i, e in enumerate(embeds):
                x[i, longest - e.shape[0] :] = e
        padded = any(n != longest for n in lens)
        lengths = torch.tensor(lens, device=dev)
        positions = (key_mask[:, :longest].long().cumsum(-1) - 1).clamp_(min=0)
        if padded:
            causal = torch.ones(longest, longest, dtype=torch.bool, device=dev).tril()
            mask = (causal[None] & key_mask[:, None, :longest])[:, None]
            mask = mask | ~mask.any(-1, keepdim=True)  # padding queries attend to something (ignored)
            is_causal = False
        else:
            mask, is_causal = None, longest > 1
        stop_ids = self.stop_ids(config)
        generators = row_generators(bsz, config.seed, dev)
        seen = None
        if config.repetition_penalty != 1.0:
            seen = (
                seen_tokens(ids, key_mask[:, :longest].long(), vocab)
                if ids is not None
                else torch.zeros(bsz, vocab, dtype=torch.bool, device=dev)
            )
            for i, p in enumerate(() if prompt_ids is None else prompt_ids):  # behind a soft prompt: ids count
                seen[i, [int(t) for t in p]] = True
        cache = self.fast.new_cache(bsz, total)
        packed = self.fast.packs_weights
        if packed:
            logits = self.fast(ids, positions, cache, mask, is_causal, inputs_embeds=x)
        else:
            logits = self.fast(ids, positions, cache, key_mask[:, :longest] if padded else None, inputs_embeds=x)
        rows_idx = torch.arange(bsz, device=dev)
        no_logprobs = [None] * bsz
        for step in range(config.max_new_tokens):
            raw = logits
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
            nxt = sample_next(logits, config.temperature, config.top_k, config.top_p, generators)
            chosen = token_logprobs(raw, nxt).tolist() if config.logprobs else no_logprobs
            if seen is not None:
                seen[rows_idx, nxt] = True
            pieces = []
            tokens = nxt.tolist()
            for row, tok, logprob in zip(rows, tokens, chosen):
                pieces.append("" if row.done else row.add(tok, stop_ids, logprob))
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
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        prefix_embeds: Tensor | None = None,
    ) -> list[Completion]:
        """Generate for a batch of tokenised prompts at once; `prefix_embeds` (n, d_model): a soft prompt
        before every row (see `steps`)."""
        return self._complete(self.steps(prompts, config or GenerationConfig(), prefix_embeds=prefix_embeds))

    def generate_embeds(
        self, inputs_embeds: Sequence[Tensor], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for a batch of prompts given as input embeddings, one (T_i, d_model) tensor per row
        (left-padded like ids). A soft prompt: `torch.cat([prefix, model.embed.tokens(ids)])` per row. The
        repetition penalty counts generated tokens only."""
        return self._complete(self.steps(None, config or GenerationConfig(), inputs_embeds=inputs_embeds))

    @staticmethod
    def _complete(steps: Iterator[tuple[list[RowState], list[str]]]) -> list[Completion]:
        rows: list[RowState] = []
        for step_rows, _ in steps:
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
        self,
        prompts: str | list[str] | list[list[dict[str, str]]],
        config: GenerationConfig | None = None,
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
