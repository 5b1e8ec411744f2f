"""`LlamaLM`: the Llama / Transformer++ decoder (Flax NNX), Hugging Face semantics and parameter names.

    x = embed_tokens(tokens)
    for layer in layers:
        x += self_attn(input_layernorm(x));  x += mlp(post_attention_layernorm(x))
    logits = lm_head(norm(x))          # or x @ embed_tokens.embeddingᵀ when tie_word_embeddings

Paths mirror the HF keys (``model.layers.{i}.self_attn.q_proj.weight`` → ``layers.{i}.self_attn.q_proj.kernel``,
transposed); the residual stream and logits are float32.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
from flax import nnx

from jrt_jax import nn
from jrt_jax.models._checks import check_mask, check_tokens
from jrt_jax.models.decoder import DecoderBlock, DecoderLM
from jrt_jax.models.llama_config import LlamaConfig
from jrt_jax.nn.axes import EMBED, VOCAB, partitioned
from jrt_jax.nn.constraints import embed_lookup
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import linear, resolve_dtype

_F32 = jnp.float32


class LlamaBlock(DecoderBlock):
    """``x += self_attn(input_layernorm(x)); x += mlp(post_attention_layernorm(x))``."""

    PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype, "param_dtype")
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **common)
        self.self_attn = nn.Attention(
            c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, rope_theta=c.rope_theta,
            rope_scaling=c.rope_scaling, max_position_embeddings=c.max_position_embeddings,
            use_bias=c.attention_bias, implementation=c.attention_implementation, init_std=c.initializer_range,
            **common)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, **common)
        self.mlp = nn.LlamaMLP(c.hidden_size, c.intermediate_size, use_bias=c.mlp_bias,
                               init_std=c.initializer_range, **common)


class LlamaLM(DecoderLM):
    """Llama causal LM; ``LlamaLM(config, rngs=nnx.Rngs(0))``. Same call / prefill / decode interface as JRTLM
    (`enc_len` must be None: no encoder); `prefill`'s `cache_len` (default T) is the KV-cache capacity."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig; got {type(config).__name__}")
        self.config = config
        self.dtype = resolve_dtype(config.dtype)
        param_dtype = resolve_dtype(config.param_dtype, "param_dtype")
        self.embed_tokens = nnx.Embed(
            config.vocab_size, config.hidden_size, dtype=self.dtype, param_dtype=param_dtype,
            embedding_init=partitioned(nnx.initializers.normal(config.initializer_range), (VOCAB, EMBED)),
            rngs=rngs)
        self.layers = nnx.List([LlamaBlock(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=_F32, param_dtype=param_dtype,
                               rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else linear(
            config.hidden_size, config.vocab_size, (EMBED, VOCAB), stddev=config.initializer_range,
            dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)

    @property
    def max_length(self) -> None:
        """No limit: as in transformers, any length runs. `max_position_embeddings` is metadata — the trained
        context that RoPE scaling refers to — and going past `trained_length` only warns (once)."""
        return None

    @property
    def trained_length(self) -> int:
        """max_position_embeddings × the RoPE scaling factor (1 without one): past it the model extrapolates."""
        scaling = self.config.rope_scaling or {}
        factor = float(scaling.get("factor", 1.0)) if scaling.get("rope_type", scaling.get("type")) != "dynamic" \
            else 1.0
        return int(self.config.max_position_embeddings * max(factor, 1.0))

    def context(self, tokens, mask, enc_len, segment_ids) -> SequenceContext:
        if enc_len is not None:
            raise ValueError(f"enc_len is a JRT-RNN setting; LlamaLM has no encoder (got enc_len={enc_len!r})")
        check_tokens(tokens, self.config.vocab_size, None)
        b, t = tokens.shape
        if t > self.trained_length:
            # One warning per distinct message (Python's default filter): the length is left out on purpose.
            warnings.warn(f"LlamaLM: sequences longer than max_position_embeddings x RoPE factor = "
                          f"{self.trained_length} positions extrapolate past the trained context", stacklevel=3)
        mask = check_mask(mask, b, t)
        return SequenceContext.for_sequence(b, t, mask=mask, segment_ids=segment_ids)

    def embed_input(self, tokens):
        return embed_lookup(self.embed_tokens, tokens).astype(_F32)

    def output_logits(self, x):
        h = self.norm(x).astype(self.dtype)
        if self.lm_head is None:
            w = self.embed_tokens.embedding[...].astype(self.dtype)
            return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=_F32)
        return jnp.einsum("...d,dv->...v", h, self.lm_head.kernel[...].astype(self.dtype),
                          preferred_element_type=_F32)
