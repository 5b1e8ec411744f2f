"""Causal softmax attention with grouped-query heads: API, quadratic reference, blocked XLA path."""

from jrt_jax.ops.attention.api import DENSE_MAX_LEN, IMPLEMENTATIONS, causal_attention

__all__ = ["DENSE_MAX_LEN", "IMPLEMENTATIONS", "causal_attention"]
