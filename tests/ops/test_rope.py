"""RoPE frequencies (all scaling types) and rotation, checked against Hugging Face transformers and by properties."""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jrt_jax.ops.rope import ROPE_TYPES, apply_rope, rope_frequencies

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_apply_llama  # noqa: E402
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as hf_apply_partial  # noqa: E402

NUM_HEADS = 4


def _hf_config(head_dim, base, scaling, max_position_embeddings, partial_rotary_factor):
    params = copy.deepcopy(dict(scaling or {"rope_type": "default"}))
    params["rope_theta"] = base
    if partial_rotary_factor != 1.0:
        params["partial_rotary_factor"] = partial_rotary_factor
    return transformers.LlamaConfig(
        hidden_size=head_dim * NUM_HEADS,
        num_attention_heads=NUM_HEADS,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=params,
    )


def _hf_frequencies(head_dim, base, scaling, seq_len, max_position_embeddings, partial_rotary_factor):
    config = _hf_config(head_dim, base, scaling, max_position_embeddings, partial_rotary_factor)
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        if partial_rotary_factor != 1.0:
            # Llama's default init ignores partial_rotary_factor; "linear" at factor 1 is plain partial RoPE.
            config = _hf_config(
                head_dim, base, {"rope_type": "linear", "factor": 1.0}, max_position_embeddings, partial_rotary_factor
            )
            return ROPE_INIT_FUNCTIONS["linear"](config, device="cpu", seq_len=seq_len)
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, device="cpu", seq_len=seq_len)


def _ours(head_dim, base, scaling, seq_len, max_position_embeddings, partial_rotary_factor):
    return rope_frequencies(
        head_dim,
        base=base,
        scaling=copy.deepcopy(scaling),
        seq_len=seq_len,
        max_position_embeddings=max_position_embeddings,
        partial_rotary_factor=partial_rotary_factor,
    )


def _assert_matches_hf(head_dim, base, scaling, seq_len=None, max_pos=4096, partial=1.0):
    inv_freq, scale = _ours(head_dim, base, scaling, seq_len, max_pos, partial)
    ref_inv_freq, ref_scale = _hf_frequencies(head_dim, base, scaling, seq_len, max_pos, partial)
    ref_inv_freq = ref_inv_freq.numpy()
    assert inv_freq.dtype == jnp.float32
    assert inv_freq.shape == ref_inv_freq.shape == (int(head_dim * partial) // 2,)
    # transformers evaluates base ** (2i/d) in float32: its own error grows with ln(base), up to ~1e-6 relative
    # for bases near 1e7; 2e-6 leaves room for that and nothing more.
    np.testing.assert_allclose(np.asarray(inv_freq), ref_inv_freq, rtol=2e-6, atol=0)
    assert isinstance(scale, float)
    assert scale == ref_scale


def _longrope_lists(n, seed):
    rng = np.random.default_rng(seed)
    return [float(v) for v in 1.0 + rng.random(n)], [float(v) for v in 1.0 + 40.0 * rng.random(n)]


_SHORT16, _LONG16 = _longrope_lists(16, 0)
_SHORT8, _LONG8 = _longrope_lists(8, 1)
_LLAMA31 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# (head_dim, base, scaling, seq_len, max_position_embeddings, partial_rotary_factor)
HF_CASES = [
    (64, 10000.0, None, None, 2048, 1.0),
    (128, 500000.0, {"rope_type": "default"}, None, 8192, 1.0),
    (64, 10000.0, None, None, 2048, 0.5),
    (64, 10000.0, {"rope_type": "linear", "factor": 1.0}, None, 2048, 1.0),
    (64, 10000.0, {"rope_type": "linear", "factor": 2.0}, None, 2048, 1.0),
    (128, 10000.0, {"rope_type": "linear", "factor": 8.0}, None, 4096, 1.0),
    (32, 1e6, {"rope_type": "linear", "factor": 4.5}, None, 4096, 0.5),
    (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, None, 2048, 1.0),
    (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 1000, 2048, 1.0),
    (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 2048, 2048, 1.0),
    (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 5000, 2048, 1.0),
    (128, 500000.0, {"rope_type": "dynamic", "factor": 4.0}, 40000, 8192, 1.0),
    (64, 10000.0, {"rope_type": "dynamic", "factor": 3.0}, 9000, 2048, 0.25),
    (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, None, 8192, 1.0),
    (128, 1e6, {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096}, None, 65536, 1.0),
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "beta_fast": 16, "beta_slow": 2},
        None,
        32768,
        1.0,
    ),
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 0.707,
         "mscale_all_dim": 0.707},
        None,
        163840,
        1.0,
    ),
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
         "mscale_all_dim": 0.8},
        None,
        163840,
        1.0,
    ),
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "mscale": 1.0},
        None,
        16384,
        1.0,
    ),
    # mscale / mscale_all_dim only count when both are non-zero (DeepSeek configs); else 0.1 ln(factor) + 1.
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "mscale": 0.707,
         "mscale_all_dim": 0},
        None,
        16384,
        1.0,
    ),
    # truncate=None behaves as False in transformers (`.get("truncate", True)` then a truthiness test).
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "truncate": None},
        None,
        16384,
        1.0,
    ),
    (
        64,
        150000.0,
        {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
         "beta_slow": 1.0, "truncate": False},
        None,
        131072,
        1.0,
    ),
    (
        64,
        10000.0,
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "attention_factor": 1.25},
        None,
        8192,
        1.0,
    ),
    (64, 10000.0, {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048}, None, 4096, 0.5),
    # `original_max_position_embeddings` left out: transformers uses max_position_embeddings instead.
    (64, 10000.0, {"rope_type": "yarn", "factor": 2.0}, None, 4096, 1.0),
    (128, 500000.0, _LLAMA31, None, 131072, 1.0),
    # Large base: transformers' float32 exponent 2i/d is off by up to ~1e-6 relative here unless matched.
    (
        96,
        8081350.0,
        {"rope_type": "llama3", "factor": 14.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 4096},
        1,
        8192,
        1.0,
    ),
    (
        64,
        10000.0,
        {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
         "original_max_position_embeddings": 2048},
        None,
        8192,
        1.0,
    ),
    (
        64,
        500000.0,
        {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192},
        None,
        131072,
        0.5,
    ),
    *[
        (32, 10000.0, {"rope_type": "longrope", "short_factor": _SHORT16, "long_factor": _LONG16,
                       "original_max_position_embeddings": 4096, **extra}, seq_len, 131072, 1.0)
        for seq_len in (None, 100, 4096, 4097, 100000)
        for extra in ({}, {"factor": 32.0}, {"factor": 8.0, "attention_factor": 1.1})
    ],
    (
        32,
        10000.0,
        {"rope_type": "longrope", "short_factor": _SHORT8, "long_factor": _LONG8,
         "original_max_position_embeddings": 2048},
        5000,
        65536,
        0.5,
    ),
]


@pytest.mark.parametrize("head_dim,base,scaling,seq_len,max_pos,partial", HF_CASES)
def test_frequencies_match_transformers(head_dim, base, scaling, seq_len, max_pos, partial):
    _assert_matches_hf(head_dim, base, scaling, seq_len, max_pos, partial)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    head_dim=st.sampled_from([4, 8, 16, 32, 64, 80, 96, 128, 256]),
    base=st.floats(min_value=10.0, max_value=1e7),
    factor=st.floats(min_value=1.0, max_value=64.0),
    rope_type=st.sampled_from(["linear", "dynamic", "yarn", "llama3"]),
    seq_len=st.integers(min_value=1, max_value=200000),
)
def test_frequencies_match_transformers_property(head_dim, base, factor, rope_type, seq_len):
    scaling = {"rope_type": rope_type, "factor": factor}
    if rope_type in ("yarn", "llama3"):
        scaling["original_max_position_embeddings"] = 4096
    if rope_type == "llama3":
        scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)
    if rope_type == "dynamic" and head_dim == 4:
        head_dim = 8  # rot_dim 2 divides by zero in the dynamic formula
    _assert_matches_hf(head_dim, base, scaling, seq_len=seq_len, max_pos=8192)


def test_rope_types_and_defaults():
    assert ROPE_TYPES == ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
    inv_freq, scale = rope_frequencies(8)
    np.testing.assert_allclose(inv_freq, [1.0, 0.1, 0.01, 0.001], rtol=1e-7)
    assert scale == 1.0
    # Plain RoPE, "default" and an empty dict all agree; dynamic below its trained length is plain RoPE.
    for scaling in ({"rope_type": "default"}, {}, {"type": "default"}):
        np.testing.assert_array_equal(rope_frequencies(8, scaling=scaling)[0], inv_freq)
    dynamic = {"rope_type": "dynamic", "factor": 4.0}
    dyn, _ = rope_frequencies(8, scaling=dynamic, seq_len=10, max_position_embeddings=64)
    np.testing.assert_array_equal(dyn, inv_freq)


def test_legacy_type_key_and_dict_settings():
    dynamic = {"rope_type": "dynamic", "factor": 2.0}
    legacy = rope_frequencies(64, scaling={"type": "linear", "factor": 4.0})
    modern = rope_frequencies(64, scaling={"rope_type": "linear", "factor": 4.0})
    np.testing.assert_array_equal(legacy[0], modern[0])
    # transformers 5 `rope_parameters` carry rope_theta / partial_rotary_factor; unknown keys are ignored.
    inside = rope_frequencies(
        64, scaling={"rope_type": "default", "rope_theta": 5e5, "partial_rotary_factor": 0.5, "whatever": 1}
    )
    outside = rope_frequencies(64, base=5e5, partial_rotary_factor=0.5)
    np.testing.assert_array_equal(inside[0], outside[0])
    with pytest.raises(ValueError, match="rope_theta"):
        rope_frequencies(64, base=1e6, scaling={"rope_type": "default", "rope_theta": 5e5})
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rope_frequencies(64, scaling={**dynamic, "max_position_embeddings": 10}, max_position_embeddings=20)
    a = rope_frequencies(64, scaling={**dynamic, "max_position_embeddings": 128}, seq_len=512)
    b = rope_frequencies(64, scaling={"rope_type": "dynamic", "factor": 2.0}, seq_len=512, max_position_embeddings=128)
    np.testing.assert_array_equal(a[0], b[0])


def test_linear_is_position_interpolation():
    """PI: linear scaling by s is plain RoPE evaluated at positions m / s (arXiv 2306.15595)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 64, 3, 64)), jnp.float32)
    positions = jnp.arange(64) + jnp.array([[0], [100]])
    plain, _ = rope_frequencies(64, base=10000.0)
    for s in (2.0, 4.0, 8.0, 3.5):
        scaled, scale = rope_frequencies(64, base=10000.0, scaling={"rope_type": "linear", "factor": s})
        assert scale == 1.0
        np.testing.assert_allclose(np.asarray(scaled), np.asarray(plain) / s, rtol=2e-7)
        via_freq = apply_rope(x, positions, scaled)
        via_positions = apply_rope(x, positions.astype(jnp.float32) / s, plain)
        np.testing.assert_allclose(np.asarray(via_freq), np.asarray(via_positions), rtol=0, atol=5e-5)


def _hf_rotary(config, seq_positions):
    """Hugging Face cos/sin (attention scale included) for `position_ids` [batch, seq]."""
    rotary = LlamaRotaryEmbedding(config)
    dummy = torch.zeros(1, dtype=torch.float32)
    return rotary(dummy, torch.as_tensor(np.asarray(seq_positions), dtype=torch.long))


@pytest.mark.parametrize(
    "head_dim,base,scaling,max_pos",
    [
        (64, 10000.0, None, 2048),
        (32, 10000.0, {"rope_type": "linear", "factor": 4.0}, 2048),
        (64, 500000.0, _LLAMA31, 131072),
        (64, 10000.0, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256}, 2048),
        (64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 256),
        (32, 10000.0, {"rope_type": "longrope", "short_factor": _SHORT16, "long_factor": _LONG16,
                       "original_max_position_embeddings": 256}, 4096),
    ],
)
def test_apply_rope_matches_transformers(head_dim, base, scaling, max_pos):
    rng = np.random.default_rng(1)
    batch, seq = 2, 48
    q = rng.standard_normal((batch, seq, NUM_HEADS, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, seq, 2, head_dim)).astype(np.float32)
    # Batch 0 short, batch 1 beyond 256 so that dynamic/longrope pick their long-context frequencies.
    positions = np.stack([np.arange(seq), 400 + np.sort(rng.choice(300, seq, replace=False))])
    config = _hf_config(head_dim, base, scaling, max_pos, 1.0)
    cos, sin = _hf_rotary(config, positions)
    q_ref, k_ref = hf_apply_llama(torch.from_numpy(q), torch.from_numpy(k), cos, sin, unsqueeze_dim=2)

    inv_freq, scale = rope_frequencies(
        head_dim, base=base, scaling=scaling, seq_len=int(positions.max()) + 1, max_position_embeddings=max_pos
    )
    np.testing.assert_allclose(np.asarray(apply_rope(q, positions, inv_freq, scale)), q_ref.numpy(), atol=2e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(apply_rope(k, positions, inv_freq, scale)), k_ref.numpy(), atol=2e-4, rtol=0)


def test_apply_rope_partial_matches_transformers():
    rng = np.random.default_rng(2)
    head_dim, partial = 64, 0.5
    q = rng.standard_normal((2, 16, 3, head_dim)).astype(np.float32)
    positions = np.tile(np.arange(16), (2, 1)) + np.array([[0], [7]])
    inv_freq, scale = rope_frequencies(head_dim, partial_rotary_factor=partial)
    assert inv_freq.shape == (16,)
    angles = torch.from_numpy(positions).float()[..., None] * torch.from_numpy(np.array(inv_freq))
    emb = torch.cat([angles, angles], dim=-1)
    q_ref, _ = hf_apply_partial(torch.from_numpy(q), torch.from_numpy(q), emb.cos(), emb.sin(), unsqueeze_dim=2)
    out = apply_rope(q, positions, inv_freq, scale)
    np.testing.assert_allclose(np.asarray(out), q_ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(out)[..., 32:], q[..., 32:])  # pass-through channels untouched


@settings(max_examples=25, deadline=None)
@given(
    half=st.sampled_from([1, 2, 3, 8, 32, 64]),
    base=st.floats(min_value=10.0, max_value=1e6),
    factor=st.floats(min_value=1.0, max_value=32.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_rotation_preserves_pair_norms(half, base, factor, seed):
    head_dim = 2 * half
    inv_freq, _ = rope_frequencies(head_dim, base=base, scaling={"rope_type": "linear", "factor": factor})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 8, 2, head_dim)).astype(np.float32)
    positions = rng.integers(0, 100000, size=(8,))
    out = np.asarray(apply_rope(x, positions, inv_freq))
    pair_norm = lambda a: np.hypot(a[..., :half], a[..., half:])  # noqa: E731
    np.testing.assert_allclose(pair_norm(out), pair_norm(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, _LLAMA31])
def test_scores_depend_only_on_relative_position(scaling):
    head_dim = 64
    inv_freq, scale = rope_frequencies(head_dim, base=500000.0, scaling=scaling)
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)

    def score(m, n):
        qm = apply_rope(q, jnp.array([m]), inv_freq, scale)
        kn = apply_rope(k, jnp.array([n]), inv_freq, scale)
        return float(jnp.sum(qm * kn))

    for offset in (0, 3, 17):
        reference = score(5 + offset, 5)
        for shift in (1, 40, 300):
            assert score(5 + offset + shift, 5 + shift) == pytest.approx(reference, abs=2e-3)
    assert score(20, 5) != pytest.approx(score(5, 5), abs=1e-2)  # and it does depend on it


def test_dtypes_positions_and_jit():
    rng = np.random.default_rng(4)
    x32 = jnp.asarray(rng.standard_normal((2, 8, 2, 16)), jnp.float32)
    inv_freq, _ = rope_frequencies(16)
    ref = apply_rope(x32, jnp.arange(8), inv_freq)

    out = apply_rope(x32.astype(jnp.bfloat16), jnp.arange(8), inv_freq)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)
    assert apply_rope(x32.astype(jnp.float16), jnp.arange(8), inv_freq).dtype == jnp.float16

    # [seq], [1, seq], [batch, seq] and float positions give the same answer; jit compiles it.
    for positions in (jnp.arange(8)[None], jnp.tile(jnp.arange(8), (2, 1)), jnp.arange(8, dtype=jnp.float32),
                      np.arange(8, dtype=np.int16)):
        np.testing.assert_array_equal(apply_rope(x32, positions, inv_freq), ref)
    jitted = jax.jit(apply_rope)(x32, jnp.arange(8), inv_freq, 1.0)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(ref), atol=1e-6)
    # attention_scale multiplies cos and sin, i.e. the output.
    np.testing.assert_allclose(np.asarray(apply_rope(x32, jnp.arange(8), inv_freq, 1.5)), 1.5 * np.asarray(ref),
                               rtol=1e-6, atol=1e-6)
    # Position 0 is the identity.
    np.testing.assert_allclose(np.asarray(apply_rope(x32, jnp.zeros(8, jnp.int32), inv_freq)), np.asarray(x32))


def test_attention_scales():
    yarn = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096}
    assert rope_frequencies(64, scaling=yarn)[1] == pytest.approx(0.1 * math.log(16.0) + 1.0)
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [2.0] * 32,
                "original_max_position_embeddings": 4096, "factor": 32.0}
    assert rope_frequencies(64, scaling=longrope)[1] == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    short, _ = rope_frequencies(64, scaling=longrope, seq_len=4096)
    long, _ = rope_frequencies(64, scaling=longrope, seq_len=4097)
    np.testing.assert_allclose(np.asarray(short) / np.asarray(long), 2.0, rtol=1e-6)


_LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
             "original_max_position_embeddings": 64, "factor": 2.0}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head_dim=64, scaling={"rope_type": "ntk-by-parts", "factor": 2.0}), "rope_type"),
        (dict(head_dim=64, scaling={"rope_type": "proportional"}), "rope_type"),
        (dict(head_dim=64, scaling={"rope_type": 3}), "rope_type"),
        (dict(head_dim=64, scaling={"rope_type": "linear"}), "factor"),
        (dict(head_dim=64, scaling={"rope_type": "linear", "factor": 0.5}), "factor"),
        (dict(head_dim=64, scaling={"rope_type": "linear", "factor": "2"}), "factor"),
        (dict(head_dim=64, scaling={"rope_type": "dynamic", "factor": 2.0}), "max_position_embeddings"),
        (dict(head_dim=64, scaling={"rope_type": "dynamic", "factor": 0.5}, max_position_embeddings=8), "factor"),
        (dict(head_dim=2, scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=8), "rot_dim"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0}), "original_max_position_embeddings"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "original_max_position_embeddings": 64}), "factor"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 0}),
         "original_max_position_embeddings"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                                    "beta_fast": -1.0}), "beta_fast"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                                    "beta_fast": 1.0, "beta_slow": 2.0}), "beta_fast"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                                    "attention_factor": 0.0}), "attention_factor"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                                    "mscale": -1.0, "mscale_all_dim": 1.0}), "mscale"),
        (dict(head_dim=64, scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                                    "truncate": "yes"}), "truncate"),
        (dict(head_dim=64, scaling={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64}), "low_freq_factor"),
        (dict(head_dim=64, scaling={**_LLAMA31, "low_freq_factor": 0.0}), "low_freq_factor"),
        (dict(head_dim=64, scaling={**_LLAMA31, "low_freq_factor": 4.0}), "high_freq_factor"),
        (dict(head_dim=16, scaling={**_LONGROPE, "short_factor": [1.0] * 7}), "short_factor"),
        (dict(head_dim=16, scaling={**_LONGROPE, "long_factor": [1.0] * 9}), "long_factor"),
        (dict(head_dim=16, scaling={k: v for k, v in _LONGROPE.items() if k != "long_factor"}), "long_factor"),
        (dict(head_dim=16, scaling={**_LONGROPE, "long_factor": [1.0] * 7 + [0.0]}), "long_factor"),
        (dict(head_dim=16, scaling={**_LONGROPE, "factor": 0.5}), "factor"),
        (dict(head_dim=16, scaling={**_LONGROPE, "short_factor": "1111"}), "short_factor"),
        (dict(head_dim=63), "head_dim"),
        (dict(head_dim=0), "head_dim"),
        (dict(head_dim=-4), "head_dim"),
        (dict(head_dim=8.0), "head_dim"),
        (dict(head_dim=64, base=0.0), "base"),
        (dict(head_dim=64, base=-10000.0), "base"),
        (dict(head_dim=64, seq_len=0), "seq_len"),
        (dict(head_dim=64, max_position_embeddings=-1), "max_position_embeddings"),
        (dict(head_dim=64, partial_rotary_factor=0.0), "partial_rotary_factor"),
        (dict(head_dim=64, partial_rotary_factor=1.5), "partial_rotary_factor"),
        (dict(head_dim=12, partial_rotary_factor=0.25), "partial_rotary_factor"),  # rot_dim 3 is odd
        (dict(head_dim=64, scaling=[("rope_type", "linear")]), "scaling"),
        (dict(head_dim=64, scaling="linear"), "scaling"),
    ],
)
def test_rope_frequencies_validation(kwargs, match):
    kwargs = dict(kwargs)
    head_dim = kwargs.pop("head_dim")
    with pytest.raises(ValueError, match=match):
        rope_frequencies(head_dim, **kwargs)


def test_apply_rope_validation():
    inv_freq, _ = rope_frequencies(16)
    x = jnp.zeros((2, 8, 2, 16), jnp.float32)
    with pytest.raises(ValueError, match="x must have rank 4"):
        apply_rope(jnp.zeros((8, 2, 16)), jnp.arange(8), inv_freq)
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        apply_rope(jnp.zeros((2, 8, 2, 16), jnp.int32), jnp.arange(8), inv_freq)
    with pytest.raises(ValueError, match="positions must have rank"):
        apply_rope(x, jnp.zeros((2, 8, 1), jnp.int32), inv_freq)
    with pytest.raises(ValueError, match="positions shape"):
        apply_rope(x, jnp.arange(7), inv_freq)
    with pytest.raises(ValueError, match="positions shape"):
        apply_rope(x, jnp.zeros((3, 8), jnp.int32), inv_freq)
    with pytest.raises(TypeError, match="positions"):
        apply_rope(x, jnp.zeros(8, bool), inv_freq)
    with pytest.raises(ValueError, match="inv_freq must have rank 1"):
        apply_rope(x, jnp.arange(8), inv_freq[None])
    with pytest.raises(ValueError, match="inv_freq has 9 frequencies"):
        apply_rope(x, jnp.arange(8), jnp.ones(9))
    with pytest.raises(ValueError, match="inv_freq has 0 frequencies"):
        apply_rope(x, jnp.arange(8), jnp.ones(0))
