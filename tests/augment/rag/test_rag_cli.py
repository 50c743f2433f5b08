"""`lmstack rag` parses, fails clearly on a missing index before loading any model, and searches BM25-only."""

import json

import pytest

from lmstack.augment.rag.ingest import ingest
from lmstack.cli import build_parser, main

pytest.importorskip("faiss", reason="the RAG index needs faiss-cpu (make setup installs the rag extra)")


def test_the_subcommands_parse():
    args = build_parser().parse_args(["rag", "ingest", "docs", "--index", "idx", "--chunk-tokens", "100"])
    assert (args.rag_command, args.folder, args.index, args.chunk_tokens, args.overlap) == (
        "ingest",
        "docs",
        "idx",
        100,
        None,
    )
    args = build_parser().parse_args(["rag", "search", "a question", "--index", "idx", "--mode", "bm25"])
    assert (args.query, args.k, args.mode, args.format, args.embedder) == ("a question", 5, "bm25", "text", None)


def test_search_without_an_index_says_so(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["rag", "search", "anything", "--index", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"error: no RAG index at {missing}; build one with `lmstack rag ingest DIR --index {missing}`" in err


def test_bm25_search_needs_no_model(corpus, tmp_path, embedder, capsys):
    ingest(corpus, tmp_path / "index", embedder)
    assert main(["rag", "search", "Town08ville", "--index", str(tmp_path / "index"), "--mode", "bm25"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] town08.txt:0-")
    assert main(["rag", "search", "Town08ville bridges", "--index", str(tmp_path / "index"), "--mode", "bm25",
                 "--format", "json", "--k", "2"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["path"] == "town08.txt" and rows[0]["text"].startswith("Town08ville")
