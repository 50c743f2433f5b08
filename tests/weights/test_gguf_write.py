"""The GGUF writer: llama.cpp's metadata and Q/K layout, read back by our loader and run by llama.cpp itself."""

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, LlamaFileType, TokenType
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

import lmstack.weights.gguf_write as gguf_write
from lmstack.errors import WeightsError
from lmstack.models import DecoderLM, model_config
from lmstack.tokenizer import Tokenizer
from lmstack.weights.gguf import SUPPORTED_TYPES, load_gguf, permute_qk, read_gguf
from lmstack.weights.gguf_write import FILE_TYPES, save_gguf
from lmstack.weights.load import smollm_gguf_path

TEXTS = [  # what the session's tiny tokenizer was trained on (tests/weights/conftest.py), and a little more
    "the quick brown fox jumps over the lazy dog. " * 2,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "numbers 12345 and 3.14159, words and more words; the end.",
    "  two spaces\n\nand\ttabs, Ünïcödé 👍",
]

EXTRA_ROWS = 8  # embedding rows beyond the tokenizer's vocabulary, as models padded to a round size have
F32_ROUNDOFF = 2.0**-24  # unit roundoff of float32 (and of float16 below)
F16_ROUNDOFF = 2.0**-11


def tiny_llama(vocab_size: int, tie: bool = False) -> DecoderLM:
    """A 2-layer Llama whose attention is peaked (large Q/K weights), so that a wrong Q/K row order changes
    the logits by their own size instead of hiding in near-uniform attention."""
    cfg = model_config(
        "llama-tiny",
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        max_seq_len=64,
        rope_theta=5000.0,
        norm_eps=1e-5,
        tie_embeddings=tie,
    )
    model = DecoderLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif "qkv_proj" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture
def model(tiny_tokenizer):
    return tiny_llama(tiny_tokenizer.vocab_size + EXTRA_ROWS)


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def test_metadata_is_what_llama_cpp_reads(tmp_path, model, tiny_tokenizer):
    path = save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", qtype="F16", name="tiny")
    gf = read_gguf(path)
    meta, cfg = gf.metadata, model.cfg
    expected = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "general.file_type": int(LlamaFileType.MOSTLY_F16),
        "general.quantization_version": 2,
        "llama.context_length": 64,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 96,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.rope.freq_base": 5000.0,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tiny_tokenizer.bos_id,
        "tokenizer.ggml.eos_token_id": tiny_tokenizer.eos_id,
        "tokenizer.ggml.padding_token_id": tiny_tokenizer.pad_id,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tiny_tokenizer.chat_template,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5, rel=1e-6)  # stored as float32
    n = tiny_tokenizer.vocab_size
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == cfg.vocab_size
    assert tokens[:n] == [tiny_tokenizer.hf.id_to_token(i) for i in range(n)]
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, cfg.vocab_size)]
    assert set(types[n:]) == {TokenType.UNUSED}
    specials = tiny_tokenizer.special_ids()
    assert {i for i, t in enumerate(types) if t == TokenType.CONTROL} == specials
    assert {types[i] for i in range(n) if i not in specials} == {TokenType.NORMAL}
    ours = [" ".join(m) for m in json.loads(tiny_tokenizer.hf.to_str())["model"]["merges"]]
    assert meta["tokenizer.ggml.merges"] == ours and ours
    # llama.cpp's tensor names; 2-D weights in the chosen type, norms in F32
    names = {
        f"blk.{i}.{t}.weight"
        for i in range(2)
        for t in (
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_norm",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        )
    } | {"token_embd.weight", "output_norm.weight", "output.weight"}
    assert set(gf.tensors) == names
    for name, t in gf.tensors.items():
        want = GGMLQuantizationType.F32 if name.endswith("norm.weight") else GGMLQuantizationType.F16
        assert GGMLQuantizationType(t.tensor_type) == want, name
    assert tuple(int(d) for d in gf.tensors["blk.0.attn_k.weight"].shape) == (64, 2 * 16)  # innermost first


def test_file_types_cover_every_supported_type():
    assert set(FILE_TYPES) == set(SUPPORTED_TYPES)


def rope(x: np.ndarray, interleaved: bool, theta: float) -> np.ndarray:
    """Rotary embedding of x (positions, heads, head_dim): llama.cpp's rotates pairs (2i, 2i+1), HF's and
    ours rotate (i, i + head_dim/2); both by position × theta^(-2i/head_dim)."""
    t, _, d = x.shape
    angle = np.arange(t)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]  # (t, d/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2 :])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if interleaved:
        return np.stack([ra, rb], axis=-1).reshape(x.shape)
    return np.concatenate([ra, rb], axis=-1)


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_permuted_rows_with_interleaved_rope_give_our_attention_scores(heads):
    """What the permutation is for, checked without llama.cpp: permuted Q and K weights under llama.cpp's
    pairwise rotation give the same q·k scores as the original weights under the half rotation."""
    rng = np.random.default_rng(heads)
    head_dim, d, t = 8, 12, 6
    wq, wk = rng.standard_normal((2, heads * head_dim, d))
    x = rng.standard_normal((t, d))

    def scores(wq, wk, interleaved):
        q = rope((x @ wq.T).reshape(t, heads, head_dim), interleaved, 100.0)
        k = rope((x @ wk.T).reshape(t, heads, head_dim), interleaved, 100.0)
        return np.einsum("thd,uhd->htu", q, k)

    ours = scores(wq, wk, interleaved=False)
    np.testing.assert_allclose(scores(permute_qk(wq, heads), permute_qk(wk, heads), True), ours, rtol=1e-10)
    assert not np.allclose(scores(wq, wk, interleaved=True), ours, rtol=1e-3)  # unpermuted: different


@pytest.mark.parametrize("tie", [False, True])
def test_f32_round_trip_through_our_loader_is_exact(tmp_path, tiny_tokenizer, tie):
    model = tiny_llama(tiny_tokenizer.vocab_size + EXTRA_ROWS, tie=tie)
    loaded, tok = load_gguf(save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf"))
    ids = tiny_tokenizer.encode(TEXTS[1])
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert loaded.cfg.tie_embeddings == tie and loaded.cfg.vocab_size == model.cfg.vocab_size
    chat = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "def add(a, b): 123"}])
    assert tok.encode(chat) == tiny_tokenizer.encode(chat)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id)


# |reloaded - original| per weight, relative to the tensor's largest |weight|: half an fp16 step (2^-11) for
# F16; Q8_0 stores each block of 32 as int8 × an fp16 scale of max|block|/127, so half a step is 1/254.
WEIGHT_BOUNDS = {"F16": F16_ROUNDOFF, "Q8_0": 1 / 254 + F16_ROUNDOFF}


@pytest.mark.parametrize("qtype", list(WEIGHT_BOUNDS))
def test_f16_and_q8_0_weights_are_rounded_not_changed(tmp_path, model, tiny_tokenizer, qtype):
    loaded, _ = load_gguf(save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", qtype=qtype))
    ref = model.state_dict()
    for name, w in loaded.state_dict().items():
        err = (w - ref[name]).abs().max().item()
        bound = 0.0 if w.ndim == 1 else WEIGHT_BOUNDS[qtype] * ref[name].abs().max().item() * 1.001
        assert err <= bound, (name, err, bound)


def test_unsupported_models_tokenizers_and_types_are_refused(tmp_path, model, tiny_tokenizer):
    gpt = DecoderLM(
        model_config(
            "gpt-tiny", vocab_size=tiny_tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32
        )
    )
    with pytest.raises(WeightsError, match="Llama-style decoders only.*--format hf"):
        save_gguf(gpt, tiny_tokenizer, tmp_path / "g.gguf")
    bitnet = DecoderLM(
        model_config(
            "llama-tiny",
            vocab_size=tiny_tokenizer.vocab_size,
            d_model=32,
            n_layers=1,
            n_heads=4,
            d_ff=64,
            max_seq_len=32,
            bitnet=True,
        )
    )
    with pytest.raises(WeightsError, match="not BitNet"):
        save_gguf(bitnet, tiny_tokenizer, tmp_path / "b.gguf")
    with pytest.raises(WeightsError, match="Q8_0"):
        save_gguf(model, tiny_tokenizer, tmp_path / "q.gguf", qtype="Q2_K")
    small = tiny_llama(tiny_tokenizer.vocab_size - 1)
    with pytest.raises(WeightsError, match="beyond the model's vocab_size"):
        save_gguf(small, tiny_tokenizer, tmp_path / "s.gguf")
    metaspace = HFTokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(WeightsError, match=r"\['Metaspace'\].*gpt-2.*smollm"):
        save_gguf(model, Tokenizer(metaspace, {}), tmp_path / "m.gguf")
    wordpiece = HFTokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(WeightsError, match="byte-level BPE tokenizer; this one is 'WordPiece'"):
        save_gguf(model, Tokenizer(wordpiece, {}), tmp_path / "w.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, model, tiny_tokenizer, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")

    def boom(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_write, "_write_tensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_gguf(model, tiny_tokenizer, path)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------- llama.cpp runs the file


def llama_cpp_logits(path, ids, f32_cache: bool) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (no BOS added: the ids go in as they are)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False, **cache)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def relative_error(got: np.ndarray, ref: torch.Tensor) -> float:
    """max |difference| over the largest |logit|: rounding errors scale with the values, so bounds do too."""
    return float(np.abs(got - ref.numpy()).max() / ref.abs().max().item())


# F32 weights and an F32 KV cache: both sides compute in float32 and differ only in summation order and in
# ggml's vectorised exp/silu; measured 4e-6 here (2 layers) and 2e-6 for SmolLM2 (30 layers). The bound,
# 5e-5 (≈ 840 float32 roundoffs of the largest logit), is 10x that and 20000x below the error of unpermuted
# Q/K (≈ 1.1, below).
F32_BOUND = 5e-5
# F16 weights, llama.cpp's default F16 KV cache: ggml rounds each matmul's input activations to fp16 for
# F16 weights, and K/V in the cache: about 8 fp16 roundings (u = 2^-11) on the way to the logits in two
# layers, each of which can grow through the peaked softmax; 16u ≈ 7.8e-3 (measured ≈ 3e-3).
F16_BOUND = 16 * F16_ROUNDOFF


def test_llama_cpp_runs_the_f32_file_with_our_logits(tmp_path, model, tiny_tokenizer, monkeypatch):
    ids = tiny_tokenizer.encode(TEXTS[1])[:24]
    path = save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf")
    assert relative_error(llama_cpp_logits(path, ids, f32_cache=True), logits(model, ids)) <= F32_BOUND
    # the control: the same file without llama.cpp's Q/K row order is far off
    monkeypatch.setattr(gguf_write, "permute_qk", lambda w, n_heads: w)
    raw = save_gguf(model, tiny_tokenizer, tmp_path / "raw.gguf")
    assert relative_error(llama_cpp_logits(raw, ids, f32_cache=True), logits(model, ids)) > 100 * F32_BOUND


def test_llama_cpp_runs_the_f16_file_close_to_our_logits(tmp_path, model, tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXTS[2])[:24]
    path = save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", qtype="F16")
    ours, _ = load_gguf(path)  # the same fp16-rounded weights, so only llama.cpp's arithmetic differs
    assert relative_error(llama_cpp_logits(path, ids, f32_cache=False), logits(ours, ids)) <= F16_BOUND


def test_llama_cpp_tokenizes_like_our_tokenizer(tmp_path, model, tiny_tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = save_gguf(model, tiny_tokenizer, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False, vocab_only=True)
    try:
        chat = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hello 42"}])
        for text in [*TEXTS, chat]:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tiny_tokenizer.encode(text), text
        assert llm.token_bos() == tiny_tokenizer.bos_id and llm.token_eos() == tiny_tokenizer.eos_id
    finally:
        llm.close()


# ----------------------------------------------------------------------------- the real SmolLM2 file


@pytest.mark.real_model
def test_smollm2_round_trip_and_llama_cpp(tmp_path, smollm):
    """load ours → write F32 → load again: the same logits and tokenizer; llama.cpp agrees on the new file."""
    model, tok = smollm
    path = save_gguf(model, tok, tmp_path / "smollm2-f32.gguf")
    original, written = read_gguf(smollm_gguf_path()).metadata, read_gguf(path).metadata
    informative = ("general.name", "general.file_type")  # and general.* keys we do not carry (licence, ...)
    same = {k: v for k, v in original.items() if not k.startswith("general.") or k == "general.architecture"}
    assert {k: written.get(k) for k in same} == same and written["general.file_type"] == 0
    assert all(k in original or k in informative or k == "general.type" for k in written)
    again, tok2 = load_gguf(path)
    prompt = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France, built in"
    ids = tok.encode(prompt)
    ref = logits(model, ids)
    assert torch.equal(logits(again, ids), ref)  # F32 holds the dequantized Q4_1 weights exactly
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], add_generation_prompt=True)
    for text in [*TEXTS, chat, "The year 2024 had 366 days; pi ≈ 3.14159."]:
        assert tok2.encode(text) == tok.encode(text), text
    assert tok2.chat_template == tok.chat_template
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the bench extra) is not installed")
    assert relative_error(llama_cpp_logits(path, ids, f32_cache=True), ref) <= F32_BOUND
