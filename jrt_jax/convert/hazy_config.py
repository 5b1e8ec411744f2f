"""HazyResearch JRT-RNN / Based release configs: the GPT2-style ``config.json`` ↔ `JRTConfig`.

The config fields follow the release's model code (flash-attn's GPT with Hazy's mixers); a field missing from
``config.json`` takes the value that code would use (for instance ``qkv_proj_bias`` defaults to true there, and
``rotary_emb_fraction`` to 0), so a config that would build a different network in the release is refused with
the field named, instead of being loaded into the wrong math. Fields that do not change the forward pass
(dropout, initialisation, fused kernels, residual precision) are ignored. `config_from_dict` reads the backbone,
the layer layout and each mixer (BaseConv, linear attention, sliding window) in a function of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jrt_jax.convert.errors import ConversionError
from jrt_jax.models import JRTConfig

# release class paths, used when writing a config (the loader only checks for recognisable names)
BASECONV_TARGET = "based.models.mixers.convolution.BaseConv"
PLA_TARGET = "based.models.mixers.prefix_linear_attention.PrefixLinearAttention"
BASED_TARGET = "based.models.mixers.linear_attention.LinearAttention"
TAYLOR_TARGET = "based.models.mixers.linear_attention.TaylorExp"
WINDOW_TARGET = "based.models.mixers.slide_attention.SlidingAttention"


def is_hazy_config(cfg: Mapping) -> bool:
    """A GPT2-style config with Hazy's mixer fields (``mixer`` / ``alt_mixer`` / ``alt_mixer_layers``)."""
    if not isinstance(cfg, Mapping):
        return False
    if any(k in cfg for k in ("alt_mixer", "alt_mixer_layers", "alt_mixer_2", "alt_mixer_2_layers")):
        return True
    return "n_embd" in cfg and isinstance(cfg.get("mixer"), Mapping)


def _get(cfg: Mapping, *names, default=None):
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    return default


def _target(spec) -> str:
    return str(spec.get("_target_", "")) if isinstance(spec, Mapping) else ""


def _class_name(spec) -> str:
    """Lower-cased class name of a hydra ``_target_`` ("" when absent)."""
    return _target(spec).rsplit(".", 1)[-1].lower()


def _refuse(field: str, value, why: str):
    raise ConversionError(f"config.json: {field}={value!r}: {why}")


def _require(cfg: Mapping, field: str, wanted, default, why: str, aliases: Sequence[str] = ()):
    """The release reads `field` with `default`; anything but `wanted` builds a different network."""
    value = _get(cfg, field, *aliases, default=default)
    if value != wanted:
        absent = "" if any(n in cfg for n in (field, *aliases)) else " (absent: the release's default)"
        _refuse(field, value, f"{why}{absent}; only {wanted!r} is supported")
    return value


def config_from_dict(cfg: Mapping, shapes: Mapping[str, tuple] | None = None) -> JRTConfig:
    """`JRTConfig` of a HazyResearch GPT2-style config dict.

    Args:
      cfg: the ``config.json`` dict.
      shapes: cleaned checkpoint key → shape, when the weights are at hand. Used to tell JRT from Based
        (``proj_k_enc`` present ↔ prefix linear attention) and to fill sizes the config leaves out
        (``n_inner``, BaseConv's ``expand_proj`` / kernel size).
    Raises:
      ConversionError naming the field for anything the model here cannot compute.
    """
    if not isinstance(cfg, Mapping):
        raise ConversionError(f"config.json must hold a JSON object; got {type(cfg).__name__}")
    shapes = dict(shapes or {})
    d = _get(cfg, "n_embd", "hidden_size")
    n_layer = _get(cfg, "n_layer", "num_hidden_layers")
    for name, v in (("n_embd", d), ("n_layer", n_layer)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            _refuse(name, v, "must be a positive int")
    try:
        fields = _backbone(cfg)
        linear_layers, window_layers, conv_layers = _layout(cfg, n_layer)
        fields.update(_base_conv(cfg.get("mixer"), _mixer_shapes(shapes, conv_layers), d))
        fields.update(_linear_attention(cfg, shapes, linear_layers, d))
        fields.update(_sliding_window(cfg, window_layers, d, fields["num_heads"]))
        return JRTConfig(d_model=d, n_layers=n_layer, n_inner=_n_inner(cfg, shapes), linear_layers=linear_layers,
                         window_layers=window_layers, **fields)
    except ConversionError:
        raise
    except ValueError as e:
        raise ConversionError(f"config.json describes an impossible JRT/Based model: {e}") from None


def _backbone(cfg: Mapping) -> dict:
    """The shared GPT backbone: refuse the settings that change its math; its vocabulary, norm epsilon and init."""
    act = _get(cfg, "activation_function", default="gelu_new")
    if act != "swiglu":
        absent = "" if "activation_function" in cfg else " (absent: GPT-2's default)"
        _refuse("activation_function", act, f"the JRT/Based MLP is SwiGLU{absent}; only 'swiglu' is supported")
    _require(cfg, "rms_norm", True, False, "false means LayerNorm")
    _require(cfg, "prenorm", True, True, "post-norm blocks")
    _require(cfg, "parallel_block", False, False, "parallel attention/MLP blocks")
    for field in ("mlp_fc1_bias", "mlp_fc2_bias"):
        _require(cfg, field, False, True, "the MLP here has no biases")
    _require(cfg, "fused_mlp", False, False, "fused MLPs are gelu/relu MLPs, not SwiGLU")
    _require(cfg, "fused_dense_sqrelu_dense", False, False, "a squared-ReLU MLP")
    _require(cfg, "mlp_type", "base", "base", "an MLP variant other than the release's")
    _require(cfg, "tie_word_embeddings", True, True, "the LM head here is tied to the embedding")
    _require(cfg, "lm_head_bias", False, False, "the LM head here has no bias")
    _require(cfg, "word_embed_proj_dim", None, None, "a projected embedding")
    _require(cfg, "fixed_decay", False, False, "decayed linear attention")
    pos = _get(cfg, "max_position_embeddings", "n_positions", default=1024)
    if pos != 0:
        absent = "" if any(k in cfg for k in ("max_position_embeddings", "n_positions")) else \
            " (absent: GPT-2's default 1024)"
        _refuse("max_position_embeddings", pos, f"> 0 adds learned absolute position embeddings{absent}; "
                "the JRT/Based models have none (the release uses 0)")
    vocab = _get(cfg, "vocab_size", default=50257)
    multiple = _get(cfg, "pad_vocab_size_multiple", default=1)
    return {"vocab_size": int(math.ceil(vocab / multiple) * multiple),
            "norm_eps": float(_get(cfg, "layer_norm_epsilon", "layer_norm_eps", default=1e-5)),
            "init_std": float(_get(cfg, "initializer_range", default=0.02))}


def _layout(cfg: Mapping, n_layer: int) -> tuple[tuple, tuple, list[int]]:
    """(linear-attention layers, sliding-window layers, BaseConv layers), each kind's mixer config required."""
    linear_layers = tuple(_get(cfg, "alt_mixer_layers", default=()) or ())
    window_layers = tuple(_get(cfg, "alt_mixer_2_layers", default=()) or ())
    both = sorted(set(linear_layers) & set(window_layers))
    if both:
        _refuse("alt_mixer_layers", list(linear_layers), f"layers {both} are also in alt_mixer_2_layers (the "
                "release would build sliding-window attention there); a layer can have one mixer")
    mixer, alt, alt2 = cfg.get("mixer"), cfg.get("alt_mixer"), cfg.get("alt_mixer_2")
    others = [i for i in range(n_layer) if i not in linear_layers and i not in window_layers]
    if others and not isinstance(mixer, Mapping):
        _refuse("mixer", mixer, f"layers {others[:5]}… would be standard multi-head attention in the release; "
                "only the BaseConv mixer is supported there")
    if linear_layers and not isinstance(alt, Mapping):
        _refuse("alt_mixer", alt, "alt_mixer_layers are set, so the release would build standard attention there")
    if window_layers and not isinstance(alt2, Mapping):
        _refuse("alt_mixer_2", alt2, "alt_mixer_2_layers are set, so the release would build standard attention "
                "there")
    return linear_layers, window_layers, others


def _mixer_shapes(shapes: Mapping[str, tuple], layers: Sequence[int]) -> dict[str, tuple]:
    """{key below ``mixer.``: shape} of the first of `layers` (empty without weights or layers)."""
    if not layers:
        return {}
    prefix = f"transformer.layers.{layers[0]}.mixer."
    return {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}


def _base_conv(mixer, seen: Mapping[str, tuple], d: int) -> dict:
    """BaseConv's kernel size, expansion and bias (`seen`: a BaseConv layer's mixer shapes, to fill what
    ``mixer`` leaves out); the release's defaults when no layer is BaseConv."""
    if not isinstance(mixer, Mapping):
        return {"conv_kernel": 3, "conv_expand": 4, "conv_bias": True}
    if _target(mixer) and "conv" not in _class_name(mixer):
        _refuse("mixer._target_", _target(mixer), "only the BaseConv mixer is supported")
    expand = _get(mixer, "expand_proj", default=None)
    if expand is None:
        if "in_proj.weight" not in seen:
            raise ConversionError("config.json: mixer.expand_proj is absent and no weights are at hand to infer it")
        expand = seen["in_proj.weight"][0] // d
    kernel = _get(mixer, "kernel_size", default=None)
    if kernel is None:
        kernel = seen["conv.conv.weight"][-1] if "conv.conv.weight" in seen else 3
    if isinstance(kernel, (list, tuple)):
        _refuse("mixer.kernel_size", kernel, "one kernel size is supported")
    return {"conv_kernel": int(kernel), "conv_expand": int(expand),
            "conv_bias": bool(_get(mixer, "use_bias", default=True))}


def _linear_attention(cfg: Mapping, shapes: Mapping[str, tuple], linear_layers: tuple, d: int) -> dict:
    """The (prefix) linear-attention mixer ``alt_mixer``: heads, feature map and which kind (JRT or Based)."""
    alt = cfg.get("alt_mixer")
    fields = {"feature_dim": 16, "num_heads": 16, "enc_len": 1024, "linear_eps": 1e-12, "linear_kind": "causal"}
    if not isinstance(alt, Mapping):
        return fields
    target = _class_name(alt)
    if target and not any(s in target for s in ("linear", "pla", "prefix")):
        _refuse("alt_mixer._target_", _target(alt), "only (prefix) linear attention is supported there")
    feature_dim = int(_get(alt, "feature_dim", default=16))
    num_heads = int(_get(alt, "num_heads", default=16))
    linear_eps = float(_get(alt, "eps", default=1e-12))
    scale_dim = _get(alt, "scale_dim")
    if scale_dim is not None and scale_dim != feature_dim:
        _refuse("alt_mixer.scale_dim", scale_dim, f"the Taylor map here scales by the feature dim {feature_dim}")
    head_dim = _get(alt, "head_dim")
    if head_dim is not None and head_dim * num_heads != d:
        _refuse("alt_mixer.head_dim", head_dim, f"value heads must be n_embd / num_heads = {d // num_heads}")
    kv_heads = _get(alt, "num_key_value_heads")
    if kv_heads is not None and kv_heads != num_heads:
        _refuse("alt_mixer.num_key_value_heads", kv_heads, "grouped linear attention is not supported")
    _require(alt, "use_decay_proj", False, False, "decayed linear attention")
    _check_feature_map(alt, feature_dim)
    enc = _get(alt, "enc_length", default=_get(cfg, "enc_length"))
    kind = _linear_kind(alt, target, enc, shapes, linear_layers)
    if kind == "prefix" and enc is None:
        _refuse("alt_mixer.enc_length", None, "prefix linear attention needs the encoder length "
                "(alt_mixer.enc_length or enc_length)")
    fields.update(feature_dim=feature_dim, num_heads=num_heads, linear_eps=linear_eps, linear_kind=kind)
    if enc is not None:
        fields["enc_len"] = int(enc)
    return fields


def _check_feature_map(alt: Mapping, feature_dim: int) -> None:
    fmap = alt.get("feature_map")
    fname = _target(fmap) if isinstance(fmap, Mapping) else (fmap if isinstance(fmap, str) else "")
    fname = fname or str(_get(alt, "feature_name", default=""))
    if fname and "taylor" not in fname.lower():
        _refuse("alt_mixer.feature_map", fname, "only the second-order Taylor feature map is supported")
    if isinstance(fmap, Mapping) and _get(fmap, "input_dim") not in (None, feature_dim):
        _refuse("alt_mixer.feature_map.input_dim", fmap["input_dim"], f"must equal feature_dim {feature_dim}")


def _linear_kind(alt: Mapping, target: str, enc, shapes: Mapping[str, tuple], linear_layers: tuple) -> str:
    """JRT ("prefix") or Based ("causal"): the mixer's class (or its enc_length) when the config says; otherwise
    the weights (PLA layers have encoder projections proj_k_enc); otherwise a top-level enc_length. When the config
    names one kind and the weights hold the other, the key check reports the difference by name."""
    if target.startswith(("prefix", "pla")) or _get(alt, "enc_length") is not None:
        return "prefix"
    if target or isinstance(alt.get("feature_map"), Mapping):
        return "causal"
    if shapes and linear_layers:
        return "prefix" if any(k.endswith(".mixer.proj_k_enc.weight") for k in shapes) else "causal"
    return "prefix" if enc is not None else "causal"


def _sliding_window(cfg: Mapping, window_layers: tuple, d: int, num_heads: int) -> dict:
    """The sliding-window mixer ``alt_mixer_2``: window, heads and RoPE base."""
    alt2 = cfg.get("alt_mixer_2")
    n_head = _get(cfg, "n_head", "num_attention_heads")
    fields = {"window": 64, "window_heads": n_head or num_heads, "rope_base": 10000.0}
    if not isinstance(alt2, Mapping):
        return fields
    target = _class_name(alt2)
    if target and not any(s in target for s in ("slid", "window", "local")):
        _refuse("alt_mixer_2._target_", _target(alt2), "only sliding-window attention is supported there")
    window_size = int(_get(alt2, "window_size", default=128))
    if window_size == 4096 and set(window_layers) & {7, 17}:
        _refuse("alt_mixer_2.window_size", window_size, "the release then uses a window of 256 at layers 7 and "
                "17 only; per-layer windows are not supported")
    fields["window"] = window_size // 2  # flash-attn window_size=(window_size // 2, 0): that many keys back
    if n_head is None:
        _refuse("n_head", None, "the sliding-window heads come from n_head in the release")
    fields["window_heads"] = window_heads = int(n_head)
    head_dim = _get(cfg, "head_dim", default=d // window_heads)
    if head_dim * window_heads != d:
        _refuse("head_dim", head_dim, f"must be n_embd / n_head = {d // window_heads}")
    if window_layers:
        _check_window_attention(cfg, window_heads)
        fields["rope_base"] = float(_get(cfg, "rotary_emb_base", default=10000.0))
    return fields


def _check_window_attention(cfg: Mapping, window_heads: int) -> None:
    """The release's attention settings the sliding-window layers here compute (no biases, scaled logits, full
    rotate-half RoPE, as many key/value heads as query heads)."""
    for field in ("qkv_proj_bias", "out_proj_bias"):
        _require(cfg, field, False, True, "the sliding-window projections here have no biases")
    _require(cfg, "scale_attn_weights", True, True, "unscaled attention logits")
    _require(cfg, "scale_attn_by_inverse_layer_idx", False, False, "per-layer attention scaling")
    frac = _get(cfg, "rotary_emb_fraction", default=0.0)
    if float(frac) != 1.0:
        absent = "" if "rotary_emb_fraction" in cfg else " (absent: the release's default 0, no RoPE)"
        _refuse("rotary_emb_fraction", frac, f"the sliding-window layers here rotate the full head{absent}; "
                "only 1 is supported")
    _require(cfg, "rotary_emb_interleaved", False, False, "interleaved (GPT-J) rotary layout")
    _require(cfg, "rotary_emb_scale_base", None, None, "XPos rotary scaling")
    kv = _get(cfg, "n_head_kv")
    if kv is not None and kv != window_heads:
        _refuse("n_head_kv", kv, "grouped-query sliding-window attention is not supported")


def _n_inner(cfg: Mapping, shapes: Mapping[str, tuple]) -> int:
    """The MLP's hidden size: ``n_inner``, else half of layer 0's fc1 rows."""
    n_inner = _get(cfg, "n_inner")
    if n_inner is None:
        fc1 = shapes.get("transformer.layers.0.mlp.fc1.weight")
        if fc1 is None:
            raise ConversionError("config.json: n_inner is absent and no weights are at hand to infer it")
        n_inner = fc1[0] // 2
    return int(n_inner)


def config_to_dict(c: JRTConfig) -> dict:
    """A release-style ``config.json`` dict for `c` (reads back to the same `JRTConfig` with `config_from_dict`)."""
    check_release_layout(c)
    if c.linear_kind == "prefix":
        alt = {"_target_": PLA_TARGET, "feature_dim": c.feature_dim, "num_heads": c.num_heads,
               "enc_length": c.enc_len, "eps": c.linear_eps}
    else:
        alt = {"_target_": BASED_TARGET, "feature_dim": c.feature_dim, "num_heads": c.num_heads, "eps": c.linear_eps,
               "feature_map": {"_target_": TAYLOR_TARGET, "input_dim": c.feature_dim}}
    out = {
        "model_type": "gpt2",
        "architectures": ["GPTLMHeadModel"],
        "n_embd": c.d_model,
        "n_head": c.window_heads,
        "n_layer": c.n_layers,
        "n_inner": c.n_inner,
        "vocab_size": c.vocab_size,
        "pad_vocab_size_multiple": 8 if c.vocab_size % 8 == 0 else 1,
        "max_position_embeddings": 0,
        "n_positions": 0,
        "activation_function": "swiglu",
        "rms_norm": True,
        "layer_norm_epsilon": c.norm_eps,
        "residual_in_fp32": True,
        "prenorm": True,
        "tie_word_embeddings": True,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "qkv_proj_bias": False,
        "out_proj_bias": False,
        "scale_attn_weights": True,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_base": c.rope_base,
        "rotary_emb_interleaved": False,
        "initializer_range": c.init_std,
        "alt_mixer_layers": list(c.linear_layers),
        "alt_mixer_2_layers": list(c.window_layers),
        "mixer": {"_target_": BASECONV_TARGET, "kernel_size": c.conv_kernel, "expand_proj": c.conv_expand,
                  "use_bias": c.conv_bias},
        "alt_mixer": alt,
        "alt_mixer_2": {"_target_": WINDOW_TARGET, "window_size": 2 * c.window, "num_heads": c.window_heads},
    }
    out["enc_length"] = c.enc_len  # read by PLA; kept for Based too so the config round-trips exactly
    return out


def check_release_layout(c: JRTConfig) -> None:
    """The release format has no full-attention mixer and no MLP-less block (the recall presets have both)."""
    if c.attention_layers:
        raise ConversionError(f"attention_layers={list(c.attention_layers)}: the HazyResearch release format has no "
                              "full-attention mixer; this model cannot be written as a JRT/Based release")
    if not c.mlp:
        raise ConversionError("mlp=False: the HazyResearch release format has an MLP in every block; this model "
                              "cannot be written as a JRT/Based release")
