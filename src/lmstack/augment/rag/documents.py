"""The files a folder offers for retrieval, and the text of each: what chunk offsets refer to.

Plain text, Markdown and source code are decoded as UTF-8 and kept exactly (a BOM dropped, CRLF kept), so an
offset is an index into the file's characters. HTML and PDF have no such text: for them the offsets refer to
the text extracted here (`load_document(path).text`: HTML without tags, scripts and styles, one line per block;
a PDF's pages by `pypdf`, joined by blank lines), which the same file always gives again.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

from lmstack.errors import DataError

TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .adoc .org .tex .csv .tsv .log "
    ".py .pyi .c .h .cc .cpp .cxx .hpp .hh .cu .java .kt .scala .go .rs .js .jsx .ts .tsx .mjs .rb .php .cs "
    ".swift .m .lua .pl .r .jl .hs .ml .ex .exs .erl .clj .sh .bash .zsh .fish .ps1 .sql .proto "
    ".toml .yaml .yml .json .ini .cfg .conf .xml .css .scss".split()
)
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
PDF_SUFFIXES = frozenset({".pdf"})
TEXT_NAMES = frozenset({"Makefile", "Dockerfile", "README", "LICENSE", "CMakeLists.txt"})
SNIFF_BYTES = 8192

Kind = Literal["text", "html", "pdf"]


class UnreadableFile(DataError):
    """A file that cannot be read as a document (missing, no permission, binary, not UTF-8, a broken PDF)."""


@dataclass(frozen=True)
class Document:
    text: str  # what chunk offsets index into
    kind: Kind


def kind_of(path: str | Path) -> Kind | None:
    """The document kind a file name says, or None for a file that is not a document."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
        return "text"
    return None


def list_documents(root: Path, exclude: Path | None = None) -> list[str]:
    """Relative POSIX paths of the documents under `root`, sorted; hidden files and folders (`.git`, ...) and
    the folder `exclude` (an index kept inside the folder) are left out. Symlinked folders are not followed."""
    root = Path(root)
    skip = Path(os.path.abspath(exclude)) if exclude is not None else None
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(os.path.abspath(here / d)) != skip)
        found += [(here / f).relative_to(root).as_posix() for f in files if not f.startswith(".") and kind_of(f)]
    return sorted(found)


def load_document(path: str | Path, data: bytes | None = None) -> Document:
    """The text of a document file (`data`: its bytes, when already read). Raises `UnreadableFile`."""
    path = Path(path)
    kind = kind_of(path) or "text"
    if data is None:
        data = read_bytes(path)
    if kind == "pdf":
        return Document(_pdf_text(path, data), "pdf")
    text = _decode(path, data)
    return Document(html_text(text) if kind == "html" else text, kind)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read it ({exc.strerror or exc})") from exc


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:SNIFF_BYTES]:
        raise UnreadableFile(f"{path}: a binary file (it holds NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from exc


def _pdf_text(path: Path, data: bytes) -> str:
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise DataError(f"{path}: reading PDFs needs pypdf: pip install 'lmstack[rag]'") from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except Exception as exc:  # pypdf raises many types (PdfReadError, KeyError, ValueError, ...) on broken files
        raise UnreadableFile(f"{path}: not a readable PDF ({type(exc).__name__}: {exc})") from exc


class _HTMLText(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    BLOCK = frozenset(
        "address article aside blockquote br dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 h6 header "
        "hr li main nav ol p pre section table td th title tr ul".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.skip += tag in self.SKIP
        self.pre += tag == "pre"
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        self.pre = max(0, self.pre - (tag == "pre"))
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(html: str) -> str:
    """The readable text of an HTML page: one line per block element, blank lines collapsed."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
