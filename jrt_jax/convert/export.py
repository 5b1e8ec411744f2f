"""`save_pretrained`: an NNX model → a PyTorch-loadable folder (weights + ``config.json``), one tensor at a time.

* `LlamaLM` → Hugging Face ``LlamaForCausalLM`` keys and ``config.json``: loads with
  ``LlamaForCausalLM.load_state_dict(strict=True)`` and ``LlamaForCausalLM.from_pretrained``. With tied
  embeddings ``lm_head.weight`` is written too (as ``state_dict()`` has it): a shared storage in torch files, a
  copy in safetensors — unless ``tied_head="once"``: then safetensors files omit it, as transformers' own
  ``save_pretrained`` does (``from_pretrained`` ties it again; ``load_state_dict(strict=True)`` would call it
  missing).
* `JRTLM` → the HazyResearch release's key names (without the training wrapper's ``model.`` prefix) and a
  release-style GPT2 ``config.json``; ``lm_head.weight`` (tied) included, as the release model's state dict has it
  (omitted from safetensors with ``tied_head="once"``; `from_pretrained` does not need it).

Everything is written under temporary names in the destination folder and renamed into place at the end
(`AtomicFolder`): a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jrt_jax.convert import hazy, llama_hf
from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.atomic import AtomicFolder
from jrt_jax.convert.sources import WEIGHT_FILES
from jrt_jax.convert.writers import TensorPlan, write_safetensors, write_torch
from jrt_jax.convert.mapping import flat_params
from jrt_jax.models import JRTConfig, LlamaConfig

FORMATS = {"safetensors": "model.safetensors", "torch": "pytorch_model.bin"}
TIED_HEAD = ("copy", "once")


def _host(value) -> np.ndarray:
    if isinstance(value, jax.ShapeDtypeStruct):
        raise ConversionError("the model is abstract (nnx.eval_shape); it has no values to save")
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        raise ConversionError("a parameter is sharded across processes; gather it (e.g. "
                              "jax.experimental.multihost_utils.process_allgather) before saving")
    return np.asarray(value)


def export_plans(model) -> tuple[list[TensorPlan], dict]:
    """(tensor plans in checkpoint layout, config.json dict) for `model`; no data is copied yet."""
    config = getattr(model, "config", None)
    if isinstance(config, JRTConfig):
        entries, head_alias = hazy.entries(config), ("lm_head.weight", "transformer.embeddings.word_embeddings.weight")
        cfg_dict = hazy.config_to_dict(config)
    elif isinstance(config, LlamaConfig):
        entries = llama_hf.entries(config)
        head_alias = ("lm_head.weight", "model.embed_tokens.weight") if config.tie_word_embeddings else None
        cfg_dict = None
    else:
        raise ConversionError(f"save_pretrained needs a JRTLM or LlamaLM; got {type(model).__name__}")
    params = flat_params(model)
    plans = []
    dtypes = set()
    for e in entries:
        var = params[e.path]
        dt = np.dtype(var.dtype)
        dtypes.add(dt.name)

        def produce(var=var, e=e):
            return e.to_checkpoint(_host(var.get_value()))

        plans.append(TensorPlan(e.key, e.shape, dt, produce))
    if head_alias is not None:
        head, src = head_alias
        base = next(p for p in plans if p.key == src)
        plans.append(TensorPlan(head, base.shape, base.dtype, base.produce, alias_of=src))
    if cfg_dict is None:
        cfg_dict = llama_hf.config_to_dict(config, dtypes.pop() if len(dtypes) == 1 else "float32")
    return plans, cfg_dict


def save_pretrained(model, path: str | os.PathLike, format: str = "safetensors", *, overwrite: bool = False,
                    tokenizer=None, extra_files: Sequence[str | os.PathLike] = (), tied_head: str = "copy",
                    config_updates: Mapping | None = None,
                    json_files: Mapping[str, Mapping] | None = None) -> pathlib.Path:
    """Write `model` to the folder `path` in a PyTorch-loadable layout and return the weights file's path.

    Args:
      model: a `JRTLM` or `LlamaLM` with values (not abstract).
      path: destination folder; created if needed. An existing non-empty folder needs ``overwrite=True``, and
        may not hold weights of another layout (a loader would pick those).
      format: "safetensors" (``model.safetensors``, metadata format "pt") or "torch" (``pytorch_model.bin``, a
        ``torch.save`` zip; needs torch installed to name its classes).
      tokenizer: optional object with ``save(path)`` (e.g. `GGUFTokenizer`), written as ``tokenizer.json``.
      extra_files: files copied into the folder as they are (e.g. a source checkpoint's tokenizer files).
      tied_head: "copy" (a tied output head is written under its own key too) or "once" (safetensors files hold
        the tied embedding once; torch files share one storage either way).
      config_updates: fields merged into ``config.json`` (e.g. ``bos_token_id`` / ``eos_token_id``).
      json_files: more JSON files to write, {file name: object} (e.g. ``generation_config.json``).
    """
    if format not in FORMATS:
        raise ConversionError(f"format must be one of {sorted(FORMATS)}; got {format!r}")
    if tied_head not in TIED_HEAD:
        raise ConversionError(f"tied_head must be one of {list(TIED_HEAD)}; got {tied_head!r}")
    json_files = dict(json_files or {})
    reserved = sorted({"config.json", FORMATS[format]} & set(json_files))
    if reserved:
        raise ConversionError(f"json_files may not replace {reserved}; use config_updates for config.json")
    path = pathlib.Path(path)
    weights_name = FORMATS[format]
    if path.is_dir():
        stale = sorted(n for n in WEIGHT_FILES if n != weights_name and (path / n).exists())
        stale += sorted(p.name for p in path.glob("model-*-of-*.safetensors"))
        stale += sorted(p.name for p in path.glob("pytorch_model-*-of-*.bin"))
        if stale:
            raise ConversionError(f"{path}: already holds {stale}; a loader would read those instead of the new "
                                  f"{weights_name}. Remove them or choose another folder")
    for f in extra_files:
        if not pathlib.Path(f).is_file():
            raise ConversionError(f"extra file {f} does not exist")
    plans, cfg_dict = export_plans(model)
    if tied_head == "once" and format == "safetensors":
        plans = [p for p in plans if p.alias_of is None]
    cfg_dict.update(config_updates or {})
    with AtomicFolder(path, overwrite=overwrite) as out:
        if format == "safetensors":
            write_safetensors(out.path(weights_name), plans, metadata={"format": "pt"})
        else:
            write_torch(out.path(weights_name), plans)
        for f in extra_files:
            shutil.copyfile(f, out.path(pathlib.Path(f).name))
        if tokenizer is not None:
            tokenizer.save(out.path("tokenizer.json"))
        for name, obj in json_files.items():
            out.path(name).write_text(json.dumps(obj, indent=2) + "\n")
        out.path("config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    return path / weights_name
