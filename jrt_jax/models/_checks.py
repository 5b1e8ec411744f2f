"""Validation of the models' inputs (token ids, encoder lengths); the mask and scalar checks are the library's one
set (`jrt_jax.ops._checks`, re-exported here under the names the configs use)."""

from __future__ import annotations

import numpy as np

from jrt_jax.ops._checks import check_mask as check_mask  # noqa: F401 (re-exported for the models)
from jrt_jax.ops._checks import check_one_of, check_positive_float, check_positive_int, is_concrete


positive_int = check_positive_int
positive_float = check_positive_float
one_of = check_one_of


def check_tokens(tokens, vocab_size: int, max_length: int | None, name: str = "tokens"):
    """tokens must be an integer [B, T] array with T ≥ 1, ids in [0, vocab), T ≤ max_length (when set).

    Values are checked only when they are concrete (not under jit); shapes always.
    """
    if not hasattr(tokens, "shape") or not hasattr(tokens, "dtype"):
        raise TypeError(f"{name} must be an integer array [batch, seq]; got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must have shape [batch, seq]; got shape {tuple(tokens.shape)}")
    if not np.issubdtype(np.dtype(tokens.dtype), np.integer):
        raise TypeError(f"{name} must have an integer dtype; got {tokens.dtype}")
    b, t = tokens.shape
    if b == 0 or t == 0:
        raise ValueError(f"{name} must be non-empty; got shape {tuple(tokens.shape)}")
    if max_length is not None and t > max_length:
        raise ValueError(f"{name}: sequence length {t} exceeds the model's maximum length {max_length}")
    if is_concrete(tokens):
        arr = np.asarray(tokens)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            where = tuple(int(i) for i in np.argwhere(arr == bad)[0])
            raise ValueError(f"{name}: token id {bad} at {where} is outside the vocabulary [0, {vocab_size})")


def check_enc_len(enc_len, seq_len: int) -> int:
    """An int encoder length in [1, T]."""
    if isinstance(enc_len, bool) or not isinstance(enc_len, (int, np.integer)) or not 1 <= enc_len <= seq_len:
        raise ValueError(f"enc_len must be an int in [1, T={seq_len}] (the sequence length); got {enc_len!r}")
    return int(enc_len)


def check_enc_lens(enc_lens, batch: int, seq_len: int | None):
    """Per-row encoder lengths: an integer array [B], values ≥ 1 and ≤ T (no upper bound when `seq_len` is None,
    as for a later prefill chunk, which holds no encoder of its own length); checked when concrete."""
    if tuple(enc_lens.shape) != (batch,) or not np.issubdtype(np.dtype(enc_lens.dtype), np.integer):
        raise ValueError(f"enc_len as an array must be integer with shape [batch] = ({batch},); "
                         f"got shape {tuple(enc_lens.shape)} dtype {enc_lens.dtype}")
    if is_concrete(enc_lens):
        arr = np.asarray(enc_lens)
        if arr.min() < 1:
            raise ValueError(f"enc_len: per-row value {int(arr.min())} must be >= 1")
        if seq_len is not None and arr.max() > seq_len:
            raise ValueError(f"enc_len: per-row value {int(arr.max())} is outside [1, T={seq_len}]")
    return enc_lens


def check_start(start, batch: int):
    """The real tokens each row already holds before a prefill chunk: an integer array [B], values ≥ 0."""
    if not hasattr(start, "shape") or tuple(start.shape) != (batch,) \
            or not np.issubdtype(np.dtype(start.dtype), np.integer):
        shape = tuple(start.shape) if hasattr(start, "shape") else type(start).__name__
        raise ValueError(f"start must be an integer array of shape [batch] = ({batch},); got {shape}")
    if is_concrete(start) and np.asarray(start).min() < 0:
        raise ValueError(f"start must be >= 0 (real tokens already in the caches); got {np.asarray(start).min()}")
    return start
