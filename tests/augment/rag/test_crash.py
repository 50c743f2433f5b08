"""The index outlives its process: a fresh Python searches it, and an ingest killed with SIGKILL mid-way
leaves a consistent index (every file whole or absent) that the next ingest completes."""

import signal
import sqlite3
import subprocess
import time

import pytest

from augment.rag.rag_helpers import last_json, python_command, run_python, write_corpus
from lmstack.augment.rag.chunking import chunk_text
from lmstack.augment.rag.index import DB_NAME, RagIndex
from lmstack.augment.rag.ingest import ingest
from lmstack.augment.rag.retrieve import search

pytest.importorskip("faiss", reason="the RAG index needs faiss-cpu (make setup installs the rag extra)")

SEARCH = """
    import json, sys
    from augment.rag.rag_helpers import HashEmbedder
    from lmstack.augment.rag.index import RagIndex
    from lmstack.augment.rag.retrieve import search
    embedder = HashEmbedder()
    with RagIndex.open(sys.argv[1], embedder) as index:
        hits = search(index, sys.argv[2], embedder, k=4)
    print(json.dumps([[h.path, h.start, h.end, h.text] for h in hits]))
"""


def test_a_fresh_process_searches_the_index(corpus, tmp_path, embedder):
    ingest(corpus, tmp_path / "index", embedder)
    with RagIndex.open(tmp_path / "index", embedder) as index:
        here = [[h.path, h.start, h.end, h.text] for h in search(index, "Town06ville market", embedder, k=4)]
    assert last_json(run_python(SEARCH, str(tmp_path / "index"), "Town06ville market")) == here
    assert here[0][0] == "town06.txt"


INGEST_SLOWLY = """
    import sys
    from augment.rag.rag_helpers import HashEmbedder
    from lmstack.augment.rag.ingest import ingest
    ingest(sys.argv[1], sys.argv[2], HashEmbedder(delay=0.2), chunk_tokens=24, overlap=4, batch_size=1)
    print("finished")
"""


def committed_files(db) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM files").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def test_an_ingest_killed_mid_way_leaves_a_consistent_index(tmp_path, embedder):
    docs = write_corpus(tmp_path / "docs", n=30)
    index = tmp_path / "index"
    argv, env = python_command(INGEST_SLOWLY, str(docs), str(index))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while committed_files(index / DB_NAME) < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the ingest did not get going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(index / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")  # raises if FTS disagrees
        files = dict(conn.execute("SELECT id, path FROM files"))
        rows = conn.execute("SELECT file_id, ord, start_char, end_char, text FROM chunks ORDER BY file_id, ord")
        stored: dict[str, list] = {}
        for file_id, ord_, start, end, text in rows:
            stored.setdefault(files[file_id], []).append((ord_, start, end, text))
    assert 4 <= len(files) < 30, "the kill came too late to test anything"
    for path, chunks in stored.items():  # each committed file has all its chunks, once, in order
        text = (docs / path).read_text()
        want = chunk_text(text, embedder.token_spans(text), 24, 4)
        assert chunks == [(i, c.start, c.end, c.text) for i, c in enumerate(want)], path
    assert set(stored) == set(files.values())

    with RagIndex.open(index, embedder) as opened:  # the FAISS cache is stale (or absent): rebuilt from SQLite
        hits = search(opened, "Town00ville", embedder)
        assert hits and hits[0].path == "town00.txt"
        assert opened.vectors().ntotal == opened.store.count()

    report = ingest(docs, index, embedder)
    assert sorted(report.unchanged) == sorted(files.values()) and len(report.added) == 30 - len(files)
    clean = ingest(docs, tmp_path / "clean", embedder, chunk_tokens=24, overlap=4)
    assert report.chunks_total == clean.chunks_total
    assert report.chunks_embedded == clean.chunks_embedded - sum(len(c) for c in stored.values())
    with RagIndex.open(index) as a, RagIndex.open(tmp_path / "clean") as b:
        query = "SELECT f.path, c.ord, c.start_char, c.end_char, c.text FROM chunks c JOIN files f ON f.id = c.file_id"
        assert sorted(a.store.conn.execute(query)) == sorted(b.store.conn.execute(query))
