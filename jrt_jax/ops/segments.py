"""Packed sequences: turn `segment_ids` (and/or a padding `mask`) into document runs, shared by every op.

Semantic (DESIGN §3): `segment_ids` is [B, T] int, 0 = padding. A padded token contributes nothing and its own
output is 0. Documents are maximal runs of equal NON-ZERO ids, padding ignored: a new document starts at
position i when segment_ids[i] != 0 and differs from the last non-zero id before i. So

    [1, 1, 0, 1, 1]     one document with a hole,
    [1, 1, 2, 2, 1, 1]  three documents,
    [0, 0, 5, 5, 7]     two documents after left padding.

`document_ids` numbers those runs 0, 1, 2, … along each row (non-decreasing), so "same document" is one integer
comparison, and a query at i may read a key/tap at j iff real[j] and run[j] == run[i]. A `mask` [B, T] bool is
the special case segment_ids = mask.astype(int32): one document per row, with holes. Given both, a token is real
only where both say so.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import check_mask, check_segment_ids

_NEG = -1e30


class Segments(NamedTuple):
    """Resolved packing of a batch.

    run:  [B, T] int32 document number along the row (0, 1, …; non-decreasing; pads carry the number of the
          document before them, leading pads that of the first document).
    real: [B, T] bool, False for padding.
    packed: True when `segment_ids` was given (rows may hold several documents); False when only a mask was
          (run is then all zeros). A Python bool, static under jit.
    """

    run: jax.Array
    real: jax.Array
    packed: bool


def document_ids(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Number the documents of each row of a packed batch.

    Args:
      segment_ids: [B, T] integer ids, 0 = padding. Documents are maximal runs of equal non-zero ids with the
        padding between them ignored (see the module docstring).

    Returns:
      (run, real): run [B, T] int32, the document number of each position counted from 0 along the row
      (non-decreasing; a pad gets the number of the last real token before it, or 0 if it leads the row);
      real [B, T] bool, ``segment_ids != 0``. An all-padding row is all 0 / all False.
    """
    seg = jnp.asarray(segment_ids).astype(jnp.int32)
    real = seg != 0
    t = seg.shape[-1]
    pos = jnp.arange(t, dtype=jnp.int32)
    # index of the last real token at or before each position (-1 if none), then the id found there
    last = jax.lax.cummax(jnp.where(real, pos, -1), axis=seg.ndim - 1)
    prev_last = jnp.concatenate([jnp.full(last.shape[:-1] + (1,), -1, jnp.int32), last[..., :-1]], axis=-1)
    prev_id = jnp.take_along_axis(seg, jnp.maximum(prev_last, 0), axis=-1)
    start = real & ((prev_last < 0) | (prev_id != seg))
    run = jnp.maximum(jnp.cumsum(start.astype(jnp.int32), axis=-1) - 1, 0)
    return run.astype(jnp.int32), real


def resolve_segments(segment_ids, mask, batch: int, seq: int) -> Segments | None:
    """Validate `segment_ids` / `mask` for a [batch, seq] input and resolve them into `Segments`.

    Returns None when both are None (every token real, one document per row). Raises TypeError / ValueError
    naming the argument for a wrong dtype or shape.
    """
    segment_ids = check_segment_ids(segment_ids, batch, seq)
    mask = check_mask(mask, batch, seq)
    if segment_ids is None and mask is None:
        return None
    if segment_ids is None:
        return Segments(jnp.zeros((batch, seq), jnp.int32), mask, False)
    if mask is not None:
        segment_ids = jnp.where(mask, segment_ids, 0)
    run, real = document_ids(segment_ids)
    return Segments(run, real, True)


def check_segments(segment_ids, mask, batch: int, seq: int) -> None:
    """Validate `segment_ids` / `mask` for a [batch, seq] input (TypeError / ValueError naming the argument)
    without computing anything; the ops call it before their jitted bodies run `resolve_segments`."""
    check_segment_ids(segment_ids, batch, seq)
    check_mask(mask, batch, seq)


def zero_excluded(x: jax.Array, real: jax.Array | None) -> jax.Array:
    """x [B, T, ...] with the positions where `real` [B, T] is False replaced by 0 (a select, so a NaN or Inf
    there never reaches an output or a gradient)."""
    if real is None:
        return x
    return jnp.where(real.reshape(real.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))


def masked_softmax(scores: jax.Array, allowed: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to `allowed` (broadcast against scores).

    Rows without any allowed entry are all 0, never NaN; disallowed entries are selected away, so their
    scores may be anything.
    """
    scores = jnp.where(allowed, scores, _NEG)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.where(allowed, jnp.exp(scores - peak), 0.0)
    den = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(den > 0, den, 1.0)
