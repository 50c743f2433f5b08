"""The dense half of the index: FAISS over the chunk vectors, derived from SQLite and cached on disk.

SQLite holds every vector (the ground truth); the FAISS index is a cache of them in `faiss/` beside it, with
a stamp of the SQLite `version` it was built from. On open, a cache whose stamp is not the current version
(an ingest killed mid-way, a file deleted, the cache lost or corrupt) is rebuilt from SQLite, so the two can
never disagree. The cache folder is replaced as a whole (`atomic_directory`), index and stamp together.

Search is exact (inner product over all vectors) below `hnsw_above` vectors and HNSW above, where exact search
would be slow; with unit vectors the inner product is the cosine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmstack.augment.rag.store import Store
from lmstack.errors import DataError
from lmstack.fileio import atomic_directory, write_json

HNSW_ABOVE = 20_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise DataError("the RAG index needs faiss: pip install 'lmstack[rag]'") from exc
    return faiss


def kind_for(count: int, hnsw_above: int) -> str:
    return "hnsw" if count >= hnsw_above else "flat"


def build(ids: np.ndarray, vectors: np.ndarray, hnsw_above: int = HNSW_ABOVE) -> Any:
    """A FAISS index over `vectors` that answers with `ids` (chunk ids)."""
    faiss = _faiss()
    dim = vectors.shape[1]
    if kind_for(len(ids), hnsw_above) == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap(inner)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids))
    return index


def load_or_build(store: Store, folder: Path, dim: int, hnsw_above: int = HNSW_ABOVE) -> tuple[Any, str]:
    """(FAISS index, the store version it holds): the cache in `folder` when its stamp is the current version,
    else rebuilt from SQLite (and cached again when the folder is writable)."""
    faiss = _faiss()
    folder = Path(folder)
    version, count = store.version_and_count()
    want = {"version": version, "count": count, "dim": dim, "kind": kind_for(count, hnsw_above)}
    try:
        if json.loads((folder / "stamp.json").read_text(encoding="utf-8")) == want:
            index = faiss.read_index(str(folder / "index.faiss"))
            if index.ntotal == count and index.d == dim:
                return index, version
    except (OSError, ValueError, RuntimeError):  # missing, unreadable or corrupt cache: rebuild it
        pass
    version, ids, vectors = store.vectors(dim)
    index = build(ids, vectors, hnsw_above)
    try:
        save(folder, index, {**want, "version": version, "count": len(ids), "kind": kind_for(len(ids), hnsw_above)})
    except OSError:  # a read-only index still answers, from the rebuilt copy in memory
        pass
    return index, version


def save(folder: Path, index: Any, stamp: dict) -> None:
    faiss = _faiss()
    with atomic_directory(folder) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        write_json(tmp / "stamp.json", stamp)


def search(index: Any, query: np.ndarray, n: int) -> list[tuple[int, float]]:
    """The `n` nearest chunks to one query vector: (chunk id, inner product), best first."""
    if index.ntotal == 0 or n <= 0:
        return []
    faiss = _faiss()
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = max(HNSW_EF_SEARCH, n)
    scores, ids = index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), min(n, index.ntotal))
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
