"""Prefill + token-by-token decoding equals one parallel forward over the same tokens, for every model type.

Batch of 3 prompts of different lengths (left-padded to one bucket), 64 sampled tokens each, through the real
`Generator` (bucketing, compiled prefill and step, caches). The generator's logits at every step must equal the
parallel forward's logits at the same positions (fp32, max abs diff ≤ 1e-4). JRT's test model has M = 12 and a
window of 8, so prompts shorter and longer than the encoder are covered and the sliding-window ring buffer wraps
many times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.generate import Generator, SamplingParams, decode_state, state_bytes
from jrt_jax.models import JRTConfig, JRTLM, LlamaConfig, LlamaLM
from tests import model_helpers as mh

LENGTHS = (5, 17, 30)  # one prompt bucket of 32
NEW = 64


@pytest.mark.parametrize("name", ["jrt", "based", "llama"])
def test_prefill_plus_decode_equals_parallel_forward(name):
    model = mh.model(name)
    prompts = mh.random_prompts(LENGTHS, model.config.vocab_size, seed=11)
    result = Generator(model).generate(prompts, max_new_tokens=NEW, sampling=SamplingParams(temperature=1.0),
                                       seed=5, return_logits=True)
    assert result.prompt_bucket == 32 and result.logits.shape == (3, NEW, model.config.vocab_size)
    assert all(len(t) == NEW for t in result.tokens)
    assert len({tuple(t) for t in result.tokens}) == 3  # sampled, distinct rows

    # the same tokens in one parallel pass: left-padded prompt + the generated tokens that were fed back
    tb = result.prompt_bucket
    seqs = [p + t[:-1] for p, t in zip(prompts, result.tokens)]
    total = tb + NEW - 1
    tokens = np.zeros((3, total), np.int32)
    mask = np.zeros((3, total), bool)
    for i, s in enumerate(seqs):
        tokens[i, total - len(s):] = s
        mask[i, total - len(s):] = True
    # JRT: the encoder of each row is its prompt's first min(M, L) tokens, as in the prefill
    enc = jnp.asarray(LENGTHS, jnp.int32) if isinstance(model, JRTLM) else None
    full = mh.forward_fn(name)(jnp.asarray(tokens), jnp.asarray(mask), enc)
    ref = np.asarray(full[:, tb - 1 :])  # position tb-1 predicts the first new token
    err = np.max(np.abs(result.logits - ref))
    print(f"\n{name}: max |decode - parallel| over {NEW} steps = {err:.2e}")
    assert err <= 1e-4
    assert np.max(np.abs(ref)) > 1e-2  # not vacuous


def _sizes(model, contexts=(1024, 32768)):
    return {c: state_bytes(model, batch=1, context=c) for c in contexts}


@pytest.mark.parametrize("preset", ["jrt-tiny", "based-tiny", "jrt-360m"])
def test_decode_state_is_independent_of_context(preset):
    from flax import nnx

    model = nnx.eval_shape(lambda: JRTLM(JRTConfig.preset(preset), rngs=nnx.Rngs(0)))
    sizes = _sizes(model)
    print(f"\n{preset}: decode state bytes {sizes}")
    assert sizes[1024] == sizes[32768] > 0


def test_llama_decode_state_grows_with_context():
    from flax import nnx

    model = nnx.eval_shape(lambda: LlamaLM(LlamaConfig.preset("llama-jrt-tiny"), rngs=nnx.Rngs(0)))
    sizes = _sizes(model)
    print(f"\nllama-jrt-tiny: decode state bytes {sizes}")
    assert sizes[32768] > 30 * sizes[1024]


def test_sliding_window_cache_is_window_sized():
    from flax import nnx

    cfg = JRTConfig.preset("jrt-360m")
    model = nnx.eval_shape(lambda: JRTLM(cfg, rngs=nnx.Rngs(0)))
    caches = decode_state(model, batch=2, context=32768)
    head = cfg.d_model // cfg.window_heads
    for i, (kind, cache) in enumerate(zip(cfg.mixers, caches)):
        if kind == "sliding_window":
            assert cache.k.shape == cache.v.shape == (2, 128, 16, head), (i, cache.k.shape)
            assert cache.valid.shape == (2, 128)
        elif kind == "base_conv":
            assert cache.tail.shape == (2, 2, 2 * cfg.d_model)
        else:
            assert cache.kv.shape == (2, 16, 153, head) and cache.kv.dtype == jnp.float32
    assert jax.tree.leaves(caches)[0].shape[0] == 2
