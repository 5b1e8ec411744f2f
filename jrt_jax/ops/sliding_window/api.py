"""Public entry point of causal sliding-window softmax attention: query i sees keys i - window … i.

Key span and query offset: k, v hold a span of S positions and the T ≤ S queries sit at span positions
q_offset … q_offset + T − 1 (default the last T), so the previous `window` keys/values — a shard's halo under
context parallelism, a ring-buffer cache when a prefill continues — are a prefix of the span rather than
extra query rows (tokamax's `Mask(q_start, k_end)` "query start / key end", with a band).

"reference" builds the full [T, S] scores; "xla" is banded (queries in blocks of `block_size` ≥ window tokens,
each attending to the keys of its own positions and the block before), so memory and time are O(T · block),
never O(T · S). Packed rows (`segment_ids`) and padding (`mask`) are handled by both: a window never crosses a
document boundary and never reads a pad.
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
from jrt_jax.ops.segments import check_segments, resolve_segments, zero_excluded
from jrt_jax.ops.sliding_window.reference import reference_sliding_window_attention
from jrt_jax.ops.sliding_window.xla import banded_sliding_window_attention


#: what `implementation=` may name ("auto" = "xla"); `jrt_jax.ops._checks.Implementation` says what each means
IMPLEMENTATIONS = ("auto", "reference", "xla")

def sliding_window_attention(
    q,
    k,
    v,
    *,
    window: int,
    q_offset: int | None = None,
    scale: float | None = None,
    mask=None,
    segment_ids=None,
    implementation: str | Implementation = "auto",
    block_size: int | None = None,
):
    """Causal softmax attention over a sliding window: query i, at span position p = q_offset + i, sees span keys
    p − window … p.

    Args:
      q: [B, T, H, Dk], at span positions q_offset … q_offset + T − 1; k: [B, S, H, Dk]; v: [B, S, H, Dv], the
        key span 0 … S − 1 (S ≥ T).
      window: how many keys back a query sees besides its own (the released JRT layers use 128).
      q_offset: where the queries start in the span, a Python int in [0, S − T]; default S − T (the queries
        are the last T positions; 0 when S = T).
      scale: softmax scale, default 1/√Dk.
      mask: optional [B, S] bool over the span, True = real token; padded keys are never attended, padded
        queries (and queries with no real key in their window) return 0. A query's real-ness is its span slot's.
      segment_ids: optional [B, S] int document ids over the span, 0 = padding (see `jrt_jax.ops.segments`):
        query i only sees keys of its own document (taken from its span slot) inside its window. Combined with
        `mask`, a token is real only where both say so. Excluded tokens are selected away at entry: a NaN or
        Inf in one never reaches another token's output or gradient.
      implementation: "reference" (quadratic), "xla" (banded, O(T·window)), or "auto" (= "xla").
      block_size: query block of the banded path (≥ window; default max(window, 64)).

    Returns:
      [B, T, H, Dv] in the inputs' result dtype (fp32 math inside).
    """
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, d = q.shape
    s = k.shape[1]
    for name, x in (("k", k), ("v", v)):
        check_dim(name, x.shape[0], b, "batch size (axis 0, as q)")
        check_dim(name, x.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("v", v.shape[1], s, "sequence length (axis 1, as k: the key span)")
    check_dim("k", k.shape[3], d, "head size (axis 3, as q)")
    if t == 0:
        raise ValueError("q: sequence length (axis 1) must be at least 1; got 0")
    if t > s:
        raise ValueError(f"k: key span length (axis 1) must be at least the {t} queries of q; got {s}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be a non-negative int; got {window!r}")
    if q_offset is None:
        q_offset = s - t
    elif isinstance(q_offset, bool) or not isinstance(q_offset, int):
        raise TypeError(f"q_offset must be a Python int (the queries' start in the key span, static); "
                        f"got {type(q_offset).__name__}")
    elif not 0 <= q_offset <= s - t:
        raise ValueError(f"q_offset must be in [0, S − T] = [0, {s - t}] (the {t} queries must lie inside the key "
                         f"span of S = {s} positions); got {q_offset}")
    if block_size is not None:
        check_positive_int("block_size", block_size)
    check_segments(segment_ids, mask, b, s)
    scale = 1.0 / d**0.5 if scale is None else float(scale)
    impl = resolve_implementation(implementation, IMPLEMENTATIONS, "sliding_window_attention (no Pallas kernel)")
    return _sliding_window_attention(q, k, v, segment_ids, mask, window=window, q_offset=q_offset, scale=scale,
                                     reference=impl is Implementation.REFERENCE, block=block_size)


@functools.partial(jax.jit, static_argnames=("window", "q_offset", "scale", "reference", "block"))
def _sliding_window_attention(q, k, v, segment_ids, mask, *, window, q_offset, scale, reference, block):
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    b, t = q.shape[:2]
    seg = resolve_segments(segment_ids, mask, b, k.shape[1])
    run = real = real_q = None
    if seg is not None:
        run, real = seg.run, seg.real
        real_q = real[:, q_offset:q_offset + t]
        q, k, v = zero_excluded(q, real_q), zero_excluded(k, real), zero_excluded(v, real)
    kw = dict(window=window, scale=scale, q_offset=q_offset, run=run, real=real)
    if reference:
        y = reference_sliding_window_attention(q, k, v, **kw)
    else:
        y = banded_sliding_window_attention(q, k, v, block=block, **kw)
    return zero_excluded(y, real_q).astype(out_dtype)
