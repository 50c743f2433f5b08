"""Token-sized chunks with overlap, cut at the coarsest separator that fits, each an exact slice of the source.

A chunk is `(start, end)` in character (code point) offsets of the text it came from, and `text[start:end]` is
its text, byte for byte: nothing is normalised, re-joined or stripped inside a chunk (CRLF stays CRLF), so a
citation can point at the source. Sizes are counted in the embedder's own tokens, from one tokenisation of
the whole text (`spans`: each token's character offsets), so that a chunk fits the encoder's window.

Splitting is recursive: a span too long for one chunk is cut after blank lines, then after line breaks, then
after sentence ends, then after any whitespace, and as a last resort between tokens. The pieces are then packed
greedily into chunks of at most `size` tokens, and each chunk starts with the last pieces of the one before
(up to `overlap` tokens), so that a fact cut at a chunk boundary is whole in one of them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from lmstack.errors import ConfigError

# Coarsest first; each match's end is a cut point (the separator stays with the piece before it).
SEPARATORS = (
    re.compile(r"\n[^\S\n]*\n\s*"),  # blank line (also CRLF CRLF)
    re.compile(r"\n\s*"),  # line break
    re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[。！？])\s*"),  # sentence end
    re.compile(r"\s+"),  # any whitespace
)


@dataclass(frozen=True)
class Chunk:
    """`text == source[start:end]`; `tokens` is its size in the embedder's tokens."""

    start: int
    end: int
    text: str
    tokens: int


class _Counter:
    """Tokens in `[a, b)`: the tokens that start there (one bisect per call, on one tokenisation)."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.starts = sorted(s for s, _ in spans)

    def __call__(self, a: int, b: int) -> int:
        return bisect.bisect_left(self.starts, b) - bisect.bisect_left(self.starts, a)

    def cuts(self, a: int, b: int, size: int) -> list[int]:
        """Cut points in `(a, b)` every `size` tokens: the last resort for a span without separators."""
        lo, hi = bisect.bisect_left(self.starts, a), bisect.bisect_left(self.starts, b)
        return [self.starts[i] for i in range(lo + size, hi, size) if self.starts[i] > a]


def check_sizes(size: int, overlap: int) -> None:
    if size < 1:
        raise ConfigError(f"chunk size must be at least 1 token, got {size}")
    if not 0 <= overlap < size:
        raise ConfigError(f"chunk overlap must be in [0, size={size}), got {overlap}")


def chunk_text(text: str, spans: list[tuple[int, int]], size: int = 192, overlap: int = 32) -> list[Chunk]:
    """Chunks of at most `size` tokens (by `spans`, the text's token offsets) that overlap by up to `overlap`.
    Whitespace at a chunk's edges is left out; a text of only whitespace gives no chunks."""
    check_sizes(size, overlap)
    count = _Counter(spans)
    pieces = _split(text, 0, len(text), 0, count, size)
    chunks: list[Chunk] = []
    i = 0
    while i < len(pieces):
        j = i + 1  # pieces[i:j] is the chunk; each piece fits alone, so a chunk is never empty
        while j < len(pieces) and count(pieces[i][0], pieces[j][1]) <= size:
            j += 1
        chunk = _trimmed(text, pieces[i][0], pieces[j - 1][1], count)
        if chunk is not None and (not chunks or chunk.end > chunks[-1].end):
            chunks.append(chunk)
        if j == len(pieces):
            break
        # The next chunk starts with the longest tail of this one within `overlap` tokens that leaves room for
        # the next piece, and always moves forward by at least one piece.
        k = j
        while k - 1 > i and count(pieces[k - 1][0], pieces[j - 1][1]) <= overlap:
            if count(pieces[k - 1][0], pieces[j][1]) > size:
                break
            k -= 1
        i = k
    return chunks


def _split(text: str, a: int, b: int, level: int, count: _Counter, size: int) -> list[tuple[int, int]]:
    """`[a, b)` as contiguous pieces of at most `size` tokens, cut at the coarsest separator that helps."""
    if count(a, b) <= size:
        return [(a, b)]
    if level == len(SEPARATORS):
        cuts = [a, *count.cuts(a, b, size), b]
        return list(zip(cuts, cuts[1:]))
    cuts = [m.end() for m in SEPARATORS[level].finditer(text, a, b) if a < m.end() < b]
    if not cuts:
        return _split(text, a, b, level + 1, count, size)
    bounds = [a, *cuts, b]
    out: list[tuple[int, int]] = []
    for lo, hi in zip(bounds, bounds[1:]):
        out += _split(text, lo, hi, level + 1, count, size)
    return out


def _trimmed(text: str, a: int, b: int, count: _Counter) -> Chunk | None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return Chunk(a, b, text[a:b], count(a, b)) if b > a else None
