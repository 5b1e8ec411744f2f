"""Taylor linear-attention mixers: PrefixLinearAttention (JRT-RNN) and CausalLinearAttention (Based).

Both project, call `jrt_jax.ops`, and project back (the mixer protocol of `jrt_jax.nn.context`):

    q, k = proj_q(x), proj_k(x)                       # d → H·F   (raw features, φ applied inside the op)
    v    = proj_v(x)                                  # d → d     (H heads of D = d/H)
    PLA:   ke, ve = proj_k_enc(x[:M]), proj_v_enc(x[:M])
           y = ops.prefix_linear_attention(q, k, v, ke, ve)
    Based: y = ops.linear_attention(q, k, v)
    out  = out_proj(y)                                # d → d

No biases. Decoding state: `ops.LinearAttentionState` (kv [B, H, Φ, D], z [B, H, Φ], fp32, Φ = 153 for F = 16),
constant in the sequence length. After a PLA prefill the encoder terms are already in the state, so decoding
uses only proj_q / proj_k / proj_v (`ops.linear_attention_step`).

Encoder length: `SequenceContext.enc_len` / `enc_lens` of the call, else the constructor's `enc_len`; PLA
refuses a parallel pass that has neither (it would otherwise make the whole sequence the encoder).

Padding: pads are excluded (``padding="exclude"``). For PLA the encoder of a row is its first `enc_len` real
tokens (capped by the row's length), or its first `enc_lens[b]`: the op's ``enc_mask`` marks exactly those
positions, wherever left padding put them (the encoder projections then cover all T positions; without a mask
or per-row lengths they cover only the first `enc_len`). With packed documents (`segment_ids`) the encoder of
each document is its own first `enc_len` tokens.

Context parallelism: the op is called through `jrt_jax.parallel.run`, so inside `jrt_jax.nn.sequence_parallel`
(a sequence mesh axis of size > 1) it is the `jrt_jax.parallel` one (LASP-2: one all-gather of per-shard
states); an encoder of the first M positions is padded to T slots there, so an encoder may span shards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jrt_jax import ops, parallel
from jrt_jax.nn.axes import EMBED, FEATURE, HEADS
from jrt_jax.nn.context import SequenceContext
from jrt_jax.nn.dense import linear
from jrt_jax.nn.padding import document_positions


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

    #: the decoding state has a constant size
    cache_grows = False

    def _op_kwargs(self):
        return dict(eps=self.eps, implementation=self.implementation, chunk_size=self.chunk_size)

    def _qkv(self, x):
        return (self._heads(x, self.proj_q, self.feature_dim), self._heads(x, self.proj_k, self.feature_dim),
                self._heads(x, self.proj_v, self.head_dim))

    def _step(self, x, cache):
        """One token per row, x [B, 1, d]: the causal projections only (the encoder is in the state)."""
        q, k, v = self._qkv(x[:, 0])
        y, cache = ops.linear_attention_step(cache, q, k, v, eps=self.eps)
        return self.out_proj(y.reshape(x.shape[0], 1, -1)), cache

    def _run(self, op, arrays, ctx, cache, **kw):
        """(y, state after the last token or None): `op` through `jrt_jax.parallel.run` (the local op, or its
        context-parallel twin); the state is asked for only when a cache is carried (prefill)."""
        out = parallel.run(op, *arrays, mask=ctx.mask, padding="exclude", segment_ids=ctx.segment_ids,
                           initial_state=cache, return_state=cache is not None, **kw, **self._op_kwargs())
        return out if cache is not None else (out, None)

    def _attend(self, x, ctx, cache):
        return self._run(ops.linear_attention, self._qkv(x), ctx, cache)

    def __call__(self, x: jax.Array, ctx: SequenceContext | None = None, cache=None):
        """x [B, T, d] → (y [B, T, d], state or None); see `jrt_jax.nn.context` for ctx and cache.

        With a cache the pass continues from that state (prefill, or a later chunk of a long prompt) and
        returns the state after the last token; pads (`ctx.mask`) and packed documents (`ctx.segment_ids`)
        are excluded as `ops.linear_attention` does.
        """
        ctx = ctx or SequenceContext()
        if ctx.decode:
            return self._step(x, cache)
        y, state = self._attend(x, ctx, cache)
        return self.out_proj(y.reshape(x.shape[0], x.shape[1], -1)), None if cache is None else state

    def init_cache(self, batch: int, capacity: int | None = None) -> ops.LinearAttentionState:
        """The empty state (`capacity` is ignored: the state does not grow)."""
        del capacity
        return ops.zero_state(batch, self.num_heads, self.feature_dim, self.head_dim)


class PrefixLinearAttention(CausalLinearAttention):
    """Prefix linear attention (JRT-RNN): every token also reads all encoder tokens (the first M).

    The encoder length M (the released PyTorch layer's ``enc_length``) comes from the call's context when it
    gives one (``ctx.enc_len`` and/or per-row ``ctx.enc_lens``, as `jrt_jax.models.JRTLM` always does), else
    from the constructor's ``enc_len``; a parallel pass with neither raises ValueError rather than silently
    making the whole sequence the encoder (which would let position 0 read the last token). Tokens past the
    encoder are causal: position i reads every encoder token and the tokens j ≤ i.

    ``PrefixLinearAttention(64, 4, enc_len=16, rngs=nnx.Rngs(0))(x)`` uses the first min(16, T) tokens of
    each row as the encoder; ``layer(x, SequenceContext(enc_len=8))`` overrides that for one call.

    Parameters: those of `CausalLinearAttention` plus ``proj_k_enc.kernel`` [d, H·F] (embed, feature) and
    ``proj_v_enc.kernel`` [d, d] (embed, heads).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        enc_len: int | None = None,
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
        """enc_len: the default encoder length M (an int ≥ 1; capped at the sequence length T of a call),
        used when a call's context gives none; None = every parallel call must give it in its context."""
        if enc_len is not None:
            if isinstance(enc_len, bool) or not isinstance(enc_len, (int, np.integer)):
                raise TypeError(f"enc_len must be an int >= 1 or None; got {enc_len!r} ({type(enc_len).__name__})")
            if enc_len < 1:
                raise ValueError(f"enc_len must be an int >= 1 or None; got {enc_len!r}")
            enc_len = int(enc_len)
        super().__init__(d_model, num_heads, feature_dim=feature_dim, eps=eps, implementation=implementation,
                         chunk_size=chunk_size, init_std=init_std, out_init_std=out_init_std, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.enc_len = enc_len
        kw = dict(stddev=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_k_enc = linear(d_model, num_heads * feature_dim, (EMBED, FEATURE), **kw)
        self.proj_v_enc = linear(d_model, d_model, (EMBED, HEADS), **kw)

    def _encoder_length(self, ctx: SequenceContext, t: int) -> int:
        """The encoder length (cap) of a parallel pass over T = t tokens: ctx.enc_len, else T when the
        context gives per-row ctx.enc_lens, else min(constructor enc_len, T); neither → ValueError."""
        if ctx.enc_len is not None:
            if not 1 <= ctx.enc_len <= t:
                raise ValueError(f"enc_len must be in [1, T={t}]; got {ctx.enc_len}")
            return ctx.enc_len
        if ctx.enc_lens is not None:
            return t
        if self.enc_len is not None:
            return min(self.enc_len, t)
        raise ValueError("PrefixLinearAttention needs the encoder length enc_len: pass "
                         "PrefixLinearAttention(..., enc_len=M) or call it with SequenceContext(enc_len=M)")

    def _attend(self, x, ctx, cache):
        b, t, _ = x.shape
        enc_len = self._encoder_length(ctx, t)
        enc_mask = encoder_mask(ctx.mask, ctx.segment_ids, enc_len, ctx.enc_lens, b, t)
        x_enc = x if enc_mask is not None else x[:, :enc_len]
        k_enc = self._heads(x_enc, self.proj_k_enc, self.feature_dim)
        v_enc = self._heads(x_enc, self.proj_v_enc, self.head_dim)
        return self._run(ops.prefix_linear_attention, self._qkv(x) + (k_enc, v_enc), ctx, cache, enc_mask=enc_mask)

    def __call__(self, x: jax.Array, ctx: SequenceContext | None = None, cache=None):
        """x [B, T, d] → (y [B, T, d], state or None).

        The encoder length M is ctx.enc_len when the context sets it (an int in [1, T]); else T when the
        context gives only per-row `ctx.enc_lens`; else min(enc_len of the constructor, T). A parallel pass
        (training, scoring, prefill) with none of these raises ValueError; decoding steps (`ctx.decode`) need
        no encoder length. The encoder of row b is its first min(M, L_b) real tokens (L_b its real length),
        or with per-row `ctx.enc_lens` [B] its first min(enc_lens[b], L_b, M) tokens; with `ctx.segment_ids`
        (packed documents) the first M tokens of every document. The returned state has the encoder terms
        folded in: decoding steps use the causal projections only.
        """
        return super().__call__(x, ctx, cache)


def encoder_mask(mask, segment_ids, enc_len: int, enc_lens, batch: int, seq: int):
    """[B, T] bool marking the encoder tokens: each row's (or, packed, each document's) first `enc_len` real
    tokens, or its first `enc_lens[b]`; None when that is simply positions [0, enc_len) of every row."""
    if mask is None and enc_lens is None and segment_ids is None:
        return None
    real = jnp.ones((batch, seq), bool) if mask is None else mask.astype(bool)
    if segment_ids is not None:
        real = real & (segment_ids != 0)
    index = document_positions(real, segment_ids, batch, seq)
    limit = jnp.full((batch, 1), enc_len, jnp.int32)
    if enc_lens is not None:
        limit = jnp.minimum(limit, jnp.asarray(enc_lens, jnp.int32)[:, None])
    return real & (index < limit)
