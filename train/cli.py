"""The trainer's `jrt` commands: train, sweep and eval-checkpoint (the `jrt` entry point is `jrt_jax.cli`).

    jrt train [--config FILE] [key=value ...]     train (built-in default: tiny JRT-RNN on set disjointness)
    jrt train --resume RUN_DIR [key=value ...]    continue a run from its newest verified checkpoint
    jrt sweep [--config FILE] [key=value ...]     train a grid of seeds x learning rates as one program
                                                   (sweep.seeds=[0,1,2] sweep.lr=[1e-3,3e-3]; --json)
    jrt eval-checkpoint --dir DIR [key=value ...]  evaluate the latest (or --step) checkpoint of a run

Errors (bad config, unusable checkpoint directory, a run directory another live run holds (`train.lock`), corrupt
checkpoints, a non-finite loss) print one line on stderr and exit non-zero: 2 for a bad config / setup, 1 for a
failure while training, 130 on Ctrl-C, 143 when SIGTERM stopped training (after saving a checkpoint;
`jrt train --resume RUN_DIR` continues). JRT_TRACEBACK=1 prints the traceback (`jrt_jax.cli.run_command`).
`main` (and ``python -m train.cli``) is `jrt_jax.cli.main`.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys

import yaml

from jrt_jax.cli import COMMANDS, ArgumentParser, Terminated, main, running  # noqa: F401 — main, COMMANDS: `jrt`


def _run_config(args):
    """The config of `jrt train` / `jrt sweep` from their shared options: --resume RUN_DIR (the run's own
    config.yaml, then the overrides) or --config FILE + overrides (+ checkpoint.overwrite=true for --overwrite).
    Raises ValueError for a bad config or for --resume combined with --config / --overwrite."""
    from train.config import load_config, load_run_config

    if args.resume is not None:
        if args.config is not None or args.overwrite:
            raise ValueError("--resume takes the run's own config.yaml and continues it; give changes as "
                             "key=value overrides, not --config / --overwrite")
        return load_run_config(args.resume, list(args.overrides))
    return load_config(args.config, list(args.overrides) + (["checkpoint.overwrite=true"] if args.overwrite else []))


def _run_to_end(runner) -> dict:
    """``runner.run()`` then ``runner.close()`` (a Trainer or a Sweep): errors from here on are failures while
    training (exit status 1). After a failed checkpoint write orbax's manager is not closed (closing its event loop
    under the still-running write threads makes each of them print a traceback): the run directories are released
    and the process ends right after the report."""
    from train.checkpoint import CheckpointError

    try:
        with running(exit_now_on=(CheckpointError,)):
            try:
                summary = runner.run()
            except CheckpointError:
                raise
            except BaseException:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    runner.close()
                raise
            runner.close()
    except BaseException as exc:
        if isinstance(exc.__cause__, CheckpointError):
            runner.release_run_dirs()  # the process may end without running atexit hooks
        raise
    return summary


def _refuse_a_new_run_over_checkpoints(cfg) -> None:
    """Refuse a new run whose checkpoint.dir already holds finished steps before the trainer is imported and the
    model built (the trainer's own check in `train.checkpoint.Checkpointer.open_run`, same message, comes seconds
    later). Finished steps are the step folders orbax renamed into place (all digits); anything this misses is still
    refused there."""
    from train.config import resolve_run
    from train.lock import occupied_message, read_owner

    c = cfg.checkpoint
    if c.resume or c.overwrite:
        return
    directory = resolve_run(cfg).checkpoint.dir
    path = None if directory is None else pathlib.Path(directory)
    if path is None or not path.is_dir():
        return
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir() and any(p.iterdir()))
    if steps:
        raise ValueError(occupied_message(path, steps, read_owner(path)))


def _print_config(cfg) -> None:
    """The resolved config as YAML, as config.yaml: what --config reads back."""
    from train.config import to_dict

    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")


def train(argv) -> int:
    """`jrt train`."""
    p = ArgumentParser(prog="jrt train", description="Train a model; options are key=value overrides of "
                       "train.config.TrainConfig (e.g. steps=200 optim.lr=1e-3 model.preset=based-micro).")
    p.add_argument("--config", help="YAML or JSON file with any subset of the config tree")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (a directory jrt train made: "
                   "its config.yaml, then the overrides, e.g. steps=2000) from its newest verified checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start a new run even if checkpoint.dir holds another "
                   "run's checkpoints (they are moved to checkpoint.dir/set-aside/); = checkpoint.overwrite=true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML, as --config reads it) and exit")
    p.add_argument("--print-shardings", action="store_true", help="print every parameter's sharding")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = _run_config(args)
    if args.print_config:
        _print_config(cfg)
        return 0
    _refuse_a_new_run_over_checkpoints(cfg)
    from train.trainer import Trainer, _stderr

    # Logs on stderr, results on stdout: `jrt train ... | jq` reads the summary alone.
    trainer = Trainer(cfg, log=_stderr)  # a bad setup raises here: exit status 2
    if args.print_shardings:
        _stderr(trainer.sharding_table)
    summary = _run_to_end(trainer)
    print(json.dumps(summary, indent=2))
    if summary.get("stopped") == "SIGTERM":
        run = trainer.cfg
        if run.checkpoint.dir is None:
            how = " (no checkpoint.dir: not saved)"
        elif run.logging.dir is not None:
            how = f" after saving a checkpoint; continue it: jrt train --resume {run.logging.dir}"
        else:
            how = f" after saving a checkpoint; continue it with checkpoint.dir={run.checkpoint.dir} checkpoint.resume=true"
        raise Terminated(f"stopped by SIGTERM at step {summary['step']}{how}")
    return 0


def sweep(argv) -> int:
    """`jrt sweep`."""
    p = ArgumentParser(prog="jrt sweep", description="Train every (seed, lr) of sweep.seeds x sweep.lr as "
                       "one jitted program (train.sweep); options are key=value overrides of "
                       "train.config.TrainConfig, as for jrt train (e.g. sweep.seeds=[0,1,2] "
                       "sweep.lr=[1e-3,3e-3] sweep.steps_per_scan=50 model.preset=recall-based "
                       "data.kind=mqar).")
    p.add_argument("--config", help="YAML or JSON file with any subset of the config tree")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the sweep in RUN_DIR from its newest verified "
                   "checkpoint (its config.yaml, then the overrides)")
    p.add_argument("--overwrite", action="store_true", help="start a new sweep even if checkpoint.dir holds another "
                   "run's checkpoints (moved to checkpoint.dir/set-aside/); = checkpoint.overwrite=true")
    p.add_argument("--json", action="store_true", help='print one JSON object {"runs": [...], "best": {...}} '
                   "(progress and logs go to stderr)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML, as --config reads it) and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = _run_config(args)
    if args.print_config:
        _print_config(cfg)
        return 0
    _refuse_a_new_run_over_checkpoints(cfg)
    from train.sweep import Sweep

    runner = Sweep(cfg)  # a bad setup raises here: exit status 2
    summary = _run_to_end(runner)
    if args.json:
        print(json.dumps({"runs": summary["runs"], "best": summary["best"]}))
    else:
        print(_sweep_table(summary))
    if summary.get("stopped") == "SIGTERM":
        how = (f"; continue it: jrt sweep --resume {summary['run_dir']}" if summary.get("run_dir")
               and runner.checkpointer is not None else "")
        raise Terminated(f"stopped by SIGTERM at step {summary['steps']}{how}")
    return 0


def _sweep_table(summary: dict) -> str:
    """The replicas as a text table, best first, then where the files are."""
    rows = sorted(summary["runs"], key=lambda r: (-(r.get("eval_accuracy") or -1.0), r.get("eval_loss") or 0.0))
    lines = [f"{'seed':>6} {'lr':>10} {'step':>7} {'loss':>9} {'eval_acc':>9} {'eval_loss':>10}"]
    for r in rows:
        num = lambda k, f: format(r[k], f) if r.get(k) is not None else "-"
        lines.append(f"{r['seed']:>6} {r['lr']:>10.3g} {r['step']:>7} {num('loss', '.4f'):>9} "
                     f"{num('eval_accuracy', '.4f'):>9} {num('eval_loss', '.4f'):>10}"
                     + (f"  diverged at step {r['diverged_at']}" if r.get("diverged_at") is not None else ""))
    best = summary.get("best")
    if best is not None:
        lines.append(f"best: seed {best['seed']} lr {best['lr']:g}: eval_accuracy {best['eval_accuracy']:.4f}")
    if summary.get("run_dir"):
        lines.append(f"results: {summary['run_dir']}/results.jsonl (curves: metrics.jsonl)")
    return "\n".join(lines)


def eval_checkpoint(argv) -> int:
    """`jrt eval-checkpoint`."""
    p = ArgumentParser(prog="jrt eval-checkpoint", description="Evaluate a training checkpoint with the "
                       "config it was saved with (overrides may change e.g. the mesh or eval size).")
    p.add_argument("--model", "--dir", dest="dir", required=True, metavar="RUN_DIR",
                   help="the run directory or its checkpoint.dir (--dir is the older name)")
    p.add_argument("--step", type=int, help="which step (default: the latest)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from train.evaluate import evaluate_checkpoint

    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines: stdout carries the result alone
        result = evaluate_checkpoint(args.dir, step=args.step, overrides=args.overrides)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
