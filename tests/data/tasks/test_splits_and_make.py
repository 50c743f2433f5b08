"""Properties every task shares: disjoint splits, determinism to the byte, the `make` API and the CLI."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmstack.cli import main
from lmstack.data.tasks import GENERATORS, SPLITS, generate, make, math_word, preferences, read_jsonl, records
from lmstack.data.tasks import knowledge_base as kb
from lmstack.data.tasks import reviews as rv
from lmstack.data.tasks.common import hash_split, number_signature
from lmstack.errors import DataError

TEMPLATE_TABLES = {
    "math_word": [math_word.TEMPLATES],
    "math_word_hard": [math_word.TEMPLATES],
    "knowledge_base": [kb.DOC_TEMPLATES, kb.QUESTION_TEMPLATES],
    "preferences": [preferences.TEMPLATES],
    "reviews": [rv.TEMPLATES],
    "records": [records.TEMPLATES],
}
NUMBER_PARTITIONED = {"math_word": "question", "math_word_hard": "question", "preferences": "prompt", "records": "text"}


def _disjoint(sets: dict[str, set]) -> bool:
    return all(not sets[a] & sets[b] for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :])


@pytest.mark.parametrize("name", list(GENERATORS))
def test_splits_share_no_template_entity_or_number_pattern(task_data, name):
    data = task_data(name)
    for table in TEMPLATE_TABLES[name]:
        texts = {s: set(ts) for s, ts in table.by_split().items()}
        assert _disjoint(texts), f"a {table.prefix} template string is owned by two splits"
    template_ids = {s: {t for it in data[s]["items"] for t in it["template_ids"]} for s in SPLITS}
    entities = {s: {e for it in data[s]["items"] for e in it["entities"]} for s in SPLITS}
    assert all(template_ids.values()) and all(entities.values())
    assert _disjoint(template_ids) and _disjoint(entities)
    for s in SPLITS:
        assert all(f".{s}." in t for t in template_ids[s])
    if name in NUMBER_PARTITIONED:
        field = NUMBER_PARTITIONED[name]
        signatures = {s: {number_signature(it[field]) for it in data[s]["items"]} for s in SPLITS}
        assert _disjoint(signatures)
        assert all(hash_split(sig) == s for s in SPLITS for sig in signatures[s])


@pytest.mark.parametrize("name", list(GENERATORS))
def test_items_are_unique_and_well_formed(task_data, name):
    for split in SPLITS:
        items = task_data(name)[split]["items"]
        assert len({it["id"] for it in items}) == len(items)
        assert all(it["task"] == name and it["split"] == split for it in items)
        assert all(isinstance(it["prompt"], str) and it["prompt"] for it in items)
        key = "chosen" if name == "preferences" else "completion"
        assert all(isinstance(it[key], str) and it[key] for it in items)
        texts = [it["prompt"] for it in items]
        assert len(set(texts)) == len(texts)


def test_make_writes_splits_and_a_checkable_manifest(tmp_path):
    written = make("knowledge_base", tmp_path, 12, seed=3)
    assert sorted(written) == sorted(
        ["manifest.json"] + [f"{s}.jsonl" for s in SPLITS] + [f"{s}_documents.jsonl" for s in SPLITS]
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["task"], manifest["n"], manifest["seed"], manifest["splits"]) == (
        "knowledge_base",
        12,
        3,
        list(SPLITS),
    )
    for fname, info in manifest["files"].items():
        data = (tmp_path / fname).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert len(read_jsonl(tmp_path / fname)) == info["rows"]
    assert manifest["files"]["test.jsonl"]["rows"] == 12


def test_one_split_alone_equals_the_same_split_of_all(tmp_path):
    make("math_word", tmp_path / "all", 30, seed=5)
    make("math_word", tmp_path / "one", 30, seed=5, splits=["test"])
    assert (tmp_path / "all" / "test.jsonl").read_bytes() == (tmp_path / "one" / "test.jsonl").read_bytes()
    make("math_word", tmp_path / "other", 30, seed=6, splits=["test"])
    assert (tmp_path / "other" / "test.jsonl").read_bytes() != (tmp_path / "one" / "test.jsonl").read_bytes()


_SCRIPT = """
import sys
from lmstack.data.tasks import GENERATORS, make
for name in GENERATORS:
    make(name, sys.argv[1] + "/" + name, 15, seed=11)
"""


def test_same_seed_same_bytes_under_any_hash_seed(tmp_path):
    """Generate every task in two fresh interpreters with different PYTHONHASHSEED: identical bytes."""
    outs = []
    for hash_seed in ("1", "4242"):
        out = tmp_path / f"h{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], check=True, env=env, timeout=120)
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) == len(GENERATORS) * 4 + 3  # 3 splits + manifest each, plus 3 KB document files
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    make("preferences", tmp_path / "here", 15, seed=11)  # and the same bytes in this process
    assert (tmp_path / "here" / "train.jsonl").read_bytes() == (outs[0] / "preferences" / "train.jsonl").read_bytes()


def test_bad_arguments_fail_with_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown task 'maths'.*math_word"):
        make("maths", tmp_path, 5)
    with pytest.raises(DataError, match="positive integer"):
        generate("reviews", 0)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        make("reviews", tmp_path, 5, splits=["dev"])
    with pytest.raises(DataError, match="no splits"):
        make("reviews", tmp_path, 5, splits=[])
    with pytest.raises(DataError, match="has no option 'entities'.*takes no options"):
        make("reviews", tmp_path, 5, entities=3)
    with pytest.raises(DataError, match="positive integer"):
        make("knowledge_base", tmp_path, 5, entities="many")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        make("reviews", tmp_path / "file", 5)


def test_cli_list_and_make(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in GENERATORS) and "entities" in listed
    out = tmp_path / "kb"
    code = main(
        [
            "data",
            "make",
            "knowledge_base",
            "--out",
            str(out),
            "--n",
            "8",
            "--seed",
            "2",
            "--splits",
            "validation,test",
            "--set",
            "entities=6",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test.jsonl",
        "test_documents.jsonl",
        "validation.jsonl",
        "validation_documents.jsonl",
    ]
    assert "8 rows" in capsys.readouterr().out
    assert Path(out / "test.jsonl").read_bytes() == _bytes_of(tmp_path / "api", "test.jsonl")
    assert main(["data", "make", "reviews", "--out", str(out), "--set", "entities=3"]) == 2
    assert "has no option" in capsys.readouterr().err
    assert main(["data", "make", "reviews", "--out", str(out), "--set", "oops"]) == 2


def _bytes_of(out: Path, fname: str) -> bytes:
    make("knowledge_base", out, 8, seed=2, splits=["test"], entities=6)
    return (out / fname).read_bytes()
