"""Shared machinery of the context-parallel ops: the sequence axis, shard boundaries, segmented scans.

Everything here runs inside `jax.shard_map` with the sequence dimension (axis 1) of [B, T, …] arrays split
into equal contiguous shards over the mesh axis `axis_name`: shard s holds global positions
s·T_l … (s+1)·T_l − 1 (T_l = T / n, n the axis size).

Packed documents follow `jrt_jax.ops.segments`: maximal runs of equal non-zero ids, padding (0) ignored. A
document therefore continues across a shard boundary exactly when the last non-zero id before the boundary
(on any earlier shard: an all-padding shard passes it through) equals the first non-zero id after it. Each
shard describes its edges with a `Boundary` (four ints per row); gathered over the axis, those let every shard
run a *segmented* scan over the n shards — a few integer operations on [n, B] arrays — whose result is a
vector of coefficients over the shards' summaries (states, counts). The summaries themselves are combined by
one contraction with those coefficients, so no scan ever touches a state-sized array more than once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrt_jax.ops.segments import document_ids


def axis_size(axis_name) -> int:
    """The size of the mesh axis `axis_name` as seen from inside `jax.shard_map`, or a clear ValueError.

    Outside a `shard_map` (or inside one over a mesh without that axis) JAX raises a NameError ("unbound axis
    name"); the context-parallel ops turn it into a ValueError that says what to do.
    """
    try:
        return int(jax.lax.axis_size(axis_name))
    except NameError:
        raise ValueError(
            f"axis_name={axis_name!r} is not a mesh axis bound here: call jrt_jax.parallel ops inside "
            f"jax.shard_map over a mesh that has an axis named {axis_name!r} (the sequence axis), or use "
            "jrt_jax.parallel.context_parallel(op, mesh, axis_name) with global arrays"
        ) from None


def _varying_axes(x) -> frozenset:
    """The manual mesh axes x is typed as varying over (empty outside shard_map or with check_vma=False)."""
    t = jax.typeof(x)
    vma = getattr(t, "vma", None)  # jax < 0.9
    if vma is None:
        vma = getattr(getattr(t, "manual_axis_type", None), "varying", None)
    return frozenset(vma or ())


def require_unchecked(name: str, x) -> None:
    """The linear-attention ops of `jrt_jax.ops` trace only under `shard_map(..., check_vma=False)`: their chunked
    loops start from invariant `jnp.zeros` carries. Say so clearly instead of failing deep inside them."""
    if _varying_axes(x):
        raise ValueError(
            f"{name}: call it inside jax.shard_map(..., check_vma=False). The chunked paths of jrt_jax.ops start "
            "their loop carries from fresh zeros, which shard_map's variance checking types as invariant over the "
            "mesh axes, so they cannot trace with check_vma=True (jrt_jax.parallel.context_parallel does this)"
        )


def shard_index(axis_name) -> jax.Array:
    """This shard's index along the sequence axis (int32 scalar, varying over the axis)."""
    return jax.lax.axis_index(axis_name).astype(jnp.int32)


def from_previous(x, axis_name, n: int):
    """`ppermute` x (an array or a tuple of them) from shard s−1 to shard s (shard 0 receives zeros)."""
    if n == 1:
        return jax.tree.map(jnp.zeros_like, x)
    return jax.lax.ppermute(x, axis_name, [(i, i + 1) for i in range(n - 1)])


def from_last(x, axis_name, n: int, s):
    """The value x of the last shard, on every shard, typed invariant over the axis (one psum of x's size)."""
    return jax.lax.psum(jnp.where(s == n - 1, x, jnp.zeros((), x.dtype)), axis_name)


class Boundary(NamedTuple):
    """How one shard's rows begin and end, in document terms. Each field is [B] (or [n, B] once gathered).

    first: the first non-zero segment id of the row on this shard (0 if the shard holds only padding).
    last: the last non-zero segment id (0 if none).
    single: the shard's real tokens form one document (its first is its last); False when empty.
    nonempty: the shard holds at least one real token.
    """

    first: jax.Array
    last: jax.Array
    single: jax.Array
    nonempty: jax.Array


def boundary(seg) -> Boundary:
    """The `Boundary` of a local [B, T_l] segment-id array (0 = padding; documents as `ops.segments`)."""
    seg = seg.astype(jnp.int32)
    real = seg != 0
    t = seg.shape[1]
    nonempty = jnp.any(real, axis=1)
    first_pos = jnp.argmax(real, axis=1)
    last_pos = t - 1 - jnp.argmax(real[:, ::-1], axis=1)
    take = lambda p: jnp.take_along_axis(seg, p[:, None], axis=1)[:, 0]
    first = jnp.where(nonempty, take(first_pos), 0)
    last = jnp.where(nonempty, take(last_pos), 0)
    run, _ = document_ids(seg)
    single = nonempty & (run[:, -1] == 0)  # trailing pads carry the last document's number
    return Boundary(first, last, single, nonempty)


def gather_boundary(b: Boundary, axis_name) -> Boundary:
    """All shards' boundaries, [n, B] each, with one small all-gather of 4·B int32 per shard."""
    packed = jnp.stack([b.first, b.last, b.single.astype(jnp.int32), b.nonempty.astype(jnp.int32)], axis=0)
    g = jax.lax.all_gather(packed, axis_name)  # [n, 4, B]
    return Boundary(g[:, 0], g[:, 1], g[:, 2] != 0, g[:, 3] != 0)


def _one_hot(i: int, size: int, batch: int):
    return jnp.broadcast_to(jnp.arange(size) == i, (batch, size)).astype(jnp.float32)


class Scan(NamedTuple):
    """A segmented scan's result as coefficients over the shards' summaries.

    coef: [n, B, K] float32 — row s is the exclusive carry before (forward) or after (backward) shard s, as
      weights over K = n (+1 for the initial state, at index 0, in a forward scan) summaries.
    ids: [n, B] int32 — the segment id of the document that carry belongs to (0: none).
    final: [B, K] — the inclusive carry after the last shard (forward) / before the first (backward).
    """

    coef: jax.Array
    ids: jax.Array
    final: jax.Array


def forward_scan(g: Boundary) -> Scan:
    """Segmented exclusive scan from shard 0 upwards over per-shard summaries of each shard's LAST document.

    The carry is "the state of the document open so far": it starts as the initial state (index 0), which
    belongs to the row's first document whatever its id; a shard whose real tokens form one document that
    continues the carry adds its summary (index 1 + r); any other non-empty shard replaces the carry by its
    own summary (its last document starts there); an all-padding shard passes it through.
    """
    n, b = g.first.shape
    k = n + 1
    row_first = jnp.zeros((b,), jnp.int32)
    for r in reversed(range(n)):
        row_first = jnp.where(g.nonempty[r], g.first[r], row_first)
    coef, cid = _one_hot(0, k, b), row_first
    coefs, ids = [], []
    for r in range(n):
        coefs.append(coef)
        ids.append(cid)
        cont = g.single[r] & (g.first[r] == cid)
        mine = _one_hot(1 + r, k, b)
        new_coef = jnp.where(cont[:, None], coef + mine, mine)
        new_id = jnp.where(cont, cid, g.last[r])
        coef = jnp.where(g.nonempty[r][:, None], new_coef, coef)
        cid = jnp.where(g.nonempty[r], new_id, cid)
    return Scan(jnp.stack(coefs), jnp.stack(ids), coef)


def backward_scan(g: Boundary) -> Scan:
    """Segmented exclusive scan from the last shard downwards over summaries of each shard's FIRST document.

    The carry is "what the document continuing after this shard holds on later shards" (no initial state):
    a shard that is one document continuing the carry adds its summary, any other non-empty shard replaces
    it (its first document ends there), an all-padding shard passes it through.
    """
    n, b = g.first.shape
    coef, cid = jnp.zeros((b, n), jnp.float32), jnp.zeros((b,), jnp.int32)
    coefs, ids = [None] * n, [None] * n
    for r in reversed(range(n)):
        coefs[r], ids[r] = coef, cid
        cont = g.single[r] & (g.last[r] == cid)
        mine = _one_hot(r, n, b)
        new_coef = jnp.where(cont[:, None], coef + mine, mine)
        new_id = jnp.where(cont, cid, g.first[r])
        coef = jnp.where(g.nonempty[r][:, None], new_coef, coef)
        cid = jnp.where(g.nonempty[r], new_id, cid)
    return Scan(jnp.stack(coefs), jnp.stack(ids), coef)


def pick(x, s):
    """x[s] along axis 0 for a traced shard index s."""
    return jax.lax.dynamic_index_in_dim(x, s, 0, keepdims=False)


def check_local_length(name: str, t_local: int, need: int, what: str, n: int) -> None:
    """A halo of `need` tokens must come from the previous shard alone: need ≤ T_l."""
    if need > t_local:
        raise ValueError(
            f"{name}: {what} = {need} is longer than one shard of the sequence (T / {n} = {t_local} tokens); "
            f"use fewer shards on the sequence axis or a longer sequence"
        )
