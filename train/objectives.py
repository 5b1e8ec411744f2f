"""Training objectives: next-token prediction, and JRT's NTP + masked-LM on the prefix.

Conventions: `labels[:, t]` is the token the model must predict from position t (-1: no loss at t), so plain
language modelling has labels[:, t] = tokens[:, t + 1]. Losses are returned as (sum, count) so gradient
accumulation and data parallelism average over the true number of targets.

JRT (Arora et al. 2024, §4): the model reads the first M tokens non-causally. Its loss is NTP on the decoder
positions t ≥ M plus `weight` × masked-LM on the prefix: each prefix token is replaced by `mask_id` with
probability `prob`, and the output at that position must predict the original token (the release: 0.15, 0.25).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sum(logits, labels, mask):
    """(Σ mask·CE, Σ mask) with labels < 0 excluded; logits [B,T,V] (any float dtype, computed in fp32)."""
    logits = logits.astype(jnp.float32)
    valid = (labels >= 0) & mask
    safe = jnp.where(valid, labels, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, logz - picked, 0.0)
    return jnp.sum(ce), jnp.sum(valid.astype(jnp.float32))


def mlm_mask(rng, tokens, enc_len: int, prob: float, mask_id: int, pad_id: int = 0):
    """Replace each non-pad prefix token (t < enc_len) by `mask_id` with probability `prob`.

    Returns (masked tokens, mlm_labels) where mlm_labels[:, t] is the original token at masked positions and -1
    elsewhere.
    """
    t = tokens.shape[1]
    in_prefix = (jnp.arange(t) < enc_len)[None, :]
    chosen = jax.random.bernoulli(rng, prob, tokens.shape) & in_prefix & (tokens != pad_id)
    return jnp.where(chosen, mask_id, tokens), jnp.where(chosen, tokens, -1)


def ntp_loss(logits, labels):
    """Next-token prediction over every position with a label."""
    return cross_entropy_sum(logits, labels, jnp.ones(labels.shape, bool))


def jrt_loss(logits, labels, mlm_labels, enc_len: int):
    """The two parts of the JRT loss: NTP on positions ≥ enc_len and MLM on the masked prefix positions.

    Returns (ntp (sum, count), mlm (sum, count)); `combine` weights them into
    ntp_sum / ntp_count + weight · mlm_sum / mlm_count.
    """
    t = labels.shape[1]
    decoder = (jnp.arange(t) >= enc_len)[None, :]
    ntp = cross_entropy_sum(logits, labels, jnp.broadcast_to(decoder, labels.shape))
    mlm = cross_entropy_sum(logits, mlm_labels, jnp.broadcast_to(~decoder, labels.shape))
    return ntp, mlm


def combine(ntp, mlm, weight: float):
    """Mean NTP loss + weight · mean MLM loss (an empty part counts 0)."""
    mean = lambda s, n: s / jnp.maximum(n, 1.0)
    total = mean(*ntp)
    if mlm is not None:
        total = total + weight * mean(*mlm)
    return total
