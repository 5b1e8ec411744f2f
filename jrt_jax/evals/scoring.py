"""Per-token log-probabilities of targets, with the output head applied a slice of positions at a time.

`target_logprobs(model, tokens, targets)` is what perplexity, the lm-eval adapter and the QA scorer need:
log p(targets[b, t] | tokens[b, :t+1]) for every position with a target (≥ 0). The [B, T, V] logits are never
materialised — at 16,384 tokens and a 49,152-token vocabulary they alone would be 3.2 GB in float32 — the
final norm + head run on `chunk` positions at a time inside one jitted function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk", "enc_len"))
def _score(graphdef, state, tokens, targets, enc_lens, chunk: int, enc_len=None):
    model = nnx.merge(graphdef, state)
    if enc_lens is not None:
        enc_len = enc_lens
    x = model.hidden_states(tokens) if enc_len is None else model.hidden_states(tokens, enc_len=enc_len)
    b, t, d = x.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    xs = jnp.pad(x, [(0, 0), (0, pad), (0, 0)]).reshape(b, n, chunk, d).swapaxes(0, 1)
    ys = jnp.pad(targets, [(0, 0), (0, pad)], constant_values=-1).reshape(b, n, chunk).swapaxes(0, 1)

    def one(args):
        xc, yc = args
        logits = model.output_logits(xc).astype(jnp.float32)  # [B, chunk, V]
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, jnp.maximum(yc, 0)[..., None], axis=-1)[..., 0]
        valid = yc >= 0
        greedy = jnp.argmax(logits, axis=-1) == yc
        return jnp.where(valid, picked - logz, 0.0), valid & greedy

    logp, greedy = jax.lax.map(one, (xs, ys))
    unchunk = lambda a: a.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    return unchunk(logp), unchunk(greedy)


def target_logprobs(model, tokens, targets, *, chunk: int = 512, enc_len=None) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities [B, T] float32, greedy-correct [B, T] bool) of `targets` under `model`.

    Args:
      model: a `JRTLM` / `LlamaLM` (anything with `hidden_states` and `output_logits`).
      tokens: int [B, T] inputs.
      targets: int [B, T]: the token to score at each position (the next token), -1 where nothing is scored
        (those positions get log-probability 0 and greedy False).
      chunk: positions per application of the head.
      enc_len: JRT-RNN only: the encoder length of the forward — an int, or one per row (int array [B]; one
        compilation for all values); default the model's.
    """
    tokens = np.asarray(tokens)
    targets = np.asarray(targets)
    if tokens.ndim != 2 or tokens.shape != targets.shape:
        raise ValueError(f"tokens and targets must both be [B, T] with the same shape; got {tokens.shape} and "
                         f"{targets.shape}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int; got {chunk!r}")
    graphdef, state = nnx.split(model)
    per_row = enc_len is not None and np.ndim(enc_len) == 1
    logp, greedy = _score(graphdef, state, jnp.asarray(tokens, jnp.int32), jnp.asarray(targets, jnp.int32),
                          jnp.asarray(enc_len, jnp.int32) if per_row else None, chunk=min(chunk, tokens.shape[1]),
                          enc_len=None if per_row or enc_len is None else int(enc_len))
    return np.asarray(logp), np.asarray(greedy)
