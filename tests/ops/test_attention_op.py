"""Causal (GQA) softmax attention: blocked path and jax.nn.dot_product_attention vs the quadratic reference,
with packed rows, padding, NaN-isolation, gradients, a query offset into a longer key span, and linear memory
of the blocked path."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.ops.attention import causal_attention
from tests.helpers import assert_rel
from tests.segment_helpers import assert_packed_equals_alone, documents, python_document_ids, random_segment_ids

# (implementation, block_q, block_k): blocks shorter and longer than documents, unequal in both directions
IMPLS = [("xla", 16, 8), ("xla", 8, 32), ("dense", 128, 128)]
B, T, H, KVH, D = 3, 40, 4, 2, 8  # one shape almost everywhere: the jitted op compiles once per configuration


def _qkv(seed, b, t, h, kvh, d, dtype=jnp.float32):
    rng = np.random.default_rng(seed)  # numpy draws: no compile per shape
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
                 for shape in ((b, t, h, d), (b, t, kvh, d), (b, t, kvh, d)))


def _attn(impl, bq, bk, q, k, v, **kw):
    return causal_attention(q, k, v, implementation=impl, block_q=bq, block_k=bk, **kw)


def _numpy_loop(q, k, v, seg=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    g = h // k.shape[2]
    run, real = python_document_ids(np.ones((b, t), np.int32) if seg is None else seg)
    out = np.zeros(q.shape[:3] + (v.shape[3],))
    for bi in range(b):
        for i in range(t):
            js = [j for j in range(i + 1) if real[bi, j] and run[bi, j] == run[bi, i]]
            if not real[bi, i]:
                continue
            for hi in range(h):
                s = np.array([q[bi, i, hi] @ k[bi, j, hi // g] for j in js]) / np.sqrt(d)
                p = np.exp(s - s.max())
                out[bi, i, hi] = (p[:, None] * v[bi, js, hi // g]).sum(0) / p.sum()
    return out


def test_reference_matches_numpy_loop_gqa_packed():
    q, k, v = _qkv(0, B, T, H, KVH, D)
    seg = random_segment_ids(1, B, T, max_len=6, hole_p=0.2)
    assert_rel(causal_attention(q, k, v, segment_ids=jnp.asarray(seg), implementation="reference"),
               _numpy_loop(q, k, v, seg), 1e-5)
    assert_rel(causal_attention(q, k, v, implementation="reference"), _numpy_loop(q, k, v), 1e-5)


TQ = 17  # queries of the query-offset checks, inside a key span of T


# (implementation, block_q, block_k, value head size, gradient checked for: "whole" span / the "offset" queries)
@pytest.mark.parametrize("impl,bq,bk,dv,grad_of", [("reference", 128, 128, 6, "offset"), ("xla", 16, 8, D, "whole"),
                                                   ("xla", 8, 32, 6, "offset"), ("dense", 128, 128, D, "both")])
def test_matches_reference_and_query_offset_rows(impl, bq, bk, dv, grad_of):
    """Every path equals the reference (fp32 tight, bf16 within a bound, gradients), and the defining property
    of the key span: causal_attention(q[:, o:o+T'], k, v, q_offset=o) == causal_attention(q, k, v)[:, o:o+T'] —
    with a mask and packed ids over the span (documents crossing o, an empty row), GQA, Dv != Dk where the
    path allows, a Python or a traced offset — and its gradients wrt q, k, v are the reference's of those rows."""
    q, k, v = _qkv(2, B, T, H, KVH, D)
    v = v[..., :dv]
    seg = random_segment_ids(3, B, T, max_len=12, empty_row=True)
    mask = np.ones((B, T), bool)
    mask[1, 20:23] = False
    kw = dict(segment_ids=jnp.asarray(seg), mask=jnp.asarray(mask))
    folded = dict(segment_ids=jnp.asarray(np.where(mask, seg, 0)))  # the same documents and pads, ids alone
    ref = functools.partial(causal_attention, implementation="reference")
    assert_rel(_attn(impl, bq, bk, q, k, v), ref(q, k, v), 1e-5, "fp32")
    whole = _attn(impl, bq, bk, q, k, v, **folded)
    assert_rel(whole, ref(q, k, v, **kw), 1e-5, "fp32 packed")
    at = jax.jit(lambda q, k, v, o: _attn(impl, bq, bk, q, k, v, q_offset=o, **kw))
    for o in (0, 9, T - TQ):
        rows = whole[:, o:o + TQ]
        assert_rel(_attn(impl, bq, bk, q[:, o:o + TQ], k, v, q_offset=o, **kw), rows, 1e-5, f"offset {o}")
        assert_rel(at(q[:, o:o + TQ], k, v, jnp.int32(o)), rows, 1e-5, f"traced offset {o}")
    assert_rel(_attn(impl, bq, bk, q[:, -TQ:], k, v, **kw), whole[:, -TQ:], 1e-5, "default: the last T'")

    o = 9
    if impl != "reference":  # bf16 once per path: the whole span, or the offset queries
        qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
        if grad_of == "offset":
            yb, rows = _attn(impl, bq, bk, qb[:, o:o + TQ], kb, vb, q_offset=o, **kw), slice(o, o + TQ)
        else:
            yb, rows = _attn(impl, bq, bk, qb, kb, vb, **folded), slice(None)
        assert yb.dtype == jnp.bfloat16
        assert_rel(yb, ref(*(x.astype(jnp.float32) for x in (qb, kb, vb)), **folded)[:, rows], 2e-2, "bf16")

    w = jnp.asarray(np.random.default_rng(4).standard_normal((B, T, H, dv), np.float32))
    g_ref = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(ref(q, k, v, **folded)) * w), argnums=(0, 1, 2))(q, k, v)
    if grad_of in ("whole", "both"):
        g = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(_attn(impl, bq, bk, q, k, v, **folded)) * w),
                     argnums=(0, 1, 2))(q, k, v)
        for name, a, r in zip("qkv", g, g_ref):
            assert_rel(a, r, 1e-5, f"d{name}")
    if grad_of in ("offset", "both"):
        wo = w[:, o:o + TQ]
        g_rows = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(ref(q, k, v, **folded)[:, o:o + TQ]) * wo),
                          argnums=(0, 1, 2))(q, k, v)
        g = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(at(q, k, v, jnp.int32(o))) * wo), argnums=(0, 1, 2))(
            q[:, o:o + TQ], k, v)
        for name, a, r in zip("qkv", g, (g_rows[0][:, o:o + TQ],) + g_rows[1:]):
            assert_rel(a, r, 1e-5, f"d{name} at offset {o}")


def test_mask_and_segment_ids_together():
    q, k, v = _qkv(5, B, T, H, KVH, D)
    mask = np.ones((B, T), bool)
    mask[0, :4] = False
    mask[1, 17] = False
    seg = np.where(np.arange(T) < 13, 1, 2)[None].repeat(B, 0)
    want = _numpy_loop(q, k, v, np.where(mask, seg, 0))
    for impl, bq, bk in IMPLS[:1] + IMPLS[-1:]:
        got = _attn(impl, bq, bk, q, k, v, mask=jnp.asarray(mask), segment_ids=jnp.asarray(seg))
        assert_rel(got, want, 1e-5, impl)
    by_mask = _attn(*IMPLS[0], q, k, v, mask=jnp.asarray(mask))
    assert_rel(by_mask, _numpy_loop(q, k, v, mask.astype(np.int32)), 1e-5)


def test_each_document_alone_equals_the_packed_row():
    t = T
    q, k, v = _qkv(6, B, t, H, KVH, D)
    seg = random_segment_ids(7, B, t, max_len=11, hole_p=0.15)
    docs = documents(seg)
    alone = [np.zeros((len(docs), t) + x.shape[2:], np.float32) for x in (q, k, v)]
    alone_m = np.zeros((len(docs), t), bool)
    for n, (b, start, stop, m) in enumerate(docs):
        for a, x in zip(alone, (q, k, v)):
            a[n, : stop - start] = np.asarray(x[b, start:stop])
        alone_m[n, : stop - start] = m
    for impl, bq, bk in IMPLS[:1] + IMPLS[-1:]:
        packed = np.asarray(_attn(impl, bq, bk, q, k, v, segment_ids=jnp.asarray(seg)))
        solo = np.asarray(_attn(impl, bq, bk, *map(jnp.asarray, alone), mask=jnp.asarray(alone_m)))
        assert_packed_equals_alone(packed, solo, docs, seg.shape, impl)


def test_nan_in_padding_reaches_nothing():
    q, k, v = _qkv(8, B, T, H, KVH, D)
    seg = random_segment_ids(9, B, T, max_len=9, hole_p=0.2)
    pad = jnp.asarray(seg == 0)[..., None, None]
    assert bool(pad.any())
    bad = [jnp.where(pad, jnp.nan, x) for x in (q, k, v)]
    for impl, bq, bk in IMPLS[:1] + IMPLS[-1:]:
        f = functools.partial(_attn, impl, bq, bk, segment_ids=jnp.asarray(seg))
        assert_rel(f(*bad), f(q, k, v), 1e-6, impl)
        loss = lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
        for a, c in zip(jax.grad(loss, argnums=(0, 1, 2))(*bad), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)):
            assert bool(jnp.all(jnp.isfinite(a))), impl
            assert_rel(a, c, 1e-6, impl)


def test_auto_is_dense_when_short_and_blocked_when_long(monkeypatch):
    from jrt_jax.ops.attention import api

    q, k, v = _qkv(10, B, T, H, KVH, D)
    ref = causal_attention(q, k, v, implementation="reference")
    assert_rel(causal_attention(q, k, v), ref, 1e-5)
    monkeypatch.setattr(api, "DENSE_MAX_LEN", 8)
    assert_rel(causal_attention(q, k, v, block_q=16, block_k=8), ref, 1e-5)
    # value heads of another size: dot_product_attention cannot, "auto" takes the blocked path
    v6 = v[..., :6]
    assert_rel(causal_attention(q, k, v6), _numpy_loop(q, k, v6), 1e-5)


def test_blocked_memory_is_linear_in_t():
    """The gradient of the blocked path (which holds its forward too) never holds a T×T matrix."""

    def temp_bytes(t):
        q = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
        seg = jax.ShapeDtypeStruct((1, t), jnp.int32)
        f = lambda q, k, v, s: jnp.sum(causal_attention(q, k, v, segment_ids=s, implementation="xla"))
        compiled = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, q, q, seg).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(512), temp_bytes(2048)
    assert large <= 4.5 * small, (small, large)
    assert large < 2048 * 2048 * 4 / 4, large  # far below one fp32 T×T score matrix


def test_bad_input():
    q, k, v = (np.zeros(s, np.float32) for s in ((2, 10, 4, 8), (2, 10, 2, 8), (2, 10, 2, 8)))
    with pytest.raises(TypeError, match="segment_ids must have an integer dtype"):
        causal_attention(q, k, v, segment_ids=np.ones((2, 10), np.float32))
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, seq\] = \(2, 10\); got \(10,\)"):
        causal_attention(q, k, v, segment_ids=np.ones((10,), np.int32))
    with pytest.raises(ValueError, match="must divide the query heads 4; got 3"):
        causal_attention(q, np.zeros((2, 10, 3, 8), np.float32), np.zeros((2, 10, 3, 8), np.float32))
    with pytest.raises(ValueError, match="v: number of key/value heads"):
        causal_attention(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match="implementation must be one of"):
        causal_attention(q, k, v, implementation="pallas")
    with pytest.raises(ValueError, match="block_q must be a positive int"):
        causal_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="v: value head size"):
        causal_attention(q, k, v[..., :4], implementation="dense")
    with pytest.raises(TypeError, match="mask must be boolean"):
        causal_attention(q, k, v, mask=np.ones((2, 10), np.float32))
    q4 = q[:, :4]
    with pytest.raises(ValueError, match=r"q_offset must be in \[0, S − T\] = \[0, 6\].*got 7"):
        causal_attention(q4, k, v, q_offset=7)
    with pytest.raises(ValueError, match="got -1"):
        causal_attention(q4, k, v, q_offset=-1)
    with pytest.raises(TypeError, match="q_offset must be an int or an integer scalar array"):
        causal_attention(q4, k, v, q_offset=1.0)
    with pytest.raises(ValueError, match="k: key span length .* at least the 10 queries of q; got 4"):
        causal_attention(q, k[:, :4], v[:, :4])
    with pytest.raises(ValueError, match="q_offset: implementation='cudnn' needs as many queries as keys"):
        causal_attention(q4, k, v, implementation="cudnn")
    with pytest.raises(ValueError, match=r"mask must have shape \[batch, seq\] = \(2, 10\); got \(2, 4\)"):
        causal_attention(q4, k, v, mask=np.ones((2, 4), bool))
