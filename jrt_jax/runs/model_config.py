"""The model a run trains, recorded as ``config.json`` beside its checkpoints, so that readers need no training schema.

The trainer writes it (`write_model_config`) once its checkpoint directory accepts the run. Every field of the
`JRTConfig` / `LlamaConfig` is kept — dtypes, implementation, rope scaling — so `read_model_config` gives back the
exact config the run trained (the release / Hugging Face formats cannot hold them all: the recall presets'
attention layers and MLP-less blocks have no release spelling)::

    {"model_class": "LlamaConfig", "vocab_size": 512, ..., "rope_scaling": {"rope_type": "linear", "factor": 4.0}}

Directories written before runs recorded their model hold only the training config (in every step's metadata, the
same as the run's config.yaml). `legacy_model_config` rebuilds their model by the rules the trainer applied when
they were written: a fixed reading of that older format, which the trainer's own rules (`train.model_config`) may
outgrow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping

from jrt_jax.models import MODELS, config_from_preset
from jrt_jax.runs.layout import MODEL_CONFIG_FILE, PathLike, RunError

CLASS_KEY = "model_class"


def _classes() -> dict[str, type]:
    """Config class name → class, for every model of `jrt_jax.models.MODELS`."""
    return {cls.__name__: cls for cls in MODELS}


def _plain(value):
    """`value` as JSON types: tuples → lists, mappings (rope scaling) → dicts."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def model_config_dict(config) -> dict:
    """The ``config.json`` object of a model config (`JRTConfig`, `LlamaConfig`: a config class of
    `jrt_jax.models.MODELS`): its class name under ``model_class`` and every field."""
    name = type(config).__name__
    if _classes().get(name) is not type(config):
        raise TypeError(f"config must be one of {sorted(_classes())}; got {name}")
    return {CLASS_KEY: name, **{f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}}


def model_config_from_dict(data, where: str = MODEL_CONFIG_FILE):
    """The `JRTConfig` / `LlamaConfig` of a `model_config_dict` object (fields it lacks take their defaults);
    RunError naming `where` and the field when it does not build one."""
    if not isinstance(data, Mapping):
        raise RunError(f"{where}: must hold a JSON object; got {type(data).__name__}")
    name = data.get(CLASS_KEY)
    cls = _classes().get(name) if isinstance(name, str) else None
    if cls is None:
        raise RunError(f"{where}: {CLASS_KEY}={name!r}; expected one of {sorted(_classes())}")
    values = {k: v for k, v in data.items() if k != CLASS_KEY}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise RunError(f"{where}: unknown field(s) {unknown} for {name}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # the layer-index tuples
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise RunError(f"{where}: does not build a {name}: {exc}") from None


def write_model_config(directory: PathLike, config) -> pathlib.Path:
    """Write ``directory/config.json`` for `config` (atomically: a reader sees the old file or the new one)."""
    path = pathlib.Path(directory) / MODEL_CONFIG_FILE
    text = json.dumps(model_config_dict(config), indent=2) + "\n"
    tmp = path.with_name(f".{MODEL_CONFIG_FILE}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_model_config(directory: PathLike):
    """The model config recorded in ``directory/config.json``; None when the directory has none."""
    path = pathlib.Path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    return model_config_from_dict(data, str(path))


def saved_model_config(directory: PathLike, train_config: Mapping, *, base_config: Callable | None = None):
    """The model config of a run's checkpoint directory: its ``config.json``, or for a directory written before
    runs recorded it, the one its saved training config (a step's meta["config"]) builds (`legacy_model_config`)."""
    recorded = read_model_config(directory)
    if recorded is not None:
        return recorded
    return legacy_model_config(train_config, base_config=base_config, run=directory)


def legacy_model_config(train_config: Mapping, *, base_config: Callable | None = None, run: PathLike = "<run>"):
    """The model a run written before ``config.json`` existed trained, from its saved training config.

    The preset (default "jrt-micro"), or for a fine-tune the config of ``model.checkpoint`` — opened by
    `base_config(path)`, which the caller supplies, since this package opens no checkpoints; its errors pass
    through — then ``model.overrides``, the optimiser's compute / parameter dtypes, and ``model.rope_scaling`` with,
    except for dynamic NTK, the context raised to ``data.seq_len`` (yarn / llama3 / longrope keep the pre-trained
    context as ``original_max_position_embeddings``). RunError naming `run` when the config builds no model.
    """
    model = dict(train_config.get("model") or {})
    optim = dict(train_config.get("optim") or {})
    data = dict(train_config.get("data") or {})
    checkpoint = model.get("checkpoint")
    if checkpoint is not None:
        if base_config is None:
            raise RunError(f"{run} was fine-tuned from model.checkpoint={checkpoint} and records no "
                           f"{MODEL_CONFIG_FILE}; rebuilding its model needs that checkpoint's config (pass "
                           "base_config=jrt_jax.convert.load_config)")
        base = base_config(checkpoint)
    try:
        if checkpoint is None:
            base = config_from_preset(model.get("preset", "jrt-micro"))
        return _with_training_fields(base, model, optim, data)
    except (ValueError, TypeError) as exc:
        raise RunError(f"{run}: the saved training config does not build a model: {exc}") from None


def _with_training_fields(base, model: dict, optim: dict, data: dict):
    fields = {f.name for f in dataclasses.fields(base)}
    overrides = dict(model.get("overrides") or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model.overrides: unknown field(s) {unknown} for {type(base).__name__}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
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
