"""Reading a run's checkpoint directory: its steps, each step's verified metadata, parameters and model config.

Nothing in the directory is ever written. Orbax's read-only manager lists the steps; a step's ``meta`` item is
checked against its own SHA-256 and its parameters (an orbax partial restore: the optimizer state stays on disk)
against their saved digests (`jrt_jax.runs.digests`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jrt_jax.errors import one_line
from jrt_jax.runs.digests import array_digests, meta_sha256
from jrt_jax.runs.layout import (
    META_FORMAT,
    OWNER_FILE,
    PARAMS_PREFIX,
    PathLike,
    RunError,
    is_run_dir,
    not_a_run,
)
from jrt_jax.runs.model_config import saved_model_config


class CorruptStep(RunError):
    """A step whose metadata or parameters cannot be read or do not match their checksums."""


class ArrayInfo(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype


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


class RunDir:
    """A run's checkpoint directory opened read-only: its steps, each step's verified metadata and parameters.

    Use as a context manager (releases orbax's manager). Raises RunError (one line) when `path` is not a run's
    checkpoint directory or cannot be opened; CorruptStep when a step does not verify.
    """

    def __init__(self, path: PathLike):
        import orbax.checkpoint as ocp  # heavy: imported when a run is read, not with jrt_jax

        self.path = pathlib.Path(path).expanduser().absolute()
        if not is_run_dir(self.path):
            raise RunError(not_a_run(self.path))
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                               enable_async_checkpointing=False)
        try:
            with _quiet():
                self.manager = ocp.CheckpointManager(
                    self.path, options=options,
                    item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        except Exception as exc:
            raise RunError(f"{self.path}: the run's checkpoints cannot be listed: {one_line(exc)}") from exc

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
            raise RunError(f"{self.path / OWNER_FILE}: unreadable ({one_line(exc)})") from None
        return data if isinstance(data, dict) else {}

    def steps(self) -> list[int]:
        """The finished steps, ascending."""
        return sorted(int(s) for s in self.manager.all_steps())

    def meta(self, step: int) -> dict:
        """The verified JSON metadata of `step` (no arrays are read)."""
        if step not in self.steps():
            raise RunError(f"checkpoint step {step} does not exist in {self.path} (steps: {self.steps()})")
        ocp = self._ocp
        try:
            with _quiet():
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as exc:
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata cannot be read: "
                              f"{one_line(exc)}") from exc
        if not isinstance(meta, dict):
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata is not a JSON object")
        meta = dict(meta)
        if "meta_sha256" in meta and meta["meta_sha256"] != meta_sha256(meta):
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata does not match its SHA-256")
        if meta.get("format", 1) >= META_FORMAT and "meta_sha256" not in meta:
            raise CorruptStep(f"checkpoint step {step} in {self.path}: metadata lacks its SHA-256")
        if not isinstance(meta.get("config"), dict):
            raise RunError(f"checkpoint step {step} in {self.path} has no saved config in its metadata")
        return meta

    def model_config(self, meta: dict, *, base_config: Callable | None = None):
        """The `JRTConfig` / `LlamaConfig` the run trains (`saved_model_config`; `meta` is a step's metadata,
        `base_config` opens the config of a fine-tuned run's base checkpoint)."""
        return saved_model_config(self.path, meta["config"], base_config=base_config)

    def param_infos(self, step: int, meta: dict) -> dict[str, ArrayInfo]:
        """{state key: shape and dtype} of the parameters of `step` (from the metadata, or orbax's for steps
        written before digests existed)."""
        arrays = meta.get("arrays")
        if arrays is None:
            with _quiet():
                tree = self.manager.item_metadata(step)["state"]
            tree = getattr(tree, "tree", tree)
            arrays = {k: {"shape": list(v.shape), "dtype": str(np.dtype(v.dtype))} for k, v in tree.items()}
        return {k: ArrayInfo(tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in arrays.items()
                if k.startswith(PARAMS_PREFIX)}

    def read_params(self, step: int, meta: dict) -> dict[str, np.ndarray]:
        """{state key: host array} of every parameter of `step`, each checked against its saved digest."""
        ocp = self._ocp
        infos = self.param_infos(step, meta)
        if not infos:
            raise RunError(f"checkpoint step {step} in {self.path} holds no parameters")
        item = {k: np.zeros((), info.dtype) for k, info in infos.items()}
        restore_args = {k: ocp.RestoreArgs(restore_type=np.ndarray) for k in infos}
        try:
            with _quiet():
                restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True)))
            flat = {k: np.asarray(v) for k, v in dict(restored.state).items()}
        except Exception as exc:
            raise CorruptStep(f"checkpoint step {step} in {self.path}: parameters cannot be read: "
                              f"{one_line(exc)}") from exc
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
