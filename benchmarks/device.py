"""Hardware validation in one command: GPU tests, prefill kernels vs cuDNN flash attention, decode, training MFU.

    python -m benchmarks.device --prepare-wheels            # here, with PyPI: the wheels the GPU image lacks
    python3 -m benchmarks.device --wheels .whl --out $OUT   # on the GPU machine: install them, then <= 8 minutes
    python -m benchmarks.device --dry-run --out /tmp/dry    # on any CPU: every section end to end, tiny sizes

It writes one JSON (`device.json`) and one Markdown file (`device.md`) into `--out` (default: `$OUT`, else
`device-results`), rewritten after every section and every measured point, so that a run stopped from outside
keeps everything measured before the stop.

Sections, in this order; each runs inside try/except (a failure is recorded as one line and the next section
runs) and under its own share of one overall `--budget-s` (default 480 s). A section that ends early leaves its
time to the ones after it (the shares are re-divided over the time that is left), a section stops adding points
when its time is spent, a Python-level overrun is interrupted by SIGALRM, and a watchdog thread writes the files
and ends the process at the overall budget plus 20 s whatever is running (a hung compile included); SIGTERM
writes them too before the process ends. Exit status: 0, 1 (a section failed), 124 (watchdog), 128 + signal.

  environment   versions (jax, jaxlib, its CUDA plugin, triton, jax-triton, torch, flax …), device kind, compute
                capability, the ptxas binaries Triton and XLA can use with their `--version`, and the PTX ISA
                version Triton writes (a tiny kernel compiled for the device, `.version` read from its PTX).
  gpu_tests     `pytest -m gpu` over the test files that use the marker, in a subprocess with a timeout;
                pass / fail / skip counts from its JUnit XML.
  ceilings      the measured bf16 matmul rate and HBM copy bandwidth, next to the datasheet numbers (H100, H200…).
  prefill       the prefill kernels (Pallas-Triton `backend="gpu"`, jax-triton `backend="triton"`, the XLA
                chunked path) forward and forward+backward vs `jax.nn.dot_product_attention(implementation=
                "cudnn", is_causal=True)`, B 16, H 16, F 16, D 64, T 2k-32k, bf16: ms, TFLOP/s, GB/s, % of the
                measured and nominal peaks, % of roofline.
  pla_vs_based  prefix linear attention (M = T/2) vs Based (causal linear attention over T), the "pallas" path.
  training      jrt-360m tokens/s and MFU at T 2048, bf16 compute, with `benchmarks/training.py`'s measurement.
  decode        ms per generated token after a real prefill (JRT-RNN) or a filled KV cache (Llama), with
                `benchmarks/decode.py`'s measurement.
  tpu           on a TPU only: the Mosaic kernel vs the XLA path vs `dot_product_attention` (xla), and training MFU.

The dry run (`--dry-run`) runs the same code at tiny sizes: T 128-256, B 1, 2 heads, jrt-micro and llama-tiny
instead of jrt-360m and SmolLM2-135M, XLA's optimisations mostly off, the Pallas kernels in interpret mode where
the platform is a CPU, attention through XLA where cuDNN cannot run, and `pytest -m gpu` collected but skipped
(started with the run and collected last, so that its imports overlap the other sections' compilations).
`tests/benchmarks/test_device_benchmark.py` runs it.

Why one process: every section shares the JAX runtime, so the device is initialised once and the later sections
reuse the measured ceilings; the GPU tests alone run in a subprocess (pytest, their own conftest), with
`XLA_PYTHON_CLIENT_PREALLOCATE=false` so that they fit next to this process's pre-allocated pool.

Why wheels: the GPU machine has no network and its image (Python 3.12, jax 0.11 with the CUDA 13 plugin, triton
3.6, torch, flax, optax, orbax) lacks jax-triton and tensorboardX. `--prepare-wheels` downloads exactly those
(`WHEELS`), pure-Python wheels of about 120 kB in all; `--wheels DIR` installs them with pip into `--site`
(default /tmp/site), then re-executes this module with that folder on PYTHONPATH so that every child process
(pytest) sees them. The repository itself travels with the run and is put on the path, not installed.

jax-triton 0.4.1 with triton 3.6: its metadata asks for triton >= 3.7, and it imports `TMA_TF32` from
`triton.backends.nvidia.driver`, which triton 3.6 does not define; the import is guarded, and when it fails
jax-triton replaces its whole NVIDIA backend by stubs, so every kernel call fails later.
`patch_triton_for_jax_triton` defines the constant (11, CUDA's TF32 tensor-map type; jax-triton uses it only for
TMA descriptors, which this project's kernel does not use) before jax-triton is first imported: here, and in the
pytest subprocess through this module loaded as a pytest plugin (`-p benchmarks.device`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "jrt-jax/device-benchmark/1"
JSON_NAME, MD_NAME = "device.json", "device.md"
# Training before decode: of the two, decode (up to five compilations of 26- and 30-layer models) is the one to
# squeeze when the time runs short.
SECTIONS = ("environment", "gpu_tests", "ceilings", "prefill", "pla_vs_based", "training", "decode", "tpu")
# Relative shares of the overall budget (seconds at the default 480 s on a GPU, where "tpu" is skipped; on a TPU
# the GPU sections are skipped and "tpu" takes their place). Only the shares of the sections still to run count.
SHARES = {"environment": 20, "gpu_tests": 60, "ceilings": 15, "prefill": 140, "pla_vs_based": 35, "training": 130,
          "decode": 80, "tpu": 200}
STATUSES = ("ok", "skipped", "error")
HARD_STOP_GRACE_S = 20.0
DEFAULT_SITE = "/tmp/site"

# ------------------------------------------------------------------------------------------ wheels for the device

#: What the GPU image lacks (KINDS.md's package list, 2026-11-17), pinned. jax-triton 0.4.1: the release for
#: jax 0.11 (0.3.1, the last that declares triton 3.6, predates it: the legacy custom call, no global-scratch size
#: for jaxlib > 0.11.0's kernels; 0.4.1 differs from 0.4.0 by one fix); what its declared triton >= 3.7 stands for
#: is supplied by `patch_triton_for_jax_triton` (module docstring). tensorboardX: a core dependency (the
#: trainer's event files); its own needs (numpy, packaging, protobuf) are on the image.
WHEELS = {"jax-triton": "0.4.1", "tensorboardX": "2.6.5"}
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
#: Python packages on the GPU image (KINDS.md, read 2026-11-17), normalised names: what a wheel may require.
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (tensorboardX == tensorboardx, jax_triton == jax-triton)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def download_command(dest, specs, python: str = sys.executable) -> list[str]:
    """The `pip download` that fetches `specs` ("name==version") as wheels for the GPU image's CPython 3.12 on
    x86-64 Linux, dependencies excluded (each needed one is named). Pure-Python wheels (py3-none-any) match any
    of the platforms, so one command takes both kinds."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
           "--implementation", "cp"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    return cmd + ["-d", str(dest), *specs]


def install_command(wheels, site: str = DEFAULT_SITE, python: str = sys.executable) -> list[str]:
    """The offline `pip install` of every wheel in the folder `wheels` into the folder `site` (the image's own
    packages untouched: --target, no dependencies, no index)."""
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    return [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--upgrade", "--target", str(site), *files]


def wheel_requirements(path) -> list[str]:
    """The names a wheel requires (its METADATA's Requires-Dist, `extra ==` lines left out), normalised."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace")
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            names.append(normalise(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip(), maxsplit=1)[0]))
    return names


def prepare_wheels(dest, *, wheels=None, run=subprocess.run, log=print) -> int:
    """Download `wheels` (default `WHEELS`) into `dest`, replacing other versions of the same projects (two
    versions of one project stop the device's install), report each wheel's size and any requirement that is
    neither on the image nor among the wheels. Returns the folder's size in bytes."""
    wheels = dict(WHEELS if wheels is None else wheels)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ours = {normalise(n) for n in wheels}
    for old in dest.glob("*.whl"):
        if normalise(old.name.split("-")[0]) in ours:
            old.unlink()
    cmd = download_command(dest, [f"{n}=={v}" for n, v in wheels.items()])
    log("$ " + " ".join(cmd))
    done = run(cmd)
    if getattr(done, "returncode", 0):
        raise SystemExit(f"pip download failed (exit {done.returncode}); see its output above")
    total = 0
    present = {normalise(p.name.split("-")[0]) for p in dest.glob("*.whl")}
    for path in sorted(dest.glob("*.whl")):
        size = path.stat().st_size
        total += size
        missing = [r for r in wheel_requirements(path) if r not in IMAGE_PACKAGES and r not in present]
        log(f"{path.name:<60}{size / 1024:>9.1f} kB" + (f"   needs, not on the image: {', '.join(missing)}"
                                                       if missing else ""))
    if ours - present:
        raise SystemExit(f"pip download left out {sorted(ours - present)}")
    log(f"{dest}: {total / 2**20:.2f} MiB in {len(list(dest.glob('*.whl')))} wheels (limit ~30 MiB; the working "
        f"tree that travels: 64 MiB)")
    return total


def install_wheels(wheels, site: str, log=print) -> list[str]:
    """Install the wheels offline into `site`; returns their file names."""
    files = sorted(p.name for p in Path(wheels).glob("*.whl"))
    if not files:
        raise SystemExit(f"--wheels {wheels}: no .whl files there (prepare them with --prepare-wheels)")
    cmd = install_command(wheels, site)
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    return files


def patch_triton_for_jax_triton() -> str | None:
    """The library's patch (`pallas_kernels.linear_attention.api.patch_triton_for_jax_triton`), imported late so
    that this module loads without jax."""
    from pallas_kernels.linear_attention import api

    return api.patch_triton_for_jax_triton()


def pytest_configure(config):  # this module as a pytest plugin: `pytest -p benchmarks.device`
    """Apply the jax-triton patch in the GPU-test subprocess before any test module imports jax_triton."""
    del config
    patch_triton_for_jax_triton()


# -------------------------------------------------------------------------------------------------- the plans


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full hardware run or the dry run."""

    seq_lens: tuple[int, ...]
    batch: int
    heads: int
    dtype: str
    repeats: int
    pla_seq_lens: tuple[int, ...]
    decode_models: tuple[str, str]  # JRT-RNN preset, Llama preset
    decode_contexts: tuple[int, ...]
    decode_steps: int
    train_preset: str
    train_seq_len: int
    train_batch: int
    train_steps: int
    train_compute_dtype: str
    matmul_n: int
    copy_mib: int
    feature_dim: int = 16
    head_dim: int = 64
    chunk: int = 64


# The prefill lengths span 2k-32k first (2k, 8k, 32k), then fill in: if the section's time runs out, what is
# left out is the middle of the range, not its long end. The Markdown table sorts by T.
FULL = Plan(seq_lens=(2048, 8192, 32768, 4096, 16384), batch=16, heads=16, dtype="bfloat16", repeats=5,
            pla_seq_lens=(2048, 8192, 32768), decode_models=("jrt-360m", "smollm2-135m"),
            decode_contexts=(2048, 16384), decode_steps=20, train_preset="jrt-360m", train_seq_len=2048,
            train_batch=8, train_steps=4, train_compute_dtype="bfloat16", matmul_n=16384, copy_mib=4096)
# The dry run: one length per kernel section (128 for the kernels, 256 for PLA vs Based) and the smallest presets
# (jrt-micro: 4 layers, enc_len 64; llama-tiny: 2 layers), because on a 2-core CI machine every compile counts.
DRY = Plan(seq_lens=(128,), batch=1, heads=2, dtype="bfloat16", repeats=1, pla_seq_lens=(256,),
           decode_models=("jrt-micro", "llama-tiny"), decode_contexts=(128,), decode_steps=2,
           train_preset="jrt-micro", train_seq_len=128, train_batch=1, train_steps=1, train_compute_dtype="bfloat16",
           matmul_n=256, copy_mib=8)

#: Datasheet peaks (dense, no sparsity) and HBM bandwidth, by a substring of the device kind; the first match wins.
NOMINAL = (
    ("H100 PCIe", dict(bf16=756e12, tf32=378e12, hbm=2.0e12, source="NVIDIA H100 PCIe datasheet")),
    ("H200", dict(bf16=989e12, tf32=494e12, hbm=4.8e12, source="NVIDIA H200 SXM datasheet")),
    ("H100", dict(bf16=989e12, tf32=494e12, hbm=3.35e12, source="NVIDIA H100 SXM datasheet")),
    ("A100", dict(bf16=312e12, tf32=156e12, hbm=2.039e12, source="NVIDIA A100 80GB SXM datasheet")),
    ("TPU v6 lite", dict(bf16=918e12, tf32=None, hbm=1.64e12, source="Cloud TPU v6e")),
    ("TPU v5 lite", dict(bf16=197e12, tf32=None, hbm=0.819e12, source="Cloud TPU v5e")),
    ("TPU v5p", dict(bf16=459e12, tf32=None, hbm=2.765e12, source="Cloud TPU v5p")),
    ("TPU v4", dict(bf16=275e12, tf32=None, hbm=1.2e12, source="Cloud TPU v4")),
)


def nominal_for(kind: str) -> dict | None:
    for name, figures in NOMINAL:
        if name.lower() in kind.lower():
            return dict(figures, match=name)
    return None


def split_budget(remaining_s: float, names, shares=SHARES) -> dict[str, float]:
    """Seconds for each of the sections still to run: `remaining_s` in proportion to their shares."""
    total = sum(shares[n] for n in names) or 1
    return {n: remaining_s * shares[n] / total for n in names}


# ------------------------------------------------------------------------------------------------ the record


class SectionTimeout(Exception):
    """A section ran past its budget (raised by SIGALRM between Python bytecodes)."""


class Skip(Exception):
    """A section that does not apply here; its message is the reason."""


def _clean(x):
    """JSON without NaN / inf (null instead), tuples as lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class Recorder:
    """The results and their two files, rewritten atomically (write, then rename) under one lock: the main thread
    writes after every point, the watchdog once at a hard stop."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.lock = threading.RLock()
        self.data = dict(schema=SCHEMA, **meta, sections={
            n: dict(status="pending", seconds=None, budget_s=None, error=None, summary="", figures={}, rows=[])
            for n in SECTIONS})
        out.mkdir(parents=True, exist_ok=True)

    def section(self, name: str) -> dict:
        return self.data["sections"][name]

    def write(self) -> None:
        with self.lock:
            self.data["wall_s"] = round(time.time() - self.data["t0"], 2)
            payload = json.dumps(_clean(self.data), indent=1, allow_nan=False)
            markdown = render_markdown(self.data)
            for name, text in ((JSON_NAME, payload), (MD_NAME, markdown)):
                tmp = self.out / f".{name}.tmp"
                tmp.write_text(text)
                os.replace(tmp, self.out / name)


# --------------------------------------------------------------------------------------------------- Markdown


def _fmt(x, spec=".3g", none="—"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _num(x) -> str:
    """A rate at a sensible precision whatever its size (a CPU's 0.0191 TFLOP/s, an H200's 3950 GB/s)."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def _table(header, rows) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return lines


KERNEL_HEADER = ("method", "pass", "T", "ms", "TFLOP/s", "% peak meas.", "% peak nominal", "GB/s", "% HBM meas.",
                 "% roofline", "× vs attention", "note")


def _kernel_rows(rows):
    return [(r["method"], r["pass"], r["seq_len"], _fmt(r.get("ms"), ".3f"), _num(r.get("tflops")),
             _fmt(r.get("pct_peak_measured"), ".1f"), _fmt(r.get("pct_peak_nominal"), ".1f"), _num(r.get("gbs")),
             _fmt(r.get("pct_hbm_measured"), ".1f"), _fmt(r.get("pct_roofline"), ".1f"),
             _fmt(r.get("speedup_vs_attention"), ".2f"), r.get("note", "")) for r in rows]


def render_markdown(data: dict) -> str:
    """The Markdown report: a summary table (one row per section: status, seconds, headline or error), then one
    table per section with rows."""
    env = data["sections"]["environment"].get("figures", {})
    versions = env.get("versions", {})
    lines = [f"# jrt-jax hardware validation: {data.get('device_kind') or '?'} ({data.get('backend') or '?'})", ""]
    lines.append(f"Started {data['started']}; {data.get('wall_s', 0):.0f} s of the {data['budget_s']:.0f} s budget"
                 f"{'; dry run (tiny sizes)' if data['dry_run'] else ''}; finished: {data.get('finished') or 'no'}.")
    if versions:
        lines.append("; ".join(f"{k} {v}" for k, v in versions.items() if v) + ".")
    lines += ["", "## Summary", ""]
    lines += _table(("section", "status", "s", "budget s", "result"), [
        (n, s["status"], _fmt(s.get("seconds"), ".1f"), _fmt(s.get("budget_s"), ".0f"),
         s.get("error") or s.get("summary") or "") for n, s in data["sections"].items()])
    for name, sec in data["sections"].items():
        rows = sec.get("rows") or []
        if name == "environment" and sec.get("figures"):
            f = sec["figures"]
            lines += ["", "## environment", ""]
            items = [(k, f.get(k)) for k in ("python", "machine", "backend", "device_kind", "device_count",
                                             "compute_capability", "memory_gib", "driver", "nvcc", "triton_ptx",
                                             "jax_triton", "patches", "installed_wheels", "env")
                     if f.get(k) not in (None, "", [], {})]
            items += [(f"ptxas ({p['role']})", f"{p['path']}: {p.get('version') or p.get('error')}")
                      for p in f.get("ptxas", [])]
            items += [(k, v) for k, v in f.get("versions", {}).items()]
            lines += _table(("what", "value"), [(k, json.dumps(v) if isinstance(v, (dict, list)) else v)
                                                 for k, v in items])
        elif name in ("prefill", "tpu") and rows:
            lines += ["", f"## {name}", "", sec.get("figures", {}).get("shape", ""), ""]
            lines += _table(KERNEL_HEADER, _kernel_rows(sorted((r for r in rows if "pass" in r),
                                                                key=lambda r: (r["seq_len"], r["pass"]))))
            train = sec.get("figures", {}).get("training")
            if train:
                lines += ["", *_table(("training", "value"), [(k, _fmt(v)) for k, v in train.items()])]
        elif name == "pla_vs_based" and rows:
            lines += ["", "## pla_vs_based", ""]
            lines += _table(("T", "implementation", "PLA M=T/2 ms", "Based ms", "PLA / Based", "note"), [
                (r["seq_len"], r.get("implementation"), _fmt(r.get("pla_ms"), ".3f"), _fmt(r.get("based_ms"), ".3f"),
                 _fmt(r.get("ratio"), ".2f"), r.get("note", "")) for r in rows])
        elif name == "decode" and rows:
            lines += ["", "## decode", ""]
            lines += _table(("model", "params (M)", "context", "ms/token", "state MiB", "prefill s", "note"), [
                (r["model"], _fmt(r.get("params_m"), ".1f"), r["context"], _fmt(r.get("ms_per_token"), ".3f"),
                 _fmt(r.get("state_mib"), ".2f"), _fmt(r.get("prefill_s"), ".2f"), r.get("note", "")) for r in rows])
        elif name == "training" and sec.get("figures"):
            lines += ["", "## training", ""]
            lines += _table(("what", "value"), [(k, _fmt(v, ".4g")) for k, v in sec["figures"].items()])
        elif name == "ceilings" and sec.get("figures"):
            lines += ["", "## ceilings", ""]
            lines += _table(("what", "value"), [(k, json.dumps(v) if isinstance(v, dict) else _fmt(v, ".4g"))
                                                 for k, v in sec["figures"].items()])
        elif name == "gpu_tests" and sec.get("figures"):
            f = sec["figures"]
            lines += ["", "## gpu_tests", "", f"`{f.get('command', '')}`", ""]
            lines += _table(("passed", "failed", "errors", "skipped", "exit", "s"), [
                (f.get("passed"), f.get("failed"), f.get("errors"), f.get("skipped"), f.get("returncode"),
                 _fmt(f.get("seconds"), ".1f"))])
            if f.get("problems"):
                lines += ["", *_table(("test", "outcome"), [(p["test"], p["message"]) for p in f["problems"]])]
            if sec["status"] == "error" and f.get("tail"):
                lines += ["", "```", *f["tail"], "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- running


class Context:
    """What the sections share: the plan, the options, the record, the section's deadline, the ceilings."""

    def __init__(self, args, plan: Plan, recorder: Recorder, backend: str):
        self.args, self.plan, self.recorder, self.backend = args, plan, recorder, backend
        self.deadline = math.inf
        self.ceilings: dict = {}
        self.child: subprocess.Popen | None = None  # the GPU tests' process while it runs
        self.early_tests: dict | None = None  # the dry run's GPU tests, started with the run
        self.section_start = time.time()
        self.interpret = backend == "cpu"  # Pallas kernels in the interpreter where no accelerator runs them

    def left(self) -> float:
        return self.deadline - time.time()

    def write(self) -> None:
        self.recorder.write()


def _on_alarm(signum, frame):
    raise SectionTimeout("section budget exceeded")


def _timed(fn, *args, repeats: int):
    """(seconds of the first call: compile + run, median seconds of `repeats` more calls)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _roofline(flops: float, nbytes: float, seconds: float, ceilings: dict) -> dict:
    """Achieved rates and their fractions of the ceilings; % of roofline = max(FLOPs / measured bf16 peak,
    bytes / measured bandwidth) / time, with the nominal figures where nothing was measured."""
    out = dict(tflops=flops / seconds / 1e12, gbs=nbytes / seconds / 1e9)
    peak_m, bw_m = ceilings.get("bf16_flops"), ceilings.get("hbm_bytes_per_s")
    nominal = ceilings.get("nominal") or {}
    peak_n, bw_n = nominal.get("bf16"), nominal.get("hbm")
    out["pct_peak_measured"] = 100 * flops / seconds / peak_m if peak_m else None
    out["pct_peak_nominal"] = 100 * flops / seconds / peak_n if peak_n else None
    out["pct_hbm_measured"] = 100 * nbytes / seconds / bw_m if bw_m else None
    peak, bw = peak_m or peak_n, bw_m or bw_n
    out["pct_roofline"] = 100 * max(flops / peak, nbytes / bw) / seconds if peak and bw else None
    return out


# --------------------------------------------------------------------------------------------- environment


def _version_of(path: str) -> str:
    """`path --version`'s release ("12.8.93"), or its last line."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    text = out.stdout + out.stderr
    m = re.search(r"V(\d+\.\d+\.\d+)", text) or re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else (text.strip().splitlines() or ["?"])[-1]


def ptxas_candidates() -> list[tuple[str, str]]:
    """(role, path) of every ptxas this process could end up using: Triton's (its environment variables, then
    the binaries bundled in its wheel), XLA's (--xla_gpu_cuda_data_dir, CUDA's pip packages, CUDA_HOME,
    /usr/local/cuda) and the one on PATH; each path once."""
    found = []
    for var in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH"):
        if os.environ.get(var):
            found.append((var, os.environ[var]))
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        for name in ("ptxas", "ptxas-blackwell"):
            bundled = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name
            found.append((f"triton bundled {name}", str(bundled)))
    m = re.search(r"--xla_gpu_cuda_data_dir=(\S+)", os.environ.get("XLA_FLAGS", ""))
    if m:
        found.append(("XLA_FLAGS cuda_data_dir", str(Path(m.group(1)) / "bin" / "ptxas")))
    for entry in sys.path:
        for path in sorted(glob.glob(os.path.join(entry, "nvidia", "*", "bin", "ptxas"))):
            found.append(("CUDA pip package (XLA)", path))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append((var, str(Path(os.environ[var]) / "bin" / "ptxas")))
    found.append(("/usr/local/cuda", "/usr/local/cuda/bin/ptxas"))
    if shutil.which("ptxas"):
        found.append(("PATH", shutil.which("ptxas")))
    seen, out = set(), []
    for role, path in found:
        real = os.path.realpath(path)
        if os.path.isfile(real) and real not in seen:
            seen.add(real)
            out.append((role, path))
    return out


_PROBE_KERNEL = '''
import triton
import triton.language as tl


@triton.jit
def probe(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = i < n
    tl.store(y_ptr + i, tl.load(x_ptr + i, mask=keep) * 2.0, mask=keep)
'''


def triton_ptx(arch: int) -> dict:
    """Compile a tiny Triton kernel for compute capability `arch` (no GPU needed) and read what its PTX declares.

    The kernel lives in a temporary file because `triton.jit` reads its function's source. `ptxas` is the binary
    Triton picks for this arch (its version sets the PTX ISA Triton writes: CUDA 12.8 -> 8.7, 13.0 -> 9.0), and
    the PTX then goes to whatever ptxas XLA finds when jax-triton's kernel call is compiled (jax#25344).
    """
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jrt_device_probe.py"
        path.write_text(_PROBE_KERNEL)
        spec = importlib.util.spec_from_file_location("jrt_device_probe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        src = triton.compiler.ASTSource(module.probe, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32",
                                                       "BLOCK": "constexpr"}, {"BLOCK": 128})
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
    ptx = compiled.asm["ptx"]
    version = re.search(r"^\s*\.version\s+(\S+)", ptx, re.M)
    target = re.search(r"^\s*\.target\s+(\S+)", ptx, re.M)
    out = dict(arch=arch, ptx_version=version.group(1) if version else None,
               target=target.group(1) if target else None)
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        tool = get_ptxas(arch)
        out.update(ptxas=tool.path, ptxas_version=tool.version)
    except Exception as exc:  # noqa: BLE001 - older/newer Triton: the PTX figures still stand
        out["ptxas"] = one_line(exc)
    return out


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def section_environment(ctx: Context, sec: dict) -> None:
    import jax

    f = sec["figures"]
    names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "libtpu", "flax", "optax", "orbax-checkpoint",
             "numpy", "triton", "jax-triton", "torch", "tensorboardX")
    f["versions"] = {n: v for n in names if (v := _dist_version(n))}
    f["python"] = f"{platform.python_version()} ({sys.executable})"
    f["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    f["backend"] = ctx.backend
    devices = jax.devices()
    f["device_kind"], f["device_count"] = devices[0].device_kind, len(devices)
    cc = getattr(devices[0], "compute_capability", None)
    f["compute_capability"] = cc
    with contextlib.suppress(Exception):
        f["memory_gib"] = round(devices[0].memory_stats()["bytes_limit"] / 2**30, 1)
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            out = subprocess.run(query, capture_output=True, text=True, timeout=20)
            f["driver"] = out.stdout.strip().splitlines()[0]
    f["ptxas"] = []
    for role, path in ptxas_candidates():
        try:
            f["ptxas"].append(dict(role=role, path=path, version=_version_of(path)))
        except Exception as exc:  # noqa: BLE001
            f["ptxas"].append(dict(role=role, path=path, error=one_line(exc)))
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc:
        with contextlib.suppress(Exception):
            f["nvcc"] = f"{nvcc}: {_version_of(nvcc)}"
    f["env"] = {k: os.environ[k] for k in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH", "XLA_FLAGS",
                                           "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION") if k in os.environ}
    f["installed_wheels"] = [w for w in os.environ.get("JRT_DEVICE_INSTALLED", "").split(",") if w]
    f["patches"] = [p for p in ctx.recorder.data.get("patches", []) if p]
    ctx.write()
    arch = int(str(cc).replace(".", "")) if cc else 90
    try:
        f["triton_ptx"] = triton_ptx(arch)
    except Exception as exc:  # noqa: BLE001
        f["triton_ptx"] = one_line(exc)
    f["jax_triton"] = _jax_triton_status()
    ptx = f["triton_ptx"]
    ptx_text = (f"Triton PTX {ptx.get('ptx_version')} ({ptx.get('target')}) via ptxas {ptx.get('ptxas_version')}"
                if isinstance(ptx, dict) else f"Triton PTX: {ptx}")
    sec["summary"] = (f"{f['device_kind']} x{f['device_count']}, cc {cc or '—'}, jax {f['versions'].get('jax')}, "
                      f"{ptx_text}, jax-triton {f['jax_triton'].get('version') or 'absent'}")


def _jax_triton_status() -> dict:
    """Whether jax-triton imports here, its version, its custom-call target and whether its NVIDIA backend is the
    real one (jax-triton 0.4 swaps in stubs when its triton import fails)."""
    import types

    if importlib.util.find_spec("jax_triton") is None:
        return dict(importable=False, reason="not installed")
    try:
        import jax_triton
    except Exception as exc:  # noqa: BLE001 - e.g. a CPU-only jaxlib, whose gpu_triton lacks the kernel bindings
        return dict(importable=False, reason=one_line(exc))

    lib = getattr(jax_triton, "triton_lib", None)
    cb = getattr(lib, "cb", None)
    return dict(importable=True, version=getattr(jax_triton, "__version__", None),
                custom_call_target=getattr(jax_triton, "CUSTOM_CALL_TARGET_NAME", "triton_kernel_call"),
                nvidia_backend="stubbed (triton import failed)" if isinstance(cb, types.SimpleNamespace) else "ok")


# ---------------------------------------------------------------------------------------------------- gpu tests


def gpu_test_files() -> list[str]:
    """The test files that use the `gpu` marker (collecting only these keeps the run short, and a module that
    needs a package the image lacks cannot stop the collection)."""
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if re.search(r"pytest\.mark\.gpu\b", path.read_text(errors="replace")):
            files.append(str(path.relative_to(ROOT)))
    return files


def _child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    paths = [p for p in (os.environ.get("JRT_DEVICE_SITE"), str(ROOT)) if p]
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths + rest)
    env.update(extra or {})
    return env


def junit_counts(path) -> dict:
    """passed / failed / errors / skipped and the problem tests (name + one line) from a JUnit XML report."""
    root = ET.parse(path).getroot()
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    problems = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        counts[{"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome]] += 1
        if outcome != "skipped":
            node = case.find(outcome)
            problems.append(dict(test=name, message=(node.get("message") or node.text or "").strip()[:300]))
    return dict(counts, problems=problems)


def start_gpu_tests(ctx: Context) -> dict:
    """Start `pytest -m gpu` in its own process group; returns what `section_gpu_tests` needs to finish it."""
    files = gpu_test_files() or ["tests"]
    tmp = tempfile.TemporaryDirectory()
    report = Path(tmp.name) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.device",
           "--continue-on-collection-errors", f"--junitxml={report}", *files]
    platforms = {"gpu": "cuda,cpu", "tpu": "tpu,cpu"}.get(ctx.backend, "cpu")
    env = _child_env({"JAX_PLATFORMS": platforms, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    log = open(Path(tmp.name) / "pytest.log", "w+")  # a file, not a pipe: nothing blocks the tests while unread
    ctx.child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return dict(tmp=tmp, report=report, log=log, start=time.time(),
                command=" ".join(["python", *cmd[1:]]).replace(str(report), "JUNIT.xml"))


def section_gpu_tests(ctx: Context, sec: dict) -> None:
    """The GPU tests in a subprocess: started here, or (dry run) at the start of the run, so that on a small CPU
    its imports overlap the other sections' compilations; either way it must end within this section's time."""
    run = ctx.early_tests or start_gpu_tests(ctx)
    ctx.early_tests = None
    f = sec["figures"]
    f["command"] = run["command"]
    timeout = max(5.0, ctx.left() - 2)
    child = ctx.child
    try:
        child.wait(timeout=timeout)
        f["returncode"] = child.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        f["returncode"] = None
        f["timed_out_after_s"] = round(timeout, 1)
    except BaseException:  # SIGALRM / SIGTERM while waiting: the tests must not outlive the section
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        raise
    finally:
        ctx.child = None
    run["log"].seek(0)
    f["tail"] = run["log"].read().strip().splitlines()[-15:]
    run["log"].close()
    took = re.search(r" in ([\d.]+)s", (f["tail"] or [""])[-1])  # pytest's own figure: the dry run collects it late
    f["seconds"] = float(took.group(1)) if took else round(time.time() - run["start"], 1)
    with run["tmp"]:
        if run["report"].exists():
            f.update(junit_counts(run["report"]))
    if f.get("timed_out_after_s"):
        raise SectionTimeout(f"pytest stopped after {f['timed_out_after_s']:.0f} s (the section's budget)")
    if "passed" not in f:
        raise RuntimeError(f"pytest wrote no report (exit {f['returncode']}): {(f['tail'] or ['?'])[-1]}")
    sec["summary"] = (f"{f['passed']} passed, {f['failed']} failed, {f['errors']} errors, {f['skipped']} skipped "
                      f"in {f['seconds']:.0f} s")
    if f["failed"] or f["errors"]:
        names = ", ".join(p["test"].rsplit("::", 1)[-1] for p in f["problems"][:4])
        raise RuntimeError(f"{f['failed']} failed, {f['errors']} errors: {names}")


# ----------------------------------------------------------------------------------------------------- ceilings


def section_ceilings(ctx: Context, sec: dict) -> None:
    """bf16 matmul n×n (and fp32 at the default precision: TF32 on a GPU, what the kernels' dots use for bf16
    inputs), and a copy (read + write) of `copy_mib` MiB; the datasheet figures of this device kind."""
    import jax
    import jax.numpy as jnp

    p, f = ctx.plan, sec["figures"]
    n = p.matmul_n
    mm = jax.jit(lambda a, b: a @ b)
    for dtype, key in ((jnp.bfloat16, "bf16"), (jnp.float32, "fp32_default")):
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
        _, sec_per = _timed(mm, a, b, repeats=max(3, p.repeats * 2))
        f[f"{key}_matmul_tflops"] = 2 * n**3 / sec_per / 1e12
        del a, b
    elems = p.copy_mib * 2**20 // 4
    x = jnp.ones((elems,), jnp.float32)
    copy = jax.jit(lambda v: v * 2.0)
    _, sec_per = _timed(copy, x, repeats=max(3, p.repeats * 2))
    f["hbm_gbs"] = 2 * x.nbytes / sec_per / 1e9
    del x
    f["matmul_n"], f["copy_mib"] = n, p.copy_mib
    nominal = nominal_for(jax.devices()[0].device_kind)
    f["nominal"] = nominal or {}
    ctx.ceilings.update(bf16_flops=f["bf16_matmul_tflops"] * 1e12, hbm_bytes_per_s=f["hbm_gbs"] * 1e9,
                        nominal=nominal)
    nom = (f"; datasheet {nominal['bf16'] / 1e12:.0f} TFLOP/s, {nominal['hbm'] / 1e9:.0f} GB/s ({nominal['match']})"
           if nominal else "; no datasheet figures for this device kind")
    sec["summary"] = (f"bf16 matmul {_num(f['bf16_matmul_tflops'])} TFLOP/s, fp32 (default precision) "
                      f"{_num(f['fp32_default_matmul_tflops'])}, copy {_num(f['hbm_gbs'])} GB/s{nom}")


# -------------------------------------------------------------------------------------------------- kernels


def kernel_with_xla_backward(backend: str, interpret: bool, chunk: int = 64):
    """Causal linear attention whose forward pass is the `backend` kernel (also writing the state at every chunk
    start) and whose backward pass is the chunked XLA backward from those states: what `implementation="pallas"`
    trains with, with the kernel fixed instead of chosen by the platform, so that each GPU kernel's
    forward+backward can be timed."""
    import jax
    import jax.numpy as jnp

    import pallas_kernels
    from jrt_jax.ops.linear_attention import xla as xla_path
    from pallas_kernels.linear_attention import common

    prefill = functools.partial(pallas_kernels.linear_attention_prefill, backend=backend, interpret=interpret,
                                chunk_size=chunk)

    @jax.custom_vjp
    def attend(q, k, v):
        return prefill(q, k, v)[0]

    def fwd(q, k, v):
        y, _, states = prefill(q, k, v, save_states=True)
        return y, (q, k, v, states)

    def bwd(residuals, dy):
        q, k, v, states = residuals
        b, _, h, f = q.shape
        p = common.compact_features(f)
        zeros = (jnp.zeros((b, h, p, v.shape[-1]), jnp.float32), jnp.zeros((b, h, p), jnp.float32))
        grads = xla_path.causal_core_bwd(chunk, 1e-12, float(f), True, False, (q, k, v, None, None, states),
                                          (dy, *zeros))
        return grads[:3]

    attend.defvjp(fwd, bwd)
    return attend


def _with_grad(fn):
    """fn(q, k, v) -> y  turned into  (q, k, v) -> (dq, dk, dv) of sum(y): one forward and one backward pass."""
    import jax
    import jax.numpy as jnp

    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))


def kernel_variants(backends, *, interpret: bool, attention_impl: str | None):
    """[(label, kind, fn(q, k, v) or None, why not)] for the linear-attention variants and attention."""
    import jax

    from jrt_jax import ops
    from pallas_kernels.linear_attention import api as kernel_api

    variants = []
    for b in backends:
        if b == "xla":
            variants.append(("XLA chunked", "linear", functools.partial(ops.linear_attention, implementation="xla"),
                             None))
            continue
        why = None
        if b == "triton" and not kernel_api.jax_triton_available():
            why = "jax-triton does not import here (needs it installed and a CUDA jaxlib)"
        elif b == "gpu" and interpret is False and jax.default_backend() not in ("gpu", "cuda"):
            why = "needs a CUDA device"
        label = {"gpu": "Pallas-Triton kernel", "triton": "jax-triton kernel", "tpu": "Mosaic TPU kernel"}[b]
        variants.append((label + (" (interpret)" if interpret else ""), "linear",
                         None if why else kernel_with_xla_backward(b, interpret), why))
    att = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation=attention_impl)
    variants.append((f"dot_product_attention [{attention_impl or 'default'}]", "attention", att, None))
    return variants


def kernel_rows(ctx: Context, sec: dict, backends, attention_impl, seq_lens, passes=("fwd", "fwd+bwd")) -> None:
    """Time every variant at every T and pass into sec["rows"] (B, H, F, D, dtype from the plan); a variant that
    cannot run, fails, or finds the section's time spent gets a row with its reason instead of figures."""
    import jax
    import jax.numpy as jnp

    from jrt_jax import benchmarking as bm

    p = ctx.plan
    b, h, f, d, dtype = p.batch, p.heads, p.feature_dim, p.head_dim, jnp.dtype(p.dtype)
    sec["figures"]["shape"] = (f"B={b} H={h} F={f} D={d} {dtype.name}, chunk {p.chunk}; FLOPs: "
                               "`linear_attention_flops` (attention: causal half), fwd+bwd = 3 x fwd")
    variants = kernel_variants(backends, interpret=ctx.interpret, attention_impl=attention_impl)
    last_cost = 0.0
    for t in seq_lens:
        keys = jax.random.split(jax.random.PRNGKey(t), 4)
        q, k = (jax.random.normal(kk, (b, t, h, f), dtype) for kk in keys[:2])
        v = jax.random.normal(keys[2], (b, t, h, d), dtype)
        qa = jax.random.normal(keys[3], (b, t, h, d), dtype)
        item = dtype.itemsize
        for mode in passes:
            attention_ms = None
            for label, kind, fn, why in reversed(variants):  # attention first: the others' speed-up needs it
                row = dict(method=label, kind=kind, seq_len=t, **{"pass": mode})
                if kind == "attention":
                    args = (qa, qa, qa)
                    flops = bm.attention_flops(b, h, t, d) / 2
                    in_bytes, out_bytes = 3 * b * t * h * d * item, b * t * h * d * item
                else:
                    args = (q, k, v)
                    flops = bm.linear_attention_flops(b, h, t, f, d, p.chunk)
                    in_bytes, out_bytes = (2 * f + d) * b * t * h * item, b * t * h * d * item
                flops, nbytes = ((flops, in_bytes + out_bytes) if mode == "fwd"
                                 else (3 * flops, 3 * in_bytes + 2 * out_bytes))
                if ctx.args.dry_run and label == "XLA chunked" and mode != "fwd":
                    why = "dry run (the kernel rows' backward is this XLA backward)"
                if why:
                    row["note"] = f"skipped: {why}"
                elif ctx.left() < max(2.0, 1.5 * last_cost):
                    row["note"] = "skipped: section budget spent"
                else:
                    try:
                        call = jax.jit(fn if mode == "fwd" else _with_grad(fn))
                        start = time.time()
                        first, seconds = _timed(call, *args, repeats=p.repeats)
                        last_cost = time.time() - start
                        row.update(ms=seconds * 1e3, first_call_s=first, flops=flops, bytes=nbytes,
                                   **_roofline(flops, nbytes, seconds, ctx.ceilings))
                        if kind == "attention":
                            attention_ms = row["ms"]
                        elif attention_ms:
                            row["speedup_vs_attention"] = attention_ms / row["ms"]
                    except SectionTimeout:
                        raise
                    except Exception as exc:  # noqa: BLE001 - e.g. cuDNN without this shape, out of memory
                        row["note"] = f"error: {one_line(exc)}"
                sec["rows"].append(row)
                ctx.write()
        del q, k, v, qa
    done = [r for r in sec["rows"] if r.get("ms")]
    best = {}
    for r in done:
        if r["kind"] == "linear" and r["seq_len"] == max(seq_lens) and r["pass"] == "fwd":
            best[r["method"]] = r
    att = next((r for r in done if r["kind"] == "attention" and r["seq_len"] == max(seq_lens) and r["pass"] == "fwd"),
               None)
    parts = [f"{len(done)}/{len(sec['rows'])} timed"]
    if best:
        top = min(best.values(), key=lambda r: r["ms"])
        parts.append(f"T={max(seq_lens)} fwd: {top['method']} {top['ms']:.2f} ms "
                     f"({_fmt(top.get('pct_roofline'), '.0f')}% of roofline)")
    if att:
        parts.append(f"attention {att['ms']:.2f} ms")
    sec["summary"] = "; ".join(parts)
    if not done:
        raise RuntimeError("no variant could be timed: " + "; ".join(
            sorted({r.get("note", "") for r in sec["rows"]}))[:250])


def section_prefill(ctx: Context, sec: dict) -> None:
    if ctx.backend == "tpu":
        raise Skip("a TPU: the tpu section times the Mosaic kernel")
    attention = "cudnn" if ctx.backend == "gpu" else "xla"
    if attention != "cudnn":
        sec["figures"]["note"] = f"no cuDNN on {ctx.backend}: attention through XLA"
    kernel_rows(ctx, sec, ("gpu", "triton", "xla"), attention, ctx.args.seq_lens or ctx.plan.seq_lens)


# ------------------------------------------------------------------------------------------------ PLA vs Based


def section_pla_vs_based(ctx: Context, sec: dict) -> None:
    """PLA (encoder M = T/2, then causal over T from its state) vs Based (causal linear attention over T) on the
    platform's kernel path, timed round-robin so that machine noise hits both alike."""
    import jax
    import jax.numpy as jnp

    from jrt_jax import benchmarking as bm
    from jrt_jax import ops

    p = ctx.plan
    b, h, f, d, dtype = p.batch, p.heads, p.feature_dim, p.head_dim, jnp.dtype(p.dtype)
    impl = "pallas"
    last = 0.0
    for t in p.pla_seq_lens:
        row = dict(seq_len=t, implementation=impl)
        if ctx.left() < max(2.0, 1.5 * last):
            row["note"] = "skipped: section budget spent"
            sec["rows"].append(row)
            continue
        keys = jax.random.split(jax.random.PRNGKey(t), 5)
        m = t // 2
        q, k = (jax.random.normal(kk, (b, t, h, f), dtype) for kk in keys[:2])
        v = jax.random.normal(keys[2], (b, t, h, d), dtype)
        ke, ve = jax.random.normal(keys[3], (b, m, h, f), dtype), jax.random.normal(keys[4], (b, m, h, d), dtype)
        pla = jax.jit(functools.partial(ops.prefix_linear_attention, implementation=impl))
        based = jax.jit(functools.partial(ops.linear_attention, implementation=impl))
        start = time.time()
        try:
            t_pla, t_based = bm.interleaved_times([(pla, (q, k, v, ke, ve)), (based, (q, k, v))],
                                                  repeats=p.repeats)
            row.update(pla_ms=t_pla * 1e3, based_ms=t_based * 1e3, ratio=t_pla / t_based)
        except SectionTimeout:
            raise
        except Exception as exc:  # noqa: BLE001
            row["note"] = f"error: {one_line(exc)}"
        last = time.time() - start
        sec["rows"].append(row)
        ctx.write()
    done = [r for r in sec["rows"] if r.get("ratio")]
    if not done:
        raise RuntimeError("nothing timed: " + "; ".join(r.get("note", "") for r in sec["rows"])[:250])
    sec["summary"] = ", ".join(f"T={r['seq_len']}: PLA {r['pla_ms']:.2f} ms / Based {r['based_ms']:.2f} ms "
                               f"= {r['ratio']:.2f}" for r in done)


# ------------------------------------------------------------------------------------------------------ decode


def _bench_module(name: str):
    """`benchmarks/<name>.py` as a module (the folder is a namespace package when the repository root is on
    sys.path, as under `python -m benchmarks.device`)."""
    return importlib.import_module(f"benchmarks.{name}")


def section_decode(ctx: Context, sec: dict) -> None:
    """`benchmarks/decode.py`'s measurement: JRT-RNN after a real prefill of C tokens, Llama from a KV cache
    holding C random tokens; the median of `decode_steps` greedy steps of the generator's compiled step."""
    from flax import nnx

    from jrt_jax.models import JRTConfig, JRTLM, LlamaConfig, LlamaLM, count_params

    dec = _bench_module("decode")
    p = ctx.plan
    jrt_name, llama_name = p.decode_models
    contexts = ctx.args.decode_contexts or p.decode_contexts
    jrt = JRTLM(JRTConfig.preset(jrt_name), rngs=nnx.Rngs(0))
    llama_cfg = LlamaConfig.preset(llama_name)
    if llama_cfg.max_position_embeddings < max(contexts) + 16:
        llama_cfg = LlamaConfig.preset(llama_name, max_position_embeddings=max(contexts) + 16)
    llama = LlamaLM(llama_cfg, rngs=nnx.Rngs(0))
    params = {jrt_name: count_params(jrt) / 1e6, llama_name: count_params(llama) / 1e6}
    last = 0.0
    for c in contexts:
        for name, model in ((jrt_name, jrt), (llama_name, llama)):
            row = dict(model=name, params_m=params[name], context=c)
            if ctx.left() < max(3.0, last):  # the two models' points cost alike at one context
                row["note"] = "skipped: section budget spent"
            else:
                start = time.time()
                try:
                    if model is jrt:
                        pre, caches, pos = dec.jrt_state(model, c)
                        row["prefill_s"] = pre
                    else:
                        caches, pos = dec.llama_state(model, c, room=16)
                    row["state_mib"] = dec._bytes(caches) / 2**20
                    lat = dec.interleaved_latency({name: (model, caches, pos)}, rounds=1, steps=p.decode_steps)
                    row["ms_per_token"] = lat[name] * 1e3
                    del caches
                except SectionTimeout:
                    raise
                except Exception as exc:  # noqa: BLE001
                    row["note"] = f"error: {one_line(exc)}"
                last = time.time() - start
            sec["rows"].append(row)
            ctx.write()
    done = [r for r in sec["rows"] if r.get("ms_per_token")]
    if not done:
        raise RuntimeError("nothing timed: " + "; ".join(r.get("note", "") for r in sec["rows"])[:250])
    sec["summary"] = ", ".join(f"{r['model']} @ {r['context']}: {r['ms_per_token']:.2f} ms/token" for r in done)


# --------------------------------------------------------------------------------------------------- training


def training_figures(ctx: Context, preset: str, *, seq_len: int, batch: int, steps: int, compute_dtype: str) -> dict:
    """`benchmarks/training.py`'s measurement of one model, with MFU against the datasheet peak (the trainer's own
    table) and against the bf16 matmul rate measured in the ceilings section."""
    tr = _bench_module("training")
    objective = "jrt" if preset.startswith("jrt") else "ntp"
    r = tr.measure(preset, objective, seq_len=seq_len, batch=batch, steps=steps,
                   overrides=[f"optim.compute_dtype={compute_dtype}"])
    out = dict(model=preset, objective=objective, params_m=r["params"] / 1e6, seq_len=seq_len, batch=batch,
               compute_dtype=compute_dtype, tokens_per_s=r["tokens_per_s"], step_s=r["step_s"],
               gflops_per_step=r["gflops_per_step"], mfu=r["mfu"], mfu_peak_source=r["peak_source"],
               mem_per_device_mib=r["mem_per_device_mib"], loss=r["loss"])
    measured = ctx.ceilings.get("bf16_flops")
    if measured:
        import jax

        out["mfu_vs_measured_bf16"] = r["gflops_per_step"] * 1e9 / r["step_s"] / (measured * jax.device_count())
    return out


def section_training(ctx: Context, sec: dict) -> None:
    if ctx.backend == "tpu":
        raise Skip("a TPU: the tpu section measures training")
    p = ctx.plan
    f = training_figures(ctx, p.train_preset, seq_len=p.train_seq_len, batch=ctx.args.train_batch or p.train_batch,
                         steps=p.train_steps, compute_dtype=p.train_compute_dtype)
    sec["figures"].update(f)
    sec["summary"] = (f"{f['model']} T={f['seq_len']} B={f['batch']} {f['compute_dtype']}: "
                      f"{f['tokens_per_s']:.0f} tokens/s, MFU {100 * f['mfu']:.1f}% ({f['mfu_peak_source']})"
                      + (f", {100 * f['mfu_vs_measured_bf16']:.1f}% of the measured bf16 matmul"
                         if f.get("mfu_vs_measured_bf16") else ""))


# -------------------------------------------------------------------------------------------------------- TPU


def section_tpu(ctx: Context, sec: dict) -> None:
    """On a TPU (or in the dry run, the Mosaic kernel in the interpreter): kernel vs XLA path vs
    `dot_product_attention` (xla) forward and forward+backward, then training tokens/s and MFU."""
    if ctx.backend != "tpu" and not ctx.args.dry_run:
        raise Skip(f"not a TPU (backend {ctx.backend})")
    p = ctx.plan
    seq_lens = (ctx.args.seq_lens or p.seq_lens)[:1] if ctx.args.dry_run else (ctx.args.seq_lens or p.seq_lens)
    passes = ("fwd",) if ctx.args.dry_run else ("fwd", "fwd+bwd")
    # The dry run leaves out the XLA path here: the prefill section ran it on the same shapes.
    kernel_rows(ctx, sec, ("tpu",) if ctx.args.dry_run else ("tpu", "xla"), "xla", seq_lens, passes=passes)
    summary = sec["summary"]
    if ctx.args.dry_run:
        sec["figures"]["training"] = dict(note="dry run: the training section ran this measurement")
        return
    try:
        f = training_figures(ctx, p.train_preset, seq_len=p.train_seq_len, batch=ctx.args.train_batch or p.train_batch,
                             steps=p.train_steps, compute_dtype=p.train_compute_dtype)
        sec["figures"]["training"] = f
        summary += f"; training {f['tokens_per_s']:.0f} tokens/s, MFU {100 * f['mfu']:.1f}%"
    finally:
        sec["summary"] = summary


# ---------------------------------------------------------------------------------------------------- driver

RUNNERS = {"environment": section_environment, "gpu_tests": section_gpu_tests, "ceilings": section_ceilings,
           "prefill": section_prefill, "pla_vs_based": section_pla_vs_based, "decode": section_decode,
           "training": section_training, "tpu": section_tpu}


def applies(name: str, backend: str, dry_run: bool) -> str | None:
    """Why section `name` does not run on this backend, or None when it does."""
    if name in ("gpu_tests", "prefill", "training") and backend == "tpu":
        return "a TPU: see the tpu section"
    if name in ("gpu_tests", "prefill", "pla_vs_based", "decode", "training") and backend == "cpu" and not dry_run:
        return "no accelerator: the full sizes would take hours here (--dry-run runs them small)"
    if name == "tpu" and backend != "tpu" and not dry_run:
        return f"not a TPU (backend {backend})"
    return None


def stop_now(ctx: Context, reason: str, skipped: str, code: int) -> None:
    """Record the running section as stopped (`reason`) and the ones not started as skipped, write, end the GPU
    tests' process if it runs, and end this one at once."""
    rec = ctx.recorder
    with rec.lock:
        for sec in rec.data["sections"].values():
            if sec["status"] == "running":
                sec.update(status="error", seconds=round(time.time() - ctx.section_start, 2), error=reason)
            elif sec["status"] == "pending":
                sec.update(status="skipped", seconds=0.0, error=None, summary=skipped)
        rec.data["finished"] = f"stopped: {skipped}"
        rec.write()
    if ctx.child is not None:
        with contextlib.suppress(Exception):
            os.killpg(ctx.child.pid, signal.SIGKILL)
    print(f"{skipped}: results in {rec.out}", flush=True)
    os._exit(code)


def _watchdog(ctx: Context, stop_at: float, done: threading.Event) -> None:
    """At the hard stop (overall budget + grace), end the run: a compile or kernel that hangs inside C++ never
    returns to the SIGALRM handler."""
    if not done.wait(max(0.0, stop_at - time.time())):
        stop_now(ctx, f"stopped: overall budget of {ctx.recorder.data['budget_s']:.0f} s (+{HARD_STOP_GRACE_S:.0f} s) "
                 "spent while it ran", "overall budget spent", 124)


def run(args) -> dict:
    """Run the selected sections into args.out; returns the results."""
    t0 = float(os.environ.get("JRT_DEVICE_T0") or time.time())
    patches = [patch_triton_for_jax_triton()]
    import jax

    if args.dry_run:
        # Its figures check the plumbing, not the hardware: compiling with most XLA optimisations off halves the
        # compile time that dominates it on a small CPU (the jrt-micro training step: 25 s -> 14 s on 2 cores).
        jax.config.update("jax_disable_most_optimizations", True)
    backend = jax.default_backend()
    backend = "gpu" if backend in ("gpu", "cuda") else backend
    plan = DRY if args.dry_run else FULL
    out = Path(args.out)
    recorder = Recorder(out, dict(started=datetime.datetime.fromtimestamp(t0).isoformat(timespec="seconds"),
                                  t0=t0, finished=None, budget_s=float(args.budget_s), dry_run=bool(args.dry_run),
                                  argv=sys.argv[1:], backend=backend, device_kind=jax.devices()[0].device_kind,
                                  patches=[p for p in patches if p], plan=dataclasses.asdict(plan)))
    ctx = Context(args, plan, recorder, backend)
    selected = set(args.sections or SECTIONS)
    todo = []
    for name in SECTIONS:
        sec = recorder.section(name)
        why = "not selected (--sections)" if name not in selected else applies(name, backend, args.dry_run)
        if why:
            sec.update(status="skipped", seconds=0.0, summary=why)
        else:
            todo.append(name)
    recorder.write()
    if args.dry_run and "gpu_tests" in todo:
        # Nothing is measured in the dry run: the tests' imports (torch, triton) run beside the other sections,
        # and their result is collected last.
        ctx.early_tests = start_gpu_tests(ctx)
        todo = [n for n in todo if n != "gpu_tests"] + ["gpu_tests"]
    end = t0 + args.budget_s
    done = threading.Event()
    threading.Thread(target=_watchdog, args=(ctx, end + HARD_STOP_GRACE_S, done), daemon=True).start()
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if use_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)

    def on_term(signum, frame):
        # The caller's timeout: finish here rather than raise, since an exception raised in a signal handler can
        # land in a callback that swallows it (a garbage-collection hook of jax's, seen).
        stop_now(ctx, f"terminated by signal {signum}", f"terminated by signal {signum}", 128 + signum)

    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, on_term)
    for i, name in enumerate(todo):
        sec = recorder.section(name)
        budget = split_budget(end - time.time() - 3.0, todo[i:])[name]
        sec.update(status="running", budget_s=round(budget, 1))
        ctx.deadline = time.time() + budget
        recorder.write()
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        start = ctx.section_start = time.time()
        try:
            if budget <= 1:
                raise Skip("overall budget spent")
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, budget + 10.0)
            RUNNERS[name](ctx, sec)
            if args.inject_failure == name:  # after the work: the test sees the figures kept and the error recorded
                raise RuntimeError(f"injected failure in {name} (--inject-failure)")
            sec["status"] = "ok"
        except Skip as why:
            sec.update(status="skipped", summary=str(why))
        except (Exception, SectionTimeout) as exc:  # noqa: BLE001 - one section's failure never stops the others
            sec.update(status="error", error=one_line(exc))
            if args.verbose:
                traceback.print_exc()
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
            sec["seconds"] = round(time.time() - start, 2)
            recorder.write()
        print(f"   {sec['status']} in {sec['seconds']:.1f} s: {sec.get('error') or sec.get('summary')}", flush=True)
    done.set()
    recorder.data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    recorder.write()
    print(f"results: {out / JSON_NAME}, {out / MD_NAME}", flush=True)
    return recorder.data


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.device", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "device-results",
                   help="folder for device.json and device.md (default: $OUT, else ./device-results)")
    p.add_argument("--budget-s", type=float, default=480.0, help="overall time budget in seconds (default 480)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, interpret mode on a CPU (< 60 s)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--wheels", nargs="?", const=".whl", metavar="DIR",
                   help="install the wheels in DIR (default .whl) into --site first, offline")
    p.add_argument("--site", default=DEFAULT_SITE, help=f"where --wheels installs (default {DEFAULT_SITE})")
    p.add_argument("--prepare-wheels", nargs="?", const=".whl", metavar="DIR",
                   help="download the wheels the GPU image lacks into DIR (default .whl) and exit (needs PyPI)")
    p.add_argument("--seq-lens", type=int, nargs="+", help="prefill sequence lengths (default: the plan's)")
    p.add_argument("--decode-contexts", type=int, nargs="+", help="decode context lengths (default: the plan's)")
    p.add_argument("--train-batch", type=int, help="training batch size (default: the plan's)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the traceback of a failing section")
    p.add_argument("--inject-failure", choices=SECTIONS, help=argparse.SUPPRESS)  # the tests' failing section
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s must be positive; got {args.budget_s:g}")
    for name in ("seq_lens", "decode_contexts"):
        bad = [v for v in getattr(args, name) or () if v < 1]
        if bad:
            p.error(f"--{name.replace('_', '-')} must be positive; got {bad[0]}")
    if args.train_batch is not None and args.train_batch < 1:
        p.error(f"--train-batch must be positive; got {args.train_batch}")
    if args.wheels and not Path(args.wheels).is_dir():
        p.error(f"--wheels {args.wheels}: no such folder (prepare it with --prepare-wheels)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.prepare_wheels:
        prepare_wheels(args.prepare_wheels)
        return 0
    os.environ.setdefault("JRT_DEVICE_T0", repr(time.time()))
    if args.wheels and not os.environ.get("JRT_DEVICE_SITE"):
        installed = install_wheels(args.wheels, args.site)
        # A fresh interpreter with the folder on PYTHONPATH: imports here and in every child process see it.
        env = _child_env({"JRT_DEVICE_SITE": args.site, "JRT_DEVICE_INSTALLED": ",".join(installed)})
        env["PYTHONPATH"] = os.pathsep.join([args.site] + [p for p in env["PYTHONPATH"].split(os.pathsep)
                                                           if p != args.site])
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.device", *argv], env)
    data = run(args)
    bad = [n for n, s in data["sections"].items() if s["status"] == "error"]
    return 1 if bad else 0


if __name__ == "__main__":
    code = main()
    # os._exit, not sys.exit: after a section was interrupted (SIGALRM) XLA may still be finishing its compile in
    # C++, and the interpreter's shutdown waits for it (14 s seen on the dry run's training step); the files are
    # written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
