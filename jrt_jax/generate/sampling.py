"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p (nucleus).

The parameters are traced values inside the compiled step (changing them does not recompile); only greedy vs
sampling is a compile-time choice.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens.

    temperature: 0 → greedy (argmax); > 0 → sample from softmax(logits / temperature).
    top_k: keep the k most likely tokens (0 = no limit). Ties at the k-th logit are all kept.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = no limit);
      applied after top-k. The most likely token is always kept.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not t >= 0:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy); got {t!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off); got {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off); got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_arrays(self):
        """(temperature, top_k, top_p) as device scalars, the traced arguments of the compiled step."""
        return (jnp.asarray(max(self.temperature, 1e-6), jnp.float32), jnp.asarray(self.top_k, jnp.int32),
                jnp.asarray(self.top_p, jnp.float32))


def filter_logits(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """logits [B, V] / temperature, with tokens outside top-k and top-p set to -inf."""
    v = logits.shape[-1]
    logits = logits.astype(jnp.float32) / temperature
    desc = -jnp.sort(-logits, axis=-1)  # [B, V] descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jax.lax.dynamic_index_in_dim(desc, k - 1, axis=-1, keepdims=True)  # [B, 1]
    desc = jnp.where(desc >= kth, desc, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each sorted token
    keep = (before < top_p) & (desc > -jnp.inf)
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)  # the smallest kept logit
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def choose_tokens(logits: jax.Array, key: jax.Array, temperature, top_k, top_p, *, greedy: bool) -> jax.Array:
    """Next token per row [B] int32: argmax when `greedy`, else a sample from the filtered distribution."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)
