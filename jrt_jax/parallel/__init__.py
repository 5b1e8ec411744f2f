"""Context parallelism: the ops of `jrt_jax.ops` on a sequence split over devices.

Each function here is meant to be called INSIDE `jax.shard_map`, with the sequence dimension (axis 1) of every
[B, T, …] input split into n equal contiguous shards over the mesh axis named by `axis_name=` (shard s holds
positions s·T/n … (s+1)·T/n − 1). Given the local shards, it returns this shard's part of exactly what the
single-device op returns for the global arrays — outputs and gradients (all of it is differentiable) — with
packing (`segment_ids`, documents crossing shard boundaries) and padding handled as the ops handle them.
`context_parallel(op, mesh, axis_name)` does the `shard_map` for you on global arrays, and `run(op, …)` — the call
every mixer of `jrt_jax.nn` makes — picks the op of `jrt_jax.ops` or its twin here, by whether
`sequence_parallel(mesh, axis)` is active (`jrt_jax.parallel.dispatch`).

=============================  ==================================================  =========================
op                             scheme                                              collective (per call)
=============================  ==================================================  =========================
`linear_attention`             LASP-2: local state → all-gather of per-shard        all_gather of n × state
                               states → (segmented) exclusive prefix → local pass   (independent of T)
                               seeded with it (`initial_state`)
`prefix_linear_attention`      as above + the encoder state of every shard          all_gather of n × 2 states
                               (summed; packed: per document, fwd + bwd scans)
`sliding_window_attention`     halo: previous `window` keys/values/ids              ppermute (window tokens)
`causal_conv1d` (BaseConv)     halo: previous K − 1 inputs → `initial_tail`         ppermute (K − 1 tokens)
`causal_attention` (Llama)     all-gather K/V, then the op with the shard's         all_gather of K, V (∝ T)
                               query offset over the gathered key span
`shard_positions`              global positions for RoPE / encoder masks            none
`document_positions`           per-document positions counted across shards        all_gather of 5·B int32
=============================  ==================================================  =========================

Inside your own `jax.shard_map`, pass `check_vma=False`: the chunked linear-attention paths of `jrt_jax.ops`
start their loop carries from fresh `jnp.zeros`, which `shard_map`'s
variance checking types as invariant while the loop updates vary over the sequence axis, so with the default
`check_vma=True` they cannot trace (`linear_attention` / `prefix_linear_attention` here raise a ValueError
saying so). `context_parallel` passes `check_vma=False`. (Sliding window, conv and softmax attention trace
either way.) Gradients are exact with `check_vma=False`: the tests compare them with the one-device op.

Bad input raises ValueError: an `axis_name` that is not bound (not inside a `shard_map` over a mesh with that
axis; `context_parallel` checks it against the mesh), a sequence length not divisible by the axis size
(`context_parallel`; inside `shard_map` JAX itself refuses uneven shards), a sliding window or conv halo longer
than one shard.
"""

from jrt_jax.parallel.attention import causal_attention
from jrt_jax.parallel.dispatch import SequenceParallel, current_sequence_parallel, run, sequence_parallel
from jrt_jax.parallel.halo import causal_conv1d, sliding_window_attention
from jrt_jax.parallel.lasp import linear_attention, prefix_linear_attention
from jrt_jax.parallel.positions import document_positions, shard_positions
from jrt_jax.parallel.sharded import context_parallel, global_document_positions

__all__ = [
    "SequenceParallel",
    "causal_attention",
    "causal_conv1d",
    "context_parallel",
    "current_sequence_parallel",
    "document_positions",
    "global_document_positions",
    "linear_attention",
    "prefix_linear_attention",
    "run",
    "sequence_parallel",
    "shard_positions",
    "sliding_window_attention",
]
