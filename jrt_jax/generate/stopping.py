"""Stop conditions and streamed text: stop tokens, stop strings (through a detokenizer callback).

`IncrementalDetokenizer` keeps the text of a growing list of token ids while decoding only a small window of
recent tokens per new token (linear in the stream length; decoding everything again for every token made a
2000-token stream twice as slow), and how much of it is *final* (no later token can change it). `TextTracker`
turns that text into pieces that are safe to emit: only final text, never part of a stop string nor an
incomplete UTF-8 character, and it cuts the text where a stop string begins. The emitted pieces plus the final
`flush` concatenate to exactly ``detokenize(tokens)`` (cut before a stop string).
"""

from __future__ import annotations

import weakref
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
    window until it holds again (`rewinds` counts this), so the text stays exactly ``detokenize(tokens)``. For
    the check to see a rewrite the context must show the text it covers: one that decodes to nothing while its
    piece is not empty (a lone ``<0x20>`` whose space the decoder strips as the leading one) is widened by
    joining the last two pieces.
    Exact, with no rewinds, for byte-level BPE (GPT-2, ``ByteLevel`` tokenizer.json), `ByteTokenizer` and
    SentencePiece-style ``Metaspace`` decoders; tested on random streams in tests/generate/test_generate_detokenize.py.

    Final text: `final_len` characters of the text can no longer change, whatever tokens follow. With a
    decoder that never rewrites (byte-level BPE, `ByteTokenizer`, Metaspace without byte fallback) that is all
    but a trailing U+FFFD of the pending text (an incomplete character). A byte-fallback decoder *groups*: a run
    of ``<0xNN>`` tokens is decoded as a whole, valid UTF-8 or one U+FFFD per byte, so a later byte can rewrite
    the whole run (and a skipped special token between bytes does not end it). There the text becomes final
    only at a token that *seals*: its own text is non-empty, does not end in U+FFFD and survives an appended
    invalid byte. ``<0x41>`` decodes to "A" like a word would but does not seal. Both are told apart with a
    ``probe``: a token id that decodes alone to U+FFFD (``<0x80>``, or a lone high byte of a byte-level
    vocabulary). The decoder groups when some id near the probe that decodes to text turns into U+FFFD after
    it. Within a group the window is never split. The probe is the first id in [0, `PROBE_SCAN`) that decodes
    to U+FFFD, unless given. If there is none there, the first such token of the stream becomes the probe, and
    until then the decoder is taken not to rewrite. What each token id does is decoded once per `detokenize`
    and shared by its detokenizers (one per row of a batch).

    Args:
      detokenize: token ids → text, e.g. ``tokenizer.decode``.
      stall: tokens after which a window whose text keeps ending in U+FFFD is split (see above).
      probe: a token id that decodes alone to U+FFFD (see above); None = look one up.
    """

    def __init__(self, detokenize: Detokenize, *, stall: int = 8, probe: int | None = None):
        self.detokenize = detokenize
        self.stall = stall
        self._facts = _facts_of(detokenize) if probe is None else _DecoderFacts(detokenize, int(probe))
        self.final_len = 0  # characters of the text that no later token can change
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
            self._set_context()
            window = self.detokenize(self.tokens[self._prefix:])
        new = window[len(self._ctx):]
        if new and not new.endswith(_REPLACEMENT):
            self._settle(n, new)
        elif n - self._read < self.stall:
            self.pending = new
        elif not new:  # a run of tokens without text (e.g. specials that decode to nothing)
            if not self._facts.groups or self._read == 0 or self._facts.seals(self.tokens[self._read - 1]):
                self._settle(n, "")  # (a grouping decoder joins the bytes around skipped tokens: not there)
        else:
            self._split(window)
        facts = self._facts
        if facts.probe is None:
            facts.note(self.tokens[-1])
        if not facts.groups:  # all but an incomplete trailing character
            unsure = len(self.pending) - len(self.pending.rstrip(_REPLACEMENT))
            self.final_len = max(self.final_len, len(self) - unsure)
        elif facts.seals(self.tokens[-1]):
            self.final_len = len(self)

    @property
    def probe(self) -> int | None:
        """The token id used to tell byte tokens from words (see the class docstring); None if none is known."""
        return self._facts.probe

    def _settle(self, upto: int, text: str, pending: str = "") -> None:
        self._pieces.append(text)
        self._ends.append(upto)
        self.settled_len += len(text)
        self._set_context()
        self.pending = pending

    def _set_context(self) -> None:
        """``_ctx = detokenize(tokens[prefix:read])``, made non-empty when the last piece is: a context that
        decodes to nothing although its text is not empty (a lone space byte whose leading space the decoder
        strips) would not show the decoder rewriting it, so the last two pieces are joined until it does
        (or the context starts at token 0, where the window is the exact text)."""
        self._ctx = self.detokenize(self.tokens[self._prefix:self._read])
        while not self._ctx and self._pieces and self._pieces[-1] and len(self._ends) > 1:
            last = self._pieces.pop()
            self._pieces[-1] += last
            del self._ends[-2]
            self._ctx = self.detokenize(self.tokens[self._prefix:self._read])

    def _split(self, window: str) -> None:
        """Settle all tokens but the last when the window provably splits there (see the class docstring)."""
        n = len(self.tokens)
        m = n - 1
        head = self.detokenize(self.tokens[self._prefix:m])
        tail = self.detokenize(self.tokens[m:n])
        facts = self._facts
        if facts.groups and not (facts.seals(self.tokens[m - 1]) or facts.starts_fresh(self.tokens[m])):
            self.pending = window[len(self._ctx):]  # inside a byte-fallback group: a window from m would misread it
        elif tail and head + tail == window and len(head) > len(self._ctx) and head.startswith(self._ctx):
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


#: how many ids from 0 on are decoded, at most, to find a probe token (byte tokens sit near the start)
PROBE_SCAN = 1024


class _DecoderFacts:
    """What single token ids do under one `detokenize`: the probe id and which ids seal (see
    `IncrementalDetokenizer`); each id is decoded once, on first sight."""

    def __init__(self, detokenize: Detokenize, probe: int | None, *, weak: bool = False):
        # weak: the shared facts must not keep their `detokenize` (the key of `_FACTS`) alive
        self._detokenize = weakref.ref(detokenize) if weak else lambda: detokenize
        self.probe = None
        self.groups = False  # whether an invalid byte turns the bytes after it into U+FFFD too (byte fallback)
        self._seals: dict[int, bool] = {}
        self._fresh: dict[int, bool] = {}
        self._noted: set[int] = set()
        if probe is not None:
            self._set_probe(probe)

    def _set_probe(self, probe: int) -> None:
        """Adopt `probe` and find out whether the decoder groups bytes: some id near it that decodes alone to
        text without U+FFFD shows as U+FFFD after the probe (``<0x80><0x41>`` → two U+FFFD, where a byte-level
        decoder gives U+FFFD + "A")."""
        self.probe = probe
        self._seals.clear()
        self._fresh.clear()
        self.groups = False
        for i in range(max(0, probe - 256), probe + 256):
            text = self._decode([i])
            if text and _REPLACEMENT not in text:
                both = self._decode([probe, i])
                if both is not None and both.startswith(_REPLACEMENT * 2):
                    self.groups = True
                    return

    def _decode(self, ids) -> str | None:
        detokenize = self._detokenize()
        if detokenize is None:
            return None
        try:
            return detokenize(ids)
        except Exception:  # noqa: BLE001 — decoders raise assorted errors on ids past their vocabulary
            return None

    def find_probe(self) -> None:
        """The first id below `PROBE_SCAN` that decodes alone to U+FFFD (an invalid byte), if any."""
        for i in range(PROBE_SCAN):
            if self._decode([i]) == _REPLACEMENT:
                self._set_probe(i)
                return

    def note(self, token: int) -> None:
        """Without a probe yet: take `token` as the probe if it decodes alone to U+FFFD (each id tried once)."""
        if token not in self._noted:
            self._noted.add(token)
            if self._decode([token]) == _REPLACEMENT:
                self._set_probe(token)

    def seals(self, token: int) -> bool:
        """Whether the text before and including `token` is final once it is decoded."""
        known = self._seals.get(token)
        if known is not None:
            return known
        text = self._decode([token])
        ok = bool(text) and not text.endswith(_REPLACEMENT)
        if ok and self.probe is not None:
            probed = self._decode([token, self.probe])
            ok = probed is not None and probed.startswith(text)
        self._seals[token] = ok
        return ok

    def starts_fresh(self, token: int) -> bool:
        """Whether `token` never joins the byte group before it: after the probe it still shows text that does
        not begin with U+FFFD (a word does; a byte token turns into U+FFFD; an empty one shows nothing)."""
        known = self._fresh.get(token)
        if known is None:
            after = None if self.probe is None else self._decode([self.probe, token])
            known = after is not None and after.startswith(_REPLACEMENT) and len(after) > 1 \
                and after[1] != _REPLACEMENT
            self._fresh[token] = known
        return known


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _facts_of(detokenize: Detokenize) -> _DecoderFacts:
    """The shared `_DecoderFacts` of `detokenize` (one probe search per decoder, e.g. per generate call)."""
    try:
        facts = _FACTS.get(detokenize)
    except TypeError:  # not weakly referenceable or not hashable: nothing to share
        facts = None
    if facts is None:
        try:
            facts = _DecoderFacts(detokenize, None, weak=True)
            _FACTS[detokenize] = facts
        except TypeError:
            facts = _DecoderFacts(detokenize, None)
        facts.find_probe()
    return facts


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

    def _safe_end(self, region: str, start: int) -> int:
        """Where the text that is safe to emit ends (a character offset); `region` is the text from `start` on.

        Only final text (`IncrementalDetokenizer.final_len`) is safe, and of it not the trailing U+FFFD of the
        pending text (an incomplete character) nor whatever at its end could start a stop string that later
        text might complete.
        """
        d = self._detok
        unsure = len(d.pending) - len(d.pending.rstrip(_REPLACEMENT))  # an incomplete multi-byte character
        limit = min(d.final_len, len(d) - unsure)
        core = region[: max(0, limit - start)]
        hold = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(core)), 0, -1):
                if core.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return limit - hold

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
        safe = self._safe_end(region, start)
        piece = region[self.emitted - start:safe - start] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        text = self.text
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece
