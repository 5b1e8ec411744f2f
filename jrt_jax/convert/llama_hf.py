"""Hugging Face Llama folders (``config.json`` + ``model.safetensors`` / sharded index / ``pytorch_model.bin``)
↔ `LlamaConfig` / `LlamaLM`.

Keys are those of ``transformers.LlamaForCausalLM``::

    model.embed_tokens.weight [V, d]                     → embed_tokens.embedding
    model.layers.{i}.input_layernorm.weight               → layers.i.input_layernorm.scale
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight       → layers.i.self_attn.*.kernel (transposed); .bias
    model.layers.{i}.post_attention_layernorm.weight      → layers.i.post_attention_layernorm.scale
    model.layers.{i}.mlp.{gate,up,down}_proj.weight        → layers.i.mlp.*.kernel (transposed); .bias
    model.norm.weight                                     → norm.scale
    lm_head.weight [V, d]                                 → lm_head.kernel (untied); with tied embeddings it
                                                            may be present and must equal the embedding

RoPE buffers (``*.rotary_emb.inv_freq``) that older transformers versions saved are ignored, as transformers
does. ``config.json`` is read with `LlamaConfig.from_hf_config` (``rope_scaling`` of every type or
transformers-5 ``rope_parameters``, GQA, ``tie_word_embeddings``, biases).
"""

from __future__ import annotations

from collections.abc import Mapping

from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.formats import open_source, opened
from jrt_jax.convert.mapping import Entry, Extra, identity, tied_head_extra, transpose
from jrt_jax.models import LlamaConfig, param_shapes
from jrt_jax.tokenizer import TokenizerFile

#: model_type values whose checkpoints are Llama-math (same keys, same forward).
LLAMA_MODEL_TYPES = ("llama",)


def is_llama_config(cfg: Mapping) -> bool:
    if not isinstance(cfg, Mapping):
        return False
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") in LLAMA_MODEL_TYPES or "LlamaForCausalLM" in archs


def config_from_dict(cfg: Mapping) -> LlamaConfig:
    """`LlamaConfig` of a Hugging Face Llama ``config.json`` dict; ConversionError naming what is unsupported."""
    try:  # (pretraining_tp only splits the matmuls in transformers; the math is the same, so it is ignored)
        return LlamaConfig.from_hf_config(cfg)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"config.json: {e}") from None


def config_to_dict(c: LlamaConfig, dtype_name: str) -> dict:
    """``config.json`` for `c` (LlamaForCausalLM), with the parameters' dtype as ``torch_dtype``."""
    out = c.to_hf_config()
    out["torch_dtype"] = dtype_name
    return out


def _key(path: str) -> tuple[str, object]:
    if path == "embed_tokens.embedding":
        return "model.embed_tokens.weight", identity
    if path == "lm_head.kernel":
        return "lm_head.weight", transpose
    if path.endswith(".kernel"):
        return "model." + path[: -len(".kernel")] + ".weight", transpose
    if path.endswith(".scale"):
        return "model." + path[: -len(".scale")] + ".weight", identity
    if path.endswith(".bias"):
        return "model." + path, identity
    raise ConversionError(f"internal error: no Hugging Face key for parameter {path}")


def entries(c: LlamaConfig) -> list[Entry]:
    """Every `LlamaLM` parameter with its Hugging Face key, checkpoint shape and layout transforms."""
    out = []
    for path, (shape, _) in param_shapes(c).items():
        key, fn = _key(path)
        ckpt_shape = tuple(reversed(shape)) if fn is transpose else tuple(shape)
        out.append(Entry(path, key, ckpt_shape, fn, fn))
    return out


def extras(c: LlamaConfig) -> list[Extra]:
    return [tied_head_extra("lm_head.weight", "embed_tokens.embedding")] if c.tie_word_embeddings else []


def ignored(key: str) -> bool:
    """Keys transformers itself ignores when loading a Llama."""
    return key.endswith("rotary_emb.inv_freq")


class HFLlama:
    """Hugging Face Llama folders (``config.json`` with model_type "llama"); `jrt_jax.convert.architectures`."""

    name = "llama"
    tokenizer_in_weights = False

    def detect(self, weights, cfg, config=None) -> bool:
        if config is not None:
            return isinstance(config, LlamaConfig)
        return cfg is not None and is_llama_config(cfg)

    def open(self, weights, cfg, config=None):
        src = open_source(weights)
        return opened(src, lambda _: config if config is not None else config_from_dict(cfg)), src

    entries = staticmethod(entries)
    extras = staticmethod(extras)

    ignored = staticmethod(ignored)

    def check(self, source, config) -> str:
        return ""

    def tokenizer(self, source, folder):
        return TokenizerFile(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else None


HF_LLAMA = HFLlama()
