"""Stop conditions and streamed text: stop tokens, stop strings (through a detokenizer callback).

`TextTracker` turns a growing list of token ids into text pieces that are safe to emit: it never emits part of
a stop string nor an incomplete UTF-8 character, and cuts the text where a stop string begins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Detokenize = Callable[[Sequence[int]], str]


class TextTracker:
    """Text of one row's generated tokens, with stop-string detection.

    Args:
      detokenize: token ids → text (e.g. ``tokenizer.decode``).
      stop_strings: generation stops at the first occurrence of any; the text is cut before it.
    """

    def __init__(self, detokenize: Detokenize, stop_strings: Sequence[str] = ()):
        self.detokenize = detokenize
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.tokens: list[int] = []
        self.text = ""  # final (cut) text once stopped
        self.emitted = 0  # characters of text already handed out
        self.stopped = False

    def _holdback(self, text: str) -> int:
        """How many trailing characters might still become a stop string or a full UTF-8 character."""
        hold = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        if text.endswith("\ufffd"):  # an incomplete multi-byte character decodes to U+FFFD
            hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
        return hold

    def add(self, token: int) -> str:
        """Append a token; return the newly safe text (may be ""). Sets `stopped` when a stop string appears."""
        self.tokens.append(int(token))
        text = self.detokenize(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
        else:
            self.text = text
        safe = len(self.text) if self.stopped else len(self.text) - self._holdback(self.text)
        piece = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece
