"""Causal (GQA) softmax attention, what only this op has: the reference against a numpy loop (grouped heads,
packed rows, a query offset into a longer key span), "auto"'s choice of path, linear memory of the blocked path,
its own argument errors. Every implementation is held to the reference by tests/ops/test_op_contract.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.ops.attention import causal_attention
from tests.helpers import assert_rel
from tests.segment_helpers import python_document_ids, random_segment_ids

B, T, H, KVH, D = 3, 40, 4, 2, 8  # one shape almost everywhere: the jitted op compiles once per configuration


def _qkv(seed, b, t, h, kvh, d, dtype=jnp.float32):
    rng = np.random.default_rng(seed)  # numpy draws: no compile per shape
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
                 for shape in ((b, t, h, d), (b, t, kvh, d), (b, t, kvh, d)))


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
    want = _numpy_loop(q, k, v, seg)
    assert_rel(causal_attention(q, k, v, segment_ids=jnp.asarray(seg), implementation="reference"), want, 1e-5)
    assert_rel(causal_attention(q, k, v, implementation="reference"), _numpy_loop(q, k, v), 1e-5)
    # queries inside a longer key span: at offset o they are rows o … o+T'−1 of the whole (default: the last T')
    for o, n in ((9, 17), (None, 17)):
        rows = slice(T - n, T) if o is None else slice(o, o + n)
        got = causal_attention(q[:, rows], k, v, q_offset=o, segment_ids=jnp.asarray(seg), implementation="reference")
        assert_rel(got, want[:, rows], 1e-5, f"offset {o}")


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
    """The errors of this op's own arguments (the shared ones: tests/ops/test_op_contract.py)."""
    q, k, v = (np.zeros(s, np.float32) for s in ((2, 10, 4, 8), (2, 10, 2, 8), (2, 10, 2, 8)))
    with pytest.raises(ValueError, match="must divide the query heads 4; got 3"):
        causal_attention(q, np.zeros((2, 10, 3, 8), np.float32), np.zeros((2, 10, 3, 8), np.float32))
    with pytest.raises(ValueError, match="v: number of key/value heads"):
        causal_attention(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match="block_q must be a positive int"):
        causal_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="v: value head size"):
        causal_attention(q, k, v[..., :4], implementation="dense")
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
