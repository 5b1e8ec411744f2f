"""Decode benchmark: per-token latency and decoding-state bytes vs context length, JRT-RNN vs a Transformer++.

    python benchmarks/decode.py                         # contexts 1k, 4k, 16k, 32k; jrt-tiny vs llama-jrt-tiny
    python benchmarks/decode.py --contexts 1024 4096 --steps 20

For each context C:

* JRT-RNN (`jrt-tiny`, 1.53 M parameters): a real parallel prefill of C random tokens, then decode steps from the
  resulting state (linear-attention states, sliding-window ring buffers, conv tails — constant size).
* Llama (`llama-jrt-tiny`, same width / depth / vocabulary, 1.58 M parameters): decode steps from a KV cache of
  capacity C + 16 holding C tokens. The cache is filled with random keys and values rather than by a prefill —
  the step's cost does not depend on the values, and a dense-attention prefill at 32k would need 16 GB of scores
  on CPU.

Latency is the median wall time of `--steps` calls of the generator's compiled decode step (model + greedy
choice, batch 1) after warm-up; state bytes are those of the arrays the step carries. Then the tiny preset
generates 128 tokens after prompts of several lengths, and the compile counter shows one prefill compilation per
prompt bucket and one decode-step compilation in all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jrt_jax.generate import engine
from jrt_jax.generate import Generator, SamplingParams, compile_counts, reset_compile_counts
from jrt_jax.models import JRTConfig, JRTLM, LlamaConfig, LlamaLM, count_params


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def time_steps(model, caches, positions, steps: int, warmup: int = 3) -> list[float]:
    """Seconds of each of `steps` decode steps (the generator's compiled step, greedy, batch 1) after warm-up."""
    graphdef, state = nnx.split(model)
    temp, top_k, top_p = SamplingParams().as_arrays()
    key = jax.random.key(0)
    token = jnp.zeros((1,), jnp.int32)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        token, _, caches, positions = engine._step(graphdef, state, caches, token, positions, key,
                                                   jnp.asarray(i, jnp.int32), temp, top_k, top_p, greedy=True)
        jax.block_until_ready(token)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def jrt_state(model, context: int):
    """(prefill seconds incl. compilation, caches, positions) after a real prefill of `context` random tokens."""
    graphdef, state = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(1), (1, context), 0, model.config.vocab_size, jnp.int32)
    mask = jnp.ones((1, context), bool)
    temp, top_k, top_p = SamplingParams().as_arrays()
    t0 = time.perf_counter()
    out = engine._prefill(graphdef, state, tokens, mask, jax.random.key(0), temp, top_k, top_p, cache_len=None,
                          greedy=True)
    jax.block_until_ready(out)
    _, _, caches, positions = out
    return time.perf_counter() - t0, caches, positions


def llama_state(model, context: int, room: int):
    """(caches, positions): KV caches of capacity context + room holding `context` random keys / values."""
    caches = []
    for i, cache in enumerate(model.init_cache(1, context + room)):
        k1, k2 = jax.random.split(jax.random.key(i))
        caches.append(cache._replace(
            k=jax.random.normal(k1, cache.k.shape, cache.k.dtype),
            v=jax.random.normal(k2, cache.v.shape, cache.v.dtype),
            valid=cache.valid.at[:, :context].set(True),
            index=jnp.asarray(context, jnp.int32)))
    return tuple(caches), jnp.asarray([context], jnp.int32)


def interleaved_latency(points: dict, rounds: int, steps: int) -> dict:
    """Median step time per point, measured in `rounds` round-robin passes (so machine noise hits all points
    alike). points: name → (model, caches, positions); the step donates its caches, so each pass gets a copy."""
    times = {name: [] for name in points}
    for _ in range(rounds):
        for name, (model, caches, positions) in points.items():
            fresh = jax.tree.map(jnp.copy, caches)
            times[name] += time_steps(model, fresh, positions, steps)
    return {name: statistics.median(t) for name, t in times.items()}


def compile_demo(model, lengths, new_tokens: int) -> None:
    gen = Generator(model)
    reset_compile_counts()
    for n in lengths:
        prompt = list(np.random.default_rng(n).integers(0, model.config.vocab_size, n))
        t0 = time.perf_counter()
        result = gen.generate([prompt], max_new_tokens=new_tokens)
        dt = time.perf_counter() - t0
        print(f"  prompt {n:>4} tokens (bucket {result.prompt_bucket:>4}): prefill + {len(result.tokens[0])} tokens "
              f"in {dt:6.2f} s")
    print("  compilations (traces of each compiled function):")
    for key, count in sorted(compile_counts().items(), key=str):
        print(f"    {key}: {count}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per point and round")
    p.add_argument("--rounds", type=int, default=3, help="round-robin passes over the contexts")
    p.add_argument("--jrt-preset", default="jrt-tiny")
    p.add_argument("--llama-preset", default="llama-jrt-tiny")
    args = p.parse_args(argv)

    jrt = JRTLM(JRTConfig.preset(args.jrt_preset), rngs=nnx.Rngs(0))
    llama = LlamaLM(LlamaConfig.preset(args.llama_preset), rngs=nnx.Rngs(0))
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), batch 1, fp32")
    print(f"JRT-RNN  {args.jrt_preset}: {count_params(jrt) / 1e6:.2f} M parameters")
    print(f"Llama    {args.llama_preset}: {count_params(llama) / 1e6:.2f} M parameters")

    print(f"\nPrefill + 128 generated tokens, {args.jrt_preset}, greedy, one Generator, fresh process:")
    compile_demo(jrt, [5, 13, 16, 20, 31, 100], 128)

    print(f"\nDecode latency ({args.rounds} interleaved rounds x {args.steps} steps, median) and state bytes:")
    points, info = {}, {}
    for c in args.contexts:
        pre, caches, pos = jrt_state(jrt, c)
        points[("jrt", c)] = (jrt, caches, pos)
        info[("jrt", c)] = (_bytes(caches), pre)
        caches, pos = llama_state(llama, c, room=16)
        points[("llama", c)] = (llama, caches, pos)
        info[("llama", c)] = (_bytes(caches), None)
    lat = interleaved_latency(points, args.rounds, args.steps)
    head = f"{'context':>8} | {'JRT ms/token':>12} {'JRT state B':>12} {'prefill s':>9} | " \
           f"{'Llama ms/token':>14} {'Llama state B':>14}"
    print(head)
    print("-" * len(head))
    for c in args.contexts:
        print(f"{c:>8} | {lat['jrt', c] * 1e3:>12.3f} {info['jrt', c][0]:>12,} {info['jrt', c][1]:>9.2f} | "
              f"{lat['llama', c] * 1e3:>14.3f} {info['llama', c][0]:>14,}")
    lo, hi = min(args.contexts), max(args.contexts)
    if lo != hi:
        print(f"\nt({hi})/t({lo}):  JRT-RNN {lat['jrt', hi] / lat['jrt', lo]:.2f}   "
              f"Llama {lat['llama', hi] / lat['llama', lo]:.2f}")
    print("(JRT prefill seconds include compiling the prefill for that length. Llama caches are filled with random "
          "keys/values, not prefilled: see the module docstring.)")


if __name__ == "__main__":
    main()
