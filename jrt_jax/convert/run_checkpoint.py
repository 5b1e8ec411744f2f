"""A training run directory as a checkpoint: `TrainingRun`, the `Architecture` of run directories.

It reads a step through `jrt_jax.runs.RunDir` (the newest step whose metadata and parameters verify, unless a
step is given; the directory is never written), gives its parameters as a `TensorSource` under the model's
parameter paths, the model config the run recorded (`jrt_jax.runs.model_config`), and the tokenizer the run's data
were encoded with (`jrt_jax.convert.run_tokenizer.TokenizerRecord`).

A fine-tuned run refers to the checkpoint it was fine-tuned from: for its tokenizer, and for the model of a
directory written before runs recorded ``config.json``. Opening that checkpoint — of any kind, a run included —
is the loader's job, so a `TrainingRun` is built with the loader's `load_config` / `load_tokenizer`
(`jrt_jax.convert.loader.RUN`); `jrt_jax.convert.run` offers its methods as functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from jrt_jax import runs
from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.formats import TensorInfo, TensorSource
from jrt_jax.convert.mapping import Entry, stream_into
from jrt_jax.convert.run_tokenizer import TokenizerRecord, tokenizer_record
from jrt_jax.convert.sources import NAMED
from jrt_jax.models import abstract_model, param_shapes

PathLike = str | os.PathLike


class CorruptStep(ConversionError, runs.CorruptStep):
    """A step whose metadata or parameters cannot be read or do not match their checksums."""


@contextlib.contextmanager
def conversion_errors():
    """The run format's errors (`jrt_jax.runs.RunError`) as ConversionErrors, the errors of every checkpoint."""
    try:
        yield
    except ConversionError:
        raise
    except runs.CorruptStep as exc:
        raise CorruptStep(str(exc)) from exc.__cause__
    except runs.RunError as exc:
        raise ConversionError(str(exc)) from exc.__cause__


# ------------------------------------------------------------------------------------------------- loading


def state_keys(model) -> dict[str, str]:
    """{model parameter path ('layers.0.mlp.fc1.kernel'): state key in a run's checkpoint} of `model`."""
    leaves, _ = jax.tree_util.tree_flatten_with_path({"params": nnx.state(model, nnx.Param)})
    out = {}
    for path, _leaf in leaves:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if parts and parts[-1] == "value":  # the Variable's value attribute
            parts = parts[:-1]
        out[".".join(parts[1:])] = jax.tree_util.keystr(path)
    return out


def run_entries(config) -> list[Entry]:
    """Identity `Entry`s: a run's parameters are stored under the model's own paths and shapes."""
    return [Entry(path, path, tuple(shape)) for path, (shape, _) in param_shapes(config).items()]


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
        model = abstract_model(self.config)
        with self.source:
            stream_into(model, self.source, run_entries(self.config), placer=lambda path, arr: jax.device_put(arr))
        return model


def _check_layout(run, step, keys: dict[str, str], infos: dict[str, runs.ArrayInfo], config) -> None:
    missing = sorted(set(keys.values()) - set(infos))
    extra = sorted(set(infos) - set(keys.values()))
    by_key = {v: k for k, v in keys.items()}
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
    the step folder) as the "weights"; `open` reads the chosen step's verified parameters.

    base_config / base_tokenizer: how the checkpoint a run was fine-tuned from is opened (the loader's
    `load_config` and `load_tokenizer`; see the module docstring).
    """

    name = "run"
    tokenizer_in_weights = False

    def __init__(self, *, base_config: Callable, base_tokenizer: Callable):
        self.base_config = base_config
        self.base_tokenizer = base_tokenizer

    # --- the Architecture protocol --------------------------------------------------------------------------

    def detect(self, weights, cfg, config=None) -> bool:
        return runs.split_run_path(weights) is not None

    def open(self, weights, cfg, config=None):
        opened = self.open_run(weights, config=config)
        return opened.config, opened.source

    def entries(self, config) -> list[Entry]:
        return run_entries(config)

    def extras(self, config):
        return []

    def ignored(self, key: str) -> bool:
        return False

    def check(self, source, config) -> str:
        return ""

    def tokenizer(self, source, folder):
        return self.run_tokenizer(source if isinstance(source, (str, os.PathLike)) else folder)

    # --- runs -----------------------------------------------------------------------------------------------

    def legacy_model_config(self, config: Mapping, run: PathLike = "<run>"):
        """The model config a saved training config builds, for a run directory that records no ``config.json``
        (`jrt_jax.runs.legacy_model_config`); errors are ConversionErrors naming the run."""
        with conversion_errors():
            return runs.legacy_model_config(config, base_config=self._fine_tune_base(run), run=run)

    def _fine_tune_base(self, run: PathLike) -> Callable:
        """`base_config` for the legacy model config of `run`: a missing base checkpoint is reported against it."""
        def base_config(path: str):
            p = pathlib.Path(path).expanduser()
            if not p.exists() and path not in NAMED:
                raise ConversionError(f"{run} was fine-tuned from model.checkpoint={path}, which does not exist (from "
                                      f"{pathlib.Path.cwd()}); its config.json is needed to rebuild the model. Run "
                                      "from the directory the run was started in, or restore that checkpoint")
            return self.base_config(path)

        return base_config

    def tokenizer_record(self, config: Mapping, run: PathLike) -> TokenizerRecord:
        """The `TokenizerRecord` of a run from its saved training config (`jrt_jax.convert.run_tokenizer`)."""
        return tokenizer_record(config, run, self.base_tokenizer)

    def _saved(self, path: PathLike) -> tuple[pathlib.Path, dict]:
        """(checkpoint directory, verified metadata) of a run directory (its newest step whose metadata verifies)
        or a step folder in one; only metadata is read."""
        found = runs.split_run_path(path)
        if found is None:
            raise ConversionError(runs.not_a_run(path))
        run, step = found
        with runs.RunDir(run) as rd:
            steps = rd.steps()
            if not steps:
                raise ConversionError(f"no checkpoint in {rd.path}: the run saved none (yet)")
            errors = []
            for s in [step] if step is not None else reversed(steps):
                try:
                    return rd.path, rd.meta(s)
                except runs.CorruptStep as exc:
                    if step is not None:
                        raise
                    errors.append(str(exc))
        raise ConversionError(f"no readable checkpoint metadata in {run} ({'; '.join(errors)})")

    def run_config(self, path: PathLike):
        """The model config of a run directory or step folder: the ``config.json`` it records, or for an older
        directory the one its saved training config builds (no array is read)."""
        with conversion_errors():
            run, meta = self._saved(path)
            return runs.saved_model_config(run, meta["config"], base_config=self._fine_tune_base(run))

    def run_tokenizer(self, path: PathLike):
        """The tokenizer a run (directory or step folder) trained with; ConversionError when it has none."""
        with conversion_errors():
            run, meta = self._saved(path)
        return self.tokenizer_record(meta["config"], run).load()

    def open_run(self, path: PathLike, step: int | None = None, config=None) -> OpenedRun:
        """Open a run directory (or a step folder inside one) at `step`: default the newest step whose metadata and
        parameters verify (newer corrupt steps are skipped with a warning; the directory is never changed).

        `config` replaces the model config the run records. Raises ConversionError (one line): not a run
        directory, no checkpoint, no such step, corrupt step, parameters that do not fit the model.
        """
        with conversion_errors():
            return self._open_run(path, step, config)

    def _open_run(self, path: PathLike, step: int | None, config) -> OpenedRun:
        found = runs.split_run_path(path)
        if found is None:
            raise ConversionError(runs.not_a_run(path))
        run, in_path = found
        run = run.expanduser().absolute()
        if step is not None and in_path is not None and step != in_path:
            raise ConversionError(f"{path} is step {in_path} of {run}, but step {step} was asked for")
        step = in_path if step is None else step
        with runs.RunDir(run) as rd:
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
                    model_config = config if config is not None else runs.saved_model_config(
                        run, meta["config"], base_config=self._fine_tune_base(run))
                    keys = state_keys(abstract_model(model_config))
                    _check_layout(run, s, keys, rd.param_infos(s, meta), model_config)
                    arrays = rd.read_params(s, meta)
                except runs.CorruptStep as exc:
                    if step is not None:
                        raise
                    skipped.append(str(exc))
                    if s != candidates[-1]:
                        warnings.warn(f"{exc}; trying the previous step", stacklevel=3)
                    continue
                source = RunSource(f"{run} step {s}", {path_: arrays[key] for path_, key in keys.items()})
                return OpenedRun(run, s, meta, rd.owner().get("run_id"), model_config, source,
                                 self.tokenizer_record(meta["config"], run), skipped)
        raise ConversionError(f"no restorable checkpoint in {run} ({'; '.join(skipped)})")
