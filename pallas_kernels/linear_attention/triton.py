"""Chunked Based / PLA prefill as a Triton-language kernel, called from JAX through `jax_triton.triton_call`.

The kernel has the contract of `gpu.prefill_gpu` (the Pallas GPU kernel) and the same algorithm: grid
(B·H, D / Db), each program owns one head and a Db-wide slice of the value dimension and walks the chunks of
its sequence, carrying its slice of the fp32 state in registers: S0 [Db], S1 [F, Db], S2 [P2, Db], z0, z1 [F],
z2 [P2]. Precision by `common.matmul_precision` in Triton's words (`common.triton_input_precision`): fp32 inputs
use IEEE fp32 dots (the 1e-5 contract); bf16 / fp16 inputs are read as fp32 and allow TF32 tensor-core dots; the
state stays fp32 throughout.

Why the chunk body is written here and not taken from `common.chunk_body`: Triton compiles a kernel from its
Python source, on Triton tensors addressed by explicit pointer arithmetic, and can call only other Triton
functions, not jnp code. What can be shared is: the Taylor kernel 1 + s + s²/2 (`common.taylor_kernel`, plain
arithmetic, compiled here by `triton.jit`), the precision rule, the scales (`common.taylor_scales`), the state
layout (`common.state_shapes`) and the size rules (`common.gpu_unsupported_reason`, `GPU_VALUE_BLOCK`). The
tests hold the two bodies equal: tests/kernels/test_triton_kernel.py compares every output of this kernel (in Triton's
interpreter) with the Pallas GPU kernel's on the same inputs.

Two launchers share the kernel: `prefill_triton` (JAX arrays, through jax-triton, what `api.py` runs on CUDA)
and `prefill_triton_torch` (torch tensors: on a GPU the compiled kernel; in a process that imported triton with
TRITON_INTERPRET=1, Triton's interpreter on the CPU, which is how the tests exercise the kernel without a GPU).

Why jax-triton and not Pallas Mosaic GPU: jax ≥ 0.11 deprecates the Pallas Triton backend (a DeprecationWarning
at every lowering: "The Pallas Triton backend is deprecated and will be removed in a future JAX version"), and
the two ways off it are Mosaic GPU and Triton-language kernels through jax_triton. Mosaic GPU targets Hopper
and later with warpgroup programming and cannot be exercised at all without such a GPU; a Triton kernel runs in
Triton's interpreter on the CPU (the tests here) and compiles for every GPU Triton supports (sm_80 on).
`benchmarks/kernels.py` times both GPU kernels on a GPU (`backend="gpu"` and `backend="triton"` rows).

What jax-triton needs: a CUDA jaxlib (`pip install 'jrt-jax[gpu]'`): `import jax_triton` fails on a CPU-only
jaxlib, whose `jaxlib.gpu_triton` lacks the kernel-call bindings of the jax-cuda plugin. With the plugin
installed but no GPU, `triton_call` lowers and exports for CUDA (it compiles the kernel to PTX on the host, for
compute capability 9.0: `_compute_capability`). Without jax-triton, `api.py` keeps the Pallas GPU kernel for
CUDA, so exporting for CUDA from a CPU machine works. The PTX ISA version Triton writes must be one XLA's ptxas
reads: docs/hardware.md ("The ptxas / PTX-version risk") says which Triton and ptxas pairs work and how to
point Triton at another ptxas.

Optional inputs and outputs: a Triton kernel has one fixed parameter list and jax-triton passes the outputs
after the inputs, so an input or output that a call does not use (the segment arrays, the unnormalised
denominator, the saved chunk states) is a one-element placeholder that the kernel never touches (its constexpr
flag is off).
"""

from __future__ import annotations

import functools
import inspect
import types

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from pallas_kernels.linear_attention.common import (
    GPU_VALUE_BLOCK,
    KernelState,
    gpu_unsupported_reason,
    matmul_precision,
    patch_triton_for_jax_triton,
    state_shapes,
    taylor_kernel,
    taylor_scales,
    triton_input_precision,
)

_F32 = jnp.float32
VALUE_BLOCK = GPU_VALUE_BLOCK
unsupported_reason = gpu_unsupported_reason  # the limits of the Pallas GPU kernel: the same tiles
_PLACEHOLDER = (1,)  # the shape of an input or output a call does not use
# `common.taylor_kernel` compiled by Triton from its own source, with this module's globals: Triton's interpreter
# looks for triton.language among the globals of every function it runs, and common.py does not import triton.
_taylor_kernel = triton.jit(types.FunctionType(taylor_kernel.__code__, globals(), taylor_kernel.__name__))


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, w_ptr, ea_ptr, eb_ptr, lab_ptr, r_ptr, u_ptr, keep_ptr,
    s0_in, s1_in, s2_in, z0_in, z1_in, z2_in,
    y_ptr, den_ptr,
    s0_out, s1_out, s2_out, z0_out, z1_out, z2_out,
    s0_sv, s1_sv, s2_sv, z0_sv, z1_sv, z2_sv,
    BH: tl.constexpr, HEADS: tl.constexpr, TP: tl.constexpr, F: tl.constexpr, D: tl.constexpr, P2: tl.constexpr,
    CHUNK: tl.constexpr, DB: tl.constexpr, EMIT_OUTPUT: tl.constexpr, NORMALIZE: tl.constexpr,
    SAVE_STATES: tl.constexpr, SEGMENTED: tl.constexpr, HAS_WEIGHTS: tl.constexpr, EPS: tl.constexpr,
    INV_SQRT_D: tl.constexpr, INV_D4: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: head i = program_id(0), value columns [j·DB, (j+1)·DB) with j = program_id(1).

    Arrays are dense row-major in kernel layout: q, k [BH, TP, F], v and y [BH, TP, D], den [BH, TP], w and the
    segment arrays [B, TP], ea, eb [F, P2], states s0 [BH, D], s1 [BH, F, D], s2 [BH, P2, D], z0 [BH],
    z1 [BH, F], z2 [BH, P2] (`_state_views`), saved states with a leading chunk axis [TP / CHUNK, BH, …].
    """
    i = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = i // HEADS
    c = tl.arange(0, CHUNK)
    fi = tl.arange(0, F)
    pi = tl.arange(0, P2)
    di = j * DB + tl.arange(0, DB)
    ea = tl.load(ea_ptr + fi[:, None] * P2 + pi[None, :])
    eb = tl.load(eb_ptr + fi[:, None] * P2 + pi[None, :])
    causal = c[:, None] >= c[None, :]
    s1_idx = fi[:, None] * D + di[None, :]
    s2_idx = pi[:, None] * D + di[None, :]
    s0 = tl.load(s0_in + i * D + di)
    s1 = tl.load(s1_in + i * F * D + s1_idx)
    s2 = tl.load(s2_in + i * P2 * D + s2_idx)
    z0 = tl.load(z0_in + i)
    z1 = tl.load(z1_in + i * F + fi)
    z2 = tl.load(z2_in + i * P2 + pi)
    for n in range(TP // CHUNK):
        if SAVE_STATES:  # the state at the start of chunk n
            at = n * BH + i
            tl.store(s0_sv + at * D + di, s0)
            tl.store(s1_sv + at * F * D + s1_idx, s1)
            tl.store(s2_sv + at * P2 * D + s2_idx, s2)
            if j == 0:  # every value slice holds the same z; one writes it
                tl.store(z0_sv + at, z0)
                tl.store(z1_sv + at * F + fi, z1)
                tl.store(z2_sv + at * P2 + pi, z2)
        t = n * CHUNK + c
        k = tl.load(k_ptr + i * TP * F + t[:, None] * F + fi[None, :]).to(tl.float32)
        v = tl.load(v_ptr + i * TP * D + t[:, None] * D + di[None, :]).to(tl.float32)
        if HAS_WEIGHTS:
            w = tl.load(w_ptr + b * TP + t)
        else:
            w = tl.full([CHUNK], 1.0, tl.float32)
        # The [CHUNK, P2] quadratic features are the largest tiles: the output is finished (and q2 dropped)
        # before k2 is built for the state update.
        if EMIT_OUTPUT:
            q = tl.load(q_ptr + i * TP * F + t[:, None] * F + fi[None, :]).to(tl.float32)
            q1 = q * INV_D4
            q2 = tl.dot(q, ea, input_precision=PRECISION) * tl.dot(q, eb, input_precision=PRECISION)
            carried_num = (s0[None, :] + tl.dot(q1, s1, input_precision=PRECISION)
                           + tl.dot(q2, s2, input_precision=PRECISION))
            carried_den = z0 + tl.sum(q1 * z1[None, :], axis=1) + tl.sum(q2 * z2[None, :], axis=1)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * INV_SQRT_D
            allowed = causal
            if SEGMENTED:
                lab = tl.load(lab_ptr + b * TP + t)
                allowed = allowed & (lab[:, None] == lab[None, :])
                r = tl.load(r_ptr + b * TP + t)
                carried_num = carried_num * r[:, None]
                carried_den = carried_den * r
            a = tl.where(allowed, _taylor_kernel(s), 0.0)
            num = tl.dot(a, v * w[:, None], input_precision=PRECISION) + carried_num
            den = tl.sum(a * w[None, :], axis=1) + carried_den
            y_at = y_ptr + i * TP * D + t[:, None] * D + di[None, :]
            if NORMALIZE:
                tl.store(y_at, (num / (den[:, None] + EPS)).to(y_ptr.dtype.element_ty))
            else:
                tl.store(y_at, num)
                if j == 0:  # every value slice computes the same denominator; one writes it
                    tl.store(den_ptr + i * TP + t, den)
        if SEGMENTED:  # the output read the carried state; what survives the chunk is updated
            wu = w * tl.load(u_ptr + b * TP + t)
            keep = tl.max(tl.load(keep_ptr + b * TP + t), axis=0)
            s0, s1, s2 = s0 * keep, s1 * keep, s2 * keep
            z0, z1, z2 = z0 * keep, z1 * keep, z2 * keep
        else:
            wu = w
        vwu = v * wu[:, None]
        k1 = k * INV_D4
        k2 = tl.dot(k, ea, input_precision=PRECISION) * tl.dot(k, eb, input_precision=PRECISION)
        s0 = s0 + tl.sum(vwu, axis=0)
        s1 = s1 + tl.dot(tl.trans(k1), vwu, input_precision=PRECISION)
        s2 = s2 + tl.dot(tl.trans(k2), vwu, input_precision=PRECISION)
        z0 = z0 + tl.sum(wu, axis=0)
        z1 = z1 + tl.sum(k1 * wu[:, None], axis=0)
        z2 = z2 + tl.sum(k2 * wu[:, None], axis=0)
    tl.store(s0_out + i * D + di, s0)
    tl.store(s1_out + i * F * D + s1_idx, s1)
    tl.store(s2_out + i * P2 * D + s2_idx, s2)
    if j == 0:  # every value slice computes the same z; one writes it
        tl.store(z0_out + i, z0)
        tl.store(z1_out + i * F + fi, z1)
        tl.store(z2_out + i * P2 + pi, z2)


def _view_shapes(f: int, d: int):
    """The state parts' per-head shapes as the kernel addresses them: `common.state_shapes` without the unit
    leading axis of s0, z0, z1, z2 (s0 [D], s1 [F, D], s2 [P2, D], z0 [1], z1 [F], z2 [P2])."""
    return [s[1:] if s[0] == 1 else s for s in state_shapes(f, d)]


def _plan(q_shape, v_shape, p2, *, heads, chunk, eps, scale_dim, emit_output, normalize, save_states, segmented,
          has_weights, precision):
    """(grid, constexpr parameters, output shapes in kernel order) of one call; both launchers use it.

    The outputs are y (or num), den, the six final state arrays and the six saved ones, placeholders
    (shape `_PLACEHOLDER`) where the call does not produce them. Raises ValueError for shapes the kernel
    cannot take.
    """
    bh, tp, f = q_shape
    d = v_shape[-1]
    reason = unsupported_reason(f, d, chunk)
    if reason:
        raise ValueError(reason)
    if tp % chunk:
        raise ValueError(f"q must have a whole number of chunks ({chunk}) along its sequence axis; got {tp}")
    n = tp // chunk
    inv_sqrt_d, inv_d4 = taylor_scales(scale_dim)
    meta = dict(
        BH=bh, HEADS=heads, TP=tp, F=f, D=d, P2=p2, CHUNK=chunk, DB=VALUE_BLOCK, EMIT_OUTPUT=emit_output,
        NORMALIZE=normalize, SAVE_STATES=save_states, SEGMENTED=segmented, HAS_WEIGHTS=has_weights, EPS=float(eps),
        INV_SQRT_D=inv_sqrt_d, INV_D4=inv_d4, PRECISION=triton_input_precision(precision),
    )
    views = _view_shapes(f, d)
    shapes = [(bh, tp, d) if emit_output else _PLACEHOLDER,
              (bh, tp) if emit_output and not normalize else _PLACEHOLDER]
    shapes += [(bh,) + s for s in views]
    shapes += [(n, bh) + s if save_states else _PLACEHOLDER for s in views]
    return (bh, d // VALUE_BLOCK), meta, shapes


def _state_views(state: KernelState):
    """KernelState arrays (s0 [BH,1,D], …, z2 [BH,1,P2]) in the kernel's shapes (`_view_shapes`)."""
    bh, f, d = state.s1.shape
    return [x.reshape((bh,) + s) for x, s in zip(state, _view_shapes(f, d))]


def _results(outs, emit_output, normalize, save_states):
    """Kernel-order outputs → `prefill_gpu`'s return value: (y or (num, den [BH,Tp,1]) or None, final, saved)."""
    y = None
    if emit_output:
        y = outs[0] if normalize else (outs[0], outs[1][..., None])

    def state(arrays, lead):
        s0, s1, s2, z0, z1, z2 = arrays
        return KernelState(s0.reshape(lead + (1, s0.shape[-1])), s1, s2, z0.reshape(lead + (1, 1)),
                           z1.reshape(lead + (1, z1.shape[-1])), z2.reshape(lead + (1, z2.shape[-1])))

    final = state(outs[2:8], tuple(outs[2].shape[:1]))
    saved = state(outs[8:14], tuple(outs[8].shape[:2])) if save_states else None
    return y, final, saved


def prefill_triton(q, k, v, w, ea, eb, state: KernelState, seg=None, *, heads, chunk, eps, scale_dim, emit_output,
                   save_states, normalize=True, interpret=False, num_warps: int = 4, num_stages: int = 2):
    """Kernel-layout call through jax-triton, the contract of `gpu.prefill_gpu`.

    Args:
      q, k: [BH, Tp, F]; v: [BH, Tp, D] (Tp a multiple of `chunk`); w: [B, Tp, 1] fp32 token weights, or None
        for weight 1 everywhere; ea, eb: the expansion matrices [F, P2]; state: the initial `KernelState`;
        seg: None or the four `common.kernel_segments` arrays [B, Tp, 1].
      interpret: must be False: Triton's interpreter runs on torch tensors (`prefill_triton_torch`).
      num_warps, num_stages: Triton launch options.

    Returns:
      (y [BH,Tp,D] in v's dtype — or (num [BH,Tp,D], den [BH,Tp,1]) fp32 — or None, final `KernelState`,
       `KernelState` at every chunk start with a leading [N] axis or None).
    """
    if interpret:
        raise ValueError("prefill_triton: interpret=True is not supported; Triton's interpreter runs on torch "
                         "tensors (see prefill_triton_torch)")
    if _interpreted():
        raise ValueError("prefill_triton: triton was imported with TRITON_INTERPRET=1; jax-triton compiles the "
                         "kernel and needs it unset")
    jax_triton = _jax_triton()
    grid, meta, shapes = _plan(
        q.shape, v.shape, ea.shape[1], heads=heads, chunk=chunk, eps=eps, scale_dim=scale_dim,
        emit_output=emit_output, normalize=normalize, save_states=save_states, segmented=seg is not None,
        has_weights=w is not None, precision=matmul_precision(q.dtype),
    )
    placeholder = jnp.zeros(_PLACEHOLDER, _F32)
    w_arg = placeholder if w is None else w[..., 0].astype(_F32)
    seg_args = [placeholder] * 4 if seg is None else [x[..., 0] for x in seg]
    dtypes = [v.dtype if normalize and emit_output else _F32] + [_F32] * (len(shapes) - 1)
    out_types = [jax.ShapeDtypeStruct(s, dt) for s, dt in zip(shapes, dtypes)]
    outs = jax_triton.triton_call(
        q, k, v, w_arg, ea, eb, *seg_args, *_state_views(state),
        kernel=_prefill_kernel,
        **{_out_keyword(jax_triton): out_types},
        grid=grid,
        name="jrt_linear_attention_prefill_triton",
        num_warps=num_warps,
        num_stages=num_stages,
        compute_capability=_compute_capability(),
        **meta,
    )
    return _results(list(outs), emit_output, normalize, save_states)


@functools.cache
def _jax_triton():
    """jax_triton, imported once, with its dead-code-elimination rule adapted to the running jax.

    jax-triton 0.4.1 registers a rule `(used_outputs, eqn)` (jax 0.11's signature); jax 0.12 calls DCE rules as
    `(used_outputs, live_inputs, eqn)`, so every jit holding a kernel call failed ("takes 2 positional arguments
    but 3 were given"). The rule keeps every input and the call itself whatever is used, so the adapter drops
    `live_inputs` and changes nothing else; a rule of the right arity is left alone."""
    patch_triton_for_jax_triton()
    try:
        import jax_triton
    except ImportError as exc:
        need = "prefill_triton needs jax-triton and a CUDA jaxlib: pip install 'jrt-jax[gpu]'"
        raise ImportError(f"{need} ({exc})") from exc
    from jax._src.interpreters import partial_eval as pe

    prim = getattr(getattr(jax_triton, "triton_lib", None), "triton_kernel_call_p", None)
    rule = pe.dce_rules.get(prim) if prim is not None else None
    expects = len(inspect.signature(pe.dce_jaxpr_closed_call_rule).parameters)
    if rule is not None and expects == 3 and len(inspect.signature(rule).parameters) == 2:
        pe.dce_rules[prim] = lambda used_outputs, live_inputs, eqn: rule(used_outputs, eqn)
    return jax_triton


@functools.cache
def _out_keyword(jax_triton) -> str:
    """jax-triton 0.4 (jax >= 0.11, Python >= 3.12) names the outputs `out_type=`; 0.3, the last release for
    jax 0.10 / Python 3.11, names them `out_shape=` (0.4 still takes it, with a DeprecationWarning)."""
    return "out_type" if "out_type" in inspect.signature(jax_triton.triton_call).parameters else "out_shape"


def _compute_capability() -> int | None:
    """None (jax-triton asks the local GPU) where JAX has a CUDA device, else 90: the target when lowering for
    CUDA from a machine without one."""
    try:
        jax.devices("cuda")
    except RuntimeError:
        return 90
    return None


def _interpreted() -> bool:
    """Whether this process runs Triton kernels in Triton's interpreter (TRITON_INTERPRET=1 when triton was
    first imported: the interpreter also needs triton.language's own jitted functions, `tl.sum`, interpreted)."""
    return not isinstance(_prefill_kernel, triton.runtime.JITFunction)


def prefill_triton_torch(q, k, v, w, ea, eb, state: KernelState, seg=None, *, heads, chunk, eps, scale_dim,
                         emit_output, save_states, normalize=True, num_warps: int = 4, num_stages: int = 2):
    """The kernel on torch tensors: the arguments and return value of `prefill_triton`, as torch tensors.

    On a GPU it runs the compiled kernel on the tensors' device. In a process that imported triton with
    TRITON_INTERPRET=1 it runs Triton's interpreter (numpy on the CPU): how the tests exercise the kernel
    without a GPU.
    """
    import torch

    if q.device.type == "cpu" and not _interpreted():
        raise ValueError("prefill_triton_torch: the tensors are on the CPU, which needs Triton's interpreter: set "
                         "TRITON_INTERPRET=1 before triton is first imported")
    grid, meta, shapes = _plan(
        tuple(q.shape), tuple(v.shape), ea.shape[1], heads=heads, chunk=chunk, eps=eps, scale_dim=scale_dim,
        emit_output=emit_output, normalize=normalize, save_states=save_states, segmented=seg is not None,
        has_weights=w is not None, precision=matmul_precision(jnp.dtype(str(q.dtype).removeprefix("torch."))),
    )
    dev = q.device
    f32 = lambda x: x.to(device=dev, dtype=torch.float32).contiguous()
    placeholder = torch.zeros(_PLACEHOLDER, dtype=torch.float32, device=dev)
    w_arg = placeholder if w is None else f32(w[..., 0])
    seg_args = [placeholder] * 4 if seg is None else [f32(x[..., 0]) for x in seg]
    dtypes = [v.dtype if normalize and emit_output else torch.float32] + [torch.float32] * (len(shapes) - 1)
    outs = [torch.empty(s, dtype=dt, device=dev) for s, dt in zip(shapes, dtypes)]
    inputs = [x.contiguous() for x in (q, k, v)] + [w_arg, f32(ea), f32(eb), *seg_args]
    inputs += [f32(x) for x in _state_views(state)]
    _prefill_kernel[grid](*inputs, *outs, num_warps=num_warps, num_stages=num_stages, **meta)
    return _results(outs, emit_output, normalize, save_states)
