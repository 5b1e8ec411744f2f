"""Context-parallel causal softmax attention (the Llama / PI baseline): all-gather K/V, attend locally.

Why an all-gather of K/V and not ring attention: it is one collective (MaxText's choice for context
parallelism), the local computation is an ordinary blocked attention with a position offset, and the backward
is one reduce-scatter of dK/dV. Ring attention overlaps n − 1 `ppermute` steps with compute and never holds
the whole K/V, which matters when attention dominates; in JRT models the linear-attention, sliding-window and
conv layers dominate and the softmax-attention layers are the baseline (Llama) being compared against, so
simplicity wins. The price is that each device holds the full K/V ([B, T, KVH, D], KVH ≤ H, so with GQA much
less than the activations) — the per-device activation memory of this op does not fall as 1/n for that part.

The local attention is written here (`_offset_flash`) because `jrt_jax.ops.causal_attention` requires queries
and keys of the same length starting at the same position: with a `q_offset=` argument (query i at global
position q_offset + i, keys at 0 … T_k − 1) it could serve this directly. The implementation below follows the
same FlashAttention-2 scheme as the op's "xla" path: query blocks × key blocks with an online softmax, key
blocks past a query block's last position (or before its first document) skipped, a custom VJP that saves only
the output and the row log-sum-exp and recomputes probabilities in the backward, so memory is
O(T_l·H·D + T·KVH·D) for the gradient too, never T_l × T.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jrt_jax.ops._checks import check_dim, check_float_array, check_positive_int, matmul_precision
from jrt_jax.ops.segments import document_ids
from jrt_jax.parallel import _axis

_F32 = jnp.float32
_NEG = -1e30


def _ok(pq, rq, mq, pk, rk, mk):
    """[B, 1, 1, bq, bk]: key position ≤ query position, same document, both real."""
    ok = (pk[None, :] <= pq[:, None])[None] & (rq[:, :, None] == rk[:, None, :]) & mq[:, :, None] & mk[:, None, :]
    return ok[:, None, None]


def _varying(*refs):
    """A function giving fresh arrays the manual-axis variance of `refs` (inside `shard_map` a loop carry's
    initial value must have the type of its updates): adds a zero scalar that varies like all of them
    (`lax.full_like` keeps a reference's variance; version-independent, no introspection of types)."""
    anchor = sum(lax.full_like(r, 0, dtype=_F32, shape=()) for r in jax.tree.leaves(refs))
    return lambda tree: jax.tree.map(lambda x: x + anchor.astype(x.dtype), tree)


def _sl(x, start, size, axis):
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _fwd_loops(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec):
    b, kvh, g, tq, _ = qh.shape
    dv = vh.shape[-1]
    vary = _varying(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k)

    def q_block(i, carry):
        out, lse = carry
        q0 = i * bq
        q_i = _sl(qh, q0, bq, 3)
        pq, rq, mq = _sl(pos_q, q0, bq, 0), _sl(run_q, q0, bq, 1), _sl(real_q, q0, bq, 1)

        def k_block(j, c):
            m, l, acc = c
            k0 = j * bk
            k_j, v_j = _sl(kh, k0, bk, 2), _sl(vh, k0, bk, 2)
            ok = _ok(pq, rq, mq, k0 + jnp.arange(bk), _sl(run_k, k0, bk, 1), _sl(real_k, k0, bk, 1))
            sc = jnp.where(ok, jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, precision=prec), _NEG)
            m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
            p = jnp.where(ok, jnp.exp(sc - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            return (m_new, l * corr + jnp.sum(p, axis=-1),
                    acc * corr[..., None] + jnp.einsum("bhgqk,bhkd->bhgqd", p, v_j, precision=prec))

        init = vary((jnp.full((b, kvh, g, bq), _NEG, _F32), jnp.zeros((b, kvh, g, bq), _F32),
                     jnp.zeros((b, kvh, g, bq, dv), _F32)))
        m, l, acc = lax.fori_loop(j_lo[i], j_hi[i] + 1, k_block, init)
        has = l > 0
        safe = jnp.where(has, l, 1.0)
        out = lax.dynamic_update_slice_in_dim(out, acc / safe[..., None], q0, axis=3)
        lse = lax.dynamic_update_slice_in_dim(lse, jnp.where(has, m + jnp.log(safe), 0.0), q0, axis=3)
        return out, lse

    init = vary((jnp.zeros((b, kvh, g, tq, dv), _F32), jnp.zeros((b, kvh, g, tq), _F32)))
    return lax.fori_loop(0, tq // bq, q_block, init)


def _bwd_loops(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse, dout, bq, bk, prec):
    delta = jnp.sum(dout * out, axis=-1)
    vary = _varying(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, dout)
    zeros = lambda shape: vary(jnp.zeros(shape, _F32))

    def k_block(j, carry):
        dq, dk, dv = carry
        k0 = j * bk
        k_j, v_j = _sl(kh, k0, bk, 2), _sl(vh, k0, bk, 2)
        pk, rk, mk = k0 + jnp.arange(bk), _sl(run_k, k0, bk, 1), _sl(real_k, k0, bk, 1)

        def q_block(i, c):
            dq, dk_j, dv_j = c
            q0 = i * bq
            q_i, do_i = _sl(qh, q0, bq, 3), _sl(dout, q0, bq, 3)
            lse_i, delta_i = _sl(lse, q0, bq, 3), _sl(delta, q0, bq, 3)
            ok = _ok(_sl(pos_q, q0, bq, 0), _sl(run_q, q0, bq, 1), _sl(real_q, q0, bq, 1), pk, rk, mk)
            sc = jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, precision=prec)
            p = jnp.where(ok, jnp.exp(jnp.minimum(sc - lse_i[..., None], 0.0)), 0.0)
            dv_j = dv_j + jnp.einsum("bhgqk,bhgqd->bhkd", p, do_i, precision=prec)
            ds = p * (jnp.einsum("bhgqd,bhkd->bhgqk", do_i, v_j, precision=prec) - delta_i[..., None])
            dq = lax.dynamic_update_slice_in_dim(
                dq, _sl(dq, q0, bq, 3) + jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_j, precision=prec), q0, axis=3)
            dk_j = dk_j + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_i, precision=prec)
            return dq, dk_j, dv_j

        dq, dk_j, dv_j = lax.fori_loop(i_lo[j], i_hi[j] + 1, q_block, (dq, zeros(k_j.shape), zeros(v_j.shape)))
        return dq, lax.dynamic_update_slice_in_dim(dk, dk_j, k0, axis=2), lax.dynamic_update_slice_in_dim(
            dv, dv_j, k0, axis=2)

    return lax.fori_loop(0, kh.shape[2] // bk, k_block, (zeros(qh.shape), zeros(kh.shape), zeros(vh.shape)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(12, 13, 14))
def _offset_flash(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec):
    return _fwd_loops(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec)[0]


def _offset_flash_fwd(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec):
    out, lse = _fwd_loops(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec)
    return out, (qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse)


def _offset_flash_bwd(bq, bk, prec, res, dout):
    qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse = res
    dq, dk, dv = _bwd_loops(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse, dout, bq, bk,
                            prec)
    return (dq, dk, dv) + (None,) * 9


_offset_flash.defvjp(_offset_flash_fwd, _offset_flash_bwd)


def offset_causal_attention(q, k, v, q_offset, *, scale, run, real, block_q=128, block_k=128, packed=True):
    """Blocked causal attention of local queries against longer keys: query i sits at position q_offset + i.

    q [B, Tq, H, Dk]; k [B, Tk, KVH, Dk], v [B, Tk, KVH, Dv] (keys at positions 0 … Tk − 1; GQA: KVH
    divides H); q_offset: int32 scalar (may be traced), with q_offset + Tq ≤ Tk; run [B, Tk] int32
    non-decreasing document numbers and real [B, Tk] bool over the KEY positions (the queries' are their slice
    at q_offset). Excluded tokens must already be zeroed (selected) by the caller. `packed=False` promises one
    document per row (run all 0), which skips the document-bound scans. Returns fp32 [B, Tq, H, Dv].
    """
    b, tq, h, d = q.shape
    tk, kvh, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // kvh
    bq, bk = min(block_q, tq), min(block_k, tk)
    nq, nk = -(-tq // bq), -(-tk // bk)
    tqp, tkp = nq * bq, nk * bk
    prec = matmul_precision(q, k, v)
    q_offset = jnp.asarray(q_offset, jnp.int32)
    run_q = lax.dynamic_slice_in_dim(run, q_offset, tq, axis=1)
    real_q = lax.dynamic_slice_in_dim(real, q_offset, tq, axis=1)

    qh = (q.astype(_F32) * scale).reshape(b, tq, kvh, g, d).transpose(0, 2, 3, 1, 4)
    qh = jnp.pad(qh, [(0, 0)] * 3 + [(0, tqp - tq), (0, 0)])
    kh = jnp.pad(k.astype(_F32).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, tkp - tk), (0, 0)])
    vh = jnp.pad(v.astype(_F32).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, tkp - tk), (0, 0)])
    pos_q = q_offset + jnp.arange(tqp, dtype=jnp.int32)
    run_qp = jnp.pad(run_q, [(0, 0), (0, tqp - tq)], mode="edge")
    real_qp = jnp.pad(real_q, [(0, 0), (0, tqp - tq)])
    run_kp = jnp.pad(run, [(0, 0), (0, tkp - tk)], mode="edge")
    real_kp = jnp.pad(real, [(0, 0), (0, tkp - tk)])

    # Block bounds (run ids are non-decreasing): query block i needs key blocks from the start of its first
    # row's document to its last row; key block j feeds query blocks from the one holding position j·bk to the
    # one holding the end of its last key's document. One document per row (`packed=False`): from key block
    # 0, to the last query block (no scans over constant run ids for XLA to fold at compile time).
    q_first = q_offset + jnp.arange(nq, dtype=jnp.int32) * bq
    q_last = jnp.minimum(q_first + bq - 1, q_offset + tq - 1)
    j_hi = q_last // bk
    k_first = jnp.arange(nk, dtype=jnp.int32) * bk
    k_last = jnp.minimum(k_first + bk - 1, tk - 1)
    i_lo = jnp.maximum(k_first - q_offset, 0) // bq
    if packed:
        pos = jnp.arange(tk, dtype=jnp.int32)
        new = jnp.concatenate([jnp.ones((b, 1), bool), run[:, 1:] != run[:, :-1]], axis=1)
        end = jnp.concatenate([run[:, 1:] != run[:, :-1], jnp.ones((b, 1), bool)], axis=1)
        doc_start = lax.cummax(jnp.where(new, pos, 0), axis=1)
        doc_end = lax.cummin(jnp.where(end, pos, tk - 1), axis=1, reverse=True)
        j_lo = jnp.min(jnp.take(doc_start, q_first, axis=1), axis=0) // bk
        reach = jnp.max(jnp.take(doc_end, k_last, axis=1), axis=0) - q_offset  # last local query that may read
    else:
        j_lo = jnp.zeros((nq,), jnp.int32)
        reach = jnp.full((nk,), tk - 1, jnp.int32) - q_offset
    i_hi = jnp.where(reach < 0, -1, jnp.minimum(reach // bq, nq - 1))

    out = _offset_flash(qh, kh, vh, pos_q, run_qp, real_qp, run_kp, real_kp, j_lo, j_hi, i_lo, i_hi, bq, bk, prec)
    return out[:, :, :, :tq].transpose(0, 3, 1, 2, 4).reshape(b, tq, h, dv)


def causal_attention(
    q,
    k,
    v,
    *,
    axis_name,
    segment_ids=None,
    mask=None,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
):
    """Causal (grouped-query) softmax attention over a sequence sharded on `axis_name` (inside `jax.shard_map`).

    Computes `jrt_jax.ops.causal_attention` of the global arrays: y_i = Σ_{j≤i} softmax_j(q_i·k_j·scale) v_j
    over i's document (packing and padding as there), for this shard's queries.

    Collectives: one tiled `all_gather` each of K and V over the sequence axis (and of the segment ids / mask),
    [B, T, KVH, D] per device — it grows with T, unlike the linear-attention ops; the backward reduce-scatters
    dK and dV. See the module docstring for why this and not ring attention.

    Args:
      q: [B, T_l, H, Dk] local shard; k: [B, T_l, KVH, Dk]; v: [B, T_l, KVH, Dv] (KVH divides H).
      axis_name: the sequence mesh axis.
      segment_ids, mask: optional [B, T_l] local shards.
      scale: softmax scale (default 1/√Dk).
      block_q, block_k: query / key block lengths of the blocked loop (clipped to T_l / T).

    Returns:
      [B, T_l, H, Dv] in the inputs' result dtype (fp32 math), 0 at padded positions.
    """
    n = _axis.axis_size(axis_name)
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, d = q.shape
    kvh = k.shape[2]
    for name, x in (("k", k), ("v", v)):
        check_dim(name, x.shape[0], b, "batch size (axis 0, as q)")
        check_dim(name, x.shape[1], t, "local sequence length (axis 1, as q)")
    check_dim("v", v.shape[2], kvh, "number of key/value heads (axis 2, as k)")
    check_dim("k", k.shape[3], d, "head size (axis 3, as q)")
    if kvh == 0 or h % kvh:
        raise ValueError(f"k: number of key/value heads (axis 2) must divide the query heads {h}; got {kvh}")
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    scale = 1.0 / d**0.5 if scale is None else float(scale)
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    s = _axis.shard_index(axis_name)
    gather = lambda x: jax.lax.all_gather(x, axis_name, axis=1, tiled=True)
    if segment_ids is None and mask is None:
        run = jnp.zeros((b, n * t), jnp.int32)
        real = jnp.ones((b, n * t), bool)
        real_local = None
    else:
        if segment_ids is None:
            ids = jnp.asarray(mask).astype(jnp.int32)
        else:
            ids = jnp.asarray(segment_ids).astype(jnp.int32)
            if mask is not None:
                ids = jnp.where(jnp.asarray(mask).astype(bool), ids, 0)
        real_local = ids != 0
        sel = lambda x: jnp.where(real_local[:, :, None, None], x, jnp.zeros((), x.dtype))
        q, k, v = sel(q), sel(k), sel(v)
        run, real = document_ids(gather(ids))
    y = offset_causal_attention(q, gather(k), gather(v), s * t, scale=scale, run=run, real=real, block_q=block_q,
                                block_k=block_k, packed=segment_ids is not None)
    if real_local is not None:
        y = jnp.where(real_local[:, :, None, None], y, 0.0)
    return y.astype(out_dtype)
