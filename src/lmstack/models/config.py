"""`ModelConfig`: one frozen dataclass describes all three transformer families, plus named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lmstack.config import from_dict
from lmstack.errors import ConfigError

Family = Literal["decoder", "encoder", "seq2seq"]


@dataclass(frozen=True)
class ModelConfig:
    family: Family = "decoder"
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None = n_heads (multi-head); fewer = grouped-query attention
    d_ff: int = 3072
    max_seq_len: int = 1024
    n_decoder_layers: int | None = None  # seq2seq only; None = n_layers
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    pre_norm: bool = True  # False = post-norm (BERT, original Transformer)
    mlp: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu"] = "gelu_tanh"
    position: Literal["learned", "sinusoidal", "rope", "none"] = "learned"
    rope_theta: float = 10000.0
    bias: bool = True  # biases in linear layers
    tie_embeddings: bool = True
    dropout: float = 0.0
    type_vocab_size: int = 0  # BERT token types; 0 disables
    embedding_norm: bool = False  # LayerNorm right after the embeddings (BERT)
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None  # seq2seq: first decoder input (defaults to pad)
    init_std: float = 0.02
    bitnet: bool = False  # BitNet b1.58: every block linear layer is a ternary BitLinear (models/bitnet.py)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope needs an even head_dim, got {self.head_dim}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers


_GPT2 = dict(family="decoder", norm="layernorm", mlp="gelu_tanh", position="learned", bias=True, norm_eps=1e-5)
_LLAMA = dict(family="decoder", norm="rmsnorm", mlp="swiglu", position="rope", bias=False, norm_eps=1e-5)
_BERT = dict(
    family="encoder",
    norm="layernorm",
    mlp="gelu",
    position="learned",
    bias=True,
    pre_norm=False,
    embedding_norm=True,
    type_vocab_size=2,
    norm_eps=1e-12,
)
_T5 = dict(family="seq2seq", norm="rmsnorm", mlp="geglu", position="rope", bias=False, norm_eps=1e-6)
_BART = dict(family="seq2seq", norm="layernorm", mlp="gelu", position="learned", bias=True, embedding_norm=True)

PRESETS: dict[str, dict[str, Any]] = {
    # real shapes
    "gpt2-124m": dict(_GPT2, vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024),
    "smollm2-135m": dict(
        _LLAMA,
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
    "minilm-l6": dict(
        _BERT,
        vocab_size=30522,
        d_model=384,
        n_layers=6,
        n_heads=12,
        d_ff=1536,
        max_seq_len=512,
        pad_token_id=0,
    ),
    # tiny sizes for tests and laptop recipes
    "gpt-tiny": dict(_GPT2, vocab_size=2048, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=256),
    "llama-tiny": dict(
        _LLAMA,
        vocab_size=2048,
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        d_ff=352,
        max_seq_len=256,
    ),
    "bert-tiny": dict(_BERT, vocab_size=2048, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=256),
    "t5-tiny": dict(_T5, vocab_size=2048, d_model=128, n_layers=3, n_heads=4, d_ff=352, max_seq_len=256),
    "bart-tiny": dict(_BART, vocab_size=2048, d_model=128, n_layers=3, n_heads=4, d_ff=512, max_seq_len=256),
}


def model_config(preset: str | None = None, **overrides: Any) -> ModelConfig:
    """A preset by name with keyword overrides, e.g. `model_config("llama-tiny", n_layers=2)`."""
    return model_config_from_dict({"preset": preset, **overrides} if preset else overrides)


def model_config_from_dict(data: dict[str, Any], path: str = "model") -> ModelConfig:
    """Build a ModelConfig from a recipe's `model:` section: an optional `preset` plus overriding keys."""
    data = dict(data or {})
    preset = data.pop("preset", None)
    base = None
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{path}.preset: unknown preset {preset!r}. Allowed values: {', '.join(PRESETS)}")
        base = from_dict(ModelConfig, PRESETS[preset], path=path)
    return from_dict(ModelConfig, data, path=path, base=base)


def replace(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    return dataclasses.replace(cfg, **changes)
