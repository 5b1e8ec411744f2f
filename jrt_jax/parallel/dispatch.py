"""The one context-parallel decision: `run(op, …)` calls an op of `jrt_jax.ops`, or its sequence-sharded twin
while `sequence_parallel(mesh, axis)` is active.

    with sequence_parallel(mesh, "sequence", batch_axes=("data", "fsdp")):
        y = parallel.run(ops.linear_attention, q, k, v, mask=mask)   # == ops.linear_attention(q, k, v, mask=mask)

Every mixer of `jrt_jax.nn` makes exactly this call, so the choice between the local op and its twin of this
package (LASP-2 states, halos, the K/V all-gather; `context_parallel` does the `shard_map` on global arrays)
is made here and nowhere else. Arrays stay global [B, T, …] either way, results are the same, and the
context is read at TRACE time, so enter it around the code that traces the model.

Returned states follow the op: `return_state=True` / `return_tail=True` give (y, state) on both paths. Ask for
the state only when it is used (a prefill): under context parallelism it costs a `psum`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

from jax.sharding import Mesh

from jrt_jax import ops
from jrt_jax.parallel import attention as _attention
from jrt_jax.parallel import halo as _halo
from jrt_jax.parallel import lasp as _lasp
from jrt_jax.parallel.sharded import check_mesh, context_parallel

#: op of `jrt_jax.ops` → its context-parallel twin (called inside `shard_map` by `context_parallel`)
TWINS = {
    ops.linear_attention: _lasp.linear_attention,
    ops.prefix_linear_attention: _lasp.prefix_linear_attention,
    ops.sliding_window_attention: _halo.sliding_window_attention,
    ops.causal_conv1d: _halo.causal_conv1d,
    ops.causal_attention: _attention.causal_attention,
}

_CURRENT: contextvars.ContextVar = contextvars.ContextVar("jrt_sequence_parallel", default=None)


class SequenceParallel(NamedTuple):
    """The active sequence axis: `mesh`, the axis the time dimension is split over, and the batch's axes."""

    mesh: Mesh
    axis_name: str
    batch_axes: tuple | str | None

    @property
    def size(self) -> int:
        """Number of shards along the sequence."""
        return int(self.mesh.shape[self.axis_name])

    def call(self, op, *args, **kwargs):
        """Run the `jrt_jax.parallel` op `op` on GLOBAL arrays under `shard_map` (see `context_parallel`)."""
        return context_parallel(op, self.mesh, self.axis_name, batch_axis=self.batch_axes, jit=False)(
            *args, **kwargs)


@contextlib.contextmanager
def sequence_parallel(mesh: Mesh, axis_name: str = "sequence", *, batch_axes=None):
    """Make the ops run through `run` while this context is active compute context-parallel over `mesh` axis
    `axis_name` (the mixers of `jrt_jax.nn` all do).

    Args:
      mesh: a `jax.sharding.Mesh` holding `axis_name` (and `batch_axes`).
      axis_name: the mesh axis the time dimension of [B, T, …] activations is split over.
      batch_axes: mesh axis name, or tuple of names, the batch dimension is split over (None: replicated).

    Raises:
      TypeError / ValueError: `mesh` is not a Mesh, or an axis is not one of its axes.
    """
    check_mesh(mesh, axis_name, batch_axes, batch_name="batch_axes")
    batch = () if batch_axes is None else (tuple(batch_axes) if isinstance(batch_axes, (tuple, list))
                                           else (batch_axes,))
    token = _CURRENT.set(SequenceParallel(mesh, axis_name, batch or None))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_sequence_parallel() -> SequenceParallel | None:
    """The active `SequenceParallel`, or None outside `sequence_parallel` or when its axis has one device."""
    sp = _CURRENT.get()
    return sp if sp is not None and sp.size > 1 else None


def run(op, *args, **kwargs):
    """`op(*args, **kwargs)` for an op of `jrt_jax.ops` in `TWINS`; inside `sequence_parallel` (an axis of more
    than one device) its twin of `jrt_jax.parallel` on the same global arrays, with the same result.

    Raises:
      ValueError: context parallelism is active and `op` has no twin.
    """
    sp = current_sequence_parallel()
    if sp is None:
        return op(*args, **kwargs)
    twin = TWINS.get(op)
    if twin is None:
        name = getattr(op, "__name__", repr(op))
        known = ", ".join(f.__name__ for f in TWINS)
        raise ValueError(f"{name} has no context-parallel twin; ops that run sequence-sharded: {known}")
    return sp.call(twin, *args, **kwargs)
