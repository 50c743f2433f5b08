"""Every kind of document ingests with offsets that map back: into the file's text for text files, into the
extracted text (`load_document(path).text`) for HTML and PDF."""

import sqlite3
from pathlib import Path

import pytest

from augment.rag.rag_helpers import make_pdf
from lmstack.augment.rag.documents import html_text, list_documents, load_document
from lmstack.augment.rag.index import DB_NAME
from lmstack.augment.rag.ingest import IngestWarning, ingest

pytest.importorskip("faiss", reason="the RAG index needs faiss-cpu (make setup installs the rag extra)")
pytest.importorskip("pypdf", reason="PDF reading needs pypdf (the rag extra)")

HTML = """<!doctype html><html><head><title>Harbour &amp; Lights</title>
<style>body { color: red }</style><script>var secret = "not text";</script></head>
<body><h1>The Harbour</h1><p>Ships   arrive at <b>dawn</b>,\nand leave at dusk.</p>
<ul><li>Pier one</li><li>Pier two &mdash; closed</li></ul><pre>  keep   this</pre></body></html>"""


def stored_chunks(index: Path) -> dict[str, list[tuple[int, int, str]]]:
    conn = sqlite3.connect(index / DB_NAME)
    rows = conn.execute(
        "SELECT f.path, c.start_char, c.end_char, c.text FROM chunks c JOIN files f ON f.id = c.file_id "
        "ORDER BY f.path, c.ord"
    )
    out: dict[str, list[tuple[int, int, str]]] = {}
    for path, start, end, text in rows:
        out.setdefault(path, []).append((start, end, text))
    conn.close()
    return out


def test_html_text_drops_markup_scripts_and_styles():
    text = html_text(HTML)
    assert text.startswith("Harbour & Lights\n\nThe Harbour\n\n")
    assert "Ships arrive at dawn, and leave at dusk." in text  # whitespace inside a block collapses
    assert "Pier two — closed" in text and "keep   this" in text
    assert "secret" not in text and "color" not in text and "<" not in text


def test_every_kind_of_file_maps_back_to_its_text(tmp_path, embedder):
    docs = tmp_path / "docs"
    (docs / "src").mkdir(parents=True)
    (docs / "notes.md").write_text("# Notes\n\nCafé ☕ and 東京 🤖 on one line.\n\n" * 20, encoding="utf-8")
    (docs / "windows.txt").write_bytes(("First line.\r\nSecond line.\r\n\r\nNew paragraph.\r\n" * 20).encode())
    (docs / "src" / "tool.py").write_text("def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n" * 20)
    (docs / "page.html").write_text(HTML * 5, encoding="utf-8")
    make_pdf(docs / "report.pdf", [["The first page of the report.", "It has two lines."], ["Page two."] * 30])
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # not a document type: not listed
    (docs / ".hidden.txt").write_text("hidden")
    assert list_documents(docs) == ["notes.md", "page.html", "report.pdf", "src/tool.py", "windows.txt"]

    report = ingest(docs, tmp_path / "index", embedder, chunk_tokens=24, overlap=6)
    assert sorted(report.added) == list_documents(docs) and not report.skipped
    chunks = stored_chunks(tmp_path / "index")
    for path, rows in chunks.items():
        text = load_document(docs / path).text
        assert len(rows) > 1, path
        for start, end, chunk in rows:
            assert text[start:end] == chunk, (path, start, end)
    assert load_document(docs / "windows.txt").text == (docs / "windows.txt").read_bytes().decode()
    assert any("\r\n" in c for _, _, c in chunks["windows.txt"])
    pdf_text = load_document(docs / "report.pdf").text
    assert pdf_text.startswith("The first page of the report.\nIt has two lines.\n\nPage two.")
    assert load_document(docs / "page.html").kind == "html"


def test_a_pdf_without_text_is_recorded_empty_with_a_warning(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Some real text.")
    make_pdf(docs / "scan.pdf", [[], []])
    with pytest.warns(IngestWarning, match=r"scan\.pdf: no text to index \(a scanned PDF needs OCR first\)"):
        report = ingest(docs, tmp_path / "index", embedder)
    assert report.empty == ["scan.pdf"] and "scan.pdf" in report.added
    assert "scan.pdf" not in stored_chunks(tmp_path / "index")
    again = ingest(docs, tmp_path / "index", embedder)  # recorded, so not re-read, and no second warning
    assert again.unchanged == ["a.txt", "scan.pdf"] and again.chunks_embedded == 0


def test_a_broken_pdf_is_skipped_with_a_warning_naming_it(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Some real text.")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.warns(IngestWarning, match=r"broken\.pdf: not a readable PDF"):
        report = ingest(docs, tmp_path / "index", embedder)
    assert report.added == ["a.txt"] and [p for p, _ in report.skipped] == ["broken.pdf"]
