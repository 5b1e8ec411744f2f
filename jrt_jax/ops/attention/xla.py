"""Blocked causal attention in pure JAX: online softmax over query blocks × key blocks, never T × S.

The queries are T consecutive positions q_offset … q_offset + T − 1 of a key span of S positions (q_offset may
be traced: a shard's offset under context parallelism, a cache's write index). Forward (per query block, a loop
over key blocks): running row max m, running sum l and accumulator acc, rescaled by exp(m_old − m_new) as new
key blocks arrive. Key blocks past a query block's last position are never visited, nor (with packing) blocks
that end before the document of the query block's first row begins; run ids are non-decreasing along a row,
so both bounds are plain block indices, computed at run time (they move with a traced offset).

Backward is a `jax.custom_vjp` (FlashAttention-2 style): the forward saves only the output and the row
log-sum-exp, and the backward recomputes each block's probabilities P = exp(S − lse), so memory stays
O((T + S) · D + block_q · block_k) for training as well. First-order reverse mode only (`jax.grad`,
`jax.vjp`); `jax.jvp` through this path is not supported.

The loop carries start from zeros given the manual-axis variance of the inputs, so this traces inside
`jax.shard_map` with or without `check_vma`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jrt_jax.ops._checks import matmul_precision

_F32 = jnp.float32
_NEG = -1e30


def _allowed(pq, rq, mq, pk, rk, mk):
    """[B, 1, 1, bq, bk]: key position ≤ query position, same document, both real."""
    ok = (pk[None, :] <= pq[:, None])[None] & (rq[:, :, None] == rk[:, None, :]) & mq[:, :, None] & mk[:, None, :]
    return ok[:, None, None]


def _varying(*refs):
    """A function giving fresh arrays the manual-axis variance of `refs`: inside `shard_map` a loop carry's
    initial value must have the type of its updates. Adds a zero scalar that varies like all of them
    (`lax.full_like` keeps a reference's variance; a no-op outside `shard_map`)."""
    anchor = sum(lax.full_like(r, 0, dtype=_F32, shape=()) for r in jax.tree.leaves(refs))
    return lambda tree: jax.tree.map(lambda x: x + anchor.astype(x.dtype), tree)


def _slice(x, start, size, axis):
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _forward(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec):
    b, kvh, g, tq, _ = qh.shape
    dv = vh.shape[-1]
    vary = _varying(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k)

    def q_block(i, carry):
        out, lse = carry
        q0 = i * bq
        q_i = _slice(qh, q0, bq, 3)
        pq, rq, mq = _slice(pos_q, q0, bq, 0), _slice(run_q, q0, bq, 1), _slice(real_q, q0, bq, 1)

        def k_block(j, c):
            m, l, acc = c
            k0 = j * bk
            k_j, v_j = _slice(kh, k0, bk, 2), _slice(vh, k0, bk, 2)
            ok = _allowed(pq, rq, mq, k0 + jnp.arange(bk), _slice(run_k, k0, bk, 1), _slice(real_k, k0, bk, 1))
            s = jnp.where(ok, jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, precision=prec), _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            return (m_new, l * corr + jnp.sum(p, axis=-1),
                    acc * corr[..., None] + jnp.einsum("bhgqk,bhkd->bhgqd", p, v_j, precision=prec))

        init = vary((jnp.full((b, kvh, g, bq), _NEG, _F32), jnp.zeros((b, kvh, g, bq), _F32),
                     jnp.zeros((b, kvh, g, bq, dv), _F32)))
        m, l, acc = lax.fori_loop(j_lo[i], j_hi[i] + 1, k_block, init)
        has = l > 0
        safe_l = jnp.where(has, l, 1.0)
        out = lax.dynamic_update_slice_in_dim(out, acc / safe_l[..., None], q0, axis=3)
        lse = lax.dynamic_update_slice_in_dim(lse, jnp.where(has, m + jnp.log(safe_l), 0.0), q0, axis=3)
        return out, lse

    init = vary((jnp.zeros((b, kvh, g, tq, dv), _F32), jnp.zeros((b, kvh, g, tq), _F32)))
    return lax.fori_loop(0, tq // bq, q_block, init)


def _backward(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse, dout, bq, bk, prec):
    delta = jnp.sum(dout * out, axis=-1)  # [B, KVH, G, Tq]
    vary = _varying(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, dout)
    zeros = lambda shape: vary(jnp.zeros(shape, _F32))

    def k_block(j, carry):
        dq, dk, dv = carry
        k0 = j * bk
        k_j, v_j = _slice(kh, k0, bk, 2), _slice(vh, k0, bk, 2)
        pk, rk, mk = k0 + jnp.arange(bk), _slice(run_k, k0, bk, 1), _slice(real_k, k0, bk, 1)

        def q_block(i, c):
            dq, dk_j, dv_j = c
            q0 = i * bq
            q_i, do_i = _slice(qh, q0, bq, 3), _slice(dout, q0, bq, 3)
            lse_i, delta_i = _slice(lse, q0, bq, 3), _slice(delta, q0, bq, 3)
            ok = _allowed(_slice(pos_q, q0, bq, 0), _slice(run_q, q0, bq, 1), _slice(real_q, q0, bq, 1), pk, rk, mk)
            s = jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, precision=prec)
            p = jnp.where(ok, jnp.exp(jnp.minimum(s - lse_i[..., None], 0.0)), 0.0)
            dv_j = dv_j + jnp.einsum("bhgqk,bhgqd->bhkd", p, do_i, precision=prec)
            ds = p * (jnp.einsum("bhgqd,bhkd->bhgqk", do_i, v_j, precision=prec) - delta_i[..., None])
            dq_i = jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_j, precision=prec)
            dq = lax.dynamic_update_slice_in_dim(dq, _slice(dq, q0, bq, 3) + dq_i, q0, axis=3)
            dk_j = dk_j + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_i, precision=prec)
            return dq, dk_j, dv_j

        dq, dk_j, dv_j = lax.fori_loop(i_lo[j], i_hi[j] + 1, q_block, (dq, zeros(k_j.shape), zeros(v_j.shape)))
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j, k0, axis=2)
        dv = lax.dynamic_update_slice_in_dim(dv, dv_j, k0, axis=2)
        return dq, dk, dv

    return lax.fori_loop(0, kh.shape[2] // bk, k_block, (zeros(qh.shape), zeros(kh.shape), zeros(vh.shape)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(12, 13, 14))
def _flash(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec):
    return _forward(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec)[0]


def _flash_fwd(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec):
    out, lse = _forward(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec)
    return out, (qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse)


def _flash_bwd(bq, bk, prec, res, dout):
    qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse = res
    dq, dk, dv = _backward(qh, kh, vh, pos_q, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse, dout, bq, bk,
                           prec)
    return (dq, dk, dv) + (None,) * 9


_flash.defvjp(_flash_fwd, _flash_bwd)


def blocked_causal_attention(q, k, v, *, scale, q_offset=0, run=None, real=None, packed=True, block_q=128,
                             block_k=128):
    """Blocked online-softmax causal attention; same contract as `reference_causal_attention`.

    q [B, T, H, Dk] at span positions q_offset … q_offset + T − 1; k [B, S, KVH, Dk], v [B, S, KVH, Dv] at
    0 … S − 1 (GQA: KVH divides H); q_offset an int or int32 scalar (may be traced) with 0 ≤ q_offset ≤ S − T.
    run [B, S] int32 document numbers (non-decreasing, as `segments.document_ids` gives) and real [B, S] bool
    over the span, both or neither; the queries' are their slice at q_offset. Excluded tokens must already be
    selected to 0 by the caller. `packed=False` promises one document per row (run all 0), which skips the
    document-bound scans. block_q / block_k: query and key block lengths (clipped to T / S). Memory
    O(B·(T + S)·H·D + B·H·block_q·block_k) for the forward and for the gradient, never T × S.
    Returns fp32 [B, T, H, Dv].
    """
    b, t, h, d = q.shape
    s, kvh, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // kvh
    bq, bk = min(block_q, t), min(block_k, s)
    nq, nk = -(-t // bq), -(-s // bk)
    tqp, tkp = nq * bq, nk * bk
    prec = matmul_precision(q, k, v)
    if real is None:
        run, real, packed = jnp.zeros((b, s), jnp.int32), jnp.ones((b, s), bool), False
    q_offset = jnp.asarray(q_offset, jnp.int32)
    run_q = _slice(run, q_offset, t, 1)
    real_q = _slice(real, q_offset, t, 1)

    qh = (q.astype(_F32) * scale).reshape(b, t, kvh, g, d).transpose(0, 2, 3, 1, 4)  # [B, KVH, G, T, Dk]
    qh = jnp.pad(qh, [(0, 0)] * 3 + [(0, tqp - t), (0, 0)])
    kh = jnp.pad(k.astype(_F32).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, tkp - s), (0, 0)])  # [B, KVH, S, Dk]
    vh = jnp.pad(v.astype(_F32).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, tkp - s), (0, 0)])
    pos_q = q_offset + jnp.arange(tqp, dtype=jnp.int32)
    run_qp = jnp.pad(run_q, [(0, 0), (0, tqp - t)], mode="edge")
    real_qp = jnp.pad(real_q, [(0, 0), (0, tqp - t)])
    run_kp = jnp.pad(run, [(0, 0), (0, tkp - s)], mode="edge")
    real_kp = jnp.pad(real, [(0, 0), (0, tkp - s)])

    # Block bounds (run ids are non-decreasing): query block i needs key blocks from the start of its first
    # row's document to its last row; key block j feeds query blocks from the one holding span position j·bk
    # to the one holding the end of its last key's document. One document per row: from key block 0, to the
    # last query block (no scans over constant run ids).
    q_first = q_offset + jnp.arange(nq, dtype=jnp.int32) * bq
    j_hi = jnp.minimum(q_first + bq - 1, q_offset + t - 1) // bk
    k_first = jnp.arange(nk, dtype=jnp.int32) * bk
    i_lo = jnp.maximum(k_first - q_offset, 0) // bq
    if packed:
        pos = jnp.arange(s, dtype=jnp.int32)
        new = jnp.concatenate([jnp.ones((b, 1), bool), run[:, 1:] != run[:, :-1]], axis=1)
        end = jnp.concatenate([run[:, 1:] != run[:, :-1], jnp.ones((b, 1), bool)], axis=1)
        doc_start = lax.cummax(jnp.where(new, pos, 0), axis=1)
        doc_end = lax.cummin(jnp.where(end, pos, s - 1), axis=1, reverse=True)
        j_lo = jnp.min(jnp.take(doc_start, q_first, axis=1), axis=0) // bk
        reach = jnp.max(jnp.take(doc_end, jnp.minimum(k_first + bk - 1, s - 1), axis=1), axis=0) - q_offset
    else:
        j_lo = jnp.zeros((nq,), jnp.int32)
        reach = jnp.full((nk,), s - 1, jnp.int32) - q_offset
    i_hi = jnp.where(reach < 0, -1, jnp.minimum(reach // bq, nq - 1))  # the last query block key block j feeds

    out = _flash(qh, kh, vh, pos_q, run_qp, real_qp, run_kp, real_kp, j_lo, j_hi, i_lo, i_hi, bq, bk, prec)
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4).reshape(b, t, h, dv)
