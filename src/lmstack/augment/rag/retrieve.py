"""Retrieval: BM25 (SQLite FTS5), dense (FAISS), and both fused by reciprocal rank fusion.

BM25 finds rare exact words (names, codes) that an encoder blurs; dense search finds paraphrases that share
no word with the query. RRF fuses the two rankings without calibrating their scores against each other:
score(chunk) = sum over rankings of 1 / (k + rank), ranks from 1, k = 60 (Cormack et al., 2009).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lmstack.augment.rag.embed import Embedder
from lmstack.augment.rag.index import RagIndex
from lmstack.augment.rag.vectors import search as dense_search
from lmstack.errors import ConfigError

RRF_K = 60
MODES = ("hybrid", "bm25", "dense")
Mode = Literal["hybrid", "bm25", "dense"]


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: `text == load_document(root / path).text[start:end]` (`root`: the ingested folder,
    `RagIndex.root`); `score` is the fused score in hybrid mode, else BM25's or the inner product."""

    path: str
    start: int
    end: int
    text: str
    score: float
    chunk_id: int
    bm25_rank: int | None = None  # 1-based rank in each retrieval, None where that one did not return it
    dense_rank: int | None = None


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of rankings of ids (best first): (id, score), best first; ties go to the id
    ranked best anywhere, then the smaller id, so the order is deterministic."""
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, rank), rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


def embed_query(embedder: Embedder, query: str) -> np.ndarray:
    return torch.as_tensor(embedder.encode([query])).detach().float().cpu().numpy()[0]


def search(
    index: RagIndex,
    query: str,
    embedder: Embedder | None = None,
    k: int = 5,
    mode: Mode = "hybrid",
    candidates: int = 50,
) -> list[Hit]:
    """The `k` best chunks for `query`. `mode` hybrid fuses the best `candidates` of BM25 and of dense search
    by RRF; bm25 needs no embedder. The embedder must be the index's (checked)."""
    if mode not in MODES:
        raise ConfigError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    pool = max(candidates, k)
    lexical = index.store.bm25(query, pool) if mode != "dense" else []
    dense: list[tuple[int, float]] = []
    if mode != "bm25":
        if embedder is None:
            raise ConfigError(f"{mode} search needs the index's embedder ({index.settings.embedder})")
        index.check_embedder(embedder)
        dense = dense_search(index.vectors(), embed_query(embedder, query), pool)
    bm25_ranks = {cid: r for r, (cid, _) in enumerate(lexical, start=1)}
    dense_ranks = {cid: r for r, (cid, _) in enumerate(dense, start=1)}
    if mode == "hybrid":
        ranked = rrf([[cid for cid, _ in lexical], [cid for cid, _ in dense]])[:k]
    else:
        ranked = (lexical if mode == "bm25" else dense)[:k]
    rows = index.store.chunks([cid for cid, _ in ranked])
    return [
        Hit(
            rows[cid].path,
            rows[cid].start,
            rows[cid].end,
            rows[cid].text,
            score,
            cid,
            bm25_ranks.get(cid),
            dense_ranks.get(cid),
        )
        for cid, score in ranked
        if cid in rows  # a chunk deleted by an ingest since the FAISS index was loaded
    ]
