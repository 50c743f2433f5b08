"""Token ids → text while generating: pieces that never split a UTF-8 character, and stop strings.

Byte-level BPE emits a multi-byte character over several tokens; decoding a prefix then ends in U+FFFD.
`IncrementalDecoder` holds such a tail back until the character is complete. `StopMatcher` finds stop
strings across token boundaries and holds back text that might still become a stop string, so that a
streamed answer never shows (a part of) the stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmstack.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"


class IncrementalDecoder:
    """Feed token ids one at a time; get back the new, complete text each time ("" while incomplete).

    Decodes only a short window (from the last emitted boundary), so cost per token stays constant."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # tokens before this index have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. a truly invalid byte sequence at the very end)."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Accumulates text and reports the safe-to-show part; stops at the first stop string."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = tuple(s for s in stop if s)
        self.text = ""
        self.shown = 0  # characters of `text` already released
        self.stopped = False
        self._longest = max((len(s) for s in self.stop), default=0)

    def feed(self, piece: str) -> str:
        """Add decoded text; return the newly releasable text (without any stop string)."""
        if self.stopped or not piece:
            return ""
        start = max(0, len(self.text) - self._longest + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, upto: int) -> str:
        out = self.text[self.shown : upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return out

    def finish(self) -> str:
        """Release what was held back once generation ends without a stop string."""
        return self._release(len(self.text))
