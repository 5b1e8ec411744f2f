"""Context-parallel sliding-window attention and causal conv (BaseConv): halo exchange with the previous shard.

Both ops look a fixed distance back, so a shard needs only the last few tokens of the shard before it: one
`jax.lax.ppermute` from shard s−1 to shard s (a neighbour exchange, the cheapest collective there is; shard 0
receives zeros, marked as padding). Its size is fixed by the window / kernel, independent of T and of the
number of shards. The halo must fit in one shard (window ≤ T_l, kernel − 1 ≤ T_l), otherwise a ValueError.

Document boundaries are exact: the halo carries its segment ids (and mask), and "same document" is decided on
the contiguous span [halo | shard], which contains every position between a query and any key it may read —
so a document that runs across the boundary (padding between ignored) continues, one starting on the shard
does not.
"""

from __future__ import annotations

import jax.numpy as jnp

from jrt_jax import ops
from jrt_jax.ops.segments import document_ids
from jrt_jax.parallel import _axis


def _effective_ids(segment_ids, mask):
    """Segment ids with the mask folded in, as `ops.segments.resolve_segments` does (None: neither given)."""
    if segment_ids is None and mask is None:
        return None
    if segment_ids is None:
        return jnp.asarray(mask).astype(jnp.int32)
    seg = jnp.asarray(segment_ids).astype(jnp.int32)
    return seg if mask is None else jnp.where(jnp.asarray(mask).astype(bool), seg, 0)


def sliding_window_attention(
    q,
    k,
    v,
    *,
    window: int,
    axis_name,
    segment_ids=None,
    mask=None,
    scale: float | None = None,
    implementation="auto",
    block_size: int | None = None,
):
    """Sliding-window softmax attention over a sequence sharded on `axis_name` (call inside `jax.shard_map`).

    Computes exactly `jrt_jax.ops.sliding_window_attention` of the global arrays: query i sees keys
    i − window … i of its own document, on this shard or the previous one.

    Collective: one `ppermute` of the previous shard's last `window` keys, values and segment ids (mask)
    — a halo of window × (Dk + Dv) per head, independent of T. The local op then runs once with the key span
    [halo | shard] and this shard's queries at offset `window` (no query rows for the halo).

    Args:
      q, k: [B, T_l, H, Dk] local shards; v: [B, T_l, H, Dv].
      window: keys back a query sees besides its own; must be ≤ T_l (the halo comes from one neighbour).
      axis_name: the mesh axis the sequence is split over.
      segment_ids, mask: optional [B, T_l] local shards (as in `ops.sliding_window_attention`).
      scale, implementation, block_size: as in `ops.sliding_window_attention`.

    Returns:
      [B, T_l, H, Dv], this shard's outputs.

    Raises:
      ValueError: window longer than a shard, or `axis_name` not bound.
    """
    n = _axis.axis_size(axis_name)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int; got {window!r}")
    b, t = q.shape[:2]
    _axis.check_local_length("sliding_window_attention", t, window, "window", n)
    kw = dict(window=window, scale=scale, implementation=implementation, block_size=block_size)
    if window == 0:
        return ops.sliding_window_attention(q, k, v, segment_ids=segment_ids, mask=mask, **kw)
    s = _axis.shard_index(axis_name)
    ids = _effective_ids(segment_ids, mask)
    if ids is None:
        ids = jnp.ones((b, t), jnp.int32)
    tail = lambda x: x[:, t - window:]
    hk, hv, hid = _axis.from_previous((tail(k), tail(v), tail(ids)), axis_name, n)
    hid = jnp.where(s > 0, hid, 0)  # nothing precedes shard 0: padding
    ext = lambda h, x: jnp.concatenate([h, x], axis=1)
    return ops.sliding_window_attention(q, ext(hk, k), ext(hv, v), segment_ids=ext(hid, ids), q_offset=window, **kw)


def causal_conv1d(
    x,
    kernel,
    *,
    axis_name,
    segment_ids=None,
    mask=None,
    initial_tail=None,
    return_tail: bool = False,
    implementation="auto",
):
    """Depthwise causal conv (BaseConv) over a sequence sharded on `axis_name` (call inside `jax.shard_map`).

    Computes exactly `jrt_jax.ops.causal_conv1d` of the global arrays: y[t] = Σ_k kernel[k]·x[t − (K−1) + k],
    taps never crossing a document boundary nor reading a pad.

    Collective: one `ppermute` of the previous shard's last K − 1 inputs and ids (independent of T). Their
    taps are added to this shard's first K − 1 outputs (where tap and output are real and in one document);
    the local op runs without a tail. With `return_tail`, one `psum` brings the last shard's tail to every
    shard.

    Args:
      x: [B, T_l, C] local shard; kernel: [K, C] (replicated); K − 1 must be ≤ T_l.
      axis_name: the mesh axis the sequence is split over.
      segment_ids, mask: optional [B, T_l] local shards.
      initial_tail: optional [B, K−1, C], the inputs before the row (read by shard 0's first document only).
      return_tail: also return the row's tail after its last token (as `ops.causal_conv1d`), on every shard.
      implementation: as in `ops.causal_conv1d`.

    Returns:
      y [B, T_l, C], and with `return_tail` the global tail [B, K−1, C].
    """
    n = _axis.axis_size(axis_name)
    if getattr(x, "ndim", None) != 3 or getattr(kernel, "ndim", None) != 2:
        raise ValueError(f"x must be [B, T_l, C] and kernel [K, C]; got shapes {tuple(getattr(x, 'shape', ()))} "
                         f"and {tuple(getattr(kernel, 'shape', ()))}")
    b, t, c = x.shape
    halo = kernel.shape[0] - 1
    _axis.check_local_length("causal_conv1d", t, halo, "kernel size − 1", n)
    kw = dict(segment_ids=segment_ids, mask=mask, implementation=implementation)
    s = _axis.shard_index(axis_name)
    if halo == 0:
        y = ops.causal_conv1d(x, kernel, initial_tail=initial_tail, return_tail=return_tail, **kw)
        if not return_tail:
            return y
        return y[0], _axis.from_last(y[1], axis_name, n, s)
    ids = _effective_ids(segment_ids, mask)
    tail = lambda a: a[:, t - halo:]
    # Taps reading the previous shard: local position p < K−1 reads halo entry j = p + k (tap k) for j < K−1.
    # allowed[b, j, p]: both real and in one document (decided on the contiguous span [halo | shard]).
    if ids is None:
        prev = _axis.from_previous(tail(x), axis_name, n)
        allowed = jnp.broadcast_to(jnp.asarray(True), (b, halo, halo))
    else:
        prev, prev_ids = _axis.from_previous((tail(x), tail(ids)), axis_name, n)
        run_e, real_e = document_ids(jnp.concatenate([jnp.where(s > 0, prev_ids, 0), ids[:, :halo]], axis=1))
        allowed = ((run_e[:, :halo, None] == run_e[:, None, halo:]) & real_e[:, :halo, None]
                   & real_e[:, None, halo:])
    # The halo's contribution is added to the first K−1 outputs rather than passed as the op's `initial_tail`:
    # the same sum, but the op's backward then stays what it is on one device (with a tail it keeps K padded
    # copies of the cotangent alive: twice the temporaries of the step).
    w = kernel.astype(jnp.float32)
    prev32 = prev.astype(jnp.float32)
    corr = []
    for p in range(halo):
        terms = [w[j - p] * jnp.where(allowed[:, j, p, None], prev32[:, j], 0.0) for j in range(p, halo)]
        corr.append(sum(terms[1:], terms[0]))
    corr = jnp.where(s > 0, jnp.stack(corr, axis=1), 0.0)  # [B, K−1, C]; shard 0 has no halo
    if initial_tail is not None:  # read by shard 0 only, with the op's own semantics
        initial_tail = jnp.where(s > 0, jnp.zeros((), initial_tail.dtype), initial_tail)
    out = ops.causal_conv1d(x, kernel, initial_tail=initial_tail, return_tail=return_tail, **kw)
    y, last_tail = out if return_tail else (out, None)
    y = y.at[:, :halo].add(corr.astype(y.dtype))
    if not return_tail:
        return y
    return y, _axis.from_last(last_tail, axis_name, n, s)
