"""The library's argument validation: every check takes (name, value), names the argument, the value and what
was expected. The ops, the models' configs and RoPE use these; model-specific checks (token ids, encoder
lengths) build on them in `jrt_jax.models._checks`."""

from __future__ import annotations

import enum
import math
import numbers

import jax
import jax.numpy as jnp

# The one precision rule of the kernels and the chunked paths, defined at the lowest layer.
from pallas_kernels.linear_attention.common import matmul_precision as matmul_precision


class Implementation(str, enum.Enum):
    """The one vocabulary of code paths; a name means the same thing for every op that offers it.

    AUTO: the op's own choice among what it offers (the first of its `IMPLEMENTATIONS` after "auto" that
      applies to the inputs and platform).
    REFERENCE: quadratic, obviously correct, materialises everything (the oracle in tests).
    XLA: the op's memory-efficient pure-JAX path (chunked linear attention, blocked flash attention, banded
      sliding window, shifted-slice conv); differentiable; what "auto" runs on CPU.
    PALLAS: the kernels in `pallas_kernels` (TPU / GPU; interpret mode on CPU); linear attention only.
    DENSE: `jax.nn.dot_product_attention` (XLA's fused attention; materialises the scores); softmax attention only.
    CUDNN: `jax.nn.dot_product_attention(implementation="cudnn")`; softmax attention on NVIDIA GPUs only.
    """

    AUTO = "auto"
    REFERENCE = "reference"
    XLA = "xla"
    PALLAS = "pallas"
    DENSE = "dense"
    CUDNN = "cudnn"


def resolve_implementation(implementation, offered=None, op: str = "this op") -> Implementation:
    """`implementation` (a name or an `Implementation`) checked against what an op offers (`offered`, names;
    default: the linear-attention ops' auto / reference / xla / pallas); ValueError naming the choices."""
    offered = ("auto", "reference", "xla", "pallas") if offered is None else tuple(offered)
    value = getattr(implementation, "value", implementation)
    if value not in offered:
        choices = ", ".join(repr(i) for i in offered)
        raise ValueError(f"implementation={implementation!r} is not offered by {op}: implementation must be one "
                         f"of {choices}")
    return Implementation(value)


def closest_implementation(implementation, offered) -> str:
    """`implementation` where an op offers it, else "auto": how a model's one `implementation` setting reaches
    layers whose op lacks that path (no sliding-window kernel for "pallas")."""
    value = getattr(implementation, "value", implementation)
    return value if value in tuple(offered) else "auto"


def check_float_array(name: str, x, rank: int | None = None):
    """Rank and dtype check; returns a jax array."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array; got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype; got {x.dtype}")
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}; got shape {tuple(x.shape)}")
    return x


def check_dim(name: str, actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise ValueError(f"{name}: {what} must be {expected}; got {actual}")


def check_mask(mask, batch: int, seq: int, name: str = "mask"):
    """A [batch, seq] boolean (or 0/1) mask; True marks a real token."""
    if mask is None:
        return None
    if not hasattr(mask, "shape"):
        raise TypeError(f"{name} must be an array of shape [batch, seq]; got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(f"{name} must have shape [batch, seq] = {(batch, seq)}; got {tuple(mask.shape)}")
    if not (jnp.issubdtype(mask.dtype, jnp.bool_) or jnp.issubdtype(mask.dtype, jnp.integer)):
        raise TypeError(f"{name} must be boolean (True = real token); got dtype {mask.dtype}")
    return jnp.asarray(mask).astype(bool)


def check_positive_int(name: str, value) -> int:
    """An int > 0 (numpy integers included; bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def check_positive_float(name: str, value) -> float:
    """A finite real number > 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_one_of(name: str, value, choices) -> None:
    """`value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")


def is_concrete(x) -> bool:
    """True when x holds values we can inspect (not a tracer inside jit / grad / eval_shape)."""
    return not isinstance(x, jax.core.Tracer)


def check_eps(eps) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float; got {eps!r}")
    return float(eps)


def check_segment_ids(segment_ids, batch: int, seq: int, name: str = "segment_ids"):
    """A [batch, seq] integer array of document ids (0 = padding); returns it as int32, or None."""
    if segment_ids is None:
        return None
    if not hasattr(segment_ids, "shape") or not hasattr(segment_ids, "dtype"):
        raise TypeError(f"{name} must be an int32 array of shape [batch, seq]; got {type(segment_ids).__name__}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer) or jnp.issubdtype(segment_ids.dtype, jnp.bool_):
        raise TypeError(f"{name} must have an integer dtype (document ids, 0 = padding); got dtype {segment_ids.dtype}")
    if tuple(segment_ids.shape) != (batch, seq):
        raise ValueError(f"{name} must have shape [batch, seq] = {(batch, seq)}; got {tuple(segment_ids.shape)}")
    return jnp.asarray(segment_ids).astype(jnp.int32)
