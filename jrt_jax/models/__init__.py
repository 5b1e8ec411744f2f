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
from jrt_jax.models.params import abstract_model, build, count_params, param_shapes, param_table

PRESETS = {**JRT_PRESETS, **LLAMA_PRESETS}


def config_from_preset(name: str):
    """The `JRTConfig` or `LlamaConfig` of any preset name; ValueError listing the known names otherwise."""
    if name in JRT_PRESETS:
        return JRTConfig.preset(name)
    if name in LLAMA_PRESETS:
        return LlamaConfig.preset(name)
    raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")


__all__ = [
    "JRTConfig",
    "JRTLM",
    "JRT_PRESETS",
    "LLAMA_PRESETS",
    "LlamaConfig",
    "LlamaLM",
    "PRESETS",
    "abstract_model",
    "build",
    "config_from_preset",
    "count_params",
    "param_shapes",
    "param_table",
]
