"""The run-directory format of ``jrt train``: its file names, integrity digests and read-only reader.

    with RunDir("runs/mqar/checkpoints") as rd:         # or find it: split_run_path("runs/mqar")
        step = rd.steps()[-1]
        meta = rd.meta(step)                             # verified against its own SHA-256
        config = rd.model_config(meta)                   # the JRTConfig / LlamaConfig the run trains
        params = rd.read_params(step, meta)              # {state key: host array}, each digest checked

A run's checkpoint directory (``runs/mqar/checkpoints``, or any ``checkpoint.dir``) is recognised by its owner
file ``jrt_run.json`` (`OWNER_FILE`); the run directory around it stands for it. Beside the owner file,
``config.json`` (`MODEL_CONFIG_FILE`) records the model the run trains (`jrt_jax.runs.model_config`). Its steps
are orbax checkpoints ``<step>/`` holding ``state`` (every array of the training state as a flat {key: array}
dict, keys written by `jax.tree_util.keystr`: ``['params']['layers'][0]['mlp']['fc1']['kernel'].value``) and
``meta`` (JSON: the step, the full training config under "config", every array's shape / dtype / digest, and a
SHA-256 of itself).

``train.checkpoint`` writes the format and `jrt_jax.convert` reads runs as checkpoints; both take the names and
the digests from here. This package imports nothing of either: it is the format, with no model loading, tokenizer
or training schema (directories written before ``config.json`` existed are read through
`legacy_model_config`). Errors are `RunError`s (ValueErrors) with one-line messages; `CorruptStep` for a step
that does not verify.
"""

from jrt_jax.runs.digests import array_digests, meta_sha256
from jrt_jax.runs.layout import (
    CHECKPOINTS_SUBDIR,
    EXPORT_FILE,
    META_FORMAT,
    MODEL_CONFIG_FILE,
    OWNER_FILE,
    PARAMS_PREFIX,
    RunError,
    is_run_dir,
    not_a_run,
    split_run_path,
)
from jrt_jax.runs.model_config import (
    legacy_model_config,
    model_config_dict,
    model_config_from_dict,
    read_model_config,
    saved_model_config,
    write_model_config,
)
from jrt_jax.runs.reader import ArrayInfo, CorruptStep, RunDir

__all__ = [
    "ArrayInfo",
    "CHECKPOINTS_SUBDIR",
    "CorruptStep",
    "EXPORT_FILE",
    "META_FORMAT",
    "MODEL_CONFIG_FILE",
    "OWNER_FILE",
    "PARAMS_PREFIX",
    "RunDir",
    "RunError",
    "array_digests",
    "is_run_dir",
    "legacy_model_config",
    "meta_sha256",
    "model_config_dict",
    "model_config_from_dict",
    "not_a_run",
    "read_model_config",
    "saved_model_config",
    "split_run_path",
    "write_model_config",
]
