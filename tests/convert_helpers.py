"""Builders shared by the conversion tests: release-style JRT / Based checkpoints from the independent torch
reference, tiny Hugging Face Llamas, and parameter comparisons."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from tests.helpers import max_abs  # noqa: F401 - the helpers of the convert tests, in one namespace

#: A small JRT-RNN in the release's layout: BaseConv, PLA, sliding window, BaseConv, PLA. Vocabulary 250 padded
#: to 256 by pad_vocab_size_multiple 8, M = 12 (prompts shorter and longer than the encoder), window_size 16 →
#: 8 keys back.
SMALL = dict(d=64, n_layer=5, n_inner=96, vocab=256, linear_layers=(1, 4), window_layers=(2,), num_heads=4,
             feature_dim=8, window_heads=4, window=8)
ENC = 12


def release_config(kind: str, *, d=64, n_layer=5, n_inner=96, linear_layers=(1, 4), window_layers=(2,),
                   num_heads=4, feature_dim=8, window_heads=4, window=8, **extra) -> dict:
    """config.json as the release writes it (GPT2Config fields + Hazy's mixer fields), written by hand."""
    if kind == "jrt":
        alt = {"_target_": "based.models.mixers.prefix_linear_attention.PrefixLinearAttention",
               "feature_dim": feature_dim, "num_heads": num_heads, "enc_length": ENC, "l_max": 2048}
    else:
        alt = {"_target_": "based.models.mixers.linear_attention.LinearAttention", "feature_dim": feature_dim,
               "num_heads": num_heads, "l_max": 2048,
               "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp",
                               "input_dim": feature_dim}}
    cfg = {
        "_name_or_path": "gpt2", "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_embd": d, "n_head": window_heads, "n_layer": n_layer, "n_inner": n_inner,
        "vocab_size": 250, "pad_vocab_size_multiple": 8, "max_position_embeddings": 0, "n_positions": 0,
        "activation_function": "swiglu", "rms_norm": True, "layer_norm_epsilon": 1e-5, "residual_in_fp32": True,
        "mlp_fc1_bias": False, "mlp_fc2_bias": False, "qkv_proj_bias": False, "out_proj_bias": False,
        "rotary_emb_fraction": 1, "fused_dropout_add_ln": True, "fused_mlp": False, "fused_bias_fc": True,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "special_initializer": True, "use_flash_attn": True,
        "alt_mixer_layers": list(linear_layers), "alt_mixer_2_layers": list(window_layers),
        "mixer": {"_target_": "based.models.mixers.convolution.BaseConv", "l_max": 2048, "expand_proj": 4,
                  "use_bias": True},
        "alt_mixer": alt,
        "alt_mixer_2": {"_target_": "based.models.mixers.slide_attention.SlidingAttention",
                        "window_size": 2 * window, "num_heads": window_heads, "causal": True},
    }
    if kind == "jrt":
        cfg["enc_length"] = ENC
    cfg.update(extra)
    return cfg


def reference_model(kind: str, seed: int = 0, **overrides):
    """The torch reference (tests/jrt_torch_reference.py), random-initialised at a scale that gives O(1) logits
    with real structure (not the tiny-logit regime of a 0.02 init, where any two models look alike)."""
    import torch

    from tests.jrt_torch_reference import ReferenceLM

    kw = {**SMALL, **overrides}
    torch.manual_seed(seed)
    ref = ReferenceLM(**kw, enc_length=ENC if kind == "jrt" else None).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "word_embeddings" in name:
                p.normal_(0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            else:
                fan_in = p.shape[1] * (p.shape[2] if p.ndim == 3 else 1)
                p.normal_(0, 1.5 / fan_in**0.5)
    return ref


def save_release(ref, folder: pathlib.Path, cfg: dict, *, conv1_layers=(0,), dtype=None) -> pathlib.Path:
    """Save `ref` as the release's pytorch_model.bin: 'model.' prefix on every key, training-metric entries, the
    older 'conv1' name on some BaseConv layers, the sliding-window layers' RoPE inv_freq, the tied lm_head."""
    import torch

    sd = {}
    for k, v in ref.state_dict().items():
        v = v.detach().clone()
        if dtype is not None:
            v = v.to(dtype)
        for i in conv1_layers:
            k = k.replace(f"layers.{i}.mixer.conv.conv.", f"layers.{i}.mixer.conv1.conv.")
        sd["model." + k] = v
    for i, layer in enumerate(ref.transformer.layers):
        if hasattr(layer.mixer, "rotary_emb"):
            sd[f"model.transformer.layers.{i}.mixer.rotary_emb.inv_freq"] = layer.mixer.rotary_emb.inv_freq.clone()
    sd["model.train_metrics.num-tokens.count"] = torch.tensor(1234)
    sd["model.val_metrics.num-tokens.count"] = torch.tensor(56)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def tiny_hf_llama(seed=0, *, tie=False, rope_scaling=None, max_position_embeddings=128, bias=False, vocab=300,
                  hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96):
    """A random transformers LlamaForCausalLM (GQA) with weights at a scale that gives O(1) logits."""
    import torch
    import transformers

    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_position_embeddings,
              tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias, rms_norm_eps=1e-5)
    if rope_scaling is not None:
        kw["rope_scaling"] = rope_scaling
    cfg = transformers.LlamaConfig(**kw)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.normal_(0, 1.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.8 / p.shape[1] ** 0.5)
    return model


def params_of(model) -> dict[str, np.ndarray]:
    from jrt_jax.convert.mapping import flat_params

    return {k: np.asarray(v.get_value()) for k, v in flat_params(model).items()}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), f"{k} differs"


def torch_single_thread():
    """Generator for a module-scoped autouse fixture: torch on one thread while the module runs, restored after.

    On a small shared CPU (CI's two cores, with other jobs) torch's intra-op thread pool spends most of its time
    waiting: the reference's token-by-token decoding measured 0.1 s on one thread and 20 s on two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def byte_chars() -> list[str]:
    """GPT-2's byte → printable character table, by byte (byte-level BPE vocabularies spell bytes with these)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    chars, n = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


def byte_tokenizer_json(path) -> None:
    """Write a Hugging Face tokenizer.json with `jrt_jax.tokenizer.ByteTokenizer`'s ids: byte-level BPE without
    merges (UTF-8 byte b → id b), ``<|endoftext|>`` = 256 and ``<|pad|>`` = 257 as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(byte_chars())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False),
                            AddedToken("<|pad|>", special=True, normalized=False)])
    tok.save(str(path))
