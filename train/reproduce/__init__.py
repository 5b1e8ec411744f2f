"""`jrt reproduce NAME`: the papers' claims re-measured at laptop scale, as tables "claim | paper | ours" + plots.

Each study is a module of this package with `NAME`, `TITLE`, a module docstring stating the claim, the setup and
what `--quick` shrinks, and `run(ctx) -> common.Outcome`; `PARALLEL = True` when it trains through
`common.run_jobs` (otherwise the CLI runs it with `--jobs 1`). `STUDIES` maps the command-line name to the module;
`train.reproduce.cli` runs one and writes DIR/NAME/{results.json, report.md, *.png}.

Imports go train → jrt_jax: the studies train through `train.trainer.Trainer` and evaluate with `jrt_jax.evals`.
"""

from __future__ import annotations

import importlib

#: command-line name → module (imported only when that study runs: the CLI's --help stays fast)
STUDIES: dict[str, str] = {
    "set-disjointness": "train.reproduce.set_disjointness",
    "mqar": "train.reproduce.mqar",
    "mqar-depth": "train.reproduce.mqar_depth",
    "jrt-prompt": "train.reproduce.jrt_prompt",
    "prefill-speed": "train.reproduce.prefill_speed",
    "pi-zero-shot": "train.reproduce.pi_zero_shot",
    "pi-finetune": "train.reproduce.pi_finetune",
}


def load(name: str):
    """The study module for `name`; ValueError listing the known names otherwise."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose from {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name])


__all__ = ["STUDIES", "load"]
