"""Quadratic reference of sliding-window attention: the full [T, T] score matrix under the band mask."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops.segments import masked_softmax

_F32 = jnp.float32


@functools.partial(jax.jit, static_argnames=("window", "scale"))
def reference_sliding_window_attention(q, k, v, *, window, scale, run=None, real=None):
    """y_i = softmax over {j : i-window ≤ j ≤ i, real[j], run[j] == run[i]} of q_i·k_j·scale, applied to v.

    q, k [B, T, H, Dk], v [B, T, H, Dv]; run [B, T] int32 document numbers and real [B, T] bool (both or
    neither). Queries with no allowed key (padded ones) give 0. Returns fp32 [B, T, H, Dv].
    """
    t = q.shape[1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(_F32), k.astype(_F32), precision="highest") * scale
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = ((j <= i) & (j >= i - window))[None, None]
    if real is not None:
        same = (run[:, :, None] == run[:, None, :]) & real[:, :, None] & real[:, None, :]  # [B, Tq, Tk]
        allowed = allowed & same[:, None]
    p = masked_softmax(s, allowed)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(_F32), precision="highest")
