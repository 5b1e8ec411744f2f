"""`context_parallel`: run a `jrt_jax.parallel` op on global arrays, doing the `jax.shard_map` itself."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jrt_jax.parallel import attention as _attention
from jrt_jax.parallel import halo as _halo
from jrt_jax.parallel import lasp as _linear
from jrt_jax.parallel import positions as _positions


class _Spec(NamedTuple):
    """Where each array argument of an op lives: "seq" = [B, T, …] split on T, "batch" = [B, …] (split on the
    batch axis only), "rep" = replicated. Positional arguments first, then keyword arguments by name."""

    positional: tuple[str, ...]
    keywords: dict
    outputs: Callable  # static kwargs → spec of the output(s): "seq" / tuple of roles


_SEQ_KW = {"segment_ids": "seq", "mask": "seq"}
_SPECS = {
    _linear.linear_attention: _Spec(("seq", "seq", "seq"), {**_SEQ_KW, "initial_state": "batch"},
                                    lambda kw: ("seq", "batch") if kw.get("return_state") else "seq"),
    _linear.prefix_linear_attention: _Spec(("seq",) * 5, {**_SEQ_KW, "enc_mask": "seq", "initial_state": "batch"},
                                           lambda kw: ("seq", "batch") if kw.get("return_state") else "seq"),
    _halo.sliding_window_attention: _Spec(("seq", "seq", "seq"), dict(_SEQ_KW), lambda kw: "seq"),
    _halo.causal_conv1d: _Spec(("seq", "rep"), {**_SEQ_KW, "initial_tail": "batch"},
                               lambda kw: ("seq", "batch") if kw.get("return_tail") else "seq"),
    _attention.causal_attention: _Spec(("seq", "seq", "seq"), dict(_SEQ_KW), lambda kw: "seq"),
}


def _pspec(role, ndim, axis_name, batch_axis):
    if role == "rep":
        return P()
    if role == "batch":
        return P(batch_axis, *([None] * (ndim - 1)))
    return P(batch_axis, axis_name, *([None] * (ndim - 2)))


def _tree_spec(x, role, axis_name, batch_axis):
    return jax.tree.map(lambda a: _pspec(role, a.ndim, axis_name, batch_axis), x)


def _placed(fn, mesh, in_specs):
    """On a mesh with Explicit axes (`jax.make_mesh`'s default) arrays carry their sharding in their type and
    `shard_map` wants it to match `in_specs`: reshard them first. Auto meshes need nothing (jit reshards)."""
    explicit = any(str(t).endswith("Explicit") for t in getattr(mesh, "axis_types", ()))
    if not explicit:
        return fn

    def placed(*args):
        put = lambda spec, x: jax.reshard(x, NamedSharding(mesh, spec))
        return fn(*jax.tree.map(put, tuple(in_specs), args, is_leaf=lambda x: isinstance(x, P)))

    return placed


def check_mesh(mesh, axis_name, batch_axis, *, batch_name: str = "batch_axis"):
    """The one check of a (mesh, sequence axis, batch axes) triple; `batch_name` is the caller's argument name."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    batch = _batch_axes(batch_axis)
    for what, name in (("axis_name", axis_name),) + tuple((batch_name, a) for a in batch):
        if name is not None and name not in names:
            raise ValueError(f"{what}={name!r} is not an axis of the mesh; its axes are {names}")
    if axis_name in batch:
        raise ValueError(f"{batch_name} and axis_name must differ; both name {axis_name!r}")


def _batch_axes(batch_axis) -> tuple:
    """batch_axis as a tuple of mesh axis names (None: none; a name; or a tuple of names, e.g. data × fsdp)."""
    if batch_axis is None:
        return ()
    return tuple(batch_axis) if isinstance(batch_axis, (tuple, list)) else (batch_axis,)


def _pad_encoder(args, kwargs, t):
    """PLA with a global [B, M, …] encoder (M ≤ T): pad it to T slots and mark the first M in enc_mask."""
    q, k, v, k_enc, v_enc = args
    m = k_enc.shape[1]
    if v_enc.shape[1] != m:
        raise ValueError(f"v_enc: encoder length (axis 1) must be {m} as k_enc's; got {v_enc.shape[1]}")
    if m > t:
        raise ValueError(f"k_enc: encoder length M = {m} must be <= the sequence length T = {t}")
    if m == t:
        return args, kwargs
    pad = lambda x: jnp.pad(x, [(0, 0), (0, t - m)] + [(0, 0)] * (x.ndim - 2))
    b = q.shape[0]
    enc_mask = kwargs.get("enc_mask")
    enc_mask = jnp.ones((b, m), bool) if enc_mask is None else jnp.asarray(enc_mask).astype(bool)
    if tuple(enc_mask.shape) != (b, m):
        raise ValueError(f"enc_mask must have shape [batch, M] = {(b, m)}; got {tuple(enc_mask.shape)}")
    kwargs = dict(kwargs, enc_mask=jnp.pad(enc_mask, [(0, 0), (0, t - m)]))
    return (q, k, v, pad(k_enc), pad(v_enc)), kwargs


def context_parallel(op, mesh: Mesh, axis_name="sequence", *, batch_axis=None, jit: bool = True):
    """Wrap a `jrt_jax.parallel` op so that it takes GLOBAL arrays and runs it under `jax.shard_map`.

    The returned function takes the op's arguments, minus `axis_name`, with every [B, T, …] array global: it
    is split on T over `mesh` axis `axis_name` (and on B over `batch_axis`, when given), the op runs on each
    shard, and the outputs are global again ([B, T, …] split the same way; states / tails split on B only).

        la = context_parallel(jrt_jax.parallel.linear_attention, mesh, "sequence", batch_axis="data")
        y = la(q, k, v, segment_ids=seg)                       # == jrt_jax.ops.linear_attention(q, k, v, …)

    `prefix_linear_attention` also takes the ops' encoder layout, k_enc / v_enc of length M ≤ T (with an
    optional [B, M] enc_mask): it is padded to T slots with the slots ≥ M masked out. That pad is a copy (and,
    for an encoder already sharded on T, a reshard); at long T pass the slot-aligned layout directly: k_enc /
    v_enc of length T with enc_mask [B, T] marking the encoder slots.

    The shard_map runs with `check_vma=False` (see `jrt_jax.parallel`); on a mesh with Explicit axes the
    inputs are resharded to the specs first.

    Args:
      op: one of `linear_attention`, `prefix_linear_attention`, `sliding_window_attention`, `causal_conv1d`,
        `causal_attention` from `jrt_jax.parallel`.
      mesh: a `jax.sharding.Mesh`.
      axis_name: the mesh axis the sequence dimension is split over.
      batch_axis: optional mesh axis the batch dimension is split over (e.g. "data"), or a tuple of axes
        (e.g. ("data", "fsdp"), as the trainer splits its batch).
      jit: wrap in `jax.jit` (default). Non-array keyword arguments (window, return_state, …) are static.

    Raises (when called):
      ValueError: an axis not in the mesh; T not a multiple of the axis size, or B of the batch axis size.
        Uneven shards are an error rather than padded silently: padding changes what `return_state` /
        `return_tail` mean and costs a copy; pad yourself with segment id 0 (or mask False), which every op
        here excludes exactly.
    """
    if op not in _SPECS:
        names = ", ".join(f.__name__ for f in _SPECS)
        raise ValueError(f"context_parallel supports the jrt_jax.parallel ops {names}; got {op!r}")
    check_mesh(mesh, axis_name, batch_axis)
    spec = _SPECS[op]
    if isinstance(batch_axis, list):
        batch_axis = tuple(batch_axis)
    n = mesh.shape[axis_name]
    nb = 1
    for a in _batch_axes(batch_axis):
        nb *= mesh.shape[a]

    def call(*args, **kwargs):
        if "axis_name" in kwargs:
            raise TypeError("context_parallel: axis_name is given to context_parallel, not to the wrapped op")
        if len(args) != len(spec.positional):
            raise TypeError(f"{op.__name__} takes {len(spec.positional)} positional arrays; got {len(args)}")
        b, t = args[0].shape[:2]
        if op is _linear.prefix_linear_attention:
            args, kwargs = _pad_encoder(args, kwargs, t)
        if t % n:
            raise ValueError(
                f"the sequence length T = {t} is not divisible by the size {n} of mesh axis {axis_name!r}: "
                f"pad the sequence to a multiple of {n} (with segment id 0 / mask False) or use another axis size"
            )
        if b % nb:
            raise ValueError(f"the batch size B = {b} is not divisible by the size {nb} of mesh axis {batch_axis!r}")
        arrays = {k: v for k, v in kwargs.items() if k in spec.keywords and v is not None}
        static = {k: v for k, v in kwargs.items() if k not in arrays}
        key = (tuple(sorted(static.items())), jax.tree.structure((tuple(args), arrays)),
               tuple(jax.tree.leaves(jax.tree.map(jnp.ndim, (tuple(args), arrays)))))
        try:
            fn = cache.get(key)
        except TypeError:  # an unhashable static argument: no caching
            key, fn = None, None
        if fn is None:
            fn = _build(static, args, arrays)
            if key is not None:
                cache[key] = fn
        return fn(tuple(args), arrays)

    cache = {}

    def _build(static, args, arrays):
        in_specs = (
            tuple(_tree_spec(a, r, axis_name, batch_axis) for a, r in zip(args, spec.positional)),
            {k: _tree_spec(v, spec.keywords[k], axis_name, batch_axis) for k, v in arrays.items()},
        )
        roles = spec.outputs(static)
        role_spec = lambda r: P(batch_axis, axis_name) if r == "seq" else P(batch_axis)  # a prefix of any rank
        out_specs = role_spec(roles) if isinstance(roles, str) else tuple(role_spec(r) for r in roles)

        def local(pos, kw):
            return op(*pos, axis_name=axis_name, **kw, **static)

        fn = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
        fn = _placed(fn, mesh, in_specs)
        return jax.jit(fn) if jit else fn

    functools.update_wrapper(call, op)
    call.__doc__ = f"{op.__name__} on global arrays, context-parallel over mesh axis {axis_name!r}.\n\n" + (
        op.__doc__ or "")
    return call


def global_document_positions(mask, segment_ids, mesh: Mesh, axis_name="sequence", *, batch_axis=None):
    """`positions.document_positions` on global [B, T] arrays (`jrt_jax.nn.padding.document_positions`,
    context-parallel): mask / segment_ids may be None (not both needed)."""
    check_mesh(mesh, axis_name, batch_axis)
    ref = mask if mask is not None else segment_ids
    if ref is None:
        raise ValueError("global_document_positions needs a mask or segment_ids (else positions are 0 … T-1)")
    b, t = ref.shape
    n = mesh.shape[axis_name]
    if t % n:
        raise ValueError(f"the sequence length T = {t} is not divisible by the size {n} of mesh axis {axis_name!r}")
    arrays = {k: v for k, v in (("mask", mask), ("segment_ids", segment_ids)) if v is not None}
    spec = P(batch_axis, axis_name)

    def local(kw):
        return _positions.document_positions(kw.get("mask"), kw.get("segment_ids"), axis_name=axis_name,
                                             batch=kw[next(iter(kw))].shape[0], local_len=t // n)

    in_specs = ({k: spec for k in arrays},)
    fn = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)
    return jax.jit(_placed(fn, mesh, in_specs))(arrays)
