"""Llama softmax attention: grouped-query heads, RoPE with any Hugging Face scaling, and a KV cache.

    q = q_proj(x) [H heads],  k, v = k_proj(x), v_proj(x) [KVH heads]     (optional biases: attention_bias)
    q, k = rope(q), rope(k)         # `ops.rope_frequencies(head_dim, base, scaling, seq_len, max_pos)`; use_rope
    y = softmax(q kᵀ / √Dh + causal/pad mask) v      # `ops.attention.causal_attention`, GQA
    out = o_proj(y)

`implementation` is the model config's `attention_implementation`, in the ops' one vocabulary
(`jrt_jax.ops.attention.IMPLEMENTATIONS`): None or "auto" (dense `jax.nn.dot_product_attention` up to
`ops.attention.DENSE_MAX_LEN` tokens, the blocked linear-memory "xla" path above), "dense", "xla", "cudnn" or
"reference" at every length. Decoding steps read one query against the cache with `jax.nn.dot_product_attention`
(its cuDNN kernel when "cudnn").

`use_rope=False` leaves q and k unrotated: attention without positions, as in Zoology's recall models, where
the short convolution before the attention layer is the only source of order.

RoPE frequencies depend on the sequence length only for the "dynamic" and "longrope" types; they are computed
for the length of the call (the forward's T, or the KV cache length when decoding). Hugging Face recomputes
them as the sequence grows, so for those two types prefill + decode equals a forward over `cache_len` tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax import ops, parallel
from jrt_jax.nn.axes import EMBED, HEADS, KV
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import linear
from jrt_jax.ops._checks import resolve_implementation
from jrt_jax.ops.attention import IMPLEMENTATIONS, causal_attention



class KVCache(NamedTuple):
    """Full-length key/value cache of one attention layer.

    k, v:  [B, S, KVH, Dh] rotated keys and values, S = capacity (prompt bucket + new-token bucket).
    valid: [B, S] bool, True where a real token has been written.
    index: [] int32, the slot the next token is written to.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array


class Attention(nnx.Module):
    """Multi-head / grouped-query causal attention with RoPE (Hugging Face ``LlamaAttention`` semantics).

    Parameters: ``q_proj.kernel`` [d, H·Dh] (embed, heads); ``k_proj.kernel``, ``v_proj.kernel`` [d, KVH·Dh]
    (embed, kv); ``o_proj.kernel`` [H·Dh, d] (heads, embed); biases (heads,) / (kv,) / (embed,) when
    `use_bias` (Hugging Face ``attention_bias`` puts a bias on all four).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        rope_theta: float = 10000.0,
        rope_scaling: Mapping[str, Any] | None = None,
        max_position_embeddings: int | None = None,
        use_bias: bool = False,
        implementation: str | None = None,
        use_rope: bool = True,
        init_std: float = 0.02,
        out_init_std: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        implementation = resolve_implementation(implementation or "auto", IMPLEMENTATIONS, "Attention").value
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_theta = float(rope_theta)
        self.rope_scaling = rope_scaling
        self.max_position_embeddings = max_position_embeddings
        self.implementation = implementation
        self.use_rope = bool(use_rope)
        self.dtype = dtype
        if self.use_rope:  # validate the RoPE settings now rather than at the first call
            ops.rope_frequencies(head_dim, base=self.rope_theta, scaling=rope_scaling,
                                 max_position_embeddings=max_position_embeddings)
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = linear(d_model, num_heads * head_dim, (EMBED, HEADS), stddev=init_std, **kw)
        self.k_proj = linear(d_model, num_kv_heads * head_dim, (EMBED, KV), stddev=init_std, **kw)
        self.v_proj = linear(d_model, num_kv_heads * head_dim, (EMBED, KV), stddev=init_std, **kw)
        self.o_proj = linear(num_heads * head_dim, d_model, (HEADS, EMBED), stddev=out_init_std or init_std, **kw)

    def rope(self, seq_len: int):
        """(inv_freq, attention_scale) for a call over `seq_len` positions."""
        return ops.rope_frequencies(self.head_dim, base=self.rope_theta, scaling=self.rope_scaling,
                                    seq_len=seq_len, max_position_embeddings=self.max_position_embeddings)

    def _qkv(self, x, positions, seq_len):
        lead = x.shape[:-1]
        q = self.q_proj(x).reshape(lead + (self.num_heads, self.head_dim))
        k = self.k_proj(x).reshape(lead + (self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(lead + (self.num_kv_heads, self.head_dim))
        if not self.use_rope:
            return q, k, v
        inv_freq, scale = self.rope(seq_len)
        return ops.apply_rope(q, positions, inv_freq, scale), ops.apply_rope(k, positions, inv_freq, scale), v

    #: the KV cache holds every position: its capacity is fixed by `init_cache`
    cache_grows = True

    def _attend(self, x, positions, mask, rope_len, segment_ids=None):
        b, t, _ = x.shape
        q, k, v = self._qkv(x, positions, rope_len)
        kw = dict(mask=mask, segment_ids=segment_ids, scale=1.0 / self.head_dim**0.5)
        # context parallel: K / V all-gathered over the sequence axis
        y = parallel.run(causal_attention, q, k, v, implementation=self.implementation, **kw)
        return self.o_proj(y.reshape(b, t, -1)), k, v

    def __call__(self, x, ctx: SequenceContext | None = None, cache: KVCache | None = None):
        """x [B, T, d] → (y [B, T, d], KV cache or None); see `jrt_jax.nn.context` for ctx and cache.

        RoPE at `ctx.positions` (default 0 … T-1), with frequencies for T positions — or for the cache's
        capacity when a cache is given, as Hugging Face does for the dynamic / LongRoPE types. Pads (`ctx.mask`)
        are never attended; with `ctx.segment_ids` a query sees only keys of its own document (positions
        restart per document). With a cache (an empty one from `init_cache`, capacity ≥ T) the prompt's keys
        and values are stored in it.
        """
        ctx = ctx or SequenceContext()
        b, t, _ = x.shape
        if ctx.decode:
            return self._step(x, cache, ctx.positions[:, 0])
        if ctx.continues and cache is not None:
            return self._continue(x, ctx, cache)
        rope_len = t if cache is None else cache.k.shape[1]
        if rope_len < t:
            raise ValueError(f"the cache holds {rope_len} positions; the prompt has {t}")
        y, k, v = self._attend(x, ctx.rope_positions(b, t), ctx.mask, rope_len, ctx.segment_ids)
        if cache is None:
            return y, None
        pad = [(0, 0), (0, rope_len - t), (0, 0), (0, 0)]
        valid = jnp.ones((b, t), bool) if ctx.mask is None else ctx.mask.astype(bool)
        cache = KVCache(jnp.pad(k, pad).astype(cache.k.dtype), jnp.pad(v, pad).astype(cache.v.dtype),
                        jnp.pad(valid, [(0, 0), (0, rope_len - t)]), jnp.asarray(t, jnp.int32))
        return y, cache

    def _continue(self, x, ctx: SequenceContext, cache: KVCache):
        """A later prefill chunk: its keys and values are written at the cache's index, and its queries read
        every valid slot up to their own (the op's key span with a query offset)."""
        b, t, _ = x.shape
        capacity = cache.k.shape[1]
        if t > capacity:
            raise ValueError(f"the cache holds {capacity} positions; the chunk has {t}")
        q, k, v = self._qkv(x, ctx.rope_positions(b, t), capacity)
        valid = jnp.ones((b, t), bool) if ctx.mask is None else ctx.mask.astype(bool)
        put = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), cache.index, axis=1)
        new = KVCache(put(cache.k, k), put(cache.v, v), put(cache.valid, valid), cache.index + t)
        y = causal_attention(q, new.k.astype(q.dtype), new.v.astype(q.dtype), q_offset=cache.index, mask=new.valid,
                             scale=1.0 / self.head_dim**0.5, implementation=self.implementation)
        return self.o_proj(y.reshape(b, t, -1)), new

    def init_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """An empty cache of `capacity` slots (prompt + tokens to generate)."""
        if capacity is None:
            raise ValueError("Attention.init_cache needs a capacity (prompt + tokens to generate)")
        shape = (batch, capacity, self.num_kv_heads, self.head_dim)
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype), jnp.zeros(shape[:2], bool),
                       jnp.zeros((), jnp.int32))

    def _step_implementation(self):
        """`jax.nn.dot_product_attention`'s implementation for one decoding step (one query, no T × T)."""
        return "cudnn" if self.implementation == "cudnn" else None

    def _step(self, x, cache: KVCache, positions) -> tuple[jax.Array, KVCache]:
        """One token per row: x [B, 1, d], positions [B]; attends over every valid slot."""
        b = x.shape[0]
        q, k, v = self._qkv(x, positions[:, None], cache.k.shape[1])
        upd = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), cache.index, axis=1)
        new = KVCache(upd(cache.k, k), upd(cache.v, v), upd(cache.valid, jnp.ones((b, 1), bool)), cache.index + 1)
        y = jax.nn.dot_product_attention(q, new.k.astype(q.dtype), new.v.astype(q.dtype),
                                         mask=new.valid[:, None, None, :], scale=1.0 / self.head_dim**0.5,
                                         implementation=self._step_implementation())
        return self.o_proj(y.reshape(b, 1, -1)), new
