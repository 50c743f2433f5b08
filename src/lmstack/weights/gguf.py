"""Llama-architecture GGUF files (llama.cpp's format) → `DecoderLM` + `Tokenizer` (writing: `gguf_write.py`).

Everything comes from the file: the config from `llama.*` metadata, the byte-level BPE tokenizer from
`tokenizer.ggml.*` (tokens + merges), the chat template from `tokenizer.chat_template`, the weights
dequantized with the `gguf` package. llama.cpp stores the rows of Q and K permuted for its interleaved
rotary layout; we undo that per head so the half-rotation RoPE of HF (and of `models/blocks.py`) applies.
Without the un-permutation the text still looks plausible while the logits are wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmstack.errors import WeightsError
from lmstack.models.config import ModelConfig, model_config, replace
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer

# Dequantization is delegated to `gguf.quants`; these are the types we test (others it supports work too).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


@dataclass
class GGUFFile:
    """The metadata (plain Python values) and the raw tensors (name → `ReaderTensor`) of one file."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open a GGUF file (memory-mapped: tensors are read when dequantized)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"GGUF file not found: {path}")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/struct errors on foreign or truncated files
        raise WeightsError(f"{path} is not a readable GGUF file ({exc})") from exc
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = field.contents()
    return GGUFFile(path, metadata, {t.name: t for t in reader.tensors})


def dequantize(tensor: Any) -> np.ndarray:
    """One GGUF tensor as a writable float32 array in PyTorch's (out, in) orientation."""
    qtype = GGMLQuantizationType(tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    if qtype == GGMLQuantizationType.F32:
        arr = np.array(tensor.data, dtype=np.float32)  # copy: the reader's arrays are read-only views
    else:
        try:
            arr = gguf_quants.dequantize(tensor.data, qtype).astype(np.float32, copy=False)
        except NotImplementedError as exc:
            raise WeightsError(f"tensor {tensor.name}: cannot dequantize type {qtype.name}") from exc
    return arr.reshape(shape)


def unpermute_qk(w: np.ndarray | torch.Tensor, n_heads: int) -> Any:
    """Undo llama.cpp's per-head row permutation of a Q or K projection (rows interleaved as pairs
    (2i, 2i+1) → half layout (i, i + head_dim/2))."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray | torch.Tensor, n_heads: int) -> Any:
    """The permutation llama.cpp applies on conversion (the inverse of `unpermute_qk`)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- config and tokenizer


def _arch(meta: dict[str, Any]) -> str:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise WeightsError(
            f"GGUF architecture {arch!r} is not supported; lmstack loads llama-architecture GGUF files "
            "(Llama, SmolLM, Mistral-style). Convert other models from their HF safetensors instead."
        )
    return arch


def config_from_gguf(meta: dict[str, Any], max_seq_len: int | None = None) -> ModelConfig:
    """A Llama-style `ModelConfig` from `llama.*` metadata."""
    arch = _arch(meta)

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise WeightsError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise WeightsError(f"GGUF uses RoPE scaling {scaling!r}, which lmstack does not implement")
    n_heads = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    head_dim = int(meta.get(f"{arch}.rope.dimension_count", d_model // n_heads))
    if head_dim * n_heads != d_model:
        raise WeightsError(f"GGUF rope dimension {head_dim} × {n_heads} heads != embedding length {d_model}")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(meta.get(f"{arch}.vocab_size", len(tokens) if tokens else 0))
    if vocab <= 0:
        raise WeightsError("GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    pad = meta.get("tokenizer.ggml.padding_token_id", eos)
    return model_config(
        "llama-tiny",
        vocab_size=vocab,
        d_model=d_model,
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        d_ff=int(get("feed_forward_length")),
        max_seq_len=int(max_seq_len or get("context_length")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_embeddings=True,  # set by the loader from the presence of output.weight
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        pad_token_id=int(pad if pad is not None else 0),
    )


def tokenizer_from_gguf(meta: dict[str, Any]) -> Tokenizer:
    """The byte-level BPE tokenizer stored in the metadata (GPT-2 style `tokenizer.ggml.model == "gpt2"`).

    Control tokens become special added tokens, user-defined ones plain added tokens. SmolLM's
    pre-tokenizer (`tokenizer.ggml.pre == "smollm"`) splits digits one by one before the byte-level regex,
    as the original HF tokenizer does.
    """
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise WeightsError(
            f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); load the "
            "model's tokenizer.json from its HF directory instead"
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    hf = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if meta.get("tokenizer.ggml.pre") == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    hf.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    hf.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == _TOKEN_CONTROL
    ]
    hf.add_special_tokens(specials)
    hf.add_tokens([AddedToken(tokens[i], normalized=False) for i, t in enumerate(types) if t == _TOKEN_USER_DEFINED])

    def role(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    roles = {
        "bos_token": role("bos_token_id"),
        "eos_token": role("eos_token_id"),
        "pad_token": role("padding_token_id"),
        "unk_token": role("unknown_token_id"),
        "mask_token": None,
    }
    return Tokenizer(hf, roles, meta.get("tokenizer.chat_template"))


# ----------------------------------------------------------------------------- weights


def state_dict_from_gguf(gf: GGUFFile, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Dequantized weights renamed to `DecoderLM` names, Q/K un-permuted, q|k|v and gate|up fused."""
    t = gf.tensors

    def get(name: str) -> np.ndarray:
        if name not in t:
            raise WeightsError(f"{gf.path}: tensor {name!r} is missing")
        return dequantize(t[name])

    sd: dict[str, torch.Tensor] = {
        "embed.tokens.weight": torch.from_numpy(get("token_embd.weight")),
        "norm.weight": torch.from_numpy(get("output_norm.weight")),
    }
    if "output.weight" in t:
        sd["lm_head.weight"] = torch.from_numpy(get("output.weight"))
    else:  # tied embeddings: the same tensor serves both
        sd["lm_head.weight"] = sd["embed.tokens.weight"]
    for i in range(cfg.n_layers):
        b, o = f"blk.{i}.", f"layers.{i}."
        q = unpermute_qk(get(b + "attn_q.weight"), cfg.n_heads)
        k = unpermute_qk(get(b + "attn_k.weight"), cfg.kv_heads)
        sd[o + "attn.qkv_proj.weight"] = torch.from_numpy(np.concatenate([q, k, get(b + "attn_v.weight")]))
        sd[o + "attn.o_proj.weight"] = torch.from_numpy(get(b + "attn_output.weight"))
        sd[o + "attn_norm.weight"] = torch.from_numpy(get(b + "attn_norm.weight"))
        sd[o + "mlp_norm.weight"] = torch.from_numpy(get(b + "ffn_norm.weight"))
        gate_up = np.concatenate([get(b + "ffn_gate.weight"), get(b + "ffn_up.weight")])
        sd[o + "mlp.up_proj.weight"] = torch.from_numpy(gate_up)
        sd[o + "mlp.down_proj.weight"] = torch.from_numpy(get(b + "ffn_down.weight"))
    known = {"token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight"}
    extra = [n for n in t if n not in known and not n.startswith("blk.")]
    if "rope_freqs.weight" in t:
        extra.append("rope_freqs.weight (Llama-3 RoPE scaling)")
    if extra:
        raise WeightsError(f"{gf.path}: tensors lmstack cannot place: {', '.join(extra[:5])}")
    return sd


def load_gguf(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, max_seq_len: int | None = None
) -> tuple[DecoderLM, Tokenizer]:
    """Load a llama-architecture GGUF file as (`DecoderLM` in eval mode, `Tokenizer`)."""
    gf = read_gguf(path)
    cfg = config_from_gguf(gf.metadata, max_seq_len)
    if "output.weight" in gf.tensors:
        cfg = replace(cfg, tie_embeddings=False)
    tokenizer = tokenizer_from_gguf(gf.metadata)
    sd = state_dict_from_gguf(gf, cfg)
    with torch.device("meta"):
        model = DecoderLM(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.tokens.weight
    _materialise_buffers(model)
    return model.to(dtype).eval(), tokenizer


def _materialise_buffers(model: torch.nn.Module) -> None:
    """Recompute non-persistent buffers (RoPE tables) that a meta-device construction left empty."""
    from lmstack.models.blocks import RotaryEmbedding

    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(module.cos.shape[-1], module.cos.shape[0], model.cfg.rope_theta)
            module.cos, module.sin = fresh.cos, fresh.sin
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise WeightsError(f"buffer {name} was not materialised")
