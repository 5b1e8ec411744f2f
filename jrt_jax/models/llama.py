"""`LlamaLM`: the Llama / Transformer++ decoder (Flax NNX), Hugging Face semantics and parameter names.

    x = embed_tokens(tokens)
    for layer in layers:
        x += self_attn(input_layernorm(x));  x += mlp(post_attention_layernorm(x))
    logits = lm_head(norm(x))          # or x @ embed_tokens.embeddingᵀ when tie_word_embeddings

Paths mirror the HF keys (``model.layers.{i}.self_attn.q_proj.weight`` → ``layers.{i}.self_attn.q_proj.kernel``,
transposed); the residual stream and logits are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax.nn.constraints import constrain
from jrt_jax import nn
from jrt_jax.models._checks import check_mask_shape, check_tokens
from jrt_jax.models.llama_config import LlamaConfig
from jrt_jax.nn.axes import EMBED, VOCAB, partitioned
from jrt_jax.nn.dense import linear, resolve_dtype
from jrt_jax.nn.padding import positions_from_mask

_F32 = jnp.float32


class LlamaBlock(nnx.Module):
    """``x += self_attn(input_layernorm(x)); x += mlp(post_attention_layernorm(x))``."""

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

    def _mlp(self, x):
        return x + self.mlp(self.post_attention_layernorm(x)).astype(_F32)

    def __call__(self, x, *, positions, mask, rope_len):
        y = self.self_attn(self.input_layernorm(x), positions=positions, mask=mask, rope_len=rope_len)
        return self._mlp(x + y.astype(_F32))

    def prefill(self, x, *, positions, mask, cache_len):
        y, cache = self.self_attn.prefill(self.input_layernorm(x), positions=positions, mask=mask,
                                          cache_len=cache_len)
        return self._mlp(x + y.astype(_F32)), cache

    def step(self, x_t, cache, positions):
        y, cache = self.self_attn.step(self.input_layernorm(x_t), cache, positions=positions)
        return self._mlp(x_t + y.astype(_F32)), cache


class LlamaLM(nnx.Module):
    """Llama causal LM; ``LlamaLM(config, rngs=nnx.Rngs(0))``. Same call / prefill / decode interface as JRTLM."""

    #: Decoding keeps a KV cache whose capacity is fixed at prefill (`cache_len`).
    uses_kv_cache = True

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
    def max_length(self) -> int | None:
        """Longest sequence accepted: `config.max_position_embeddings`, or None (no limit) under dynamic NTK
        scaling, which exists to run past that length: RoPE is rescaled to the sequence length, as transformers
        does."""
        scaling = self.config.rope_scaling
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "dynamic":
            return None
        return self.config.max_position_embeddings

    def _prepare(self, tokens, mask):
        check_tokens(tokens, self.config.vocab_size, self.max_length)
        b, t = tokens.shape
        mask = check_mask_shape(mask, b, t)
        return mask, positions_from_mask(mask, t, b)

    def _logits(self, x):
        h = self.norm(x).astype(self.dtype)
        if self.lm_head is None:
            w = self.embed_tokens.embedding[...].astype(self.dtype)
            return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=_F32)
        return jnp.einsum("...d,dv->...v", h, self.lm_head.kernel[...].astype(self.dtype),
                          preferred_element_type=_F32)

    def __call__(self, tokens: jax.Array, *, enc_len=None, mask: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, V] float32. `mask` [B, T] True = real (left padding: positions count real tokens).

        `enc_len` is accepted for interface compatibility with JRTLM and must be None.
        """
        if enc_len is not None:
            raise ValueError(f"enc_len is a JRT-RNN setting; LlamaLM has no encoder (got enc_len={enc_len!r})")
        mask, positions = self._prepare(tokens, mask)
        x = self.embed_tokens(tokens).astype(_F32)
        x = constrain(x)
        for layer in self.layers:
            x = constrain(layer(x, positions=positions, mask=mask, rope_len=tokens.shape[1]))
        return self._logits(x)

    def prefill(self, tokens, *, mask=None, enc_len=None, cache_len: int | None = None, all_logits: bool = False):
        """Parallel pass over the prompt, returning logits (last position, or all) and per-layer `nn.KVCache`s.

        `cache_len` (default T) is the KV cache capacity: prompt + tokens to be generated.
        """
        if enc_len is not None:
            raise ValueError(f"enc_len is a JRT-RNN setting; LlamaLM has no encoder (got enc_len={enc_len!r})")
        mask, positions = self._prepare(tokens, mask)
        cache_len = tokens.shape[1] if cache_len is None else cache_len
        x = self.embed_tokens(tokens).astype(_F32)
        caches = []
        for layer in self.layers:
            x, cache = layer.prefill(x, positions=positions, mask=mask, cache_len=cache_len)
            caches.append(cache)
        x = x if all_logits else x[:, -1]
        return self._logits(x), tuple(caches)

    def init_cache(self, batch: int, cache_len: int) -> tuple:
        """Empty per-layer KV caches of `cache_len` slots."""
        return tuple(layer.self_attn.init_cache(batch, cache_len) for layer in self.layers)

    def decode_step(self, token, caches, *, positions):
        """token [B], positions [B] → (logits [B, V], caches)."""
        x = self.embed_tokens(token).astype(_F32)
        new = []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer.step(x, cache, positions)
            new.append(cache)
        return self._logits(x), tuple(new)
