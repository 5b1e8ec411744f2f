"""The one model registry: config class → model class, preset name → config.

Everything that turns a config (or a preset name) into a model goes through here, so a new model family is one
entry in `MODELS` and its presets in `PRESETS`.
"""

from __future__ import annotations

from flax import nnx

from jrt_jax.models.jrt import JRTLM
from jrt_jax.models.jrt_config import JRT_PRESETS, JRTConfig
from jrt_jax.models.llama import LlamaLM
from jrt_jax.models.llama_config import LLAMA_PRESETS, LlamaConfig

#: config class → model class
MODELS = {JRTConfig: JRTLM, LlamaConfig: LlamaLM}

#: every preset name → its config (JRT-RNN / Based and Llama names do not overlap)
PRESETS = {**JRT_PRESETS, **LLAMA_PRESETS}


def model_class(config):
    """`JRTLM` for a `JRTConfig`, `LlamaLM` for a `LlamaConfig`; TypeError for anything else."""
    cls = MODELS.get(type(config))
    if cls is None:
        known = " or ".join(c.__name__ for c in MODELS)
        raise TypeError(f"config must be a {known}; got {type(config).__name__}")
    return cls


def build(config, *, seed: int = 0, rngs: nnx.Rngs | None = None):
    """The model of `config`, initialised from `rngs` (default `nnx.Rngs(seed)`)."""
    return model_class(config)(config, rngs=rngs if rngs is not None else nnx.Rngs(seed))


def config_from_preset(name: str):
    """The `JRTConfig` or `LlamaConfig` of any preset name; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return type(PRESETS[name]).preset(name)
