"""`lmstack rag ingest DIR --index PATH` and `lmstack rag search QUERY --index PATH`.

Kept here rather than in `lmstack.cli` (which only registers `add_rag_parser`); the heavy imports (torch,
faiss, the model) happen in the handlers, so that `lmstack --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings


def _cmd_ingest(args: argparse.Namespace) -> int:
    from lmstack.augment.rag.embed import SentenceEmbedder
    from lmstack.augment.rag.ingest import ingest

    embedder = SentenceEmbedder.from_pretrained(args.embedder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = ingest(args.folder, args.index, embedder, args.chunk_tokens, args.overlap, batch_size=args.batch_size)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"{args.index}: {report.summary()}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from lmstack.augment.rag.context import format_context
    from lmstack.augment.rag.index import RagIndex
    from lmstack.augment.rag.retrieve import search

    with RagIndex.open(args.index) as index:  # a missing or foreign index fails here, before a model loads
        embedder = None
        if args.mode != "bm25":
            from lmstack.augment.rag.embed import SentenceEmbedder

            embedder = SentenceEmbedder.from_pretrained(args.embedder or index.settings.embedder)
        hits = search(index, args.query, embedder, k=args.k, mode=args.mode)
    if args.format == "context":
        print(format_context(hits))
    elif args.format == "json":
        for hit in hits:
            row = {"path": hit.path, "start": hit.start, "end": hit.end, "score": hit.score, "text": hit.text}
            print(json.dumps(row, ensure_ascii=False))
    else:
        for n, hit in enumerate(hits, start=1):
            snippet = " ".join(hit.text.split())
            print(f"[{n}] {hit.path}:{hit.start}-{hit.end}  score {hit.score:.4f}")
            print(f"    {snippet[:300]}{'...' if len(snippet) > 300 else ''}")
    if not hits:
        print("no matches", file=sys.stderr)
    return 0


def add_rag_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rag", help="retrieval over a folder of documents: ingest it into an index, search it")
    rag_sub = p.add_subparsers(dest="rag_command", metavar="ACTION")
    rag_sub.required = True
    ing = rag_sub.add_parser(
        "ingest",
        help="chunk, embed and index a folder (txt, md, html, source code, pdf); re-run to update it",
        description="Make the index mirror DIR: changed files are re-embedded, removed files deleted, "
        "unchanged files cost nothing. Unreadable or binary files are skipped with a warning.",
    )
    ing.add_argument("folder", metavar="DIR", help="folder of documents")
    ing.add_argument("--index", required=True, metavar="PATH", help="index folder (created if missing)")
    ing.add_argument("--embedder", default="all-minilm-l6-v2", help="sentence embedding model (default MiniLM)")
    ing.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk (a new index: 192)")
    ing.add_argument("--overlap", type=int, default=None, help="tokens shared by neighbouring chunks (new: 32)")
    ing.add_argument("--batch-size", type=int, default=64, help="chunks embedded per batch")
    ing.set_defaults(func=_cmd_ingest)
    se = rag_sub.add_parser(
        "search",
        help="the chunks of an index that best match a query (hybrid BM25 + dense by default)",
        description="Hybrid retrieval: BM25 (SQLite FTS5) and dense (FAISS) fused by reciprocal rank fusion.",
    )
    se.add_argument("query")
    se.add_argument("--index", required=True, metavar="PATH", help="index folder built by `lmstack rag ingest`")
    se.add_argument("--k", type=int, default=5, help="chunks to return")
    se.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid")
    se.add_argument("--embedder", default=None, help="default: the model the index was built with")
    se.add_argument(
        "--format",
        choices=["text", "json", "context"],
        default="text",
        help="text (a list), json (a line per hit) or context (numbered, fenced passages for a prompt)",
    )
    se.set_defaults(func=_cmd_search)
