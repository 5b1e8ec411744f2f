"""Generation: compile once per bucket, sampling (seed, top-k, top-p), stop tokens / strings, streaming, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrt_jax.generate import (
    Generator,
    SamplingParams,
    TextTracker,
    bucket,
    compile_counts,
    filter_logits,
    reset_compile_counts,
)
from jrt_jax.generate.sampling import choose_tokens
from tests import model_helpers as mh


def letters(ids):
    """A deterministic detokenizer for tests: id → one letter."""
    return "".join(chr(ord("a") + int(i) % 26) for i in ids)


# --- compilation --------------------------------------------------------------------------------------------------


def test_buckets():
    assert [bucket(n) for n in (1, 16, 17, 32, 33, 1000)] == [16, 16, 32, 32, 64, 1024]
    assert bucket(40, cap=48) == 48 and bucket(40, min_bucket=8) == 64
    with pytest.raises(ValueError):
        bucket(0)


@pytest.mark.parametrize("name", ["jrt", "llama"])
def test_prefill_and_128_tokens_compile_once_per_bucket(name):
    model = mh.model(name)
    gen = Generator(model)
    reset_compile_counts()
    v = model.config.vocab_size
    for n in (5, 13, 16, 20, 31):  # prompt buckets 16, 16, 16, 32, 32
        result = gen.generate(mh.random_prompts([n], v, seed=n), max_new_tokens=128)
        assert len(result.tokens[0]) == 128
    counts = compile_counts()
    print(f"\n{name}: {counts}")
    assert counts and max(counts.values()) == 1  # nothing traced twice
    assert sorted(k[1:3] for k in counts if k[0] == "prefill") == [(1, 16), (1, 32)]  # one per prompt bucket
    steps = [k for k in counts if k[0] == "step"]
    # JRT: one decode step for all buckets (its state does not depend on the prompt length);
    # Llama: one per KV-cache length (prompt bucket + new-token bucket)
    assert len(steps) == (1 if name == "jrt" else 2)
    reset_compile_counts()
    gen.generate(mh.random_prompts([7], v, seed=9), max_new_tokens=100)  # same buckets again
    assert compile_counts() == {}


# --- sampling -----------------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_per_seed():
    gen = Generator(mh.model("jrt"))
    prompts = mh.random_prompts([4, 9], 300, seed=1)
    hot = SamplingParams(temperature=5.0)
    a = gen.generate(prompts, max_new_tokens=24, sampling=hot, seed=123).tokens
    b = gen.generate(prompts, max_new_tokens=24, sampling=hot, seed=123).tokens
    c = gen.generate(prompts, max_new_tokens=24, sampling=hot, seed=124).tokens
    assert a == b
    assert a != c
    greedy = gen.generate(prompts, max_new_tokens=24).tokens
    top1 = gen.generate(prompts, max_new_tokens=24, sampling=SamplingParams(temperature=5.0, top_k=1), seed=7).tokens
    assert top1 == greedy  # top-k = 1 is greedy whatever the temperature


def _samples(logits, params, n=2000):
    keys = jax.random.split(jax.random.key(0), n)
    temp, k, p = params.as_arrays()
    draw = jax.jit(jax.vmap(lambda key: choose_tokens(logits, key, temp, k, p, greedy=False)))
    return np.asarray(draw(keys))[:, 0]


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -2.0, 0.2]])
    order = np.argsort(-np.asarray(logits[0]))  # 5, 0, 1, 2, 7, 3, 4, 6
    seen = set(_samples(logits, SamplingParams(temperature=1.0, top_k=3)).tolist())
    assert seen == set(order[:3].tolist())
    probs = np.exp(logits[0] - logits[0].max())
    probs = np.asarray(probs / probs.sum())
    cum = np.cumsum(probs[order])
    top_p = 0.8
    nucleus = set(order[: int(np.searchsorted(cum, top_p) + 1)].tolist())  # smallest set reaching 0.8
    seen = set(_samples(logits, SamplingParams(temperature=1.0, top_p=top_p)).tolist())
    assert seen == nucleus and len(nucleus) < 8
    seen = set(_samples(logits, SamplingParams(temperature=1.0)).tolist())
    assert seen == set(range(8))  # no filter: everything is reachable
    # both: top-k first, then top-p within it
    filtered = np.asarray(filter_logits(logits, 1.0, jnp.asarray(2), jnp.asarray(0.99)))[0]
    assert set(np.flatnonzero(np.isfinite(filtered)).tolist()) == set(order[:2].tolist())


def test_sampling_params_validation():
    for bad in (dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=1.5)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            SamplingParams(**bad)


# --- stop conditions and streaming --------------------------------------------------------------------------------


def test_stop_tokens_and_stop_strings():
    gen = Generator(mh.model("jrt"))
    prompts = mh.random_prompts([6, 12], 300, seed=2)
    hot = SamplingParams(temperature=3.0)
    free = gen.generate(prompts, max_new_tokens=40, sampling=hot, seed=3, detokenize=letters)
    assert free.finish_reasons == ["length", "length"]
    assert free.texts == [letters(t) for t in free.tokens]

    # stop token: row 0 stops at the first occurrence of its 10th token (not included)
    stop_id = free.tokens[0][9]
    cut = free.tokens[0].index(stop_id)
    res = gen.generate(prompts, max_new_tokens=40, sampling=hot, seed=3, stop_tokens=[stop_id])
    assert res.tokens[0] == free.tokens[0][:cut] and res.finish_reasons[0] == "stop_token"

    # stop string: two letters from the middle of row 1's text
    text = free.texts[1]
    stop = text[20:22]
    res = gen.generate(prompts, max_new_tokens=40, sampling=hot, seed=3, stop_strings=[stop], detokenize=letters)
    assert res.texts[1] == text[: text.find(stop)] and res.finish_reasons[1] == "stop_string"
    assert res.tokens[1] == free.tokens[1][: text.find(stop) + 2]  # up to the token completing the stop string


def test_streaming_yields_tokens_as_they_come():
    gen = Generator(mh.model("llama"))
    prompts = mh.random_prompts([3, 8], 300, seed=4)
    stream = gen.stream(prompts, max_new_tokens=12, detokenize=letters, stop_strings=["zz"])
    first = next(stream)  # available before the rest is generated
    assert first.step == 0 and first.tokens.shape == (2,)
    events = [first] + list(stream)
    assert [e.step for e in events] == list(range(len(events)))
    result = gen.generate(prompts, max_new_tokens=12, detokenize=letters, stop_strings=["zz"])
    for r in range(2):
        streamed_ids = [int(e.tokens[r]) for e in events if e.tokens[r] >= 0]
        assert streamed_ids == result.tokens[r]
        assert "".join(e.text[r] for e in events) == result.texts[r]
    seen = []
    gen.generate(prompts, max_new_tokens=12, on_event=seen.append)
    assert len(seen) == 12


def test_text_tracker_holds_back_partial_stop_strings():
    tr = TextTracker(lambda ids: "".join(ids_to_text[i] for i in ids), ["END"])
    ids_to_text = {0: "ab", 1: "cE", 2: "N", 3: "x", 4: "D!"}
    assert tr.add(0) == "ab"
    assert tr.add(1) == "c"  # "E" might start "END"
    assert tr.add(2) == ""  # "EN" too
    assert tr.add(4) == "" and tr.stopped and tr.text == "abc"
    tr2 = TextTracker(lambda ids: "".join(ids_to_text[i] for i in ids), ["END"])
    tr2.add(1)
    assert tr2.add(3) == "Ex"  # released once it cannot be a stop string any more
    tr3 = TextTracker(lambda ids: bytes(ids).decode("utf-8", "replace"), [])
    assert tr3.add(0xC3) == ""  # first byte of "é": incomplete, held
    assert tr3.add(0xA9) == "é"


# --- bad input ----------------------------------------------------------------------------------------------------


def test_generation_bad_input():
    gen = Generator(mh.model("jrt"))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate([[1, 2], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        gen.stream([[]])  # raised at once, not at the first next()
    with pytest.raises(ValueError, match="the batch is empty"):
        gen.generate([], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0, position 2: token id 300 is outside the vocabulary \[0, 300\)"):
        gen.generate([[1, 2, 300]], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"token id -3"):
        gen.generate([[-3]], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1; got 0"):
        gen.generate([[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="stop_strings need a detokenize"):
        gen.generate([[1]], max_new_tokens=4, stop_strings=["x"])
    limited = Generator(mh.model("jrt"), max_length=20)
    with pytest.raises(ValueError, match=r"prompt 0 has 15 tokens; with max_new_tokens=8 that is 23 > the model's "
                                         r"maximum length 20"):
        limited.generate([list(range(15))], max_new_tokens=8)
    assert Generator(mh.model("llama")).max_length is None  # Llama runs past max_position_embeddings (warns)
    with pytest.raises(TypeError, match="encode text"):
        gen.generate("hello", max_new_tokens=4)
