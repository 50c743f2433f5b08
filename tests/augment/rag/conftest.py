from pathlib import Path

import pytest

from augment.rag.rag_helpers import HashEmbedder, write_corpus


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")
