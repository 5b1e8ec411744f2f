"""Causal sliding-window softmax attention: query i sees keys i - window … i (window + 1 keys).

The "xla" path is banded: queries go in blocks of `block` ≥ window tokens and each block attends to
itself and the block before it, so memory and time are O(T · block), never O(T²).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import (
    Implementation,
    check_dim,
    check_float_array,
    check_mask,
    check_positive_int,
    resolve_implementation,
)

_F32 = jnp.float32
_NEG = -1e30


def _masked_softmax(scores, allowed):
    """Softmax over the last axis restricted to `allowed`; rows with no allowed key are all 0, never NaN."""
    scores = jnp.where(allowed, scores, _NEG)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.where(allowed, jnp.exp(scores - peak), 0.0)
    den = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(den > 0, den, 1.0)


@functools.partial(jax.jit, static_argnames=("window", "scale"))
def reference_sliding_window_attention(q, k, v, *, window, scale, mask=None):
    """Quadratic reference: full [T, T] scores with the band mask."""
    t = q.shape[1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(_F32), k.astype(_F32), precision="highest") * scale
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = ((j <= i) & (j >= i - window))[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    p = _masked_softmax(s, allowed)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(_F32), precision="highest")


@functools.partial(jax.jit, static_argnames=("window", "scale", "block"))
def banded_sliding_window_attention(q, k, v, *, window, scale, mask=None, block=None):
    """Blocked path: O(T · block) memory. block defaults to max(window, 64), rounded up to a multiple of 8."""
    b, t, h, d = q.shape
    block = block or max(window, 64)
    block = -(-max(block, window) // 8) * 8
    n = -(-t // block)
    tp = n * block
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    prec = jax.lax.Precision.HIGHEST if jnp.result_type(q, k, v) == jnp.float32 else jax.lax.Precision.DEFAULT
    qb = jnp.pad(q, pad).reshape(b, n, block, h, d)
    kb = jnp.pad(k, pad).reshape(b, n, block, h, d)
    vb = jnp.pad(v, pad).reshape(b, n, block, h, v.shape[-1])
    prev = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    k2 = jnp.concatenate([prev(kb), kb], axis=2)  # [b, n, 2·block, h, d]
    v2 = jnp.concatenate([prev(vb), vb], axis=2)
    s = jnp.einsum("bnqhd,bnkhd->bnhqk", qb.astype(_F32), k2.astype(_F32), precision=prec) * scale
    qi = jnp.arange(n)[:, None] * block + jnp.arange(block)[None, :]  # [n, block] absolute query positions
    kj = jnp.arange(n)[:, None] * block - block + jnp.arange(2 * block)[None, :]  # [n, 2·block]
    allowed = (kj[:, None, :] <= qi[:, :, None]) & (kj[:, None, :] >= qi[:, :, None] - window) & (kj[:, None, :] >= 0)
    allowed = allowed[None, :, None]  # [1, n, 1, block, 2·block]
    if mask is not None:
        mp = jnp.pad(mask, [(0, 0), (0, tp - t)]).reshape(b, n, block)
        m2 = jnp.concatenate([prev(mp), mp], axis=2)  # [b, n, 2·block]
        allowed = allowed & m2[:, :, None, None, :]
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", _masked_softmax(s, allowed), v2.astype(_F32), precision=prec)
    return out.reshape(b, tp, h, v.shape[-1])[:, :t]


def sliding_window_attention(
    q,
    k,
    v,
    *,
    window: int,
    scale: float | None = None,
    mask=None,
    implementation: str | Implementation = "auto",
    block_size: int | None = None,
):
    """Causal softmax attention over a sliding window: query i sees keys i-window … i.

    Args:
      q, k: [B, T, H, Dk]; v: [B, T, H, Dv].
      window: how many keys back a query sees besides its own (the released JRT layers use 128).
      scale: softmax scale, default 1/√Dk.
      mask: optional [B, T] bool, True = real token; padded keys are never attended, padded queries
        (and queries with no real key in their window) return 0.
      implementation: "reference" (quadratic), "xla" (banded, O(T·window)), or "auto" (= "xla").
      block_size: query block of the banded path (≥ window; default max(window, 64)).

    Returns:
      [B, T, H, Dv] in the inputs' result dtype.
    """
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, d = q.shape
    for name, x in (("k", k), ("v", v)):
        check_dim(name, x.shape[0], b, "batch size (axis 0, as q)")
        check_dim(name, x.shape[1], t, "sequence length (axis 1, as q)")
        check_dim(name, x.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("k", k.shape[3], d, "head size (axis 3, as q)")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int; got {window!r}")
    if block_size is not None:
        check_positive_int("block_size", block_size)
    mask = check_mask(mask, b, t)
    scale = 1.0 / d**0.5 if scale is None else float(scale)
    impl = resolve_implementation(implementation)
    if impl is Implementation.PALLAS:
        raise ValueError("implementation='pallas': sliding-window attention has no Pallas kernel; use 'xla'")
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    if impl is Implementation.REFERENCE:
        y = reference_sliding_window_attention(q, k, v, window=window, scale=scale, mask=mask)
    else:
        y = banded_sliding_window_attention(q, k, v, window=window, scale=scale, mask=mask, block=block_size)
    if mask is not None:
        y = jnp.where(mask[:, :, None, None], y, 0.0)
    return y.astype(out_dtype)
