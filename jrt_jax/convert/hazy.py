"""HazyResearch JRT-RNN / Based releases (``hazyresearch/JRT-360M-30B``, ``JRT-1B-50B``, ``based-360M-30B``,
``based-1b-50b``): GPT2-style ``config.json`` + ``pytorch_model.bin`` ↔ `JRTConfig` / `JRTLM`.

Keys are cleaned as the release's loader does: a leading ``model.`` is stripped, keys containing ``metrics`` are
dropped, ``conv1`` becomes ``conv``. Then (``transformer.layers.{i}.`` prefix)::

    transformer.embeddings.word_embeddings.weight [V, d]     → embed.embedding
    norm1.weight, norm2.weight [d]                           → layers.i.norm1.scale, norm2.scale
    mlp.fc1.weight [2·n_inner, d], mlp.fc2.weight [d, n_inner] → mlp.fc1.kernel, fc2.kernel (transposed)
    BaseConv:   mixer.in_proj.{weight,bias}, mixer.conv.conv.weight [C, 1, K], mixer.out_proj.{weight,bias}
    PLA:        mixer.proj_q|proj_k|proj_k_enc.weight [H·F, d], mixer.proj_v|proj_v_enc|out_proj.weight [d, d]
    Based:      the same without proj_k_enc / proj_v_enc
    window:     mixer.Wqkv.weight [3d, d] (rows q | k | v, each head-major), mixer.out_proj.weight;
                optional mixer.rotary_emb.inv_freq (checked against base and head size)
    transformer.ln_f.weight                                   → final_norm.scale
    lm_head.weight (optional; must equal the embedding: the head is tied)

The config is read and written by `jrt_jax.convert.hazy_config` (re-exported here: `config_from_dict`,
`config_to_dict`, `is_hazy_config`).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.formats import RenamedSource, open_source, opened
from jrt_jax.convert.hazy_config import check_release_layout, config_from_dict, config_to_dict, is_hazy_config
from jrt_jax.convert.mapping import (
    Entry,
    Extra,
    conv_to_checkpoint,
    conv_to_model,
    identity,
    linear_entry,
    tied_head_extra,
)
from jrt_jax.models import JRTConfig
from jrt_jax.tokenizer import TokenizerFile, gpt2_tokenizer

__all__ = ["HAZY", "HazyRelease", "clean_key", "cleaned_names", "config_from_dict", "config_to_dict", "entries",
           "extras", "is_hazy_config"]


def clean_key(key: str) -> str | None:
    """The release's key cleanup: None for dropped keys (containing ``metrics``)."""
    if key.startswith("model."):
        key = key[len("model."):]
    if "metrics" in key:
        return None
    return key.replace("conv1", "conv")


def cleaned_names(keys: Sequence[str]) -> dict[str, str]:
    """cleaned key → original key; ConversionError when two keys clean to the same name."""
    out: dict[str, str] = {}
    for k in keys:
        c = clean_key(k)
        if c is None:
            continue
        if c in out:
            raise ConversionError(f"keys {out[c]!r} and {k!r} both become {c!r} after the release's key cleanup "
                                  "(strip 'model.', 'conv1' → 'conv')")
        out[c] = k
    return out


# ------------------------------------------------------------------------------------------------- keys


def entries(c: JRTConfig) -> list[Entry]:
    """Every `JRTLM` parameter with its release key, checkpoint shape and layout transforms."""
    check_release_layout(c)
    d = c.d_model
    out = [Entry("embed.embedding", "transformer.embeddings.word_embeddings.weight", (c.vocab_size, d)),
           Entry("final_norm.scale", "transformer.ln_f.weight", (d,))]
    hf = c.num_heads * c.feature_dim
    channels = c.conv_expand * d // 2
    for i, mixer in enumerate(c.mixers):
        p, k = f"layers.{i}", f"transformer.layers.{i}"
        out += [Entry(f"{p}.norm1.scale", f"{k}.norm1.weight", (d,)),
                Entry(f"{p}.norm2.scale", f"{k}.norm2.weight", (d,)),
                linear_entry(f"{p}.mlp.fc1", f"{k}.mlp.fc1", d, 2 * c.n_inner),
                linear_entry(f"{p}.mlp.fc2", f"{k}.mlp.fc2", c.n_inner, d)]
        pm, km = f"{p}.mixer", f"{k}.mixer"
        if mixer == "base_conv":
            out += [linear_entry(f"{pm}.in_proj", f"{km}.in_proj", d, c.conv_expand * d),
                    Entry(f"{pm}.conv.kernel", f"{km}.conv.conv.weight", (channels, 1, c.conv_kernel),
                          conv_to_model, conv_to_checkpoint),
                    linear_entry(f"{pm}.out_proj", f"{km}.out_proj", channels, d)]
            if c.conv_bias:
                out += [Entry(f"{pm}.in_proj.bias", f"{km}.in_proj.bias", (c.conv_expand * d,)),
                        Entry(f"{pm}.out_proj.bias", f"{km}.out_proj.bias", (d,))]
        elif mixer in ("prefix_linear", "causal_linear"):
            out += [linear_entry(f"{pm}.proj_q", f"{km}.proj_q", d, hf),
                    linear_entry(f"{pm}.proj_k", f"{km}.proj_k", d, hf),
                    linear_entry(f"{pm}.proj_v", f"{km}.proj_v", d, d),
                    linear_entry(f"{pm}.out_proj", f"{km}.out_proj", d, d)]
            if mixer == "prefix_linear":
                out += [linear_entry(f"{pm}.proj_k_enc", f"{km}.proj_k_enc", d, hf),
                        linear_entry(f"{pm}.proj_v_enc", f"{km}.proj_v_enc", d, d)]
        elif mixer == "sliding_window":
            out += [linear_entry(f"{pm}.Wqkv", f"{km}.Wqkv", d, 3 * d),
                    linear_entry(f"{pm}.out_proj", f"{km}.out_proj", d, d)]
        else:  # pragma: no cover - JRTConfig only produces the kinds above
            raise ConversionError(f"internal error: unknown mixer {mixer!r}")
    return out


def extras(c: JRTConfig) -> list[Extra]:
    """Optional keys: the tied ``lm_head.weight`` and the sliding-window layers' ``rotary_emb.inv_freq``."""
    out = [tied_head_extra("lm_head.weight", "embed.embedding", identity)]
    head_dim = c.d_model // c.window_heads
    expected = 1.0 / (c.rope_base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))

    def check_inv_freq(arr, params):
        rtol = max(1e-5, 2 * float(ml_dtypes.finfo(arr.dtype).eps)) if arr.dtype.kind == "f" or \
            arr.dtype == ml_dtypes.bfloat16 else 1e-5
        arr = np.asarray(arr, np.float32)
        if arr.shape != expected.shape or not np.allclose(arr, expected, rtol=rtol, atol=0):
            return (f"does not match RoPE with base {c.rope_base} over the full head size {head_dim}; the "
                    "rotary settings in config.json disagree with the weights")
        return None

    for i in c.window_layers:
        out.append(Extra(f"transformer.layers.{i}.mixer.rotary_emb.inv_freq", (head_dim // 2,), check_inv_freq))
    return out


class HazyRelease:
    """HazyResearch JRT-RNN / Based release folders (GPT2-style config with mixer fields); see
    `jrt_jax.convert.architectures`. Keys are cleaned (`cleaned_names`) before matching."""

    name = "hazy"
    tokenizer_in_weights = False

    def detect(self, weights, cfg, config=None) -> bool:
        if config is not None:
            return isinstance(config, JRTConfig)
        return cfg is not None and is_hazy_config(cfg)

    def open(self, weights, cfg, config=None):
        def renamed(src):
            other = [c for c in map(clean_key, getattr(src, "non_tensor_keys", [])) if c is not None]
            return RenamedSource(src, cleaned_names(src.keys()), other)

        src = opened(open_source(weights), renamed)
        shapes = lambda s: {k: s.info(k).shape for k in s.keys()}
        return opened(src, lambda s: config if config is not None else config_from_dict(cfg, shapes(s))), src

    entries = staticmethod(entries)
    extras = staticmethod(extras)

    def ignored(self, key: str) -> bool:
        return False

    def check(self, source, config) -> str:
        return ("  (release keys after cleanup: leading 'model.' stripped, '*metrics*' dropped, 'conv1' → 'conv'; "
                f"model: {config.linear_kind} linear attention at {list(config.linear_layers)}, "
                f"sliding window at {list(config.window_layers)})")

    def tokenizer(self, source, folder):
        """The folder's tokenizer.json if any, else GPT-2 BPE (what the releases were trained with)."""
        return TokenizerFile(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else gpt2_tokenizer()


HAZY = HazyRelease()
