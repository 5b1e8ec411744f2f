"""Gated (SwiGLU) MLPs: the fused layout of the JRT/Based release and the three-matrix layout of Llama."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax.nn.axes import EMBED, MLP
from jrt_jax.nn.dense import linear


class GatedMLP(nnx.Module):
    """SwiGLU with one fused input projection, as in the JRT/Based release::

        y, gate = split(fc1(x), 2)          # fc1: d → 2·n_inner, first half y, second half gate
        out = fc2(y · silu(gate))           # fc2: n_inner → d

    No biases. Parameters: ``fc1.kernel`` [d, 2·n_inner] (embed, mlp), ``fc2.kernel`` [n_inner, d] (mlp, embed).
    """

    def __init__(
        self,
        d_model: int,
        n_inner: int,
        *,
        init_std: float = 0.02,
        out_init_std: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = linear(d_model, 2 * n_inner, (EMBED, MLP), stddev=init_std, **kw)
        self.fc2 = linear(n_inner, d_model, (MLP, EMBED), stddev=out_init_std or init_std, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y, gate = jnp.split(self.fc1(x), 2, axis=-1)
        return self.fc2(y * jax.nn.silu(gate))


class LlamaMLP(nnx.Module):
    """Llama's SwiGLU: down_proj(silu(gate_proj(x)) · up_proj(x)), optional biases (``mlp_bias``).

    Parameters: ``gate_proj.kernel``, ``up_proj.kernel`` [d, inter] (embed, mlp); ``down_proj.kernel``
    [inter, d] (mlp, embed); biases (mlp,) / (embed,) when `use_bias`.
    """

    def __init__(
        self,
        d_model: int,
        intermediate_size: int,
        *,
        use_bias: bool = False,
        init_std: float = 0.02,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(use_bias=use_bias, stddev=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = linear(d_model, intermediate_size, (EMBED, MLP), **kw)
        self.up_proj = linear(d_model, intermediate_size, (EMBED, MLP), **kw)
        self.down_proj = linear(intermediate_size, d_model, (MLP, EMBED), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
