"""Depthwise causal conv (BaseConv's): fast path vs reference vs a numpy loop, packing, padding, tails, steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.ops.causal_conv import causal_conv1d, causal_conv1d_step
from tests.helpers import assert_rel
from tests.segment_helpers import documents, python_document_ids, random_segment_ids

IMPLS = ("reference", "xla")


def _inputs(seed, b, t, c, k=3, dtype=jnp.float32):
    rng = np.random.default_rng(seed)  # numpy draws: no compile per shape
    return (jnp.asarray(rng.standard_normal((b, t, c), np.float32), dtype),
            jnp.asarray(rng.standard_normal((k, c), np.float32), dtype))


def _numpy_loop(x, kernel, seg=None):
    """y[t] = Σ_d kernel[K-1-d] · x[t-d] over the taps t-d ≥ 0 that are real and in t's document."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    b, t, _ = x.shape
    kk = kernel.shape[0]
    run, real = python_document_ids(np.ones((b, t), np.int32) if seg is None else seg)
    y = np.zeros(x.shape)
    for bi in range(b):
        for i in range(t):
            if not real[bi, i]:
                continue
            for d in range(kk):
                j = i - d
                if j >= 0 and real[bi, j] and run[bi, j] == run[bi, i]:
                    y[bi, i] += kernel[kk - 1 - d] * x[bi, j]
    return y


@pytest.mark.parametrize("k", [1, 3, 4])
def test_matches_numpy_loop_with_packing(k):
    x, w = _inputs(0, 3, 40, 5, k)
    seg = random_segment_ids(1, 3, 40, max_len=6, hole_p=0.2, empty_row=True)
    want = _numpy_loop(x, w, seg)
    for impl in IMPLS:
        assert_rel(causal_conv1d(x, w, segment_ids=jnp.asarray(seg), implementation=impl), want, 1e-5, impl)
        assert_rel(causal_conv1d(x, w, implementation=impl), _numpy_loop(x, w), 1e-5, impl)


def test_bf16_and_gradients_match_reference():
    seg = jnp.asarray(random_segment_ids(2, 2, 33, max_len=5))
    x, w = _inputs(3, 2, 33, 8, dtype=jnp.bfloat16)
    y = causal_conv1d(x, w, segment_ids=seg)
    assert y.dtype == jnp.bfloat16
    xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
    assert_rel(y, causal_conv1d(xf, wf, segment_ids=seg, implementation="reference"), 2e-2)

    def grads(impl):
        return jax.grad(lambda x, w: jnp.sum(jnp.sin(causal_conv1d(x, w, segment_ids=seg, implementation=impl))),
                        argnums=(0, 1))(xf, wf)

    for a, b in zip(grads("xla"), grads("reference")):
        assert_rel(a, b, 1e-5)


def test_mask_is_segment_ids_of_the_mask_and_both_combine():
    x, w = _inputs(4, 2, 20, 3)
    mask = np.ones((2, 20), bool)
    mask[0, :5] = False
    mask[1, 9] = False  # a hole
    for impl in IMPLS:
        by_mask = causal_conv1d(x, w, mask=jnp.asarray(mask), implementation=impl)
        assert_rel(by_mask, causal_conv1d(x, w, segment_ids=jnp.asarray(mask, jnp.int32), implementation=impl), 1e-6)
        seg = np.where(np.arange(20) < 12, 1, 2)[None].repeat(2, 0)
        both = causal_conv1d(x, w, mask=jnp.asarray(mask), segment_ids=jnp.asarray(seg), implementation=impl)
        assert_rel(both, _numpy_loop(x, w, np.where(mask, seg, 0)), 1e-5)


def test_each_document_alone_equals_the_packed_row():
    """Every document, moved alone to the start of its own row (holes kept as mask=False), gives the packed outputs."""
    x, w = _inputs(5, 3, 48, 4)
    seg = random_segment_ids(6, 3, 48, max_len=9, hole_p=0.15)
    docs = documents(seg)
    alone_x = np.zeros((len(docs), 48, 4), np.float32)
    alone_m = np.zeros((len(docs), 48), bool)
    for n, (b, start, stop, m) in enumerate(docs):
        alone_x[n, : stop - start] = np.asarray(x[b, start:stop])
        alone_m[n, : stop - start] = m
    for impl in IMPLS:
        packed = np.asarray(causal_conv1d(x, w, segment_ids=jnp.asarray(seg), implementation=impl))
        alone = np.asarray(causal_conv1d(jnp.asarray(alone_x), w, mask=jnp.asarray(alone_m), implementation=impl))
        covered = np.zeros(seg.shape, bool)
        for n, (b, start, stop, m) in enumerate(docs):
            assert_rel(packed[b, start:stop][m], alone[n, : stop - start][m], 1e-6)
            covered[b, start:stop] |= m
        assert np.all(packed[~covered] == 0)  # padding outputs 0


def test_nan_in_padding_reaches_nothing():
    x, w = _inputs(7, 2, 30, 4)
    seg = random_segment_ids(8, 2, 30, max_len=7, hole_p=0.2)
    assert (seg == 0).any()
    bad = jnp.where(jnp.asarray(seg == 0)[..., None], jnp.nan, x)
    for impl in IMPLS:
        f = lambda x, w: causal_conv1d(x, w, segment_ids=jnp.asarray(seg), implementation=impl)
        assert_rel(f(bad, w), f(x, w), 0)
        loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
        g_bad, g_clean = jax.grad(loss, argnums=(0, 1))(bad, w), jax.grad(loss, argnums=(0, 1))(x, w)
        for a, b in zip(g_bad, g_clean):
            assert bool(jnp.all(jnp.isfinite(a)))
            assert_rel(a, b, 0)


@pytest.mark.parametrize("packed", [False, True])
def test_tails_split_a_row_and_steps_continue_it(packed):
    t, split = 26, 11
    x, w = _inputs(9, 3, t, 5)
    seg = random_segment_ids(10, 3, t, max_len=8) if packed else np.ones((3, t), np.int32)
    whole = causal_conv1d(x, w, segment_ids=jnp.asarray(seg))
    # initial_tail belongs to the second half's first document: the halves equal the whole row where that
    # document is the one the first half ended with
    run, real = python_document_ids(seg)
    rows = [b for b in range(3) if real[b, :split].any() and real[b, split:].any()
            and run[b, np.nonzero(real[b, :split])[0][-1]] == run[b, split + np.nonzero(real[b, split:])[0][0]]]
    assert rows
    for impl in IMPLS:
        y1, tail = causal_conv1d(x[:, :split], w, segment_ids=jnp.asarray(seg[:, :split]), return_tail=True,
                                 implementation=impl)
        y2 = causal_conv1d(x[:, split:], w, segment_ids=jnp.asarray(seg[:, split:]), initial_tail=tail,
                           implementation=impl)
        assert_rel(jnp.concatenate([y1, y2], 1)[np.asarray(rows)], whole[np.asarray(rows)], 1e-6)
    if not packed:  # prefill, then one step per token
        y, tail = causal_conv1d(x[:, :split], w, return_tail=True)
        step = jax.jit(causal_conv1d_step)
        steps = []
        for i in range(split, t):
            y_t, tail = step(tail, x[:, i], w)
            steps.append(y_t)
        assert_rel(jnp.stack(steps, 1), whole[:, split:], 1e-6)


def test_tail_keeps_only_the_last_document():
    x, w = _inputs(11, 1, 6, 2)
    _, tail = causal_conv1d(x, w, segment_ids=jnp.asarray([[1, 1, 1, 1, 2, 0]]), return_tail=True)
    np.testing.assert_array_equal(tail[0, 0], x[0, 4])  # position 4 (id 2) kept
    np.testing.assert_array_equal(tail[0, 1], 0.0)  # position 5 is a pad
    _, tail = causal_conv1d(x[:, :1], w, return_tail=True, initial_tail=jnp.ones((1, 2, 2)))
    np.testing.assert_array_equal(tail[0], np.stack([np.ones(2), x[0, 0]]))


def test_bad_input():
    x, w = _inputs(12, 2, 10, 4)
    with pytest.raises(TypeError, match="segment_ids must have an integer dtype"):
        causal_conv1d(x, w, segment_ids=jnp.ones((2, 10)))
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, seq\] = \(2, 10\); got \(2, 9\)"):
        causal_conv1d(x, w, segment_ids=jnp.ones((2, 9), jnp.int32))
    with pytest.raises(ValueError, match="kernel: number of channels"):
        causal_conv1d(x, w[:, :3])
    with pytest.raises(ValueError, match=r"initial_tail must have shape \[batch, K-1, C\]"):
        causal_conv1d(x, w, initial_tail=jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="implementation='pallas'"):
        causal_conv1d(x, w, implementation="pallas")
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        causal_conv1d(x.astype(jnp.int32), w)
    with pytest.raises(ValueError, match="tail must have shape"):
        causal_conv1d_step(jnp.zeros((2, 3, 4)), x[:, 0], w)
