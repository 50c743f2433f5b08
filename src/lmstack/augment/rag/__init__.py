"""Retrieval-augmented generation: ingest, chunk, embed, index, retrieve."""
