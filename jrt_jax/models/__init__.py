"""Language models: JRT-RNN / Based (`JRTConfig`, `JRTLM`) and Llama (`LlamaConfig`, `LlamaLM`).

    cfg = JRTConfig.preset("jrt-360m")
    abstract = nnx.eval_shape(lambda: JRTLM(cfg, rngs=nnx.Rngs(0)))     # no allocation
    model = JRTLM(JRTConfig.preset("jrt-tiny"), rngs=nnx.Rngs(0))
    logits = model(tokens, mask=mask)                                    # [B, T, V] float32

Both models share the decoding interface used by `jrt_jax.generate`: ``prefill(tokens, mask=, cache_len=)
-> (logits, caches)`` and ``decode_step(token, caches, positions=) -> (logits, caches)``.
"""

from jrt_jax.models.jrt import JRTLM
from jrt_jax.models.jrt_config import JRT_PRESETS, JRTConfig
from jrt_jax.models.llama import LlamaLM
from jrt_jax.models.llama_config import LLAMA_PRESETS, LlamaConfig
from jrt_jax.models.params import abstract_model, count_params, param_shapes, param_table
from jrt_jax.models.registry import MODELS, PRESETS, build, config_from_preset, model_class


__all__ = [
    "JRTConfig",
    "JRTLM",
    "JRT_PRESETS",
    "LLAMA_PRESETS",
    "LlamaConfig",
    "LlamaLM",
    "MODELS",
    "PRESETS",
    "abstract_model",
    "build",
    "config_from_preset",
    "count_params",
    "model_class",
    "param_shapes",
    "param_table",
]
