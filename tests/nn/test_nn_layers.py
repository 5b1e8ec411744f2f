"""Each layer of `jrt_jax.nn` against a hand-written numpy computation of its formula, plus its decode step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jrt_jax import nn
from jrt_jax.ops.causal_conv import causal_conv1d
from jrt_jax.nn.context import SequenceContext

B, T, D = 2, 11, 16


def _x(seed=0, shape=(B, T, D)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _np(a):
    return np.asarray(a, np.float64)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _rope_np(x, positions, inv_freq, scale=1.0):
    """Rotate-half RoPE in numpy: x [B,T,H,D], positions [B,T]."""
    n = len(inv_freq)
    ang = positions[..., None] * inv_freq  # [B,T,n]
    cos, sin = np.cos(ang)[:, :, None] * scale, np.sin(ang)[:, :, None] * scale
    a, b = x[..., :n], x[..., n : 2 * n]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _phi_np(x, d):
    """The Taylor map of DESIGN §3: [1, x/d^¼, vec(x xᵀ)/(√2·√d)]."""
    outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (-1,))
    return np.concatenate([np.ones(x.shape[:-1] + (1,)), x / d**0.25, outer / (math.sqrt(2) * math.sqrt(d))], -1)


def _kernel(lin):
    return _np(lin.kernel[...])


def _make(cls, *args, seed: int = 100, **kwargs):
    """cls(*args, **kwargs) built abstractly (no initializer runs) with parameters from `_randomize`."""
    return _randomize(nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs)), seed)


def _randomize(module, seed: int):
    """Give every parameter O(1)-scale values (kernels N(0, 1/fan_in), vectors N(0, 1)) so outputs are not tiny."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    new = [jnp.asarray(rng.normal(size=x.shape) / (math.sqrt(x.shape[0]) if x.ndim == 2 else 1.0), x.dtype)
           for x in leaves]
    nnx.update(module, jax.tree.unflatten(treedef, new))
    return module


def _call(layer, x, **ctx):
    """The parallel pass of the mixer protocol: y of ``layer(x, SequenceContext(**ctx))``."""
    y, cache = layer(x, SequenceContext(**ctx))
    assert cache is None
    return y


def _decode(layer, x, prompt, ctx=None, capacity=None):
    """Prefill x[:, :prompt] into an empty cache, then step through the rest with jitted calls (the mixer
    protocol both times); returns all outputs [B, T, d] and the last cache."""
    ctx = ctx or SequenceContext()
    b = x.shape[0]
    y, cache = nnx.jit(lambda m, a, c: m(a, ctx, c))(layer, x[:, :prompt], layer.init_cache(b, capacity))
    step = nnx.jit(lambda m, a, c, p: m(a, SequenceContext.for_step(p), c))
    ys = [y]
    for t in range(prompt, x.shape[1]):
        y_t, cache = step(layer, x[:, t : t + 1], cache, jnp.full((b,), t))
        assert y_t.shape == (b, 1, x.shape[2])
        ys.append(y_t)
    return jnp.concatenate(ys, 1), cache


def test_positions_per_row_and_per_document():
    from jrt_jax.nn.padding import document_positions, positions_from_mask

    mask = jnp.asarray([[False, False, True, True, True], [True, True, True, True, True]])
    np.testing.assert_array_equal(positions_from_mask(mask, 5), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(positions_from_mask(None, 3), [[0, 1, 2]])
    np.testing.assert_array_equal(document_positions(mask, None, 2, 5), positions_from_mask(mask, 5))
    seg = jnp.asarray([[0, 7, 7, 0, 7, 3, 3, 7], [1, 1, 2, 2, 2, 1, 0, 0]])
    np.testing.assert_array_equal(document_positions(None, seg, 2, 8),
                                  [[0, 0, 1, 0, 2, 0, 1, 0], [0, 1, 0, 1, 2, 0, 0, 0]])
    masked = jnp.asarray([[True] * 4 + [False] + [True] * 3, [True] * 8])
    np.testing.assert_array_equal(document_positions(masked, seg, 2, 8)[0], [0, 0, 1, 0, 0, 0, 1, 0])


# --- RMSNorm, MLPs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_rmsnorm_formula(eps):
    norm = _make(nn.RMSNorm, D, eps=eps)
    x = _x()
    ref = _np(x) / np.sqrt(np.mean(_np(x) ** 2, -1, keepdims=True) + eps) * _np(norm.scale[...])
    np.testing.assert_allclose(_np(norm(x)), ref, rtol=1e-5, atol=1e-6)


def test_rmsnorm_computes_in_fp32_and_returns_input_dtype():
    norm = _make(nn.RMSNorm, D)
    x = (_x() * 300).astype(jnp.bfloat16)  # x² would lose precision in bf16 arithmetic
    y = norm(x)
    assert y.dtype == jnp.bfloat16
    x32 = _np(x.astype(jnp.float32))
    ref = x32 / np.sqrt(np.mean(x32**2, -1, keepdims=True) + 1e-5) * _np(norm.scale[...])
    np.testing.assert_allclose(_np(y.astype(jnp.float32)), ref, rtol=1e-2)


def test_gated_mlp_split_order_y_then_gate():
    mlp = _make(nn.GatedMLP, D, 24)
    x = _np(_x())
    h = x @ _kernel(mlp.fc1)
    y, gate = h[..., :24], h[..., 24:]  # first half y, second half gate
    ref = (y * _silu(gate)) @ _kernel(mlp.fc2)
    np.testing.assert_allclose(_np(mlp(_x())), ref, rtol=1e-4, atol=1e-6)
    swapped = (gate * _silu(y)) @ _kernel(mlp.fc2)
    assert np.max(np.abs(swapped - ref)) > 1e-3  # the order matters: the test can tell them apart


def test_llama_mlp_formula():
    mlp = _make(nn.LlamaMLP, D, 24, use_bias=True)
    x = _np(_x())
    lin = lambda l, a: a @ _kernel(l) + _np(l.bias[...])
    ref = lin(mlp.down_proj, _silu(lin(mlp.gate_proj, x)) * lin(mlp.up_proj, x))
    np.testing.assert_allclose(_np(mlp(_x())), ref, rtol=1e-4, atol=1e-6)


# --- BaseConv ----------------------------------------------------------------------------------------------------


def _base_conv_np(conv: nn.BaseConv, x):
    u = x @ _kernel(conv.in_proj) + _np(conv.in_proj.bias[...])
    c = u.shape[-1] // 2
    u1, u2 = u[..., :c], u[..., c:]
    w = _np(conv.conv.kernel[...])  # [K, C]; w[K-1] multiplies the current token
    k = w.shape[0]
    out = np.zeros_like(u1)
    for t in range(u1.shape[1]):
        for i in range(k):
            src = t - (k - 1) + i
            if src >= 0:
                out[:, t] += w[i] * u1[:, src]
    return (_silu(out) * u2) @ _kernel(conv.out_proj) + _np(conv.out_proj.bias[...])


def test_base_conv_formula():
    conv = _make(nn.BaseConv, D, kernel_size=3, expand=4)
    assert conv.in_proj.kernel.shape == (D, 4 * D) and conv.conv.kernel.shape == (3, 2 * D)
    assert conv.out_proj.kernel.shape == (2 * D, D)
    np.testing.assert_allclose(_np(_call(conv, _x())), _base_conv_np(conv, _np(_x())), rtol=1e-4, atol=1e-5)


def test_causal_conv_matches_torch_conv1d_layout():
    """kernel[k, c] = torch weight[c, 0, k] with padding K-1 and truncation to T."""
    torch = pytest.importorskip("torch")
    u = np.random.default_rng(0).normal(size=(2, 9, 5)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(5, 1, 3)).astype(np.float32)
    ref = torch.nn.functional.conv1d(torch.tensor(u).transpose(1, 2), torch.tensor(w), padding=2, groups=5)
    ref = ref[..., :9].transpose(1, 2).numpy()
    out = causal_conv1d(jnp.asarray(u), jnp.asarray(w[:, 0, :].T))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_base_conv_left_padding_and_steps():
    conv = _make(nn.BaseConv, D)
    x = _x(5)
    full = _call(conv, x)
    # left padding with garbage: the real tokens' outputs do not change
    padded = jnp.concatenate([_x(9, (B, 4, D)) * 10, x], axis=1)
    mask = jnp.arange(T + 4)[None] >= 4
    np.testing.assert_allclose(_np(_call(conv, padded, mask=jnp.broadcast_to(mask, (B, T + 4)))[:, 4:]),
                               _np(full), atol=1e-5)
    # prefill 1 token (tail shorter than K-1), then step
    ys, cache = _decode(conv, x, 1)
    np.testing.assert_allclose(_np(ys), _np(full), atol=1e-5)
    assert cache.tail.shape == (B, 2, 2 * D)


# --- sliding window ---------------------------------------------------------------------------------------------


def _swa_np(layer: nn.SlidingWindowAttention, x, window):
    b, t, d = x.shape
    h, hd = layer.num_heads, layer.head_dim
    qkv = (x @ _kernel(layer.Wqkv)).reshape(b, t, 3, h, hd)  # rows q|k|v, each head-major
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    inv_freq = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    pos = np.broadcast_to(np.arange(t, dtype=np.float64), (b, t))
    q, k = _rope_np(q, pos, inv_freq), _rope_np(k, pos, inv_freq)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    i, j = np.arange(t)[:, None], np.arange(t)[None]
    s = np.where((j <= i) & (j >= i - window), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, t, d)
    return y @ _kernel(layer.out_proj)


def test_sliding_window_formula():
    layer = _make(nn.SlidingWindowAttention, D, 2, window=3)
    x = _x(6)
    out = _call(layer, x, positions=jnp.arange(T)[None])
    np.testing.assert_allclose(_np(out), _swa_np(layer, _np(x), 3), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prompt", [2, 7])  # shorter and longer than the window
def test_sliding_window_ring_buffer_decode(prompt):
    w, n = 4, 13
    layer = _make(nn.SlidingWindowAttention, D, 2, window=w)
    x = _x(7, (B, n, D))
    full = _swa_np(layer, _np(x), w)
    ys, cache = _decode(layer, x, prompt)
    assert cache.k.shape == (B, w, 2, D // 2) and cache.valid.shape == (B, w)  # the window, not the sequence
    np.testing.assert_allclose(_np(ys), full, rtol=1e-4, atol=2e-5)


# --- linear attention ---------------------------------------------------------------------------------------------


def _la_np(layer, x, enc=None):
    """Based / PLA by the formula of DESIGN §3 with the full (non-compact) feature map."""
    b, t, d = x.shape
    h, f = layer.num_heads, layer.feature_dim
    q = (x @ _kernel(layer.proj_q)).reshape(b, t, h, f)
    k = (x @ _kernel(layer.proj_k)).reshape(b, t, h, f)
    v = (x @ _kernel(layer.proj_v)).reshape(b, t, h, -1)
    pq, pk = _phi_np(q, f), _phi_np(k, f)
    a = np.einsum("bihp,bjhp->bhij", pq, pk) * np.tril(np.ones((t, t)))
    num = np.einsum("bhij,bjhd->bihd", a, v)
    den = a.sum(-1).transpose(0, 2, 1)  # [b, t, h]
    if enc is not None:
        xe = x[:, :enc]
        ke = _phi_np((xe @ _kernel(layer.proj_k_enc)).reshape(b, enc, h, f), f)
        ve = (xe @ _kernel(layer.proj_v_enc)).reshape(b, enc, h, -1)
        ae = np.einsum("bihp,bjhp->bhij", pq, ke)
        num = num + np.einsum("bhij,bjhd->bihd", ae, ve)
        den = den + ae.sum(-1).transpose(0, 2, 1)
    y = (num / (den[..., None] + 1e-12)).reshape(b, t, d)
    return y @ _kernel(layer.out_proj)


def test_causal_linear_attention_formula():
    layer = _make(nn.CausalLinearAttention, D, 2, feature_dim=4)
    x = _x(9)
    np.testing.assert_allclose(_np(_call(layer, x)), _la_np(layer, _np(x)), rtol=1e-4, atol=1e-5)


def test_prefix_linear_attention_formula():
    layer = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4)
    x = _x(11)
    np.testing.assert_allclose(_np(_call(layer, x, enc_len=5)), _la_np(layer, _np(x), enc=5), rtol=1e-4, atol=1e-5)
    # the encoder terms matter: a different M changes the output
    assert np.max(np.abs(_np(_call(layer, x, enc_len=2)) - _la_np(layer, _np(x), enc=5))) > 1e-4


def test_prefix_linear_attention_padding_and_per_row_encoder():
    layer = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4)
    x = _x(13, (1, 9, D))
    other = _x(15, (1, 12, D))
    # row 0: x left-padded by 3 (garbage at the pads); row 1: unpadded
    batch = jnp.concatenate([jnp.concatenate([_x(14, (1, 3, D)) * 7, x], axis=1), other], axis=0)
    mask = jnp.stack([jnp.arange(12) >= 3, jnp.ones(12, bool)])
    # the encoder of each row is its first 5 real tokens, as if it were alone
    out = _call(layer, batch, enc_len=5, mask=mask)
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(out[0, 3:]), _la_np(layer, _np(x), enc=5)[0], **tol)
    np.testing.assert_allclose(_np(out[1]), _la_np(layer, _np(other), enc=5)[0], **tol)
    np.testing.assert_array_equal(_np(out[0, :3]), 0.0 * _np(out[0, :3]))  # pads give exactly 0 before out_proj
    # per-row encoder lengths: row 0 uses 2, row 1 uses 7 (both below the cap enc_len = 8)
    per_row = _call(layer, batch, enc_len=8, mask=mask, enc_lens=jnp.asarray([2, 7]))
    np.testing.assert_allclose(_np(per_row[0, 3:]), _la_np(layer, _np(x), enc=2)[0], **tol)
    np.testing.assert_allclose(_np(per_row[1]), _la_np(layer, _np(other), enc=7)[0], **tol)


def test_pla_decode_uses_causal_projections_only():
    layer = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4)
    x = _x(17, (B, 10, D))
    full = _la_np(layer, _np(x), enc=4)  # encoder = the first 4 tokens (the prompt's)
    ys, state = _decode(layer, x, 4, SequenceContext(enc_len=4))
    np.testing.assert_allclose(_np(ys), full, rtol=1e-4, atol=1e-5)
    assert state.kv.shape == (B, 2, 1 + 4 + 10, D // 2) and state.kv.dtype == jnp.float32


def test_pla_constructor_enc_len_is_causal_past_the_encoder():
    """Called alone (no context), a layer built with enc_len=M matches the formula with encoder M, and is causal
    past the encoder: perturbing token j ≥ M leaves every position < j unchanged, while perturbing an encoder
    token (< M) changes positions before it too (every token reads the whole encoder)."""
    m, t = 4, 11
    layer = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4, enc_len=m)
    x = _x(30, (1, t, D))
    base = _np(layer(x)[0])
    np.testing.assert_allclose(base, _la_np(layer, _np(x), enc=m), rtol=1e-4, atol=1e-5)
    bump = _x(31, (D,)) * 3.0
    for j in range(t):
        out = _np(layer(x.at[0, j].add(bump))[0])
        changed = np.max(np.abs(out - base), axis=(0, 2))  # [t]
        if j >= m:
            np.testing.assert_array_equal(out[0, :j], base[0, :j], err_msg=f"perturbing token {j} leaked back")
            assert changed[j] > 1e-4
        else:
            assert np.all(changed > 1e-4), (j, changed)  # an encoder token reaches every position, even 0
    # a constructor enc_len longer than the sequence covers the whole (shorter) sequence
    long = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4, enc_len=100)
    np.testing.assert_allclose(_np(long(x[:, :6])[0]), _la_np(long, _np(x[:, :6]), enc=6), rtol=1e-4, atol=1e-5)


def test_pla_without_enc_len_refuses_to_run():
    """No context encoder length and no constructor enc_len: a one-line ValueError naming enc_len (not the
    silent "whole sequence is the encoder" of before); decoding steps need no encoder length."""
    layer = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4)
    for call in (lambda: layer(_x(32)), lambda: layer(_x(32), SequenceContext()),
                 lambda: layer(_x(32), SequenceContext(mask=jnp.ones((B, T), bool)), layer.init_cache(B))):
        with pytest.raises(ValueError, match="enc_len") as e:
            call()
        assert "\n" not in str(e.value) and "SequenceContext(enc_len=" in str(e.value)
    # per-row enc_lens alone are an encoder length given by the context (capped at T)
    per_row = _call(layer, _x(32), enc_lens=jnp.asarray([3, 6]))
    np.testing.assert_allclose(_np(per_row[0]), _la_np(layer, _np(_x(32)[:1]), enc=3)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(per_row[1]), _la_np(layer, _np(_x(32)[1:]), enc=6)[0], rtol=1e-4, atol=1e-5)
    # a decoding step after a prefill with an explicit context runs without any enc_len
    ys, _ = _decode(layer, _x(33, (B, 7, D)), 3, SequenceContext(enc_len=3))
    np.testing.assert_allclose(_np(ys), _la_np(layer, _np(_x(33, (B, 7, D))), enc=3), rtol=1e-4, atol=1e-5)


def test_pla_context_enc_len_overrides_constructor():
    """ctx.enc_len (or ctx.enc_lens) wins over the constructor's enc_len: the output equals that of a layer
    built with the context's value."""
    x = _x(34)
    built7 = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4, enc_len=7)
    built3 = _make(nn.PrefixLinearAttention, D, 2, feature_dim=4, enc_len=3)  # same parameters (same seed)
    np.testing.assert_array_equal(_np(_call(built7, x, enc_len=3)), _np(built3(x)[0]))
    np.testing.assert_array_equal(_np(_call(built3, x, enc_len=7)), _np(built7(x)[0]))
    assert np.max(np.abs(_np(built7(x)[0]) - _np(built3(x)[0]))) > 1e-4  # the two lengths do differ
    # per-row lengths from the context: not capped by the constructor's 3
    per_row = _call(built3, x, enc_lens=jnp.asarray([7, 7]))
    np.testing.assert_allclose(_np(per_row), _np(built7(x)[0]), rtol=1e-5, atol=1e-6)
    # the context is still checked against the sequence length
    with pytest.raises(ValueError, match="enc_len"):
        _call(built3, x, enc_len=T + 1)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-2, ValueError), (2.0, TypeError), ("4", TypeError),
                                     (True, TypeError), (np.float32(3), TypeError)])
def test_pla_constructor_rejects_bad_enc_len(bad, err):
    with pytest.raises(err, match="enc_len") as e:
        nnx.eval_shape(lambda: nn.PrefixLinearAttention(D, 2, enc_len=bad, rngs=nnx.Rngs(0)))
    assert repr(bad) in str(e.value) and "\n" not in str(e.value)
    assert nnx.eval_shape(lambda: nn.PrefixLinearAttention(D, 2, enc_len=np.int64(5), rngs=nnx.Rngs(0))).enc_len == 5


# --- Llama attention -----------------------------------------------------------------------------------------------


def test_attention_gqa_rope_formula():
    layer = _make(nn.Attention, D, 4, 2, 8, rope_theta=500.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
                                    use_bias=True)
    x = _x(20)
    pos = np.broadcast_to(np.arange(T), (B, T))
    out = _call(layer, x, positions=jnp.asarray(pos))
    xn = _np(x)
    lin = lambda l: xn @ _kernel(l) + _np(l.bias[...])
    q, k, v = lin(layer.q_proj).reshape(B, T, 4, 8), lin(layer.k_proj).reshape(B, T, 2, 8), lin(
        layer.v_proj).reshape(B, T, 2, 8)
    inv_freq = 500.0 ** (-np.arange(0, 8, 2) / 8) / 4.0  # PI: inv_freq / factor
    q, k = _rope_np(q, pos, inv_freq), _rope_np(k, pos, inv_freq)
    k, v = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)  # query head i uses kv head i // 2
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8) + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, T, 32)
    ref = y @ _kernel(layer.o_proj) + _np(layer.o_proj.bias[...])
    np.testing.assert_allclose(_np(out), ref, rtol=1e-4, atol=1e-5)


SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [2.0, 3.0, 4.0, 6.0],
                 "original_max_position_embeddings": 8},
}


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_attention_kv_cache_decode_every_scaling(kind):
    n, prompt, cache_len = 14, 5, 14
    layer = _make(nn.Attention, D, 4, 2, 8, rope_scaling=SCALINGS[kind], max_position_embeddings=8)
    x = _x(22, (B, n, D))
    pos = jnp.arange(n)[None]
    # "dynamic" / "longrope" frequencies depend on the length: with a cache they are computed for its
    # capacity, in the one-pass reference as in decoding
    full = nnx.jit(lambda m, a, c: m(a, SequenceContext(positions=pos), c)[0])(layer, x, layer.init_cache(B, cache_len))
    ys, cache = _decode(layer, x, prompt, SequenceContext(positions=pos[:, :prompt]), capacity=cache_len)
    np.testing.assert_allclose(_np(ys), _np(full), rtol=1e-4, atol=2e-5)
    assert cache.k.shape == (B, cache_len, 2, 8)
