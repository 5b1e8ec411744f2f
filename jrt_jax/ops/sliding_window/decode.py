"""One decoding step of sliding-window attention over a ring buffer of the last `window` keys and values."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import matmul_precision

_F32 = jnp.float32
_PRECISION = matmul_precision(_F32)  # the fp32 oracle: fp32-accurate products on every backend
_NEG = -1e30


def sliding_window_step(cache_k, cache_v, cache_valid, q_t, k_t, v_t, *, slot, scale: float | None = None):
    """Attend from the current token over the cached keys plus itself, then write it into the ring buffer.

    Args:
      cache_k: [B, W, H, Dk] cached (rotated) keys; cache_v: [B, W, H, Dv]; cache_valid: [B, W] bool, False for
        empty slots and pads (those are selected away, whatever they hold).
      q_t, k_t: [B, H, Dk]; v_t: [B, H, Dv], the current token (always attended, as key j = i).
      slot: int or [] int32 array, the ring slot the current token is written to (position % W).
      scale: softmax scale, default 1/√Dk.

    Returns:
      (y_t, cache_k, cache_v, cache_valid): y_t [B, H, Dv] in the result dtype of q_t, k_t, v_t (fp32 math
      inside), and the buffers with slot `slot` holding k_t, v_t (cast to the buffers' dtypes), marked valid.
    """
    scale = 1.0 / q_t.shape[-1] ** 0.5 if scale is None else float(scale)
    out_dtype = jnp.result_type(q_t.dtype, k_t.dtype, v_t.dtype)
    q = q_t.astype(_F32)
    valid = cache_valid.astype(bool)[:, None, :]  # [B, 1, W]
    s_cache = jnp.einsum("bhd,bwhd->bhw", q, cache_k.astype(_F32), precision=_PRECISION) * scale
    s_self = jnp.einsum("bhd,bhd->bh", q, k_t.astype(_F32), precision=_PRECISION)[..., None] * scale
    s_cache = jnp.where(valid, s_cache, _NEG)
    peak = jnp.maximum(jnp.max(s_cache, axis=-1, keepdims=True), s_self)
    p_cache = jnp.where(valid, jnp.exp(s_cache - peak), 0.0)
    p_self = jnp.exp(s_self - peak)
    den = jnp.sum(p_cache, axis=-1, keepdims=True) + p_self
    v_cache = jnp.where(cache_valid.astype(bool)[:, :, None, None], cache_v.astype(_F32), 0.0)
    y = jnp.einsum("bhw,bwhd->bhd", p_cache, v_cache, precision=_PRECISION) + p_self * v_t.astype(_F32)
    y = (y / den).astype(out_dtype)
    b = q_t.shape[0]
    write = lambda buf, new: jax.lax.dynamic_update_index_in_dim(buf, new.astype(buf.dtype), slot, axis=1)
    return y, write(cache_k, k_t), write(cache_v, v_t), write(cache_valid, jnp.ones((b,), cache_valid.dtype))
