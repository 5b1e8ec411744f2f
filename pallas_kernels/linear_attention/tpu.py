"""Chunked Based / PLA prefill as a Pallas Mosaic TPU kernel.

Grid (B·H, N chunks): the first axis is "parallel" (megacore may split it), the chunk axis "arbitrary" — it runs
in order on one core while the state lives in VMEM scratch (fp32), so a chunk reads the state the previous
chunk left. Per chunk of C tokens (C a multiple of 8; blocks are [C, F], [C, D], the state parts [1|F|P2, D]):

    s = q kᵀ/√d,  a = tril(1 + s + s²/2)                       intra-chunk, never leaves VMEM
    num = a (w∘v) + S0 + (q/d^¼) S1 + φ₂(q) S2                  φ₂ by two matmuls with 0/1 expansion matrices
    den = a w + z0 + (q/d^¼)·z1 + φ₂(q)·z2
    S0 += Σ w∘v,  S1 += (k/d^¼)ᵀ(w∘v),  S2 += φ₂(k)ᵀ(w∘v)     (and the z parts likewise)

w is the per-token weight (1 real, 0 padding). The same kernel, with `emit_output=False`, only accumulates the
state (the PLA encoder pass), and with `save_states=True` also writes the state at every chunk start (what the
XLA backward needs). Matmuls of fp32 inputs use HIGHEST precision (fp32-accurate); bf16/fp16 inputs keep
the MXU's native precision with fp32 accumulation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.linear_attention.common import KernelState

_F32 = jnp.float32


def chunk_body(q, k, v, w, ea, eb, state, *, emit_output, eps, inv_sqrt_d, inv_d4, precision):
    """One chunk on values (shared by the TPU and GPU kernels). Returns (y or None, new KernelState parts)."""
    s0, s1, s2, z0, z1, z2 = state
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=_F32)
    dot_t = lambda a, b: lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision,
                                         preferred_element_type=_F32)  # aᵀ b
    c = q.shape[0]
    k1 = k * inv_d4
    k2 = dot(k, ea) * dot(k, eb)
    vw = v * w
    y = None
    if emit_output:
        q1 = q * inv_d4
        q2 = dot(q, ea) * dot(q, eb)
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=_F32)
        s = s * inv_sqrt_d
        row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
        col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
        a = jnp.where(row >= col, 1.0 + s + 0.5 * s * s, 0.0)
        num = dot(a, vw) + s0 + dot(q1, s1) + dot(q2, s2)
        den = (dot(a, w) + z0 + jnp.sum(q1 * z1, axis=1, keepdims=True)
               + jnp.sum(q2 * z2, axis=1, keepdims=True))
        y = num / (den + eps)
    new = (
        s0 + jnp.sum(vw, axis=0, keepdims=True),
        s1 + dot_t(k1, vw),
        s2 + dot_t(k2, vw),
        z0 + jnp.sum(w, axis=0, keepdims=True),
        z1 + jnp.sum(k1 * w, axis=0, keepdims=True),
        z2 + jnp.sum(k2 * w, axis=0, keepdims=True),
    )
    return y, new


def _kernel(q_ref, k_ref, v_ref, w_ref, ea_ref, eb_ref, *refs, emit_output, save_states, num_chunks, body):
    state_in = refs[:6]
    refs = refs[6:]
    y_ref = None
    if emit_output:
        y_ref, refs = refs[0], refs[1:]
    state_out, refs = refs[:6], refs[6:]
    chunk_states = None
    if save_states:
        chunk_states, refs = refs[:6], refs[6:]
    scratch = refs
    n = pl.program_id(1)

    @pl.when(n == 0)
    def _init():
        for dst, src in zip(scratch, state_in):
            dst[...] = src[...]

    if save_states:
        for dst, src in zip(chunk_states, scratch):
            dst[...] = src[...]

    f32 = lambda r: r[...].astype(_F32)
    y, new = body(f32(q_ref), f32(k_ref), f32(v_ref), f32(w_ref), ea_ref[...], eb_ref[...],
                  tuple(s[...] for s in scratch))
    if emit_output:
        y_ref[...] = y.astype(y_ref.dtype)
    for dst, val in zip(scratch, new):
        dst[...] = val

    @pl.when(n == num_chunks - 1)
    def _finish():
        for dst, src in zip(state_out, scratch):
            dst[...] = src[...]


def prefill_tpu(q, k, v, w, ea, eb, state: KernelState, *, heads, chunk, eps, scale_dim, emit_output, save_states,
                interpret=False):
    """Kernel-layout call: q, k [BH, Tp, F], v [BH, Tp, D], w [B, Tp, 1] (fp32), Tp a multiple of `chunk`.

    Returns (y [BH, Tp, D] or None, final KernelState, chunk-start KernelState with a leading N axis or None).
    """
    bh, tp, f = q.shape
    d = v.shape[-1]
    p2 = ea.shape[1]
    n = tp // chunk
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else lax.Precision.DEFAULT
    body = functools.partial(chunk_body, emit_output=emit_output, eps=eps, inv_sqrt_d=1.0 / scale_dim**0.5,
                             inv_d4=1.0 / scale_dim**0.25, precision=precision)
    state_shapes = [(1, d), (f, d), (p2, d), (1, 1), (1, f), (1, p2)]
    per_head = lambda s: pl.BlockSpec((None,) + s, lambda i, j: (i, 0, 0))
    in_specs = [
        pl.BlockSpec((None, chunk, f), lambda i, j: (i, j, 0)),
        pl.BlockSpec((None, chunk, f), lambda i, j: (i, j, 0)),
        pl.BlockSpec((None, chunk, d), lambda i, j: (i, j, 0)),
        # lax.div, not //: floor division of signed ints lowers through sign(), which Mosaic ties to a chip.
        pl.BlockSpec((None, chunk, 1), lambda i, j: (lax.div(i, heads), j, 0)),
        pl.BlockSpec((f, p2), lambda i, j: (0, 0)),
        pl.BlockSpec((f, p2), lambda i, j: (0, 0)),
    ] + [per_head(s) for s in state_shapes]
    out_shape, out_specs = [], []
    if emit_output:
        out_shape.append(jax.ShapeDtypeStruct((bh, tp, d), v.dtype))
        out_specs.append(pl.BlockSpec((None, chunk, d), lambda i, j: (i, j, 0)))
    out_shape += [jax.ShapeDtypeStruct((bh,) + s, _F32) for s in state_shapes]
    out_specs += [per_head(s) for s in state_shapes]
    if save_states:
        out_shape += [jax.ShapeDtypeStruct((n, bh) + s, _F32) for s in state_shapes]
        out_specs += [pl.BlockSpec((None, None) + s, lambda i, j: (j, i, 0, 0)) for s in state_shapes]
    kernel = functools.partial(_kernel, emit_output=emit_output, save_states=save_states, num_chunks=n, body=body)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, n),
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(s, _F32) for s in state_shapes],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="jrt_linear_attention_prefill_tpu",
    )(q, k, v, w, ea, eb, *state)
    outs = list(outs)
    y = outs.pop(0) if emit_output else None
    final = KernelState(*outs[:6])
    chunk_states = KernelState(*outs[6:]) if save_states else None
    return y, final, chunk_states
