"""Shared by the RAG tests and the fresh Python processes they start (`run_python`); imported as
`augment.rag.rag_helpers` (tests/ is on the path).

`HashEmbedder` is a real implementation of the embedder interface, not a mock: hashed bag-of-words vectors,
deterministic and instant, so that index mechanics can be tested without a model. It counts its work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

TESTS = Path(__file__).resolve().parents[2]


class HashEmbedder:
    """Each word adds ±1 to a hashed coordinate; vectors are L2-normalised. `delay` seconds per `encode` call
    slows an ingest down enough to kill it mid-way."""

    def __init__(self, dim: int = 64, name: str = "hash-bow", delay: float = 0.0) -> None:
        self.name, self._dim, self.delay = f"{name}-{dim}", dim, delay
        self.calls = 0
        self.texts = 0

    @property
    def dim(self) -> int:
        return self._dim

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        self.texts += len(texts)
        if self.delay:
            time.sleep(self.delay)
        out = torch.zeros(len(texts), self._dim)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self._dim] += 1.0 if (h >> 32) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


def write_corpus(root: Path, n: int = 12) -> Path:
    """`n` small text files, each about one fictional town (its name is the rare word a search can find)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"Town{i:02d}ville"
        paragraphs = [
            f"{name} lies on the river number {i}. It was founded by the guild of {i * 7} weavers.",
            f"The main export of {name} is cloth; the market opens on day {i % 7} of the week.",
            f"Visitors to {name} often remark on the bridges, of which there are {i + 2}.",
        ]
        (root / f"town{i:02d}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return root


def python_command(code: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `code` in a fresh Python (this venv) that can import `augment.rag.rag_helpers`."""
    return [sys.executable, "-c", textwrap.dedent(code), *args], {**os.environ, "PYTHONPATH": str(TESTS)}


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` with `args` (its sys.argv[1:]) in a fresh Python; asserts that it exits 0."""
    argv, env = python_command(code, *args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def last_json(proc: subprocess.CompletedProcess):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_pdf(path: Path, pages: Sequence[Sequence[str]]) -> Path:
    """A PDF with one page per entry, each line of an entry a line of Helvetica text; an empty entry is a blank
    page (no text layer: what a scanned page looks like to a text extractor)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    def name(s: str) -> NameObject:
        return NameObject(s)

    writer = PdfWriter()
    for lines in pages:
        page = writer.add_blank_page(width=612, height=792)
        if not lines:
            continue
        font = DictionaryObject({name("/Type"): name("/Font"), name("/Subtype"): name("/Type1"),
                                 name("/BaseFont"): name("/Helvetica")})  # fmt: skip
        page[name("/Resources")] = DictionaryObject({name("/Font"): DictionaryObject({name("/F1"): font})})
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        stream = DecodedStreamObject()
        stream.set_data(("BT /F1 12 Tf 14 TL 72 720 Td " + " T* ".join(f"({s}) Tj" for s in escaped) + " ET").encode())
        page.replace_contents(stream)
    with open(path, "wb") as f:
        writer.write(f)
    return path


def tiny_chat_llm_parts(max_seq_len: int = 2048):
    """A random-init 2-layer llama and the tests' tiny BPE with a ChatML template: (model, tokenizer). Its
    context is long enough for a prompt of a few fenced passages (tests/testutil's tiny_decoder has 128)."""
    from lmstack.models import DecoderLM, model_config
    from lmstack.tokenizer import CHATML_TEMPLATE
    from testutil import tiny_bpe

    tok = tiny_bpe()
    tok.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    cfg = model_config("llama-tiny", vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       d_ff=96, max_seq_len=max_seq_len)  # fmt: skip
    return DecoderLM(cfg).eval(), tok


@contextmanager
def small_kb(root: Path, n: int = 60, seed: int = 3) -> Iterator[tuple[list[dict], Any, HashEmbedder]]:
    """A small knowledge-base train split written as a folder under `root` and ingested with the hash embedder:
    (questions, the open index, the embedder)."""
    from lmstack.augment.rag.index import RagIndex
    from lmstack.augment.rag.ingest import ingest
    from lmstack.augment.rag.trajectories import write_kb_folder
    from lmstack.data.tasks import generate

    data = generate("knowledge_base", n, seed=seed, split="train")
    embedder = HashEmbedder()
    ingest(write_kb_folder(data["documents"], root / "docs"), root / "index", embedder)
    with RagIndex.open(root / "index", embedder) as index:
        yield data["items"], index, embedder
