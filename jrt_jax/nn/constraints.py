"""Sharding constraints on the residual stream, set by a trainer without the models knowing about meshes.

    with activation_sharding(NamedSharding(mesh, P(("data", "fsdp"), None, None))):
        logits = model(tokens)        # x is constrained after the embedding and after every block

Outside the context `constrain` is the identity.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_SHARDING: contextvars.ContextVar = contextvars.ContextVar("jrt_activation_sharding", default=None)


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
