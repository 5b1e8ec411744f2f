"""Model configs, presets, parameter counts, logical axes, bad input, padding invariance, Llama vs transformers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jrt_jax.models import (
    JRT_PRESETS,
    LLAMA_PRESETS,
    JRTConfig,
    JRTLM,
    LlamaConfig,
    LlamaLM,
    abstract_model,
    config_from_preset,
    count_params,
    param_shapes,
    param_table,
)
from jrt_jax.nn.axes import LOGICAL_AXES
from tests import model_helpers as mh

# --- presets and parameter counts (abstract: nothing allocated) ----------------------------------------------------


@pytest.mark.parametrize(
    "name, expected, tol",
    [
        ("jrt-360m", 356.6e6, 0.1e6),
        ("jrt-1.3b", 1.375e9, 0.5e6),
        # Based: the same minus PLA's encoder projections (proj_k_enc d→H·F and proj_v_enc d→d per PLA layer)
        ("based-360m", 356.578304e6 - 5 * (1024 * 256 + 1024 * 1024), 1),
        ("based-1.3b", 1375.143168e6 - 7 * (1792 * 256 + 1792 * 1792), 1),
    ],
)
def test_release_parameter_counts(name, expected, tol):
    n = count_params(JRTConfig.preset(name))
    print(f"\n{name}: {n:,} parameters")
    assert abs(n - expected) <= tol, (name, n)


def test_release_shapes_and_eval_shape_does_not_allocate():
    model = nnx.eval_shape(lambda: JRTLM(JRTConfig.preset("jrt-360m"), rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    shapes = param_shapes(model)
    assert shapes["embed.embedding"][0] == (50264, 1024)
    assert shapes["layers.1.mixer.proj_k_enc.kernel"][0] == (1024, 256)  # PLA at 1
    assert shapes["layers.2.mixer.Wqkv.kernel"][0] == (1024, 3072)  # sliding window at 2
    assert shapes["layers.0.mixer.in_proj.kernel"][0] == (1024, 4096)  # BaseConv elsewhere
    assert shapes["layers.0.mixer.conv.kernel"][0] == (3, 2048)
    assert shapes["layers.0.mlp.fc1.kernel"][0] == (1024, 4096) and shapes["layers.0.mlp.fc2.kernel"][0] == (2048, 1024)
    cfg = JRTConfig.preset("jrt-1.3b")
    assert (cfg.mixers[27], cfg.mixers[28], cfg.mixers[33]) == ("prefix_linear", "sliding_window", "prefix_linear")
    assert JRTConfig.preset("based-360m").mixers[1] == "causal_linear"
    table = param_table(JRTConfig.preset("jrt-360m"), name="jrt-360m")
    assert "356,578,304" in table and "prefix_linear" in table


def test_llama_preset_overrides_rederive_head_dim():
    cfg = LlamaConfig.preset("llama-jrt-tiny", num_attention_heads=8)
    assert (cfg.head_dim, cfg.num_key_value_heads) == (16, 8)


def test_smollm2_shape():
    cfg = LlamaConfig.preset("smollm2-135m")
    n = count_params(cfg)
    assert 134e6 < n < 135e6, n  # SmolLM2-135M: 134.5 M with tied embeddings
    shapes = param_shapes(cfg)
    assert shapes["layers.0.self_attn.k_proj.kernel"][0] == (576, 3 * 64)
    assert "lm_head.kernel" not in shapes  # tied


EXPECTED_AXES = {
    "embed.embedding": ("vocab", "embed"),
    "layers.0.norm1.scale": ("embed",),
    "layers.0.mixer.in_proj.kernel": ("embed", "conv"),
    "layers.0.mixer.in_proj.bias": ("conv",),
    "layers.0.mixer.conv.kernel": ("conv_width", "conv"),
    "layers.0.mixer.out_proj.kernel": ("conv", "embed"),
    "layers.0.mixer.out_proj.bias": ("embed",),
    "layers.1.mixer.proj_q.kernel": ("embed", "feature"),
    "layers.1.mixer.proj_k_enc.kernel": ("embed", "feature"),
    "layers.1.mixer.proj_v_enc.kernel": ("embed", "heads"),
    "layers.1.mixer.out_proj.kernel": ("heads", "embed"),
    "layers.2.mixer.Wqkv.kernel": ("embed", "qkv"),
    "layers.0.mlp.fc1.kernel": ("embed", "mlp"),
    "layers.0.mlp.fc2.kernel": ("mlp", "embed"),
    "final_norm.scale": ("embed",),
}


@pytest.mark.parametrize("config", [JRTConfig.preset("jrt-360m"), JRTConfig.preset("based-tiny"),
                                    LlamaConfig.preset("llama-tiny", attention_bias=True, mlp_bias=True)],
                         ids=["jrt-360m", "based-tiny", "llama-bias-untied"])
def test_every_parameter_has_logical_axes(config):
    shapes = param_shapes(config)
    for path, (shape, axes) in shapes.items():
        assert axes is not None, f"{path} has no logical axis names"
        assert len(axes) == len(shape), (path, shape, axes)
        assert all(a in LOGICAL_AXES for a in axes), (path, axes)
    if isinstance(config, JRTConfig) and config.linear_kind == "prefix":
        for path, axes in EXPECTED_AXES.items():
            assert shapes[path][1] == axes, (path, shapes[path][1])
    if isinstance(config, LlamaConfig):
        assert shapes["layers.0.self_attn.k_proj.kernel"][1] == ("embed", "kv")
        assert shapes["layers.0.self_attn.q_proj.bias"][1] == ("heads",)
        assert shapes["lm_head.kernel"][1] == ("embed", "vocab")
        assert shapes["layers.0.mlp.down_proj.kernel"][1] == ("mlp", "embed")


def test_partition_specs_follow_rules():
    model = abstract_model(JRTConfig.preset("jrt-tiny"))
    rules = (("embed", "fsdp"), ("mlp", "tensor"))
    with nnx.logical_axis_rules(rules) if hasattr(nnx, "logical_axis_rules") else _flax_rules(rules):
        specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    assert tuple(specs["layers"][0]["mlp"]["fc1"]["kernel"].get_value()) == ("fsdp", "tensor")


def _flax_rules(rules):
    from flax.core import spmd
    return spmd.logical_axis_rules(rules)


# --- config validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_heads=5), "num_heads=5 must divide d_model=128"),
        (dict(window_heads=3), "window_heads=3 must divide d_model=128"),
        (dict(linear_layers=(1, 8)), "layer index 8 is out of range"),
        (dict(window_layers=(-1,)), "layer index -1 is out of range"),
        (dict(linear_layers=(1, 2), window_layers=(2,)), "layers [2] are in both"),
        (dict(enc_len=0), "enc_len must be a positive int; got 0"),
        (dict(window=0), "window must be a positive int; got 0"),
        (dict(linear_kind="softmax"), "linear_kind must be one of"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(implementation="cuda"), "implementation must be one of"),
        (dict(conv_expand=3), "conv_expand must be even"),
    ],
)
def test_jrt_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        JRTConfig.preset("jrt-tiny", **kwargs)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'jrt-7b'.*jrt-360m"):
        JRTConfig.preset("jrt-7b")
    with pytest.raises(ValueError, match=r"unknown preset 'llama-70b'.*smollm2-135m"):
        LlamaConfig.preset("llama-70b")
    with pytest.raises(ValueError, match=r"unknown preset 'x'.*based-tiny.*llama-tiny"):
        config_from_preset("x")
    assert set(JRT_PRESETS) >= {"jrt-360m", "jrt-1.3b", "based-360m", "based-1.3b", "jrt-tiny", "based-tiny"}
    assert set(LLAMA_PRESETS) >= {"llama-tiny", "llama-jrt-tiny", "smollm2-135m"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads=3 must divide"),
        (dict(hidden_size=66, num_attention_heads=4), "num_attention_heads=4 must divide hidden_size=66"),
        (dict(head_dim=7), "head_dim must be even"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), r"scaling\['factor'\]"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"scaling\['low_freq_factor'\]"),
        (dict(rope_scaling={"rope_type": "bogus", "factor": 2.0}), r"scaling\['rope_type'\]"),
    ],
)
def test_llama_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig.preset("llama-tiny", **kwargs)


def test_from_hf_config_matches_transformers_fields():
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rope_theta=5e4,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                  max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5)
    cfg = LlamaConfig.from_hf_config(hf.to_dict())
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (64, 2, 16, True)
    assert cfg.rope_theta == 5e4 and cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 8.0
    assert cfg.max_position_embeddings == 512 and cfg.rms_norm_eps == 1e-5
    assert LlamaConfig.from_hf_config(cfg.to_hf_config()) == cfg
    # Written both ways: transformers 5's rope_parameters (theta inside) and the legacy rope_scaling + rope_theta.
    written = cfg.to_hf_config()
    assert written["rope_parameters"] == {**cfg.rope_scaling.to_dict(), "rope_theta": 5e4}
    assert LlamaConfig.from_hf_config({k: v for k, v in written.items() if k not in ("rope_scaling", "rope_theta")}) \
        == cfg
    reread = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf_config().items()
                                          if k not in ("architectures", "model_type")})
    if hasattr(reread, "rope_parameters"):  # transformers >= 5
        assert reread.rope_parameters["rope_type"] == "llama3" and reread.rope_parameters["rope_theta"] == 5e4
    plain = LlamaConfig.from_hf_config({**hf.to_dict(), "rope_scaling": None,
                                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e5
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaConfig.from_hf_config({**hf.to_dict(), "hidden_act": "gelu"})


# --- bad input to the models ---------------------------------------------------------------------------------------


def test_forward_bad_input_is_named():
    model = mh.model("jrt")
    with pytest.raises(ValueError, match=r"token id 300 at \(0, 2\) is outside the vocabulary \[0, 300\)"):
        model(jnp.asarray([[1, 2, 300]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        model(jnp.asarray([[-1, 2]]))
    with pytest.raises(ValueError, match="non-empty"):
        model(jnp.zeros((1, 0), jnp.int32))
    with pytest.raises(ValueError, match=r"enc_len must be an int in \[1, T=3\].*got 4"):
        model(jnp.asarray([[1, 2, 3]]), enc_len=4)
    with pytest.raises(ValueError, match=r"per-row value 5 is outside \[1, T=3\]"):
        model(jnp.asarray([[1, 2, 3]]), enc_len=jnp.asarray([5]))
    with pytest.raises(ValueError, match="mask must have shape"):
        model(jnp.asarray([[1, 2, 3]]), mask=jnp.ones((1, 4), bool))
    llama = mh.model("llama")
    with pytest.raises(ValueError, match="LlamaLM has no encoder"):
        llama(jnp.asarray([[1, 2]]), enc_len=1)
    limited = nnx.eval_shape(lambda: JRTLM(dataclasses.replace(mh.JRT_TEST, max_seq_len=8), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="exceeds the model's maximum length 8"):
        limited(jnp.zeros((1, 9), jnp.int32))


def test_llama_runs_past_its_trained_context_and_warns_once():
    """max_position_embeddings is metadata, as in transformers: longer inputs run; one warning per model config."""
    import warnings

    llama = LlamaLM(dataclasses.replace(mh.LLAMA_TEST, max_position_embeddings=8, rope_scaling=None),
                    rngs=nnx.Rngs(0))
    assert llama.max_length is None and llama.trained_length == 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for t in (8, 12, 20):
            assert llama(jnp.zeros((1, t), jnp.int32)).shape == (1, t, 300)
    past = [w for w in caught if "extrapolate past the trained context" in str(w.message)]
    assert len(past) == 1 and "= 8 positions" in str(past[0].message)
    pi = nnx.eval_shape(lambda: LlamaLM(dataclasses.replace(
        mh.LLAMA_TEST, max_position_embeddings=8, rope_scaling={"rope_type": "linear", "factor": 4.0}),
        rngs=nnx.Rngs(0)))
    assert pi.trained_length == 32


# --- forward semantics -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jrt", "based", "llama"])
def test_left_padding_does_not_change_a_row(name):
    """A row's logits are the same alone and left-padded in a batch (pads excluded from every mixer).

    (RoPE's positions counting real tokens only cannot show here — attention is invariant to a constant position
    offset — it shows in the decode-parity test, where decode positions come from the real-token counts.)"""
    model = mh.model(name)
    fwd = mh.forward_fn(name)
    short, long = mh.random_prompts([6, 16], model.config.vocab_size, seed=3)
    alone = fwd(jnp.asarray([short]))  # for JRT also its encoder: all 6 tokens (M = 12)
    batch = jnp.asarray([[0] * 10 + short, long])
    mask = jnp.asarray([[False] * 10 + [True] * 6, [True] * 16])
    out = fwd(batch, mask)
    assert mh.max_abs(out[0, 10:], alone[0]) <= 1e-4
    assert out.dtype == jnp.float32 and out.shape == (2, 16, model.config.vocab_size)
    # the pads really are ignored: different garbage gives the same result
    out2 = fwd(batch.at[0, :10].set(7), mask)
    assert mh.max_abs(out2[0, 10:], out[0, 10:]) == 0.0


@pytest.mark.parametrize("name", ["jrt", "based", "llama"])
def test_packed_documents_equal_each_document_alone(name):
    """segment_ids: documents packed in one row (ids recurring, padding between and after) give the logits
    each document gets alone — no mixer crosses a boundary, positions restart, each JRT document has its own
    encoder (its first min(M, length) tokens, M = 12 here, so one document is longer than its encoder)."""
    model = mh.model(name)
    docs = mh.random_prompts([5, 15, 3], model.config.vocab_size, seed=8)
    ids = [1, 2, 1]
    tokens, seg = [], []
    for doc, i in zip(docs, ids):
        tokens += doc + [0]
        seg += [i] * len(doc) + [0]
    tokens, seg = jnp.asarray([tokens + [0] * 3]), jnp.asarray([seg + [0] * 3], jnp.int32)
    packed = nnx.jit(lambda m, t, s: m(t, segment_ids=s))(model, tokens, seg)
    start = 0
    for doc in docs:
        alone = model(jnp.asarray([doc]))
        assert mh.max_abs(packed[0, start : start + len(doc)], alone[0]) <= 1e-4, (name, start)
        start += len(doc) + 1


def test_jrt_pallas_implementation_runs_every_layer():
    """implementation="pallas" applies to the linear-attention layers; the sliding-window layers (no kernel)
    take `window_implementation` ("auto") instead of failing, and the logits equal the XLA model's. The
    "attention" mixer follows the same rule (`attention_implementation`)."""
    cfg = dataclasses.replace(mh.JRT_TEST, implementation="pallas")
    assert cfg.window_implementation == cfg.attention_implementation == "auto"
    for name in ("reference", "xla"):
        named = dataclasses.replace(cfg, implementation=name)
        assert named.window_implementation == named.attention_implementation == name
    toks = jnp.asarray(mh.random_prompts([20], 300, seed=5))
    pallas = JRTLM(cfg, rngs=nnx.Rngs(0))(toks)
    assert mh.max_abs(pallas, mh.model("jrt")(toks)) <= 1e-4


def test_jrt_encoder_is_non_causal_over_the_prefix():
    """Changing a token inside the encoder changes earlier positions' logits (they read the whole prefix);
    with a plain causal model (Based) it does not."""
    toks = jnp.asarray(mh.random_prompts([16], 300, seed=4))
    changed = toks.at[0, 10].set((toks[0, 10] + 1) % 300)
    jrt, based = mh.forward_fn("jrt"), mh.forward_fn("based")
    assert mh.max_abs(jrt(toks)[0, :10], jrt(changed)[0, :10]) > 1e-6  # position 10 < M = 12: in the encoder
    assert mh.max_abs(based(toks)[0, :10], based(changed)[0, :10]) == 0.0


def test_llama_matches_transformers():
    """Our Llama (GQA, linear RoPE scaling, untied head) with the same weights as transformers' LlamaForCausalLM."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = mh.LLAMA_TEST
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf_config().items()
                                         if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model = nnx.eval_shape(lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    flat = {}
    for path, var in nnx.to_flat_state(state):
        key = ".".join(str(p) for p in path)
        if key == "embed_tokens.embedding":
            hf_key = "model.embed_tokens.weight"
        elif key.startswith("lm_head"):
            hf_key = "lm_head.weight"
        else:
            hf_key = "model." + key.replace(".kernel", ".weight").replace(".scale", ".weight")
        w = sd[hf_key]
        flat[path] = jnp.asarray(w.T if key.endswith("kernel") else w)
    nnx.update(model, nnx.from_flat_state(flat))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    out = model(jnp.asarray(tokens))
    assert mh.max_abs(out, ref) <= 1e-4
