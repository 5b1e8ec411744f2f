"""Depthwise causal conv (BaseConv's), what only this op has: both paths against a numpy loop (kernel sizes 1, 3,
4; packing), the tail's content, the decode step, its own argument errors. Every implementation is held to the
reference by tests/ops/test_op_contract.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.ops.causal_conv import causal_conv1d, causal_conv1d_step
from tests.helpers import assert_rel
from tests.segment_helpers import python_document_ids, random_segment_ids

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


def test_prefill_then_steps_equal_one_pass():
    """A prefill's tail, then `causal_conv1d_step` one token at a time, equals one pass over the row."""
    t, split = 26, 11
    x, w = _inputs(9, 3, t, 5)
    whole = causal_conv1d(x, w)
    _, tail = causal_conv1d(x[:, :split], w, return_tail=True)
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
    """The errors of this op's own arguments (the shared ones: tests/ops/test_op_contract.py)."""
    x, w = _inputs(12, 2, 10, 4)
    with pytest.raises(ValueError, match="kernel: number of channels"):
        causal_conv1d(x, w[:, :3])
    with pytest.raises(ValueError, match="tail must have shape"):
        causal_conv1d_step(jnp.zeros((2, 3, 4)), x[:, 0], w)
