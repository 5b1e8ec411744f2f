"""Public entry point of causal sliding-window softmax attention: query i sees keys i - window … i.

"reference" builds the full [T, T] scores; "xla" is banded (queries in blocks of `block_size` ≥ window tokens,
each attending to its own block and the one before), so memory and time are O(T · block), never O(T²).
Packed rows (`segment_ids`) and padding (`mask`) are handled by both: a window never crosses a document
boundary and never reads a pad.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import (
    Implementation,
    check_dim,
    check_float_array,
    check_positive_int,
    resolve_implementation,
)
from jrt_jax.ops.segments import check_segments, scrubbed, zero_excluded
from jrt_jax.ops.sliding_window.reference import reference_sliding_window_attention
from jrt_jax.ops.sliding_window.xla import banded_sliding_window_attention


def sliding_window_attention(
    q,
    k,
    v,
    *,
    window: int,
    scale: float | None = None,
    mask=None,
    segment_ids=None,
    implementation: str | Implementation = "auto",
    block_size: int | None = None,
):
    """Causal softmax attention over a sliding window: query i sees keys i-window … i.

    Args:
      q, k: [B, T, H, Dk]; v: [B, T, H, Dv].
      window: how many keys back a query sees besides its own (the released JRT layers use 128).
      scale: softmax scale, default 1/√Dk.
      mask: optional [B, T] bool, True = real token; padded keys are never attended, padded queries
        (and queries with no real key in their window) return 0.
      segment_ids: optional [B, T] int document ids of a packed batch, 0 = padding (see `jrt_jax.ops.segments`):
        query i only sees keys j of its own document (and inside its window). Combined with `mask`, a token is
        real only where both say so. Excluded tokens are selected away at entry: a NaN or Inf in one never
        reaches another token's output or gradient.
      implementation: "reference" (quadratic), "xla" (banded, O(T·window)), or "auto" (= "xla").
      block_size: query block of the banded path (≥ window; default max(window, 64)).

    Returns:
      [B, T, H, Dv] in the inputs' result dtype (fp32 math inside).
    """
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, d = q.shape
    for name, x in (("k", k), ("v", v)):
        check_dim(name, x.shape[0], b, "batch size (axis 0, as q)")
        check_dim(name, x.shape[1], t, "sequence length (axis 1, as q)")
        check_dim(name, x.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("k", k.shape[3], d, "head size (axis 3, as q)")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int; got {window!r}")
    if block_size is not None:
        check_positive_int("block_size", block_size)
    check_segments(segment_ids, mask, b, t)
    scale = 1.0 / d**0.5 if scale is None else float(scale)
    impl = resolve_implementation(implementation)
    if impl is Implementation.PALLAS:
        raise ValueError("implementation='pallas': sliding-window attention has no Pallas kernel; use 'xla'")
    return _sliding_window_attention(q, k, v, segment_ids, mask, window=window, scale=scale,
                                     reference=impl is Implementation.REFERENCE, block=block_size)


@functools.partial(jax.jit, static_argnames=("window", "scale", "reference", "block"))
def _sliding_window_attention(q, k, v, segment_ids, mask, *, window, scale, reference, block):
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    q, k, v, run, real = scrubbed(q, k, v, segment_ids, mask)
    if reference:
        y = reference_sliding_window_attention(q, k, v, window=window, scale=scale, run=run, real=real)
    else:
        y = banded_sliding_window_attention(q, k, v, window=window, scale=scale, run=run, real=real, block=block)
    if real is not None:
        y = zero_excluded(y, real)
    return y.astype(out_dtype)
