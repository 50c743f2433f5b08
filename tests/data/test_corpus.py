import json

import numpy as np
import pytest
import torch

from lmstack.data.corpus import PackedBlocks, sample_indices, split_documents, stdlib_files
from lmstack.errors import DataError


def test_stdlib_corpus_is_real_and_excludes_third_party():
    root, files = stdlib_files()
    assert len(files) > 300
    assert not any("site-packages" in p.parts or "test" in p.relative_to(root).parts for p in files)


def test_split_is_deterministic_and_disjoint(text_corpus):
    a = split_documents("files", [str(text_corpus)], 0.25)
    b = split_documents("files", [str(text_corpus)], 0.25)
    assert a == b
    assert a["train"] and a["val"]
    assert not set(a["train"]) & set(a["val"])


def test_byte_caps(text_corpus):
    full = split_documents("files", [str(text_corpus)], 0.2)
    capped = split_documents("files", [str(text_corpus)], 0.2, max_train_bytes=2000)
    assert len(capped["train"]) < len(full["train"])


def test_jsonl_errors_name_the_line(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n{bad json\n")
    with pytest.raises(DataError, match="data.jsonl:2: invalid JSON"):
        split_documents("files", [str(f)], 0.5)
    f.write_text(json.dumps({"txt": "wrong field"}) + "\n")
    with pytest.raises(DataError, match="string 'text' field"):
        split_documents("files", [str(f)], 0.5)
    with pytest.raises(DataError, match="does not exist"):
        split_documents("files", [str(tmp_path / "nope")], 0.5)


def test_sample_indices_walk_epochs_as_permutations():
    n, bs = 10, 4
    seen = torch.cat([sample_indices(s, bs, n, seed=3) for s in range(5)])  # 20 samples = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])
    assert torch.equal(sample_indices(3, bs, n, seed=3), sample_indices(3, bs, n, seed=3))


def test_packed_blocks():
    blocks = PackedBlocks(np.arange(25, dtype=np.uint16), 8)
    assert len(blocks) == 3 and blocks[1].tolist() == list(range(8, 16))
    with pytest.raises(DataError, match="fewer than one block"):
        PackedBlocks(np.arange(5, dtype=np.uint16), 8)


def test_split_does_not_depend_on_where_the_corpus_lives(text_corpus, tmp_path):
    import shutil

    moved = shutil.copytree(text_corpus, tmp_path / "elsewhere" / "renamed")
    assert split_documents("files", [str(text_corpus)], 0.3) == split_documents("files", [str(moved)], 0.3)
