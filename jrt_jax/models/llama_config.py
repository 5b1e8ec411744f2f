"""`LlamaConfig`: a Llama / Transformer++ language model with Hugging Face field names and semantics.

`LlamaConfig.from_hf_config(config_json_dict)` reads a Hugging Face ``config.json`` (``rope_scaling`` or
transformers-5 ``rope_parameters``); the presets include a tiny one for tests, one sized like ``jrt-tiny``
for the decode benchmark, and SmolLM2-135M's shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jrt_jax.ops.rope import rope_frequencies_numpy
from jrt_jax.models._checks import one_of, positive_float, positive_int
from jrt_jax.nn.dense import DTYPES
from jrt_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS


class FrozenMapping(Mapping):
    """An immutable, hashable dict (lists inside become tuples), so configs can be static under jit."""

    def __init__(self, data: Mapping[str, Any]):
        freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v
        self._data = {str(k): freeze(v) for k, v in dict(data).items()}

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __hash__(self):
        return hash(tuple(sorted((k, repr(v)) for k, v in self._data.items())))

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self):
        return repr(self._data)

    def to_dict(self) -> dict:
        thaw = lambda v: [thaw(x) for x in v] if isinstance(v, tuple) else v
        return {k: thaw(v) for k, v in self._data.items()}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama decoder (pre-norm, SwiGLU, RoPE, GQA) with the field names of ``transformers.LlamaConfig``.

    Attributes:
      vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: as in HF.
      num_key_value_heads: GQA key/value heads (None → num_attention_heads); must divide the query heads.
      head_dim: size of one head (None → hidden_size // num_attention_heads).
      rms_norm_eps, rope_theta, max_position_embeddings, tie_word_embeddings, attention_bias, mlp_bias: as in HF.
        max_position_embeddings is metadata (the trained context RoPE scaling refers to): any length runs, as in
        transformers; past max_position_embeddings x factor the model warns once.
      rope_scaling: None or a HF rope_scaling dict ("linear" = Position Interpolation, "dynamic", "yarn",
        "llama3", "longrope"), validated by `ops.rope_frequencies`; stored as an immutable mapping.
      initializer_range: std of the normal initialisers.
      dtype / param_dtype: compute and storage dtypes ("float32", "bfloat16", "float16").
      attention_implementation: the attention op's implementation, in the ops' one vocabulary (None = "auto",
        "reference", "xla" = blocked linear-memory, "dense" = `jax.nn.dot_product_attention`, "cudnn").
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_implementation: str | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            positive_int(name, getattr(self, name))
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            positive_float(name, getattr(self, name))
        one_of("dtype", self.dtype, tuple(DTYPES))
        one_of("param_dtype", self.param_dtype, tuple(DTYPES))
        one_of("attention_implementation", self.attention_implementation, (None, *ATTENTION_IMPLEMENTATIONS))
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        positive_int("num_key_value_heads", self.num_key_value_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"num_attention_heads={self.num_attention_heads} must divide "
                                 f"hidden_size={self.hidden_size} (or give head_dim explicitly)")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        positive_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE; got {self.head_dim}")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, Mapping):
                raise ValueError(f"rope_scaling must be None or a dict; got {type(self.rope_scaling).__name__}")
            object.__setattr__(self, "rope_scaling", FrozenMapping(self.rope_scaling))
        # Raises ValueError naming the key for unknown types, factor < 1, missing keys.
        # (in numpy: configs are built at import time, before jax.distributed.initialize may be called)
        rope_frequencies_numpy(self.head_dim, base=self.rope_theta, scaling=self.rope_scaling,
                               max_position_embeddings=self.max_position_embeddings)

    @classmethod
    def preset(cls, name: str, **overrides) -> LlamaConfig:
        """A named configuration (see `LLAMA_PRESETS`), optionally with fields replaced."""
        if name not in LLAMA_PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(LLAMA_PRESETS)}")
        # From the preset's own arguments, so that derived fields (head_dim, num_key_value_heads) follow overrides.
        return cls(**{**_PRESET_KWARGS[name], **overrides})

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> LlamaConfig:
        """Build from a Hugging Face ``config.json`` dict (LlamaForCausalLM and same-math variants).

        Reads ``rope_scaling`` (transformers 4) or ``rope_parameters`` (transformers 5, which also carries
        ``rope_theta``). Extra keys are ignored; settings that change the math and are not supported
        (``hidden_act`` other than silu, ``pretraining_tp`` is harmless) raise ValueError naming the key.
        """
        hf = dict(hf)
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"hidden_act: only 'silu' is supported; got {act!r}")
        scaling = hf.get("rope_scaling")
        theta = hf.get("rope_theta")
        params = hf.get("rope_parameters")
        if params is not None:
            params = dict(params)
            theta = params.pop("rope_theta", theta)
            if scaling is None and params.get("rope_type", params.get("type", "default")) != "default":
                scaling = params
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
            scaling = None
        kwargs = dict(
            vocab_size=hf.get("vocab_size", 32000),
            hidden_size=hf.get("hidden_size", 4096),
            intermediate_size=hf.get("intermediate_size", 11008),
            num_hidden_layers=hf.get("num_hidden_layers", 32),
            num_attention_heads=hf.get("num_attention_heads", 32),
            num_key_value_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta if theta is not None else 10000.0,
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            initializer_range=hf.get("initializer_range", 0.02),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_config(self) -> dict:
        """The Hugging Face ``config.json`` fields (LlamaForCausalLM) of this configuration."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else self.rope_scaling.to_dict(),
            # transformers >= 5 reads this one (theta included); older versions the two legacy fields above
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta} if self.rope_scaling is None
            else {**self.rope_scaling.to_dict(), "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "initializer_range": self.initializer_range,
        }


_PRESET_KWARGS: dict[str, dict] = {
    "llama-tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=False),
    "llama-jrt-tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=8,
                           num_attention_heads=4, max_position_embeddings=65536, rms_norm_eps=1e-5,
                           tie_word_embeddings=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True),
}

#: Presets: a tiny test model (GQA 4 / 2 heads, untied head), a Transformer++ of about jrt-tiny's size (same
#: width, depth and vocabulary; 1.58 M vs 1.53 M parameters) for the decode benchmark, and the shape of
#: SmolLM2-135M (the real weights come with the conversion code).
LLAMA_PRESETS: dict[str, LlamaConfig] = {name: LlamaConfig(**kw) for name, kw in _PRESET_KWARGS.items()}
