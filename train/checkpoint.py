"""Checkpoints with orbax `CheckpointManager`: async saves, keep-N, exact resume, restore onto any mesh.

What is saved: every array of the training state (parameters, optimizer state) as a flat {path: array} dict,
plus JSON metadata — the step, the data position (the next step's batch index: data are a pure function of the
step), the RNG seed and the config. Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a process killed mid-save leaves the previous checkpoint as the latest restorable one.
Restoring reads the arrays straight into the shardings of the current mesh, which may differ from the saving one.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


def flatten(tree) -> dict:
    """{"path/to/leaf": leaf} for any pytree (stable keys from `jax.tree_util.keystr`)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def unflatten(like, flat: dict):
    """The inverse of `flatten`, with the structure of `like`."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, async_save: bool, create: bool = True):
        path = pathlib.Path(directory).absolute()
        if not create and not path.is_dir():
            raise ValueError(f"checkpoint directory {str(path)!r} does not exist")
        self.path = path
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=create)
        self.manager = ocp.CheckpointManager(path, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(flatten(state)),
                                                         meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state, step: int | None = None):
        """(state with the shardings of `abstract_state`'s leaves (jax.ShapeDtypeStruct), metadata dict)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint to restore in {str(self.path)!r}")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(flatten(abstract_state)), meta=ocp.args.JsonRestore()))
        except Exception as exc:  # orbax raises many types for missing / truncated files
            raise ValueError(f"checkpoint step {step} in {str(self.path)!r} cannot be restored: "
                             f"{type(exc).__name__}: {exc}") from exc
        return unflatten(abstract_state, restored.state), dict(restored.meta)

    def restore_meta(self, step: int) -> dict:
        """The JSON metadata of checkpoint `step` alone (no arrays are read)."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as exc:
            raise ValueError(f"checkpoint step {step} in {str(self.path)!r}: metadata cannot be read: "
                             f"{type(exc).__name__}: {exc}") from exc
        return dict(restored.meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
