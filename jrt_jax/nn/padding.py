"""Padding helpers: RoPE positions that count only real tokens (of each packed document).

Masks are [batch, seq] booleans, True for real tokens. Batched prompts are left-padded, so the real tokens of
a row are a contiguous suffix; every layer excludes pads, so a row's outputs do not depend on its padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrt_jax.ops.segments import document_ids


def positions_from_mask(mask: jax.Array | None, seq_len: int, batch: int | None = None) -> jax.Array:
    """RoPE positions [B, T] (int32): the number of real tokens before each token; pads get 0.

    Without a mask, positions are 0 … T-1 (shape [1, T] when `batch` is None, else [B, T]).
    """
    if mask is None:
        pos = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
        return pos if batch is None else jnp.broadcast_to(pos, (batch, seq_len))
    m = mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0) * m


def document_positions(mask, segment_ids, batch: int, seq: int) -> jax.Array:
    """[B, T] int32: the number of real tokens before each token in its own document (pads get 0).

    Without packing this is `positions_from_mask`; with `segment_ids` (0 = padding; documents are maximal runs
    of equal non-zero ids, `jrt_jax.ops.segments`) positions restart at every document, which is both the RoPE
    position of a packed token and its index for "the first M tokens of each document" (the PLA encoder).
    """
    if segment_ids is None:
        return positions_from_mask(mask, seq, batch)
    real = segment_ids != 0
    if mask is not None:
        real = real & mask.astype(bool)
    doc, _ = document_ids(jnp.where(real, segment_ids, 0))
    count = jnp.cumsum(real.astype(jnp.int32), axis=1)  # real tokens up to and including each position
    first = jnp.concatenate([jnp.ones_like(doc[:, :1], bool), doc[:, 1:] != doc[:, :-1]], axis=1)
    before = jax.lax.cummax(jnp.where(first, count - real.astype(jnp.int32), 0), axis=1)  # real tokens before the document
    return jnp.where(real, count - 1 - before, 0).astype(jnp.int32)
