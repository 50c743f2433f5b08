"""The RAG index's ground truth: one SQLite file with the files, their chunks (text, offsets, vector) and FTS5.

Every change to a file's chunks is one transaction that also sets a new `version` (a random token) in `meta`,
so a file is either fully in the index or not at all, whatever kills the process, and anything derived from
the chunks (the FAISS index) can tell that it is stale. Chunk rows are never updated, only inserted and
deleted, and the FTS5 table follows them through triggers in the same transaction. WAL mode lets searches
read while an ingest writes.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmstack.augment.rag.chunking import Chunk
from lmstack.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,         -- relative to the ingested folder, POSIX separators
    sha256 TEXT NOT NULL,              -- of the file's bytes: what decides whether it changed
    kind TEXT NOT NULL,                -- text | html | pdf: for html and pdf offsets refer to extracted text
    chars INTEGER NOT NULL             -- length of the text the offsets refer to
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id INTEGER NOT NULL REFERENCES files(id),
    ord INTEGER NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,              -- float32, the index's dimension
    UNIQUE (file_id, ord)
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    start: int
    end: int
    text: str


class Store:
    """A connection to the index's SQLite file (created with its schema when `create`)."""

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise DataError(f"{self.path} does not exist")
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        if create:
            self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self, stamp: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; with `stamp`, a change to the chunks: it sets a
        new version, which tells the FAISS cache that it is stale."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            if stamp:
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (uuid.uuid4().hex,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ meta

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def set_meta(self, values: dict[str, str], stamp: bool = True) -> None:
        with self.transaction(stamp) as conn:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    # ------------------------------------------------------------------ files

    def file_hashes(self) -> dict[str, str]:
        """path -> sha256 of every file in the index."""
        return dict(self.conn.execute("SELECT path, sha256 FROM files"))

    def put_file(
        self, path: str, sha256: str, kind: str, chars: int, chunks: Sequence[Chunk], vectors: np.ndarray
    ) -> None:
        """Replace a file's chunks (or add the file), all in one transaction."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.transaction() as conn:
            conn.execute("DELETE FROM chunks WHERE file_id IN (SELECT id FROM files WHERE path = ?)", (path,))
            conn.execute(
                "INSERT INTO files (path, sha256, kind, chars) VALUES (?, ?, ?, ?) ON CONFLICT(path) DO UPDATE "
                "SET sha256 = excluded.sha256, kind = excluded.kind, chars = excluded.chars",
                (path, sha256, kind, chars),
            )
            (file_id,) = conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
            conn.executemany(
                "INSERT INTO chunks (file_id, ord, start_char, end_char, tokens, text, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(file_id, i, c.start, c.end, c.tokens, c.text, rows[i].tobytes()) for i, c in enumerate(chunks)],
            )

    def delete_file(self, path: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM chunks WHERE file_id IN (SELECT id FROM files WHERE path = ?)", (path,))
            conn.execute("DELETE FROM files WHERE path = ?", (path,))

    # ------------------------------------------------------------------ chunks

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: what it reads is one committed state, whatever an ingest commits meanwhile."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def version_and_count(self) -> tuple[str, int]:
        with self.snapshot() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            return (row[0] if row else ""), conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def vectors(self, dim: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(version, ids int64 (N,), vectors float32 (N, dim)) of every chunk in id order, read as one state."""
        with self.snapshot() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            rows = conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return (row[0] if row else ""), ids, vecs

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(
            "SELECT c.id, f.path, c.start_char, c.end_char, c.text FROM chunks c JOIN files f ON f.id = c.file_id "
            f"WHERE c.id IN ({marks})",
            list(ids),
        )
        return {r[0]: StoredChunk(*r) for r in rows}

    def bm25(self, query: str, n: int) -> list[tuple[int, float]]:
        """The `n` best chunks for `query` by FTS5's BM25, any of its words matching: (id, score), best first
        (SQLite's bm25() is lower-is-better; the score here is its negation, higher-is-better)."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        rows = self.conn.execute(
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts), rowid "
            "LIMIT ?",
            (match, n),
        )
        return [(chunk_id, -score) for chunk_id, score in rows]
