"""The generation loop: one parallel prefill, then one compiled step per token, streamed as it comes.

    gen = Generator(model)
    for event in gen.stream([[1, 2, 3], [4, 5]], max_new_tokens=32, sampling=SamplingParams(temperature=0.8)):
        print(event.tokens)                      # one new token per row (-1 once a row has finished)
    result = gen.generate(prompts, max_new_tokens=32, stop_strings=["\\n"], detokenize=tok.decode)

Shapes: prompts are left-padded to a bucket (next power of two ≥ 16) and, for models with a KV cache, the cache
holds the prompt bucket plus the bucket of `max_new_tokens`. The prefill and the step are `jax.jit` functions
with the model's graph as a static argument, so every call with the same model structure, batch size and
buckets reuses one compilation; `compile_counts()` reports how often each was traced (the counter is
incremented inside the traced functions, so it counts compilations, not calls).

Decoding state per layer (see `jrt_jax.nn`): linear attention / PLA — `ops.LinearAttentionState`, constant size;
sliding window — a ring buffer of `window` keys and values; BaseConv — the last kernel_size - 1 inputs;
Llama attention — a KV cache of the bucketed capacity.

Context-parallel prefill: `Generator(model, prefill_mesh=mesh)` prefills on `mesh` with the prompt split on T over
its "sequence" axis (`jrt_jax.nn.sequence_parallel`: linear attention / PLA combine per-device states, sliding
window and conv exchange halos, attention all-gathers K/V); the combined caches move to the parameters' device
and decoding continues there. Tokens and logits equal the one-device path.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jrt_jax.generate.buckets import bucket, left_pad, normalize_prompts
from jrt_jax.generate.sampling import SamplingParams, choose_tokens
from jrt_jax.generate.stopping import Detokenize, TextTracker
from jrt_jax.nn.sequence_parallel import sequence_parallel

_COMPILES: collections.Counter = collections.Counter()


def compile_counts() -> dict:
    """How many times each compiled function was traced, keyed by ("prefill", batch, prompt bucket,
    cache_len, greedy) or ("step", batch, cache bytes, greedy). Use `reset_compile_counts()` first."""
    return dict(_COMPILES)


def reset_compile_counts() -> None:
    """Zero the counters (compiled functions stay cached)."""
    _COMPILES.clear()


def _tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("cache_len", "greedy", "mesh", "axis_name"))
def _prefill(graphdef, state, tokens, mask, key, temperature, top_k, top_p, caches=None, start=None, *, cache_len,
             greedy, mesh=None, axis_name=None):
    """model.prefill of tokens [B, T] (continuing from `caches` when given, `start` [B] real tokens before), then
    the first token chosen from the last logits. With `mesh`, context-parallel: tokens are split on T over its
    axis `axis_name` and every mixer runs its `jrt_jax.parallel` op (`jrt_jax.nn.sequence_parallel`); the
    caches come out as global arrays."""
    kind = "prefill" if caches is None else "prefill_chunk"
    _COMPILES[(kind if mesh is None else "prefill_sharded", tokens.shape[0], tokens.shape[1], cache_len,
               greedy)] += 1
    with contextlib.nullcontext() if mesh is None else sequence_parallel(mesh, axis_name):
        model = nnx.merge(graphdef, state)
        logits, caches = model.prefill(tokens, mask=mask, cache_len=cache_len, caches=caches, start=start)
    token = choose_tokens(logits, jax.random.fold_in(key, 0), temperature, top_k, top_p, greedy=greedy)
    real = jnp.sum(mask, axis=1).astype(jnp.int32)
    return token, logits, caches, real if start is None else start + real


def chunk_ends(seq_len: int, chunk: int, lengths, encoder_len: int | None = None) -> list[int]:
    """Where the chunks of a left-padded batch [B, seq_len] end (the last end is seq_len).

    Chunks are `chunk` positions long, except where a JRT-RNN row's encoder (its first min(encoder_len, length)
    real tokens) would straddle a boundary: that chunk is stretched to the encoder's end, since every token of a
    row reads its whole encoder (`JRTLM.chunk_context`).
    """
    lengths = np.asarray(lengths)
    first = seq_len - lengths
    enc_end = first + np.minimum(lengths, encoder_len) if encoder_len else first
    ends, a = [], 0
    while a < seq_len:
        e = min(a + chunk, seq_len)
        while True:
            straddle = (first >= a) & (first < e) & (enc_end > e)
            if not straddle.any():
                break
            e = int(enc_end[straddle].max())
        ends.append(e)
        a = e
    return ends


@functools.partial(jax.jit, static_argnums=0, static_argnames=("greedy",), donate_argnames=("caches",))
def _step(graphdef, state, caches, token, positions, key, step, temperature, top_k, top_p, *, greedy):
    _COMPILES[("step", token.shape[0], _tree_bytes(caches), greedy)] += 1
    model = nnx.merge(graphdef, state)
    logits, caches = model.decode_step(token, caches, positions=positions)
    nxt = choose_tokens(logits, jax.random.fold_in(key, step), temperature, top_k, top_p, greedy=greedy)
    return nxt, logits, caches, positions + 1


@dataclasses.dataclass
class StreamEvent:
    """One decoding step.

    step: index of the generated token (0 = the token after the prompt).
    tokens: [B] int, the new token of every row; -1 for rows that had already finished or just stopped on a
      stop token (stop tokens are not part of the output).
    text: new text of every row when a detokenizer was given ("" while held back), else None.
    finished: [B] bool, rows that are done after this step.
    """

    step: int
    tokens: np.ndarray
    text: list[str] | None
    finished: np.ndarray


@dataclasses.dataclass
class GenerationResult:
    """Everything generated for a batch.

    tokens: per row, the generated ids (stop tokens excluded; the token completing a stop string included).
    texts: per row, the detokenized output cut before any stop string (None without a detokenizer).
    finish_reasons: per row, "stop_token", "stop_string" or "length".
    logits: [B, steps, V] float32 logits that chose each generated token (when requested), else None.
    prompt_bucket / cache_len: the compiled shapes used.
    """

    tokens: list[list[int]]
    texts: list[str] | None
    finish_reasons: list[str]
    logits: np.ndarray | None
    prompt_bucket: int
    cache_len: int | None


class Generator:
    """Prefill + decode for `JRTLM` and `LlamaLM` (anything with `prefill` / `decode_step`).

    Args:
      model: the NNX model. Its current parameters are read at every call (training in between is fine).
      max_length: longest prompt + generation allowed; default the model's `max_length` (None = unbounded).
      min_bucket: smallest prompt / new-token bucket (powers of two from there).
      pad_id: token id written at pad positions (masked out; any valid id).
      prefill_mesh: a `jax.sharding.Mesh` to prefill on context-parallel (None: one device, the default).
        The prompt bucket is split on T over its axis `sequence_axis` (a long prompt's activations spread over
        the devices; linear attention combines per-device states with one all-gather, see
        `jrt_jax.parallel`); the combined caches then move to the device holding the model's parameters and
        decoding continues there, exactly as after a one-device prefill. The bucket must be divisible by the
        axis size and a sliding window must fit in one shard (bucket / size tokens).
      sequence_axis: the mesh axis of `prefill_mesh` the prompt is split over.
      prefill_chunk: prefill long prompts `prefill_chunk` positions at a time (`DecoderLM.prefill` with
        `caches=`), so the activations held at once are those of one chunk; tokens and logits equal a one-pass
        prefill. None (default): one pass. A JRT-RNN chunk is stretched where a row's encoder would straddle
        its end (`chunk_ends`). Not combined with `prefill_mesh`.
    """

    def __init__(self, model, *, max_length: int | None = None, min_bucket: int = 16, pad_id: int = 0,
                 prefill_mesh: Mesh | None = None, sequence_axis: str = "sequence", prefill_chunk: int | None = None):
        for attr in ("prefill", "decode_step", "config", "cache_grows"):
            if not hasattr(model, attr):
                raise TypeError(f"model must provide `{attr}` (JRTLM or LlamaLM); got {type(model).__name__}")
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.max_length = max_length if max_length is not None else getattr(model, "max_length", None)
        self.min_bucket = min_bucket
        if not 0 <= pad_id < self.vocab_size:
            raise ValueError(f"pad_id {pad_id} is outside the vocabulary [0, {self.vocab_size})")
        self.pad_id = pad_id
        if prefill_mesh is not None:
            if not isinstance(prefill_mesh, Mesh):
                raise TypeError(f"prefill_mesh must be a jax.sharding.Mesh; got {type(prefill_mesh).__name__}")
            if sequence_axis not in prefill_mesh.axis_names:
                raise ValueError(f"sequence_axis={sequence_axis!r} is not an axis of prefill_mesh; its axes are "
                                 f"{tuple(prefill_mesh.axis_names)}")
        self.prefill_mesh = prefill_mesh
        self.sequence_axis = sequence_axis
        if prefill_chunk is not None:
            if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
                raise ValueError(f"prefill_chunk must be an int >= 1 or None; got {prefill_chunk!r}")
            if prefill_mesh is not None:
                raise ValueError("prefill_chunk and prefill_mesh are exclusive: a chunked prefill runs on one device")
        self.prefill_chunk = prefill_chunk

    # --------------------------------------------------------------------------------------------------------

    def _check(self, prompts, max_new_tokens):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        prompts = normalize_prompts(prompts, self.vocab_size)
        if self.max_length is not None:
            for i, p in enumerate(prompts):
                if len(p) + max_new_tokens > self.max_length:
                    raise ValueError(
                        f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that is "
                        f"{len(p) + max_new_tokens} > the model's maximum length {self.max_length}")
        return prompts

    def shapes(self, prompts, max_new_tokens: int) -> tuple[int, int | None]:
        """(prompt bucket, KV cache length or None) that a call with these prompts compiles for."""
        longest = max(len(p) for p in prompts)
        t = bucket(longest, min_bucket=self.min_bucket, cap=self.max_length)
        if not self.model.cache_grows:  # constant-size caches: one compilation serves every generation length
            return t, None
        return t, t + bucket(max_new_tokens, min_bucket=self.min_bucket)

    def stream(
        self,
        prompts,
        *,
        max_new_tokens: int = 128,
        sampling: SamplingParams | None = None,
        seed: int = 0,
        stop_tokens: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        detokenize: Detokenize | None = None,
        return_logits: bool = False,
        _result: dict | None = None,
    ) -> Iterator[StreamEvent]:
        """An iterator of `StreamEvent`s, one per generated position, until every row has finished or
        `max_new_tokens`. Arguments are validated at once (errors raise here, not at the first `next`).

        Args:
          prompts: a list of token ids, or a batch of such lists (different lengths are left-padded).
          max_new_tokens: tokens to generate per row at most.
          sampling: `SamplingParams` (default greedy).
          seed: the sampling seed (a `jax.random.key`); the same seed gives the same tokens.
          stop_tokens: ids that end a row (not included in the output).
          stop_strings: strings that end a row (need `detokenize`); the text is cut before them.
          detokenize: ids → text, e.g. `tokenizer.decode`; enables `text` in the events.
          return_logits: keep the logits of every step (for `generate`'s result).
        """
        sampling = sampling or SamplingParams()
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams; got {type(sampling).__name__}")
        stop_strings = tuple(stop_strings)
        if stop_strings and detokenize is None:
            raise ValueError("stop_strings need a detokenize callback (token ids → text)")
        stop_set = {int(t) for t in stop_tokens}
        prompts = self._check(prompts, max_new_tokens)
        t_bucket, cache_len = self.shapes(prompts, max_new_tokens)
        if self.prefill_mesh is not None and t_bucket % self.prefill_mesh.shape[self.sequence_axis]:
            n = self.prefill_mesh.shape[self.sequence_axis]
            raise ValueError(f"prefill_mesh: the prompt bucket of {t_bucket} tokens is not divisible by the "
                             f"{n} devices of axis {self.sequence_axis!r}; use a mesh axis size that divides it "
                             f"(buckets are powers of two >= min_bucket={self.min_bucket})")
        tokens, mask = left_pad(prompts, t_bucket, self.pad_id)

        return self._run(prompts, tokens, mask, t_bucket, cache_len, max_new_tokens, sampling, seed, stop_set,
                         stop_strings, detokenize, return_logits, _result)

    def _run(self, prompts, tokens, mask, t_bucket, cache_len, max_new_tokens, sampling, seed, stop_set,
             stop_strings, detokenize, return_logits, _result):
        """The generation loop (a Python generator), after `stream` has validated everything."""
        graphdef, state = nnx.split(self.model)
        key = jax.random.key(seed)
        temp, top_k, top_p = sampling.as_arrays()
        greedy = sampling.greedy
        if self.prefill_mesh is not None:
            token, logits, caches, positions = self._prefill_sharded(graphdef, state, tokens, mask, key, temp,
                                                                     top_k, top_p, cache_len, greedy)
        else:
            token, logits, caches, positions = self._prefill_chunks(graphdef, state, tokens, mask, key, temp, top_k,
                                                                    top_p, cache_len, greedy)
        b = len(prompts)
        finished = np.zeros(b, bool)
        reasons = ["length"] * b
        generated: list[list[int]] = [[] for _ in range(b)]
        trackers = [TextTracker(detokenize, stop_strings) for _ in range(b)] if detokenize else None
        all_logits = []
        for step in range(max_new_tokens):
            nxt = None
            if step + 1 < max_new_tokens:  # dispatch the next step before reading this one (overlap)
                nxt = _step(graphdef, state, caches, token, positions, key, jnp.asarray(step + 1, jnp.int32),
                            temp, top_k, top_p, greedy=greedy)
            ids = np.asarray(token)
            if return_logits:
                all_logits.append(np.asarray(logits))
            out = np.full(b, -1, np.int64)
            pieces = [""] * b if trackers else None
            for r in range(b):
                if finished[r]:
                    continue
                t = int(ids[r])
                if t in stop_set:
                    finished[r], reasons[r] = True, "stop_token"
                    if trackers:
                        pieces[r] = trackers[r].flush()
                    continue
                out[r] = t
                generated[r].append(t)
                if trackers:
                    pieces[r] = trackers[r].add(t)
                    if trackers[r].stopped:
                        finished[r], reasons[r] = True, "stop_string"
            if step + 1 == max_new_tokens and trackers:  # out of budget: release held-back text
                for r in range(b):
                    if not finished[r]:
                        pieces[r] += trackers[r].flush()
            yield StreamEvent(step=step, tokens=out, text=pieces, finished=finished.copy())
            if finished.all() or nxt is None:
                break
            token, logits, caches, positions = nxt
        if _result is not None:
            _result.update(
                tokens=generated,
                texts=[tr.text for tr in trackers] if trackers else None,
                finish_reasons=reasons,
                logits=np.stack(all_logits, axis=1) if return_logits else None,
                prompt_bucket=t_bucket,
                cache_len=cache_len,
            )

    def _prefill_chunks(self, graphdef, state, tokens, mask, key, temp, top_k, top_p, cache_len, greedy):
        """The prefill on one device: one pass, or chunk after chunk (`prefill_chunk`)."""
        t = tokens.shape[1]
        chunk = self.prefill_chunk or t
        ends = chunk_ends(t, chunk, mask.sum(axis=1), getattr(self.model, "encoder_len", None))
        tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
        out = _prefill(graphdef, state, tokens[:, :ends[0]], mask[:, :ends[0]], key, temp, top_k, top_p,
                       cache_len=cache_len, greedy=greedy)
        for a, e in zip(ends[:-1], ends[1:]):
            out = _prefill(graphdef, state, tokens[:, a:e], mask[:, a:e], key, temp, top_k, top_p, out[2], out[3],
                           cache_len=None, greedy=greedy)
        return out

    def _prefill_sharded(self, graphdef, state, tokens, mask, key, temp, top_k, top_p, cache_len, greedy):
        """The prefill on `prefill_mesh` (parameters replicated there, the prompt split on T), its outputs moved
        to the device of the model's parameters, where decoding runs."""
        mesh, axis = self.prefill_mesh, self.sequence_axis
        home = next(iter(jax.tree.leaves(state)[0].devices()))
        rep = NamedSharding(mesh, PartitionSpec())
        split = NamedSharding(mesh, PartitionSpec(None, axis))
        out = _prefill(graphdef, jax.device_put(state, rep), jax.device_put(jnp.asarray(tokens), split),
                       jax.device_put(jnp.asarray(mask), split), jax.device_put(key, rep),
                       *jax.device_put((temp, top_k, top_p), rep), cache_len=cache_len, greedy=greedy, mesh=mesh,
                       axis_name=axis)
        return jax.device_put(out, home)

    def generate(self, prompts, *, on_event: Callable[[StreamEvent], None] | None = None,
                 **kwargs) -> GenerationResult:
        """Run `stream` to the end and collect a `GenerationResult`; `on_event` sees every event as it comes.

        Takes the same keyword arguments as `stream`.
        """
        result: dict = {}
        for event in self.stream(prompts, _result=result, **kwargs):
            if on_event is not None:
                on_event(event)
        return GenerationResult(**result)


def generate(model, prompts, **kwargs) -> GenerationResult:
    """`Generator(model).generate(prompts, **kwargs)`; compilations are shared across calls."""
    gen_kwargs = {k: kwargs.pop(k) for k in ("max_length", "min_bucket", "pad_id", "prefill_mesh", "sequence_axis",
                                             "prefill_chunk") if k in kwargs}
    return Generator(model, **gen_kwargs).generate(prompts, **kwargs)
