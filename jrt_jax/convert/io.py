"""Streaming tensor files: read one tensor at a time, write one tensor at a time, never leave a half file.

Readers (`open_source`) expose the same small interface, `TensorSource`: ``keys()``, ``info(key)`` (shape and
dtype from the file's header, nothing read), ``read(key)`` (one tensor as a C-contiguous numpy array). They
never map or load the whole file:

* `SafetensorsFile` — parses the JSON header, then seeks and reads each tensor's bytes (bf16 / fp8 through
  `ml_dtypes`, which JAX already depends on). Sizes are checked against the file size up front, so a
  truncated file is reported before anything is converted.
* `TorchZipFile` — the zip format of ``torch.save`` (PyTorch ≥ 1.6). The pickle is read with a restricted
  unpickler (only the globals a state dict needs: tensors, storages, OrderedDict — like
  ``torch.load(weights_only=True)``) that records where each tensor's bytes are; ``read`` then seeks into the
  uncompressed zip record. torch itself is not needed. Older non-zip files fall back to ``torch.load``.
* `ShardedSource` — a Hugging Face ``*.index.json`` over several safetensors / bin shards.

Writers take a list of `TensorPlan` (key, shape, dtype, and a function producing the array when its turn
comes): `write_safetensors` and `write_torch` (a zip that ``torch.load(..., weights_only=True)`` reads, tied
tensors sharing one storage). `AtomicFolder` writes every file under a temporary name inside the destination
folder and renames them into place only when all of them are complete; on any error it removes what it wrote
(and the folder, if it created it). A process killed outright (kill -9, power loss) cannot clean up: its temporary
files carry its pid (``.NAME.PID-TAG.tmp``), and the next `AtomicFolder` on that folder deletes those whose
process is gone (`remove_stale_temp_files`). `jrt convert` turns SIGTERM into an exception, so a terminated
conversion removes its files itself.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pathlib
import pickle
import re
import shutil
import time
import struct
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

from jrt_jax.convert.errors import ConversionError

PathLike = str | os.PathLike

# ------------------------------------------------------------------------------------------------- dtypes

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

#: torch storage class name → numpy dtype (the classes ``torch.save`` names in its pickle).
TORCH_STORAGES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_TORCH_STORAGE_NAMES = {v: k for k, v in TORCH_STORAGES.items()}


def dtype_name(dtype) -> str:
    """"float32" / "bfloat16" / "float16" / ... for a numpy dtype."""
    return np.dtype(dtype).name


# ------------------------------------------------------------------------------------------------- readers


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: np.dtype


class TensorSource:
    """Named tensors of a checkpoint, read one at a time. Use as a context manager (closes file handles)."""

    name: str = "<checkpoint>"

    def keys(self) -> list[str]:
        raise NotImplementedError

    def info(self, key: str) -> TensorInfo:
        raise NotImplementedError

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __contains__(self, key: str) -> bool:
        return key in set(self.keys())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _prod(shape) -> int:
    return int(math.prod(shape)) if shape else 1


class SafetensorsFile(TensorSource):
    """A ``.safetensors`` file: header parsed at once, tensors read by seek + readinto."""

    def __init__(self, path: PathLike):
        self.path = pathlib.Path(path)
        self.name = str(self.path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{self.name}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise ConversionError(f"{self.name}: truncated safetensors file: the header says {n} header bytes "
                                      f"but the file has {size} bytes")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConversionError(f"{self.name}: not a safetensors file (bad JSON header: {e})") from None
        if not isinstance(header, dict):
            raise ConversionError(f"{self.name}: not a safetensors file (header is not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        need = self._base
        for key, spec in header.items():
            try:
                dtype = SAFETENSORS_DTYPES[spec["dtype"]]
                shape = tuple(int(s) for s in spec["shape"])
                start, end = (int(x) for x in spec["data_offsets"])
            except KeyError as e:
                raise ConversionError(f"{self.name}: tensor {key!r} has an unknown dtype or a malformed header "
                                      f"entry ({e})") from None
            if end - start != _prod(shape) * dtype.itemsize:
                raise ConversionError(f"{self.name}: tensor {key!r}: {end - start} bytes for shape {shape} "
                                      f"{dtype_name(dtype)} (corrupt header)")
            self._entries[key] = (TensorInfo(shape, dtype), start, end)
            need = max(need, self._base + end)
        if need > size:
            beyond = sorted(k for k, (_, _, e) in self._entries.items() if self._base + e > size)
            raise ConversionError(
                f"{self.name}: truncated safetensors file: {size} bytes, the header needs {need}; "
                f"{len(beyond)} tensor(s) lie past the end, e.g. {beyond[:3]}")
        self._fh = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def info(self, key: str) -> TensorInfo:
        return self._entries[key][0]

    def read(self, key: str) -> np.ndarray:
        info, start, end = self._entries[key]
        if self._fh is None:
            self._fh = open(self.path, "rb")
        buf = np.empty(end - start, np.uint8)
        self._fh.seek(self._base + start)
        got = self._fh.readinto(memoryview(buf)) if buf.size else 0
        if got != buf.size:
            raise ConversionError(f"{self.name}: truncated while reading {key!r}")
        return buf.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --- torch zip -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _LazyStorage:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _LazyTensor:
    storage: _LazyStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *args, **kwargs):
    if not isinstance(storage, _LazyStorage):
        raise ConversionError(f"unsupported tensor storage in the pickle: {type(storage).__name__}")
    return _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *args, **kwargs):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


class _AnyType:
    """Stand-in for classes that only mark a tensor subtype (nn.Parameter)."""


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): _AnyType,
    ("torch", "Tensor"): _AnyType,
    **{("torch", name): _StorageType(dt) for name, dt in TORCH_STORAGES.items()},
}


class _LazyUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` state dict into `_LazyTensor`s; refuses any other global (like weights_only)."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ConversionError(
                f"the pickle refers to {module}.{name}, which a state dict of tensors does not need; only plain "
                "state dicts (torch.save(model.state_dict())) are read") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ConversionError(f"unsupported persistent id in the pickle: {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise ConversionError(f"unsupported storage type in the pickle: {storage_type!r}")
        return _LazyStorage(str(key), storage_type.dtype, int(numel))


ZIP_MAGIC = b"PK\x03\x04"


class TorchZipFile(TensorSource):
    """A ``torch.save`` zip file (``pytorch_model.bin``), read tensor by tensor without torch."""

    def __init__(self, path: PathLike):
        self.path = pathlib.Path(path)
        self.name = str(self.path)
        self._size = self.path.stat().st_size
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ConversionError(f"{self.name}: cannot read the torch zip archive ({e}); the file is truncated "
                                  "or corrupt") from None
        pkl = [n for n in self._zip.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ConversionError(f"{self.name}: not a torch.save archive (no single */data.pkl record)")
        self._prefix = pkl[0][: -len("data.pkl")]
        try:
            obj = _LazyUnpickler(self._zip.open(pkl[0])).load()
        except ConversionError as e:
            raise ConversionError(f"{self.name}: {e}") from None
        except Exception as e:  # noqa: BLE001 — any unpickling failure is a bad file
            raise ConversionError(f"{self.name}: cannot unpickle data.pkl ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise ConversionError(f"{self.name}: the pickle holds a {type(obj).__name__}, not a state dict")
        tensors: dict[str, _LazyTensor] = {}
        other: list[str] = []
        for k, v in obj.items():
            if isinstance(v, dict):
                _flatten_nested(v, f"{k}.", tensors, other)
            elif isinstance(v, _LazyTensor):
                tensors[str(k)] = v
            else:
                other.append(str(k))
        self._tensors = tensors
        #: keys whose values are not tensors (reported as unexpected by the loaders)
        self.non_tensor_keys = other
        self._fh = None
        # every record a tensor needs must exist and lie inside the file
        for key, t in tensors.items():
            rec = self._record(t.storage.key, key)
            need = t.storage.numel * t.storage.dtype.itemsize
            if rec.file_size < need:
                raise ConversionError(f"{self.name}: storage of {key!r} has {rec.file_size} bytes, needs {need} "
                                      "(corrupt archive)")

    def _record(self, storage_key: str, tensor_key: str) -> zipfile.ZipInfo:
        try:
            return self._zip.getinfo(f"{self._prefix}data/{storage_key}")
        except KeyError:
            raise ConversionError(f"{self.name}: the data of {tensor_key!r} (record data/{storage_key}) is "
                                  "missing from the archive") from None

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        t = self._tensors[key]
        return TensorInfo(t.shape, t.storage.dtype)

    def _data_start(self, rec: zipfile.ZipInfo) -> int:
        self._fh.seek(rec.header_offset)
        head = self._fh.read(30)
        if len(head) < 30 or head[:4] != ZIP_MAGIC:
            raise ConversionError(f"{self.name}: bad local header for {rec.filename} (corrupt archive)")
        n, m = struct.unpack("<HH", head[26:30])
        return rec.header_offset + 30 + n + m

    def read(self, key: str) -> np.ndarray:
        t = self._tensors[key]
        dtype = t.storage.dtype
        rec = self._record(t.storage.key, key)
        numel = _prod(t.shape)
        if numel == 0:
            return np.zeros(t.shape, dtype)
        span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride))
        lo, hi = t.offset * dtype.itemsize, (t.offset + span) * dtype.itemsize
        if hi > rec.file_size:
            raise ConversionError(f"{self.name}: {key!r} reaches past its storage (corrupt archive)")
        if self._fh is None:
            self._fh = open(self.path, "rb")
        if rec.compress_type == zipfile.ZIP_STORED:
            start = self._data_start(rec) + lo
            if start + (hi - lo) > self._size:
                raise ConversionError(f"{self.name}: truncated while reading {key!r}")
            buf = np.empty(hi - lo, np.uint8)
            self._fh.seek(start)
            if self._fh.readinto(memoryview(buf)) != buf.size:
                raise ConversionError(f"{self.name}: truncated while reading {key!r}")
        else:  # compressed records are unusual for torch.save; read through zipfile
            buf = np.frombuffer(self._zip.read(rec)[lo:hi], np.uint8)
        flat = buf.view(dtype)
        contiguous = tuple(_prod(t.shape[i + 1:]) for i in range(len(t.shape)))
        if tuple(t.stride) == contiguous or numel == 1:
            return flat[:numel].reshape(t.shape)
        view = np.lib.stride_tricks.as_strided(flat, t.shape, tuple(s * dtype.itemsize for s in t.stride))
        return np.ascontiguousarray(view)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._zip.close()


def _flatten_nested(obj: dict, prefix: str, out: dict, other: list) -> None:
    for k, v in obj.items():
        if isinstance(v, dict):
            _flatten_nested(v, f"{prefix}{k}.", out, other)
        elif isinstance(v, _LazyTensor):
            out[f"{prefix}{k}"] = v
        else:
            other.append(f"{prefix}{k}")


class DictSource(TensorSource):
    """In-memory tensors (numpy arrays); used for legacy torch files and in tests."""

    def __init__(self, tensors: dict[str, np.ndarray], name: str = "<memory>"):
        self._t = dict(tensors)
        self.name = name

    def keys(self) -> list[str]:
        return list(self._t)

    def info(self, key: str) -> TensorInfo:
        a = self._t[key]
        return TensorInfo(tuple(a.shape), np.dtype(a.dtype))

    def read(self, key: str) -> np.ndarray:
        return np.asarray(self._t[key], order="C")


def _legacy_torch(path: pathlib.Path) -> DictSource:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: not a zip archive; reading the legacy (pre-1.6) torch format needs torch "
                              "installed") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{path}: cannot read the file with torch.load ({type(e).__name__}: {e}); "
                              "it is truncated, corrupt or not a checkpoint") from None
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            out[k] = (v.float().numpy().astype(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else v.numpy())
    return DictSource(out, name=str(path))


def open_torch_file(path: PathLike) -> TensorSource:
    """`TorchZipFile` for zip archives; legacy pickles through torch.load (held in memory)."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == ZIP_MAGIC:
        return TorchZipFile(path)
    if not magic:
        raise ConversionError(f"{path}: empty file")
    return _legacy_torch(path)


class ShardedSource(TensorSource):
    """Several shard files behind a Hugging Face index (``weight_map``: key → shard file name)."""

    def __init__(self, index_path: PathLike):
        index_path = pathlib.Path(index_path)
        self.name = str(index_path)
        try:
            index = json.loads(index_path.read_text())
            weight_map = dict(index["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"{index_path}: not a valid checkpoint index ({type(e).__name__}: {e})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (index_path.parent / f).is_file()]
        if missing:
            raise ConversionError(f"{index_path}: shard file(s) missing next to the index: {missing}")
        self._shards: dict[str, TensorSource] = {}
        try:
            for f in files:
                p = index_path.parent / f
                self._shards[f] = SafetensorsFile(p) if f.endswith(".safetensors") else open_torch_file(p)
        except Exception:
            self.close()
            raise
        self._where = {}
        absent = []
        for key, f in weight_map.items():
            if key in set(self._shards[f].keys()):
                self._where[key] = self._shards[f]
            else:
                absent.append(f"{key} (in {f})")
        # tensors present in a shard but not listed in the index still count (and get reported if unexpected)
        for f, shard in self._shards.items():
            for key in shard.keys():
                self._where.setdefault(key, shard)
        if absent:
            self.close()
            raise ConversionError(f"{index_path}: the index lists tensors their shard does not hold: "
                                  f"{sorted(absent)}")
        self.non_tensor_keys = [k for s in self._shards.values() for k in getattr(s, "non_tensor_keys", [])]

    def keys(self) -> list[str]:
        return list(self._where)

    def info(self, key: str) -> TensorInfo:
        return self._where[key].info(key)

    def read(self, key: str) -> np.ndarray:
        return self._where[key].read(key)

    def close(self) -> None:
        for s in self._shards.values():
            s.close()


class RenamedSource(TensorSource):
    """A view of another source under new key names (``rename``: new name → original name)."""

    def __init__(self, inner: TensorSource, rename: dict[str, str], non_tensor_keys: list[str] | None = None):
        self.inner = inner
        self.name = inner.name
        self._map = dict(rename)
        self.non_tensor_keys = getattr(inner, "non_tensor_keys", []) if non_tensor_keys is None else non_tensor_keys

    def keys(self) -> list[str]:
        return list(self._map)

    def info(self, key: str) -> TensorInfo:
        return self.inner.info(self._map[key])

    def read(self, key: str) -> np.ndarray:
        return self.inner.read(self._map[key])

    def close(self) -> None:
        self.inner.close()


#: File names a Hugging Face style folder may hold weights in, in order of preference.
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


def find_weights(folder: PathLike) -> pathlib.Path | None:
    """The weights file of a checkpoint folder (see `WEIGHT_FILES`), or None."""
    folder = pathlib.Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def open_source(path: PathLike) -> TensorSource:
    """A `TensorSource` for a weights file: ``*.safetensors``, ``*.index.json``, or a torch file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.name.endswith(".index.json"):
        return ShardedSource(path)
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    return open_torch_file(path)


# ------------------------------------------------------------------------------------------------- writers


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

    import io as _io

    buf = _io.BytesIO()
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


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})\.tmp$")
_LEGACY_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[0-9a-f]{8})\.tmp$")  # before pids were recorded
_LEGACY_STALE_AFTER_S = 600.0


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's) / cannot tell: keep the file
    return True


def temp_name(name: str) -> str:
    """The temporary name of `name` while it is being written: ``.NAME.PID-TAG.tmp``."""
    return f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def remove_stale_temp_files(folder: PathLike) -> list[pathlib.Path]:
    """Delete the temporary files that dead writers left in `folder`; returns what was deleted.

    A file named by `temp_name` is stale when no process with its pid exists on this machine (two conversions
    into one folder from different machines are not supported). A file of the older ``.NAME.TAG.tmp`` form,
    which names no pid, is stale once unmodified for 10 minutes.
    """
    folder = pathlib.Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for f in folder.iterdir():
        m = _TMP_NAME.match(f.name)
        if m is not None:
            stale = not _pid_alive(int(m["pid"]))
        elif _LEGACY_TMP_NAME.match(f.name):
            try:
                stale = now - f.stat().st_mtime > _LEGACY_STALE_AFTER_S
            except FileNotFoundError:
                continue
        else:
            continue
        if stale and f.is_file():
            try:
                f.unlink()
                removed.append(f)
            except FileNotFoundError:
                pass
    return removed


class AtomicFolder:
    """Write several files into `folder` all-or-nothing.

        with AtomicFolder(dst) as out:
            write_safetensors(out.path("model.safetensors"), plans)
            out.path("config.json").write_text(...)

    Each `path(name)` is a temporary file inside `folder` (same file system, so the final `os.replace` is
    atomic). On success every temporary file is renamed to its name; on any exception (KeyboardInterrupt and
    SystemExit included) all of them are deleted, and the folder too when this created it. Existing files are
    replaced only on success, and only with ``overwrite=True``; an existing non-empty folder is otherwise
    refused. Temporary files left by killed earlier writers are deleted first (`remove_stale_temp_files`) and
    do not count as content.
    """

    def __init__(self, folder: PathLike, *, overwrite: bool = False):
        self.folder = pathlib.Path(folder)
        self.overwrite = overwrite
        self._files: list[tuple[pathlib.Path, pathlib.Path]] = []
        self._created = False

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise ConversionError(f"{self.folder}: exists and is not a folder")
        remove_stale_temp_files(self.folder)
        if self.folder.is_dir() and any(self.folder.iterdir()) and not self.overwrite:
            raise ConversionError(f"{self.folder}: folder exists and is not empty (pass overwrite=True / "
                                  "--overwrite to replace the files it writes)")
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created = True
        return self

    def path(self, name: str) -> pathlib.Path:
        final = self.folder / name
        tmp = self.folder / temp_name(name)
        self._files.append((tmp, final))
        return tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for tmp, final in self._files:
                if not tmp.exists():
                    raise ConversionError(f"internal error: {final.name} was planned but never written")
            for tmp, final in self._files:
                os.replace(tmp, final)
            return False
        for tmp, _ in self._files:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if self._created:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False


def iter_plans(plans: Iterable[TensorPlan]) -> list[TensorPlan]:
    plans = list(plans)
    keys = [p.key for p in plans]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConversionError(f"internal error: duplicate keys {dup}")
    return plans
