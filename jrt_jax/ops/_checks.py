"""Argument validation shared by the ops: errors name the argument and say what was expected."""

from __future__ import annotations

import enum

import jax.numpy as jnp

# The one precision rule of the kernels and the chunked paths, defined at the lowest layer.
from pallas_kernels.linear_attention.common import matmul_precision as matmul_precision


class Implementation(str, enum.Enum):
    """Which code path computes an op.

    REFERENCE: quadratic, obviously correct, materialises everything (the oracle in tests).
    XLA: chunked pure-JAX path; linear in sequence length, differentiable; default on CPU.
    PALLAS: the kernels in `pallas_kernels` (TPU / GPU; interpret mode on CPU).
    AUTO: PALLAS where a kernel supports the backend and shapes, otherwise XLA.
    """

    AUTO = "auto"
    REFERENCE = "reference"
    XLA = "xla"
    PALLAS = "pallas"


def resolve_implementation(implementation) -> Implementation:
    try:
        return Implementation(implementation)
    except ValueError:
        choices = ", ".join(repr(i.value) for i in Implementation)
        raise ValueError(f"implementation must be one of {choices}; got {implementation!r}") from None


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
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


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
