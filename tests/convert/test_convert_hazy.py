"""HazyResearch JRT-RNN / Based releases ↔ JRTLM, checked against an independent PyTorch reference.

The reference (tests/jrt_torch_reference.py, written from the design document, never importing jrt_jax) is
random-initialised, saved as the release would (``model.`` prefix, metric entries, ``conv1`` names, RoPE
buffers, tied head, GPT2-style config.json), converted, and compared: logits within 1e-4 (fp32) over a sequence
longer than the encoder and the window, and greedy generation through `jrt_jax.generate` (prefill + recurrent
decoding) against the reference's token-by-token argmax. Then the way back: our export loads into the reference
with ``load_state_dict(strict=True)`` and round-trips bit-identically.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jrt_jax import from_pretrained, save_pretrained  # noqa: E402
from jrt_jax.convert import ConversionError, KeyMismatchError, load_config  # noqa: E402
from jrt_jax.convert import hazy  # noqa: E402
from jrt_jax.generate import Generator  # noqa: E402
from jrt_jax.models import JRTConfig, JRTLM  # noqa: E402
from tests import convert_helpers as ch  # noqa: E402

_one_torch_thread = pytest.fixture(scope="module", autouse=True)(ch.torch_single_thread)

KINDS = ["jrt", "based"]


@pytest.fixture(scope="module", params=KINDS)
def release(request, tmp_path_factory):
    kind = request.param
    ref = ch.reference_model(kind, seed=1 if kind == "jrt" else 2)
    folder = ch.save_release(ref, tmp_path_factory.mktemp(f"{kind}-release"), ch.release_config(kind))
    return kind, ref, folder


def test_release_config_reads_as_the_release_builds_it(release):
    kind, _, folder = release
    cfg = load_config(folder)
    assert isinstance(cfg, JRTConfig)
    assert cfg.linear_kind == ("prefix" if kind == "jrt" else "causal")
    assert cfg.vocab_size == 256  # 250 padded to a multiple of 8
    assert cfg.window == 8  # window_size 16 → 8 keys back
    assert (cfg.linear_layers, cfg.window_layers) == ((1, 4), (2,))
    assert cfg.mixers == ("base_conv", f"{cfg.linear_kind}_linear", "sliding_window", "base_conv",
                          f"{cfg.linear_kind}_linear")
    assert (cfg.num_heads, cfg.feature_dim, cfg.window_heads, cfg.n_inner, cfg.conv_expand) == (4, 8, 4, 96, 4)
    if kind == "jrt":
        assert cfg.enc_len == ch.ENC


def test_release_logits_match_the_reference(release):
    kind, ref, folder = release
    model = from_pretrained(folder)
    assert isinstance(model, JRTLM) and model.config.param_dtype == "float32"
    tokens = np.random.default_rng(0).integers(0, 250, (2, 40))  # T > M = 12 and > window 8
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).numpy()
    got = np.asarray(model(jnp.asarray(tokens)))
    err = ch.max_abs(got, want)
    print(f"\n{kind}: max |logits - reference| = {err:.2e} (logit scale {np.abs(want).max():.1f})")
    assert err <= 1e-4
    assert np.abs(want).max() > 1.0 and np.std(want) > 0.1  # not a vacuous comparison
    # the encoder is non-causal for JRT: a change inside the prefix moves earlier logits
    if kind == "jrt":
        changed = tokens.copy()
        changed[:, 10] = (changed[:, 10] + 1) % 250
        with torch.no_grad():
            moved = ref(torch.tensor(changed)).numpy()
        assert ch.max_abs(moved[:, :10], want[:, :10]) > 1e-3


def test_release_generation_matches_reference_argmax(release):
    kind, ref, folder = release
    model = from_pretrained(folder)
    prompts = [[7, 3, 99, 140, 12, 5, 66, 201], list(np.random.default_rng(5).integers(0, 250, 20))]  # < M and > M
    ours = Generator(model).generate(prompts, max_new_tokens=16).tokens
    for prompt, got in zip(prompts, ours):
        want = ref.greedy([int(t) for t in prompt], 16)
        print(f"\n{kind} prompt len {len(prompt)}: {got}")
        assert got == want
    assert len({t for row in ours for t in row}) > 4  # a varied continuation, not one repeated token


def test_preset_replaces_missing_config(release, tmp_path):
    kind, ref, folder = release
    (tmp_path / "pytorch_model.bin").symlink_to(folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="no config.json; pass preset="):
        from_pretrained(tmp_path)
    # a preset with another shape: every key is reported
    with pytest.raises(KeyMismatchError, match="mis-shaped") as e:
        from_pretrained(tmp_path, preset=f"{kind}-micro")
    assert "transformer.embeddings.word_embeddings.weight" in str(e.value)


def test_round_trip_and_strict_torch_load(release, tmp_path):
    """ours → release layout (both formats) → ours is bit-identical; the file loads strictly into the
    reference, whose logits then equal ours."""
    kind, _, folder = release
    model = from_pretrained(folder)
    before = ch.params_of(model)
    tokens = np.random.default_rng(1).integers(0, 250, (1, 30))
    ours = np.asarray(model(jnp.asarray(tokens)))
    for fmt in ("safetensors", "torch"):
        out = tmp_path / fmt
        weights = save_pretrained(model, out, format=fmt)
        ch.assert_bit_identical(before, ch.params_of(from_pretrained(out)))
        assert load_config(out) == model.config
        if fmt == "torch":
            sd = torch.load(weights, weights_only=True)
        else:
            from safetensors.torch import load_file

            sd = load_file(weights)
        ref = ch.reference_model(kind, seed=99)
        ref.load_state_dict(sd, strict=True)
        with torch.no_grad():
            assert ch.max_abs(ref(torch.tensor(tokens)).numpy(), ours) <= 1e-4
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["alt_mixer_2"]["window_size"] == 16 and cfg["rms_norm"] is True


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    ref = ch.reference_model("jrt", seed=3)
    folder = ch.save_release(ref, tmp_path / "bf16", ch.release_config("jrt"), dtype=torch.bfloat16)
    model = from_pretrained(folder)
    assert model.config.param_dtype == "bfloat16" and model.config.dtype == "bfloat16"
    emb = np.asarray(model.embed.embedding.get_value())
    want = ref.transformer.embeddings.word_embeddings.weight.detach().to(torch.bfloat16).float().numpy()
    assert np.array_equal(emb.astype(np.float32), want)
    as32 = from_pretrained(folder, dtype="float32")
    assert as32.config.param_dtype == "float32"
    assert np.array_equal(np.asarray(as32.embed.embedding.get_value()), want)
    before = ch.params_of(model)
    save_pretrained(model, tmp_path / "out", format="torch")
    ch.assert_bit_identical(before, ch.params_of(from_pretrained(tmp_path / "out")))


def test_round_trip_from_random_jax_model(tmp_path):
    """A model that never saw torch: random init (conv biases, Based layout) → file → model, bit-identical."""
    from flax import nnx

    cfg = JRTConfig.preset("based-micro", param_dtype="bfloat16", dtype="bfloat16")
    model = JRTLM(cfg, rngs=nnx.Rngs(7))
    before = ch.params_of(model)
    for fmt in ("safetensors", "torch"):
        save_pretrained(model, tmp_path / fmt, format=fmt)
        back = from_pretrained(tmp_path / fmt)
        assert back.config == cfg
        ch.assert_bit_identical(before, ch.params_of(back))


# --- config fields that change the math are refused, with the field named ------------------------------------

BAD_FIELDS = [
    (dict(activation_function="gelu_new"), "activation_function='gelu_new'"),
    (dict(rms_norm=False), "rms_norm=False"),
    (dict(qkv_proj_bias=True), "qkv_proj_bias=True"),
    (dict(mlp_fc1_bias=True), "mlp_fc1_bias=True"),
    (dict(rotary_emb_fraction=0.5), "rotary_emb_fraction=0.5"),
    (dict(rotary_emb_interleaved=True), "rotary_emb_interleaved=True"),
    (dict(max_position_embeddings=2048, n_positions=2048), "max_position_embeddings=2048"),
    (dict(n_head_kv=2), "n_head_kv=2"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
    (dict(parallel_block=True), "parallel_block=True"),
    (dict(mixer={"_target_": "based.models.mixers.hyena.Hyena", "expand_proj": 4}), "mixer._target_"),
    (dict(alt_mixer_layers=[1, 2]), "layers [2] are also in alt_mixer_2_layers"),
]


@pytest.mark.parametrize("change, message", BAD_FIELDS, ids=[m.split("=")[0] for _, m in BAD_FIELDS])
def test_math_changing_fields_are_refused(change, message):
    cfg = {**ch.release_config("jrt"), **change}
    with pytest.raises(ConversionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        hazy.config_from_dict(cfg)


@pytest.mark.parametrize("field", ["rotary_emb_fraction", "activation_function", "qkv_proj_bias", "rms_norm",
                                   "max_position_embeddings"])
def test_absent_fields_take_the_release_default(field):
    """A field left out takes the value the release's code would use — here one that changes the math."""
    cfg = ch.release_config("jrt")
    cfg.pop(field)
    cfg.pop("n_positions", None)
    with pytest.raises(ConversionError, match=f"{field}.*absent"):
        hazy.config_from_dict(cfg)


def test_alt_mixer_settings_refused():
    base = ch.release_config("jrt")
    for change, message in [({"scale_dim": 4}, "scale_dim"), ({"num_key_value_heads": 2}, "num_key_value_heads"),
                            ({"use_decay_proj": True}, "use_decay_proj"),
                            ({"feature_map": {"_target_": "x.Hedgehog"}}, "feature_map")]:
        with pytest.raises(ConversionError, match=message):
            hazy.config_from_dict({**base, "alt_mixer": {**base["alt_mixer"], **change}})
    window_4096 = {**base, "alt_mixer_2_layers": [2, 7], "n_layer": 10,
                   "alt_mixer_2": {**base["alt_mixer_2"], "window_size": 4096}}
    with pytest.raises(ConversionError, match="layers 7 and 17"):
        hazy.config_from_dict(window_4096)


def test_extra_fields_are_tolerated_and_export_round_trips():
    cfg = {**ch.release_config("based"), "some_future_flag": True, "sequence_parallel": False, "dropout": 0.1}
    parsed = hazy.config_from_dict(cfg)
    assert parsed.linear_kind == "causal"
    assert hazy.config_from_dict(hazy.config_to_dict(parsed)) == parsed
    jrt = JRTConfig.preset("jrt-1.3b")
    assert hazy.config_from_dict(hazy.config_to_dict(jrt)) == dataclasses.replace(jrt, init_std=jrt.init_std)


def test_config_and_weights_disagreeing_on_the_kind_name_the_keys(tmp_path):
    """The config says PLA but the weights are Based's: the missing encoder projections are named."""
    ref = ch.reference_model("based", seed=4)
    folder = ch.save_release(ref, tmp_path / "x", ch.release_config("jrt"))
    with pytest.raises(KeyMismatchError) as e:
        from_pretrained(folder)
    assert "transformer.layers.1.mixer.proj_k_enc.weight" in e.value.missing
    assert "transformer.layers.4.mixer.proj_v_enc.weight" in e.value.missing


def test_untied_head_and_wrong_rope_buffer_are_refused(tmp_path):
    ref = ch.reference_model("jrt", seed=5)
    folder = ch.save_release(ref, tmp_path / "a", ch.release_config("jrt"))
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    sd["model.lm_head.weight"] = sd["model.lm_head.weight"].clone() + 1.0
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="lm_head.weight: differs from the tied embedding"):
        from_pretrained(folder)
    folder = ch.save_release(ref, tmp_path / "b", ch.release_config("jrt", rotary_emb_base=500.0))
    with pytest.raises(ConversionError, match="rotary_emb.inv_freq: does not match RoPE with base 500.0"):
        from_pretrained(folder)
