"""Hugging Face Llama folders ↔ LlamaLM, against transformers' LlamaForCausalLM.

Tiny random models (GQA 4 query / 2 key-value heads) for every rope_scaling type, tied and untied, saved by
transformers itself; logits of the converted model equal transformers' within 1e-4 (fp32) at lengths past the
original context. Sharded safetensors, pytorch_model.bin and bfloat16 checkpoints; export back to a folder that
``LlamaForCausalLM.load_state_dict(strict=True)`` and ``from_pretrained`` accept; bit-identical round trips;
sharded placement over a (data, fsdp, tensor) mesh of 4 CPU devices in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jrt_jax import from_pretrained, save_pretrained  # noqa: E402
from jrt_jax.convert import load_config  # noqa: E402
from jrt_jax.models import LlamaConfig, LlamaLM  # noqa: E402
from tests import convert_helpers as ch  # noqa: E402
from tests.helpers import simulated_devices_env  # noqa: E402

_one_torch_thread = pytest.fixture(scope="module", autouse=True)(ch.torch_single_thread)

_SHORT = [1.0 + 0.1 * i for i in range(8)]
_LONG = [2.0 + 0.5 * i for i in range(8)]

# (rope_scaling, max_position_embeddings, length, tied, original context). Every length exceeds the original
# (pre-scaling) context; dynamic NTK rescales only beyond max_position_embeddings, which LlamaLM then accepts.
ROPE_CASES = {
    "default-tied": (None, 128, 100, True, 128),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 128, 120, True, 32),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, 64, 120, False, 64),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}, 128, 120, False, 32),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}, 128, 120, True, 16),
    "longrope": ({"rope_type": "longrope", "short_factor": _SHORT, "long_factor": _LONG,
                  "original_max_position_embeddings": 32}, 128, 120, False, 32),
}


def _logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_hf_llama_matches_transformers(case, tmp_path):
    scaling, max_pos, length, tied, original = ROPE_CASES[case]
    hf = ch.tiny_hf_llama(seed=len(case), tie=tied, rope_scaling=scaling, max_position_embeddings=max_pos)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert isinstance(model, LlamaLM)
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.tie_word_embeddings) == (4, 2, tied)
    assert (c.rope_scaling or {}).get("rope_type") == (scaling or {}).get("rope_type")
    assert length > original or scaling is None
    tokens = np.random.default_rng(0).integers(0, 300, (2, length))
    want = _logits(hf, tokens)
    got = np.asarray(model(jnp.asarray(tokens)))
    err = ch.max_abs(got, want)
    print(f"\n{case}: T={length} (original context {original}): max |logits - transformers| = {err:.2e}, "
          f"logit scale {np.abs(want).max():.1f}")
    assert err <= 1e-4
    assert np.abs(want).max() > 1.0


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 24},
                                     {"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 24}],
                         ids=["none", "linear", "yarn", "llama3"])
def test_past_the_trained_window_matches_transformers(scaling, tmp_path):
    """No length guard: 3x past max_position_embeddings x factor, logits still equal transformers' (fp32)."""
    hf = ch.tiny_hf_llama(seed=7, tie=False, rope_scaling=scaling, max_position_embeddings=24)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    length = 3 * model.trained_length + 5
    tokens = np.random.default_rng(1).integers(0, 300, (1, length))
    with pytest.warns(UserWarning, match="extrapolate past the trained context"):
        got = np.asarray(model(jnp.asarray(tokens)))
    err = ch.max_abs(got, _logits(hf, tokens))
    print(f"\n{scaling and scaling['rope_type']}: T={length}, trained {model.trained_length}: max |diff| = {err:.2e}")
    assert err <= 1e-4


def test_sharded_safetensors_bin_and_bf16(tmp_path):
    hf = ch.tiny_hf_llama(seed=3, rope_scaling={"rope_type": "linear", "factor": 2.0})
    tokens = np.random.default_rng(1).integers(0, 300, (1, 50))
    want = _logits(hf, tokens)
    # sharded: model.safetensors.index.json + several shards
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert ch.max_abs(from_pretrained(tmp_path / "sharded")(jnp.asarray(tokens)), want) <= 1e-4
    # pytorch_model.bin (older transformers' default), with a stray RoPE buffer as old versions saved
    (tmp_path / "bin").mkdir()
    sd = dict(hf.state_dict())
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(json.dumps(hf.config.to_dict()))
    assert ch.max_abs(from_pretrained(tmp_path / "bin")(jnp.asarray(tokens)), want) <= 1e-4
    # a bfloat16 checkpoint is loaded as bfloat16 (dtype=None) with the exact stored values
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    m16 = from_pretrained(tmp_path / "bf16")
    assert m16.config.param_dtype == "bfloat16"
    w = hf.model.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(np.asarray(m16.embed_tokens.embedding.get_value()).astype(np.float32), w)
    m32 = from_pretrained(tmp_path / "bf16", dtype="float32")
    assert m32.config.param_dtype == "float32"
    assert np.array_equal(np.asarray(m32.embed_tokens.embedding.get_value()), w)


@pytest.mark.parametrize("tied, bias", [(False, False), (True, True)], ids=["untied", "tied-bias"])
def test_export_loads_strictly_in_transformers_and_round_trips(tied, bias, tmp_path):
    hf = ch.tiny_hf_llama(seed=5, tie=tied, bias=bias,
                          rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64})
    hf.save_pretrained(tmp_path / "src")
    model = from_pretrained(tmp_path / "src")
    before = ch.params_of(model)
    tokens = np.random.default_rng(2).integers(0, 300, (2, 90))
    ours = np.asarray(model(jnp.asarray(tokens)))
    for fmt in ("safetensors", "torch"):
        out = tmp_path / fmt
        weights = save_pretrained(model, out, format=fmt)
        ch.assert_bit_identical(before, ch.params_of(from_pretrained(out)))
        if fmt == "torch":
            sd = torch.load(weights, weights_only=True)
            sd_mmap = torch.load(weights, weights_only=True, mmap=True)
            assert sd_mmap.keys() == sd.keys()
            if tied:  # one storage, as state_dict() has it
                assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
        else:
            from safetensors.torch import load_file

            sd = load_file(weights)
        fresh = transformers.LlamaForCausalLM(transformers.LlamaConfig(**json.loads((out / "config.json").read_text())))
        fresh.load_state_dict(sd, strict=True)
        assert ch.max_abs(_logits(fresh.eval(), tokens), ours) <= 1e-4
        if fmt == "safetensors":  # transformers' own loader reads the folder (config.json + metadata)
            loaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
            assert ch.max_abs(_logits(loaded, tokens), ours) <= 1e-4


def test_converted_folder_gets_the_tokenizer_files_it_lacks(tmp_path, capsys):
    """`jrt convert` of a Hugging Face folder holding only a tokenizer.json: tokenizer_config.json and
    special_tokens_map.json are made from the ids its config.json / generation_config.json name; a folder's own
    tokenizer_config.json is copied as it is."""
    from jrt_jax.convert import cli, load_tokenizer

    src = tmp_path / "src"
    ch.tiny_hf_llama(seed=21).save_pretrained(src)
    ch.byte_tokenizer_json(src / "tokenizer.json")  # ids 0-255 bytes, <|endoftext|> 256, <|pad|> 257
    (src / "generation_config.json").write_text(json.dumps({"bos_token_id": 256, "eos_token_id": [256]}))
    code = cli.main([str(src), str(tmp_path / "out")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    out = tmp_path / "out"
    # one line on stdout: what was written where
    assert len(printed.out.splitlines()) == 1 and printed.out.startswith(f"converted {src} (")
    assert f" → {out / 'model.safetensors'} in " in printed.out
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"], tok_cfg["pad_token"]) == ("<|endoftext|>",) * 2 + ("<|pad|>",)
    assert tok_cfg["model_max_length"] == 128 and "chat_template" not in tok_cfg
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 256, "eos_token_id": [256]}
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (256, [256], 257)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = load_tokenizer(out)
    text = "ünï  cödé\t\n end "
    assert hf.encode(text) == ours.encode(text) == list(text.encode())
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (256, 256, 257)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (256, 256, 257)
    # a folder's own tokenizer_config.json wins
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                            "eos_token": "<|pad|>", "chat_template": "{{ 1 }}"}))
    assert cli.main([str(src), str(tmp_path / "own")]) == 0
    assert (tmp_path / "own" / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()
    assert not (tmp_path / "own" / "special_tokens_map.json").exists()
    assert load_tokenizer(tmp_path / "own").chat_template == "{{ 1 }}"


def test_round_trip_of_a_random_jax_llama(tmp_path):
    from flax import nnx

    cfg = LlamaConfig.preset("llama-tiny", attention_bias=True, mlp_bias=True, param_dtype="bfloat16",
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 512})
    model = LlamaLM(cfg, rngs=nnx.Rngs(3))
    before = ch.params_of(model)
    for fmt in ("safetensors", "torch"):
        save_pretrained(model, tmp_path / fmt, format=fmt)
        back = from_pretrained(tmp_path / fmt)
        ch.assert_bit_identical(before, ch.params_of(back))
        assert back.config.rope_scaling == cfg.rope_scaling and back.config.param_dtype == "bfloat16"


def test_load_config_then_weights_for_pi_fine_tuning(tmp_path):
    """What the trainer does: the config only (no tensors), a longer context through rope_scaling (Position
    Interpolation), then the weights into that config — equal to transformers with the same PI settings."""
    import dataclasses

    hf = ch.tiny_hf_llama(seed=1, max_position_embeddings=64)
    hf.save_pretrained(tmp_path)
    cfg = load_config(tmp_path)
    assert isinstance(cfg, LlamaConfig) and cfg.max_position_embeddings == 64 and cfg.rope_scaling is None
    assert load_config(tmp_path, dtype="bfloat16").param_dtype == "bfloat16"
    pi = dataclasses.replace(cfg, rope_scaling={"rope_type": "linear", "factor": 4.0}, max_position_embeddings=256)
    model = from_pretrained(tmp_path, config=pi)
    assert model.config == pi
    hf_pi = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **{**hf.config.to_dict(), "rope_scaling": {"rope_type": "linear", "factor": 4.0},
           "max_position_embeddings": 256})).eval()
    hf_pi.load_state_dict(hf.state_dict(), strict=True)
    tokens = np.random.default_rng(3).integers(0, 300, (1, 200))  # past the original 64
    assert ch.max_abs(model(jnp.asarray(tokens)), _logits(hf_pi, tokens)) <= 1e-4
    with pytest.raises(Exception, match="mis-shaped"):  # a config whose parameters differ is still checked
        from_pretrained(tmp_path, config=dataclasses.replace(cfg, intermediate_size=128))


def test_legacy_torch_serialization(tmp_path):
    hf = ch.tiny_hf_llama(seed=4)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    tokens = np.random.default_rng(4).integers(0, 300, (1, 20))
    assert ch.max_abs(from_pretrained(tmp_path)(jnp.asarray(tokens)), _logits(hf, tokens)) <= 1e-4


CHILD = textwrap.dedent(r"""
    import sys, json
    import jax, numpy as np, jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jrt_jax import from_pretrained
    from jrt_jax.convert import ConversionError
    from jrt_jax.convert.mapping import flat_params
    path = sys.argv[1]
    assert len(jax.devices()) == 4
    Auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"), axis_types=(Auto,) * 3)  # as the trainer builds it
    plain = from_pretrained(path)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 301, (2, 40)))
    want = np.asarray(plain(tokens))
    out = {}
    # default rules (jrt_jax.nn.axes.SUGGESTED_RULES): vocab 301 is not divisible by tensor=2 -> a clear error
    try:
        from_pretrained(path, mesh=mesh)
        out["indivisible_error"] = None
    except ConversionError as e:
        out["indivisible_error"] = str(e)
    rules = (("embed", "fsdp"), ("heads", "tensor"), ("kv", "tensor"), ("mlp", "tensor"), ("vocab", None))
    model = from_pretrained(path, mesh=mesh, rules=rules)
    p = flat_params(model)
    out["q_spec"] = list(p["layers.0.self_attn.q_proj.kernel"].get_value().sharding.spec)
    out["down_spec"] = list(p["layers.0.mlp.down_proj.kernel"].get_value().sharding.spec)
    out["q_shards"] = len(p["layers.0.self_attn.q_proj.kernel"].get_value().addressable_shards)
    out["sharded_err"] = float(np.max(np.abs(np.asarray(model(tokens)) - want)))
    out["values_equal"] = all(np.array_equal(np.asarray(v.get_value()), np.asarray(flat_params(plain)[k].get_value()))
                              for k, v in p.items())
    # shardings= as a tree shaped like nnx.state(model, nnx.Param) (what a trainer builds), and one for all
    from flax.core import spmd
    abstract = nnx.state(plain, nnx.Param)
    with spmd.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(abstract)
    tree = jax.tree.map(lambda s: NamedSharding(mesh, s.get_value() if hasattr(s, "get_value") else s), specs,
                        is_leaf=lambda x: isinstance(x, (P, nnx.Variable)))
    m2 = from_pretrained(path, shardings=tree)
    out["tree_spec"] = list(flat_params(m2)["layers.0.self_attn.q_proj.kernel"].get_value().sharding.spec)
    m3 = from_pretrained(path, shardings=NamedSharding(mesh, P()))
    out["replicated_err"] = float(np.max(np.abs(np.asarray(m3(tokens)) - want)))
    print(json.dumps(out))
""")


def test_sharded_placement_on_a_mesh(tmp_path):
    ch.tiny_hf_llama(seed=7, vocab=301, tie=False).save_pretrained(tmp_path)
    env = simulated_devices_env(4, pythonpath=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "embed_tokens.embedding" in out["indivisible_error"] and "not divisible" in out["indivisible_error"]
    assert out["q_spec"] == ["fsdp", "tensor"] and out["down_spec"] == ["tensor", "fsdp"]
    assert out["q_shards"] == 4 and out["values_equal"]
    assert out["sharded_err"] <= 1e-4 and out["replicated_err"] <= 1e-4
    assert out["tree_spec"] == ["fsdp", "tensor"]
