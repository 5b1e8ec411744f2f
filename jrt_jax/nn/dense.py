"""Projection and dtype helpers shared by the layers: `nnx.Linear` with logical axis names on kernel and bias."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from jrt_jax.nn.axes import partitioned

#: Accepted names for compute / parameter dtypes (strings keep configs hashable and JSON-friendly).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(name_or_dtype, field: str = "dtype"):
    """"float32" / "bfloat16" / "float16" (or the jnp dtype itself) → the jnp dtype; ValueError otherwise."""
    if isinstance(name_or_dtype, str):
        if name_or_dtype not in DTYPES:
            raise ValueError(f"{field} must be one of {sorted(DTYPES)}; got {name_or_dtype!r}")
        return DTYPES[name_or_dtype]
    for dt in DTYPES.values():
        if jnp.dtype(name_or_dtype) == jnp.dtype(dt):
            return dt
    raise ValueError(f"{field} must be one of {sorted(DTYPES)}; got {name_or_dtype!r}")


def linear(
    in_features: int,
    out_features: int,
    names: Sequence[str],
    *,
    use_bias: bool = False,
    stddev: float = 0.02,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """`nnx.Linear` (kernel [in, out]) with N(0, stddev²) kernel, zero bias, and logical axis `names`.

    `names` = (input axis, output axis); the bias, if any, carries the output axis name.
    """
    in_name, out_name = names
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(nnx.initializers.normal(stddev), (in_name, out_name)),
        bias_init=partitioned(nnx.initializers.zeros_init(), (out_name,)),
        rngs=rngs,
    )
