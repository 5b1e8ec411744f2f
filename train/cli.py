"""The `jrt` command.

    jrt train [--config FILE] [key=value ...]     train (built-in default: tiny JRT-RNN on set disjointness)
    jrt eval-checkpoint --dir DIR [key=value ...]  evaluate the latest (or --step) checkpoint of a run
    jrt generate ...                               text generation (jrt_jax.generate.cli)
    jrt convert SRC DST ...                        checkpoint conversion (jrt_jax.convert.cli)

The dispatcher lives in `train` because imports go train → jrt_jax, never the other way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys


def _train(argv) -> int:
    p = argparse.ArgumentParser(prog="jrt train", description="Train a model; options are key=value overrides of "
                                "train.config.TrainConfig (e.g. steps=200 optim.lr=1e-3 model.preset=based-micro).")
    p.add_argument("--config", help="YAML or JSON file with any subset of the config tree")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--print-shardings", action="store_true", help="print every parameter's sharding")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from train.config import load_config, to_dict

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as exc:
        p.error(str(exc))
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from train.trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except ValueError as exc:
        print(f"jrt train: error: {exc}", file=sys.stderr)
        return 2
    if args.print_shardings:
        print(trainer.sharding_table)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2))
    return 0


def _eval_checkpoint(argv) -> int:
    p = argparse.ArgumentParser(prog="jrt eval-checkpoint", description="Evaluate a training checkpoint with the "
                                "config it was saved with (overrides may change e.g. the mesh or eval size).")
    p.add_argument("--dir", required=True, help="the run's checkpoint.dir")
    p.add_argument("--step", type=int, help="which step (default: the latest)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from train.evaluate import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(args.dir, step=args.step, overrides=args.overrides)
    except ValueError as exc:
        print(f"jrt eval-checkpoint: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def _delegate(module: str):
    def run(argv) -> int:
        return importlib.import_module(module).main(argv) or 0

    return run


COMMANDS = {
    "train": _train,
    "eval-checkpoint": _eval_checkpoint,
    "generate": _delegate("jrt_jax.generate.cli"),
    "convert": _delegate("jrt_jax.convert.cli"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"jrt: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
