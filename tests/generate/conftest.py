"""Tiny decoders (llama- and gpt-style) with sharp output distributions, and a tiny byte-level tokenizer."""

import pytest
import torch

from lmstack.models import DecoderLM, model_config
from lmstack.tokenizer import Tokenizer

TEXTS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "héllo wörld — naïve café, 日本語 and emoji 🤖👍🏽 too.",
]


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(TEXTS * 10, vocab_size=330, min_frequency=1)


def tiny_decoder(preset: str, vocab_size: int, scale: float = 8.0, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = model_config(
        preset,
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2 if preset == "llama-tiny" else None,
        d_ff=96,
        max_seq_len=128,
    )
    model = DecoderLM(cfg).eval()
    with torch.no_grad():  # larger weights → confident predictions, so greedy has clear winners
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(scale)
    return model


@pytest.fixture(params=["llama-tiny", "gpt-tiny"])
def model(request, tokenizer) -> DecoderLM:
    return tiny_decoder(request.param, tokenizer.vocab_size)


@pytest.fixture
def llama(tokenizer) -> DecoderLM:
    return tiny_decoder("llama-tiny", tokenizer.vocab_size)
