"""Reference depthwise causal conv: an explicit [T, K-1+T] band of weights per channel, every tap spelled out."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32


@jax.jit
def reference_causal_conv1d(xe, kernel, allowed):
    """y[b, t, c] = Σ_s W[t, s, c] · xe[b, s, c] over the extended input xe = [tail (K-1) | x (T)].

    W[t, s, c] = kernel[K-1-d, c] with d = t + K-1 - s the distance back, for 0 ≤ d < K and allowed[b, t, s].
    xe [B, K-1+T, C] (excluded entries already zero), kernel [K, C], allowed [B, T, K-1+T] bool.
    Returns fp32 [B, T, C].
    """
    kk = kernel.shape[0]
    t = allowed.shape[1]
    d = jnp.arange(t)[:, None] + kk - 1 - jnp.arange(xe.shape[1])[None, :]  # [T, K-1+T]
    band = (d >= 0) & (d < kk)
    w = jnp.where(band[:, :, None], kernel.astype(_F32)[jnp.clip(kk - 1 - d, 0, kk - 1)], 0.0)  # [T, S, C]
    terms = jnp.where((allowed & band[None])[..., None], w[None] * xe.astype(_F32)[:, None], 0.0)
    return jnp.sum(terms, axis=2)
