"""The Hugging Face files that make a folder's ``tokenizer.json`` complete for transformers and lm-eval.

A ``tokenizer.json`` alone loads with ``transformers.AutoTokenizer`` but without special tokens (bos / eos / pad
None): lm-eval's ``--model hf`` then fails, and a chat model loses its template. `tokenizer_files` gives, from the
tokenizer and its special token ids:

* ``tokenizer_config.json``: ``tokenizer_class`` "PreTrainedTokenizerFast" (transformers' class over a
  tokenizer.json), ``bos_token`` / ``eos_token`` / ``pad_token`` / ``unk_token`` as token strings (those whose ids
  are known), ``chat_template`` (when the source has one), ``model_max_length`` (`model_max_length`),
  ``add_bos_token`` / ``add_eos_token`` false and ``clean_up_tokenization_spaces`` false — what `jrt_jax.tokenizer`
  does: ``encode`` adds no special token, ``decode`` changes no space. So ``AutoTokenizer.from_pretrained(folder)``
  gives our ids, our text and our chat prompt (`jrt_jax.tokenizer.TokenizerFile` reads the file back: ids and
  template).
* ``special_tokens_map.json``: the same token strings.
* ``generation_config.json`` (`generation_config`): ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id``.

One difference remains where the tokenizer.json does not list a special token as an added token (GPT-2's
``<|endoftext|>`` built from the BPE files): transformers adds it as one, so text that contains it literally is one
id there and BPE pieces in `jrt_jax.tokenizer.GPT2Tokenizer` (which encodes it as plain text). Other text is
tokenized alike.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

from jrt_jax.convert.errors import ConversionError

TOKENIZER_CLASS = "PreTrainedTokenizerFast"
#: model_max_length when the model states no limit (JRT / Based without max_seq_len: the recurrent layers have
#: none): lm-eval's and `jrt_jax.evals.lm_eval_adapter`'s default context.
DEFAULT_MODEL_MAX_LENGTH = 2048
SPECIAL = ("bos", "eos", "pad", "unk")


def model_max_length(model) -> int:
    """The longest input the model was made for: Llama — max_position_embeddings × the RoPE scaling factor
    (`LlamaLM.trained_length`); JRT / Based — config.max_seq_len; else `DEFAULT_MODEL_MAX_LENGTH`."""
    for attr in ("trained_length", "max_length"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MODEL_MAX_LENGTH


def special_ids(tokenizer, given: Mapping | None = None) -> dict[str, int | list[int] | None]:
    """{"bos": id, "eos": id (or a list), "pad": id, "unk": id}: `given` ({"bos_token_id": …, …}; a value None
    is unknown) over the tokenizer's own ``bos_id`` / ``eos_id`` / ``pad_id`` / ``unk_id``."""
    out = {k: getattr(tokenizer, f"{k}_id", None) for k in SPECIAL}
    for k in SPECIAL:
        value = (given or {}).get(f"{k}_token_id")
        if value is not None:
            out[k] = value
    return out


def folder_token_ids(folder) -> dict[str, int | list[int]]:
    """The ``*_token_id`` a Hugging Face folder's ``config.json`` and ``generation_config.json`` name (the
    generation config wins); ints, or lists of ints for eos."""
    found: dict = {}
    for name in ("config.json", "generation_config.json"):
        f = pathlib.Path(folder) / name
        try:
            data = json.loads(f.read_text()) if f.is_file() else {}
        except (OSError, ValueError):
            continue
        for k in SPECIAL:
            value = data.get(f"{k}_token_id") if isinstance(data, dict) else None
            if (isinstance(value, int) and not isinstance(value, bool)) or (
                    isinstance(value, list) and value and all(isinstance(v, int) for v in value)):
                found[f"{k}_token_id"] = value
    return found


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


def tokenizer_files(backend, ids: Mapping[str, int | list[int] | None], *, chat_template: str | None,
                    max_length: int) -> dict[str, dict]:
    """{"tokenizer_config.json": …, "special_tokens_map.json": …} for the `tokenizers.Tokenizer` `backend`.

    ids: `special_ids`' dict; an eos list names its first id as eos_token (all of them stay in the generation
    config). An id outside the vocabulary is a ConversionError.
    """
    tokens = {}
    for k in SPECIAL:
        i = _first(ids.get(k))
        if i is None:
            continue
        token = backend.id_to_token(int(i))
        if token is None:
            raise ConversionError(f"{k} token id {i} is not in the tokenizer's vocabulary "
                                  f"({backend.get_vocab_size()} ids)")
        tokens[f"{k}_token"] = token
    config = {
        "tokenizer_class": TOKENIZER_CLASS,
        **tokens,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(max_length),
    }
    if chat_template:
        config["chat_template"] = chat_template
    return {"tokenizer_config.json": config, "special_tokens_map.json": dict(tokens)}


def generation_config(ids: Mapping[str, int | list[int] | None]) -> dict:
    """``generation_config.json``: the known bos / eos / pad ids (empty when none is known)."""
    return {f"{k}_token_id": ids[k] for k in ("bos", "eos", "pad") if ids.get(k) is not None}
