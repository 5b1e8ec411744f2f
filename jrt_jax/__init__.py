"""jrt-jax: Just Read Twice (JRT-Prompt, JRT-RNN with prefix linear attention) and RoPE position
interpolation in JAX.

* `jrt_jax.ops`: the functional core (pure functions on [batch, seq, heads, dim] arrays).
* `jrt_jax.nn`: Flax NNX layers with logical axis names; `jrt_jax.models`: JRT-RNN / Based / Llama LMs.
* `jrt_jax.generate`: prefill + constant-memory decoding; `jrt_jax.prompting`: JRT-Prompt builders and scoring.
* `jrt_jax.convert`: checkpoints in and out (`from_pretrained`, `save_pretrained`); `jrt_jax.load(spec)`: a model
  and its tokenizer from a folder, run directory, named checkpoint or preset.
"""

from jrt_jax import generate, models, nn, ops, prompting
from jrt_jax.models import JRTConfig, JRTLM, LlamaConfig, LlamaLM
from jrt_jax import convert
from jrt_jax.convert import from_pretrained, save_pretrained
from jrt_jax.loading import load

__version__ = "0.1.0"

__all__ = [
    "JRTConfig",
    "JRTLM",
    "LlamaConfig",
    "LlamaLM",
    "convert",
    "from_pretrained",
    "generate",
    "load",
    "models",
    "nn",
    "ops",
    "prompting",
    "save_pretrained",
    "__version__",
]
