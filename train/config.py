"""The trainer's configuration: one tree of frozen dataclasses, a YAML/JSON file, `key=value` overrides.

    cfg = load_config("configs/mqar_jrt.yaml", ["optim.lr=3e-3", "mesh.data=-1", "model.preset=based-tiny"])

Every field is type-checked on load; an unknown key or a bad value is a `ValueError` naming the dotted field.
`TrainConfig()` is the built-in default: a micro JRT-RNN (0.2 M parameters) on set disjointness in the order
that is hard for causal models (long set first), sized to train on two CPU cores in a few minutes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import types
import typing
from typing import Any, Literal

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader reading YAML 1.2 floats too: `1e-3` and `3E5` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


DEFAULT_CHECKPOINT_DIR = "{run}/checkpoints"  # checkpoints/ inside the run directory
RUNS_ROOT = "runs"  # where run directories are made (the default logging.dir is runs/{name})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to train: a preset of `jrt_jax.models` with fields replaced, or a converted checkpoint.

    preset: any name of `jrt_jax.models.PRESETS` ("jrt-micro", "based-micro", "jrt-tiny", "llama-tiny", …).
    overrides: fields of the preset's config to replace (e.g. {"d_model": 64, "n_layers": 4}).
    checkpoint: a path for `jrt_jax.from_pretrained` (e.g. a converted Llama for PI fine-tuning); replaces preset.
    rope_scaling: a Hugging Face rope_scaling dict set on a Llama model (Position Interpolation:
      {"rope_type": "linear", "factor": 4.0}).
    """

    preset: str = "jrt-micro"
    overrides: dict = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    rope_scaling: dict | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data.

    kind: "mqar" (multi-query associative recall), "set_disjointness", "text" (small local files tokenized in
      memory) or "tokens" (directories written by `jrt prepare-data`, streamed with grain).
    order: the order of the two parts of a synthetic example — MQAR: "kv_first" (context before the queried
      keys are known: a causal model must store every pair; hard) or "queries_first" (easy); set
      disjointness: "long_first" (hard) or "short_first". None: the hard order of the task.
    seq_len: tokens per example. batch_size: GLOBAL examples per step (split over data-parallel devices/hosts).
    num_pairs, num_queries: MQAR key-value pairs and queries per example.
    num_keys, num_values: MQAR key and value vocabularies (disjoint token ranges after 4 special tokens).
    short_set, long_set, universe: set-disjointness sizes (one shared element) and the element vocabulary.
    text_files: glob patterns of UTF-8 files for kind="text"; tokenizer "gpt2", "bytes" or "auto" (the model
      checkpoint's own tokenizer when model.checkpoint is set — fine-tuning must read the ids the model was
      trained on — else gpt2).
    eval_examples: examples in the held-out evaluation set (generated from a different seed stream).
    read_twice: synthetic tasks: JRT-Prompt as the training format — every example reads its prefix (the task's
      M context tokens) twice, `jrt_jax.tasks.ReadTwice`; seq_len is still the whole row, so the example itself
      gets seq_len − M tokens.
    passkey_fraction: kind="text": the fraction of training rows replaced by a passkey example of seq_len + 1
      tokens (`jrt_jax.evals.passkey.training_example`: filler, the key line at a random depth, the question and
      its answer), so a small model learns the retrieval task it is later tested on at longer contexts (the
      PI paper's passkey test). Which rows are passkey rows is a pure function of (seed, step, row); the held-out
      rows stay text. passkey_header: the task sentence opening those examples ("" for none).
    path: kind="tokens": one or more `jrt prepare-data` output directories (data.path=DIR is [DIR]: any list-valued
      field takes a single value as a one-element list). weights: their mixture weights (one per path; default
      equal).
    packing: kind="tokens": pack whole documents into each sequence with segment ids (state resets at every
      document boundary, no loss across one; the JRT prefix is each document's first M tokens). False: fixed
      windows over the concatenated documents, as kind="text".
    workers: grain worker processes that prepare batches ahead of the step (0: a background thread).
    prefetch: batches prepared ahead per worker.
    on_device: synthetic tasks: make the batches on the accelerator with `jax.random` (`train.data.device`)
      instead of numpy on the host — the generator `jrt sweep` runs inside its scans, so `jrt train` with
      data.on_device=true reads exactly the batches of a one-replica sweep. Same token format and loss mask as the
      numpy tasks, another random stream. Held-out examples come from another key (split 1).
    set_format: set disjointness only. "default": `B SEP A | SEP x` as above. "paper": the JRT paper's
      `1 A 2 B 3 x` (HazyResearch/prefix-linear-attention `synthetic/`; needs the on-device generator:
      data.on_device=true, or jrt sweep), with the sizes of each example drawn from size_pairs and the two sets
      drawn from two disjoint halves of the universe (`train.data.device` describes the layout).
    size_pairs: set_format=paper: the (|A|, |B|) size pairs, first set first, e.g. [[4, 16], [16, 4]] (both orders,
      as the paper trains); each example draws one. Empty: the one pair short_set / long_set in `order`.
    set_halves: set_format=paper: "shuffled" (the paper: a fresh random split of the universe per example) or
      "fixed" (A always from the lower half of the element ids, B from the upper half).
    """

    kind: Literal["mqar", "set_disjointness", "text", "tokens"] = "set_disjointness"
    order: str | None = None
    seq_len: int = 32
    batch_size: int = 32
    num_pairs: int = 8
    num_queries: int = 8
    num_keys: int = 16
    num_values: int = 16
    short_set: int = 4
    long_set: int = 16
    universe: int = 64
    text_files: tuple[str, ...] = ()
    tokenizer: Literal["auto", "gpt2", "bytes"] = "auto"
    eval_examples: int = 256
    read_twice: bool = False
    passkey_fraction: float = 0.0
    passkey_header: str = ""
    seed: int = 0
    path: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    packing: bool = False
    workers: int = 0
    prefetch: int = 2
    on_device: bool = False
    set_format: Literal["default", "paper"] = "default"
    size_pairs: tuple[tuple[int, int], ...] = ()
    set_halves: Literal["shuffled", "fixed"] = "shuffled"


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Loss. "ntp": next-token prediction where the data marks targets. "jrt": NTP on positions ≥ M (the
    decoder) plus mlm_weight · masked-LM on the prefix, where mlm_prob of the prefix tokens are replaced by
    mask_token_id and must be predicted at their own position (the release: P = 0.15, w = 0.25).
    "auto": "jrt" for JRT-RNN (prefix linear attention) models, "ntp" for the others.
    mlm_prob None: the release's 0.15 on text; 0.0 on the synthetic recall tasks, whose prefix is the data the
    decoder must recall (masking 15 % of it makes a recall target unanswerable; measured in README)."""

    kind: Literal["auto", "ntp", "jrt"] = "auto"
    mlm_prob: float | None = None
    mlm_weight: float = 0.25
    mask_token_id: int = 3


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay to min_lr_ratio·lr, global-norm clipping, no weight decay
    on norms/biases/1-D parameters, gradient accumulation over grad_accum micro-batches, and optional
    low-precision compute (compute_dtype) with fp32 master weights (param_dtype).
    decay_steps: the schedule's length (None: `steps`). Fix it to stop a run early or extend it later: a run with
    steps=N is then exactly the first N steps of the longer one. warmup_steps should be shorter than it (a longer
    warmup is cut to the schedule's length - 1, with a warning).
    reschedule: on resume only. A resumed run keeps the schedule its checkpoint was saved with (peak lr, warmup,
      decay length, min_lr_ratio): `jrt train --resume RUN steps=80` after steps=60 continues on the 60-step
      schedule (at its final lr from step 60 on) and pins optim.decay_steps=60 in the run's config. true: apply this
      config's schedule instead (e.g. stretch the cosine over the new `steps`); it then becomes the run's.
      Which schedule is used is said in one line when they differ.
    lr, weight_decay, b1, b2, eps, clip_norm must be finite (b1, b2 in [0, 1); lr, eps > 0)."""

    lr: float = 3e-3
    warmup_steps: int = 50
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    grad_accum: int = 1
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    reschedule: bool = False


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor, sequence); -1 = all remaining devices (at most one of data, fsdp,
    tensor). `rules` maps the models' logical axis names to mesh axes (None = replicated); the default is
    `jrt_jax.nn.axes.SUGGESTED_RULES`. num_devices: use only the first N devices (None = all).

    sequence: context parallelism — the time dimension of every batch is split into this many contiguous
    shards, one per device along the axis, and the sequence mixers compute with `jrt_jax.parallel`
    (`jrt_jax.nn.sequence_parallel`); the losses equal one device's. data.seq_len must be divisible by it
    (an error otherwise, not silent padding), and a sliding window / conv halo must fit in one shard."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    sequence: int = 1
    rules: tuple | None = None
    num_devices: int | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under `dir` (None: no checkpoints; "{preset}" is replaced by model.preset): every `every`
    steps (0: none on the way) and at the end (and on SIGTERM), keep the last `keep`, asynchronous writes. Every array is verified against a digest
    on restore (`train.checkpoint`).

    dir: by default `checkpoints/` inside the run directory ("{run}", see `TrainConfig`); with logging.dir=null
      and this default there is no run directory and no checkpoints. null: no checkpoints.
    resume: continue the run whose checkpoints are in `dir` from its newest step that verifies (params,
      optimizer, step, RNG, data position); a corrupt newer step is reported and moved to `dir`/set-aside/.
      Resuming is explicit (default false; `jrt train --resume RUN_DIR` sets it); true on an empty `dir` starts
      the run, so a requeued job's command (a fixed `name` or `dir` and resume=true) starts once and then resumes.
    step: resume from this step instead (it must verify; newer steps are moved to `dir`/set-aside/).
    overwrite: start a new run in a `dir` that holds another run's checkpoints (moved to `dir`/set-aside/,
      not deleted); takes precedence over `resume`. Without it, resume=false on such a `dir` is an error.
      Not for a command that is rerun to resume (e.g. a requeued job): each rerun would start over.
    """

    dir: str | None = DEFAULT_CHECKPOINT_DIR
    every: int = 100
    keep: int = 3
    async_save: bool = True
    resume: bool = False
    step: int | None = None
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Metrics every `every` steps to `dir`/metrics.jsonl and TensorBoard event files (with the config as
    hparams); `dir` is the run directory, by default `runs/{name}` (see `TrainConfig`; "{preset}" is replaced by
    model.preset), and also holds config.yaml and the checkpoints; null: no metrics files. Evaluation every
    `eval_every` steps (0: only at the end; otherwise also before the first step of a new run, the baseline a
    fine-tune starts from); a progress bar when stdout is a terminal (or progress=True)."""

    dir: str | None = "runs/{name}"
    every: int = 10
    eval_every: int = 0
    progress: bool | None = None


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-host: call `jax.distributed.initialize` with these (on TPU pods / SLURM the empty defaults let JAX
    discover them). enabled=False (default) is a single process."""

    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """`jrt sweep` (`train.sweep`): a grid of small runs of this config, trained together as one program.

    seeds: model seeds (initialisation and the JRT masking RNG; the data stream is data.seed's for every replica,
      as for `jrt train seed=S`); null: the one value `seed`.
    lr: peak learning rates, each scaling optim's warmup + cosine schedule; null: the one value optim.lr.
    The replicas are every (seed, lr), seeds outermost; replica (s, l) trains as `jrt train seed=s optim.lr=l
    data.on_device=true` would.
    steps_per_scan: K, the optimizer steps one `lax.scan` runs without returning to the host. Metrics of every step
      come back with the scan; evaluation, checkpoints and the progress bar happen between scans, at the first scan
      boundary at or after each multiple of their period. The last scan of a run may be shorter.
    batching: how one step runs the replicas. "vmap": one batched program over the replica axis (accelerators: the
      replicas fill the device). "loop": `lax.map`, one replica after another inside the step (XLA:CPU runs a
      batched matmul of small matrices on one thread, an unbatched one on all cores: measured on 2 cores, MQAR
      recall-based F=8, 4 replicas, 74 vs 54 replica-steps/s). "auto": loop on CPU, vmap elsewhere.
    """

    seeds: tuple[int, ...] | None = None
    lr: tuple[float, ...] | None = None
    steps_per_scan: int = 50
    batching: Literal["auto", "vmap", "loop"] = "auto"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole run. `name` names the run directory `runs/{name}` (the default logging.dir; checkpoints go to its
    `checkpoints/`); unset, each run gets a new one, "{preset}-YYYYmmdd-HHMMSS" (with "-2", "-3", … when that
    exists). `resolve_run` fills these placeholders; the trainer does it once at start."""

    name: str | None = None
    steps: int = 1000
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    distributed: DistributedConfig = DistributedConfig()
    sweep: SweepConfig = SweepConfig()

    def __post_init__(self):
        if self.name is not None and (not self.name or self.name in (".", "..") or "/" in self.name
                                      or "\\" in self.name):
            raise ValueError(f"name must be a plain directory name (no '/'); got {self.name!r}")
        _positive("steps", self.steps)
        d, o = self.data, self.optim
        _positive("data.seq_len", d.seq_len)
        _positive("data.batch_size", d.batch_size)
        _positive("data.eval_examples", d.eval_examples)
        _positive("optim.lr", o.lr)
        _positive("optim.grad_accum", o.grad_accum)
        _non_negative("optim.warmup_steps", o.warmup_steps)
        if o.decay_steps is not None:
            _positive("optim.decay_steps", o.decay_steps)
        _non_negative("optim.weight_decay", o.weight_decay)
        _non_negative("optim.clip_norm", o.clip_norm)
        _positive("optim.eps", o.eps)
        for name in ("b1", "b2"):
            if not 0 <= getattr(o, name) < 1:  # NaN fails every comparison
                raise ValueError(f"optim.{name} must be in [0, 1); got {getattr(o, name)!r}")
        if not 0 <= o.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1]; got {o.min_lr_ratio}")
        if self.objective.mlm_prob is not None and not 0 <= self.objective.mlm_prob < 1:
            raise ValueError(f"objective.mlm_prob must be in [0, 1); got {self.objective.mlm_prob}")
        _non_negative("objective.mlm_weight", self.objective.mlm_weight)
        orders = {"mqar": ("kv_first", "queries_first"), "set_disjointness": ("long_first", "short_first")}
        if d.kind in orders and d.order is not None and d.order not in orders[d.kind]:
            raise ValueError(f"data.order must be one of {orders[d.kind]} for data.kind={d.kind!r}; got {d.order!r}")
        if d.kind == "text" and not d.text_files:
            raise ValueError("data.text_files must list at least one file pattern for data.kind='text'")
        if not 0 <= d.passkey_fraction <= 1:
            raise ValueError(f"data.passkey_fraction must be in [0, 1]; got {d.passkey_fraction}")
        if d.passkey_fraction and d.kind != "text":
            raise ValueError(f"data.passkey_fraction mixes passkey examples into data.kind='text'; got "
                             f"data.kind={d.kind!r}")
        if d.kind == "tokens" and not d.path:
            raise ValueError("data.path must name at least one `jrt prepare-data` directory for data.kind='tokens'")
        if d.weights and len(d.weights) != len(d.path):
            raise ValueError(f"data.weights has {len(d.weights)} entries but data.path has {len(d.path)}; give one "
                             "weight per path (or none for equal weights)")
        if any(not (w > 0 and w != float("inf")) for w in d.weights):
            raise ValueError(f"data.weights must be positive numbers; got {list(d.weights)}")
        if d.packing and d.kind != "tokens":
            raise ValueError(f"data.packing=true needs data.kind='tokens' (documents from `jrt prepare-data`); got "
                             f"data.kind={d.kind!r}")
        if d.on_device and d.kind not in orders:
            raise ValueError(f"data.on_device=true: data.kind={d.kind!r} has no on-device generator (mqar and "
                             "set_disjointness have)")
        if d.set_format == "paper" and d.kind != "set_disjointness":
            raise ValueError(f"data.set_format='paper' is a set-disjointness format; got data.kind={d.kind!r}")
        if d.size_pairs and d.set_format != "paper":
            raise ValueError("data.size_pairs applies to data.set_format=paper (the JRT paper's set disjointness)")
        for pair in d.size_pairs:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in pair)):
                raise ValueError(f"data.size_pairs must be a list of [first, second] positive set sizes; got "
                                 f"{[list(p) if isinstance(p, (list, tuple)) else p for p in d.size_pairs]}")
        if d.set_format == "paper" and (self.objective.mlm_prob or 0) > 0:
            raise ValueError(f"objective.mlm_prob={self.objective.mlm_prob}: data.set_format=paper uses id 3 as its "
                             "answer separator, which masked-LM would also write; use objective.mlm_prob=0")
        if d.workers < 0 or d.prefetch < 1:
            raise ValueError(f"data.workers must be >= 0 and data.prefetch >= 1; got {d.workers} and {d.prefetch}")
        if d.batch_size % o.grad_accum:
            raise ValueError(f"data.batch_size={d.batch_size} must be divisible by optim.grad_accum={o.grad_accum}")
        for axis in ("data", "fsdp", "tensor"):
            size = getattr(self.mesh, axis)
            if size == 0 or size < -1:
                raise ValueError(f"mesh.{axis} must be a positive size or -1 (the remaining devices); got {size}")
        if self.mesh.num_devices is not None:
            _positive("mesh.num_devices", self.mesh.num_devices)
        _positive("mesh.sequence", self.mesh.sequence)
        if d.seq_len % self.mesh.sequence:
            raise ValueError(f"data.seq_len={d.seq_len} is not divisible by mesh.sequence={self.mesh.sequence}: "
                             "context parallelism splits each sequence into equal shards; use a data.seq_len that "
                             f"is a multiple of {self.mesh.sequence}")
        if [getattr(self.mesh, a) for a in ("data", "fsdp", "tensor")].count(-1) > 1:
            raise ValueError("mesh: at most one of data, fsdp, tensor may be -1")
        if self.checkpoint.dir is not None:
            _non_negative("checkpoint.every", self.checkpoint.every)  # 0: only the final (or SIGTERM) checkpoint
            _positive("checkpoint.keep", self.checkpoint.keep)
        if self.checkpoint.step is not None:
            _non_negative("checkpoint.step", self.checkpoint.step)
            if self.checkpoint.dir is None or not self.checkpoint.resume or self.checkpoint.overwrite:
                raise ValueError(f"checkpoint.step={self.checkpoint.step} needs checkpoint.dir, checkpoint.resume=true "
                                 "and checkpoint.overwrite=false (it picks the step to resume from)")
        _positive("logging.every", self.logging.every)
        _non_negative("logging.eval_every", self.logging.eval_every)
        _check_sweep(self.sweep)


def resolve_run(cfg: TrainConfig, *, timestamp: float | None = None) -> TrainConfig:
    """`cfg` with its run directory fixed: "{name}" → `cfg.name`, or "{preset}-YYYYmmdd-HHMMSS" at `timestamp`
    (default now) made unique with "-2", "-3", … against existing directories; "{preset}" → model.preset;
    "{run}" in checkpoint.dir → the run directory (logging.dir, or runs/{name} when logging.dir is null, except
    that the default checkpoint.dir then means no checkpoints). Idempotent."""
    import time as _time

    preset = cfg.model.preset
    log_dir, ck_dir = cfg.logging.dir, cfg.checkpoint.dir
    name = cfg.name
    needs_name = any(d is not None and "{name}" in d for d in (log_dir, ck_dir)) or (
        log_dir is None and ck_dir is not None and "{run}" in ck_dir and ck_dir != DEFAULT_CHECKPOINT_DIR)
    if name is None and needs_name:
        stamp = _time.strftime("%Y%m%d-%H%M%S", _time.localtime(_time.time() if timestamp is None else timestamp))
        base = f"{preset}-{stamp}"
        name, k = base, 1
        while any(d is not None and pathlib.Path(d.replace("{preset}", preset).replace("{name}", name)).exists()
                  for d in (log_dir, f"{RUNS_ROOT}/{{name}}")):
            k += 1
            name = f"{base}-{k}"

    def fill(d):
        return None if d is None else d.replace("{preset}", preset).replace("{name}", name or "")

    log_dir = fill(log_dir)
    if ck_dir is not None and "{run}" in ck_dir:
        if log_dir is None and ck_dir == DEFAULT_CHECKPOINT_DIR:
            ck_dir = None
        else:
            ck_dir = ck_dir.replace("{run}", log_dir if log_dir is not None else f"{RUNS_ROOT}/{name}")
    ck_dir = fill(ck_dir)
    return dataclasses.replace(cfg, name=name,
                               logging=dataclasses.replace(cfg.logging, dir=log_dir),
                               checkpoint=dataclasses.replace(cfg.checkpoint, dir=ck_dir))


def load_run_config(run_dir: str | pathlib.Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config to resume the run in `run_dir` (a directory `jrt train` wrote, holding config.yaml): its saved
    config with logging.dir = `run_dir`, checkpoints re-rooted there when they lived inside the run directory,
    checkpoint.resume=true, then `overrides` (e.g. steps=2000)."""
    run = pathlib.Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"--resume {str(run)!r}: no such run directory")
    if not (run / "config.yaml").is_file():
        raise ValueError(f"--resume {str(run)!r}: not a jrt train run directory (no config.yaml)")
    saved = read_config_file(run / "config.yaml")
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {str(run)!r}: its config.yaml does not hold a mapping")
    tree = to_dict(TrainConfig())
    _merge(tree, saved, "")
    old_log, old_ck = tree["logging"].get("dir"), tree["checkpoint"].get("dir")
    if isinstance(old_ck, str) and isinstance(old_log, str):
        try:
            tree["checkpoint"]["dir"] = str(run / pathlib.Path(old_ck).relative_to(old_log))
        except ValueError:
            pass  # checkpoints kept elsewhere: their saved path stands
    tree["logging"]["dir"] = str(run)
    tree["checkpoint"]["resume"] = True
    tree["checkpoint"]["overwrite"] = False
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _build(TrainConfig, tree)


def write_run_config(cfg: TrainConfig, *, new_run: bool) -> None:
    """logging.dir/config.yaml (atomically): the resolved config of this run, what `--resume` reads. A new run in
    a directory holding another run's config.yaml first renames it config.previous-<time>.yaml."""
    if cfg.logging.dir is None:
        return
    d = pathlib.Path(cfg.logging.dir)
    if d.exists() and not d.is_dir():
        raise ValueError(f"logging.dir {str(d)!r} is a file, not a directory")
    d.mkdir(parents=True, exist_ok=True)
    if new_run and (d / "config.yaml").is_file():
        import time as _time

        (d / "config.yaml").replace(d / f"config.previous-{_time.strftime('%Y%m%d-%H%M%S')}.yaml")
    tmp = d / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(d / "config.yaml")


def resolved_mlm_prob(cfg: TrainConfig) -> float:
    """objective.mlm_prob, with None resolved: 0.15 on text data, 0.0 on synthetic recall tasks."""
    if cfg.objective.mlm_prob is not None:
        return cfg.objective.mlm_prob
    return 0.15 if cfg.data.kind in ("text", "tokens") else 0.0


def _check_sweep(sw: SweepConfig) -> None:
    import math

    for name, values in (("seeds", sw.seeds), ("lr", sw.lr)):
        if values is None:
            continue
        if not values:
            raise ValueError(f"sweep.{name} must list at least one value (or be null for the single value of the "
                             "run's config); got []")
        if len(set(values)) != len(values):
            raise ValueError(f"sweep.{name} has repeated values: {list(values)}")
    for value in sw.seeds or ():
        if value < 0:
            raise ValueError(f"sweep.seeds must be non-negative integers; got {value}")
    for value in sw.lr or ():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"sweep.lr must hold finite learning rates > 0; got {value}")
    _positive("sweep.steps_per_scan", sw.steps_per_scan)


def _positive(name, value):
    _finite(name, value, "> 0")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def _non_negative(name, value):
    _finite(name, value, ">= 0")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


def _finite(name, value, bound: str) -> None:
    """NaN and ±inf pass every `<` / `<=` test the checks above make; refuse them by name (e.g. optim.lr=.nan would
    otherwise compile the step and fail at step 2 with a non-finite loss)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")


# ---------------------------------------------------------------------------------------------- loading


def _coerce(path: str, annotation, value):
    """Check / convert a value loaded from YAML against a field's type annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, arg, value)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{path}: unexpected value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{path} must be one of {list(args)}; got {value!r}")
        return value
    if origin is tuple:
        if args and args[-1] is Ellipsis and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # one value where a list of them is expected: data.path=DIR means [DIR]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list; got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(f"{path}[{i}]", args[0], v) for i, v in enumerate(value))
        return tuple(value)
    if annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list; got {value!r}")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a mapping; got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a mapping of {annotation.__name__} fields; got {value!r}")
        return _build(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path} must be an integer; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path} must be a number; got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{path} must be a string; got {value!r}")
        return value
    return value


def _build(cls, mapping: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        where = prefix or "top level"
        raise ValueError(f"unknown config key(s) {[f'{prefix}.{u}'.lstrip('.') for u in unknown]} "
                         f"({where} accepts {sorted(names)})")
    kwargs = {}
    for key, value in mapping.items():
        path = f"{prefix}.{key}".lstrip(".")
        kwargs[key] = _coerce(path, hints[key], value)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """The config as plain YAML/JSON-able data."""
    def convert(x):
        if dataclasses.is_dataclass(x):
            return {f.name: convert(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [convert(v) for v in x]
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        return x
    return convert(cfg)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {} if node.get(key) is None else node[key]
            if not isinstance(node[key], dict):
                raise ValueError(f"override {dotted!r}: {key!r} is not a section")
        node = node[key]
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """"optim.lr=1e-3" → ("optim.lr", 0.001); the value is read as YAML (numbers, true/false, lists, null)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        if raw.strip().startswith(("{", "[")):  # meant as a YAML mapping / list: say what is wrong with it
            mark = getattr(exc, "problem_mark", None)
            where = f" at column {mark.column + 1} of the value" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ValueError(f"override {text!r}: the value is not valid YAML ({problem}{where})") from None
        value = raw
    if isinstance(value, str) and raw.strip():
        # What YAML still leaves a string but Python reads as a float (e.g. "1.e-3", ".5E2").
        try:
            value = float(raw) if any(c in raw for c in ".eE") else value
        except ValueError:
            pass
    return key, value


def read_config_file(path: str | pathlib.Path):
    """The data of a YAML or JSON (by suffix) config file; a one-line ValueError naming the file and the line and
    column of a syntax error."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} is a directory; give a YAML or JSON file" if p.is_dir()
                         else f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {str(p)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"config file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    if p.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {str(p)!r}: JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                             f"{exc.msg}") from None
    try:
        return _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ValueError(f"config file {str(p)!r}: YAML syntax error{where}: {detail}") from None


def load_config(path: str | pathlib.Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The built-in default, updated by a YAML/JSON file, then by `key=value` overrides (in that order)."""
    tree = to_dict(TrainConfig())
    if path is not None:
        loaded = read_config_file(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level; got "
                             f"{type(loaded).__name__}")
        _merge(tree, loaded, "")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _build(TrainConfig, tree)


def _merge(base: dict, update: dict, prefix: str) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "overrides":
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value
