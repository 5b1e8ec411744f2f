"""Quadratic reference for causal Based linear attention and prefix linear attention (PLA).

Materialises the full 273-dim Taylor features and the [T, T] (and [T, M]) score matrices, exactly as the
formula in DESIGN §3 reads, with packed documents, per-slot encoder masks and an initial state spelled out as
explicit masks on those matrices. It is the oracle every other implementation is tested against; it is not
meant to be fast.

Inputs are canonical (validated and NaN-scrubbed by the public API): q, k [B,T,H,F], v [B,T,H,D], optional
encoder keys k_enc [B,M,H,F], v_enc [B,M,H,D]; optional per-key weights key_w [B,T], enc_w [B,M] (1 = real,
0 = contributes nothing); optional document labels doc [B,T] int32 (`segments.document_ids`: equal labels
form one document, the row's first label is its first document); optional initial state (kv0, z0) that the
first document reads as if it preceded the row.
"""

from __future__ import annotations

import jax.numpy as jnp

from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.feature_map import taylor_feature_map, taylor_feature_map_compact
from jrt_jax.ops.linear_attention.state import LinearAttentionState

_F32 = jnp.float32


def _scores(phi_q, phi_k):
    return jnp.einsum("bihp,bjhp->bhij", phi_q, phi_k, precision=matmul_precision(phi_q, phi_k))


def _weights(allowed, w):
    """[B|1, T, S] bool → [B, 1, T, S] float with the per-key weights w [B, S] applied."""
    out = allowed.astype(_F32)
    if w is not None:
        out = out * w.astype(_F32)[:, None, :]
    return out[:, None]


def reference_linear_attention(q, k, v, *, k_enc=None, v_enc=None, key_w=None, enc_w=None, doc=None,
                               initial_state=None, eps, scale_dim=None):
    """Returns (y [B,T,H,D] float32, LinearAttentionState after the row's last token)."""
    q, k, v = q.astype(_F32), k.astype(_F32), v.astype(_F32)
    b, t = q.shape[:2]
    same = jnp.ones((1, t, t), bool) if doc is None else doc[:, :, None] == doc[:, None, :]
    causal = jnp.tril(jnp.ones((t, t), bool))[None] & same
    phi_q = taylor_feature_map(q, scale_dim=scale_dim)
    scores = _scores(phi_q, taylor_feature_map(k, scale_dim=scale_dim)) * _weights(causal, key_w)
    num = jnp.einsum("bhij,bjhd->bihd", scores, v, precision=matmul_precision(scores, v))
    den = jnp.einsum("bhij->bih", scores)
    if k_enc is not None:
        m = k_enc.shape[1]
        k_enc, v_enc = k_enc.astype(_F32), v_enc.astype(_F32)
        enc_scores = _scores(phi_q, taylor_feature_map(k_enc, scale_dim=scale_dim))
        enc_scores = enc_scores * _weights(same[:, :, :m], enc_w)  # not causal: the whole prefix of the document
        num = num + jnp.einsum("bhij,bjhd->bihd", enc_scores, v_enc, precision=matmul_precision(enc_scores, v_enc))
        den = den + jnp.einsum("bhij->bih", enc_scores)
    if initial_state is not None:
        first = jnp.ones((b, t), bool) if doc is None else doc == doc[:, :1]
        phi_qc = taylor_feature_map_compact(q, scale_dim=scale_dim) * first[:, :, None, None]
        kv0, z0 = initial_state[0].astype(_F32), initial_state[1].astype(_F32)
        num = num + jnp.einsum("bihp,bhpd->bihd", phi_qc, kv0, precision=matmul_precision(phi_qc, kv0))
        den = den + jnp.einsum("bihp,bhp->bih", phi_qc, z0, precision=matmul_precision(phi_qc, z0))
    y = num / (den[..., None] + eps)
    return y, final_state(k, v, k_enc, v_enc, key_w, enc_w, doc, initial_state, scale_dim=scale_dim)


def final_state(k, v, k_enc=None, v_enc=None, key_w=None, enc_w=None, doc=None, initial_state=None, *,
                scale_dim=None) -> LinearAttentionState:
    """The state after the row's last token: every key of the last document (causal and encoder), plus the
    initial state when the last document is also the first."""
    last = None if doc is None else doc == doc[:, -1:]
    state = reference_state(k, v, _and(key_w, last), scale_dim=scale_dim)
    if k_enc is not None:
        m = k_enc.shape[1]
        enc = reference_state(k_enc, v_enc, _and(enc_w, None if last is None else last[:, :m]), scale_dim=scale_dim)
        state = LinearAttentionState(state.kv + enc.kv, state.z + enc.z)
    if initial_state is not None:
        keep = jnp.ones((k.shape[0],), bool) if doc is None else doc[:, -1] == doc[:, 0]
        kv0 = jnp.where(keep[:, None, None, None], initial_state[0].astype(_F32), 0.0)
        z0 = jnp.where(keep[:, None, None], initial_state[1].astype(_F32), 0.0)
        state = LinearAttentionState(state.kv + kv0, state.z + z0)
    return state


def _and(w, allowed):
    if allowed is None:
        return w
    allowed = allowed.astype(_F32)
    return allowed if w is None else w.astype(_F32) * allowed


def reference_state(k, v, key_w=None, *, scale_dim=None) -> LinearAttentionState:
    """Σ_j w_j φ(k_j) v_jᵀ and Σ_j w_j φ(k_j) over the sequence, in the compact feature basis."""
    phi_k = taylor_feature_map_compact(k.astype(_F32), scale_dim=scale_dim)
    if key_w is not None:
        phi_k = phi_k * key_w.astype(_F32)[:, :, None, None]
    v = v.astype(_F32)
    kv = jnp.einsum("bjhp,bjhd->bhpd", phi_k, v, precision=matmul_precision(phi_k, v))
    return LinearAttentionState(kv=kv, z=jnp.sum(phi_k, axis=1))
