"""Context-parallel causal softmax attention (the Llama / PI baseline): all-gather K/V, attend locally.

Why an all-gather of K/V and not ring attention: it is one collective (MaxText's choice for context
parallelism), the local computation is the op itself over the gathered key span with the shard's query offset,
and the backward is one reduce-scatter of dK/dV. Ring attention overlaps n − 1 `ppermute` steps with compute
and never holds the whole K/V, which matters when attention dominates; in JRT models the linear-attention,
sliding-window and conv layers dominate and the softmax-attention layers are the baseline (Llama) being
compared against, so simplicity wins. The price is that each device holds the full K/V ([B, T, KVH, D],
KVH ≤ H, so with GQA much less than the activations) — the per-device activation memory of this op does not
fall as 1/n for that part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import check_dim, check_float_array
from jrt_jax.ops.attention import causal_attention as _local_attention
from jrt_jax.ops.segments import check_segments
from jrt_jax.parallel import _axis


def causal_attention(
    q,
    k,
    v,
    *,
    axis_name,
    segment_ids=None,
    mask=None,
    scale: float | None = None,
    implementation: str = "xla",
    block_q: int = 128,
    block_k: int = 128,
):
    """Causal (grouped-query) softmax attention over a sequence sharded on `axis_name` (inside `jax.shard_map`).

    Computes `jrt_jax.ops.causal_attention` of the global arrays: y_i = Σ_{j≤i} softmax_j(q_i·k_j·scale) v_j
    over i's document (packing and padding as there), for this shard's queries: the op's blocked "xla" path
    over the gathered key span, with this shard's queries at offset s·T_l.

    Collectives: one tiled `all_gather` each of K and V over the sequence axis (and of the segment ids / mask),
    [B, T, KVH, D] per device — it grows with T, unlike the linear-attention ops; the backward reduce-scatters
    dK and dV. See the module docstring for why this and not ring attention.

    Args:
      q: [B, T_l, H, Dk] local shard; k: [B, T_l, KVH, Dk]; v: [B, T_l, KVH, Dv] (KVH divides H).
      axis_name: the sequence mesh axis.
      segment_ids, mask: optional [B, T_l] local shards.
      scale: softmax scale (default 1/√Dk).
      implementation: of the local op over the gathered span (default "xla", the blocked path; "auto" picks
        "dense" while T_l · T ≤ `ops.attention.DENSE_MAX_LEN`²).
      block_q, block_k: query / key block lengths of the blocked loop (clipped to T_l / T).

    Returns:
      [B, T_l, H, Dv] in the inputs' result dtype (fp32 math), 0 at padded positions.
    """
    _axis.axis_size(axis_name)
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t = q.shape[:2]
    for name, x in (("k", k), ("v", v)):
        check_dim(name, x.shape[0], b, "batch size (axis 0, as q)")
        check_dim(name, x.shape[1], t, "local sequence length (axis 1, as q)")
    check_segments(segment_ids, mask, b, t)
    gather = lambda x: None if x is None else jax.lax.all_gather(jnp.asarray(x), axis_name, axis=1, tiled=True)
    return _local_attention(q, gather(k), gather(v), q_offset=_axis.shard_index(axis_name) * t,
                            segment_ids=gather(segment_ids), mask=gather(mask), scale=scale, implementation=implementation,
                            block_q=block_q, block_k=block_k)
