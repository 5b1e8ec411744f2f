"""Taylor linear-attention mixers: PrefixLinearAttention (JRT-RNN) and CausalLinearAttention (Based).

Both project, call `jrt_jax.ops`, and project back:

    q, k = proj_q(x), proj_k(x)                       # d → H·F   (raw features, φ applied inside the op)
    v    = proj_v(x)                                  # d → d     (H heads of D = d/H)
    PLA:   ke, ve = proj_k_enc(x[:M]), proj_v_enc(x[:M])
           y = ops.prefix_linear_attention(q, k, v, ke, ve)
    Based: y = ops.linear_attention(q, k, v)
    out  = out_proj(y)                                # d → d

No biases. Decoding state: `ops.LinearAttentionState` (kv [B, H, Φ, D], z [B, H, Φ], fp32, Φ = 153 for F = 16),
constant in the sequence length. After a PLA prefill the encoder terms are already in the state, so decoding
uses only proj_q / proj_k / proj_v (`ops.linear_attention_step`).

Padding: pads are excluded (``padding="exclude"``). For PLA the encoder of a row is its first `enc_len` real
tokens (capped by the row's length), or its first `enc_lens[b]`: the op's ``enc_mask`` marks exactly those
positions, wherever left padding put them (the encoder projections then cover all T positions; without a mask
or per-row lengths they cover only the first `enc_len`). With packed documents (`segment_ids`) the encoder of
each document is its own first `enc_len` tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jrt_jax import ops
from jrt_jax.nn.axes import EMBED, FEATURE, HEADS
from jrt_jax.nn.dense import linear
from jrt_jax.ops.segments import document_ids


class CausalLinearAttention(nnx.Module):
    """Based causal linear attention with the second-order Taylor feature map.

    Parameters: ``proj_q.kernel``, ``proj_k.kernel`` [d, H·F] (embed, feature); ``proj_v.kernel`` [d, d]
    (embed, heads); ``out_proj.kernel`` [d, d] (heads, embed).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        feature_dim: int = 16,
        eps: float = 1e-12,
        implementation: str = "auto",
        chunk_size: int | None = None,
        init_std: float = 0.02,
        out_init_std: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        self.num_heads = num_heads
        self.feature_dim = feature_dim
        self.head_dim = d_model // num_heads
        self.eps = float(eps)
        self.implementation = implementation
        self.chunk_size = chunk_size
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_q = linear(d_model, num_heads * feature_dim, (EMBED, FEATURE), stddev=init_std, **kw)
        self.proj_k = linear(d_model, num_heads * feature_dim, (EMBED, FEATURE), stddev=init_std, **kw)
        self.proj_v = linear(d_model, d_model, (EMBED, HEADS), stddev=init_std, **kw)
        self.out_proj = linear(d_model, d_model, (HEADS, EMBED), stddev=out_init_std or init_std, **kw)

    def _heads(self, x, proj, dim):
        return proj(x).reshape(x.shape[:-1] + (self.num_heads, dim))

    def _op_kwargs(self):
        return dict(eps=self.eps, implementation=self.implementation, chunk_size=self.chunk_size)

    def _run(self, x, mask, return_state):
        b, t, _ = x.shape
        q = self._heads(x, self.proj_q, self.feature_dim)
        k = self._heads(x, self.proj_k, self.feature_dim)
        v = self._heads(x, self.proj_v, self.head_dim)
        out = ops.linear_attention(q, k, v, mask=mask, padding="exclude", return_state=return_state,
                                   **self._op_kwargs())
        y, state = out if return_state else (out, None)
        return self.out_proj(y.reshape(b, t, -1)), state

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """x [B, T, d], mask [B, T] (True = real; pads excluded) → [B, T, d]."""
        return self._run(x, mask, False)[0]

    def prefill(self, x, *, mask=None) -> tuple[jax.Array, ops.LinearAttentionState]:
        """As `__call__`, plus the recurrent state after the last token."""
        return self._run(x, mask, True)

    def init_cache(self, batch: int) -> ops.LinearAttentionState:
        """The empty state."""
        return ops.zero_state(batch, self.num_heads, self.feature_dim, self.head_dim)

    def step(self, x_t: jax.Array, state: ops.LinearAttentionState):
        """One token: x_t [B, d] → (y_t [B, d], new state). Uses the causal projections only."""
        q = self._heads(x_t, self.proj_q, self.feature_dim)
        k = self._heads(x_t, self.proj_k, self.feature_dim)
        v = self._heads(x_t, self.proj_v, self.head_dim)
        y, state = ops.linear_attention_step(state, q, k, v, eps=self.eps)
        return self.out_proj(y.reshape(x_t.shape[0], -1)), state


class PrefixLinearAttention(CausalLinearAttention):
    """Prefix linear attention (JRT-RNN): every token also reads all encoder tokens (the first `enc_len`).

    Parameters: those of `CausalLinearAttention` plus ``proj_k_enc.kernel`` [d, H·F] (embed, feature) and
    ``proj_v_enc.kernel`` [d, d] (embed, heads).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        feature_dim: int = 16,
        eps: float = 1e-12,
        implementation: str = "auto",
        chunk_size: int | None = None,
        init_std: float = 0.02,
        out_init_std: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(d_model, num_heads, feature_dim=feature_dim, eps=eps, implementation=implementation,
                         chunk_size=chunk_size, init_std=init_std, out_init_std=out_init_std, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        kw = dict(stddev=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_k_enc = linear(d_model, num_heads * feature_dim, (EMBED, FEATURE), **kw)
        self.proj_v_enc = linear(d_model, d_model, (EMBED, HEADS), **kw)

    def _run(self, x, mask, return_state, enc_len=None, enc_lens=None, segment_ids=None):
        b, t, _ = x.shape
        if enc_len is None:
            raise ValueError("PrefixLinearAttention needs enc_len (the encoder length M)")
        if not 1 <= enc_len <= t:
            raise ValueError(f"enc_len must be in [1, T={t}]; got {enc_len}")
        q = self._heads(x, self.proj_q, self.feature_dim)
        k = self._heads(x, self.proj_k, self.feature_dim)
        v = self._heads(x, self.proj_v, self.head_dim)
        enc_mask = encoder_mask(mask, segment_ids, enc_len, enc_lens, b, t)
        x_enc = x if enc_mask is not None else x[:, :enc_len]
        k_enc = self._heads(x_enc, self.proj_k_enc, self.feature_dim)
        v_enc = self._heads(x_enc, self.proj_v_enc, self.head_dim)
        out = ops.prefix_linear_attention(q, k, v, k_enc, v_enc, mask=mask, padding="exclude", enc_mask=enc_mask,
                                          segment_ids=segment_ids, return_state=return_state, **self._op_kwargs())
        y, state = out if return_state else (out, None)
        return self.out_proj(y.reshape(b, t, -1)), state

    def __call__(self, x: jax.Array, *, enc_len: int, mask: jax.Array | None = None,
                 enc_lens: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
        """x [B, T, d] → [B, T, d].

        The encoder of row b is its first min(enc_len, L_b) real tokens (L_b its real length), or with per-row
        `enc_lens` [B] its first min(enc_lens[b], L_b, enc_len) tokens; with `segment_ids` [B, T] (packed
        documents, 0 = padding) the first `enc_len` tokens of every document.
        """
        return self._run(x, mask, False, enc_len, enc_lens, segment_ids)[0]

    def prefill(self, x, *, enc_len: int, mask=None, enc_lens=None,
                segment_ids=None) -> tuple[jax.Array, ops.LinearAttentionState]:
        """As `__call__`, plus the state with the encoder terms folded in (continue with `step`)."""
        return self._run(x, mask, True, enc_len, enc_lens, segment_ids)


def encoder_mask(mask, segment_ids, enc_len: int, enc_lens, batch: int, seq: int):
    """[B, T] bool marking the encoder tokens: each row's (or, packed, each document's) first `enc_len` real
    tokens, or its first `enc_lens[b]`; None when that is simply positions [0, enc_len) of every row."""
    if mask is None and enc_lens is None and segment_ids is None:
        return None
    real = jnp.ones((batch, seq), bool) if mask is None else mask.astype(bool)
    if segment_ids is not None:
        real = real & (segment_ids != 0)
        doc, _ = document_ids(jnp.where(real, segment_ids, 0))
        # index of each real token inside its document: real tokens so far minus those before the document
        count = jnp.cumsum(real.astype(jnp.int32), axis=1)
        first = jnp.concatenate([jnp.ones_like(doc[:, :1], bool), doc[:, 1:] != doc[:, :-1]], axis=1)
        before = jax.lax.cummax(jnp.where(first, count - real.astype(jnp.int32), 0), axis=1)
        index = count - 1 - before
    else:
        index = jnp.cumsum(real.astype(jnp.int32), axis=1) - 1
    limit = jnp.full((batch, 1), enc_len, jnp.int32)
    if enc_lens is not None:
        limit = jnp.minimum(limit, jnp.asarray(enc_lens, jnp.int32)[:, None])
    return real & (index < limit)
