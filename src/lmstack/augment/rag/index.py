"""A RAG index on disk: a folder with `index.sqlite` (the ground truth, see `store`) and `faiss/` (a cache of the
vectors, see `vectors`). Its settings (embedder name and dimension, chunk sizes) are stored in it and checked
on every open, so that chunks and queries are never embedded by different models.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lmstack.augment.rag.chunking import check_sizes
from lmstack.augment.rag.embed import Embedder
from lmstack.augment.rag.store import Store
from lmstack.augment.rag.vectors import HNSW_ABOVE, load_or_build
from lmstack.errors import DataError
from lmstack.fileio import atomic_directory

FORMAT = "lmstack-rag-1"
DB_NAME, FAISS_DIR = "index.sqlite", "faiss"
CHUNK_TOKENS, OVERLAP = 192, 32  # MiniLM reads 256 tokens; 192 leaves room and keeps chunks about one topic


class RagIndexError(DataError):
    """An index that is missing, is not an lmstack RAG index, or was built with another embedder or chunking."""


@dataclass(frozen=True)
class IndexSettings:
    embedder: str
    dim: int
    chunk_tokens: int = CHUNK_TOKENS
    overlap: int = OVERLAP
    hnsw_above: int = HNSW_ABOVE  # exact search below this many vectors, HNSW from there on

    def to_meta(self) -> dict[str, str]:
        return {"format": FORMAT, **{f.name: str(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> IndexSettings:
        return cls(**{f.name: meta[f.name] if f.type == "str" else int(meta[f.name]) for f in fields(cls)})


class RagIndex:
    """An open index: `store` (SQLite), `settings`, and `vectors()` (the FAISS index, loaded on first use)."""

    def __init__(self, path: Path, store: Store, settings: IndexSettings) -> None:
        self.path, self.store, self.settings = path, store, settings
        self._vectors: Any = None
        self._vectors_version = ""

    @classmethod
    def open(cls, path: str | Path, embedder: Embedder | None = None) -> RagIndex:
        """An existing index; with `embedder`, checked to be the one it was built with."""
        path = Path(path)
        if not path.exists():
            raise RagIndexError(f"no RAG index at {path}; build one with `lmstack rag ingest DIR --index {path}`")
        if not (path / DB_NAME).is_file():
            raise RagIndexError(f"{path} is not an lmstack RAG index (it has no {DB_NAME})")
        index = cls._connect(path)
        try:
            if embedder is not None:
                index.check_embedder(embedder)
        except RagIndexError:
            index.close()
            raise
        return index

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        embedder: Embedder,
        chunk_tokens: int | None = None,
        overlap: int | None = None,
        hnsw_above: int | None = None,
    ) -> RagIndex:
        """The index at `path`, created (with these settings, or the defaults) when there is none. An existing
        index must match the embedder and any chunk sizes given; `hnsw_above` may change (the cache is rebuilt)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RagIndexError(f"{path} is a file, not an lmstack RAG index folder")
        if (path / DB_NAME).is_file():
            index = cls.open(path, embedder)
            s = index.settings
            for name, given in (("chunk_tokens", chunk_tokens), ("overlap", overlap)):
                if given is not None and given != getattr(s, name):
                    index.close()
                    raise RagIndexError(
                        f"{path} was chunked with {name}={getattr(s, name)}, not {given}; "
                        "ingest with the index's settings or into a new index"
                    )
            if hnsw_above is not None and hnsw_above != s.hnsw_above:
                index.settings = IndexSettings(s.embedder, s.dim, s.chunk_tokens, s.overlap, hnsw_above)
                index.store.set_meta(index.settings.to_meta(), stamp=False)
            return index
        if path.is_dir() and any(path.iterdir()):
            raise RagIndexError(f"{path} is a folder that is not an lmstack RAG index; give a new or empty folder")
        settings = IndexSettings(
            embedder.name,
            int(embedder.dim),
            CHUNK_TOKENS if chunk_tokens is None else chunk_tokens,
            OVERLAP if overlap is None else overlap,
            HNSW_ABOVE if hnsw_above is None else hnsw_above,
        )
        check_sizes(settings.chunk_tokens, settings.overlap)
        with atomic_directory(path) as tmp:  # a new index appears whole, with its settings, or not at all
            store = Store(tmp / DB_NAME, create=True)
            store.set_meta(settings.to_meta())
            store.close()
        return cls.open(path, embedder)

    @classmethod
    def _connect(cls, path: Path) -> RagIndex:
        store = None
        try:
            store = Store(path / DB_NAME)
            meta = store.meta()
        except sqlite3.DatabaseError as exc:
            if store is not None:
                store.close()
            raise RagIndexError(f"{path / DB_NAME} is corrupt or not an lmstack RAG index ({exc})") from exc
        if meta.get("format") != FORMAT:
            store.close()
            raise RagIndexError(f"{path} is not an lmstack RAG index of format {FORMAT} (found {meta.get('format')})")
        try:
            settings = IndexSettings.from_meta(meta)
        except (KeyError, ValueError) as exc:
            store.close()
            raise RagIndexError(f"{path}: the index settings are incomplete or malformed ({exc})") from exc
        return cls(path, store, settings)

    def check_embedder(self, embedder: Embedder) -> None:
        s = self.settings
        if embedder.name != s.embedder or int(embedder.dim) != s.dim:
            raise RagIndexError(
                f"{self.path} was built with the embedder {s.embedder!r} (dim {s.dim}), not {embedder.name!r} "
                f"(dim {embedder.dim}); use {s.embedder!r}, or ingest into a new index"
            )

    @property
    def root(self) -> str | None:
        """The folder last ingested into this index (chunk paths are relative to it)."""
        return self.store.meta().get("root")

    def vectors(self) -> Any:
        """The FAISS index for the current contents (rebuilt from SQLite if the cache is stale)."""
        version, _ = self.store.version_and_count()
        if self._vectors is None or version != self._vectors_version:
            s = self.settings
            self._vectors, self._vectors_version = load_or_build(self.store, self.path / FAISS_DIR, s.dim, s.hnsw_above)
        return self._vectors

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> RagIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
