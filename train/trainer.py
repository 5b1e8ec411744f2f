"""The training loop: sharded jit step, evaluation, checkpoints, metrics.

    trainer = Trainer(load_config(None, ["steps=100"]))
    summary = trainer.run()          # {"step": …, "loss": …, "eval_accuracy": …}

Everything a step depends on is a function of (config, step): the batch (`data`), the masking RNG
(fold_in(seed, step)) and the learning rate — so a run restored from the checkpoint of step s continues
exactly as the uninterrupted run from s on.

Each run has a directory (`TrainConfig`: runs/{name}, a new timestamped one by default) holding config.yaml,
metrics.jsonl, the TensorBoard events (with the config as hparams) and checkpoints/; the run claims it (`train.lock`:
RUN/.lock) before writing anything there, so a second run on the same directory is refused. Resuming is explicit:
`jrt train --resume RUN_DIR`, or checkpoint.resume=true on the same directory; a resumed run keeps the learning-rate
schedule it was saved with unless optim.reschedule=true (`train.optim.resume_schedule`). Which checkpoint directory
a run may use, how restores are verified and what happens to corrupt steps is described in `train.checkpoint`.

Context parallelism (`mesh.sequence=N`): the batch's time dimension is split over the mesh's `sequence` axis
(`train.mesh.BATCH_SPEC`) and the model is traced inside `jrt_jax.nn.sequence_parallel`, so its sequence mixers
run the `jrt_jax.parallel` ops; everything else (projections, RoPE, packing positions, the JRT masking and
losses) is position-wise on global arrays and follows jit's sharding propagation. Losses equal one device's;
a checkpoint restores onto any mesh.sequence; with several processes each feeds its block of rows × positions.

Failures a user can cause are `ValueError`s with one-line messages: `TrainingError` (a non-finite loss) and
`train.checkpoint.CheckpointError`. SIGTERM stops the loop after the current step, saves a checkpoint, waits for
it to be on disk and returns a summary with ``"stopped": "SIGTERM"`` (no final evaluation: the grace period of
a preempted job is short); `jrt train` then exits with status 143 (128 + SIGTERM) so that schedulers see an
unfinished job and requeue it; a requeued command resumes when it names its directory (`name=…` or
checkpoint.dir) and sets checkpoint.resume=true (on an empty directory that starts the run).
"""

from __future__ import annotations

import functools
import math
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jrt_jax import models
from jrt_jax.nn.constraints import activation_sharding, embedding_sharding
from jrt_jax.nn.sequence_parallel import sequence_parallel
from jrt_jax.runs import write_model_config
from train import mesh as meshlib
from train import objectives
from train.checkpoint import Checkpointer, CheckpointError
from train.config import TrainConfig, resolved_mlm_prob, to_dict, write_run_config
from train.data import make_task
from train.lock import claim_run
from train.metrics import MetricsWriter, Progress, peak_flops_per_device
from train.model_config import training_model_config
from train.optim import make_optimizer, resume_schedule, warmup_note


class TrainingError(ValueError):
    """Training cannot continue (e.g. a non-finite loss); the message is one line naming the step."""


def build_model_config(cfg: TrainConfig):
    """The model config: preset (or model.checkpoint's config) + overrides, dtypes from the optimiser section,
    model.rope_scaling (`train.model_config.training_model_config`). Recorded beside the run's checkpoints as
    config.json (`settle_opened_run`), which is what the run's readers build."""
    return training_model_config(to_dict(cfg))


class Trainer:
    """One training run (see the module docstring). Its directories are claimed (`train.lock`) before anything is
    written to them and released by `close` (or `release_run_dirs`).

    log: progress lines (process 0 only). warn: one-line warnings and notes (default: stderr, process 0 only)."""

    def __init__(self, cfg: TrainConfig, *, log=print, warn=None):
        self.cfg = cfg
        if cfg.distributed.enabled and not jax.distributed.is_initialized():
            d = cfg.distributed
            # CPU processes need a collectives library to form one job (tests, CPU clusters); no effect elsewhere.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                                       process_id=d.process_id, local_device_ids=d.local_device_ids)
        # Only after jax.distributed.initialize: asking for the process index starts the backend.
        self.log = log if jax.process_index() == 0 else (lambda *a, **k: None)
        self.warn = (warn or _stderr) if jax.process_index() == 0 else (lambda *a, **k: None)
        stamp = None
        if jax.process_count() > 1:  # every host names the run directory from process 0's clock
            from jax.experimental import multihost_utils

            stamp = float(multihost_utils.broadcast_one_to_all(np.int64(time.time())))
        # The run's directories are claimed before anything is written to them; released by close() or on failure.
        # Warnings wait until the run is set up: a run that fails to start prints its error alone, in one line.
        self._notes: list[str] = []
        self.cfg, self._locks = claim_run(cfg, warn=self._notes.append, timestamp=stamp)
        self.checkpointer = None
        try:
            self._setup()
        except BaseException:
            self.release_run_dirs()
            raise
        for note in self._notes:
            self.warn(note)

    def _setup(self) -> None:
        cfg = self.cfg
        devices = jax.devices()
        if cfg.mesh.num_devices is not None:
            if cfg.mesh.num_devices > len(devices):
                raise ValueError(f"mesh.num_devices={cfg.mesh.num_devices} but only {len(devices)} devices exist")
            devices = devices[: cfg.mesh.num_devices]
        self.model_config = build_model_config(cfg)
        meshlib.check_sequence(self.model_config, cfg.data.seq_len, cfg.mesh.sequence)
        self.mesh = meshlib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices,
                                      sequence=cfg.mesh.sequence)
        meshlib.check_batch(cfg.data.batch_size, self.mesh, cfg.optim.grad_accum)
        self.rules = meshlib.resolve_rules(cfg.mesh.rules)
        self.task = make_task(cfg.data, self.model_config, checkpoint=cfg.model.checkpoint)
        self.objective, self.enc_len = resolve_objective(cfg, self.model_config, self.task)
        self.is_jrt = getattr(self.model_config, "encoder_len", None) is not None

        # Abstract model → shardings → initialise parameters directly into them.
        abstract = models.abstract_model(self.model_config)
        self.graphdef, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
        self.param_shardings = meshlib.param_shardings(abstract_params, self.mesh, self.rules)
        self.sharding_table = meshlib.describe(abstract_params, self.param_shardings)
        self.tx, self.schedule = make_optimizer(cfg.optim, cfg.optim.decay_steps or cfg.steps)
        self.batch_sharding = meshlib.batch_sharding(self.mesh)
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.activation_sharding = meshlib.activation_sharding(self.mesh)
        self.embedding_sharding = meshlib.embedding_lookup_sharding(self.mesh, self.rules)

        config = self.model_config
        graphdef = self.graphdef

        @functools.partial(jax.jit, out_shardings=(self.param_shardings, self.replicated))
        def init():
            _, params, rest = nnx.split(models.build(config, seed=cfg.seed), nnx.Param, ...)
            return params, rest

        if cfg.model.checkpoint is not None:
            # Fine-tuning (e.g. Position Interpolation): the converted weights, streamed into their shardings.
            from jrt_jax.convert import from_pretrained

            loaded = from_pretrained(cfg.model.checkpoint, config=config, shardings=self.param_shardings)
            _, params, rest = nnx.split(loaded, nnx.Param, ...)
            self.rest = jax.device_put(rest, self.replicated)
        else:
            params, self.rest = init()
        opt_state = jax.jit(self.tx.init)(params)
        # Moments follow their parameters' shardings; scalars (the step count) land on one device: replicate them.
        opt_state = jax.tree.map(
            lambda x: x if len(x.sharding.device_set) == self.mesh.size else jax.device_put(x, self.replicated),
            opt_state)
        self.opt_shardings = jax.tree.map(lambda x: x.sharding, opt_state)
        self.state = {"params": params, "opt_state": opt_state}
        self.step = 0
        self.rows, self.positions = meshlib.host_block(cfg.data.batch_size, cfg.data.seq_len, self.mesh)
        self._build_steps(graphdef)

        self._stop_requested = False
        self._resumed_config = None  # the saved config of the restored step (set by restore)
        self.checkpointer = open_run_checkpointer(cfg, self.restore, self.log)
        settle_opened_run(self)

    def _keep_schedule(self, saved: dict) -> None:
        """A resumed run keeps the learning-rate schedule it was saved with (`train.optim.resume_schedule`); the
        optimizer and the step are rebuilt when the config's schedule differs (nothing is compiled yet)."""
        cfg, note = resume_schedule(self.cfg, saved)
        if note:
            self._notes.append(note)
        if cfg == self.cfg:
            return
        self.cfg = cfg
        self.tx, self.schedule = make_optimizer(cfg.optim, cfg.optim.decay_steps or cfg.steps)
        self._build_steps(self.graphdef)

    def release_run_dirs(self) -> None:
        """Release the run's directory locks (`train.lock`); `close` does it too. Idempotent."""
        self._locks.release()

    # ------------------------------------------------------------------------------------------------- steps

    def _forward(self, params, rest, tokens, segment_ids=None):
        # Context parallelism (mesh.sequence > 1): the mixers run jrt_jax.parallel over the sequence axis.
        # The embedding lookup reads the table with its width gathered (train.mesh.embedding_lookup_sharding).
        with activation_sharding(self.activation_sharding), embedding_sharding(self.embedding_sharding), \
                sequence_parallel(self.mesh, meshlib.SEQUENCE_AXIS, batch_axes=meshlib.BATCH_AXES):
            return self._model_forward(params, rest, tokens, segment_ids)

    def _build_steps(self, graphdef):
        cfg = self.cfg
        self._model_forward = model_forward(graphdef, self.model_config, self.enc_len)
        step_fn = make_train_step(self._forward, self.tx, self.schedule, cfg, self.objective, self.enc_len)
        key = jax.random.PRNGKey(cfg.seed)

        def train_step(state, rest, tokens, labels, segment_ids, step):
            params, opt_state, metrics = step_fn(state["params"], state["opt_state"], rest, tokens, labels,
                                                 segment_ids, step, key)
            return {"params": params, "opt_state": opt_state}, metrics

        state_shardings = {"params": self.param_shardings, "opt_state": self.opt_shardings}
        self.train_step = jax.jit(
            train_step,
            in_shardings=(state_shardings, self.replicated, self.batch_sharding, self.batch_sharding,
                          self.batch_sharding, None),
            out_shardings=(state_shardings, None),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(make_eval_step(self._forward),
                                 in_shardings=(self.param_shardings, self.replicated, self.batch_sharding,
                                               self.batch_sharding, self.batch_sharding))

    # -------------------------------------------------------------------------------------------------- data

    def _global_batch(self, step: int, split: int = 0, rows=None):
        """(tokens, labels, segment_ids or None) of global step `step` as sharded arrays (this process's rows)."""
        rows = self.rows if rows is None else rows
        return self._to_global(self.task.batch(step, rows, split))

    def _to_global(self, batch):
        size = self.cfg.data.batch_size
        put = lambda x: None if x is None else meshlib.global_batch_array(x, self.mesh, size, self.positions)
        return put(batch.tokens), put(batch.labels), put(batch.segment_ids)

    def _batches(self):
        """The training batches from the current step on: the task's prefetching iterator when it has one
        (data.kind=tokens: grain workers), else one batch per step. Either way batch s is the pure function
        task.batch(s, rows), so the data position saved with a checkpoint is the step."""
        iterate = getattr(self.task, "iterate", None)
        if iterate is None:
            return (self.task.batch(s, self.rows) for s in range(self.step, self.cfg.steps))
        return iterate(self.step, self.rows)

    # ------------------------------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        return {"step": self.step, "data_position": self.step, "seed": self.cfg.seed, "config": to_dict(self.cfg)}

    def save(self, *, force: bool = False) -> None:
        if self.checkpointer is not None:
            self.checkpointer.save(self.step, self.state, self._meta(), force=force)

    def restore(self, step: int | None = None, *, checkpointer: Checkpointer | None = None) -> None:
        """Load a verified checkpoint: `step`, or the newest one that verifies (corrupt newer ones are reported
        and, with a writable checkpointer, set aside). `checkpointer` defaults to the run's own."""
        ckpt = checkpointer if checkpointer is not None else self.checkpointer
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)
        if step is None:
            self.state, meta = ckpt.restore_newest_good(abstract)
        else:
            self.state, meta = ckpt.restore(abstract, step)
        self.step = int(meta["data_position"])
        self._resumed_config = meta.get("config") if isinstance(meta.get("config"), dict) else None
        self.log(f"restored checkpoint step {meta['step']} from {ckpt.path}")

    def _on_sigterm(self, signum, frame):
        self._stop_requested = True

    # ----------------------------------------------------------------------------------------------- running

    def evaluate(self) -> dict:
        """Accuracy at the labelled positions and NTP loss on `data.eval_examples` held-out examples."""
        size = self.cfg.data.batch_size
        batches = max(1, math.ceil(self.cfg.data.eval_examples / size))
        correct = count = ce = 0.0
        for i in range(batches):
            tokens, labels, segments = self._global_batch(i, split=1)
            c, n, e = self.eval_step(self.state["params"], self.rest, tokens, labels, segments)
            correct, count, ce = correct + float(c), count + float(n), ce + float(e)
        return {"eval_accuracy": correct / max(count, 1.0), "eval_loss": ce / max(count, 1.0)}

    def flops_per_step(self) -> float:
        tokens, labels, segments = self._global_batch(0)
        compiled = self.train_step.lower(self.state, self.rest, tokens, labels, segments, jnp.int32(0)).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", float("nan"))) if cost else float("nan")

    def _check_finite(self, metrics: dict) -> None:
        values = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
        if all(math.isfinite(v) for v in values.values()):
            return
        where = ""
        if self.checkpointer is not None:
            latest = self.checkpointer.latest_step()
            where = ("; no checkpoint was saved" if latest is None
                     else f"; the latest checkpoint is step {latest} in {str(self.checkpointer.path)!r}")
        raise TrainingError(f"non-finite loss at step {self.step} (loss {values['loss']:.4g}, grad_norm "
                            f"{values['grad_norm']:.4g}); stopped without saving this state{where}. Lower optim.lr "
                            "or raise optim.warmup_steps, then resume")

    def run(self) -> dict:
        """Train to `cfg.steps` (or until SIGTERM); returns a summary dict (see the module docstring)."""
        cfg = self.cfg
        writer = MetricsWriter(cfg.logging.dir, start_step=self.step, hparams=to_dict(cfg))
        if self.step == 0:
            name = cfg.model.preset if cfg.model.checkpoint is None else cfg.model.checkpoint
            if cfg.logging.dir is not None:
                self.log(f"run {cfg.name}: {cfg.logging.dir}" + (f" (continue it: jrt train --resume "
                                                                 f"{cfg.logging.dir})" if self.checkpointer else ""))
            self.log(f"model {name}: {models.count_params(self.model_config):,} parameters, objective "
                     f"{self.objective}; mesh "
                     f"{dict(self.mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s)")
            if cfg.logging.eval_every:  # the starting point of the curve (a fine-tune's baseline)
                start = self.evaluate()
                writer.write(0, start)
                self.log("step      0  " + "  ".join(f"{k} {v:.4g}" for k, v in start.items()))
        flops = self.flops_per_step()
        peak, peak_source = peak_flops_per_device()
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        progress = Progress(cfg.steps, self.step, cfg.logging.progress)
        last, metrics = {}, None
        t0, steps_timed = time.perf_counter(), 0
        batches = self._batches()
        try:
            while self.step < cfg.steps and not self._stop_requested:
                tokens, labels, segments = self._to_global(next(batches))
                self.state, metrics = self.train_step(self.state, self.rest, tokens, labels, segments,
                                                      jnp.int32(self.step))
                self.step += 1
                steps_timed += 1
                if self.step % cfg.logging.every == 0 or self.step == cfg.steps:
                    metrics = {k: float(v) for k, v in metrics.items()}
                    elapsed = time.perf_counter() - t0
                    metrics["tokens_per_s"] = tokens_per_step * steps_timed / elapsed
                    metrics["mfu"] = flops * steps_timed / elapsed / (peak * jax.device_count())
                    self._check_finite(metrics)
                    if cfg.logging.eval_every and self.step % cfg.logging.eval_every == 0:
                        metrics.update(self.evaluate())
                    writer.write(self.step, metrics)
                    progress.update(steps_timed if progress.bar else 0, metrics)
                    if not progress.enabled:
                        self.log(_line(self.step, metrics))
                    last = metrics
                    t0, steps_timed = time.perf_counter(), 0
                if self.checkpointer is not None and cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self._check_finite(metrics)  # never save a diverged state
                    self.save()
            stopped = self._stop_requested and self.step < cfg.steps
            if self.checkpointer is not None and self.checkpointer.latest_step() != self.step:
                if metrics is not None:
                    self._check_finite(metrics)
                self.save(force=True)
            if stopped:
                self.log(f"SIGTERM: stopping at step {self.step}"
                         + (" (checkpoint saved)" if self.checkpointer is not None else " (no checkpoint.dir)"))
                final = {}
            else:
                final = self.evaluate()
                writer.write(self.step, final)
            if self.checkpointer is not None:
                self.checkpointer.wait()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops grain's prefetch workers
            progress.close()
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        summary = {"step": self.step, **{k: v for k, v in last.items() if k in ("loss", "tokens_per_s", "mfu")},
                   **final, "flops_per_step": flops, "peak_flops_source": peak_source}
        if stopped:
            summary["stopped"] = "SIGTERM"
        return summary

    def close(self) -> None:
        """Finish the pending checkpoint write, then release the run's directories."""
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            self.release_run_dirs()


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def settle_opened_run(runner) -> None:
    """What `Trainer` and `train.sweep.Sweep` do once their checkpoint directory accepted the run: a resumed run
    keeps its saved schedule (`runner._keep_schedule(runner._resumed_config)`), config.yaml is written, and the
    model's config.json beside the checkpoints (`jrt_jax.runs.write_model_config`: what readers of the run build;
    process 0, after the directory accepted the run, never before), and a warmup longer than the schedule is noted
    (of the schedule in use). On any failure the checkpointer is closed and the first error is raised."""
    try:
        if runner._resumed_config is not None:
            runner._keep_schedule(runner._resumed_config)
        if jax.process_index() == 0:
            write_run_config(runner.cfg, new_run=runner.step == 0)
            if runner.checkpointer is not None:
                write_model_config(runner.checkpointer.path, runner.model_config)
        note = warmup_note(runner.cfg.optim, runner.cfg.steps)
        if note:
            runner._notes.append(note)
    except BaseException:
        if runner.checkpointer is not None:
            try:
                runner.checkpointer.close()
            except Exception:  # the first error is the one to report
                pass
        raise


def open_run_checkpointer(cfg: TrainConfig, restore, log) -> Checkpointer | None:
    """The run's checkpoint directory (None without checkpoint.dir), opened for this run: a resumed run is restored
    through `restore(step)` (checkpoint.step, or the newest verified one; later steps are set aside when a step is
    named); checkpoint.step on a directory without checkpoints is an error. Closed again if anything fails.
    `restore(step, checkpointer=...)` is called with the new checkpointer (the caller's attribute is not set yet)."""
    c = cfg.checkpoint
    if c.dir is None:
        return None
    checkpointer = Checkpointer(c.dir, keep=c.keep, async_save=c.async_save, log=log)
    try:
        if checkpointer.open_run(to_dict(cfg), resume=c.resume, overwrite=c.overwrite):
            restore(c.step, checkpointer=checkpointer)
            if c.step is not None:
                checkpointer.set_aside_newer(c.step)
        elif c.step is not None:
            raise CheckpointError(f"checkpoint.step={c.step}: {str(checkpointer.path)!r} holds no checkpoint")
    except BaseException:
        checkpointer.close()
        raise
    return checkpointer


def resolve_objective(cfg: TrainConfig, model_config, task) -> tuple[str, int | None]:
    """(objective "ntp" or "jrt", prefix length M or None) of a run: objective.kind with "auto" resolved (JRT for
    prefix-linear-attention models), M = the task's prefix (else the model's enc_len); ValueError when the JRT
    objective has no model or no decoder positions to train."""
    enc_len = task.enc_len if task.enc_len is not None else getattr(model_config, "enc_len", None)
    is_jrt = getattr(model_config, "encoder_len", None) is not None
    objective = cfg.objective.kind if cfg.objective.kind != "auto" else ("jrt" if is_jrt else "ntp")
    if objective == "jrt" and not is_jrt:
        raise ValueError(f"objective.kind='jrt' needs a JRT-RNN (prefix) model; {cfg.model.preset!r} is not one "
                         "(use objective.kind=ntp)")
    if objective == "jrt" and enc_len is not None and cfg.data.seq_len <= enc_len:
        source = "the task's prefix" if task.enc_len is not None else "model enc_len"
        raise ValueError(f"data.seq_len={cfg.data.seq_len} leaves no decoder positions for the JRT objective: "
                         f"positions >= {enc_len} ({source}) carry its next-token loss, so only the MLM loss "
                         f"would train. Raise data.seq_len above {enc_len} or lower "
                         "model.overrides.enc_len")
    return objective, enc_len


def model_forward(graphdef, model_config, enc_len):
    """forward(params, rest, tokens, segment_ids=None) -> logits: the model of `graphdef` rebuilt from its state
    (`nnx.merge`), a JRT-RNN reading the first min(enc_len, T) tokens as its encoder. Pure: it can be jitted,
    vmapped over stacked states (`train.sweep`) or traced inside the trainer's mesh contexts."""
    is_jrt_model = isinstance(model_config, models.JRTConfig)

    def forward(params, rest, tokens, segment_ids=None):
        model = nnx.merge(graphdef, params, rest)
        kw = {} if segment_ids is None else {"segment_ids": segment_ids}
        if is_jrt_model and enc_len is not None:
            return model(tokens, enc_len=min(enc_len, tokens.shape[1]), **kw)
        return model(tokens, **kw)

    return forward


def make_train_step(forward, tx, schedule, cfg: TrainConfig, objective: str, enc_len):
    """The training step as a pure function, shared by `Trainer` and `train.sweep`:

        step(params, opt_state, rest, tokens, labels, segment_ids, step, key, lr_scale=None)
            -> (params, opt_state, metrics)

    `key` seeds the JRT objective's masking (fold_in(key, step)); `lr_scale` (a scalar, e.g. a sweep replica's
    learning rate when `tx` was built with optim.lr = 1) multiplies the optimizer's updates and the reported lr.
    Gradients accumulate over optim.grad_accum micro-batches.
    """
    accum = cfg.optim.grad_accum
    obj = cfg.objective
    use_jrt = objective == "jrt"
    mlm_prob = resolved_mlm_prob(cfg)

    def loss_terms(params, rest, tokens, labels, mlm_labels, segment_ids, ntp_count, mlm_count):
        logits = forward(params, rest, tokens, segment_ids)
        if use_jrt:
            ntp, mlm = objectives.jrt_loss(logits, labels, mlm_labels, enc_len, _doc_positions(segment_ids))
            loss = ntp[0] / jnp.maximum(ntp_count, 1.0) + obj.mlm_weight * mlm[0] / jnp.maximum(mlm_count, 1.0)
            return loss, (ntp[0], mlm[0])
        ntp = objectives.ntp_loss(logits, labels)
        return ntp[0] / jnp.maximum(ntp_count, 1.0), (ntp[0], jnp.zeros(()))

    def step_fn(params, opt_state, rest, tokens, labels, segment_ids, step, key, lr_scale=None):
        if use_jrt:
            positions = _doc_positions(segment_ids)
            real = None if segment_ids is None else segment_ids != 0
            tokens, mlm_labels = objectives.mlm_mask(jax.random.fold_in(key, step), tokens, enc_len, mlm_prob,
                                                     obj.mask_token_id, positions=positions, real=real)
            decoder = objectives.decoder_positions(labels, enc_len, positions)
            ntp_count = jnp.sum(((labels >= 0) & decoder).astype(jnp.float32))
        else:
            mlm_labels = jnp.full_like(labels, -1)
            ntp_count = jnp.sum((labels >= 0).astype(jnp.float32))
        mlm_count = jnp.sum((mlm_labels >= 0).astype(jnp.float32))

        def micro(x):  # [B, T] → [accum, B/accum, T], strided so every device holds rows of each micro-batch
            return x.reshape(x.shape[0] // accum, accum, x.shape[1]).swapaxes(0, 1)

        grad_fn = jax.value_and_grad(loss_terms, has_aux=True)

        def body(carry, mb):
            grads, loss, ntp_sum, mlm_sum = carry
            (l, (n, m)), g = grad_fn(params, rest, mb[0], mb[1], mb[2], mb[3], ntp_count, mlm_count)
            return (jax.tree.map(jnp.add, grads, g), loss + l, ntp_sum + n, mlm_sum + m), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
        segments = None if segment_ids is None else micro(segment_ids)
        (grads, loss, ntp_sum, mlm_sum), _ = jax.lax.scan(body, init, (micro(tokens), micro(labels),
                                                                     micro(mlm_labels), segments))
        updates, opt_state = tx.update(grads, opt_state, params)
        lr = schedule(step)
        if lr_scale is not None:
            updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
            lr = lr * lr_scale
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": loss,
            "ntp_loss": ntp_sum / jnp.maximum(ntp_count, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "lr": lr,
        }
        if use_jrt:
            metrics["mlm_loss"] = mlm_sum / jnp.maximum(mlm_count, 1.0)
        return params, opt_state, metrics

    return step_fn


def make_eval_step(forward):
    """eval_step(params, rest, tokens, labels, segment_ids) -> (correct, count, summed cross-entropy) over the
    labelled positions (greedy argmax = label counts as correct)."""

    def eval_step(params, rest, tokens, labels, segment_ids):
        logits = forward(params, rest, tokens, segment_ids)
        valid = labels >= 0
        correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
        ce, count = objectives.ntp_loss(logits, labels)
        return correct, count, ce

    return eval_step


def _doc_positions(segment_ids):
    """Each token's position within its document for packed rows (None for unpacked ones)."""
    if segment_ids is None:
        return None
    from jrt_jax.nn.padding import document_positions

    return document_positions(None, segment_ids, *segment_ids.shape)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _line(step, metrics) -> str:
    keys = ("loss", "ntp_loss", "mlm_loss", "grad_norm", "lr", "tokens_per_s", "mfu", "eval_accuracy", "eval_loss")
    return f"step {step:>6}  " + "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
