"""Peak memory of `jrt_jax.from_pretrained` on a random checkpoint of a release shape (default: JRT 1.3B).

    python benchmarks/convert_memory.py                           # jrt-1.3b, bfloat16 pytorch_model.bin
    python benchmarks/convert_memory.py --dtype float32 --format safetensors
    python benchmarks/convert_memory.py --preset jrt-360m --limit 2.5

1. Writes a random checkpoint in the release layout (``config.json`` + ``pytorch_model.bin`` whose keys carry
   the training wrapper's ``model.`` prefix, plus a ``*metrics*`` entry), streaming one tensor at a time.
2. Converts it in a fresh subprocess with ``from_pretrained`` and reads that process's peak resident set size
   (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which includes the Python / JAX runtime), then checks a few
   loaded tensors against the file.
3. Prints file size, peak RSS and their ratio; exits 1 if the ratio exceeds ``--limit`` (default 2.5).

The loader holds the converted model (the size of the checkpoint when the dtype is kept) plus one tensor in
flight, so the ratio sits a little above 1 plus the runtime's own footprint.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import jax, numpy as np
import jrt_jax
from jrt_jax.convert.formats import open_source
from jrt_jax.convert.mapping import flat_params
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.perf_counter()
model = jrt_jax.from_pretrained(sys.argv[1])
jax.block_until_ready([v.get_value() for v in flat_params(model).values()])
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hwm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
# spot checks against the file (small tensors, after the peak was read)
params = flat_params(model)
src = open_source(sys.argv[2])
checks = [("layers.0.norm1.scale", "model.transformer.layers.0.norm1.weight", lambda w: w),
          ("layers.1.mixer.proj_q.kernel", "model.transformer.layers.1.mixer.proj_q.weight", lambda w: w.T),
          ("layers.0.mixer.conv.kernel", "model.transformer.layers.0.mixer.conv.conv.weight", lambda w: w[:, 0, :].T)]
ok = True
for path, key, layout in checks:
    got = np.asarray(params[path].get_value())
    ok &= bool(np.array_equal(got, layout(src.read(key)).astype(got.dtype)))
print(json.dumps({"baseline_kb": base, "peak_kb": peak, "vmhwm_kb": hwm, "load_s": t2 - t1, "import_s": t1 - t0,
                  "params": int(sum(np.prod(v.shape) for v in params.values())), "values_ok": ok}))
"""


def write_checkpoint(folder: pathlib.Path, preset: str, dtype: str, fmt: str, seed: int = 0) -> pathlib.Path:
    """A random release-layout checkpoint of `preset`'s shape; returns the weights file."""
    import ml_dtypes

    from jrt_jax.convert import hazy
    from jrt_jax.convert.writers import TensorPlan, write_safetensors, write_torch
    from jrt_jax.models import JRTConfig

    config = JRTConfig.preset(preset)
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    rng = np.random.default_rng(seed)

    def produce(shape):
        return lambda: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np_dtype)

    plans = [TensorPlan("model." + e.key, e.shape, np.dtype(np_dtype), produce(e.shape)) for e in hazy.entries(config)]
    plans.append(TensorPlan("model.train_metrics.num-tokens.count", (), np.dtype(np.int64),
                            lambda: np.asarray(123, np.int64)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hazy.config_to_dict(config), indent=2))
    if fmt == "torch":
        path = folder / "pytorch_model.bin"
        write_torch(path, plans)
    else:
        path = folder / "model.safetensors"
        write_safetensors(path, plans, metadata={"format": "pt"})
    return path


# Linux carries a parent's peak RSS into a child's ru_maxrss across fork + exec; a tiny launcher process in
# between keeps the measured process's ru_maxrss its own (it matches /proc/self/status VmHWM, also reported).
LAUNCH = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', *sys.argv[1:]]).returncode)"


def measure(folder: pathlib.Path, weights: pathlib.Path) -> dict:
    """Convert in a fresh process and return its numbers (peak RSS in bytes, ratio to the file size, ...)."""
    env = {**__import__("os").environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LAUNCH, CHILD, str(folder), str(weights)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion subprocess failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    size = weights.stat().st_size
    out.update(file_bytes=size, peak_bytes=out["peak_kb"] * 1024, baseline_bytes=out["baseline_kb"] * 1024,
               vmhwm_bytes=out["vmhwm_kb"] * 1024, ratio=out["peak_kb"] * 1024 / size)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="jrt-1.3b")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--format", default="torch", choices=("torch", "safetensors"))
    p.add_argument("--limit", type=float, default=2.5, help="fail above this peak-RSS / file-size ratio")
    p.add_argument("--dir", help="where to write the checkpoint (default: a temporary folder, removed after)")
    args = p.parse_args(argv)
    tmp = None
    folder = pathlib.Path(args.dir) if args.dir else pathlib.Path(tmp := tempfile.mkdtemp(prefix="jrt-convert-"))
    try:
        t0 = time.perf_counter()
        weights = write_checkpoint(folder, args.preset, args.dtype, args.format)
        t_write = time.perf_counter() - t0
        r = measure(folder, weights)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    gib = 1024**3
    print(f"{args.preset} random checkpoint, {args.dtype}, {weights.name}: {r['params']:,} parameters, "
          f"file {r['file_bytes'] / gib:.2f} GiB (written in {t_write:.0f} s)")
    print(f"from_pretrained: {r['load_s']:.1f} s; peak RSS {r['peak_bytes'] / gib:.2f} GiB "
          f"(VmHWM {r['vmhwm_bytes'] / gib:.2f} GiB; runtime after imports {r['baseline_bytes'] / gib:.2f} GiB); "
          f"peak / file size = {r['ratio']:.2f} (limit {args.limit}); values match the file: {r['values_ok']}")
    return 0 if r["ratio"] <= args.limit and r["values_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
