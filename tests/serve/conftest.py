"""A tiny llama-style decoder and tokenizer for the server tests (fast enough for real HTTP round trips)."""

import pytest

from lmstack.models import DecoderLM
from lmstack.tokenizer import CHATML_TEMPLATE, Tokenizer
from testutil import tiny_bpe, tiny_decoder


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return tiny_bpe()


@pytest.fixture
def llama(tokenizer) -> DecoderLM:
    return tiny_decoder("llama-tiny", tokenizer.vocab_size)


@pytest.fixture(scope="session")
def chat_tokenizer() -> Tokenizer:
    tok = tiny_bpe()
    tok.chat_template = CHATML_TEMPLATE
    return tok
