"""Quadratic reference of sliding-window attention: the full [T, S] score matrix under the band mask."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.segments import masked_softmax

_F32 = jnp.float32
_PRECISION = matmul_precision(_F32)  # the fp32 oracle: fp32-accurate products on every backend


@functools.partial(jax.jit, static_argnames=("window", "scale", "q_offset"))
def reference_sliding_window_attention(q, k, v, *, window, scale, q_offset=0, run=None, real=None):
    """y_i = softmax over {j : p − window ≤ j ≤ p, real[j], run[j] == run[p]} of q_i·k_j·scale, applied to v,
    where p = q_offset + i is query i's span position.

    q [B, T, H, Dk]; k [B, S, H, Dk], v [B, S, H, Dv], the key span; q_offset a static int in [0, S − T];
    run [B, S] int32 document numbers and real [B, S] bool over the span (both or neither). Queries with no
    allowed key (padded ones) give 0. Returns fp32 [B, T, H, Dv].
    """
    t, s = q.shape[1], k.shape[1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(_F32), k.astype(_F32), precision=_PRECISION) * scale
    p = q_offset + jnp.arange(t)[:, None]
    j = jnp.arange(s)[None, :]
    allowed = ((j <= p) & (j >= p - window))[None]
    if real is not None:
        run_q, real_q = run[:, q_offset:q_offset + t], real[:, q_offset:q_offset + t]
        allowed = allowed & (run_q[:, :, None] == run[:, None, :]) & real_q[:, :, None] & real[:, None, :]
    probs = masked_softmax(scores, allowed[:, None])
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(_F32), precision=_PRECISION)
