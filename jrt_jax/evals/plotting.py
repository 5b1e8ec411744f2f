"""The one place the evaluations (and the reproduction studies) get matplotlib: pyplot on the Agg backend.

matplotlib is an optional extra (`jrt-jax[bench]`); asking for a plot without it is one ValueError, raised by
`check_plot` before any model runs, not after minutes of scoring.
"""

from __future__ import annotations

import importlib.util
import pathlib

MISSING = "--plot needs matplotlib: pip install 'jrt-jax[bench]'"


def check_plot(path) -> None:
    """Raise the ValueError a plot to `path` would raise (no matplotlib, no such folder), before any work."""
    parent = pathlib.Path(path).expanduser().parent
    if not parent.is_dir():
        raise ValueError(f"--plot {str(path)!r}: folder {str(parent)!r} does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError(MISSING)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display); ValueError without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(MISSING) from None
    return plt
