"""Shape buckets and left padding: prompts of any length share a few compiled shapes.

Prompt lengths are rounded up to the next power of two ≥ `min_bucket` (16 by default); so is the number of
tokens to generate (it sizes a KV cache). One compilation then serves every prompt of the bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket(n: int, *, min_bucket: int = 16, cap: int | None = None) -> int:
    """The smallest power of two ≥ max(n, min_bucket), at most `cap` (and at least n)."""
    if n < 1:
        raise ValueError(f"bucket: length must be >= 1; got {n}")
    b = max(min_bucket, 1 << (n - 1).bit_length())
    if cap is not None:
        b = max(min(b, cap), n)
    return b


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, length] int32, mask [B, length] bool): each prompt right-aligned, pads on the left."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, length - len(p):] = p
            mask[i, length - len(p):] = True
    return tokens, mask


def normalize_prompts(prompts, vocab_size: int) -> list[list[int]]:
    """A prompt or a batch of prompts (lists / arrays of ids) → list of lists; ValueError on bad input.

    Raises for an empty batch, an empty prompt, a non-integer id, or an id outside [0, vocab_size), naming
    the prompt, the position and the value.
    """
    if isinstance(prompts, np.ndarray):
        prompts = prompts.tolist()
    if isinstance(prompts, str):
        raise TypeError("prompts must be token ids; encode text with a tokenizer first")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: the batch is empty")
    if all(isinstance(t, (int, np.integer)) for t in prompts):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        p = np.asarray(p).tolist() if hasattr(p, "shape") else list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        for j, t in enumerate(p):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"prompt {i}, position {j}: token {t!r} is not an int")
            if not 0 <= t < vocab_size:
                raise ValueError(f"prompt {i}, position {j}: token id {t} is outside the vocabulary [0, {vocab_size})")
        out.append([int(t) for t in p])
    return out
