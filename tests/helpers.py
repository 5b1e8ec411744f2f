"""Numerical helpers shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| in float64."""
    x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    ref = np.asarray(jnp.asarray(ref, jnp.float32), np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(x - ref)) / (scale if scale > 0 else 1.0))


def assert_rel(x, ref, tol: float, what: str = "") -> None:
    err = rel_err(x, ref)
    assert err <= tol, f"{what} relative error {err:.3e} > {tol:.1e}"


def random_qkv(seed, b, t, h, f, d, m=None, dtype=jnp.float32):
    """q, k [b,t,h,f], v [b,t,h,d] (and k_enc, v_enc [b,m,h,*] when m is given) with N(0,1) entries."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (b, t, h, f), dtype)
    k = jax.random.normal(ks[1], (b, t, h, f), dtype)
    v = jax.random.normal(ks[2], (b, t, h, d), dtype)
    if m is None:
        return q, k, v
    return q, k, v, jax.random.normal(ks[3], (b, m, h, f), dtype), jax.random.normal(ks[4], (b, m, h, d), dtype)
