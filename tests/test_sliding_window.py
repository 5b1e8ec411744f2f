"""Sliding-window softmax attention: banded path against the quadratic reference and a numpy loop."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax import ops
from tests.helpers import assert_rel, random_qkv


def _numpy_loop(q, k, v, window, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    out = np.zeros(v.shape)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                js = [j for j in range(max(0, i - window), i + 1) if mask is None or mask[bi, j]]
                if not js or (mask is not None and not mask[bi, i]):
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
