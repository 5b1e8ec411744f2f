"""Sliding-window softmax attention with RoPE (the release's local attention layers).

    q | k | v = split(Wqkv(x), 3)        # Wqkv: d → 3d, no bias; each third head-major [H, Dh]
    q, k     = rope(q), rope(k)           # rotate-half on the full head dim, base 10000
    y_i      = softmax_{i-window ≤ j ≤ i}(q_i·k_j / √Dh) v_j        (`ops.sliding_window_attention`)
    out      = out_proj(y)                # d → d, no bias

Decoding keeps a ring buffer of the last `window` rotated keys and values (`SlidingWindowCache`): its size is
the window, never the sequence length; one step is `ops.sliding_window_step`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax import ops, parallel
from jrt_jax.nn.axes import EMBED, HEADS, QKV
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import linear
from jrt_jax.ops.sliding_window import sliding_window_step


class SlidingWindowCache(NamedTuple):
    """Ring buffer of one sliding-window layer.

    k, v:  [B, window, H, Dh] rotated keys and values; absolute position p lives in slot p % window.
    valid: [B, window] bool, False for empty slots and pads.
    index: [] int32, the position (in the padded batch) the next token will take.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array


class SlidingWindowAttention(nnx.Module):
    """Causal softmax attention over the last `window` keys plus the current one, with RoPE.

    Parameters: ``Wqkv.kernel`` [d, 3d] (embed, qkv) with output columns q | k | v, each head-major;
    ``out_proj.kernel`` [d, d] (heads, embed). Biases when `use_bias` (the release: none).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        window: int = 128,
        rope_base: float = 10000.0,
        use_bias: bool = False,
        implementation: str = "auto",
        init_std: float = 0.02,
        out_init_std: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.window = window
        self.rope_base = float(rope_base)
        self.implementation = implementation
        self.dtype = dtype
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.Wqkv = linear(d_model, 3 * d_model, (EMBED, QKV), stddev=init_std, **kw)
        self.out_proj = linear(d_model, d_model, (HEADS, EMBED), stddev=out_init_std or init_std, **kw)

    def _qkv(self, x, positions):
        """x [B, T, d] → rotated q, k and v, each [B, T, H, Dh]."""
        b, t, _ = x.shape
        qkv = self.Wqkv(x).reshape(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        inv_freq, _ = ops.rope_frequencies(self.head_dim, base=self.rope_base)
        return ops.apply_rope(q, positions, inv_freq), ops.apply_rope(k, positions, inv_freq), v

    #: the ring buffer holds `window` positions, whatever the sequence length
    cache_grows = False

    def _attend(self, x, positions, mask, segment_ids=None):
        b, t, _ = x.shape
        q, k, v = self._qkv(x, positions)
        kw = dict(window=self.window, mask=mask, segment_ids=segment_ids, implementation=self.implementation)
        y = parallel.run(ops.sliding_window_attention, q, k, v, **kw)  # context parallel: a halo of `window` keys
        return self.out_proj(y.reshape(b, t, -1)), k, v

    def __call__(self, x: jax.Array, ctx: SequenceContext | None = None, cache: SlidingWindowCache | None = None):
        """x [B, T, d] → (y [B, T, d], ring buffer or None); see `jrt_jax.nn.context` for ctx and cache.

        RoPE at `ctx.positions` (default 0 … T-1); pads (`ctx.mask`) are never attended; with
        `ctx.segment_ids` no window crosses a document boundary. With a cache (an empty one from `init_cache`)
        the ring buffer of the last `window` keys and values is returned as well; with `ctx.continues` the
        chunk's first queries also read the window held in the cache (a later chunk of a prefill).
        """
        ctx = ctx or SequenceContext()
        b, t = x.shape[:2]
        if ctx.decode:
            return self._step(x, cache, ctx.positions[:, 0])
        if ctx.continues and cache is not None:
            return self._continue(x, ctx, cache)
        y, k, v = self._attend(x, ctx.rope_positions(b, t), ctx.mask, ctx.segment_ids)
        if cache is None:
            return y, None
        valid = jnp.ones((b, t), bool) if ctx.mask is None else ctx.mask.astype(bool)
        return y, self._fill(k, v, valid, t)

    def _continue(self, x, ctx: SequenceContext, cache: SlidingWindowCache):
        """A later prefill chunk: the ring buffer, unrolled oldest first, is the key span before the chunk."""
        b, t, _ = x.shape
        w = self.window
        q, k, v = self._qkv(x, ctx.rope_positions(b, t))
        shift = -(cache.index % w)  # slot of the oldest position held: index - w
        ring = lambda a: jnp.roll(a, shift, axis=1)
        valid = jnp.ones((b, t), bool) if ctx.mask is None else ctx.mask.astype(bool)
        span_k = jnp.concatenate([ring(cache.k).astype(k.dtype), k], axis=1)
        span_v = jnp.concatenate([ring(cache.v).astype(v.dtype), v], axis=1)
        span_valid = jnp.concatenate([ring(cache.valid), valid], axis=1)
        y = ops.sliding_window_attention(q, span_k, span_v, window=w, mask=span_valid, q_offset=w,
                                         implementation=self.implementation)
        y = self.out_proj(y.reshape(b, t, -1))
        return y, self._fill(span_k, span_v, span_valid, cache.index + t)

    def _fill(self, k, v, valid, end):
        """The ring buffer holding the last `window` of positions … end-1 (k, v, valid [B, L, …] in position
        order, the last at position end - 1): position p in slot p % window; `end` may be traced."""
        w = self.window
        n = k.shape[1]
        if n < w:  # pad on the left with empty slots
            pad = [(0, 0), (w - n, 0)]
            k = jnp.pad(k, pad + [(0, 0), (0, 0)])
            v = jnp.pad(v, pad + [(0, 0), (0, 0)])
            valid = jnp.pad(valid, pad)
        shift = end % w
        last = lambda a: jnp.roll(a[:, a.shape[1] - w :], shift, axis=1)
        return SlidingWindowCache(last(k).astype(self.dtype), last(v).astype(self.dtype), last(valid),
                                  jnp.asarray(end, jnp.int32))

    def init_cache(self, batch: int, capacity: int | None = None) -> SlidingWindowCache:
        """The empty ring buffer (`capacity` is ignored: it always holds `window` positions)."""
        del capacity
        shape = (batch, self.window, self.num_heads, self.head_dim)
        return SlidingWindowCache(
            jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype), jnp.zeros(shape[:2], bool),
            jnp.zeros((), jnp.int32),
        )

    def _step(self, x, cache: SlidingWindowCache, positions: jax.Array):
        """One token per row: x [B, 1, d], positions [B]. Reads `window` cached keys + its own."""
        q, k, v = self._qkv(x, positions[:, None])
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # [B, H, Dh]
        y, ck, cv, cvalid = sliding_window_step(
            cache.k, cache.v, cache.valid, q, k, v, slot=cache.index % self.window, scale=1.0 / self.head_dim**0.5
        )
        new = SlidingWindowCache(k=ck, v=cv, valid=cvalid, index=cache.index + 1)
        y = y.astype(x.dtype)
        return self.out_proj(y.reshape(x.shape[0], 1, -1)), new
