"""`DecoderLM` + `Tokenizer` → a llama-architecture GGUF file that llama.cpp runs and `load_gguf` reads back.

The metadata follows the keys llama.cpp's own converter writes for a Llama with a GPT-2-style byte-level
BPE tokenizer: `llama.*` hyperparameters, `tokenizer.ggml.*` (tokens, token types, merges, pre-tokenizer
name, special-token ids, chat template), `general.file_type` / `general.quantization_version`. Q and K rows
are permuted per head into llama.cpp's interleaved rotary layout (`permute_qk`, the inverse of what the
loader undoes); a file written without it loads and runs but gives wrong logits. Tensors keep llama.cpp's
names (`blk.N.attn_q.weight`, ...); 1-D tensors (norms) stay F32, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType
from gguf import quants as gguf_quants

from lmstack.errors import WeightsError
from lmstack.fileio import fsync_dir
from lmstack.models.config import ModelConfig
from lmstack.models.decoder import DecoderLM
from lmstack.tokenizer import Tokenizer
from lmstack.weights.gguf import SUPPORTED_TYPES, permute_qk
from lmstack.weights.hf import hf_family

FILE_TYPES = {
    "F32": LlamaFileType.ALL_F32,
    "F16": LlamaFileType.MOSTLY_F16,
    "BF16": LlamaFileType.MOSTLY_BF16,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": LlamaFileType.MOSTLY_Q4_1,
}
# `tokenizer.ggml.pre` names llama.cpp knows (it refuses others) → the HF pre-tokenizer each one reproduces
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
PRE_TOKENIZERS = {"gpt-2": "byte-level BPE regex", "smollm": "single digits, then the byte-level BPE regex"}


def check_gguf_model(cfg: ModelConfig) -> None:
    """Raise unless `cfg` is a Llama-style decoder, the one layout llama.cpp's "llama" architecture (and
    `load_gguf`) implements."""
    try:
        family = hf_family(cfg)
    except WeightsError:
        family = None
    if family != "llama":
        traits = [cfg.family, cfg.norm, cfg.mlp, f"{cfg.position} positions"] + ["biases"] * cfg.bias
        raise WeightsError(
            "GGUF export supports Llama-style decoders only (rmsnorm + swiglu + rope, no biases, not BitNet); "
            f"this model is: {', '.join(traits + ['BitNet'] * cfg.bitnet)}. Export it with --format hf (Llama, "
            "GPT-2, BERT) or --format safetensors."
        )


def save_gguf(
    model: DecoderLM, tokenizer: Tokenizer, path: str | os.PathLike, qtype: str = "F32", name: str = "lmstack"
) -> Path:
    """Write a Llama-style `DecoderLM` and its byte-level BPE tokenizer as one GGUF file, atomically.

    `qtype` (one of SUPPORTED_TYPES) applies to the 2-D weights; norms stay F32."""
    cfg = model.cfg
    check_gguf_model(cfg)
    qtype = qtype.upper()
    if qtype not in SUPPORTED_TYPES:
        raise WeightsError(f"GGUF type {qtype!r} not supported; choose one of {', '.join(SUPPORTED_TYPES)}")
    vocab = tokenizer_metadata(tokenizer, cfg.vocab_size)  # checked before anything is written
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        w = GGUFWriter(tmp, "llama")
        _write_hparams(w, cfg, name, qtype)
        _write_vocab(w, vocab)
        _write_tensors(w, model, GGMLQuantizationType[qtype])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_hparams(w: GGUFWriter, cfg: ModelConfig, name: str, qtype: str) -> None:
    w.add_type("model")
    w.add_name(name)
    w.add_file_type(int(FILE_TYPES[qtype]))
    w.add_quantization_version(GGML_QUANT_VERSION)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)


def _write_tensors(w: GGUFWriter, model: DecoderLM, qt: GGMLQuantizationType) -> None:
    cfg = model.cfg
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    block = gguf_quants.GGML_QUANT_SIZES[qt][0]

    def put(gname: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if qt == GGMLQuantizationType.F32 or arr.ndim == 1:
            w.add_tensor(gname, arr)
        elif qt == GGMLQuantizationType.F16:
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            if arr.shape[-1] % block:
                raise WeightsError(f"{gname}: row length {arr.shape[-1]} is not a multiple of the {qt.name} block")
            w.add_tensor(gname, gguf_quants.quantize(arr, qt), raw_dtype=qt)  # the shape follows from the bytes

    put("token_embd.weight", sd["embed.tokens.weight"])
    put("output_norm.weight", sd["norm.weight"])
    if not cfg.tie_embeddings:  # absent output.weight tells llama.cpp (and load_gguf) to reuse token_embd
        put("output.weight", sd["lm_head.weight"])
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        b, o = f"blk.{i}.", f"layers.{i}."
        qkv = sd[o + "attn.qkv_proj.weight"]
        put(b + "attn_q.weight", permute_qk(qkv[:q_dim], cfg.n_heads))
        put(b + "attn_k.weight", permute_qk(qkv[q_dim : q_dim + kv_dim], cfg.kv_heads))
        put(b + "attn_v.weight", qkv[q_dim + kv_dim :])
        put(b + "attn_output.weight", sd[o + "attn.o_proj.weight"])
        put(b + "attn_norm.weight", sd[o + "attn_norm.weight"])
        put(b + "ffn_norm.weight", sd[o + "mlp_norm.weight"])
        gate, up = np.split(sd[o + "mlp.up_proj.weight"], 2)
        put(b + "ffn_gate.weight", gate)
        put(b + "ffn_up.weight", up)
        put(b + "ffn_down.weight", sd[o + "mlp.down_proj.weight"])


# ----------------------------------------------------------------------------- tokenizer


def tokenizer_metadata(tokenizer: Tokenizer, vocab_size: int) -> dict[str, Any]:
    """The `tokenizer.ggml.*` values for a byte-level BPE tokenizer, padded to the model's `vocab_size`.

    Tokens the tokenizer lacks (embedding rows beyond its vocabulary) become `[PAD<i>]` of type UNUSED, as
    in llama.cpp's converter. Raises for tokenizers llama.cpp's "gpt2" model cannot reproduce."""
    spec = json.loads(tokenizer.hf.to_str())
    bpe = spec.get("model") or {}
    if bpe.get("type") != "BPE" or bpe.get("byte_fallback") or bpe.get("continuing_subword_prefix"):
        raise WeightsError(
            f"GGUF export needs a GPT-2-style byte-level BPE tokenizer; this one is {bpe.get('type')!r}"
            + (" with byte fallback / subword prefixes" if bpe.get("type") == "BPE" else "")
        )
    if bpe.get("end_of_word_suffix") or bpe.get("ignore_merges") or spec.get("normalizer"):
        raise WeightsError("GGUF export: BPE end-of-word suffixes, ignore_merges and normalizers are not supported")
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    ids: dict[str, int] = dict(bpe["vocab"])
    types: dict[int, int] = {i: TokenType.NORMAL for i in ids.values()}
    for tok in spec.get("added_tokens", []):
        ids[tok["content"]] = tok["id"]
        types[tok["id"]] = TokenType.CONTROL if tok.get("special") else TokenType.USER_DEFINED
    n = max(ids.values()) + 1
    if n > vocab_size:
        raise WeightsError(f"the tokenizer has ids up to {n - 1}, beyond the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    for tok, i in ids.items():
        tokens[i] = tok
    unk = tokenizer.special_tokens.get("unk_token")
    special = {
        "bos": tokenizer.bos_id,
        "eos": tokenizer.eos_id,
        "pad": tokenizer.pad_id,
        "unk": None if unk is None else tokenizer.token_to_id(unk),
    }
    return {
        "pre": pre,
        "tokens": tokens,
        "types": [int(types.get(i, TokenType.UNUSED)) for i in range(vocab_size)],
        "merges": [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])],
        "special": {k: v for k, v in special.items() if v is not None},
        "chat_template": tokenizer.chat_template,
    }


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """The llama.cpp pre-tokenizer that splits text as `pre` does (see PRE_TOKENIZERS)."""

    def matches(step: dict[str, Any], want: dict[str, Any]) -> bool:
        return all(step.get(k) == v for k, v in want.items())

    steps = (pre.get("pretokenizers") if pre and pre.get("type") == "Sequence" else [pre]) or []
    if len(steps) == 1 and steps[0] and matches(steps[0], _BYTE_LEVEL):
        return "gpt-2"
    if len(steps) == 2 and matches(steps[0], _DIGITS) and matches(steps[1], _BYTE_LEVEL):
        return "smollm"
    kinds = [s.get("type") for s in steps if s]
    raise WeightsError(
        f"GGUF export: pre-tokenizer {kinds} has no llama.cpp equivalent lmstack writes; supported: "
        + "; ".join(f"{k} ({v})" for k, v in PRE_TOKENIZERS.items())
    )


def _write_vocab(w: GGUFWriter, vocab: dict[str, Any]) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    setters = {
        "bos": w.add_bos_token_id,
        "eos": w.add_eos_token_id,
        "pad": w.add_pad_token_id,
        "unk": w.add_unk_token_id,
    }
    for role, tid in vocab["special"].items():
        setters[role](tid)
    w.add_add_bos_token(False)  # lmstack's encode() adds no BOS; prompts carry their own special tokens
    w.add_add_space_prefix(False)
    if vocab["chat_template"]:
        w.add_chat_template(vocab["chat_template"])
