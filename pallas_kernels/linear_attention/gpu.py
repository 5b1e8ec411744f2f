"""Chunked Based / PLA prefill as a Pallas GPU kernel (Triton lowering).

Grid (B·H, D / Db): each program owns one head and a Db-wide slice of the value dimension, and walks the
chunks of its sequence in a `fori_loop`, carrying its slice of the fp32 state in registers:
S0 [1, Db], S1 [F, Db], S2 [P2, Db], z0 [1, 1], z1 [1, F], z2 [1, P2]. The slice keeps the register footprint
small (P2·Db = 256·16 floats for F = 16) and gives B·H·D/Db programs, enough to fill an H100 at B = 16. Each
chunk is `common.chunk_body`, the TPU kernel's algorithm (`lowering="triton"`); the cheap intra-chunk scores
are recomputed by each of the D/Db programs of a head.

Precision (`common.matmul_precision`): fp32 inputs use IEEE fp32 dots (exact to fp32, the 1e-5 contract); bf16 /
fp16 inputs keep fp32 operands but allow TF32 tensor-core dots (~1e-3 relative), the state stays fp32 throughout.

Why this kernel stays next to `triton.py` (the same algorithm in the Triton language, through jax-triton, which
`api.py` prefers on CUDA where jax-triton imports): it needs no jax-triton, which imports only with a CUDA jaxlib,
so it is the CUDA kernel of a plain `pip install jrt-jax` and what exports for CUDA from a CPU-only machine
(`jax.export(..., platforms=["cuda"])`); it runs in the Pallas interpreter on CPU; and it shares its chunk body
with the TPU kernel. `benchmarks/kernels.py` times the two GPU kernels against each other.

Exporting without a GPU: jax ≥ 0.12 asks for the target, an abstract GPU device in context, and otherwise
raises "No supported GPU devices found" (jax 0.10 assumes compute capability 9.0):

    gpu = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=gpu)):
        exported = jax.export.export(f, platforms=["cuda"], disabled_checks=[...])(*args)

(`tests.helpers.export_for` does this). jax ≥ 0.12 marks the Pallas Triton backend deprecated (a
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
    chunk_body,
    gpu_unsupported_reason,
    matmul_precision,
    state_shapes,
    taylor_scales,
)

_F32 = jnp.float32
VALUE_BLOCK = GPU_VALUE_BLOCK
unsupported_reason = gpu_unsupported_reason  # Triton's dots: power-of-two tiles of at least 16


def _kernel(q_ref, k_ref, v_ref, w_ref, ea_ref, eb_ref, *refs, heads, chunk, num_chunks, emit_output, normalize,
            save_states, segmented, body):
    refs = list(refs)
    take = lambda n: [refs.pop(0) for _ in range(n)]
    seg_refs = take(4) if segmented else None
    state_in = take(6)
    y_refs = take(1 if normalize else 2) if emit_output else None
    state_out = take(6)
    saved = take(6) if save_states else None
    i = pl.program_id(0)
    j = pl.program_id(1)
    b = lax.div(i, heads)
    cols = pl.ds(j * VALUE_BLOCK, VALUE_BLOCK)
    whole = slice(None)
    # This program's block of each state part: its value columns of s0, s1, s2, all of z0, z1, z2.
    blocks = lambda *lead: [lead + (whole, cols)] * 3 + [lead + (whole, whole)] * 3
    ea = ea_ref[...]
    eb = eb_ref[...]
    init = tuple(ref[at] for ref, at in zip(state_in, blocks(i)))

    def step(n, state):
        if save_states:  # the state at the start of chunk n (every program holds the same z; all write it)
            for ref, at, val in zip(saved, blocks(n, i), state):
                ref[at] = val
        rows = pl.ds(n * chunk, chunk)
        f32 = lambda x: x.astype(_F32)
        seg = None if seg_refs is None else tuple(ref[b, rows, :] for ref in seg_refs)

        def write_output(y):
            if normalize:
                y_refs[0][i, rows, cols] = y.astype(y_refs[0].dtype)
                return
            y_refs[0][i, rows, cols] = y[0]

            @pl.when(j == 0)
            def _den():  # every value slice computes the same denominator; one writes it
                y_refs[1][i, rows, :] = y[1]

        return body(f32(q_ref[i, rows, :]), f32(k_ref[i, rows, :]), f32(v_ref[i, rows, cols]), w_ref[b, rows, :],
                    ea, eb, state, seg, write_output=write_output if emit_output else None)

    final = lax.fori_loop(0, num_chunks, step, init)
    for ref, at, val in zip(state_out[:3], blocks(i)[:3], final[:3]):
        ref[at] = val

    @pl.when(j == 0)
    def _z():  # every value slice computes the same z; one writes it
        for ref, at, val in zip(state_out[3:], blocks(i)[3:], final[3:]):
            ref[at] = val


def prefill_gpu(q, k, v, w, ea, eb, state: KernelState, seg=None, *, heads, chunk, eps, scale_dim, emit_output,
                save_states, normalize=True, interpret=False, num_warps: int = 4, num_stages: int = 2):
    """Kernel-layout call, same contract as `tpu.prefill_tpu` (q, k [BH,Tp,F], v [BH,Tp,D], w and seg [B,Tp,1])."""
    bh, tp, f = q.shape
    d = v.shape[-1]
    reason = unsupported_reason(f, d, chunk)
    if reason:
        raise ValueError(reason)
    n = tp // chunk
    inv_sqrt_d, inv_d4 = taylor_scales(scale_dim)
    body = functools.partial(chunk_body, normalize=normalize, eps=eps,
                             inv_sqrt_d=inv_sqrt_d, inv_d4=inv_d4, precision=matmul_precision(q.dtype),
                             lowering="triton")
    kernel = functools.partial(_kernel, heads=heads, chunk=chunk, num_chunks=n, emit_output=emit_output,
                               normalize=normalize, save_states=save_states, segmented=seg is not None, body=body)
    shapes = state_shapes(f, d)
    out_shape = []
    if emit_output:
        if normalize:
            out_shape.append(jax.ShapeDtypeStruct((bh, tp, d), v.dtype))
        else:
            out_shape += [jax.ShapeDtypeStruct((bh, tp, d), _F32), jax.ShapeDtypeStruct((bh, tp, 1), _F32)]
    out_shape += [jax.ShapeDtypeStruct((bh,) + s, _F32) for s in shapes]
    if save_states:
        out_shape += [jax.ShapeDtypeStruct((n, bh) + s, _F32) for s in shapes]
    seg_args = [] if seg is None else list(seg)
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
    )(q, k, v, w, ea, eb, *seg_args, *state)
    outs = list(outs)
    y = None
    if emit_output:
        y = outs.pop(0) if normalize else (outs.pop(0), outs.pop(0))
    final = KernelState(*outs[:6])
    return y, final, KernelState(*outs[6:]) if save_states else None
