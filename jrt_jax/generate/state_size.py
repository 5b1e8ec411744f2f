"""Decoding-state size from shapes alone (`jax.eval_shape` of the prefill: nothing is computed or allocated)."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
from flax import nnx


def decode_state(model, *, batch: int = 1, context: int, cache_len: int | None = None):
    """The abstract caches (`jax.ShapeDtypeStruct` leaves) after prefilling `context` tokens.

    `cache_len` is the KV-cache capacity of attention models (default `context` + 1, room for one new token);
    models without a KV cache ignore it.
    """
    graphdef, state = nnx.split(model)
    if model.cache_grows and cache_len is None:
        cache_len = context + 1

    def prefill(state, tokens):
        return nnx.merge(graphdef, state).prefill(tokens, cache_len=cache_len)[1]

    tokens = jax.ShapeDtypeStruct((batch, context), jnp.int32)
    return jax.eval_shape(prefill, state, tokens)


def state_bytes(model, *, batch: int = 1, context: int, cache_len: int | None = None) -> int:
    """Bytes of the decoding state after `context` tokens (sum over layers)."""
    caches = decode_state(model, batch=batch, context=context, cache_len=cache_len)
    return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(caches)))


def state_bytes_by_kind(model, *, batch: int = 1, context: int, cache_len: int | None = None) -> dict[str, int]:
    """Bytes per cache type ("LinearAttentionState", "SlidingWindowCache", "ConvCache", "KVCache")."""
    caches = decode_state(model, batch=batch, context=context, cache_len=cache_len)
    out: collections.Counter = collections.Counter()
    for cache in caches:
        out[type(cache).__name__] += sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
    return dict(out)
