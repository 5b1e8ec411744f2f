"""From validated public arguments to the chunked implementations: canonical inputs, then composition.

`canonical` turns mask / padding / segment_ids / enc_mask / initial_state into what every implementation takes
(scrubbed arrays, per-key weights, document labels, a start state). `chunked_attend` / `chunked_state` run a
chunked backend (`xla.py`, or `pallas.py`'s platform-dispatched kernels) over them:

* one document per row: the encoder is a state (a state-only pass) that seeds one causal pass;
* packed documents with an encoder: each query reads its document's whole encoder prefix, which may lie ahead
  of it, so the encoder is read by a forward and a backward causal pass over unnormalised sums, added to the
  causal pass's under one shared denominator (the query's own slot, read by both, is taken out once).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

import pallas_kernels
from jrt_jax.ops._checks import Implementation
from jrt_jax.ops.feature_map import taylor_kernel
from jrt_jax.ops.linear_attention import pallas as _pallas
from jrt_jax.ops.linear_attention import xla as _xla
from jrt_jax.ops.linear_attention.state import LinearAttentionState, zero_state
from jrt_jax.ops.segments import document_ids


class Inputs(NamedTuple):
    """The optional array arguments, validated (traced through the jitted core as one pytree)."""

    mask: jax.Array | None
    segment_ids: jax.Array | None
    enc_mask: jax.Array | None
    initial_state: LinearAttentionState | None


class Canonical(NamedTuple):
    """What the implementations take: scrubbed inputs, per-key weights, document labels, a start state."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    k_enc: jax.Array | None
    v_enc: jax.Array | None
    key_w: jax.Array | None  # [B, T] float: 1 real key, 0 contributes nothing
    enc_w: jax.Array | None  # [B, M]
    doc: jax.Array | None  # [B, T] int32 document labels (None: the row is one document)
    real: jax.Array | None  # [B, T] bool: positions whose outputs are kept (None: all)
    kv0: jax.Array
    z0: jax.Array
    zero_start: bool = False  # (kv0, z0) is the zero state made here, not a caller's


def _scrub(x, keep):
    """Select (never multiply): a NaN or Inf in an excluded token must not reach anything else."""
    if keep is None or x is None:
        return x
    return jnp.where(keep[:, :, None, None], x, jnp.zeros((), x.dtype))


def canonical(q, k, v, k_enc, v_enc, inputs: Inputs, padding) -> Canonical:
    """Express mask / padding / segment_ids / enc_mask as weights, labels and scrubbed inputs."""
    mask, segment_ids, enc_mask, st = inputs
    b, _, h, f = k.shape
    m = 0 if k_enc is None else k_enc.shape[1]
    real = None if segment_ids is None else segment_ids != 0
    doc = None if segment_ids is None else document_ids(segment_ids)[0]
    if mask is not None and padding == "zero_keys":
        # The release's evaluation padding: pads stay tokens, with raw keys zeroed (φ(0) = [1, 0, …]).
        k = jnp.where(mask[:, :, None, None], k, jnp.zeros((), k.dtype))
        if k_enc is not None:
            k_enc = jnp.where(mask[:, :m, None, None], k_enc, jnp.zeros((), k_enc.dtype))
    elif mask is not None:
        real = mask if real is None else real & mask
    enc_real = None
    if k_enc is not None:
        enc_real = None if real is None else real[:, :m]
        if enc_mask is not None:
            enc_real = enc_mask if enc_real is None else enc_real & enc_mask
    q, k, v = _scrub(q, real), _scrub(k, real), _scrub(v, real)
    k_enc, v_enc = _scrub(k_enc, enc_real), _scrub(v_enc, enc_real)
    weight = lambda r: None if r is None else r.astype(jnp.float32)
    zero_start = st is None
    if zero_start:
        st = zero_state(b, h, f, v.shape[-1])
    return Canonical(q, k, v, k_enc, v_enc, weight(real), weight(enc_real), doc, real, st.kv.astype(jnp.float32),
                      st.z.astype(jnp.float32), zero_start)


def _full_length(x, t):
    """Encoder inputs [B, M, …] padded to [B, T, …] (slot j is position j of the row)."""
    pad = t - x.shape[1]
    return x if pad == 0 else jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _encoder_weights(c: Canonical, t):
    m = c.k_enc.shape[1]
    w = jnp.ones((c.k_enc.shape[0], m), jnp.float32) if c.enc_w is None else c.enc_w
    return _full_length(w, t)


class Backend(NamedTuple):
    """A chunked implementation: `causal(q, k, v, w, seg, kv0, z0, *, chunk, eps, scale_dim, normalize)` and
    `state(k, v, w, seg, kv0, z0, *, chunk, scale_dim)`, both over document flags from `document_flags`."""

    causal: Callable
    state: Callable


def backend(impl) -> Backend:
    """XLA: the chunked pure-JAX path. PALLAS / AUTO: the kernel of the platform lowered for (`pallas.py`);
    elsewhere the Pallas interpreter (PALLAS) or the XLA path (AUTO)."""
    if impl is Implementation.XLA:
        return Backend(_xla.causal, _xla.state)
    auto = impl is Implementation.AUTO
    return Backend(functools.partial(_pallas.causal, auto=auto), functools.partial(_pallas.state, auto=auto))


def chunked_attend(be: Backend, c: Canonical, *, eps, scale_dim, chunk):
    """(y fp32-or-input-dtype, kv, z) on a chunked backend.

    One document per row: the encoder is a state (one state-only pass) that seeds the causal pass. Packed
    documents with an encoder: each query reads the whole encoder prefix of its own document, which may lie
    ahead of it, so the encoder is read by a forward and a backward causal pass (each inclusive of the
    query's own slot, which is then counted once) over unnormalised sums that share one denominator.
    """
    kw = dict(chunk=chunk, scale_dim=scale_dim)
    t = c.q.shape[1]
    if c.doc is None:
        kv0, z0, zero_start = c.kv0, c.z0, c.zero_start
        if c.k_enc is not None and c.k_enc.shape[1] > 0:
            kv0, z0 = be.state(c.k_enc, c.v_enc, c.enc_w, None, kv0, z0, chunk=_xla.state_chunk_size(chunk),
                               scale_dim=scale_dim)
            zero_start = False
        return be.causal(c.q, c.k, c.v, c.key_w, None, kv0, z0, eps=eps, normalize=True, zero_start=zero_start, **kw)
    seg = pallas_kernels.document_flags(c.doc, chunk)
    if c.k_enc is None:
        return be.causal(c.q, c.k, c.v, c.key_w, seg, c.kv0, c.z0, eps=eps, normalize=True,
                         zero_start=c.zero_start, **kw)
    ke, ve, ew = _full_length(c.k_enc, t), _full_length(c.v_enc, t), _encoder_weights(c, t)
    zero_kv, zero_z = jnp.zeros_like(c.kv0), jnp.zeros_like(c.z0)
    (n1, d1), kv1, z1 = be.causal(c.q, c.k, c.v, c.key_w, seg, c.kv0, c.z0, eps=eps, normalize=False,
                                  zero_start=c.zero_start, **kw)
    (n2, d2), kv2, z2 = be.causal(c.q, ke, ve, ew, seg, zero_kv, zero_z, eps=eps, normalize=False, zero_start=True,
                                  **kw)
    flip = lambda x: jnp.flip(x, axis=1)
    seg_rev = pallas_kernels.document_flags(flip(c.doc), chunk)
    (n3, d3), _, _ = be.causal(flip(c.q), flip(ke), flip(ve), flip(ew), seg_rev, zero_kv, zero_z, eps=eps,
                               normalize=False, zero_start=True, **kw)
    # The query's own encoder slot was read by both passes: take it out once.
    d_scale = c.q.shape[-1] if scale_dim is None else scale_dim
    s = jnp.sum(c.q.astype(jnp.float32) * ke.astype(jnp.float32), axis=-1) * (1.0 / d_scale**0.5)
    own = taylor_kernel(s) * ew[:, :, None]
    num = n1 + n2 + flip(n3) - own[..., None] * ve.astype(jnp.float32)
    den = d1 + d2 + flip(d3) - own
    return num / (den[..., None] + eps), kv1 + kv2, z1 + z2


def chunked_state(be: Backend, c: Canonical, *, scale_dim, chunk):
    t = c.k.shape[1]
    if c.doc is None:
        kv, z = be.state(c.k, c.v, c.key_w, None, c.kv0, c.z0, chunk=_xla.state_chunk_size(chunk),
                         scale_dim=scale_dim)
        if c.k_enc is not None and c.k_enc.shape[1] > 0:
            kv, z = be.state(c.k_enc, c.v_enc, c.enc_w, None, kv, z, chunk=_xla.state_chunk_size(chunk),
                             scale_dim=scale_dim)
        return kv, z
    seg = pallas_kernels.document_flags(c.doc, chunk)
    kv, z = be.state(c.k, c.v, c.key_w, seg, c.kv0, c.z0, chunk=chunk, scale_dim=scale_dim)
    if c.k_enc is not None:
        ekv, ez = be.state(_full_length(c.k_enc, t), _full_length(c.v_enc, t), _encoder_weights(c, t), seg,
                           jnp.zeros_like(kv), jnp.zeros_like(z), chunk=chunk, scale_dim=scale_dim)
        kv, z = kv + ekv, z + ez
    return kv, z
