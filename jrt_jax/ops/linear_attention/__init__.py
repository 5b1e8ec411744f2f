"""Based linear attention and prefix linear attention: API, quadratic reference, chunked XLA path, state."""

from jrt_jax.ops.linear_attention.api import (
    DEFAULT_CHUNK_SIZE,
    IMPLEMENTATIONS,
    PADDING_MODES,
    linear_attention,
    linear_attention_state,
    linear_attention_step,
    pla_prefill_state,
    prefix_linear_attention,
)
from jrt_jax.ops.linear_attention.state import LinearAttentionState, zero_state

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IMPLEMENTATIONS",
    "PADDING_MODES",
    "LinearAttentionState",
    "linear_attention",
    "linear_attention_state",
    "linear_attention_step",
    "pla_prefill_state",
    "prefix_linear_attention",
    "zero_state",
]
