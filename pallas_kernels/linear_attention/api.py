"""Entry point of the chunked linear-attention prefill kernels: layout, padding, state conversion, dispatch.

Backends: "tpu" (`tpu.py`, Pallas Mosaic TPU), "gpu" (`gpu.py`, Pallas with the Triton lowering) and
"triton" (`triton.py`, a Triton-language kernel called through jax-triton; CUDA only, no Pallas interpreter).
"tpu" and "gpu" run one chunk body (`common.chunk_body`); "triton" is the same algorithm in the Triton language,
which cannot call jnp code (its docstring says what it shares). Both GPU kernels stay because "gpu" is the one
that needs no jax-triton.

With `backend=None` the kernel is chosen by the platform the computation is lowered for
(`pallas_kernels.dispatch`): the Mosaic kernel on TPU; on CUDA the "triton" kernel where `jax_triton` imports
(a CUDA jaxlib with the `gpu` extra installed) and otherwise the Pallas-Triton "gpu" kernel, which lowers
without jax-triton, so exporting for CUDA from a CPU-only machine keeps working; and on any other platform
`fallback` — by default the TPU kernel in the Pallas interpreter, so the same code runs (slowly) on a CPU.
One jitted function therefore exports for ``["tpu", "cuda", "cpu"]`` with both kernels inside.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax.numpy as jnp

from pallas_kernels.dispatch import platform_dispatch
from pallas_kernels.linear_attention import common
from pallas_kernels.linear_attention.common import patch_triton_for_jax_triton  # re-exported

BACKENDS = ("tpu", "gpu", "triton")


@functools.cache
def jax_triton_available() -> bool:
    """Whether jax-triton can lower a kernel call here: it imports and jaxlib has the CUDA plugin's Triton
    kernel-call bindings (`jaxlib.gpu_triton.TritonKernel`). jax-triton 0.3 refuses to import without them; 0.4
    imports and then fails at lowering ("module 'jaxlib.gpu_triton' has no attribute 'TritonKernel'")."""
    patch_triton_for_jax_triton()
    try:
        import jax_triton  # noqa: F401
        from jaxlib import gpu_triton
    except ImportError:
        return False
    return hasattr(gpu_triton, "TritonKernel")


def gpu_custom_call_targets() -> tuple[str, ...]:
    """The custom-call targets of the GPU kernels, which `jax.export` must be told to accept
    (`disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(t) for t in ...]`): they are not on its list of
    stable targets. The Pallas-Triton kernel lowers to "__gpu$xla.gpu.triton"; jax-triton's kernel call is named by
    `jax_triton.CUSTOM_CALL_TARGET_NAME` from jax-triton 0.4 on ("triton_kernel_call_ffi") and was
    "triton_kernel_call" before (the name is read where jax-triton imports, both are listed where it does not)."""
    names = ["__gpu$xla.gpu.triton"]
    if jax_triton_available():
        import jax_triton

        names.append(getattr(jax_triton, "CUSTOM_CALL_TARGET_NAME", "triton_kernel_call"))
    else:
        names += ["triton_kernel_call", "triton_kernel_call_ffi"]
    return tuple(names)


def cuda_backend() -> str:
    """The kernel `backend=None` lowers for CUDA: "triton" where jax-triton imports, else "gpu"."""
    return "triton" if jax_triton_available() else "gpu"


def unsupported_reason(q_shape, v_shape, dtype, *, backend: str = "tpu", chunk_size: int = 64) -> str | None:
    """Why the `backend` kernel ("tpu" / "gpu" / "triton") cannot take these shapes, or None when it can."""
    if backend not in BACKENDS:
        return f"unknown kernel backend {backend!r}; expected one of {BACKENDS}"
    if jnp.dtype(dtype) not in (jnp.float32, jnp.bfloat16, jnp.float16):
        return f"dtype {jnp.dtype(dtype)} is not supported (float32, bfloat16, float16)"
    if chunk_size % 8 or chunk_size < 8:
        return f"chunk_size {chunk_size} is not a positive multiple of 8"
    f, d = q_shape[-1], v_shape[-1]
    if backend == "gpu":
        from pallas_kernels.linear_attention import gpu

        return gpu.unsupported_reason(f, d, chunk_size)
    if backend == "triton":
        try:
            from pallas_kernels.linear_attention import triton
        except ImportError:
            return "the triton backend needs the triton package: pip install 'jrt-jax[gpu]'"
        return triton.unsupported_reason(f, d, chunk_size)
    return None


class Options(NamedTuple):
    """Static options of one prefill call (what `fallback` receives first)."""

    chunk: int
    eps: float
    scale_dim: float
    emit_output: bool
    normalize: bool
    save_states: bool
    has_weights: bool  # the arrays after z0 start with w [B, T]
    has_segments: bool  # …followed by the four `document_flags` arrays


def split_args(options: Options, args):
    """(q, k, v, kv0, z0, w or None, segments or None) from the flat argument tuple."""
    q, k, v, kv0, z0, *rest = args
    w = rest.pop(0) if options.has_weights else None
    return q, k, v, kv0, z0, w, (tuple(rest) if options.has_segments else None)


def _kernel_call(backend, interpret, options: Options, *args):
    """One kernel on canonical arrays; returns a flat tuple, batch first (the `platform_dispatch` contract)."""
    chunk, eps, scale_dim, emit_output, normalize, save_states = options[:6]
    q, k, v, kv0, z0, w, seg = split_args(options, args)
    b, t, h, f = q.shape
    n = -(-t // chunk)
    tp = n * chunk
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    w = jnp.ones((b, t), jnp.float32) if w is None else w.astype(jnp.float32)
    w = jnp.pad(w, [(0, 0), (0, tp - t)])[..., None]  # [B, Tp, 1]
    heads_major = lambda x: jnp.pad(x, pad).transpose(0, 2, 1, 3).reshape(b * h, tp, x.shape[-1])
    ea, eb = (jnp.asarray(e) for e in common.expansion_matrices(f, scale_dim))
    state = common.split_state(kv0, z0, f)
    kseg = common.kernel_segments(seg, chunk) if seg else None
    if backend == "tpu":
        from pallas_kernels.linear_attention.tpu import prefill_tpu as kernel
    elif backend == "gpu":
        from pallas_kernels.linear_attention.gpu import prefill_gpu as kernel
    else:
        from pallas_kernels.linear_attention.triton import prefill_triton as kernel
    y, final, chunk_states = kernel(
        heads_major(q), heads_major(k), heads_major(v), w, ea, eb, state, kseg, heads=h, chunk=chunk, eps=eps,
        scale_dim=scale_dim, emit_output=emit_output, normalize=normalize, save_states=save_states,
        interpret=interpret,
    )
    seq_major = lambda x: x.reshape(b, h, tp, x.shape[-1]).transpose(0, 2, 1, 3)[:, :t]
    out = []
    if y is not None:
        out += [seq_major(y)] if normalize else [seq_major(y[0]), seq_major(y[1])[..., 0]]
    out += list(common.merge_state(final, b, h, f))
    if chunk_states is not None:  # [N, B, …] → batch first
        out += [jnp.moveaxis(x, 0, 1) for x in common.merge_state(chunk_states, b, h, f)]
    return tuple(out)


def _unsupported(platform, reason):
    def fail(*_):
        raise ValueError(f"linear_attention_prefill: the {platform} kernel cannot take these inputs: {reason}")

    return fail


def linear_attention_prefill(
    q,
    k,
    v,
    *,
    w=None,
    doc=None,
    segments=None,
    initial_state=None,
    chunk_size: int = 64,
    eps: float = 1e-12,
    scale_dim: float | None = None,
    emit_output: bool = True,
    normalize: bool = True,
    save_states: bool = False,
    backend: str | None = None,
    interpret: bool = False,
    fallback: Callable | None = None,
):
    """Chunked causal Based linear attention with the Taylor map folded in, starting from `initial_state`.

    Args:
      q, k: [B, T, H, F]; v: [B, T, H, D] (float32 / bfloat16 / float16). Any T: padded inside.
      w: optional [B, T] per-token weight (1 real, 0 padding that contributes nothing).
      doc: optional [B, T] int document labels of packed sequences (equal labels = one document, contiguous;
        the row's first label is the document `initial_state` belongs to): no key crosses a document boundary.
      segments: `common.document_flags(doc, chunk_size)` when the caller already has them (instead of doc).
      initial_state: optional compact state (kv [B,H,P,D], z [B,H,P]), e.g. the PLA encoder state.
      emit_output: False accumulates the state only (no outputs, no quadratic part).
      normalize: False returns the numerator [B,T,H,D] and denominator [B,T,H] (fp32, no eps) instead of y,
        for callers that add several reads under one denominator.
      save_states: also return the state at the start of every chunk (for the backward pass).
      backend: "tpu" (Mosaic), "gpu" (Pallas-Triton) or "triton" (Triton through jax-triton) to run that kernel
        whatever the platform (`interpret=True` for the Pallas interpreter; not with "triton", whose interpreter
        runs on torch tensors: `triton.prefill_triton_torch`); None (default) to choose by the platform at
        lowering time (see the module docstring).
      fallback: with `backend=None`, what runs where no kernel applies (platforms other than TPU and CUDA,
        and a platform whose kernel cannot take the shapes): `fallback(options, *args)` with `Options` and the
        flat arrays (`split_args` unpacks them), returning the same flat tuple as the kernels. Default: the
        TPU kernel in the Pallas interpreter, and an error naming the reason where a kernel cannot run.

    Returns:
      (y [B,T,H,D] in v's dtype — or (num, den) — or None, (kv, z) final compact fp32 state (the last
       document's), chunk-start states (kv [N,B,H,P,D], z [N,B,H,P]) or None).
    """
    common.check_inputs(q, k, v, w, chunk_size)
    b, t, h, f = q.shape
    d = v.shape[-1]
    if backend is not None:
        reason = unsupported_reason(q.shape, v.shape, q.dtype, backend=backend, chunk_size=chunk_size)
        if reason:
            raise ValueError(f"linear_attention_prefill: {reason}")
        if backend == "triton" and interpret:
            raise ValueError("linear_attention_prefill: interpret=True cannot run backend='triton'; Triton's interpreter "
                             "runs on torch tensors (pallas_kernels.linear_attention.triton.prefill_triton_torch)")
    scale_dim = float(f if scale_dim is None else scale_dim)
    if initial_state is None:
        p = common.compact_features(f)
        initial_state = (jnp.zeros((b, h, p, d), jnp.float32), jnp.zeros((b, h, p), jnp.float32))
    if doc is not None and segments is None:
        segments = common.document_flags(doc, chunk_size)
    args = (q, k, v, initial_state[0].astype(jnp.float32), initial_state[1].astype(jnp.float32))
    args += (() if w is None else (w.astype(jnp.float32),)) + tuple(segments or ())
    options = Options(chunk_size, eps, scale_dim, emit_output, normalize, save_states, w is not None,
                      segments is not None)
    if backend is not None:
        out = _kernel_call(backend, interpret, options, *args)
    else:
        branches = {}
        for platform, kernel_backend in (("tpu", "tpu"), ("cuda", cuda_backend())):
            reason = unsupported_reason(q.shape, v.shape, q.dtype, backend=kernel_backend, chunk_size=chunk_size)
            if reason is None:
                branches[platform] = functools.partial(_kernel_call, kernel_backend, False, options)
            elif fallback is None:
                branches[platform] = _unsupported(platform, reason)
        default = (functools.partial(fallback, options) if fallback is not None
                   else functools.partial(_kernel_call, "tpu", True, options))
        out = platform_dispatch(args, default=default, **branches)
    return _unflatten(list(out), emit_output, normalize, save_states)


def _unflatten(out, emit_output, normalize, save_states):
    y = None
    if emit_output:
        y = out.pop(0) if normalize else (out.pop(0), out.pop(0))
    final = (out[0], out[1])
    saved = (jnp.moveaxis(out[2], 1, 0), jnp.moveaxis(out[3], 1, 0)) if save_states else None
    return y, final, saved
