"""implementation="pallas" and "auto": the prefill kernels of `pallas_kernels`, chosen by platform, made
differentiable.

The forward pass is one `pallas_kernels.linear_attention_prefill` call with `backend=None`: the platform the
computation is lowered for picks the kernel (Mosaic on TPU, Triton on CUDA). Off those platforms, "pallas"
runs the TPU kernel in the Pallas interpreter (what the CPU tests exercise) and "auto" runs the chunked XLA
forward of `xla.py`; "auto" also takes the XLA forward on a platform whose kernel cannot take the shapes.
Under `jax.grad` the forward also writes the state at every chunk start, and the backward pass is the chunked
XLA backward of `xla.py`, which takes exactly those states, whatever ran forward. Both functions follow the
backend contract of `api.py` (`causal`, `state`), packed documents included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import pallas_kernels
from pallas_kernels.linear_attention.api import split_args
from jrt_jax.ops.linear_attention import xla as _xla

_F32 = jnp.float32


def unsupported_reason(q, v, chunk_size: int) -> str | None:
    """None when the TPU kernel (which every platform can run, the CPU through the interpreter) takes these
    inputs, else the reason. The GPU kernel's own limits are checked when lowering for CUDA."""
    return pallas_kernels.unsupported_reason(q.shape, v.shape, q.dtype, backend="tpu", chunk_size=chunk_size)


def _xla_fallback(options, *args, zero_start=False):
    """The XLA forward in the kernels' flat-tuple form (`pallas_kernels.linear_attention_prefill(fallback=)`)."""
    q, k, v, kv0, z0, w, seg = split_args(options, args)
    if not options.emit_output:
        return tuple(_xla.accumulate_state(k, v, w, seg, kv0, z0, options.chunk, options.scale_dim))
    y, kv, z, states = _xla._forward(q, k, v, w, seg, kv0, z0, options.chunk, options.eps, options.scale_dim,
                                     options.save_states, options.normalize, zero_start)
    out = [y.astype(v.dtype)] if options.normalize else list(y)
    out += [kv, z]
    if options.save_states:
        out += [jnp.moveaxis(x, 0, 1) for x in states]
    return tuple(out)


def _prefill(q, k, v, w, seg, kv0, z0, *, chunk, eps, scale_dim, auto, emit_output=True, normalize=True,
             save_states=False, zero_start=False):
    return pallas_kernels.linear_attention_prefill(
        q, k, v, w=w, segments=seg, initial_state=(kv0, z0), chunk_size=chunk, eps=eps, scale_dim=scale_dim,
        emit_output=emit_output, normalize=normalize, save_states=save_states,
        fallback=(functools.partial(_xla_fallback, zero_start=True) if zero_start else _xla_fallback) if auto else None,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11, 12))
def _core(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, normalize, auto, zero_start):
    y, (kv, z), _ = _prefill(q, k, v, w, seg, kv0, z0, chunk=chunk, eps=eps, scale_dim=scale_dim, auto=auto,
                             normalize=normalize, zero_start=zero_start)
    return y, kv, z


def _core_fwd(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, normalize, auto, zero_start):
    y, (kv, z), states = _prefill(q, k, v, w, seg, kv0, z0, chunk=chunk, eps=eps, scale_dim=scale_dim, auto=auto,
                                  normalize=normalize, save_states=True, zero_start=zero_start)
    return (y, kv, z), (q, k, v, w, seg, states)


def _core_bwd(chunk, eps, scale_dim, normalize, auto, zero_start, residuals, cotangents):
    del auto
    return _xla.causal_core_bwd(chunk, eps, scale_dim, normalize, zero_start, residuals, cotangents)


_core.defvjp(_core_fwd, _core_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _accumulate(k, v, w, seg, kv0, z0, chunk, scale_dim, auto):
    _, (kv, z), _ = _prefill(k, k, v, w, seg, kv0, z0, chunk=chunk, eps=0.0, scale_dim=scale_dim, auto=auto,
                             emit_output=False)
    return kv, z


def _accumulate_fwd(k, v, w, seg, kv0, z0, chunk, scale_dim, auto):
    return _accumulate(k, v, w, seg, kv0, z0, chunk, scale_dim, auto), (k, v, w, seg)


def _accumulate_bwd(chunk, scale_dim, auto, residuals, cotangents):
    del auto
    return _xla.accumulate_state_bwd(chunk, scale_dim, residuals, cotangents)


_accumulate.defvjp(_accumulate_fwd, _accumulate_bwd)


def causal(q, k, v, w, seg, kv0, z0, *, chunk, eps, scale_dim, normalize=True, auto=False, zero_start=False):
    """`xla.causal` with the platform's kernel as the forward pass."""
    if w is not None:
        w = w.astype(_F32)
    return _core(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, normalize, auto, zero_start)


def state(k, v, w, seg, kv0, z0, *, chunk, scale_dim, auto=False):
    """`xla.state` with the platform's kernel (outputs switched off) as the forward pass."""
    if w is not None:
        w = w.astype(_F32)
    return _accumulate(k, v, w, seg, kv0, z0, chunk, scale_dim, auto)
