import json
from pathlib import Path

import pytest
import torch

# tiny models run fastest on one thread, and tests must not fight each other for the two cores
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A directory of small, varied text files (a stand-in corpus that tokenises in milliseconds)."""
    root = tmp_path / "corpus"
    root.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for i in range(40):
        lines = [" ".join(words[(i * j + k) % len(words)] for k in range(8)) + f" {i * j}." for j in range(30)]
        (root / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "extra.jsonl").write_text("\n".join(json.dumps({"text": f"record {i} says hello"}) for i in range(20)))
    return root
