"""Temporary output named after its writer's process, and removal of what killed writers left behind.

An all-or-nothing writer puts its output under a temporary name and renames it into place when complete; on an
error it removes it. A writer killed outright (kill -9, power loss) cannot: its temporary output stays. Naming it
``.NAME.PID-TAG.tmp`` (`temp_name`) lets a later writer of NAME tell output whose process is gone — abandoned —
from output still being written by a live process, and delete only the former (`remove_stale_temps`).

Liveness is decided on this machine: writers on several machines sharing one file system are not told apart, and
a pid reused by an unrelated process keeps the temporary output until that process ends (the safe side).

Used by `jrt_jax.convert.atomic` (files inside an output folder) and `train.data.prepare` (a whole output
directory written next to its final place). Imports only the standard library, so any module can use it.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import time
import uuid

PathLike = str | os.PathLike

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})\.tmp$")
LEGACY_STALE_AFTER_S = 600.0


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (True when that cannot be told, e.g. another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def temp_name(name: str) -> str:
    """The temporary name of `name` while this process writes it: ``.NAME.PID-TAG.tmp``."""
    return f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def last_modified(path: pathlib.Path) -> float:
    """The newest modification time of `path` and, for a directory, of the entries directly inside it."""
    newest = path.stat().st_mtime
    if path.is_dir():
        for entry in os.scandir(path):
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                pass
    return newest


def remove_stale_temps(folder: PathLike, *, name: str | None = None, directories: bool = False,
                       legacy: re.Pattern | None = None,
                       legacy_after_s: float = LEGACY_STALE_AFTER_S) -> list[pathlib.Path]:
    """Delete the temporary outputs in `folder` whose writers are gone; returns what was deleted.

    Only entries named by `temp_name` count (for `name` alone when given) whose process no longer exists; with
    `legacy`, also entries matching that pattern (an older naming that records no pid, with a ``name`` group)
    once nothing in them changed for `legacy_after_s` seconds. Files are removed, or with `directories` whole
    directory trees; entries of the other kind are left alone.
    """
    folder = pathlib.Path(folder)
    removed: list[pathlib.Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        m = TEMP_NAME.match(entry.name)
        old = None if m is not None or legacy is None else legacy.match(entry.name)
        if (m or old) is None or (name is not None and (m or old)["name"] != name):
            continue
        if entry.is_symlink() or entry.is_dir() != directories:
            continue
        try:
            if m is not None:
                stale = not pid_alive(int(m["pid"]))
            else:
                stale = now - last_modified(entry) > legacy_after_s
            if not stale:
                continue
            if directories:
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        except OSError:  # gone meanwhile (another writer cleaned it), or not ours to delete
            continue
        if not entry.exists():
            removed.append(entry)
    return removed
