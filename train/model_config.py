"""The model a training config trains: `training_model_config`.

The trainer (`train.trainer.build_model_config`) and the sweep build their model with it, and record the result as
``config.json`` beside their checkpoints (`jrt_jax.runs.write_model_config`), so that readers of a run directory
(`jrt_jax.from_pretrained`, ``jrt export``, ``jrt generate``) take the model from there and need none of these
rules. Directories written before that hold only the training config; `jrt_jax.runs.legacy_model_config` reads
them with the rules below as they were then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from jrt_jax.convert import load_config
from jrt_jax.models import config_from_preset


def training_model_config(config: Mapping):
    """The model config (`JRTConfig` / `LlamaConfig`) a training config dict (`train.config.to_dict`) trains.

    The preset (or the fine-tuned ``model.checkpoint``'s config), ``model.overrides``, the optimiser's compute /
    parameter dtypes, and ``model.rope_scaling`` with, except for dynamic NTK, the context raised to
    ``data.seq_len`` (Position Interpolation and its successors train at the longer length; the pre-trained context
    stays the reference the scaling is computed from — ``original_max_position_embeddings`` for yarn / llama3 /
    longrope — and dynamic NTK reads max_position_embeddings as that context). Bad fields are ValueErrors naming
    them.
    """
    model = dict(config.get("model") or {})
    optim = dict(config.get("optim") or {})
    data = dict(config.get("data") or {})
    if model.get("checkpoint") is not None:
        base = load_config(model["checkpoint"])
    else:
        base = config_from_preset(model.get("preset", "jrt-micro"))
    fields = {f.name for f in dataclasses.fields(base)}
    overrides = dict(model.get("overrides") or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model.overrides: unknown field(s) {unknown} for {type(base).__name__}")
    changes = dict(overrides)
    for key in ("linear_layers", "window_layers"):
        if key in changes and isinstance(changes[key], list):
            changes[key] = tuple(changes[key])
    changes.update(dtype=optim.get("compute_dtype", "float32"), param_dtype=optim.get("param_dtype", "float32"))
    if model.get("rope_scaling") is not None:
        if "rope_scaling" not in fields:
            raise ValueError("model.rope_scaling applies to Llama models only")
        scaling = dict(model["rope_scaling"])
        rope_type = scaling.get("rope_type", scaling.get("type"))
        original = base.max_position_embeddings
        if rope_type != "dynamic":
            if rope_type in ("yarn", "llama3", "longrope"):
                scaling.setdefault("original_max_position_embeddings", original)
            changes["max_position_embeddings"] = max(original, int(data.get("seq_len", 0)))
        changes["rope_scaling"] = scaling
    return dataclasses.replace(base, **changes)
