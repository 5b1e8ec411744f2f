"""The source architectures a checkpoint can be in, behind one small strategy protocol.

`Architecture` is what `jrt_jax.convert.loader` needs from each: recognise a checkpoint (`detect`), open its
tensors under the model's key names and give its model config (`open`), the key mapping (`entries`, `extras`,
`ignored`), checks beyond the key names (`check`), and its tokenizer (`tokenizer`). The file formats live with
their mappings: `jrt_jax.convert.gguf.GGUF`, `jrt_jax.convert.llama_hf.HF_LLAMA` and `jrt_jax.convert.hazy.HAZY`
(`FILE_FORMATS`, in detection order: a ``.gguf`` file is GGUF whatever else is given). Training run directories
are the fourth (`jrt_jax.convert.run_checkpoint.TrainingRun`), which the loader puts first: a run refers to the
checkpoint it was fine-tuned from, so the loader builds it with its own way of opening checkpoints
(`jrt_jax.convert.loader.ARCHITECTURES`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Protocol

from jrt_jax.convert.formats import TensorSource
from jrt_jax.convert.gguf import GGUF
from jrt_jax.convert.hazy import HAZY
from jrt_jax.convert.llama_hf import HF_LLAMA
from jrt_jax.convert.mapping import Entry, Extra


class Architecture(Protocol):
    """One source architecture (see the module docstring)."""

    #: short name reported by ``jrt convert`` and kept in `Checkpoint.kind`: "run" | "gguf" | "llama" | "hazy"
    name: str
    #: whether the weights file carries the tokenizer (``jrt convert`` then writes it as tokenizer.json; otherwise
    #: it copies the folder's tokenizer files)
    tokenizer_in_weights: bool

    def detect(self, weights: pathlib.Path, cfg: Mapping | None, config=None) -> bool:
        """Whether this architecture reads `weights` (with the folder's ``config.json`` `cfg`, None if absent);
        with a caller's `config` object (a `JRTConfig` / `LlamaConfig`), whether that config means this one."""
        ...

    def open(self, weights: pathlib.Path, cfg: Mapping | None, config=None) -> tuple[object, TensorSource]:
        """(model config, tensor source under the names `entries` uses); `config` replaces the file's own."""
        ...

    def entries(self, config) -> list[Entry]: ...

    def extras(self, config) -> list[Extra]: ...

    def ignored(self, key: str) -> bool:
        """Checkpoint keys that may be present without being loaded (e.g. rotary caches)."""
        ...

    def check(self, source: TensorSource, config) -> str:
        """Raise on content that cannot be converted; return a hint to add to key-mismatch errors ('' if none)."""
        ...

    def tokenizer(self, source: TensorSource | pathlib.Path, folder: pathlib.Path):
        """The checkpoint's tokenizer (`jrt_jax.tokenizer` interface), or None when it has none."""
        ...


#: The checkpoint file formats, in detection order.
FILE_FORMATS: tuple[Architecture, ...] = (GGUF, HF_LLAMA, HAZY)


def find(weights: pathlib.Path, cfg: Mapping | None, config=None,
         among: tuple[Architecture, ...] = FILE_FORMATS) -> Architecture | None:
    """The first architecture of `among` that detects the checkpoint, or None."""
    for arch in among:
        if arch.detect(weights, cfg, config):
            return arch
    return None
