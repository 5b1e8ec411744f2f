"""Packed sequences: `segments.document_ids` against a plain-Python walk, and `check_segment_ids`' errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.ops._checks import check_segment_ids
from jrt_jax.ops.segments import document_ids, masked_softmax, resolve_segments, zero_excluded
from tests.segment_helpers import python_document_ids, random_segment_ids


@pytest.mark.parametrize(
    "seg,run",
    [
        ([1, 1, 0, 1, 1], [0, 0, 0, 0, 0]),  # one document with a hole
        ([1, 1, 2, 2, 1, 1], [0, 0, 1, 1, 2, 2]),  # an id coming back is a new document
        ([0, 0, 5, 5, 7], [0, 0, 0, 0, 1]),  # left padding
        ([3, 0, 0, 3, 4, 0], [0, 0, 0, 0, 1, 1]),  # pads take the previous document
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # all padding
        ([-2, 7, 0, 7, -2], [0, 1, 1, 1, 2]),  # any non-zero id is a document id
    ],
)
def test_document_ids_examples(seg, run):
    got_run, got_real = document_ids(jnp.asarray([seg], jnp.int32))
    assert got_run.dtype == jnp.int32 and got_real.dtype == jnp.bool_
    np.testing.assert_array_equal(got_run[0], run)
    np.testing.assert_array_equal(got_real[0], np.asarray(seg) != 0)


def test_document_ids_match_a_python_walk_and_are_non_decreasing():
    seg = random_segment_ids(0, 6, 90, empty_row=True)
    run, real = jax.jit(document_ids)(jnp.asarray(seg))
    want_run, want_real = python_document_ids(seg)
    np.testing.assert_array_equal(run, want_run)
    np.testing.assert_array_equal(real, want_real)
    assert np.all(np.diff(np.asarray(run), axis=1) >= 0)


def test_resolve_segments_mask_and_both():
    assert resolve_segments(None, None, 2, 5) is None
    mask = jnp.asarray([[True, True, False, True, True]])
    seg = resolve_segments(None, mask, 1, 5)
    assert not seg.packed
    np.testing.assert_array_equal(seg.run, 0)
    np.testing.assert_array_equal(seg.real, mask)
    # mask ∧ segment_ids: a masked-out token is a hole, it does not split its document
    both = resolve_segments(jnp.asarray([[1, 1, 1, 2, 2]]), jnp.asarray([[True, False, True, True, False]]), 1, 5)
    assert both.packed
    np.testing.assert_array_equal(both.run, [[0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(both.real, [[True, False, True, True, False]])


def test_zero_excluded_and_masked_softmax_are_selects():
    x = jnp.asarray([[[1.0], [jnp.nan], [jnp.inf]]])
    real = jnp.asarray([[True, False, False]])
    np.testing.assert_array_equal(zero_excluded(x, real), [[[1.0], [0.0], [0.0]]])
    g = jax.grad(lambda x: jnp.sum(zero_excluded(x, real)))(x)
    np.testing.assert_array_equal(g, [[[1.0], [0.0], [0.0]]])
    p = masked_softmax(jnp.asarray([[0.0, jnp.nan], [1.0, 2.0]]), jnp.asarray([[True, False], [False, False]]))
    np.testing.assert_array_equal(p, [[1.0, 0.0], [0.0, 0.0]])


def test_check_segment_ids_errors():
    with pytest.raises(TypeError, match="segment_ids must have an integer dtype.*float32"):
        check_segment_ids(jnp.zeros((2, 5)), 2, 5)
    with pytest.raises(TypeError, match="segment_ids must have an integer dtype.*bool"):
        check_segment_ids(jnp.zeros((2, 5), bool), 2, 5)
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, seq\] = \(2, 5\); got \(2, 4\)"):
        check_segment_ids(jnp.zeros((2, 4), jnp.int32), 2, 5)
    with pytest.raises(TypeError, match="segment_ids must be an int32 array.*list"):
        check_segment_ids([[1, 2]], 1, 2)
    assert check_segment_ids(np.ones((1, 3), np.int64), 1, 3).dtype == jnp.int32
    assert check_segment_ids(None, 1, 3) is None
