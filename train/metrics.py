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
    """Writes scalars to `dir`/metrics.jsonl and TensorBoard events (only on process 0).

    start_step: the step the run starts from. A resumed run (start_step > 0) first drops the rows after
    start_step that an earlier life of the run wrote after its last checkpoint (the resumed run writes them
    again, with identical values), so metrics.jsonl holds every step once; a torn last line of a killed run is
    dropped too; the TensorBoard events of the earlier life past start_step are purged (a SessionLog START
    with purge_step, which TensorBoard honours). A new run (start_step 0) that finds a non-empty metrics.jsonl renames it to
    metrics.previous-<time>.jsonl rather than appending another run's steps to it.
    """

    def __init__(self, directory: str | None, *, enabled: bool = True, start_step: int = 0,
                 hparams: dict | None = None):
        self.enabled = enabled and directory is not None and jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self.enabled:
            path = pathlib.Path(directory)
            if path.exists() and not path.is_dir():
                raise ValueError(f"logging.dir {str(path)!r} is a file, not a directory")
            path.mkdir(parents=True, exist_ok=True)
            _prepare_jsonl(path / "metrics.jsonl", start_step)
            self._jsonl = open(path / "metrics.jsonl", "a")
            from tensorboardX import SummaryWriter

            # A resumed run replays the steps after its last checkpoint: purge_step makes TensorBoard hide the
            # earlier life's events from start_step + 1 on, so each curve holds every step once.
            self._tb = SummaryWriter(str(path), purge_step=start_step + 1 if start_step > 0 else None)
            if hparams and start_step == 0:
                _write_hparams(self._tb, hparams)

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


HPARAM_METRICS = ("loss", "eval_loss", "eval_accuracy")


def flat_hparams(tree: dict, prefix: str = "") -> dict:
    """A nested config as TensorBoard hparams: dotted keys, values bool/int/float/str (lists and None as text)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def _write_hparams(tb, hparams: dict) -> None:
    """The run's config in the TensorBoard HParams tab, in this run's own event file (tensorboardX's
    `add_hparams` would open a sub-run per call); the metrics are the scalars of these names."""
    from tensorboardX.summary import hparams as hparams_summary

    for summary in hparams_summary(flat_hparams(hparams), {k: 0.0 for k in HPARAM_METRICS}):
        tb.file_writer.add_summary(summary)


def _prepare_jsonl(path: pathlib.Path, start_step: int) -> None:
    """Make `path` hold only rows with step <= start_step (see MetricsWriter); atomic (write + rename)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    if start_step <= 0:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path.replace(path.with_name(f"metrics.previous-{stamp}.jsonl"))
        return
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row["step"]) <= start_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


class Progress:
    """tqdm bar on stderr when stderr is a terminal (or when forced); plain periodic lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool | None):
        self.enabled = (sys.stderr.isatty() if enabled is None else enabled) and jax.process_index() == 0
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
