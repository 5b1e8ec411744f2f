"""Context parallelism inside the models: while a sequence axis is set, mixers call `jrt_jax.parallel`.

    with sequence_parallel(mesh, "sequence", batch_axes=("data", "fsdp")):
        logits = jax.jit(lambda m, t: m(t))(model, tokens)   # tokens [B, T]; T split over mesh axis "sequence"

A model is written once, on global [B, T, …] arrays: projections, norms, MLPs, RoPE and the loss are
position-wise, so jit's sharding propagation splits them over the sequence axis by itself. Only the sequence
mixers look across positions; while this context is active (and the axis has more than one device) each of
them runs its op through `jrt_jax.parallel.context_parallel` — a `jax.shard_map` over the mesh with the
time dimension split on `axis_name` and the batch on `batch_axes` (other mesh axes see replicated inputs) —
and returns global arrays again. Outside the context, or with a sequence axis of size 1, every mixer calls
`jrt_jax.ops` exactly as before.

The context is read at TRACE time (like `jrt_jax.nn.constraints.activation_sharding`), so enter it around the
code that traces the model (inside the jitted function or around its first call).

What each mixer does with it (all exact: outputs and gradients equal one device's):

=========================  ==========================================================================
PrefixLinearAttention      `parallel.prefix_linear_attention`: LASP-2 all-gather of per-shard states;
                           the encoder is slot-aligned (a [B, T] `enc_mask`), so it may span shards
CausalLinearAttention      `parallel.linear_attention`
SlidingWindowAttention     `parallel.sliding_window_attention`: halo of `window` keys (window ≤ T / n)
BaseConv                   `parallel.causal_conv1d`: halo of kernel − 1 inputs
Attention (Llama)          `parallel.causal_attention`: all-gather of K / V
=========================  ==========================================================================

RoPE positions, packed-document positions and the encoder mask are computed on the global arrays before the
mixers run, so they are the one-device values whatever shard a token lands on.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

from jax.sharding import Mesh

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
        from jrt_jax.parallel import context_parallel

        return context_parallel(op, self.mesh, self.axis_name, batch_axis=self.batch_axes, jit=False)(
            *args, **kwargs)


@contextlib.contextmanager
def sequence_parallel(mesh: Mesh, axis_name: str = "sequence", *, batch_axes=None):
    """Make the mixers traced in this context compute context-parallel over `mesh` axis `axis_name`.

    Args:
      mesh: a `jax.sharding.Mesh` holding `axis_name` (and `batch_axes`).
      axis_name: the mesh axis the time dimension of [B, T, …] activations is split over.
      batch_axes: mesh axis name, or tuple of names, the batch dimension is split over (None: replicated).

    Raises:
      TypeError / ValueError: `mesh` is not a Mesh, or an axis is not one of its axes.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    if axis_name not in names:
        raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh; its axes are {names}")
    batch = () if batch_axes is None else (tuple(batch_axes) if isinstance(batch_axes, (tuple, list))
                                           else (batch_axes,))
    for a in batch:
        if a not in names or a == axis_name:
            raise ValueError(f"batch_axes={batch_axes!r}: {a!r} must be a mesh axis other than axis_name "
                             f"{axis_name!r}; the mesh's axes are {names}")
    token = _CURRENT.set(SequenceParallel(mesh, axis_name, batch or None))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_sequence_parallel() -> SequenceParallel | None:
    """The active `SequenceParallel`, or None outside `sequence_parallel` or when its axis has one device."""
    sp = _CURRENT.get()
    return sp if sp is not None and sp.size > 1 else None

