"""Prompt tuning (Lester et al., 2021): n trainable "virtual token" embeddings before the input embeddings of
a frozen decoder. Only the n × d_model prompt trains; the base, its embedding table and head stay frozen.

Layout. A sample's n virtual tokens go right before its first real token: [V, text, pad] in a right-padded
row, [pad, V, text] in a left-padded one (the layout of `Engine` when it generates), and before every sample
of a packed row (`segment_ids`), so packed samples each see their own prompt and stay independent. Positions
follow peft: the virtual tokens take positions 0..n-1 and the text is shifted by n (a token at position p
sits at n + p), so training, generation and peft's HF models all place the same token at the same
position. Every real token attends to its sample's virtual tokens; padding is masked as before.

`PromptTuned(base, cfg)` takes the usual batch keys (`input_ids`, `attention_mask`, `positions`,
`segment_ids`) and returns the logits of the real tokens only, (B, T, vocab): labels need no change (the
virtual tokens have none), so every lmstack loss (`causal_lm_loss`, `completion_loss`) works unchanged.

On disk a prompt is a peft directory: `adapter_config.json` (peft's PROMPT_TUNING config: num_virtual_tokens,
token_dim, num_layers, ...) and `adapter_model.safetensors` holding one (n, d_model) tensor,
`prompt_embeddings`, so `peft.PeftModel.from_pretrained` loads it onto the HF export of the base and peft's
prompts load here. The safetensors header also records the base's shape (vocab size included) and the
`PromptTuningConfig`; `load_prompt` refuses a prompt made for another base.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lmstack.errors import CheckpointError, ConfigError
from lmstack.fileio import atomic_directory, write_json
from lmstack.generate.engine import Completion, Engine
from lmstack.generate.sampling import GenerationConfig
from lmstack.models.blocks import segment_positions
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer

INITS = ("random", "sample_vocab", "text")
_PEFT_INIT = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB", "text": "TEXT"}
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY = "prompt_embeddings"  # the parameter's name in `PromptTuned` and the tensor's in the file (peft's name)
_META_BASE, _META_CONFIG = "lmstack.base", "lmstack.prompt_config"


@dataclass(frozen=True)
class PromptTuningConfig:
    """`n_tokens` virtual tokens, initialised by `init`:
    - "random": N(0, σ²), σ the std of the base's embedding table (the scale real token embeddings have);
    - "sample_vocab": rows of the embedding table drawn with `seed` (distinct while the vocabulary allows),
      never one of `exclude_ids` nor, given a tokenizer, one of its special tokens;
    - "text": the embeddings of `init_text`'s tokens, repeated or cut to n (needs the base's tokenizer); a
      task description, or Lester's class-label init with the labels' text."""

    n_tokens: int = 20
    init: str = "random"
    init_text: str | None = None
    exclude_ids: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.exclude_ids, list):
            object.__setattr__(self, "exclude_ids", tuple(self.exclude_ids))
        if not isinstance(self.n_tokens, int) or isinstance(self.n_tokens, bool) or self.n_tokens <= 0:
            raise ConfigError(f"prompt_tuning.n_tokens must be a positive integer, got {self.n_tokens!r}")
        if self.init not in INITS:
            raise ConfigError(f"prompt_tuning.init must be one of {', '.join(INITS)}; got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("prompt_tuning.init=text needs a non-empty prompt_tuning.init_text")
        if self.init != "text" and self.init_text is not None:
            raise ConfigError(f"prompt_tuning.init_text is used only with init=text (init is {self.init!r})")


def initial_prompt(embedding: Tensor, cfg: PromptTuningConfig, tokenizer: Tokenizer | None = None) -> Tensor:
    """The (n_tokens, d) starting prompt for an embedding table (vocab, d), in fp32 on the table's device;
    the same for the same seed on any device (drawn on the CPU)."""
    table = embedding.detach()
    vocab, d = table.shape
    n, gen = cfg.n_tokens, torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "random":
        return (torch.randn(n, d, generator=gen) * table.float().std().item()).to(table.device)
    if cfg.init == "sample_vocab":
        banned = set(cfg.exclude_ids) | (tokenizer.special_ids() if tokenizer is not None else set())
        if any(not 0 <= i < vocab for i in cfg.exclude_ids):
            raise ConfigError(f"prompt_tuning.exclude_ids must be token ids in [0, {vocab}), got {cfg.exclude_ids}")
        allowed = torch.ones(vocab, dtype=torch.bool)
        allowed[sorted(i for i in banned if 0 <= i < vocab)] = False
        pool = allowed.nonzero().squeeze(1)
        if not len(pool):
            raise ConfigError("prompt_tuning.exclude_ids leaves no token to sample the initial prompt from")
        draw = (
            torch.randperm(len(pool), generator=gen)[:n]
            if n <= len(pool)
            else torch.randint(len(pool), (n,), generator=gen)
        )
        ids = pool[draw]
    else:
        if tokenizer is None:
            raise ConfigError("prompt_tuning.init=text needs the base's tokenizer: PromptTuned(base, cfg, tokenizer)")
        text_ids = tokenizer.encode(cfg.init_text)
        if not text_ids:
            raise ConfigError(f"prompt_tuning.init_text {cfg.init_text!r} encodes to no tokens")
        if max(text_ids) >= vocab:
            raise ConfigError(f"the tokenizer gives ids up to {max(text_ids)}, beyond the base's vocabulary of {vocab}")
        ids = torch.tensor((text_ids * math.ceil(n / len(text_ids)))[:n])
    return table[ids.to(table.device)].float()


# ----------------------------------------------------------------------------- the layout of a batch


@dataclass
class SoftPromptLayout:
    """Where a batch's tokens and virtual tokens go in the longer rows (B, L) that the base sees. `source`
    indexes the rows of [token embeddings (B·T, d); prompt (n, d)]; `token_slots` (B, T) is each input
    token's column, where its output is read back."""

    source: Tensor
    token_slots: Tensor
    attention_mask: Tensor
    positions: Tensor
    segment_ids: Tensor | None

    @property
    def width(self) -> int:
        return self.source.shape[1]


def soft_prompt_layout(
    input_ids: Tensor,
    n_tokens: int,
    attention_mask: Tensor | None = None,
    positions: Tensor | None = None,
    segment_ids: Tensor | None = None,
) -> SoftPromptLayout:
    """Put `n_tokens` virtual tokens before each sample's first real token (each segment's, in packed rows):
    positions 0..n-1 for them, the text's positions (given, or counted over real tokens / within segments)
    shifted by n. A row without real tokens gets no prompt."""
    bsz, seq = input_ids.shape
    dev, n = input_ids.device, n_tokens
    if segment_ids is not None:
        real = attention_mask.bool() if attention_mask is not None else segment_ids > 0
        starts = segment_ids > 0
        starts[:, 1:] &= segment_ids[:, 1:] != segment_ids[:, :-1]
        if positions is None:
            positions = segment_positions(segment_ids)
    else:
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        starts = real & (real.long().cumsum(1) == 1)
        if positions is None:
            positions = (real.long().cumsum(1) - 1).clamp_(min=0)
    before = starts.long().cumsum(1)  # prompts placed at or before each token
    slots = torch.arange(seq, device=dev) + n * before
    width = seq + n * int(before[:, -1].max()) if seq else 0
    rows = torch.arange(bsz, device=dev)[:, None]
    source = torch.zeros(bsz, width, dtype=torch.long, device=dev)
    mask = torch.zeros(bsz, width, dtype=torch.bool, device=dev)
    pos = torch.zeros(bsz, width, dtype=torch.long, device=dev)
    source[rows, slots] = rows * seq + torch.arange(seq, device=dev)
    mask[rows, slots] = real
    pos[rows, slots] = positions.long() + n
    seg = None
    if segment_ids is not None:
        seg = torch.zeros(bsz, width, dtype=segment_ids.dtype, device=dev)
        seg[rows, slots] = segment_ids
    b, t = starts.nonzero(as_tuple=True)
    k = torch.arange(n, device=dev)
    vb, vt = b[:, None].expand(-1, n), slots[b, t][:, None] - n + k
    source[vb, vt] = bsz * seq + k
    mask[vb, vt] = True
    pos[vb, vt] = k
    if seg is not None:
        seg[vb, vt] = segment_ids[b, t][:, None]
    return SoftPromptLayout(source, slots, mask, pos, seg)


# ----------------------------------------------------------------------------- the model


class PromptTuned(nn.Module):
    """A frozen `DecoderLM` (`base`) behind n trainable virtual-token embeddings, `prompt_embeddings` (n, d;
    fp32, or fp64 on an fp64 base, like LoRA adapters). `cfg` is the base's ModelConfig (as on every lmstack
    model), `prompt_config` the PromptTuningConfig. `embeddings` gives the prompt's values instead of
    initialising them (loading). Generate with `generate_with_prompt` on an `Engine(model.base)`."""

    def __init__(
        self,
        base: DecoderLM,
        cfg: PromptTuningConfig | None = None,
        tokenizer: Tokenizer | None = None,
        embeddings: Tensor | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or PromptTuningConfig()
        if not isinstance(base, DecoderLM):
            raise ConfigError(f"prompt tuning needs a decoder-only DecoderLM base, got {type(base).__name__}")
        if cfg.n_tokens >= base.cfg.max_seq_len:
            raise ConfigError(
                f"prompt_tuning.n_tokens ({cfg.n_tokens}) leaves no room for text in the base's context of "
                f"{base.cfg.max_seq_len} tokens"
            )
        weight = base.embed.tokens.weight
        if embeddings is None:
            embeddings = initial_prompt(weight, cfg, tokenizer)
        elif tuple(embeddings.shape) != (cfg.n_tokens, weight.shape[1]):
            raise ConfigError(
                f"prompt embeddings of shape {tuple(embeddings.shape)} do not fit {cfg.n_tokens} virtual tokens "
                f"of a base with d_model {weight.shape[1]}"
            )
        self.base, self.cfg, self.prompt_config = base, base.cfg, cfg
        base.requires_grad_(False)
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.prompt_embeddings = nn.Parameter(embeddings.detach().to(weight.device, dtype).clone())

    @property
    def n_tokens(self) -> int:
        return self.prompt_embeddings.shape[0]

    def layout(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> SoftPromptLayout:
        """The batch's layout with the prompt (see `soft_prompt_layout`), checked against the context."""
        layout = soft_prompt_layout(input_ids, self.n_tokens, attention_mask, positions, segment_ids)
        limit = self.cfg.max_seq_len
        longest = int(layout.positions.max()) + 1 if layout.width else 0
        if layout.width > limit or longest > limit:
            packed = " (in a packed row, each sample gets its own virtual tokens)" if segment_ids is not None else ""
            raise ConfigError(
                f"{self.n_tokens} virtual tokens + {input_ids.shape[1]} tokens need {max(layout.width, longest)} "
                f"positions{packed}, more than the base's max_seq_len of {limit}; shorten the inputs or lower "
                "prompt_tuning.n_tokens"
            )
        return layout

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """The base's final hidden states (B, T, d) at the input tokens, with the prompt before each sample."""
        bsz, seq = input_ids.shape
        layout = self.layout(input_ids, attention_mask, positions, segment_ids)
        tokens = self.base.embed.tokens(input_ids)
        table = torch.cat([tokens.reshape(bsz * seq, -1), self.prompt_embeddings.to(tokens.dtype)])
        mask = None if segment_ids is None and bool(layout.attention_mask.all()) else layout.attention_mask
        hidden = self.base.hidden_states(
            inputs_embeds=table[layout.source],
            attention_mask=mask,
            positions=layout.positions,
            segment_ids=layout.segment_ids,
        )
        return hidden[torch.arange(bsz, device=hidden.device)[:, None], layout.token_slots]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        segment_ids: Tensor | None = None,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, vocab) of the input tokens, aligned with `input_ids` and its labels; with a bool
        (B, T) `logits_at`, those positions' logits only, flat (N, vocab), as `DecoderLM.forward`."""
        hidden = self.hidden_states(input_ids, attention_mask, positions, segment_ids)
        return self.base.lm_head(hidden if logits_at is None else hidden[logits_at])


def is_prompt_key(name: str) -> bool:
    """True for the prompt tensor: a `TrainingJob.state_filter` that makes checkpoints hold the prompt only."""
    return name.rsplit(".", 1)[-1] == KEY


def prompt_parameters(model: PromptTuned) -> list[nn.Parameter]:
    """The parameters to give the optimizer: the prompt, nothing else."""
    return [model.prompt_embeddings]


# ----------------------------------------------------------------------------- generation


def _is_text(prompt: Any) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict))


def generate_with_prompt(
    engine: Engine,
    model: PromptTuned,
    prompts: str | Sequence[str] | Sequence[Sequence[int]] | Sequence[list[dict[str, str]]],
    config: GenerationConfig | None = None,
    chat: bool = False,
) -> list[Completion]:
    """Generate behind the tuned prompt with `engine` (built on `model.base`, any mode; the prompt is read
    at every call, so training it needs no `refresh`): a batch of token-id lists, strings or chats, prefilled
    as [virtual tokens; prompt] through the KV cache and decoded as usual. Greedy output equals
    full-recompute decoding with `model`; the repetition penalty counts the prompt ids."""
    if engine.model is not model.base:
        raise ConfigError("the engine runs another model: build it on the tuned model's base, Engine(model.base)")
    config = config or GenerationConfig()
    if _is_text(prompts):
        prompts = [prompts]
    rows = [engine.encode_prompt(p, chat) if _is_text(p) else [int(t) for t in p] for p in prompts]
    longest = max((len(r) for r in rows), default=0)
    if model.n_tokens + longest + config.max_new_tokens > model.cfg.max_seq_len:
        raise ConfigError(
            f"{model.n_tokens} virtual tokens + prompt ({longest} tokens) + max_new_tokens "
            f"({config.max_new_tokens}) exceed the base's context of {model.cfg.max_seq_len} tokens; shorten the "
            "prompt or lower max_new_tokens"
        )
    return engine.generate_ids(rows, config, prefix_embeds=model.prompt_embeddings)


# ----------------------------------------------------------------------------- saving and loading


def _base_identity(cfg: Any) -> dict[str, Any]:
    return {"d_model": cfg.d_model, "vocab_size": cfg.vocab_size, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads}


def save_prompt(
    model: PromptTuned, directory: str | os.PathLike, base_name: str | None = None, tokenizer_name: str | None = None
) -> Path:
    """Write the prompt as a peft PROMPT_TUNING directory, atomically. `base_name` (the base's HF id or path)
    goes to `base_model_name_or_path`, which `load_prompt` can check; `tokenizer_name` (default `base_name`)
    to `tokenizer_name_or_path`, which peft requires of a text-initialised prompt."""
    cfg, mcfg = model.prompt_config, model.cfg
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "auto_mapping": None,
        "base_model_name_or_path": base_name,
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": model.n_tokens,
        "token_dim": mcfg.d_model,
        "num_transformer_submodules": 1,
        "num_attention_heads": mcfg.n_heads,
        "num_layers": mcfg.n_layers,
        "modules_to_save": None,
        "prompt_tuning_init": _PEFT_INIT[cfg.init],
        "prompt_tuning_init_text": cfg.init_text,
        "tokenizer_name_or_path": tokenizer_name or (base_name if cfg.init == "text" else None),
        "tokenizer_kwargs": None,
    }
    metadata = {
        "format": "pt",
        _META_BASE: json.dumps(_base_identity(mcfg)),
        _META_CONFIG: json.dumps(asdict(cfg)),
    }
    tensor = model.prompt_embeddings.detach().cpu().contiguous()
    with atomic_directory(directory) as tmp:
        save_file({KEY: tensor}, str(tmp / WEIGHTS_FILE), metadata=metadata)
        write_json(tmp / CONFIG_FILE, config)
    return Path(directory)


def read_prompt(directory: str | os.PathLike) -> tuple[Tensor, dict[str, Any], dict[str, str]]:
    """(prompt (n, d), adapter config, safetensors metadata) of a prompt directory, ours or peft's."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}: not a prompt saved by save_prompt or peft") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE} is unreadable ({exc})") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "PROMPT_TUNING":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{directory} holds a {kind!r} adapter, not a PROMPT_TUNING prompt")
    try:
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
            keys, metadata = list(f.keys()), f.metadata() or {}
            if keys != [KEY]:
                raise CheckpointError(f"{directory / WEIGHTS_FILE} holds {keys}, expected the one tensor {KEY!r}")
            tensor = f.get_tensor(KEY)
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is missing or corrupt ({exc})") from exc
    return tensor, config, metadata


def _saved_config(directory: Path, config: dict[str, Any], metadata: dict[str, str]) -> PromptTuningConfig:
    """Ours from the header; a peft prompt's from its config (its init text kept only for a text init)."""
    try:
        if _META_CONFIG in metadata:
            return PromptTuningConfig(**json.loads(metadata[_META_CONFIG]))
        init = {v: k for k, v in _PEFT_INIT.items()}.get(str(config.get("prompt_tuning_init")).upper(), "random")
        text = config.get("prompt_tuning_init_text") if init == "text" else None
        if init == "text" and not text:
            init = "random"  # a text init whose text is lost: the values are what matters
        return PromptTuningConfig(int(config["num_virtual_tokens"]), init, text)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{directory}: the prompt's config is malformed ({exc})") from exc


def _check_base(
    directory: Path, tensor: Tensor, config: dict[str, Any], metadata: dict[str, str], base: DecoderLM
) -> None:
    """Refuse a prompt made for another base, naming each difference."""
    saved = {
        "d_model": config.get("token_dim"),
        "n_layers": config.get("num_layers"),
        "n_heads": config.get("num_attention_heads"),
    }
    if _META_BASE in metadata:
        saved.update(json.loads(metadata[_META_BASE]))
    ours = _base_identity(base.cfg)
    wrong = [f"{k} {saved[k]} (this base: {ours[k]})" for k in ours if saved.get(k) is not None and saved[k] != ours[k]]
    if wrong:
        raise CheckpointError(f"{directory} is a prompt for another base: {', '.join(wrong)}")
    subs = config.get("num_transformer_submodules") or 1
    n = config.get("num_virtual_tokens")
    if subs != 1 or tensor.ndim != 2 or tensor.shape != (n, ours["d_model"]):
        raise CheckpointError(
            f"{directory}: prompt tensor of shape {tuple(tensor.shape)} for {n} virtual tokens × {subs} submodules; "
            f"a decoder-only base with d_model {ours['d_model']} needs ({n}, {ours['d_model']})"
        )


def load_prompt(
    base: DecoderLM, directory: str | os.PathLike, base_name: str | None = None, trainable: bool = False
) -> PromptTuned:
    """The prompt in `directory` (saved by `save_prompt` or peft) in front of `base`; frozen unless
    `trainable` (peft's `is_trainable`). A prompt for another base (d_model, vocabulary, depth, heads, or,
    with `base_name`, another `base_model_name_or_path`) fails with a CheckpointError naming the mismatch."""
    directory = Path(directory)
    tensor, config, metadata = read_prompt(directory)
    saved_name = config.get("base_model_name_or_path")
    if base_name is not None and saved_name not in (None, base_name):
        raise CheckpointError(f"{directory} is a prompt for {saved_name!r}, not for {base_name!r}")
    _check_base(directory, tensor, config, metadata, base)
    model = PromptTuned(base, _saved_config(directory, config, metadata), embeddings=tensor)
    model.prompt_embeddings.requires_grad_(trainable)
    return model
