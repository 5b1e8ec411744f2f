"""Training run directories (``jrt train name=mqar`` → ``runs/mqar``) as checkpoints: read-only, verified.

    model = jrt_jax.from_pretrained("runs/mqar")                    # the newest step whose parameters verify
    model = jrt_jax.from_pretrained("runs/mqar/checkpoints/300")    # step 300 (a step folder)
    tok = jrt_jax.convert.load_tokenizer("runs/mqar")   # the tokenizer the run trained with

A run's checkpoint directory (``runs/mqar/checkpoints``, or any ``checkpoint.dir``) is recognised by its owner
file ``jrt_run.json`` (`OWNER_FILE`); the run directory around it stands for it. Its steps are orbax checkpoints
``RUN/<step>/`` holding ``state`` (every array of the training state as a flat {key: array} dict, keys written by
`jax.tree_util.keystr`: ``['params']['layers'][0]['mlp']['fc1']['kernel'].value``) and ``meta`` (JSON: the step,
the full training config under "config", every array's shape / dtype / digest, and a SHA-256 of itself). Only the
parameters are read (an orbax partial restore; the optimizer state is left on disk), each is checked against
its saved digest, and nothing in the directory is written. This module is the reading side of that format;
``train.checkpoint`` writes it and imports the digest from here, so that the two cannot drift apart.

The model config is rebuilt from the saved training config (`run_model_config`: the preset or fine-tuned
checkpoint, ``model.overrides``, ``model.rope_scaling``, the optimiser's dtypes — the same rules as
`training_model_config`, which the trainer uses as well). The tokenizer is the one the run's data were encoded with
(`run_tokenizer`): ``data.tokenizer`` for text, the prepared directory's for ``data.kind=tokens``, the base
checkpoint's for a fine-tune, none for the synthetic tasks.

Why here and not in ``train``: ``jrt_jax`` never imports ``train``, yet `jrt_jax.from_pretrained` and
``jrt generate --checkpoint`` accept a run directory. The `RUN` architecture plugs it into
`jrt_jax.convert.architectures`, so every reader of checkpoints (from_pretrained, load_config, load_tokenizer,
``jrt convert``, ``jrt generate``) takes run directories with no extra flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jrt_jax.convert.errors import ConversionError, NoTextTokenizer
from jrt_jax.convert.formats import TensorInfo, TensorSource
from jrt_jax.convert.mapping import Entry

PathLike = str | os.PathLike

OWNER_FILE = "jrt_run.json"  # written by the first run in a checkpoint directory
CHECKPOINTS_SUBDIR = "checkpoints"  # where `jrt train` keeps a run directory's checkpoints by default
META_FORMAT = 2  # 1 (implicit): no digests; 2: array digests + meta_sha256
PARAMS_PREFIX = "['params']"  # the parameters' keys in a step's flat state
EXPORT_FILE = "jrt_export.json"  # what `jrt export` records next to the weights (run, step, tokenizer)


# ------------------------------------------------------------------------------------------------ digests
# The integrity checks of train.checkpoint (see its docstring): defined once, here, for the writer and readers.

_U32 = jnp.uint32


def _bits(x):
    """The bits of every element as uint32 words (a trailing axis for 8-byte dtypes)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    dt = np.dtype(x.dtype)
    if dt == np.bool_:
        return x.astype(_U32)
    if dt.itemsize == 4:
        return lax.bitcast_convert_type(x, _U32)
    if dt.itemsize == 2:
        return lax.bitcast_convert_type(x, jnp.uint16).astype(_U32)
    if dt.itemsize == 1:
        return lax.bitcast_convert_type(x, jnp.uint8).astype(_U32)
    return lax.bitcast_convert_type(x, _U32)  # 8 bytes → [..., 2]


def _flat_index(shape):
    """The row-major flat index of every element, modulo 2**32."""
    index = jnp.zeros(shape, _U32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(_U32, shape, axis) * _U32(stride % 2**32)
        stride *= shape[axis]
    return index


def _digest(x):
    """(uint32[2] digest, all-finite flag) of one array; see train.checkpoint's docstring."""
    b = _bits(x)
    i = _flat_index(b.shape)
    h1 = jnp.sum((b ^ (i * _U32(0x9E3779B9) + _U32(0x7F4A7C15))) * _U32(0x85EBCA6B), dtype=_U32)
    t = (b + i * _U32(0xC2B2AE35) + _U32(0x165667B1)) * _U32(0x27D4EB2F)
    h2 = jnp.sum((t << _U32(13)) | (t >> _U32(19)), dtype=_U32)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
    return jnp.stack([h1, h2]), finite


@jax.jit
def _digests_jit(flat: dict) -> dict:
    """{key: (digest, finite)} of a dict of arrays in one program (one compilation per state structure)."""
    return {k: _digest(v) for k, v in flat.items()}


def _host(x) -> np.ndarray:
    """A small replicated jit output as a host array, on every process."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def _device_set(x):
    return frozenset(x.sharding.device_set) if isinstance(x, jax.Array) else None


def array_digests(flat: dict) -> tuple[dict, list[str]]:
    """({key: "xxxxxxxxxxxxxxxx" (64-bit hex)}, [keys holding non-finite values]) of a flat dict of arrays
    (jax arrays, computed on their devices — all processes must call it in multi-process jobs — or host arrays,
    computed on the default device).

    All arrays on the same devices are digested by ONE program, and its results are read before the next
    program starts. One program per array (as before) put dozens of small multi-device programs in flight at
    once, and on simulated CPU devices that deadlocked: a device's launch of one program's part waited for one of
    the device's in-flight-computation slots, while its peers waited for it in an all-reduce (a py-spy / gdb
    dump of the hung `jrt train` on mesh (2, 2, 2): six device threads in AllReduce, two in
    `Semaphore::Acquire` of `CpuPjRtRawLoadedExecutable::Execute`; measured 2026-12-04)."""
    groups: dict = {}
    for key, value in flat.items():
        groups.setdefault(_device_set(value), {})[key] = value
    digests, nonfinite = {}, []
    for group in groups.values():
        for key, (digest, finite) in _digests_jit(group).items():
            h = _host(digest).astype(np.uint64)
            digests[key] = f"{int(h[0]):08x}{int(h[1]):08x}"
            if not bool(_host(finite)):
                nonfinite.append(key)
    bad = set(nonfinite)
    return {k: digests[k] for k in flat}, [k for k in flat if k in bad]


def meta_sha256(meta: dict) -> str:
    """The SHA-256 a step's metadata carries of itself (every field but ``meta_sha256``)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- recognising


def is_run_dir(path: PathLike) -> bool:
    """Whether `path` is a training run directory (holds ``jrt_run.json``)."""
    path = pathlib.Path(path)
    return path.is_dir() and (path / OWNER_FILE).is_file()


def split_run_path(path: PathLike) -> tuple[pathlib.Path, int | None] | None:
    """(checkpoint directory, step or None) when `path` is a run's checkpoint directory, the run directory
    `jrt train` made around it (holding ``checkpoints/``), or a step folder inside one; else None."""
    path = pathlib.Path(path)
    if is_run_dir(path):
        return path, None
    if is_run_dir(path / CHECKPOINTS_SUBDIR):
        return path / CHECKPOINTS_SUBDIR, None
    if path.is_dir() and path.name.isdigit() and is_run_dir(path.parent):
        return path.parent, int(path.name)
    return None


def not_a_run(path: PathLike) -> str:
    """Why `path` is not readable as a training run: one line for a ConversionError."""
    p = pathlib.Path(path)
    if not p.exists():
        return f"{p} does not exist"
    if (p / "config.yaml").is_file() and not p.joinpath(CHECKPOINTS_SUBDIR, OWNER_FILE).is_file():
        return (f"{p} is a jrt train run directory with no checkpoint (the run had checkpoint.dir=null or stopped "
                "before its first save)")
    return (f"{p} is not a training run directory (no {OWNER_FILE} in it or in {CHECKPOINTS_SUBDIR}/; `jrt train` "
            "writes one with the first checkpoint)")


@contextlib.contextmanager
def _quiet():
    """Orbax logs a warning for every read-only manager ("Given directory is read only") and pages of tracebacks
    for unreadable steps; the errors raised here say what failed in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class CorruptStep(ConversionError):
    """A step whose metadata or parameters cannot be read or do not match their checksums."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class RunDir:
    """A run directory opened read-only: its steps, each step's verified metadata and parameters.

    Use as a context manager (releases orbax's manager). Raises ConversionError (one line) when `path` is not a
    run directory or cannot be opened.
    """

    def __init__(self, path: PathLike):
        import orbax.checkpoint as ocp

        self.path = pathlib.Path(path).expanduser().absolute()
        if not is_run_dir(self.path):
            raise ConversionError(not_a_run(self.path))
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                               enable_async_checkpointing=False)
        try:
            with _quiet():
                self.manager = ocp.CheckpointManager(
                    self.path, options=options,
                    item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        except Exception as exc:
            raise ConversionError(f"{self.path}: the run's checkpoints cannot be listed: {_one_line(exc)}") from exc

    def close(self) -> None:
        with _quiet():
            self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def owner(self) -> dict:
        try:
            data = json.loads((self.path / OWNER_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{self.path / OWNER_FILE}: unreadable ({_one_line(exc)})") from None
        return data if isinstance(data, dict) else {}

    def steps(self) -> list[int]:
        """The finished steps, ascending."""
        return sorted(int(s) for s in self.manager.all_steps())

    def meta(self, step: int) -> dict:
        """The verified JSON metadata of `step` (no arrays are read)."""
        if step not in self.steps():
            raise ConversionError(f"checkpoint step {step} does not exist in {self.path} (steps: {self.steps()})")
        ocp = self._ocp
        try:
            with _quiet():
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as exc:
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata cannot be read: "
                              f"{_one_line(exc)}") from exc
        if not isinstance(meta, dict):
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata is not a JSON object")
        meta = dict(meta)
        if "meta_sha256" in meta and meta["meta_sha256"] != meta_sha256(meta):
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata does not match its SHA-256")
        if meta.get("format", 1) >= META_FORMAT and "meta_sha256" not in meta:
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata lacks its SHA-256")
        if not isinstance(meta.get("config"), dict):
            raise ConversionError(f"checkpoint step {step} in {self.path} has no saved config in its metadata")
        return meta

    def param_infos(self, step: int, meta: dict) -> dict[str, TensorInfo]:
        """{state key: shape and dtype} of the parameters of `step` (from the metadata, or orbax's for steps
        written before digests existed)."""
        arrays = meta.get("arrays")
        if arrays is None:
            with _quiet():
                tree = self.manager.item_metadata(step)["state"]
            tree = getattr(tree, "tree", tree)
            arrays = {k: {"shape": list(v.shape), "dtype": str(np.dtype(v.dtype))} for k, v in tree.items()}
        return {k: TensorInfo(tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in arrays.items()
                if k.startswith(PARAMS_PREFIX)}

    def read_params(self, step: int, meta: dict) -> dict[str, np.ndarray]:
        """{state key: host array} of every parameter of `step`, each checked against its saved digest."""
        ocp = self._ocp
        infos = self.param_infos(step, meta)
        if not infos:
            raise ConversionError(f"checkpoint step {step} in {self.path} holds no parameters")
        item = {k: np.zeros((), info.dtype) for k, info in infos.items()}
        restore_args = {k: ocp.RestoreArgs(restore_type=np.ndarray) for k in infos}
        try:
            with _quiet():
                restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True)))
            flat = {k: np.asarray(v) for k, v in dict(restored.state).items()}
        except Exception as exc:
            raise CorruptStep(f"checkpoint step {step} in {self.path}: parameters cannot be read: "
                              f"{_one_line(exc)}") from exc
        for k, info in infos.items():
            if k not in flat or tuple(flat[k].shape) != info.shape or flat[k].dtype != info.dtype:
                raise CorruptStep(f"checkpoint step {step} in {self.path}: {k} does not read back as "
                                  f"{info.dtype}{list(info.shape)}")
        saved = meta.get("arrays")
        if saved is not None:
            digests, nonfinite = array_digests(flat)
            bad = [k for k in flat if digests[k] != saved[k].get("digest")]
            if bad:
                raise CorruptStep(f"checkpoint step {step} in {self.path}: {len(bad)} parameter(s) do not "
                                  f"match their saved digest, e.g. {bad[0]}")
            if nonfinite:
                raise CorruptStep(f"checkpoint step {step} in {self.path}: non-finite values in {nonfinite[0]}")
        return flat


# ------------------------------------------------------------------------------------------- model config


def _fine_tune_base(path: str, run: pathlib.Path) -> pathlib.Path:
    p = pathlib.Path(path).expanduser()
    if p.exists():
        return p
    raise ConversionError(f"{run} was fine-tuned from model.checkpoint={path}, which does not exist (from "
                          f"{pathlib.Path.cwd()}); its config.json is needed to rebuild the model. Run from the "
                          "directory the run was started in, or restore that checkpoint")


def training_model_config(config: Mapping, *, run: PathLike | None = None):
    """The model config (`JRTConfig` / `LlamaConfig`) a training config dict (`train.config.to_dict`, or a saved
    meta["config"]) trains: the preset (or the fine-tuned checkpoint's config) + ``model.overrides``, the
    optimiser's compute / parameter dtypes, and ``model.rope_scaling`` with, except for dynamic NTK, the context
    raised to ``data.seq_len`` (Position Interpolation and its successors train at the longer length; the
    pre-trained context stays the reference the scaling is computed from, and dynamic NTK reads
    max_position_embeddings as that context). The trainer builds its model with this function too.

    run: the run directory the config was saved in (a missing fine-tuning base is then reported against it);
    None when the config is about to be trained. Bad fields are ValueErrors naming them.
    """
    from jrt_jax.models import config_from_preset

    model = dict(config.get("model") or {})
    optim = dict(config.get("optim") or {})
    data = dict(config.get("data") or {})
    if model.get("checkpoint") is not None:
        from jrt_jax.convert.loader import load_config

        base = load_config(model["checkpoint"] if run is None
                           else _fine_tune_base(model["checkpoint"], pathlib.Path(run)))
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


def run_model_config(config: Mapping, run: PathLike = "<run>"):
    """`training_model_config` of a run's saved config; errors are ConversionErrors naming the run."""
    try:
        return training_model_config(config, run=run)
    except ConversionError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"{run}: the saved training config does not build a model: {exc}") from None


# ----------------------------------------------------------------------------------------------- tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizerRecord:
    """Which tokenizer a run's token ids belong to.

    kind: "gpt2" (GPT-2 BPE), "bytes" (`jrt_jax.tokenizer.ByteTokenizer`), "file" (a Hugging Face tokenizer.json
      at `file`), "checkpoint" (the tokenizer of the fine-tuned checkpoint at `file`) or None (synthetic task
      symbols: no text tokenizer).
    bos / eos / pad: special token ids (None when the tokenizer has none; eos may be a list, as in Hugging Face
      configs).
    source: where the answer came from (a config field), for the export record. note: why there is none.
    """

    kind: str | None
    file: str | None = None
    bos: int | None = None
    eos: int | list[int] | None = None
    pad: int | None = None
    source: str = ""
    note: str = ""

    def load(self):
        """The tokenizer (`jrt_jax.tokenizer` interface); NoTextTokenizer (a ConversionError) when there is none,
        ConversionError when it cannot load."""
        from jrt_jax import tokenizer as tk

        if self.kind == "bytes":
            return tk.ByteTokenizer()
        if self.kind == "gpt2":
            try:
                return tk.gpt2_tokenizer()
            except RuntimeError as exc:
                raise ConversionError(str(exc).splitlines()[0]) from None
        if self.kind == "file":
            return tk.TokenizerFile(self.file)
        if self.kind == "checkpoint":
            from jrt_jax.convert.loader import load_tokenizer

            return load_tokenizer(self.file)
        raise NoTextTokenizer(f"no tokenizer: {self.note}", self.note)

    def to_json(self) -> dict:
        return {"kind": self.kind, "bos_token_id": self.bos, "eos_token_id": self.eos, "pad_token_id": self.pad,
                "source": self.source, **({"note": self.note} if self.note else {})}


def _ids_of(tok) -> tuple[int | None, int | None, int | None]:
    """(bos, eos, pad) of a loaded tokenizer. Documents are separated by end-of-text in the training data (and in
    GPT-2's own config bos = eos), so bos is the end-of-text id unless the tokenizer names its own."""
    eos = getattr(tok, "eos_id", None)
    bos = getattr(tok, "bos_id", None)
    return (eos if bos is None else bos), eos, getattr(tok, "pad_id", None)


def _checkpoint_ids(base: pathlib.Path, ids: tuple) -> tuple:
    """(bos, eos, pad) of a fine-tuned checkpoint: what its config.json / generation_config.json say (a Hugging
    Face folder knows its ids better than a guess from token names), else `ids` (from its tokenizer)."""
    from jrt_jax.convert.sources import locate

    names = ("bos_token_id", "eos_token_id", "pad_token_id")
    found = dict(zip(names, ids))
    folder = locate(base)[0]
    for name in ("config.json", "generation_config.json"):  # the generation config wins
        try:
            data = json.loads((folder / name).read_text()) if (folder / name).is_file() else {}
        except (OSError, ValueError):
            continue
        for key in names:
            value = data.get(key) if isinstance(data, dict) else None
            if isinstance(value, int) or (isinstance(value, list) and value and all(isinstance(v, int) for v in value)):
                found[key] = value
    return tuple(found[k] for k in names)


def run_tokenizer_record(config: Mapping, run: PathLike) -> TokenizerRecord:
    """The `TokenizerRecord` of a run from its saved training config (see the module docstring).

    Order: the fine-tuned checkpoint's tokenizer (``model.checkpoint``, when it has one), a ``tokenizer.json``
    in the run directory, then the data: ``data.tokenizer`` for text, the prepared directory's tokenizer for
    ``data.kind=tokens``, none for the synthetic tasks.
    """
    from jrt_jax import tokenizer as tk

    run = pathlib.Path(run)
    model = dict(config.get("model") or {})
    data = dict(config.get("data") or {})
    kind = data.get("kind")
    ckpt = model.get("checkpoint")
    # The checkpoint's tokenizer is the data's when text was read with data.tokenizer=auto (the default) and for
    # the synthetic tasks; prepared token directories and an explicit gpt2 / bytes name their own.
    uses_ckpt = data.get("tokenizer", "auto") == "auto" if kind == "text" else kind != "tokens"
    if ckpt is not None and uses_ckpt:
        from jrt_jax.convert.sources import NAMED, named_checkpoint

        if not pathlib.Path(ckpt).expanduser().exists() and ckpt in NAMED:
            ckpt = str(named_checkpoint(ckpt))
    if ckpt is not None and uses_ckpt and pathlib.Path(ckpt).expanduser().exists():
        from jrt_jax.convert.loader import load_tokenizer

        try:
            tok = load_tokenizer(ckpt)
        except (ConversionError, RuntimeError, OSError):
            tok = None
        if tok is not None:
            base = pathlib.Path(ckpt).expanduser().absolute()
            bos, eos, pad = _checkpoint_ids(base, _ids_of(tok))
            return TokenizerRecord("checkpoint", str(base), bos, eos, pad, source="model.checkpoint")
    if (run / "tokenizer.json").is_file():
        tok = tk.TokenizerFile(run / "tokenizer.json")
        return TokenizerRecord("file", str(run / "tokenizer.json"), *_ids_of(tok), source="run directory")
    if kind == "text":
        if data.get("tokenizer", "auto") == "bytes":
            b = tk.ByteTokenizer
            return TokenizerRecord("bytes", None, b.eos_id, b.eos_id, b.pad_id, source="data.tokenizer=bytes")
        # GPT-2 BPE: 50257 ids, <|endoftext|> = 50256 (no pad, as GPT-2's own config)
        return TokenizerRecord("gpt2", None, 50256, 50256, None, source="data.tokenizer=gpt2")
    if kind == "tokens":
        return _prepared_tokenizer(data, run)
    return TokenizerRecord(None, source=f"data.kind={kind}",
                           note=f"data.kind={kind} is a synthetic task: its token ids are task symbols, not text, "
                                "so there is no text tokenizer and no bos / eos / pad id")


def _prepared_tokenizer(data: Mapping, run: pathlib.Path) -> TokenizerRecord:
    """The tokenizer recorded in the first ``jrt prepare-data`` directory of ``data.path`` (index.json)."""
    from jrt_jax import tokenizer as tk

    paths = list(data.get("path") or [])
    folder = pathlib.Path(paths[0]).expanduser() if paths else None
    index = folder / "index.json" if folder is not None else None
    if index is None or not index.is_file():
        return TokenizerRecord(None, source="data.path",
                               note=f"data.kind=tokens: the prepared data {paths[:1]} (index.json) is not found "
                                    "from here, so the tokenizer is unknown")
    try:
        rec = json.loads(index.read_text())["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"{index}: unreadable tokenizer record ({_one_line(exc)})") from None
    if rec.get("name") == "bytes" or not rec.get("file"):
        b = tk.ByteTokenizer
        return TokenizerRecord("bytes", None, b.eos_id, b.eos_id, b.pad_id, source=f"data.path {folder}")
    file = folder / rec["file"]
    if not file.is_file():
        raise ConversionError(f"{folder}: its index.json names {rec['file']}, which is missing")
    eos = rec.get("eos_id")
    return TokenizerRecord("file", str(file.absolute()), eos, eos, None, source=f"data.path {folder}")


def _saved_config(path: PathLike) -> tuple[pathlib.Path, dict]:
    """(run directory, saved training config) of a run directory (the newest step whose metadata verifies) or a
    step folder in one; only metadata is read."""
    found = split_run_path(path)
    if found is None:
        raise ConversionError(not_a_run(path))
    run, step = found
    with RunDir(run) as rd:
        steps = rd.steps()
        if not steps:
            raise ConversionError(f"no checkpoint in {rd.path}: the run saved none (yet)")
        errors = []
        for s in [step] if step is not None else reversed(steps):
            try:
                return rd.path, rd.meta(s)["config"]
            except CorruptStep as exc:
                if step is not None:
                    raise
                errors.append(str(exc))
    raise ConversionError(f"no readable checkpoint metadata in {run} ({'; '.join(errors)})")


def run_config(path: PathLike):
    """The model config of a run directory or step folder, from its saved training config (no array is read)."""
    run, config = _saved_config(path)
    return run_model_config(config, run)


def run_tokenizer(path: PathLike):
    """The tokenizer a run (directory or step folder) trained with; ConversionError when it has none."""
    run, config = _saved_config(path)
    return run_tokenizer_record(config, run).load()


# ------------------------------------------------------------------------------------------------- loading


def state_keys(model) -> dict[str, str]:
    """{model parameter path ('layers.0.mlp.fc1.kernel'): state key in a run's checkpoint} of `model`."""
    from flax import nnx

    leaves, _ = jax.tree_util.tree_flatten_with_path({"params": nnx.state(model, nnx.Param)})
    out = {}
    for path, _leaf in leaves:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if parts and parts[-1] == "value":  # the Variable's value attribute
            parts = parts[:-1]
        out[".".join(parts[1:])] = jax.tree_util.keystr(path)
    return out


class RunSource(TensorSource):
    """The verified parameters of one step, under the model's parameter paths (identity `Entry`s)."""

    def __init__(self, name: str, arrays: dict[str, np.ndarray]):
        self.name = name
        self._arrays = arrays

    def keys(self) -> list[str]:
        return list(self._arrays)

    def info(self, key: str) -> TensorInfo:
        a = self._arrays[key]
        return TensorInfo(tuple(a.shape), a.dtype)

    def read(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def close(self) -> None:
        self._arrays = {}


@dataclasses.dataclass
class OpenedRun:
    """A step of a run: its model config, parameters (as a `RunSource`), metadata and tokenizer record."""

    path: pathlib.Path
    step: int
    meta: dict
    run_id: str | None
    config: object
    source: RunSource
    tokenizer: TokenizerRecord
    skipped: list[str]  # newer steps that did not verify (when the step was not given)

    def model(self):
        """The NNX model with this step's parameters (on the default device; the source is emptied)."""
        from jrt_jax.convert.mapping import stream_into
        from jrt_jax.models import abstract_model

        model = abstract_model(self.config)
        with self.source:
            stream_into(model, self.source, RUN.entries(self.config), placer=lambda path, arr: jax.device_put(arr))
        return model


def open_run(path: PathLike, step: int | None = None, config=None) -> OpenedRun:
    """Open a run directory (or a step folder inside one) at `step`: default the newest step whose metadata and
    parameters verify (newer corrupt steps are skipped with a warning; the directory is never changed).

    `config` replaces the model config rebuilt from the saved training config. Raises ConversionError (one line):
    not a run directory, no checkpoint, no such step, corrupt step, parameters that do not fit the model.
    """
    from jrt_jax.models import abstract_model

    found = split_run_path(path)
    if found is None:
        raise ConversionError(not_a_run(path))
    run, in_path = found
    run = run.expanduser().absolute()
    if step is not None and in_path is not None and step != in_path:
        raise ConversionError(f"{path} is step {in_path} of {run}, but step {step} was asked for")
    step = in_path if step is None else step
    with RunDir(run) as rd:
        steps = rd.steps()
        if not steps:
            raise ConversionError(f"no checkpoint in {run}: the run saved none (yet)")
        if step is not None and step not in steps:
            raise ConversionError(f"checkpoint step {step} does not exist in {run} (steps: {steps})")
        candidates = [step] if step is not None else list(reversed(steps))
        skipped: list[str] = []
        for s in candidates:
            try:
                meta = rd.meta(s)
                model_config = config if config is not None else run_model_config(meta["config"], run)
                keys = state_keys(abstract_model(model_config))
                infos = rd.param_infos(s, meta)
                _check_layout(run, s, keys, infos, model_config)
                arrays = rd.read_params(s, meta)
            except CorruptStep as exc:
                if step is not None:
                    raise
                skipped.append(str(exc))
                if s != candidates[-1]:
                    warnings.warn(f"{exc}; trying the previous step", stacklevel=2)
                continue
            source = RunSource(f"{run} step {s}", {path_: arrays[key] for path_, key in keys.items()})
            return OpenedRun(run, s, meta, rd.owner().get("run_id"), model_config, source,
                             run_tokenizer_record(meta["config"], run), skipped)
    raise ConversionError(f"no restorable checkpoint in {run} ({'; '.join(skipped)})")


def _check_layout(run, step, keys: dict[str, str], infos: dict[str, TensorInfo], config) -> None:
    missing = sorted(set(keys.values()) - set(infos))
    extra = sorted(set(infos) - set(keys.values()))
    by_key = {v: k for k, v in keys.items()}
    from jrt_jax.models import param_shapes

    shapes = param_shapes(config)
    wrong = [k for k in infos if k in by_key and tuple(infos[k].shape) != tuple(shapes[by_key[k]][0])]
    if missing or extra or wrong:
        detail = (f"{wrong[0]} is {list(infos[wrong[0]].shape)} there but {list(shapes[by_key[wrong[0]]][0])} here"
                  if wrong else f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}")
        raise ConversionError(f"checkpoint step {step} in {run} holds other parameters than the "
                           f"{type(config).__name__} its config builds ({len(missing)} missing, {len(extra)} "
                           f"unexpected, {len(wrong)} mis-shaped; {detail})")


# ------------------------------------------------------------------------------------------- architecture


class TrainingRun:
    """Run directories as an `jrt_jax.convert.architectures.Architecture`: `locate` gives the run directory (or
    the step folder) as the "weights"; `open` reads the chosen step's verified parameters."""

    name = "run"
    tokenizer_in_weights = False

    def detect(self, weights, cfg, config=None) -> bool:
        return split_run_path(weights) is not None

    def open(self, weights, cfg, config=None):
        opened = open_run(weights, config=config)
        return opened.config, opened.source

    def entries(self, config) -> list[Entry]:
        from jrt_jax.models import param_shapes

        return [Entry(path, path, tuple(shape)) for path, (shape, _) in param_shapes(config).items()]

    def extras(self, config):
        return []

    def ignored(self, key: str) -> bool:
        return False

    def check(self, source, config) -> str:
        return ""

    def tokenizer(self, source, folder):
        return run_tokenizer(source if isinstance(source, (str, os.PathLike)) else folder)


RUN = TrainingRun()
