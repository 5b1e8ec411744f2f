"""Blocked causal attention in pure JAX: online softmax over query blocks × key blocks, never T × T.

Forward (per query block, a loop over key blocks): running row max m, running sum l and accumulator acc,
rescaled by exp(m_old - m_new) as new key blocks arrive. Key blocks entirely above the diagonal are never
visited, nor (with packing) blocks that end before the first document of the query block begins; run ids are
non-decreasing along a row, so both bounds are plain block indices.

Backward is a `jax.custom_vjp` (FlashAttention-2 style): the forward saves only the output and the row
log-sum-exp, and the backward recomputes each block's probabilities P = exp(S - lse), so memory stays
O(T · block) for training as well. First-order reverse mode only (`jax.grad`, `jax.vjp`); `jax.jvp` through
this path is not supported.
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
    """[B, 1, 1, bq, bk]: causal, same document, both real."""
    ok = (pk[None, :] <= pq[:, None])[None] & (rq[:, :, None] == rk[:, None, :]) & mq[:, :, None] & mk[:, None, :]
    return ok[:, None, None]


def _slice(x, start, size, axis):
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _forward(qh, kh, vh, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec):
    b, kvh, g, tq, _ = qh.shape
    dv = vh.shape[-1]

    def q_block(i, carry):
        out, lse = carry
        q0 = i * bq
        q_i = _slice(qh, q0, bq, 3)
        rq, mq = _slice(run_q, q0, bq, 1), _slice(real_q, q0, bq, 1)
        pq = q0 + jnp.arange(bq)

        def k_block(j, c):
            m, l, acc = c
            k0 = j * bk
            k_j, v_j = _slice(kh, k0, bk, 2), _slice(vh, k0, bk, 2)
            ok = _allowed(pq, rq, mq, k0 + jnp.arange(bk), _slice(run_k, k0, bk, 1), _slice(real_k, k0, bk, 1))
            s = jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, precision=prec)
            s = jnp.where(ok, s, _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            l = l * corr + jnp.sum(p, axis=-1)
            acc = acc * corr[..., None] + jnp.einsum("bhgqk,bhkd->bhgqd", p, v_j, precision=prec)
            return m_new, l, acc

        init = (jnp.full((b, kvh, g, bq), _NEG, _F32), jnp.zeros((b, kvh, g, bq), _F32),
                jnp.zeros((b, kvh, g, bq, dv), _F32))
        m, l, acc = lax.fori_loop(j_lo[i], j_hi[i] + 1, k_block, init)
        has = l > 0
        safe_l = jnp.where(has, l, 1.0)
        out = lax.dynamic_update_slice_in_dim(out, acc / safe_l[..., None], q0, axis=3)
        lse = lax.dynamic_update_slice_in_dim(lse, jnp.where(has, m + jnp.log(safe_l), 0.0), q0, axis=3)
        return out, lse

    init = (jnp.zeros((b, kvh, g, tq, dv), _F32), jnp.zeros((b, kvh, g, tq), _F32))
    return lax.fori_loop(0, tq // bq, q_block, init)


def _backward(qh, kh, vh, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse, dout, bq, bk, prec):
    delta = jnp.sum(dout * out, axis=-1)  # [B, KVH, G, Tq]

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
            ok = _allowed(q0 + jnp.arange(bq), _slice(run_q, q0, bq, 1), _slice(real_q, q0, bq, 1), pk, rk, mk)
            s = jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, precision=prec)
            p = jnp.where(ok, jnp.exp(jnp.minimum(s - lse_i[..., None], 0.0)), 0.0)
            dv_j = dv_j + jnp.einsum("bhgqk,bhgqd->bhkd", p, do_i, precision=prec)
            dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_i, v_j, precision=prec)
            ds = p * (dp - delta_i[..., None])
            dq_i = jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_j, precision=prec)
            dq = lax.dynamic_update_slice_in_dim(dq, _slice(dq, q0, bq, 3) + dq_i, q0, axis=3)
            dk_j = dk_j + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_i, precision=prec)
            return dq, dk_j, dv_j

        init = (dq, jnp.zeros_like(k_j), jnp.zeros_like(v_j))
        dq, dk_j, dv_j = lax.fori_loop(i_lo[j], i_hi[j] + 1, q_block, init)
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j, k0, axis=2)
        dv = lax.dynamic_update_slice_in_dim(dv, dv_j, k0, axis=2)
        return dq, dk, dv

    init = (jnp.zeros_like(qh), jnp.zeros_like(kh), jnp.zeros_like(vh))
    return lax.fori_loop(0, kh.shape[2] // bk, k_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(11, 12, 13))
def _flash(qh, kh, vh, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec):
    return _forward(qh, kh, vh, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec)[0]


def _flash_fwd(qh, kh, vh, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec):
    out, lse = _forward(qh, kh, vh, run_q, real_q, run_k, real_k, j_lo, j_hi, bq, bk, prec)
    return out, (qh, kh, vh, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse)


def _flash_bwd(bq, bk, prec, res, dout):
    qh, kh, vh, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse = res
    dq, dk, dv = _backward(qh, kh, vh, run_q, real_q, run_k, real_k, i_lo, i_hi, out, lse, dout, bq, bk, prec)
    return (dq, dk, dv) + (None,) * 8


_flash.defvjp(_flash_fwd, _flash_bwd)


@functools.partial(jax.jit, static_argnames=("scale", "block_q", "block_k"))
def blocked_causal_attention(q, k, v, *, scale, run=None, real=None, block_q=128, block_k=128):
    """Blocked online-softmax causal attention; same contract as `reference_causal_attention`.

    q [B, T, H, Dk], k [B, T, KVH, Dk], v [B, T, KVH, Dv] (GQA: KVH divides H); run [B, T] int32 document
    numbers (non-decreasing, as `segments.document_ids` gives) and real [B, T] bool, both or neither.
    block_q / block_k: query and key block lengths (clipped to T). Memory O(B·T·H·D + B·H·block_q·block_k) for
    the forward and for the gradient, never T × T. Returns fp32 [B, T, H, Dv].
    """
    b, t, h, d = q.shape
    kvh, dv = k.shape[2], v.shape[-1]
    g = h // kvh
    bq, bk = min(block_q, t), min(block_k, t)
    nq, nk = -(-t // bq), -(-t // bk)
    tq, tk = nq * bq, nk * bk
    prec = matmul_precision(q, k, v)
    if real is None:
        run, real = jnp.zeros((b, t), jnp.int32), jnp.ones((b, t), bool)

    qh = (q.astype(_F32) * scale).reshape(b, t, kvh, g, d).transpose(0, 2, 3, 1, 4)  # [B, KVH, G, T, Dk]
    qh = jnp.pad(qh, [(0, 0)] * 3 + [(0, tq - t), (0, 0)])
    kh = jnp.pad(k.astype(_F32).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, tk - t), (0, 0)])  # [B, KVH, Tk, Dk]
    vh = jnp.pad(v.astype(_F32).transpose(0, 2, 1, 3), [(0, 0), (0, 0), (0, tk - t), (0, 0)])
    run_q = jnp.pad(run, [(0, 0), (0, tq - t)], mode="edge")
    run_k = jnp.pad(run, [(0, 0), (0, tk - t)], mode="edge")
    real_q = jnp.pad(real, [(0, 0), (0, tq - t)])
    real_k = jnp.pad(real, [(0, 0), (0, tk - t)])

    # Block bounds. Causal: query block i needs key blocks ≤ its last row; key block j feeds query blocks from
    # the one holding its first key. Packing: run ids are non-decreasing, so query block i needs nothing before
    # the start of its first row's document, and key block j feeds nothing after the end of its last key's.
    pos = jnp.arange(t, dtype=jnp.int32)
    new = jnp.concatenate([jnp.ones((b, 1), bool), run[:, 1:] != run[:, :-1]], axis=1)
    last = jnp.concatenate([run[:, 1:] != run[:, :-1], jnp.ones((b, 1), bool)], axis=1)
    doc_start = lax.cummax(jnp.where(new, pos, 0), axis=1)
    doc_end = lax.cummin(jnp.where(last, pos, t - 1), axis=1, reverse=True)
    q_first = jnp.arange(nq, dtype=jnp.int32) * bq
    k_first = jnp.arange(nk, dtype=jnp.int32) * bk
    j_lo = jnp.min(doc_start[:, q_first], axis=0) // bk
    j_hi = jnp.minimum(q_first + bq - 1, t - 1) // bk
    i_lo = k_first // bq
    i_hi = jnp.max(doc_end[:, jnp.minimum(k_first + bk - 1, t - 1)], axis=0) // bq

    out = _flash(qh, kh, vh, run_q, real_q, run_k, real_k, j_lo, j_hi, i_lo, i_hi, bq, bk, prec)
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4).reshape(b, t, h, dv)
