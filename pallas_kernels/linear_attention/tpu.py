"""Chunked Based / PLA prefill as a Pallas Mosaic TPU kernel.

Grid (B·H, N chunks): the first axis is "parallel" (megacore may split it), the chunk axis "arbitrary" — it runs
in order on one core while the state lives in VMEM scratch (fp32), so a chunk reads the state the previous
chunk left. Each step runs `common.chunk_body` (the algorithm, shared with the Pallas GPU kernel) on one chunk of
C tokens (C a multiple of 8; blocks are [C, F], [C, D], the state parts [1|F|P2, D]); the intra-chunk scores
never leave VMEM.

w is the per-token weight (1 real, 0 padding); with packed documents (`seg`) no key crosses a document boundary.
The same kernel, with `emit_output=False`, only accumulates the state (the PLA encoder pass), and with
`save_states=True` also writes the state at every chunk start (what the XLA backward needs). Matmul precision:
`common.matmul_precision` of the inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.linear_attention.common import (
    KernelState,
    chunk_body,
    matmul_precision,
    state_shapes,
    taylor_scales,
)

_F32 = jnp.float32


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

    def write_output(y):
        for ref, val in zip(y_refs, (y,) if normalize else y):
            ref[...] = val.astype(ref.dtype)

    f32 = lambda r: r[...].astype(_F32)
    seg = None if seg_refs is None else tuple(r[...] for r in seg_refs)
    new = body(f32(q_ref), f32(k_ref), f32(v_ref), f32(w_ref), ea_ref[...], eb_ref[...],
               tuple(s[...] for s in scratch), seg, write_output=write_output if emit_output else None)
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
    inv_sqrt_d, inv_d4 = taylor_scales(scale_dim)
    body = functools.partial(chunk_body, normalize=normalize, eps=eps,
                             inv_sqrt_d=inv_sqrt_d, inv_d4=inv_d4, precision=matmul_precision(q.dtype),
                             lowering="mosaic")
    shapes = state_shapes(f, d)
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
    in_specs += [per_head(s) for s in shapes]
    out_shape, out_specs = [], []
    if emit_output:
        if normalize:
            out_shape.append(jax.ShapeDtypeStruct((bh, tp, d), v.dtype))
        else:
            out_shape += [jax.ShapeDtypeStruct((bh, tp, d), _F32), jax.ShapeDtypeStruct((bh, tp, 1), _F32)]
        out_specs.append(pl.BlockSpec((None, chunk, d), lambda i, j: (i, j, 0)))
        if not normalize:
            out_specs.append(pl.BlockSpec((None, chunk, 1), lambda i, j: (i, j, 0)))
    out_shape += [jax.ShapeDtypeStruct((bh,) + s, _F32) for s in shapes]
    out_specs += [per_head(s) for s in shapes]
    if save_states:
        out_shape += [jax.ShapeDtypeStruct((n, bh) + s, _F32) for s in shapes]
        out_specs += [pl.BlockSpec((None, None) + s, lambda i, j: (j, i, 0, 0)) for s in shapes]
    kernel = functools.partial(_kernel, emit_output=emit_output, normalize=normalize, save_states=save_states,
                               segmented=seg is not None, num_chunks=n, body=body)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, n),
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(s, _F32) for s in shapes],
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
