"""Ingest a folder into an index: chunk and embed what changed, drop what was removed, leave the rest.

The index mirrors the folder: a file is re-embedded only when the SHA-256 of its bytes differs from the one
stored (so touching a file costs nothing, and an unchanged folder costs no embedding at all), and a file no
longer in the folder loses its chunks. Chunks of several files are embedded in one batch, then each file is
written in its own transaction, so an ingest killed at any point leaves every file either fully in the index
or as it was before; the next ingest picks up the rest.

A file that cannot be read as a document (unreadable, binary, not UTF-8, a broken PDF) is skipped with an
`IngestWarning` naming it, and whatever the index held for it stays. A file with no text at all (an empty
file, a PDF without a text layer) is recorded with no chunks, with a warning too.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmstack.augment.rag.chunking import Chunk, chunk_text
from lmstack.augment.rag.documents import (
    HTML_SUFFIXES,
    PDF_SUFFIXES,
    TEXT_SUFFIXES,
    Document,
    UnreadableFile,
    list_documents,
    load_document,
    read_bytes,
)
from lmstack.augment.rag.embed import Embedder
from lmstack.augment.rag.index import RagIndex
from lmstack.data.tasks.common import progress
from lmstack.errors import DataError


class IngestWarning(UserWarning):
    """A file of the folder that was skipped or gave no text."""


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): left as the index had them
    empty: list[str] = field(default_factory=list)  # in the index with no chunks: no text in them
    chunks_embedded: int = 0
    encode_calls: int = 0
    chunks_total: int = 0

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged, {len(self.skipped)} skipped; {self.chunks_embedded} chunks embedded, "
            f"{self.chunks_total} in the index"
        )


@dataclass
class _Pending:
    path: str
    sha256: str
    document: Document
    chunks: list[Chunk]
    new: bool


def ingest(
    folder: str | Path,
    index_path: str | Path,
    embedder: Embedder,
    chunk_tokens: int | None = None,
    overlap: int | None = None,
    hnsw_above: int | None = None,
    batch_size: int = 64,
) -> IngestReport:
    """Bring the index at `index_path` (created if missing) in line with `folder`. Chunk sizes default to the
    index's (or, for a new index, `index.CHUNK_TOKENS` / `index.OVERLAP`); `batch_size` chunks are embedded
    per `encode` call."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; `lmstack rag ingest` takes a folder of documents")
    paths = list_documents(root, exclude=Path(index_path))
    if not paths:
        kinds = " ".join(sorted(TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES))
        raise DataError(f"{root} holds no documents to ingest (looked for {kinds}); the index was left as it was")
    report = IngestReport()
    with RagIndex.open_or_create(index_path, embedder, chunk_tokens, overlap, hnsw_above) as index:
        settings = index.settings
        known = index.store.file_hashes()
        changed = []
        for rel in paths:
            try:
                sha = hashlib.sha256(read_bytes(root / rel)).hexdigest()
            except UnreadableFile as exc:
                _skip(report, rel, exc)
                continue
            (report.unchanged if known.get(rel) == sha else changed).append(rel)
        for rel in sorted(set(known) - set(paths)):
            index.store.delete_file(rel)
            report.removed.append(rel)

        pending: list[_Pending] = []
        with progress(len(changed), f"embedding {root}") as advance:
            for rel in changed:
                try:
                    data = read_bytes(root / rel)
                    doc = load_document(root / rel, data)
                except UnreadableFile as exc:
                    _skip(report, rel, exc)
                    advance(1)
                    continue
                chunks = chunk_text(doc.text, embedder.token_spans(doc.text), settings.chunk_tokens, settings.overlap)
                pending.append(_Pending(rel, hashlib.sha256(data).hexdigest(), doc, chunks, rel not in known))
                if sum(len(p.chunks) for p in pending) >= batch_size:
                    _write(index, embedder, pending, report)
                    advance(len(pending))
                    pending = []
            _write(index, embedder, pending, report)
            advance(len(pending))
        if index.store.meta().get("root") != os.path.abspath(root):
            index.store.set_meta({"root": os.path.abspath(root)}, stamp=False)
        index.vectors()  # leave a fresh FAISS cache behind
        report.chunks_total = index.store.count()
    return report


def _write(index: RagIndex, embedder: Embedder, pending: list[_Pending], report: IngestReport) -> None:
    """Embed the pending files' chunks in one batch, then commit each file in its own transaction."""
    texts = [c.text for p in pending for c in p.chunks]
    vectors = np.zeros((0, index.settings.dim), dtype=np.float32)
    if texts:
        vectors = torch.as_tensor(embedder.encode(texts)).detach().float().cpu().numpy()
        report.encode_calls += 1
        report.chunks_embedded += len(texts)
        if vectors.shape != (len(texts), index.settings.dim):
            raise DataError(f"the embedder returned shape {tuple(vectors.shape)} for {len(texts)} chunks")
    at = 0
    for p in pending:
        index.store.put_file(p.path, p.sha256, p.document.kind, len(p.document.text), p.chunks, vectors[at:])
        at += len(p.chunks)
        (report.added if p.new else report.updated).append(p.path)
        if not p.chunks:
            report.empty.append(p.path)
            hint = " (a scanned PDF needs OCR first)" if p.document.kind == "pdf" else ""
            warnings.warn(
                f"{p.path}: no text to index{hint}; it is in the index with no chunks", IngestWarning, stacklevel=3
            )


def _skip(report: IngestReport, rel: str, exc: UnreadableFile) -> None:
    report.skipped.append((rel, str(exc)))
    warnings.warn(f"skipped {exc}; the index keeps what it had for it", IngestWarning, stacklevel=3)
