"""Errors of the converters: one base class, and a key-mismatch error that names every offending key at once."""

from __future__ import annotations

from collections.abc import Sequence


class ConversionError(ValueError):
    """A checkpoint cannot be converted: unknown architecture, unsupported setting, bad or truncated file, ...

    A `ValueError`, so callers that already catch bad-argument errors catch these too.
    """


class NoTextTokenizer(ConversionError):
    """A checkpoint has no text tokenizer (a run trained on a synthetic task: its token ids are task symbols, or
    one whose tokenizer cannot be found from here). Text tools (generate, perplexity, passkey, qa) refuse such a
    model rather than guess a tokenizer from its vocabulary size. Attribute `reason`: why, in words."""

    def __init__(self, message: str, reason: str = ""):
        self.reason = reason or message
        super().__init__(message)


class KeyMismatchError(ConversionError):
    """The checkpoint's tensors do not match the model: every missing, unexpected and mis-shaped key, named.

    Attributes:
      missing: keys the model needs that the checkpoint lacks.
      unexpected: keys in the checkpoint the model has no place for.
      mismatched: (key, shape in the checkpoint, shape the model needs) triples.
    """

    def __init__(self, source: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[tuple[str, tuple, tuple]] = (), hint: str = ""):
        self.source = source
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        lines = [f"{source}: the checkpoint does not match the model "
                 f"({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} mis-shaped)"]
        if self.missing:
            lines.append("  missing keys:")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append("  unexpected keys:")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append("  mis-shaped keys (checkpoint shape vs expected shape):")
            lines += [f"    {k}: {tuple(got)} vs {tuple(want)}" for k, got, want in self.mismatched]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))
