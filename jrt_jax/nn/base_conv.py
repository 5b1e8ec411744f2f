"""BaseConv: a gated short causal convolution (the release's "BaseConv" mixer).

    u1, u2 = split(in_proj(x), 2)                   # in_proj: d → expand·d with bias; u1 is the first half
    c[t]   = Σ_k kernel[k] · u1[t - (K-1) + k]      # depthwise, causal, no bias; u1[<0] = 0
    out    = out_proj(silu(c) · u2)                 # out_proj: (expand/2)·d → d with bias

`kernel` is [K, C] with ``kernel[K-1]`` multiplying the current token; PyTorch's ``Conv1d`` weight
[C, 1, K] (padding K-1, output truncated to T) maps to it as ``kernel[k, c] = weight[c, 0, k]``.

The convolution is `ops.causal_conv.causal_conv1d` (packing- and padding-aware); decoding keeps the last
K-1 values of u1 (`ConvCache`, constant size) and steps with `causal_conv1d_step`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax import parallel
from jrt_jax.nn.axes import CONV, CONV_WIDTH, EMBED, partitioned
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import linear
from jrt_jax.ops.causal_conv import causal_conv1d, causal_conv1d_step


class ConvCache(NamedTuple):
    """Decoding state of a BaseConv layer: tail [B, K-1, C], the last K-1 conv inputs (zeros before the start)."""

    tail: jax.Array


class BaseConv(nnx.Module):
    """Gated depthwise causal convolution mixer (see the module docstring for the formula).

    Parameters: ``in_proj.kernel`` [d, expand·d] (embed, conv) and ``in_proj.bias`` (conv,);
    ``conv.kernel`` [K, expand·d/2] (conv_width, conv); ``out_proj.kernel`` [expand·d/2, d] (conv, embed) and
    ``out_proj.bias`` (embed,). Biases on the projections only when `use_bias` (the release: True).
    """

    def __init__(
        self,
        d_model: int,
        *,
        kernel_size: int = 3,
        expand: int = 4,
        use_bias: bool = True,
        init_std: float = 0.02,
        out_init_std: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if expand % 2 or expand <= 0:
            raise ValueError(f"expand must be a positive even number (u1 and u2 halves); got {expand}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1; got {kernel_size}")
        self.kernel_size = kernel_size
        self.channels = expand * d_model // 2
        self.dtype = dtype
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = linear(d_model, expand * d_model, (EMBED, CONV), stddev=init_std, **kw)
        self.conv = DepthwiseCausalConv(self.channels, kernel_size, param_dtype=param_dtype, rngs=rngs)
        self.out_proj = linear(self.channels, d_model, (CONV, EMBED), stddev=out_init_std or init_std, **kw)

    def _gate_out(self, c, u2):
        return self.out_proj(jax.nn.silu(c) * u2)

    def _inputs(self, x):
        return jnp.split(self.in_proj(x), 2, axis=-1)

    #: the cache holds kernel_size - 1 inputs, whatever the sequence length
    cache_grows = False

    def __call__(self, x: jax.Array, ctx: SequenceContext | None = None, cache: ConvCache | None = None):
        """x [B, T, d] → (y [B, T, d], cache or None); see `jrt_jax.nn.context` for ctx and cache.

        Pads (`ctx.mask`) contribute zeros to the convolution; with `ctx.segment_ids` no tap reads across a
        document boundary. With a cache the conv continues from its tail and the new tail is returned.
        """
        ctx = ctx or SequenceContext()
        u1, u2 = self._inputs(x)
        if ctx.decode:
            c, tail = self.conv.step(cache.tail, u1[:, 0])
            return self._gate_out(c[:, None], u2), ConvCache(tail=tail)
        if cache is None:
            return self._gate_out(self.conv(u1, mask=ctx.mask, segment_ids=ctx.segment_ids), u2), None
        c, tail = self.conv(u1, mask=ctx.mask, segment_ids=ctx.segment_ids, initial_tail=cache.tail, return_tail=True)
        return self._gate_out(c, u2), ConvCache(tail=tail)

    def init_cache(self, batch: int, capacity: int | None = None) -> ConvCache:
        """The empty cache (no tokens seen; `capacity` is ignored)."""
        del capacity
        return ConvCache(tail=jnp.zeros((batch, self.kernel_size - 1, self.channels), self.dtype))


class DepthwiseCausalConv(nnx.Module):
    """Depthwise causal 1-D convolution without bias; ``kernel`` [K, C] (conv_width, conv).

    Initialised uniform in ±1/√K (PyTorch's Conv1d default for one input channel per group).
    """

    def __init__(self, channels: int, kernel_size: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        bound = 1.0 / kernel_size**0.5

        def init(key, shape, dtype):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        self.kernel = nnx.Param(
            partitioned(init, (CONV_WIDTH, CONV))(rngs.params(), (kernel_size, channels), param_dtype)
        )

    def __call__(self, u: jax.Array, *, mask=None, segment_ids=None, initial_tail=None, return_tail: bool = False):
        """`ops.causal_conv.causal_conv1d` of u [B, T, C] with this kernel (cast to u's dtype); under
        `jrt_jax.nn.sequence_parallel`, `jrt_jax.parallel.causal_conv1d` (a halo of K − 1 inputs)."""
        kernel = self.kernel[...].astype(u.dtype)
        kw = dict(mask=mask, segment_ids=segment_ids, initial_tail=initial_tail, return_tail=return_tail)
        return parallel.run(causal_conv1d, u, kernel, **kw)

    def step(self, tail: jax.Array, u_t: jax.Array):
        """`ops.causal_conv.causal_conv1d_step`: (c_t [B, C], new tail [B, K-1, C])."""
        return causal_conv1d_step(tail, u_t, self.kernel[...].astype(u_t.dtype))
