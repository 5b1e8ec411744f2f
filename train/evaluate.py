"""`jrt eval-checkpoint`: rebuild a run from the config stored in its checkpoint and evaluate it.

The checkpoint folder is opened read-only: nothing in it is written, moved or deleted. The step evaluated is the
one asked for (or the latest); it must verify (`train.checkpoint`) — there is no silent fallback to an older
step here, the error names the steps to choose from instead.
"""

from __future__ import annotations

import dataclasses

from train.checkpoint import Checkpointer, CheckpointError, CorruptCheckpoint
from train.config import TrainConfig, _build, _merge, _set_dotted, parse_override, to_dict


def _hint(ckpt: Checkpointer, exc: CheckpointError) -> CheckpointError:
    others = [s for s in ckpt.all_steps() if s != getattr(exc, "step", None)]
    if isinstance(exc, CorruptCheckpoint) and others:
        return CheckpointError(f"{exc}; evaluate another step with --step (steps: {others})")
    return exc


def saved_config(directory: str, step: int | None = None) -> tuple[TrainConfig, int]:
    """The TrainConfig a checkpoint was written with, and its step (metadata only, no arrays read)."""
    ckpt = Checkpointer(directory, keep=1, async_save=False, create=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {directory!r}")
        try:
            meta = ckpt.restore_meta(step)
        except CheckpointError as exc:
            raise _hint(ckpt, exc) from None
    finally:
        ckpt.close()
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint step {step} in {directory!r} has no saved config in its metadata")
    tree = to_dict(TrainConfig())
    _merge(tree, meta["config"], "")
    return _build(TrainConfig, tree), step


def evaluate_checkpoint(directory: str, *, step: int | None = None, overrides=()) -> dict:
    """{"step": …, "eval_accuracy": …, "eval_loss": …} of checkpoint `step` (default: the latest)."""
    from jrt_jax.convert.run import split_run_path
    from train.trainer import Trainer

    found = split_run_path(directory)  # a run directory stands for its checkpoints/
    directory = str(found[0]) if found is not None else directory
    cfg, step = saved_config(directory, step)
    tree = to_dict(cfg)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    cfg = _build(TrainConfig, tree)
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, dir=None, step=None),
                              logging=dataclasses.replace(cfg.logging, dir=None))
    trainer = Trainer(cfg)
    ckpt = Checkpointer(directory, keep=1, async_save=False, create=False, log=trainer.log)
    try:
        try:
            trainer.restore(step, checkpointer=ckpt)
        except CheckpointError as exc:
            raise _hint(ckpt, exc) from None
        return {"step": trainer.step, **trainer.evaluate()}
    finally:
        ckpt.close()
        trainer.close()
