"""Chunked Based / PLA prefill as a Pallas GPU kernel (Triton lowering).

Grid (B·H, D / Db): each program owns one head and a Db-wide slice of the value dimension, and walks the
chunks of its sequence in a `fori_loop`, carrying its slice of the fp32 state in registers:
S0 [Db], S1 [F, Db], S2 [P2, Db], z0, z1 [F], z2 [P2]. The slice keeps the register footprint small
(P2·Db = 256·16 floats for F = 16) and gives B·H·D/Db programs, enough to fill an H100 at B = 16. The cheap
intra-chunk scores a = tril(1 + s + s²/2) are recomputed by each of the D/Db programs of a head.

Precision: fp32 inputs use IEEE fp32 dots (exact to fp32, the 1e-5 contract); bf16 / fp16 inputs keep fp32
operands but allow TF32 tensor-core dots (~1e-3 relative), the state stays fp32 throughout.

Why this kernel stays next to `triton.py` (the same kernel in the Triton language, through jax-triton, which
`api.py` prefers on CUDA where jax-triton imports): it is written once in Pallas, shares its algorithm with the
TPU kernel, runs in the Pallas interpreter on CPU, and exports for CUDA from a CPU-only machine
(`jax.export(..., platforms=["cuda"])`) without jax-triton, which needs a CUDA jaxlib. Neither was measured
against the other: no GPU was available when they were written; `benchmarks/kernels.py` times both on one.

Exporting without a GPU: jax 0.10 lowered for compute capability 9.0 when it saw none; jax 0.12 asks for the
target, an abstract GPU device in context, and otherwise raises "No supported GPU devices found":

    gpu = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu)):
        exported = jax.export.export(f, platforms=["cuda"], disabled_checks=[...])(*args)

(`tests.helpers.export_for` does this). jax 0.12 also marks the Pallas Triton backend deprecated (a
DeprecationWarning at lowering) in favour of Mosaic GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.linear_attention.common import (
    GPU_VALUE_BLOCK,
    KernelState,
    gpu_unsupported_reason,
    matmul_precision,
)

_F32 = jnp.float32
VALUE_BLOCK = GPU_VALUE_BLOCK
unsupported_reason = gpu_unsupported_reason  # Triton's dots: power-of-two tiles of at least 16


def _kernel(q_ref, k_ref, v_ref, w_ref, ea_ref, eb_ref, *refs, heads, chunk, num_chunks, emit_output, normalize,
            save_states, segmented, eps, inv_sqrt_d, inv_d4, precision):
    refs = list(refs)
    take = lambda n: [refs.pop(0) for _ in range(n)]
    seg_refs = take(4) if segmented else None
    s0_in, s1_in, s2_in, z0_in, z1_in, z2_in = take(6)
    y_refs = take(1 if normalize else 2) if emit_output else None
    s0_out, s1_out, s2_out, z0_out, z1_out, z2_out = take(6)
    saved = take(6) if save_states else None
    i = pl.program_id(0)
    j = pl.program_id(1)
    b = lax.div(i, heads)
    cols = pl.ds(j * VALUE_BLOCK, VALUE_BLOCK)
    dot = functools.partial(pltriton.dot, precision=precision)
    ea = ea_ref[...]
    eb = eb_ref[...]
    c = chunk
    row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    init = (s0_in[i, 0, cols], s1_in[i, :, cols], s2_in[i, :, cols], z0_in[i, 0, 0], z1_in[i, 0, :], z2_in[i, 0, :])

    def step(n, state):
        if save_states:
            for ref, val in zip(saved[:3], state[:3]):
                ref[n, i, :, cols] = val if val.ndim == 2 else val[None, :]
            saved[3][n, i, 0, 0] = state[3]
            saved[4][n, i, 0, :] = state[4]
            saved[5][n, i, 0, :] = state[5]
        rows = pl.ds(n * c, c)
        q = q_ref[i, rows, :].astype(_F32)
        k = k_ref[i, rows, :].astype(_F32)
        v = v_ref[i, rows, cols].astype(_F32)
        w = w_ref[b, rows].astype(_F32)
        kept = state
        wu = w
        if segmented:
            labels, r, u, keep = (ref[b, rows] for ref in seg_refs)
            wu = w * u
            kept = tuple(x * jnp.max(keep) for x in state)  # read with the carried state, update from what survives
        s0, s1, s2, z0, z1, z2 = state
        vw = v * w[:, None]
        vwu = v * wu[:, None]
        k1 = k * inv_d4
        k2 = dot(k, ea) * dot(k, eb)
        if emit_output:
            q1 = q * inv_d4
            q2 = dot(q, ea) * dot(q, eb)
            s = dot(q, k, trans_b=True) * inv_sqrt_d
            allowed = row >= col
            if segmented:
                allowed = allowed & (labels[:, None] == labels[None, :])
            a = jnp.where(allowed, 1.0 + s + 0.5 * s * s, 0.0)
            carried_num = s0[None, :] + dot(q1, s1) + dot(q2, s2)
            carried_den = z0 + jnp.sum(q1 * z1[None, :], axis=1) + jnp.sum(q2 * z2[None, :], axis=1)
            if segmented:
                carried_num, carried_den = carried_num * r[:, None], carried_den * r
            num = dot(a, vw) + carried_num
            den = jnp.sum(a * w[None, :], axis=1) + carried_den
            if normalize:
                y_refs[0][i, rows, cols] = (num / (den[:, None] + eps)).astype(y_refs[0].dtype)
            else:
                y_refs[0][i, rows, cols] = num

                @pl.when(j == 0)
                def _den():  # every value slice computes the same denominator; one writes it
                    y_refs[1][i, rows] = den

        ks0, ks1, ks2, kz0, kz1, kz2 = kept
        return (
            ks0 + jnp.sum(vwu, axis=0),
            ks1 + dot(k1, vwu, trans_a=True),
            ks2 + dot(k2, vwu, trans_a=True),
            kz0 + jnp.sum(wu),
            kz1 + jnp.sum(k1 * wu[:, None], axis=0),
            kz2 + jnp.sum(k2 * wu[:, None], axis=0),
        )

    s0, s1, s2, z0, z1, z2 = lax.fori_loop(0, num_chunks, step, init)
    s0_out[i, 0, cols] = s0
    s1_out[i, :, cols] = s1
    s2_out[i, :, cols] = s2

    @pl.when(j == 0)
    def _z():  # every value slice computes the same z; one writes it
        z0_out[i, 0, 0] = z0
        z1_out[i, 0, :] = z1
        z2_out[i, 0, :] = z2


def prefill_gpu(q, k, v, w, ea, eb, state: KernelState, seg=None, *, heads, chunk, eps, scale_dim, emit_output,
                save_states, normalize=True, interpret=False, num_warps: int = 4, num_stages: int = 2):
    """Kernel-layout call, same contract as `tpu.prefill_tpu` (q, k [BH,Tp,F], v [BH,Tp,D], w and seg [B,Tp,1])."""
    bh, tp, f = q.shape
    d = v.shape[-1]
    reason = unsupported_reason(f, d, chunk)
    if reason:
        raise ValueError(reason)
    p2 = ea.shape[1]
    n = tp // chunk
    precision = matmul_precision(q.dtype)
    kernel = functools.partial(
        _kernel, heads=heads, chunk=chunk, num_chunks=n, emit_output=emit_output, normalize=normalize,
        save_states=save_states, segmented=seg is not None, eps=eps, inv_sqrt_d=1.0 / scale_dim**0.5,
        inv_d4=1.0 / scale_dim**0.25, precision=precision,
    )
    state_shapes = [(1, d), (f, d), (p2, d), (1, 1), (1, f), (1, p2)]
    out_shape = []
    if emit_output:
        if normalize:
            out_shape.append(jax.ShapeDtypeStruct((bh, tp, d), v.dtype))
        else:
            out_shape += [jax.ShapeDtypeStruct((bh, tp, d), _F32), jax.ShapeDtypeStruct((bh, tp), _F32)]
    out_shape += [jax.ShapeDtypeStruct((bh,) + s, _F32) for s in state_shapes]
    if save_states:
        out_shape += [jax.ShapeDtypeStruct((n, bh) + s, _F32) for s in state_shapes]
    seg_args = [] if seg is None else [x[..., 0] for x in seg]
    n_in = 12 + len(seg_args)
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, d // VALUE_BLOCK),
        in_specs=[any_spec] * n_in,
        out_specs=[any_spec] * len(out_shape),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="jrt_linear_attention_prefill_gpu",
    )(q, k, v, w[..., 0], ea, eb, *seg_args, *state)
    outs = list(outs)
    y = None
    if emit_output:
        y = outs.pop(0) if normalize else (outs.pop(0), outs.pop(0)[..., None])
    final = KernelState(*outs[:6])
    return y, final, KernelState(*outs[6:]) if save_states else None
