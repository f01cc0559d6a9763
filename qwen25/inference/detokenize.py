"""Text of a growing token sequence, given out piece by piece, and stop strings cut exactly.

Byte-level BPE splits multi-byte characters across tokens (a Chinese character or an emoji can take two or
three), so decoding each new token alone prints replacement characters. `IncrementalDetokenizer` decodes a
short window of recent tokens and gives out text only once it ends on a whole character: the pieces joined
equal `tokenizer.decode(all tokens)`.

`StopStrings` watches the text for the request's stop strings, cuts it right before the first one, and holds
back any tail that could still become one, so a stream never shows part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self._prefix = 0  # window start: a character boundary before the last text given out
        self._read = 0  # tokens whose text has been given out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, ids: Sequence[int]) -> str:
        """Take new tokens; return the text they complete ("" while a character is still incomplete)."""
        self.tokens.extend(ids)
        shown = self._decode(self.tokens[self._prefix:self._read])
        text = self._decode(self.tokens[self._prefix:])
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.tokens)
            return text[len(shown):]
        return ""

    def flush(self) -> str:
        """The text not given out yet, incomplete characters included (as U+FFFD, as `decode` shows them)."""
        shown = self._decode(self.tokens[self._prefix:self._read])
        text = self._decode(self.tokens[self._prefix:])
        self._prefix = self._read = len(self.tokens)
        return text[len(shown):]


class StopStrings:
    """Accumulates a sequence's text and finds its first stop string.

    `feed(piece)` returns the text now safe to show and whether a stop string was found; after a stop, `text`
    is cut right before it and `found` names it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.shown = 0  # characters of `text` given out
        self.found: str | None = None

    def feed(self, piece: str, final: bool = False) -> tuple[str, bool]:
        if self.found is not None:
            return "", True
        start = max(0, len(self.text) - self.longest + 1)  # a stop string may straddle the old text
        self.text += piece
        hits = [(i, s) for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            cut, self.found = min(hits)
            self.text = self.text[:cut]
            out = self.text[self.shown:]
            self.shown = len(self.text)
            return out, True
        end = len(self.text) if final else len(self.text) - self._held()
        out = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return out, False

    def _held(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
