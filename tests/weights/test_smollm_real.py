"""SmolLM2-135M-Instruct from the shipped GGUF against transformers loading the same file."""

import unicodedata

import pytest
import torch

from lmstack.generate.sampling import generate
from lmstack.weights.gguf import permute_qk

pytestmark = pytest.mark.real_model

PROMPT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed the Iron Lady, it was constructed as the centerpiece of the 1889 World's Fair, and "
    "to crown the centennial anniversary of the French Revolution."
)
LIST_PROMPT = "The fifty US states in alphabetical order: Alabama, Alaska, Arizona, Arkansas,"
TOKENIZER_STRINGS = [
    "Hello, world! How are you today?",
    "The year 2024 had 366 days; pi ≈ 3.14159.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "  leading spaces, trailing tabs\t\t\nand\r\nnewlines\n\n",
    "Ünïcödé façade naïve café — “quotes” ‘single’ …",
    "Привет, мир! Γειά σου κόσμε. שלום עולם. مرحبا بالعالم",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "emoji 🤖👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 ✨",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


def prompt_ids(tokenizer, n: int = 64) -> torch.Tensor:
    ids = tokenizer.encode(PROMPT)
    assert len(ids) >= n
    return torch.tensor([ids[:n]])


def test_config_and_tokenizer_from_metadata(smollm):
    model, tok = smollm
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.kv_heads, c.d_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.tie_embeddings
    assert model.lm_head.weight is model.embed.tokens.weight
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert "<|im_start|>" in tok.chat_template


def test_logits_match_transformers(smollm, hf_smollm):
    model, tok = smollm
    ids = prompt_ids(tok)
    with torch.no_grad():
        ref = hf_smollm(ids).logits
        diff = (model(ids) - ref).abs().max().item()
    # two implementations may sum in different orders over 30 layers; rounding scales with the values, so the
    # bound is relative: 1e-5 of the largest logit ≈ 170 float32 roundoffs (2^-24) of it
    assert diff <= 1e-5 * ref.abs().max().item()


def test_greedy_continuation_matches_transformers(smollm, hf_smollm):
    model, tok = smollm
    ids = torch.tensor([tok.encode(LIST_PROMPT)])
    with torch.no_grad():
        ours = generate(model, ids, 32)
        theirs = hf_smollm.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False, pad_token_id=2
        )[:, ids.shape[1] :]
    assert ours.shape[1] == 32 and ours.tolist() == theirs.tolist()


def test_unpermuted_qk_gives_wrong_logits(smollm, hf_smollm):
    """Keeping llama.cpp's Q/K row order with half-rotation RoPE is a silent bug: the logits are far off."""
    model, tok = smollm
    ids = prompt_ids(tok, 32)
    cfg = model.cfg
    q, kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    saved = [layer.attn.qkv_proj.weight.detach().clone() for layer in model.layers]
    try:
        with torch.no_grad():
            for layer in model.layers:
                w = layer.attn.qkv_proj.weight
                w[:q] = permute_qk(w[:q].clone(), cfg.n_heads)
                w[q : q + kv] = permute_qk(w[q : q + kv].clone(), cfg.kv_heads)
            diff = (model(ids) - hf_smollm(ids).logits).abs().max().item()
    finally:
        with torch.no_grad():
            for layer, w in zip(model.layers, saved):
                layer.attn.qkv_proj.weight.copy_(w)
    assert diff > 1.0


def test_tokenizer_ids_match_transformers(smollm, hf_smollm_tokenizer):
    _, tok = smollm
    for text in TOKENIZER_STRINGS:
        assert tok.encode(text) == hf_smollm_tokenizer.encode(text, add_special_tokens=False), text
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_numeric_characters_are_split_one_by_one(smollm):
    """SmolLM's pre-tokenizer (llama.cpp's `smollm`, HF's Digits) splits every \\p{N} character on its own,
    including superscripts, fractions and Arabic-Indic digits. (transformers' GGUF converter omits this
    step; for ASCII digits it makes no difference because the vocabulary has no digit merges.)"""
    _, tok = smollm
    text = " x² + ½ = ٣٤ and 2024"
    for tid in tok.encode(text):
        piece = tok.decode([tid])
        numeric = [ch for ch in piece if unicodedata.category(ch).startswith("N")]
        assert len(numeric) <= 1 and (not numeric or piece.strip() == numeric[0]), piece


def test_chat_template_matches_transformers(smollm, hf_smollm_tokenizer):
    _, tok = smollm
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    for gen in (False, True):
        ours = tok.apply_chat_template(messages, add_generation_prompt=gen)
        theirs = hf_smollm_tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert ours == theirs


def test_tokenizer_ids_match_llama_cpp(smollm):
    """llama.cpp (bench extra) reads the same metadata; its `smollm` pre-tokenizer agrees with ours,
    unicode digits included."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from lmstack.weights.load import smollm_gguf_path

    _, tok = smollm
    llm = llama_cpp.Llama(str(smollm_gguf_path()), vocab_only=True, verbose=False)
    for text in [*TOKENIZER_STRINGS, " x² + ½ = ٣٤ and 2024"]:
        assert tok.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True), text
