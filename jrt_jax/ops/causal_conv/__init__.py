"""Depthwise causal 1-D convolution (BaseConv's short conv): API, reference, XLA path and decode step."""

from jrt_jax.ops.causal_conv.api import IMPLEMENTATIONS, causal_conv1d, causal_conv1d_step

__all__ = ["IMPLEMENTATIONS", "causal_conv1d", "causal_conv1d_step"]
