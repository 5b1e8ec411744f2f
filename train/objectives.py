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


def _positions(shape, positions):
    """Each token's position within its document: `positions` [B, T] for packed rows, else 0..T-1."""
    return jnp.arange(shape[1])[None, :] if positions is None else positions


def mlm_mask(rng, tokens, enc_len: int, prob: float, mask_id: int, pad_id: int = 0, *, positions=None, real=None):
    """Replace each non-pad prefix token (position < enc_len) by `mask_id` with probability `prob`.

    Packed rows: `positions` [B, T] is each token's index within its document (`jrt_jax.nn.padding.
    document_positions`), so the prefix is every document's first enc_len tokens, and `real` [B, T] bool marks
    the non-padding tokens (it replaces the `pad_id` test, since id 0 is a real token of most tokenizers).
    Returns (masked tokens, mlm_labels) where mlm_labels[:, t] is the original token at masked positions and -1
    elsewhere.
    """
    in_prefix = _positions(tokens.shape, positions) < enc_len
    not_pad = (tokens != pad_id) if real is None else real
    chosen = jax.random.bernoulli(rng, prob, tokens.shape) & in_prefix & not_pad
    return jnp.where(chosen, mask_id, tokens), jnp.where(chosen, tokens, -1)


def ntp_loss(logits, labels):
    """Next-token prediction over every position with a label."""
    return cross_entropy_sum(logits, labels, jnp.ones(labels.shape, bool))


def decoder_positions(labels, enc_len: int, positions=None):
    """[B, T] bool: the positions that carry the JRT objective's next-token loss (position ≥ enc_len within the
    document; `positions` as in `mlm_mask`)."""
    return jnp.broadcast_to(_positions(labels.shape, positions) >= enc_len, labels.shape)


def jrt_loss(logits, labels, mlm_labels, enc_len: int, positions=None):
    """The two parts of the JRT loss: NTP on positions ≥ enc_len and MLM on the masked prefix positions.

    `positions`: per-document token positions of packed rows (see `mlm_mask`); None: 0..T-1.
    Returns (ntp (sum, count), mlm (sum, count)); `combine` weights them into
    ntp_sum / ntp_count + weight · mlm_sum / mlm_count.
    """
    decoder = decoder_positions(labels, enc_len, positions)
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
