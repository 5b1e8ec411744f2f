"""Run-directory locks: at most one live `jrt train` / `jrt sweep` writes a run directory.

Two runs started together on the same name (or logging.dir / checkpoint.dir) would otherwise share one directory:
both die at their first save, metrics.jsonl interleaves, config.yaml belongs to one run and config.previous-* to
the other. So a run claims its directories before it writes anything to them (`claim_run`): ``DIR/.lock``, created
atomically (O_CREAT | O_EXCL), holding the owner's pid, host name and start time. It is removed when the run ends
(`RunLocks.release`: normal end, error, SIGTERM; an `atexit` hook covers objects never closed).

A second run on a locked directory is refused with a one-line `RunDirLocked` naming the owner. A lock whose owner is
gone is *stale* and is taken over with a one-line warning, so a run killed with kill -9 resumes as before: the owner
is gone when its pid does not exist on this host, is a zombie, or belongs to a process that started after the lock
was written (a reused pid). A lock written on another host cannot be checked from here: it is refused, and the
message says which file to delete if that run is gone.

Which directories: logging.dir (the run directory) and checkpoint.dir when it lies outside logging.dir (with
logging.dir=null, checkpoint.dir alone). In a multi-process job (jax.distributed) process 0 claims them for the job
and every process learns the outcome. In one process the same directory may be claimed again (a second `Trainer` on
a directory the process already holds, as tests and the restore workers do); it is released with the last holder.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import pathlib
import socket
import threading
import time
import uuid

LOCK_FILE = ".lock"

_HELD: dict[str, list] = {}  # resolved directory -> [lock record (dict), holders in this process]
_HELD_LOCK = threading.Lock()


class RunDirLocked(ValueError):
    """A run directory is in use by another live run (or by one whose liveness cannot be checked from here); the
    message is one line naming the directory, the lock file and its owner."""


def _hostname() -> str:
    return socket.gethostname()


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _process_state(pid: int) -> tuple[bool, float | None]:
    """(alive, start time as a UNIX time or None when unknown) of process `pid` on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False, None
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True, None  # not Linux (or it ended just now): existence is all we know
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):  # a zombie: dead, only not yet reaped by its parent
        return False, None
    boot = _boot_time()
    if boot is None:
        return True, None
    return True, boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _owner_alive(record: dict) -> bool | None:
    """True / False when the owner of a lock record is / is not running on this host; None when the record was
    written on another host (or names no pid), so nothing can be said from here."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or host != _hostname():
        return None
    alive, started = _process_state(pid)
    if not alive:
        return False
    written = record.get("time")
    # btime has one-second resolution: a process that started more than 2 s after the lock was written is another
    # process that got the same pid.
    if started is not None and isinstance(written, (int, float)) and started > written + 2.0:
        return False
    return True


def _describe(record: dict) -> str:
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (started {record.get('started', '?')})"


def _read(path: pathlib.Path) -> dict | None:
    """The lock record at `path`; None when the file is gone. A file being written (empty or partial JSON) is
    read again for up to a second; after that {"unreadable": reason}."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return {"unreadable": f"{type(exc).__name__}: {exc}"}
        try:
            record = json.loads(text)
            if isinstance(record, dict):
                return record
            reason = "not a JSON object"
        except ValueError:
            reason = "empty" if not text.strip() else "not JSON"
        if time.monotonic() > deadline:
            return {"unreadable": reason}
        time.sleep(0.05)


class RunLocks:
    """The directories one run holds (`claim_run`); `release` is idempotent."""

    def __init__(self):
        self.paths: list[pathlib.Path] = []  # resolved directories, in claim order
        self._created: dict[pathlib.Path, bool] = {}

    def acquire(self, directory, what: str, warn) -> None:
        """Claim `directory` (created if missing) for this process; RunDirLocked if another live run holds it."""
        d = pathlib.Path(directory).expanduser().absolute()
        existed = d.exists()
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # a file in the way or no permission: the checks that follow report it in their own words
        if not d.is_dir():
            return
        key = str(d.resolve())
        with _HELD_LOCK:
            if key in _HELD:  # this process holds it already (another Trainer on the same directory)
                _HELD[key][1] += 1
                self.paths.append(pathlib.Path(key))
                self._created[pathlib.Path(key)] = False
                return
        lock = pathlib.Path(key) / LOCK_FILE
        record = {"pid": os.getpid(), "host": _hostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds"), "time": time.time(),
                  "token": uuid.uuid4().hex, "command": " ".join(_command())}
        for _ in range(5):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _read(lock)
                if owner is None:
                    continue  # released meanwhile: try again
                if "unreadable" in owner:
                    raise RunDirLocked(f"{what} {str(d)!r} is locked by {str(lock)!r}, which cannot be read "
                                       f"({owner['unreadable']}); if no run uses that directory, delete the file")
                alive = _owner_alive(owner)
                if alive is None:
                    raise RunDirLocked(f"{what} {str(d)!r} is in use by another run: {_describe(owner)} holds "
                                       f"{str(lock)!r} (this is host {_hostname()}: its liveness cannot be checked "
                                       "from here); if that run is gone, delete the file")
                if alive:
                    raise RunDirLocked(f"{what} {str(d)!r} is in use by another run: {_describe(owner)}; two runs "
                                       "cannot share a directory: wait for it to end, stop it, or use another name= "
                                       "/ logging.dir / checkpoint.dir")
                if _take_over(lock, owner):
                    warn(f"warning: {what} {str(d)!r}: taking over the lock of {_describe(owner)}, which is no "
                         "longer running")
                continue
            except OSError:
                return  # not writable: the checks that follow report it
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with _HELD_LOCK:
                _HELD[key] = [record, 1]
            self.paths.append(pathlib.Path(key))
            self._created[pathlib.Path(key)] = not existed
            return
        raise RunDirLocked(f"{what} {str(d)!r}: could not take {str(lock)!r} (other runs keep claiming it)")

    def release(self) -> None:
        """Give the directories back: the lock file is removed when the last holder in this process releases it
        (and only if it is still this process's), and a directory the claim created is removed again if empty."""
        paths, self.paths = self.paths, []
        for path in reversed(paths):
            _release(str(path))
            if self._created.pop(path, False):
                try:
                    path.rmdir()  # only when empty: a run that failed before writing anything leaves nothing
                except OSError:
                    pass


def _take_over(lock: pathlib.Path, stale: dict) -> bool:
    """Remove a stale lock (`stale`: its record as read). The file is renamed first and removed only if it still
    holds that record, so two runs taking over the same stale lock at once cannot remove each other's new lock.
    True when this call removed it."""
    aside = lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    if _read(aside) == stale:
        aside.unlink(missing_ok=True)
        return True
    try:  # someone else's fresh lock: put it back
        os.link(aside, lock)
    except OSError:
        pass
    aside.unlink(missing_ok=True)
    return False


def _release(key: str) -> None:
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
    lock = pathlib.Path(key) / LOCK_FILE
    current = _read(lock)
    if current is not None and current.get("token") == held[0]["token"]:
        lock.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    with _HELD_LOCK:
        keys = list(_HELD)
    for key in keys:
        with _HELD_LOCK:
            if key in _HELD:
                _HELD[key][1] = 1
        _release(key)


def _command() -> list[str]:
    import sys

    argv = list(sys.argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py", "jrt")):
        argv[0] = "jrt"
    return argv[:3]


def run_directories(cfg) -> list[tuple[str, str]]:
    """[(directory, what)] a resolved config writes: logging.dir, and checkpoint.dir when it is not inside it."""
    out = []
    log_dir, ck_dir = cfg.logging.dir, cfg.checkpoint.dir
    if log_dir is not None:
        out.append((log_dir, "run directory"))
    if ck_dir is not None:
        inside = False
        if log_dir is not None:
            try:
                pathlib.Path(ck_dir).expanduser().absolute().relative_to(pathlib.Path(log_dir).expanduser().absolute())
                inside = True
            except ValueError:
                pass
        if not inside:
            out.append((ck_dir, "checkpoint.dir"))
    return out


def claim(cfg, *, warn) -> RunLocks:
    """Claim the directories of a resolved config in this process (see the module docstring)."""
    locks = RunLocks()
    try:
        for directory, what in run_directories(cfg):
            locks.acquire(directory, what, warn)
    except BaseException:
        locks.release()
        raise
    return locks


def claim_run(cfg, *, warn, timestamp: float | None = None):
    """(resolved config, RunLocks): `train.config.resolve_run(cfg)` with its directories claimed before anything
    is written to them. In a multi-process job process 0 claims them and every process raises if that failed.
    An unnamed run (a timestamped directory) whose directory another run claimed in the same second moves on to the
    next free name ("-2", "-3", …) instead of failing. Raises RunDirLocked."""
    import jax

    from train.checkpoint import _all_agree
    from train.config import resolve_run

    multi = jax.process_count() > 1
    for attempt in range(5):
        resolved = resolve_run(cfg, timestamp=timestamp)
        error, locks = None, RunLocks()
        if jax.process_index() == 0:
            try:
                locks = claim(resolved, warn=warn)
            except RunDirLocked as exc:
                error = exc
        if multi and not _all_agree(error is None):
            locks.release()
            raise error or RunDirLocked("process 0 of this job could not claim the run's directories (its error "
                                        "says why)")
        if error is None:
            return resolved, locks
        if cfg.name is not None or multi or attempt == 4 or resolved.name is None:
            raise error
        timestamp = None  # unnamed: resolve again; the directory another run just claimed now exists
    raise AssertionError("unreachable")


def read_owner(directory) -> dict | None:
    """A checkpoint directory's owner record (``jrt_run.json``): None when absent, {"unreadable": reason} when it
    cannot be read. Needs no orbax or model, so the CLI can refuse an occupied directory before building one."""
    from jrt_jax.errors import one_line
    from jrt_jax.runs.layout import OWNER_FILE

    f = pathlib.Path(directory) / OWNER_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
            raise ValueError("not a jrt run record")
        return data
    except (OSError, ValueError) as exc:
        return {"unreadable": one_line(exc)}


def describe_owner(owner: dict | None) -> str:
    """How messages name the run that owns a directory (`read_owner`'s record)."""
    if owner is None:
        return "an unrecorded run"
    if "unreadable" in owner:
        return "a run with an unreadable jrt_run.json"
    return f"run {owner['run_id']} (started {owner.get('created', '?')})"


def occupied_message(directory, steps, owner: dict | None, set_aside: str = "set-aside") -> str:
    """The refusal of a new run over a directory holding finished checkpoint `steps`: one message for the early
    check of `jrt train` / `jrt sweep` and the trainer's own (`train.checkpoint.Checkpointer.open_run`)."""
    return (f"checkpoint.dir {str(directory)!r} already holds checkpoints (steps {list(steps)}) of "
            f"{describe_owner(owner)}; refusing to start a new run over them (checkpoint.resume=false). Continue that "
            "run with jrt train --resume RUN_DIR or checkpoint.resume=true, start anew with checkpoint.overwrite=true "
            f"/ jrt train --overwrite (its steps are moved to {set_aside}/, not deleted), or use another "
            "checkpoint.dir")
