"""Training run directories (``jrt train name=mqar`` → ``runs/mqar``) as checkpoints: read-only, verified.

    model = jrt_jax.from_pretrained("runs/mqar")                    # the newest step whose parameters verify
    model = jrt_jax.from_pretrained("runs/mqar/checkpoints/300")    # step 300 (a step folder)
    tok = jrt_jax.convert.load_tokenizer("runs/mqar")               # the tokenizer the run trained with
    opened = open_run("runs/mqar", step=300)    # model config, parameters, metadata, tokenizer record

The format — file names, digests, the read-only `RunDir`, the model config a run records — is `jrt_jax.runs`,
re-exported here (its errors are `jrt_jax.runs.RunError`s; the functions below raise ConversionErrors). Reading a
run as a checkpoint is `jrt_jax.convert.run_checkpoint.TrainingRun`; the functions here are the methods of the
loader's instance `jrt_jax.convert.loader.RUN`, which opens fine-tuned runs' base checkpoints with the loader.

Why in ``jrt_jax`` and not in ``train``: ``jrt_jax`` never imports ``train``, yet `jrt_jax.from_pretrained` and
``jrt generate --checkpoint`` accept a run directory, like every reader of checkpoints (from_pretrained,
load_config, load_tokenizer, ``jrt convert``, ``jrt generate``), with no extra flags.
"""

from __future__ import annotations

import os

from jrt_jax.convert.loader import RUN
from jrt_jax.convert.run_checkpoint import (
    CorruptStep,
    OpenedRun,
    RunSource,
    TokenizerRecord,
    TrainingRun,
    state_keys,
)
from jrt_jax.runs import (
    CHECKPOINTS_SUBDIR,
    EXPORT_FILE,
    META_FORMAT,
    MODEL_CONFIG_FILE,
    OWNER_FILE,
    PARAMS_PREFIX,
    RunDir,
    array_digests,
    is_run_dir,
    meta_sha256,
    not_a_run,
    split_run_path,
)

PathLike = str | os.PathLike

open_run = RUN.open_run
run_config = RUN.run_config
run_tokenizer = RUN.run_tokenizer
run_model_config = RUN.legacy_model_config
run_tokenizer_record = RUN.tokenizer_record

__all__ = [
    "CHECKPOINTS_SUBDIR",
    "CorruptStep",
    "EXPORT_FILE",
    "META_FORMAT",
    "MODEL_CONFIG_FILE",
    "OWNER_FILE",
    "OpenedRun",
    "PARAMS_PREFIX",
    "RUN",
    "RunDir",
    "RunSource",
    "TokenizerRecord",
    "TrainingRun",
    "array_digests",
    "is_run_dir",
    "meta_sha256",
    "not_a_run",
    "open_run",
    "run_config",
    "run_model_config",
    "run_tokenizer",
    "run_tokenizer_record",
    "split_run_path",
    "state_keys",
]
