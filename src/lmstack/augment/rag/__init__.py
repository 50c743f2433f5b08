"""Retrieval-augmented generation: ingest a folder, chunk, embed, index, retrieve.

`documents` (what a file's text is), `chunking` (token-sized chunks with exact offsets), `embed` (MiniLM
sentence embeddings), `store` (SQLite + FTS5: the ground truth), `vectors` (the FAISS cache), `index` (an index
folder and its settings), `ingest` (incremental, crash-safe), `retrieve` (BM25, dense, RRF), `context`
(passages fenced as untrusted data for a prompt), `cli` (`lmstack rag`). Nothing is imported here, so that
`import lmstack.augment.rag.embed` (as the server does) stays free of faiss and pypdf.
"""
