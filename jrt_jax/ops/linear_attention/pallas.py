"""implementation="pallas": the chunked prefill kernels of `pallas_kernels`, made differentiable.

The forward pass is the kernel (TPU Mosaic or GPU Triton; the Pallas interpreter on CPU). Under `jax.grad`
the kernel also writes the state at every chunk start, and the backward pass is the chunked XLA backward of
`xla.py`, which takes exactly those states. The PLA encoder state is the same kernel with outputs switched off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import pallas_kernels
from jrt_jax.ops.linear_attention import xla as _xla

_F32 = jnp.float32


def unsupported_reason(q, v, chunk_size: int, target: tuple[str, bool]) -> str | None:
    """None when the kernels take these inputs on the target backend, else the reason."""
    return pallas_kernels.unsupported_reason(q.shape, v.shape, q.dtype, backend=target[0], chunk_size=chunk_size)


def kernel_target() -> tuple[str, bool]:
    """(kernel backend, interpret) for the current device or `pallas_kernels.lowering_target` context.

    Read once per op call at trace time and passed down as a static argument, so jit caches keep the
    TPU and GPU traces apart.
    """
    return pallas_kernels.default_backend(), pallas_kernels.default_interpret()


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _core(q, k, v, w, kv0, z0, chunk, eps, scale_dim, target):
    y, (kv, z), _ = pallas_kernels.linear_attention_prefill(
        q, k, v, w=w, initial_state=(kv0, z0), chunk_size=chunk, eps=eps, scale_dim=scale_dim,
        backend=target[0], interpret=target[1],
    )
    return y, kv, z


def _core_fwd(q, k, v, w, kv0, z0, chunk, eps, scale_dim, target):
    y, (kv, z), states = pallas_kernels.linear_attention_prefill(
        q, k, v, w=w, initial_state=(kv0, z0), chunk_size=chunk, eps=eps, scale_dim=scale_dim, save_states=True,
        backend=target[0], interpret=target[1],
    )
    return (y, kv, z), (q, k, v, w, states)


def _core_bwd(chunk, eps, scale_dim, target, residuals, cotangents):
    del target
    return _xla.causal_core_bwd(chunk, eps, scale_dim, residuals, cotangents)


_core.defvjp(_core_fwd, _core_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def accumulate_state(k, v, w, chunk, scale_dim, target):
    """Σ w φ(k) vᵀ and Σ w φ(k) with the kernel (state-only pass); XLA backward."""
    _, (kv, z), _ = pallas_kernels.linear_attention_prefill(
        k, k, v, w=w, chunk_size=chunk, scale_dim=scale_dim, emit_output=False, backend=target[0],
        interpret=target[1],
    )
    return kv, z


def _accumulate_state_fwd(k, v, w, chunk, scale_dim, target):
    return accumulate_state(k, v, w, chunk, scale_dim, target), (k, v, w)


def _accumulate_state_bwd(chunk, scale_dim, target, residuals, cotangents):
    del target
    return _xla.accumulate_state_bwd(chunk, scale_dim, residuals, cotangents)


accumulate_state.defvjp(_accumulate_state_fwd, _accumulate_state_bwd)


def pallas_linear_attention(
    q, k, v, *, k_enc=None, v_enc=None, key_w=None, enc_w=None, eps, scale_dim=None, chunk_size, target,
    initial_state=None,
):
    """Same contract as `xla.chunked_linear_attention`, forward on the Pallas kernels."""
    b, _, h, f = q.shape
    p = 1 + f + f * (f + 1) // 2
    if initial_state is not None:
        kv0, z0 = initial_state
    else:
        kv0 = jnp.zeros((b, h, p, v.shape[-1]), _F32)
        z0 = jnp.zeros((b, h, p), _F32)
    if k_enc is not None and k_enc.shape[1] > 0:
        ekv, ez = accumulate_state(k_enc, v_enc, enc_w, chunk_size, scale_dim, target)
        kv0, z0 = kv0 + ekv, z0 + ez
    if key_w is not None:
        key_w = key_w.astype(_F32)
    return _core(q, k, v, key_w, kv0, z0, chunk_size, eps, scale_dim, target)
