"""`JRTLM`: the JRT-RNN / Based language model (Flax NNX).

    x = embed(tokens)                                   # float32 residual stream
    for block in layers:
        x += mixer(norm1(x));  x += mlp(norm2(x))       # pre-norm; mixer per `config.mixers`; no MLP
                                                        # part when config.mlp is False
    logits = final_norm(x) @ embed.embeddingᵀ           # tied head, float32 logits

Parameter paths follow the release's names: ``embed.embedding``, ``layers.{i}.norm1.scale``,
``layers.{i}.mixer.*``, ``layers.{i}.norm2.scale``, ``layers.{i}.mlp.fc1.kernel`` / ``fc2.kernel``,
``final_norm.scale``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jrt_jax import nn
from jrt_jax.models._checks import check_enc_len, check_enc_lens, check_mask_shape, check_tokens
from jrt_jax.models.decoder import DecoderBlock, DecoderLM
from jrt_jax.models.jrt_config import JRTConfig
from jrt_jax.nn.axes import EMBED, VOCAB, partitioned
from jrt_jax.nn.constraints import embed_lookup
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import resolve_dtype

_F32 = jnp.float32


class JRTBlock(DecoderBlock):
    """One pre-norm block: ``x += mixer(norm1(x)); x += mlp(norm2(x))`` with a float32 residual."""

    PARTS = ("norm1", "mixer", "norm2", "mlp")

    def __init__(self, config: JRTConfig, mixer: str, *, rngs: nnx.Rngs):
        c = config
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype, "param_dtype")
        out_std = c.init_std / (2 * c.n_layers) ** 0.5  # GPT-2 / release rescaling of residual projections
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.kind = mixer  # the mixer's name in `config.mixers` (parameter tables group by it)
        self.norm1 = nn.RMSNorm(c.d_model, eps=c.norm_eps, **common)
        # Mixer-only blocks (config.mlp=False) have neither the MLP nor its norm: `DecoderBlock` skips them.
        self.norm2 = nn.RMSNorm(c.d_model, eps=c.norm_eps, **common) if c.mlp else None
        la = dict(feature_dim=c.feature_dim, eps=c.linear_eps, implementation=c.implementation,
                  chunk_size=c.chunk_size, init_std=c.init_std, out_init_std=out_std, **common)
        if mixer == "prefix_linear":
            self.mixer = nn.PrefixLinearAttention(c.d_model, c.num_heads, **la)
        elif mixer == "causal_linear":
            self.mixer = nn.CausalLinearAttention(c.d_model, c.num_heads, **la)
        elif mixer == "sliding_window":
            self.mixer = nn.SlidingWindowAttention(
                c.d_model, c.window_heads, window=c.window, rope_base=c.rope_base,
                implementation=c.window_implementation, init_std=c.init_std, out_init_std=out_std, **common)
        elif mixer == "base_conv":
            self.mixer = nn.BaseConv(c.d_model, kernel_size=c.conv_kernel, expand=c.conv_expand,
                                     use_bias=c.conv_bias, init_std=c.init_std, out_init_std=out_std, **common)
        elif mixer == "attention":
            head_dim = c.d_model // c.num_heads
            self.mixer = nn.Attention(
                c.d_model, c.num_heads, c.num_heads, head_dim, use_rope=False,
                implementation="reference" if c.implementation == "reference" else None,
                init_std=c.init_std, out_init_std=out_std, **common)
        else:
            raise ValueError(f"unknown mixer {mixer!r}")
        self.mlp = nn.GatedMLP(c.d_model, c.n_inner, init_std=c.init_std, out_init_std=out_std, **common) \
            if c.mlp else None


class JRTLM(DecoderLM):
    """JRT-RNN or Based language model; see `JRTConfig` for the shape.

    ``JRTLM(config, rngs=nnx.Rngs(0))`` builds it; ``nnx.eval_shape(lambda: JRTLM(config, rngs=nnx.Rngs(0)))``
    gives the abstract model without allocating. `enc_len` of the forward / prefill: the encoder length of the
    PLA layers, an int in [1, T] (default min(M, T)) — the encoder of a row is its first min(enc_len, real
    length) real tokens, counted after any left padding; with `segment_ids` each document's first enc_len —
    or an int array [B] of per-row lengths (each capped at min(M, T) and at the row's real length), e.g. the
    prompt lengths when scoring prompt + continuation as `jrt_jax.generate` decodes it.
    """

    def __init__(self, config: JRTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, JRTConfig):
            raise TypeError(f"config must be a JRTConfig; got {type(config).__name__}")
        self.config = config
        self.dtype = resolve_dtype(config.dtype)
        param_dtype = resolve_dtype(config.param_dtype, "param_dtype")
        self.embed = nnx.Embed(
            config.vocab_size, config.d_model, dtype=self.dtype, param_dtype=param_dtype,
            embedding_init=partitioned(nnx.initializers.normal(config.init_std), (VOCAB, EMBED)), rngs=rngs)
        self.layers = nnx.List([JRTBlock(config, kind, rngs=rngs) for kind in config.mixers])
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps, dtype=_F32, param_dtype=param_dtype,
                                     rngs=rngs)

    @property
    def max_length(self) -> int | None:
        """Longest sequence accepted (`config.max_seq_len`; None = unbounded)."""
        return self.config.max_seq_len

    def context(self, tokens, mask, enc_len, segment_ids) -> SequenceContext:
        check_tokens(tokens, self.config.vocab_size, self.max_length)
        b, t = tokens.shape
        mask = check_mask_shape(mask, b, t)
        enc_lens = None
        if enc_len is None:
            enc_len = min(self.config.enc_len, t)
        elif hasattr(enc_len, "shape") and getattr(enc_len, "ndim", 0) == 1:
            enc_lens = check_enc_lens(enc_len, b, t)
            enc_len = min(self.config.enc_len, t)
        else:
            enc_len = check_enc_len(enc_len, t)
        return SequenceContext.for_sequence(b, t, mask=mask, segment_ids=segment_ids, enc_len=enc_len,
                                            enc_lens=enc_lens)

    def embed_input(self, tokens):
        return embed_lookup(self.embed, tokens).astype(_F32)

    def output_logits(self, x):
        h = self.final_norm(x).astype(self.dtype)
        return jnp.einsum("...d,vd->...v", h, self.embed.embedding[...].astype(self.dtype),
                          preferred_element_type=_F32)
