"""Public entry point of causal softmax attention (the Llama / Transformer++ mixer), grouped-query heads.

Key span and query offset: k, v hold a span of S positions and the T ≤ S queries sit at span positions
q_offset … q_offset + T − 1 (default the last T). One op thus serves a whole sequence (S = T), a shard of
queries against all-gathered keys (context parallelism), and a prefill chunk continuing from a KV cache — the
"query start / key end" of tokamax's `Mask(q_start, k_end)`.

Implementations:

* "reference": quadratic fp32 einsums over the full [T, S] scores (the oracle of the tests).
* "xla": blocked online-softmax attention (query blocks × key blocks, running max and sum, key blocks past the
  diagonal skipped, a FlashAttention-style custom VJP), so memory is linear in T + S: a 16k-token sequence
  fits in a few GB for training as well as inference.
* "dense": `jax.nn.dot_product_attention` (XLA; materialises [B, H, T, S]); fastest for short sequences.
* "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPUs only; S = T only).
* "auto": "dense" while T·S ≤ `DENSE_MAX_LEN`² (when the value and key head sizes agree), "xla" otherwise.

Packing (`segment_ids`) and padding (`mask`) follow `jrt_jax.ops.segments` over the key span: query i sees
span keys j ≤ q_offset + i of its own document that are real; padded queries return 0; excluded tokens are
selected away at entry, so a NaN or Inf in one never reaches another token's output or gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jrt_jax.ops._checks import check_dim, check_float_array, check_positive_int, resolve_implementation
from jrt_jax.ops.attention.reference import allowed_keys, reference_causal_attention
from jrt_jax.ops.attention.xla import blocked_causal_attention
from jrt_jax.ops.segments import check_segments, resolve_segments, zero_excluded

#: what `implementation=` may name (the module docstring; `jrt_jax.ops._checks.Implementation` the shared meanings)
IMPLEMENTATIONS = ("auto", "reference", "xla", "dense", "cudnn")
DENSE_MAX_LEN = 2048


def check_q_offset(q_offset, t: int, s: int):
    """The queries' start in a key span of `s` positions, for `t` queries: an int in [0, s − t] (None: s − t),
    or an integer scalar array that may be traced (checked when concrete). Returns an int or the array."""
    if q_offset is None:
        return s - t
    if isinstance(q_offset, bool) or getattr(q_offset, "dtype", None) == bool:
        raise TypeError(f"q_offset must be an int or an integer scalar array; got {q_offset!r}")
    if not isinstance(q_offset, int):
        dtype, shape = getattr(q_offset, "dtype", None), getattr(q_offset, "shape", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or tuple(shape) != ():
            raise TypeError(f"q_offset must be an int or an integer scalar array; got "
                            f"{type(q_offset).__name__} of dtype {dtype} and shape {shape}")
        try:
            value = int(q_offset)
        except jax.errors.ConcretizationTypeError:
            return q_offset  # traced: clamped to [0, s − t] inside, as dynamic_slice clamps
    else:
        value = q_offset
    if not 0 <= value <= s - t:
        raise ValueError(f"q_offset must be in [0, S − T] = [0, {s - t}] (the {t} queries must lie inside the key "
                         f"span of S = {s} positions); got {value}")
    return value


def _dense(q, k, v, q_offset, run, real, packed, scale, implementation):
    t, s = q.shape[1], k.shape[1]
    if t != s:
        mask = allowed_keys(t, s, q_offset, run, real)[:, None]
    elif real is None:
        mask = None
    elif not packed:  # one document per row: a key mask, as Hugging Face's padding mask
        mask = real[:, None, None, :]
    else:
        mask = ((run[:, :, None] == run[:, None, :]) & real[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=t == s, scale=scale,
                                        implementation=implementation)


def causal_attention(
    q,
    k,
    v,
    *,
    q_offset=None,
    segment_ids=None,
    mask=None,
    scale: float | None = None,
    implementation: str = "auto",
    block_q: int = 128,
    block_k: int = 128,
):
    """Causal softmax attention of T queries over a key span of S ≥ T positions, with grouped-query heads.

    y_i = Σ_j softmax_j(q_i·k_j · scale) v_j over the span keys j ≤ q_offset + i that are real and in query i's
    document. With S = T (and q_offset 0) this is ordinary causal attention over one sequence.

    Args:
      q: [B, T, H, Dk], at span positions q_offset … q_offset + T − 1; k: [B, S, KVH, Dk]; v: [B, S, KVH, Dv],
        the key span 0 … S − 1. KVH must divide H; query head n reads key/value head n // (H / KVH) (Hugging
        Face's repeat_kv, `jax.nn.dot_product_attention`'s grouping).
      q_offset: where the queries start in the span: an int in [0, S − T], or an int32 scalar that may be
        traced (a shard's offset, a cache's write index; clamped to that range). Default S − T: the queries are
        the last T positions (0 when S = T).
      segment_ids: optional [B, S] int document ids over the whole span, 0 = padding (`jrt_jax.ops.segments`):
        query i sees only keys of its own document, which it takes from its span slot q_offset + i.
      mask: optional [B, S] bool over the span, True = real token. With `segment_ids`, a token is real only
        where both say so; a query's real-ness is its span slot's.
      scale: softmax scale, default 1/√Dk.
      implementation: one of `IMPLEMENTATIONS` (see the module docstring).
      block_q, block_k: query / key block lengths of the "xla" path (clipped to T / S).

    Returns:
      [B, T, H, Dv] in the inputs' result dtype; 0 at padded queries. "reference" and "xla" compute in
      fp32; "dense" / "cudnn" in the inputs' dtype with fp32 softmax, as `jax.nn.dot_product_attention`.
    """
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    check_dim("k", k.shape[0], b, "batch size (axis 0, as q)")
    check_dim("v", v.shape[0], b, "batch size (axis 0, as q)")
    check_dim("v", v.shape[1], s, "sequence length (axis 1, as k: the key span)")
    check_dim("v", v.shape[2], kvh, "number of key/value heads (axis 2, as k)")
    check_dim("k", k.shape[3], d, "head size (axis 3, as q)")
    if kvh == 0 or h % kvh:
        raise ValueError(f"k: number of key/value heads (axis 2) must divide the query heads {h}; got {kvh}")
    if t < 1:
        raise ValueError(f"q: sequence length (axis 1) must be at least 1; got {t}")
    if t > s:
        raise ValueError(f"k: key span length (axis 1) must be at least the {t} queries of q; got {s}")
    q_offset = check_q_offset(q_offset, t, s)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    impl = resolve_implementation(implementation, IMPLEMENTATIONS, "causal_attention").value
    check_segments(segment_ids, mask, b, s)
    scale = 1.0 / d**0.5 if scale is None else float(scale)
    if impl == "auto":
        impl = "dense" if t * s <= DENSE_MAX_LEN**2 and v.shape[3] == d else "xla"
    if impl in ("dense", "cudnn") and v.shape[3] != d:
        raise ValueError(f"v: value head size (axis 3) must equal the key head size {d} for "
                         f"implementation={impl!r} (jax.nn.dot_product_attention); got {v.shape[3]}; use 'xla'")
    if impl == "cudnn" and t != s:
        raise ValueError(f"q_offset: implementation='cudnn' needs as many queries as keys (T = S, q_offset 0); got "
                         f"T = {t} queries over S = {s} keys; use 'xla' or 'dense'")
    return _causal_attention(q, k, v, None if t == s else q_offset, segment_ids, mask, scale=scale, impl=impl,
                             block_q=block_q, block_k=block_k)


@functools.partial(jax.jit, static_argnames=("scale", "impl", "block_q", "block_k"))
def _causal_attention(q, k, v, q_offset, segment_ids, mask, *, scale, impl, block_q, block_k):
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    b, t = q.shape[:2]
    s = k.shape[1]
    q_offset = 0 if q_offset is None else jnp.clip(jnp.asarray(q_offset, jnp.int32), 0, s - t)
    seg = resolve_segments(segment_ids, mask, b, s)
    run = real = real_q = None
    packed = False
    if seg is not None:
        run, real, packed = seg
        real_q = real if t == s else lax.dynamic_slice_in_dim(real, q_offset, t, axis=1)
        q, k, v = zero_excluded(q, real_q), zero_excluded(k, real), zero_excluded(v, real)
    if impl == "reference":
        y = reference_causal_attention(q, k, v, scale=scale, q_offset=q_offset, run=run, real=real)
    elif impl == "xla":
        y = blocked_causal_attention(q, k, v, scale=scale, q_offset=q_offset, run=run, real=real, packed=packed,
                                     block_q=block_q, block_k=block_k)
    else:
        q, k, v = (x.astype(out_dtype) for x in (q, k, v))
        y = _dense(q, k, v, q_offset, run, real, packed, scale, None if impl == "dense" else "cudnn")
    return zero_excluded(y, real_q).astype(out_dtype)
