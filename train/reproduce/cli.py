"""`jrt reproduce NAME [--quick] [--out DIR] [--seeds N] [--jobs N]`: run one reproduction study.

    jrt reproduce set-disjointness --quick             # < 1 minute, the pipeline of the full study
    jrt reproduce mqar --out results                   # full variant (<= 30 min on 2 CPU cores)
    jrt reproduce --list                               # the studies and their claims

Writes DIR/NAME/results.json (every number), DIR/NAME/report.md (the table "claim | paper | ours | reproduced?",
the command, the wall time, the machine) and PNG plots; prints the report's path and the claims table.
DIR defaults to runs/reproduce. Bad input (an unknown study, --seeds or --jobs < 1, an unwritable DIR) prints one line on
stderr and exits with status 2; an unexpected failure prints one line and exits 1 (JRT_TRACEBACK=1 for the
traceback).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import signal
import sys
import threading
import time
import traceback

from train.reproduce import STUDIES

PROG = "jrt reproduce"
DEFAULT_OUT = "runs/reproduce"


class _BadInput(Exception):
    pass


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the study's training workers are stopped on the way out."""


def _on_sigterm_raise():
    """Turn SIGTERM into `_Terminated` (main thread only); returns the previous handler, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated

    return signal.signal(signal.SIGTERM, handler)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block) raised to main, which exits 2."""

    def error(self, message):
        raise _BadInput(message)


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer; got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Reproduce a claim of the JRT / PI papers at laptop scale: a table "
                "'claim | paper | ours | reproduced?', the numbers in results.json, and plots.")
    p.add_argument("name", nargs="?", metavar="NAME", help=f"the study: {', '.join(STUDIES)}")
    p.add_argument("--quick", action="store_true", help="the scaled-down variant (< 1 minute; the test suite's)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"write DIR/NAME/ (default {DEFAULT_OUT})")
    p.add_argument("--seeds", type=_positive_int("--seeds"), default=None, metavar="N",
                   help="seeds per configuration (default: the study's, 3 for comparisons in the full variant)")
    p.add_argument("--jobs", type=_positive_int("--jobs"), default=None, metavar="N",
                   help="training runs at a time, in worker processes (default: 1 for --quick, else "
                        "min(2, CPU cores))")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    return p


def _fail(message: str, code: int = 2) -> int:
    lines = str(message).strip().splitlines()
    print(f"{PROG}: error: {lines[0] if lines else 'failed'}", file=sys.stderr)
    return code


def _check_out(out: pathlib.Path) -> None:
    """The output directory can be made and written (before minutes of training are spent)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _BadInput(f"cannot create --out directory {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise _BadInput(f"--out directory {str(out)!r} is not writable")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.list:
            from train.reproduce import load

            for name in STUDIES:
                doc = (load(name).__doc__ or "").strip().splitlines()
                print(f"{name:<18}{doc[0] if doc else ''}")
            return 0
        if args.name is None:
            raise _BadInput(f"give a study NAME: {', '.join(STUDIES)} (or --list)")
        if args.name not in STUDIES:
            raise _BadInput(f"unknown study {args.name!r}; choose from {', '.join(STUDIES)}")
        out = pathlib.Path(args.out) / args.name
        _check_out(out)
    except _BadInput as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    from train.reproduce import common, load

    command = " ".join(["jrt", "reproduce", *map(shlex.quote, argv)])
    log = lambda line: print(f"[{args.name}] {line}", file=sys.stderr, flush=True)
    study = load(args.name)
    jobs = args.jobs or (1 if args.quick else max(1, min(2, os.cpu_count() or 1)))
    if not getattr(study, "PARALLEL", False):  # the study trains one model at a time (no `common.run_jobs`)
        if args.jobs and args.jobs > 1:
            log(f"--jobs {args.jobs} ignored: this study trains one model at a time")
        jobs = 1
    ctx = common.Context(quick=args.quick, seeds=args.seeds, out_dir=out, jobs=jobs, log=log)
    previous = _on_sigterm_raise()
    try:
        machine = common.machine_info()
        start = time.perf_counter()
        outcome = study.run(ctx)
        wall = time.perf_counter() - start
        _, report = common.write_outputs(ctx, name=args.name, title=study.TITLE, command=command, wall_s=wall,
                                         outcome=outcome, machine=machine)
    except common.StudyError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{PROG}: terminated (SIGTERM); nothing written", file=sys.stderr)
        return 143
    except Exception as exc:
        if os.environ.get("JRT_TRACEBACK"):
            traceback.print_exception(exc)
        text = str(exc).strip().splitlines()
        return _fail(f"unexpected {type(exc).__name__}: {text[0][:300] if text else ''} "
                     "(set JRT_TRACEBACK=1 for the traceback)", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"report: {report}")
    print(f"{study.TITLE} — {'quick' if ctx.quick else 'full'} variant, {wall:.1f} s")
    print(common.markdown_table(["claim", "paper", "ours", "reproduced?"],
                                [(c.claim, c.paper, c.ours, c.reproduced) for c in outcome.claims]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
