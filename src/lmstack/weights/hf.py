"""HF-layout checkpoints (`config.json` + `model.safetensors`, sharded or not) ↔ lmstack models.

Three families: Llama (also SmolLM, Mistral-style without sliding windows), GPT-2 (its `Conv1D` stores
weights as (in, out), so they are transposed) and BERT (post-norm encoder, optional MLM head). Our fused
projections are merged on load (q|k|v rows, gate|up rows) and split again on save, so a saved directory
loads in `transformers` unchanged. Key maps are plain lists of (our name, [(HF name, rows)], transpose).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lmstack.errors import WeightsError
from lmstack.fileio import atomic_directory
from lmstack.models.config import ModelConfig, model_config
from lmstack.models.decoder import DecoderLM
from lmstack.models.encoder import EncoderModel
from lmstack.tokenizer import Tokenizer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# (our parameter name, [(HF name, number of rows it contributes or None for all)], transpose)
KeyMap = list[tuple[str, list[tuple[str, int | None]], bool]]


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Translate a `config.json` dict of a llama / gpt2 / bert model into a `ModelConfig`."""
    kind = hf.get("model_type")
    if kind in ("llama", "mistral"):
        if hf.get("rope_scaling"):
            raise WeightsError(f"rope_scaling {hf['rope_scaling']} is not implemented in lmstack")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise WeightsError("Llama checkpoints with attention/mlp biases are not supported")
        if hf.get("sliding_window") and hf.get("sliding_window") < hf.get("max_position_embeddings", 0):
            raise WeightsError("sliding-window attention is not implemented in lmstack")
        if hf.get("hidden_act", "silu") != "silu":
            raise WeightsError(f"Llama hidden_act {hf.get('hidden_act')!r} is not supported (only silu)")
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, d // h):
            raise WeightsError(f"head_dim {hf['head_dim']} != hidden_size / heads; not supported")
        return model_config(
            "llama-tiny",
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["num_hidden_layers"],
            n_heads=h,
            n_kv_heads=hf.get("num_key_value_heads") or h,
            d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")) or 0,
        )
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}.get(act)
        if mlp is None:
            raise WeightsError(f"GPT-2 activation_function {act!r} is not supported")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise WeightsError("GPT-2 variants with per-layer attention scaling are not supported")
        d = hf["n_embd"]
        return model_config(
            "gpt-tiny",
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf["n_positions"],
            mlp=mlp,
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")) or 0,
        )
    if kind == "bert":
        act = hf.get("hidden_act", "gelu")
        mlp = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}.get(act)
        if mlp is None:
            raise WeightsError(f"BERT hidden_act {act!r} is not supported")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise WeightsError(f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported")
        return model_config(
            "bert-tiny",
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            mlp=mlp,
            pad_token_id=hf.get("pad_token_id") or 0,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )
    raise WeightsError(
        f"HF model_type {kind!r} is not supported; lmstack reads llama, mistral, gpt2 and bert checkpoints"
    )


def _first(value: Any) -> int | None:
    return value[0] if isinstance(value, list) and value else value


def hf_family(cfg: ModelConfig) -> str:
    """Which HF layout an lmstack config corresponds to ("llama", "gpt2" or "bert"). BitNet models have none:
    their BitLinear layers (ternary weights, per-layer norms) would load in `transformers` as dense ones."""
    if cfg.bitnet:
        raise WeightsError(
            "a BitNet model has no HF layout (transformers would read its ternary BitLinear layers as dense "
            "ones); save an lmstack checkpoint, or pack it with `lmstack quantize --bitnet`"
        )
    if (
        cfg.family == "decoder"
        and cfg.norm == "rmsnorm"
        and cfg.mlp == "swiglu"
        and cfg.position == "rope"
        and not cfg.bias
        and cfg.pre_norm
    ):
        return "llama"
    if (
        cfg.family == "decoder"
        and cfg.norm == "layernorm"
        and cfg.position == "learned"
        and cfg.bias
        and cfg.pre_norm
        and cfg.mlp in ("gelu_tanh", "gelu", "relu")
        and not cfg.embedding_norm
        and not cfg.type_vocab_size
    ):
        return "gpt2"
    if (
        cfg.family == "encoder"
        and cfg.norm == "layernorm"
        and cfg.position == "learned"
        and cfg.bias
        and not cfg.pre_norm
        and cfg.embedding_norm
        and cfg.mlp in ("gelu", "gelu_tanh", "relu")
    ):
        return "bert"
    raise WeightsError(
        "this model matches no HF layout lmstack can write (Llama: rmsnorm+swiglu+rope, no bias; GPT-2: "
        "pre-norm layernorm+learned positions+bias; BERT: post-norm encoder); save an lmstack checkpoint instead"
    )


def config_to_hf(cfg: ModelConfig, mlm_head: bool = False) -> dict[str, Any]:
    family = hf_family(cfg)
    if family == "llama":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads,
            "intermediate_size": cfg.d_ff,
            "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.norm_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "rope_scaling": None,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "torch_dtype": "float32",
        }
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.mlp]
    if family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "activation_function": act,
            "layer_norm_epsilon": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "torch_dtype": "float32",
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }
    return {
        "architectures": ["BertForMaskedLM" if mlm_head else "BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": act,
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


# ----------------------------------------------------------------------------- key maps


def key_map(cfg: ModelConfig, family: str, prefix: str = "", mlm_head: bool = False) -> KeyMap:
    """The full name correspondence for one model; `prefix` is the HF base-model prefix, if any."""
    q, kv, p = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, prefix
    m: KeyMap = []
    if family == "llama":
        m.append(("embed.tokens.weight", [(f"{p}embed_tokens.weight", None)], False))
        for i in range(cfg.n_layers):
            o, h = f"layers.{i}.", f"{p}layers.{i}."
            m += [
                (o + "attn_norm.weight", [(h + "input_layernorm.weight", None)], False),
                (
                    o + "attn.qkv_proj.weight",
                    [(h + f"self_attn.{n}_proj.weight", r) for n, r in (("q", q), ("k", kv), ("v", kv))],
                    False,
                ),
                (o + "attn.o_proj.weight", [(h + "self_attn.o_proj.weight", None)], False),
                (o + "mlp_norm.weight", [(h + "post_attention_layernorm.weight", None)], False),
                (
                    o + "mlp.up_proj.weight",
                    [(h + "mlp.gate_proj.weight", cfg.d_ff), (h + "mlp.up_proj.weight", cfg.d_ff)],
                    False,
                ),
                (o + "mlp.down_proj.weight", [(h + "mlp.down_proj.weight", None)], False),
            ]
        m.append(("norm.weight", [(f"{p}norm.weight", None)], False))
        if not cfg.tie_embeddings:
            m.append(("lm_head.weight", [("lm_head.weight", None)], False))
        return m
    if family == "gpt2":
        m += [
            ("embed.tokens.weight", [(f"{p}wte.weight", None)], False),
            ("embed.positions.weight", [(f"{p}wpe.weight", None)], False),
        ]
        for i in range(cfg.n_layers):
            o, h = f"layers.{i}.", f"{p}h.{i}."
            for ours, theirs, conv in (
                ("attn_norm", "ln_1", False),
                ("attn.qkv_proj", "attn.c_attn", True),
                ("attn.o_proj", "attn.c_proj", True),
                ("mlp_norm", "ln_2", False),
                ("mlp.up_proj", "mlp.c_fc", True),
                ("mlp.down_proj", "mlp.c_proj", True),
            ):
                m.append((f"{o}{ours}.weight", [(f"{h}{theirs}.weight", None)], conv))
                m.append((f"{o}{ours}.bias", [(f"{h}{theirs}.bias", None)], False))
        m += [("norm.weight", [(f"{p}ln_f.weight", None)], False), ("norm.bias", [(f"{p}ln_f.bias", None)], False)]
        if not cfg.tie_embeddings:
            m.append(("lm_head.weight", [("lm_head.weight", None)], False))
        return m
    if family == "bert":
        e = f"{p}embeddings."
        m += [
            ("embed.tokens.weight", [(e + "word_embeddings.weight", None)], False),
            ("embed.positions.weight", [(e + "position_embeddings.weight", None)], False),
            ("embed.token_types.weight", [(e + "token_type_embeddings.weight", None)], False),
            ("embed.norm.weight", [(e + "LayerNorm.weight", None)], False),
            ("embed.norm.bias", [(e + "LayerNorm.bias", None)], False),
        ]
        for i in range(cfg.n_layers):
            o, h = f"layers.{i}.", f"{p}encoder.layer.{i}."
            for t in ("weight", "bias"):
                m += [
                    (
                        f"{o}attn.qkv_proj.{t}",
                        [(f"{h}attention.self.{n}.{t}", r) for n, r in (("query", q), ("key", kv), ("value", kv))],
                        False,
                    ),
                    (f"{o}attn.o_proj.{t}", [(f"{h}attention.output.dense.{t}", None)], False),
                    (f"{o}attn_norm.{t}", [(f"{h}attention.output.LayerNorm.{t}", None)], False),
                    (f"{o}mlp.up_proj.{t}", [(f"{h}intermediate.dense.{t}", None)], False),
                    (f"{o}mlp.down_proj.{t}", [(f"{h}output.dense.{t}", None)], False),
                    (f"{o}mlp_norm.{t}", [(f"{h}output.LayerNorm.{t}", None)], False),
                ]
        if mlm_head:
            c = "cls.predictions."
            m += [
                ("mlm_head.dense.weight", [(c + "transform.dense.weight", None)], False),
                ("mlm_head.dense.bias", [(c + "transform.dense.bias", None)], False),
                ("mlm_head.norm.weight", [(c + "transform.LayerNorm.weight", None)], False),
                ("mlm_head.norm.bias", [(c + "transform.LayerNorm.bias", None)], False),
                ("mlm_head.bias", [(c + "bias", None)], False),
            ]
            if not cfg.tie_embeddings:
                m.append(("mlm_head.decoder.weight", [(c + "decoder.weight", None)], False))
        return m
    raise WeightsError(f"unknown HF family {family!r}")


# Buffers and heads that HF checkpoints carry but lmstack recomputes or does not have.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids", "rotary_emb.inv_freq")


def _normalise_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old BERT checkpoints name LayerNorm parameters gamma/beta."""
    out = {}
    for k, v in sd.items():
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def _detect_prefix(names: set[str], family: str) -> str:
    probe = {"llama": "embed_tokens.weight", "gpt2": "wte.weight", "bert": "embeddings.word_embeddings.weight"}[family]
    for prefix in {"llama": ("model.", ""), "gpt2": ("transformer.", ""), "bert": ("bert.", "")}[family]:
        if prefix + probe in names:
            return prefix
    raise WeightsError(f"no {probe} tensor found: this is not a {family} checkpoint")


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig, family: str) -> tuple[dict, bool]:
    """Our state dict from HF tensors (fused projections merged, Conv1D transposed).

    Returns (state dict, whether BERT's MLM head was present). Unknown tensors raise, so a checkpoint
    from a variant we do not model cannot load silently wrong."""
    hf_sd = _normalise_hf_keys(hf_sd)
    prefix = _detect_prefix(set(hf_sd), family)
    mlm = family == "bert" and any(k.startswith("cls.predictions.") for k in hf_sd)
    used: set[str] = set()
    sd = {}
    for ours, parts, transpose in key_map(cfg, family, prefix, mlm_head=mlm):
        tensors = []
        for name, rows in parts:
            if name not in hf_sd:
                raise WeightsError(f"HF checkpoint lacks tensor {name!r} (needed for {ours})")
            t = hf_sd[name]
            t = t.t() if transpose else t
            if rows is not None and t.shape[0] != rows:
                raise WeightsError(f"{name}: expected {rows} rows, found shape {tuple(t.shape)}")
            tensors.append(t)
            used.add(name)
        sd[ours] = tensors[0].contiguous() if len(tensors) == 1 else torch.cat(tensors)
    ignored = (
        "lm_head.weight",
        "cls.predictions.decoder.weight",
        f"{prefix}pooler.dense.weight",
        f"{prefix}pooler.dense.bias",
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    )
    unknown = [k for k in hf_sd if k not in used and k not in ignored and not k.endswith(_IGNORED_SUFFIXES)]
    if unknown:
        raise WeightsError(f"HF checkpoint has tensors lmstack cannot place: {', '.join(sorted(unknown)[:5])}")
    return sd, mlm


def state_dict_to_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF-named tensors of our model: fused projections split, GPT-2 Conv1D weights transposed."""
    cfg = model.cfg
    family = hf_family(cfg)
    mlm = family == "bert" and getattr(model, "mlm_head", None) is not None
    prefix = {"llama": "model.", "gpt2": "transformer.", "bert": "bert." if mlm else ""}[family]
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, parts, transpose in key_map(cfg, family, prefix, mlm_head=mlm):
        t = ours[name].detach()
        pieces = [t] if len(parts) == 1 else t.split([r for _, r in parts])
        for (hf_name, _), piece in zip(parts, pieces, strict=True):
            out[hf_name] = (piece.t() if transpose else piece).contiguous().clone()
    return out


# ----------------------------------------------------------------------------- files


def read_safetensors_dir(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors`, or of the shards that `model.safetensors.index.json` lists."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise WeightsError(f"{index}: not a valid safetensors index ({exc})") from exc
        files = sorted(set(weight_map.values()))
    elif (directory / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise WeightsError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        path = directory / f
        if not path.is_file():
            raise WeightsError(f"shard {f} listed in {INDEX_FILE} is missing from {directory}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                for k in fh.keys():
                    sd[k] = fh.get_tensor(k)
        except Exception as exc:  # safetensors raises its own SafetensorError on corrupt files
            if isinstance(exc, WeightsError):
                raise
            raise WeightsError(f"{path}: cannot read safetensors ({exc})") from exc
    return sd


def resolve_hf_dir(spec: str | os.PathLike) -> Path:
    """A local directory, or a hub id (`org/name`) fetched with `huggingface_hub` (config, tokenizer and
    safetensors only). Offline, a hub id fails with a message instead of hanging."""
    path = Path(spec)
    if path.is_dir():
        return path
    spec = str(spec)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")) or spec.endswith("/"):
        raise WeightsError(f"{spec}: no such directory (and not a hub id of the form org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise WeightsError(
            f"{spec} is not a local directory; to fetch it as a hub id, `pip install huggingface_hub`"
        ) from exc
    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as exc:  # network, auth, missing repo: all mean the same to the user
        raise WeightsError(
            f"{spec} is not a local directory, and fetching it from the HF hub failed ({type(exc).__name__}: "
            f"{exc}). Check the path, or download the model where there is network access and pass the "
            "local directory."
        ) from exc


def load_hf(
    spec: str | os.PathLike, dtype: torch.dtype = torch.float32, with_mlm_head: bool | None = None
) -> tuple[nn.Module, Tokenizer | None]:
    """Load an HF checkpoint directory (or hub id) as (`DecoderLM` or `EncoderModel`, `Tokenizer` or None).

    The tokenizer is read from `tokenizer.json` beside the weights when present."""
    directory = resolve_hf_dir(spec)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{directory} has no config.json; is it an HF model directory?")
    try:
        hf_cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{config_file}: invalid JSON ({exc})") from exc
    cfg = config_from_hf(hf_cfg)
    family = hf_cfg["model_type"] if hf_cfg["model_type"] != "mistral" else "llama"
    hf_sd = read_safetensors_dir(directory)
    if family != "bert" and not cfg.tie_embeddings and "lm_head.weight" not in hf_sd:
        cfg = replace(cfg, tie_embeddings=True)  # some exports omit the duplicate head
    sd, mlm = state_dict_from_hf(hf_sd, cfg, family)
    if family == "bert":
        mlm = mlm if with_mlm_head is None else with_mlm_head
        if mlm and "mlm_head.dense.weight" not in sd:
            raise WeightsError(f"{directory} has no MLM head (cls.predictions.*)")
        if not mlm:
            sd = {k: v for k, v in sd.items() if not k.startswith("mlm_head.")}
        with torch.device("meta"):
            model: nn.Module = EncoderModel(cfg, mlm_head=mlm)
        if mlm and not cfg.tie_embeddings and "mlm_head.decoder.weight" not in sd:
            sd["mlm_head.decoder.weight"] = hf_sd["cls.predictions.decoder.weight"]
    else:
        with torch.device("meta"):
            model = DecoderLM(cfg)
    if cfg.tie_embeddings:
        head = "lm_head.weight" if family != "bert" else "mlm_head.decoder.weight"
        if head in model.state_dict():
            sd[head] = sd["embed.tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_embeddings:
        if family != "bert":
            model.lm_head.weight = model.embed.tokens.weight
        elif model.mlm_head is not None:
            model.mlm_head.decoder.weight = model.embed.tokens.weight
    _rebuild_buffers(model)
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(directory)
        # Some tokenizer.json files bake in fixed padding/truncation; transformers overrides those per call.
        tokenizer.hf.no_padding()
        tokenizer.hf.no_truncation()
    return model.to(dtype).eval(), tokenizer


def _rebuild_buffers(model: nn.Module) -> None:
    """Non-persistent buffers (RoPE, sinusoid tables) of a meta-built model, computed for real."""
    from lmstack.models.blocks import RotaryEmbedding, sinusoidal_table

    cfg = model.cfg
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
            module.cos, module.sin = fresh.cos, fresh.sin
        if getattr(module, "sinusoid", None) is not None and module.sinusoid.is_meta:
            module.sinusoid = sinusoidal_table(cfg.max_seq_len, cfg.d_model)
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise WeightsError(f"internal: buffer {name} was not materialised")


def save_hf(
    model: nn.Module,
    directory: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write `model` (+ tokenizer) as an HF directory that `transformers` loads. With `max_shard_bytes`,
    tensors are split over `model-0000i-of-0000n.safetensors` files plus an index. The directory is
    assembled in a temporary sibling and renamed into place."""
    directory = Path(directory)
    adapted = [
        n for n, m in model.named_modules() if set(getattr(m, "lora_active", ())) - set(getattr(m, "lora_merged", ()))
    ]
    if adapted:  # the base's names would be saved without the adapters' contribution
        raise WeightsError(
            f"{adapted[0]} carries active LoRA adapters, which an HF model directory cannot hold: merge them "
            "first (lmstack.finetune.lora.unload_lora(model, merge=True)) or save them with save_adapter"
        )
    family_cfg = config_to_hf(model.cfg, mlm_head=getattr(model, "mlm_head", None) is not None)
    tensors = state_dict_to_hf(model)
    family_cfg["torch_dtype"] = saved_dtype(tensors)
    with atomic_directory(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(family_cfg, indent=2))
        shards = _plan_shards(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, names in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file({n: tensors[n] for n in names}, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(names, fname))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory


def saved_dtype(tensors: dict[str, torch.Tensor]) -> str:
    """The `torch_dtype` a config should name: that of most floating-point parameters saved (a bf16 model
    labelled float32 would make `from_pretrained(torch_dtype="auto")` load it at the wrong precision)."""
    counts: dict[torch.dtype, int] = {}
    for t in tensors.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return str(max(counts, key=counts.get)).removeprefix("torch.") if counts else "float32"


def _plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int | None) -> list[list[str]]:
    if not max_bytes:
        return [list(tensors)]
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards
