"""Pure-function core of jrt-jax: arrays in, arrays out, no Flax. Layout [batch, seq, heads, dim].

Every attention op takes `implementation=` ("auto", "reference", "xla", "pallas"); all of them agree with
"reference" to fp32 tolerance, and recurrent states are fp32 whatever the input dtype.
"""

from jrt_jax.ops._checks import Implementation
from jrt_jax.ops.attention import causal_attention
from jrt_jax.ops.causal_conv import causal_conv1d, causal_conv1d_step
from jrt_jax.ops.feature_map import taylor_feature_dim, taylor_feature_map, taylor_feature_map_compact
from jrt_jax.ops.linear_attention import (
    LinearAttentionState,
    linear_attention,
    linear_attention_state,
    linear_attention_step,
    pla_prefill_state,
    prefix_linear_attention,
    zero_state,
)
from jrt_jax.ops.rope import ROPE_TYPES, apply_rope, rope_frequencies
from jrt_jax.ops.segments import document_ids
from jrt_jax.ops.sliding_window import sliding_window_attention, sliding_window_step

__all__ = [
    "Implementation",
    "LinearAttentionState",
    "ROPE_TYPES",
    "apply_rope",
    "causal_attention",
    "causal_conv1d",
    "causal_conv1d_step",
    "document_ids",
    "linear_attention",
    "linear_attention_state",
    "linear_attention_step",
    "pla_prefill_state",
    "prefix_linear_attention",
    "rope_frequencies",
    "sliding_window_attention",
    "sliding_window_step",
    "taylor_feature_dim",
    "taylor_feature_map",
    "taylor_feature_map_compact",
    "zero_state",
]
