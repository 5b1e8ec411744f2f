"""`from_pretrained` and `load_config`: find the architecture, check every key, stream the tensors in.

The architecture comes from the checkpoint itself:

* a ``.gguf`` file (or a folder holding exactly one, and no other weights) → llama.cpp Llama (`gguf`);
* a folder (or a weights file inside it) whose ``config.json`` is a Hugging Face Llama config
  (``model_type: "llama"`` / ``LlamaForCausalLM``) → `llama_hf`;
* a training run directory (``jrt_run.json``; `jrt_jax.convert.run_checkpoint`), or a step folder inside one →
  the model it recorded, with the step's verified parameters;
* a ``config.json`` in HazyResearch's GPT2 style with ``mixer`` / ``alt_mixer`` fields → `hazy` (JRT-RNN when the
  weights hold prefix-linear-attention encoder projections ``proj_k_enc``, Based otherwise);
* ``preset=`` (a name of `jrt_jax.models.PRESETS`) or ``config=`` (a config object) instead of the file's own
  config: a JRT/Based config reads release key names, a Llama config Hugging Face (or GGUF) key names.

Loading never materialises the whole checkpoint twice: the model is built abstractly (`nnx.eval_shape`), every
key and shape is checked from the file headers (one error naming all problems), then tensors are read, converted
and placed one at a time — onto the default device, or straight into their shardings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from jrt_jax.convert.architectures import FILE_FORMATS, Architecture, find
from jrt_jax.convert.errors import ConversionError, NoTextTokenizer
from jrt_jax.convert.formats import TensorSource
from jrt_jax.convert.mapping import Entry, Extra, check_keys, float_dtype_of, flat_params, stream_into
from jrt_jax.convert.run_checkpoint import TrainingRun
from jrt_jax.convert.sources import locate as _locate
from jrt_jax.convert.sources import read_config as _read_config
from jrt_jax.models import JRTConfig, LlamaConfig, abstract_model, config_from_preset
from jrt_jax.nn.axes import SUGGESTED_RULES
from jrt_jax.nn.dense import DTYPES
from jrt_jax.runs import EXPORT_FILE, split_run_path
from jrt_jax.tokenizer import ByteTokenizer, TokenizerFile

PathLike = str | os.PathLike


@dataclasses.dataclass
class Checkpoint:
    """An opened checkpoint: its architecture, model config, tensor source and key mapping."""

    kind: str  # the architecture's name: "run" | "gguf" | "llama" | "hazy"
    config: JRTConfig | LlamaConfig
    source: TensorSource
    entries: list[Entry]
    extras: list[Extra]
    ignore: Callable[[str], bool]
    folder: pathlib.Path
    explicit_config: bool = False  # the caller passed config= (its dtypes are kept when dtype is None)
    architecture: Architecture | None = None

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"dtype must be one of {sorted(DTYPES)} or None; got {dtype!r}")
        return dtype
    for name, dt in DTYPES.items():
        try:
            if np.dtype(dtype) == np.dtype(dt):
                return name
        except TypeError:
            break
    raise ConversionError(f"dtype must be one of {sorted(DTYPES)} or None; got {dtype!r}")


def _unknown_architecture(cfg: Mapping, where: pathlib.Path) -> ConversionError:
    return ConversionError(
        f"{where / 'config.json'}: unknown architecture (model_type={cfg.get('model_type')!r}, "
        f"architectures={cfg.get('architectures')!r}). Supported: Hugging Face Llama (model_type 'llama'), "
        "HazyResearch JRT / Based (GPT2-style config with mixer / alt_mixer fields), GGUF Llama files; or pass "
        "preset= / --preset to name the model's shape")


def open_checkpoint(path: PathLike, *, preset: str | None = None, config=None) -> Checkpoint:
    """Open `path`, detect its architecture and build the model config and key mapping (no tensor data read).

    `preset` (a preset name) or `config` (a `JRTConfig` / `LlamaConfig`) replace the checkpoint's own config;
    the architecture then follows their type (JRT/Based: release keys; Llama: Hugging Face or GGUF keys).
    """
    path = pathlib.Path(path)
    folder, weights = _locate(path)
    preset_cfg = None
    if preset is not None and config is not None:
        raise ConversionError("give preset= or config=, not both")
    if preset is not None:
        try:
            preset_cfg = config_from_preset(preset)
        except ValueError as e:
            raise ConversionError(str(e)) from None
    elif config is not None:
        if not isinstance(config, (JRTConfig, LlamaConfig)):
            raise ConversionError(f"config must be a JRTConfig or LlamaConfig; got {type(config).__name__}")
        preset_cfg = config
    ckpt = _open(folder, weights, preset_cfg)
    ckpt.explicit_config = config is not None
    return ckpt


def _open(folder, weights, preset_cfg) -> Checkpoint:
    """The `Checkpoint` of a located weights file, with the caller's config (`preset_cfg`) or the file's own.

    A ``.gguf`` file is GGUF without reading ``config.json``; otherwise the caller's config, else config.json,
    decides the architecture.
    """
    arch = find(weights, None, among=ARCHITECTURES)
    cfg = None
    if arch is None:
        cfg = _read_config(folder)
        if preset_cfg is None and cfg is None:
            raise ConversionError(f"{folder}: no config.json; pass preset= (--preset) naming the model's shape, "
                                  "e.g. jrt-360m, jrt-1.3b, based-360m, based-1.3b, smollm2-135m")
        arch = find(weights, cfg, preset_cfg, among=ARCHITECTURES)
        if arch is None:
            raise _unknown_architecture(cfg, folder)
    config, src = arch.open(weights, cfg, preset_cfg)
    return Checkpoint(arch.name, config, src, arch.entries(config), arch.extras(config), arch.ignored, folder,
                      architecture=arch)


def _with_dtype(ckpt: Checkpoint, dtype) -> JRTConfig | LlamaConfig:
    if dtype is None and ckpt.explicit_config:
        return ckpt.config
    present = set(ckpt.source.keys())
    name = _dtype_name(dtype) or float_dtype_of(ckpt.source, [e.key for e in ckpt.entries if e.key in present])
    return dataclasses.replace(ckpt.config, dtype=name, param_dtype=name)


def load_config(path: PathLike, preset: str | None = None, *, dtype=None) -> JRTConfig | LlamaConfig:
    """The model config of a checkpoint (`JRTConfig` or `LlamaConfig`), without loading any tensor.

    `dtype` None takes the checkpoint's floating dtype (float32 for GGUF, and when tensors disagree).
    """
    if preset is None and split_run_path(path) is not None:  # a training run: its recorded config, no array read
        config = RUN.run_config(path)
        name = _dtype_name(dtype) or config.param_dtype  # the parameters are stored in param_dtype
        return dataclasses.replace(config, dtype=name, param_dtype=name)
    with open_checkpoint(path, preset=preset) as ckpt:
        return _with_dtype(ckpt, dtype)


# ------------------------------------------------------------------------------------------------- placement


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def _flat_shardings(shardings) -> dict[str, jax.sharding.Sharding]:
    if isinstance(shardings, Mapping) and all(isinstance(k, str) and isinstance(v, jax.sharding.Sharding)
                                             for k, v in shardings.items()):
        return dict(shardings)
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        shardings, is_leaf=lambda x: isinstance(x, (jax.sharding.Sharding, nnx.Variable)))
    out = {}
    for path, leaf in leaves:
        if isinstance(leaf, nnx.Variable):
            leaf = leaf.get_value()
        if not isinstance(leaf, jax.sharding.Sharding):
            raise ConversionError(f"shardings: leaf at {_path_str(path)} is a {type(leaf).__name__}, not a Sharding")
        out[_path_str(path)] = leaf
    return out


def _spec_from_rules(axes, shape, mesh, rules, path) -> jax.sharding.PartitionSpec:
    spec, used = [], set()
    for dim, name in enumerate(axes or (None,) * len(shape)):
        chosen = None
        for logical, mesh_axis in rules:
            if logical != name:
                continue
            cand = mesh_axis if isinstance(mesh_axis, tuple) else (mesh_axis,)
            unknown = [a for a in cand if a is not None and a not in mesh.shape]
            if unknown:
                raise ConversionError(f"rule ({logical!r}, {mesh_axis!r}) names mesh axis {unknown[0]!r}, which the "
                                      f"mesh {dict(mesh.shape)} does not have")
            if mesh_axis is None or any(a in used for a in cand):
                if mesh_axis is None:
                    break
                continue
            size = int(np.prod([mesh.shape[a] for a in cand]))
            if shape[dim] % size:
                raise ConversionError(f"parameter {path} of shape {tuple(shape)}: dimension {dim} ({shape[dim]}) is "
                                      f"not divisible by mesh axis {mesh_axis!r} of size {size}; change the mesh or "
                                      "the rules")
            chosen = mesh_axis
            used.update(cand)
            break
        spec.append(chosen)
    return jax.sharding.PartitionSpec(*spec)


def _put(arr: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])


def make_placer(model, *, mesh=None, rules=None, shardings=None) -> Callable[[str, np.ndarray], jax.Array]:
    """(path, host array) → device array: default device; a `shardings` tree / dict / single Sharding; or a mesh
    plus logical-axis rules (default `jrt_jax.nn.axes.SUGGESTED_RULES`) applied to each parameter's axis names."""
    if shardings is not None and mesh is not None:
        raise ConversionError("give either shardings= or mesh= (with optional rules=), not both")
    if shardings is None and mesh is None:
        return lambda path, arr: jax.device_put(arr)
    if isinstance(shardings, jax.sharding.Sharding):
        return lambda path, arr: _put(arr, shardings)
    params = flat_params(model)
    if shardings is not None:
        flat = _flat_shardings(shardings)
        missing = sorted(set(params) - set(flat))
        if missing:
            raise ConversionError(f"shardings has no entry for parameter(s) {missing[:8]}"
                                  f"{' …' if len(missing) > 8 else ''}")
        return lambda path, arr: _put(arr, flat[path])
    rules = tuple(tuple(r) for r in (SUGGESTED_RULES if rules is None else rules))
    specs = {}
    for path, var in params.items():
        axes = var.get_metadata().get("out_sharding")
        specs[path] = jax.sharding.NamedSharding(mesh, _spec_from_rules(axes, var.shape, mesh, rules, path))
    return lambda path, arr: _put(arr, specs[path])


# ------------------------------------------------------------------------------------------------- loading


def _check(ckpt: Checkpoint) -> None:
    hint = ckpt.architecture.check(ckpt.source, ckpt.config)
    check_keys(ckpt.source, ckpt.entries, ckpt.extras, ignore=ckpt.ignore, hint=hint)


def from_pretrained(path: PathLike, *, dtype=None, mesh=None, shardings=None, preset: str | None = None,
                    rules: Sequence[tuple[str, str | None]] | None = None, config=None):
    """Load a checkpoint into a Flax NNX model (`JRTLM` or `LlamaLM`).

    Args:
      path: a checkpoint folder (``config.json`` + ``model.safetensors`` / ``model.safetensors.index.json`` /
        ``pytorch_model.bin``; Hugging Face Llama or HazyResearch JRT / Based release), a weights file inside
        one, a ``.gguf`` file, or a training run directory (``jrt train ... checkpoint.dir=RUN``: its newest
        step that verifies; ``RUN/<step>`` for another step).
      dtype: parameter and compute dtype ("float32", "bfloat16", "float16" or a jnp dtype); None keeps the
        checkpoint's (float32 for GGUF, which is dequantized).
      mesh: place parameters sharded over this `jax.sharding.Mesh` by their logical axis names and `rules`
        (default `jrt_jax.nn.axes.SUGGESTED_RULES`).
      shardings: instead of `mesh`: a tree of `jax.sharding.Sharding` shaped like ``nnx.state(model, nnx.Param)``
        (e.g. the trainer's parameter shardings), a dict 'path.to.param' → Sharding, or one Sharding for all.
      preset: a model preset name (`jrt_jax.models.PRESETS`) used instead of ``config.json``.
      rules: logical-axis rules for `mesh`: (logical name, mesh axis or None) pairs.
      config: a `JRTConfig` / `LlamaConfig` to build instead of the checkpoint's own — e.g. `load_config`'s result
        with another ``rope_scaling`` and ``max_position_embeddings`` for Position Interpolation fine-tuning
        (settings without parameters may differ; every parameter must still match the file). Its dtypes are
        kept unless `dtype` is given.

    Raises:
      ConversionError (a ValueError): unknown architecture, unsupported config field, missing / unexpected /
        mis-shaped keys (`KeyMismatchError`, all named at once), truncated or corrupt file, unsupported GGUF type.
    """
    with open_checkpoint(path, preset=preset, config=config) as ckpt:
        _check(ckpt)
        config = _with_dtype(ckpt, dtype)
        model = abstract_model(config)
        placer = make_placer(model, mesh=mesh, rules=rules, shardings=shardings)
        stream_into(model, ckpt.source, ckpt.entries, ckpt.extras, placer=placer)
        return model


def _exported_tokenizer(folder: pathlib.Path):
    """The tokenizer `jrt export` recorded in ``jrt_export.json`` (a folder without tokenizer.json): the byte
    tokenizer, or a ConversionError saying why there is none (synthetic-task runs). None without a record."""
    f = folder / EXPORT_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text()).get("tokenizer") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise ConversionError(f"{f}: unreadable ({e})") from None
    if record.get("kind") == "bytes":
        return ByteTokenizer()
    if record.get("kind") is None:
        reason = record.get("note") or f"{EXPORT_FILE} records none"
        raise NoTextTokenizer(f"{folder}: no tokenizer ({reason})", reason)
    return None


def load_tokenizer(path: PathLike):
    """The tokenizer of a checkpoint: the GGUF file's own, a folder's ``tokenizer.json``, the one a training run
    used (run directory, or what `jrt export` recorded in ``jrt_export.json``), or GPT-2 BPE for the JRT / Based
    releases (which use GPT-2's tokenizer). Same interface as `jrt_jax.tokenizer`."""
    folder, weights = _locate(pathlib.Path(path))
    arch = find(weights, None, among=ARCHITECTURES)
    if arch is None:
        if (folder / "tokenizer.json").is_file():
            return TokenizerFile(folder / "tokenizer.json")
        exported = _exported_tokenizer(folder)
        if exported is not None:
            return exported
        cfg = _read_config(folder)
        arch = find(weights, cfg, among=ARCHITECTURES) if cfg is not None else None
    tok = arch.tokenizer(weights, folder) if arch is not None else None
    if tok is None and (folder / "tokenizer.json").is_file():
        tok = TokenizerFile(folder / "tokenizer.json")
    if tok is None:
        raise ConversionError(f"{folder}: no tokenizer found (no tokenizer.json, not a GGUF file or a JRT/Based "
                              "release)")
    return tok


#: Training run directories, whose fine-tuning bases are opened by this module's own functions.
RUN = TrainingRun(base_config=load_config, base_tokenizer=load_tokenizer)
#: Every checkpoint kind, in detection order: a run directory first, then the file formats.
ARCHITECTURES: tuple[Architecture, ...] = (RUN, *FILE_FORMATS)
