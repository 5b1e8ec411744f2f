"""Causal sliding-window softmax attention: API, quadratic reference, banded XLA path, ring-buffer decode step."""

from jrt_jax.ops.sliding_window.api import IMPLEMENTATIONS, sliding_window_attention
from jrt_jax.ops.sliding_window.decode import sliding_window_step

__all__ = ["IMPLEMENTATIONS", "sliding_window_attention", "sliding_window_step"]
