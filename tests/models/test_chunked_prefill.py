"""Chunked prefill: `model.prefill(chunk, caches=…, start=…)` chunk after chunk equals one prefill over the whole
prompt (logits and caches, fp32), for Llama (KV cache), Based and JRT-RNN (linear attention or PLA, a sliding
window and BaseConv layers), over ragged left-padded batches; and decoding continues identically after it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jrt_jax.nn.attention import KVCache
from jrt_jax.nn.sliding_window import SlidingWindowCache
from tests.model_helpers import max_abs, model

TOL = 1e-5


def _batch(lengths, vocab, seed=0):
    """Left-padded tokens [B, T] and mask for rows of the given lengths."""
    t = max(lengths)
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros((len(lengths), t), bool)
    for r, n in enumerate(lengths):
        tokens[r, t - n:] = rng.integers(1, vocab, n)
        mask[r, t - n:] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _prefill(graphdef, state, tokens, mask, caches, cache_len, start):
    m = nnx.merge(graphdef, state)
    return m.prefill(tokens, mask=mask, cache_len=cache_len, caches=caches, start=start, all_logits=True)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, token, caches, positions):
    return nnx.merge(graphdef, state).decode_step(token, caches, positions=positions)


def _chunked(m, tokens, mask, bounds, cache_len):
    """Prefill over tokens[:, a:b] for consecutive (a, b) in `bounds`; every position's logits and the caches."""
    graphdef, state = nnx.split(m)
    logits, caches = _prefill(graphdef, state, tokens[:, :bounds[0]], mask[:, :bounds[0]], None, cache_len, None)
    parts = [logits]
    for a, b in zip(bounds[:-1], bounds[1:]):
        start = jnp.sum(mask[:, :a], axis=1).astype(jnp.int32)
        logits, caches = _prefill(graphdef, state, tokens[:, a:b], mask[:, a:b], caches, None, start)
        parts.append(logits)
    return jnp.concatenate(parts, axis=1), caches


def _same_cache(a, b):
    """Caches agree: KV / ring buffers where a slot holds a real token (pads' keys are never read), else all."""
    if isinstance(a, (KVCache, SlidingWindowCache)):
        assert bool(jnp.all(a.valid == b.valid)) and int(a.index) == int(b.index)
        keep = a.valid[:, :, None, None]
        for x, y in ((a.k, b.k), (a.v, b.v)):
            assert max_abs(jnp.where(keep, x, 0), jnp.where(keep, y, 0)) < TOL
        return
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert max_abs(x, y) < TOL


# Chunk ends chosen so that every JRT row's encoder (12 tokens) lies in the chunk of its first real token.
CASES = {
    "llama": ([30, 21, 5], (7, 16, 23, 30)),
    "based": ([30, 21, 5], (9, 16, 30)),
    "jrt": ([30, 28, 6], (16, 22, 30)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunked_prefill_equals_one_prefill(name):
    lengths, bounds = CASES[name]
    m = model(name)
    tokens, mask = _batch(lengths, m.config.vocab_size)
    cache_len = tokens.shape[1] + 4
    graphdef, state = nnx.split(m)
    whole, caches = _prefill(graphdef, state, tokens, mask, None, cache_len, None)
    parts, chunked = _chunked(m, tokens, mask, bounds, cache_len)
    real = mask[:, :, None]
    assert max_abs(jnp.where(real, whole, 0), jnp.where(real, parts, 0)) < TOL
    for a, b in zip(caches, chunked):
        _same_cache(a, b)
    # decoding continues identically from either set of caches
    positions = jnp.sum(mask, axis=1).astype(jnp.int32)
    token = jnp.argmax(whole[:, -1], axis=-1).astype(jnp.int32)
    for _ in range(3):
        la, caches = _decode(graphdef, state, token, caches, positions)
        lb, chunked = _decode(graphdef, state, token, chunked, positions)
        assert max_abs(la, lb) < TOL
        token, positions = jnp.argmax(la, axis=-1).astype(jnp.int32), positions + 1


def test_chunked_prefill_refuses_a_split_encoder():
    m = model("jrt")  # enc_len 12
    tokens, mask = _batch([30, 21], m.config.vocab_size)  # row 1 has 7 real tokens in the first 16
    _, caches = m.prefill(tokens[:, :16], mask=mask[:, :16])
    start = jnp.sum(mask[:, :16], axis=1).astype(jnp.int32)
    with pytest.raises(ValueError, match="row 1: its encoder"):
        m.prefill(tokens[:, 16:], mask=mask[:, 16:], caches=caches, start=start)


def test_chunked_prefill_arguments():
    m = model("llama")
    tokens, mask = _batch([8, 8], m.config.vocab_size)
    _, caches = m.prefill(tokens, mask=mask, cache_len=16)
    with pytest.raises(ValueError, match="pass start="):
        m.prefill(tokens, caches=caches)
    with pytest.raises(ValueError, match="pass caches="):
        m.prefill(tokens, start=jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="start must be an integer array"):
        m.prefill(tokens, caches=caches, start=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="one cache per layer"):
        m.prefill(tokens, caches=caches[:1], start=jnp.zeros(2, jnp.int32))


def test_chunk_ends_keep_each_encoder_in_one_chunk():
    from jrt_jax.generate.engine import chunk_ends

    assert chunk_ends(64, 16, [64, 40, 5]) == [16, 32, 48, 64]
    # row 1 starts at 24 with a 12-token encoder: the chunk [16, 32) stretches to 36
    assert chunk_ends(64, 16, [64, 40, 5], 12) == [16, 36, 52, 64]
    assert chunk_ends(64, 16, [60, 52, 20], 12) == [24, 40, 56, 64]
    assert chunk_ends(10, 16, [10], 4) == [10]


@pytest.mark.parametrize("name", ["llama", "jrt"])
def test_generation_with_prefill_chunk_equals_one_pass(name):
    from jrt_jax.generate import Generator
    from tests.model_helpers import random_prompts

    m = model(name)
    prompts = random_prompts([29, 17, 4], m.config.vocab_size, seed=3)
    one = Generator(m).generate(prompts, max_new_tokens=5, return_logits=True)
    chunked = Generator(m, prefill_chunk=8).generate(prompts, max_new_tokens=5, return_logits=True)
    assert chunked.tokens == one.tokens
    assert max_abs(chunked.logits, one.logits) < TOL
    with pytest.raises(ValueError, match="prefill_chunk must be an int >= 1"):
        Generator(m, prefill_chunk=0)
