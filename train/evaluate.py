"""`jrt eval-checkpoint`: rebuild a run from the config stored in its checkpoint and evaluate it."""

from __future__ import annotations

import dataclasses

from train.checkpoint import Checkpointer
from train.config import TrainConfig, _build, _merge, _set_dotted, parse_override, to_dict


def saved_config(directory: str, step: int | None = None) -> tuple[TrainConfig, int]:
    """The TrainConfig a checkpoint was written with, and its step (metadata only, no arrays read)."""
    ckpt = Checkpointer(directory, keep=1, async_save=False, create=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"no checkpoint found in {directory!r}")
    try:
        meta = ckpt.restore_meta(step)
    finally:
        ckpt.close()
    if not isinstance(meta, dict) or "config" not in meta:
        raise ValueError(f"checkpoint step {step} in {directory!r} has no saved config in its metadata")
    tree = to_dict(TrainConfig())
    _merge(tree, meta["config"], "")
    return _build(TrainConfig, tree), step


def evaluate_checkpoint(directory: str, *, step: int | None = None, overrides=()) -> dict:
    from train.trainer import Trainer

    cfg, step = saved_config(directory, step)
    tree = to_dict(cfg)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    cfg = _build(TrainConfig, tree)
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, dir=directory, resume=False),
                              logging=dataclasses.replace(cfg.logging, dir=None))
    trainer = Trainer(cfg)
    try:
        trainer.restore(step)
        return {"step": trainer.step, **trainer.evaluate()}
    finally:
        trainer.close()
