"""Checkpoints with orbax `CheckpointManager`: async saves, keep-N, exact and verified resume, run ownership.

What is saved. Every array of the training state (parameters, optimizer state) as a flat {path: array} dict,
plus JSON metadata: the step, the data position (the next step's batch index: data are a pure function of the
step), the RNG seed, the config, the id of the run that wrote it, and for every array its shape, dtype and a
64-bit digest of its bits. The metadata carries a SHA-256 of itself (`meta_sha256`). Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a process killed mid-save leaves the
previous checkpoint as the latest complete one. Restoring reads the arrays straight into the shardings of the
current mesh, which may differ from the saving one.

Integrity. Orbax 0.12.8 does not verify array data: it checks a CRC-32C on its OCDBT b-tree nodes (and, for
zarr3, on shard indices) but not on the chunks, so a flipped byte inside the data restores silently (measured:
Adam ν up to 2.8e38). So every array gets a digest computed on device at save time (`array_digests`: one program for
the whole state): two uint32 lanes, each the sum over elements of a bijective
mix of (element bits, flat index) modulo 2**32. Integer sums are exact and order-free, so the digest of an array
is the same on any mesh, device count or process count (a checkpoint saved on 8 devices verifies on 1), and any
change of a single element changes both lanes. After a restore the digests of the restored arrays are computed
again and compared; the metadata's own SHA-256 guards the step, data position, config and digests. Saving
refuses non-finite values. A step whose metadata or arrays cannot be read, or do not match, is *corrupt*:
`restore` raises `CorruptCheckpoint` (one line: step, directory, what failed). `restore_newest_good` then tries
the next older step; the corrupt newer steps are moved (never deleted) to ``DIR/set-aside/corrupt-<time>/`` so
that the resumed run can write those step numbers again. Checkpoints written before digests existed restore
without verification (the log says so). A step whose arrays have other shapes than the model being built is a
config mismatch, not corruption: that is an error, with no fallback.

Which run owns a directory. The first run in a directory writes ``DIR/jrt_run.json``: a random run id, the
creation time, the config and a fingerprint of the config sections that determine the trajectory (seed, model,
data, objective, optim). Each checkpoint's metadata names the run id. `Checkpointer.open_run` decides at start:

* no finished checkpoint in DIR: a new run; the owner file is (re)written for it;
* checkpoints and ``checkpoint.resume=true``: this run continues them (a legacy directory without an owner
  file is adopted; a config whose fingerprint differs is reported in one line, naming the fields);
* checkpoints and ``resume=false``: refused with a one-line error naming the steps and the owning run, unless
  ``checkpoint.overwrite=true`` (``jrt train --overwrite``), which moves the old steps and owner file to
  ``DIR/set-aside/overwritten-<time>/`` and starts a new run. Nothing is deleted.

Keep-N pruning is done here, not by orbax (orbax prunes old steps even when the new save failed): after a save
is known to be finished — at the next save, `wait` or `close` — the oldest steps beyond `keep` are deleted.
In multi-process jobs every process runs the same decisions; only process 0 moves or writes files, between
barriers, and the verification verdict is agreed by all processes. Failures to write are `CheckpointError`s
with a one-line message; the directory is checked at start (a file, or not writable, is an error before any
training step).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp

from jrt_jax.cli import one_line

# The digest and the metadata's SHA-256 live with the reading side of this format, `jrt_jax.runs` (jrt_jax
# reads run directories without importing train), so that writer and readers cannot drift apart.
from jrt_jax.runs import META_FORMAT, OWNER_FILE, array_digests  # noqa: F401 — re-exported
from jrt_jax.runs import meta_sha256 as _meta_sha
from train.lock import describe_owner, occupied_message, read_owner

SET_ASIDE = "set-aside"
TRAJECTORY_SECTIONS = ("seed", "model", "data", "objective", "optim")


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read or used; the message is one line naming the directory / step."""


class CorruptCheckpoint(CheckpointError):
    """One step is unreadable or fails verification. Attributes: step, reason."""

    def __init__(self, directory, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"checkpoint step {step} in {str(directory)!r} cannot be restored: {reason}")


def flatten(tree) -> dict:
    """{"path/to/leaf": leaf} for any pytree (stable keys from `jax.tree_util.keystr`)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def unflatten(like, flat: dict):
    """The inverse of `flatten`, with the structure of `like`."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def fingerprint(config: dict) -> str:
    """SHA-256 (16 hex digits) of the config sections that determine a run's trajectory."""
    part = {k: config.get(k) for k in TRAJECTORY_SECTIONS}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted names of the trajectory fields whose values differ between two config dicts."""
    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                yield from walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            yield prefix.rstrip(".")
    out = []
    for section in TRAJECTORY_SECTIONS:
        out += list(walk(old.get(section), new.get(section), f"{section}."))
    return out


# -------------------------------------------------------------------------------------------- multi-host


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_agree(ok: bool) -> bool:
    """True when `ok` holds on every process (the same answer everywhere)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([1 if ok else 0], np.int32))
    return bool(np.all(flags))


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------------------ Checkpointer


class Checkpointer:
    """One run's checkpoints in `directory`.

    Args:
      directory: the checkpoint folder (created unless create=False).
      keep: how many of the newest steps to keep (older ones are deleted after a newer save is finished).
      async_save: write in a background thread (the arrays are copied to host memory before `save` returns).
      create: create the folder; with create=False (read-only use, e.g. evaluation) it must exist and nothing
        in it is ever changed.
      log: where one-line notes go (fallbacks, set-aside steps, adopted directories).
    """

    def __init__(self, directory: str, *, keep: int, async_save: bool, create: bool = True, log=None):
        path = pathlib.Path(directory).expanduser().absolute()
        self.path = path
        self.keep = keep
        self.read_only = not create
        self.log = log or (lambda *a, **k: None)
        self.run_id: str | None = None
        self._pending: int | None = None
        self._check_directory()
        options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=async_save,
                                               create=create, read_only=self.read_only,
                                               save_interval_steps=0 if self.read_only else 1)
        try:
            self.manager = ocp.CheckpointManager(path, options=options)
        except Exception as exc:
            raise CheckpointError(f"checkpoint directory {str(path)!r} cannot be opened: {one_line(exc)}") from exc

    def _check_directory(self) -> None:
        path = self.path
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.is_dir():
                what = "checkpoint.dir" if parent == path else f"checkpoint.dir {str(path)!r}: its parent"
                raise CheckpointError(f"{what} {str(parent)!r} is a file, not a directory")
            if parent.exists():
                break
        if self.read_only:
            if not path.is_dir():
                raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
            return
        probe = path / f".jrt-write-probe-{os.getpid()}-{jax.process_index()}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(f"checkpoint directory {str(path)!r} is not writable: {one_line(exc)}") from exc

    # ----------------------------------------------------------------------------------------- listing

    def all_steps(self) -> list[int]:
        """The finished steps, ascending."""
        return sorted(int(s) for s in self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _refresh(self) -> None:
        _sync(f"jrt_ckpt_refresh_{self.path}")
        self.manager.reload()

    # ------------------------------------------------------------------------------------------ owners

    def owner(self) -> dict | None:
        """The contents of the owner file, None when absent, {"unreadable": reason} when it cannot be read."""
        return read_owner(self.path)

    def _write_owner(self, config: dict) -> None:
        record = {"run_id": uuid.uuid4().hex[:12], "created": datetime.datetime.now().isoformat(timespec="seconds"),
                  "fingerprint": fingerprint(config), "config": config}
        if jax.process_count() > 1:  # one id for the whole job
            from jax.experimental import multihost_utils

            raw = np.frombuffer(record["run_id"].encode(), np.uint8)
            record["run_id"] = bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw))).decode()
        if jax.process_index() == 0:
            tmp = self.path / f".{OWNER_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, self.path / OWNER_FILE)
        _sync(f"jrt_ckpt_owner_{self.path}")
        self.run_id = record["run_id"]

    def open_run(self, config: dict, *, resume: bool, overwrite: bool = False) -> bool:
        """Claim the directory for a run with `config` (see the module docstring); True: restore from it.

        Raises CheckpointError when the directory holds checkpoints, `resume` is False and `overwrite` is not set.
        """
        if self.read_only:
            raise CheckpointError(f"checkpoint directory {str(self.path)!r} was opened read-only")
        steps = self.all_steps()
        owner = self.owner()
        _sync(f"jrt_ckpt_listed_{self.path}")
        if not steps:
            self._write_owner(config)
            return False
        who = describe_owner(owner)
        if overwrite:
            moved = self.set_aside(steps, "overwritten", extra=[OWNER_FILE])
            self.log(f"checkpoint.overwrite: moved steps {steps} of {who} to {moved}; starting a new run")
            self._write_owner(config)
            return False
        if not resume:
            raise CheckpointError(occupied_message(self.path, steps, owner, SET_ASIDE))
        if owner is None or "unreadable" in owner:
            self.log(f"checkpoint.dir {str(self.path)!r}: steps {steps} of {who}; adopting them for this run")
            self._write_owner(config)
            return True
        self.run_id = owner["run_id"]
        old = owner.get("config")
        if isinstance(old, dict) and owner.get("fingerprint") != fingerprint(config):
            fields = config_differences(old, config)
            if fields:
                shown = ", ".join(fields[:8]) + (f" (+{len(fields) - 8} more)" if len(fields) > 8 else "")
                self.log(f"note: resuming run {self.run_id} with a config that differs from its start in: {shown}")
        return True

    def set_aside(self, steps, reason: str, extra=()) -> pathlib.Path:
        """Move step folders (and `extra` top-level files) to DIR/set-aside/<reason>-<time>/; returns that folder."""
        dest = self.path / SET_ASIDE / f"{reason}-{_timestamp()}"
        if jax.process_index() == 0:
            n = 1
            while dest.exists():
                n += 1
                dest = dest.with_name(f"{reason}-{_timestamp()}-{n}")
            dest.mkdir(parents=True)
            for step in steps:
                os.replace(self.path / str(step), dest / str(step))
            for name in extra:
                if (self.path / name).exists():
                    os.replace(self.path / name, dest / name)
        self._refresh()
        return dest

    # -------------------------------------------------------------------------------------------- save

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> None:
        """Start writing checkpoint `step` (asynchronously when configured); see `wait`.

        Raises CheckpointError when the previous save failed, when the state holds non-finite values (nothing is
        written), or when orbax refuses the write.
        """
        if self.read_only:
            raise CheckpointError(f"checkpoint directory {str(self.path)!r} was opened read-only")
        self._finish_pending()
        flat = flatten(state)
        digests, nonfinite = array_digests(flat)
        if nonfinite:
            raise CheckpointError(f"refusing to save checkpoint step {step} to {str(self.path)!r}: non-finite values "
                                  f"in {len(nonfinite)} array(s), e.g. {nonfinite[0]}")
        meta = dict(meta, format=META_FORMAT, run_id=self.run_id,
                    arrays={k: {"shape": list(v.shape), "dtype": str(v.dtype), "digest": digests[k]}
                            for k, v in flat.items()})
        meta["meta_sha256"] = _meta_sha(meta)
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                                             meta=ocp.args.JsonSave(meta)), force=force)
        except Exception as exc:
            raise CheckpointError(f"checkpoint step {step} could not be written to {str(self.path)!r}: "
                                  f"{one_line(exc)}") from exc
        self._pending = step

    def _finish_pending(self) -> None:
        """Wait for the save in flight; check that it was finished; prune old steps."""
        step, self._pending = self._pending, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as exc:
            raise CheckpointError(f"checkpoint step {step} could not be written to {str(self.path)!r}: "
                                  f"{one_line(exc)}") from exc
        if not _all_agree((self.path / str(step)).is_dir()):
            raise CheckpointError(f"checkpoint step {step} was not written to {str(self.path)!r} (orbax did not "
                                  "finish it; see its log)")
        self._prune()

    def _prune(self) -> None:
        steps = self.all_steps()
        for step in steps[: max(0, len(steps) - self.keep)]:
            try:
                self.manager.delete(step)
            except Exception as exc:
                self.log(f"warning: old checkpoint step {step} in {str(self.path)!r} could not be deleted: "
                         f"{one_line(exc)}")

    def wait(self) -> None:
        """Block until the last save is on disk (raises CheckpointError if it failed)."""
        self._finish_pending()

    def close(self) -> None:
        """Finish the pending save (CheckpointError if it failed) and release orbax's threads."""
        error = None
        try:
            self._finish_pending()
        except CheckpointError as exc:
            error = exc
        try:
            self.manager.close()
        except Exception as exc:  # do not mask the error of the pending save
            if error is None:
                error = CheckpointError(f"checkpoint directory {str(self.path)!r} could not be closed: "
                                        f"{one_line(exc)}")
        if error is not None:
            raise error

    # ----------------------------------------------------------------------------------------- restore

    def restore_meta(self, step: int) -> dict:
        """The verified JSON metadata of checkpoint `step` (no arrays are read); CorruptCheckpoint if bad."""
        if step not in self.all_steps():
            raise CheckpointError(f"checkpoint step {step} does not exist in {str(self.path)!r} "
                                  f"(steps: {self.all_steps()})")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = restored.meta
        except Exception as exc:
            raise CorruptCheckpoint(self.path, step, f"metadata cannot be read: {one_line(exc)}") from exc
        if not isinstance(meta, dict):
            raise CorruptCheckpoint(self.path, step, "metadata is not a JSON object")
        meta = dict(meta)
        if "meta_sha256" in meta and meta["meta_sha256"] != _meta_sha(meta):
            raise CorruptCheckpoint(self.path, step, "metadata does not match its SHA-256 (meta/metadata was altered)")
        if meta.get("format", 1) >= META_FORMAT and "meta_sha256" not in meta:
            raise CorruptCheckpoint(self.path, step, "metadata lacks its SHA-256")
        for key in ("step", "data_position"):
            if not isinstance(meta.get(key), int):
                raise CorruptCheckpoint(self.path, step, f"metadata field {key!r} is missing or not an integer")
        return meta

    def restore(self, abstract_state, step: int | None = None):
        """(state with the shardings of `abstract_state`'s leaves (jax.ShapeDtypeStruct), metadata) of `step`.

        Verifies every array against its saved digest. Raises CorruptCheckpoint when the step is unreadable or
        fails verification, CheckpointError when it holds arrays of other shapes / dtypes than `abstract_state`.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint to restore in {str(self.path)!r}")
        meta = self.restore_meta(step)
        want = flatten(abstract_state)
        saved = meta.get("arrays")
        if saved is not None:
            self._check_layout(step, saved, want)
        error = None
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(want), meta=ocp.args.JsonRestore()))
            flat = dict(restored.state)
        except Exception as exc:  # orbax / tensorstore raise many types for missing / truncated / garbled files
            error = f"arrays cannot be read: {one_line(exc)}"
        if not _all_agree(error is None):
            raise CorruptCheckpoint(self.path, step, error or "arrays cannot be read on another process")
        if saved is None:
            self.log(f"note: checkpoint step {step} predates array digests; restored without verification")
        else:
            digests, nonfinite = array_digests(flat)
            bad = [k for k in want if digests[k] != saved[k].get("digest")]
            if bad:
                raise CorruptCheckpoint(self.path, step, f"{len(bad)} array(s) do not match their saved digest, e.g. "
                                        f"{bad[0]}")
            if nonfinite:
                raise CorruptCheckpoint(self.path, step, f"non-finite values in {nonfinite[0]}")
        return unflatten(abstract_state, flat), meta

    def _check_layout(self, step: int, saved: dict, want: dict) -> None:
        missing = sorted(set(want) - set(saved))
        extra = sorted(set(saved) - set(want))
        wrong = [k for k in want if k in saved and (tuple(saved[k].get("shape", ())) != tuple(want[k].shape)
                                                  or saved[k].get("dtype") != str(want[k].dtype))]
        if missing or extra or wrong:
            if wrong:
                k = wrong[0]
                detail = (f"{k} is {saved[k].get('dtype')}{list(saved[k].get('shape', []))} there but "
                          f"{want[k].dtype}{list(want[k].shape)} here")
            else:
                detail = f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}"
            raise CheckpointError(
                f"checkpoint step {step} in {str(self.path)!r} holds another model / optimizer layout than this config "
                f"({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} mis-shaped arrays; {detail}); "
                "use the config it was saved with (jrt eval-checkpoint reads it) or another checkpoint.dir")

    def restore_newest_good(self, abstract_state):
        """`restore` of the newest step that verifies; corrupt newer steps are reported and set aside.

        Raises CheckpointError when no step verifies (nothing is moved then) or on a layout mismatch.
        """
        failures = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(abstract_state, step)
            except CorruptCheckpoint as exc:
                self.log(f"warning: {exc}; trying the previous step")
                failures.append(exc)
                continue
            if failures and not self.read_only:
                moved = self.set_aside([e.step for e in failures], "corrupt")
                self.log(f"resuming from step {step}; corrupt step(s) {[e.step for e in failures]} moved to {moved}")
            return state, meta
        if not failures:
            raise CheckpointError(f"no checkpoint to restore in {str(self.path)!r}")
        reasons = "; ".join(f"step {e.step}: {e.reason}" for e in failures)
        raise CheckpointError(f"no restorable checkpoint in {str(self.path)!r} ({reasons}); nothing was changed. "
                              "Start a new run there with checkpoint.overwrite=true (the steps are moved to "
                              f"{SET_ASIDE}/) or use another checkpoint.dir")

    def set_aside_newer(self, step: int) -> None:
        """Move the steps after `step` aside (a run continued from an explicit older step would rewrite them)."""
        newer = [s for s in self.all_steps() if s > step]
        if newer:
            moved = self.set_aside(newer, f"after-step-{step}")
            self.log(f"checkpoint.step={step}: newer steps {newer} moved to {moved}")
