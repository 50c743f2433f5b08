"""Atomic writes: the old file survives a failed write, no temp file is left, permissions are ordinary."""

import json

import pytest

from lmstack.fileio import write_json, write_jsonl


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_jsonl_is_atomic_and_read_back(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(path, [{"a": 1}, {"b": "é"}]) == 2
    assert read_lines(path) == [{"a": 1}, {"b": "é"}]

    def broken():
        yield {"a": 2}
        raise RuntimeError("generator failed half-way")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert read_lines(path) == [{"a": 1}, {"b": "é"}]  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temp file left behind


def test_written_files_get_ordinary_permissions(tmp_path):
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # what a plain open() gives under the current umask
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    assert path.stat().st_mode == reference.stat().st_mode


def test_write_json_replaces_whole_documents_only(tmp_path):
    path = tmp_path / "doc.json"
    write_json(path, {"a": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})  # not JSON-serialisable: nothing is replaced
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]
