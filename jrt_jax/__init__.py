"""jrt-jax: Just Read Twice (JRT-Prompt, JRT-RNN with prefix linear attention) and RoPE position
interpolation in JAX.

* `jrt_jax.ops`: the functional core (pure functions on [batch, seq, heads, dim] arrays).
* `jrt_jax.nn`: Flax NNX layers with logical axis names; `jrt_jax.models`: JRT-RNN / Based / Llama LMs.
* `jrt_jax.generate`: prefill + constant-memory decoding; `jrt_jax.prompting`: JRT-Prompt builders and scoring.
"""

from jrt_jax import generate, models, nn, ops, prompting
from jrt_jax.models import JRTConfig, JRTLM, LlamaConfig, LlamaLM

__version__ = "0.1.0"

__all__ = [
    "JRTConfig",
    "JRTLM",
    "LlamaConfig",
    "LlamaLM",
    "generate",
    "models",
    "nn",
    "ops",
    "prompting",
    "__version__",
]
