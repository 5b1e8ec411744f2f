"""Chunked linear attention in pure JAX: linear in T, fp32 state, hand-written backward.

The sequence is cut into chunks of C tokens (padded inside; never by the caller). One loop walks the chunks
carrying the state (kv [B,H,Φ,D], z [B,H,Φ]) and writes each chunk's output in place:

    inside a chunk (quadratic in C, Φ never materialised):
        s = q kᵀ/√d,   a = tril(1 + s + s²/2)          # = φ(q)·φ(k), causal, inclusive
        num = a v + φ(q) kv,    den = a·1 + φ(q)·z      # past chunks through the state
    then  kv += φ(k)ᵀ v,  z += φ(k)ᵀ 1.

φ(k) is built features-first ([B,H,Φ,C], `taylor_feature_map_compact_t`) so that the update is a plain
[Φ, C] @ [C, D] matmul; φ(q) stays features-last for the read. On XLA:CPU this layout is what sends the update
to the fast (YNNPACK) matmul and builds the map in one vectorised product instead of one small kernel per row
(`benchmarks/prefill.py` times the path).

Nothing of size T × Φ or N × Φ × D is materialised in the forward pass: the per-chunk states are carried,
not stacked, so every per-chunk operand stays in cache. On CPU the loop is bound by per-op overhead and by
small matmuls that XLA runs on one thread each, not by FLOPs (see `forward_head_groups`). Under
`jax.grad` the forward additionally stores the state at each chunk start (N × B × H × Φ × D floats), and
the backward is a reverse loop that re-runs each chunk under `jax.vjp` with the carried state cotangent.

The encoder part of PLA is a state: Σ_{j<M} φ(ke_j) ve_jᵀ is accumulated chunk by chunk
(`accumulate_state`) and becomes the initial state of the causal loop. Its backward needs no stored state
at all (the state cotangent of a chunk is the final one, or zero once a later chunk reset the state).

Packed documents (`seg`, from `document_flags`): a key j is read by query i of the same chunk only when both
carry the same document label; the carried state is read only by the chunk's tokens of the document that was
open at the chunk's start (r = 1), it is kept across the chunk only when that document is still open at the
chunk's end (keep = 1), and only the keys of the chunk's last document enter it (u = 1). That is exact for
documents of any length, shorter than a chunk or straddling many. With `seg=None` none of it is traced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jrt_jax.ops._checks import matmul_precision
from jrt_jax.ops.feature_map import taylor_feature_map_compact, taylor_feature_map_compact_t, taylor_kernel

_F32 = jnp.float32



def _pad_time(x, padded_len):
    pad = padded_len - x.shape[1]
    if pad == 0:
        return x
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _slice(x, n, chunk):
    return lax.dynamic_slice_in_dim(x, n * chunk, chunk, axis=1)


def forward_head_groups(batch: int, num_heads: int) -> int:
    """How many head groups the forward `_chunk_step` splits its reads and state updates into.

    On XLA:CPU a batched matmul over a few small matrices runs on one thread; independent groups of about
    four (batch × head) matrices let the two-core runtime overlap them. Measured on a 2-core CPU, PLA prefill,
    C = 64, against one group: B=1 H=16 (4 groups) −17 % wall time, B=1 H=8 (2) −13 %, B=1 H=32 (8) −17 %,
    B=2 H=16 (8) −5 %; fewer or more groups than this rule gained nothing or lost. Larger batches (more than
    8 groups' worth) and other backends use one group: their matmuls are parallel already.
    """
    groups = batch * num_heads // 4
    if jax.default_backend() != "cpu" or not 2 <= groups <= min(8, num_heads):
        return 1
    return groups


def _chunk_seg(seg, n, chunk):
    """The chunk-n slice of the document flags: (doc [B,C], r [B,C], u [B,C], keep [B])."""
    if seg is None:
        return None
    doc, r, u, keep = seg
    return _slice(doc, n, chunk), _slice(r, n, chunk), _slice(u, n, chunk), lax.dynamic_index_in_dim(keep, n, 1, False)


def _chunk_step(kv, z, qc, kc, vc, wc, segc=None, *, scale_dim, eps, precision, head_groups=1, normalize=True,
                read_state=True):
    """One chunk. qc, kc [B,C,H,F], vc [B,C,H,D], wc [B,C] or None, segc from `_chunk_seg` or None; kv, z fp32.

    Returns (kv, z, y fp32 [B,C,H,D]), or (kv, z, (num [B,C,H,D], den [B,C,H])) when not `normalize`.
    Works head-major ([B,H,C,·]) inside: batched matmuls with leading batch dims are what XLA:CPU runs fastest.
    The feature maps and q kᵀ are built for all heads at once; the reads and updates run per head group.
    `read_state=False` skips the read of (kv, z), for a state known to be zero.
    """
    _, c, h, _ = qc.shape
    qc, kc, vc = (x.astype(_F32).transpose(0, 2, 1, 3) for x in (qc, kc, vc))
    d = qc.shape[-1] if scale_dim is None else scale_dim
    s = jnp.einsum("bhif,bhjf->bhij", qc, kc, precision=precision) * (1.0 / d**0.5)
    causal = jnp.tril(jnp.ones((c, c), bool))
    if segc is not None:
        docc, rc, uc, keepc = segc
        causal = causal & (docc[:, :, None] == docc[:, None, :])[:, None]
    a = jnp.where(causal, taylor_kernel(s), 0.0)
    phi_q = taylor_feature_map_compact(qc, scale_dim=scale_dim)
    phi_k = taylor_feature_map_compact_t(kc.swapaxes(-1, -2), scale_dim=scale_dim)  # [B,H,Φ,C]
    if wc is not None:
        wc = wc.astype(_F32)
        a = a * wc[:, None, None, :]
        phi_k = phi_k * wc[:, None, None, :]
    if segc is not None:
        phi_q = phi_q * rc[:, None, :, None]  # only the document open at the chunk start reads the state
        phi_k = phi_k * uc[:, None, None, :]  # only the chunk's last document enters it
        kv_kept, z_kept = kv * keepc[:, None, None, None], z * keepc[:, None, None]  # what survives the chunk
    else:
        kv_kept, z_kept = kv, z
    groups = max(1, min(head_groups, h))
    bounds = [g * h // groups for g in range(groups + 1)]
    ys, dens, kvs, zs = [], [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        a_g, v_g, pq_g, pk_g = a[:, lo:hi], vc[:, lo:hi], phi_q[:, lo:hi], phi_k[:, lo:hi]
        num = jnp.einsum("bhij,bhjd->bhid", a_g, v_g, precision=precision)
        den = jnp.sum(a_g, axis=-1)
        if read_state:
            num = num + jnp.einsum("bhip,bhpd->bhid", pq_g, kv[:, lo:hi], precision=precision)
            den = den + jnp.einsum("bhip,bhp->bhi", pq_g, z[:, lo:hi], precision=precision)
        if normalize:
            ys.append(num / (den[..., None] + eps))
        else:
            ys.append(num)
            dens.append(den)
        kvs.append(kv_kept[:, lo:hi] + jnp.einsum("bhpj,bhjd->bhpd", pk_g, v_g, precision=precision))
        zs.append(z_kept[:, lo:hi] + jnp.sum(pk_g, axis=3))
    cat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=1)
    y = cat(ys).transpose(0, 2, 1, 3)
    return cat(kvs), cat(zs), y if normalize else (y, cat(dens).transpose(0, 2, 1))


def _pad_weights(w, b, t, tp):
    """Per-key weights padded to Tp with zeros (padded keys never reach a real output or the state)."""
    if tp == t:
        return w
    return jnp.pad(jnp.ones((b, t), _F32) if w is None else w, [(0, 0), (0, tp - t)])


def _forward(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, save_states, normalize, zero_start=False):
    b, t, h, _ = q.shape
    d_v = v.shape[-1]
    n = -(-t // chunk)
    tp = n * chunk
    w = _pad_weights(w, b, t, tp)
    q, k, v = (_pad_time(x, tp) for x in (q, k, v))
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    # A one-chunk pass from a zero start state reads no state. Besides saving two matmuls, this sidesteps an
    # XLA:CPU miscompilation (jaxlib 0.10.2): with the zero state a constant of the jitted program, the YNNPACK
    # fusion of the read returned 1e20-1e36 at batch >= 64, differently on every run
    # (tests/ops/test_linear_attention.py::test_jitted_one_chunk_forward_at_large_batch).
    step = functools.partial(_chunk_step, scale_dim=scale_dim, eps=eps, precision=matmul_precision(out_dtype),
                             head_groups=forward_head_groups(b, h), normalize=normalize,
                             read_state=not (zero_start and n == 1))

    def body(i, carry):
        kv, z, y, states = carry
        if save_states:
            states = (
                lax.dynamic_update_index_in_dim(states[0], kv, i, 0),
                lax.dynamic_update_index_in_dim(states[1], z, i, 0),
            )
        wc = None if w is None else _slice(w, i, chunk)
        kv, z, yc = step(kv, z, _slice(q, i, chunk), _slice(k, i, chunk), _slice(v, i, chunk), wc,
                         _chunk_seg(seg, i, chunk))
        put = lambda buf, x: lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), i * chunk, axis=1)
        y = put(y, yc) if normalize else (put(y[0], yc[0]), put(y[1], yc[1]))
        return kv, z, y, states

    states = (
        (jnp.zeros((n,) + kv0.shape, _F32), jnp.zeros((n,) + z0.shape, _F32)) if save_states else None
    )
    if normalize:
        y0 = jnp.zeros((b, tp, h, d_v), out_dtype)
    else:  # unnormalised sums are combined by the caller before the division: keep them fp32
        y0 = (jnp.zeros((b, tp, h, d_v), _F32), jnp.zeros((b, tp, h), _F32))
    kv, z, y, states = lax.fori_loop(0, n, body, (kv0, z0, y0, states))
    y = y[:, :t] if normalize else (y[0][:, :t], y[1][:, :t])
    return y, kv, z, states


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _causal_core(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, normalize, zero_start=False):
    y, kv, z, _ = _forward(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, False, normalize, zero_start)
    return y, kv, z


def _causal_core_fwd(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, normalize, zero_start=False):
    y, kv, z, states = _forward(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, True, normalize, zero_start)
    return (y, kv, z), (q, k, v, w, seg, states)


def causal_core_bwd(chunk, eps, scale_dim, normalize, zero_start, residuals, cotangents):
    """Reverse loop over the chunks: re-run each under `jax.vjp` from its saved start state."""
    q, k, v, w, seg, (kv_states, z_states) = residuals
    dy, dkv, dz = cotangents
    b, t, h, _ = q.shape
    n = kv_states.shape[0]
    tp = n * chunk
    wp = _pad_weights(w, b, t, tp)
    qp, kp, vp = (_pad_time(x, tp) for x in (q, k, v))
    dyp = _pad_time(dy, tp) if normalize else (_pad_time(dy[0], tp), _pad_time(dy[1], tp))
    step = functools.partial(
        _chunk_step, scale_dim=scale_dim, eps=eps, precision=matmul_precision(q, k, v),
        normalize=normalize, read_state=not (zero_start and n == 1),
    )

    def body(i, carry):
        dkv, dz, dq, dk, dv = carry
        j = n - 1 - i
        wc = None if wp is None else _slice(wp, j, chunk)
        segc = _chunk_seg(seg, j, chunk)
        _, vjp = jax.vjp(
            lambda kv_, z_, qc, kc, vc: step(kv_, z_, qc, kc, vc, wc, segc),
            kv_states[j],
            z_states[j],
            _slice(qp, j, chunk).astype(_F32),
            _slice(kp, j, chunk).astype(_F32),
            _slice(vp, j, chunk).astype(_F32),
        )
        dyc = _slice(dyp, j, chunk).astype(_F32) if normalize else tuple(_slice(x, j, chunk).astype(_F32) for x in dyp)
        dkv, dz, dqc, dkc, dvc = vjp((dkv, dz, dyc))
        put = lambda buf, x: lax.dynamic_update_slice_in_dim(buf, x, j * chunk, axis=1)
        return dkv, dz, put(dq, dqc), put(dk, dkc), put(dv, dvc)

    zeros = lambda x: jnp.zeros(x.shape, _F32)
    dkv0, dz0, dq, dk, dv = lax.fori_loop(
        0, n, body, (dkv.astype(_F32), dz.astype(_F32), zeros(qp), zeros(kp), zeros(vp))
    )
    return (
        dq[:, :t].astype(q.dtype),
        dk[:, :t].astype(k.dtype),
        dv[:, :t].astype(v.dtype),
        _zeros_like(w),
        _zeros_like(seg),
        dkv0,
        dz0,
    )


def _zeros_like(tree):
    """Cotangents of the non-differentiable weight / document inputs (None stays None)."""
    return jax.tree.map(jnp.zeros_like, tree)


_causal_core.defvjp(_causal_core_fwd, causal_core_bwd)


def _state_contribution(kc, vc, wc, *, scale_dim, precision):
    """(φ(k)ᵀ (w·v), φ(k)ᵀ w) for one chunk, head-major inside like `_chunk_step`."""
    kc, vc = (x.astype(_F32).transpose(0, 2, 1, 3) for x in (kc, vc))
    phi_k = taylor_feature_map_compact_t(kc.swapaxes(-1, -2), scale_dim=scale_dim)  # [B,H,Φ,C]
    if wc is not None:
        phi_k = phi_k * wc.astype(_F32)[:, None, None, :]
    return jnp.einsum("bhpj,bhjd->bhpd", phi_k, vc, precision=precision), jnp.sum(phi_k, axis=3)


def _state_inputs(k, v, w, seg, chunk):
    """Pad to whole chunks; fold the 'last document of the chunk' flag u into the weights."""
    b, t = k.shape[:2]
    n = max(1, -(-t // chunk))
    tp = n * chunk
    w = _pad_weights(w, b, t, tp)
    if seg is not None:
        u = seg[2]
        w = u if w is None else w * u
    return _pad_time(k, tp), _pad_time(v, tp), w, n


def _survives(seg, n):
    """alive [B, N+1]: 1 where what the state held after chunk i-1 (i = 0: the initial state) is still in the
    final state, i.e. no later chunk reset it."""
    if seg is None:
        return None
    keep = seg[3]
    # alive[i] = Π_{m ≥ i} keep[m]; alive[n] = 1.
    rev = jnp.cumprod(keep[:, ::-1], axis=1)[:, ::-1]
    return jnp.concatenate([rev, jnp.ones_like(keep[:, :1])], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def accumulate_state(k, v, w, seg, kv0, z0, chunk, scale_dim):
    """The state after reading k [B,M,H,F], v [B,M,H,D] from (kv0, z0), chunk by chunk, no outputs.

    Without documents: kv0 + Σ_j w_j φ(k_j) v_jᵀ (and z). With `seg` (flags for chunks of `chunk` tokens): the
    keys of the last document only, plus kv0 when the last document is the first.
    """
    kp, vp, wp, n = _state_inputs(k, v, w, seg, chunk)
    contrib = functools.partial(
        _state_contribution, scale_dim=scale_dim, precision=matmul_precision(k, v)
    )

    def body(i, carry):
        kv, z = carry
        if seg is not None:
            keep = lax.dynamic_index_in_dim(seg[3], i, 1, False)
            kv, z = kv * keep[:, None, None, None], z * keep[:, None, None]
        dkv, dz = contrib(_slice(kp, i, chunk), _slice(vp, i, chunk), None if wp is None else _slice(wp, i, chunk))
        return kv + dkv, z + dz

    return lax.fori_loop(0, n, body, (kv0.astype(_F32), z0.astype(_F32)))


def _accumulate_state_fwd(k, v, w, seg, kv0, z0, chunk, scale_dim):
    return accumulate_state(k, v, w, seg, kv0, z0, chunk, scale_dim), (k, v, w, seg)


def accumulate_state_bwd(chunk, scale_dim, residuals, cotangents):
    """A chunk's contribution reaches the final state unchanged, or not at all once a later chunk reset it:
    its cotangent is the final one times `_survives`. No stored states are needed."""
    k, v, w, seg = residuals
    dkv, dz = cotangents
    t = k.shape[1]
    kp, vp, wp, n = _state_inputs(k, v, w, seg, chunk)
    alive = _survives(seg, n)
    contrib = functools.partial(
        _state_contribution, scale_dim=scale_dim, precision=matmul_precision(k, v)
    )

    def body(i, carry):
        dk, dv = carry
        wc = None if wp is None else _slice(wp, i, chunk)
        dkv_i, dz_i = dkv, dz
        if alive is not None:
            a = lax.dynamic_index_in_dim(alive, i + 1, 1, False)
            dkv_i, dz_i = dkv * a[:, None, None, None], dz * a[:, None, None]
        _, vjp = jax.vjp(lambda kc, vc: contrib(kc, vc, wc), _slice(kp, i, chunk).astype(_F32),
                         _slice(vp, i, chunk).astype(_F32))
        dkc, dvc = vjp((dkv_i, dz_i))
        put = lambda buf, x: lax.dynamic_update_slice_in_dim(buf, x, i * chunk, axis=1)
        return put(dk, dkc), put(dv, dvc)

    dk, dv = lax.fori_loop(0, n, body, (jnp.zeros(kp.shape, _F32), jnp.zeros(vp.shape, _F32)))
    dkv0, dz0 = dkv, dz
    if alive is not None:
        dkv0, dz0 = dkv * alive[:, 0, None, None, None], dz * alive[:, 0, None, None]
    return (dk[:, :t].astype(k.dtype), dv[:, :t].astype(v.dtype), _zeros_like(w), _zeros_like(seg),
            dkv0.astype(_F32), dz0.astype(_F32))


accumulate_state.defvjp(_accumulate_state_fwd, accumulate_state_bwd)


def state_chunk_size(chunk_size: int, has_documents: bool = False) -> int:
    """Chunk length for a state-only pass (no outputs, so no quadratic part): longer chunks are cheaper.

    With packed documents the flags are computed for the op's own chunk size, so the pass keeps it.
    """
    return chunk_size if has_documents else max(chunk_size, 256)


def causal(q, k, v, w, seg, kv0, z0, *, chunk, eps, scale_dim, normalize=True, zero_start=False):
    """Chunked causal linear attention from the state (kv0, z0). The backend contract of `api.py`.

    q, k [B,T,H,F], v [B,T,H,D]; w [B,T] float or None; seg = `document_flags(doc, chunk)` or None.
    `zero_start`: (kv0, z0) is zero and its gradient is not wanted (no read of it is traced where that helps).
    Returns (y [B,T,H,D] in the inputs' dtype — or (num fp32, den fp32) when not `normalize` — kv, z).
    """
    if w is not None:
        w = w.astype(_F32)
    return _causal_core(q, k, v, w, seg, kv0, z0, chunk, eps, scale_dim, normalize, zero_start)


def state(k, v, w, seg, kv0, z0, *, chunk, scale_dim):
    """State-only pass (the PLA encoder, `pla_prefill_state`). The backend contract of `api.py`."""
    if w is not None:
        w = w.astype(_F32)
    return accumulate_state(k, v, w, seg, kv0, z0, chunk, scale_dim)
