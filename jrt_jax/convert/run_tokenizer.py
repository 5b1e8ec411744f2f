"""Which tokenizer a training run's token ids belong to: `TokenizerRecord`, from the run's saved training config.

The fine-tuned checkpoint's tokenizer (``model.checkpoint``, when the data were read with it), a ``tokenizer.json``
in the run directory, ``data.tokenizer`` for text, the prepared directory's for ``data.kind=tokens``, none for the
synthetic tasks. A fine-tuned run's base checkpoint is opened with the function the caller passes (the loader's
`load_tokenizer`; see `jrt_jax.convert.run_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping

from jrt_jax import tokenizer as tk
from jrt_jax.cli import one_line
from jrt_jax.convert.errors import ConversionError, NoTextTokenizer
from jrt_jax.convert.sources import NAMED, locate, named_checkpoint

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class TokenizerRecord:
    """Which tokenizer a run's token ids belong to.

    kind: "gpt2" (GPT-2 BPE), "bytes" (`jrt_jax.tokenizer.ByteTokenizer`), "file" (a Hugging Face tokenizer.json
      at `file`), "checkpoint" (the tokenizer of the fine-tuned checkpoint at `file`) or None (synthetic task
      symbols: no text tokenizer).
    bos / eos / pad: special token ids (None when the tokenizer has none; eos may be a list, as in Hugging Face
      configs).
    source: where the answer came from (a config field), for the export record. note: why there is none.
    open_checkpoint_tokenizer: how a "checkpoint" record loads its checkpoint's tokenizer (the loader's
      `load_tokenizer`).
    """

    kind: str | None
    file: str | None = None
    bos: int | None = None
    eos: int | list[int] | None = None
    pad: int | None = None
    source: str = ""
    note: str = ""
    open_checkpoint_tokenizer: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    def load(self):
        """The tokenizer (`jrt_jax.tokenizer` interface); NoTextTokenizer (a ConversionError) when there is none,
        ConversionError when it cannot load."""
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
            if self.open_checkpoint_tokenizer is None:
                raise ConversionError(f"the tokenizer record of checkpoint {self.file} has no open_checkpoint_tokenizer"
                                      "; pass jrt_jax.convert.load_tokenizer")
            return self.open_checkpoint_tokenizer(self.file)
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


def _prepared_tokenizer(data: Mapping, run: pathlib.Path) -> TokenizerRecord:
    """The tokenizer recorded in the first ``jrt prepare-data`` directory of ``data.path`` (index.json)."""
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
        raise ConversionError(f"{index}: unreadable tokenizer record ({one_line(exc)})") from None
    if rec.get("name") == "bytes" or not rec.get("file"):
        b = tk.ByteTokenizer
        return TokenizerRecord("bytes", None, b.eos_id, b.eos_id, b.pad_id, source=f"data.path {folder}")
    file = folder / rec["file"]
    if not file.is_file():
        raise ConversionError(f"{folder}: its index.json names {rec['file']}, which is missing")
    eos = rec.get("eos_id")
    return TokenizerRecord("file", str(file.absolute()), eos, eos, None, source=f"data.path {folder}")


def tokenizer_record(config: Mapping, run: PathLike, base_tokenizer: Callable) -> TokenizerRecord:
    """The `TokenizerRecord` of a run from its saved training config (see the module docstring);
    `base_tokenizer(path)` loads a fine-tuned run's base checkpoint tokenizer (the loader's `load_tokenizer`).

    Order: the fine-tuned checkpoint's tokenizer (``model.checkpoint``, when it has one), a ``tokenizer.json``
    in the run directory, then the data: ``data.tokenizer`` for text, the prepared directory's tokenizer for
    ``data.kind=tokens``, none for the synthetic tasks.
    """
    run = pathlib.Path(run)
    model = dict(config.get("model") or {})
    data = dict(config.get("data") or {})
    kind = data.get("kind")
    # The checkpoint's tokenizer is the data's when text was read with data.tokenizer=auto (the default) and
    # for the synthetic tasks; prepared token directories and an explicit gpt2 / bytes name their own.
    uses_ckpt = data.get("tokenizer", "auto") == "auto" if kind == "text" else kind != "tokens"
    record = _checkpoint_tokenizer(model.get("checkpoint"), base_tokenizer) if uses_ckpt else None
    if record is not None:
        return record
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
                           note=f"data.kind={kind} is a synthetic task: its token ids are task symbols, not "
                                "text, so there is no text tokenizer and no bos / eos / pad id")


def _checkpoint_tokenizer(ckpt: str | None, base_tokenizer: Callable) -> TokenizerRecord | None:
    """The record of a fine-tuned run's base checkpoint tokenizer; None when there is none to be found."""
    if ckpt is None:
        return None
    if not pathlib.Path(ckpt).expanduser().exists() and ckpt in NAMED:
        ckpt = str(named_checkpoint(ckpt))
    if not pathlib.Path(ckpt).expanduser().exists():
        return None
    try:
        tok = base_tokenizer(ckpt)
    except (ConversionError, RuntimeError, OSError):
        return None
    if tok is None:
        return None
    base = pathlib.Path(ckpt).expanduser().absolute()
    bos, eos, pad = _checkpoint_ids(base, _ids_of(tok))
    return TokenizerRecord("checkpoint", str(base), bos, eos, pad, source="model.checkpoint",
                           open_checkpoint_tokenizer=base_tokenizer)
