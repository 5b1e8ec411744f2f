"""Tensor file formats, read one tensor at a time: safetensors, ``torch.save`` zips, sharded indexes.

Every reader is a `TensorSource`: ``keys()``, ``info(key)`` (shape and dtype from the file's header, nothing
read), ``read(key)`` (one tensor as a C-contiguous numpy array). They never map or load the whole file:

* `SafetensorsFile` — parses the JSON header, then seeks and reads each tensor's bytes (bf16 / fp8 through
  `ml_dtypes`, which JAX already depends on). Sizes are checked against the file size up front, so a
  truncated file is reported before anything is converted.
* `TorchZipFile` — the zip format of ``torch.save`` (PyTorch ≥ 1.6). The pickle is read with a restricted
  unpickler (only the globals a state dict needs: tensors, storages, OrderedDict — like
  ``torch.load(weights_only=True)``) that records where each tensor's bytes are; ``read`` then seeks into the
  uncompressed zip record. torch itself is not needed. Older non-zip files fall back to ``torch.load``.
* `ShardedSource` — a Hugging Face ``*.index.json`` over several safetensors / bin shards.
* `RenamedSource` / `DictSource` — a renamed view of another source; in-memory arrays.

GGUF files are read by `jrt_jax.convert.gguf.GGUFFile` (same interface, through the ``gguf`` package). The
writers of the first two formats are in `jrt_jax.convert.writers`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pathlib
import pickle
import struct
import zipfile

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


def opened(source: TensorSource, build):
    """build(source), closing `source` if that raises (a failed open leaves no file handle behind)."""
    try:
        return build(source)
    except Exception:
        source.close()
        raise


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
