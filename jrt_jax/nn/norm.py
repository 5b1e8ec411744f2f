"""RMSNorm: y = x / sqrt(mean(x²) + eps) · scale, computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax.nn.axes import EMBED, partitioned


class RMSNorm(nnx.Module):
    """Root-mean-square norm over the last axis (Zhang & Sennrich 2019), as in Llama and the JRT release.

    The statistics and the scaling are computed in float32 whatever the input dtype; the result is cast to
    `dtype` (the input's dtype when None).

    Parameters: ``scale`` [dim] (logical axis ``embed``), initialised to ones.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps!r}")
        self.eps = float(eps)
        self.dtype = dtype
        self.scale = nnx.Param(partitioned(nnx.initializers.ones_init(), (EMBED,))(rngs.params(), (dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x32 = x.astype(jnp.float32)
        inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * inv * self.scale[...].astype(jnp.float32)).astype(out_dtype)
