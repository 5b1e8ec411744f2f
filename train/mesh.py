"""Device mesh (data, fsdp, tensor) and the shardings of parameters and batches.

Parameters carry logical axis names (`jrt_jax.nn.axes`); `rules` map each name to a mesh axis or None
(replicated). The batch is split over data × fsdp (FSDP is data parallel over the batch as well). Axis types are
`Auto`: the step is jitted with explicit in/out shardings and XLA propagates the rest.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jrt_jax.nn.axes import SUGGESTED_RULES

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolve -1 (the remaining devices) and check that the mesh covers the devices exactly."""
    sizes = [data, fsdp, tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): the fixed axes ({known} devices) do not divide "
                f"the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has {math.prod(sizes)} devices but "
            f"{num_devices} are available; the product must equal the device count (use -1 for one axis)"
        )
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


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
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def check_batch(global_batch: int, mesh, grad_accum: int = 1) -> None:
    parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = global_batch // grad_accum
    if micro % parallel:
        raise ValueError(
            f"data.batch_size={global_batch} (micro-batch {micro} with optim.grad_accum={grad_accum}) is not "
            f"divisible by the data-parallel size data×fsdp = {parallel}"
        )


def host_rows(global_batch: int, mesh) -> range:
    """The rows of the global batch this process feeds (its addressable devices' slice, contiguous)."""
    sharding = batch_sharding(mesh)
    index_map = sharding.addressable_devices_indices_map((global_batch, 1))
    starts = sorted({idx[0].start or 0 for idx in index_map.values()})
    stops = sorted({idx[0].stop if idx[0].stop is not None else global_batch for idx in index_map.values()})
    lo, hi = starts[0], stops[-1]
    covered = np.zeros(global_batch, bool)
    for idx in index_map.values():
        covered[idx[0]] = True
    if not covered[lo:hi].all():
        raise ValueError("this process's devices do not hold a contiguous block of the batch; use a mesh built by "
                         "jax.make_mesh so that each host's devices are adjacent")
    return range(lo, hi)


def global_batch_array(local: np.ndarray, mesh, global_batch: int) -> jax.Array:
    """Assemble the global [B, ...] array from this process's rows."""
    sharding = batch_sharding(mesh)
    return jax.make_array_from_process_local_data(sharding, local, (global_batch,) + local.shape[1:])


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
