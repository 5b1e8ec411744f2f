"""Banded XLA path of sliding-window attention: O(T · block) memory and time, never O(T · S).

Queries go in blocks of `block` ≥ window tokens; each block attends to the keys of its own span positions
and of the `block` positions before them, which hold every key a query of the block can see. Only the T
queries are computed: span positions before q_offset are read as keys, never as query rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.segments import masked_softmax

_F32 = jnp.float32


def default_block(window: int, block: int | None) -> int:
    """The query block actually used: `block` (default max(window, 64)), at least window, a multiple of 8."""
    block = block or max(window, 64)
    return -(-max(block, window) // 8) * 8


@functools.partial(jax.jit, static_argnames=("window", "scale", "q_offset", "block"))
def banded_sliding_window_attention(q, k, v, *, window, scale, q_offset=0, run=None, real=None, block=None):
    """Blocked path, same contract as `reference_sliding_window_attention`; block: see `default_block`."""
    b, t, h, d = q.shape
    s = k.shape[1]
    block = default_block(window, block)
    n = -(-t // block)
    tp = n * block
    lo = q_offset - block  # span position of the first key the first query block may read
    stop = min(s, q_offset + tp)

    def keys(x):  # [b, S, …] → [b, n, 2·block, …]: span positions lo + m·block … lo + (m + 2)·block − 1
        x = x[:, max(lo, 0):stop]
        front = max(-lo, 0)
        x = jnp.pad(x, [(0, 0), (front, (n + 1) * block - front - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape((b, n + 1, block) + x.shape[2:])
        return jnp.concatenate([x[:, :-1], x[:, 1:]], axis=2)

    def queries(x):  # [b, S, …] → [b, n, block, …]: the query rows' span slots
        x = x[:, q_offset:q_offset + t]
        return jnp.pad(x, [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2)).reshape((b, n, block) + x.shape[2:])

    prec = matmul_precision(q, k, v)
    qb = jnp.pad(q, [(0, 0), (0, tp - t), (0, 0), (0, 0)]).reshape(b, n, block, h, d)
    k2, v2 = keys(k), keys(v)
    sc = jnp.einsum("bnqhd,bnkhd->bnhqk", qb.astype(_F32), k2.astype(_F32), precision=prec) * scale
    qi = q_offset + jnp.arange(n)[:, None] * block + jnp.arange(block)[None, :]  # [n, block] span positions
    kj = lo + jnp.arange(n)[:, None] * block + jnp.arange(2 * block)[None, :]  # [n, 2·block]
    allowed = (kj[:, None, :] <= qi[:, :, None]) & (kj[:, None, :] >= qi[:, :, None] - window) & (kj[:, None, :] >= 0)
    allowed = allowed[None, :, None]  # [1, n, 1, block, 2·block]
    if real is not None:
        rq, mq, r2, m2 = queries(run), queries(real), keys(run), keys(real)
        same = (rq[:, :, :, None] == r2[:, :, None, :]) & mq[:, :, :, None] & m2[:, :, None, :]  # [b, n, q, k]
        allowed = allowed & same[:, :, None]
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", masked_softmax(sc, allowed), v2.astype(_F32), precision=prec)
    return out.reshape(b, tp, h, v.shape[-1])[:, :t]
