"""The recurrent state of Based / PLA linear attention and the single-token decode step."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.feature_map import taylor_feature_dim, taylor_feature_map_compact


class LinearAttentionState(NamedTuple):
    """Constant-size decoding state, always float32.

    kv: [B, H, Φ, D] = Σ_j φ(k_j) v_jᵀ;  z: [B, H, Φ] = Σ_j φ(k_j).
    Φ is the compact Taylor feature size 1 + F + F(F+1)/2 (153 for F = 16); see `feature_map`.
    After a PLA prefill the encoder terms Σ_{j<M} φ(ke_j) ve_jᵀ are already folded in.
    """

    kv: jax.Array
    z: jax.Array

    @classmethod
    def coerce(cls, value, name: str = "initial_state"):
        """`value` as a LinearAttentionState: None stays None, a (kv, z) pair is wrapped; TypeError naming `name`
        otherwise. The one place every op that takes a state accepts one."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return cls(*value)
        raise TypeError(f"{name} must be a LinearAttentionState (kv, z); got {type(value).__name__}")


def zero_state(batch: int, heads: int, feature_dim: int, value_dim: int) -> LinearAttentionState:
    """The empty state (no keys seen) for raw feature size `feature_dim`."""
    p = taylor_feature_dim(feature_dim, compact=True)
    return LinearAttentionState(
        kv=jnp.zeros((batch, heads, p, value_dim), jnp.float32), z=jnp.zeros((batch, heads, p), jnp.float32)
    )


def step(state: LinearAttentionState, q_t, k_t, v_t, *, eps: float, scale_dim=None, key_w=None):
    """One decode step (canonical inputs): add (k_t, v_t), then read with q_t. Returns (y_t f32, state)."""
    f32 = jnp.float32
    phi_k = taylor_feature_map_compact(k_t.astype(f32), scale_dim=scale_dim)
    if key_w is not None:
        phi_k = phi_k * key_w.astype(f32)[:, None, None]
    kv = state.kv + phi_k[..., :, None] * v_t.astype(f32)[..., None, :]
    z = state.z + phi_k
    phi_q = taylor_feature_map_compact(q_t.astype(f32), scale_dim=scale_dim)
    num = jnp.einsum("bhp,bhpd->bhd", phi_q, kv, precision=matmul_precision(phi_q, kv))
    den = jnp.einsum("bhp,bhp->bh", phi_q, z, precision=matmul_precision(phi_q, z))
    return num / (den[..., None] + eps), LinearAttentionState(kv, z)
