"""`save_pretrained`: an NNX model → a PyTorch-loadable folder (weights + ``config.json``), one tensor at a time.

* `LlamaLM` → Hugging Face ``LlamaForCausalLM`` keys and ``config.json``: loads with
  ``LlamaForCausalLM.load_state_dict(strict=True)`` and ``LlamaForCausalLM.from_pretrained``. With tied
  embeddings ``lm_head.weight`` is written too (as ``state_dict()`` has it): a shared storage in torch files, a
  copy in safetensors — unless ``tied_head="once"``: then safetensors files omit it, as transformers' own
  ``save_pretrained`` does (``from_pretrained`` ties it again; ``load_state_dict(strict=True)`` would call it
  missing).
* `JRTLM` → the HazyResearch release's key names (without the training wrapper's ``model.`` prefix) and a
  release-style GPT2 ``config.json``; ``lm_head.weight`` (tied) included, as the release model's state dict has it
  (omitted from safetensors with ``tied_head="once"``; `from_pretrained` does not need it). This is the release's
  format, not a transformers architecture: ``AutoModelForCausalLM`` fails on it (``KeyError: 'swiglu'``), so
  ``config.json`` says what reads it: ``"jrt_loader": "jrt_jax.from_pretrained"`` (and ``jrt_note``).

With a tokenizer (``tokenizer=``, or a ``tokenizer.json`` among ``extra_files``) the folder is a complete Hugging
Face folder: ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (special tokens, chat
template, no added bos / eos: `jrt_jax.convert.hf_tokenizer`), ``generation_config.json`` and the bos / eos / pad
ids in ``config.json`` — unless those files are among ``extra_files`` / ``json_files`` (a source folder's own
are copied as they are).

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
from jrt_jax.convert import hf_tokenizer as hft
from jrt_jax.convert.atomic import AtomicFolder
from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.mapping import flat_params
from jrt_jax.convert.sources import WEIGHT_FILES
from jrt_jax.convert.writers import TensorPlan, write_safetensors, write_torch
from jrt_jax.models import JRTConfig, LlamaConfig
from jrt_jax.tokenizer import TokenizerFile

FORMATS = {"safetensors": "model.safetensors", "torch": "pytorch_model.bin"}
TIED_HEAD = ("copy", "once")
#: What a JRT / Based folder's config.json says about its loader (it is the release format, which transformers
#: does not know: AutoModelForCausalLM raises KeyError 'swiglu' on its GPT2-style config).
JRT_LOADER = "jrt_jax.from_pretrained"
JRT_NOTE = ("HazyResearch JRT-RNN / Based release format (GPT2-style config with mixer fields), not a transformers "
            "architecture: AutoModelForCausalLM cannot load it (KeyError: 'swiglu'). Load it with "
            "jrt_jax.from_pretrained(folder); its tokenizer with jrt_jax.convert.load_tokenizer(folder).")


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
      tokenizer: optional object with ``save(path)`` (e.g. `GGUFTokenizer`), written as ``tokenizer.json``, with
        ``tokenizer_config.json`` / ``special_tokens_map.json`` / ``generation_config.json`` made from its
        ``bos_id`` / ``eos_id`` / ``pad_id`` / ``unk_id`` and ``chat_template`` (the ``*_token_id`` of
        `config_updates` win) — see the module docstring.
      extra_files: files copied into the folder as they are (e.g. a source checkpoint's tokenizer files); a
        ``tokenizer.json`` among them gets the same companion files, unless they are among them too.
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
    if isinstance(model.config, JRTConfig):
        cfg_dict.update(jrt_loader=JRT_LOADER, jrt_note=JRT_NOTE)
    cfg_dict.update(config_updates or {})
    source = _tokenizer_source(tokenizer, extra_files)
    with AtomicFolder(path, overwrite=overwrite) as out:
        if format == "safetensors":
            write_safetensors(out.path(weights_name), plans, metadata={"format": "pt"})
        else:
            write_torch(out.path(weights_name), plans)
        written = {}
        for f in extra_files:
            written[pathlib.Path(f).name] = out.path(pathlib.Path(f).name)
            shutil.copyfile(f, written[pathlib.Path(f).name])
        if tokenizer is not None:
            written["tokenizer.json"] = out.path("tokenizer.json")
            tokenizer.save(written["tokenizer.json"])
        if source is not None:
            json_files = _with_tokenizer_files(json_files, set(written), source, written["tokenizer.json"],
                                               config_updates, model, cfg_dict)
        for name, obj in json_files.items():
            out.path(name).write_text(json.dumps(obj, indent=2) + "\n")
        out.path("config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    return path / weights_name


def _tokenizer_source(tokenizer, extra_files):
    """The object whose special ids and chat template describe the folder's tokenizer.json (None: no tokenizer)."""
    if tokenizer is not None:
        return tokenizer
    for f in extra_files:
        if pathlib.Path(f).name == "tokenizer.json":
            try:
                return TokenizerFile(f)
            except Exception as e:  # noqa: BLE001 — tokenizers raises its own exception type on a bad file
                raise ConversionError(f"{f}: not a readable tokenizer.json ({e})") from None
    return None


def _with_tokenizer_files(json_files: dict, copied: set, source, tokenizer_json: pathlib.Path, config_updates,
                          model, cfg_dict: dict) -> dict:
    """`json_files` plus the Hugging Face tokenizer files the folder lacks (`jrt_jax.convert.hf_tokenizer`);
    `cfg_dict` gets the special ids it does not set already."""
    from tokenizers import Tokenizer  # imported when a tokenizer is written, not with jrt_jax

    present = copied | set(json_files)
    ids = hft.special_ids(source, config_updates)
    if "tokenizer_config.json" not in present:
        backend = Tokenizer.from_file(str(tokenizer_json))  # what the folder holds, whatever wrote it
        files = hft.tokenizer_files(backend, ids, chat_template=getattr(source, "chat_template", None),
                                    max_length=hft.model_max_length(model))
        json_files = {**json_files, **{k: v for k, v in files.items() if k not in present}}
    generation = hft.generation_config(ids)
    if generation and "generation_config.json" not in present:
        json_files = {**json_files, "generation_config.json": generation}
    for key, value in generation.items():
        if cfg_dict.get(key) is None:
            cfg_dict[key] = value
    return json_files
