"""Sliding-window softmax attention, what only this op has: the reference and the banded path against a numpy
loop (window edge cases), no work for rows before the queries, memory linear in T, the ring-buffer decode step,
its own argument errors. Every implementation is held to the reference by tests/ops/test_op_contract.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax import ops
from jrt_jax.ops.sliding_window import sliding_window_step
from tests.helpers import assert_rel, random_qkv
from tests.segment_helpers import python_document_ids, random_segment_ids


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


def test_window_covering_everything_is_causal_attention():
    q, k, v = random_qkv(2, 1, 33, 2, 16, 16)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    assert_rel(ops.sliding_window_attention(q, k, v, window=33), want, 1e-5)


def test_banded_memory_is_linear_in_t():
    """The banded path never builds a T×T matrix: XLA's temporary arena grows linearly with T."""
    def temp_bytes(t):
        q, k, v = random_qkv(4, 1, t, 2, 16, 16)
        f = jax.jit(functools.partial(ops.sliding_window_attention, window=64))
        return f.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(2048), temp_bytes(8192)
    assert large <= 4.5 * small, (small, large)


def test_bad_input():
    """The errors of this op's own arguments (the shared ones: tests/ops/test_op_contract.py)."""
    q, k, v = random_qkv(5, 2, 10, 2, 8, 4)
    with pytest.raises(ValueError, match="window must be a non-negative int"):
        ops.sliding_window_attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="k: head size"):
        ops.sliding_window_attention(q, k[..., :4], v, window=2)
    with pytest.raises(ValueError, match="v: sequence length"):
        ops.sliding_window_attention(q, k, v[:, :3], window=2)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        ops.sliding_window_attention(q, k, v, window=2, block_size=0)
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


def test_reference_matches_loop_on_packed_rows_with_a_mask():
    """The reference on packed rows (holes, an id coming back, an empty row) with a mask over them equals the
    numpy loop over the folded ids, for the whole row and for queries inside a longer key span."""
    window, t = 5, 19
    q, k, v = _np_qkv(20)
    seg = random_segment_ids(21, _B, _T, max_len=13, hole_p=0.15, empty_row=True)
    mask = np.ones((_B, _T), bool)
    mask[1, 10:13] = False
    want = _numpy_loop(q, k, v, window, seg=np.where(mask, seg, 0))
    kw = dict(window=window, segment_ids=jnp.asarray(seg), mask=jnp.asarray(mask), implementation="reference")
    assert_rel(ops.sliding_window_attention(q, k, v, **kw), want, 1e-5, "whole row")
    for o in (3, _T - t):
        assert_rel(ops.sliding_window_attention(q[:, o:o + t], k, v, q_offset=o, **kw), want[:, o:o + t], 1e-5,
                   f"offset {o}")


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
