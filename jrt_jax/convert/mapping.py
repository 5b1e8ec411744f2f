"""How checkpoint tensors map onto model parameters, and the generic check-then-stream loader.

An architecture module (`hazy`, `llama_hf`, `gguf`) describes a model config as a list of `Entry`s — one per
parameter of the NNX model: its path (``layers.3.mlp.fc1.kernel``), the checkpoint key, the checkpoint shape,
and the two layout transforms (checkpoint → model and back) — plus `Extra`s, checkpoint keys that carry no
parameter of their own but are allowed and checked (a tied ``lm_head.weight`` must equal the embedding; a
stored RoPE ``inv_freq`` must equal the frequencies the model computes).

`check_keys` compares a `TensorSource`'s keys and header shapes with the entries before any data is read, and
raises one `KeyMismatchError` naming every missing, unexpected and mis-shaped key. `stream_into` then reads one
tensor at a time, converts it, places it (`placer`) and drops the host copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from jrt_jax.convert.errors import ConversionError, KeyMismatchError
from jrt_jax.convert.formats import TensorSource

Transform = Callable[[np.ndarray], np.ndarray]


def identity(a: np.ndarray) -> np.ndarray:
    return a


def transpose(a: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] ↔ NNX kernel [in, out]."""
    return a.T


def conv_to_model(w: np.ndarray) -> np.ndarray:
    """torch depthwise Conv1d weight [C, 1, K] → BaseConv kernel [K, C] (kernel[k, c] = weight[c, 0, k])."""
    return w[:, 0, :].T


def conv_to_checkpoint(k: np.ndarray) -> np.ndarray:
    """BaseConv kernel [K, C] → torch Conv1d weight [C, 1, K]."""
    return k.T[:, None, :]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model parameter and where it lives in a checkpoint."""

    path: str
    key: str
    shape: tuple[int, ...]
    to_model: Transform = identity
    to_checkpoint: Transform | None = identity


@dataclasses.dataclass(frozen=True)
class Extra:
    """An optional checkpoint key without a parameter of its own.

    `check(array, params)` gets the tensor (checkpoint layout) and the loaded parameters (path → jax.Array) and
    returns an error message, or None when the tensor is consistent with the model.
    """

    key: str
    shape: tuple[int, ...] | None
    check: Callable[[np.ndarray, dict], str | None]


def linear_entry(path_prefix: str, key_prefix: str, in_features: int, out_features: int) -> Entry:
    """An `nnx.Linear` kernel [in, out] stored as a torch weight [out, in]."""
    return Entry(f"{path_prefix}.kernel", f"{key_prefix}.weight", (out_features, in_features), transpose, transpose)


def check_keys(source: TensorSource, entries: Sequence[Entry], extras: Iterable[Extra] = (), *,
               ignore: Callable[[str], bool] = lambda k: False, hint: str = "") -> None:
    """Raise `KeyMismatchError` naming every missing / unexpected / mis-shaped key (nothing is read)."""
    present = {k: tuple(source.info(k).shape) for k in source.keys()}
    extras = {e.key: e for e in extras}
    expected = {e.key: e for e in entries}
    missing = [k for k in expected if k not in present]
    mismatched = [(k, present[k], e.shape) for k, e in expected.items() if k in present and present[k] != e.shape]
    mismatched += [(k, present[k], e.shape) for k, e in extras.items()
                   if k in present and e.shape is not None and present[k] != e.shape]
    unexpected = [k for k in present if k not in expected and k not in extras and not ignore(k)]
    unexpected += [f"{k} (not a tensor)" for k in getattr(source, "non_tensor_keys", []) if not ignore(k)]
    if missing or unexpected or mismatched:
        raise KeyMismatchError(source.name, missing, unexpected, mismatched, hint)


def float_dtype_of(source: TensorSource, keys: Iterable[str]) -> str:
    """The common floating dtype name of these tensors ("float32", "bfloat16" or "float16"); "float32" when they
    differ or use another type."""
    names = {np.dtype(source.info(k).dtype).name for k in keys}
    if len(names) == 1 and next(iter(names)) in ("float32", "bfloat16", "float16"):
        return next(iter(names))
    return "float32"


def flat_params(model) -> dict[str, nnx.Variable]:
    """'path.to.param' → the model's `nnx.Param` variable (works on an `nnx.eval_shape` model)."""
    return {".".join(str(p) for p in path): var
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def stream_into(model, source: TensorSource, entries: Sequence[Entry], extras: Iterable[Extra] = (), *,
                placer: Callable[[str, np.ndarray], jax.Array]) -> None:
    """Fill the parameters of `model` (abstract or not) from `source`, one tensor at a time.

    Every parameter of the model must have an entry (an internal error otherwise). After the parameters, each
    `Extra` present in the source is read and checked; the first inconsistency raises `ConversionError`.
    """
    params = flat_params(model)
    by_path = {e.path: e for e in entries}
    uncovered = sorted(set(params) - set(by_path))
    if uncovered:
        raise ConversionError(f"internal error: no checkpoint entry for model parameters {uncovered}")
    loaded = {}
    for path, var in params.items():
        e = by_path[path]
        raw = source.read(e.key)
        arr = np.ascontiguousarray(e.to_model(raw), dtype=var.dtype)
        del raw
        if tuple(arr.shape) != tuple(var.shape):
            raise ConversionError(f"internal error: {e.key} converts to {arr.shape}, {path} is {var.shape}")
        value = placer(path, arr)
        del arr
        var.set_value(value)
        loaded[path] = value
    present = set(source.keys())
    for extra in extras:
        if extra.key in present:
            msg = extra.check(source.read(extra.key), loaded)
            if msg:
                raise ConversionError(f"{source.name}: {extra.key}: {msg}")


def tied_head_extra(key: str, embed_path: str, to_model: Transform = identity) -> Extra:
    """A stored tied LM head: allowed when it equals the embedding bit for bit (after the same conversion)."""

    def check(arr, params):
        emb = params[embed_path]
        mine = np.ascontiguousarray(to_model(arr), dtype=emb.dtype)
        if mine.shape != tuple(emb.shape) or not np.array_equal(mine, np.asarray(jax.device_get(emb))):
            return ("differs from the tied embedding; this model ties its output head to the embedding, so an "
                    "independent head cannot be loaded")
        return None

    return Extra(key, None, check)
