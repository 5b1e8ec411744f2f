"""Sliding-window softmax attention: banded path against the quadratic reference and a numpy loop, a query offset
into a longer key span, the ring-buffer decode step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax import ops
from jrt_jax.ops.sliding_window import sliding_window_step
from tests.helpers import assert_rel, random_qkv
from tests.segment_helpers import assert_packed_equals_alone, documents, python_document_ids, random_segment_ids


def _numpy_loop(q, k, v, window, mask=None, seg=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    if seg is None:
        seg = np.ones((b, t), np.int32) if mask is None else np.asarray(mask, np.int32)
    run, real = python_document_ids(seg)
    out = np.zeros(v.shape)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                js = [j for j in range(max(0, i - window), i + 1) if real[bi, j] and run[bi, j] == run[bi, i]]
                if not js or not real[bi, i]:
                    continue
                s = np.array([q[bi, i, hi] @ k[bi, j, hi] for j in js]) / np.sqrt(d)
                p = np.exp(s - s.max())
                out[bi, i, hi] = (p[:, None] * v[bi, js, hi]).sum(0) / p.sum()
    return out


@pytest.mark.parametrize("t,window,block", [(1, 4, None), (37, 0, None), (50, 7, 8), (130, 16, None), (20, 64, None), (100, 31, 40)])
def test_banded_matches_reference_and_loop(t, window, block):
    q, k, v = random_qkv(0, 2, t, 3, 8, 5)
    ref = ops.sliding_window_attention(q, k, v, window=window, implementation="reference")
    got = ops.sliding_window_attention(q, k, v, window=window, implementation="xla", block_size=block)
    assert_rel(ref, _numpy_loop(q, k, v, window), 1e-5)
    assert_rel(got, ref, 1e-5)


def test_mask_left_padding_and_empty_rows():
    t, window = 40, 6
    q, k, v = random_qkv(1, 2, t, 2, 8, 4)
    mask = np.arange(t)[None] >= np.array([[0], [11]])
    for impl in ("reference", "xla"):
        got = ops.sliding_window_attention(q, k, v, window=window, mask=jnp.asarray(mask), implementation=impl)
        assert_rel(got, _numpy_loop(q, k, v, window, mask), 1e-5)
    # No real key at all: zeros, never NaN.
    empty = ops.sliding_window_attention(q, k, v, window=window, mask=jnp.zeros((2, t), bool))
    assert bool(jnp.all(empty == 0))


def test_window_covering_everything_is_causal_attention():
    q, k, v = random_qkv(2, 1, 33, 2, 16, 16)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    assert_rel(ops.sliding_window_attention(q, k, v, window=33), want, 1e-5)


def test_bf16_and_gradients():
    q, k, v = random_qkv(3, 1, 70, 2, 16, 16, dtype=jnp.bfloat16)
    y = ops.sliding_window_attention(q, k, v, window=9)
    assert y.dtype == jnp.bfloat16
    f32 = [a.astype(jnp.float32) for a in (q, k, v)]
    assert_rel(y, ops.sliding_window_attention(*f32, window=9, implementation="reference"), 2e-2)

    def loss(impl, *args):
        return jnp.sum(jnp.sin(ops.sliding_window_attention(*args, window=9, implementation=impl)))

    gr = jax.grad(functools.partial(loss, "reference"), argnums=(0, 1, 2))(*f32)
    gx = jax.grad(functools.partial(loss, "xla"), argnums=(0, 1, 2))(*f32)
    for a, b in zip(gx, gr):
        assert_rel(a, b, 1e-5)


def test_banded_memory_is_linear_in_t():
    """The banded path never builds a T×T matrix: XLA's temporary arena grows linearly with T."""
    def temp_bytes(t):
        q, k, v = random_qkv(4, 1, t, 2, 16, 16)
        f = jax.jit(functools.partial(ops.sliding_window_attention, window=64))
        return f.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(2048), temp_bytes(8192)
    assert large <= 4.5 * small, (small, large)


def test_bad_input():
    q, k, v = random_qkv(5, 2, 10, 2, 8, 4)
    with pytest.raises(ValueError, match="window must be a non-negative int"):
        ops.sliding_window_attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="k: head size"):
        ops.sliding_window_attention(q, k[..., :4], v, window=2)
    with pytest.raises(ValueError, match="v: sequence length"):
        ops.sliding_window_attention(q, k, v[:, :3], window=2)
    with pytest.raises(TypeError, match="q must have a floating dtype"):
        ops.sliding_window_attention(q.astype(jnp.int32), k, v, window=2)
    with pytest.raises(ValueError, match="implementation='pallas'"):
        ops.sliding_window_attention(q, k, v, window=2, implementation="pallas")
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        ops.sliding_window_attention(q, k, v, window=2, block_size=0)
    with pytest.raises(TypeError, match="segment_ids must have an integer dtype.*float32"):
        ops.sliding_window_attention(q, k, v, window=2, segment_ids=jnp.ones((2, 10)))
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, seq\] = \(2, 10\); got \(2, 11\)"):
        ops.sliding_window_attention(q, k, v, window=2, segment_ids=jnp.ones((2, 11), jnp.int32))
    with pytest.raises(ValueError, match=r"q_offset must be in \[0, S − T\] = \[0, 6\].*got 7"):
        ops.sliding_window_attention(q[:, :4], k, v, window=2, q_offset=7)
    with pytest.raises(TypeError, match="q_offset must be a Python int"):
        ops.sliding_window_attention(q[:, :4], k, v, window=2, q_offset=jnp.int32(1))
    with pytest.raises(ValueError, match="k: key span length .* at least the 10 queries of q; got 4"):
        ops.sliding_window_attention(q, k[:, :4], v[:, :4], window=2)


# ---- packed rows (segment_ids) ----------------------------------------------------------------------------

_B, _T, _H, _D = 3, 44, 2, 8  # one shape for the packed tests: the jitted op compiles once per configuration


def _np_qkv(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((_B, _T, _H, _D), np.float32), dtype) for _ in range(3))


@pytest.mark.parametrize("window,block", [(5, 8), (12, None)])
def test_packed_rows_match_loop_reference_bf16_gradients_and_query_offset(window, block):
    """Packed rows with padding: reference = numpy loop, banded = reference (fp32, bf16, gradients); and the
    defining property of the key span: sliding_window_attention(q[:, o:o+T'], k, v, q_offset=o) == the whole
    span's rows o … o+T'−1 on both paths (documents crossing o), with the reference's gradients of those rows."""
    t = 19  # queries of the offset checks
    q, k, v = _np_qkv(20)
    seg = random_segment_ids(21, _B, _T, max_len=13, hole_p=0.15, empty_row=True)
    mask = np.ones((_B, _T), bool)
    mask[1, 10:13] = False
    kw = dict(segment_ids=jnp.asarray(seg), mask=jnp.asarray(mask))
    folded = dict(segment_ids=jnp.asarray(np.where(mask, seg, 0)))  # the same documents and pads, ids alone

    def swa(q, k, v, impl="xla", **more):
        return ops.sliding_window_attention(q, k, v, window=window, implementation=impl, block_size=block,
                                            **(more if "segment_ids" in more else {**folded, **more}))

    ref = swa(q, k, v, "reference")
    assert_rel(ref, _numpy_loop(q, k, v, window, seg=np.where(mask, seg, 0)), 1e-5, "reference")
    got = swa(q, k, v)
    assert_rel(got, ref, 1e-5, "xla")
    wholes = {"reference": ref, "xla": got} if block is not None else {"xla": got}  # the reference's offset once
    for impl, whole in wholes.items():
        for o in (3, _T - t):
            assert_rel(swa(q[:, o:o + t], k, v, impl, q_offset=o, **kw), whole[:, o:o + t], 1e-5, f"{impl} offset {o}")
    assert_rel(swa(q[:, -t:], k, v, **kw), got[:, -t:], 1e-5, "default: the last T'")
    o = 3
    if block is not None:  # bf16 once: the whole span and the offset queries
        qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
        want = swa(*(x.astype(jnp.float32) for x in (qb, kb, vb)), "reference")
        for y, w in ((swa(qb, kb, vb), want), (swa(qb[:, o:o + t], kb, vb, q_offset=o, **kw), want[:, o:o + t])):
            assert y.dtype == jnp.bfloat16
            assert_rel(y, w, 2e-2, "bf16")

    loss = lambda impl, rows=slice(None), **more: lambda q, k, v: jnp.sum(jnp.sin(swa(q, k, v, impl, **more)[:, rows]))
    gr = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
    gx = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", gx, gr):
        assert_rel(a, b, 1e-5, f"d{name}")
    if block is None:  # the offset gradients once, over several query blocks
        return
    g_rows = jax.grad(loss("reference", slice(o, o + t)), argnums=(0, 1, 2))(q, k, v)
    g_part = jax.grad(loss("xla", q_offset=o, **kw), argnums=(0, 1, 2))(q[:, o:o + t], k, v)
    for name, a, b in zip("qkv", g_part, (g_rows[0][:, o:o + t],) + g_rows[1:]):
        assert_rel(a, b, 1e-5, f"d{name} at offset {o}")


def test_mask_and_segment_ids_combine():
    q, k, v = _np_qkv(22)
    mask = np.ones((_B, _T), bool)
    mask[0, :5] = False
    mask[2, 20] = False
    seg = np.where(np.arange(_T) < 17, 4, 9)[None].repeat(_B, 0)
    for impl in ("reference", "xla"):
        got = ops.sliding_window_attention(q, k, v, window=5, mask=jnp.asarray(mask), segment_ids=jnp.asarray(seg),
                                           implementation=impl, block_size=8)
        assert_rel(got, _numpy_loop(q, k, v, 5, seg=np.where(mask, seg, 0)), 1e-5, impl)


def test_each_document_alone_equals_the_packed_row():
    window = 5
    q, k, v = _np_qkv(23)
    seg = random_segment_ids(24, _B, _T, max_len=15, hole_p=0.15)
    docs = documents(seg)
    alone = [np.zeros((len(docs), _T, _H, _D), np.float32) for _ in range(3)]
    alone_m = np.zeros((len(docs), _T), bool)
    for n, (b, start, stop, m) in enumerate(docs):
        for a, x in zip(alone, (q, k, v)):
            a[n, : stop - start] = np.asarray(x[b, start:stop])
        alone_m[n, : stop - start] = m
    for impl in ("reference", "xla"):
        kw = dict(window=window, implementation=impl, block_size=8)
        packed = np.asarray(ops.sliding_window_attention(q, k, v, segment_ids=jnp.asarray(seg), **kw))
        solo = np.asarray(ops.sliding_window_attention(*map(jnp.asarray, alone), mask=jnp.asarray(alone_m), **kw))
        assert_packed_equals_alone(packed, solo, docs, seg.shape, impl)


def test_nan_in_padding_reaches_nothing():
    q, k, v = _np_qkv(25)
    seg = random_segment_ids(26, _B, _T, max_len=9, hole_p=0.2)
    pad = jnp.asarray(seg == 0)[..., None, None]
    assert bool(pad.any())
    bad = [jnp.where(pad, jnp.nan, x) for x in (q, k, v)]
    for impl in ("reference", "xla"):
        f = functools.partial(ops.sliding_window_attention, window=5, segment_ids=jnp.asarray(seg),
                              implementation=impl, block_size=8)
        assert_rel(f(*bad), f(q, k, v), 1e-6, impl)
        loss = lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
        for a, c in zip(jax.grad(loss, argnums=(0, 1, 2))(*bad), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)):
            assert bool(jnp.all(jnp.isfinite(a))), impl
            assert_rel(a, c, 1e-6, impl)


def test_banded_path_computes_no_rows_before_the_queries():
    """A long key prefix costs the banded path nothing beyond the keys the queries read: the flops of 64
    queries after 1024 prefix keys are those of 64 queries after 64."""
    def flops(prefix):
        q, k = jax.ShapeDtypeStruct((1, 64, 2, 16), jnp.float32), jax.ShapeDtypeStruct((1, prefix + 64, 2, 16),
                                                                                      jnp.float32)
        f = jax.jit(functools.partial(ops.sliding_window_attention, window=32, implementation="xla"))
        return f.lower(q, k, k).compile().cost_analysis()["flops"]

    assert flops(1024) <= 1.05 * flops(64), (flops(1024), flops(64))


def test_decode_step_over_a_ring_buffer_equals_the_parallel_pass():
    """`sliding_window_step` from an empty ring buffer of `window` slots, one token at a time, equals the full
    pass; garbage (NaN) in empty slots is never read."""
    window, t = 5, 13
    q, k, v = (x[:2, :t] for x in _np_qkv(27))
    want = ops.sliding_window_attention(q, k, v, window=window)
    ck = jnp.full((2, window, _H, _D), jnp.nan)
    cv = jnp.full((2, window, _H, _D), jnp.nan)
    valid = jnp.zeros((2, window), bool)
    step = jax.jit(sliding_window_step)
    ys = []
    for i in range(t):
        y, ck, cv, valid = step(ck, cv, valid, q[:, i], k[:, i], v[:, i], slot=jnp.asarray(i % window))
        ys.append(y)
    assert_rel(jnp.stack(ys, 1), want, 1e-5)
