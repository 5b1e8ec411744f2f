"""Chunked Based / PLA prefill as a Pallas Mosaic TPU kernel.

Grid (B·H, N chunks): the first axis is "parallel" (megacore may split it), the chunk axis "arbitrary" — it runs
in order on one core while the state lives in VMEM scratch (fp32), so a chunk reads the state the previous
chunk left. Per chunk of C tokens (C a multiple of 8; blocks are [C, F], [C, D], the state parts [1|F|P2, D]):

    s = q kᵀ/√d,  a = tril(1 + s + s²/2)                       intra-chunk, never leaves VMEM
    num = a (w∘v) + S0 + (q/d^¼) S1 + φ₂(q) S2                  φ₂ by two matmuls with 0/1 expansion matrices
    den = a w + z0 + (q/d^¼)·z1 + φ₂(q)·z2
    S0 += Σ w∘v,  S1 += (k/d^¼)ᵀ(w∘v),  S2 += φ₂(k)ᵀ(w∘v)     (and the z parts likewise)

w is the per-token weight (1 real, 0 padding). With packed documents (`seg`), a key reaches a query of the same
chunk only with an equal document label, the carried state is read by the tokens of the document open at the
chunk's start (r), survives the chunk only when that document is still open at its end (keep), and takes the
keys of the chunk's last document (u): exact for documents of any length. The same kernel, with `emit_output=False`, only accumulates the
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

from pallas_kernels.linear_attention.common import KernelState, matmul_precision

_F32 = jnp.float32


def chunk_body(q, k, v, w, ea, eb, state, seg=None, *, emit_output, normalize=True, eps, inv_sqrt_d, inv_d4,
               precision):
    """One chunk on values (shared by the TPU and GPU kernels). Returns (y or (num, den) or None, new state).

    `seg` = (labels, r, u, keep), each [C, 1] (keep repeated over the chunk): chunk-relative document labels,
    whether the token reads the carried state, whether it enters the new one, whether the carried state
    survives the chunk (see `common.document_flags`).
    """
    s0, s1, s2, z0, z1, z2 = state
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=_F32)
    dot_t = lambda a, b: lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision,
                                         preferred_element_type=_F32)  # aᵀ b
    c = q.shape[0]
    k1 = k * inv_d4
    k2 = dot(k, ea) * dot(k, eb)
    wu = w
    kept = state
    if seg is not None:
        labels, r, u, keep = seg
        wu = w * u
        kept = tuple(x * keep[0:1, :] for x in state)  # read with the carried state, update from what survives
    vw = v * w
    vwu = v * wu
    y = None
    if emit_output:
        q1 = q * inv_d4
        q2 = dot(q, ea) * dot(q, eb)
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=_F32)
        s = s * inv_sqrt_d
        row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
        col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
        allowed = row >= col
        if seg is not None:
            # labels_j along the columns, by a rank-1 product (no in-kernel transpose); labels are < C, exact.
            cols = lax.dot_general(jnp.ones_like(labels), labels, (((1,), (1,)), ((), ())),
                                   precision=lax.Precision.HIGHEST, preferred_element_type=_F32)
            allowed = allowed & (labels == cols)
        a = jnp.where(allowed, 1.0 + s + 0.5 * s * s, 0.0)
        carried_num = s0 + dot(q1, s1) + dot(q2, s2)
        carried_den = z0 + jnp.sum(q1 * z1, axis=1, keepdims=True) + jnp.sum(q2 * z2, axis=1, keepdims=True)
        if seg is not None:
            carried_num, carried_den = carried_num * r, carried_den * r
        num = dot(a, vw) + carried_num
        den = dot(a, w) + carried_den
        y = num / (den + eps) if normalize else (num, den)
    new = (
        kept[0] + jnp.sum(vwu, axis=0, keepdims=True),
        kept[1] + dot_t(k1, vwu),
        kept[2] + dot_t(k2, vwu),
        kept[3] + jnp.sum(wu, axis=0, keepdims=True),
        kept[4] + jnp.sum(k1 * wu, axis=0, keepdims=True),
        kept[5] + jnp.sum(k2 * wu, axis=0, keepdims=True),
    )
    return y, new


def _kernel(*refs, emit_output, normalize, save_states, segmented, num_chunks, body):
    refs = list(refs)
    take = lambda n: [refs.pop(0) for _ in range(n)]
    q_ref, k_ref, v_ref, w_ref, ea_ref, eb_ref = take(6)
    seg_refs = take(4) if segmented else None
    state_in = take(6)
    y_refs = take(1 if normalize else 2) if emit_output else None
    state_out = take(6)
    chunk_states = take(6) if save_states else None
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
    seg = None if seg_refs is None else tuple(r[...] for r in seg_refs)
    y, new = body(f32(q_ref), f32(k_ref), f32(v_ref), f32(w_ref), ea_ref[...], eb_ref[...],
                  tuple(s[...] for s in scratch), seg)
    if emit_output:
        for ref, val in zip(y_refs, (y,) if normalize else y):
            ref[...] = val.astype(ref.dtype)
    for dst, val in zip(scratch, new):
        dst[...] = val

    @pl.when(n == num_chunks - 1)
    def _finish():
        for dst, src in zip(state_out, scratch):
            dst[...] = src[...]


def prefill_tpu(q, k, v, w, ea, eb, state: KernelState, seg=None, *, heads, chunk, eps, scale_dim, emit_output,
                save_states, normalize=True, interpret=False):
    """Kernel-layout call: q, k [BH, Tp, F], v [BH, Tp, D], w [B, Tp, 1] (fp32), Tp a multiple of `chunk`;
    seg: None or (labels, r, u, keep), each [B, Tp, 1] fp32 (`api.kernel_segments`).

    Returns (y [BH, Tp, D] — or (num [BH, Tp, D] fp32, den [BH, Tp, 1] fp32) when not `normalize` — or None,
    final KernelState, chunk-start KernelState with a leading N axis or None).
    """
    bh, tp, f = q.shape
    d = v.shape[-1]
    p2 = ea.shape[1]
    n = tp // chunk
    precision = matmul_precision(q.dtype)
    body = functools.partial(chunk_body, emit_output=emit_output, normalize=normalize, eps=eps,
                             inv_sqrt_d=1.0 / scale_dim**0.5, inv_d4=1.0 / scale_dim**0.25, precision=precision)
    state_shapes = [(1, d), (f, d), (p2, d), (1, 1), (1, f), (1, p2)]
    per_head = lambda s: pl.BlockSpec((None,) + s, lambda i, j: (i, 0, 0))
    # lax.div, not //: floor division of signed ints lowers through sign(), which Mosaic ties to a chip.
    per_row = pl.BlockSpec((None, chunk, 1), lambda i, j: (lax.div(i, heads), j, 0))
    in_specs = [
        pl.BlockSpec((None, chunk, f), lambda i, j: (i, j, 0)),
        pl.BlockSpec((None, chunk, f), lambda i, j: (i, j, 0)),
        pl.BlockSpec((None, chunk, d), lambda i, j: (i, j, 0)),
        per_row,
        pl.BlockSpec((f, p2), lambda i, j: (0, 0)),
        pl.BlockSpec((f, p2), lambda i, j: (0, 0)),
    ]
    seg_args = []
    if seg is not None:
        in_specs += [per_row] * 4
        seg_args = list(seg)
    in_specs += [per_head(s) for s in state_shapes]
    out_shape, out_specs = [], []
    if emit_output:
        if normalize:
            out_shape.append(jax.ShapeDtypeStruct((bh, tp, d), v.dtype))
        else:
            out_shape += [jax.ShapeDtypeStruct((bh, tp, d), _F32), jax.ShapeDtypeStruct((bh, tp, 1), _F32)]
        out_specs.append(pl.BlockSpec((None, chunk, d), lambda i, j: (i, j, 0)))
        if not normalize:
            out_specs.append(pl.BlockSpec((None, chunk, 1), lambda i, j: (i, j, 0)))
    out_shape += [jax.ShapeDtypeStruct((bh,) + s, _F32) for s in state_shapes]
    out_specs += [per_head(s) for s in state_shapes]
    if save_states:
        out_shape += [jax.ShapeDtypeStruct((n, bh) + s, _F32) for s in state_shapes]
        out_specs += [pl.BlockSpec((None, None) + s, lambda i, j: (j, i, 0, 0)) for s in state_shapes]
    kernel = functools.partial(_kernel, emit_output=emit_output, normalize=normalize, save_states=save_states,
                               segmented=seg is not None, num_chunks=n, body=body)
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
    )(q, k, v, w, ea, eb, *seg_args, *state)
    outs = list(outs)
    y = None
    if emit_output:
        y = outs.pop(0) if normalize else (outs.pop(0), outs.pop(0))
    final = KernelState(*outs[:6])
    chunk_states = KernelState(*outs[6:]) if save_states else None
    return y, final, chunk_states
