"""`JRTConfig`: the shape of a JRT-RNN or Based language model, validated at construction, with presets.

Layer i's mixer is prefix linear attention (JRT) or causal linear attention (Based) when i is in
`linear_layers`, sliding-window attention when i is in `window_layers`, full causal softmax attention when i is in
`attention_layers`, and BaseConv otherwise. Every layer has a gated MLP unless `mlp=False`. The released models use
the same layout with period 5: PLA at 1, 6, 11, …, sliding window at 2, 7, ….

The recall presets follow Zoology's MQAR models (HazyResearch/zoology, `experiments/.../configs.py`): two blocks,
BaseConv then the mixer under study, one head, no sliding window, no positions, no MLP (Zoology's state mixer is
the identity there), so the recall has to go through the one mixer's state; the knobs are `feature_dim` (F: the
linear-attention state) and `d_model`. The blocks are this library's: RMSNorm and the release's BaseConv (gated
depthwise conv, kernel 3), where Zoology has LayerNorm and its own short-conv block.

- "recall-based": BaseConv + causal linear attention (Based).
- "recall-jrt": BaseConv + prefix linear attention (JRT-RNN). Its encoder reads the task's prefix — for set
  disjointness the whole prompt up to the separator before the answer — non-causally, but the BaseConv layer and the
  decoder stay causal and the state is still a fixed-size recurrent state read once per query. The JRT paper's
  fully non-causal Based (`causal=False` in its `synthetic/zoology/experiments/non_causal.py`: every layer,
  the convolution included, sees the whole input in both directions, with no causal decoder) is a different model
  and is not a preset here.
- "recall-attention": BaseConv + causal softmax attention without positions (the KV cache grows with the input:
  the upper bound the recurrent models are measured against).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jrt_jax.models._checks import one_of, positive_float, positive_int
from jrt_jax.nn.dense import DTYPES
from jrt_jax.ops._checks import closest_implementation
from jrt_jax.ops.linear_attention.api import IMPLEMENTATIONS as LINEAR_IMPLEMENTATIONS
from jrt_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from jrt_jax.ops.sliding_window import IMPLEMENTATIONS as SWA_IMPLEMENTATIONS

LinearKind = Literal["prefix", "causal"]
MIXERS = ("base_conv", "prefix_linear", "causal_linear", "sliding_window", "attention")
IMPLEMENTATIONS = LINEAR_IMPLEMENTATIONS  # the linear-attention op's names ("auto", "pallas", "xla", "reference")


@dataclasses.dataclass(frozen=True)
class JRTConfig:
    """JRT-RNN (``linear_kind="prefix"``) or Based (``linear_kind="causal"``) language model.

    Attributes:
      vocab_size: embedding rows (the release: GPT-2's 50257 padded to a multiple of 8 = 50264).
      d_model: width of the residual stream.
      n_layers: number of blocks.
      n_inner: hidden size of the gated MLP (fc1 maps d → 2·n_inner).
      linear_layers: indices of the linear-attention layers (PLA for JRT, causal for Based).
      window_layers: indices of the sliding-window attention layers.
      attention_layers: indices of full causal softmax attention layers (num_heads heads of d_model / num_heads,
        no positional encoding, a KV cache when decoding). Every other layer is BaseConv.
      mlp: whether every block has its gated MLP (False: mixer-only blocks, as in Zoology's recall models).
      linear_kind: "prefix" (JRT-RNN, prefix linear attention) or "causal" (Based).
      num_heads: heads of the linear-attention and attention layers (value head size d_model / num_heads).
      feature_dim: F, the raw feature size of the Taylor map (Φ = 1 + F + F(F+1)/2 state features).
      window_heads: heads of the sliding-window layers.
      window: how many keys back a sliding-window query sees besides its own (the release: 128).
      enc_len: M, the encoder (prefix) length of PLA; the encoder of a sequence is its first min(M, T) tokens.
      conv_kernel: BaseConv kernel size. conv_expand: in_proj maps d → conv_expand·d (u1 | u2).
      conv_bias: biases on BaseConv's in_proj and out_proj.
      norm_eps: RMSNorm epsilon. linear_eps: linear-attention denominator epsilon.
      rope_base: RoPE base of the sliding-window layers.
      max_seq_len: longest sequence the model accepts (None: no limit; the recurrent layers have none).
      init_std: std of the normal initialisers (output projections are scaled by 1/√(2·n_layers)).
      dtype: compute dtype; param_dtype: storage dtype ("float32", "bfloat16", "float16"). The residual
        stream, norms, linear-attention states and logits are float32 regardless.
      implementation: the linear-attention (PLA / Based) layers' implementation ("auto", "reference", "xla",
        "pallas"). The softmax layers follow it where their op offers the name (`window_implementation`,
        `attention_implementation`), else "auto".
      chunk_size: chunk length of the chunked linear-attention path (None: the op's default).
    """

    vocab_size: int = 50264
    d_model: int = 1024
    n_layers: int = 26
    n_inner: int = 2048
    linear_layers: tuple[int, ...] = (1, 6, 11, 16, 21)
    window_layers: tuple[int, ...] = (2, 7, 12, 17, 22)
    attention_layers: tuple[int, ...] = ()
    mlp: bool = True
    linear_kind: LinearKind = "prefix"
    num_heads: int = 16
    feature_dim: int = 16
    window_heads: int = 16
    window: int = 128
    enc_len: int = 1024
    conv_kernel: int = 3
    conv_expand: int = 4
    conv_bias: bool = True
    norm_eps: float = 1e-5
    linear_eps: float = 1e-12
    rope_base: float = 10000.0
    max_seq_len: int | None = None
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    implementation: str = "auto"
    chunk_size: int | None = None

    @property
    def window_implementation(self) -> str:
        """The sliding-window layers' implementation: `implementation` where the op offers it, else "auto" (the
        banded XLA path; there is no sliding-window kernel for "pallas" to pick)."""
        return closest_implementation(self.implementation, SWA_IMPLEMENTATIONS)

    @property
    def attention_implementation(self) -> str:
        """The "attention" mixer's (zoology's recall baseline) implementation, by the same rule: "reference" and
        "xla" (blocked flash attention) carry over, "pallas" becomes "auto" (no softmax-attention kernel here)."""
        return closest_implementation(self.implementation, ATTENTION_IMPLEMENTATIONS)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_inner", "num_heads", "feature_dim", "window_heads",
                     "window", "enc_len", "conv_kernel", "conv_expand"):
            positive_int(name, getattr(self, name))
        for name in ("norm_eps", "linear_eps", "rope_base", "init_std"):
            positive_float(name, getattr(self, name))
        if self.max_seq_len is not None:
            positive_int("max_seq_len", self.max_seq_len)
        if self.chunk_size is not None:
            positive_int("chunk_size", self.chunk_size)
        one_of("linear_kind", self.linear_kind, ("prefix", "causal"))
        one_of("dtype", self.dtype, tuple(DTYPES))
        one_of("param_dtype", self.param_dtype, tuple(DTYPES))
        one_of("implementation", self.implementation, IMPLEMENTATIONS)
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        if self.d_model % self.window_heads:
            raise ValueError(f"window_heads={self.window_heads} must divide d_model={self.d_model}")
        if not isinstance(self.mlp, bool):
            raise ValueError(f"mlp must be true or false; got {self.mlp!r}")
        if self.window_layers and (self.d_model // self.window_heads) % 2:
            raise ValueError(
                f"window_heads={self.window_heads}: head size d_model/window_heads = "
                f"{self.d_model // self.window_heads} must be even for RoPE"
            )
        if self.conv_expand % 2:
            raise ValueError(f"conv_expand must be even (u1 and u2 halves); got {self.conv_expand}")
        for name in ("linear_layers", "window_layers", "attention_layers"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
                value = getattr(self, name)
            for i in value:
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layers:
                    raise ValueError(f"{name}: layer index {i!r} is out of range [0, n_layers={self.n_layers})")
            if len(set(value)) != len(value):
                raise ValueError(f"{name} has repeated layer indices: {value}")
        groups = {"linear_layers": self.linear_layers, "window_layers": self.window_layers,
                  "attention_layers": self.attention_layers}
        names = list(groups)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = sorted(set(groups[a]) & set(groups[b]))
                if both:
                    raise ValueError(f"layers {both} are in both {a} and {b}")

    # ------------------------------------------------------------------------------------------------------------

    @property
    def mixers(self) -> tuple[str, ...]:
        """The mixer of every layer: "prefix_linear" / "causal_linear", "sliding_window", "attention" or
        "base_conv"."""
        linear = "prefix_linear" if self.linear_kind == "prefix" else "causal_linear"
        return tuple(
            linear if i in self.linear_layers else "sliding_window" if i in self.window_layers
            else "attention" if i in self.attention_layers else "base_conv"
            for i in range(self.n_layers)
        )

    @property
    def encoder_len(self) -> int | None:
        """The PLA encoder length M when a layer is prefix linear attention (JRT-RNN); None for Based. The one
        answer to "does this model read an encoder?" (`DecoderLM.encoder_len` returns it)."""
        return self.enc_len if "prefix_linear" in self.mixers else None

    @classmethod
    def preset(cls, name: str, **overrides) -> JRTConfig:
        """A named configuration (see `JRT_PRESETS`), optionally with fields replaced."""
        if name not in JRT_PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(JRT_PRESETS)}")
        return dataclasses.replace(JRT_PRESETS[name], **overrides)


def _release(d_model, n_layers, n_inner, linear_layers, window_layers, linear_kind):
    return JRTConfig(d_model=d_model, n_layers=n_layers, n_inner=n_inner, linear_layers=linear_layers,
                     window_layers=window_layers, linear_kind=linear_kind)


_L360, _W360 = (1, 6, 11, 16, 21), (2, 7, 12, 17, 22)
_L1B, _W1B = _L360 + (27, 33), _W360 + (28, 34)
_TINY = dict(vocab_size=512, d_model=128, n_layers=8, n_inner=256, linear_layers=(1, 6), window_layers=(2, 7),
             num_heads=4, feature_dim=16, window_heads=4, window=32, enc_len=128)

# Micro: two linear-attention layers (one to read, one to retrieve) and a short window, so that recall over more
# than 8 tokens must go through the linear-attention state — what the synthetic recall tasks measure.
_MICRO = dict(vocab_size=512, d_model=64, n_layers=4, n_inner=128, linear_layers=(1, 3), window_layers=(2,),
              num_heads=4, feature_dim=16, window_heads=4, window=8, enc_len=64)

# Recall layouts after Zoology's MQAR models (see the module docstring): 2 blocks, BaseConv then the mixer, 1 head,
# no window, no MLP; a 256-row embedding covers MQAR with 64 keys + 64 values and set-disjointness universes < 252.
_RECALL = dict(vocab_size=256, d_model=64, n_layers=2, n_inner=128, window_layers=(), num_heads=1, feature_dim=16,
               window_heads=1, enc_len=1024, mlp=False)

#: Presets. The four release shapes (HazyResearch JRT-360M-30B, JRT-1B-50B, based-360M-30B, based-1b-50b),
#: tiny variants with the same layout pattern (vocab 512: bytes + specials; 1.5 M parameters) for CPU demos and
#: the decode benchmark, micro variants (0.2 M parameters) for CPU training runs of a few minutes, and the recall
#: layouts (Zoology's two-block MQAR models; the module docstring).
JRT_PRESETS: dict[str, JRTConfig] = {
    "jrt-360m": _release(1024, 26, 2048, _L360, _W360, "prefix"),
    "jrt-1.3b": _release(1792, 36, 3584, _L1B, _W1B, "prefix"),
    "based-360m": _release(1024, 26, 2048, _L360, _W360, "causal"),
    "based-1.3b": _release(1792, 36, 3584, _L1B, _W1B, "causal"),
    "jrt-tiny": JRTConfig(**_TINY, linear_kind="prefix"),
    "based-tiny": JRTConfig(**_TINY, linear_kind="causal"),
    "jrt-micro": JRTConfig(**_MICRO, linear_kind="prefix"),
    "based-micro": JRTConfig(**_MICRO, linear_kind="causal"),
    "recall-based": JRTConfig(**_RECALL, linear_layers=(1,), linear_kind="causal"),
    "recall-jrt": JRTConfig(**_RECALL, linear_layers=(1,), linear_kind="prefix"),
    "recall-attention": JRTConfig(**_RECALL, linear_layers=(), attention_layers=(1,), linear_kind="causal"),
}
