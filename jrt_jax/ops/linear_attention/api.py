"""Public entry points: causal Based linear attention, prefix linear attention (PLA), their recurrent form.

Layout is [batch, seq, heads, dim] as in `jax.nn.dot_product_attention`. q, k are the raw projections
(before the feature map, F features), v has D features. States are fp32 whatever the input dtype.

Padding (`mask` [B, T], True = real token) has two modes:

* ``padding="exclude"`` (default): padded tokens contribute nothing, as keys or as encoder tokens, and their
  own outputs are zero.
* ``padding="zero_keys"``: what the released JRT/Based checkpoints were evaluated with (prompts left-padded,
  raw k zeroed at pads). φ(0) = [1, 0, …], so every pad still adds v_pad to the numerator and 1 to the
  denominator. Use it to reproduce the release's numbers, not for new work. A NaN in a pad's value reaches
  the outputs in this mode, as it would in the release.

Packed sequences (`segment_ids` [B, T] int, 0 = padding): documents are maximal runs of equal non-zero ids
(padding inside a run does not split it; `jrt_jax.ops.segments`). Position i sees keys j ≤ i of its own
document only; PLA's `enc_mask` [B, M] marks the real encoder slots (slot j is position j of the row) and a
position reads exactly the slots of its own document, ahead of it or not. `mask` with `padding="exclude"` is the
same machinery (a False position is padding). Excluded tokens are selected away, never multiplied by a zero
weight, so a NaN or Inf in one never reaches another output or gradient.

Carried state (`initial_state`, a `LinearAttentionState`): added to the sums of the row's first document, as
if it preceded the row; `return_state=True` returns the state after the row's last token (its last document),
so a sequence run in two calls, the second from the first's state, equals one call.
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
    check_segment_ids,
    resolve_implementation,
)
from jrt_jax.ops.feature_map import taylor_feature_dim
from jrt_jax.ops.linear_attention import compose as _compose
from jrt_jax.ops.linear_attention import pallas as _pallas
from jrt_jax.ops.linear_attention import reference as _reference
from jrt_jax.ops.linear_attention import state as _state
from jrt_jax.ops.linear_attention.state import LinearAttentionState

DEFAULT_CHUNK_SIZE = 64
PADDING_MODES = ("exclude", "zero_keys")
#: what `implementation=` may name, "auto" first ("pallas" where a kernel takes the inputs, else "xla");
#: `jrt_jax.ops._checks.Implementation` says what each means
IMPLEMENTATIONS = ("auto", "pallas", "xla", "reference")


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


def _check_state(initial_state, b, h, f, d):
    if initial_state is None:
        return None
    initial_state = LinearAttentionState.coerce(initial_state)
    check_float_array("initial_state.kv", initial_state.kv, 4)
    check_float_array("initial_state.z", initial_state.z, 3)
    want = (b, h, taylor_feature_dim(f, compact=True), d)
    if tuple(initial_state.kv.shape) != want or tuple(initial_state.z.shape) != want[:3]:
        raise ValueError(
            f"initial_state: kv must have shape {want} and z {want[:3]} for these inputs; "
            f"got {tuple(initial_state.kv.shape)} and {tuple(initial_state.z.shape)}"
        )
    return initial_state


def _resolve(q, k, v, k_enc, v_enc, mask, padding, eps, chunk_size, implementation, segment_ids=None,
             enc_mask=None, initial_state=None):
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
    impl = resolve_implementation(implementation, IMPLEMENTATIONS, "linear attention")
    if impl in (Implementation.PALLAS, Implementation.AUTO):
        reason = _pallas.unsupported_reason(q, v, chunk_size)  # no kernel on any platform takes these inputs
        if reason is not None and impl is Implementation.PALLAS:
            raise ValueError(f"implementation='pallas' cannot run these inputs: {reason}; use 'xla' or 'auto'")
        if reason is not None:
            impl = Implementation.XLA
    b, t, h, f = q.shape
    mask = check_mask(mask, b, t)
    segment_ids = check_segment_ids(segment_ids, b, t)
    if enc_mask is not None:
        if k_enc is None:
            raise ValueError("enc_mask needs an encoder (k_enc, v_enc): use prefix_linear_attention")
        enc_mask = check_mask(enc_mask, b, k_enc.shape[1], name="enc_mask")
    initial_state = _check_state(initial_state, b, h, f, v.shape[-1])
    inputs = _compose.Inputs(mask, segment_ids, enc_mask, initial_state)
    return inputs, eps, chunk_size, impl


_STATIC = ("eps", "padding", "scale_dim", "impl", "chunk_size")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _attend_jit(q, k, v, k_enc, v_enc, inputs, *, eps, padding, scale_dim, impl, chunk_size):
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    c = _compose.canonical(q, k, v, k_enc, v_enc, inputs, padding)
    if impl is Implementation.REFERENCE:
        y, st = _reference.reference_linear_attention(
            c.q, c.k, c.v, k_enc=c.k_enc, v_enc=c.v_enc, key_w=c.key_w, enc_w=c.enc_w, doc=c.doc,
            initial_state=None if inputs.initial_state is None else (c.kv0, c.z0), eps=eps, scale_dim=scale_dim,
        )
    else:
        y, kv, z = _compose.chunked_attend(_compose.backend(impl), c, eps=eps, scale_dim=scale_dim, chunk=chunk_size)
        st = LinearAttentionState(kv, z)
    y = y.astype(out_dtype)
    if c.real is not None:
        y = jnp.where(c.real[:, :, None, None], y, jnp.zeros((), out_dtype))
    return y, st


@functools.partial(jax.jit, static_argnames=_STATIC)
def _state_jit(k, v, k_enc, v_enc, inputs, *, eps, padding, scale_dim, impl, chunk_size):
    del eps
    c = _compose.canonical(k, k, v, k_enc, v_enc, inputs, padding)
    if impl is Implementation.REFERENCE:
        return _reference.final_state(
            c.k, c.v, c.k_enc, c.v_enc, c.key_w, c.enc_w, c.doc,
            None if inputs.initial_state is None else (c.kv0, c.z0), scale_dim=scale_dim,
        )
    return LinearAttentionState(*_compose.chunked_state(_compose.backend(impl), c, scale_dim=scale_dim, chunk=chunk_size))


def _attend(q, k, v, k_enc, v_enc, *, eps, mask, padding, scale_dim, implementation, chunk_size, return_state,
            segment_ids=None, enc_mask=None, initial_state=None):
    inputs, eps, chunk_size, impl = _resolve(
        q, k, v, k_enc, v_enc, mask, padding, eps, chunk_size, implementation, segment_ids, enc_mask, initial_state
    )
    y, st = _attend_jit(q, k, v, k_enc, v_enc, inputs, eps=eps, padding=padding, scale_dim=scale_dim, impl=impl,
                        chunk_size=chunk_size)
    return (y, st) if return_state else y


def linear_attention(
    q,
    k,
    v,
    *,
    eps: float = 1e-12,
    mask=None,
    padding: str = "exclude",
    segment_ids=None,
    initial_state: LinearAttentionState | None = None,
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
    return_state: bool = False,
):
    """Causal Based linear attention with the Taylor feature map.

        y_i = Σ_{j≤i} φ(q_i)·φ(k_j) v_j / (Σ_{j≤i} φ(q_i)·φ(k_j) + eps)     (j in i's document)

    Args:
      q, k: [B, T, H, F] raw queries and keys (before φ).
      v: [B, T, H, D] values.
      eps: added to the denominator.
      mask: optional [B, T] bool, True = real token; see the module docstring for `padding`.
      padding: "exclude" (default) or "zero_keys" (the released checkpoints' evaluation padding).
      segment_ids: optional [B, T] int packed-document ids, 0 = padding (output 0).
      initial_state: optional `LinearAttentionState` (kv [B,H,Φ,D], z [B,H,Φ]) the row's first document
        continues from.
      scale_dim: the d in φ (default F).
      implementation: "auto", "reference" (quadratic), "xla" (chunked), "pallas" (kernels; the Pallas
        interpreter on CPU). "auto" is chosen per platform when the computation is lowered: the kernel on
        TPU / CUDA when it takes the shapes, the "xla" path elsewhere, so one jitted function exports for
        several platforms.
      chunk_size: chunk length of the chunked paths (default 64); T need not be a multiple.
      return_state: also return the `LinearAttentionState` after the last token, to continue decoding.

    Returns:
      y [B, T, H, D] in the inputs' result dtype (and the state when `return_state`).
    """
    return _attend(q, k, v, None, None, eps=eps, mask=mask, padding=padding, scale_dim=scale_dim,
                   implementation=implementation, chunk_size=chunk_size, return_state=return_state,
                   segment_ids=segment_ids, initial_state=initial_state)


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
    segment_ids=None,
    enc_mask=None,
    initial_state: LinearAttentionState | None = None,
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
    return_state: bool = False,
):
    """Prefix linear attention (JRT-RNN): every position also reads the whole encoder prefix.

        y_i = φ(q_i)ᵀ[Σ_{j≤i} φ(k_j)v_jᵀ + Σ_{j<M} φ(ke_j)ve_jᵀ]
              / (φ(q_i)ᵀ[Σ_{j≤i} φ(k_j) + Σ_{j<M} φ(ke_j)] + eps)

    for every i, prefix included: one shared denominator, as the released JRT checkpoints compute. With
    packed documents both sums run over i's document only (the encoder sum over its slots marked in
    `enc_mask`, including those after i).

    Args:
      q, k, v: causal (decoder) projections of all T tokens, as in `linear_attention`.
      k_enc: [B, M, H, F], v_enc: [B, M, H, D]: encoder projections of the first M ≤ T tokens.
      enc_mask: optional [B, M] bool, True = a real encoder slot (per-row encoder lengths; with
        `segment_ids`, each document's prefix).
      Other arguments as in `linear_attention`; `mask[:, :M]` masks the encoder tokens too.

    Returns:
      y [B, T, H, D] (and the state with the encoder terms folded in when `return_state`).
    """
    if k_enc is None or v_enc is None:
        raise ValueError("prefix_linear_attention needs k_enc and v_enc (use linear_attention without an encoder)")
    return _attend(q, k, v, k_enc, v_enc, eps=eps, mask=mask, padding=padding, scale_dim=scale_dim,
                   implementation=implementation, chunk_size=chunk_size, return_state=return_state,
                   segment_ids=segment_ids, enc_mask=enc_mask, initial_state=initial_state)


def linear_attention_state(
    k,
    v,
    *,
    mask=None,
    padding: str = "exclude",
    segment_ids=None,
    initial_state: LinearAttentionState | None = None,
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
) -> LinearAttentionState:
    """The decoding state after reading keys k [B,T,H,F] and values v [B,T,H,D] (no outputs computed)."""
    return pla_prefill_state(k, v, None, None, mask=mask, padding=padding, segment_ids=segment_ids,
                             initial_state=initial_state, scale_dim=scale_dim, implementation=implementation,
                             chunk_size=chunk_size)


def pla_prefill_state(
    k,
    v,
    k_enc,
    v_enc,
    *,
    mask=None,
    padding: str = "exclude",
    segment_ids=None,
    enc_mask=None,
    initial_state: LinearAttentionState | None = None,
    scale_dim: float | None = None,
    implementation: str | Implementation = "auto",
    chunk_size: int | None = None,
) -> LinearAttentionState:
    """The state after a PLA prefill: Σ_{j<T} φ(k_j)v_jᵀ + Σ_{j<M} φ(ke_j)ve_jᵀ (and the z sums).

    With packed documents, the state of the row's last document; `initial_state` is added when that is also
    the first. Continue with `linear_attention_step`, which uses only the causal projections of new tokens.
    k_enc/v_enc may be None (plain causal state).
    """
    # The queries do not enter the state; k stands in for q in the shape checks.
    inputs, _, chunk_size, impl = _resolve(
        k, k, v, k_enc, v_enc, mask, padding, 0.0, chunk_size, implementation, segment_ids, enc_mask, initial_state
    )
    return _state_jit(k, v, k_enc, v_enc, inputs, eps=0.0, padding=padding, scale_dim=scale_dim, impl=impl,
                      chunk_size=chunk_size)


def linear_attention_step(state: LinearAttentionState, q_t, k_t, v_t, *, eps: float = 1e-12, scale_dim=None):
    """One decoding step: fold (k_t, v_t) into the state, then read it with q_t (inclusive, as the prefill).

    Args:
      state: `LinearAttentionState` (kv [B,H,Φ,D], z [B,H,Φ]).
      q_t, k_t: [B, H, F] the new token's raw query/key; v_t: [B, H, D].
    Returns:
      (y_t [B, H, D] in the inputs' result dtype, new state).
    """
    if state is None:
        raise TypeError("state must be a LinearAttentionState (kv, z); got NoneType")
    state = LinearAttentionState.coerce(state, "state")
    check_float_array("q_t", q_t, 3)
    check_float_array("k_t", k_t, 3)
    check_float_array("v_t", v_t, 3)
    b, h, f = q_t.shape
    check_dim("k_t", k_t.shape[0], b, "batch size (axis 0, as q_t)")
    check_dim("v_t", v_t.shape[0], b, "batch size (axis 0, as q_t)")
    check_dim("k_t", k_t.shape[1], h, "number of heads (axis 1, as q_t)")
    check_dim("v_t", v_t.shape[1], h, "number of heads (axis 1, as q_t)")
    check_dim("k_t", k_t.shape[2], f, "feature size (axis 2, as q_t)")
    want = (b, h, taylor_feature_dim(f, compact=True), v_t.shape[2])
    if tuple(state.kv.shape) != want or tuple(state.z.shape) != want[:3]:
        raise ValueError(
            f"state: kv must have shape {want} and z {want[:3]} for these inputs; "
            f"got {tuple(state.kv.shape)} and {tuple(state.z.shape)}"
        )
    eps = check_eps(eps)
    y, new_state = _step_jit(state, q_t, k_t, v_t, eps=eps, scale_dim=scale_dim)
    return y.astype(jnp.result_type(q_t.dtype, k_t.dtype, v_t.dtype)), new_state


_step_jit = jax.jit(_state.step, static_argnames=("eps", "scale_dim"))
