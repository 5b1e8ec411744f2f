"""Causal Based linear attention and PLA, what only these ops have: the Taylor feature map, the reference against
the formula, shapes beside the op contract's, the XLA head groups, the decode step and the state-only functions,
the release's zero-keys padding, a 128k-token sequence, a property test, their own argument errors. The contract
every implementation keeps (reference parity, bf16, gradients, padding, packing, NaN, two calls) is
tests/ops/test_op_contract.py's."""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax import ops
from tests.helpers import assert_rel, random_qkv, rel_err

FAST_IMPLS = ["xla", "pallas"]  # "pallas" runs the kernels in the Pallas interpreter on CPU
# The unjitted reference on its own contract tests costs 5-15 s a case: the slow tier runs it; the fast tier holds the
# fast implementations to it.
REFERENCE = pytest.param("reference", marks=pytest.mark.slow)


# ---------------------------------------------------------------------------------------------- feature map


def test_feature_map_size_and_kernel_identity():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 16))
    y = jax.random.normal(jax.random.PRNGKey(1), (5, 16))
    full = ops.taylor_feature_map(x)
    compact = ops.taylor_feature_map_compact(x)
    assert full.shape == (5, 273) and ops.taylor_feature_dim(16) == 273
    assert compact.shape == (5, 153) and ops.taylor_feature_dim(16, compact=True) == 153
    s = jnp.sum(x * y, -1) / 4.0  # q·k/√16
    want = 1 + s + s * s / 2
    np.testing.assert_allclose(jnp.sum(full * ops.taylor_feature_map(y), -1), want, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(compact * ops.taylor_feature_map_compact(y), -1), want, rtol=1e-5)


def test_feature_map_matches_released_layout():
    # [1, x/d^¼, vec(x xᵀ)/(√2·√d)] in row-major outer-product order.
    x = jnp.arange(1.0, 4.0)
    d = 3.0
    want = np.concatenate([[1.0], np.arange(1.0, 4.0) / d**0.25, np.outer(np.arange(1, 4), np.arange(1, 4)).ravel() / (np.sqrt(2) * np.sqrt(d))])
    np.testing.assert_allclose(ops.taylor_feature_map(x), want, rtol=1e-6)


@pytest.mark.parametrize("f, scale_dim", [(16, None), (5, None), (8, 3.0), (1, None)])
def test_feature_map_features_first_equals_compact(f, scale_dim):
    from jrt_jax.ops.feature_map import taylor_feature_map_compact_t

    x = jax.random.normal(jax.random.PRNGKey(f), (2, 3, 7, f))
    want = ops.taylor_feature_map_compact(x, scale_dim=scale_dim)
    got = taylor_feature_map_compact_t(jnp.swapaxes(x, -1, -2), scale_dim=scale_dim)
    assert got.shape == (2, 3, ops.taylor_feature_dim(f, compact=True), 7)
    np.testing.assert_allclose(jnp.swapaxes(got, -1, -2), want, rtol=2e-6, atol=1e-7)
    with pytest.raises(ValueError, match="x_t"):
        taylor_feature_map_compact_t(jnp.ones((4,)))
    with pytest.raises(ValueError, match="scale_dim"):
        taylor_feature_map_compact_t(jnp.ones((4, 2)), scale_dim=0)


def test_feature_map_scale_dim():
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8))
    y = jax.random.normal(jax.random.PRNGKey(3), (4, 8))
    s = jnp.sum(x * y, -1) / jnp.sqrt(32.0)
    got = jnp.sum(ops.taylor_feature_map(x, scale_dim=32) * ops.taylor_feature_map(y, scale_dim=32), -1)
    np.testing.assert_allclose(got, 1 + s + s * s / 2, rtol=1e-5)


# ------------------------------------------------------------------------------------- outputs vs reference

# Shapes beside the op contract's (tests/ops/test_op_contract.py: T = 40, F = 16, D = 8, M = 12, and T = 1).
SHAPES = [  # (b, t, h, f, d, m)
    (2, 37, 3, 16, 8, 37),  # M = T, T not a multiple of the chunk
    pytest.param((3, 50, 2, 8, 24, 1), marks=pytest.mark.slow),  # D = 24, M = 1
    pytest.param((1, 256, 4, 16, 64, 128), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}t{}h{}f{}d{}m{}".format(*s))
@pytest.mark.parametrize("chunk", [16, pytest.param(64, marks=pytest.mark.slow)])
def test_pla_matches_reference_fp32(impl, shape, chunk):
    b, t, h, f, d, m = shape
    q, k, v, ke, ve = random_qkv(0, b, t, h, f, d, m)
    yr, sr = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference", return_state=True)
    y, s = ops.prefix_linear_attention(q, k, v, ke, ve, implementation=impl, chunk_size=chunk, return_state=True)
    assert y.shape == (b, t, h, d) and y.dtype == jnp.float32
    assert_rel(y, yr, 1e-5, "y")
    assert_rel(s.kv, sr.kv, 1e-5, "kv")
    assert_rel(s.z, sr.z, 1e-5, "z")


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 100, 8, 16, 8, 30), (2, 70, 6, 8, 8, 10), (1, 40, 16, 4, 4, 40)],
                         ids=lambda s: "b{}t{}h{}f{}d{}m{}".format(*s))
def test_xla_head_groups_match_reference(shape):
    # On CPU the xla forward splits its reads and updates into head groups once B·H ≥ 8; these shapes take
    # 2, 3 and 4 groups, with and without a padding mask (which weights the keys inside each group).
    from jrt_jax.ops.linear_attention import xla

    b, t, h, f, d, m = shape
    assert xla.forward_head_groups(b, h) == b * h // 4
    q, k, v, ke, ve = random_qkv(3, b, t, h, f, d, m)
    mask = jnp.arange(t)[None, :] >= jnp.arange(b)[:, None] * 7  # left padding, 7 more per row
    for kw in ({}, {"mask": mask}):
        yr, sr = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference", return_state=True, **kw)
        y, s = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="xla", chunk_size=16,
                                           return_state=True, **kw)
        assert_rel(y, yr, 1e-5, f"y {kw.keys()}")
        assert_rel(s.kv, sr.kv, 1e-5, "kv")
        assert_rel(s.z, sr.z, 1e-5, "z")


def test_xla_head_group_rule():
    from jrt_jax.ops.linear_attention import xla

    assert [xla.forward_head_groups(b, h) for b, h in [(1, 16), (1, 8), (1, 32), (2, 16), (1, 4), (4, 16), (1, 1)]] \
        == [4, 2, 8, 8, 1, 1, 1]
    q, k, v = random_qkv(4, 1, 32, 6, 8, 8)
    kv = jax.random.normal(jax.random.PRNGKey(5), (1, 6, ops.taylor_feature_dim(8, compact=True), 8))
    z = jnp.abs(jax.random.normal(jax.random.PRNGKey(6), kv.shape[:3])) + 1.0
    one = xla._chunk_step(kv, z, q, k, v, None, scale_dim=None, eps=1e-12, precision=None, head_groups=1)
    for g in (2, 4, 6, 9):
        many = xla._chunk_step(kv, z, q, k, v, None, scale_dim=None, eps=1e-12, precision=None, head_groups=g)
        for a, b_ in zip(one, many):
            np.testing.assert_allclose(b_, a, rtol=1e-6, atol=1e-6)


def test_reference_is_the_formula():
    """The reference itself against a float64 loop over the DESIGN §3 formula."""
    b, t, h, f, d, m = 2, 9, 2, 4, 3, 4
    q, k, v, ke, ve = (np.asarray(a, np.float64) for a in random_qkv(3, b, t, h, f, d, m))
    phi = lambda x: np.concatenate([[1.0], x / f**0.25, np.outer(x, x).ravel() / np.sqrt(2 * f)])
    want = np.zeros((b, t, h, d))
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                pq = phi(q[bi, i, hi])
                keys = [(k[bi, j, hi], v[bi, j, hi]) for j in range(i + 1)]
                keys += [(ke[bi, j, hi], ve[bi, j, hi]) for j in range(m)]
                w = np.array([pq @ phi(kk) for kk, _ in keys])
                want[bi, i, hi] = (w[:, None] * np.array([vv for _, vv in keys])).sum(0) / (w.sum() + 1e-12)
    got = ops.prefix_linear_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v, ke, ve)), implementation="reference")
    assert_rel(got, want, 1e-6)


# ------------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_jitted_one_chunk_forward_at_large_batch(impl):
    """Regression: XLA:CPU (jaxlib 0.10.2) miscompiled the jitted forward of a one-chunk sequence from the zero
    state at batch >= 64 (outputs of 1e20-1e36, different on every run); the op no longer traces that state
    read. Causal and PLA with packed documents, two head counts, three runs each."""
    keys = jax.random.split(jax.random.key(7), 3)
    for b, t, h, d in [(64, 32, 1, 64), (128, 64, 2, 16)]:
        q = jax.random.normal(keys[0], (b, t, h, 8))
        k = jax.random.normal(keys[1], (b, t, h, 8))
        v = jax.random.normal(keys[2], (b, t, h, d))
        seg = jnp.broadcast_to(jnp.where(jnp.arange(t) < t // 2, 1, 2), (b, t))
        ref = ops.linear_attention(q, k, v, implementation="reference")
        ref_pla = ops.prefix_linear_attention(q, k, v, k[:, :8], v[:, :8], segment_ids=seg, implementation="reference")
        causal = jax.jit(lambda q, k, v: ops.linear_attention(q, k, v, implementation=impl))
        pla = jax.jit(lambda q, k, v: ops.prefix_linear_attention(q, k, v, k[:, :8], v[:, :8], segment_ids=seg,
                                                                  implementation=impl))
        for _ in range(3):
            assert_rel(causal(q, k, v), ref, 1e-5)
            assert_rel(pla(q, k, v), ref_pla, 1e-5)


def test_gradients_bf16_have_input_dtype():
    q, k, v = random_qkv(7, 1, 40, 2, 16, 8, dtype=jnp.bfloat16)
    g = jax.grad(lambda q_: jnp.sum(ops.linear_attention(q_, k, v, implementation="xla").astype(jnp.float32)))(q)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


# ---------------------------------------------------------------------------------------- recurrent form


@pytest.mark.parametrize("impl", [REFERENCE, "xla", pytest.param("pallas", marks=pytest.mark.slow)])
@pytest.mark.parametrize("prompt,m", [(1, 1), (37, 20), (64, 64)])
def test_prefill_then_steps_equals_parallel_pass(impl, prompt, m):
    b, t, h, f, d = 2, 80, 2, 16, 8
    q, k, v, ke, ve = random_qkv(8, b, t, h, f, d, m)
    full = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference")
    y_pre, state = ops.prefix_linear_attention(
        q[:, :prompt], k[:, :prompt], v[:, :prompt], ke, ve, implementation=impl, chunk_size=16, return_state=True
    )
    step = jax.jit(ops.linear_attention_step)
    ys = []
    for i in range(prompt, t):
        y_i, state = step(state, q[:, i], k[:, i], v[:, i])
        ys.append(y_i)
    assert_rel(y_pre, full[:, :prompt], 1e-5, "prefill")
    assert_rel(jnp.stack(ys, 1), full[:, prompt:], 1e-5, "decode")


@pytest.mark.parametrize("impl", [REFERENCE] + FAST_IMPLS)
def test_prefill_state_functions(impl):
    q, k, v, ke, ve = random_qkv(10, 2, 50, 3, 16, 8, 20)
    _, want = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference", return_state=True)
    got = ops.pla_prefill_state(k, v, ke, ve, implementation=impl, chunk_size=16)
    assert_rel(got.kv, want.kv, 1e-5)
    assert_rel(got.z, want.z, 1e-5)
    _, want_causal = ops.linear_attention(q, k, v, implementation="reference", return_state=True)
    got_causal = ops.linear_attention_state(k, v, implementation=impl)
    assert_rel(got_causal.kv, want_causal.kv, 1e-5)
    assert got.kv.dtype == jnp.float32 and got.kv.shape == (2, 3, 153, 8) and got.z.shape == (2, 3, 153)


def test_state_is_fp32_for_bf16_inputs():
    q, k, v = random_qkv(11, 1, 20, 1, 16, 4, dtype=jnp.bfloat16)
    _, s = ops.linear_attention(q, k, v, return_state=True)
    y, s2 = ops.linear_attention_step(s, q[:, 0], k[:, 0], v[:, 0])
    assert s.kv.dtype == s2.kv.dtype == jnp.float32 and y.dtype == jnp.bfloat16


# --------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("impl", [REFERENCE, "xla", pytest.param("pallas", marks=pytest.mark.slow)])
def test_zero_keys_padding_is_the_released_behaviour(impl):
    """Compatibility mode: pads keep their values but have raw k = 0, so φ(k) = [1, 0, …]."""
    t, m = 30, 10
    q, k, v, ke, ve = random_qkv(13, 2, t, 2, 16, 8, m)
    mask = jnp.arange(t)[None] >= jnp.array([[0], [6]])
    y = ops.prefix_linear_attention(q, k, v, ke, ve, mask=mask, padding="zero_keys", implementation=impl, chunk_size=16)
    kz = jnp.where(mask[:, :, None, None], k, 0.0)
    kez = jnp.where(mask[:, :m, None, None], ke, 0.0)
    want = ops.prefix_linear_attention(q, kz, v, kez, ve, implementation="reference")
    assert_rel(y, want, 1e-5)
    # …and it differs from excluding the pads (pads really do contribute).
    assert rel_err(y, ops.prefix_linear_attention(q, k, v, ke, ve, mask=mask, implementation="reference")) > 1e-3


@pytest.mark.parametrize("impl", [REFERENCE, "xla", pytest.param("pallas", marks=pytest.mark.slow)])
def test_fully_masked_rows_and_zero_keys_are_finite(impl):
    q, k, v, ke, ve = random_qkv(14, 2, 33, 2, 16, 8, 5)
    mask = jnp.zeros((2, 33), bool)
    y = ops.prefix_linear_attention(q, k, v, ke, ve, mask=mask, implementation=impl)
    assert bool(jnp.all(y == 0))
    zero = jnp.zeros_like(k)
    y = ops.prefix_linear_attention(zero, zero, v, jnp.zeros_like(ke), ve, implementation=impl)
    assert bool(jnp.all(jnp.isfinite(y)))
    # φ(0)·φ(0) = 1: with all-zero q and k every position averages the values it sees.
    want = (jnp.cumsum(v, 1) + ve.sum(1, keepdims=True)) / (jnp.arange(1, 34)[None, :, None, None] + 5)
    assert_rel(y, want, 1e-5)


def test_long_sequence_128k_is_finite():
    t = 131072
    q, k, v = random_qkv(15, 1, t, 1, 16, 8)
    mask = jnp.arange(t)[None] % 3 != 0
    y = jax.jit(functools.partial(ops.linear_attention, chunk_size=256))(q * 3, k * 3, v, mask=mask)
    assert bool(jnp.all(jnp.isfinite(y)))
    y = jax.jit(functools.partial(ops.linear_attention, chunk_size=256))(q, jnp.zeros_like(k), v, mask=jnp.zeros((1, t), bool))
    assert bool(jnp.all(y == 0))


# ------------------------------------------------------------------------------------------ property tests


@pytest.mark.slow
@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    b=st.integers(1, 2),
    t=st.integers(1, 70),
    h=st.integers(1, 3),
    f=st.sampled_from([1, 4, 16]),
    d=st.integers(1, 9),
    m_frac=st.floats(0.0, 1.0),
    chunk=st.sampled_from([8, 16, 64]),
    seed=st.integers(0, 2**16),
)
def test_property_xla_equals_reference(b, t, h, f, d, m_frac, chunk, seed):
    m = max(1, int(round(m_frac * t)))
    q, k, v, ke, ve = random_qkv(seed, b, t, h, f, d, m)
    yr, sr = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="reference", return_state=True)
    y, s = ops.prefix_linear_attention(q, k, v, ke, ve, implementation="xla", chunk_size=chunk, return_state=True)
    assert_rel(y, yr, 1e-5)
    assert_rel(s.kv, sr.kv, 1e-5)


# --------------------------------------------------------------------------------------------- bad input


def _args():
    return random_qkv(16, 2, 10, 2, 16, 8, 4)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: (a[0][:1],) + a[1:], ValueError, "k: batch size"),
        (lambda a: (a[0], a[1][:, :, :1]) + a[2:], ValueError, "k: number of heads"),
        (lambda a: (a[0], a[1][..., :8]) + a[2:], ValueError, "k: feature size"),
        (lambda a: a[:2] + (a[2][:, :5],) + a[3:], ValueError, "v: sequence length"),
        (lambda a: a[:3] + (a[3][..., :4],) + a[4:], ValueError, "k_enc: feature size"),
        (lambda a: a[:4] + (a[4][..., :3],), ValueError, "v_enc: value size"),
        (lambda a: a[:3] + (jnp.concatenate([a[3]] * 3, 1), jnp.concatenate([a[4]] * 3, 1)), ValueError, "M = 12 must be <= the sequence length T = 10"),
        (lambda a: a[:3] + (a[3], a[4][:, :2]), ValueError, "v_enc: encoder length"),
        (lambda a: (a[0][0],) + a[1:], ValueError, "q must have rank 4"),
        (lambda a: (a[0].astype(jnp.int32),) + a[1:], TypeError, "q must have a floating dtype"),
    ],
)
def test_bad_shapes_and_dtypes(mutate, exc, match):
    with pytest.raises(exc, match=match):
        ops.prefix_linear_attention(*mutate(_args()))


def test_bad_options():
    q, k, v, ke, ve = _args()
    with pytest.raises(ValueError, match="padding must be one of"):
        ops.linear_attention(q, k, v, padding="left")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ops.linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="eps must be a non-negative"):
        ops.linear_attention(q, k, v, eps=-1.0)
    with pytest.raises(ValueError, match="k_enc and v_enc must be given together"):
        ops.pla_prefill_state(k, v, ke, None)
    state = ops.linear_attention_state(k, v)
    with pytest.raises(ValueError, match="state: kv must have shape"):
        ops.linear_attention_step(state, q[:1, 0], k[:1, 0], v[:1, 0])
    with pytest.raises(TypeError, match="state must be a LinearAttentionState"):
        ops.linear_attention_step("state", q[:, 0], k[:, 0], v[:, 0])
