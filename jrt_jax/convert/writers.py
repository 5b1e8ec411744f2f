"""Streaming tensor writers: a safetensors file or a ``torch.save`` zip, one tensor in memory at a time.

Writers take a list of `TensorPlan` (key, shape, dtype, and a function producing the array when its turn
comes): `write_safetensors` and `write_torch` (a zip that ``torch.load(..., weights_only=True)`` reads, tied
tensors sharing one storage). Write into an `jrt_jax.convert.atomic.AtomicFolder` so that a failed or killed
conversion leaves no half file.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jrt_jax.convert.errors import ConversionError
from jrt_jax.convert.formats import _SAFETENSORS_NAMES, _TORCH_STORAGE_NAMES, PathLike, _prod


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: its key, shape and dtype (known before any data), and how to produce the data.

    `alias_of`: the key of an earlier plan with the same data (tied weights); torch files share the storage,
    safetensors files (which cannot alias) store the data again.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]
    alias_of: str | None = None


def _checked(plan: TensorPlan) -> np.ndarray:
    arr = np.asarray(plan.produce(), order="C")
    if tuple(arr.shape) != tuple(plan.shape) or np.dtype(arr.dtype) != np.dtype(plan.dtype):
        raise ConversionError(f"internal error: {plan.key} produced {arr.shape} {arr.dtype}, planned "
                              f"{plan.shape} {np.dtype(plan.dtype)}")
    return arr


def _write_array(f, arr: np.ndarray) -> None:
    if arr.size:
        f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def write_safetensors(path: PathLike, plans: Sequence[TensorPlan], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file, one tensor in memory at a time (the header comes from the plans)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for p in plans:
        dt = np.dtype(p.dtype)
        if dt not in _SAFETENSORS_NAMES:
            raise ConversionError(f"{p.key}: dtype {dt} cannot be stored in safetensors")
        n = _prod(p.shape) * dt.itemsize
        header[p.key] = {"dtype": _SAFETENSORS_NAMES[dt], "shape": list(p.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for p in plans:
            arr = _checked(p)
            _write_array(f, arr)
            del arr


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())``."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...], rebuild):
        self.storage, self.shape, self.rebuild = storage, tuple(shape), rebuild

    def __reduce__(self):
        stride = tuple(_prod(self.shape[i + 1:]) for i in range(len(self.shape)))
        return self.rebuild, (self.storage, 0, self.shape, stride, False, collections.OrderedDict())


def write_torch(path: PathLike, plans: Sequence[TensorPlan], archive: str = "archive") -> None:
    """Write a ``torch.save``-compatible zip (loads with ``torch.load(weights_only=True)`` and ``mmap=True``).

    Data records are streamed one tensor at a time and aligned to 64 bytes like torch's own writer; aliases
    share a storage. torch is imported only for the names the pickle refers to (no tensor is created).
    """
    try:
        import torch
        from torch._utils import _rebuild_tensor_v2
    except ImportError:
        raise ConversionError("format='torch' needs torch installed (use format='safetensors' otherwise)") from None
    storages: dict[str, _StorageRef] = {}
    order: list[TensorPlan] = []
    state = collections.OrderedDict()
    for p in plans:
        dt = np.dtype(p.dtype)
        if dt not in _TORCH_STORAGE_NAMES:
            raise ConversionError(f"{p.key}: dtype {dt} cannot be stored in a torch file")
        if p.alias_of is not None:
            ref = storages[p.alias_of]
            if ref.numel != _prod(p.shape) or ref.dtype != dt:
                raise ConversionError(f"internal error: {p.key} aliases {p.alias_of} with another shape/dtype")
        else:
            ref = _StorageRef(str(len(order)), dt, _prod(p.shape))
            order.append(p)
        storages[p.key] = ref
        state[p.key] = _TensorRef(ref, p.shape, _rebuild_tensor_v2)

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                cls = getattr(torch, _TORCH_STORAGE_NAMES[obj.dtype])
                return ("storage", cls, obj.key, "cpu", obj.numel)
            return None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(f"{archive}/data.pkl", buf.getvalue())
        zf.writestr(f"{archive}/byteorder", "little")
        for p in order:
            name = f"{archive}/data/{storages[p.key].key}"
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            pos = zf.fp.tell()
            fixed = 30 + len(name.encode()) + 20 + 4  # local header, name, zip64 extra, our extra's header
            pad = -(pos + fixed) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB' padding field, as torch writes
            arr = _checked(p)
            with zf.open(info, "w", force_zip64=True) as w:
                _write_array(w, arr)
            del arr
        zf.writestr(f"{archive}/version", "3\n")


def iter_plans(plans: Iterable[TensorPlan]) -> list[TensorPlan]:
    plans = list(plans)
    keys = [p.key for p in plans]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConversionError(f"internal error: duplicate keys {dup}")
    return plans
