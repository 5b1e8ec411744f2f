"""Public entry point of causal softmax attention (the Llama / Transformer++ mixer), grouped-query heads.

Implementations:

* "reference": quadratic fp32 einsums over the full [T, T] scores (the oracle of the tests).
* "xla": blocked online-softmax attention (query blocks × key blocks, running max and sum, key blocks above
  the diagonal skipped, a FlashAttention-style custom VJP), so memory is linear in T: a 16k-token sequence
  fits in a few GB for training as well as inference.
* "dense": `jax.nn.dot_product_attention` (XLA; materialises [B, H, T, T]); fastest for short sequences.
* "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPUs only).
* "auto": "dense" up to `DENSE_MAX_LEN` tokens (when the value and key head sizes agree), "xla" otherwise.

Packing (`segment_ids`) and padding (`mask`) follow `jrt_jax.ops.segments`: query i sees keys j ≤ i of its own
document that are real; padded queries return 0; excluded tokens are selected away at entry, so a NaN or Inf
in one never reaches another token's output or gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import check_dim, check_float_array, check_positive_int
from jrt_jax.ops.attention.reference import reference_causal_attention
from jrt_jax.ops.attention.xla import blocked_causal_attention
from jrt_jax.ops.segments import check_segments, scrubbed, zero_excluded

IMPLEMENTATIONS = ("auto", "reference", "xla", "dense", "cudnn")
DENSE_MAX_LEN = 2048


def _dense(q, k, v, run, real, packed, scale, implementation):
    if real is None:
        mask = None
    elif not packed:  # one document per row: a key mask, as Hugging Face's padding mask
        mask = real[:, None, None, :]
    else:
        mask = ((run[:, :, None] == run[:, None, :]) & real[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, scale=scale,
                                        implementation=implementation)


def causal_attention(
    q,
    k,
    v,
    *,
    segment_ids=None,
    mask=None,
    scale: float | None = None,
    implementation: str = "auto",
    block_q: int = 128,
    block_k: int = 128,
):
    """Causal softmax attention: y_i = Σ_{j ≤ i} softmax_j(q_i·k_j · scale) v_j, with grouped-query heads.

    Args:
      q: [B, T, H, Dk]; k: [B, T, KVH, Dk]; v: [B, T, KVH, Dv]. KVH must divide H; query head n reads key/value
        head n // (H / KVH) (Hugging Face's repeat_kv, `jax.nn.dot_product_attention`'s grouping).
      segment_ids: optional [B, T] int document ids of a packed batch, 0 = padding (`jrt_jax.ops.segments`):
        query i sees only keys of its own document.
      mask: optional [B, T] bool, True = real token. With `segment_ids`, a token is real only where both say so.
      scale: softmax scale, default 1/√Dk.
      implementation: one of `IMPLEMENTATIONS` (see the module docstring).
      block_q, block_k: query / key block lengths of the "xla" path (clipped to T).

    Returns:
      [B, T, H, Dv] in the inputs' result dtype; 0 at padded positions. "reference" and "xla" compute in
      fp32; "dense" / "cudnn" in the inputs' dtype with fp32 softmax, as `jax.nn.dot_product_attention`.
    """
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, d = q.shape
    kvh = k.shape[2]
    for name, x in (("k", k), ("v", v)):
        check_dim(name, x.shape[0], b, "batch size (axis 0, as q)")
        check_dim(name, x.shape[1], t, "sequence length (axis 1, as q)")
    check_dim("v", v.shape[2], kvh, "number of key/value heads (axis 2, as k)")
    check_dim("k", k.shape[3], d, "head size (axis 3, as q)")
    if kvh == 0 or h % kvh:
        raise ValueError(f"k: number of key/value heads (axis 2) must divide the query heads {h}; got {kvh}")
    if t < 1:
        raise ValueError(f"q: sequence length (axis 1) must be at least 1; got {t}")
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    if implementation not in IMPLEMENTATIONS:
        choices = ", ".join(repr(i) for i in IMPLEMENTATIONS)
        raise ValueError(f"implementation must be one of {choices}; got {implementation!r}")
    check_segments(segment_ids, mask, b, t)
    scale = 1.0 / d**0.5 if scale is None else float(scale)
    impl = str(implementation.value if hasattr(implementation, "value") else implementation)
    if impl == "auto":
        impl = "dense" if t <= DENSE_MAX_LEN and v.shape[3] == d else "xla"
    if impl in ("dense", "cudnn") and v.shape[3] != d:
        raise ValueError(f"v: value head size (axis 3) must equal the key head size {d} for "
                         f"implementation={impl!r} (jax.nn.dot_product_attention); got {v.shape[3]}; use 'xla'")
    return _causal_attention(q, k, v, segment_ids, mask, scale=scale, impl=impl, block_q=block_q, block_k=block_k)


@functools.partial(jax.jit, static_argnames=("scale", "impl", "block_q", "block_k"))
def _causal_attention(q, k, v, segment_ids, mask, *, scale, impl, block_q, block_k):
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    q, k, v, run, real = scrubbed(q, k, v, segment_ids, mask)
    if impl == "reference":
        y = reference_causal_attention(q, k, v, scale=scale, run=run, real=real)
    elif impl == "xla":
        y = blocked_causal_attention(q, k, v, scale=scale, run=run, real=real, block_q=block_q, block_k=block_k)
    else:
        q, k, v = (x.astype(out_dtype) for x in (q, k, v))
        y = _dense(q, k, v, run, real, segment_ids is not None, scale, None if impl == "dense" else "cudnn")
    if real is not None:
        y = zero_excluded(y, real)
    return y.astype(out_dtype)
