"""Quadratic reference for causal Based linear attention and prefix linear attention (PLA).

Materialises the full 273-dim Taylor features and the [T, T] (and [T, M]) score matrices, exactly as the
formula in DESIGN §3 reads. It is the oracle every other implementation is tested against; it is not
meant to be fast.

Inputs are canonical (validated by the public API): q, k [B,T,H,F], v [B,T,H,D], optional encoder keys
k_enc [B,M,H,F], v_enc [B,M,H,D], and optional per-key weights key_w [B,T], enc_w [B,M] (1 = real token,
0 = padding that contributes nothing).
"""

from __future__ import annotations

import jax.numpy as jnp

from jrt_jax.ops.feature_map import taylor_feature_map, taylor_feature_map_compact
from jrt_jax.ops.linear_attention.state import LinearAttentionState

_F32 = jnp.float32


def _scores(phi_q, phi_k):
    return jnp.einsum("bihp,bjhp->bhij", phi_q, phi_k, precision="highest")


def reference_linear_attention(q, k, v, *, k_enc=None, v_enc=None, key_w=None, enc_w=None, eps, scale_dim=None):
    """Returns (y [B,T,H,D] float32, LinearAttentionState after the last token)."""
    q, k, v = q.astype(_F32), k.astype(_F32), v.astype(_F32)
    t = q.shape[1]
    phi_q = taylor_feature_map(q, scale_dim=scale_dim)
    scores = _scores(phi_q, taylor_feature_map(k, scale_dim=scale_dim))
    weights = jnp.tril(jnp.ones((t, t), _F32))[None, None]
    if key_w is not None:
        weights = weights * key_w.astype(_F32)[:, None, None, :]
    scores = scores * weights
    num = jnp.einsum("bhij,bjhd->bihd", scores, v, precision="highest")
    den = jnp.einsum("bhij->bih", scores)
    if k_enc is not None:
        k_enc, v_enc = k_enc.astype(_F32), v_enc.astype(_F32)
        enc_scores = _scores(phi_q, taylor_feature_map(k_enc, scale_dim=scale_dim))
        if enc_w is not None:
            enc_scores = enc_scores * enc_w.astype(_F32)[:, None, None, :]
        num = num + jnp.einsum("bhij,bjhd->bihd", enc_scores, v_enc, precision="highest")
        den = den + jnp.einsum("bhij->bih", enc_scores)
    y = num / (den[..., None] + eps)

    state = reference_state(k, v, key_w, scale_dim=scale_dim)
    if k_enc is not None:
        enc_state = reference_state(k_enc, v_enc, enc_w, scale_dim=scale_dim)
        state = LinearAttentionState(state.kv + enc_state.kv, state.z + enc_state.z)
    return y, state


def reference_state(k, v, key_w=None, *, scale_dim=None) -> LinearAttentionState:
    """Σ_j w_j φ(k_j) v_jᵀ and Σ_j w_j φ(k_j) over the sequence, in the compact feature basis."""
    phi_k = taylor_feature_map_compact(k.astype(_F32), scale_dim=scale_dim)
    if key_w is not None:
        phi_k = phi_k * key_w.astype(_F32)[:, :, None, None]
    kv = jnp.einsum("bjhp,bjhd->bhpd", phi_k, v.astype(_F32), precision="highest")
    return LinearAttentionState(kv=kv, z=jnp.sum(phi_k, axis=1))
