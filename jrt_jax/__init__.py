"""jrt-jax: Just Read Twice (JRT-Prompt, JRT-RNN with prefix linear attention) and RoPE position
interpolation in JAX.

The functional core lives in `jrt_jax.ops` (pure functions on [batch, seq, heads, dim] arrays).
"""

from jrt_jax import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
