"""Quadratic reference of causal (grouped-query) softmax attention: the full [T, S] scores, masked."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.segments import masked_softmax

_F32 = jnp.float32
_PRECISION = matmul_precision(_F32)  # the fp32 oracle: fp32-accurate products on every backend


def allowed_keys(t, s, q_offset, run=None, real=None):
    """[B or 1, T, S] bool: query i (span position q_offset + i) may read span key j — j ≤ q_offset + i, and,
    given run / real [B, S], both real and in one document (the query's taken from its span slot)."""
    pos_q = jnp.asarray(q_offset, jnp.int32) + jnp.arange(t, dtype=jnp.int32)
    allowed = (jnp.arange(s, dtype=jnp.int32)[None, :] <= pos_q[:, None])[None]
    if real is not None:
        run_q = jax.lax.dynamic_slice_in_dim(run, q_offset, t, axis=1)
        real_q = jax.lax.dynamic_slice_in_dim(real, q_offset, t, axis=1)
        allowed = allowed & (run_q[:, :, None] == run[:, None, :]) & real_q[:, :, None] & real[:, None, :]
    return allowed


@functools.partial(jax.jit, static_argnames=("scale",))
def reference_causal_attention(q, k, v, *, scale, q_offset=0, run=None, real=None):
    """y_i = softmax over {j ≤ q_offset + i : real[j], run[j] == run[q_offset + i]} of q_i·k_j·scale, applied to v.

    q [B, T, H, Dk] at span positions q_offset … q_offset + T − 1; k [B, S, KVH, Dk]; v [B, S, KVH, Dv] with
    KVH dividing H (query head n reads key/value head n // (H / KVH), as Hugging Face's repeat_kv). run [B, S]
    int32 and real [B, S] bool over the span, both or neither. Queries without an allowed key give 0.
    Returns fp32 [B, T, H, Dv].
    """
    t, h = q.shape[1], q.shape[2]
    g = h // k.shape[2]
    kf = jnp.repeat(k.astype(_F32), g, axis=2)
    vf = jnp.repeat(v.astype(_F32), g, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(_F32), kf, precision=_PRECISION) * scale
    allowed = allowed_keys(t, k.shape[1], q_offset, run, real)[:, None]
    return jnp.einsum("bhqk,bkhd->bqhd", masked_softmax(scores, allowed), vf, precision=_PRECISION)
