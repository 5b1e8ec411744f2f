"""Choose a kernel by the platform a computation is lowered for, inside one trace.

`platform_dispatch(args, tpu=f_tpu, cuda=f_cuda, default=f_other)` stages out one operation whose lowering
is `f_tpu` on TPU, `f_cuda` on CUDA and `f_other` elsewhere. A function jitted once and exported for
``platforms=["tpu", "cuda", "cpu"]`` from any machine then holds the Mosaic TPU kernel, the GPU kernel and the
CPU path, each lowered only for its own platform; no context manager or device query is involved.

Why not `jax.lax.platform_dependent`: it lowers every branch for every platform being exported (jax's
`_cond_lowering`, jax 0.10 to 0.12), and a `pallas_call` cannot be lowered for a platform it was not written for.
Exported for ["tpu", "cuda", "cpu"], the TPU branch fails with "Only interpret mode is supported on CPU
backend"; for ["tpu", "cuda"] with "Compiler params for platform tpu cannot be used for gpu lowering". A
primitive with one lowering rule per platform is what jax itself uses for platform-specific code:
`mlir.lower_per_platform` lowers each rule for its platform only.

Contract of the functions: they take and return flat tuples of arrays, all with the batch on axis 0, with the
same output shapes and dtypes on every platform (checked at trace time). That is what makes the batching rule
(`jax.vmap`) a reshape: the mapped axis is folded into the batch axis.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from jax.extend import core as jex_core
from jax.interpreters import batching, mlir

PLATFORMS = ("tpu", "cuda", "rocm", "cpu")

_dispatch_p = jex_core.Primitive("jrt_platform_dispatch")
_dispatch_p.multiple_results = True


def platform_dispatch(args, *, default: Callable, **per_platform: Callable):
    """Run `per_platform[p](*args)` on platform p (one of PLATFORMS), `default(*args)` on any other.

    Args:
      args: a tuple of arrays, each with the batch on axis 0.
      default: the implementation for platforms without their own.
      per_platform: `tpu=`, `cuda=`, `rocm=`, `cpu=` implementations (None entries are ignored).

    Returns:
      the tuple of arrays the chosen implementation returns.
    """
    unknown = set(per_platform) - set(PLATFORMS)
    if unknown:
        raise ValueError(f"platform_dispatch: unknown platform(s) {sorted(unknown)}; expected some of {PLATFORMS}")
    impls = tuple((p, per_platform.get(p) or default) for p in PLATFORMS) + (("default", default),)
    return tuple(_dispatch_p.bind(*args, impls=impls))


def _abstract_eval(*avals, impls):
    """Output types from the default implementation; each platform's is checked against them when lowered
    (so an implementation that raises, e.g. a kernel that cannot take the shapes, raises only there)."""
    out = jax.eval_shape(dict(impls)["default"], *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    return [jax.core.ShapedArray(o.shape, o.dtype) for o in out]


_dispatch_p.def_abstract_eval(_abstract_eval)


def _impl(*args, impls):
    """Outside jit: stage the primitive out and let the lowering pick the platform's implementation."""
    return tuple(jax.jit(lambda *a: _dispatch_p.bind(*a, impls=impls))(*args))


_dispatch_p.def_impl(_impl)


def _lowering(ctx, *args, impls, platform):
    fn = dict(impls)[platform]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in ctx.avals_in]
    got = [(tuple(o.shape), np.dtype(o.dtype)) for o in jax.eval_shape(fn, *specs)]
    want = [(tuple(a.shape), np.dtype(a.dtype)) for a in ctx.avals_out]
    if got != want:
        raise TypeError(f"platform_dispatch: the {platform} implementation returns {got}, the default {want}")
    return mlir.lower_fun(lambda *a: tuple(fn(*a)), multiple_results=True)(ctx, *args)


for _p in PLATFORMS:
    mlir.register_lowering(_dispatch_p, functools.partial(_lowering, platform=_p), platform=_p)


def _batching(args, dims, *, impls):
    """vmap: fold the mapped axis into the batch axis (axis 0 of every input and output)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    flat = []
    for a, d in zip(args, dims):
        a = jax.numpy.broadcast_to(a, (size,) + a.shape) if d is None else jax.numpy.moveaxis(a, d, 0)
        flat.append(a.reshape((size * a.shape[1],) + a.shape[2:]))
    outs = _dispatch_p.bind(*flat, impls=impls)
    return [o.reshape((size, o.shape[0] // size) + o.shape[1:]) for o in outs], [0] * len(outs)


batching.primitive_batchers[_dispatch_p] = _batching
