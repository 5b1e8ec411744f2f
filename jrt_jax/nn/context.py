"""The one calling convention of every mixer: ``mixer(x, ctx, cache=None) -> (y, cache)``.

`SequenceContext` carries what a mixer may need about the sequence besides its activations: RoPE positions,
the padding mask, packed-document ids, the PLA encoder, and whether this is a decoding step. Every mixer
(`CausalLinearAttention`, `PrefixLinearAttention`, `SlidingWindowAttention`, `BaseConv`, `Attention`) reads
the fields it needs and ignores the rest, so a model calls all of them the same way:

* ``cache=None`` — a parallel pass over x [B, T, d] (training, scoring); returns (y, None).
* ``cache=mixer.init_cache(B, capacity)`` — a prefill: the same pass, also returning the decoding cache
  (linear attention and the conv continue from the cache they are given; sliding-window and full attention
  start from an empty one unless ``ctx.continues``).
* ``ctx.continues=True`` with the cache of an earlier prefill (or decoding steps) — a later chunk of a long
  prompt: every mixer continues from its cache (attention appends to its KV cache and reads it, the sliding
  window reads its ring buffer), so chunk after chunk equals one prefill over the concatenation.
* ``ctx.decode=True`` with a cache — one token per row, x [B, 1, d]; returns (y [B, 1, d], new cache).

`mixer.init_cache(batch, capacity)` gives the empty cache; only mixers whose cache grows with the sequence
(`cache_grows = True`: full attention's KV cache) use the capacity.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from jrt_jax.nn.padding import document_positions


@struct.dataclass
class SequenceContext:
    """What the mixers of one call share (a pytree; `enc_len` and `decode` are static).

    positions: [B, T] int32 RoPE positions (real tokens before each token in its document), or None for
      0 … T-1.
    mask: [B, T] bool, True = real token, or None.
    segment_ids: [B, T] int packed-document ids (0 = padding), or None.
    enc_len: PLA encoder length M: each row's (each packed document's) first `enc_len` real tokens.
    enc_lens: optional [B] int per-row encoder lengths (capped at `enc_len`).
    decode: True for a single-token decoding step against a cache.
    continues: True for a later chunk of a prefill: mixers continue from the cache they are given.
    """

    positions: jax.Array | None = None
    mask: jax.Array | None = None
    segment_ids: jax.Array | None = None
    enc_lens: jax.Array | None = None
    enc_len: int | None = struct.field(pytree_node=False, default=None)
    decode: bool = struct.field(pytree_node=False, default=False)
    continues: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def for_sequence(cls, batch: int, seq: int, *, mask=None, segment_ids=None, enc_len=None, enc_lens=None):
        """The context of a parallel pass: positions count real tokens of each document (pads get 0)."""
        return cls(positions=document_positions(mask, segment_ids, batch, seq), mask=mask, segment_ids=segment_ids,
                   enc_len=enc_len, enc_lens=enc_lens)

    @classmethod
    def for_chunk(cls, batch: int, seq: int, *, start, mask=None, enc_len=None, enc_lens=None):
        """The context of a later prefill chunk: `start` [B] int are the real tokens each row has already
        consumed, so positions continue from them (pads get `start`, and are excluded anyway)."""
        start = jnp.asarray(start, jnp.int32)[:, None]
        return cls(positions=start + document_positions(mask, None, batch, seq), mask=mask, enc_len=enc_len,
                   enc_lens=enc_lens, continues=True)

    @classmethod
    def for_step(cls, positions):
        """The context of one decoding step: positions [B] (real tokens before the new one)."""
        return cls(positions=jnp.asarray(positions, jnp.int32)[:, None], decode=True)

    def rope_positions(self, batch: int, seq: int) -> jax.Array:
        """positions, or 0 … T-1 when none were given."""
        if self.positions is not None:
            return self.positions
        return jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32)[None], (batch, seq))


class Mixer(Protocol):
    """A sequence mixer of a decoder block."""

    #: whether `init_cache`'s capacity matters (the cache holds every position)
    cache_grows: bool

    def __call__(self, x: jax.Array, ctx: SequenceContext | None = None, cache: Any = None) -> tuple[jax.Array, Any]:
        ...

    def init_cache(self, batch: int, capacity: int | None = None) -> Any:
        ...
