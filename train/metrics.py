"""Observability: a JSONL log, TensorBoard event files (tensorboardX), a progress bar, MFU."""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax

# Dense bf16 peak FLOP/s per device for MFU; CPU uses a matmul measured at start-up instead.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s of one local device, where the number comes from)."""
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak, f"{name} spec sheet"
    if jax.default_backend() == "cpu":
        from jrt_jax.benchmarking import matmul_ceiling_gflops

        # All simulated CPU devices share the same cores: the ceiling is for the whole process.
        return matmul_ceiling_gflops(n=1024, repeats=3) * 1e9 / jax.device_count(), "fp32 matmul measured"
    return float("nan"), f"unknown device kind {kind!r}"


class MetricsWriter:
    """Writes scalars to `dir`/metrics.jsonl and TensorBoard events (only on process 0)."""

    def __init__(self, directory: str | None, *, enabled: bool = True):
        self.enabled = enabled and directory is not None and jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self.enabled:
            path = pathlib.Path(directory)
            path.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(path / "metrics.jsonl", "a")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(path))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()
        for key, value in clean.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


class Progress:
    """tqdm bar on a terminal (or when forced); plain periodic lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool | None):
        self.enabled = (sys.stdout.isatty() if enabled is None else enabled) and jax.process_index() == 0
        self.bar = None
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train")

    def update(self, n: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
