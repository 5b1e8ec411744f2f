"""Stop conditions and streamed text: stop tokens, stop strings (through a detokenizer callback).

`IncrementalDetokenizer` keeps the text of a growing list of token ids while decoding only a small window of
recent tokens per new token (linear in the stream length; decoding everything again for every token made a
2000-token stream twice as slow). `TextTracker` turns that text into pieces that are safe to emit: it never
emits part of a stop string nor an incomplete UTF-8 character, and cuts the text where a stop string begins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Detokenize = Callable[[Sequence[int]], str]

_REPLACEMENT = "\ufffd"  # what an incomplete (or invalid) UTF-8 sequence decodes to


class IncrementalDetokenizer:
    """``detokenize(tokens)`` for a list that grows one token at a time, decoding only recent tokens.

    The text is kept as a *settled* part, in pieces, and a short *pending* tail. Each settled piece ends at a
    token offset; the last two offsets are ``prefix`` and ``read`` (as in vLLM / TGI). A new token is decoded as
    ``detokenize(tokens[prefix:])`` minus the text of ``tokens[prefix:read]`` (the *context*, which keeps
    decoders that treat the first token specially — SentencePiece's leading space — exact). When the new text
    does not end in U+FFFD (its last character is complete) it is settled and the offsets move up. If the text
    keeps ending in U+FFFD for `stall` tokens (garbage bytes), the window is split before the last token when
    that is provably a character boundary: the two halves decode to the whole and the tail decodes to something
    (with UTF-8 replacement decoding that happens only at a boundary). A run of `stall` tokens that decode to
    nothing is settled as an empty piece (then the context is those tokens: a decoder that strips the leading
    space of a decode would lose one space after such a run; tokenizer.json specials decode to their names, so
    this concerns `ByteTokenizer`'s pad / eos only, which strip nothing). Work per token is bounded by the
    window, not by the stream.

    Every step checks that the window still starts with its context's text. A decoder that rewrites text it
    produced earlier — byte-fallback groups (``<0xNN>`` tokens) that turn invalid when a byte is appended and
    then show every byte as U+FFFD — fails that check; the last settled pieces are then taken back into the
    window until it holds again (`rewinds` counts this), so the text stays exactly ``detokenize(tokens)``.
    Exact, with no rewinds, for byte-level BPE (GPT-2, ``ByteLevel`` tokenizer.json), `ByteTokenizer` and
    SentencePiece-style ``Metaspace`` decoders; tested on random streams in tests/test_generate_detokenize.py.
    """

    def __init__(self, detokenize: Detokenize, *, stall: int = 8):
        self.detokenize = detokenize
        self.stall = stall
        self.tokens: list[int] = []
        self.rewinds = 0
        self._pieces: list[str] = []  # settled text; "".join == detokenize(tokens[:read])
        self._ends: list[int] = []  # token offset where each piece ends
        self.settled_len = 0
        self.pending = ""  # text after the settled part
        self._ctx = ""  # detokenize(tokens[prefix:read])

    @property
    def _read(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def _prefix(self) -> int:
        return self._ends[-2] if len(self._ends) > 1 else 0

    def add(self, token: int) -> None:
        """Append one token id."""
        self.tokens.append(int(token))
        n = len(self.tokens)
        window = self.detokenize(self.tokens[self._prefix:])
        while not window.startswith(self._ctx):  # the decoder rewrote settled text: take it back
            self.rewinds += 1
            self.settled_len -= len(self._pieces.pop())
            self._ends.pop()
            self._ctx = self.detokenize(self.tokens[self._prefix:self._read])
            window = self.detokenize(self.tokens[self._prefix:])
        new = window[len(self._ctx):]
        if new and not new.endswith(_REPLACEMENT):
            self._settle(n, new)
        elif n - self._read < self.stall:
            self.pending = new
        elif not new:  # a run of tokens without text (e.g. specials that decode to nothing)
            self._settle(n, "")
        else:
            self._split(window)

    def _settle(self, upto: int, text: str, pending: str = "") -> None:
        self._pieces.append(text)
        self._ends.append(upto)
        self.settled_len += len(text)
        self._ctx = self.detokenize(self.tokens[self._prefix:self._read])
        self.pending = pending

    def _split(self, window: str) -> None:
        """Settle all tokens but the last when the window provably splits there (see the class docstring)."""
        n = len(self.tokens)
        m = n - 1
        head = self.detokenize(self.tokens[self._prefix:m])
        tail = self.detokenize(self.tokens[m:n])
        if tail and head + tail == window and len(head) > len(self._ctx) and head.startswith(self._ctx):
            self._settle(m, head[len(self._ctx):], window[len(head):])
        else:
            self.pending = window[len(self._ctx):]

    def settled_suffix(self, start: int) -> str:
        """The settled text from character `start` on (cost: the length returned, plus the pieces it spans)."""
        if start >= self.settled_len:
            return ""
        parts, length = [], self.settled_len
        for piece in reversed(self._pieces):
            if length <= start:
                break
            parts.append(piece)
            length -= len(piece)
        text = "".join(reversed(parts))
        return text[start - length:]

    @property
    def text(self) -> str:
        """The whole text (joins the pieces: O(length) — for the end of a stream, not every token)."""
        return "".join(self._pieces) + self.pending

    def __len__(self) -> int:
        return self.settled_len + len(self.pending)


class TextTracker:
    """Text of one row's generated tokens, with stop-string detection.

    Args:
      detokenize: token ids → text (e.g. ``tokenizer.decode``); called on a window of recent tokens only (see
        `IncrementalDetokenizer`).
      stop_strings: generation stops at the first occurrence of any; the text is cut before it.

    Stop strings are searched for only in the text that is new since the previous token (plus the few characters
    before it that could start one), so the work per token does not grow with the stream either.
    """

    def __init__(self, detokenize: Detokenize, stop_strings: Sequence[str] = ()):
        self.detokenize = detokenize
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._reach = max((len(s) for s in self.stop_strings), default=1) - 1
        self._detok = IncrementalDetokenizer(detokenize)
        self._final: str | None = None  # the cut text once stopped
        self._settled_seen = 0
        self.emitted = 0  # characters of text already handed out
        self.stopped = False

    @property
    def tokens(self) -> list[int]:
        return self._detok.tokens

    @property
    def text(self) -> str:
        """The text so far (cut before the stop string once stopped)."""
        return self._final if self._final is not None else self._detok.text

    def _holdback(self, tail: str, pending: str) -> int:
        """How many trailing characters might still become a stop string or a full UTF-8 character.

        Trailing U+FFFD of the pending text (an incomplete character) are held, and so is whatever before them
        could start a stop string that the completed character might continue.
        """
        unsure = len(pending) - len(pending.rstrip(_REPLACEMENT))  # an incomplete multi-byte character
        core = tail[: len(tail) - unsure]
        hold = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(core)), 0, -1):
                if core.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return unsure + hold

    def add(self, token: int) -> str:
        """Append a token; return the newly safe text (may be ""). Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        d = self._detok
        d.add(token)
        # Only text after `start` can hold a stop string that was not there before: the settled text before it
        # was searched already, and settled text never changes.
        start = min(self.emitted, max(0, min(self._settled_seen, d.settled_len) - self._reach))
        region = d.settled_suffix(start) + d.pending
        self._settled_seen = d.settled_len
        cut = min((i for i in (region.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            end = start + cut
            self._final = d.text[:end]
            piece = self._final[self.emitted:end] if end > self.emitted else ""
            self.emitted = max(self.emitted, end)
            return piece
        safe = len(d) - self._holdback(region, d.pending)
        piece = region[self.emitted - start:safe - start] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        text = self.text
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece
