"""What every reproduction study shares: training through the trainer, the report files, the plots, the machine.

A study is a module with `NAME`, `TITLE` and `run(ctx: Context) -> Outcome`. The CLI (`train.reproduce.cli`)
times it and hands the outcome to `write_outputs`, which writes under DIR/NAME/:

- results.json — every number the study measured, the claims table, the command, the wall time, the machine;
- report.md    — the table "claim | paper | ours | reproduced?", the command, wall time and machine, notes, plots;
- *.png        — the study's plots (matplotlib, Agg backend); without matplotlib the report says so in one line.

Models are trained with `train.trainer.Trainer` exactly as `jrt train` trains them (`train_model`); nothing is
written under ./runs (logging.dir=null, checkpoint.dir=null).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from jrt_jax.cli import Terminated
from jrt_jax.evals.plotting import pyplot


class StudyError(ValueError):
    """A request the study cannot satisfy (bad sizes, missing inputs); reported in one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Context:
    """How a study was asked to run."""

    quick: bool
    seeds: int | None  # None: the study's default for the variant
    out_dir: pathlib.Path  # DIR/NAME/
    log: Callable[[str], None] = print
    jobs: int = 1  # training runs at a time (worker processes when > 1)
    scale: str = "cpu"  # "cpu" (the CPU-sized variants) or "paper" (the papers' sizes, for one GPU)

    def seed_list(self, default_full: int, default_quick: int = 1) -> list[int]:
        n = self.seeds if self.seeds is not None else (default_quick if self.quick else default_full)
        return list(range(n))


@dataclasses.dataclass
class Claim:
    """One row of the report's table."""

    claim: str
    paper: str
    ours: str
    reproduced: str  # "yes", "no", "partly", "not measured", or a short qualified verdict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Outcome:
    """What a study returns: its numbers, its claims table, its plots (paths in out_dir), notes for the report."""

    results: dict
    claims: list[Claim]
    plots: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    tables: list[str] = dataclasses.field(default_factory=list)  # extra markdown tables (already formatted)


# ---------------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """CPU model, cores, accelerator, jax version, date — the report's "machine" line."""
    import jax

    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ----------------------------------------------------------------------------------------------------- training


TRAIN_DEFAULTS = ("logging.dir=null", "checkpoint.dir=null", "logging.progress=false", "logging.eval_every=0")


@dataclasses.dataclass
class Trained:
    """A model trained by the trainer: the NNX model, its trainer (task, config) and the run's summary."""

    model: Any
    trainer: Any
    summary: dict
    seconds: float
    params: int

    @property
    def task(self):
        return self.trainer.task


def train_model(overrides: Sequence[str], *, log: Callable[[str], None] | None = None,
                checkpoint_dir: str | os.PathLike | None = None) -> Trained:
    """Train with `jrt train`'s trainer and `overrides` (key=value); no run directory, and no checkpoints unless
    `checkpoint_dir` is given (then they go there, every `checkpoint.every` steps, as the overrides say)."""
    from flax import nnx

    from jrt_jax import models
    from train.config import load_config
    from train.trainer import Trainer

    _limit_compiled_caches()
    start = time.perf_counter()
    defaults = [*TRAIN_DEFAULTS] if checkpoint_dir is None else \
        [d for d in TRAIN_DEFAULTS if not d.startswith("checkpoint.")] + [f"checkpoint.dir={checkpoint_dir}"]
    cfg = load_config(None, [*overrides, *defaults])
    trainer = Trainer(cfg, log=(lambda *a, **k: None) if log is None else log)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if summary.get("stopped"):  # SIGTERM: a partly trained model is not a result; exit 143 as every command
        raise Terminated(f"terminated by SIGTERM: training stopped early ({summary['stopped']}); nothing written")
    model = nnx.merge(trainer.graphdef, trainer.state["params"], trainer.rest)
    return Trained(model, trainer, summary, time.perf_counter() - start, models.count_params(trainer.model_config))


def _limit_compiled_caches(limit: int = 30000) -> None:
    """Drop jax's compiled caches when this process holds more than `limit` memory mappings: every XLA:CPU
    executable keeps dozens, a study compiles a few per trained model, and past Linux's 65530 the next compile
    fails (see tests/conftest.py)."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            count = sum(1 for _ in fh)
    except OSError:
        return
    if count > limit:
        import jax

        jax.clear_caches()


def train_or_diverged(overrides: Sequence[str]) -> Trained | str:
    """`train_model`, or the one-line reason when training stopped on a non-finite loss: a diverged run is a
    result of the sweep (e.g. a learning rate too high), not a failure of the study."""
    from train.trainer import TrainingError

    try:
        return train_model(overrides)
    except TrainingError as exc:
        return f"diverged ({str(exc).splitlines()[0][:160]})"


def run_sweep(overrides: Sequence[str], *, log: Callable[[str], None] | None = None) -> dict:
    """`train.sweep.sweep` of `overrides` (sweep.seeds × sweep.lr trained as one program, batches made on the
    device) with no run directory and no checkpoints; its summary ({"runs": one row per replica with seed, lr,
    eval_accuracy, eval_loss, diverged_at; "seconds", …}) plus "wall_s" (setup and compilation included). A
    diverged replica is a row of the result (`diverged_at` set), not a failure; a sweep stopped by SIGTERM raises
    `jrt_jax.cli.Terminated` (exit status 143)."""
    from train.config import load_config
    from train.sweep import sweep

    _limit_compiled_caches()
    start = time.perf_counter()
    cfg = load_config(None, [*overrides, *TRAIN_DEFAULTS])
    summary = sweep(cfg, log=(lambda *a, **k: None) if log is None else (lambda *a, **k: log(" ".join(map(str, a)))))
    if summary.get("stopped"):  # SIGTERM: partly trained replicas are not a result; exit 143 as every command
        raise Terminated(f"terminated by SIGTERM: sweep stopped early ({summary['stopped']}); nothing written")
    summary["wall_s"] = time.perf_counter() - start
    return summary


def model_size(overrides: Sequence[str], seq_len: int) -> tuple[int, int]:
    """(parameters, state bytes after a seq_len-token prompt) of a sweep configuration's model: one model is built
    (shapes only) and `jrt_jax.generate.state_bytes` reads its decoding caches (an attention layer's KV cache holds
    the seq_len tokens)."""
    from jrt_jax import models
    from jrt_jax.generate import state_bytes
    from train.config import load_config
    from train.trainer import build_model_config

    config = build_model_config(load_config(None, [*overrides, *TRAIN_DEFAULTS]))
    return models.count_params(config), state_bytes(models.abstract_model(config), context=seq_len, cache_len=seq_len)


def spread(values: Sequence[float]) -> dict:
    """{"mean", "std" (sample; 0 for one value), "min", "max", "n"} of `values` (NaN and None for none)."""
    values = [float(v) for v in values]
    m, s = mean_std(values)
    return {"mean": m, "std": s, "min": min(values) if values else None, "max": max(values) if values else None,
            "n": len(values)}


def run_jobs(ctx: Context, fn: Callable[..., dict], jobs: Sequence[tuple[str, tuple]]) -> list[dict]:
    """`fn(*args)` for every `(what, args)` in `jobs`, in order; each result (a dict) is logged as
    "what: result['log']" when it arrives.

    With `ctx.jobs == 1` the calls run one after another in this process. Otherwise they run `ctx.jobs` at a
    time in fresh worker processes (`spawn`: each imports jax once and trains its share), so `fn` must be a
    module-level function and `args` picklable. Two workers on the 2-core CPU train the micro models ~1.4x
    faster than one process: these models are too small for XLA to keep both cores busy. Written with
    `concurrent.futures` rather than a job library because the runs are few, long and independent."""
    results: list[dict | None] = [None] * len(jobs)
    if ctx.jobs <= 1 or len(jobs) <= 1:
        for i, (what, args) in enumerate(jobs):
            results[i] = fn(*args)
            ctx.log(f"{what}: {results[i]['log']}")
        return results
    import concurrent.futures
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(max_workers=ctx.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_die_with_parent)
    try:
        futures = {pool.submit(fn, *args): i for i, (_, args) in enumerate(jobs)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            ctx.log(f"{jobs[i][0]}: {results[i]['log']}")
    except BaseException:
        # An error or an interrupt: stop the runs still training instead of waiting minutes for them.
        # (ProcessPoolExecutor has no public way to kill its workers; `_processes` has held them since 3.2.)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to SIGKILL this worker when the study's process dies (even
    by SIGKILL), so no orphan keeps training. Elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
        except OSError:
            pass


def overrides_arg(fields: dict) -> str:
    """`model.overrides={...}` as a key=value override (YAML flow mapping)."""
    inner = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in fields.items())
    return "model.overrides={" + inner + "}"


def _yaml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


# -------------------------------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


def pct_spread(values: Sequence[float]) -> str:
    """"84.8 ± 2.1 %" over seeds (just the value for one seed)."""
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{100 * m:.1f} %"
    return f"{100 * m:.1f} ± {100 * s:.1f} %"


def per_seed(values: Sequence[float | None], signed: bool = False) -> str:
    """"91.5 / div. / 80.0": each seed's fraction in percent (points with a sign when `signed`), "div." where the
    replica diverged (None)."""
    fmt = "+.1f" if signed else ".1f"
    return " / ".join("div." if v is None else f"{100 * v:{fmt}}" for v in values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def best_lr(lrs, finished: Callable[[float], int], mean: Callable[[float], float], n_seeds: int) -> float | None:
    """The studies' one rule for "the best lr": the highest mean over seeds among the lrs at which every seed
    finished (no replica diverged), or among those where at least one finished when no lr is clean; ties go to
    the lower lr. None when every replica diverged at every lr. `finished(lr)` counts the finished seeds,
    `mean(lr)` is their mean score."""
    clean = [lr for lr in lrs if finished(lr) == n_seeds]
    eligible = clean or [lr for lr in lrs if finished(lr)]
    return max(sorted(eligible), key=mean) if eligible else None


# ------------------------------------------------------------------------------------------------------- plots


def matplotlib_pyplot():
    """pyplot on the Agg backend (`jrt_jax.evals.plotting.pyplot`), or None when matplotlib is not installed."""
    try:
        return pyplot()
    except ValueError:
        return None


PLOT_UNAVAILABLE = "plots not drawn: matplotlib is not installed (pip install matplotlib)"


def line_plot(path: pathlib.Path, series: Sequence[dict], *, xlabel: str, ylabel: str, title: str,
              logx: bool = False, logy: bool = False, hline: float | None = None,
              hline_label: str | None = None, vline: float | None = None,
              vline_label: str | None = None) -> str | None:
    """Draw `series` ({"label", "x", "y", optional "yerr", "style", "points": [(x, y), …] of the individual
    runs}) to `path`; the file name, or None without matplotlib."""
    plt = matplotlib_pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for i, s in enumerate(series):
        style = s.get("style", "o-")
        if s.get("yerr") is not None and any(e for e in s["yerr"]):
            line = ax.errorbar(s["x"], s["y"], yerr=s["yerr"], fmt=style, capsize=3, label=s["label"])[0]
        else:
            (line,) = ax.plot(s["x"], s["y"], style, label=s["label"])
        if s.get("points"):  # the individual runs behind each mean, as faint markers
            px, py = zip(*s["points"])
            if logx:  # spread the series' markers apart a little so equal x do not hide each other
                px = [x * 1.05 ** (i - (len(series) - 1) / 2) for x in px]
            ax.plot(px, py, "x", color=line.get_color(), alpha=0.7, markersize=6)
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle=":", linewidth=1, label=hline_label)
    if vline is not None:
        ax.axvline(vline, color="gray", linestyle="--", linewidth=1, label=vline_label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


# ------------------------------------------------------------------------------------------------------ output


def write_outputs(ctx: Context, *, name: str, title: str, command: str, wall_s: float, outcome: Outcome,
                  machine: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """Write results.json and report.md under ctx.out_dir; returns their paths."""
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "study": name,
        "title": title,
        "variant": "quick" if ctx.quick else "full",
        "command": command,
        "wall_time_s": round(wall_s, 2),
        "jobs": ctx.jobs,
        "machine": machine,
        "claims": [c.as_dict() for c in outcome.claims],
        "plots": list(outcome.plots),
        "notes": list(outcome.notes),
        "results": outcome.results,
    }
    results_path = out / "results.json"
    results_path.write_text(json.dumps(_jsonable(record), indent=1, allow_nan=False) + "\n")

    m = machine
    lines = [
        f"# Reproduction: {title}",
        "",
        f"Study `{name}`, {'quick' if ctx.quick else 'full'} variant.",
        "",
        "## Claims",
        "",
        markdown_table(["claim", "paper", "ours", "reproduced?"],
                       [(c.claim, c.paper, c.ours, c.reproduced) for c in outcome.claims]),
        "",
    ]
    for table in outcome.tables:
        lines += [table, ""]
    if outcome.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in outcome.notes] + [""]
    lines += ["## Plots", ""]
    if outcome.plots:
        lines += [f"![{p}]({p})" for p in outcome.plots]
    else:
        lines.append(PLOT_UNAVAILABLE if matplotlib_pyplot() is None else "(no plots)")
    lines += [
        "",
        "## Run",
        "",
        f"- command: `{command}`",
        f"- wall time: {wall_s:.1f} s ({ctx.jobs} training run{'s' if ctx.jobs > 1 else ''} at a time)",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['backend']} ({m['devices']}), jax {m['jax']}, "
        f"python {m['python']}, {m['date']}",
        "- every number: `results.json` beside this file",
        "",
    ]
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines))
    return results_path, report_path


def _jsonable(x):
    """Plain JSON types; NaN/inf become None (results.json is strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, pathlib.Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:  # numpy / jax scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
