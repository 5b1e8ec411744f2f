"""Public entry points: causal Based linear attention, prefix linear attention (PLA), their recurrent form.

Layout is [batch, seq, heads, dim] as in `jax.nn.dot_product_attention`. q, k are the raw projections
(before the feature map, F features), v has D features. States are fp32 whatever the input dtype.

Padding (`mask` [B, T], True = real token) has two modes:

* ``padding="exclude"`` (default): padded tokens contribute nothing, as keys or as encoder tokens, and their
  own outputs are zero.
* ``padding="zero_keys"``: what the released JRT/Based checkpoints were evaluated with (prompts left-padded,
  raw k zeroed at pads). φ(0) = [1, 0, …], so every pad still adds v_pad to the numerator and 1 to the
  denominator. Use it to reproduce the release's numbers, not for new work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrt_jax.ops._checks import (
    Implementation,
    check_dim,
    check_eps,
    check_float_array,
    check_mask,
    check_positive_int,
    resolve_implementation,
)
from jrt_jax.ops.linear_attention import pallas as _pallas
from jrt_jax.ops.linear_attention import reference as _reference
from jrt_jax.ops.linear_attention import state as _state
from jrt_jax.ops.linear_attention import xla as _xla
from jrt_jax.ops.linear_attention.state import LinearAttentionState

DEFAULT_CHUNK_SIZE = 64
PADDING_MODES = ("exclude", "zero_keys")


def _check_qkv(q, k, v):
    check_float_array("q", q, 4)
    check_float_array("k", k, 4)
    check_float_array("v", v, 4)
    b, t, h, f = q.shape
    check_dim("k", k.shape[0], b, "batch size (axis 0, as q)")
    check_dim("v", v.shape[0], b, "batch size (axis 0, as q)")
    check_dim("k", k.shape[1], t, "sequence length (axis 1, as q)")
    check_dim("v", v.shape[1], t, "sequence length (axis 1, as q)")
    check_dim("k", k.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("v", v.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("k", k.shape[3], f, "feature size (axis 3, as q)")
    if t == 0:
        raise ValueError("q: sequence length (axis 1) must be at least 1; got 0")


def _check_encoder(q, v, k_enc, v_enc):
    check_float_array("k_enc", k_enc, 4)
    check_float_array("v_enc", v_enc, 4)
    b, t, h, f = q.shape
    check_dim("k_enc", k_enc.shape[0], b, "batch size (axis 0, as q)")
    check_dim("v_enc", v_enc.shape[0], b, "batch size (axis 0, as q)")
    check_dim("k_enc", k_enc.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("v_enc", v_enc.shape[2], h, "number of heads (axis 2, as q)")
    check_dim("k_enc", k_enc.shape[3], f, "feature size (axis 3, as q)")
    check_dim("v_enc", v_enc.shape[3], v.shape[3], "value size (axis 3, as v)")
    check_dim("v_enc", v_enc.shape[1], k_enc.shape[1], "encoder length M (axis 1, as k_enc)")
    if k_enc.shape[1] > t:
        raise ValueError(f"k_enc: encoder length M = {k_enc.shape[1]} must be <= the sequence length T = {t}")


def _resolve(q, k, v, k_enc, v_enc, mask, padding, eps, chunk_size, implementation):
    """Validate everything the user passed; return the normalised options."""
    _check_qkv(q, k, v)
    if k_enc is not None or v_enc is not None:
        if k_enc is None or v_enc is None:
            raise ValueError("k_enc and v_enc must be given together")
        _check_encoder(q, v, k_enc, v_enc)
    eps = check_eps(eps)
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}; got {padding!r}")
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else check_positive_int("chunk_size", chunk_size)
    impl = resolve_implementation(implementation)
    target = _pallas.kernel_target()
    reason = _pallas.unsupported_reason(q, v, chunk_size, target)
    if impl is Implementation.AUTO:
        on_accelerator = jax.default_backend() in ("tpu", "gpu", "cuda", "rocm")
        impl = Implementation.PALLAS if on_accelerator and reason is None else Implementation.XLA
    if impl is Implementation.PALLAS and reason is not None:
        raise ValueError(f"implementation='pallas' cannot run these inputs: {reason}; use 'xla' or 'auto'")
    mask = check_mask(mask, q.shape[0], q.shape[1])
    return mask, eps, chunk_size, impl, target if impl is Implementation.PALLAS else None


def _apply_padding(k, k_enc, mask, padding):
    """Turn the mask into what the implementations take: zeroed keys, or per-key weights (1 real, 0 pad)."""
    if mask is None:
        return k, k_enc, None, None
    m = 0 if k_enc is None else k_enc.shape[1]
    if padding == "zero_keys":
        k = jnp.where(mask[:, :, None, None], k, jnp.zeros((), k.dtype))
        if k_enc is not None:
            k_enc = jnp.where(mask[:, :m, None, None], k_enc, jnp.zeros((), k_enc.dtype))
        return k, k_enc, None, None
    key_w = mask.astype(jnp.float32)
    return k, k_enc, key_w, None if k_enc is None else key_w[:, :m]


_STATIC = ("eps", "padding", "scale_dim", "impl", "chunk_size", "target")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _attend_jit(q, k, v, k_enc, v_enc, mask, *, eps, padding, scale_dim, impl, chunk_size, target):
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    k, k_enc, key_w, enc_w = _apply_padding(k, k_enc, mask, padding)
    kwargs = dict(k_enc=k_enc, v_enc=v_enc, key_w=key_w, enc_w=enc_w, eps=eps, scale_dim=scale_dim)
    if impl is Implementation.REFERENCE:
        y, st = _reference.reference_linear_attention(q, k, v, **kwargs)
    else:
        if impl is Implementation.PALLAS:
            y, kv, z = _pallas.pallas_linear_attention(q, k, v, chunk_size=chunk_size, target=target, **kwargs)
        else:
            y, kv, z = _xla.chunked_linear_attention(q, k, v, chunk_size=chunk_size, **kwargs)
        st = LinearAttentionState(kv, z)
    y = y.astype(out_dtype)
    if mask is not None and padding == "exclude":
        y = jnp.where(mask[:, :, None, None], y, jnp.zeros((), out_dtype))
    return y, st


@functools.partial(jax.jit, static_argnames=_STATIC)
def _state_jit(k, v, k_enc, v_enc, mask, *, eps, padding, scale_dim, impl, chunk_size, target):
    del eps
    k, k_enc, key_w, enc_w = _apply_padding(k, k_enc, mask, padding)
    if impl is Implementation.REFERENCE:
        acc = lambda k_, v_, w_: tuple(_reference.reference_state(k_, v_, w_, scale_dim=scale_dim))
    elif impl is Implementation.PALLAS:
        acc = lambda k_, v_, w_: _pallas.accumulate_state(k_, v_, w_, chunk_size, scale_dim, target)
    else:
        acc = lambda k_, v_, w_: _xla.accumulate_state(k_, v_, w_, _xla.state_chunk_size(chunk_size), scale_dim)
    kv, z = acc(k, v, key_w)
    if k_enc is not None and k_enc.shape[1] > 0:
        ekv, ez = acc(k_enc, v_enc, enc_w)
        kv, z = kv + ekv, z + ez
    return LinearAttentionState(kv, z)


def _attend(q, k, v, k_enc, v_enc, *, eps, mask, padding, scale_dim, implementation, chunk_size, return_state):
    mask, eps, chunk_size, impl, target = _resolve(
        q, k, v, k_enc, v_enc, mask, padding, eps, chunk_size, implementation
    )
    y, st = _attend_jit(q, k, v, k_enc, v_enc, mask, eps=eps, padding=padding, scale_dim=scale_dim, impl=impl,
                        chunk_size=chunk_size, target=target)
    return (y, st) if return_state else y


def linear_attention(
    q,
    k,
    v,
    *,
    eps: float = 1e-12,
    mask=None,
    padding: str = "exclude",
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
    return_state: bool = False,
):
    """Causal Based linear attention with the Taylor feature map.

        y_i = Σ_{j≤i} φ(q_i)·φ(k_j) v_j / (Σ_{j≤i} φ(q_i)·φ(k_j) + eps)

    Args:
      q, k: [B, T, H, F] raw queries and keys (before φ).
      v: [B, T, H, D] values.
      eps: added to the denominator.
      mask: optional [B, T] bool, True = real token; see the module docstring for `padding`.
      padding: "exclude" (default) or "zero_keys" (the released checkpoints' evaluation padding).
      scale_dim: the d in φ (default F).
      implementation: "auto", "reference" (quadratic), "xla" (chunked), "pallas" (kernels; the Pallas
        interpreter on CPU). "auto" is "pallas" on TPU/GPU when the kernel takes the shapes, else "xla".
      chunk_size: chunk length of the chunked paths (default 64); T need not be a multiple.
      return_state: also return the `LinearAttentionState` after the last token, to continue decoding.

    Returns:
      y [B, T, H, D] in the inputs' result dtype (and the state when `return_state`).
    """
    return _attend(q, k, v, None, None, eps=eps, mask=mask, padding=padding, scale_dim=scale_dim,
                   implementation=implementation, chunk_size=chunk_size, return_state=return_state)


def prefix_linear_attention(
    q,
    k,
    v,
    k_enc,
    v_enc,
    *,
    eps: float = 1e-12,
    mask=None,
    padding: str = "exclude",
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
    return_state: bool = False,
):
    """Prefix linear attention (JRT-RNN): every position also reads the whole encoder prefix.

        y_i = φ(q_i)ᵀ[Σ_{j≤i} φ(k_j)v_jᵀ + Σ_{j<M} φ(ke_j)ve_jᵀ]
              / (φ(q_i)ᵀ[Σ_{j≤i} φ(k_j) + Σ_{j<M} φ(ke_j)] + eps)

    for every i, prefix included: one shared denominator, as the released JRT checkpoints compute.

    Args:
      q, k, v: causal (decoder) projections of all T tokens, as in `linear_attention`.
      k_enc: [B, M, H, F], v_enc: [B, M, H, D]: encoder projections of the first M ≤ T tokens.
      Other arguments as in `linear_attention`; `mask[:, :M]` masks the encoder tokens.

    Returns:
      y [B, T, H, D] (and the state with the encoder terms folded in when `return_state`).
    """
    if k_enc is None or v_enc is None:
        raise ValueError("prefix_linear_attention needs k_enc and v_enc (use linear_attention without an encoder)")
    return _attend(q, k, v, k_enc, v_enc, eps=eps, mask=mask, padding=padding, scale_dim=scale_dim,
                   implementation=implementation, chunk_size=chunk_size, return_state=return_state)


def linear_attention_state(
    k,
    v,
    *,
    mask=None,
    padding: str = "exclude",
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
) -> LinearAttentionState:
    """The decoding state after reading keys k [B,T,H,F] and values v [B,T,H,D] (no outputs computed)."""
    return pla_prefill_state(k, v, None, None, mask=mask, padding=padding, scale_dim=scale_dim,
                             implementation=implementation, chunk_size=chunk_size)


def pla_prefill_state(
    k,
    v,
    k_enc,
    v_enc,
    *,
    mask=None,
    padding: str = "exclude",
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
) -> LinearAttentionState:
    """The state after a PLA prefill: Σ_{j<T} φ(k_j)v_jᵀ + Σ_{j<M} φ(ke_j)ve_jᵀ (and the z sums).

    Continue with `linear_attention_step`, which uses only the causal projections of new tokens.
    k_enc/v_enc may be None (plain causal state).
    """
    # The queries do not enter the state; k stands in for q in the shape checks.
    mask, _, chunk_size, impl, target = _resolve(
        k, k, v, k_enc, v_enc, mask, padding, 0.0, chunk_size, implementation
    )
    return _state_jit(k, v, k_enc, v_enc, mask, eps=0.0, padding=padding, scale_dim=scale_dim, impl=impl,
                      chunk_size=chunk_size, target=target)


def linear_attention_step(state: LinearAttentionState, q_t, k_t, v_t, *, eps: float = 1e-12, scale_dim=None):
    """One decoding step: fold (k_t, v_t) into the state, then read it with q_t (inclusive, as the prefill).

    Args:
      state: `LinearAttentionState` (kv [B,H,Φ,D], z [B,H,Φ]).
      q_t, k_t: [B, H, F] the new token's raw query/key; v_t: [B, H, D].
    Returns:
      (y_t [B, H, D] in the inputs' result dtype, new state).
    """
    if not isinstance(state, LinearAttentionState):
        if isinstance(state, tuple) and len(state) == 2:
            state = LinearAttentionState(*state)
        else:
            raise TypeError(f"state must be a LinearAttentionState (kv, z); got {type(state).__name__}")
    check_float_array("q_t", q_t, 3)
    check_float_array("k_t", k_t, 3)
    check_float_array("v_t", v_t, 3)
    b, h, f = q_t.shape
    check_dim("k_t", k_t.shape[0], b, "batch size (axis 0, as q_t)")
    check_dim("v_t", v_t.shape[0], b, "batch size (axis 0, as q_t)")
    check_dim("k_t", k_t.shape[1], h, "number of heads (axis 1, as q_t)")
    check_dim("v_t", v_t.shape[1], h, "number of heads (axis 1, as q_t)")
    check_dim("k_t", k_t.shape[2], f, "feature size (axis 2, as q_t)")
    p = 1 + f + f * (f + 1) // 2
    want = (b, h, p, v_t.shape[2])
    if tuple(state.kv.shape) != want or tuple(state.z.shape) != want[:3]:
        raise ValueError(
            f"state: kv must have shape {want} and z {want[:3]} for these inputs; "
            f"got {tuple(state.kv.shape)} and {tuple(state.z.shape)}"
        )
    eps = check_eps(eps)
    y, new_state = _step_jit(state, q_t, k_t, v_t, eps=eps, scale_dim=scale_dim)
    return y.astype(jnp.result_type(q_t.dtype, k_t.dtype, v_t.dtype)), new_state


_step_jit = jax.jit(_state.step, static_argnames=("eps", "scale_dim"))
