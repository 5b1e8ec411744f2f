"""`JRTLM`: the JRT-RNN / Based language model (Flax NNX).

    x = embed(tokens)                                   # float32 residual stream
    for block in layers:
        x += mixer(norm1(x));  x += mlp(norm2(x))       # pre-norm; mixer per `config.mixers`
    logits = final_norm(x) @ embed.embeddingᵀ           # tied head, float32 logits

Parameter paths follow the release's names: ``embed.embedding``, ``layers.{i}.norm1.scale``,
``layers.{i}.mixer.*``, ``layers.{i}.norm2.scale``, ``layers.{i}.mlp.fc1.kernel`` / ``fc2.kernel``,
``final_norm.scale``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax.nn.constraints import constrain
from jrt_jax import nn
from jrt_jax.models._checks import check_enc_len, check_enc_lens, check_mask_shape, check_tokens
from jrt_jax.models.jrt_config import JRTConfig
from jrt_jax.nn.axes import EMBED, VOCAB, partitioned
from jrt_jax.nn.dense import resolve_dtype
from jrt_jax.nn.padding import positions_from_mask

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every mixer may need about the sequence: its mask, RoPE positions and encoder length."""

    mask: jax.Array | None
    positions: jax.Array
    enc_len: int
    enc_lens: jax.Array | None = None


class JRTBlock(nnx.Module):
    """One pre-norm block: ``x += mixer(norm1(x)); x += mlp(norm2(x))`` with a float32 residual."""

    def __init__(self, config: JRTConfig, mixer: str, *, rngs: nnx.Rngs):
        c = config
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype, "param_dtype")
        out_std = c.init_std / (2 * c.n_layers) ** 0.5  # GPT-2 / release rescaling of residual projections
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.kind = mixer
        self.norm1 = nn.RMSNorm(c.d_model, eps=c.norm_eps, **common)
        self.norm2 = nn.RMSNorm(c.d_model, eps=c.norm_eps, **common)
        la = dict(feature_dim=c.feature_dim, eps=c.linear_eps, implementation=c.implementation,
                  chunk_size=c.chunk_size, init_std=c.init_std, out_init_std=out_std, **common)
        if mixer == "prefix_linear":
            self.mixer = nn.PrefixLinearAttention(c.d_model, c.num_heads, **la)
        elif mixer == "causal_linear":
            self.mixer = nn.CausalLinearAttention(c.d_model, c.num_heads, **la)
        elif mixer == "sliding_window":
            self.mixer = nn.SlidingWindowAttention(
                c.d_model, c.window_heads, window=c.window, rope_base=c.rope_base,
                implementation="xla" if c.implementation == "pallas" else c.implementation,
                init_std=c.init_std, out_init_std=out_std, **common)
        elif mixer == "base_conv":
            self.mixer = nn.BaseConv(c.d_model, kernel_size=c.conv_kernel, expand=c.conv_expand,
                                     use_bias=c.conv_bias, init_std=c.init_std, out_init_std=out_std, **common)
        else:
            raise ValueError(f"unknown mixer {mixer!r}")
        self.mlp = nn.GatedMLP(c.d_model, c.n_inner, init_std=c.init_std, out_init_std=out_std, **common)

    def _mixer_kwargs(self, ctx: _Context) -> dict:
        if self.kind == "prefix_linear":
            return dict(mask=ctx.mask, enc_len=ctx.enc_len, enc_lens=ctx.enc_lens)
        if self.kind == "sliding_window":
            return dict(mask=ctx.mask, positions=ctx.positions)
        return dict(mask=ctx.mask)

    def _mlp(self, x):
        return x + self.mlp(self.norm2(x)).astype(_F32)

    def __call__(self, x: jax.Array, ctx: _Context) -> jax.Array:
        x = x + self.mixer(self.norm1(x), **self._mixer_kwargs(ctx)).astype(_F32)
        return self._mlp(x)

    def prefill(self, x: jax.Array, ctx: _Context):
        y, cache = self.mixer.prefill(self.norm1(x), **self._mixer_kwargs(ctx))
        return self._mlp(x + y.astype(_F32)), cache

    def step(self, x_t: jax.Array, cache, positions: jax.Array):
        h = self.norm1(x_t)
        if self.kind == "sliding_window":
            y, cache = self.mixer.step(h, cache, positions=positions)
        else:
            y, cache = self.mixer.step(h, cache)
        return self._mlp(x_t + y.astype(_F32)), cache


class JRTLM(nnx.Module):
    """JRT-RNN or Based language model; see `JRTConfig` for the shape.

    ``JRTLM(config, rngs=nnx.Rngs(0))`` builds it; ``nnx.eval_shape(lambda: JRTLM(config, rngs=nnx.Rngs(0)))``
    gives the abstract model without allocating.
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

    # --- helpers -----------------------------------------------------------------------------------------------

    @property
    def max_length(self) -> int | None:
        """Longest sequence accepted (`config.max_seq_len`; None = unbounded)."""
        return self.config.max_seq_len

    #: Decoding state size does not depend on a cache length (no KV cache).
    uses_kv_cache = False

    def _context(self, tokens, mask, enc_len) -> _Context:
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
        return _Context(mask=mask, positions=positions_from_mask(mask, t, b), enc_len=enc_len, enc_lens=enc_lens)

    def _embed(self, tokens):
        return self.embed(tokens).astype(_F32)

    def _logits(self, x):
        h = self.final_norm(x).astype(self.dtype)
        return jnp.einsum("...d,vd->...v", h, self.embed.embedding[...].astype(self.dtype),
                          preferred_element_type=_F32)

    # --- forward, prefill, decode ------------------------------------------------------------------------------

    def __call__(self, tokens: jax.Array, *, enc_len: int | None = None, mask: jax.Array | None = None):
        """Logits [B, T, V] (float32) of `tokens` [B, T].

        Args:
          tokens: int [B, T], ids in [0, vocab_size).
          enc_len: encoder length of the PLA layers: an int in [1, T] (default min(M, T)) — the encoder of a row is
            its first min(enc_len, real length) real tokens, counted after any left padding — or an int array
            [B] of per-row lengths (each capped at min(M, T) and at the row's real length), e.g. the prompt
            lengths when scoring prompt + continuation as `jrt_jax.generate` decodes it.
          mask: optional [B, T] bool, True = real token. Pads are excluded from every mixer and RoPE positions
            count real tokens only, so a left-padded row gives the same logits as the row alone.
        """
        ctx = self._context(tokens, mask, enc_len)
        x = self._embed(tokens)
        x = constrain(x)
        for layer in self.layers:
            x = constrain(layer(x, ctx))
        return self._logits(x)

    def prefill(self, tokens, *, mask=None, enc_len=None, cache_len=None, all_logits: bool = False):
        """Parallel pass over a prompt that also returns the decoding caches.

        Returns:
          (logits, caches): logits [B, T, V] if `all_logits` else the last position's [B, V]; caches a tuple with
          one entry per layer (`ops.LinearAttentionState`, `nn.SlidingWindowCache` or `nn.ConvCache`).
          `cache_len` is ignored (no cache here grows with the sequence).
        """
        del cache_len
        ctx = self._context(tokens, mask, enc_len)
        x = self._embed(tokens)
        caches = []
        for layer in self.layers:
            x, cache = layer.prefill(x, ctx)
            caches.append(cache)
        x = x if all_logits else x[:, -1]
        return self._logits(x), tuple(caches)

    def init_cache(self, batch: int, cache_len: int | None = None) -> tuple:
        """Empty per-layer caches (nothing read yet); PLA layers decoding from them have no encoder terms."""
        del cache_len
        return tuple(layer.mixer.init_cache(batch) for layer in self.layers)

    def decode_step(self, token: jax.Array, caches: tuple, *, positions: jax.Array):
        """One token per row: token [B] int, positions [B] (real tokens before it) → (logits [B, V], caches)."""
        x = self._embed(token)
        new = []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer.step(x, cache, positions)
            new.append(cache)
        return self._logits(x), tuple(new)
