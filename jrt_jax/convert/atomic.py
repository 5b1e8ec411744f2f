"""All-or-nothing output: files are written under temporary names and renamed into place when complete.

`AtomicFolder` writes every file under a temporary name inside the destination folder and renames them into place
only when all of them are complete; on any error it removes what it wrote (and the folder, if it created it). A
process killed outright (kill -9, power loss) cannot clean up: its temporary files carry its pid
(``.NAME.PID-TAG.tmp``, `temp_name`), and the next `AtomicFolder` on that folder deletes those whose process is
gone (`remove_stale_temp_files`). A SIGTERM becomes an exception under `jrt_jax.cli.run_command`, so a terminated
conversion removes its files itself on the way out.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil

from jrt_jax.atomic import remove_stale_temps, temp_name
from jrt_jax.convert.errors import ConversionError

PathLike = str | os.PathLike

_LEGACY_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[0-9a-f]{8})\.tmp$")  # before pids were recorded


def remove_stale_temp_files(folder: PathLike) -> list[pathlib.Path]:
    """Delete the temporary files that dead writers left in `folder`; returns what was deleted.

    A file named by `temp_name` is stale when no process with its pid exists on this machine (two conversions
    into one folder from different machines are not supported). A file of the older ``.NAME.TAG.tmp`` form,
    which names no pid, is stale once unmodified for 10 minutes. The rule is `jrt_jax.atomic.remove_stale_temps`.
    """
    return remove_stale_temps(folder, legacy=_LEGACY_TMP_NAME)


class AtomicFolder:
    """Write several files into `folder` all-or-nothing.

        with AtomicFolder(dst) as out:
            write_safetensors(out.path("model.safetensors"), plans)
            out.path("config.json").write_text(...)

    Each `path(name)` is a temporary file inside `folder` (same file system, so the final `os.replace` is
    atomic). On success every temporary file is renamed to its name; on any exception (KeyboardInterrupt and
    SystemExit included) all of them are deleted, and the folder too when this created it. Existing files are
    replaced only on success, and only with ``overwrite=True``; an existing non-empty folder is otherwise
    refused. Temporary files left by killed earlier writers are deleted first (`remove_stale_temp_files`) and
    do not count as content.
    """

    def __init__(self, folder: PathLike, *, overwrite: bool = False):
        self.folder = pathlib.Path(folder)
        self.overwrite = overwrite
        self._files: list[tuple[pathlib.Path, pathlib.Path]] = []
        self._created = False

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise ConversionError(f"{self.folder}: exists and is not a folder")
        remove_stale_temp_files(self.folder)
        if self.folder.is_dir() and any(self.folder.iterdir()) and not self.overwrite:
            raise ConversionError(f"{self.folder}: folder exists and is not empty (pass overwrite=True / "
                                  "--overwrite to replace the files it writes)")
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created = True
        return self

    def path(self, name: str) -> pathlib.Path:
        final = self.folder / name
        tmp = self.folder / temp_name(name)
        self._files.append((tmp, final))
        return tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for tmp, final in self._files:
                if not tmp.exists():
                    raise ConversionError(f"internal error: {final.name} was planned but never written")
            for tmp, final in self._files:
                os.replace(tmp, final)
            return False
        for tmp, _ in self._files:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if self._created:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False
