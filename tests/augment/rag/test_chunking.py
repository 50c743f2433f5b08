"""Chunks are exact slices of their source, sized in tokens, cut at the coarsest separator, overlapping."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augment.rag.rag_helpers import HashEmbedder
from lmstack.augment.rag.chunking import chunk_text
from lmstack.errors import ConfigError

words = HashEmbedder().token_spans


def chars(text: str) -> list[tuple[int, int]]:
    """One token per non-space character: a tokenizer that forces cuts inside words."""
    return [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]


SENTENCES = " ".join(f"Sentence number {i} says that the value is {i * 3}." for i in range(40))
PARAGRAPHS = "\n\n".join(f"Paragraph {i}: " + " ".join(["word"] * (5 + i % 4)) + "." for i in range(12))
UNICODE = (
    "Crème brûlée (e\u0301 combining) — naïve café.\n\n東京は日本の首都です。大阪は大きい。\n"
    "Emoji 🤖🚀 and a family 👨\u200d👩\u200d👧 in one grapheme; Arabic مرحبا بالعالم; math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢.\n\n"
) * 4
CRLF = "Line one of the file.\r\nLine two, still the first paragraph.\r\n\r\nA second paragraph.\r\n" * 6


def check_exact(text: str, spans, size: int, overlap: int) -> list:
    chunks = chunk_text(text, spans(text), size, overlap)
    tokens = {s for s, _ in spans(text)}
    covered = set()
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.text and not c.text[0].isspace() and not c.text[-1].isspace()
        assert c.tokens == sum(1 for s in tokens if c.start <= s < c.end) <= size
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace()), "a character is in no chunk"
    assert [c.start for c in chunks] == sorted({c.start for c in chunks})
    assert [c.end for c in chunks] == sorted({c.end for c in chunks})
    return chunks


@pytest.mark.parametrize(
    "text", [SENTENCES, PARAGRAPHS, UNICODE, CRLF], ids=["sentences", "paragraphs", "unicode", "crlf"]
)
@pytest.mark.parametrize("spans", [words, chars], ids=["words", "chars"])
@pytest.mark.parametrize("size,overlap", [(8, 0), (20, 5), (64, 16), (1000, 0)])
def test_offsets_are_exact_and_sizes_hold(text, spans, size, overlap):
    check_exact(text, spans, size, overlap)


def test_crlf_is_kept_inside_chunks():
    chunks = check_exact(CRLF, words, 40, 0)
    assert any("\r\n" in c.text for c in chunks)


@given(st.text(alphabet="ab é東🤖.!\n\r\t", max_size=300), st.integers(1, 30), st.integers(0, 29))
@settings(max_examples=150, deadline=None)
def test_any_text_chunks_exactly(text, size, overlap):
    check_exact(text, chars, size, min(overlap, size - 1))
    check_exact(text, words, size, min(overlap, size - 1))


def test_cuts_prefer_paragraphs_over_sentences():
    chunks = chunk_text(PARAGRAPHS, words(PARAGRAPHS), 25, 0)
    paragraphs = PARAGRAPHS.split("\n\n")
    assert len(chunks) > 3
    for c in chunks:  # every chunk is whole paragraphs
        assert all(p in paragraphs for p in c.text.split("\n\n"))


def test_neighbouring_chunks_overlap_by_up_to_overlap_tokens():
    spans = words(SENTENCES)
    chunks = chunk_text(SENTENCES, spans, 40, 12)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "no overlap"
        shared = sum(1 for s, _ in spans if b.start <= s < a.end)
        assert 0 < shared <= 12
    flat = chunk_text(SENTENCES, spans, 40, 0)
    assert all(b.start >= a.end for a, b in zip(flat, flat[1:]))


def test_a_run_without_separators_is_cut_between_tokens():
    text = "x" * 95
    chunks = chunk_text(text, chars(text), 10, 0)
    assert [len(c.text) for c in chunks] == [10] * 9 + [5]


def test_empty_and_whitespace_give_no_chunks():
    assert chunk_text("", [], 10, 0) == []
    assert chunk_text(" \n\r\n\t ", [], 10, 0) == []


@pytest.mark.parametrize("size,overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_sizes_are_config_errors(size, overlap):
    with pytest.raises(ConfigError, match="chunk"):
        chunk_text("some text", words("some text"), size, overlap)
