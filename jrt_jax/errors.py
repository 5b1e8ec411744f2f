"""Error text shared by the library and its commands, in a leaf module (it imports nothing of `jrt_jax`).

Library code that wraps a lower-level error (orbax and tensorstore messages run to pages) and the `jrt` commands
that print errors both need the same one-line form; keeping it here lets leaf packages such as `jrt_jax.runs` use
it without importing the command-line package.
"""

from __future__ import annotations


def one_line(exc: BaseException, limit: int | None = 300, *, with_type: bool = True) -> str:
    """The first non-blank line of `exc`'s message ("Type: line" with `with_type`), cut to `limit` characters.

    A message is written for one line, and its first line is the part that names the problem; an empty message
    gives the exception's type name.
    """
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    if limit is not None and len(first) > limit:
        first = first[: limit - 3] + "..."
    if not first:
        return type(exc).__name__
    return f"{type(exc).__name__}: {first}" if with_type else first
