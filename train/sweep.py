"""`jrt sweep` / `train.sweep`: a grid of small runs (seeds × learning rates) trained as one jitted program.

    summary = sweep(load_config(None, ["model.preset=recall-based", "data.kind=mqar", "sweep.seeds=[0,1,2]",
                                       "sweep.lr=[1e-3,3e-3]", "steps=1500"]))
    summary["best"]        # {"seed": …, "lr": …, "eval_accuracy": …, "eval_loss": …, …}

Why one program: the recall studies train dozens of 50k-parameter models for ~1k steps each. Trained one at a time,
the accelerator idles between steps (Python, a host batch, a dispatch per step) and each run compiles its own
program. Here the replicas' parameters and optimizer states are stacked on a leading axis, one step is the trainer's
own step function (`train.trainer.make_train_step`) under `jax.vmap` (`lax.map` on CPU: sweep.batching), K =
sweep.steps_per_scan steps run in one `lax.scan` with their batches generated inside it on the device
(`train.data.device`), and the host sees only the metrics, between scans.

What a replica is: replica (seed s, lr l) trains as `jrt train seed=s optim.lr=l data.on_device=true` with the rest of
the config unchanged — the same initialisation, the same batches (every replica reads data.seed's stream), the same
masking RNG, the same schedule (the optimizer is built with lr = 1 and each replica's updates are scaled by its lr,
exact for AdamW's linear dependence on the lr) — equal to float rounding; tests/train/test_sweep.py holds it to 1e-5. A
replica whose loss, gradient or new state turns non-finite is frozen at its last finite state and reported as
diverged (the others go on); `best` never picks it.

The run directory is `jrt train`'s (`train.config.resolve_run`: runs/{name} by default):
  config.yaml    the resolved config (`jrt sweep --resume RUN_DIR` reads it)
  metrics.jsonl  per-replica curves: every logging.every steps a row per replica {"replica", "seed", "lr", "step",
                 "loss", "ntp_loss", "grad_norm", "scheduled_lr", …}; evaluations add rows with "eval_accuracy" and
                 "eval_loss" (logging.eval_every, and at the end)
  results.jsonl  at the end, one row per replica: replica, seed, lr, step, loss, eval_accuracy, eval_loss, diverged_at
  checkpoints/   the stacked state through `train.checkpoint.Checkpointer`: resuming continues from the saved step
                 (on the saved lr schedule unless optim.reschedule=true, as jrt train) and ends with the results of
                 an uninterrupted sweep
  .lock          while the sweep runs: its claim on the directory (`train.lock`), as jrt train's
Evaluation scores data.eval_examples fresh held-out examples per replica (the generator's split 1, a key no training
batch uses) exactly as the trainer does: accuracy at the labelled positions and their mean cross-entropy.

The sweep runs on one device (the first); mesh.* and distributed.* do not apply, and model.checkpoint (fine-tuning)
is not supported: replicas start from initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import pathlib
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jrt_jax import models
from train.checkpoint import Checkpointer, CheckpointError
from train.config import TrainConfig, to_dict
from train.data import make_task
from train.data.device import batch_key, make_batch
from train.lock import claim_run
from train.metrics import _prepare_jsonl
from train.optim import make_optimizer, resume_schedule
from train.trainer import (
    build_model_config,
    make_eval_step,
    make_train_step,
    model_forward,
    open_run_checkpointer,
    settle_opened_run,
    resolve_objective,
)

STEP_KEYS = ("loss", "ntp_loss", "mlm_loss", "grad_norm")


def replicas(cfg: TrainConfig) -> list[dict]:
    """The grid: {"replica": i, "seed": s, "lr": l} for every (s, l) of sweep.seeds × sweep.lr, seeds outermost
    (null lists stand for the run's own seed / optim.lr)."""
    seeds = cfg.sweep.seeds if cfg.sweep.seeds is not None else (cfg.seed,)
    lrs = cfg.sweep.lr if cfg.sweep.lr is not None else (cfg.optim.lr,)
    return [{"replica": i, "seed": int(s), "lr": float(lr)} for i, (s, lr) in enumerate(itertools.product(seeds, lrs))]


def best_of(rows: list[dict]) -> dict | None:
    """The replica with the highest eval_accuracy, ties to the lowest eval_loss; diverged replicas never win."""
    ok = [r for r in rows if r.get("diverged_at") is None and r.get("eval_accuracy") is not None
          and r.get("eval_loss") is not None]
    return max(ok, key=lambda r: (r["eval_accuracy"], -r["eval_loss"])) if ok else None


class Sweep:
    """One sweep: build with a `TrainConfig`, `run()` it, `close()` it (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, *, log=None):
        self.log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
        if cfg.mesh.sequence != 1:
            raise ValueError(f"mesh.sequence={cfg.mesh.sequence}: jrt sweep trains every replica on one device "
                             "(no context parallelism); use mesh.sequence=1")
        if cfg.model.checkpoint is not None:
            raise ValueError("model.checkpoint: jrt sweep trains replicas from initialisation; fine-tune with "
                             "jrt train")
        # The run directory is claimed before anything is written to it (`train.lock`); released by close().
        # Warnings wait until the sweep is set up: one that fails to start prints its error alone.
        self._notes: list[str] = []
        self.cfg, self._locks = claim_run(cfg, warn=self._notes.append)
        self.checkpointer = None
        try:
            self._setup()
        except BaseException:
            self._locks.release()
            raise
        for note in self._notes:
            self.log(note)

    def _setup(self) -> None:
        cfg = self.cfg
        self.model_config = build_model_config(cfg)
        self.task = make_task(dataclasses.replace(cfg.data, on_device=True), self.model_config)
        self.objective, self.enc_len = resolve_objective(cfg, self.model_config, self.task)
        self.replicas = replicas(cfg)
        self.size = len(self.replicas)
        self.device = jax.devices()[0]
        self.steps_per_scan = cfg.sweep.steps_per_scan
        self.batching = cfg.sweep.batching if cfg.sweep.batching != "auto" else (
            "loop" if self.device.platform == "cpu" else "vmap")

        abstract = models.abstract_model(self.model_config)
        self.graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
        # lr = 1: each replica's updates are scaled by its own learning rate (`make_train_step`'s lr_scale).
        self.tx, self.schedule = make_optimizer(dataclasses.replace(cfg.optim, lr=1.0),
                                                cfg.optim.decay_steps or cfg.steps)
        self.rest, params = self._init_params()
        opt_state = jax.jit(jax.vmap(self.tx.init))(params)
        self.state = {"params": params, "opt_state": opt_state,
                      "diverged_at": jnp.full((self.size,), -1, jnp.int32)}
        self.keys = jnp.stack([jax.random.PRNGKey(r["seed"]) for r in self.replicas])
        self.lrs = jnp.asarray([r["lr"] for r in self.replicas], jnp.float32)
        # Committed to the device, as a restored state is: the programs (and their compilation-cache entries) are
        # then the same for a new and a resumed sweep.
        self.state, self.rest, self.keys, self.lrs = jax.device_put((self.state, self.rest, self.keys, self.lrs),
                                                                    self.device)
        self.step = 0
        self._build()

        self._stop_requested = False
        self._resumed_config = None  # the saved config of the restored step (set by restore)
        self.checkpointer = open_run_checkpointer(cfg, self.restore, self.log)
        settle_opened_run(self)

    def _keep_schedule(self, saved: dict) -> None:
        """A resumed sweep keeps the schedule shape it was saved with, as `jrt train` does
        (`train.optim.resume_schedule`; the replicas' peak lrs are checked by `_check_replicas`)."""
        cfg, note = resume_schedule(self.cfg, saved, compare_lr=False)
        if note:
            self._notes.append(note)
        if cfg == self.cfg:
            return
        self.cfg = cfg
        self.tx, self.schedule = make_optimizer(dataclasses.replace(cfg.optim, lr=1.0),
                                                cfg.optim.decay_steps or cfg.steps)
        self._build()

    # ------------------------------------------------------------------------------------------------ build

    def _init_params(self):
        """(rest, params stacked [R, ...]): each replica initialised as `jrt train seed=s` initialises its model."""
        config = self.model_config

        @jax.jit
        def init(seed):
            _, params, rest = nnx.split(models.build(config, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param, ...)
            return params, rest

        by_seed = {s: init(jnp.int32(s)) for s in sorted({r["seed"] for r in self.replicas})}
        per_replica = [by_seed[r["seed"]] for r in self.replicas]
        stack = lambda *xs: jnp.stack(xs)
        params = jax.tree.map(stack, *[p for p, _ in per_replica])
        rest = jax.tree.map(stack, *[r for _, r in per_replica])
        return rest, params

    def _build(self):
        forward = model_forward(self.graphdef, self.model_config, self.enc_len)
        step_fn = make_train_step(forward, self.tx, self.schedule, self.cfg, self.objective, self.enc_len)
        eval_fn = make_eval_step(forward)
        task = self.task
        eval_batches = max(1, math.ceil(self.cfg.data.eval_examples / self.cfg.data.batch_size))

        def replica_step(params, opt_state, rest, key, lr, tokens, labels, step):
            return step_fn(params, opt_state, rest, tokens, labels, None, step, key, lr)

        if self.batching == "vmap":
            vstep = jax.vmap(replica_step, in_axes=(0, 0, 0, 0, 0, None, None, None))
            veval = jax.vmap(eval_fn, in_axes=(0, 0, None, None, None))
        else:  # "loop": one replica after another (see SweepConfig.batching)
            def vstep(params, opt_state, rest, keys, lrs, tokens, labels, step):
                return jax.lax.map(lambda r: replica_step(*r, tokens, labels, step),
                                   (params, opt_state, rest, keys, lrs))

            def veval(params, rest, tokens, labels, segment_ids):
                return jax.lax.map(lambda r: eval_fn(*r, tokens, labels, segment_ids), (params, rest))

        def one_step(state, rest, keys, lrs, step):
            batch = make_batch(batch_key(task.seed, 0, step), task)
            params, opt_state, metrics = vstep(state["params"], state["opt_state"], rest, keys, lrs,
                                               batch["tokens"], batch["labels"], step)
            # A replica whose loss, gradient or new state is not finite keeps its last finite state from then on
            # (so a checkpoint, which refuses non-finite values, can always be written).
            alive = state["diverged_at"] < 0
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            for leaf in jax.tree.leaves((params, opt_state)):
                if jnp.issubdtype(leaf.dtype, jnp.inexact) and leaf.ndim >= 1:
                    finite &= jnp.all(jnp.isfinite(leaf).reshape(leaf.shape[0], -1), axis=1)
            keep = alive & finite

            def pick(new, old):
                return jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

            new = {"params": jax.tree.map(pick, params, state["params"]),
                   "opt_state": jax.tree.map(pick, opt_state, state["opt_state"]),
                   "diverged_at": jnp.where(alive & ~finite, step, state["diverged_at"])}
            return new, metrics

        # One program per scan length K: a shorter scan (the last one of a run, or one ending at a checkpoint of a
        # resumed run) runs the same program with its last iterations skipped, so a run compiles its step once.
        @functools.partial(jax.jit, static_argnums=6, donate_argnums=0)
        def run_scan(state, rest, keys, lrs, start, active, length):
            blank = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                 jax.eval_shape(lambda s: one_step(s, rest, keys, lrs, start)[1], state))

            def body(state, i):
                return jax.lax.cond(i < active, lambda s: one_step(s, rest, keys, lrs, start + i),
                                    lambda s: (s, blank), state)

            return jax.lax.scan(body, state, jnp.arange(length, dtype=jnp.int32))

        @jax.jit
        def evaluate(params, rest):
            def body(_, i):
                batch = make_batch(batch_key(task.seed, 1, i), task)
                return None, veval(params, rest, batch["tokens"], batch["labels"], None)

            return jax.lax.scan(body, None, jnp.arange(eval_batches, dtype=jnp.int32))[1]

        self._run_scan, self._evaluate = run_scan, evaluate

    # ------------------------------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        return {"step": self.step, "data_position": self.step, "seed": self.cfg.seed, "config": to_dict(self.cfg),
                "replicas": self.replicas}

    def save(self, *, force: bool = False) -> None:
        if self.checkpointer is not None:
            self.checkpointer.save(self.step, self.state, self._meta(), force=force)

    def restore(self, step: int | None = None, *, checkpointer: Checkpointer | None = None) -> None:
        """Load a verified checkpoint of this sweep (`step`, or the newest that verifies); `checkpointer` defaults
        to the sweep's own."""
        ckpt = checkpointer if checkpointer is not None else self.checkpointer
        # The replicas first (metadata only): another grid is a config error, not a layout or corruption problem.
        self._check_replicas(ckpt.restore_meta(ckpt.latest_step() if step is None else step), ckpt)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)
        state, meta = ckpt.restore_newest_good(abstract) if step is None else ckpt.restore(abstract, step)
        self._check_replicas(meta, ckpt)
        self.state = jax.device_put(state, self.device)
        self.step = int(meta["data_position"])
        self._resumed_config = meta.get("config") if isinstance(meta.get("config"), dict) else None
        self.log(f"restored checkpoint step {meta['step']} from {ckpt.path}")

    def _check_replicas(self, meta: dict, ckpt) -> None:
        saved = [(r.get("seed"), r.get("lr")) for r in meta.get("replicas", [])]
        here = [(r["seed"], r["lr"]) for r in self.replicas]
        if saved != here:
            show = lambda pairs: ", ".join(f"({s}, {lr:g})" for s, lr in pairs[:4]) + (" …" if len(pairs) > 4 else "")
            raise CheckpointError(f"checkpoint step {meta['step']} in {str(ckpt.path)!r} holds another sweep's "
                                  f"replicas (seed, lr) [{show(saved)}] than sweep.seeds x sweep.lr here "
                                  f"[{show(here)}]; resume with the same lists or use another checkpoint.dir")

    def _on_sigterm(self, signum, frame):
        self._stop_requested = True

    # ---------------------------------------------------------------------------------------------- running

    def evaluate(self) -> list[dict]:
        """Per replica {"eval_accuracy", "eval_loss"} on the held-out examples."""
        correct, count, ce = (np.asarray(x, np.float64).sum(0) for x in self._evaluate(self.state["params"],
                                                                                        self.rest))
        return [{"eval_accuracy": _number(c / max(n, 1.0)), "eval_loss": _number(e / max(n, 1.0))}
                for c, n, e in zip(correct, count, ce)]

    def run(self) -> dict:
        """Train every replica to `steps` (or until SIGTERM); returns {"runs": [...], "best": {...}, …}."""
        cfg = self.cfg
        log_dir = pathlib.Path(cfg.logging.dir) if cfg.logging.dir is not None else None
        writer = _JsonlWriter(log_dir / "metrics.jsonl" if log_dir else None, self.step)
        every, eval_every, ck_every = cfg.logging.every, cfg.logging.eval_every, cfg.checkpoint.every
        if self.step == 0:
            if log_dir is not None:
                self.log(f"sweep {cfg.name}: {log_dir}" + (f" (continue it: jrt sweep --resume {log_dir})"
                                                           if self.checkpointer else ""))
            self.log(f"model {cfg.model.preset}: {models.count_params(self.model_config):,} parameters x "
                     f"{self.size} replicas (seeds x lr), objective {self.objective}, {self.steps_per_scan} steps "
                     f"per scan, replicas by {self.batching} on {self.device.platform}")
            if eval_every:
                self._write_eval(writer, 0, self.evaluate())
        progress = _progress(cfg.logging.progress, self.size * cfg.steps, self.size * self.step)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        last = None
        started, timed_steps, timed_seconds = time.perf_counter(), 0, 0.0
        try:
            scans = 0
            while self.step < cfg.steps and not self._stop_requested:
                start = self.step
                length = min(self.steps_per_scan - start % self.steps_per_scan, cfg.steps - start)
                t0 = time.perf_counter()
                self.state, metrics = self._run_scan(self.state, self.rest, self.keys, self.lrs, jnp.int32(start),
                                                     jnp.int32(length), self.steps_per_scan)
                metrics = {k: np.asarray(v)[:length] for k, v in metrics.items()}  # [length, R]; waits for the scan
                scans += 1
                if scans > 1:  # the first scan includes the compilation
                    timed_steps, timed_seconds = timed_steps + length, timed_seconds + time.perf_counter() - t0
                self.step += length
                diverged = np.asarray(self.state["diverged_at"])
                for j in range(length):
                    s = start + j + 1
                    if s % every == 0 or s == cfg.steps:
                        writer.write_many(self._step_rows(s, {k: v[j] for k, v in metrics.items()}, diverged))
                last = {k: v[-1] for k, v in metrics.items()}
                if eval_every and self.step // eval_every > start // eval_every and self.step < cfg.steps:
                    self._write_eval(writer, self.step, self.evaluate())
                if progress is not None:
                    finite = last["loss"][np.isfinite(last["loss"])]
                    progress.set_postfix({"loss": f"{np.median(finite):.4g}" if finite.size else "nan"},
                                         refresh=False)
                    progress.update(self.size * length)
                else:
                    self.log(_line(self.step, last, diverged))
                if self.checkpointer is not None and ck_every and self.step // ck_every > start // ck_every:
                    self.save()
            stopped = self._stop_requested and self.step < cfg.steps
            if self.checkpointer is not None and self.checkpointer.latest_step() != self.step:
                self.save(force=True)
            final = None
            if stopped:
                self.log(f"SIGTERM: stopping at step {self.step}"
                         + (" (checkpoint saved)" if self.checkpointer is not None else " (no checkpoint.dir)"))
            else:
                final = self.evaluate()
                self._write_eval(writer, self.step, final)
            if self.checkpointer is not None:
                self.checkpointer.wait()
        finally:
            if progress is not None:
                progress.close()
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        seconds = time.perf_counter() - started
        rows = self._results(last, final)
        if final is not None and log_dir is not None:
            _write_jsonl_atomic(log_dir / "results.jsonl", rows)
        summary = {"runs": rows, "best": best_of(rows), "run_dir": None if log_dir is None else str(log_dir),
                   "replicas": self.size, "steps": self.step, "seconds": round(seconds, 3)}
        if timed_steps:
            summary["replica_steps_per_s"] = self.size * timed_steps / timed_seconds
        if stopped:
            summary["stopped"] = "SIGTERM"
        return summary

    def _step_rows(self, step: int, metrics: dict, diverged) -> list[dict]:
        rows = []
        for r, rep in enumerate(self.replicas):
            row = {**rep, "step": step}
            row.update({k: _number(metrics[k][r]) for k in STEP_KEYS if k in metrics})
            row["scheduled_lr"] = _number(metrics["lr"][r])
            if diverged[r] >= 0:
                row["diverged_at"] = int(diverged[r])
            rows.append(row)
        return rows

    def _write_eval(self, writer, step: int, results: list[dict]) -> None:
        writer.write_many([{**rep, "step": step, **res} for rep, res in zip(self.replicas, results)])

    def _results(self, last: dict | None, final: list[dict] | None) -> list[dict]:
        diverged = np.asarray(self.state["diverged_at"])
        rows = []
        for r, rep in enumerate(self.replicas):
            row = {**rep, "step": self.step}
            if last is not None:
                row["loss"] = _number(last["loss"][r])
            if final is not None:
                row.update(final[r])
            row["diverged_at"] = int(diverged[r]) if diverged[r] >= 0 else None
            rows.append(row)
        return rows

    def close(self) -> None:
        """Finish the pending checkpoint write, then release the run directory."""
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            self.release_run_dirs()

    def release_run_dirs(self) -> None:
        """Release the sweep's directory locks (`train.lock`); `close` does it too. Idempotent."""
        self._locks.release()


def sweep(cfg: TrainConfig, *, log=None) -> dict:
    """Run the sweep of `cfg` to the end; {"runs": one row per replica, "best": the best row, …}."""
    runner = Sweep(cfg, log=log)
    try:
        return runner.run()
    finally:
        runner.close()


class _JsonlWriter:
    """metrics.jsonl rows; a resumed sweep (start_step > 0) first drops the rows an earlier life wrote after its
    last checkpoint, a new one moves an old file aside (`train.metrics`'s rules for jrt train)."""

    def __init__(self, path: pathlib.Path | None, start_step: int):
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _prepare_jsonl(path, start_step)
            self._file = open(path, "a")

    def write_many(self, rows: list[dict]) -> None:
        if self._file is None:
            return
        now = time.time()
        self._file.write("".join(json.dumps({**row, "time": now}) + "\n" for row in rows))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _number(x) -> float | None:
    """A metric as JSON: a float, or None when it is not finite (a diverged replica; JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _write_jsonl_atomic(path: pathlib.Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def _progress(enabled: bool | None, total: int, initial: int):
    """A tqdm bar on stderr counting replica-steps (replicas × steps), when stderr is a terminal or asked for."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, dynamic_ncols=True, desc="sweep", unit="replica-step", file=sys.stderr)


def _line(step: int, last: dict, diverged) -> str:
    loss = last["loss"][np.isfinite(last["loss"])]
    text = f"step {step:>6}  " + (f"loss min {loss.min():.4g} median {np.median(loss):.4g} max {loss.max():.4g} "
                                  f"over {loss.size} replicas" if loss.size else "no finite loss")
    n = int((np.asarray(diverged) >= 0).sum())
    return text + (f"  ({n} diverged)" if n else "")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["Sweep", "best_of", "replicas", "sweep"]
