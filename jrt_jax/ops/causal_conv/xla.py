"""Fast path of the depthwise causal conv: K shifted slices of the extended input, weighted and summed."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32


@jax.jit
def shifted_causal_conv1d(xe, kernel, tap_allowed=None):
    """y[:, t] = Σ_k kernel[k] · xe[:, t + k] over xe = [tail (K-1) | x (T)], i.e. tap k reads x[t - (K-1) + k].

    xe [B, K-1+T, C], kernel [K, C], tap_allowed None or [K, B, T] bool (tap k at t is selected away where
    False). Taps are summed in kernel order 0 … K-1. Returns fp32 [B, T, C].
    """
    kk = kernel.shape[0]
    t = xe.shape[1] - (kk - 1)
    xe = xe.astype(_F32)
    w = kernel.astype(_F32)
    out = None
    for i in range(kk):
        term = xe[:, i : i + t] * w[i]
        if tap_allowed is not None:
            term = jnp.where(tap_allowed[i][..., None], term, 0.0)
        out = term if out is None else out + term
    return out
