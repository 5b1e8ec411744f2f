"""The names in a run's checkpoint directory, and recognising one from any path a user may give."""

from __future__ import annotations

import os
import pathlib

PathLike = str | os.PathLike

OWNER_FILE = "jrt_run.json"  # written by the first run in a checkpoint directory
MODEL_CONFIG_FILE = "config.json"  # the model the run trains, beside the owner file (`jrt_jax.runs.model_config`)
CHECKPOINTS_SUBDIR = "checkpoints"  # where `jrt train` keeps a run directory's checkpoints by default
META_FORMAT = 2  # 1 (implicit): no digests; 2: array digests + meta_sha256
PARAMS_PREFIX = "['params']"  # the parameters' keys in a step's flat state
EXPORT_FILE = "jrt_export.json"  # what `jrt export` records next to the weights (run, step, tokenizer)


class RunError(ValueError):
    """A run directory cannot be read or does not hold what its files promise; the message is one line."""


def is_run_dir(path: PathLike) -> bool:
    """Whether `path` is a run's checkpoint directory (holds ``jrt_run.json``)."""
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
    """Why `path` is not readable as a training run: one line for an error message."""
    p = pathlib.Path(path)
    if not p.exists():
        return f"{p} does not exist"
    if (p / "config.yaml").is_file() and not p.joinpath(CHECKPOINTS_SUBDIR, OWNER_FILE).is_file():
        return (f"{p} is a jrt train run directory with no checkpoint (the run had checkpoint.dir=null or stopped "
                "before its first save)")
    return (f"{p} is not a training run directory (no {OWNER_FILE} in it or in {CHECKPOINTS_SUBDIR}/; `jrt train` "
            "writes one with the first checkpoint)")

