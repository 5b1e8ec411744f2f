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
import numpy as np
from flax import nnx

from jrt_jax import nn
from jrt_jax.models._checks import (
    check_enc_len,
    check_enc_lens,
    check_mask,
    check_start,
    check_tokens,
    is_concrete,
)
from jrt_jax.models.decoder import DecoderBlock, DecoderLM
from jrt_jax.models.jrt_config import JRTConfig
from jrt_jax.nn.axes import EMBED, VOCAB, partitioned
from jrt_jax.nn.constraints import embed_lookup
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import resolve_dtype

_F32 = jnp.float32


def _linear_kw(c: JRTConfig, out_std, common):
    return dict(feature_dim=c.feature_dim, eps=c.linear_eps, implementation=c.implementation,
                chunk_size=c.chunk_size, init_std=c.init_std, out_init_std=out_std, **common)


#: a mixer name of `JRTConfig.mixers` → its layer, built from (config, residual-projection init std, dtypes + rngs)
MIXERS = {
    "prefix_linear": lambda c, out_std, common: nn.PrefixLinearAttention(
        c.d_model, c.num_heads, **_linear_kw(c, out_std, common)),
    "causal_linear": lambda c, out_std, common: nn.CausalLinearAttention(
        c.d_model, c.num_heads, **_linear_kw(c, out_std, common)),
    "sliding_window": lambda c, out_std, common: nn.SlidingWindowAttention(
        c.d_model, c.window_heads, window=c.window, rope_base=c.rope_base, implementation=c.window_implementation,
        init_std=c.init_std, out_init_std=out_std, **common),
    "base_conv": lambda c, out_std, common: nn.BaseConv(
        c.d_model, kernel_size=c.conv_kernel, expand=c.conv_expand, use_bias=c.conv_bias, init_std=c.init_std,
        out_init_std=out_std, **common),
    # Zoology's recall baseline: full softmax attention without positions (the convs give the order)
    "attention": lambda c, out_std, common: nn.Attention(
        c.d_model, c.num_heads, c.num_heads, c.d_model // c.num_heads, use_rope=False,
        implementation=c.attention_implementation, init_std=c.init_std,
        out_init_std=out_std, **common),
}


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
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; known mixers: {sorted(MIXERS)}")
        self.mixer = MIXERS[mixer](c, out_std, common)
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

    @property
    def encoder_len(self) -> int | None:
        """`config.enc_len` when a layer is prefix linear attention (JRT-RNN), None for Based."""
        return self.config.encoder_len

    def context(self, tokens, mask, enc_len, segment_ids) -> SequenceContext:
        check_tokens(tokens, self.config.vocab_size, self.max_length)
        b, t = tokens.shape
        mask = check_mask(mask, b, t)
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

    def chunk_context(self, tokens, mask, enc_len, start) -> SequenceContext:
        """A later prefill chunk. The encoder of a row must lie whole in one chunk: the chunk where the row's
        first real token is (so that every token of the row reads all of it). A row that starts in this chunk
        (start 0) takes its encoder here; a row that has consumed at least the encoder length continues as
        causal linear attention from its state (the encoder terms are in it). A row with 0 < start < encoder
        length and real tokens in this chunk would split its encoder: ValueError (checked when the values are
        concrete; under jit it is the caller's contract, as `jrt_jax.generate` keeps it)."""
        check_tokens(tokens, self.config.vocab_size, self.max_length)
        b, t = tokens.shape
        mask = check_mask(mask, b, t)
        start = check_start(start, b)
        if self.encoder_len is None:  # Based: no encoder
            return SequenceContext.for_chunk(b, t, start=start, mask=mask)
        if enc_len is None:
            cap = jnp.full((b,), self.config.enc_len, jnp.int32)
        elif hasattr(enc_len, "shape") and getattr(enc_len, "ndim", 0) == 1:
            cap = jnp.asarray(check_enc_lens(enc_len, b, None), jnp.int32)
        else:
            if isinstance(enc_len, bool) or not isinstance(enc_len, (int, np.integer)) or enc_len < 1:
                raise ValueError(f"enc_len must be an int >= 1 or an int array [batch]; got {enc_len!r}")
            cap = jnp.full((b,), int(enc_len), jnp.int32)
        if is_concrete(start) and is_concrete(cap) and (mask is None or is_concrete(mask)):
            has_real = np.ones(b, bool) if mask is None else np.asarray(mask).any(axis=1)
            s, c = np.asarray(start), np.asarray(cap)
            split = np.flatnonzero(has_real & (s > 0) & (s < c))
            if split.size:
                r = int(split[0])
                raise ValueError(f"row {r}: its encoder ({int(c[r])} tokens) would span prefill chunks: it holds "
                                 f"{int(s[r])} real tokens before this chunk; the chunk holding a row's first "
                                 f"real token must hold its whole encoder")
        enc_lens = jnp.where(jnp.asarray(start) == 0, cap, 0)
        return SequenceContext.for_chunk(b, t, start=start, mask=mask, enc_len=t, enc_lens=enc_lens)

    def embed_input(self, tokens):
        return embed_lookup(self.embed, tokens).astype(_F32)

    def output_logits(self, x):
        h = self.final_norm(x).astype(self.dtype)
        return jnp.einsum("...d,vd->...v", h, self.embed.embedding[...].astype(self.dtype),
                          preferred_element_type=_F32)
