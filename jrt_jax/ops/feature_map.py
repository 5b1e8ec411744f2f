"""The second-order Taylor feature map of Based / JRT-RNN.

    φ(x) = [1, x / d^¼, vec(x xᵀ) / (√2·√d)]          (1 + F + F² features)

so that φ(q)·φ(k) = 1 + s + s²/2 with s = q·k/√d, the second-order Taylor expansion of exp(s).
With F = 16 this is the 273-dimensional map of the released checkpoints.

`vec(x xᵀ)` repeats every off-diagonal product twice. The compact map keeps each unordered pair once,
with weight √2 on the off-diagonal terms, which has the same inner product and 1 + F + F(F+1)/2 features
(153 for F = 16). The chunked paths and the recurrent state use the compact map. `taylor_feature_dim` counts
either map's features.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jrt_jax.ops._checks import check_float_array

# The feature count and the scalar kernel φ(q)·φ(k) = 1 + s + s²/2 are defined once, at the lowest layer, for the
# kernels and these maps alike.
from pallas_kernels.linear_attention.common import taylor_feature_dim as taylor_feature_dim
from pallas_kernels.linear_attention.common import taylor_kernel as taylor_kernel


def _scale(feature_dim, scale_dim):
    d = feature_dim if scale_dim is None else scale_dim
    if isinstance(d, bool) or not isinstance(d, (int, float)) or d <= 0:
        raise ValueError(f"scale_dim must be a positive number; got {scale_dim!r}")
    return float(d)


def taylor_feature_map(x, *, scale_dim: float | None = None):
    """φ(x) = [1, x/d^¼, vec(x xᵀ)/(√2·√d)] on the last axis; d = scale_dim or x.shape[-1].

    Args:
      x: [..., F] floating array.
      scale_dim: the d of the formula; defaults to F.
    Returns:
      [..., 1 + F + F²] array of x's dtype.
    """
    check_float_array("x", x)
    d = _scale(x.shape[-1], scale_dim)
    f = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (f * f,))
    return jnp.concatenate(
        [jnp.ones_like(x[..., :1]), x / d**0.25, outer / (math.sqrt(2.0) * math.sqrt(d))], axis=-1
    )


def taylor_feature_map_compact(x, *, scale_dim: float | None = None):
    """The compact Taylor map: same inner product as `taylor_feature_map`, 1 + F + F(F+1)/2 features.

    The quadratic block lists x_a·x_b for a ≤ b (row by row), weighted 1/√(2d) on the diagonal and 1/√d
    off it, so Σ_{a≤b} w_ab² q_a q_b k_a k_b = (q·k)²/(2d).
    """
    check_float_array("x", x)
    d = _scale(x.shape[-1], scale_dim)
    f = x.shape[-1]
    parts = [jnp.ones_like(x[..., :1]), x / d**0.25]
    for a in range(f):
        w = np.full((f - a,), 1.0 / math.sqrt(d), dtype=np.float32)
        w[0] = 1.0 / math.sqrt(2.0 * d)
        parts.append(x[..., a : a + 1] * x[..., a:] * jnp.asarray(w, dtype=x.dtype))
    return jnp.concatenate(parts, axis=-1)


def taylor_feature_map_compact_t(x_t, *, scale_dim: float | None = None):
    """`taylor_feature_map_compact` with the features on axis -2: x_t [..., F, N] -> [..., Φ, N].

    Same features in the same order (equal up to rounding), laid out features-first for the chunked paths:
    with the token axis minor, the map is one vectorised outer product of x̃ = [1, x/d^¼] with itself plus
    F + 1 contiguous row slices (row a of the upper triangle is x̃_a·x̃[a:]), and the state update
    φ(k)ᵀ v becomes a plain [Φ, N] @ [N, D] matmul. Built from x directly, one row at a time, XLA:CPU runs
    one small kernel per row with a minor dimension of at most F, which costs more than the matmuls.
    """
    check_float_array("x_t", x_t)
    if x_t.ndim < 2:
        raise ValueError(f"x_t: expected at least 2 dimensions [..., F, N]; got shape {x_t.shape}")
    d = _scale(x_t.shape[-2], scale_dim)
    n = x_t.shape[-2] + 1
    xt = jnp.concatenate([jnp.ones_like(x_t[..., :1, :]), x_t * (1.0 / d**0.25)], axis=-2)
    w = np.ones((n, n, 1), dtype=np.float32)
    w[np.arange(1, n), np.arange(1, n)] = 1.0 / math.sqrt(2.0)
    outer = xt[..., :, None, :] * (xt[..., None, :, :] * jnp.asarray(w, dtype=x_t.dtype))
    return jnp.concatenate([outer[..., a, a:, :] for a in range(n)], axis=-2)
