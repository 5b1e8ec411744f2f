"""Sharding constraints on the residual stream, set by a trainer without the models knowing about meshes.

    with activation_sharding(NamedSharding(mesh, P(("data", "fsdp"), None, None))):
        logits = model(tokens)        # x is constrained after the embedding and after every block

Outside the context `constrain` is the identity.

The token-embedding lookup has its own constraint (`embedding_sharding` / `embed_lookup`): under FSDP the table's
width is sharded over the same mesh axis as the batch, and XLA's SPMD partitioner cannot gather rows from such a
table into batch-sharded activations; it falls back to replicating the table and re-partitioning the result
("Involuntary full rematerialization" warnings, a full copy every step). Constraining the table to its rows'
sharding with the width gathered first — the all-gather FSDP does before any use of a weight — turns the lookup
into per-shard gathers (masked when the rows are sharded) and the warning goes away.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_SHARDING: contextvars.ContextVar = contextvars.ContextVar("jrt_activation_sharding", default=None)
_TABLE: contextvars.ContextVar = contextvars.ContextVar("jrt_embedding_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(sharding):
    """Constrain [batch, seq, width] activations at block boundaries to `sharding` while tracing in this context."""
    token = _SHARDING.set(sharding)
    try:
        yield
    finally:
        _SHARDING.reset(token)


def constrain(x):
    sharding = _SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


@contextlib.contextmanager
def embedding_sharding(sharding):
    """Constrain the [vocab, width] embedding table to `sharding` before every lookup traced in this context
    (a trainer passes the rows' sharding with the width replicated; see the module docstring)."""
    token = _TABLE.set(sharding)
    try:
        yield
    finally:
        _TABLE.reset(token)


def embed_lookup(embed, tokens):
    """`embed(tokens)` for an `nnx.Embed`, reading the table through the `embedding_sharding` constraint when one
    is set (outside the context: exactly `embed(tokens)`)."""
    sharding = _TABLE.get()
    if sharding is None:
        return embed(tokens)
    (table,) = embed.promote_dtype((embed.embedding[...],), dtype=embed.dtype, inexact=False)
    return jax.numpy.take(jax.lax.with_sharding_constraint(table, sharding), tokens, axis=0)
