"""Padding helpers: RoPE positions that count only real tokens, and per-row shifts of left-padded rows.

Masks are [batch, seq] booleans, True for real tokens. Batched prompts are left-padded, so the real tokens of
a row are a contiguous suffix; every layer excludes pads, so a row's outputs do not depend on its padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def positions_from_mask(mask: jax.Array | None, seq_len: int, batch: int | None = None) -> jax.Array:
    """RoPE positions [B, T] (int32): the number of real tokens before each token; pads get 0.

    Without a mask, positions are 0 … T-1 (shape [1, T] when `batch` is None, else [B, T]).
    """
    if mask is None:
        pos = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
        return pos if batch is None else jnp.broadcast_to(pos, (batch, seq_len))
    m = mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0) * m


def leading_pads(mask: jax.Array) -> jax.Array:
    """Number of pads before the first real token of each row, [B] int32 (0 for an all-pad row)."""
    return jnp.argmax(mask.astype(bool), axis=1).astype(jnp.int32)


def shift_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Rotate every row of x [B, T, ...] left by shift[b] along axis 1: out[b, t] = x[b, (t + shift[b]) % T].

    With shift = `leading_pads(mask)` this turns a left-padded batch into a right-padded one (the pads wrap
    around to the end); `shift_rows(y, -shift)` undoes it.
    """
    t = x.shape[1]
    idx = (jnp.arange(t, dtype=jnp.int32)[None, :] + shift[:, None]) % t
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)
