"""The `jrt` command.

    jrt train [--config FILE] [key=value ...]     train (built-in default: tiny JRT-RNN on set disjointness)
    jrt train --resume RUN_DIR [key=value ...]    continue a run from its newest verified checkpoint
    jrt sweep [--config FILE] [key=value ...]     train a grid of seeds x learning rates as one program
                                                   (sweep.seeds=[0,1,2] sweep.lr=[1e-3,3e-3]; --json)
    jrt eval-checkpoint --dir DIR [key=value ...]  evaluate the latest (or --step) checkpoint of a run
    jrt export RUN_DIR DST [--step N] [--format F] a run's checkpoint → a from_pretrained / transformers folder
    jrt prepare-data --output DIR ... FILE ...     tokenize text into shards for data.kind=tokens
    jrt generate ...                               text generation (jrt_jax.generate.cli)
    jrt eval perplexity|... --model M ...          evaluations (jrt_jax.evals.cli)
    jrt convert SRC DST ...                        checkpoint conversion (jrt_jax.convert.cli)

The dispatcher lives in `train` because imports go train → jrt_jax, never the other way.

Errors (bad config, unusable checkpoint directory, a run directory another live run holds (`train.lock`), corrupt
checkpoints, a non-finite loss) print one line on stderr and exit non-zero: 2 for a bad config / setup, 1 for a
failure while training, 130 on Ctrl-C, 143 when SIGTERM stopped training (after saving a checkpoint;
`jrt train --resume RUN_DIR` continues). JRT_TRACEBACK=1 prints the traceback of unexpected errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import traceback

import yaml


def _fail(prog: str, exc: BaseException, code: int = 2) -> int:
    """Print one line on stderr (the first line of the message) and return `code`."""
    text = str(exc).strip().splitlines()
    print(f"{prog}: error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
    return code


def _unexpected(prog: str, exc: BaseException) -> int:
    """A bug or an unforeseen failure: one line, unless JRT_TRACEBACK=1 asks for the traceback."""
    if os.environ.get("JRT_TRACEBACK"):
        traceback.print_exception(exc)
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else ""
    print(f"{prog}: error: unexpected {type(exc).__name__}: {first} (set JRT_TRACEBACK=1 for the traceback)",
          file=sys.stderr)
    return 1


def _quiet_orbax() -> None:
    """Orbax logs every failed background write with its full traceback (~2000 lines), and a restore of a
    corrupt step leaves asyncio "exception was never retrieved" reports; we report each failure in one line."""
    import logging

    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


class _DropEchoes:
    """sys.stderr without the "Event loop is closed" tracebacks of a failed orbax write.

    After a background write fails, orbax closes its event loop while tensorstore still completes the other writes;
    each completion raises "RuntimeError: Event loop is closed" in a tensorstore thread, which prints it with
    PyErr_Print straight to sys.stderr (sys.excepthook is not consulted). They are echoes of the one failure we
    report in one line. Each thread's traceback is held from "Traceback (most recent call last):" to its final
    exception line and dropped only if that line is exactly the echo; everything else passes through unchanged.
    Why not a logging filter: these tracebacks never pass through logging.
    """

    _ECHO = "RuntimeError: Event loop is closed"
    _ECHO_LINES = ("Traceback (most recent call last):", "    self._check_closed()",
                   "    raise RuntimeError('Event loop is closed')", _ECHO)

    def __init__(self, stream):
        import threading

        self._stream = stream
        self._lock = threading.Lock()
        self._held: dict[int, list[str]] = {}  # thread id -> lines of an open traceback
        self._partial: dict[int, str] = {}  # thread id -> text written since its last newline

    def write(self, text: str) -> int:
        import threading

        key = threading.get_ident()
        with self._lock:
            *lines, rest = (self._partial.pop(key, "") + text).split("\n")
            if rest:
                self._partial[key] = rest
            out = []
            for line in lines:
                held = self._held.get(key)
                if held is None:
                    if line == "Traceback (most recent call last):":
                        self._held[key] = [line]
                    else:
                        out.append(line)
                    continue
                held.append(line)
                if line and not line[0].isspace() and not line.startswith(("Traceback", "During handling",
                                                                           "The above exception")):
                    del self._held[key]  # the final line of the traceback
                    if line != self._ECHO:
                        out.extend(held)
            if out:
                self._stream.write("".join(line + "\n" for line in out))
        return len(text)

    def flush(self) -> None:
        """Flush what is complete. Another thread's open traceback stays held: flush is called from anywhere
        (logging flushes after each record), and releasing it half-way would defeat the filter."""
        import threading

        key = threading.get_ident()
        with self._lock:
            if key not in self._held and key in self._partial:
                self._stream.write(self._partial.pop(key))
            self._stream.flush()

    def drain(self) -> None:
        """Write everything held, finished or not (the command is over: nothing is lost), except the beginnings
        of echoes (a thread cut off mid-traceback by the exit)."""
        with self._lock:
            for key in list(self._held):
                held = self._held.pop(key)
                if not all(line in self._ECHO_LINES or "asyncio/base_events.py" in line for line in held):
                    self._stream.write("".join(line + "\n" for line in held))
            for key in list(self._partial):
                self._stream.write(self._partial.pop(key))
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _exit_now(code: int) -> int:
    """After a failed checkpoint write, exit without waiting for orbax's background threads: they wait for signals
    that never come (orbax 0.12.8), which kept the process alive for minutes after the error was reported.
    Returns `code` when no such thread is alive."""
    import threading

    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        sys.stdout.flush()
        getattr(sys.stderr, "drain", sys.stderr.flush)()
        os._exit(code)
    return code


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


def _train(argv) -> int:
    p = argparse.ArgumentParser(prog="jrt train", description="Train a model; options are key=value overrides of "
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
    from train.config import to_dict

    prog = "jrt train"
    try:
        cfg = _run_config(args)
    except ValueError as exc:
        return _fail(prog, exc)
    if args.print_config:  # YAML, as config.yaml: what --config reads back
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    _quiet_orbax()
    from train.checkpoint import CheckpointError
    from train.trainer import Trainer

    trainer = None
    try:
        trainer = Trainer(cfg)
        if args.print_shardings:
            print(trainer.sharding_table)
        try:
            summary = trainer.run()
        except CheckpointError:
            raise  # orbax's manager is not closed after a failed write: closing its event loop under the
            # still-running write threads makes each of them print a traceback; _exit_now ends the process.
        except BaseException:
            try:
                trainer.close()
            except Exception:  # the first error is the one to report
                pass
            raise
        trainer.close()
    except CheckpointError as exc:
        code = _fail(prog, exc, 1 if trainer is not None else 2)
        if trainer is not None:
            trainer.release_run_dirs()  # _exit_now may end the process without running atexit hooks
        return _exit_now(code) if trainer is not None else code
    except (ValueError, OSError) as exc:
        return _fail(prog, exc, 1 if trainer is not None else 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _unexpected(prog, exc)
    print(json.dumps(summary, indent=2))
    if summary.get("stopped") == "SIGTERM":
        run = trainer.cfg
        if run.checkpoint.dir is None:
            how = " (no checkpoint.dir: not saved)"
        elif run.logging.dir is not None:
            how = f" after saving a checkpoint; continue it: jrt train --resume {run.logging.dir}"
        else:
            how = f" after saving a checkpoint; continue it with checkpoint.dir={run.checkpoint.dir} checkpoint.resume=true"
        print(f"{prog}: stopped by SIGTERM at step {summary['step']}{how}", file=sys.stderr)
        return 128 + signal.SIGTERM
    return 0


def _sweep(argv) -> int:
    p = argparse.ArgumentParser(prog="jrt sweep", description="Train every (seed, lr) of sweep.seeds x sweep.lr as "
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
    from train.config import to_dict

    prog = "jrt sweep"
    try:
        cfg = _run_config(args)
    except ValueError as exc:
        return _fail(prog, exc)
    if args.print_config:  # YAML, as config.yaml: what --config reads back
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    _quiet_orbax()
    from train.checkpoint import CheckpointError
    from train.sweep import Sweep

    runner = None
    try:
        runner = Sweep(cfg)
        try:
            summary = runner.run()
        except CheckpointError:
            raise  # as in _train: _exit_now ends the process without closing orbax under its write threads
        except BaseException:
            try:
                runner.close()
            except Exception:
                pass
            raise
        runner.close()
    except CheckpointError as exc:
        code = _fail(prog, exc, 1 if runner is not None else 2)
        if runner is not None:
            runner.release_run_dirs()  # _exit_now may end the process without running atexit hooks
        return _exit_now(code) if runner is not None else code
    except (ValueError, OSError) as exc:
        return _fail(prog, exc, 1 if runner is not None else 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _unexpected(prog, exc)
    if args.json:
        print(json.dumps({"runs": summary["runs"], "best": summary["best"]}))
    else:
        print(_sweep_table(summary))
    if summary.get("stopped") == "SIGTERM":
        how = (f"; continue it: jrt sweep --resume {summary['run_dir']}" if summary.get("run_dir")
               and runner.checkpointer is not None else "")
        print(f"{prog}: stopped by SIGTERM at step {summary['steps']}{how}", file=sys.stderr)
        return 128 + signal.SIGTERM
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


def _eval_checkpoint(argv) -> int:
    p = argparse.ArgumentParser(prog="jrt eval-checkpoint", description="Evaluate a training checkpoint with the "
                                "config it was saved with (overrides may change e.g. the mesh or eval size).")
    p.add_argument("--dir", required=True, help="the run directory or its checkpoint.dir")
    p.add_argument("--step", type=int, help="which step (default: the latest)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    _quiet_orbax()
    from train.evaluate import evaluate_checkpoint

    prog = "jrt eval-checkpoint"
    try:
        result = evaluate_checkpoint(args.dir, step=args.step, overrides=args.overrides)
    except (ValueError, OSError) as exc:
        return _fail(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _unexpected(prog, exc)
    print(json.dumps(result, indent=2))
    return 0


def _delegate(module: str):
    def run(argv) -> int:
        return importlib.import_module(module).main(argv) or 0

    return run


COMMANDS = {
    "train": _train,
    "sweep": _sweep,
    "eval-checkpoint": _eval_checkpoint,
    "export": _delegate("train.export"),
    "prepare-data": _delegate("train.data.prepare"),
    "generate": _delegate("jrt_jax.generate.cli"),
    "eval": _delegate("jrt_jax.evals.cli"),
    "convert": _delegate("jrt_jax.convert.cli"),
    "reproduce": _delegate("train.reproduce.cli"),
}


USAGE = """usage: jrt COMMAND [options]   (jrt COMMAND --help for each command's options)

commands:
  train            train a model (default: a micro JRT-RNN on set disjointness); options are key=value;
                   each run gets runs/NAME, continued with jrt train --resume RUN_DIR
  sweep            train a grid of seeds x learning rates as one program (sweep.seeds=[...] sweep.lr=[...])
  eval-checkpoint  evaluate a training checkpoint with the config it was saved with
  export           turn a training run into a from_pretrained folder (weights, config, tokenizer)
  prepare-data     tokenize text files once into shards for data.kind=tokens
  generate         generate text from a checkpoint, a .gguf file or a preset
  eval             perplexity, passkey, qa, recall (and lm-eval) on a model
  convert          convert checkpoints (Hugging Face Llama, JRT/Based releases, GGUF) to and from jrt-jax
  reproduce        re-measure a paper claim ({studies})

  jrt --version    print the version"""


def _usage() -> str:
    """USAGE with the study names of `train.reproduce.STUDIES` (one list: a new study cannot be left out)."""
    from train.reproduce import STUDIES

    return USAGE.replace("{studies}", ", ".join(STUDIES))


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jrt-jax")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown (not installed)"


def main(argv=None) -> int:
    # Before any backend starts: simulated CPU devices wait minutes, not 40 s, for a late peer in a collective
    # (a loaded machine aborted multi-device runs; see jrt_jax.parallel.host).
    from jrt_jax.parallel.host import use_patient_collectives

    use_patient_collectives()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import jax

        print(f"jrt-jax {_version()} (jax {jax.__version__})")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"jrt: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command not in ("train", "sweep", "eval-checkpoint"):
        return COMMANDS[command](rest)
    stream = sys.stderr
    sys.stderr = _DropEchoes(stream)
    try:
        return COMMANDS[command](rest)
    finally:
        sys.stderr.drain()
        if stream is not sys.__stderr__:  # called in-process (tests): give the caller its stream back; a real
            sys.stderr = stream  # process keeps the filter through interpreter shutdown


if __name__ == "__main__":
    sys.exit(main())
