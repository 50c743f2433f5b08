"""Tiny decoders (llama- and gpt-style) with sharp output distributions, and a tiny byte-level tokenizer."""

import pytest

from lmstack.models import DecoderLM
from lmstack.tokenizer import Tokenizer
from testutil import tiny_bpe, tiny_decoder


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return tiny_bpe()


@pytest.fixture(params=["llama-tiny", "gpt-tiny"])
def model(request, tokenizer) -> DecoderLM:
    return tiny_decoder(request.param, tokenizer.vocab_size)


@pytest.fixture
def llama(tokenizer) -> DecoderLM:
    return tiny_decoder("llama-tiny", tokenizer.vocab_size)
