"""Quadratic reference of causal (grouped-query) softmax attention: the full [T, T] scores, masked."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops.segments import masked_softmax

_F32 = jnp.float32


@functools.partial(jax.jit, static_argnames=("scale",))
def reference_causal_attention(q, k, v, *, scale, run=None, real=None):
    """y_i = softmax over {j ≤ i : real[j], run[j] == run[i]} of q_i·k_j·scale, applied to v.

    q [B, T, H, Dk]; k [B, T, KVH, Dk]; v [B, T, KVH, Dv] with KVH dividing H (query head n reads key/value
    head n // (H / KVH), as Hugging Face's repeat_kv). run [B, T] int32 and real [B, T] bool, both or neither.
    Queries without an allowed key give 0. Returns fp32 [B, T, H, Dv].
    """
    b, t, h, d = q.shape
    g = h // k.shape[2]
    kf = jnp.repeat(k.astype(_F32), g, axis=2)
    vf = jnp.repeat(v.astype(_F32), g, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(_F32), kf, precision="highest") * scale
    allowed = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None, None]
    if real is not None:
        same = (run[:, :, None] == run[:, None, :]) & real[:, :, None] & real[:, None, :]
        allowed = allowed & same[:, None]
    return jnp.einsum("bhqk,bkhd->bqhd", masked_softmax(s, allowed), vf, precision="highest")
