"""Device mesh (data, fsdp, sequence, tensor) and the shardings of parameters and batches.

Parameters carry logical axis names (`jrt_jax.nn.axes`); `rules` map each name to a mesh axis or None
(replicated). The batch [B, T] is split on B over data × fsdp (FSDP is data parallel over the batch as well) and
on T over `sequence` (context parallelism: activations [B, T, d] are split the same way, `ACTIVATION_SPEC`, and
the sequence mixers run `jrt_jax.parallel` under `jrt_jax.nn.sequence_parallel`). Axis types are `Auto`: the step
is jitted with explicit in/out shardings and XLA propagates the rest.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jrt_jax.nn.axes import SUGGESTED_RULES, VOCAB

#: Mesh axes in device order: the sequence axis sits between the batch axes and tensor, so tensor-parallel
#: groups stay innermost (nearest devices) and sequence shards next (one collective per linear-attention layer).
AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")
SEQUENCE_AXIS = "sequence"
#: [batch, time] of a batch; [batch, time, width] of the residual stream.
BATCH_SPEC = PartitionSpec(BATCH_AXES, SEQUENCE_AXIS)
ACTIVATION_SPEC = PartitionSpec(BATCH_AXES, SEQUENCE_AXIS, None)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int, sequence: int = 1) -> tuple[int, int, int]:
    """Resolve -1 (the remaining devices) and check that the mesh covers the devices exactly.

    Returns (data, fsdp, tensor); `sequence` (a fixed size, never -1) takes its share of the devices first.
    """
    sizes = [data, fsdp, tensor]
    seq = "" if sequence == 1 else f", sequence={sequence}"
    known = math.prod(s for s in sizes if s != -1) * sequence
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}{seq}): the fixed axes ({known} devices) do not "
                f"divide the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    total = math.prod(sizes) * sequence
    if total != num_devices:
        raise ValueError(
            f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}{seq}) has {total} devices but "
            f"{num_devices} are available; the product must equal the device count (use -1 for one axis)"
        )
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None, *, sequence: int = 1
              ) -> jax.sharding.Mesh:
    """The trainer's mesh over `devices` (default all): axes `AXES` = (data, fsdp, sequence, tensor), Auto."""
    devices = jax.devices() if devices is None else devices
    d, f, t = mesh_shape(data, fsdp, tensor, len(devices), sequence)
    return jax.make_mesh((d, f, sequence, t), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def resolve_rules(rules) -> tuple[tuple[str, str | None], ...]:
    rules = SUGGESTED_RULES if rules is None else tuple(tuple(r) for r in rules)
    for rule in rules:
        if len(rule) != 2 or (rule[1] is not None and rule[1] not in AXES):
            raise ValueError(f"mesh.rules: each rule is [logical_name, one of {AXES} or null]; got {list(rule)}")
    return rules


def param_specs(abstract_state, rules) -> nnx.State:
    """PartitionSpec of every parameter from its logical axis names and the rules."""
    with spmd.logical_axis_rules(rules):
        return nnx.get_partition_spec(abstract_state)


def param_shardings(abstract_state, mesh, rules):
    """NamedShardings for a state of (abstract) variables; a dimension the mesh axis does not divide is an error."""
    specs = param_specs(abstract_state, rules)

    def check(path, var, spec):
        shape = var.shape if hasattr(var, "shape") else var.get_value().shape
        spec = spec.get_value() if isinstance(spec, nnx.Variable) else spec
        for dim, (size, axis) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
            for name in (axis if isinstance(axis, tuple) else (axis,)):
                if name is not None and size % mesh.shape[name]:
                    where = "/".join(str(getattr(p, "key", p)) for p in path)
                    raise ValueError(
                        f"parameter {where} of shape {tuple(shape)}: dimension {dim} ({size}) is not divisible by "
                        f"mesh axis {name!r} of size {mesh.shape[name]}; change the mesh or mesh.rules"
                    )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(check, abstract_state, specs,
                                            is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh) -> NamedSharding:
    """[B, T] batches: B over data × fsdp, T over sequence."""
    return NamedSharding(mesh, BATCH_SPEC)


def activation_sharding(mesh) -> NamedSharding:
    """[B, T, d] activations (the residual stream): as the batch, width replicated."""
    return NamedSharding(mesh, ACTIVATION_SPEC)


def embedding_lookup_sharding(mesh, rules) -> NamedSharding:
    """The token-embedding table as the lookup reads it: rows sharded as `rules` map `vocab`, the width gathered
    (see `jrt_jax.nn.constraints.embed_lookup`: with the width FSDP-sharded like the batch, XLA would replicate
    the table and re-partition the gathered rows instead)."""
    return NamedSharding(mesh, PartitionSpec(dict(rules).get(VOCAB), None))


def check_sequence(model_config, seq_len: int, n: int) -> None:
    """Context parallelism's limits on the model over n sequence shards: a sliding window / conv halo must come
    from one neighbouring shard (window ≤ seq_len / n, conv kernel − 1 likewise); ValueError otherwise."""
    if n == 1:
        return
    shard = seq_len // n
    mixers = set(getattr(model_config, "mixers", ()))
    window = getattr(model_config, "window", None)
    if "sliding_window" in mixers and window is not None and window > shard:
        raise ValueError(f"mesh.sequence={n}: the sliding window ({window} tokens, model window) is longer than "
                         f"one shard of the sequence (data.seq_len={seq_len} / {n} = {shard}); lower mesh.sequence "
                         f"to at most {seq_len // window} or raise data.seq_len")
    kernel = getattr(model_config, "conv_kernel", None)
    if "base_conv" in mixers and kernel is not None and kernel - 1 > shard:
        raise ValueError(f"mesh.sequence={n}: the BaseConv halo (conv_kernel - 1 = {kernel - 1}) is longer than one "
                         f"shard of the sequence (data.seq_len={seq_len} / {n} = {shard}); lower mesh.sequence")


def check_batch(global_batch: int, mesh, grad_accum: int = 1) -> None:
    parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = global_batch // grad_accum
    if micro % parallel:
        raise ValueError(
            f"data.batch_size={global_batch} (micro-batch {micro} with optim.grad_accum={grad_accum}) is not "
            f"divisible by the data-parallel size data×fsdp = {parallel}"
        )


def _host_span(index_map, dim: int, size: int) -> range:
    """The contiguous span of dimension `dim` that this process's devices hold (an error if not contiguous)."""
    lo = min(idx[dim].start or 0 for idx in index_map.values())
    hi = max(idx[dim].stop if idx[dim].stop is not None else size for idx in index_map.values())
    covered = np.zeros(size, bool)
    for idx in index_map.values():
        covered[idx[dim]] = True
    if not covered[lo:hi].all():
        raise ValueError("this process's devices do not hold a contiguous block of the batch; use a mesh built by "
                         "jax.make_mesh so that each host's devices are adjacent")
    return range(lo, hi)


def host_block(global_batch: int, seq_len: int, mesh) -> tuple[range, range]:
    """(rows, positions) of the global [B, T] batch this process feeds: its addressable devices' block. With a
    sequence axis across hosts a process holds only part of each row's positions."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch, seq_len))
    return _host_span(index_map, 0, global_batch), _host_span(index_map, 1, seq_len)


def host_rows(global_batch: int, mesh, seq_len: int | None = None) -> range:
    """The rows of the global batch this process feeds (its addressable devices' slice, contiguous)."""
    return host_block(global_batch, seq_len or mesh.shape[SEQUENCE_AXIS], mesh)[0]


def global_batch_array(local: np.ndarray, mesh, global_batch: int, positions: range | None = None) -> jax.Array:
    """Assemble the global [B, T, ...] array from this process's rows (all positions of them, or `positions`:
    the span of T this process feeds, `host_block`; the rest of `local`'s positions are dropped)."""
    sharding = batch_sharding(mesh)
    seq_len = local.shape[1]
    if positions is not None and len(positions) != seq_len:
        local = local[:, positions.start:positions.stop]
    return jax.make_array_from_process_local_data(sharding, local, (global_batch, seq_len) + local.shape[2:])


def describe(abstract_state, shardings) -> str:
    """One line per parameter: path, shape, logical names, mesh PartitionSpec."""
    lines = []
    flat_vars = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    flat_sh = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, var), sh in zip(flat_vars, flat_sh):
        names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
        shape = var.shape if hasattr(var, "shape") else var.get_value().shape
        where = "/".join(str(getattr(p, "key", p)) for p in path)
        lines.append(f"{where:<48} {str(tuple(shape)):<16} {str(tuple(names) if names else ()):<28} {sh.spec}")
    return "\n".join(lines)
