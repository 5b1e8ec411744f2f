"""Global positions of a sequence shard: RoPE offsets and per-document positions across shards."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrt_jax.ops.segments import document_ids
from jrt_jax.parallel import _axis


def shard_positions(local_len: int, axis_name, *, offset=0):
    """[T_l] int32 global positions of this shard's tokens: s·T_l + 0 … s·T_l + T_l − 1 (+ offset).

    Use it for RoPE (`jrt_jax.ops.apply_rope(x, shard_positions(T_l, "sequence"), inv_freq)`) and for
    slot-aligned encoder masks (`shard_positions(T_l, axis)[None] < M`). No collective: `axis_index` only.
    Call inside `jax.shard_map` (ValueError otherwise).
    """
    _axis.axis_size(axis_name)
    return _axis.shard_index(axis_name) * local_len + jnp.arange(local_len, dtype=jnp.int32) + offset


def document_positions(mask, segment_ids, *, axis_name, batch: int, local_len: int):
    """[B, T_l] int32: real tokens before each token in its own document, counted across shards.

    The sharded form of `jrt_jax.nn.padding.document_positions` (the RoPE positions of packed / padded rows,
    and the index that "the first M tokens of each document" is measured in): pads get 0; without a mask nor
    ids it is `shard_positions`. Collective: one all-gather of 5 int32 per row and shard (a count and the
    document edges), then a segmented exclusive scan of the counts.

    Args:
      mask: optional [B, T_l] bool local shard (True = real token).
      segment_ids: optional [B, T_l] int local shard (0 = padding).
      axis_name: the sequence mesh axis; batch, local_len: B and T_l.
    """
    _axis.axis_size(axis_name)
    s = _axis.shard_index(axis_name)
    if mask is None and segment_ids is None:
        return jnp.broadcast_to(shard_positions(local_len, axis_name), (batch, local_len))
    real = jnp.ones((batch, local_len), bool) if mask is None else jnp.asarray(mask).astype(bool)
    ids = real.astype(jnp.int32) if segment_ids is None else jnp.where(real, jnp.asarray(segment_ids), 0)
    ids = ids.astype(jnp.int32)
    real = ids != 0
    run, _ = document_ids(ids)
    count = jnp.cumsum(real.astype(jnp.int32), axis=1)
    first = jnp.concatenate([jnp.ones_like(run[:, :1], bool), run[:, 1:] != run[:, :-1]], axis=1)
    before = jax.lax.cummax(jnp.where(first, count - real.astype(jnp.int32), 0), axis=1)
    local = count - 1 - before  # positions inside the local part of each document
    # The shard's summary: real tokens of its last document.
    last_count = count[:, -1] - jnp.max(jnp.where(run == run[:, -1:], before, 0), axis=1)
    edges = _axis.boundary(ids)
    packed = jnp.stack([edges.first, edges.last, edges.single.astype(jnp.int32), edges.nonempty.astype(jnp.int32),
                        last_count], axis=0)
    g = jax.lax.all_gather(packed, axis_name)  # [n, 5, B]
    fwd = _axis.forward_scan(_axis.Boundary(g[:, 0], g[:, 1], g[:, 2] != 0, g[:, 3] != 0))
    coef = _axis.pick(fwd.coef, s)[:, 1:]  # [B, n]; no initial count
    carried = jnp.sum(coef.astype(jnp.int32) * g[:, 4].T, axis=1)  # coefficients are 0 / 1
    cont = edges.nonempty & (edges.first == _axis.pick(fwd.ids, s))
    offset = jnp.where(cont, carried, 0)[:, None] * (run == 0)
    return jnp.where(real, local + offset, 0).astype(jnp.int32)
