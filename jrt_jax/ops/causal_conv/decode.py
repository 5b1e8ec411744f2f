"""One decoding step of the depthwise causal conv: the last K-1 inputs (the tail) plus the current one."""

from __future__ import annotations

import jax.numpy as jnp

_F32 = jnp.float32


def causal_conv1d_step(tail, x_t, kernel):
    """y_t = Σ_k kernel[k] · [tail | x_t][k], and the new tail (the last K-1 inputs, x_t included).

    Args:
      tail: [B, K-1, C], the previous K-1 inputs, oldest first (zeros before the start of a document), as
        returned by `causal_conv1d(..., return_tail=True)` or a previous step.
      x_t: [B, C], the current input.
      kernel: [K, C]; ``kernel[K-1]`` multiplies the current input.

    Returns:
      (y_t [B, C] in the result dtype of x_t and kernel (fp32 math inside), new tail [B, K-1, C] in tail's dtype).
    """
    kk = kernel.shape[0]
    if tail.ndim != 3 or tail.shape[1] != kk - 1 or tail.shape[0] != x_t.shape[0] or tail.shape[2] != x_t.shape[-1]:
        raise ValueError(
            f"tail must have shape [batch, K-1, C] = {(x_t.shape[0], kk - 1, x_t.shape[-1])}; got {tuple(tail.shape)}"
        )
    window = jnp.concatenate([tail.astype(_F32), x_t.astype(_F32)[:, None]], axis=1)  # [B, K, C]
    w = kernel.astype(_F32)
    y = window[:, 0] * w[0]
    for i in range(1, kk):
        y = y + window[:, i] * w[i]
    out_dtype = jnp.result_type(x_t.dtype, kernel.dtype)
    return y.astype(out_dtype), window[:, 1:].astype(tail.dtype)
