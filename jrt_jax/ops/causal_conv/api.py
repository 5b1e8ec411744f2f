"""Public entry point of the depthwise causal 1-D convolution used by BaseConv.

    y[b, t, c] = Σ_k kernel[k, c] · x[b, t - (K-1) + k, c]        (no bias; kernel[K-1] hits the current token)

Positions before the row start read `initial_tail` (zeros by default). With packing (`segment_ids`) or padding
(`mask`) a tap never reads across a document boundary or from a pad: those inputs count as 0, and a padded
position's own output is 0. `initial_tail` belongs to the row's first document, as if it preceded the row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import Implementation, check_dim, check_float_array, resolve_implementation
from jrt_jax.ops.causal_conv.decode import causal_conv1d_step as _step
from jrt_jax.ops.causal_conv.reference import reference_causal_conv1d
from jrt_jax.ops.causal_conv.xla import shifted_causal_conv1d
from jrt_jax.ops.segments import check_segments, resolve_segments, zero_excluded


#: what `implementation=` may name ("auto" = "xla"); `jrt_jax.ops._checks.Implementation` says what each means
IMPLEMENTATIONS = ("auto", "reference", "xla")

def causal_conv1d(
    x,
    kernel,
    *,
    segment_ids=None,
    mask=None,
    initial_tail=None,
    return_tail: bool = False,
    implementation: str | Implementation = "auto",
):
    """Depthwise causal convolution without bias, packing- and padding-aware.

    Args:
      x: [B, T, C] input.
      kernel: [K, C] depthwise taps; ``kernel[K-1]`` multiplies the current token (PyTorch ``Conv1d`` weight
        [C, 1, K] maps to ``kernel[k, c] = weight[c, 0, k]``).
      segment_ids: optional [B, T] int document ids, 0 = padding (see `jrt_jax.ops.segments`): a tap reads
        x[j] only if j is real and in the same document as t.
      mask: optional [B, T] bool, True = real token (one document per row, with holes). With `segment_ids`,
        a token is real only where both say so. Excluded inputs are selected away at entry (a NaN there never
        reaches another output or gradient).
      initial_tail: optional [B, K-1, C], the K-1 inputs before the row (oldest first); read by the row's first
        document only. Default zeros.
      return_tail: also return the tail after the row, for `causal_conv1d_step`.
      implementation: "reference" (explicit band of weights), "xla" (K shifted slices), "auto" (= "xla").

    Returns:
      y [B, T, C] in the result dtype of x and kernel (fp32 math inside); with `return_tail`, (y, tail) where
      tail [B, K-1, C] (x's dtype) holds the last K-1 inputs of the row's last document (zeros for pads,
      other documents, and positions before the row unless `initial_tail` filled them).
    """
    check_float_array("x", x, 3)
    check_float_array("kernel", kernel, 2)
    b, t, c = x.shape
    kk = kernel.shape[0]
    check_dim("kernel", kernel.shape[1], c, "number of channels (axis 1, as x axis 2)")
    if kk < 1:
        raise ValueError(f"kernel: kernel size (axis 0) must be at least 1; got {kk}")
    if t < 1:
        raise ValueError(f"x: sequence length (axis 1) must be at least 1; got {t}")
    if initial_tail is not None:
        check_float_array("initial_tail", initial_tail, 3)
        if tuple(initial_tail.shape) != (b, kk - 1, c):
            raise ValueError(
                f"initial_tail must have shape [batch, K-1, C] = {(b, kk - 1, c)}; got {tuple(initial_tail.shape)}"
            )
    impl = resolve_implementation(implementation, IMPLEMENTATIONS, "causal_conv1d (no Pallas kernel)")
    check_segments(segment_ids, mask, b, t)
    return _causal_conv1d(x, kernel, segment_ids, mask, initial_tail, return_tail=bool(return_tail),
                          reference=impl is Implementation.REFERENCE)


@functools.partial(jax.jit, static_argnames=("return_tail", "reference"))
def _causal_conv1d(x, kernel, segment_ids, mask, initial_tail, *, return_tail, reference):
    b, t, c = x.shape
    kk = kernel.shape[0]
    seg = resolve_segments(segment_ids, mask, b, t)
    out_dtype = jnp.result_type(x.dtype, kernel.dtype)

    head = jnp.zeros((b, kk - 1, c), x.dtype) if initial_tail is None else initial_tail.astype(x.dtype)
    if seg is not None:
        x = zero_excluded(x, seg.real)
    xe = jnp.concatenate([head, x], axis=1)  # [B, K-1+T, C]
    if seg is None:
        real_e = run_e = None
    else:
        real_e = jnp.concatenate([jnp.full((b, kk - 1), initial_tail is not None), seg.real], axis=1)
        run_e = jnp.concatenate([jnp.broadcast_to(seg.run[:, :1], (b, kk - 1)), seg.run], axis=1)

    if reference:
        if seg is None:
            allowed = jnp.ones((b, t, t + kk - 1), bool)
        else:
            allowed = (run_e[:, None, :] == seg.run[:, :, None]) & real_e[:, None, :] & seg.real[:, :, None]
        y = reference_causal_conv1d(xe, kernel, allowed)
    else:
        taps = None
        if seg is not None:  # tap i at t reads xe[t + i] = x[t - (K-1) + i]
            taps = jnp.stack([
                (run_e[:, i : i + t] == seg.run) & real_e[:, i : i + t] & seg.real for i in range(kk)
            ])
        y = shifted_causal_conv1d(xe, kernel, taps)
    y = y.astype(out_dtype)
    if not return_tail:
        return y
    tail = xe[:, t:]  # the last K-1 entries of [head | x]
    if seg is not None:
        keep = real_e[:, t:] & (run_e[:, t:] == seg.run[:, -1:])
        tail = jnp.where(keep[..., None], tail, jnp.zeros((), tail.dtype))
    return y, tail


def causal_conv1d_step(tail, x_t, kernel):
    """One decoding step: (y_t [B, C], new tail [B, K-1, C]) from tail [B, K-1, C], x_t [B, C], kernel [K, C].

    y_t = Σ_k kernel[k] · [tail | x_t][k] (fp32 math, result dtype of x_t and kernel); the new tail drops the
    oldest input and appends x_t (in tail's dtype). Prefill with `causal_conv1d(..., return_tail=True)` and then
    stepping equals one `causal_conv1d` over the whole sequence.
    """
    check_float_array("tail", tail, 3)
    check_float_array("x_t", x_t, 2)
    check_float_array("kernel", kernel, 2)
    check_dim("kernel", kernel.shape[1], x_t.shape[1], "number of channels (axis 1, as x_t axis 1)")
    return _jit_step(tail, x_t, kernel)


_jit_step = jax.jit(_step)
