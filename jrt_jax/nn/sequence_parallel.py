"""Context parallelism inside the models: while a sequence axis is set, mixers call `jrt_jax.parallel`.

    with sequence_parallel(mesh, "sequence", batch_axes=("data", "fsdp")):
        logits = jax.jit(lambda m, t: m(t))(model, tokens)   # tokens [B, T]; T split over mesh axis "sequence"

A model is written once, on global [B, T, …] arrays: projections, norms, MLPs, RoPE and the loss are
position-wise, so jit's sharding propagation splits them over the sequence axis by itself. Only the sequence
mixers look across positions; while this context is active (and the axis has more than one device) each of
them calls its op through `jrt_jax.parallel.run`, which picks the op's twin of `jrt_jax.parallel` under
`context_parallel` — a `jax.shard_map` over the mesh with the time dimension split on `axis_name` and the
batch on `batch_axes` (other mesh axes see replicated inputs) — and returns global arrays again. Outside the
context, or with a sequence axis of size 1, every mixer calls `jrt_jax.ops` exactly as before. The context
itself lives in `jrt_jax.parallel.dispatch` (this module re-exports it for the models' users).

The context is read at TRACE time (like `jrt_jax.nn.constraints.activation_sharding`), so enter it around the
code that traces the model (inside the jitted function or around its first call).

What each mixer does with it (all exact: outputs and gradients equal one device's):

=========================  ==========================================================================
PrefixLinearAttention      `parallel.prefix_linear_attention`: LASP-2 all-gather of per-shard states;
                           the encoder is slot-aligned (a [B, T] `enc_mask`), so it may span shards
CausalLinearAttention      `parallel.linear_attention`
SlidingWindowAttention     `parallel.sliding_window_attention`: halo of `window` keys (window ≤ T / n)
BaseConv                   `parallel.causal_conv1d`: halo of kernel − 1 inputs
Attention (Llama)          `parallel.causal_attention`: all-gather of K / V
=========================  ==========================================================================

RoPE positions, packed-document positions and the encoder mask are computed on the global arrays before the
mixers run, so they are the one-device values whatever shard a token lands on.
"""

from jrt_jax.parallel.dispatch import SequenceParallel, current_sequence_parallel, sequence_parallel

__all__ = ["SequenceParallel", "current_sequence_parallel", "sequence_parallel"]
