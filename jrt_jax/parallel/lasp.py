"""Context-parallel causal linear attention and prefix linear attention (PLA), LASP-2 style.

Call these inside `jax.shard_map(..., check_vma=False)` (see `jrt_jax.parallel`) with the sequence axis
(axis 1) of every [B, T, …] input split over the mesh axis `axis_name`. For ungated Based / PLA attention the
state transition is the identity, so the state before shard s is a plain (segmented) sum of the states of the
shards before it (LASP-2, arXiv 2502.07563):

  1. local pass: each shard computes the state totals of its own tokens (`linear_attention_state` /
     `pla_prefill_state`; no outputs, no quadratic part);
  2. ONE `jax.lax.all_gather` of those per-shard summaries — kv [B, H, Φ, D] and z [B, H, Φ] stacked into one
     [B, H, Φ, D+1] array (two for PLA), plus four int32 per row describing the shard's document edges.
     Its size is independent of T. An all-gather rather than a ring of `ppermute`s: one collective whose
     latency does not grow with the number of shards, and its transpose (a reduce-scatter) is one
     collective as well; the n-fold gathered copy is small (n × the state);
  3. exclusive (segmented) prefix combine of the gathered summaries on every shard;
  4. local outputs with the op of `jrt_jax.ops`, seeded with the prefix as its `initial_state`.

With `return_state=True` the state after the row's last token is returned, identical on every shard and
typed invariant over the axis (one `psum` of the state: the gathered copy is typed varying).

Packing (`segment_ids`, 0 = padding; documents as in `jrt_jax.ops.segments`): a document spanning shards
continues, one starting on a shard does not. A shard's summary is the state of its LAST document plus whether
that document began before the shard; the combine is a segmented exclusive scan (`_axis.forward_scan`). The
ops' `initial_state` is read by the row's first document, which is exactly the one that may continue from the
previous shard.

PLA: every position also reads every encoder slot of its document, including slots on LATER shards. Without
packing the encoder is one state summed over all shards (the gathered encoder summaries, summed: shards with
no encoder slot add zeros), so an encoder longer than a shard works. With packing a document's encoder slots
on other shards reach its tokens here through two segmented scans (forward over each shard's last-document
sums, backward over each shard's first-document encoder sums). A document that starts on this shard (not its
first) and whose encoder prefix continues onto later shards needs those later slots too, and the op's
`initial_state` only reaches the first document; that case — only when it occurs on a shard — is computed by
a second local PLA call restricted to that last document (other positions made padding), seeded with the
later slots (`lax.cond`, so shards without such a document do not pay for it). Every case is exact.

Encoder layout here: `k_enc`, `v_enc` are slot-aligned with the sequence — slot j is position j of the row, so
they are [B, T_l, H, ·] local slices of a full-length [B, T, H, ·] array — and `enc_mask` (local [B, T_l])
marks the real slots. An encoder of the first M tokens is `enc_mask = positions < M` (see
`shard_positions`); `context_parallel` builds that from a global [B, M, …] encoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrt_jax import ops
from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.linear_attention import PADDING_MODES, LinearAttentionState
from jrt_jax.ops.segments import document_ids
from jrt_jax.parallel import _axis

_F32 = jnp.float32
_HIGHEST = matmul_precision(jnp.float32)  # the states are fp32


def _pack(st: LinearAttentionState):
    """(kv [B,H,Φ,D], z [B,H,Φ]) → [B,H,Φ,D+1] fp32, so one collective moves both."""
    return jnp.concatenate([st.kv.astype(_F32), st.z.astype(_F32)[..., None]], axis=-1)


def _unpack(x) -> LinearAttentionState:
    return LinearAttentionState(x[..., :-1], x[..., -1])


def _combine(coef, gathered):
    """Σ_r coef[b, r] · gathered[r, b, …]: coef [B, n], gathered [n, B, H, Φ, D+1]."""
    return jnp.einsum("bn,nbhpd->bhpd", coef, gathered, precision=_HIGHEST)


def _zero_keys(mask, padding, *keys):
    """`padding="zero_keys"` as a pre-transform: raw keys zeroed at pads, which then stay tokens (mask dropped).

    This is exactly what the ops do in that mode (their `real` ignores the mask), so the rest runs in the
    default "exclude" mode.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}; got {padding!r}")
    if padding == "exclude" or mask is None:
        return mask, keys
    m = jnp.asarray(mask).astype(bool)[:, :, None, None]
    return None, tuple(None if x is None else jnp.where(m, x, jnp.zeros((), x.dtype)) for x in keys)


def _enc_weights(mask, enc_mask):
    """Which local encoder slots count when there is no packing: enc_mask & mask (None = all)."""
    if mask is None:
        return enc_mask
    mask = jnp.asarray(mask).astype(bool)
    return mask if enc_mask is None else mask & jnp.asarray(enc_mask).astype(bool)


def _check_local(q, k, v, k_enc=None, v_enc=None):
    for name, x in (("q", q), ("k", k), ("v", v), ("k_enc", k_enc), ("v_enc", v_enc)):
        if x is not None and getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must have rank 4 [batch, seq/shard, heads, dim]; got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
    if k_enc is not None and (k_enc.shape[1] != q.shape[1] or v_enc.shape[1] != q.shape[1]):
        raise ValueError(
            f"k_enc/v_enc: inside shard_map the encoder is slot-aligned with the sequence (slot j = position j): "
            f"their local length must equal q's {q.shape[1]}; got {k_enc.shape[1]} and {v_enc.shape[1]}. Pass a "
            "full-length [B, T, H, ·] encoder sharded like q with enc_mask marking the real slots (or use "
            "context_parallel, which pads a [B, M, …] encoder)"
        )


def linear_attention(
    q,
    k,
    v,
    *,
    axis_name,
    segment_ids=None,
    mask=None,
    padding: str = "exclude",
    initial_state: LinearAttentionState | None = None,
    return_state: bool = False,
    eps: float = 1e-12,
    scale_dim: float | None = None,
    implementation="auto",
    chunk_size: int | None = None,
):
    """Causal Based linear attention over a sequence sharded on `axis_name` (call inside `jax.shard_map`).

    Computes exactly `jrt_jax.ops.linear_attention` of the global arrays: y_i = Σ_{j≤i} φ(q_i)·φ(k_j) v_j /
    (Σ_{j≤i} φ(q_i)·φ(k_j) + eps), j in i's document, whatever shard j lies on.

    Collectives: one `all_gather` of each shard's state summary ([B, H, Φ, D+1] fp32, independent of T) and,
    with `segment_ids`, one of 4·B int32 document-edge flags; with `return_state`, one `psum` of the state.
    Backward: the all-gather transposes to one reduce-scatter.

    Args:
      q, k: [B, T_l, H, F] local shards of the raw queries / keys (T_l = T / n); v: [B, T_l, H, D].
      axis_name: the mesh axis the sequence is split over (shard s holds positions s·T_l … (s+1)·T_l − 1).
      segment_ids: optional [B, T_l] int local shard of the packed-document ids (0 = padding). A document
        that runs across a shard boundary (padding between ignored) continues there.
      mask, padding, eps, scale_dim, implementation, chunk_size: as in `jrt_jax.ops.linear_attention`
        (mask is the local [B, T_l] shard).
      initial_state: optional `LinearAttentionState` (kv [B,H,Φ,D], z [B,H,Φ]), the same on every shard:
        read by the row's first document, as if it preceded the row.
      return_state: also return the state after the row's last token (its last document), the same on every
        shard.

    Returns:
      y [B, T_l, H, D] (this shard's outputs), and the global final state when `return_state`.
    """
    n = _axis.axis_size(axis_name)
    _check_local(q, k, v)
    _axis.require_unchecked("linear_attention", q)
    initial_state = LinearAttentionState.coerce(initial_state)
    mask, (k,) = _zero_keys(mask, padding, k)
    kw = dict(scale_dim=scale_dim, implementation=implementation, chunk_size=chunk_size)
    s = _axis.shard_index(axis_name)
    own = _pack(ops.linear_attention_state(k, v, mask=mask, segment_ids=segment_ids, **kw))
    gathered = jax.lax.all_gather(own, axis_name)  # [n, B, H, Φ, D+1]
    b = q.shape[0]
    init = None if initial_state is None else _pack(initial_state)
    if segment_ids is None:
        # One document per row: the prefix is the sum over the shards before this one.
        before = jnp.broadcast_to((jnp.arange(n) < s).astype(_F32), (b, n))
        prefix = _combine(before, gathered)
        if init is not None:
            prefix = prefix + init
        y = ops.linear_attention(q, k, v, mask=mask, initial_state=_unpack(prefix), eps=eps, **kw)
        if not return_state:
            return y
        final = jax.lax.psum(own, axis_name)
        return y, _unpack(final if init is None else final + init)
    edges = _axis.boundary(segment_ids)
    fwd = _axis.forward_scan(_axis.gather_boundary(edges, axis_name))
    coef, cid = _axis.pick(fwd.coef, s), _axis.pick(fwd.ids, s)
    prefix = _combine(coef[:, 1:], gathered)
    if init is not None:
        prefix = prefix + coef[:, 0, None, None, None] * init
    cont = edges.nonempty & (edges.first == cid)  # this shard's first document began before it
    prefix = jnp.where(cont[:, None, None, None], prefix, 0.0)
    y = ops.linear_attention(q, k, v, mask=mask, segment_ids=segment_ids, initial_state=_unpack(prefix), eps=eps,
                             **kw)
    if not return_state:
        return y
    return y, _final_state(fwd.final, own, init, s, axis_name)


def _final_state(final_coef, own, init, s, axis_name):
    """The row's last-document state Σ_r c_r·summary_r (+ c_init·init), typed invariant over the axis: each
    shard contributes its own weighted summary (shard 0 also the initial state's share) to one psum. (The
    coefficients come from an all-gather, typed varying, so they cannot be applied after the psum.)"""
    mine = jax.lax.dynamic_index_in_dim(final_coef, 1 + s, 1, keepdims=False)  # [B]
    part = mine[:, None, None, None] * own
    if init is not None:
        part = part + jnp.where(s == 0, final_coef[:, 0], 0.0)[:, None, None, None] * init
    return _unpack(jax.lax.psum(part, axis_name))


def prefix_linear_attention(
    q,
    k,
    v,
    k_enc,
    v_enc,
    *,
    axis_name,
    enc_mask=None,
    segment_ids=None,
    mask=None,
    padding: str = "exclude",
    initial_state: LinearAttentionState | None = None,
    return_state: bool = False,
    eps: float = 1e-12,
    scale_dim: float | None = None,
    implementation="auto",
    chunk_size: int | None = None,
):
    """Prefix linear attention (JRT-RNN) over a sequence sharded on `axis_name` (inside `jax.shard_map`).

    Computes exactly `jrt_jax.ops.prefix_linear_attention` of the global arrays with the encoder given
    slot-aligned: y_i = φ(q_i)ᵀ[Σ_{j≤i} φ(k_j)v_jᵀ + Σ_{enc slots j} φ(ke_j)ve_jᵀ] / (… + eps), both sums over
    i's document, the encoder one over all its slots on every shard (ahead of i or not).

    Collectives: one `all_gather` of two state summaries per shard ([2, B, H, Φ, D+1] fp32, independent of T;
    causal and encoder), with `segment_ids` one of 4·B int32 edge flags, with `return_state` one `psum`.

    Args:
      q, k, v: local shards [B, T_l, H, F|D] of the causal projections, as in `linear_attention`.
      k_enc, v_enc: [B, T_l, H, F] / [B, T_l, H, D]: the encoder projections, slot-aligned (slot j is
        position j of the row): the local shard of a full-length encoder array. Slots outside the encoder are
        excluded by `enc_mask` (their values are never read).
      enc_mask: optional [B, T_l] bool local shard: True = a real encoder slot (None: every slot, M = T). For
        the first M tokens of each row: `shard_positions(T_l, axis_name)[None] < M`; with packing, each
        document's prefix (as `jrt_jax.nn.linear_attention.encoder_mask` marks it).
      axis_name, segment_ids, mask, padding, initial_state, return_state, eps, scale_dim, implementation,
        chunk_size: as in `linear_attention` (this module).

    Returns:
      y [B, T_l, H, D], and with `return_state` the state after the row's last token with its document's
      encoder terms folded in (as `ops.pla_prefill_state`), the same on every shard.
    """
    n = _axis.axis_size(axis_name)
    if k_enc is None or v_enc is None:
        raise ValueError("prefix_linear_attention needs k_enc and v_enc (use linear_attention without an encoder)")
    _check_local(q, k, v, k_enc, v_enc)
    _axis.require_unchecked("prefix_linear_attention", q)
    initial_state = LinearAttentionState.coerce(initial_state)
    mask, (k, k_enc) = _zero_keys(mask, padding, k, k_enc)
    kw = dict(scale_dim=scale_dim, implementation=implementation, chunk_size=chunk_size)
    s = _axis.shard_index(axis_name)
    b = q.shape[0]
    init = None if initial_state is None else _pack(initial_state)
    if segment_ids is None:
        return _pla_one_document(q, k, v, k_enc, v_enc, enc_mask, mask, init, s, n, b, axis_name, return_state,
                                 eps, kw)

    # Packed documents. Local summaries: the last document's causal + encoder state (forward scan), and the
    # first document's encoder state (backward scan: a document's slots on later shards).
    run, _ = document_ids(segment_ids)
    edges = _axis.boundary(segment_ids)
    last_doc = ops.pla_prefill_state(k, v, k_enc, v_enc, mask=mask, segment_ids=segment_ids, enc_mask=enc_mask,
                                     **kw)
    first_only = jnp.where(run == 0, segment_ids, 0)
    first_enc = ops.linear_attention_state(k_enc, v_enc, mask=_enc_weights(mask, enc_mask), segment_ids=first_only,
                                           **kw)
    own = jnp.stack([_pack(last_doc), _pack(first_enc)])  # [2, B, H, Φ, D+1]
    gathered = jax.lax.all_gather(own, axis_name)  # [n, 2, …]
    g = _axis.gather_boundary(edges, axis_name)
    fwd, bwd = _axis.forward_scan(g), _axis.backward_scan(g)
    f_coef, f_id = _axis.pick(fwd.coef, s), _axis.pick(fwd.ids, s)
    b_coef, b_id = _axis.pick(bwd.coef, s), _axis.pick(bwd.ids, s)

    before = _combine(f_coef[:, 1:], gathered[:, 0])  # causal + encoder of the open document, earlier shards
    if init is not None:
        before = before + f_coef[:, 0, None, None, None] * init
    after = _combine(b_coef, gathered[:, 1])  # encoder slots of the continuing document on later shards
    cont_in = edges.nonempty & (edges.first == f_id)  # the first document began on an earlier shard
    cont_out = edges.nonempty & (edges.last == b_id)  # the last document continues on a later shard
    bc = lambda x: x[:, None, None, None]
    x_first = jnp.where(bc(cont_in), before, 0.0) + jnp.where(bc(edges.single & cont_out), after, 0.0)
    y_last = jnp.where(bc(~edges.single & cont_out), after, 0.0)

    def one_call(_):
        return ops.prefix_linear_attention(q, k, v, k_enc, v_enc, mask=mask, segment_ids=segment_ids,
                                           enc_mask=enc_mask, initial_state=_unpack(x_first), eps=eps, **kw)

    def two_calls(_):
        # The shard's last document (not its first) also reads encoder slots on later shards: run it as the
        # row's first document of a second call, every other position made padding.
        y = one_call(None)
        in_last = run == run[:, -1:]
        y2 = ops.prefix_linear_attention(q, k, v, k_enc, v_enc, mask=mask,
                                         segment_ids=jnp.where(in_last, segment_ids, 0), enc_mask=enc_mask,
                                         initial_state=_unpack(y_last), eps=eps, **kw)
        use = in_last & (~edges.single & cont_out)[:, None]
        return jnp.where(use[:, :, None, None], y2, y)

    # Encoder slots carried in y_last: z's first feature is φ's constant 1, so it counts the slots.
    need = jnp.any(y_last[:, :, 0, -1] > 0.5)
    y = jax.lax.cond(need, two_calls, one_call, None)
    if not return_state:
        return y
    return y, _final_state(fwd.final, own[0], init, s, axis_name)


def _pla_one_document(q, k, v, k_enc, v_enc, enc_mask, mask, init, s, n, b, axis_name, return_state, eps, kw):
    """PLA without packing: prefix = causal states of earlier shards + the encoder state of ALL shards."""
    causal = _pack(ops.linear_attention_state(k, v, mask=mask, **kw))
    encoder = _pack(ops.linear_attention_state(k_enc, v_enc, mask=_enc_weights(mask, enc_mask), **kw))
    gathered = jax.lax.all_gather(jnp.stack([causal, encoder]), axis_name)  # [n, 2, B, H, Φ, D+1]
    before = jnp.broadcast_to((jnp.arange(n) < s).astype(_F32), (b, n))
    prefix = _combine(before, gathered[:, 0]) + _combine(jnp.ones((b, n), _F32), gathered[:, 1])
    if init is not None:
        prefix = prefix + init
    y = ops.linear_attention(q, k, v, mask=mask, initial_state=_unpack(prefix), eps=eps, **kw)
    if not return_state:
        return y
    final = jax.lax.psum(causal + encoder, axis_name)
    return y, _unpack(final if init is None else final + init)
