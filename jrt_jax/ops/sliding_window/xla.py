"""Banded XLA path of sliding-window attention: O(T · block) memory and time, never O(T²).

Queries go in blocks of `block` ≥ window tokens; each block attends to itself and the block before it, which
holds every key a query of the block can see.
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


@functools.partial(jax.jit, static_argnames=("window", "scale", "block"))
def banded_sliding_window_attention(q, k, v, *, window, scale, run=None, real=None, block=None):
    """Blocked path, same contract as `reference_sliding_window_attention`; block: see `default_block`."""
    b, t, h, d = q.shape
    block = default_block(window, block)
    n = -(-t // block)
    tp = n * block
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    prec = matmul_precision(q, k, v)
    qb = jnp.pad(q, pad).reshape(b, n, block, h, d)
    kb = jnp.pad(k, pad).reshape(b, n, block, h, d)
    vb = jnp.pad(v, pad).reshape(b, n, block, h, v.shape[-1])

    def with_prev(x):  # [b, n, block, …] → [b, n, 2·block, …]: the previous block (zeros before 0), then this
        return jnp.concatenate([jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1), x], axis=2)

    k2, v2 = with_prev(kb), with_prev(vb)
    s = jnp.einsum("bnqhd,bnkhd->bnhqk", qb.astype(_F32), k2.astype(_F32), precision=prec) * scale
    qi = jnp.arange(n)[:, None] * block + jnp.arange(block)[None, :]  # [n, block] absolute query positions
    kj = jnp.arange(n)[:, None] * block - block + jnp.arange(2 * block)[None, :]  # [n, 2·block]
    allowed = (kj[:, None, :] <= qi[:, :, None]) & (kj[:, None, :] >= qi[:, :, None] - window) & (kj[:, None, :] >= 0)
    allowed = allowed[None, :, None]  # [1, n, 1, block, 2·block]
    if real is not None:
        seg_pad = [(0, 0), (0, tp - t)]
        rb = jnp.pad(run, seg_pad).reshape(b, n, block)
        mb = jnp.pad(real, seg_pad).reshape(b, n, block)
        r2, m2 = with_prev(rb), with_prev(mb)
        same = (rb[:, :, :, None] == r2[:, :, None, :]) & mb[:, :, :, None] & m2[:, :, None, :]  # [b, n, q, k]
        allowed = allowed & same[:, :, None]
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", masked_softmax(s, allowed), v2.astype(_F32), precision=prec)
    return out.reshape(b, tp, h, v.shape[-1])[:, :t]
