"""Entry point of the chunked linear-attention prefill kernels: layout, padding, state conversion, dispatch."""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

from pallas_kernels.linear_attention import common

BACKENDS = ("tpu", "gpu")

_TARGET: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar("pallas_target", default=None)


@contextlib.contextmanager
def lowering_target(backend: str, *, interpret: bool = False):
    """Trace the kernels for `backend` ("tpu" / "gpu") whatever the local device, e.g. to `jax.export` for
    real hardware from a CPU-only machine:

        with pallas_kernels.lowering_target("gpu"):
            jax.export.export(jax.jit(fn), platforms=["cuda"], ...)(*shapes)
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    token = _TARGET.set((backend, interpret))
    try:
        yield
    finally:
        _TARGET.reset(token)


def default_backend() -> str:
    """The kernel flavour for the default JAX device: "gpu" on CUDA, else "tpu" (interpret mode on CPU)."""
    target = _TARGET.get()
    if target is not None:
        return target[0]
    return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else "tpu"


def default_interpret() -> bool:
    """Kernels run in interpret mode when no accelerator is present (or as `lowering_target` says)."""
    target = _TARGET.get()
    if target is not None:
        return target[1]
    return jax.default_backend() == "cpu"


def unsupported_reason(q_shape, v_shape, dtype, *, backend: str | None = None, chunk_size: int = 64) -> str | None:
    """Why the kernel cannot take these shapes on this backend, or None when it can (used by `auto` dispatch)."""
    backend = backend or default_backend()
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
    return None


def linear_attention_prefill(
    q,
    k,
    v,
    *,
    w=None,
    initial_state=None,
    chunk_size: int = 64,
    eps: float = 1e-12,
    scale_dim: float | None = None,
    emit_output: bool = True,
    save_states: bool = False,
    backend: str | None = None,
    interpret: bool | None = None,
):
    """Chunked causal Based linear attention with the Taylor map folded in, starting from `initial_state`.

    Args:
      q, k: [B, T, H, F]; v: [B, T, H, D] (float32 / bfloat16 / float16). Any T: padded inside.
      w: optional [B, T] per-token weight (1 real, 0 padding that contributes nothing).
      initial_state: optional compact state (kv [B,H,P,D], z [B,H,P]), e.g. the PLA encoder state.
      emit_output: False accumulates the state only (no outputs, no quadratic part).
      save_states: also return the state at the start of every chunk (for the backward pass).
      backend: "tpu" (Mosaic) or "gpu" (Triton); default from the JAX backend.
      interpret: run the kernel in the Pallas interpreter (default: True on CPU).

    Returns:
      (y [B,T,H,D] in v's dtype or None, (kv, z) final compact fp32 state,
       chunk-start states (kv [N,B,H,P,D], z [N,B,H,P]) or None).
    """
    common.check_inputs(q, k, v, w, chunk_size)
    backend = backend or default_backend()
    reason = unsupported_reason(q.shape, v.shape, q.dtype, backend=backend, chunk_size=chunk_size)
    if reason:
        raise ValueError(f"linear_attention_prefill: {reason}")
    interpret = default_interpret() if interpret is None else interpret
    b, t, h, f = q.shape
    d = v.shape[-1]
    scale_dim = float(f if scale_dim is None else scale_dim)
    n = -(-t // chunk_size)
    tp = n * chunk_size
    w = jnp.ones((b, t), jnp.float32) if w is None else w.astype(jnp.float32)
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    w = jnp.pad(w, [(0, 0), (0, tp - t)])[..., None]  # [B, Tp, 1]
    heads_major = lambda x: jnp.pad(x, pad).transpose(0, 2, 1, 3).reshape(b * h, tp, x.shape[-1])
    ea, eb = (jnp.asarray(e) for e in common.expansion_matrices(f, scale_dim))
    state = (common.zero_kernel_state(b * h, f, d) if initial_state is None
             else common.split_state(initial_state[0], initial_state[1], f))
    if backend == "tpu":
        from pallas_kernels.linear_attention.tpu import prefill_tpu as kernel
    else:
        from pallas_kernels.linear_attention.gpu import prefill_gpu as kernel
    y, final, chunk_states = kernel(
        heads_major(q), heads_major(k), heads_major(v), w, ea, eb, state, heads=h, chunk=chunk_size, eps=eps,
        scale_dim=scale_dim, emit_output=emit_output, save_states=save_states, interpret=interpret,
    )
    if y is not None:
        y = y.reshape(b, h, tp, d).transpose(0, 2, 1, 3)[:, :t]
    saved = None if chunk_states is None else common.merge_state(chunk_states, b, h, f)
    return y, common.merge_state(final, b, h, f), saved
