"""The integrity checks of a run's checkpoints: a 64-bit digest of every array and a SHA-256 of each step's metadata.

`train.checkpoint` writes them (its docstring explains the digest), the readers of `jrt_jax.runs.reader` verify
them: both use these functions, so that the two sides cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


_U32 = jnp.uint32


def _bits(x):
    """The bits of every element as uint32 words (a trailing axis for 8-byte dtypes)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    dt = np.dtype(x.dtype)
    if dt == np.bool_:
        return x.astype(_U32)
    if dt.itemsize == 4:
        return lax.bitcast_convert_type(x, _U32)
    if dt.itemsize == 2:
        return lax.bitcast_convert_type(x, jnp.uint16).astype(_U32)
    if dt.itemsize == 1:
        return lax.bitcast_convert_type(x, jnp.uint8).astype(_U32)
    return lax.bitcast_convert_type(x, _U32)  # 8 bytes → [..., 2]


def _flat_index(shape):
    """The row-major flat index of every element, modulo 2**32."""
    index = jnp.zeros(shape, _U32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(_U32, shape, axis) * _U32(stride % 2**32)
        stride *= shape[axis]
    return index


def _digest(x):
    """(uint32[2] digest, all-finite flag) of one array; see train.checkpoint's docstring."""
    b = _bits(x)
    i = _flat_index(b.shape)
    h1 = jnp.sum((b ^ (i * _U32(0x9E3779B9) + _U32(0x7F4A7C15))) * _U32(0x85EBCA6B), dtype=_U32)
    t = (b + i * _U32(0xC2B2AE35) + _U32(0x165667B1)) * _U32(0x27D4EB2F)
    h2 = jnp.sum((t << _U32(13)) | (t >> _U32(19)), dtype=_U32)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
    return jnp.stack([h1, h2]), finite


@jax.jit
def _digests_jit(flat: dict) -> dict:
    """{key: (digest, finite)} of a dict of arrays in one program (one compilation per state structure)."""
    return {k: _digest(v) for k, v in flat.items()}


def _host(x) -> np.ndarray:
    """A small replicated jit output as a host array, on every process."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def _device_set(x):
    return frozenset(x.sharding.device_set) if isinstance(x, jax.Array) else None


def array_digests(flat: dict) -> tuple[dict, list[str]]:
    """({key: "xxxxxxxxxxxxxxxx" (64-bit hex)}, [keys holding non-finite values]) of a flat dict of arrays
    (jax arrays, computed on their devices — all processes must call it in multi-process jobs — or host arrays,
    computed on the default device).

    All arrays on the same devices are digested by ONE program, and its results are read before the next
    program starts: many small multi-device programs in flight at once deadlock simulated CPU devices (a device's
    launch of one program's part waits for an in-flight-computation slot while its peers wait for it in an
    all-reduce)."""
    groups: dict = {}
    for key, value in flat.items():
        groups.setdefault(_device_set(value), {})[key] = value
    digests, nonfinite = {}, []
    for group in groups.values():
        for key, (digest, finite) in _digests_jit(group).items():
            h = _host(digest).astype(np.uint64)
            digests[key] = f"{int(h[0]):08x}{int(h[1]):08x}"
            if not bool(_host(finite)):
                nonfinite.append(key)
    bad = set(nonfinite)
    return {k: digests[k] for k in flat}, [k for k in flat if k in bad]


def meta_sha256(meta: dict) -> str:
    """The SHA-256 a step's metadata carries of itself (every field but ``meta_sha256``)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
