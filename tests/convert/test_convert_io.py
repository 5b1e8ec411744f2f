"""The streaming readers and writers against torch / safetensors themselves: views with offsets and strides,
shared storages, every dtype a checkpoint holds, 0-d tensors, zip64-free small files."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jrt_jax.convert.atomic import AtomicFolder  # noqa: E402
from jrt_jax.convert.formats import SafetensorsFile, TorchZipFile, open_source  # noqa: E402
from jrt_jax.convert.writers import TensorPlan, write_safetensors, write_torch  # noqa: E402
from jrt_jax.convert.errors import ConversionError  # noqa: E402


def _np(t):
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def test_torch_zip_reader_matches_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    sd = {
        "plain": torch.randn(3, 4, generator=g),
        "transposed_view": base.t(),                 # strides (1, 8)
        "offset_slice": base[2:5, 1:7],              # storage offset 17, non-contiguous
        "same_storage": base,                        # shares base's storage with the two views above
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(2, 3, generator=g).half(),
        "int64": torch.arange(7),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    torch.save(sd, tmp_path / "x.bin")
    src = TorchZipFile(tmp_path / "x.bin")
    assert sorted(src.keys()) == sorted(sd)
    for k, t in sd.items():
        got = src.read(k)
        assert got.shape == tuple(t.shape) and src.info(k).shape == tuple(t.shape), k
        assert got.dtype == _np(t).dtype, k
        assert np.array_equal(got, _np(t.contiguous())), k
        assert got.flags["C_CONTIGUOUS"], k


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_writers_are_read_by_the_real_libraries(tmp_path, fmt):
    rng = np.random.default_rng(0)
    arrays = {
        "a.weight": rng.standard_normal((4, 6)).astype(np.float32),
        "b.bf16": rng.standard_normal((3,)).astype(ml_dtypes.bfloat16),
        "c.half": rng.standard_normal((2, 2)).astype(np.float16),
        "d.count": np.asarray(5, np.int64),
    }
    plans = [TensorPlan(k, v.shape, v.dtype, (lambda v=v: v)) for k, v in arrays.items()]
    plans.append(TensorPlan("tied.weight", (4, 6), np.dtype(np.float32), plans[0].produce, alias_of="a.weight"))
    path = tmp_path / ("m.bin" if fmt == "torch" else "m.safetensors")
    if fmt == "torch":
        write_torch(path, plans)
        loaded = {k: _np(v) for k, v in torch.load(path, weights_only=True).items()}
        mm = torch.load(path, weights_only=True, mmap=True)
        assert mm["tied.weight"].data_ptr() == mm["a.weight"].data_ptr()  # one shared storage
    else:
        write_safetensors(path, plans, metadata={"format": "pt"})
        from safetensors.torch import load_file

        loaded = {k: _np(v) for k, v in load_file(path).items()}
        assert SafetensorsFile(path).metadata == {"format": "pt"}
    ours = open_source(path)
    for k, v in {**arrays, "tied.weight": arrays["a.weight"]}.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
        assert np.array_equal(ours.read(k), v), k


def test_writer_checks_what_it_is_given(tmp_path):
    bad = TensorPlan("x", (2, 2), np.dtype(np.float32), lambda: np.zeros((2, 3), np.float32))
    with pytest.raises(ConversionError, match="internal error: x produced"):
        write_safetensors(tmp_path / "y.safetensors", [bad])
    with pytest.raises(ConversionError, match="cannot be stored in a torch file"):
        write_torch(tmp_path / "z.bin", [TensorPlan("c", (1,), np.dtype(np.complex64), lambda: np.zeros(1))])


def test_atomic_folder(tmp_path):
    with AtomicFolder(tmp_path / "new") as out:
        out.path("a.txt").write_text("a")
        out.path("b.txt").write_text("b")
        assert not (tmp_path / "new" / "a.txt").exists()  # only temporary names until the end
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(ConversionError, match="not empty"):
        with AtomicFolder(tmp_path / "new"):
            pass
    with pytest.raises(RuntimeError):
        with AtomicFolder(tmp_path / "new", overwrite=True) as out:
            out.path("a.txt").write_text("changed")
            raise RuntimeError("boom")
    assert (tmp_path / "new" / "a.txt").read_text() == "a"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.txt", "b.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="not a folder"):
        with AtomicFolder(tmp_path / "file"):
            pass
